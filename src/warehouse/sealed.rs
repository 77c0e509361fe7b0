//! Encryption at rest: an [`ObjectStore`] that seals every object it writes (data files, Delta
//! log entries, checkpoints) with AES-256-GCM and opens them again on read, so a warehouse copied
//! without its key reveals nothing — neither the Parquet pages nor the column statistics the Delta
//! log keeps in plain JSON. It owns the object format and the keyring; it knows nothing of tables.
//!
//! Written by hand because no maintained crate does it for `object_store` 0.13 without changing the
//! layout (`anda_object_store` keeps a side file per object, which breaks the Delta log's atomic
//! commits). Parquet modular encryption is not usable either: delta-rs 1.1 builds its readers and
//! writers without decryption properties, and would still log plaintext statistics.
//!
//! # Format
//! `SKSEAL02` · key id (8 bytes) · salt (16 random bytes), then the plaintext in segments of
//! [`SEGMENT`] bytes, each sealed with its own 16-byte tag. The object key is HKDF-SHA256 of the
//! master key with the salt; a segment's nonce is its index and whether it is the last, so
//! segments cannot be reordered, dropped or cut off unnoticed. The header and the object's path
//! under the warehouse root are authenticated with each segment, so an object moved or copied to
//! another path (a commit swapped for another version's, one table's file put in another's place)
//! does not open; moves through the store re-seal for the new path. Objects of the first format,
//! `SKSEAL01`, authenticated the header only: they still open, and `sokana warehouse encrypt`
//! re-seals them. A byte range is read by fetching only the segments it touches. Sizes reported by
//! `head` and listings are the plaintext sizes, which is what the Delta log records.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"SKSEAL02";
/// The first format, whose segments authenticate the header but not the path.
const PATHLESS_MAGIC: &[u8; 8] = b"SKSEAL01";
const HEADER: usize = 32;
const TAG: usize = 16;
/// Plaintext bytes per segment: small enough that a Parquet page read fetches little more than it
/// needs, large enough that tags cost 0.02 % of the size.
pub const SEGMENT: usize = 64 * 1024;
const SEALED_SEGMENT: usize = SEGMENT + TAG;
/// Sealed bytes gathered before a part goes to a multipart upload (S3 wants at least 5 MiB).
const PART: usize = 8 * 1024 * 1024;
const STORE: &str = "sealed";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{origin}: key {index} is not 64 hex digits (a 32-byte key)")]
    Malformed { origin: String, index: usize },
    #[error("{origin}: no key")]
    Empty { origin: String },
}

/// One master key and its id (a hash of it, recorded in each object's header).
#[derive(Clone)]
struct MasterKey {
    id: [u8; 8],
    secret: [u8; 32],
}

impl MasterKey {
    fn new(secret: [u8; 32]) -> MasterKey {
        let digest = Sha256::new().chain_update(b"sokana warehouse key id").chain_update(secret).finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        MasterKey { id, secret }
    }

    /// The key for one object, from its salt.
    fn object_key(&self, salt: &[u8]) -> Result<LessSafeKey, object_store::Error> {
        let prk = Salt::new(HKDF_SHA256, salt).extract(&self.secret);
        let okm = prk.expand(&[b"sokana sealed object"], &AES_256_GCM).map_err(|_| failure("deriving a key"))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

/// The keys a warehouse is sealed with: the first seals new objects; the others still open objects
/// sealed before a rotation.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<MasterKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("current", &self.current_id()).field("keys", &self.keys.len()).finish()
    }
}

