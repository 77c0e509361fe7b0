//! The warehouse: Delta Lake tables of Parquet files on object storage (a local folder by default,
//! `s3://` by URL). Owns table naming and layout, atomic commits with their provenance, merges by
//! primary key, schema checks, compaction and vacuum. It knows nothing of SQL engines, sources or
//! HTTP: callers hand it Arrow streams.

mod erase;
mod load;
mod parquet;
mod seal;
mod sealed;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Once};

use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;
use url::Url;

pub use load::{LoadOutcome, LoadRequest, Maintenance, ReplaceRequest, SyncMode};
pub use parquet::Compression;
pub use seal::{SealReport, seal_all};
pub use sealed::{KeyError, Keyring};

/// The schemas tables live in.
pub const SCHEMAS: &[&str] = &["raw", "marts"];

/// Key under which the engine records its own provenance in each Delta commit.
pub const COMMIT_KEY: &str = "sokana";

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("warehouse table {table}: {source}")]
    Delta { table: String, source: Box<DeltaTableError> },
    #[error("warehouse {location}: {reason}")]
    Storage { location: String, reason: String },
    #[error(
        "warehouse table {table}, column {column}: type changed in the source from {was} to {now}; \
         refusing to load (migrate the table, or map the column in the pipeline)"
    )]
    TypeChanged { table: String, column: String, was: String, now: String },
    #[error("warehouse table {table}: {reason}")]
    Invalid { table: String, reason: String },
    /// Reading the source's rows, or computing the changes and deletes from them, failed.
    #[error("warehouse table {table}: preparing the load failed: {reason}")]
    Source { table: String, reason: String },
}

impl WarehouseError {
    pub(crate) fn delta(table: &TableName, e: DeltaTableError) -> WarehouseError {
        WarehouseError::Delta { table: table.to_string(), source: Box::new(e) }
    }
}

/// `schema.name`, e.g. `raw.phi_clients` or `marts.mart_revenue_monthly`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

/// A name of lower-case letters, digits and `_`, not starting with a digit: a table's, a column's
/// or a model's as files and SQL may spell it unquoted.
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl FromStr for TableName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (schema, name) = s.split_once('.').ok_or_else(|| format!("{s:?} is not schema.table (e.g. raw.{s})"))?;
        if !SCHEMAS.contains(&schema) {
            return Err(format!("{s:?}: schema must be one of {}", SCHEMAS.join(", ")));
        }
        if !is_identifier(name) {
            return Err(format!("{s:?}: table name must be lower-case letters, digits and _"));
        }
        Ok(TableName { schema: schema.into(), name: name.into() })
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// A handle on the warehouse root.
#[derive(Debug, Clone)]
pub struct Warehouse {
    root: Url,
    storage_options: HashMap<String, String>,
    /// Set when the warehouse is encrypted at rest.
    keys: Option<Keyring>,
    /// Whether the root's encryption marker agrees with `keys`; checked once per handle.
    sealing_checked: Arc<tokio::sync::OnceCell<()>>,
    /// The codec of the Parquet files this handle writes.
    compression: Compression,
}

static REGISTER_HANDLERS: Once = Once::new();

impl Warehouse {
    /// `root` must end with `/`. For `s3://` the endpoint and credentials come from the usual
    /// `AWS_*` environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …).
    pub fn new(root: Url) -> Warehouse {
        Warehouse::with_keys(root, None)
    }

    /// Whether its files are encrypted at rest: nothing derived from them may then be written to
    /// disk in the clear (DataFusion's spill files included).
    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// A warehouse encrypted at rest with `keys` (see [`sealed`]), or plain when `None`.
    pub fn with_keys(root: Url, keys: Option<Keyring>) -> Warehouse {
        REGISTER_HANDLERS.call_once(|| {
            deltalake::aws::register_handlers(None);
            seal::register_handlers();
        });
        let mut storage_options = HashMap::new();
        if root.scheme() == "s3" {
            // Plain-HTTP endpoints (a local S3 server) and servers without a locking provider.
            if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://")) {
                storage_options.insert("AWS_ALLOW_HTTP".into(), "true".into());
            }
            storage_options.insert("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "true".into());
            storage_options.insert("conditional_put".into(), "etag".into());
        }
        Warehouse { root, storage_options, keys, sealing_checked: Arc::default(), compression: Compression::default() }
    }

    /// Writes Parquet files with `compression` (LZ4 unless set).
    pub fn with_compression(mut self, compression: Compression) -> Warehouse {
        self.compression = compression;
        self
    }

    /// The warehouse folder, when the warehouse is on local disk.
    pub fn local_root(&self) -> Option<std::path::PathBuf> {
        self.root.to_file_path().ok()
    }

    /// The warehouse folder, when its Parquet files can be read as they are (on local disk and not
    /// encrypted): what DuckDB needs.
    pub fn plain_local_root(&self) -> Option<std::path::PathBuf> {
        self.keys.is_none().then(|| self.local_root()).flatten()
    }

    pub fn table_url(&self, table: &TableName) -> Result<Url, WarehouseError> {
        self.root
            .join(&format!("{}/{}/", table.schema, table.name))
            .map_err(|e| WarehouseError::Storage { location: self.root.to_string(), reason: e.to_string() })
    }

    /// Opens a table; `None` if it has never been committed.
    pub async fn open(&self, table: &TableName) -> Result<Option<DeltaTable>, WarehouseError> {
        self.sealing_checked.get_or_try_init(|| seal::check(self)).await?;
        // Asking delta-rs about a table that does not exist makes it log an error; list first.
        let (store, root) = self.store()?;
        if !self
            .is_committed(store.as_ref(), &root.clone().join(table.schema.as_str()).join(table.name.as_str()))
            .await?
        {
            return Ok(None);
        }
        let handle = self.builder(table, store, &root)?.load().await.map_err(|e| WarehouseError::delta(table, e))?;
        Ok(Some(handle))
    }

