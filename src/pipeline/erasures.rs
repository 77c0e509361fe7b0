//! The erasure list: who was erased, and the keys of their rows in each table. Loads consult it so
//! that an erased person is not loaded again from a source that still holds them; `privacy`
//! writes it. Kept in the state
//! directory, readable by its owner only, rewritten whole or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use super::spec::{Pipeline, TableSpec};

#[derive(Debug, thiserror::Error)]
pub enum ErasureListError {
    /// The list could not be read or written.
    #[error("erasure list {path}: {reason}")]
    File { path: String, reason: String },
    /// A row's key could not be compared with the erased keys.
    #[error("keeping erased people out: column {column}: {reason}")]
    Compare { column: String, reason: String },
}

const FILE: &str = "erasures.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    erasures: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: String,
    at: String,
    client: String,
    /// `schema.table` → the keys (as text) of the rows erased from it; empty for a table without a
    /// one-column key, whose rows are kept out through their references.
    keys: BTreeMap<String, Vec<String>>,
}

pub struct ErasureList {
    path: PathBuf,
}

impl ErasureList {
    pub fn open(state_dir: &Path) -> ErasureList {
        ErasureList { path: state_dir.join(FILE) }
    }

    fn error(&self, reason: impl std::fmt::Display) -> ErasureListError {
        ErasureListError::File { path: self.path.display().to_string(), reason: reason.to_string() }
    }

    fn read(&self) -> Result<Stored, ErasureListError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.error(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Records an erasure of `client` with the keys of their rows; returns its id. Erasing the
    /// same person again adds the keys found this time.
    pub fn add(&self, client: &str, keys: BTreeMap<String, Vec<String>>) -> Result<String, ErasureListError> {
        let mut stored = self.read()?;
        let id = uuid::Uuid::new_v4().to_string();
        stored.erasures.push(Entry {
            id: id.clone(),
            at: chrono::Utc::now().to_rfc3339(),
            client: client.into(),
            keys,
        });
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| self.error(e))?;
        crate::keyfile::write_private(&self.path, &bytes).map_err(|e| self.error(e))?;
        Ok(id)
    }

    /// The tables earlier erasures of `client` removed rows from: an erasure cut short before it
    /// cut those tables' history is finished by the next one, which finds no rows left to delete.
    pub fn tables_of(&self, client: &str) -> Result<BTreeSet<String>, ErasureListError> {
        let stored = self.read()?;
        Ok(stored.erasures.iter().filter(|e| e.client == client).flat_map(|e| e.keys.keys().cloned()).collect())
    }

    /// What a load of `table` must keep out: rows whose key was erased, and rows that reference an
    /// erased row of another table. `None` when nothing applies.
    pub fn withhold(&self, pipeline: &Pipeline, table: &TableSpec) -> Result<Option<Withhold>, ErasureListError> {
        let stored = self.read()?;
        let keys_of = |target: &str| -> BTreeSet<String> {
            stored.erasures.iter().filter_map(|e| e.keys.get(target)).flatten().cloned().collect()
        };
        let mut checks: Vec<(String, BTreeSet<String>)> = Vec::new();
        if let [key] = &table.primary_key[..] {
            checks.push((key.clone(), keys_of(&table.target.to_string())));
        }
        for (column, referenced) in &table.references {
            if let Some(other) = pipeline.tables.iter().find(|t| &t.source_table == referenced) {
                checks.push((column.clone(), keys_of(&other.target.to_string())));
            }
        }
        checks.retain(|(_, keys)| !keys.is_empty());
        Ok((!checks.is_empty()).then_some(Withhold { checks }))
    }
}

/// Rows a load keeps out of one table.
#[derive(Debug, Clone)]
pub struct Withhold {
    checks: Vec<(String, BTreeSet<String>)>,
}

impl Withhold {
    /// Keeps out the rows whose `column` is one of `keys`.
    pub fn single(column: &str, keys: BTreeSet<String>) -> Withhold {
        Withhold { checks: vec![(column.to_string(), keys)] }
    }

    /// `batch` without the withheld rows, and how many those were.
    pub fn apply(&self, batch: RecordBatch) -> Result<(RecordBatch, u64), ErasureListError> {
        let mut batch = batch;
        let mut dropped = 0;
        for (column, keys) in &self.checks {
            let (kept, n) = without(&batch, column, keys)?;
            (batch, dropped) = (kept, dropped + n);
        }
        Ok((batch, dropped))
    }
}

/// Rows of `batch` whose `column` (as text) is not in `keys`; with how many were dropped.
fn without(batch: &RecordBatch, column: &str, keys: &BTreeSet<String>) -> Result<(RecordBatch, u64), ErasureListError> {
    let Ok(index) = batch.schema().index_of(column) else { return Ok((batch.clone(), 0)) };
    let text = datafusion::arrow::compute::cast(batch.column(index), &DataType::Utf8)
        .map_err(|e| ErasureListError::Compare { column: column.to_string(), reason: e.to_string() })?;
    let text = text.as_string::<i32>();
    let keep: BooleanArray = (0..text.len()).map(|i| Some(text.is_null(i) || !keys.contains(text.value(i)))).collect();
    let dropped = keep.false_count() as u64;
    if dropped == 0 {
        return Ok((batch.clone(), 0));
    }
    let kept = datafusion::arrow::compute::filter_record_batch(batch, &keep)
        .map_err(|e| ErasureListError::Compare { column: column.to_string(), reason: e.to_string() })?;
    Ok((kept, dropped))
}