impl Keyring {
    /// Keys as hex, separated by newlines or commas, newest first (`origin` names where they came
    /// from, for errors; the keys themselves never appear in one).
    pub fn parse(text: &str, origin: &str) -> Result<Keyring, KeyError> {
        let mut keys = Vec::new();
        for (index, word) in text.split([',', '\n']).map(str::trim).filter(|w| !w.is_empty()).enumerate() {
            let malformed = || KeyError::Malformed { origin: origin.to_string(), index: index + 1 };
            let bytes = hex::decode(word).map_err(|_| malformed())?;
            let secret: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
            keys.push(MasterKey::new(secret));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty { origin: origin.to_string() });
        }
        Ok(Keyring { keys })
    }

    /// The id of the key new objects are sealed with, as hex.
    pub fn current_id(&self) -> String {
        hex::encode(self.keys[0].id)
    }

    fn find(&self, id: &[u8]) -> Result<&MasterKey, object_store::Error> {
        self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            failure(&format!("sealed with key {}, which is not among the configured keys", hex::encode(id)))
        })
    }

    /// Seals `plain` whole, for the object at `path` (relative to the warehouse root).
    pub fn seal(&self, plain: &[u8], path: &str) -> Result<Vec<u8>, object_store::Error> {
        let mut sealer = Sealer::new(&self.keys[0], path)?;
        let mut out = Vec::with_capacity(sealed_size(plain.len() as u64) as usize);
        out.extend_from_slice(&sealer.header);
        let mut chunks = plain.chunks(SEGMENT).peekable();
        if chunks.peek().is_none() {
            sealer.segment(&[], true, &mut out)?;
        }
        while let Some(chunk) = chunks.next() {
            sealer.segment(chunk, chunks.peek().is_none(), &mut out)?;
        }
        Ok(out)
    }

    /// Opens a whole sealed object found at `path` (relative to the warehouse root).
    pub fn open(&self, sealed: &[u8], path: &str) -> Result<Vec<u8>, object_store::Error> {
        let header = sealed.get(..HEADER).ok_or_else(|| failure("too short to be sealed"))?;
        self.open_segments(header, &sealed[HEADER..], 0, true, path)
    }

    /// The key id an object was sealed with, and whether in the current format (bound to its
    /// path); `None` if it is not sealed.
    pub fn sealed_with(object: &[u8]) -> Option<(String, bool)> {
        let sealed = object.len() >= HEADER + TAG && (object.starts_with(MAGIC) || object.starts_with(PATHLESS_MAGIC));
        sealed.then(|| (hex::encode(&object[8..16]), object.starts_with(MAGIC)))
    }

    /// Opens consecutive sealed segments starting at segment `first`; `reaches_end` says whether
    /// the last of them is the object's last.
    fn open_segments(
        &self,
        header: &[u8],
        body: &[u8],
        first: u64,
        reaches_end: bool,
        path: &str,
    ) -> Result<Vec<u8>, object_store::Error> {
        if header.len() != HEADER {
            return Err(failure("not a sealed object (is the warehouse encrypted?)"));
        }
        let aad = if header.starts_with(MAGIC) {
            bound_to(header, path)
        } else if header.starts_with(PATHLESS_MAGIC) {
            header.to_vec()
        } else {
            return Err(failure("not a sealed object (is the warehouse encrypted?)"));
        };
        let key = self.find(&header[8..16])?.object_key(&header[16..])?;
        let chunks: Vec<&[u8]> = body.chunks(SEALED_SEGMENT).collect();
        let mut plain = Vec::with_capacity(body.len());
        for (offset, chunk) in chunks.iter().enumerate() {
            let last = reaches_end && offset + 1 == chunks.len();
            let mut buffer = chunk.to_vec();
            let opened =
                key.open_in_place(nonce(first + offset as u64, last), Aad::from(&aad[..]), &mut buffer).map_err(
                    |_| failure("a segment failed authentication (wrong key, or the object was altered or moved here)"),
                )?;
            plain.extend_from_slice(opened);
        }
        Ok(plain)
    }
}

/// What each segment of an object at `path` authenticates besides itself: its header and path.
fn bound_to(header: &[u8], path: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 1 + path.len());
    aad.extend_from_slice(header);
    aad.push(0);
    aad.extend_from_slice(path.as_bytes());
    aad
}

