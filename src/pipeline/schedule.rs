//! The scheduler inside `sokana serve`: each scheduled job (a pipeline, or a report through
//! `report::job`) runs at its cron times in its IANA time zone. Daylight-saving changes follow croner's rules (the Open Cron Pattern Specification):
//! a job at a fixed time that falls in the skipped hour runs when the clock resumes, and one in the
//! repeated hour runs once; interval jobs keep their pace in real time. Runs of one job never
//! overlap (its lock), missed times are handled by the job's `catch_up` policy, slots a process
//! that ended had begun are finished first, failed runs are retried with back-off, and every
//! decision goes to the run log. The clock is a
//! parameter of the decisions, so they are tested without waiting.

use std::sync::Arc;

use chrono::{DateTime, Offset, TimeZone, Timelike, Utc};

use super::PipelineError;
use super::Project;
use super::runlog::{Decision, DecisionKind, RunLog, RunLogError};
use super::spec::{CatchUp, Pipeline, Retry, Schedule};
use crate::progress::Silent;

/// The first time of `schedule` strictly after `after`.
pub fn next_slot(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Cron times are whole seconds; croner would carry the fraction of `after` into its answer.
    let after = after.with_nanosecond(0)?;
    let zone = schedule.timezone;
    let in_zone = schedule.cron.find_next_occurrence(&after.with_timezone(&zone), false).ok()?.with_timezone(&Utc);
    if schedule.cron.determine_job_type() == croner::JobType::FixedTime {
        return Some(in_zone);
    }
    // croner walks wall-clock time, which repeats an hour when clocks go back; an interval job
    // must still run in the second instance of that hour. When the offset changes between `after`
    // and croner's answer, the same search in the new offset finds those times.
    let offset_at = |t: DateTime<Utc>| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
    let new_offset = offset_at(in_zone);
    if offset_at(after) == new_offset {
        return Some(in_zone);
    }
    let in_new_offset =
        schedule.cron.find_next_occurrence(&after.with_timezone(&new_offset), false).ok()?.with_timezone(&Utc);
    Some(if in_new_offset < in_zone && offset_at(in_new_offset) == new_offset { in_new_offset } else { in_zone })
}

/// What to do on start-up about the times missed since `last` (the newest time dealt with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUpPlan {
    /// Nothing was missed (or the pipeline was never scheduled before).
    Nothing,
    /// `missed` times from `first` to `latest` were missed and are not made up (`catch_up = "skip"`).
    Skip { missed: usize, first: DateTime<Utc>, latest: DateTime<Utc> },
    /// Run once now for the newest missed time (`catch_up = "latest"`).
    RunLatest { missed: usize, latest: DateTime<Utc> },
}

/// Counting stops here: a schedule every second, down for a year, need not be walked in full.
const MAX_COUNTED: usize = 10_000;

pub fn plan_catch_up(
    schedule: &Schedule,
    policy: CatchUp,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> CatchUpPlan {
    let Some(last) = last else { return CatchUpPlan::Nothing };
    let (mut missed, mut first, mut latest) = (0, None, None);
    let mut cursor = last;
    while let Some(slot) = next_slot(schedule, cursor).filter(|s| *s <= now) {
        missed += 1;
        first.get_or_insert(slot);
        latest = Some(slot);
        cursor = slot;
        if missed >= MAX_COUNTED {
            // The newest missed time, found from now backwards.
            let local = now.with_timezone(&schedule.timezone);
            latest = schedule.cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc));
            break;
        }
    }
    match (first, latest, policy) {
        (Some(first), Some(latest), CatchUp::Skip) => CatchUpPlan::Skip { missed, first, latest },
        (Some(_), Some(latest), CatchUp::Latest) => CatchUpPlan::RunLatest { missed, latest },
        _ => CatchUpPlan::Nothing,
    }
}

