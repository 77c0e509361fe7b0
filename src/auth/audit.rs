//! The audit trail: every data access (each query, each authenticated request, each login and
//! privacy request) as one record of who, when, from where, what (normalised SQL or route),
//! which tables and which columns of which classes, and how many rows, never the data itself.
//! Records form a keyed hash chain: each carries an HMAC-SHA256, under a key derived from
//! `auth.key_file` and never kept in the store, of its contents and the MAC of the one before, so
//! changing, inserting or removing a record shows when the chain is verified (`sokana audit
//! verify`), even to someone who can rewrite the store but has not read the key.
//!
//! Records are appended by a background task in batches (one transaction each), off the
//! request's path; a crash can lose the last few milliseconds of records, never break the chain.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use super::{AuthError, policy::MaskingPolicy};
use crate::metastore::{MetaStore, Row, Value};
use crate::query::engine::{AccessRecorder, Caller};
use crate::query::log::QueryRecord;

/// One access, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339, UTC.
    pub at: String,
    pub user: String,
    pub role: String,
    /// `http`, `pgwire`, `cli`, `dashboard`.
    pub origin: String,
    pub address: String,
    pub request_id: String,
    /// `query`, `login`, `privacy.export`, … or the route (`GET /api/v1/tables`).
    pub action: String,
    /// The normalised SQL (literals replaced by `?`), or the path asked for.
    pub detail: String,
    pub tables: Vec<String>,
    /// `schema.table.column:class` for every column read.
    pub columns: Arc<[String]>,
    pub rows: u64,
    /// `ok`, an error code, or an HTTP status.
    pub outcome: String,
}

impl Event {
    /// An event stamped with the current time.
    pub fn now() -> Event {
        Event { at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true), ..Event::default() }
    }
}

/// A record with its place in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

/// The hash before the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key the chain is MACed with.
#[derive(Clone)]
pub struct ChainKey([u8; 32]);

impl ChainKey {
    pub fn new(key: [u8; 32]) -> ChainKey {
        ChainKey(key)
    }

    fn mac(&self, prev: &str, seq: i64, event: &Event) -> String {
        use hmac::{KeyInit, Mac};
        // Field order is the struct's, so the same event always serialises the same way.
        let body = serde_json::to_string(event).unwrap_or_default();
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        for part in [prev.as_bytes(), b"\n", seq.to_string().as_bytes(), b"\n", body.as_bytes()] {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(<withheld>)")
    }
}

enum Message {
    /// A record and its ticket (the number of records sent before it, plus one).
    Event(Box<Event>, u64),
    /// Answered once everything sent before is written: `false` when a record whose ticket is in
    /// `from..=through` could not be.
    Flush { from: u64, through: u64, done: oneshot::Sender<bool> },
}

pub struct Audit {
    sender: mpsc::UnboundedSender<Message>,
    store: MetaStore,
    /// Tickets handed out so far.
    sent: std::sync::atomic::AtomicU64,
    /// The last ticket a [`Audit::flush`] vouched for.
    flushed: std::sync::atomic::AtomicU64,
}

/// Ranges of tickets whose records could not be written, kept for this many batches.
const FAILURES_KEPT: usize = 4096;

const COLUMNS: &str = "seq, at, user_name, role, origin, address, request_id, action, detail, tables, columns, rows_read, outcome, prev_hash, hash";

impl Audit {
    /// Starts the writer over `store`, chaining records under `key`.
    pub fn start(store: MetaStore, key: ChainKey) -> Arc<Audit> {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write(store.clone(), key, receiver));
        Arc::new(Audit { sender, store, sent: Default::default(), flushed: Default::default() })
    }

    /// Queues a record; its ticket tells [`Audit::written`] which record to wait for.
    pub fn record(&self, event: Event) -> u64 {
        use std::sync::atomic::Ordering;
        let ticket = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        // The writer ends only with the process.
        let _ = self.sender.send(Message::Event(Box::new(event), ticket));
        ticket
    }

    /// Waits until the record with `ticket` is written; an error when it could not be. Another
    /// caller's failed record does not fail this one.
    pub async fn written(&self, ticket: u64) -> Result<(), AuthError> {
        self.wait(ticket, ticket).await
    }

