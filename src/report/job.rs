//! Reports on the scheduler: each report is a [`Job`] of the one scheduler that runs pipelines (one
//! run log of decisions for both), delivered slot by slot through [`super::deliver`]; and the same
//! delivery on request, for `sokana report run --send` and the API. Holds what a delivery needs
//! (the serving engine, the users, the catalogs, the mailer) and nothing of how it is done.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use lettre::Address;

use super::alert::{self, Notice, NoticeKind, Verdict};
use super::deliver::{self, Audience, DeliverError, Outbox, Outcome, Slot};
use super::email::Mailer;
use crate::auth::Auth;
use crate::dashboard::{self, Sources};
use crate::pipeline::runlog::{DeliveryState, RunLock, RunLog, RunLogError};
use crate::pipeline::schedule::{AttemptError, Done, Job};
use crate::pipeline::spec::{CatchUp, Retry, Schedule};
use crate::query::engine::{Caller, QueryEngine};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Report(#[from] super::ReportError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error(transparent)]
    Ledger(#[from] RunLogError),
    #[error("reports cannot be sent: the configuration has no [smtp] section")]
    NoMail,
    #[error(transparent)]
    Mail(#[from] super::email::MailError),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::WebhookError),
}

/// What making and sending reports needs, shared by every report's job.
pub struct Reporting {
    pub engine: Arc<QueryEngine>,
    pub auth: Arc<Auth>,
    pub metrics: Arc<crate::metrics::Catalog>,
    pub dashboards: Arc<dashboard::Catalog>,
    pub queries_dir: PathBuf,
    pub state_dir: PathBuf,
    pub public_url: String,
    /// None without `[smtp]`: reports are then made on request but never sent.
    pub mailer: Option<Arc<Mailer>>,
    /// Where alerts are announced besides email.
    pub webhooks: Arc<crate::webhook::Webhooks>,
    /// The run log: delivery ledger, alert states, decisions (opened once).
    log: RunLog,
}

impl Reporting {
    /// For a project's configuration (`[smtp]`, `server.public_url`, the state directory).
    pub fn new(
        config: &crate::config::Config,
        engine: Arc<QueryEngine>,
        auth: Arc<Auth>,
        metrics: Arc<crate::metrics::Catalog>,
        dashboards: Arc<dashboard::Catalog>,
    ) -> Result<Reporting, SendError> {
        let mailer = config.smtp.as_ref().map(Mailer::new).transpose()?.map(Arc::new);
        let webhooks = Arc::new(crate::webhook::Webhooks::new(config)?);
        Ok(Reporting {
            engine,
            auth,
            metrics,
            dashboards,
            queries_dir: config.queries_dir(),
            state_dir: config.state_dir(),
            public_url: config.server.public_url(),
            mailer,
            webhooks,
            log: RunLog::open(&config.state_dir())?,
        })
    }

    /// What is stale for report `report` of `dashboard` made on `day` (see [`super::freshness_warning`]).
    pub fn freshness_warning(
        &self,
        dashboard: &dashboard::Dashboard,
        report: &super::Report,
        day: NaiveDate,
    ) -> Result<Option<String>, RunLogError> {
        super::freshness_warning(&self.log, report, super::data_due(dashboard, report, day))
    }

    /// Waits, up to the report's `freshness.wait_minutes` after `slot`, until its data is fresh;
    /// a decision in the run log says that it waits and for what.
    async fn wait_for_freshness(&self, name: &str, job: &str, slot: DateTime<Utc>) -> Result<(), SendError> {
        let (dashboard, report) = super::find(&self.dashboards, name)?;
        let Some(rule) = &report.spec.freshness else { return Ok(()) };
        let deadline = slot + chrono::Duration::minutes(i64::from(rule.wait_minutes));
        let day = deliver::slot_day(report, slot);
        let mut said = false;
        while let Some(warning) = self.freshness_warning(dashboard, report, day)? {
            let now = Utc::now();
            if now >= deadline {
                break;
            }
            if !said {
                self.log.record_decision(&crate::pipeline::runlog::Decision {
                    pipeline: job.to_string(),
                    slot: Some(slot),
                    decision: crate::pipeline::runlog::DecisionKind::Waiting,
                    detail: Some(format!("{warning} Waiting until {deadline} at most.")),
                    run_id: None,
                    at: String::new(),
                })?;
                said = true;
            }
            let pause = (deadline - now).to_std().unwrap_or_default().min(FRESHNESS_POLL);
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    /// The sources a report's panels read.
    pub fn sources(&self) -> Sources<'_> {
        Sources { engine: &self.engine, views: &self.metrics, queries_dir: &self.queries_dir }
    }

    /// One job per report, when mail can be sent (a warning per report otherwise).
    pub fn jobs(self: &Arc<Self>) -> Vec<Arc<dyn Job>> {
        let reports = super::all(&self.dashboards);
        if self.mailer.is_none() {
            for (_, report) in reports {
                tracing::warn!(report = %report.spec.name, "not scheduled: the configuration has no [smtp] section");
            }
            return Vec::new();
        }
        reports
            .map(|(_, report)| {
                Arc::new(ReportJob {
                    reporting: self.clone(),
                    report: report.spec.name.clone(),
                    job: deliver::job_name(report),
                    schedule: report.schedule.clone(),
                    catch_up: report.spec.catch_up,
                    cool_down: chrono::Duration::minutes(
                        report.spec.alert.as_ref().map_or(0, |a| i64::from(a.cool_down_minutes)),
                    ),
                }) as Arc<dyn Job>
            })
            .collect()
    }

    /// Delivers one slot of a report under its job's lock (one attempt).
    async fn deliver(&self, asked: Asked<'_>) -> Result<Outcome, SendError> {
        let Asked { name, slot, trigger, audience, day, last_attempt, notice } = asked;
        let mailer = self.mailer.as_deref().ok_or(SendError::NoMail)?;
        let (dashboard, report) = super::find(&self.dashboards, name)?;
        let _lock = RunLock::wait(&self.state_dir, &deliver::job_name(report)).await?;
        let outbox =
            Outbox { sources: self.sources(), auth: &self.auth, log: &self.log, mailer, public_url: &self.public_url };
        let slot = Slot { dashboard, report, slot, trigger, audience, day, last_attempt, notice };
        Ok(deliver::deliver(&outbox, &slot).await?)
    }

    /// Sends report `name` now, to `to` when given (as the report's role) or to its recipients:
    /// one attempt, whose failures are final and reported.
    pub async fn send_now(
        &self,
        name: &str,
        trigger: &str,
        to: &[Address],
        day: Option<NaiveDate>,
    ) -> Result<Outcome, SendError> {
        let audience = if to.is_empty() { Audience::Recipients } else { Audience::Addresses(to) };
        let now = Utc::now();
        // An alert sent on request says what its condition finds now, and changes nothing of its state.
        let notice = self.evaluate_alert(name, day.unwrap_or_else(|| self.today(name, now))).await?.map(|verdict| {
            let kind = if verdict.firing { NoticeKind::Firing } else { NoticeKind::Clear };
            Notice { kind, verdict }
        });
        let asked = Asked { name, slot: now, trigger, audience, day, last_attempt: true, notice: notice.as_ref() };
        self.deliver(asked).await
    }

    /// The day `now` is in report `name`'s time zone.
    fn today(&self, name: &str, now: DateTime<Utc>) -> NaiveDate {
        super::find(&self.dashboards, name)
            .map_or_else(|_| now.date_naive(), |(_, report)| deliver::slot_day(report, now))
    }

    /// What report `name`'s alert condition finds for `day`, as the report's role; None when it
    /// is no alert.
    pub async fn evaluate_alert(&self, name: &str, day: NaiveDate) -> Result<Option<Verdict>, SendError> {
        let (dashboard, report) = super::find(&self.dashboards, name)?;
        let caller = Caller {
            user: deliver::job_name(report),
            scope: report.role.name().into(),
            origin: "report",
            ..Caller::cli()
        };
        Ok(alert::evaluate(&self.sources(), dashboard, report, day, &caller).await?)
    }

    /// The delivery ledger, newest first, of one report or all.
    pub fn deliveries(
        &self,
        name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::pipeline::runlog::Delivery>, SendError> {
        let job = match name {
            Some(name) => Some(deliver::job_name(super::find(&self.dashboards, name)?.1)),
            None => None,
        };
        let mut rows = self.log.deliveries(job.as_deref(), limit)?;
        if job.is_none() {
            rows.retain(|d| d.job.starts_with("report:"));
        }
        Ok(rows)
    }
}

/// One slot of report `name` to deliver (see [`Slot`]).
struct Asked<'a> {
    name: &'a str,
    slot: DateTime<Utc>,
    trigger: &'a str,
    audience: Audience<'a>,
    day: Option<NaiveDate>,
    last_attempt: bool,
    notice: Option<&'a Notice>,
}

/// How often a slot that waits for fresh data looks at the run log again.
const FRESHNESS_POLL: std::time::Duration = std::time::Duration::from_secs(15);

/// One report on the scheduler.
struct ReportJob {
    reporting: Arc<Reporting>,
    report: String,
    job: String,
    schedule: Schedule,
    catch_up: CatchUp,
    /// An alert's cool-down (zero for a report).
    cool_down: chrono::Duration,
}

#[async_trait::async_trait]
impl Job for ReportJob {
    fn name(&self) -> &str {
        &self.job
    }
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn catch_up(&self) -> CatchUp {
        self.catch_up
    }
    fn retry(&self) -> Retry {
        self.reporting.mailer.as_ref().map_or(Retry { attempts: 0, delay: std::time::Duration::ZERO }, |m| m.retry())
    }
    fn unfinished(&self, log: &RunLog) -> Result<Vec<DateTime<Utc>>, RunLogError> {
        log.unfinished_slots(&self.job)
    }
    async fn attempt(&self, slot: DateTime<Utc>, last_attempt: bool) -> Result<Done, AttemptError> {
        // A slot already claimed (begun before a crash, or retried) goes to those the ledger holds;
        // a new one to the report's recipients as they are now.
        self.reporting
            .wait_for_freshness(&self.report, &self.job, slot)
            .await
            .map_err(|e| AttemptError::Failed(e.to_string()))?;
        let log = &self.reporting.log;
        let begun = log.slot_deliveries(&self.job, slot).map_err(|e| AttemptError::Failed(e.to_string()))?;
        let audience = if begun.is_empty() { Audience::Recipients } else { Audience::Ledger };
        let failed = |e: &dyn std::fmt::Display| AttemptError::Failed(e.to_string());
        // An alert sends only what its condition and state call for.
        let mut after = None;
        let verdict = self
            .reporting
            .evaluate_alert(&self.report, slot.with_timezone(&self.schedule.timezone).date_naive())
            .await
            .map_err(|e| failed(&e))?;
        let notice = match verdict {
            None => None,
            Some(verdict) => {
                let state = log.alert_state(&self.job).map_err(|e| failed(&e))?;
                let (kind, state) = alert::decide(&verdict, state.as_ref(), self.cool_down, Utc::now());
                let kind = match (kind, begun.is_empty()) {
                    (Some(kind), _) => kind,
                    (None, true) => {
                        log.set_alert_state(&self.job, &state).map_err(|e| failed(&e))?;
                        let how = if verdict.firing { "firing, within its cool-down" } else { "quiet" };
                        return Ok(Done { run_id: None, detail: Some(format!("{how}: {}", verdict.summary)) });
                    }
                    // A slot begun before a crash is finished with what holds now.
                    (None, false) if verdict.firing => NoticeKind::Firing,
                    (None, false) => NoticeKind::Clear,
                };
                after = Some(state);
                if kind != NoticeKind::Clear {
                    self.announce(kind, &verdict, slot).map_err(|e| failed(&e))?;
                }
                Some(Notice { kind, verdict })
            }
        };
        let outcome = self
            .reporting
            .deliver(Asked {
                name: &self.report,
                slot,
                trigger: "schedule",
                audience,
                day: None,
                last_attempt,
                notice: notice.as_ref(),
            })
            .await
            .map_err(|e| failed(&e))?;
        if let Some(reason) = outcome.retry {
            return Err(AttemptError::Failed(reason));
        }
        if let Some(state) = after {
            log.set_alert_state(&self.job, &state).map_err(|e| failed(&e))?;
        }
        let summary = summary(&outcome.deliveries);
        if let Some(failed) = outcome.deliveries.iter().find(|d| d.state == DeliveryState::Failed) {
            return Err(AttemptError::Final(format!(
                "{summary} ({})",
                failed.detail.as_deref().unwrap_or("no detail")
            )));
        }
        Ok(Done { run_id: None, detail: Some(summary) })
    }
}

impl ReportJob {
    /// Queues the alert's webhook event; the server's sender posts it.
    fn announce(&self, kind: NoticeKind, verdict: &Verdict, slot: DateTime<Utc>) -> Result<(), RunLogError> {
        let event = if kind == NoticeKind::Firing { "alert.firing" } else { "alert.resolved" };
        let data = serde_json::json!({
            "report": self.report, "slot": slot, "summary": verdict.summary, "rows": verdict.rows,
        });
        self.reporting.webhooks.enqueue(event, "schedule", data)
    }
}

/// `3 sent, 1 failed` over a slot's messages.
pub fn summary(deliveries: &[crate::pipeline::runlog::Delivery]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for d in deliveries {
        *counts.entry(d.state.as_str()).or_default() += 1;
    }
    counts.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
}