/// Seals segments one after another under one object key, for one path.
struct Sealer {
    key: LessSafeKey,
    header: [u8; HEADER],
    aad: Vec<u8>,
    next: u64,
}

impl Sealer {
    fn new(master: &MasterKey, path: &str) -> Result<Sealer, object_store::Error> {
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&master.id);
        aws_lc_rs::rand::fill(&mut header[16..]).map_err(|_| failure("no randomness for a salt"))?;
        Ok(Sealer { key: master.object_key(&header[16..])?, aad: bound_to(&header, path), header, next: 0 })
    }

    fn segment(&mut self, plain: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), object_store::Error> {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(self.next, last), Aad::from(&self.aad[..]), &mut out[start..])
            .map_err(|_| failure("sealing a segment"))?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        Ok(())
    }
}

fn nonce(segment: u64, last: bool) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&segment.to_be_bytes());
    bytes[11] = u8::from(last);
    Nonce::assume_unique_for_key(bytes)
}

fn failure(reason: &str) -> object_store::Error {
    object_store::Error::Generic { store: STORE, source: reason.to_string().into() }
}

fn segments(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT as u64).max(1)
}

/// The size of `plain` bytes once sealed.
pub fn sealed_size(plain: u64) -> u64 {
    HEADER as u64 + plain + TAG as u64 * segments(plain)
}

/// The plaintext size of a sealed object of `sealed` bytes.
fn plain_size(sealed: u64, location: &Path) -> Result<u64, object_store::Error> {
    let body = sealed.checked_sub(HEADER as u64).filter(|b| *b >= TAG as u64).ok_or_else(|| {
        object_store::Error::Generic { store: STORE, source: format!("{location}: too short to be sealed").into() }
    })?;
    Ok(body - TAG as u64 * body.div_ceil(SEALED_SEGMENT as u64))
}

fn in_place(location: &Path, e: object_store::Error) -> object_store::Error {
    match e {
        object_store::Error::Generic { store, source } => {
            object_store::Error::Generic { store, source: format!("{location}: {source}").into() }
        }
        other => other,
    }
}

/// `location`'s path under `root`, without a leading separator.
pub fn relative_to(root: &Path, location: &Path) -> String {
    let (root, location) = (root.as_ref(), location.as_ref());
    location.strip_prefix(root).unwrap_or(location).trim_start_matches('/').to_string()
}

/// Seals what goes into `inner` and opens what comes out.
#[derive(Debug, Clone)]
pub struct SealedStore {
    inner: Arc<dyn ObjectStore>,
    keys: Keyring,
    /// The warehouse root in `inner`: objects are bound to their path under it, so a warehouse
    /// moved elsewhere whole still opens.
    root: Path,
    /// Headers of objects read or written lately, so a range read needs one request, not two.
    headers: moka::sync::Cache<Path, [u8; HEADER]>,
}

/// Headers remembered (32 bytes each).
const REMEMBERED_HEADERS: u64 = 100_000;

impl fmt::Display for SealedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({})", self.inner)
    }
}

