//! How an encrypted warehouse is wired into delta-rs and kept whole: tables are opened under
//! `sealed://` URLs whose store is a [`SealedStore`] (so delta-rs, its DataFusion scans and every
//! operation read and write through it, never through a plain file store), a marker at the root
//! says the warehouse is encrypted, and [`seal_all`] encrypts a plain warehouse in place or moves
//! an encrypted one to a new key. It owns no key material; the [`Keyring`] comes from the caller.

use std::collections::HashSet;
use std::sync::Arc;

use deltalake::DeltaResult;
use deltalake::logstore::{LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use super::sealed::{Keyring, relative_to};
use super::{TableName, Warehouse, WarehouseError};
use crate::progress::Progress;

/// The URL scheme of encrypted tables.
const SCHEME: &str = "sealed";
/// Where the marker lives, under the warehouse root.
const MARKER: [&str; 2] = ["_sokana", "encryption.json"];

fn marker_path(root: &StorePath) -> StorePath {
    MARKER.iter().fold(root.clone(), |path, part| path.join(*part))
}

/// The marker as errors name it: the warehouse URL and the marker's path under it.
fn marker_location(location: &str) -> String {
    format!("{location}{}", MARKER.join("/"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    /// `sokana warehouse encrypt` is encrypting a plain warehouse; until it finishes, sizes in
    /// listings cannot be trusted, so the warehouse is not opened.
    Encrypting,
    Encrypted,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    state: State,
}

#[derive(Debug)]
struct SealedLogStoreFactory;

impl LogStoreFactory for SealedLogStoreFactory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        // Commits are conditional puts through the sealed store, as on the stores underneath.
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

pub(super) fn register_handlers() {
    if let Ok(url) = Url::parse(&format!("{SCHEME}://")) {
        deltalake::logstore::logstore_factories().insert(url, Arc::new(SealedLogStoreFactory));
    }
}

/// The `sealed://` URL of a table. Its host names the warehouse and key, so two warehouses (or two
/// keyrings) in one process never share a store in DataFusion's registry; its path is the table's
/// path in the store underneath.
pub(super) fn table_url(
    root: &Url,
    root_path: &StorePath,
    keys: &Keyring,
    table: &TableName,
) -> Result<Url, WarehouseError> {
    let digest = Sha256::new().chain_update(root.as_str()).chain_update(keys.current_id()).finalize();
    let host = format!("w{}", hex::encode(&digest[..8]));
    let mut url = Url::parse(&format!("{SCHEME}://{host}/"))
        .map_err(|e| WarehouseError::Storage { location: root.to_string(), reason: e.to_string() })?;
    let path = root_path.parts().map(|p| p.as_ref().to_string()).chain([table.schema.clone(), table.name.clone()]);
    url.set_path(&format!("/{}/", path.collect::<Vec<_>>().join("/")));
    Ok(url)
}

async fn read_marker(
    store: &dyn ObjectStore,
    path: &StorePath,
    location: &str,
) -> Result<Option<Marker>, WarehouseError> {
    let storage = |reason: String| WarehouseError::Storage { location: marker_location(location), reason };
    match store.get(path).await {
        Ok(found) => {
            let bytes = found.bytes().await.map_err(|e| storage(e.to_string()))?;
            serde_json::from_slice(&bytes).map(Some).map_err(|e| storage(format!("not a marker: {e}")))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(storage(e.to_string())),
    }
}

async fn write_marker(
    store: &dyn ObjectStore,
    path: &StorePath,
    state: State,
    location: &str,
) -> Result<(), WarehouseError> {
    let body = serde_json::to_vec(&Marker { state })
        .map_err(|e| WarehouseError::Storage { location: location.to_string(), reason: e.to_string() })?;
    store
        .put(path, PutPayload::from(body))
        .await
        .map_err(|e| WarehouseError::Storage { location: marker_location(location), reason: e.to_string() })?;
    Ok(())
}

/// Checks that the warehouse is encrypted exactly when keys are configured; a new warehouse with
/// keys is marked encrypted before its first table.
pub(super) async fn check(warehouse: &Warehouse) -> Result<(), WarehouseError> {
    let (store, root) = warehouse.store()?;
    let location = warehouse.root.to_string();
    let marker = read_marker(store.as_ref(), &marker_path(&root), &location).await?;
    let refuse = |reason: &str| WarehouseError::Storage { location: location.clone(), reason: reason.to_string() };
    match (&warehouse.keys, marker.map(|m| m.state)) {
        (None, None) | (Some(_), Some(State::Encrypted)) => Ok(()),
        (None, Some(_)) => Err(refuse(
            "the warehouse is encrypted; give its key in SOKANA_WAREHOUSE_KEY or the file named by warehouse.key_file",
        )),
        (Some(_), Some(State::Encrypting)) => {
            Err(refuse("encrypting the warehouse was interrupted; run `sokana warehouse encrypt` to finish it"))
        }
        (Some(_), None) => {
            if warehouse.list_tables().await?.is_empty() {
                write_marker(store.as_ref(), &marker_path(&root), State::Encrypted, &location).await
            } else {
                Err(refuse("a key is configured but the warehouse holds plain tables; run `sokana warehouse encrypt`"))
            }
        }
    }
}

/// What [`seal_all`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SealReport {
    /// Plain objects encrypted.
    pub encrypted: u64,
    /// Objects moved from an older key (or the first, path-less format) to the current one.
    pub rekeyed: u64,
    /// Objects already under the current key.
    pub current: u64,
    pub bytes: u64,
    pub key_id: String,
    /// Plain objects left as they were, by path under the root: no table's log references them
    /// (leftovers of a crashed load, which vacuum removes, or files put there by someone else).
    pub left_plain: Vec<String>,
}

/// Encrypts the objects of a plain warehouse in place (each table's log and the data files its log
/// references, nothing else it finds), or re-encrypts those under an older key with the current
/// one (key rotation; a plain object in an encrypted warehouse is never sealed, since sealing it
/// would vouch for whatever someone put there). Each object is replaced whole, so a crash leaves
/// every object either as it was or done; running it again finishes the work. The caller holds
/// every pipeline's lock, so no load writes meanwhile.
pub async fn seal_all(warehouse: &Warehouse, progress: &dyn Progress) -> Result<SealReport, WarehouseError> {
    let keys = warehouse.keys.clone().ok_or_else(|| WarehouseError::Storage {
        location: warehouse.root.to_string(),
        reason: "no key: set SOKANA_WAREHOUSE_KEY or warehouse.key_file first".into(),
    })?;
    let (store, root) = warehouse.store()?;
    let location = warehouse.root.to_string();
    let storage = |path: &StorePath, e: object_store::Error| WarehouseError::Storage {
        location: format!("{location}{}", relative_to(&root, path)),
        reason: e.to_string(),
    };
    let marker_path = marker_path(&root);
    let marker = read_marker(store.as_ref(), &marker_path, &location).await?;
    let was_encrypted = matches!(marker, Some(Marker { state: State::Encrypted }));
    if marker.is_none() {
        write_marker(store.as_ref(), &marker_path, State::Encrypting, &location).await?;
    }
    let objects: Vec<_> = store.list(Some(&root)).try_collect().await.map_err(|e| storage(&root, e))?;
    let objects: Vec<_> = objects.into_iter().filter(|o| o.location != marker_path).collect();
    let referenced =
        if was_encrypted { HashSet::new() } else { referenced(store.as_ref(), &root, &keys, &objects).await? };
    let current = keys.current_id();
    let mut report = SealReport { key_id: current.clone(), ..SealReport::default() };
    progress.start("warehouse", Some(objects.len() as u64));
    for (done, object) in objects.iter().enumerate() {
        progress.update("warehouse", done as u64);
        let path = &object.location;
        let relative = relative_to(&root, path);
        let bytes = store.get(path).await.map_err(|e| storage(path, e))?.bytes().await.map_err(|e| storage(path, e))?;
        let plain = match Keyring::sealed_with(&bytes) {
            Some((id, bound)) if id == current && bound => {
                report.current += 1;
                continue;
            }
            Some(_) => {
                report.rekeyed += 1;
                keys.open(&bytes, &relative).map_err(|e| storage(path, e))?
            }
            None if !referenced.contains(path) => {
                report.left_plain.push(relative);
                continue;
            }
            None => {
                report.encrypted += 1;
                bytes.to_vec()
            }
        };
        report.bytes += plain.len() as u64;
        let sealed = keys.seal(&plain, &relative).map_err(|e| storage(path, e))?;
        store.put(path, sealed.into()).await.map_err(|e| storage(path, e))?;
    }
    write_marker(store.as_ref(), &marker_path, State::Encrypted, &location).await?;
    if !report.left_plain.is_empty() {
        tracing::warn!(
            objects = %report.left_plain.join(", "),
            "left unencrypted: no table's log references them (vacuum removes a crashed load's files; inspect the others)"
        );
    }
    progress.finish(
        "warehouse",
        &format!(
            "{} encrypted, {} moved to key {current}, {} already current, {} unreferenced left as they were",
            report.encrypted,
            report.rekeyed,
            report.current,
            report.left_plain.len()
        ),
    );
    Ok(report)
}

/// The objects the tables' logs account for: every object under a `_delta_log/` directory, and
/// every data file a commit or checkpoint there adds or removes (removed files stay readable for
/// time travel until vacuum deletes them). Log objects already sealed are opened to be read.
async fn referenced(
    store: &dyn ObjectStore,
    root: &StorePath,
    keys: &Keyring,
    objects: &[object_store::ObjectMeta],
) -> Result<HashSet<StorePath>, WarehouseError> {
    let mut found = HashSet::new();
    for object in objects {
        let path = &object.location;
        let relative = relative_to(root, path);
        let Some((table, file)) = relative.split_once("/_delta_log/") else { continue };
        found.insert(path.clone());
        let is_commit = file.ends_with(".json") && !file.starts_with('_');
        let is_checkpoint = file.contains(".checkpoint") && file.ends_with(".parquet");
        if !is_commit && !is_checkpoint {
            continue;
        }
        let invalid = |reason: String| WarehouseError::Storage { location: relative.clone(), reason };
        let bytes = store
            .get(path)
            .await
            .map_err(|e| invalid(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let bytes = match Keyring::sealed_with(&bytes) {
            Some(_) => bytes::Bytes::from(keys.open(&bytes, &relative).map_err(|e| invalid(e.to_string()))?),
            None => bytes,
        };
        let files = if is_commit { commit_files(&bytes) } else { checkpoint_files(bytes).map_err(invalid)? };
        for file in files {
            let decoded = percent_decode(&file);
            let full = match root.as_ref() {
                "" => format!("{table}/{decoded}"),
                root => format!("{root}/{table}/{decoded}"),
            };
            found.insert(StorePath::from(full.as_str()));
        }
    }
    Ok(found)
}

/// The paths a commit's `add` and `remove` actions name (relative to the table).
fn commit_files(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .flat_map(|action| {
            ["add", "remove"].into_iter().filter_map(move |kind| action[kind]["path"].as_str().map(str::to_string))
        })
        .collect()
}

/// The paths a checkpoint's `add` and `remove` actions name.
fn checkpoint_files(bytes: bytes::Bytes) -> Result<Vec<String>, String> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build()).map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        for kind in ["add", "remove"] {
            let Some(actions) = batch.column_by_name(kind).and_then(|c| c.as_struct_opt()) else { continue };
            let Some(paths) = actions.column_by_name("path") else { continue };
            let Some(paths) = paths.as_string_opt::<i32>() else { continue };
            files.extend(
                (0..paths.len())
                    .filter(|&i| actions.is_valid(i) && paths.is_valid(i))
                    .map(|i| paths.value(i).to_string()),
            );
        }
    }
    Ok(files)
}

/// A Delta log path is URL-encoded (`month=2024-01` is written `month%3D2024-01` by some writers).
fn percent_decode(path: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| path.to_string())
}
