//! SQL over the warehouse: a DataFusion session with every committed table registered by name
//! (`raw.phi_clients`, `marts.…`), and result formatting. It reads the warehouse and never writes
//! it; it knows nothing of HTTP or of users.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::warehouse::{SCHEMAS, TableName, Warehouse, WarehouseError};

pub mod cache;
pub mod catalog;
mod date_trunc;
pub mod duck;
pub mod duckdb_arrow;
pub mod engine;
pub mod export;
pub mod forecast;
pub mod functions;
pub mod log;
pub mod saved;
pub mod scope;

/// Where in the SQL text an error is: line and column, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

/// What kind of mistake a query holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlErrorKind {
    /// The text does not parse.
    Syntax,
    /// A table, column or function it names does not exist.
    NotFound,
    /// It parses but cannot be planned or run as asked: a type mismatch, a statement that is not
    /// a query, a value out of range.
    Invalid,
}

/// A mistake in a query, as the parser, the planner or DuckDB reported it: its kind, the message
/// and, when they said, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SqlError {
    pub kind: SqlErrorKind,
    pub message: String,
    pub position: Option<Position>,
}

/// The message, and where in the SQL when known and the message does not say it already (the
/// parser's does), so that the command line shows the place as the API's `position` does.
impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        match self.position {
            Some(at) if !self.message.contains("Line: ") => write!(f, " at Line: {}, Column: {}", at.line, at.column),
            _ => Ok(()),
        }
    }
}

impl SqlError {
    pub fn new(kind: SqlErrorKind, message: impl Into<String>) -> SqlError {
        SqlError { kind, message: message.into(), position: None }
    }

    pub fn invalid(message: impl Into<String>) -> SqlError {
        SqlError::new(SqlErrorKind::Invalid, message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// A mistake in the query: the caller's to fix.
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error("formatting the result: {0}")]
    Format(String),
    #[error("the query ran longer than its limit of {seconds} s and was cancelled")]
    Timeout { seconds: f64 },
    #[error("the query needed more memory than its limit of {limit_mb} MB: {detail}")]
    Memory { limit_mb: u64, detail: String },
    #[error(
        "the result has more than {cap} rows; page through it (limit and offset, or the cursor), or export it as CSV, Arrow or Parquet, which stream"
    )]
    TooManyRows { cap: u64 },
    #[error("parameter {name}: {message}")]
    Param { name: String, message: String },
    #[error("{0}")]
    Saved(String),
    /// The caller's role may not read a table the query names.
    #[error("{0}")]
    Denied(String),
    /// The audit record of the answer could not be written, so the answer is withheld.
    #[error("the audit trail could not record this query, so its answer is withheld: {0}")]
    Audit(String),
    #[error(transparent)]
    Log(#[from] log::QueryLogError),
    /// A fault of the engine, not of the query (storage, a broken invariant): its detail is for
    /// the server's log, not for the caller.
    #[error("{0}")]
    Internal(String),
}

