//! The scheduler: `sokana serve` runs a scheduled pipeline on time, run after run, never two at
//! once, and records every decision; missed times follow the pipeline's catch-up policy; failed
//! runs are retried and then reported. (DST rules are unit tests in `pipeline::schedule`.)

mod common;

use common::JsonResponse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Project, seed};
use sokana::config::Config;
use sokana::pipeline::runlog::{Decision, RunLog, RunRecord};
use sokana::pipeline::schedule;

/// The shipped pipeline with its schedule, policy and retries replaced.
fn pipeline_with(schedule: &str, catch_up: &str, extra: &str) -> String {
    sokana::SOKANA_CORE_PIPELINE
        .replace("schedule = \"0 2 * * *\"", &format!("schedule = {schedule:?}\n{extra}"))
        .replace("catch_up = \"latest\"", &format!("catch_up = {catch_up:?}"))
}

async fn seeded(pipeline: &str) -> Project {
    let project = Project::with_pipeline("sqlite://operational.db", pipeline);
    seed("sqlite://operational.db", project.dir.path(), 0.02).await;
    project
}

/// Waits (up to `limit`) until `done` holds for the decisions and runs of the source's pipeline.
/// (The built-in audit pipeline has its own schedule, every quarter hour, and may fire during a
/// test; these tests are about the pipeline whose schedule they set.)
fn wait_for(
    config: &Config,
    limit: Duration,
    what: &str,
    done: impl Fn(&[Decision], &[RunRecord]) -> bool,
) -> (Vec<Decision>, Vec<RunRecord>) {
    let started = Instant::now();
    loop {
        let log = RunLog::open(&config.state_dir()).expect("run log");
        let decisions = log.decisions(Some("sokana_core"), 100).expect("decisions");
        let runs = log.runs(Some("sokana_core"), 100).expect("runs");
        if done(&decisions, &runs) {
            return (decisions, runs);
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}; decisions so far: {decisions:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("timestamp").with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_a_scheduled_pipeline_on_time_without_overlap() {
    let project = seeded(&pipeline_with("*/3 * * * * *", "skip", "")).await;
    let mut serve = project.cli();
    serve.arg("serve").env("SOKANA_SERVER__LISTEN", "127.0.0.1:0").env("SOKANA_SERVER__PGWIRE", "127.0.0.1:0");
    let server = common::serve_command(serve);
    let config = project.config();

    let (decisions, runs) = wait_for(&config, Duration::from_secs(60), "two scheduled runs", |_, runs| {
        runs.iter().filter(|r| r.trigger == "schedule" && r.status == "succeeded").count() >= 2
    });
    let mut fired: Vec<&Decision> = decisions.iter().filter(|d| d.decision == "fired").collect();
    fired.reverse();
    let mut scheduled: Vec<&RunRecord> = runs.iter().filter(|r| r.trigger == "schedule").collect();
    scheduled.reverse();
    for (decision, run) in fired.iter().zip(&scheduled) {
        let slot = decision.slot.expect("a fired decision names its time");
        assert_eq!(slot.timestamp() % 3, 0, "fires on the schedule's times");
        let late = time(&run.started_at) - slot;
        assert!(late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(1500), "late by {late}");
    }
    for pair in scheduled.windows(2) {
        let finished = time(pair[0].finished_at.as_deref().expect("the first run finished"));
        assert!(time(&pair[1].started_at) >= finished, "runs overlap: {pair:#?}");
    }

    // The API shows the pipeline and its runs, and starts one on request, for a manager's key.
    let auth = sokana::auth::Auth::open(&config).await.expect("auth");
    auth.add_user("ops", sokana::auth::Role::Manager, "schedule-test-password").await.expect("user");
    let key = auth.create_api_key("schedule test", sokana::auth::Role::Manager, 1, "ops").await.expect("key").key;
    let base = format!("http://127.0.0.1:{}/api/v1/pipelines", server.http);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("header"));
    let client = reqwest::Client::builder().default_headers(headers).build().expect("client");
    let list: serde_json::Value = client.get(&base).send().await.expect("list").json().await.expect("json");
    assert_eq!(list["pipelines"][0]["name"], "sokana_core");
    assert!(list["pipelines"][0]["next_run"].is_string(), "{list}");
    let runs: serde_json::Value =
        client.get(format!("{base}/sokana_core/runs")).send().await.expect("runs").json().await.expect("json");
    assert!(runs["runs"].as_array().is_some_and(|r| r.len() >= 2), "{runs}");
    let missing = client.get(format!("{base}/nope/runs")).send().await.expect("missing");
    assert_eq!(missing.status(), 404);
    let mut started = client.post(format!("{base}/sokana_core/runs")).send().await.expect("start");
    // The scheduler may hold the lock at this moment; then the API says so, and a retry succeeds.
    while started.status() == 409 {
        started = client.post(format!("{base}/sokana_core/runs")).send().await.expect("start");
    }
    assert_eq!(started.status(), 202);
    wait_for(&config, Duration::from_secs(60), "the run started through the API", |_, runs| {
        runs.iter().any(|r| r.trigger == "api" && r.status == "succeeded")
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn missed_runs_follow_the_catch_up_policy() {
    for (policy, expected) in [("latest", "caught_up"), ("skip", "skipped")] {
        let project = seeded(&pipeline_with("0 2 * * *", policy, "")).await;
        let config = Arc::new(project.config());
        let three_days_ago = Utc::now() - chrono::Duration::days(3);
        RunLog::open(&config.state_dir()).expect("log").set_schedule_slot("sokana_core", three_days_ago).expect("slot");

        let tasks =
            schedule::start(&project.opened().config().state_dir(), schedule::PipelineJob::all(&project.opened()));
        let (decisions, _) = wait_for(&config, Duration::from_secs(60), expected, |d, _| {
            d.iter().any(|d| d.decision == expected)
                && (policy == "skip" || d.iter().any(|d| d.decision == "succeeded"))
        });
        let decision = decisions.iter().find(|d| d.decision == expected).expect("decision");
        assert!(decision.detail.as_deref().is_some_and(|d| d.starts_with("3 run(s) missed")), "{decision:?}");
        let runs = RunLog::open(&config.state_dir()).expect("log").runs(Some("sokana_core"), 10).expect("runs");
        assert_eq!(runs.len(), usize::from(policy == "latest"), "{policy}: runs {runs:#?}");
        for task in tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_scheduled_runs_are_retried_then_reported() {
    let project = seeded(&pipeline_with("0 2 * * *", "latest", "retries = 2\nretry_delay_seconds = 0")).await;
    std::fs::remove_file(project.sqlite_path()).expect("take the source away");
    let config = Arc::new(project.config());
    RunLog::open(&config.state_dir())
        .expect("log")
        .set_schedule_slot("sokana_core", Utc::now() - chrono::Duration::days(1))
        .expect("slot");
    let tasks = schedule::start(&project.opened().config().state_dir(), schedule::PipelineJob::all(&project.opened()));
    let (decisions, runs) =
        wait_for(&config, Duration::from_secs(60), "giving up", |d, _| d.iter().any(|d| d.decision == "failed"));
    let kinds: Vec<&str> = decisions.iter().rev().map(|d| d.decision.as_str()).collect();
    assert_eq!(kinds, ["caught_up", "fired", "retrying", "fired", "retrying", "fired", "failed"]);
    assert!(decisions[0].detail.as_deref().is_some_and(|d| d.contains("gave up after 3 attempt(s)")), "{decisions:?}");
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.status == "failed"));
    for task in tasks {
        task.abort();
    }
}
