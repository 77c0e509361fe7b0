//! The durable run log (`STATE_DIR/runs.db`, SQLite): one row per pipeline run and one per table
//! loaded, written as the run goes so that a crash leaves a trace; the scheduler's decisions about
//! every scheduled job (pipelines and reports); the delivery ledger, one row per (job, slot,
//! recipient) with its state, so that a slot is sent once across restarts; and the per-job lock
//! that keeps two runs of one job from overlapping. It stores rows: what a delivery is, is the
//! `report` module's business.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum RunLogError {
    #[error("run log {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("pipeline {pipeline} is already running (lock {path} is held by another process)")]
    AlreadyRunning { pipeline: String, path: PathBuf },
}

/// How a run, or one table of it, stands: as the log stores it, the API answers it and the CLI
/// prints it (lowercase).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started, not finished (a run only).
    #[default]
    Running,
    Succeeded,
    Failed,
    /// Found still running by the next run of its pipeline: its process had ended (a run only).
    Interrupted,
    /// Not built: a model it reads failed in the same run (a table only).
    Skipped,
    /// A model whose inputs and SQL are as at its last build (a table only).
    Unchanged,
}

/// The names of a fieldless enum the log stores as text: `as_str`, `Display`, comparison with the
/// name (what every reader of the log sees), and rusqlite's conversions (a name read back that no
/// variant has is an error naming `$what`).
macro_rules! stored_by_name {
    ($type:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            const ALL: &[$type] = &[$($type::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl PartialEq<&str> for $type {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl rusqlite::ToSql for $type {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $type {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<$type> {
                let text = value.as_str()?;
                $type::ALL.iter().copied().find(|v| v.as_str() == text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(format!("unknown {} {text:?}", $what).into())
                })
            }
        }
    };
}

stored_by_name!(Status, "run status", {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Interrupted => "interrupted",
    Skipped => "skipped",
    Unchanged => "unchanged",
});

/// What the scheduler decided about one schedule time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// A run was started (again, on a retry).
    Fired,
    /// The run it started succeeded.
    Succeeded,
    /// Not run: missed while the server was down (`catch_up = "skip"`), or while the previous run
    /// was still going, or another run of the pipeline held its lock.
    Skipped,
    /// Missed while the server was down; run once now (`catch_up = "latest"`).
    CaughtUp,
    /// Begun by a process that ended before finishing it; finished now.
    Resumed,
    /// The job waits for something before it runs (a report for fresh data).
    Waiting,
    /// The run failed; another attempt follows.
    Retrying,
    /// The last attempt failed.
    Failed,
}

stored_by_name!(DecisionKind, "scheduler decision", {
    Fired => "fired",
    Succeeded => "succeeded",
    Skipped => "skipped",
    CaughtUp => "caught_up",
    Resumed => "resumed",
    Waiting => "waiting",
    Retrying => "retrying",
    Failed => "failed",
});

/// Where one message of a scheduled slot stands in the delivery ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Claimed for its slot; the report is being made.
    Rendering,
    /// Handed to the mail server; not yet known to be accepted.
    Sending,
    /// Accepted by the mail server.
    Sent,
    /// Not sent: refused, or the last attempt failed (`detail` says which).
    Failed,
    /// Found `sending` after a crash: the server may have accepted it. It is sent again with the
    /// same Message-ID, and `possible_repeat` stays set on the row.
    Ambiguous,
    /// An attempt failed for a reason that may pass; another follows.
    Retrying,
    /// Waiting to be sent (a webhook's event).
    Queued,
}

stored_by_name!(DeliveryState, "delivery state", {
    Rendering => "rendering",
    Sending => "sending",
    Sent => "sent",
    Failed => "failed",
    Ambiguous => "ambiguous",
    Retrying => "retrying",
    Queued => "queued",
});

impl DeliveryState {
    /// Whether the message still has to go out (sent and failed are final).
    pub fn pending(self) -> bool {
        !matches!(self, DeliveryState::Sent | DeliveryState::Failed)
    }
}

/// One message of the delivery ledger.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The job that sends it (`report:NAME`).
    pub job: String,
    /// The schedule time it is for (a send on request has its own).
    pub slot: DateTime<Utc>,
    pub recipient: String,
    /// The same for every attempt, so that a receiver can tell a repeat.
    pub message_id: String,
    /// The role whose view of the data it carries.
    pub view: String,
    /// `schedule`, `cli` or `api`.
    pub trigger: String,
    pub state: DeliveryState,
    /// Times it was handed to the mail server.
    pub attempts: u32,
    /// It was found `sending` after a crash and sent again: the recipient may hold two copies.
    pub possible_repeat: bool,
    pub detail: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// What is sent, when the ledger holds it (a webhook's event); never listed.
    #[serde(skip)]
    pub body: Option<String>,
}

