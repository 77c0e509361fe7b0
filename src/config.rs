//! Typed configuration: `sokana.toml` plus environment overrides (`SOKANA_SECTION__KEY`), checked
//! at load time with errors that name the file, line and key. Owns nothing else.
//!
//! The overlay is written here rather than with a layered-config crate because those lose the line
//! numbers of TOML errors, and a newcomer's first mistake is usually a line in this file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Environment variables with this prefix and a `__` separator override config keys.
pub const ENV_PREFIX: &str = "SOKANA_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub project: ProjectConfig,
    #[serde(default)]
    pub warehouse: WarehouseConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub query: QueryConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Outgoing mail for reports; without it reports are made but not sent.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Outgoing webhooks by name: signed JSON POSTs on alerts and pipeline runs.
    #[serde(default)]
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// The directory the config file sits in; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// Directory holding `pipelines/`, `queries/` and `dashboards/`.
    #[serde(default = "dot")]
    pub dir: PathBuf,
}

impl Default for ProjectConfig {
    fn default() -> Self {
        ProjectConfig { dir: dot() }
    }
}

fn dot() -> PathBuf {
    PathBuf::from(".")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    /// A local directory, or `s3://bucket/prefix` (endpoint and credentials from `AWS_*` variables).
    #[serde(default = "default_warehouse_uri")]
    pub uri: String,
    /// Versions older than this are removed by vacuum.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// Compact a table once it has at least this many files.
    #[serde(default = "default_compact_min_files")]
    pub compact_min_files: usize,
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: u64,
    /// The Parquet codec: `lz4` (default), `snappy`, `zstd` or `none`.
    #[serde(default)]
    pub compression: crate::warehouse::Compression,
    /// A file of hex AES-256 keys, newest first: when set (or `SOKANA_WAREHOUSE_KEY` is), every
    /// object in the warehouse is encrypted with the first; the others still open older objects.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        WarehouseConfig {
            uri: default_warehouse_uri(),
            retention_hours: default_retention_hours(),
            compact_min_files: default_compact_min_files(),
            target_file_mb: default_target_file_mb(),
            compression: crate::warehouse::Compression::default(),
            key_file: None,
        }
    }
}

fn default_warehouse_uri() -> String {
    "warehouse".into()
}
fn default_retention_hours() -> u64 {
    168
}
fn default_compact_min_files() -> usize {
    16
}
fn default_target_file_mb() -> u64 {
    128
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; put passwords in the environment
    /// (`SOKANA_SOURCES__NAME__URL`) or in `PGPASSWORD`-style variables, never in the file.
    pub url: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Further attempts after a transient connection failure.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// PostgreSQL tables at least this large are read as parallel page ranges.
    #[serde(default = "default_parallel_min_mb")]
    pub parallel_min_mb: u64,
    /// How many page ranges such a table is read as at once; by default one per core, or one per
    /// two cores when the server runs on this machine, and never more than `pool_size - 1`.
    pub parallel_streams: Option<usize>,
}

impl SourceConfig {
    pub fn connect_options(&self) -> crate::source::ConnectOptions {
        crate::source::ConnectOptions {
            pool_size: self.pool_size,
            retries: self.retries,
            parallel_min_pages: (self.parallel_min_mb * 1024 / 8) as i64,
            parallel_streams: self.parallel_streams,
        }
    }
}

fn default_parallel_min_mb() -> u64 {
    32
}

fn default_pool_size() -> usize {
    4
}
fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_pgwire")]
    pub pgwire: SocketAddr,
    /// A PEM certificate chain and its private key: both endpoints then speak TLS only, and HTTP
    /// answers carry `Strict-Transport-Security`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Sites that may show signed dashboard links in a frame (`https://crm.example.org`): they
    /// go into the embed pages' `frame-ancestors`; every other page may not be framed at all.
    #[serde(default)]
    pub embed_origins: Vec<String>,
    /// The address people open this server at (`https://analytics.example.org`), for the links
    /// in reports' email; `http://LISTEN` when not given.
    #[serde(default)]
    pub public_url: Option<String>,
}

