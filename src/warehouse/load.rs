//! One load of one table: a first full write, or a merge by primary key of changed rows and detected
//! deletes, in a single Delta commit that also carries the load's provenance (run id, pipeline). A
//! crash before the commit leaves only unreferenced files, which vacuum removes; the table stays at
//! its last good version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{cast, col, lit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use deltalake::DeltaTable;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use futures::StreamExt;

use super::parquet::{unindexed_columns, unindexed_table_properties, writer_properties};
use super::{COMMIT_KEY, TableName, Warehouse, WarehouseError};

const OP_COLUMN: &str = "__sokana_op";

/// How the rows handed to a load relate to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The rows are the changed ones: each replaces the row with its key, or is inserted.
    Incremental,
    /// The rows are the whole table: only differences are written, and keys absent from them are
    /// deleted.
    Full,
}

pub struct LoadRequest {
    pub table: TableName,
    pub primary_key: Vec<String>,
    pub partition_by: Vec<String>,
    pub mode: SyncMode,
    pub schema: SchemaRef,
    /// The rows, in partitions that are written in parallel.
    pub rows: Vec<SendableRecordBatchStream>,
    /// Every key present in the source, for delete detection (required for [`SyncMode::Full`]).
    pub source_keys: Option<Vec<RecordBatch>>,
    /// Provenance stored in the commit under [`COMMIT_KEY`].
    pub provenance: serde_json::Value,
    pub target_file_size: u64,
    /// Columns kept out of the statistics, in the files and in the log of a table this load
    /// creates (personal data, random uuids; see [`unindexed_table_properties`]).
    pub unindexed: Vec<String>,
}

/// Rows that replace a table's contents (see [`Warehouse::replace`]).
pub struct ReplaceRequest {
    pub table: TableName,
    pub schema: SchemaRef,
    pub rows: Vec<SendableRecordBatchStream>,
    /// A predicate over the table's columns: only matching rows are replaced.
    pub replace_where: Option<datafusion::logical_expr::Expr>,
    pub partition_by: Vec<String>,
    /// Provenance stored in the commit under [`COMMIT_KEY`].
    pub provenance: serde_json::Value,
    pub target_file_size: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LoadOutcome {
    /// The version committed, or `None` when there was nothing to write.
    pub version: Option<i64>,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub added_columns: Vec<String>,
}

/// A stream that DataFusion may execute once (the source's extraction cannot be replayed).
struct OneShot {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl std::fmt::Debug for OneShot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneShot")
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        match taken {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async {
                    Err(DataFusionError::Internal("a source stream was read twice".into()))
                }),
            )),
        }
    }
}

fn stream_frame(
    ctx: &SessionContext,
    schema: &SchemaRef,
    streams: Vec<SendableRecordBatchStream>,
) -> Result<DataFrame, DataFusionError> {
    let partitions: Vec<Arc<dyn PartitionStream>> = streams
        .into_iter()
        .map(|s| Arc::new(OneShot { schema: schema.clone(), stream: Mutex::new(Some(s)) }) as Arc<dyn PartitionStream>)
        .collect();
    let table = StreamingTable::try_new(schema.clone(), partitions)?;
    ctx.read_table(Arc::new(table))
}

