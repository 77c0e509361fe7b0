//! DuckDB over the warehouse: an in-memory DuckDB in which every warehouse table is a view over the
//! Parquet files of its current Delta version (`raw.*`, `marts.*`), so both engines answer from the
//! same files. After the views are made, DuckDB may read only the warehouse folder and its settings
//! are locked, so a query cannot reach other files, URLs or extensions. Results cross into the
//! engine's Arrow through `duckdb_arrow`. It reads the warehouse and never writes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::scalar::ScalarValue;

use super::catalog::WarehouseCatalog;
use super::{Params, QueryError, SqlError, SqlErrorKind, duckdb_arrow};
use crate::warehouse::{SCHEMAS, TableName};

/// A DuckDB database over the warehouse tables at the versions it was opened with. Each query runs
/// on its own connection to it, so queries run side by side; connections are kept for the next
/// query, with the statements they prepared (a repeated query is not parsed, bound or planned again).
pub struct DuckSession {
    root: Mutex<duckdb::Connection>,
    idle: Mutex<Vec<duckdb::Connection>>,
    versions: HashMap<TableName, i64>,
    /// Texts the gate has judged to be one query each (a text's verdict does not change).
    judged: moka::sync::Cache<String, ()>,
    /// Declared after the connections, so that it (and the database it owns) goes last.
    gate: gate::Gate,
}

/// Idle connections kept per session, and prepared statements kept per connection.
const IDLE_CONNECTIONS: usize = 8;
const STATEMENTS_PER_CONNECTION: usize = 32;
/// Query texts whose verdict is remembered per session.
const JUDGED_TEXTS: u64 = 4096;

/// A connection lent to one query; it goes back to its session when dropped, unless the query was
/// cancelled (a late interrupt meant for it must not reach the next query).
pub struct PooledConnection {
    conn: Option<duckdb::Connection>,
    session: Arc<DuckSession>,
    cancelled: Arc<AtomicBool>,
}

impl PooledConnection {
    /// Set when the query is abandoned: the connection is closed instead of kept.
    pub fn cancelled(&self) -> Arc<AtomicBool> {
        self.cancelled.clone()
    }
}

impl std::ops::Deref for PooledConnection {
    type Target = duckdb::Connection;

    fn deref(&self) -> &duckdb::Connection {
        // Present from construction until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!("a pooled connection is taken only when dropped"))
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.cancelled.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(mut idle) = self.session.idle.lock()
            && idle.len() < IDLE_CONNECTIONS
        {
            idle.push(conn);
        }
    }
}

/// DuckDB's error as the engine's: its message names its kind ("Parser Error: …", "Catalog
/// Error: …"), which duckdb-rs does not carry otherwise.
fn duck_err(e: duckdb::Error) -> QueryError {
    duck_mistake(e.to_string())
}

/// A DuckDB error message, sorted by the kind it names.
fn duck_mistake(message: String) -> QueryError {
    const INVALID: [&str; 10] = [
        "Binder Error",
        "Conversion Error",
        "Invalid Input Error",
        "Not implemented Error",
        "Out of Range Error",
        "Permission Error",
        "Constraint Error",
        "INTERRUPT Error",
        // An extension this build does not carry (ICU's time zones for `AT TIME ZONE`): a query
        // DuckDB cannot run here, which `auto` sends to DataFusion instead.
        "Extension Autoloading Error",
        "Missing Extension Error",
    ];
    let mistake = |kind: SqlErrorKind| QueryError::Sql(SqlError::new(kind, format!("DuckDB: {message}")));
    if message.starts_with("Parser Error") {
        mistake(SqlErrorKind::Syntax)
    } else if message.starts_with("Catalog Error") {
        mistake(SqlErrorKind::NotFound)
    } else if message.starts_with("Out of Memory Error") {
        QueryError::Memory { limit_mb: 0, detail: message }
    } else if INVALID.iter().any(|prefix| message.starts_with(prefix)) {
        mistake(SqlErrorKind::Invalid)
    } else {
        QueryError::Internal(format!("DuckDB: {message}"))
    }
}