impl ServerConfig {
    /// The base of links to this server's pages, without a trailing `/`.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            pgwire: default_pgwire(),
            tls_cert: None,
            tls_key: None,
            embed_origins: Vec::new(),
            public_url: None,
        }
    }
}

/// Whether `text` is an origin as `frame-ancestors` takes it: `http` or `https`, a host, an
/// optional port, nothing after.
fn is_origin(text: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else { return false };
    matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some()
        && url.path() == "/"
        && !text.ends_with('/')
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_pgwire() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5433))
}

/// Limits and caching for queries from the CLI, the API, dashboards and the wire endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// `auto` (the faster engine per plan shape, learned from the query log; the default, since
    /// it answered TPC-H SF1 in 0.57 of DataFusion's time), `datafusion` or `duckdb`.
    #[serde(default = "default_engine")]
    pub engine: String,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
    /// Per query for DataFusion (which spills to disk beyond it); for the whole DuckDB database.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// Rows a collected result may have; exports stream and are not capped.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Result cache size; 0 turns the cache off.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
    #[serde(default = "default_cache_ttl_seconds")]
    pub cache_ttl_seconds: u64,
    /// Directory of saved queries (`*.sql`), relative to the project directory.
    #[serde(default = "default_queries_dir")]
    pub dir: PathBuf,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            engine: default_engine(),
            timeout_seconds: default_timeout_seconds(),
            memory_limit_mb: default_memory_limit_mb(),
            max_rows: default_max_rows(),
            cache_mb: default_cache_mb(),
            cache_ttl_seconds: default_cache_ttl_seconds(),
            dir: default_queries_dir(),
        }
    }
}

fn default_engine() -> String {
    "auto".into()
}
fn default_timeout_seconds() -> f64 {
    60.0
}
fn default_memory_limit_mb() -> u64 {
    2048
}
fn default_max_rows() -> u64 {
    100_000
}
fn default_cache_mb() -> u64 {
    256
}
fn default_cache_ttl_seconds() -> u64 {
    3600
}
fn default_queries_dir() -> PathBuf {
    PathBuf::from("queries")
}

/// Users, sessions and keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The metadata store: a SQLite path (default `STATE_DIR/meta.db`) or `postgres://…` (put the
    /// password in the environment: `SOKANA_AUTH__STORE`).
    #[serde(default)]
    pub store: Option<String>,
    /// 32 random bytes as hex that sign access tokens and key pseudonyms (default
    /// `STATE_DIR/auth.key`, made on first use). Keep it out of the repository.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default = "default_access_token_minutes")]
    pub access_token_minutes: i64,
    #[serde(default = "default_refresh_token_days")]
    pub refresh_token_days: i64,
    /// Failed logins in a row before a user name is locked (30 s, doubling up to 15 min).
    #[serde(default = "default_lockout_after")]
    pub lockout_after: i64,
    /// Login and refresh attempts per client address per minute.
    #[serde(default = "default_logins_per_minute")]
    pub logins_per_minute: u32,
    #[serde(default = "default_api_key_requests_per_minute")]
    pub api_key_requests_per_minute: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            store: None,
            key_file: None,
            access_token_minutes: default_access_token_minutes(),
            refresh_token_days: default_refresh_token_days(),
            lockout_after: default_lockout_after(),
            logins_per_minute: default_logins_per_minute(),
            api_key_requests_per_minute: default_api_key_requests_per_minute(),
        }
    }
}

fn default_access_token_minutes() -> i64 {
    15
}
fn default_refresh_token_days() -> i64 {
    30
}
fn default_lockout_after() -> i64 {
    5
}
fn default_logins_per_minute() -> u32 {
    20
}
fn default_api_key_requests_per_minute() -> u32 {
    600
}