    /// Waits until every record sent before is written; an error when one sent since the last
    /// flush could not be.
    pub async fn flush(&self) -> Result<(), AuthError> {
        use std::sync::atomic::Ordering;
        let through = self.sent.load(Ordering::SeqCst);
        let from = self.flushed.swap(through, Ordering::SeqCst) + 1;
        self.wait(from, through).await
    }

    /// Waits until the writer has dealt with every record sent before (written, or given up on),
    /// so that a reading of the trail that follows shows them. A failure is its own waiters' to
    /// report, not this caller's: the range waited on is empty.
    pub async fn caught_up(&self) {
        let through = self.sent.load(std::sync::atomic::Ordering::SeqCst);
        let _ = self.wait(through + 1, through).await;
    }

    async fn wait(&self, from: u64, through: u64) -> Result<(), AuthError> {
        let (done, wait) = oneshot::channel();
        self.sender.send(Message::Flush { from, through, done }).map_err(|_| AuthError::AuditUnavailable)?;
        match wait.await {
            Ok(true) => Ok(()),
            _ => Err(AuthError::AuditUnavailable),
        }
    }

    /// Records after `after` (a sequence number), oldest first; optionally one user's.
    pub async fn entries(&self, after: i64, limit: i64, user: Option<&str>) -> Result<Vec<Entry>, AuthError> {
        let rows = match user {
            Some(user) => {
                self.store
                    .query(
                        &format!("SELECT {COLUMNS} FROM audit WHERE seq > $1 AND user_name = $2 ORDER BY seq LIMIT $3"),
                        &[after.into(), user.into(), limit.into()],
                    )
                    .await?
            }
            None => {
                self.store
                    .query(
                        &format!("SELECT {COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"),
                        &[after.into(), limit.into()],
                    )
                    .await?
            }
        };
        rows.iter().map(entry).collect()
    }
}

fn entry(row: &Row) -> Result<Entry, AuthError> {
    let list = |i: usize| -> Result<Vec<String>, AuthError> {
        serde_json::from_str(&row.text(i)).map_err(|e| AuthError::Internal(format!("audit record {}: {e}", row.int(0))))
    };
    Ok(Entry {
        seq: row.int(0),
        event: Event {
            at: row.text(1),
            user: row.text(2),
            role: row.text(3),
            origin: row.text(4),
            address: row.text(5),
            request_id: row.text(6),
            action: row.text(7),
            detail: row.text(8),
            tables: list(9)?,
            columns: list(10)?.into(),
            rows: row.int(11).max(0) as u64,
            outcome: row.text(12),
        },
        prev_hash: row.text(13),
        hash: row.text(14),
    })
}

async fn head(store: &MetaStore) -> Result<(i64, String), AuthError> {
    let rows = store.query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[]).await?;
    Ok(rows.first().map_or((0, GENESIS.to_string()), |r| (r.int(0), r.text(1))))
}