impl SealedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, keys: Keyring, root: Path) -> SealedStore {
        SealedStore { inner, keys, root, headers: moka::sync::Cache::new(REMEMBERED_HEADERS) }
    }

    /// `location`'s path under the warehouse root, which its segments authenticate.
    fn bound(&self, location: &Path) -> String {
        relative_to(&self.root, location)
    }

    /// Moves or copies `from` to `to`, re-sealed for its new path (whole objects in memory: delta-rs
    /// renames only commit files, which are small).
    async fn reseal(&self, from: &Path, to: &Path, mode: object_store::PutMode) -> Result<(), object_store::Error> {
        let sealed = self.inner.get(from).await?.bytes().await?;
        let plain = self.keys.open(&sealed, &self.bound(from)).map_err(|e| in_place(from, e))?;
        let resealed = self.keys.seal(&plain, &self.bound(to)).map_err(|e| in_place(to, e))?;
        let header: Option<[u8; HEADER]> = resealed[..HEADER].try_into().ok();
        self.headers.invalidate(to);
        self.inner.put_opts(to, resealed.into(), PutOptions { mode, ..PutOptions::default() }).await?;
        if let Some(header) = header {
            self.headers.insert(to.clone(), header);
        }
        Ok(())
    }

    /// A listing in path order with plaintext sizes. Delta's log reader expects the order S3 gives
    /// and checks it only for `file://` URLs, which it sorts itself; under `sealed://` nothing would.
    fn sorted(
        &self,
        listing: BoxStream<'static, Result<ObjectMeta, object_store::Error>>,
    ) -> BoxStream<'static, Result<ObjectMeta, object_store::Error>> {
        let this = self.clone();
        futures::stream::once(async move {
            let mut objects: Vec<ObjectMeta> = listing.try_collect().await?;
            objects.sort_by(|a, b| a.location.cmp(&b.location));
            let objects: Vec<_> = objects.into_iter().map(|m| this.plain_meta(m)).collect();
            Ok::<_, object_store::Error>(futures::stream::iter(objects))
        })
        .map(|listed| match listed {
            Ok(objects) => objects.boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .flatten()
        .boxed()
    }

    /// An object's header, fetched and remembered.
    async fn fetch_header(&self, location: &Path) -> Result<[u8; HEADER], object_store::Error> {
        let range = GetOptions::new().with_range(Some(0..HEADER as u64));
        let bytes = self.inner.get_opts(location, range).await?.bytes().await?;
        let header: [u8; HEADER] =
            bytes.as_ref().try_into().map_err(|_| failure(&format!("{location}: too short to be sealed")))?;
        self.headers.insert(location.clone(), header);
        Ok(header)
    }

    fn plain_meta(&self, mut meta: ObjectMeta) -> Result<ObjectMeta, object_store::Error> {
        meta.size = plain_size(meta.size, &meta.location)?;
        Ok(meta)
    }

    /// Reads `range` of the plaintext: the header and the segments it touches, side by side.
    async fn get_range_of(
        &self,
        location: &Path,
        range: GetRange,
        options: GetOptions,
    ) -> Result<GetResult, object_store::Error> {
        let (start, end) = match range {
            GetRange::Bounded(r) => (r.start, Some(r.end)),
            GetRange::Offset(start) => (start, None),
            GetRange::Suffix(n) => {
                let head = GetOptions { head: true, range: None, ..options.clone() };
                let size = plain_size(self.inner.get_opts(location, head).await?.meta.size, location)?;
                (size.saturating_sub(n), Some(size))
            }
        };
        let first = start / SEGMENT as u64;
        let sealed_start = HEADER as u64 + first * SEALED_SEGMENT as u64;
        let sealed_range = match end {
            Some(end) if end > start => {
                let last = (end - 1) / SEGMENT as u64;
                GetRange::Bounded(sealed_start..HEADER as u64 + (last + 1) * SEALED_SEGMENT as u64)
            }
            Some(_) => return Err(failure(&format!("{location}: empty range {start}..{end:?}"))),
            None => GetRange::Offset(sealed_start),
        };
        let fetch_body = async {
            let result = self.inner.get_opts(location, GetOptions { range: Some(sealed_range), ..options }).await?;
            let (meta, fetched, attributes) = (result.meta.clone(), result.range.clone(), result.attributes.clone());
            Ok::<_, object_store::Error>((meta, fetched, attributes, result.bytes().await?))
        };
        // A header seen before saves a request; if the object was replaced since (only
        // `_last_checkpoint` is, and objects `sokana warehouse encrypt` rewrites), its segments
        // fail to open and the header is fetched again.
        let known = self.headers.get(location);
        let (header, (meta, fetched, attributes, body)) = match known {
            Some(header) => (header, fetch_body.await?),
            None => futures::try_join!(self.fetch_header(location), fetch_body)?,
        };
        let reaches_end = fetched.end == meta.size;
        let bound = self.bound(location);
        let plain = match self.keys.open_segments(&header, &body, first, reaches_end, &bound) {
            Ok(plain) => plain,
            Err(_) if known.is_some() => {
                self.headers.invalidate(location);
                let header = self.fetch_header(location).await?;
                self.keys
                    .open_segments(&header, &body, first, reaches_end, &bound)
                    .map_err(|e| in_place(location, e))?
            }
            Err(e) => return Err(in_place(location, e)),
        };
        let meta = self.plain_meta(meta)?;
        if start >= meta.size {
            return Err(failure(&format!("{location}: range starts at {start}, past the end ({})", meta.size)));
        }
        let skip = (start - first * SEGMENT as u64) as usize;
        let end = end.unwrap_or(meta.size).min(meta.size);
        let wanted = Bytes::from(plain).slice(skip..skip + (end - start) as usize);
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(wanted) }).boxed()),
            meta,
            range: start..end,
            attributes,
        })
    }
}