/// Outgoing mail: reports, and the notices to administrators when one cannot be sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// `smtp://[USER@]HOST[:PORT]` (STARTTLS when the server offers it; `?tls=required` to insist)
    /// or `smtps://[USER@]HOST[:PORT]` (TLS from the first byte). No password here.
    pub url: String,
    /// The sender: `reports@example.org` or `Sokana Analytics <reports@example.org>`.
    pub from: String,
    /// The environment variable that holds the password of the URL's user.
    #[serde(default = "default_smtp_password_env")]
    pub password_env: String,
    /// Told by email when a report cannot be made or sent after its last attempt.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Attempts after the first when sending fails for a reason that may pass (no connection, a
    /// 4xx answer); the first after `retry_seconds`, each later one after twice the wait before.
    #[serde(default = "default_smtp_retries")]
    pub retries: u32,
    #[serde(default = "default_smtp_retry_seconds")]
    pub retry_seconds: u64,
    /// How long one SMTP exchange may take.
    #[serde(default = "default_smtp_timeout_seconds")]
    pub timeout_seconds: u64,
}

/// One receiver of webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`https://…`).
    pub url: String,
    /// The environment variable holding the secret the signature is made with.
    pub secret_env: String,
    /// The events it receives: `alert` (firing, resolved) and `pipeline_run` (succeeded, failed).
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// Attempts after the first when the receiver fails (no answer, not 2xx); the first after
    /// `retry_seconds`, each later one after twice the wait before.
    #[serde(default = "default_smtp_retries")]
    pub retries: u32,
    #[serde(default = "default_webhook_retry_seconds")]
    pub retry_seconds: u64,
    #[serde(default = "default_webhook_timeout_seconds")]
    pub timeout_seconds: u64,
}

/// The event classes a webhook may receive.
pub const WEBHOOK_EVENTS: [&str; 2] = ["alert", "pipeline_run"];

fn default_webhook_events() -> Vec<String> {
    WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect()
}
fn default_webhook_retry_seconds() -> u64 {
    30
}
fn default_webhook_timeout_seconds() -> u64 {
    10
}

fn default_smtp_password_env() -> String {
    "SOKANA_SMTP_PASSWORD".into()
}
fn default_smtp_retries() -> u32 {
    3
}
fn default_smtp_retry_seconds() -> u64 {
    60
}
fn default_smtp_timeout_seconds() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Run log and locks.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: default_state_dir() }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