impl QueryError {
    /// A stable code for API errors and the query log.
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::Warehouse(_) => "warehouse",
            QueryError::Sql(SqlError { kind: SqlErrorKind::Syntax, .. }) => "syntax_error",
            QueryError::Sql(SqlError { kind: SqlErrorKind::NotFound, .. }) => "not_found",
            QueryError::Sql(SqlError { kind: SqlErrorKind::Invalid, .. }) => "invalid_query",
            QueryError::Format(_) => "format",
            QueryError::Timeout { .. } => "timeout",
            QueryError::Memory { .. } => "memory_limit",
            QueryError::TooManyRows { .. } => "too_many_rows",
            QueryError::Param { .. } => "parameter",
            QueryError::Saved(_) => "saved_query",
            QueryError::Denied(_) => "forbidden",
            QueryError::Audit(_) => "audit_unavailable",
            QueryError::Log(_) => "query_log",
            QueryError::Internal(_) => "internal",
        }
    }

    /// The HTTP status that answers it.
    pub fn http_status(&self) -> u16 {
        match self {
            QueryError::Sql(_) | QueryError::Param { .. } | QueryError::Saved(_) => 400,
            QueryError::Denied(_) => 403,
            QueryError::Timeout { .. } => 408,
            QueryError::TooManyRows { .. } => 413,
            QueryError::Memory { .. } => 422,
            QueryError::Audit(_) => 503,
            QueryError::Warehouse(_) | QueryError::Format(_) | QueryError::Log(_) | QueryError::Internal(_) => 500,
        }
    }

    /// The SQLSTATE that answers it over the PostgreSQL wire protocol.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::Sql(SqlError { kind: SqlErrorKind::Syntax, .. }) => "42601",
            QueryError::Sql(SqlError { kind: SqlErrorKind::NotFound, .. }) => "42P01",
            QueryError::Sql(SqlError { kind: SqlErrorKind::Invalid, .. }) | QueryError::Saved(_) => "42000",
            QueryError::Param { .. } => "22023",
            QueryError::Denied(_) => "42501",
            QueryError::Timeout { .. } => "57014",
            QueryError::Memory { .. } => "53200",
            QueryError::TooManyRows { .. } => "54000",
            QueryError::Audit(_) => "58000",
            QueryError::Warehouse(_) | QueryError::Format(_) | QueryError::Log(_) | QueryError::Internal(_) => "XX000",
        }
    }

    /// Whether it is the engine's fault rather than the caller's: its detail stays in the log.
    pub fn is_internal(&self) -> bool {
        self.http_status() == 500
    }

    /// What the caller is told: the message, or for an internal fault only that there was one and
    /// the request id the server's log holds it under.
    pub fn public_message(&self, request_id: &str) -> String {
        if self.is_internal() {
            format!("an internal error stopped the query; the server's log has it under request id {request_id}")
        } else {
            self.to_string()
        }
    }

    /// Where in the SQL text the error is, when the parser or planner said.
    pub fn position(&self) -> Option<Position> {
        match self {
            QueryError::Sql(e) => e.position,
            _ => None,
        }
    }
}

impl From<DataFusionError> for QueryError {
    /// Sorts DataFusion's error by its kind. DataFusion wraps errors in context layers; the
    /// innermost is the one that says what happened, and its diagnostic, when the planner left
    /// one, where in the SQL.
    fn from(e: DataFusionError) -> Self {
        let e = match raised_by_us(e) {
            Ok(ours) => return ours,
            Err(e) => e,
        };
        let at = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|span| Position { line: span.start.line, column: span.start.column });
        let root = e.find_root();
        let message = root.to_string();
        let sql = |kind: SqlErrorKind, position: Option<Position>| {
            QueryError::Sql(SqlError { kind, message: message.clone(), position })
        };
        match root {
            // sqlparser reports where only in its message ("… at Line: 2, Column: 8").
            DataFusionError::SQL(parse, _) => {
                sql(SqlErrorKind::Syntax, at.or_else(|| parser_position(&parse.to_string())))
            }
            DataFusionError::SchemaError(schema, _) => match **schema {
                datafusion::common::SchemaError::FieldNotFound { .. } => sql(SqlErrorKind::NotFound, at),
                _ => sql(SqlErrorKind::Invalid, at),
            },
            // The planner says "table '…' not found" and "Invalid function '…'" in plain Plan errors.
            DataFusionError::Plan(text) if text.contains("not found") || text.starts_with("Invalid function") => {
                sql(SqlErrorKind::NotFound, at)
            }
            DataFusionError::Plan(_) | DataFusionError::NotImplemented(_) | DataFusionError::Execution(_) => {
                sql(SqlErrorKind::Invalid, at)
            }
            // Errors the data itself raises while running (a failed cast, a division by zero).
            DataFusionError::ArrowError(arrow, _)
                if matches!(
                    **arrow,
                    arrow::error::ArrowError::CastError(_)
                        | arrow::error::ArrowError::ComputeError(_)
                        | arrow::error::ArrowError::DivideByZero
                        | arrow::error::ArrowError::ArithmeticOverflow(_)
                        | arrow::error::ArrowError::InvalidArgumentError(_)
                        | arrow::error::ArrowError::ParseError(_)
                ) =>
            {
                sql(SqlErrorKind::Invalid, at)
            }
            _ => QueryError::Internal(message),
        }
    }
}