const RESUME_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// What the scheduler runs at a schedule's times: a pipeline ([`PipelineJob`]) or a report
/// (`report::job`). Its slots and decisions are kept in the run log under its name.
#[async_trait::async_trait]
pub trait Job: Send + Sync + 'static {
    /// The name the run log keeps its slots and decisions under (unique across jobs).
    fn name(&self) -> &str;
    fn schedule(&self) -> &Schedule;
    fn catch_up(&self) -> CatchUp;
    fn retry(&self) -> Retry;
    /// Slots a process that ended had begun and not finished, to be finished first.
    fn unfinished(&self, _log: &RunLog) -> Result<Vec<DateTime<Utc>>, RunLogError> {
        Ok(Vec::new())
    }
    /// One attempt at `slot`; `last_attempt` when no retry follows a failure.
    async fn attempt(&self, slot: DateTime<Utc>, last_attempt: bool) -> Result<Done, AttemptError>;
}

/// A successful attempt, as the run log records it.
#[derive(Debug, Default)]
pub struct Done {
    pub run_id: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug)]
pub enum AttemptError {
    /// Another run of the job holds its lock: the slot is skipped.
    Busy(String),
    /// The attempt failed; retried while attempts are left.
    Failed(String),
    /// The attempt failed in a way another would not change (e.g. a recipient refused).
    Final(String),
}

/// A scheduled pipeline of a project.
pub struct PipelineJob {
    project: Project,
    pipeline: Pipeline,
    schedule: Schedule,
}

