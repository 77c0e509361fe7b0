//! What a caller hands the engine (the query, its parameters, page and engine, who asks) and what
//! it gets back.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::Stream;

use crate::query::cache::CachedResult;
use crate::query::{Params, QueryError};
use crate::warehouse::TableName;

/// Which engine answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    #[default]
    Datafusion,
    Duckdb,
    Auto,
}

impl EngineChoice {
    pub fn parse(text: &str) -> Option<EngineChoice> {
        match text {
            "datafusion" => Some(EngineChoice::Datafusion),
            "duckdb" => Some(EngineChoice::Duckdb),
            "auto" => Some(EngineChoice::Auto),
            _ => None,
        }
    }

    /// As the API, the CLI and the query log spell it.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Datafusion => "datafusion",
            EngineChoice::Duckdb => "duckdb",
            EngineChoice::Auto => "auto",
        }
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who asks, as far as the engine needs to know: a name for the log and the scope that decides
/// what data they may see (part of every cache key).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub scope: String,
    /// `cli`, `http`, `pgwire` or `dashboard`.
    pub origin: &'static str,
    pub request_id: String,
    /// The client's address, for the audit trail.
    pub address: Option<std::net::IpAddr>,
}

impl Caller {
    /// The person at the terminal, who can read the warehouse's files anyway.
    pub fn cli() -> Caller {
        Caller {
            user: std::env::var("USER").unwrap_or_else(|_| "cli".into()),
            scope: "admin".into(),
            origin: "cli",
            request_id: uuid::Uuid::new_v4().to_string(),
            address: None,
        }
    }
}

/// A page of a result: `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub sql: String,
    pub engine: EngineChoice,
    pub params: Params,
    pub page: Option<Page>,
    pub caller: Caller,
}

/// A collected answer.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub result: Arc<CachedResult>,
    /// The cache key, also the `ETag`.
    pub key: String,
    pub cache_hit: bool,
    /// The tables read and the version of each.
    pub tables: Vec<(TableName, i64)>,
    /// The columns read, as the audit trail names them.
    pub columns: Arc<[String]>,
    /// Whether the answer may be kept: it reads warehouse tables only, and nothing that varies
    /// between runs (`now()`, `random()`).
    pub cacheable: bool,
}

/// What one or more answers read: the tables at their versions and the columns, gathered to
/// record and to keep an answer made from them (a dashboard's whole data, a panel's picture).
#[derive(Debug, Clone, Default)]
pub struct Reads {
    pub tables: Vec<(TableName, i64)>,
    pub columns: Arc<[String]>,
    pub rows: u64,
    /// Something read may not be kept: a table outside the warehouse, a value that varies.
    pub volatile: bool,
}

impl Reads {
    /// What an answer that may not be kept read (a panel that failed, say).
    pub fn volatile() -> Reads {
        Reads { volatile: true, ..Reads::default() }
    }

    pub fn of(output: &QueryOutput) -> Reads {
        Reads {
            tables: output.tables.clone(),
            columns: output.columns.clone(),
            rows: output.result.rows,
            volatile: !output.cacheable,
        }
    }

    /// Adds what `other` read. Two versions of one table make the whole volatile: it was read
    /// across a commit, and no single set of versions describes it.
    pub fn add(&mut self, other: &Reads) {
        for (table, version) in &other.tables {
            match self.tables.iter().find(|(t, _)| t == table) {
                Some((_, seen)) if seen != version => self.volatile = true,
                Some(_) => {}
                None => self.tables.push((table.clone(), *version)),
            }
        }
        let new: Vec<&String> = other.columns.iter().filter(|c| !self.columns.contains(c)).collect();
        if !new.is_empty() {
            self.columns = self.columns.iter().chain(new).cloned().collect();
        }
        self.rows += other.rows;
        self.volatile |= other.volatile;
    }
}

/// A streamed answer: batches as the engine produces them.
pub struct QueryStream {
    pub schema: SchemaRef,
    pub engine: EngineChoice,
    pub batches: Pin<Box<dyn Stream<Item = Result<RecordBatch, QueryError>> + Send>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_limit_mb: u64,
    pub max_rows: u64,
}
