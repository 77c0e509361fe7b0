//! The query log (`STATE_DIR/queries.db`, SQLite): one row per query run through the engine, by
//! whom, on which engine, the normalised SQL, the tables read, how long, how many rows and bytes,
//! whether the cache answered, and the error. Rows are written by a background thread, a tenth of
//! a second's worth per transaction, so a query never waits for the disk; dropping the log flushes
//! it. It records what happened and never the data itself.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::query::engine::EngineChoice;

/// How many entries may wait for the writer before a query waits for it instead: more than
/// [`GATHER`] collects at tens of thousands of queries a second.
const QUEUE: usize = 16_384;

/// How long the writer lets records gather before it writes them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("query log {path}: {reason}")]
pub struct QueryLogError {
    path: PathBuf,
    reason: String,
}

/// One query as the log keeps it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryRecord {
    /// When it started (RFC 3339, UTC); set by the engine.
    pub at: String,
    pub user: String,
    /// `cli`, `http`, `pgwire` or `dashboard`.
    pub origin: String,
    pub request_id: String,
    /// The engine that answered, or the one asked for when the query failed before one was chosen.
    pub engine: EngineChoice,
    pub sql: Arc<str>,
    /// The plan's shape (operators and tables, no literals), which `auto` routing learns from.
    pub shape: Arc<str>,
    pub tables: Arc<[String]>,
    /// Columns the plan reads, as the engine's recorder describes them (`schema.table.column:class`
    /// for the audit trail; not kept here).
    #[serde(skip)]
    pub columns: Arc<[String]>,
    pub duration_us: u64,
    pub rows: u64,
    pub bytes: u64,
    pub cache_hit: bool,
    pub error: Option<String>,
}

/// Summary rows for `sokana sql --log` and `GET /api/v1/query-log`.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStats {
    pub sql: String,
    pub runs: u64,
    pub errors: u64,
    pub cache_hits: u64,
    pub mean_ms: f64,
    pub max_ms: f64,
    pub last_at: String,
}

pub struct QueryLog {
    sender: Mutex<Option<SyncSender<QueryRecord>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl QueryLog {
    pub fn open(state_dir: &Path) -> Result<QueryLog, QueryLogError> {
        let path = state_dir.join("queries.db");
        let conn = connect(&path)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("query-log".into())
            .spawn(move || write_all(conn, receiver))
            .map_err(|e| QueryLogError { path: path.clone(), reason: e.to_string() })?;
        Ok(QueryLog { sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(writer)), path })
    }

    /// Queues one record; written within a tenth of a second.
    pub fn record(&self, record: QueryRecord) {
        if let Ok(sender) = self.sender.lock()
            && let Some(sender) = sender.as_ref()
            && sender.send(record).is_err()
        {
            tracing::warn!(path = %self.path.display(), "the query log writer has stopped; a record was lost");
        }
    }