impl PipelineJob {
    /// The pipelines of `project` that have a schedule.
    pub fn all(project: &Project) -> Vec<std::sync::Arc<dyn Job>> {
        project
            .pipelines()
            .iter()
            .filter_map(|pipeline| {
                let schedule = pipeline.schedule.clone()?;
                Some(Arc::new(PipelineJob { project: project.clone(), pipeline: pipeline.clone(), schedule })
                    as Arc<dyn Job>)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Job for PipelineJob {
    fn name(&self) -> &str {
        &self.pipeline.name
    }
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn catch_up(&self) -> CatchUp {
        self.pipeline.catch_up
    }
    fn retry(&self) -> Retry {
        self.pipeline.retry
    }
    async fn attempt(&self, _slot: DateTime<Utc>, _last_attempt: bool) -> Result<Done, AttemptError> {
        let silent = Arc::new(Silent) as Arc<dyn crate::progress::Progress>;
        match super::run(&self.project, &self.pipeline, "schedule", &silent).await {
            Ok(summary) => Ok(Done { run_id: Some(summary.run_id), detail: None }),
            Err(PipelineError::RunLog(RunLogError::AlreadyRunning { .. })) => {
                Err(AttemptError::Busy("another run of this pipeline is in progress".into()))
            }
            Err(e) => Err(AttemptError::Failed(e.to_string())),
        }
    }
}

/// Starts one task per job; they run until the process ends.
pub fn start(state_dir: &std::path::Path, jobs: Vec<Arc<dyn Job>>) -> Vec<tokio::task::JoinHandle<()>> {
    jobs.into_iter()
        .map(|job| {
            let state_dir = state_dir.to_path_buf();
            tokio::spawn(async move {
                // An error of the run log (e.g. the disk is full) pauses this job's schedule; on
                // resuming, the times missed meanwhile follow the catch-up policy.
                while let Err(e) = schedule_loop(&state_dir, job.as_ref()).await {
                    tracing::error!(job = %job.name(), error = %e, "scheduler error; resuming in {}s", RESUME_AFTER.as_secs());
                    tokio::time::sleep(RESUME_AFTER).await;
                }
            })
        })
        .collect()
}

async fn schedule_loop(state_dir: &std::path::Path, job: &dyn Job) -> Result<(), RunLogError> {
    let (schedule, name) = (job.schedule(), job.name());
    let log = RunLog::open(state_dir)?;
    let decide = |slot: Option<DateTime<Utc>>, decision: DecisionKind, detail: Option<String>| {
        record(&log, name, slot, decision, detail, None)
    };
    for slot in job.unfinished(&log)? {
        decide(Some(slot), DecisionKind::Resumed, Some("begun by a process that ended; finishing it".into()))?;
        fire(job, slot, &log).await?;
    }
    let now = Utc::now();
    let mut last = now;
    match plan_catch_up(schedule, job.catch_up(), log.schedule_slot(name)?, now) {
        CatchUpPlan::Nothing => log.set_schedule_slot(name, now)?,
        CatchUpPlan::Skip { missed, first, latest } => {
            decide(
                Some(latest),
                DecisionKind::Skipped,
                Some(format!(
                    "{missed} run(s) missed while the server was down ({first} to {latest}); catch_up = skip"
                )),
            )?;
            log.set_schedule_slot(name, now)?;
        }
        CatchUpPlan::RunLatest { missed, latest } => {
            decide(
                Some(latest),
                DecisionKind::CaughtUp,
                Some(format!("{missed} run(s) missed while the server was down; running once now (catch_up = latest)")),
            )?;
            fire(job, latest, &log).await?;
            last = Utc::now().max(latest);
        }
    }
    loop {
        let Some(slot) = next_slot(schedule, last) else {
            tracing::warn!(job = %name, "the schedule has no further times");
            return Ok(());
        };
        let wait = (slot - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        fire(job, slot, &log).await?;
        // Times that passed while the run went on are not run late: runs never overlap.
        last = Utc::now().max(slot);
        if let Some(skipped) = next_slot(schedule, slot).filter(|next| *next < last) {
            decide(Some(skipped), DecisionKind::Skipped, Some("the previous run was still going".into()))?;
        }
    }
}

/// Records one decision of the scheduler in the run log.
fn record(
    log: &RunLog,
    job: &str,
    slot: Option<DateTime<Utc>>,
    decision: DecisionKind,
    detail: Option<String>,
    run_id: Option<String>,
) -> Result<(), RunLogError> {
    log.record_decision(&Decision { pipeline: job.to_string(), slot, decision, detail, run_id, at: String::new() })
}

/// Runs `job` for `slot`, retrying failures with back-off, and records each decision.
async fn fire(job: &dyn Job, slot: DateTime<Utc>, log: &RunLog) -> Result<(), RunLogError> {
    let decide = |decision: DecisionKind, detail: Option<String>, run_id: Option<String>| {
        record(log, job.name(), Some(slot), decision, detail, run_id)
    };
    // Marked as dealt with before running: a crash mid-run is not re-run as a missed time (the
    // interrupted run shows in the run log, and the next run completes the work).
    log.set_schedule_slot(job.name(), slot)?;
    let retry = job.retry();
    let mut delay = retry.delay;
    for attempt in 0..=retry.attempts {
        decide(DecisionKind::Fired, (attempt > 0).then(|| format!("attempt {}", attempt + 1)), None)?;
        match job.attempt(slot, attempt == retry.attempts).await {
            Ok(done) => {
                decide(DecisionKind::Succeeded, done.detail, done.run_id)?;
                return Ok(());
            }
            Err(AttemptError::Busy(why)) => {
                decide(DecisionKind::Skipped, Some(why), None)?;
                return Ok(());
            }
            Err(AttemptError::Failed(e)) if attempt < retry.attempts => {
                decide(DecisionKind::Retrying, Some(format!("{e}; next attempt in {}s", delay.as_secs())), None)?;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(AttemptError::Failed(e) | AttemptError::Final(e)) => {
                decide(DecisionKind::Failed, Some(format!("gave up after {} attempt(s): {e}", attempt + 1)), None)?;
                tracing::error!(job = %job.name(), error = %e, "scheduled run failed; giving up until the next time");
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, zone: &str) -> Schedule {
        Schedule { cron: cron.parse().expect("cron"), timezone: zone.parse().expect("zone") }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().expect("valid time")
    }

    #[test]
    fn daily_times_follow_new_york_across_both_changes() {
        let s = schedule("0 2 * * *", "America/New_York");
        // 02:00 EST is 07:00 UTC; 02:00 EDT is 06:00 UTC.
        assert_eq!(next_slot(&s, utc(2026, 3, 6, 12, 0)), Some(utc(2026, 3, 7, 7, 0)));
        let with_fraction = utc(2026, 3, 6, 12, 0) + chrono::Duration::milliseconds(250);
        assert_eq!(next_slot(&s, with_fraction), Some(utc(2026, 3, 7, 7, 0)), "whole seconds");
        // 2026-03-08: 02:00 does not exist (02:00 → 03:00); the job runs when the clock resumes, 03:00 EDT.
        assert_eq!(next_slot(&s, utc(2026, 3, 7, 12, 0)), Some(utc(2026, 3, 8, 7, 0)));
        assert_eq!(next_slot(&s, utc(2026, 3, 8, 12, 0)), Some(utc(2026, 3, 9, 6, 0)));
        // 2026-11-01: 01:00–02:00 happens twice; a 01:30 job runs once, at the first 01:30 (EDT).
        let s = schedule("30 1 * * *", "America/New_York");
        assert_eq!(next_slot(&s, utc(2026, 10, 31, 12, 0)), Some(utc(2026, 11, 1, 5, 30)));
        assert_eq!(next_slot(&s, utc(2026, 11, 1, 5, 30)), Some(utc(2026, 11, 2, 6, 30)));
    }

    #[test]
    fn interval_jobs_keep_real_time_pace_through_the_repeated_hour() {
        let s = schedule("0 * * * *", "America/New_York");
        let mut at = utc(2026, 11, 1, 4, 30);
        let mut fired = Vec::new();
        for _ in 0..4 {
            at = next_slot(&s, at).expect("next");
            fired.push(at);
        }
        // 01:00 EDT, 01:00 EST, 02:00 EST, 03:00 EST: one run per real hour.
        assert_eq!(
            fired,
            [utc(2026, 11, 1, 5, 0), utc(2026, 11, 1, 6, 0), utc(2026, 11, 1, 7, 0), utc(2026, 11, 1, 8, 0)]
        );
        // In spring the hour 02:00–03:00 does not exist: 01:00 EST is followed by 03:00 EDT, an hour later.
        assert_eq!(next_slot(&s, utc(2026, 3, 8, 6, 0)), Some(utc(2026, 3, 8, 7, 0)));
        assert_eq!(next_slot(&s, utc(2026, 3, 8, 7, 0)), Some(utc(2026, 3, 8, 8, 0)));
    }

    #[test]
    fn missed_runs_follow_the_policy() {
        let s = schedule("0 2 * * *", "America/New_York");
        let last = utc(2026, 6, 1, 6, 0);
        let now = utc(2026, 6, 4, 12, 0);
        assert_eq!(
            plan_catch_up(&s, CatchUp::Skip, Some(last), now),
            CatchUpPlan::Skip { missed: 3, first: utc(2026, 6, 2, 6, 0), latest: utc(2026, 6, 4, 6, 0) }
        );
        assert_eq!(
            plan_catch_up(&s, CatchUp::Latest, Some(last), now),
            CatchUpPlan::RunLatest { missed: 3, latest: utc(2026, 6, 4, 6, 0) }
        );
        assert_eq!(plan_catch_up(&s, CatchUp::Latest, Some(utc(2026, 6, 4, 6, 0)), now), CatchUpPlan::Nothing);
        assert_eq!(plan_catch_up(&s, CatchUp::Latest, None, now), CatchUpPlan::Nothing);
        let every_second = schedule("* * * * * *", "UTC");
        let plan = plan_catch_up(&every_second, CatchUp::Latest, Some(utc(2025, 1, 1, 0, 0)), now);
        assert_eq!(plan, CatchUpPlan::RunLatest { missed: MAX_COUNTED, latest: now });
    }
}
