//! The result cache: answers keyed by everything that decides them, so a hit is always the answer
//! the engine would give now. The key is a SHA-256 over the normalised plan, the parameters, the
//! caller's data-access scope, the engine, the page asked for and the version of every table the
//! plan reads; a commit to one of those tables changes its version and so the key, while commits to
//! other tables leave it alone. Bounded by bytes and by age (moka). The same key is the `ETag`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use sha2::{Digest, Sha256};

use crate::warehouse::TableName;

/// One cached answer.
#[derive(Debug)]
pub struct CachedResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub engine: &'static str,
    pub rows: u64,
    pub bytes: u64,
    /// For a page: whether rows follow it.
    pub has_more: bool,
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
        // Debug of ScalarValue carries the type as well as the value: 1 and '1' differ.
        hash.update(format!("{:?}|{:?}", self.params, self.page).as_bytes());
        for (table, version) in self.tables {
            hash.update(format!("|{table}@{version}").as_bytes());
        }
        hex::encode(hash.finalize())
    }
}

pub struct ResultCache {
    entries: moka::future::Cache<String, Arc<CachedResult>>,
    largest: u64,
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
            .weigher(|_key: &String, value: &Arc<CachedResult>| u32::try_from(value.bytes).unwrap_or(u32::MAX))
            .build();
        ResultCache { entries, largest: capacity_bytes / 8, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<CachedResult>> {
        let found = self.entries.get(key).await;
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `result` unless it is too large to be worth a slot.
    pub async fn insert(&self, key: String, result: Arc<CachedResult>) {
        if result.bytes <= self.largest {
            self.entries.insert(key, result).await;
        }
    }

    /// Drops everything (after an erasure, say).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}
