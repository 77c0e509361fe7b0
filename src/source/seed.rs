//! `sokana seed`: writes the generator's output into SQLite (prepared inserts in one transaction)
//! or PostgreSQL (binary COPY), creating the operational schema first.

use std::collections::BTreeMap;
use std::pin::pin;

use rusqlite::Connection;
use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::generate::{Generator, Output, Value};
use super::postgres::db_error_reason;
use super::schema::{TABLES, TableDef};
use super::types::ColumnType;
use super::{SourceError, SourceUrl, quote_ident, redact};

#[derive(Debug, Clone)]
pub struct SeedOptions {
    pub scale: f64,
    pub seed: u64,
    /// Drop and recreate the operational tables when they already hold data.
    pub replace: bool,
}

#[derive(Debug, Default)]
pub struct SeedSummary {
    pub clients: u64,
    pub rows: BTreeMap<&'static str, u64>,
    pub deleted: u64,
}

/// Seeds the database at `url`; `progress` is called with the running row total.
pub async fn seed(
    url: &SourceUrl,
    options: &SeedOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SeedSummary, SourceError> {
    match url {
        SourceUrl::Sqlite(path) => {
            let path = path.clone();
            let options = options.clone();
            tokio::task::block_in_place(|| seed_sqlite(&path, &options, progress))
        }
        SourceUrl::Postgres(url) => seed_postgres(url, options, progress).await,
    }
}

fn seed_sqlite(
    path: &std::path::Path,
    options: &SeedOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SeedSummary, SourceError> {
    let target = format!("sqlite://{}", path.display());
    let err = |e: rusqlite::Error| SourceError::Query { target: target.clone(), reason: e.to_string() };
    let conn =
        Connection::open(path).map_err(|e| SourceError::NotSqlite { path: path.into(), reason: e.to_string() })?;
    // One big transaction with no journal and a large page cache: a failed seed leaves a database
    // to re-seed with --replace, and a finished one is switched to WAL like the CRM would run it.
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -524288; PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| SourceError::NotSqlite { path: path.into(), reason: e.to_string() })?;
    for table in TABLES {
        let exists: bool = conn
            .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table.name], |r| {
                r.get(0)
            })
            .map_err(err)?;
        if exists {
            let has_rows: bool = conn
                .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(table.name)), [], |r| r.get(0))
                .map_err(err)?;
            if has_rows && !options.replace {
                return Err(SourceError::AlreadySeeded { target, table: table.name.into() });
            }
        }
    }
    conn.execute_batch("BEGIN").map_err(err)?;
    for table in TABLES {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}; {};", quote_ident(table.name), table.create_sql(false)))
            .map_err(err)?;
    }
    let mut summary = SeedSummary::default();
    let mut total = 0u64;
    let mut write = |output: Output| -> Result<(), SourceError> {
        match output {
            Output::Rows(table, rows) => {
                let placeholders: Vec<String> = (1..=table.columns.len()).map(|i| format!("?{i}")).collect();
                let sql = format!("INSERT INTO {} VALUES ({})", quote_ident(table.name), placeholders.join(", "));
                let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
                for row in &rows {
                    stmt.execute(rusqlite::params_from_iter(row.iter().map(SqliteValue))).map_err(err)?;
                }
                *summary.rows.entry(table.name).or_default() += rows.len() as u64;
                total += rows.len() as u64;
                progress(total);
            }
            Output::Delete(table, keys) => {
                let sql = delete_sql(table, |i| format!("?{i}"));
                let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
                for key in &keys {
                    summary.deleted +=
                        stmt.execute(rusqlite::params_from_iter(key.iter().map(SqliteValue))).map_err(err)? as u64;
                }
                *summary.rows.entry(table.name).or_default() -= summary.deleted;
            }
        }
        Ok(())
    };
    let clients = Generator::new(options.seed, options.scale, &mut write).run()?;
    summary.clients = clients;
    conn.execute_batch("COMMIT; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;").map_err(err)?;
    Ok(summary)
}

fn delete_sql(table: &TableDef, placeholder: impl Fn(usize) -> String) -> String {
    let conditions: Vec<String> = table
        .primary_key
        .iter()
        .enumerate()
        .map(|(i, col)| format!("{} = {}", quote_ident(col), placeholder(i + 1)))
        .collect();
    format!("DELETE FROM {} WHERE {}", quote_ident(table.name), conditions.join(" AND "))
}

struct SqliteValue<'a>(&'a Value);

impl rusqlite::ToSql for SqliteValue<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use rusqlite::types::Value as V;
        Ok(ToSqlOutput::Owned(match self.0 {
            Value::Null => V::Null,
            Value::Text(s) | Value::Json(s) => return Ok(ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))),
            Value::Int(i) => V::Integer(*i),
            Value::Uuid(u) => V::Text(u.to_string()),
            Value::Money(cents) => V::Text(format!("{}.{:02}", cents / 100, (cents % 100).abs())),
            Value::Bool(b) => V::Integer(*b as i64),
            Value::Date(d) => V::Text(d.to_string()),
            // The canonical form compared by the SQLite extractor (see `sqlite.rs`).
            Value::Ts(ts) => V::Text(ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            Value::TextArray(items) => {
                V::Text(serde_json::to_string(items).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?)
            }
        }))
    }
}