impl SmtpConfig {
    /// The first bad key and what is wrong with it.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = url::Url::parse(&self.url).map_err(|e| ("url", format!("{e}")))?;
        if !matches!(url.scheme(), "smtp" | "smtps") || url.host_str().is_none_or(str::is_empty) {
            return Err(("url", "expected smtp://HOST[:PORT] or smtps://HOST[:PORT]".into()));
        }
        if url.password().is_some() {
            return Err(("url", format!("holds a password: put it in the environment variable {}", self.password_env)));
        }
        self.from.parse::<lettre::message::Mailbox>().map_err(|e| ("from", format!("{:?}: {e}", self.from)))?;
        for admin in &self.admins {
            admin.parse::<lettre::Address>().map_err(|e| ("admins", format!("{admin:?}: {e}")))?;
        }
        if self.timeout_seconds == 0 {
            return Err(("timeout_seconds", "must be at least 1".into()));
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path` if given, else `./sokana.toml` if present, else the defaults; then applies the
    /// environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let found = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("sokana.toml")).filter(|p| p.is_file()),
        };
        let (text, file) = match &found {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                (text, p.clone())
            }
            None => (String::new(), PathBuf::from("sokana.toml (defaults)")),
        };
        // Parse the file alone first: its errors carry line and column.
        let mut config: Config =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: file.clone(), message: e.to_string() })?;
        let overrides: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__")).collect();
        if !overrides.is_empty() {
            let mut table: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid { path: file.clone(), message: e.to_string() })?;
            for (var, value) in &overrides {
                let keys: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(|k| k.to_ascii_lowercase()).collect();
                set_path(&mut table, &keys, parse_env_value(value))
                    .map_err(|message| ConfigError::Env { var: var.clone(), message })?;
            }
            config = Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
                var: overrides.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
                message: e.to_string(),
            })?;
        }
        let base = found
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        // Canonical, not only absolute: `--config ../sokana.toml` would leave `..` in every path
        // made from it, which object_store's URLs refuse.
        config.base_dir = std::fs::canonicalize(&base).or_else(|_| std::path::absolute(&base)).unwrap_or(base);
        config.path = found;
        config.validate(&file)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: file.to_path_buf(),
            message: format!("key `{key}`: {message}"),
        };
        for (name, source) in &self.sources {
            crate::source::SourceUrl::parse(&source.url, &self.base_dir)
                .map_err(|e| invalid(&format!("sources.{name}.url"), e.to_string()))?;
            if source.pool_size == 0 {
                return Err(invalid(&format!("sources.{name}.pool_size"), "must be at least 1".into()));
            }
            if source.parallel_streams == Some(0) {
                return Err(invalid(&format!("sources.{name}.parallel_streams"), "must be at least 1".into()));
            }
        }
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) => return Err(invalid("server.tls_key", "missing: tls_cert needs its private key".into())),
            (None, Some(_)) => return Err(invalid("server.tls_cert", "missing: tls_key needs its certificate".into())),
            _ => {}
        }
        for (i, origin) in self.server.embed_origins.iter().enumerate() {
            if !is_origin(origin) {
                return Err(invalid(
                    &format!("server.embed_origins[{i}]"),
                    format!(
                        "{origin:?} is not an origin such as https://crm.example.org (scheme, host, optional port)"
                    ),
                ));
            }
        }
        if let Some(public) = &self.server.public_url
            && !url::Url::parse(public).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        {
            return Err(invalid("server.public_url", format!("{public:?} is not an http(s) URL")));
        }
        if let Some(smtp) = &self.smtp {
            smtp.validate().map_err(|(key, message)| invalid(&format!("smtp.{key}"), message))?;
        }
        for (name, hook) in &self.webhooks {
            let key = |k: &str| format!("webhooks.{name}.{k}");
            if !url::Url::parse(&hook.url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            {
                return Err(invalid(&key("url"), format!("{:?} is not an http(s) URL", hook.url)));
            }
            if let Some(unknown) = hook.events.iter().find(|e| !WEBHOOK_EVENTS.contains(&e.as_str())) {
                return Err(invalid(
                    &key("events"),
                    format!("{unknown:?} is not one of {}", WEBHOOK_EVENTS.join(", ")),
                ));
            }
            if hook.secret_env.trim().is_empty() {
                return Err(invalid(&key("secret_env"), "name the environment variable that holds the secret".into()));
            }
            if hook.timeout_seconds == 0 {
                return Err(invalid(&key("timeout_seconds"), "must be at least 1".into()));
            }
        }
        if self.warehouse.uri.trim().is_empty() {
            return Err(invalid("warehouse.uri", "must not be empty".into()));
        }
        if !["datafusion", "duckdb", "auto"].contains(&self.query.engine.as_str()) {
            return Err(invalid(
                "query.engine",
                format!("{:?} is not one of datafusion, duckdb, auto", self.query.engine),
            ));
        }
        if !(self.query.timeout_seconds > 0.0 && self.query.timeout_seconds.is_finite()) {
            return Err(invalid("query.timeout_seconds", "must be a positive number of seconds".into()));
        }
        if self.query.memory_limit_mb == 0 {
            return Err(invalid("query.memory_limit_mb", "must be at least 1".into()));
        }
        if self.query.max_rows == 0 {
            return Err(invalid("query.max_rows", "must be at least 1".into()));
        }
        if self.warehouse.target_file_mb == 0 {
            return Err(invalid("warehouse.target_file_mb", "must be at least 1".into()));
        }
        let auth = &self.auth;
        for (key, value, range) in [
            ("auth.access_token_minutes", auth.access_token_minutes, 1..=1440),
            ("auth.refresh_token_days", auth.refresh_token_days, 1..=365),
            ("auth.lockout_after", auth.lockout_after, 1..=100),
            ("auth.logins_per_minute", i64::from(auth.logins_per_minute), 1..=1_000_000),
            ("auth.api_key_requests_per_minute", i64::from(auth.api_key_requests_per_minute), 1..=10_000_000),
        ] {
            if !range.contains(&value) {
                return Err(invalid(key, format!("{value} is outside {}..={}", range.start(), range.end())));
            }
        }
        if let Some(store) = &auth.store
            && (store.starts_with("postgres://") || store.starts_with("postgresql://"))
            && store.parse::<tokio_postgres::Config>().is_err()
        {
            return Err(invalid("auth.store", "not a valid PostgreSQL URL".into()));
        }
        Ok(())
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    pub fn project_dir(&self) -> PathBuf {
        self.resolve(&self.project.dir)
    }

    /// The metadata store's location as configured: a path (default `STATE_DIR/meta.db`) or a URL.
    pub fn meta_store_url(&self) -> String {
        self.auth.store.clone().unwrap_or_else(|| self.state_dir().join("meta.db").display().to_string())
    }

    pub fn pipelines_dir(&self) -> PathBuf {
        self.project_dir().join("pipelines")
    }

    /// Dashboards (`*.toml`).
    pub fn dashboards_dir(&self) -> PathBuf {
        self.project_dir().join("dashboards")
    }

    pub fn queries_dir(&self) -> PathBuf {
        self.project_dir().join(&self.query.dir)
    }

    /// Metrics views (`*.toml`): `metrics/` in the saved queries' directory.
    pub fn metrics_dir(&self) -> PathBuf {
        self.queries_dir().join("metrics")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.state.dir)
    }

    /// The warehouse location as a URL: a local path becomes `file://` (absolute).
    pub fn warehouse_url(&self) -> Result<url::Url, ConfigError> {
        let uri = &self.warehouse.uri;
        let invalid = |message: String| ConfigError::Invalid {
            path: self.path.clone().unwrap_or_default(),
            message: format!("key `warehouse.uri`: {message}"),
        };
        if uri.contains("://") {
            let mut url = url::Url::parse(uri).map_err(|e| invalid(e.to_string()))?;
            if !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
            return Ok(url);
        }
        url::Url::from_directory_path(self.resolve(Path::new(uri)))
            .map_err(|_| invalid(format!("{uri:?} is not a usable directory path")))
    }
}

fn parse_env_value(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Ok(b) = value.parse::<bool>() {
        return toml::Value::Boolean(b);
    }
    toml::Value::String(value.to_string())
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("no key after the prefix".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set_path(inner, rest, value),
                _ => Err(format!("`{first}` is not a table in the config")),
            }
        }
    }
}

