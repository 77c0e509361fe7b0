//! The audit trail: every data access (each query, each authenticated request, each login and
//! privacy request) as one record of who, when, from where, what (normalised SQL or route),
//! which tables and which columns of which classes, and how many rows, never the data itself.
//! Records form a hash chain: each carries the hash of the one before, so changing or removing
//! a record shows when the chain is verified (`sokana audit verify`).
//!
//! Records are appended by a background task in batches (one transaction each), off the
//! request's path; a crash can lose the last few milliseconds of records, never break the chain.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::store::{MetaStore, Row, Value};
use super::{AuthError, policy::MaskingPolicy};
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
    pub columns: Vec<String>,
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

fn chain_hash(prev: &str, seq: i64, event: &Event) -> String {
    // Field order is the struct's, so the same event always serialises the same way.
    let body = serde_json::to_string(event).unwrap_or_default();
    hex::encode(
        Sha256::new()
            .chain_update(prev)
            .chain_update(b"\n")
            .chain_update(seq.to_string())
            .chain_update(b"\n")
            .chain_update(body)
            .finalize(),
    )
}

enum Message {
    Event(Box<Event>),
    /// Answered once everything sent before is written: `false` when some of it could not be.
    Flush(oneshot::Sender<bool>),
}

pub struct Audit {
    sender: mpsc::UnboundedSender<Message>,
    store: MetaStore,
}

const COLUMNS: &str = "seq, at, user_name, role, origin, address, request_id, action, detail, tables, columns, rows_read, outcome, prev_hash, hash";

impl Audit {
    /// Starts the writer over `store`.
    pub fn start(store: MetaStore) -> Arc<Audit> {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write(store.clone(), receiver));
        Arc::new(Audit { sender, store })
    }

    pub fn record(&self, event: Event) {
        // The writer ends only with the process.
        let _ = self.sender.send(Message::Event(Box::new(event)));
    }

    /// Waits until every record sent before is written; an error when one of them (or one since
    /// the last flush) could not be.
    pub async fn flush(&self) -> Result<(), AuthError> {
        let (done, wait) = oneshot::channel();
        self.sender.send(Message::Flush(done)).map_err(|_| AuthError::AuditUnavailable)?;
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
            columns: list(10)?,
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

async fn write(store: MetaStore, mut receiver: mpsc::UnboundedReceiver<Message>) {
    let mut chain: Option<(i64, String)> = None;
    let mut batch: Vec<Event> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<bool>> = Vec::new();
    let mut lost = false;
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        // Take whatever else is queued, up to a batch.
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => batch.push(*event),
                Message::Flush(done) => waiting.push(done),
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
                let hash = chain_hash(&prev, seq, event);
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
                }
                // Another instance appended first (a taken sequence number): read the head again.
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "audit: appending failed; retrying from the chain's head")
                }
            }
        }
        if !batch.is_empty() {
            tracing::error!(records = batch.len(), "audit: records could not be written");
            batch.clear();
            lost = true;
        }
        if !waiting.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(!lost);
            }
            lost = false;
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
/// each record's own hash. The first broken record is named.
pub async fn verify(store: &MetaStore) -> Result<Verified, AuthError> {
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
            if chain_hash(&prev, entry.seq, &entry.event) != entry.hash {
                return Err(tampered("its contents do not match its hash"));
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

/// Checks the store against a copy of its record `seq` (the newest one the warehouse holds, say):
/// the chain alone cannot show that its newest records were cut off.
pub async fn check_copy(store: &MetaStore, seq: i64, hash: &str) -> Result<(), AuthError> {
    let rows = store.query("SELECT hash FROM audit WHERE seq = $1", &[seq.into()]).await?;
    match rows.first().map(|r| r.text(0)) {
        None => {
            Err(AuthError::Tampered { seq, reason: "the record was removed; the warehouse's copy holds it".into() })
        }
        Some(stored) if stored != hash => {
            Err(AuthError::Tampered { seq, reason: "its hash differs from the warehouse's copy".into() })
        }
        Some(_) => Ok(()),
    }
}

/// Tells the audit trail of every query the engine finishes, with each column's class.
pub struct QueryAudit {
    pub audit: Arc<Audit>,
    pub policy: Arc<MaskingPolicy>,
}

#[async_trait::async_trait]
impl AccessRecorder for QueryAudit {
    async fn settle(&self) -> Result<(), String> {
        self.audit.flush().await.map_err(|e| e.to_string())
    }

    fn record(&self, caller: &Caller, record: &QueryRecord) {
        let columns = record
            .columns
            .iter()
            .map(|qualified| {
                let class = qualified
                    .rsplit_once('.')
                    .and_then(|(table, column)| table.parse().ok().map(|t| self.policy.class_of(&t, column)));
                match class {
                    Some(class) => format!("{qualified}:{class}"),
                    None => qualified.clone(),
                }
            })
            .collect();
        self.audit.record(Event {
            at: record.at.clone(),
            user: caller.user.clone(),
            role: caller.scope.clone(),
            origin: caller.origin.to_string(),
            address: caller.address.map(|a| a.to_string()).unwrap_or_default(),
            request_id: caller.request_id.clone(),
            action: "query".into(),
            detail: record.sql.clone(),
            tables: record.tables.clone(),
            columns,
            rows: record.rows,
            outcome: record.error.clone().unwrap_or_else(|| "ok".into()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chain_verifies_and_shows_a_changed_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open("meta.db", dir.path()).await.unwrap();
        let audit = Audit::start(store.clone());
        for i in 0..5 {
            audit.record(Event { user: format!("u{i}"), action: "query".into(), rows: i, ..Event::default() });
        }
        audit.flush().await.unwrap();
        let verified = verify(&store).await.unwrap();
        assert_eq!(verified.records, 5);
        assert_eq!(audit.entries(3, 10, None).await.unwrap().len(), 2);
        store.execute("UPDATE audit SET rows_read = 99 WHERE seq = 3", &[]).await.unwrap();
        match verify(&store).await {
            Err(AuthError::Tampered { seq, .. }) => assert_eq!(seq, 3),
            other => panic!("expected tampering at 3, got {other:?}"),
        }
        store.execute("DELETE FROM audit WHERE seq = 3", &[]).await.unwrap();
        assert!(matches!(verify(&store).await, Err(AuthError::Tampered { seq: 3, .. })));
    }
}
