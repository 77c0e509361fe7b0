//! The result cache: answers keyed by everything that decides them, so a hit is always the answer
//! the engine would give now. The key is a SHA-256 over the normalised plan, the parameters, the
//! caller's data-access scope, the engine, the page asked for and the version of every table the
//! plan reads; a commit to one of those tables changes its version and so the key, while commits to
//! other tables leave it alone. Bounded by bytes and by age (moka). The same key is the `ETag`.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use sha2::{Digest, Sha256};

use crate::query::engine::EngineChoice;
use crate::warehouse::TableName;

/// One cached answer.
#[derive(Debug)]
pub struct CachedResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// The engine that answered: DataFusion or DuckDB.
    pub engine: EngineChoice,
    pub rows: u64,
    pub bytes: u64,
    /// For a page: whether rows follow it.
    pub has_more: bool,
    /// The tables read, at the versions read.
    pub tables: Vec<(TableName, i64)>,
    /// The rows as a JSON array, encoded once for every answer the entry gives.
    pub json_rows: std::sync::OnceLock<Vec<u8>>,
}

impl CachedResult {
    /// The rows as a JSON array (the query API's usual answer), encoded the first time asked.
    pub fn json_rows(&self) -> Result<&[u8], super::QueryError> {
        if let Some(rows) = self.json_rows.get() {
            return Ok(rows);
        }
        let rows = super::export::encode(super::export::ExportFormat::Json, self.schema.clone(), &self.batches)?;
        Ok(self.json_rows.get_or_init(|| rows))
    }

    /// What the entry weighs in the cache: its batches and, once asked for, their JSON (counted as
    /// as many bytes again).
    fn weight(&self) -> u64 {
        self.bytes.saturating_mul(2)
    }
}

/// What goes into a key. Building it in one place keeps every caller's key complete.
pub struct KeyParts<'a> {
    pub normalised: &'a str,
    pub params: &'a super::Params,
    pub scope: &'a str,
    pub engine: &'a str,
    pub page: Option<(u64, u64)>,
    pub tables: &'a [(TableName, i64)],
}

impl KeyParts<'_> {
    /// The key as lowercase hex.
    pub fn key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [self.normalised, self.scope, self.engine] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        let mut hasher = Sha256Hasher(hash);
        // Each value with its type: 1 and '1' differ.
        match self.params {
            super::Params::None => 0u8.hash(&mut hasher),
            super::Params::Positional(values) => {
                1u8.hash(&mut hasher);
                values.iter().for_each(|v| (v.data_type(), v).hash(&mut hasher));
                values.len().hash(&mut hasher);
            }
            super::Params::Named(values) => {
                2u8.hash(&mut hasher);
                values.iter().for_each(|(name, v)| (name, v.data_type(), v).hash(&mut hasher));
                values.len().hash(&mut hasher);
            }
        }
        self.page.hash(&mut hasher);
        let mut hash = hasher.0;
        for (table, version) in self.tables {
            hash.update(format!("|{table}@{version}").as_bytes());
        }
        hex::encode(hash.finalize())
    }
}

/// A SHA-256 digest of everything `value`'s `Hash` writes. The derived `Hash` of a logical plan
/// covers every node, expression and literal, with lengths, where its display abbreviates (a
/// `VALUES` list shows its first five rows), so two plans that differ anywhere get different keys.
pub fn digest<T: Hash + ?Sized>(value: &T) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    value.hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

/// A `Hasher` that feeds SHA-256 instead of folding into 64 bits.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Not used for keys (they take the whole digest); the digest's first eight bytes.
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }
}