/// The configured warehouse, with its encryption keys: `SOKANA_WAREHOUSE_KEY` (hex keys, comma
/// separated, newest first) or else the file named by `warehouse.key_file`.
pub fn open_warehouse(config: &Config) -> Result<crate::warehouse::Warehouse, ConfigError> {
    let url = config.warehouse_url()?;
    let keys = if let Ok(text) = std::env::var(WAREHOUSE_KEY_VAR) {
        Some(
            crate::warehouse::Keyring::parse(&text, WAREHOUSE_KEY_VAR)
                .map_err(|e| ConfigError::Env { var: WAREHOUSE_KEY_VAR.into(), message: e.to_string() })?,
        )
    } else if let Some(file) = &config.warehouse.key_file {
        let path = config.resolve(file);
        let invalid = |message: String| ConfigError::Invalid {
            path: config.path.clone().unwrap_or_default(),
            message: format!("key `warehouse.key_file`: {message}"),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Some(crate::warehouse::Keyring::parse(&text, &path.display().to_string()).map_err(|e| invalid(e.to_string()))?)
    } else {
        None
    };
    Ok(crate::warehouse::Warehouse::with_keys(url, keys).with_compression(config.warehouse.compression))
}

/// The environment variable that holds the warehouse's encryption keys.
pub const WAREHOUSE_KEY_VAR: &str = "SOKANA_WAREHOUSE_KEY";

impl Config {
    /// The maintenance settings of the `[warehouse]` section.
    pub fn maintenance(&self) -> crate::warehouse::Maintenance {
        crate::warehouse::Maintenance {
            compact_min_files: self.warehouse.compact_min_files,
            target_file_size: self.warehouse.target_file_mb * 1024 * 1024,
            retention_hours: self.warehouse.retention_hours,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sokana.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let (_dir, path) = write("[server]\nlisten = \"127.0.0.1:8080\"\n[sources.core]\nurl = \"sqlite://a.db\"\n");
        let env = [
            ("SOKANA_SERVER__LISTEN".to_string(), "127.0.0.1:9000".to_string()),
            ("SOKANA_SOURCES__CORE__URL".to_string(), "postgres://u@localhost/db".to_string()),
            ("SOKANA_DEMO_PASSWORD".to_string(), "ignored".to_string()),
        ];
        let config = Config::load_with_env(Some(&path), env).unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.sources["core"].url, "postgres://u@localhost/db");
    }

    /// `--config ../sokana.toml` from a folder beside the project: paths made from it hold no `..`
    /// (object_store refuses a warehouse URL with one).
    #[test]
    fn paths_relative_to_a_config_named_through_dot_dot_are_plain() {
        let (dir, _path) = write("[warehouse]\nuri = \"warehouse\"\n");
        std::fs::create_dir(dir.path().join("out")).unwrap();
        let through = dir.path().join("out").join("..").join("sokana.toml");
        let config = Config::load_with_env(Some(&through), []).unwrap();
        let warehouse = config.resolve(Path::new("warehouse"));
        assert!(!warehouse.components().any(|c| c == std::path::Component::ParentDir), "{}", warehouse.display());
        assert_eq!(warehouse, std::fs::canonicalize(dir.path()).unwrap().join("warehouse"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let (_dir, path) = write("[warehouse]\nuri = \"w\"\nretention_hours = \"soon\"\n");
        let err = Config::load_with_env(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("sokana.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("retention_hours"), "{err}");

        let (_dir, path) = write("[warehouse]\ncompression = \"gzip\"\n");
        let err = Config::load_with_env(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("compression") && err.contains("lz4"), "{err}");

        let (_dir, path) = write("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n");
        let err = Config::load_with_env(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("listne") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_source_url_is_reported_with_its_key() {
        let (_dir, path) = write("[sources.core]\nurl = \"mysql://x\"\n");
        let err = Config::load_with_env(Some(&path), []).unwrap_err().to_string();
        assert!(err.contains("sources.core.url"), "{err}");
    }
}

/// A mistake in one of the project's files (a metrics view, a dashboard): the file, the line when
/// known, and what is wrong, naming the key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct FileError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// `text` (the file at `path`) as TOML of type `T`; a mistake names the line and the key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| FileError {
        path: path.to_path_buf(),
        line: e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        message: e.message().trim().to_string(),
    })
}

/// Every `*.toml` file in `dir` through `parse`, in name order, and the files that did not load:
/// one bad file does not take the others down. Nothing when the folder does not exist.
pub fn load_each<T>(dir: &Path, parse: impl Fn(&Path, &str) -> Result<T, FileError>) -> (Vec<T>, Vec<FileError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), Vec::new()),
        Err(e) => return (Vec::new(), vec![FileError { path: dir.to_path_buf(), line: None, message: e.to_string() }]),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let (mut loaded, mut problems) = (Vec::new(), Vec::new());
    for path in paths {
        let result = std::fs::read_to_string(&path)
            .map_err(|e| FileError { path: path.clone(), line: None, message: e.to_string() })
            .and_then(|text| parse(&path, &text));
        match result {
            Ok(item) => loaded.push(item),
            Err(e) => problems.push(e),
        }
    }
    (loaded, problems)
}

/// The JSON Schema of a file format `T`, as committed in `schemas/` (pretty, ending in a newline).
pub fn schema_text<T: schemars::JsonSchema>() -> String {
    format!("{}\n", serde_json::to_string_pretty(&schemars::schema_for!(T)).unwrap_or_default())
}