async fn seed_postgres(
    url: &str,
    options: &SeedOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SeedSummary, SourceError> {
    let target = redact(url);
    let err = |e: tokio_postgres::Error| SourceError::Query { target: target.clone(), reason: db_error_reason(&e) };
    let (config, tls) = super::pgtls::connect_config(url)?;
    let (client, connection) = config.connect(tls).await.map_err(|e| SourceError::Unreachable {
        target: target.clone(),
        attempts: 1,
        reason: db_error_reason(&e),
    })?;
    tokio::spawn(connection);
    for table in TABLES {
        let exists: bool =
            client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.name]).await.map_err(err)?.get(0);
        let has_rows = exists
            && client
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(table.name)), &[])
                .await
                .map_err(err)?
                .get::<_, bool>(0);
        if has_rows && !options.replace {
            return Err(SourceError::AlreadySeeded { target, table: table.name.into() });
        }
    }
    client.batch_execute("BEGIN").await.map_err(err)?;
    for table in TABLES.iter().rev() {
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {} CASCADE", quote_ident(table.name)))
            .await
            .map_err(err)?;
    }
    for table in TABLES {
        client.batch_execute(&table.create_sql(true)).await.map_err(err)?;
    }

    // The generator runs on a blocking thread and hands batches over a small channel, so memory
    // stays bounded while COPY streams them into the server.
    let (tx, mut rx) = mpsc::channel::<Output>(4);
    let (scale, seed) = (options.scale, options.seed);
    let generator = tokio::task::spawn_blocking(move || {
        let mut send =
            |output: Output| tx.blocking_send(output).map_err(|_| SourceError::Stopped("writer ended".into()));
        Generator::new(seed, scale, &mut send).run()
    });
    let mut summary = SeedSummary::default();
    let mut total = 0u64;
    while let Some(output) = rx.recv().await {
        match output {
            Output::Rows(table, rows) => {
                let cols: Vec<String> = table.columns.iter().map(|(c, _)| quote_ident(c)).collect();
                let copy = format!("COPY {} ({}) FROM STDIN (FORMAT binary)", quote_ident(table.name), cols.join(", "));
                let sink = client.copy_in(&copy).await.map_err(err)?;
                let types: Vec<Type> = table.columns.iter().map(|(_, ty)| pg_type(*ty)).collect();
                let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
                for row in &rows {
                    let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    writer.as_mut().write(&values).await.map_err(err)?;
                }
                writer.finish().await.map_err(err)?;
                *summary.rows.entry(table.name).or_default() += rows.len() as u64;
                total += rows.len() as u64;
                progress(total);
            }
            Output::Delete(table, keys) => {
                let stmt = client.prepare(&delete_sql(table, |i| format!("${i}"))).await.map_err(err)?;
                for key in &keys {
                    let params: Vec<&(dyn ToSql + Sync)> = key.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                    summary.deleted += client.execute(&stmt, &params).await.map_err(err)?;
                }
                *summary.rows.entry(table.name).or_default() -= summary.deleted;
            }
        }
    }
    let clients = generator.await.map_err(|e| SourceError::Stopped(e.to_string()))??;
    summary.clients = clients;
    client.batch_execute("COMMIT; ANALYZE").await.map_err(err)?;
    Ok(summary)
}

fn pg_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Uuid => Type::UUID,
        ColumnType::Text => Type::TEXT,
        ColumnType::SmallInt => Type::INT2,
        ColumnType::Int => Type::INT4,
        ColumnType::BigInt => Type::INT8,
        ColumnType::Float => Type::FLOAT8,
        ColumnType::Numeric { .. } => Type::NUMERIC,
        ColumnType::Bool => Type::BOOL,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ,
        ColumnType::Timestamp => Type::TIMESTAMP,
        ColumnType::TextArray => Type::TEXT_ARRAY,
        ColumnType::Json => Type::JSONB,
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT4 => (i32::try_from(*i)?).to_sql(ty, out),
            Value::Int(i) if *ty == Type::INT2 => (i16::try_from(*i)?).to_sql(ty, out),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Uuid(u) => u.to_sql(ty, out),
            Value::Money(cents) => rust_decimal::Decimal::new(*cents, 2).to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Date(d) => d.to_sql(ty, out),
            Value::Ts(ts) => ts.to_sql(ty, out),
            Value::TextArray(items) => items.to_sql(ty, out),
            Value::Json(s) => serde_json::from_str::<serde_json::Value>(s)?.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