/// `batch` holding only its own rows. A slice of a larger batch (after a LIMIT or a top-k) keeps
/// all of its parent's buffers alive: a cache would pay for them, and weigh a 20-row answer as
/// hundreds of megabytes. Columns that hold more than twice what their rows need are copied.
pub fn compact(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .map(|column| {
            if column.get_array_memory_size() <= 2 * column.to_data().get_slice_memory_size()? + 4096 {
                return Ok(column.clone());
            }
            match column.data_type() {
                DataType::Utf8View => Ok(Arc::new(column.as_string_view().gc()) as ArrayRef),
                DataType::BinaryView => Ok(Arc::new(column.as_binary_view().gc()) as ArrayRef),
                _ => arrow::compute::take(column, &UInt32Array::from_iter_values(0..column.len() as u32), None),
            }
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    RecordBatch::try_new(batch.schema(), columns)
}

/// An answer made from the engine's answers and kept whole (a dashboard's data as JSON, a
/// panel's picture): its bytes and what it read. Kept while every table it read stays at the
/// version read, so a hit costs a lookup instead of one engine run per query behind it.
#[derive(Debug)]
pub struct Derived {
    pub bytes: bytes::Bytes,
    /// What goes with the bytes (`content-type` and the like), as name and value.
    pub headers: Vec<(&'static str, String)>,
    /// The same bytes under a content coding (`br`, `gzip`), best first, for clients that accept
    /// one: compressed once when kept rather than on every response.
    pub encoded: Vec<(&'static str, bytes::Bytes)>,
    /// What the query log and the audit trail say was asked (`dashboard executive`).
    pub label: String,
    pub reads: super::engine::Reads,
}

impl Derived {
    fn weight(&self) -> usize {
        self.bytes.len() + self.encoded.iter().map(|(_, bytes)| bytes.len()).sum::<usize>()
    }
}

pub struct ResultCache {
    entries: moka::future::Cache<String, Arc<CachedResult>>,
    /// Derived answers by scope and name.
    derived: moka::sync::Cache<String, Arc<Derived>>,
    largest: u64,
    /// The newest version seen of each table: answers from older versions can never be asked for
    /// again, so they are dropped at once instead of aging out (an erased person's rows with them).
    newest: std::sync::Mutex<std::collections::HashMap<TableName, i64>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl ResultCache {
    /// A cache of at most `capacity_bytes` (0 turns it off), entries living at most `ttl`; one
    /// answer may take at most an eighth of it.
    pub fn new(capacity_bytes: u64, ttl: Duration) -> ResultCache {
        let entries = moka::future::Cache::builder()
            .max_capacity(capacity_bytes)
            .time_to_live(ttl)
            .weigher(|_key: &String, value: &Arc<CachedResult>| u32::try_from(value.weight()).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .build();
        let derived = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes / 4)
            .time_to_live(ttl)
            .weigher(|_key: &String, value: &Arc<Derived>| u32::try_from(value.weight()).unwrap_or(u32::MAX))
            .support_invalidation_closures()
            .build();
        ResultCache {
            entries,
            derived,
            largest: capacity_bytes / 8,
            newest: std::sync::Mutex::new(std::collections::HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Notes the current versions of `tables`; when one has moved on, answers that read an older
    /// version of it are dropped.
    pub fn observe_versions(&self, tables: &[(TableName, i64)]) {
        let Ok(mut newest) = self.newest.lock() else { return };
        for (table, version) in tables {
            let seen = newest.entry(table.clone()).or_insert(*version);
            if *seen >= *version {
                continue;
            }
            *seen = *version;
            let (table, version) = (table.clone(), *version);
            let stale_derived = {
                let table = table.clone();
                move |_: &String, entry: &Arc<Derived>| {
                    entry.reads.tables.iter().any(|(t, v)| *t == table && *v < version)
                }
            };
            let stale = move |_: &String, entry: &Arc<CachedResult>| {
                entry.tables.iter().any(|(t, v)| *t == table && *v < version)
            };
            if let Err(e) = self.entries.invalidate_entries_if(stale) {
                tracing::warn!(error = %e, "could not drop cached answers of older versions; they age out instead");
            }
            if let Err(e) = self.derived.invalidate_entries_if(stale_derived) {
                tracing::warn!(error = %e, "could not drop derived answers of older versions; they age out instead");
            }
        }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<CachedResult>> {
        let found = self.entries.get(key).await;
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `result` unless it is too large to be worth a slot.
    pub async fn insert(&self, key: String, result: Arc<CachedResult>) {
        if result.weight() <= self.largest {
            self.entries.insert(key, result).await;
        }
    }

    /// The derived answer kept under `key`, whatever versions it read.
    pub fn derived(&self, key: &str) -> Option<Arc<Derived>> {
        let found = self.derived.get(key);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `derived` under `key` unless it is too large to be worth a slot or read something
    /// that may not be kept.
    pub fn keep_derived(&self, key: String, derived: Arc<Derived>) {
        if !derived.reads.volatile && (derived.weight() as u64) <= self.largest {
            self.derived.insert(key, derived);
        }
    }

    /// Whether a derived answer is kept under `key` (at whatever versions; not counted).
    pub fn has_derived(&self, key: &str) -> bool {
        self.derived.contains_key(key)
    }

    pub fn forget_derived(&self, key: &str) {
        self.derived.invalidate(key);
    }

    /// Drops everything (after an erasure, say).
    pub fn clear(&self) {
        self.entries.invalidate_all();
        self.derived.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn a_slice_is_copied_down_to_its_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let n: ArrayRef = Arc::new(Int64Array::from_iter_values(0..100_000));
        let s: ArrayRef = Arc::new(StringArray::from_iter_values((0..100_000).map(|i| format!("row {i}"))));
        let big = RecordBatch::try_new(schema, vec![n, s]).unwrap();
        let slice = big.slice(10, 20);
        assert!(slice.get_array_memory_size() > 1_000_000, "a slice keeps its parent's buffers");
        let compacted = compact(slice.clone()).unwrap();
        assert!(compacted.get_array_memory_size() < 20_000, "{}", compacted.get_array_memory_size());
        assert_eq!(compacted, slice);
    }

    #[tokio::test]
    async fn a_new_version_drops_answers_from_older_ones() {
        let cache = ResultCache::new(1 << 20, Duration::from_secs(60));
        let table = |name: &str| TableName { schema: "raw".into(), name: name.into() };
        let entry = |tables: Vec<(TableName, i64)>| {
            let schema = Arc::new(Schema::empty());
            Arc::new(CachedResult {
                schema,
                batches: vec![],
                engine: EngineChoice::Datafusion,
                rows: 0,
                bytes: 10,
                has_more: false,
                tables,
                json_rows: Default::default(),
            })
        };
        cache.observe_versions(&[(table("hours"), 1), (table("payments"), 4)]);
        cache.insert("hours@1".into(), entry(vec![(table("hours"), 1)])).await;
        cache.insert("payments@4".into(), entry(vec![(table("payments"), 4)])).await;
        cache.observe_versions(&[(table("hours"), 2)]);
        assert!(cache.get("hours@1").await.is_none(), "an answer from version 1 of hours is gone");
        assert!(cache.get("payments@4").await.is_some(), "answers over other tables stay");
    }
}