/// What an alert last found and when it last sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertState {
    pub firing: bool,
    /// Since when it has been firing (or quiet).
    pub since: DateTime<Utc>,
    /// When its last message went out.
    pub notified_at: Option<DateTime<Utc>>,
    pub summary: String,
}

pub struct RunLog {
    conn: std::sync::Mutex<Connection>,
    path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub trigger: String,
    pub status: Status,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub tables: Vec<TableRecord>,
}

/// One decision of the scheduler.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub pipeline: String,
    /// The schedule time it concerns.
    pub slot: Option<DateTime<Utc>>,
    pub decision: DecisionKind,
    pub detail: Option<String>,
    pub run_id: Option<String>,
    /// When it was recorded (set by the log).
    pub at: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableRecord {
    pub target: String,
    pub status: Status,
    pub rows_read: u64,
    /// Rows read but kept out: their person was erased (`privacy`).
    pub withheld: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub version: Option<i64>,
    pub cursor: Option<String>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

/// Whether SQLite refused for another connection's lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

impl RunLog {
    pub fn open(state_dir: &Path) -> Result<RunLog, RunLogError> {
        let path = state_dir.join("runs.db");
        let store_err = |e: &dyn std::fmt::Display| RunLogError::Store { path: path.clone(), reason: e.to_string() };
        std::fs::create_dir_all(state_dir).map_err(|e| store_err(&e))?;
        let mut conn = Connection::open(&path).map_err(|e| store_err(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(|e| store_err(&e))?;
        // Switching a new log to WAL needs the file to itself, and SQLite answers "busy" at once
        // rather than waiting when another opener holds it: try again for a while.
        let mut attempts = 0;
        while let Err(e) = conn.pragma_update(None, "journal_mode", "WAL") {
            attempts += 1;
            if attempts == 100 || !is_busy(&e) {
                return Err(store_err(&e));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The tables and the migration share one write transaction, taken before anything is read:
        // a reader that later wants to write may be refused at once (SQLite's deadlock rule), and
        // two processes opening an old log at once (the server and a CLI command) must not both
        // add the column that came after the first release.
        let setup =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| store_err(&e))?;
        setup
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS runs (
                   id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, trigger TEXT NOT NULL, status TEXT NOT NULL,
                   started_at TEXT NOT NULL, finished_at TEXT, error TEXT);
                 CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, started_at);
                 CREATE TABLE IF NOT EXISTS run_tables (
                   run_id TEXT NOT NULL REFERENCES runs (id), target TEXT NOT NULL, status TEXT NOT NULL,
                   rows_read INTEGER NOT NULL DEFAULT 0, inserted INTEGER NOT NULL DEFAULT 0,
                   updated INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
                   version INTEGER, cursor TEXT, duration_ms INTEGER NOT NULL DEFAULT 0, error TEXT,
                   withheld INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (run_id, target));
                 CREATE TABLE IF NOT EXISTS schedule_slots (
                   pipeline TEXT PRIMARY KEY, slot TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS schedule_decisions (
                   at TEXT NOT NULL, pipeline TEXT NOT NULL, slot TEXT, decision TEXT NOT NULL,
                   detail TEXT, run_id TEXT);
                 CREATE INDEX IF NOT EXISTS decisions_by_pipeline ON schedule_decisions (pipeline, at);
                 CREATE TABLE IF NOT EXISTS deliveries (
                   job TEXT NOT NULL, slot TEXT NOT NULL, recipient TEXT NOT NULL, message_id TEXT NOT NULL,
                   view TEXT NOT NULL, trigger TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                   possible_repeat INTEGER NOT NULL DEFAULT 0, detail TEXT,
                   created_at TEXT NOT NULL, updated_at TEXT NOT NULL, body TEXT,
                   PRIMARY KEY (job, slot, recipient));
                 CREATE INDEX IF NOT EXISTS deliveries_by_state ON deliveries (job, state);
                 CREATE TABLE IF NOT EXISTS alert_states (
                   job TEXT PRIMARY KEY, firing INTEGER NOT NULL, since TEXT NOT NULL, notified_at TEXT,
                   summary TEXT NOT NULL);",
            )
            .map_err(|e| store_err(&e))?;
        let has_withheld: bool = setup
            .query_row("SELECT count(*) > 0 FROM pragma_table_info('run_tables') WHERE name = 'withheld'", [], |r| {
                r.get(0)
            })
            .map_err(|e| store_err(&e))?;
        if !has_withheld {
            setup
                .execute_batch("ALTER TABLE run_tables ADD COLUMN withheld INTEGER NOT NULL DEFAULT 0")
                .map_err(|e| store_err(&e))?;
        }
        setup.commit().map_err(|e| store_err(&e))?;
        Ok(RunLog { conn: std::sync::Mutex::new(conn), path })
    }

    /// The connection; the log is shared by the scheduler's tasks, one statement at a time.
    fn db(&self) -> Result<std::sync::MutexGuard<'_, Connection>, RunLogError> {
        self.conn.lock().map_err(|_| RunLogError::Store {
            path: self.path.clone(),
            reason: "a thread panicked while writing the run log".into(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> RunLogError {
        RunLogError::Store { path: self.path.clone(), reason: e.to_string() }
    }

    /// Records a new run as `running`. Runs of this pipeline still marked `running` were cut short
    /// (the caller holds the lock, so their process is gone): they become `interrupted`.
    pub fn start(&self, pipeline: &str, trigger: &str) -> Result<String, RunLogError> {
        let id =
            format!("{}-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        self.db()?
            .execute(
                "UPDATE runs SET status = ?2 WHERE pipeline = ?1 AND status = ?3",
                params![pipeline, Status::Interrupted, Status::Running],
            )
            .map_err(|e| self.err(e))?;
        self.db()?
            .execute(
                "INSERT INTO runs (id, pipeline, trigger, status, started_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, pipeline, trigger, Status::Running, now()],
            )
            .map_err(|e| self.err(e))?;
        Ok(id)
    }

    pub fn record_table(&self, run_id: &str, table: &TableRecord) -> Result<(), RunLogError> {
        self.db()?
            .execute(
                "INSERT OR REPLACE INTO run_tables
                   (run_id, target, status, rows_read, inserted, updated, deleted, version, cursor, duration_ms, error,
                    withheld)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    run_id,
                    table.target,
                    table.status,
                    table.rows_read as i64,
                    table.inserted as i64,
                    table.updated as i64,
                    table.deleted as i64,
                    table.version,
                    table.cursor,
                    table.duration_ms as i64,
                    table.error,
                    table.withheld as i64
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn finish(&self, run_id: &str, error: Option<&str>) -> Result<(), RunLogError> {
        let status = if error.is_some() { Status::Failed } else { Status::Succeeded };
        self.db()?
            .execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
                params![run_id, status, now(), error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The newest schedule time the scheduler has dealt with for `pipeline`.
    pub fn schedule_slot(&self, pipeline: &str) -> Result<Option<DateTime<Utc>>, RunLogError> {
        let slot: Option<String> = self
            .db()?
            .query_row("SELECT slot FROM schedule_slots WHERE pipeline = ?1", params![pipeline], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(slot.as_deref().and_then(parse_timestamp))
    }

    pub fn set_schedule_slot(&self, pipeline: &str, slot: DateTime<Utc>) -> Result<(), RunLogError> {
        self.db()?
            .execute(
                "INSERT INTO schedule_slots (pipeline, slot) VALUES (?1, ?2)
                 ON CONFLICT (pipeline) DO UPDATE SET slot = excluded.slot",
                params![pipeline, timestamp(slot)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records what the scheduler decided for one of its times.
    pub fn record_decision(&self, decision: &Decision) -> Result<(), RunLogError> {
        self.db()?
            .execute(
                "INSERT INTO schedule_decisions (at, pipeline, slot, decision, detail, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    now(),
                    decision.pipeline,
                    decision.slot.map(timestamp),
                    decision.decision,
                    decision.detail,
                    decision.run_id
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The scheduler's decisions, newest first.
    pub fn decisions(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<Decision>, RunLogError> {
        let db = self.db()?;
        let mut stmt = db
            .prepare(
                "SELECT pipeline, slot, decision, detail, run_id, at FROM schedule_decisions
                 WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![pipeline, limit as i64], |r| {
                let slot: Option<String> = r.get(1)?;
                Ok(Decision {
                    pipeline: r.get(0)?,
                    slot: slot.as_deref().and_then(parse_timestamp),
                    decision: r.get(2)?,
                    detail: r.get(3)?,
                    run_id: r.get(4)?,
                    at: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// The newest runs first, optionally of one pipeline.
    pub fn runs(&self, pipeline: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, RunLogError> {
        let db = self.db()?;
        let mut stmt = db
            .prepare(
                "SELECT id, pipeline, trigger, status, started_at, finished_at, error FROM runs
                 WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY started_at DESC, id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let mut runs: Vec<RunRecord> = stmt
            .query_map(params![pipeline, limit as i64], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    pipeline: r.get(1)?,
                    trigger: r.get(2)?,
                    status: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    error: r.get(6)?,
                    tables: Vec::new(),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let mut tables = db
            .prepare(
                "SELECT target, status, rows_read, inserted, updated, deleted, version, cursor, duration_ms, error,
                        withheld
                 FROM run_tables WHERE run_id = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.err(e))?;
        for run in &mut runs {
            run.tables = tables
                .query_map(params![run.id], |r| {
                    Ok(TableRecord {
                        target: r.get(0)?,
                        status: r.get(1)?,
                        rows_read: r.get::<_, i64>(2)? as u64,
                        inserted: r.get::<_, i64>(3)? as u64,
                        updated: r.get::<_, i64>(4)? as u64,
                        deleted: r.get::<_, i64>(5)? as u64,
                        version: r.get(6)?,
                        cursor: r.get(7)?,
                        duration_ms: r.get::<_, i64>(8)? as u64,
                        error: r.get(9)?,
                        withheld: r.get::<_, i64>(10)? as u64,
                    })
                })
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
        }
        Ok(runs)
    }
}

/// The delivery ledger.
impl RunLog {
    /// Claims the messages `(recipient, message id, view)` of `job`'s `slot` (those already in the ledger
    /// keep their row) and answers every row of the slot. Rows left `sending` by a process that
    /// died become `ambiguous` first: the caller holds the job's lock, so nobody else is sending.
    pub fn claim_deliveries(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        trigger: &str,
        messages: &[(String, String, String)],
    ) -> Result<Vec<Delivery>, RunLogError> {
        let mut db = self.db()?;
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        let (slot_text, now) = (timestamp(slot), now());
        for (recipient, message_id, view) in messages {
            tx.execute(
                "INSERT INTO deliveries (job, slot, recipient, message_id, view, trigger, state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) ON CONFLICT DO NOTHING",
                params![job, slot_text, recipient, message_id, view, trigger, DeliveryState::Rendering, now],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.execute(
            "UPDATE deliveries SET state = ?3, updated_at = ?4 WHERE job = ?1 AND slot = ?2 AND state = ?5",
            params![job, slot_text, DeliveryState::Ambiguous, now, DeliveryState::Sending],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(db);
        self.slot_deliveries(job, slot)
    }

    /// Queues one message whose content is `body` (a webhook's event) for `job`.
    pub fn enqueue_delivery(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        id: &str,
        trigger: &str,
        body: &str,
    ) -> Result<(), RunLogError> {
        let now = now();
        self.db()?
            .execute(
                "INSERT INTO deliveries (job, slot, recipient, message_id, view, trigger, state, created_at, updated_at, body)
                 VALUES (?1, ?2, ?3, ?3, '-', ?4, ?5, ?6, ?6, ?7) ON CONFLICT DO NOTHING",
                params![job, timestamp(slot), id, trigger, DeliveryState::Queued, now, body],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The queued messages of jobs named `prefix…` not sent or failed yet (with their bodies),
    /// oldest first.
    pub fn queued_deliveries(&self, prefix: &str) -> Result<Vec<Delivery>, RunLogError> {
        self.select_deliveries(
            "WHERE substr(job, 1, length(?1)) = ?1 AND body IS NOT NULL AND state NOT IN ('sent', 'failed')
             ORDER BY slot, recipient",
            params![prefix],
        )
    }

    /// The messages of `job`'s `slot`.
    pub fn slot_deliveries(&self, job: &str, slot: DateTime<Utc>) -> Result<Vec<Delivery>, RunLogError> {
        self.select_deliveries("WHERE job = ?1 AND slot = ?2 ORDER BY recipient", params![job, timestamp(slot)])
    }

    /// Moves one message to `state`: `sending` counts an attempt; a message sent after it was
    /// found `ambiguous` is marked as a possible repeat.
    pub fn set_delivery(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        recipient: &str,
        state: DeliveryState,
        detail: Option<&str>,
    ) -> Result<(), RunLogError> {
        let changed = self
            .db()?
            .execute(
                "UPDATE deliveries SET
                   attempts = attempts + (?4 = 'sending'),
                   possible_repeat = possible_repeat OR (?4 = 'sending' AND state = 'ambiguous'),
                   state = ?4, detail = ?5, updated_at = ?6
                 WHERE job = ?1 AND slot = ?2 AND recipient = ?3",
                params![job, timestamp(slot), recipient, state, detail, now()],
            )
            .map_err(|e| self.err(e))?;
        if changed == 1 {
            Ok(())
        } else {
            Err(RunLogError::Store {
                path: self.path.clone(),
                reason: format!("no delivery of {job} at {} to the recipient given", timestamp(slot)),
            })
        }
    }

    /// The ledger, newest slot first, optionally of one job.
    pub fn deliveries(&self, job: Option<&str>, limit: usize) -> Result<Vec<Delivery>, RunLogError> {
        self.select_deliveries(
            "WHERE ?1 IS NULL OR job = ?1 ORDER BY slot DESC, recipient LIMIT ?2",
            params![job, limit as i64],
        )
    }

    /// The slots of `job` with a message that was claimed and not finished (a crash came between),
    /// oldest first.
    pub fn unfinished_slots(&self, job: &str) -> Result<Vec<DateTime<Utc>>, RunLogError> {
        // Not final: what `DeliveryState::pending` says.
        let db = self.db()?;
        let mut stmt = db
            .prepare("SELECT DISTINCT slot FROM deliveries WHERE job = ?1 AND state NOT IN (?2, ?3) ORDER BY slot")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![job, DeliveryState::Sent, DeliveryState::Failed], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(rows.iter().filter_map(|slot| parse_timestamp(slot)).collect())
    }

    fn select_deliveries(&self, rest: &str, params: impl rusqlite::Params) -> Result<Vec<Delivery>, RunLogError> {
        let db = self.db()?;
        let mut stmt = db
            .prepare(&format!(
                "SELECT job, slot, recipient, message_id, view, trigger, state, attempts, possible_repeat, detail,
                        created_at, updated_at, body FROM deliveries {rest}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, |r| {
                let slot: String = r.get(1)?;
                Ok(Delivery {
                    job: r.get(0)?,
                    slot: parse_timestamp(&slot).unwrap_or_default(),
                    recipient: r.get(2)?,
                    message_id: r.get(3)?,
                    view: r.get(4)?,
                    trigger: r.get(5)?,
                    state: r.get(6)?,
                    attempts: r.get(7)?,
                    possible_repeat: r.get(8)?,
                    detail: r.get(9)?,
                    created_at: r.get(10)?,
                    updated_at: r.get(11)?,
                    body: r.get(12)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}

/// Alerts' state.
impl RunLog {
    pub fn alert_state(&self, job: &str) -> Result<Option<AlertState>, RunLogError> {
        let row: Option<(bool, String, Option<String>, String)> = self
            .db()?
            .query_row(
                "SELECT firing, since, notified_at, summary FROM alert_states WHERE job = ?1",
                params![job],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.map(|(firing, since, notified_at, summary)| AlertState {
            firing,
            since: parse_timestamp(&since).unwrap_or_default(),
            notified_at: notified_at.as_deref().and_then(parse_timestamp),
            summary,
        }))
    }

    pub fn set_alert_state(&self, job: &str, state: &AlertState) -> Result<(), RunLogError> {
        self.db()?
            .execute(
                "INSERT INTO alert_states (job, firing, since, notified_at, summary) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (job) DO UPDATE SET firing = excluded.firing, since = excluded.since,
                   notified_at = excluded.notified_at, summary = excluded.summary",
                params![job, state.firing, timestamp(state.since), state.notified_at.map(timestamp), state.summary],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

fn now() -> String {
    timestamp(Utc::now())
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An exclusive lock on one pipeline, released when dropped (or when the process dies).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock, or fails at once if another process holds it.
    pub fn acquire(state_dir: &Path, pipeline: &str) -> Result<RunLock, RunLogError> {
        let (file, path) = lock_file(state_dir, pipeline)?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(RunLogError::AlreadyRunning { pipeline: pipeline.into(), path }),
            Err(TryLockError::Error(e)) => Err(RunLogError::Store { path, reason: e.to_string() }),
        }
    }

    /// Takes the lock, waiting for another holder to finish.
    pub async fn wait(state_dir: &Path, name: &str) -> Result<RunLock, RunLogError> {
        let (file, path) = lock_file(state_dir, name)?;
        let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file)).await;
        match locked {
            Ok(Ok(file)) => Ok(RunLock { _file: file }),
            Ok(Err(e)) => Err(RunLogError::Store { path, reason: e.to_string() }),
            Err(e) => Err(RunLogError::Store { path, reason: e.to_string() }),
        }
    }
}

fn lock_file(state_dir: &Path, name: &str) -> Result<(File, std::path::PathBuf), RunLogError> {
    let dir = state_dir.join("locks");
    let path = dir.join(format!("{name}.lock"));
    let store_err = |e: std::io::Error| RunLogError::Store { path: path.clone(), reason: e.to_string() };
    std::fs::create_dir_all(&dir).map_err(store_err)?;
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(store_err)?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_from_before_withheld_is_migrated_once_by_concurrent_openers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = Connection::open(dir.path().join("runs.db")).expect("old log");
        old.execute_batch(
            "CREATE TABLE run_tables (
               run_id TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL,
               rows_read INTEGER NOT NULL DEFAULT 0, inserted INTEGER NOT NULL DEFAULT 0,
               updated INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
               version INTEGER, cursor TEXT, duration_ms INTEGER NOT NULL DEFAULT 0, error TEXT,
               PRIMARY KEY (run_id, target));",
        )
        .expect("old schema");
        drop(old);

        let barrier = std::sync::Barrier::new(4);
        let opened: Vec<Result<RunLog, RunLogError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        RunLog::open(dir.path())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("opener thread")).collect()
        });
        for log in opened {
            let log = log.expect("every opener succeeds");
            let columns: i64 = log
                .db()
                .expect("db")
                .query_row("SELECT count(*) FROM pragma_table_info('run_tables') WHERE name = 'withheld'", [], |r| {
                    r.get(0)
                })
                .expect("columns");
            assert_eq!(columns, 1);
        }
    }

    #[test]
    fn statuses_and_decisions_are_stored_and_read_back_by_name() {
        let conn = Connection::open_in_memory().expect("sqlite");
        for kind in DecisionKind::ALL {
            let name: String = conn.query_row("SELECT ?1", [kind], |r| r.get(0)).expect("stored");
            assert_eq!(name, kind.as_str());
            let back: DecisionKind = conn.query_row("SELECT ?1", [&name], |r| r.get(0)).expect("read back");
            assert_eq!(back, *kind);
        }
        for status in Status::ALL {
            let back: Status = conn.query_row("SELECT ?1", [status], |r| r.get(0)).expect("read back");
            assert_eq!(back, *status);
        }
        assert_eq!(DecisionKind::CaughtUp.to_string(), "caught_up");
        let unknown = conn.query_row("SELECT 'maybe'", [], |r| r.get::<_, DecisionKind>(0)).expect_err("unknown");
        assert!(unknown.to_string().contains("unknown scheduler decision \"maybe\""), "{unknown}");
    }
}