#[async_trait]
impl ObjectStore for SealedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult, object_store::Error> {
        let plain: Bytes = payload.into();
        let sealed = self.keys.seal(&plain, &self.bound(location)).map_err(|e| in_place(location, e))?;
        let header: Option<[u8; HEADER]> = sealed[..HEADER].try_into().ok();
        let written = self.inner.put_opts(location, sealed.into(), opts).await?;
        if let Some(header) = header {
            self.headers.insert(location.clone(), header);
        }
        Ok(written)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>, object_store::Error> {
        let sealer = Sealer::new(&self.keys.keys[0], &self.bound(location)).map_err(|e| in_place(location, e))?;
        let mut pending = Vec::with_capacity(PART + SEALED_SEGMENT);
        pending.extend_from_slice(&sealer.header);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(SealingUpload {
            inner,
            headers: self.headers.clone(),
            location: location.clone(),
            sealer,
            plain: Vec::with_capacity(2 * SEGMENT),
            pending,
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult, object_store::Error> {
        if options.head {
            let mut result = self.inner.get_opts(location, options).await?;
            result.meta = self.plain_meta(result.meta)?;
            result.range = 0..result.meta.size;
            return Ok(result);
        }
        if let Some(range) = options.range.clone() {
            return self.get_range_of(location, range, options).await;
        }
        let result = self.inner.get_opts(location, options).await?;
        let (meta, attributes) = (result.meta.clone(), result.attributes.clone());
        let sealed = result.bytes().await?;
        let plain = Bytes::from(self.keys.open(&sealed, &self.bound(location)).map_err(|e| in_place(location, e))?);
        if let Ok(header) = sealed[..HEADER].try_into() {
            self.headers.insert(location.clone(), header);
        }
        let meta = self.plain_meta(meta)?;
        Ok(GetResult {
            range: 0..plain.len() as u64,
            payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(plain) }).boxed()),
            meta,
            attributes,
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path, object_store::Error>>,
    ) -> BoxStream<'static, Result<Path, object_store::Error>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta, object_store::Error>> {
        self.sorted(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta, object_store::Error>> {
        self.sorted(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult, object_store::Error> {
        let mut listing = self.inner.list_with_delimiter(prefix).await?;
        listing.objects = listing.objects.into_iter().map(|m| self.plain_meta(m)).collect::<Result<_, _>>()?;
        Ok(listing)
    }

    // A sealed object opens only at its own path: a copy or a move is sealed again for the new one.
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> Result<(), object_store::Error> {
        let mode = match options.mode {
            object_store::CopyMode::Overwrite => object_store::PutMode::Overwrite,
            object_store::CopyMode::Create => object_store::PutMode::Create,
        };
        self.reseal(from, to, mode).await
    }

    /// A commit is a rename of a temporary file to the version's name, if that name is free: the
    /// create-if-absent put of the re-sealed object is the commit's atomic step.
    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::RenameOptions,
    ) -> Result<(), object_store::Error> {
        let mode = match options.target_mode {
            object_store::RenameTargetMode::Overwrite => object_store::PutMode::Overwrite,
            object_store::RenameTargetMode::Create => object_store::PutMode::Create,
        };
        self.reseal(from, to, mode).await?;
        self.headers.invalidate(from);
        self.inner.delete(from).await
    }
}

/// A multipart upload that seals as it goes: full segments are sealed as soon as more bytes follow
/// them, and sent once a part's worth has gathered; the last segment waits for `complete`.
struct SealingUpload {
    inner: Box<dyn MultipartUpload>,
    /// Where the finished object's header is remembered, as for single puts.
    headers: moka::sync::Cache<Path, [u8; HEADER]>,
    location: Path,
    sealer: Sealer,
    plain: Vec<u8>,
    pending: Vec<u8>,
}

impl fmt::Debug for SealingUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingUpload").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl SealingUpload {
    fn seal_full_segments(&mut self) -> Result<(), object_store::Error> {
        // Keep at least one byte back: the segment holding the object's last byte is sealed as last.
        let full = self.plain.len().saturating_sub(1) / SEGMENT * SEGMENT;
        for chunk in self.plain[..full].chunks(SEGMENT) {
            self.sealer.segment(chunk, false, &mut self.pending)?;
        }
        self.plain.drain(..full);
        Ok(())
    }
}

#[async_trait]
impl MultipartUpload for SealingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        for chunk in data.iter() {
            self.plain.extend_from_slice(chunk);
        }
        if let Err(e) = self.seal_full_segments() {
            return Box::pin(async move { Err(e) });
        }
        if self.pending.len() < PART {
            return Box::pin(async { Ok(()) });
        }
        let part = std::mem::replace(&mut self.pending, Vec::with_capacity(PART + SEALED_SEGMENT));
        self.inner.put_part(part.into())
    }

    async fn complete(&mut self) -> Result<PutResult, object_store::Error> {
        self.seal_full_segments()?;
        let last = std::mem::take(&mut self.plain);
        let mut pending = std::mem::take(&mut self.pending);
        self.sealer.segment(&last, true, &mut pending)?;
        self.inner.put_part(pending.into()).await?;
        let written = self.inner.complete().await?;
        self.headers.insert(self.location.clone(), self.sealer.header);
        Ok(written)
    }

    async fn abort(&mut self) -> Result<(), object_store::Error> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn keyring(hex_keys: &str) -> Keyring {
        Keyring::parse(hex_keys, "test").expect("keys")
    }

    const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn sizes_round_trip() {
        for plain in
            [0u64, 1, 100, SEGMENT as u64 - 1, SEGMENT as u64, SEGMENT as u64 + 1, 3 * SEGMENT as u64, 1_000_003]
        {
            assert_eq!(plain_size(sealed_size(plain), &Path::from("x")).expect("size"), plain, "{plain}");
            let sealed = keyring(KEY_A).seal(&vec![7u8; plain as usize], "t/x").expect("seal");
            assert_eq!(sealed.len() as u64, sealed_size(plain));
        }
    }

    #[tokio::test]
    async fn objects_round_trip_whole_by_range_and_by_multipart() {
        let inner = Arc::new(InMemory::new());
        let store = SealedStore::new(inner.clone(), keyring(KEY_A), Path::default());
        let plain: Vec<u8> = (0..(3 * SEGMENT + 1234)).map(|i| (i * 31 % 251) as u8).collect();
        let path = Path::from("t/part-0.parquet");
        store.put(&path, plain.clone().into()).await.expect("put");

        let raw = inner.get(&path).await.expect("raw").bytes().await.expect("bytes");
        // The plaintext repeats every 251 bytes, so any stretch of it would contain its first 64.
        assert!(!raw.windows(64).any(|w| w == &plain[..64]), "no plaintext stored");
        assert_eq!(store.head(&path).await.expect("head").size, plain.len() as u64);
        assert_eq!(store.get(&path).await.expect("get").bytes().await.expect("bytes"), plain);
        let n = plain.len() as u64;
        for range in [0..1, 5..SEGMENT as u64 + 7, SEGMENT as u64..2 * SEGMENT as u64, n - 8..n, n - 1..n + 10] {
            let got = store.get_range(&path, range.clone()).await.expect("range");
            let end = range.end.min(n) as usize;
            assert_eq!(got, plain[range.start as usize..end], "{range:?}");
        }
        let suffix = store.get_opts(&path, GetOptions::new().with_range(Some(GetRange::Suffix(10)))).await;
        assert_eq!(suffix.expect("suffix").bytes().await.expect("bytes"), plain[plain.len() - 10..]);
        let offset = store.get_opts(&path, GetOptions::new().with_range(Some(GetRange::Offset(n - 3)))).await;
        assert_eq!(offset.expect("offset").bytes().await.expect("bytes"), plain[plain.len() - 3..]);
        assert!(store.get_range(&path, n..n + 1).await.is_err(), "a range past the end is refused");
        let listed: Vec<ObjectMeta> = store.list(None).map(|m| m.expect("meta")).collect().await;
        assert_eq!(listed[0].size, n);

        // Parts of odd sizes, one ending exactly on a segment boundary.
        for total in [0usize, 10, SEGMENT, 2 * SEGMENT, PART + 3 * SEGMENT + 5] {
            let data: Vec<u8> = (0..total).map(|i| (i % 13) as u8).collect();
            let path = Path::from(format!("t/multi-{total}"));
            let mut upload = store.put_multipart(&path).await.expect("multipart");
            for part in data.chunks(SEGMENT / 3 + 11) {
                upload.put_part(part.to_vec().into()).await.expect("part");
            }
            upload.complete().await.expect("complete");
            assert_eq!(store.get(&path).await.expect("get").bytes().await.expect("bytes"), data, "{total}");
        }

        // Empty objects are sealed too.
        let empty = Path::from("t/empty");
        store.put(&empty, Vec::<u8>::new().into()).await.expect("put");
        assert!(store.get(&empty).await.expect("get").bytes().await.expect("bytes").is_empty());
    }

    #[tokio::test]
    async fn altered_truncated_or_foreign_objects_are_refused() {
        let inner = Arc::new(InMemory::new());
        let store = SealedStore::new(inner.clone(), keyring(KEY_A), Path::default());
        let path = Path::from("x");
        let plain = vec![1u8; 2 * SEGMENT + 5];
        store.put(&path, plain.clone().into()).await.expect("put");
        let raw = inner.get(&path).await.expect("raw").bytes().await.expect("bytes").to_vec();

        let mut flipped = raw.clone();
        flipped[HEADER + 100] ^= 1;
        inner.put(&path, flipped.into()).await.expect("put");
        assert!(store.get(&path).await.is_err(), "a flipped bit");

        // Cut after the second full segment: the new last segment was not sealed as last.
        let cut = raw[..HEADER + 2 * SEALED_SEGMENT].to_vec();
        inner.put(&path, cut.into()).await.expect("put");
        assert!(store.get(&path).await.is_err(), "a truncation at a segment boundary");

        inner.put(&path, raw.clone().into()).await.expect("put");
        let other = SealedStore::new(inner.clone(), keyring(KEY_B), Path::default());
        let error = other.get(&path).await.expect_err("wrong key").to_string();
        assert!(error.contains("not among the configured keys") && error.contains('x'), "{error}");

        // After a rotation both keys open it; new objects use the new key.
        let rotated = SealedStore::new(inner.clone(), keyring(&format!("{KEY_B}\n{KEY_A}")), Path::default());
        assert_eq!(rotated.get(&path).await.expect("old key").bytes().await.expect("bytes"), plain);
        assert_eq!(Keyring::sealed_with(&raw), Some((keyring(KEY_A).current_id(), true)));
        assert!(Keyring::sealed_with(b"PAR1 plain parquet").is_none());
    }

    #[tokio::test]
    async fn a_range_read_after_the_object_was_replaced_elsewhere_still_opens() {
        let inner = Arc::new(InMemory::new());
        let (reader, writer) = (
            SealedStore::new(inner.clone(), keyring(KEY_A), Path::default()),
            SealedStore::new(inner, keyring(KEY_A), Path::default()),
        );
        let path = Path::from("_delta_log/_last_checkpoint");
        writer.put(&path, vec![1u8; 100].into()).await.expect("put");
        assert_eq!(reader.get_range(&path, 10..20).await.expect("range"), vec![1u8; 10]);
        // Another process rewrites it: a new salt, so the header the reader remembers is stale.
        writer.put(&path, vec![2u8; 100].into()).await.expect("put");
        assert_eq!(reader.get_range(&path, 10..20).await.expect("range"), vec![2u8; 10]);
    }

    /// An object put in another's place (a commit swapped for another version's, one table's file
    /// for another's) does not open; a move through the store re-seals it and does.
    #[tokio::test]
    async fn objects_open_only_at_their_own_path() {
        use object_store::{RenameOptions, RenameTargetMode};
        let inner = Arc::new(InMemory::new());
        let root = Path::from("warehouse");
        let store = SealedStore::new(inner.clone(), keyring(KEY_A), root.clone());
        let (first, second) = (
            Path::from("warehouse/raw/t/_delta_log/00000000000000000000.json"),
            Path::from("warehouse/raw/t/_delta_log/00000000000000000001.json"),
        );
        store.put(&first, b"version 0".to_vec().into()).await.expect("put");
        store.put(&second, b"version 1".to_vec().into()).await.expect("put");
        let raw_first = inner.get(&first).await.expect("raw").bytes().await.expect("bytes");
        inner.put(&second, raw_first.clone().into()).await.expect("swap");
        let swapped = SealedStore::new(inner.clone(), keyring(KEY_A), root.clone());
        let error = swapped.get(&second).await.expect_err("a swapped object").to_string();
        assert!(error.contains("moved here"), "{error}");
        assert!(swapped.get_range(&second, 0..3).await.is_err(), "ranges too");

        // A commit's rename: the temporary file's object moves to the version's name and opens there.
        let temporary = Path::from("warehouse/raw/t/_delta_log/_commit_x.json.tmp");
        let third = Path::from("warehouse/raw/t/_delta_log/00000000000000000002.json");
        store.put(&temporary, b"version 2".to_vec().into()).await.expect("put");
        let create = RenameOptions { target_mode: RenameTargetMode::Create, ..RenameOptions::default() };
        store.rename_opts(&temporary, &third, create.clone()).await.expect("rename");
        assert_eq!(store.get(&third).await.expect("moved").bytes().await.expect("bytes"), b"version 2".to_vec());
        assert!(store.get(&temporary).await.is_err(), "the temporary file is gone");
        store.put(&temporary, b"late".to_vec().into()).await.expect("put");
        assert!(matches!(
            store.rename_opts(&temporary, &third, create).await,
            Err(object_store::Error::AlreadyExists { .. })
        ));

        // The same warehouse under another root (copied elsewhere whole) still opens.
        let moved = Path::from("elsewhere/raw/t/_delta_log/00000000000000000000.json");
        inner.put(&moved, raw_first.into()).await.expect("copy");
        let relocated = SealedStore::new(inner, keyring(KEY_A), Path::from("elsewhere"));
        assert_eq!(
            relocated.get(&moved).await.expect("relocated").bytes().await.expect("bytes"),
            b"version 0".to_vec()
        );
    }

    #[test]
    fn bad_keys_are_named_without_their_value() {
        let error = Keyring::parse("abcd", "SOKANA_WAREHOUSE_KEY").expect_err("short").to_string();
        assert_eq!(error, "SOKANA_WAREHOUSE_KEY: key 1 is not 64 hex digits (a 32-byte key)");
        assert!(Keyring::parse(" \n", "f.key").is_err());
    }
}
