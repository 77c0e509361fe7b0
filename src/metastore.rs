//! The engine's own metadata store: users, sessions, refresh tokens, recovery codes, API keys,
//! login failures and the audit trail, whose tables and migrations it owns. A SQLite file by default
//! (`STATE_DIR/meta.db`), PostgreSQL by URL when several instances share it. Both speak the same
//! SQL: text and 64-bit integer columns only, parameters written `$1, $2…` (SQLite reads them as
//! `?1, ?2…`). It stores rows and knows nothing of what they mean: `auth` does, and the built-in
//! audit pipeline reads the trail from here as a source.
//!
//! Written over rusqlite and tokio-postgres, which the project already uses, rather than sqlx:
//! sqlx's SQLite driver links its own sqlite3 beside rusqlite's, and Cargo allows only one.

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::source::redact;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store {target}: {reason}")]
    Backend { target: String, reason: String },
    #[error("metadata store {target}: migration {version} failed: {reason}")]
    Migration { target: String, version: i64, reason: String },
}

/// One cell: the store keeps only text and integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Value {
        v.map_or(Value::Null, Value::Int)
    }
}
impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Value {
        v.map_or(Value::Null, Value::Text)
    }
}

/// One row of a result, read by column position.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    pub fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(Value::Text(s)) => s.clone(),
            Some(Value::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }

    pub fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or(0)
    }

    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }
}

/// Schema changes in order; each runs once, recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        disabled BIGINT NOT NULL DEFAULT 0,
        totp_secret TEXT,
        totp_enabled BIGINT NOT NULL DEFAULT 0,
        totp_last_step BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        password_changed_at BIGINT NOT NULL
    );
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_seen_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        user_agent TEXT NOT NULL,
        ip_prefix TEXT NOT NULL,
        -- 0 while an account that needs a second factor has not set one up: the session may do that only.
        complete BIGINT NOT NULL,
        revoked_at BIGINT,
        revoked_reason TEXT
    );
    CREATE INDEX sessions_by_user ON sessions (user_name);
    CREATE TABLE refresh_tokens (
        hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        rotated_at BIGINT
    );
    CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
    CREATE TABLE recovery_codes (
        user_name TEXT NOT NULL,
        hash TEXT NOT NULL,
        used_at BIGINT,
        PRIMARY KEY (user_name, hash)
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        role TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT,
        last_used_at BIGINT
    );
    CREATE TABLE login_failures (
        user_name TEXT PRIMARY KEY,
        failures BIGINT NOT NULL,
        locked_until BIGINT NOT NULL
    );",
    ),
    (
        2,
        "CREATE TABLE audit (
        seq BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        user_name TEXT NOT NULL,
        role TEXT NOT NULL,
        origin TEXT NOT NULL,
        address TEXT NOT NULL,
        request_id TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL,
        tables TEXT NOT NULL,
        columns TEXT NOT NULL,
        rows_read BIGINT NOT NULL,
        outcome TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )",
    ),
];

#[derive(Clone)]
pub struct MetaStore {
    backend: Backend,
    /// The file or the URL without its password, for messages.
    target: String,
}

#[derive(Clone)]
enum Backend {
    Sqlite { writer: Arc<Mutex<rusqlite::Connection>>, readers: Arc<Readers> },
    Postgres(Pool),
}

/// Read-only connections to a SQLite store, kept for reuse. In WAL mode a reader sees every commit
/// made before its statement began and never waits for the writer, so a key check is not held up
/// behind a batch of audit records being synced to disk.
struct Readers {
    path: std::path::PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Idle readers kept; more are opened under load and closed after.
const IDLE_READERS: usize = 8;

impl Readers {
    fn take(&self) -> Result<rusqlite::Connection, String> {
        if let Some(conn) = self.idle.lock().map_err(|e| e.to_string())?.pop() {
            return Ok(conn);
        }
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags).map_err(|e| e.to_string())?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| e.to_string())?;
        Ok(conn)
    }

    fn give_back(&self, conn: rusqlite::Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_READERS
        {
            idle.push(conn);
        }
    }
}