/// Drops the partitions that hold no rows, keeping each other one whole (its first batch is put
/// back in front), and returns the first batch seen as a sample of the rows. Empty when there are
/// no rows at all. The partitions are polled together: those of one plan can feed each other
/// (a repartition or a partitioned join reads its input for every partition at once), so waiting
/// on one while the others are not polled can wait for ever.
async fn non_empty(
    streams: Vec<SendableRecordBatchStream>,
) -> Result<(Vec<SendableRecordBatchStream>, Option<RecordBatch>), DataFusionError> {
    let firsts = futures::future::try_join_all(streams.into_iter().map(|mut stream| async move {
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.num_rows() > 0 {
                return Ok(Some((batch, stream)));
            }
        }
        Ok::<_, DataFusionError>(None)
    }))
    .await?;
    let mut kept: Vec<SendableRecordBatchStream> = Vec::new();
    let mut sample = None;
    for (batch, stream) in firsts.into_iter().flatten() {
        sample.get_or_insert_with(|| batch.clone());
        let schema = stream.schema();
        let chained = futures::stream::once(async { Ok(batch) }).chain(stream);
        kept.push(Box::pin(RecordBatchStreamAdapter::new(schema, chained)));
    }
    Ok((kept, sample))
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Warehouse {
    /// Loads one table in one atomic commit.
    pub async fn load(&self, request: LoadRequest) -> Result<LoadOutcome, WarehouseError> {
        let name = request.table.clone();
        let delta_err = |e| WarehouseError::delta(&name, e);
        let df_err = |e: DataFusionError| WarehouseError::Source { table: name.to_string(), reason: e.to_string() };
        let schema = request.schema.clone();
        for key in request.primary_key.iter().chain(&request.partition_by) {
            if schema.field_with_name(key).is_err() {
                return Err(WarehouseError::Invalid {
                    table: name.to_string(),
                    reason: format!("key or partition column {key:?} is not among the extracted columns"),
                });
            }
        }
        let commit = CommitProperties::default().with_metadata([(COMMIT_KEY.to_string(), request.provenance.clone())]);
        let handle = self.handle(&name).await?;
        let ctx = SessionContext::new();

        if handle.version().is_none() {
            // First load: stream every row into new files, one commit creates the table.
            let (rows, sample) = non_empty(request.rows).await.map_err(df_err)?;
            let table_properties = unindexed_table_properties(&schema, &request.unindexed);
            if rows.is_empty() {
                return self.create_empty(handle, &name, schema, &request.partition_by, table_properties, commit).await;
            }
            let properties = writer_properties(self.compression, sample.as_ref(), &request.unindexed);
            let (write, counter) =
                streamed_write(handle, &schema, rows, properties, &request.partition_by, request.target_file_size)
                    .map_err(df_err)?;
            let table = write
                .with_save_mode(SaveMode::Append)
                .with_configuration(table_properties)
                .with_commit_properties(commit)
                .await
                .map_err(delta_err)?;
            return Ok(LoadOutcome {
                version: table.version().map(|v| v as i64),
                inserted: counter.load(Ordering::Relaxed),
                ..LoadOutcome::default()
            });
        }

        let added_columns = check_schema(&handle, &name, &schema)?;
        ctx.register_table("target", handle.table_provider().await.map_err(df_err)?).map_err(df_err)?;
        let target_columns: Vec<String> =
            schema.fields().iter().map(|f| f.name().clone()).filter(|c| !added_columns.contains(c)).collect();

        let mut sample = None;
        let upserts = match request.mode {
            SyncMode::Incremental => {
                let rows;
                (rows, sample) = non_empty(request.rows).await.map_err(df_err)?;
                if rows.is_empty() { None } else { Some(stream_frame(&ctx, &schema, rows).map_err(df_err)?) }
            }
            SyncMode::Full => {
                // Only the rows that differ from the table (new or changed) are merged.
                let source = stream_frame(&ctx, &schema, request.rows).map_err(df_err)?;
                let current = ctx
                    .table("target")
                    .await
                    .and_then(|t| t.select_columns(&target_columns.iter().map(String::as_str).collect::<Vec<_>>()))
                    .map_err(df_err)?;
                let source = align(source, &schema, &target_columns).map_err(df_err)?;
                let changed = source.except(current).map_err(df_err)?.collect().await.map_err(df_err)?;
                if changed.iter().all(|b| b.num_rows() == 0) {
                    None
                } else {
                    sample = changed.iter().find(|b| b.num_rows() > 0).cloned();
                    let mem = MemTable::try_new(changed[0].schema(), vec![changed]).map_err(df_err)?;
                    Some(ctx.read_table(Arc::new(mem)).map_err(df_err)?)
                }
            }
        };
        let deletes = match request.source_keys {
            Some(keys) => {
                let keys_schema =
                    keys.first().map(|b| b.schema()).unwrap_or_else(|| key_schema(&schema, &request.primary_key));
                let keys_mem = MemTable::try_new(keys_schema, vec![keys]).map_err(df_err)?;
                let keys_frame = ctx.read_table(Arc::new(keys_mem)).map_err(df_err)?;
                let pk: Vec<&str> = request.primary_key.iter().map(String::as_str).collect();
                let in_target = ctx.table("target").await.and_then(|t| t.select_columns(&pk)).map_err(df_err)?;
                let gone = in_target
                    .except(keys_frame.select_columns(&pk).map_err(df_err)?)
                    .map_err(df_err)?
                    .collect()
                    .await
                    .map_err(df_err)?;
                if gone.iter().all(|b| b.num_rows() == 0) {
                    None
                } else {
                    let mem = MemTable::try_new(gone[0].schema(), vec![gone]).map_err(df_err)?;
                    Some(ctx.read_table(Arc::new(mem)).map_err(df_err)?)
                }
            }
            None => None,
        };
        if upserts.is_none() && deletes.is_none() {
            return Ok(LoadOutcome { added_columns, ..LoadOutcome::default() });
        }

        // One source for the merge: upserts tagged 'u', deleted keys tagged 'd'.
        let mut source: Option<DataFrame> = None;
        if let Some(up) = upserts {
            source = Some(up.with_column(OP_COLUMN, lit("u")).map_err(df_err)?);
        }
        if let Some(gone) = deletes {
            let exprs: Vec<_> = schema
                .fields()
                .iter()
                .map(|f| {
                    if request.primary_key.contains(f.name()) {
                        cast(col(quoted(f.name())), f.data_type().clone()).alias(f.name())
                    } else {
                        cast(lit(ScalarValue::Null), f.data_type().clone()).alias(f.name())
                    }
                })
                .chain(std::iter::once(lit("d").alias(OP_COLUMN)))
                .collect();
            let tagged = gone.select(exprs).map_err(df_err)?;
            source = Some(match source {
                Some(up) => up.union(tagged).map_err(df_err)?,
                None => tagged,
            });
        }
        let Some(source) = source else { return Ok(LoadOutcome::default()) };

        let predicate = request
            .primary_key
            .iter()
            .map(|k| format!("target.{q} = source.{q}", q = quoted(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let is_upsert = format!("source.{OP_COLUMN} = 'u'");
        let is_delete = format!("source.{OP_COLUMN} = 'd'");
        let (table, metrics) = handle
            .merge(source, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_merge_schema(!added_columns.is_empty())
            .with_streaming(request.mode == SyncMode::Incremental)
            .with_commit_properties(commit)
            .with_writer_properties(writer_properties(self.compression, sample.as_ref(), &request.unindexed))
            .when_matched_delete(|d| d.predicate(is_delete.clone()))
            .and_then(|m| {
                m.when_matched_update(|u| {
                    columns.iter().fold(u.predicate(is_upsert.clone()), |u, c| {
                        u.update(c.as_str(), format!("source.{}", quoted(c)))
                    })
                })
            })
            .and_then(|m| {
                m.when_not_matched_insert(|i| {
                    columns
                        .iter()
                        .fold(i.predicate(is_upsert.clone()), |i, c| i.set(c.as_str(), format!("source.{}", quoted(c))))
                })
            })
            .map_err(delta_err)?
            .await
            .map_err(delta_err)?;
        Ok(LoadOutcome {
            version: table.version().map(|v| v as i64),
            inserted: metrics.num_target_rows_inserted as u64,
            updated: metrics.num_target_rows_updated as u64,
            deleted: metrics.num_target_rows_deleted as u64,
            added_columns,
        })
    }

    /// Replaces a table's rows in one commit: all of them, or only those matching `replace_where`
    /// (e.g. the partitions an incremental model recomputed). Creates the table on first use. New
    /// columns are added to the table; a column whose type changed is refused.
    pub async fn replace(&self, request: ReplaceRequest) -> Result<LoadOutcome, WarehouseError> {
        let name = request.table.clone();
        let df_err = |e: DataFusionError| WarehouseError::Source { table: name.to_string(), reason: e.to_string() };
        let handle = self.handle(&name).await?;
        let added_columns = match handle.version() {
            Some(_) => check_schema(&handle, &name, &request.schema)?,
            None => Vec::new(),
        };
        let commit = CommitProperties::default().with_metadata([(COMMIT_KEY.to_string(), request.provenance.clone())]);
        let (rows, sample) = non_empty(request.rows).await.map_err(df_err)?;
        let (write, counter) = streamed_write(
            handle,
            &request.schema,
            rows,
            writer_properties(self.compression, sample.as_ref(), &[]),
            &request.partition_by,
            request.target_file_size,
        )
        .map_err(df_err)?;
        let mut write = write.with_save_mode(SaveMode::Overwrite).with_commit_properties(commit);
        if !added_columns.is_empty() {
            write = write.with_schema_mode(deltalake::operations::write::SchemaMode::Merge);
        }
        if let Some(predicate) = request.replace_where {
            write = write.with_replace_where(predicate);
        }
        let table = write.await.map_err(|e| WarehouseError::delta(&name, e))?;
        Ok(LoadOutcome {
            version: table.version().map(|v| v as i64),
            inserted: counter.load(Ordering::Relaxed),
            added_columns,
            ..LoadOutcome::default()
        })
    }

    async fn create_empty(
        &self,
        handle: DeltaTable,
        name: &TableName,
        schema: SchemaRef,
        partition_by: &[String],
        table_properties: Vec<(String, Option<String>)>,
        commit: CommitProperties,
    ) -> Result<LoadOutcome, WarehouseError> {
        let kernel: deltalake::kernel::StructType =
            schema.as_ref().try_into_kernel().map_err(|e| WarehouseError::Invalid {
                table: name.to_string(),
                reason: format!("schema cannot be stored in Delta: {e}"),
            })?;
        let table = handle
            .create()
            .with_columns(kernel.fields().cloned())
            .with_partition_columns(partition_by.to_vec())
            .with_configuration(table_properties)
            .with_commit_properties(commit)
            .await
            .map_err(|e| WarehouseError::delta(name, e))?;
        Ok(LoadOutcome { version: table.version().map(|v| v as i64), ..LoadOutcome::default() })
    }
}

fn key_schema(schema: &Schema, primary_key: &[String]) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().filter(|f| primary_key.contains(f.name())).cloned().collect::<Vec<_>>(),
    ))
}

/// Selects the table's existing columns from the source frame, in the same order.
fn align(frame: DataFrame, schema: &Schema, columns: &[String]) -> Result<DataFrame, DataFusionError> {
    let exprs: Vec<_> = columns.iter().filter(|c| schema.field_with_name(c).is_ok()).map(|c| col(quoted(c))).collect();
    frame.select(exprs)
}

/// Compares the source's columns with the table's: new columns are allowed (returned), a changed
/// type is refused.
fn check_schema(table: &DeltaTable, name: &TableName, source: &Schema) -> Result<Vec<String>, WarehouseError> {
    let snapshot = table.snapshot().map_err(|e| WarehouseError::delta(name, e))?;
    let current = snapshot.schema();
    let mut added = Vec::new();
    for field in source.fields() {
        let wanted: deltalake::kernel::DataType = field.data_type().try_into_kernel().map_err(|e| {
            WarehouseError::Invalid { table: name.to_string(), reason: format!("column {}: {e}", field.name()) }
        })?;
        match current.field(field.name()) {
            None => added.push(field.name().clone()),
            Some(existing) if *existing.data_type() != wanted => {
                return Err(WarehouseError::TypeChanged {
                    table: name.to_string(),
                    column: field.name().clone(),
                    was: existing.data_type().to_string(),
                    now: wanted.to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(added)
}

/// A Delta write that streams `rows` into files with the warehouse's Parquet settings, counting the
/// rows written into the returned counter; the caller sets the save mode and commit.
fn streamed_write(
    handle: DeltaTable,
    schema: &SchemaRef,
    rows: Vec<SendableRecordBatchStream>,
    properties: deltalake::parquet::file::properties::WriterProperties,
    partition_by: &[String],
    target_file_size: u64,
) -> Result<(deltalake::operations::write::WriteBuilder, Arc<AtomicU64>), DataFusionError> {
    let counter = Arc::new(AtomicU64::new(0));
    let counted = rows.into_iter().map(|r| count_rows(r, counter.clone())).collect();
    let plan = stream_frame(&SessionContext::new(), schema, counted)?.into_unoptimized_plan();
    let write = handle
        .write(Vec::new())
        .with_input_plan(plan)
        .with_partition_columns(partition_by.to_vec())
        .with_target_file_size(std::num::NonZeroU64::new(target_file_size))
        .with_writer_properties(properties);
    Ok((write, counter))
}

/// Adds the rows that pass through a stream to `counter`.
fn count_rows(stream: SendableRecordBatchStream, counter: Arc<AtomicU64>) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let counted = stream.inspect(move |batch| {
        if let Ok(batch) = batch {
            counter.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, counted))
}

/// Compaction and vacuum settings.
#[derive(Debug, Clone)]
pub struct Maintenance {
    pub compact_min_files: usize,
    pub target_file_size: u64,
    pub retention_hours: u64,
}

impl Warehouse {
    /// Compacts a table once it has `compact_min_files` files; after a compaction or a load that
    /// committed (`changed`), vacuums files that no version younger than the retention needs.
    /// Returns whether it compacted.
    pub async fn maintain(
        &self,
        name: &TableName,
        settings: &Maintenance,
        changed: bool,
    ) -> Result<bool, WarehouseError> {
        let Some(mut table) = self.open(name).await? else { return Ok(false) };
        let delta_err = |e| WarehouseError::delta(name, e);
        let files = table.snapshot().map_err(delta_err)?.log_data().num_files();
        let compact = files >= settings.compact_min_files;
        if compact {
            let target = std::num::NonZeroU64::new(settings.target_file_size).unwrap_or(std::num::NonZeroU64::MIN);
            let unindexed = unindexed_columns(&table);
            (table, _) = table
                .optimize()
                .with_target_size(target)
                .with_writer_properties(writer_properties(self.compression, None, &unindexed))
                .await
                .map_err(delta_err)?;
            // A checkpoint after each compaction keeps the log that readers replay short (delta-rs
            // also writes one every `delta.checkpointInterval` commits, 100 by default).
            deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(delta_err)?;
        }
        if compact || changed {
            table
                .vacuum()
                .with_retention_period(chrono::Duration::hours(settings.retention_hours as i64))
                .with_enforce_retention_duration(false)
                // Full mode also removes files a crashed load wrote but never committed.
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .await
                .map_err(delta_err)?;
        }
        Ok(compact)
    }
}