/// `'text'` as a SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// DuckDB's name for an Arrow type, for the columns of a view (partition columns and empty tables).
fn duck_type(ty: &DataType) -> Result<String, QueryError> {
    Ok(match ty {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "TIMESTAMP".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::List(item) => format!("{}[]", duck_type(item.data_type())?),
        other => return Err(QueryError::Internal(format!("DuckDB views: no mapping for the column type {other}"))),
    })
}

/// What refusing a statement that is not a query says, and refusing several at once.
const ONLY_QUERIES: &str = "only queries (SELECT, WITH … SELECT) run on the warehouse";
const ONE_STATEMENT: &str = "send one statement at a time";

/// Why DuckDB is not offered: it reads the Parquet files itself, which needs them on local disk
/// and not encrypted.
pub const NEEDS_PLAIN_LOCAL: &str =
    "the DuckDB engine reads unencrypted warehouses on local disk only; use the datafusion engine";

impl DuckSession {
    /// Opens DuckDB with a view per committed table (at its newest version) of a warehouse on local
    /// disk. `memory_limit_mb` bounds the whole DuckDB database.
    pub async fn open(catalog: &WarehouseCatalog, memory_limit_mb: Option<u64>) -> Result<DuckSession, QueryError> {
        let root = catalog.warehouse().plain_local_root().ok_or_else(|| SqlError::invalid(NEEDS_PLAIN_LOCAL))?;
        let (statements, versions) = views(catalog).await?;
        let database = gate::Database::open_in_memory()?;
        // The connections share the database the gate judges texts against.
        let conn = database.connect()?;
        execute_all(&conn, &statements)?;
        let memory = memory_limit_mb.map(|mb| format!("SET memory_limit = '{mb}MB';")).unwrap_or_default();
        let root = root.to_string_lossy();
        // Parquet footers are cached across queries: a Delta table never rewrites a file under the
        // same name, so a cached footer cannot go stale.
        conn.execute_batch(&format!(
            "{memory} SET allowed_directories = [{}]; SET enable_external_access = false;
             SET autoinstall_known_extensions = false; SET autoload_known_extensions = false;
             SET parquet_metadata_cache = true; SET lock_configuration = true;",
            quote(&root)
        ))
        .map_err(duck_err)?;
        let gate = gate::Gate::new(database)?;
        Ok(DuckSession {
            root: Mutex::new(conn),
            idle: Mutex::new(Vec::new()),
            versions,
            judged: moka::sync::Cache::new(JUDGED_TEXTS),
            gate,
        })
    }

    /// Refuses anything but exactly one query (a `SELECT` as DuckDB's own parser counts and types
    /// statements). duckdb-rs runs every statement of a text but the last when it prepares it, and
    /// other parsers disagree with DuckDB on where statements end (DuckDB nests block comments),
    /// so DuckDB itself is asked before the text goes near a connection that would run it.
    pub fn judge(&self, sql: &str) -> Result<(), QueryError> {
        if self.judged.contains_key(sql) {
            return Ok(());
        }
        self.gate.judge(sql)?;
        self.judged.insert(sql.to_string(), ());
        Ok(())
    }

    /// The version each table's view reads.
    pub fn version(&self, table: &TableName) -> Option<i64> {
        self.versions.get(table).copied()
    }

    /// A connection to this database for one query: an idle one, or a new one.
    pub fn connect(self: &Arc<Self>) -> Result<PooledConnection, QueryError> {
        let poisoned = || QueryError::Internal("the DuckDB session was poisoned".into());
        let reused = self.idle.lock().map_err(|_| poisoned())?.pop();
        let conn = match reused {
            Some(conn) => conn,
            None => {
                let conn = self.root.lock().map_err(|_| poisoned())?.try_clone().map_err(duck_err)?;
                conn.set_prepared_statement_cache_capacity(STATEMENTS_PER_CONNECTION);
                conn
            }
        };
        Ok(PooledConnection { conn: Some(conn), session: self.clone(), cancelled: Arc::new(AtomicBool::new(false)) })
    }