impl MetaStore {
    /// Opens the store at `url` (`sqlite://PATH` or a path; `postgres://…`) and brings its schema
    /// up to date.
    pub async fn open(url: &str, base: &Path) -> Result<MetaStore, StoreError> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(url)?
        } else {
            let path = base.join(url.strip_prefix("sqlite://").unwrap_or(url));
            Self::open_sqlite(&path)?
        };
        store.migrate().await?;
        Ok(store)
    }

    fn open_sqlite(path: &Path) -> Result<MetaStore, StoreError> {
        let target = path.display().to_string();
        let fail = |e: &dyn std::fmt::Display| StoreError::Backend { target: target.clone(), reason: e.to_string() };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        let existed = path.exists();
        let conn = rusqlite::Connection::open(path).map_err(|e| fail(&e))?;
        if !existed {
            restrict(path).map_err(|e| fail(&e))?;
        }
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(|e| fail(&e))?;
        let readers = Readers { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) };
        Ok(MetaStore {
            backend: Backend::Sqlite { writer: Arc::new(Mutex::new(conn)), readers: Arc::new(readers) },
            target,
        })
    }

    fn open_postgres(url: &str) -> Result<MetaStore, StoreError> {
        let target = redact(url);
        let (config, tls) = crate::source::pgtls::connect_config(url)
            .map_err(|e| StoreError::Backend { target: target.clone(), reason: e.to_string() })?;
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(8)
            .build()
            .map_err(|e| StoreError::Backend { target: target.clone(), reason: e.to_string() })?;
        Ok(MetaStore { backend: Backend::Postgres(pool), target })
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Backend { target: self.target.clone(), reason: e.to_string() }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            &[],
        )
        .await?;
        let applied: Vec<i64> =
            self.query("SELECT version FROM schema_migrations", &[]).await?.iter().map(|r| r.int(0)).collect();
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let record = format!(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ({version}, {})",
                chrono::Utc::now().timestamp()
            );
            self.batch(&format!("{sql};\n{record}")).await.map_err(|e| StoreError::Migration {
                target: self.target.clone(),
                version: *version,
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Runs `work` on the SQLite connection, off the async threads.
    async fn on_sqlite<T: Send + 'static>(
        &self,
        conn: &Arc<Mutex<rusqlite::Connection>>,
        work: impl FnOnce(&mut rusqlite::Connection) -> Result<T, String> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = conn.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().map_err(|e| e.to_string())?;
            work(&mut conn)
        })
        .await
        .map_err(|e| self.error(e))?;
        outcome.map_err(|e| self.error(e))
    }

    /// Runs several statements in one transaction.
    async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite { writer: conn, .. } => {
                let sql = format!("BEGIN IMMEDIATE; {sql}; COMMIT;");
                self.on_sqlite(conn, move |conn| {
                    conn.execute_batch(&sql).map_err(|e| {
                        let _ = conn.execute_batch("ROLLBACK");
                        e.to_string()
                    })
                })
                .await
            }
            Backend::Postgres(pool) => {
                let mut client = pool.get().await.map_err(|e| self.error(e))?;
                let tx = client.transaction().await.map_err(|e| self.error(e))?;
                tx.batch_execute(sql).await.map_err(|e| self.error(e))?;
                tx.commit().await.map_err(|e| self.error(e))
            }
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite { writer: conn, .. } => {
                let (sql, params) = (sqlite_sql(sql), params.to_vec());
                self.on_sqlite(conn, move |conn| {
                    let mut statement = conn.prepare_cached(&sql).map_err(|e| e.to_string())?;
                    statement
                        .execute(rusqlite::params_from_iter(params.iter().map(to_sqlite)))
                        .map(|n| n as u64)
                        .map_err(|e| e.to_string())
                })
                .await
            }
            Backend::Postgres(pool) => {
                let client = pool.get().await.map_err(|e| self.error(e))?;
                let boxed = to_postgres(params);
                let refs = as_refs(&boxed);
                client.execute(sql, &refs).await.map_err(|e| self.error(pg_reason(&e)))
            }
        }
    }

    /// Runs one statement once per row of parameters, all in one transaction.
    pub async fn execute_many(&self, sql: &str, rows: Vec<Vec<Value>>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite { writer: conn, .. } => {
                let sql = sqlite_sql(sql);
                self.on_sqlite(conn, move |conn| {
                    let tx = conn.transaction().map_err(|e| e.to_string())?;
                    {
                        let mut statement = tx.prepare_cached(&sql).map_err(|e| e.to_string())?;
                        for row in &rows {
                            statement
                                .execute(rusqlite::params_from_iter(row.iter().map(to_sqlite)))
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    tx.commit().map_err(|e| e.to_string())
                })
                .await
            }
            Backend::Postgres(pool) => {
                let mut client = pool.get().await.map_err(|e| self.error(e))?;
                let tx = client.transaction().await.map_err(|e| self.error(e))?;
                let statement = tx.prepare(sql).await.map_err(|e| self.error(pg_reason(&e)))?;
                for row in &rows {
                    let boxed = to_postgres(row);
                    let refs = as_refs(&boxed);
                    tx.execute(&statement, &refs).await.map_err(|e| self.error(pg_reason(&e)))?;
                }
                tx.commit().await.map_err(|e| self.error(pg_reason(&e)))
            }
        }
    }

    /// The first row of a query that reads one row by its key: what every request's key or
    /// session check asks. On SQLite it runs on the calling thread, on a reader connection: a read
    /// of one row from the page cache takes microseconds, less than handing it to another thread
    /// and back would.
    pub async fn lookup(&self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        match &self.backend {
            Backend::Sqlite { readers, .. } => {
                let conn = readers.take().map_err(|e| self.error(e))?;
                let rows = sqlite_rows(&conn, &sqlite_sql(sql), params);
                readers.give_back(conn);
                Ok(rows.map_err(|e| self.error(e))?.into_iter().next())
            }
            Backend::Postgres(_) => Ok(self.query(sql, params).await?.into_iter().next()),
        }
    }

    /// Runs one query; its rows.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        match &self.backend {
            Backend::Sqlite { readers, .. } => {
                let (sql, params) = (sqlite_sql(sql), params.to_vec());
                let readers = readers.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let conn = readers.take()?;
                    let rows = sqlite_rows(&conn, &sql, &params);
                    readers.give_back(conn);
                    rows
                })
                .await
                .map_err(|e| self.error(e))?;
                outcome.map_err(|e| self.error(e))
            }
            Backend::Postgres(pool) => {
                let client = pool.get().await.map_err(|e| self.error(e))?;
                let boxed = to_postgres(params);
                let refs = as_refs(&boxed);
                let rows = client.query(sql, &refs).await.map_err(|e| self.error(pg_reason(&e)))?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| {
                                let ty = row.columns()[i].type_();
                                if *ty == tokio_postgres::types::Type::INT8 {
                                    row.try_get::<_, Option<i64>>(i).map(Value::from)
                                } else {
                                    row.try_get::<_, Option<String>>(i).map(Value::from)
                                }
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .map(Row)
                            .map_err(|e| self.error(e))
                    })
                    .collect()
            }
        }
    }
}