/// The [`QueryError`] one of our rules raised inside DataFusion (the masking rule's refusal), out
/// of the context DataFusion wrapped it in; otherwise the error as it was.
fn raised_by_us(e: DataFusionError) -> Result<QueryError, DataFusionError> {
    match e {
        DataFusionError::Context(context, inner) => {
            raised_by_us(*inner).map_err(|inner| DataFusionError::Context(context, Box::new(inner)))
        }
        DataFusionError::External(raised) => {
            raised.downcast::<QueryError>().map(|ours| *ours).map_err(DataFusionError::External)
        }
        other => Err(other),
    }
}

/// The position sqlparser writes at the end of its messages.
fn parser_position(message: &str) -> Option<Position> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Position { line: line.trim().parse().ok()?, column: column.parse().ok()? })
}

/// Values for a query's placeholders: `$1, $2, …` or `$name`. They are bound by the engine, never
/// spliced into the SQL text.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Params {
    #[default]
    None,
    Positional(Vec<datafusion::scalar::ScalarValue>),
    Named(std::collections::BTreeMap<String, datafusion::scalar::ScalarValue>),
}

impl Params {
    pub fn is_empty(&self) -> bool {
        match self {
            Params::None => true,
            Params::Positional(v) => v.is_empty(),
            Params::Named(m) => m.is_empty(),
        }
    }

