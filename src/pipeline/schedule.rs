//! The scheduler inside `sokana serve`: each scheduled pipeline runs at its cron times in its IANA
//! time zone. Daylight-saving changes follow croner's rules (the Open Cron Pattern Specification):
//! a job at a fixed time that falls in the skipped hour runs when the clock resumes, and one in the
//! repeated hour runs once; interval jobs keep their pace in real time. Runs of one pipeline never
//! overlap (the pipeline lock), missed times are handled by the pipeline's `catch_up` policy, failed
//! runs are retried with back-off, and every decision goes to the run log. The clock is a
//! parameter of the decisions, so they are tested without waiting.

use std::sync::Arc;

use chrono::{DateTime, Offset, TimeZone, Timelike, Utc};

use super::Project;
use super::runlog::{Decision, DecisionKind, RunLog, RunLogError};
use super::spec::{CatchUp, Pipeline, Schedule};
use super::{PipelineError, RunSummary};
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

/// Starts one task per scheduled pipeline of `project`; they run until the process ends.
pub fn start(project: &Project) -> Vec<tokio::task::JoinHandle<()>> {
    project
        .pipelines()
        .iter()
        .filter(|p| p.schedule.is_some())
        .map(|pipeline| {
            let (project, pipeline) = (project.clone(), pipeline.clone());
            tokio::spawn(async move {
                // An error of the run log (e.g. the disk is full) pauses this pipeline's schedule;
                // on resuming, the times missed meanwhile follow the catch-up policy.
                while let Err(e) = schedule_loop(&project, &pipeline).await {
                    tracing::error!(pipeline = %pipeline.name, error = %e, "scheduler error; resuming in {}s", RESUME_AFTER.as_secs());
                    tokio::time::sleep(RESUME_AFTER).await;
                }
            })
        })
        .collect()
}

async fn schedule_loop(project: &Project, pipeline: &Pipeline) -> Result<(), RunLogError> {
    let Some(schedule) = &pipeline.schedule else { return Ok(()) };
    let log = RunLog::open(&project.config().state_dir())?;
    let decide =
        |slot: Option<DateTime<Utc>>, decision: DecisionKind, detail: Option<String>, run_id: Option<String>| {
            record(&log, &pipeline.name, slot, decision, detail, run_id)
        };
    let now = Utc::now();
    let mut last = now;
    match plan_catch_up(schedule, pipeline.catch_up, log.schedule_slot(&pipeline.name)?, now) {
        CatchUpPlan::Nothing => log.set_schedule_slot(&pipeline.name, now)?,
        CatchUpPlan::Skip { missed, first, latest } => {
            decide(
                Some(latest),
                DecisionKind::Skipped,
                Some(format!(
                    "{missed} run(s) missed while the server was down ({first} to {latest}); catch_up = skip"
                )),
                None,
            )?;
            log.set_schedule_slot(&pipeline.name, now)?;
        }
        CatchUpPlan::RunLatest { missed, latest } => {
            decide(
                Some(latest),
                DecisionKind::CaughtUp,
                Some(format!("{missed} run(s) missed while the server was down; running once now (catch_up = latest)")),
                None,
            )?;
            fire(project, pipeline, latest, &log).await?;
            last = Utc::now().max(latest);
        }
    }
    loop {
        let Some(slot) = next_slot(schedule, last) else {
            tracing::warn!(pipeline = %pipeline.name, "the schedule has no further times");
            return Ok(());
        };
        let wait = (slot - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        fire(project, pipeline, slot, &log).await?;
        // Times that passed while the run went on are not run late: runs never overlap.
        last = Utc::now().max(slot);
        if let Some(skipped) = next_slot(schedule, slot).filter(|next| *next < last) {
            decide(Some(skipped), DecisionKind::Skipped, Some("the previous run was still going".into()), None)?;
        }
    }
}

/// Records one decision of the scheduler in the run log.
fn record(
    log: &RunLog,
    pipeline: &str,
    slot: Option<DateTime<Utc>>,
    decision: DecisionKind,
    detail: Option<String>,
    run_id: Option<String>,
) -> Result<(), RunLogError> {
    log.record_decision(&Decision { pipeline: pipeline.to_string(), slot, decision, detail, run_id, at: String::new() })
}

/// Runs the pipeline for `slot`, retrying failures with back-off, and records each decision.
async fn fire(project: &Project, pipeline: &Pipeline, slot: DateTime<Utc>, log: &RunLog) -> Result<(), RunLogError> {
    let decide = |decision: DecisionKind, detail: Option<String>, run_id: Option<String>| {
        record(log, &pipeline.name, Some(slot), decision, detail, run_id)
    };
    // Marked as dealt with before running: a crash mid-run is not re-run as a missed time (the
    // interrupted run shows in the run log, and the next run completes the work).
    log.set_schedule_slot(&pipeline.name, slot)?;
    let mut delay = pipeline.retry.delay;
    for attempt in 0..=pipeline.retry.attempts {
        decide(DecisionKind::Fired, (attempt > 0).then(|| format!("attempt {}", attempt + 1)), None)?;
        let outcome: Result<RunSummary, PipelineError> =
            super::run(project, pipeline, "schedule", &(Arc::new(Silent) as Arc<dyn crate::progress::Progress>)).await;
        match outcome {
            Ok(summary) => {
                decide(DecisionKind::Succeeded, None, Some(summary.run_id))?;
                return Ok(());
            }
            Err(PipelineError::RunLog(RunLogError::AlreadyRunning { .. })) => {
                decide(DecisionKind::Skipped, Some("another run of this pipeline is in progress".into()), None)?;
                return Ok(());
            }
            Err(e) if attempt < pipeline.retry.attempts => {
                decide(DecisionKind::Retrying, Some(format!("{e}; next attempt in {}s", delay.as_secs())), None)?;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                decide(DecisionKind::Failed, Some(format!("gave up after {} attempt(s): {e}", attempt + 1)), None)?;
                tracing::error!(pipeline = %pipeline.name, error = %e, "scheduled run failed; giving up until the next time");
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