/// `$1` → `?1`: SQLite numbers `?NNN` parameters exactly, whatever order they appear in.
/// The rows `sql` answers on `conn`, integers and text as such, anything else as NULL.
fn sqlite_rows(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>, String> {
    let mut statement = conn.prepare_cached(sql).map_err(|e| e.to_string())?;
    let columns = statement.column_count();
    let mut rows =
        statement.query(rusqlite::params_from_iter(params.iter().map(to_sqlite))).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(match row.get_ref(i).map_err(|e| e.to_string())? {
                rusqlite::types::ValueRef::Integer(n) => Value::Int(n),
                rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                _ => Value::Null,
            });
        }
        out.push(Row(values));
    }
    Ok(out)
}

fn sqlite_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn to_sqlite(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(n) => rusqlite::types::Value::Integer(*n),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

type PgParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

fn to_postgres(values: &[Value]) -> Vec<PgParam> {
    values
        .iter()
        .map(|value| -> PgParam {
            match value {
                // Only integer columns are ever set to NULL by a parameter.
                Value::Null => Box::new(None::<i64>),
                Value::Int(n) => Box::new(*n),
                Value::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

fn as_refs(params: &[PgParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params.iter().map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync)).collect()
}

fn pg_reason(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|db| db.message().to_string()).unwrap_or_else(|| e.to_string())
}

/// The store holds password hashes and token digests: readable by its owner only.
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_keep_their_numbers_in_sqlite() {
        assert_eq!(
            sqlite_sql("UPDATE t SET a = $2 WHERE b = $1 AND c = '$x'"),
            "UPDATE t SET a = ?2 WHERE b = ?1 AND c = '$x'"
        );
    }

    #[tokio::test]
    async fn migrations_run_once_and_rows_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open("meta.db", dir.path()).await.unwrap();
        store
            .execute(
                "INSERT INTO login_failures (user_name, failures, locked_until) VALUES ($1, $2, $3)",
                &["x".into(), 2.into(), 0.into()],
            )
            .await
            .unwrap();
        let again = MetaStore::open("sqlite://meta.db", dir.path()).await.unwrap();
        let rows = again.query("SELECT user_name, failures FROM login_failures", &[]).await.unwrap();
        assert_eq!((rows[0].text(0), rows[0].int(1)), ("x".to_string(), 2));
    }
}