    /// Runs one query on a connection of its own and collects it (see [`run`]).
    pub fn query(self: &Arc<Self>, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        run(&self.connect()?, sql, &Params::None, None)
    }
}

/// The statements that create schemas `raw` and `marts` and a view per committed table over the
/// Parquet files of its newest version; and the versions. (Made before DuckDB is opened: a DuckDB
/// connection may not be held across an await.)
async fn views(catalog: &WarehouseCatalog) -> Result<(Vec<String>, HashMap<TableName, i64>), QueryError> {
    let mut statements: Vec<String> = SCHEMAS.iter().map(|schema| format!("CREATE SCHEMA {schema}")).collect();
    let mut versions = HashMap::new();
    for name in catalog.warehouse().list_tables().await? {
        let Some(table) = catalog.delta(&name).await? else { continue };
        let delta_err = |e: deltalake::DeltaTableError| QueryError::Internal(format!("{name}: {e}"));
        let snapshot = table.snapshot().map_err(delta_err)?;
        let schema: SchemaRef = snapshot.snapshot().arrow_schema();
        let partitions: Vec<String> = snapshot.metadata().partition_columns().to_vec();
        let files: Vec<String> = table.get_file_uris().map_err(delta_err)?.collect();
        let columns = cast_columns(&schema, quoted)?;
        let source = if files.is_empty() {
            // No files yet: an empty relation with the table's columns.
            format!("(SELECT {} WHERE false)", cast_columns(&schema, |_| "NULL".into())?)
        } else {
            let list = files.iter().map(|f| quote(f)).collect::<Vec<_>>().join(", ");
            let hive_types = schema
                .fields()
                .iter()
                .filter(|f| partitions.contains(f.name()))
                .map(|f| Ok(format!("{}: {}", quote(f.name()), duck_type(f.data_type())?)))
                .collect::<Result<Vec<_>, QueryError>>()?;
            let hive = if hive_types.is_empty() {
                String::new()
            } else {
                format!(", hive_partitioning = true, hive_types = {{{}}}", hive_types.join(", "))
            };
            // union_by_name: files written before a column was added lack it; they read as NULL.
            format!("read_parquet([{list}], union_by_name = true{hive})")
        };
        statements.push(format!(
            "CREATE VIEW {}.{} AS SELECT {columns} FROM {source}",
            name.schema,
            quoted(&name.name)
        ));
        // Unqualified names mean `marts`, as in DataFusion. (A search path would be per connection,
        // and connections are made after the configuration is locked.)
        if name.schema == "marts" {
            statements.push(format!("CREATE VIEW main.{0} AS SELECT * FROM marts.{0}", quoted(&name.name)));
        }
        versions.insert(name.clone(), table.version().unwrap_or(0) as i64);
    }
    Ok((statements, versions))
}

fn execute_all(conn: &duckdb::Connection, statements: &[String]) -> Result<(), QueryError> {
    statements.iter().try_for_each(|statement| conn.execute_batch(statement).map_err(duck_err))
}

/// Writes a DuckDB database file at `path` with the same views as the engine's (no sandbox: the
/// file is the analyst's own); returns how many views it holds. Written beside `path` and renamed,
/// so an interrupted export leaves no half-made database under the name asked for.
pub async fn export_database(catalog: &WarehouseCatalog, path: &std::path::Path) -> Result<usize, QueryError> {
    if catalog.warehouse().plain_local_root().is_none() {
        return Err(SqlError::invalid(
            "a DuckDB export needs an unencrypted warehouse on local disk (its views read the Parquet files as they are)",
        )
        .into());
    }
    let partial = path.with_extension("duckdb.partial");
    let io = |e: std::io::Error| QueryError::Internal(format!("{}: {e}", path.display()));
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io)?;
    }
    let (statements, versions) = views(catalog).await?;
    let conn = duckdb::Connection::open(&partial).map_err(duck_err)?;
    execute_all(&conn, &statements)?;
    conn.close().map_err(|(_, e)| duck_err(e))?;
    std::fs::rename(&partial, path).map_err(io)?;
    Ok(versions.len())
}

