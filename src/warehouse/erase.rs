//! Removing rows for good (privacy erasure): a delete in one commit that keeps the table's load
//! provenance (the run and pipeline that wrote it); then the table's history is cut so that no
//! older version, data file or log entry still holds the rows.

use datafusion::logical_expr::Expr;
use deltalake::kernel::transaction::CommitProperties;

use super::parquet::{unindexed_columns, writer_properties};
use super::{COMMIT_KEY, TableName, Warehouse, WarehouseError};

impl Warehouse {
    /// Deletes the rows matching `predicate` in one commit; the commit carries the table's last
    /// load provenance with `note` under `erasure`. Returns how many rows went (`None` when
    /// delta-rs dropped whole files without counting).
    pub async fn delete_rows(
        &self,
        name: &TableName,
        predicate: Expr,
        note: serde_json::Value,
    ) -> Result<Option<u64>, WarehouseError> {
        let Some(table) = self.open(name).await? else { return Ok(Some(0)) };
        let mut provenance = match self.last_load(&table, name).await? {
            Some(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        provenance.insert("erasure".into(), note);
        let commit = CommitProperties::default().with_metadata([(COMMIT_KEY.to_string(), provenance.into())]);
        let unindexed = unindexed_columns(&table);
        let (_, metrics) = table
            .delete()
            .with_predicate(predicate)
            .with_writer_properties(writer_properties(self.compression, None, &unindexed))
            .with_commit_properties(commit)
            .await
            .map_err(|e| WarehouseError::delta(name, e))?;
        Ok(metrics.num_deleted_rows.map(|n| n as u64))
    }

    /// Leaves only the current version: data files no longer in it are deleted now (whatever the
    /// retention), a checkpoint of it is written, and the log entries before it are removed. The
    /// log's entries hold column statistics (a minimum e-mail address, say), so they go too.
    pub async fn forget_history(&self, name: &TableName) -> Result<(), WarehouseError> {
        let Some(table) = self.open(name).await? else { return Ok(()) };
        let delta_err = |e| WarehouseError::delta(name, e);
        let (table, _) = table
            .vacuum()
            .with_retention_period(chrono::Duration::zero())
            .with_enforce_retention_duration(false)
            .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
            .await
            .map_err(delta_err)?;
        deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(delta_err)?;
        let version = table.version().unwrap_or_default();
        // Entries modified up to now are eligible; only those older than the checkpoint go.
        let cutoff = chrono::Utc::now().timestamp_millis() + 1;
        deltalake::checkpoints::cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None)
            .await
            .map_err(delta_err)?;
        Ok(())
    }
}
