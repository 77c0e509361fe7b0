//! Running a planned query: DataFusion on its own runtime, DuckDB on a blocking thread with an
//! interrupt, each within the limits; DuckDB's answers conformed to DataFusion's schema.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::execute_stream;
use futures::StreamExt;

use super::plan::Prepared;
use super::{Answer, EngineChoice, QueryEngine, QueryRequest};
use crate::query::QueryError;
use crate::query::duck::{self, DuckSession};
use crate::warehouse::TableName;

impl QueryEngine {
    /// Runs `request` on DataFusion; `reuse` as for [`Self::optimised`].
    pub(super) async fn run_datafusion(
        &self,
        request: &QueryRequest,
        cap: Option<u64>,
        reuse: Option<&[(TableName, i64)]>,
    ) -> Result<Answer, QueryError> {
        let (physical, task, read) = self.physical(request, reuse).await?;
        let limit = self.limits.memory_limit_mb;
        // Executed on the query runtime: an operator that computes long between yields would
        // otherwise hold the caller's threads and keep its timeout from firing. Aborted when the
        // caller gives up (timeout, client gone).
        let task = query_runtime().spawn(async move {
            let mut stream = execute_stream(physical, task).map_err(|e| df_error(e, limit))?;
            let schema = stream.schema();
            let mut batches = Vec::new();
            let mut rows = 0u64;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| df_error(e, limit))?;
                rows += batch.num_rows() as u64;
                if let Some(cap) = cap
                    && rows > cap
                {
                    return Err(QueryError::TooManyRows { cap });
                }
                batches.push(batch);
            }
            Ok((schema, batches))
        });
        let _abort = AbortOnDrop(task.abort_handle());
        let (schema, batches) =
            task.await.map_err(|e| QueryError::Internal(format!("the query task ended: {e}")))??;
        Ok((schema, batches, read))
    }

    pub(super) async fn run_duckdb(
        &self,
        request: &QueryRequest,
        tables: &[TableName],
        cap: Option<u64>,
    ) -> Result<Answer, QueryError> {
        let session = self.duck_session(tables).await?;
        let read: Vec<(TableName, i64)> =
            tables.iter().filter_map(|t| session.version(t).map(|v| (t.clone(), v))).collect();
        let conn = session.connect()?;
        let interrupt = conn.interrupt_handle();
        let cancelled = conn.cancelled();
        let sql = match request.page {
            // Numbers only are added to the text; the query itself is unchanged inside.
            Some(page) => {
                format!("SELECT * FROM ({}) AS page LIMIT {} OFFSET {}", request.sql, page.limit + 1, page.offset)
            }
            None => request.sql.clone(),
        };
        let params = request.params.clone();
        let limit_mb = self.limits.memory_limit_mb;
        let finished = Arc::new(AtomicBool::new(false));
        let task = tokio::task::spawn_blocking({
            let finished = finished.clone();
            move || {
                let result = duck::run(&conn, &sql, &params, cap);
                finished.store(true, Ordering::SeqCst);
                result
            }
        });
        // Dropped (timeout, client gone) before DuckDB finished: interrupt it so the thread is freed.
        let guard = Interrupt { handle: Some(interrupt), finished, cancelled };
        let joined = task.await;
        guard.disarm();
        let (schema, batches) =
            joined.map_err(|e| QueryError::Internal(format!("DuckDB: {e}")))?.map_err(|e| match e {
                QueryError::Memory { detail, .. } => QueryError::Memory { limit_mb, detail },
                other => other,
            })?;
        Ok((schema, batches, read))
    }

    /// DuckDB's answer for `request`; under `auto`, with DataFusion's column names and types (a
    /// caller who asked for `auto` gets one schema whichever engine ran). `None` when it does not
    /// fit them.
    pub(super) fn conformed(&self, request: &QueryRequest, prepared: &Prepared, answer: Answer) -> Option<Answer> {
        let (schema, batches, read) = answer;
        let target = match (&prepared.schema, request.engine) {
            (Some(target), EngineChoice::Auto) => target.clone(),
            _ => return Some((schema, batches, read)),
        };
        if target.fields().len() != schema.fields().len() {
            return None;
        }
        let batches = batches
            .into_iter()
            .map(|batch| {
                let columns = batch
                    .columns()
                    .iter()
                    .zip(target.fields())
                    .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                RecordBatch::try_new(target.clone(), columns)
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some((target, batches, read))
    }

    /// The DuckDB database, rebuilt when a table the query reads has a newer version than its view.
    async fn duck_session(&self, tables: &[TableName]) -> Result<Arc<DuckSession>, QueryError> {
        let versions = self.catalog.versions(tables).await?;
        let mut current = self.duck.lock().await;
        if let Some(session) = current.as_ref()
            && tables.iter().zip(&versions).all(|(t, v)| session.version(t) == *v)
        {
            return Ok(session.clone());
        }
        let session = Arc::new(DuckSession::open(&self.catalog, Some(self.limits.memory_limit_mb)).await?);
        *current = Some(session.clone());
        Ok(session)
    }
}

/// The runtime DataFusion queries execute on, apart from the one serving requests and timers, so
/// that a query busy on every core leaves the server able to answer, time out and cancel. Made on
/// first use, one thread per core; it lives as long as the process.
fn query_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().thread_name("sokana-query").enable_all().build().ok()
    });
    match built {
        Some(runtime) => runtime.handle().clone(),
        // Without threads for a second runtime, queries run beside everything else.
        None => tokio::runtime::Handle::current(),
    }
}

/// Aborts a spawned query task when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Interrupts a DuckDB query when dropped before being disarmed. An interrupt that arrives while
/// DuckDB is still preparing the statement is lost when execution starts, so it is repeated (every
/// 20 ms, from a short-lived thread) until the query has stopped. The connection is then closed,
/// not kept for another query.
struct Interrupt {
    handle: Option<Arc<duckdb::InterruptHandle>>,
    finished: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
}

impl Interrupt {
    fn disarm(mut self) {
        self.handle = None;
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else { return };
        self.cancelled.store(true, Ordering::SeqCst);
        let finished = self.finished.clone();
        let repeat = move || {
            while !finished.load(Ordering::SeqCst) {
                handle.interrupt();
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if std::thread::Builder::new().name("duckdb-interrupt".into()).spawn(repeat).is_err() {
            tracing::warn!("could not start the thread that interrupts a cancelled DuckDB query");
        }
    }
}

pub(super) fn df_error(e: DataFusionError, limit_mb: u64) -> QueryError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(detail) => QueryError::Memory { limit_mb, detail: detail.clone() },
        _ => QueryError::from(e),
    }
}

/// The first `limit` rows of `batches`.
pub(super) fn truncate(batches: Vec<RecordBatch>, limit: u64) -> Vec<RecordBatch> {
    let mut left = limit as usize;
    let mut out = Vec::new();
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        out.push(batch.slice(0, take));
        left -= take;
    }
    out
}