    /// A Delta builder for `table`: on its own URL when plain; through the encrypting store over
    /// `store` (the warehouse's, rooted at `root`), under a `sealed://` URL of its own, when
    /// encrypted (see [`seal`]).
    fn builder(
        &self,
        table: &TableName,
        store: Arc<dyn ObjectStore>,
        root: &StorePath,
    ) -> Result<DeltaTableBuilder, WarehouseError> {
        let url = self.table_url(table)?;
        let builder = match &self.keys {
            None => DeltaTableBuilder::from_url(url),
            Some(keys) => {
                let sealed_url = seal::table_url(&self.root, root, keys, table)?;
                DeltaTableBuilder::from_url(sealed_url.clone()).map(|b| {
                    let sealed = sealed::SealedStore::new(store, keys.clone(), root.clone());
                    b.with_storage_backend(Arc::new(sealed), sealed_url)
                })
            }
        };
        builder
            .map(|b| b.with_storage_options(self.storage_options.clone()))
            .map_err(|e| WarehouseError::delta(table, e))
    }

    /// A handle for a table that may not exist yet (writing to it creates it).
    pub(crate) async fn handle(&self, table: &TableName) -> Result<DeltaTable, WarehouseError> {
        if let Some(existing) = self.open(table).await? {
            return Ok(existing);
        }
        let url = self.table_url(table)?;
        if let Ok(dir) = url.to_file_path() {
            std::fs::create_dir_all(&dir).map_err(|e| WarehouseError::Storage {
                location: dir.display().to_string(),
                reason: format!("cannot create the table directory: {e}"),
            })?;
        }
        let (store, root) = self.store()?;
        self.builder(table, store, &root)?.build().map_err(|e| WarehouseError::delta(table, e))
    }

    /// Whether the table directory at `dir` has a Delta log.
    async fn is_committed(&self, store: &dyn ObjectStore, dir: &StorePath) -> Result<bool, WarehouseError> {
        let log = dir.clone().join("_delta_log");
        match store.list(Some(&log)).try_next().await {
            Ok(entry) => Ok(entry.is_some()),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(WarehouseError::Storage { location: self.root.to_string(), reason: e.to_string() }),
        }
    }

    fn store(&self) -> Result<(Arc<dyn ObjectStore>, StorePath), WarehouseError> {
        let options: Vec<(String, String)> = self
            .storage_options
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .chain(std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k.to_ascii_lowercase(), v)))
            .collect();
        let (store, path) = object_store::parse_url_opts(&self.root, options)
            .map_err(|e| WarehouseError::Storage { location: self.root.to_string(), reason: e.to_string() })?;
        Ok((Arc::from(store), path))
    }

    /// Every committed table, sorted by name.
    pub async fn list_tables(&self) -> Result<Vec<TableName>, WarehouseError> {
        let (store, root) = self.store()?;
        let storage_error =
            |e: object_store::Error| WarehouseError::Storage { location: self.root.to_string(), reason: e.to_string() };
        let mut tables = Vec::new();
        for schema in SCHEMAS {
            let prefix = root.clone().join(*schema);
            let listing = match store.list_with_delimiter(Some(&prefix)).await {
                Ok(listing) => listing,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(storage_error(e)),
            };
            for dir in listing.common_prefixes {
                let Some(name) = dir.filename() else { continue };
                if self.is_committed(store.as_ref(), &dir).await?
                    && let Ok(table) = format!("{schema}.{name}").parse()
                {
                    tables.push(table);
                }
            }
        }
        tables.sort();
        Ok(tables)
    }

    /// The engine's provenance of the newest load commit of `table` (run id, pipeline, a model's inputs, …).
    pub async fn last_load(
        &self,
        table: &DeltaTable,
        name: &TableName,
    ) -> Result<Option<serde_json::Value>, WarehouseError> {
        let mut history = table.history(None);
        while let Some(info) = history.try_next().await.map_err(|e| WarehouseError::delta(name, e))? {
            if let Some(value) = info.info.get(COMMIT_KEY) {
                return Ok(Some(value.clone()));
            }
        }
        Ok(None)
    }

    /// The largest value of `column` in the current version of `table`: a null scalar when the
    /// column holds none, or is not in the table yet (a cursor column added to the source and
    /// named in the same change: the load then reads everything and merges it). An incremental
    /// load's cursor is read this way: the table's own rows are the record of what was loaded,
    /// committed atomically with them by construction.
    pub async fn max_value(
        &self,
        table: &DeltaTable,
        name: &TableName,
        column: &str,
    ) -> Result<datafusion::scalar::ScalarValue, WarehouseError> {
        use datafusion::functions_aggregate::expr_fn::max;
        let failed = |e: datafusion::error::DataFusionError| WarehouseError::Invalid {
            table: name.to_string(),
            reason: format!("reading the largest {column:?}: {e}"),
        };
        let provider = table.table_provider().await.map_err(failed)?;
        if provider.schema().field_with_name(column).is_err() {
            return Ok(datafusion::scalar::ScalarValue::Null);
        }
        let batches = datafusion::prelude::SessionContext::new()
            .read_table(provider)
            .and_then(|t| t.aggregate(Vec::new(), vec![max(datafusion::prelude::ident(column))]))
            .map_err(failed)?
            .collect()
            .await
            .map_err(failed)?;
        match batches.iter().find(|b| b.num_rows() > 0) {
            Some(batch) => datafusion::scalar::ScalarValue::try_from_array(batch.column(0), 0).map_err(failed),
            None => Ok(datafusion::scalar::ScalarValue::Null),
        }
    }
}