async fn write(store: MetaStore, key: ChainKey, mut receiver: mpsc::UnboundedReceiver<Message>) {
    let mut chain: Option<(i64, String)> = None;
    let mut batch: Vec<Event> = Vec::new();
    let mut tickets: Vec<u64> = Vec::new();
    let mut waiting: Vec<(u64, u64, oneshot::Sender<bool>)> = Vec::new();
    let mut failed: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        // Take whatever else is queued, up to a batch.
        while let Some(message) = next.take() {
            match message {
                Message::Event(event, ticket) => {
                    batch.push(*event);
                    tickets.push(ticket);
                }
                Message::Flush { from, through, done } => waiting.push((from, through, done)),
            }
            if batch.len() < 512 {
                next = receiver.try_recv().ok();
            }
        }
        for attempt in 0..5 {
            if batch.is_empty() {
                break;
            }
            let (mut seq, mut prev) = match chain.take() {
                Some(known) => known,
                None => match head(&store).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!(error = %e, "audit: reading the chain's head failed");
                        continue;
                    }
                },
            };
            let mut rows = Vec::with_capacity(batch.len());
            for event in &batch {
                seq += 1;
                let hash = key.mac(&prev, seq, event);
                rows.push(vec![
                    Value::Int(seq),
                    event.at.clone().into(),
                    event.user.clone().into(),
                    event.role.clone().into(),
                    event.origin.clone().into(),
                    event.address.clone().into(),
                    event.request_id.clone().into(),
                    event.action.clone().into(),
                    event.detail.clone().into(),
                    serde_json::to_string(&event.tables).unwrap_or_default().into(),
                    serde_json::to_string(&event.columns).unwrap_or_default().into(),
                    Value::Int(event.rows.min(i64::MAX as u64) as i64),
                    event.outcome.clone().into(),
                    prev.clone().into(),
                    hash.clone().into(),
                ]);
                prev = hash;
            }
            let sql = format!(
                "INSERT INTO audit ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            );
            match store.execute_many(&sql, rows).await {
                Ok(()) => {
                    chain = Some((seq, prev));
                    batch.clear();
                    tickets.clear();
                }
                // Another instance appended first (a taken sequence number): read the head again.
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "audit: appending failed; retrying from the chain's head")
                }
            }
        }
        if !batch.is_empty() {
            tracing::error!(records = batch.len(), "audit: records could not be written");
            if let (Some(first), Some(last)) = (tickets.first(), tickets.last()) {
                if failed.len() == FAILURES_KEPT {
                    failed.pop_front();
                }
                failed.push_back((*first, *last));
            }
            batch.clear();
            tickets.clear();
        }
        for (from, through, done) in waiting.drain(..) {
            let lost = failed.iter().any(|&(first, last)| first <= through && from <= last);
            let _ = done.send(!lost);
        }
    }
}

/// What verifying found: how many records, and the head's hash.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub records: i64,
    pub head: String,
}

/// Checks the whole chain: numbering without gaps, each record's link to the one before, and
/// each record's own MAC under `key`. The first broken record is named.
pub async fn verify(store: &MetaStore, key: &ChainKey) -> Result<Verified, AuthError> {
    let mut prev = GENESIS.to_string();
    let mut expected = 1i64;
    loop {
        let rows = store
            .query(&format!("SELECT {COLUMNS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT 5000"), &[expected.into()])
            .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let tampered = |reason: &str| AuthError::Tampered { seq: row.int(0), reason: reason.to_string() };
            let entry = entry(row).map_err(|_| tampered("the record does not parse"))?;
            if entry.seq != expected {
                return Err(AuthError::Tampered { seq: expected, reason: "the record is missing".into() });
            }
            if entry.prev_hash != prev {
                return Err(tampered("it does not link to the record before"));
            }
            if key.mac(&prev, entry.seq, &entry.event) != entry.hash {
                return Err(tampered("its contents do not match its MAC (changed, or written under another key)"));
            }
            prev = entry.hash;
            expected += 1;
        }
    }
    let first = store.query("SELECT min(seq) FROM audit", &[]).await?;
    if first.first().and_then(|r| r.opt_int(0)).is_some_and(|min| min != 1) {
        return Err(AuthError::Tampered { seq: 1, reason: "the first records are missing".into() });
    }
    Ok(Verified { records: expected - 1, head: prev })
}

/// How far the warehouse's copy of the trail (`raw.sokana_audit`, copied every 15 minutes) may
/// lag behind the store before `verify` calls it rolled back.
pub const COPY_LAG: chrono::Duration = chrono::Duration::hours(1);

/// What the warehouse holds of the trail (`raw.sokana_audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    /// The table was never made: the trail was never copied.
    Missing,
    /// The table holds no record yet.
    Empty,
    /// Its newest record: sequence number and MAC.
    Newest(i64, String),
}