/// Runs one query (a single `SELECT` or `WITH … SELECT`; anything else is refused, because the
/// folder DuckDB may read is also one it could write) with `params` bound by DuckDB, never spliced
/// into the text; the result in the engine's Arrow. More than `row_cap` rows is an error.
pub fn run(
    conn: &PooledConnection,
    sql: &str,
    params: &Params,
    row_cap: Option<u64>,
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    conn.session.judge(sql)?;
    let mut statement = conn.prepare_cached(sql).map_err(duck_err)?;
    let answer = execute(&mut statement, params, row_cap);
    // The statement keeps its last result until it runs again: only small ones stay cached.
    let small = |(_, batches): &(SchemaRef, Vec<RecordBatch>)| {
        batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>() <= CACHED_RESULT_BYTES
    };
    if !answer.as_ref().is_ok_and(small) {
        statement.discard();
    }
    answer
}

/// The largest answer whose statement is kept prepared (DuckDB holds the answer beside it).
const CACHED_RESULT_BYTES: usize = 256 * 1024;

fn execute(
    statement: &mut duckdb::Statement<'_>,
    params: &Params,
    row_cap: Option<u64>,
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let arrow = match params {
        Params::None => statement.query_arrow([]).map_err(duck_err)?,
        Params::Positional(list) => {
            let values = list.iter().map(duck_value).collect::<Result<Vec<_>, _>>()?;
            let bound: Vec<&dyn duckdb::ToSql> = values.iter().map(|v| v as &dyn duckdb::ToSql).collect();
            statement.query_arrow(bound.as_slice()).map_err(duck_err)?
        }
        Params::Named(map) => {
            let values =
                map.iter().map(|(k, v)| Ok((k.clone(), duck_value(v)?))).collect::<Result<Vec<_>, QueryError>>()?;
            let bound: Vec<(&str, &dyn duckdb::ToSql)> =
                values.iter().map(|(k, v)| (k.as_str(), v as &dyn duckdb::ToSql)).collect();
            statement.query_arrow(bound.as_slice()).map_err(duck_err)?
        }
    };
    let schema =
        duckdb_arrow::schema_to_engine(&arrow.get_schema()).map_err(|e| QueryError::Internal(e.to_string()))?;
    let mut batches = Vec::new();
    let mut rows = 0u64;
    for batch in arrow {
        rows += batch.num_rows() as u64;
        if let Some(cap) = row_cap
            && rows > cap
        {
            return Err(QueryError::TooManyRows { cap });
        }
        batches.push(duckdb_arrow::to_engine(batch).map_err(|e| QueryError::Internal(e.to_string()))?);
    }
    Ok((schema, batches))
}