    /// The values as DataFusion binds them into a plan already optimised with placeholders of
    /// `types` (by id: `$1`, `$name`; `None` where a cast in the plan decides): each value of its
    /// placeholder's type, or text given for a placeholder of another text type (which type
    /// coercion would have cast it to). `None` when a placeholder has no value or a value of
    /// another type.
    pub fn typed_for(
        &self,
        types: &std::collections::HashMap<String, Option<arrow::datatypes::DataType>>,
    ) -> Option<datafusion::common::ParamValues> {
        use arrow::datatypes::DataType::{LargeUtf8, Utf8, Utf8View};
        use datafusion::common::ParamValues;
        let given: Vec<(String, &datafusion::scalar::ScalarValue)> = match self {
            Params::None => Vec::new(),
            Params::Positional(values) => values.iter().enumerate().map(|(i, v)| (format!("${}", i + 1), v)).collect(),
            Params::Named(values) => values.iter().map(|(name, v)| (format!("${name}"), v)).collect(),
        };
        if !types.keys().all(|id| given.iter().any(|(named, _)| named == id)) {
            return None;
        }
        let typed = given
            .iter()
            .map(|(id, value)| match types.get(id) {
                Some(Some(wanted)) => match (value.data_type(), wanted) {
                    (found, wanted) if found == *wanted => Some((*value).clone()),
                    (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => value.cast_to(wanted).ok(),
                    _ => None,
                },
                // Not in the plan, or cast there: bound as given.
                _ => Some((*value).clone()),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(match self {
            Params::Named(values) => ParamValues::from(values.keys().cloned().zip(typed).collect::<Vec<_>>()),
            _ => ParamValues::from(typed),
        })
    }

    /// As DataFusion binds them.
    pub fn to_datafusion(&self) -> datafusion::common::ParamValues {
        use datafusion::common::ParamValues;
        match self {
            Params::None => ParamValues::List(Vec::new()),
            Params::Positional(v) => ParamValues::from(v.clone()),
            Params::Named(m) => ParamValues::from(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()),
        }
    }
}

/// A statement as it ran: its text and the values bound to its placeholders.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    /// The text with each placeholder (`$1`, `$name`) written as its value's SQL literal, for a
    /// reader to see or paste into a console; the engine itself binds values, never splices.
    /// Scanned by hand: DataFusion replaces placeholders in a plan, and the reader wants the text.
    pub fn with_values(&self) -> String {
        let literal = |name: &str| -> Option<String> {
            let value = match &self.params {
                Params::None => None,
                Params::Positional(values) => name.parse::<usize>().ok().and_then(|n| values.get(n.checked_sub(1)?)),
                Params::Named(values) => values.get(name),
            }?;
            let expr = datafusion::logical_expr::Expr::Literal(value.clone(), None);
            datafusion::sql::unparser::Unparser::default().expr_to_sql(&expr).ok().map(|e| e.to_string())
        };
        let mut out = String::with_capacity(self.sql.len());
        let mut chars = self.sql.char_indices().peekable();
        let mut quote: Option<char> = None;
        while let Some((at, c)) = chars.next() {
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (None, '\'' | '"') => quote = Some(c),
                (None, '$') => {
                    let mut end = at + 1;
                    while let Some((i, n)) =
                        chars.peek().copied().filter(|(_, n)| n.is_ascii_alphanumeric() || *n == '_')
                    {
                        end = i + n.len_utf8();
                        chars.next();
                    }
                    match literal(&self.sql[at + 1..end]) {
                        Some(value) => out.push_str(&value),
                        None => out.push_str(&self.sql[at..end]),
                    }
                    continue;
                }
                _ => {}
            }
            out.push(c);
        }
        out
    }
}

/// The session settings both the models' sessions and the query engine use.
pub(crate) fn session_config() -> SessionConfig {
    let mut config =
        SessionConfig::new().with_information_schema(true).with_default_catalog_and_schema("sokana", "marts");
    // Planner errors then carry the position of what they are about (an unknown column, say).
    config.options_mut().sql_parser.collect_spans = true;
    // Without a session time zone `now()` is a timestamp without one, and `now() AT TIME ZONE
    // 'America/New_York'` reads UTC's wall-clock time as New York's (the wrong date every evening).
    config.options_mut().execution.time_zone = Some("UTC".into());
    config
}

/// The runtime sessions over `warehouse` start from: on an encrypted warehouse nothing spills to
/// disk (sorts and joins that outgrow memory fail instead), since spill files would hold its rows
/// in the clear.
pub(crate) fn runtime_for(
    warehouse: &Warehouse,
) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>, QueryError> {
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    let mut runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new();
    if warehouse.is_encrypted() {
        runtime = runtime.with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled));
    }
    Ok(runtime.build_arc()?)
}

/// A session with the engine's settings and functions over `warehouse`'s runtime, no tables yet.
pub(crate) fn session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(session_config())
        .with_runtime_env(runtime_for(warehouse)?)
        .with_default_features()
        .with_query_planner(Arc::new(forecast::Planner))
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udf(date_trunc::date_trunc());
    ctx.register_udtf(forecast::NAME, Arc::new(forecast::ForecastFunction::default()));
    Ok(ctx)
}

/// A session over the warehouse's versions as they are now, unmasked, whose tables can be
/// re-pointed: for model builds, privacy requests and the local administrator's tools, never for a
/// caller with a scope (model builds use it; the serving engine, [`engine::QueryEngine`], follows new versions by itself).
pub async fn unmasked_session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let ctx = session(warehouse)?;
    let catalog = ctx.catalog("sokana").ok_or_else(|| QueryError::Internal("the default catalog is missing".into()))?;
    for schema in SCHEMAS {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    for name in warehouse.list_tables().await? {
        register(&ctx, warehouse, &name).await?;
    }
    Ok(ctx)
}