    /// Waits until every queued record is written, and stops the writer.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
    }

    /// The most recent `limit` records, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<QueryRecord>, QueryLogError> {
        let conn = connect(&self.path)?;
        let err = |e: rusqlite::Error| QueryLogError { path: self.path.clone(), reason: e.to_string() };
        let mut stmt = conn
            .prepare(
                "SELECT at, user, origin, request_id, engine, sql, shape, tables, duration_us, rows, bytes,
                        cache_hit, error FROM query_log ORDER BY id DESC LIMIT ?1",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                let tables: String = r.get(7)?;
                Ok(QueryRecord {
                    at: r.get(0)?,
                    user: r.get(1)?,
                    origin: r.get(2)?,
                    request_id: r.get(3)?,
                    engine: engine_at(r, 4)?,
                    sql: r.get::<_, String>(5)?.into(),
                    shape: r.get::<_, String>(6)?.into(),
                    tables: serde_json::from_str::<Vec<String>>(&tables).unwrap_or_default().into(),
                    columns: Arc::default(),
                    duration_us: r.get::<_, i64>(8)? as u64,
                    rows: r.get::<_, i64>(9)? as u64,
                    bytes: r.get::<_, i64>(10)? as u64,
                    cache_hit: r.get(11)?,
                    error: r.get(12)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    /// Queries grouped by normalised SQL: the slowest by mean time (`by = "slowest"`) or the most
    /// frequent (`by = "frequent"`).
    pub fn stats(&self, by: StatsOrder, limit: usize) -> Result<Vec<QueryStats>, QueryLogError> {
        let conn = connect(&self.path)?;
        let err = |e: rusqlite::Error| QueryLogError { path: self.path.clone(), reason: e.to_string() };
        let order = match by {
            StatsOrder::Slowest => "mean_us DESC",
            StatsOrder::Frequent => "runs DESC, mean_us DESC",
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT sql, count(*) AS runs, sum(error IS NOT NULL), sum(cache_hit), avg(duration_us) AS mean_us,
                        max(duration_us), max(at)
                 FROM query_log GROUP BY sql ORDER BY {order} LIMIT ?1"
            ))
            .map_err(err)?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(QueryStats {
                    sql: r.get(0)?,
                    runs: r.get::<_, i64>(1)? as u64,
                    errors: r.get::<_, i64>(2)? as u64,
                    cache_hits: r.get::<_, i64>(3)? as u64,
                    mean_ms: r.get::<_, f64>(4)? / 1000.0,
                    max_ms: r.get::<_, i64>(5)? as f64 / 1000.0,
                    last_at: r.get(6)?,
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StatsOrder {
    Slowest,
    Frequent,
}

impl Drop for QueryLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn connect(path: &Path) -> Result<Connection, QueryLogError> {
    let err = |e: &dyn std::fmt::Display| QueryLogError { path: path.to_path_buf(), reason: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let conn = Connection::open(path).map_err(|e| err(&e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| err(&e))?;
    // `synchronous = NORMAL`: in WAL mode a commit survives a crash of the process but is not
    // forced to the disk (fsync at checkpoints only). This is a record of timings, not the audit
    // trail (which is synchronous); an fsync per batch cost a sixth of a cached answer's CPU.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS query_log (
           id INTEGER PRIMARY KEY, at TEXT NOT NULL, user TEXT NOT NULL, origin TEXT NOT NULL,
           request_id TEXT NOT NULL, engine TEXT NOT NULL, sql TEXT NOT NULL, shape TEXT NOT NULL,
           tables TEXT NOT NULL, duration_us INTEGER NOT NULL, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
           cache_hit INTEGER NOT NULL, error TEXT);
         CREATE INDEX IF NOT EXISTS query_log_by_shape ON query_log (shape, engine);",
    )
    .map_err(|e| err(&e))?;
    Ok(conn)
}

/// The writer thread: once a record arrives, lets others gather for [`GATHER`], then writes
/// whatever is queued in one transaction. Under load a commit and a wake-up per query cost more
/// than the query answered from the cache.
fn write_all(mut conn: Connection, receiver: Receiver<QueryRecord>) {
    while let Ok(first) = receiver.recv() {
        std::thread::sleep(GATHER);
        let batch: Vec<QueryRecord> = std::iter::once(first).chain(receiver.try_iter()).collect();
        if let Err(e) = write_batch(&mut conn, &batch) {
            tracing::warn!(error = %e, records = batch.len(), "writing the query log failed");
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[QueryRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO query_log (at, user, origin, request_id, engine, sql, shape, tables, duration_us, rows,
                                    bytes, cache_hit, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for r in batch {
            insert.execute(params![
                r.at,
                r.user,
                r.origin,
                r.request_id,
                r.engine.name(),
                &*r.sql,
                r.shape,
                serde_json::to_string(&r.tables).unwrap_or_default(),
                r.duration_us as i64,
                r.rows as i64,
                r.bytes as i64,
                r.cache_hit,
                r.error,
            ])?;
        }
    }
    tx.commit()
}

/// Timings per (shape, engine) from the log's most recent `limit` records, oldest first, for
/// seeding `auto` routing at start-up.
pub fn timings(state_dir: &Path, limit: usize) -> Result<Vec<(String, EngineChoice, u64)>, QueryLogError> {
    let path = state_dir.join("queries.db");
    let conn = connect(&path)?;
    let err = |e: rusqlite::Error| QueryLogError { path: path.clone(), reason: e.to_string() };
    let mut stmt = conn
        .prepare(
            "SELECT shape, engine, duration_us FROM (
               SELECT id, shape, engine, duration_us FROM query_log
               WHERE error IS NULL AND NOT cache_hit AND shape <> '' ORDER BY id DESC LIMIT ?1)
             ORDER BY id",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([limit as i64], |r| Ok((r.get(0)?, engine_at(r, 1)?, r.get::<_, i64>(2)? as u64)))
        .map_err(err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// The engine named in column `index` of a log row; a name no engine has is an error that says so.
fn engine_at(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<EngineChoice> {
    let name: String = row.get(index)?;
    EngineChoice::parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("column engine: {name:?} is not datafusion, duckdb or auto").into(),
        )
    })
}