/// A parameter value as DuckDB binds it: every type a PostgreSQL driver sends over the wire
/// (int2 … int8, float4/8, numeric, text, varchar, bool, date, time, timestamp(tz), interval, uuid
/// and json as text, bytea) and the HTTP API's.
fn duck_value(value: &ScalarValue) -> Result<duckdb::types::Value, QueryError> {
    use duckdb::types::{TimeUnit as DuckUnit, Value};
    Ok(match value {
        v if v.is_null() => Value::Null,
        ScalarValue::Boolean(Some(b)) => Value::Boolean(*b),
        ScalarValue::Int8(Some(i)) => Value::TinyInt(*i),
        ScalarValue::Int16(Some(i)) => Value::SmallInt(*i),
        ScalarValue::Int32(Some(i)) => Value::Int(*i),
        ScalarValue::Int64(Some(i)) => Value::BigInt(*i),
        ScalarValue::UInt8(Some(i)) => Value::UTinyInt(*i),
        ScalarValue::UInt16(Some(i)) => Value::USmallInt(*i),
        ScalarValue::UInt32(Some(i)) => Value::UInt(*i),
        ScalarValue::UInt64(Some(i)) => Value::UBigInt(*i),
        ScalarValue::Float32(Some(f)) => Value::Float(*f),
        ScalarValue::Float64(Some(f)) => Value::Double(*f),
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
            Value::Text(s.clone())
        }
        ScalarValue::Binary(Some(b))
        | ScalarValue::BinaryView(Some(b))
        | ScalarValue::LargeBinary(Some(b))
        | ScalarValue::FixedSizeBinary(_, Some(b)) => Value::Blob(b.clone()),
        ScalarValue::Date32(Some(d)) => Value::Date32(*d),
        ScalarValue::Date64(Some(ms)) => Value::Date32((*ms).div_euclid(86_400_000) as i32),
        // An instant: DuckDB's TIMESTAMP in UTC, which it casts to TIMESTAMPTZ where one is wanted.
        ScalarValue::TimestampSecond(Some(t), _) => Value::Timestamp(DuckUnit::Second, *t),
        ScalarValue::TimestampMillisecond(Some(t), _) => Value::Timestamp(DuckUnit::Millisecond, *t),
        ScalarValue::TimestampMicrosecond(Some(t), _) => Value::Timestamp(DuckUnit::Microsecond, *t),
        ScalarValue::TimestampNanosecond(Some(t), _) => Value::Timestamp(DuckUnit::Nanosecond, *t),
        ScalarValue::Time32Second(Some(t)) => Value::Time64(DuckUnit::Second, i64::from(*t)),
        ScalarValue::Time32Millisecond(Some(t)) => Value::Time64(DuckUnit::Millisecond, i64::from(*t)),
        ScalarValue::Time64Microsecond(Some(t)) => Value::Time64(DuckUnit::Microsecond, *t),
        ScalarValue::Time64Nanosecond(Some(t)) => Value::Time64(DuckUnit::Nanosecond, *t),
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            Value::Interval { months: i.months, days: i.days, nanos: i.nanoseconds }
        }
        ScalarValue::IntervalYearMonth(Some(months)) => Value::Interval { months: *months, days: 0, nanos: 0 },
        ScalarValue::IntervalDayTime(Some(i)) => {
            Value::Interval { months: 0, days: i.days, nanos: i64::from(i.milliseconds) * 1_000_000 }
        }
        ScalarValue::DurationSecond(Some(d)) => Value::Interval { months: 0, days: 0, nanos: d * 1_000_000_000 },
        ScalarValue::DurationMillisecond(Some(d)) => Value::Interval { months: 0, days: 0, nanos: d * 1_000_000 },
        ScalarValue::DurationMicrosecond(Some(d)) => Value::Interval { months: 0, days: 0, nanos: d * 1_000 },
        ScalarValue::DurationNanosecond(Some(d)) => Value::Interval { months: 0, days: 0, nanos: *d },
        // Decimals cross as text, which DuckDB casts to the parameter's type without rounding.
        ScalarValue::Decimal128(Some(_), _, _) | ScalarValue::Decimal256(Some(_), _, _) => {
            Value::Text(value.to_string())
        }
        other => {
            return Err(QueryError::Param {
                name: "params".into(),
                message: format!("DuckDB takes no parameter of type {}", other.data_type()),
            });
        }
    })
}

/// A query as DuckDB will run it: its text normalised by the parser (keywords, spacing) and the
/// warehouse tables it names.
#[derive(Debug)]
pub struct Inspected {
    pub normalised: String,
    pub tables: Vec<TableName>,
}

