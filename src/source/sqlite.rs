//! SQLite as a source. rusqlite is synchronous, so each snapshot owns one connection on its own
//! thread, inside one read transaction, and answers requests over a channel; batches come back
//! through a bounded channel, which keeps memory bounded however large the table.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::batch::{BatchBuilder, ColumnBuilder, days_since_epoch, parse_decimal, parse_timestamp};
use super::types::{ColumnType, SourceColumn};
use super::{CursorValue, ExtractSpec, Snapshot, SourceError, quote_ident};

// Timestamps in SQLite sources are compared as text in their canonical form, RFC 3339 in UTC with
// microseconds (`2026-01-02T03:04:05.000006Z`), which sorts like the instants it names.

pub struct SqliteSource {
    path: PathBuf,
}

impl SqliteSource {
    /// Opens an existing SQLite database read-only, and checks that it is one.
    pub fn open(path: &Path) -> Result<SqliteSource, SourceError> {
        let conn = open_read_only(path)?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
            .map_err(|e| SourceError::NotSqlite { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(SqliteSource { path: path.to_path_buf() })
    }

    pub fn snapshot(&self) -> Result<SqliteSnapshot, SourceError> {
        let conn = open_read_only(&self.path)?;
        let target = format!("sqlite://{}", self.path.display());
        let (requests, inbox) = std_mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let worker_target = target.clone();
        std::thread::Builder::new()
            .name("sqlite-snapshot".into())
            .spawn(move || serve(conn, worker_target, inbox, ready_tx))
            .map_err(|e| SourceError::Query { target: target.clone(), reason: e.to_string() })?;
        ready_rx.recv().map_err(|_| SourceError::Stopped("SQLite snapshot thread ended".into()))??;
        Ok(SqliteSnapshot { requests, target })
    }
}

fn open_read_only(path: &Path) -> Result<Connection, SourceError> {
    if !path.is_file() {
        return Err(SourceError::Unreachable {
            target: format!("sqlite://{}", path.display()),
            attempts: 1,
            reason: "no such file".into(),
        });
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| SourceError::NotSqlite { path: path.to_path_buf(), reason: e.to_string() })?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(|e| SourceError::NotSqlite { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(conn)
}

type Reply<T> = oneshot::Sender<Result<T, SourceError>>;

enum Request {
    Columns(String, Reply<Option<Vec<SourceColumn>>>),
    Count(String, Reply<u64>),
    Extract(ExtractSpec, mpsc::Sender<Result<RecordBatch, DataFusionError>>),
}

fn serve(
    conn: Connection,
    target: String,
    inbox: std_mpsc::Receiver<Request>,
    ready: std_mpsc::Sender<Result<(), SourceError>>,
) {
    let query_error = |e: rusqlite::Error| SourceError::Query { target: target.clone(), reason: e.to_string() };
    // A deferred transaction takes its snapshot at the first read; read once so that every request
    // after this sees the same state.
    let begun = conn
        .execute_batch("BEGIN")
        .and_then(|_| conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)))
        .map_err(query_error);
    let failed = begun.is_err();
    let _ = ready.send(begun.map(|_| ()));
    if failed {
        return;
    }
    for request in inbox {
        match request {
            Request::Columns(table, reply) => {
                let _ = reply.send(columns(&conn, &table).map_err(query_error));
            }
            Request::Count(table, reply) => {
                let sql = format!("SELECT count(*) FROM {}", quote_ident(&table));
                let count = conn.query_row(&sql, [], |r| r.get::<_, i64>(0)).map_err(query_error);
                let _ = reply.send(count.map(|c| c as u64));
            }
            Request::Extract(spec, out) => {
                if let Err(e) = extract(&conn, &target, &spec, &out) {
                    let _ = out.blocking_send(Err(DataFusionError::External(Box::new(e))));
                }
            }
        }
    }
    let _ = conn.execute_batch("ROLLBACK");
}

fn columns(conn: &Connection, table: &str) -> Result<Option<Vec<SourceColumn>>, rusqlite::Error> {
    let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")?;
    let cols = stmt
        .query_map([table], |row| {
            let name: String = row.get(0)?;
            let declared: String = row.get(1)?;
            Ok(SourceColumn { ty: ColumnType::parse(&declared).or(Some(affinity(&declared))), name, declared })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if cols.is_empty() { None } else { Some(cols) })
}

/// SQLite's own type affinity rules, for declarations the engine does not know.
fn affinity(declared: &str) -> ColumnType {
    let d = declared.to_ascii_uppercase();
    if d.contains("INT") {
        ColumnType::BigInt
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        ColumnType::Float
    } else {
        ColumnType::Text
    }
}

/// How a cursor column's values are written in the file: SQLite has no timestamp type, and text
/// compares character by character, so `2026-11-01 10:00:00` and `2026-11-01T10:00:00.000000Z`
/// differ at the eleventh. Learned from one value; a column that mixes shapes is not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredAs {
    /// ISO 8601 text: date and time separated by `sep`, `fraction` digits of seconds, then `Z`,
    /// `+00:00` or nothing.
    Text { sep: char, fraction: usize, suffix: &'static str },
    /// Integers: seconds since 1970 for timestamps, or an increasing id.
    Integer,
    /// Anything else: compared through `julianday()`.
    Unknown,
}

fn stored_as(conn: &Connection, table: &str, column: &str) -> Result<StoredAs, rusqlite::Error> {
    let col = quote_ident(column);
    let sql = format!("SELECT {col} FROM {} WHERE {col} IS NOT NULL LIMIT 1", quote_ident(table));
    let sample: Option<rusqlite::types::Value> = conn.query_row(&sql, [], |r| r.get(0)).optional()?;
    Ok(match sample {
        Some(rusqlite::types::Value::Integer(_)) | None => StoredAs::Integer,
        Some(rusqlite::types::Value::Text(text)) => text_shape(&text),
        Some(_) => StoredAs::Unknown,
    })
}

fn text_shape(text: &str) -> StoredAs {
    let bytes = text.as_bytes();
    if bytes.len() < 19 || !matches!(bytes[10], b'T' | b' ') {
        return StoredAs::Unknown;
    }
    let mut rest = &text[19..];
    let mut fraction = 0;
    if let Some(after_dot) = rest.strip_prefix('.') {
        fraction = after_dot.bytes().take_while(u8::is_ascii_digit).count();
        rest = &after_dot[fraction..];
    }
    let suffix = match rest {
        "Z" => "Z",
        "+00:00" => "+00:00",
        "" => "",
        _ => return StoredAs::Unknown,
    };
    if fraction > 9 {
        return StoredAs::Unknown;
    }
    StoredAs::Text { sep: char::from(bytes[10]), fraction, suffix }
}

/// `expr` (the column, or a bound's placeholder) as cursor bounds are compared: as written, or for
/// a shape of its own through `julianday()`, which compares instants whatever their text looks like.
fn compared(expr: &str, stored: StoredAs) -> String {
    match stored {
        StoredAs::Unknown => format!("julianday({expr})"),
        _ => expr.to_string(),
    }
}

fn cursor_param(value: &CursorValue, stored: StoredAs) -> rusqlite::types::Value {
    use chrono::Timelike;
    match (value, stored) {
        (CursorValue::Timestamp(ts), StoredAs::Text { sep, fraction, suffix }) => {
            let mut text = ts.format(&format!("%Y-%m-%d{sep}%H:%M:%S")).to_string();
            if fraction > 0 {
                let digits = ts.nanosecond() / 10u32.pow(9 - fraction as u32);
                text.push_str(&format!(".{digits:0fraction$}"));
            }
            text.push_str(suffix);
            rusqlite::types::Value::Text(text)
        }
        (CursorValue::Timestamp(ts), StoredAs::Integer) => rusqlite::types::Value::Integer(ts.timestamp()),
        (CursorValue::Timestamp(ts), StoredAs::Unknown) => {
            rusqlite::types::Value::Text(ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        }
        (CursorValue::Integer(i), _) => rusqlite::types::Value::Integer(*i),
    }
}

fn extract(
    conn: &Connection,
    target: &str,
    spec: &ExtractSpec,
    out: &mpsc::Sender<Result<RecordBatch, DataFusionError>>,
) -> Result<(), SourceError> {
    let query_error = |e: rusqlite::Error| SourceError::Query { target: target.into(), reason: e.to_string() };
    let cols: Vec<String> = spec.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let mut sql = format!("SELECT {} FROM {}", cols.join(", "), quote_ident(&spec.table));
    let mut params = Vec::new();
    if let Some(range) = &spec.range {
        let col = quote_ident(&range.column);
        let stored = stored_as(conn, &spec.table, &range.column).map_err(query_error)?;
        let column = compared(&col, stored);
        sql.push_str(&format!(" WHERE {column} > {}", compared("?1", stored)));
        params.push(cursor_param(&range.after, stored));
    }
    let mut stmt = conn.prepare(&sql).map_err(query_error)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(query_error)?;
    let types: Vec<ColumnType> = spec.columns.iter().map(SourceColumn::effective_type).collect();
    let mut builder = BatchBuilder::new(&spec.columns, spec.batch_rows);
    let unfinished = |reason: String| SourceError::Stopped(format!("table {}: {reason}", spec.table));
    while let Some(row) = rows.next().map_err(query_error)? {
        for (i, ty) in types.iter().enumerate() {
            let value = row.get_ref(i).map_err(query_error)?;
            append(&mut builder.columns[i], *ty, value).map_err(|reason| SourceError::Value {
                table: spec.table.clone(),
                column: spec.columns[i].name.clone(),
                expected: ty.to_string(),
                reason,
            })?;
        }
        builder.rows += 1;
        if builder.rows >= spec.batch_rows {
            let batch = builder.finish().map_err(unfinished)?;
            if out.blocking_send(Ok(batch)).is_err() {
                return Ok(());
            }
        }
    }
    if builder.rows > 0 {
        let batch = builder.finish().map_err(unfinished)?;
        let _ = out.blocking_send(Ok(batch));
    }
    Ok(())
}

/// Converts one SQLite value into the column's Arrow type. Errors describe the problem, never the
/// value (it may be PHI).
fn append(builder: &mut ColumnBuilder, ty: ColumnType, value: ValueRef<'_>) -> Result<(), String> {
    if let ValueRef::Null = value {
        builder.append_null();
        return Ok(());
    }
    let text = || -> Result<&str, String> {
        match value {
            ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| "text is not UTF-8".to_string()),
            _ => Err(format!("stored as {}", value.data_type())),
        }
    };
    let integer = || -> Result<i64, String> {
        match value {
            ValueRef::Integer(i) => Ok(i),
            ValueRef::Real(f) if f.fract() == 0.0 => Ok(f as i64),
            _ => text()?.trim().parse().map_err(|_| "not an integer".to_string()),
        }
    };
    match builder {
        ColumnBuilder::Utf8(b) => match value {
            ValueRef::Integer(i) => b.append_value(i.to_string()),
            ValueRef::Real(f) => b.append_value(f.to_string()),
            ValueRef::Blob(bytes) if ty == ColumnType::Uuid && bytes.len() == 16 => {
                let uuid = uuid::Uuid::from_slice(bytes).map_err(|e| e.to_string())?;
                b.append_value(uuid.to_string())
            }
            _ => b.append_value(text()?),
        },
        ColumnBuilder::Int16(b) => b.append_value(i16::try_from(integer()?).map_err(|_| "out of range for smallint")?),
        ColumnBuilder::Int32(b) => b.append_value(i32::try_from(integer()?).map_err(|_| "out of range for integer")?),
        ColumnBuilder::Int64(b) => b.append_value(integer()?),
        ColumnBuilder::Float64(b) => b.append_value(match value {
            ValueRef::Real(f) => f,
            ValueRef::Integer(i) => i as f64,
            _ => text()?.trim().parse().map_err(|_| "not a number".to_string())?,
        }),
        ColumnBuilder::Decimal { builder, scale, .. } => {
            let factor = 10f64.powi(*scale as i32);
            builder.append_value(match value {
                ValueRef::Integer(i) => (i as i128) * 10i128.pow(*scale as u32),
                ValueRef::Real(f) => (f * factor).round() as i128,
                _ => parse_decimal(text()?, *scale).ok_or("not a decimal number")?,
            })
        }
        ColumnBuilder::Bool(b) => b.append_value(match value {
            ValueRef::Integer(i) => i != 0,
            _ => match text()?.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" => true,
                "false" | "f" | "0" | "no" => false,
                _ => return Err("not a boolean".into()),
            },
        }),
        ColumnBuilder::Date(b) => {
            let t = text()?;
            let date = chrono::NaiveDate::parse_from_str(t.get(..10).unwrap_or(t), "%Y-%m-%d")
                .map_err(|_| "not a date (YYYY-MM-DD)".to_string())?;
            b.append_value(days_since_epoch(date))
        }
        ColumnBuilder::Timestamp(b) => {
            let ts = match value {
                ValueRef::Integer(secs) => chrono::DateTime::from_timestamp(secs, 0),
                _ => parse_timestamp(text()?),
            };
            b.append_value(ts.ok_or("not a timestamp")?.timestamp_micros())
        }
        ColumnBuilder::List(b) => {
            let t = text()?;
            let items: Vec<Option<String>> =
                serde_json::from_str(t).map_err(|_| "not a JSON array of strings".to_string())?;
            for item in items {
                b.values().append_option(item);
            }
            b.append(true)
        }
    }
    Ok(())
}

pub struct SqliteSnapshot {
    requests: std_mpsc::Sender<Request>,
    target: String,
}

impl SqliteSnapshot {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, SourceError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> SourceError {
        SourceError::Stopped(format!("the snapshot of {} ended", self.target))
    }
}

#[async_trait]
impl Snapshot for SqliteSnapshot {
    async fn columns(&mut self, table: &str) -> Result<Option<Vec<SourceColumn>>, SourceError> {
        self.ask(|reply| Request::Columns(table.to_string(), reply)).await
    }

    async fn count(&mut self, table: &str) -> Result<u64, SourceError> {
        self.ask(|reply| Request::Count(table.to_string(), reply)).await
    }

    async fn extract(&mut self, spec: ExtractSpec) -> Result<Vec<SendableRecordBatchStream>, SourceError> {
        let schema = spec.arrow_schema();
        let (tx, rx) = mpsc::channel(2);
        self.requests.send(Request::Extract(spec, tx)).map_err(|_| self.stopped())?;
        Ok(vec![Box::pin(RecordBatchStreamAdapter::new(schema, ReceiverStream::new(rx)))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> CursorValue {
        CursorValue::Timestamp(chrono::DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&chrono::Utc))
    }

    #[test]
    fn cursor_bounds_compare_as_the_column_is_written() {
        let conn = Connection::open_in_memory().expect("sqlite");
        for (stored, earlier, later) in [
            ("space, no fraction", "2026-11-01 09:00:00", "2026-11-01 23:00:00"),
            ("T, millis, Z", "2026-11-01T09:00:00.000Z", "2026-11-01T09:00:00.001Z"),
            ("T, micros, offset", "2026-11-01T09:00:00.000000+00:00", "2026-11-01T09:00:00.000001+00:00"),
            ("another offset", "2026-11-01T11:00:00+02:00", "2026-11-01T12:00:00+02:00"),
        ] {
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS t; CREATE TABLE t (updated_at TEXT);
                 INSERT INTO t VALUES ('{earlier}'), ('{later}');"
            ))
            .expect("table");
            let shape = stored_as(&conn, "t", "updated_at").expect("shape");
            let (column, bound) = (compared("updated_at", shape), compared("?1", shape));
            let count = |sql: &str, cursor: &CursorValue| -> i64 {
                conn.query_row(sql, [cursor_param(cursor, shape)], |r| r.get(0)).expect("count")
            };
            let after = format!("SELECT count(*) FROM t WHERE {column} > {bound}");
            let upto = format!("SELECT count(*) FROM t WHERE {column} <= {bound}");
            let first = at("2026-11-01T09:00:00Z");
            assert_eq!(count(&after, &first), 1, "{stored}: the later row is past the earlier's cursor");
            assert_eq!(count(&upto, &first), 1, "{stored}: the earlier row is within its own cursor");
        }
    }

    #[test]
    fn shapes_are_read_from_one_value() {
        assert_eq!(text_shape("2026-11-01 10:00:00"), StoredAs::Text { sep: ' ', fraction: 0, suffix: "" });
        assert_eq!(text_shape("2026-11-01T10:00:00.123456Z"), StoredAs::Text { sep: 'T', fraction: 6, suffix: "Z" });
        assert_eq!(text_shape("2026-11-01"), StoredAs::Unknown);
        assert_eq!(text_shape("2026-11-01T10:00:00+02:00"), StoredAs::Unknown);
    }
}