/// Checks the store against the warehouse's copy of the trail: the chain alone cannot show that
/// its newest records were cut off. Fails when there is no copy though the store holds records;
/// when the copy's newest record is not in the store as copied; and when the copy ends before
/// records older than [`COPY_LAG`] (the copy was rolled back, or has not been made for too long).
pub async fn check_copy(store: &MetaStore, copy: Copy) -> Result<(), AuthError> {
    let newest = store.query("SELECT max(seq) FROM audit", &[]).await?.first().and_then(|r| r.opt_int(0));
    let copied = match copy {
        Copy::Missing if newest.is_some() => {
            return Err(AuthError::Unverifiable(
                "the warehouse holds no copy of it (raw.sokana_audit) to check its end against; copy it with \
                 `sokana pipeline run sokana_audit` (the server does every 15 minutes)"
                    .into(),
            ));
        }
        Copy::Missing | Copy::Empty => 0,
        Copy::Newest(seq, hash) => {
            let rows = store.query("SELECT hash FROM audit WHERE seq = $1", &[seq.into()]).await?;
            let tampered = |reason: &str| AuthError::Tampered { seq, reason: reason.into() };
            match rows.first().map(|r| r.text(0)) {
                None => return Err(tampered("the record was removed; the warehouse's copy holds it")),
                Some(stored) if stored != hash => return Err(tampered("its MAC differs from the warehouse's copy")),
                Some(_) => seq,
            }
        }
    };
    let due = (chrono::Utc::now() - COPY_LAG).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let overdue = store.query("SELECT max(seq) FROM audit WHERE at < $1", &[due.into()]).await?;
    match overdue.first().and_then(|r| r.opt_int(0)) {
        Some(older) if older > copied => Err(AuthError::Unverifiable(format!(
            "the warehouse's copy ends at record {copied}, but records up to {older} are more than an hour old: \
             the copy was rolled back, or has not been made since (`sokana pipeline run sokana_audit`)"
        ))),
        _ => Ok(()),
    }
}

/// Tells the audit trail of every query the engine finishes, with each column's class.
pub struct QueryAudit {
    pub audit: Arc<Audit>,
    pub policy: Arc<MaskingPolicy>,
}

#[async_trait::async_trait]
impl AccessRecorder for QueryAudit {
    async fn settle(&self, ticket: u64) -> Result<(), String> {
        self.audit.written(ticket).await.map_err(|e| e.to_string())
    }

    fn describe_columns(&self, columns: Vec<String>) -> Vec<String> {
        columns
            .into_iter()
            .map(|qualified| {
                let class = qualified
                    .rsplit_once('.')
                    .and_then(|(table, column)| table.parse().ok().map(|t| self.policy.class_of(&t, column)));
                match class {
                    Some(class) => format!("{qualified}:{class}"),
                    None => qualified,
                }
            })
            .collect()
    }