/// Parses `sql` as DuckDB's dialect; exactly one query statement is accepted. This is for routing
/// and logging only: what DuckDB may run is decided by [`DuckSession::judge`].
pub fn inspect(sql: &str) -> Result<Inspected, QueryError> {
    use datafusion::sql::sqlparser::{ast::Statement, ast::visit_relations, dialect::DuckDbDialect, parser::Parser};
    let statements = Parser::parse_sql(&DuckDbDialect {}, sql)
        .map_err(|e| SqlError::new(SqlErrorKind::Syntax, format!("DuckDB: {e}")))?;
    match statements.as_slice() {
        [statement @ Statement::Query(_)] => {
            let mut tables = Vec::new();
            let _ = visit_relations(statement, |relation| {
                let name = relation.0.iter().map(|part| part.to_string().trim_matches('"').to_string());
                if let Ok(table) = name.collect::<Vec<_>>().join(".").parse::<TableName>() {
                    tables.push(table);
                }
                std::ops::ControlFlow::<()>::Continue(())
            });
            tables.sort();
            tables.dedup();
            Ok(Inspected { normalised: statement.to_string(), tables })
        }
        [_] => Err(SqlError::invalid(ONLY_QUERIES).into()),
        _ => Err(SqlError::invalid(ONE_STATEMENT).into()),
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `CAST(value AS type) AS "name", …` for every column of `schema`, the value given by `value(name)`.
fn cast_columns(schema: &SchemaRef, value: impl Fn(&str) -> String) -> Result<String, QueryError> {
    Ok(schema
        .fields()
        .iter()
        .map(|f| Ok(format!("CAST({} AS {}) AS {}", value(f.name()), duck_type(f.data_type())?, quoted(f.name()))))
        .collect::<Result<Vec<_>, QueryError>>()?
        .join(", "))
}

/// The raw DuckDB handles the gate needs, which duckdb-rs does not expose: the database (opened
/// here and lent to duckdb-rs) and a connection of the gate's own. Hand-written because no crate
/// offers DuckDB's statement extraction without running what it extracts.
mod gate {
    use std::ffi::{CStr, CString};
    use std::ptr;
    use std::sync::Mutex;

    use duckdb::ffi;

    use super::{ONE_STATEMENT, ONLY_QUERIES, QueryError, SqlError, SqlErrorKind, duck_err, duck_mistake};

    /// An in-memory DuckDB database, closed when dropped (after every connection to it: DuckDB's
    /// connections keep the database instance alive themselves).
    pub(super) struct Database(ffi::duckdb_database);

    // SAFETY: a `duckdb_database` may be used from any thread; DuckDB synchronises internally.
    unsafe impl Send for Database {}
    unsafe impl Sync for Database {}

    impl Database {
        pub(super) fn open_in_memory() -> Result<Database, QueryError> {
            let mut raw: ffi::duckdb_database = ptr::null_mut();
            // SAFETY: a null path opens an in-memory database; `raw` is written on success.
            let state = unsafe { ffi::duckdb_open(ptr::null(), &mut raw) };
            if state != ffi::DuckDBSuccess || raw.is_null() {
                return Err(QueryError::Internal("DuckDB: the in-memory database could not be opened".into()));
            }
            Ok(Database(raw))
        }

        /// A duckdb-rs connection to this database.
        pub(super) fn connect(&self) -> Result<duckdb::Connection, QueryError> {
            // SAFETY: the handle is open until `self` is dropped, which the session orders after
            // its connections.
            unsafe { duckdb::Connection::open_from_raw(self.0) }.map_err(duck_err)
        }
    }

    impl Drop for Database {
        fn drop(&mut self) {
            // SAFETY: opened by `duckdb_open`, closed once.
            unsafe { ffi::duckdb_close(&mut self.0) }
        }
    }

    /// A connection that only ever extracts and prepares statements, never executes them.
    pub(super) struct Gate {
        con: Mutex<ffi::duckdb_connection>,
        _database: Database,
    }

    // SAFETY: the connection is used under the mutex only, one thread at a time.
    unsafe impl Send for Gate {}
    unsafe impl Sync for Gate {}

    impl Gate {
        pub(super) fn new(database: Database) -> Result<Gate, QueryError> {
            let mut con: ffi::duckdb_connection = ptr::null_mut();
            // SAFETY: `database` is open; `con` is written on success.
            let state = unsafe { ffi::duckdb_connect(database.0, &mut con) };
            if state != ffi::DuckDBSuccess || con.is_null() {
                return Err(QueryError::Internal("DuckDB: the gate's connection could not be opened".into()));
            }
            Ok(Gate { con: Mutex::new(con), _database: database })
        }

        /// Exactly one statement, and DuckDB types it as a `SELECT`.
        pub(super) fn judge(&self, sql: &str) -> Result<(), QueryError> {
            let text = CString::new(sql)
                .map_err(|_| SqlError::new(SqlErrorKind::Syntax, "the query holds a NUL character"))?;
            let con = self.con.lock().map_err(|_| QueryError::Internal("the DuckDB gate was poisoned".into()))?;
            let mut extracted: ffi::duckdb_extracted_statements = ptr::null_mut();
            // SAFETY: `con` is open, `text` is NUL-terminated; `extracted` is destroyed by the guard
            // whatever the count.
            let count = unsafe { ffi::duckdb_extract_statements(*con, text.as_ptr(), &mut extracted) };
            let extracted = Extracted(extracted);
            if count == 0 {
                // SAFETY: the error belongs to `extracted`, alive here.
                let reason = unsafe { message(ffi::duckdb_extract_statements_error(extracted.0)) };
                let reason = reason.map_or_else(|| "no statement to run".into(), |r| format!("DuckDB: {r}"));
                return Err(SqlError::new(SqlErrorKind::Syntax, reason).into());
            }
            if count > 1 {
                return Err(SqlError::invalid(ONE_STATEMENT).into());
            }
            let mut prepared = Prepared(ptr::null_mut());
            // SAFETY: index 0 exists; `prepared` is destroyed by its guard even when this fails.
            // Preparing binds the statement (names resolve) but runs nothing.
            let state = unsafe { ffi::duckdb_prepare_extracted_statement(*con, extracted.0, 0, &mut prepared.0) };
            if state != ffi::DuckDBSuccess {
                // SAFETY: the error belongs to `prepared`, alive here.
                let reason = unsafe { message(ffi::duckdb_prepare_error(prepared.0)) };
                return Err(duck_mistake(reason.unwrap_or_else(|| "the query did not prepare".into())));
            }
            // SAFETY: `prepared` is a successfully prepared statement.
            let kind = unsafe { ffi::duckdb_prepared_statement_type(prepared.0) };
            if kind != ffi::duckdb_statement_type_DUCKDB_STATEMENT_TYPE_SELECT {
                return Err(SqlError::invalid(ONLY_QUERIES).into());
            }
            Ok(())
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            if let Ok(con) = self.con.get_mut() {
                // SAFETY: opened by `duckdb_connect`, disconnected once.
                unsafe { ffi::duckdb_disconnect(con) }
            }
        }
    }

    struct Extracted(ffi::duckdb_extracted_statements);

    impl Drop for Extracted {
        fn drop(&mut self) {
            // SAFETY: DuckDB requires this after every extraction, successful or not.
            unsafe { ffi::duckdb_destroy_extracted(&mut self.0) }
        }
    }

    struct Prepared(ffi::duckdb_prepared_statement);

    impl Drop for Prepared {
        fn drop(&mut self) {
            // SAFETY: DuckDB requires this after every prepare, successful or not; null is allowed.
            unsafe { ffi::duckdb_destroy_prepare(&mut self.0) }
        }
    }

    /// A C string DuckDB owns, copied; `None` for null.
    ///
    /// # Safety
    /// `raw` is null or a NUL-terminated string alive for the call.
    unsafe fn message(raw: *const std::ffi::c_char) -> Option<String> {
        // SAFETY: as the caller promises.
        (!raw.is_null()).then(|| unsafe { CStr::from_ptr(raw) }.to_string_lossy().into_owned())
    }
}
