//! Reading the operational databases (PostgreSQL, and SQLite for the embedded default) into Arrow
//! record batches, and writing synthetic operational data into them (`sokana seed`). Owns source
//! connections, consistent snapshots, cursors and the type mapping; it never touches the warehouse
//! and never writes to a source except when seeding.

mod batch;
pub mod generate;
mod pgcopy;
pub mod pgtls;
mod postgres;
pub mod schema;
mod seed;
mod sqlite;
pub mod types;

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::scalar::ScalarValue;

pub use seed::{SeedOptions, SeedSummary, seed};
pub use types::{ColumnType, SourceColumn};

/// Errors from a source database. Messages never carry row values (they may be PHI) nor passwords.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {target} after {attempts} attempt(s): {reason}")]
    Unreachable { target: String, attempts: u32, reason: String },
    #[error("{path}: not a SQLite database ({reason})")]
    NotSqlite { path: PathBuf, reason: String },
    #[error("{target}: {reason}")]
    Query { target: String, reason: String },
    #[error("table {table}, column {column}: cannot read a value as {expected} ({reason})")]
    Value { table: String, column: String, expected: String, reason: String },
    #[error("{target} already holds operational data (table {table} has rows); pass --replace to drop and re-seed it")]
    AlreadySeeded { target: String, table: String },
    #[error("extraction stopped: {0}")]
    Stopped(String),
}

/// Where the operational data lives.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl SourceUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, or `postgres://…`/`postgresql://…`. A relative SQLite
    /// path is taken relative to `base`.
    pub fn parse(url: &str, base: &Path) -> Result<SourceUrl, SourceError> {
        let bad = |reason: &str| SourceError::BadUrl { url: redact(url), reason: reason.into() };
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(bad("no file path after sqlite://"));
            }
            return Ok(SourceUrl::Sqlite(base.join(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Checked as it will connect: its settings, and TLS to any server not on this machine.
            pgtls::settings(url)?;
            return Ok(SourceUrl::Postgres(url.to_string()));
        }
        Err(bad("expected sqlite://PATH or postgres://USER@HOST/DB"))
    }

    pub async fn connect(&self, options: &ConnectOptions) -> Result<Source, SourceError> {
        match self {
            SourceUrl::Sqlite(path) => Ok(Source::Sqlite(sqlite::SqliteSource::open(path)?)),
            SourceUrl::Postgres(url) => Ok(Source::Postgres(postgres::PgSource::connect(url, options).await?)),
        }
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            SourceUrl::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// A URL with every password in it replaced by `***`, for messages and logs: the one in the
/// user part and a `password=` parameter (libpq takes both). Text that is not a URL keeps only
/// what cannot be a secret: its scheme.
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return match url.split_once("://") {
            Some((scheme, _)) if scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) => {
                format!("{scheme}://<unparsable URL>")
            }
            _ => "<unparsable URL>".into(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query_pairs().any(|(key, _)| key.eq_ignore_ascii_case("password")) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key.eq_ignore_ascii_case("password") { "***".to_string() } else { value.into_owned() };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// How to connect to a source.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub pool_size: usize,
    /// Further attempts after a transient connection failure.
    pub retries: u32,
    /// PostgreSQL tables at least this large (in 8 KiB pages) are read as parallel page ranges.
    pub parallel_min_pages: i64,
    /// Page ranges read at once; `None` chooses from the cores (see `config::SourceConfig`).
    pub parallel_streams: Option<usize>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { pool_size: 4, retries: 3, parallel_min_pages: 4096, parallel_streams: None }
    }
}

/// A connected source.
pub enum Source {
    Sqlite(sqlite::SqliteSource),
    Postgres(postgres::PgSource),
}

impl Source {
    /// Opens a read-only snapshot: everything read through it sees one consistent state.
    pub async fn snapshot(&self) -> Result<Box<dyn Snapshot>, SourceError> {
        match self {
            Source::Sqlite(s) => Ok(Box::new(s.snapshot()?)),
            Source::Postgres(s) => Ok(Box::new(s.snapshot().await?)),
        }
    }
}

/// The value of an incremental cursor: a timestamp (`updated_at`) or an increasing id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CursorValue {
    Timestamp(DateTime<Utc>),
    Integer(i64),
}

impl CursorValue {
    /// The cursor a value of a cursor column holds, as Arrow carries it (`None` for a null).
    pub fn from_scalar(value: &ScalarValue) -> Option<CursorValue> {
        match value {
            ScalarValue::TimestampMicrosecond(Some(micros), _) => {
                DateTime::from_timestamp_micros(*micros).map(CursorValue::Timestamp)
            }
            ScalarValue::Int16(Some(i)) => Some(CursorValue::Integer(i64::from(*i))),
            ScalarValue::Int32(Some(i)) => Some(CursorValue::Integer(i64::from(*i))),
            ScalarValue::Int64(Some(i)) => Some(CursorValue::Integer(*i)),
            _ => None,
        }
    }
}

impl fmt::Display for CursorValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorValue::Timestamp(ts) => write!(f, "{}", ts.to_rfc3339()),
            CursorValue::Integer(i) => write!(f, "{i}"),
        }
    }
}

/// Rows to extract: those whose cursor column is past `after` (rows with a NULL cursor are not).
#[derive(Debug, Clone)]
pub struct CursorRange {
    pub column: String,
    pub after: CursorValue,
}

/// What to read from one table.
#[derive(Debug, Clone)]
pub struct ExtractSpec {
    pub table: String,
    pub columns: Vec<SourceColumn>,
    pub range: Option<CursorRange>,
    pub batch_rows: usize,
}

impl ExtractSpec {
    pub fn arrow_schema(&self) -> SchemaRef {
        batch::arrow_schema(&self.columns)
    }
}

/// One consistent read of a source. Calls are sequential: a stream returned by [`Snapshot::extract`]
/// must be drained or dropped before the next call.
#[async_trait]
pub trait Snapshot: Send {
    /// The table's columns from the live catalog, or `None` if the table does not exist.
    async fn columns(&mut self, table: &str) -> Result<Option<Vec<SourceColumn>>, SourceError>;
    async fn count(&mut self, table: &str) -> Result<u64, SourceError>;
    /// Streams the rows in bounded memory, `spec.batch_rows` at a time, as one or more partitions
    /// that together hold every row once (a large PostgreSQL table is read in parallel ranges).
    async fn extract(&mut self, spec: ExtractSpec) -> Result<Vec<SendableRecordBatchStream>, SourceError>;
}

/// One stream of all the partitions' batches, in whatever order they arrive.
pub fn merge_partitions(schema: SchemaRef, partitions: Vec<SendableRecordBatchStream>) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::select_all(partitions)))
}

/// Quotes an identifier for SQL (both PostgreSQL and SQLite use double quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_password_in_a_url_is_redacted() {
        let shown =
            redact("postgres://ana:s3cret@db.example:5432/core?sslmode=require&password=other&application_name=x");
        assert!(!shown.contains("s3cret") && !shown.contains("other"), "{shown}");
        assert!(shown.contains("sslmode=require") && shown.contains("ana") && shown.contains("db.example"), "{shown}");
        assert_eq!(redact("postgres://db/core"), "postgres://db/core");
        let broken = redact("postgres://ana:s3cret@[bad/core");
        assert!(!broken.contains("s3cret"), "{broken}");
    }
}