    fn record(&self, caller: &Caller, record: &QueryRecord) -> u64 {
        self.audit.record(Event {
            at: record.at.clone(),
            user: caller.user.clone(),
            role: caller.scope.clone(),
            origin: caller.origin.to_string(),
            address: caller.address.map(|a| a.to_string()).unwrap_or_default(),
            request_id: caller.request_id.clone(),
            action: "query".into(),
            detail: record.sql.to_string(),
            tables: record.tables.to_vec(),
            columns: record.columns.clone(),
            rows: record.rows,
            outcome: record.error.clone().unwrap_or_else(|| "ok".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chain_verifies_and_shows_a_changed_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open("meta.db", dir.path()).await.unwrap();
        let key = ChainKey::new([7; 32]);
        let audit = Audit::start(store.clone(), key.clone());
        for i in 0..5 {
            audit.record(Event { user: format!("u{i}"), action: "query".into(), rows: i, ..Event::default() });
        }
        audit.flush().await.unwrap();
        let verified = verify(&store, &key).await.unwrap();
        assert_eq!(verified.records, 5);
        assert_eq!(audit.entries(3, 10, None).await.unwrap().len(), 2);
        store.execute("UPDATE audit SET rows_read = 99 WHERE seq = 3", &[]).await.unwrap();
        match verify(&store, &key).await {
            Err(AuthError::Tampered { seq, .. }) => assert_eq!(seq, 3),
            other => panic!("expected tampering at 3, got {other:?}"),
        }
        store.execute("DELETE FROM audit WHERE seq = 3", &[]).await.unwrap();
        assert!(matches!(verify(&store, &key).await, Err(AuthError::Tampered { seq: 3, .. })));
    }

    /// The warehouse's copy is the witness of the trail's end: missing, behind by more than an hour,
    /// or different, verification fails rather than passing on the chain alone.
    #[tokio::test]
    async fn a_missing_stale_or_different_copy_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open("meta.db", dir.path()).await.unwrap();
        assert!(check_copy(&store, Copy::Missing).await.is_ok(), "an empty trail needs no copy");
        let audit = Audit::start(store.clone(), ChainKey::new([7; 32]));
        for i in 0..3 {
            let at = format!("2026-01-0{}T00:00:00.000000Z", i + 1);
            audit.record(Event { at, user: format!("u{i}"), action: "query".into(), ..Event::default() });
        }
        audit.flush().await.unwrap();
        let entries = audit.entries(0, 10, None).await.unwrap();
        let copy = |i: usize| Copy::Newest(entries[i].seq, entries[i].hash.clone());
        assert!(check_copy(&store, copy(2)).await.is_ok());
        match check_copy(&store, Copy::Missing).await {
            Err(AuthError::Unverifiable(reason)) => assert!(reason.contains("no copy"), "{reason}"),
            other => panic!("a missing copy must fail: {other:?}"),
        }
        for behind in [copy(0), Copy::Empty] {
            match check_copy(&store, behind).await {
                Err(AuthError::Unverifiable(reason)) => assert!(reason.contains("rolled back"), "{reason}"),
                other => panic!("a copy behind by records days old must fail: {other:?}"),
            }
        }
        let forged = Copy::Newest(2, "0".repeat(64));
        assert!(matches!(check_copy(&store, forged).await, Err(AuthError::Tampered { seq: 2, .. })));
        // Records younger than the copy's lag need not be copied yet.
        audit.record(Event::now());
        audit.flush().await.unwrap();
        assert!(check_copy(&store, copy(2)).await.is_ok());
    }

    /// A record that could not be written fails the answer it belongs to, not the next one.
    #[tokio::test]
    async fn a_failed_record_fails_its_own_answer_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open("meta.db", dir.path()).await.unwrap();
        let audit = Audit::start(store.clone(), ChainKey::new([7; 32]));
        store
            .execute("CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'refused'); END", &[])
            .await
            .unwrap();
        let refused = audit.record(Event::now());
        assert!(audit.written(refused).await.is_err());
        // Another record that fails after the answer above was given, as a route's record does.
        let late = audit.record(Event::now());
        assert!(audit.written(late).await.is_err());
        store.execute("DROP TRIGGER refuse", &[]).await.unwrap();
        let kept = audit.record(Event::now());
        assert!(audit.written(kept).await.is_ok(), "earlier failures do not fail a record that was written");
        assert!(audit.flush().await.is_err(), "a flush vouches for everything since the last one");
        assert!(audit.flush().await.is_ok());
    }

    /// Someone who can write the store but has not read the key cannot re-hash an edited record
    /// and the ones after it so that the chain verifies again, as a plain SHA-256 chain allowed.
    #[tokio::test]
    async fn a_rewritten_and_rehashed_record_does_not_verify_without_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open("meta.db", dir.path()).await.unwrap();
        let key = ChainKey::new([7; 32]);
        let audit = Audit::start(store.clone(), key.clone());
        for i in 0..3 {
            audit.record(Event { user: format!("u{i}"), action: "query".into(), rows: i, ..Event::default() });
        }
        audit.flush().await.unwrap();
        // The forger edits record 2 and recomputes it and its successor under a key of their own
        // (plain SHA-256 of the same fields is what the unkeyed chain used).
        let forged = ChainKey::new([0; 32]);
        let entries = audit.entries(0, 10, None).await.unwrap();
        let mut prev = entries[0].hash.clone();
        for entry in &entries[1..] {
            let mut event = entry.event.clone();
            if entry.seq == 2 {
                event.user = "someone else".into();
            }
            let hash = forged.mac(&prev, entry.seq, &event);
            store
                .execute(
                    "UPDATE audit SET user_name = $2, prev_hash = $3, hash = $4 WHERE seq = $1",
                    &[entry.seq.into(), event.user.clone().into(), prev.clone().into(), hash.clone().into()],
                )
                .await
                .unwrap();
            prev = hash;
        }
        assert!(matches!(verify(&store, &key).await, Err(AuthError::Tampered { seq: 2, .. })));
    }
}
