//! DuckDB over the warehouse: an in-memory DuckDB in which every warehouse table is a view over the
//! Parquet files of its current Delta version (`raw.*`, `marts.*`), so both engines answer from the
//! same files. After the views are made, DuckDB may read only the warehouse folder and its settings
//! are locked, so a query cannot reach other files, URLs or extensions. Results cross into the
//! engine's Arrow through `duckdb_arrow`. It reads the warehouse and never writes it.

use std::sync::Mutex;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::QueryError;
use super::duckdb_arrow;
use crate::warehouse::{SCHEMAS, Warehouse};

/// A DuckDB session over the warehouse's versions at the time it was opened.
pub struct DuckSession {
    conn: Mutex<duckdb::Connection>,
}

fn duck_err(e: duckdb::Error) -> QueryError {
    QueryError::Sql(format!("DuckDB: {e}"))
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
        other => return Err(QueryError::Sql(format!("DuckDB views: no mapping for the column type {other}"))),
    })
}

impl DuckSession {
    /// Opens DuckDB with a view per committed table of a warehouse on local disk.
    pub async fn open(warehouse: &Warehouse) -> Result<DuckSession, QueryError> {
        let root = warehouse.local_root().ok_or_else(|| {
            QueryError::Sql("the DuckDB engine reads warehouses on local disk only; use the datafusion engine".into())
        })?;
        let conn = duckdb::Connection::open_in_memory().map_err(duck_err)?;
        for schema in SCHEMAS {
            conn.execute_batch(&format!("CREATE SCHEMA {schema}")).map_err(duck_err)?;
        }
        for name in warehouse.list_tables().await? {
            let Some(table) = warehouse.open(&name).await? else { continue };
            let delta_err = |e: deltalake::DeltaTableError| QueryError::Sql(format!("{name}: {e}"));
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
            let view = format!("CREATE VIEW {}.{} AS SELECT {columns} FROM {source}", name.schema, quoted(&name.name));
            conn.execute_batch(&view).map_err(duck_err)?;
        }
        let root = root.to_string_lossy();
        conn.execute_batch(&format!(
            "SET allowed_directories = [{}]; SET enable_external_access = false; SET autoinstall_known_extensions = false;
             SET autoload_known_extensions = false; SET lock_configuration = true;",
            quote(&root)
        ))
        .map_err(duck_err)?;
        Ok(DuckSession { conn: Mutex::new(conn) })
    }

    /// Runs one query (a single `SELECT` or `WITH … SELECT`; anything else is refused, because the
    /// folder DuckDB may read is also one it could write); the result in the engine's Arrow.
    pub fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        ensure_query(sql)?;
        let conn = self.conn.lock().map_err(|_| QueryError::Sql("the DuckDB session was poisoned".into()))?;
        let mut statement = conn.prepare(sql).map_err(duck_err)?;
        let arrow = statement.query_arrow([]).map_err(duck_err)?;
        let schema = duckdb_arrow::schema_to_engine(&arrow.get_schema()).map_err(|e| QueryError::Sql(e.to_string()))?;
        let batches = arrow
            .map(|b| duckdb_arrow::to_engine(b).map_err(|e| QueryError::Sql(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((schema, batches))
    }
}

/// Accepts exactly one statement that is a query.
fn ensure_query(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::{ast::Statement, dialect::DuckDbDialect, parser::Parser};
    let statements = Parser::parse_sql(&DuckDbDialect {}, sql).map_err(|e| QueryError::Sql(format!("DuckDB: {e}")))?;
    match statements.as_slice() {
        [Statement::Query(_)] => Ok(()),
        [_] => Err(QueryError::Sql("only queries (SELECT, WITH … SELECT) run on the warehouse".into())),
        _ => Err(QueryError::Sql("send one statement at a time".into())),
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