/// Points `name` in the session at the table's newest version (after a build committed one).
pub async fn refresh(ctx: &SessionContext, warehouse: &Warehouse, name: &TableName) -> Result<(), QueryError> {
    let schema = ctx
        .catalog("sokana")
        .and_then(|c| c.schema(&name.schema))
        .ok_or_else(|| QueryError::Internal(format!("schema {} is missing", name.schema)))?;
    schema.deregister_table(&name.name)?;
    register(ctx, warehouse, name).await
}

async fn register(ctx: &SessionContext, warehouse: &Warehouse, name: &TableName) -> Result<(), QueryError> {
    let Some(table) = warehouse.open(name).await? else { return Ok(()) };
    let provider = table.table_provider().await?;
    let schema = ctx
        .catalog("sokana")
        .and_then(|c| c.schema(&name.schema))
        .ok_or_else(|| QueryError::Internal(format!("schema {} is missing", name.schema)))?;
    schema.register_table(name.name.clone(), provider)?;
    Ok(())
}

/// Runs one query and collects its result. Only queries run: DDL (`CREATE EXTERNAL TABLE` could
/// read any file), DML, `COPY … TO` and `SET` are refused before planning.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    Ok(ctx.sql_with_options(sql, read_only).await?.collect().await?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// Writes batches as an aligned table, CSV with a header, or a JSON array of objects.
pub fn format(batches: &[RecordBatch], format: OutputFormat) -> Result<String, QueryError> {
    let as_text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|e| QueryError::Format(e.to_string()));
    let schema = || batches.first().map(|b| b.schema()).unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)
            .map_err(|e| QueryError::Format(e.to_string()))?
            .to_string()),
        OutputFormat::Csv => as_text(export::encode(export::ExportFormat::Csv, schema(), batches)?),
        OutputFormat::Json => as_text(export::encode(export::ExportFormat::Json, schema(), batches)?),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, types::Date32Type};

    use super::*;

    #[tokio::test]
    async fn now_converts_to_new_york_time() {
        let ny_today = || chrono::Utc::now().with_timezone(&chrono_tz::America::New_York).date_naive();
        let before = ny_today();
        let ctx = SessionContext::new_with_config(session_config());
        let batches = run(&ctx, "SELECT CAST(now() AT TIME ZONE 'America/New_York' AS DATE)").await.expect("query");
        let after = ny_today();
        let got = batches[0].column(0).as_primitive::<Date32Type>().value_as_date(0).expect("a date");
        assert!(got == before || got == after, "{got} is not New York's date ({before})");
    }

    #[test]
    fn a_statement_shows_its_values_as_literals() {
        use datafusion::scalar::ScalarValue;
        let statement = Statement {
            sql: "SELECT '$1', \"$2\" FROM t WHERE d >= $1 AND s IN ($2, $10) AND x = $3".into(),
            params: Params::Positional(
                [ScalarValue::Date32(Some(20_000)), ScalarValue::Utf8(Some("O'Brien".into()))]
                    .into_iter()
                    .chain((3..=10).map(|n| ScalarValue::Int64(Some(n))))
                    .collect(),
            ),
        };
        let shown = statement.with_values();
        assert!(shown.starts_with("SELECT '$1', \"$2\" FROM t WHERE d >= "), "quoted text is left alone: {shown}");
        assert!(
            shown.contains("2024-10-04") && shown.contains("'O''Brien'") && shown.ends_with("AND x = 3"),
            "{shown}"
        );
        assert!(shown.contains(", 10)"), "$10 is the tenth value, not the first and a 0: {shown}");
        let named = Statement {
            sql: "SELECT * FROM t WHERE d < $to AND e = $unknown".into(),
            params: Params::Named([("to".to_string(), ScalarValue::Int64(Some(5)))].into()),
        };
        assert_eq!(named.with_values(), "SELECT * FROM t WHERE d < 5 AND e = $unknown");
    }
}
