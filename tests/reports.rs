//! Reports made from the command line: the Executive overview's weekly PDF holds the numbers the
//! metrics API answers for the same week (read back from the PDF with poppler's `pdftotext`),
//! with its period, page numbers and charts; the monthly billing report's CSV files equal the
//! dashboard's own CSV of the same panels, as the billing role sees them; an unknown report is
//! named with the ones there are. Sent by email to a real SMTP server (aiosmtpd): the message
//! carries the same numbers and its PDF; a refused recipient fails alone and the administrators
//! are told; a report that cannot be made is not sent empty; a kill between making and sending,
//! or after the server accepted, still delivers each message once (the second with the same
//! Message-ID, marked in the ledger).

mod common;

use chrono::{Datelike, Duration};
use common::{JsonRequest, JsonResponse, Project};
use sokana::chart::Format;

async fn project() -> Project {
    common::sokana_project_with_dashboards("").await
}

/// Runs `sokana report run NAME --as-of AS_OF --output OUTPUT` (the synthetic data ends on
/// 2026-11-01, so reports are made as of a day it covers).
fn run_report(project: &Project, name: &str, as_of: chrono::NaiveDate, output: &std::path::Path) -> String {
    let out = project
        .cli()
        .args(["report", "run", name, "--as-of", &as_of.to_string(), "--output"])
        .arg(output)
        .output()
        .expect("sokana report run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "report run {name}: {}{stderr}", String::from_utf8_lossy(&out.stdout));
    stderr
}

fn pdf_text(path: &std::path::Path) -> String {
    let out = std::process::Command::new("pdftotext").arg("-layout").arg(path).arg("-").output().expect("pdftotext");
    assert!(out.status.success(), "pdftotext: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A project whose reports go to `smtp_url` (`retries` more attempts, `retry_seconds` apart at
/// first), with users
/// `director@sokana.example` (manager), `dana` (a manager whose name is no address) and
/// `ana@sokana.example` (analyst).
async fn mailing_project(smtp_url: &str, retries: u32, retry_seconds: u64) -> Project {
    mailing_project_with(smtp_url, retries, retry_seconds, "").await
}

/// [`mailing_project`] with more configuration after `[smtp]`.
async fn mailing_project_with(smtp_url: &str, retries: u32, retry_seconds: u64, extra: &str) -> Project {
    let config = format!(
        "[smtp]\nurl = {smtp_url:?}\nfrom = \"Sokana Analytics <reports@sokana.example>\"\n\
         admins = [\"ops@sokana.example\"]\nretries = {retries}\nretry_seconds = {retry_seconds}\n{extra}"
    );
    let project = common::sokana_project_with_dashboards(&config).await;
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    for (name, role) in [
        ("director@sokana.example", sokana::auth::Role::Manager),
        ("dana", sokana::auth::Role::Manager),
        ("ana@sokana.example", sokana::auth::Role::Analyst),
    ] {
        auth.add_user(name, role, "a long enough password 1").await.expect("user");
    }
    project
}

/// Waits (polling, up to 90 s) until `done` holds; `what` and `state()` say what was awaited.
fn wait_until(what: &str, state: impl Fn() -> String, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < std::time::Duration::from_secs(90), "timed out waiting for {what}: {}", state());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn send(project: &Project, args: &[&str]) -> std::process::Output {
    project.cli().args(["report", "run"]).args(args).arg("--send").output().expect("sokana report run --send")
}

fn ledger(project: &Project, name: &str) -> String {
    let out = project.cli().args(["report", "deliveries", name]).output().expect("report deliveries");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_weekly_pdf_holds_the_metrics_numbers_for_last_week() {
    let project = project().await;
    let listed = project.cli().args(["report", "list"]).output().expect("report list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("executive-weekly") && l.contains("0 8 * * MON") && l.contains("America/New_York")),
        "{listed}"
    );

    let output = project.dir.path().join("out");
    // A Tuesday: last week is Monday March 2 to Sunday March 8.
    let as_of = chrono::NaiveDate::from_ymd_opt(2026, 3, 10).expect("date");
    run_report(&project, "executive-weekly", as_of, &output);
    let pdf = output.join("executive-weekly.pdf");
    let bytes = std::fs::read(&pdf).expect("the PDF");
    assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
    let text = pdf_text(&pdf);

    let monday = as_of - Duration::days(i64::from(as_of.weekday().num_days_from_monday())) - Duration::days(7);
    assert_eq!(monday.to_string(), "2026-03-02");
    let sunday = monday + Duration::days(6);
    assert!(text.contains("Executive overview"), "{text}");
    let period = format!("Last week: {} – {}", monday.format("%b %-d, %Y"), sunday.format("%b %-d, %Y"));
    assert!(text.contains(&period), "{period:?} not in:\n{text}");
    assert!(text.contains("Page 1 of"), "{text}");

    assert_holds_the_metrics(&project, &[&text], monday).await;
}

/// The KPI figures of the week from `monday` as the metrics API answers them, each in every text.
async fn assert_holds_the_metrics(project: &Project, texts: &[&str], monday: chrono::NaiveDate) {
    let server = common::serve(project);
    let manager = common::api_key(project, sokana::auth::Role::Manager).await;
    let range = format!("from={monday}&to={}", monday + Duration::days(7));
    for (view, measure, format) in [
        ("payments", "collected", Format::Usd),
        ("invoices", "invoiced", Format::Usd),
        ("clients", "new_leads", Format::Count),
        ("contracts", "contracts", Format::Count),
    ] {
        let (status, answer) =
            common::get_json(&server, &manager, &format!("/api/v1/metrics/{view}?measures={measure}&{range}")).await;
        assert_eq!(status, 200, "{answer}");
        // The headline figures print every KPI in full ("none" for a week without any).
        let shown = answer["rows"][0][measure].as_f64().map_or_else(|| "none".to_string(), |v| format.full(v));
        for text in texts {
            assert!(text.contains(&shown), "{view}.{measure} = {shown} not in:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monthly_billing_csv_equals_the_dashboards_csv_for_the_billing_role() {
    let project = project().await;
    let output = project.dir.path().join("billing");
    run_report(&project, "billing-monthly", chrono::NaiveDate::from_ymd_opt(2026, 4, 1).expect("date"), &output);
    let server = common::serve(&project);
    let billing = common::api_key(&project, sokana::auth::Role::Billing).await;
    for panel in ["aging"] {
        let made = std::fs::read_to_string(output.join(format!("{panel}.csv"))).expect("the CSV");
        let (status, _, served) = common::get_bytes(
            &server,
            &billing,
            &format!("/api/v1/dashboards/revenue/panels/{panel}.csv?period=2026-03-01..2026-04-01&raw=true"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(made, String::from_utf8(served).expect("utf-8"), "{panel}");
        assert!(made.lines().count() > 1, "{panel}: {made}");
    }
    assert!(output.join("billing-monthly.pdf").exists());

    // Made as of a day whose data is not loaded yet: the PDF says so at its top.
    let later = project.dir.path().join("later");
    let stderr = run_report(&project, "executive-weekly", chrono::Utc::now().date_naive() + Duration::days(10), &later);
    assert!(stderr.contains("warning: The data may be incomplete"), "{stderr}");
    let text = pdf_text(&later.join("executive-weekly.pdf"));
    assert!(text.contains("Freshness warning") && text.contains("sokana_core last"), "{text}");

    let unknown = project.cli().args(["report", "run", "no-such-report"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(stderr.contains("no-such-report") && stderr.contains("executive-weekly"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_weekly_report_arrives_by_email_with_the_warehouse_numbers() {
    let smtp = common::smtp::SmtpServer::start(&[]);
    let project = mailing_project(&smtp.url(), 0, 1).await;
    let out = send(&project, &["executive-weekly", "--as-of", "2026-03-10"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // role:manager: the one manager whose name is an address; nobody else.
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let message = &messages[0];
    assert_eq!(message.envelope_to, "director@sokana.example");
    assert!(message.message_id.starts_with("<executive-weekly.") && message.message_id.ends_with("@sokana.example>"));
    assert!(
        message.subject.contains("Executive overview") && message.subject.contains("Mar 2, 2026"),
        "{}",
        message.subject
    );
    let names: Vec<&str> = message.attachments.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["executive-weekly-2026-03-10.pdf"]);
    let pdf = project.dir.path().join("mailed.pdf");
    std::fs::write(&pdf, &message.attachments[0].1).expect("write");
    let text = pdf_text(&pdf);
    let monday = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).expect("date");
    // The body's headline figures are the PDF's; the link opens the live dashboard on that week.
    assert_holds_the_metrics(&project, &[&text, &message.text], monday).await;
    assert!(message.html.contains("/dashboards/executive?period=2026-03-02..2026-03-09"), "{}", message.html);

    let ledger = ledger(&project, "executive-weekly");
    let row = ledger.lines().find(|l| l.contains("director@sokana.example")).expect("a ledger row");
    assert!(row.contains(" sent ") && row.contains(" cli "), "{ledger}");
    // The audit trail says who received what, with which view.
    let audit = project.cli().args(["audit", "list", "--limit", "1000"]).output().expect("audit list");
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit
            .lines()
            .any(|l| l.contains("report.sent") && l.contains("director@sokana.example") && l.contains("manager")),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_recipient_fails_alone_and_the_admins_are_told() {
    let smtp = common::smtp::SmtpServer::start(&["gone@sokana.example"]);
    let project = mailing_project(&smtp.url(), 0, 1).await;
    let out = send(
        &project,
        &["billing-monthly", "--as-of", "2026-04-01", "--to", "gone@sokana.example", "--to", "kim@sokana.example"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed recipient fails the command: {stderr}");
    assert!(stderr.contains("1 message(s) of billing-monthly were not sent"), "{stderr}");
    let messages = smtp.messages();
    let to: Vec<&str> = messages.iter().map(|m| m.envelope_to.as_str()).collect();
    assert_eq!(to, ["kim@sokana.example", "ops@sokana.example"], "{messages:#?}");
    // The CSV attachment parses and holds the receivables aging.
    let csv = messages[0].attachments.iter().find(|(n, _)| n == "aging-2026-04-01.csv").expect("aging.csv");
    let text = String::from_utf8(csv.1.clone()).expect("utf-8");
    assert!(text.lines().count() > 1, "{text}");
    let notice = &messages[1];
    assert!(notice.subject.contains("billing-monthly was not delivered"), "{}", notice.subject);
    assert!(notice.text.contains("gone@sokana.example") && notice.text.contains("550"), "{}", notice.text);
    let ledger = ledger(&project, "billing-monthly");
    assert!(ledger.lines().any(|l| l.contains("gone@sokana.example") && l.contains(" failed ")), "{ledger}");
    assert!(ledger.lines().any(|l| l.contains("kim@sokana.example") && l.contains(" sent ")), "{ledger}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_that_cannot_be_made_is_not_sent_empty() {
    let smtp = common::smtp::SmtpServer::start(&[]);
    let project = mailing_project(&smtp.url(), 0, 1).await;
    std::fs::write(
        project.dir.path().join("dashboards/broken.toml"),
        "title = \"Broken\"\n[[panels]]\nid = \"p\"\ntitle = \"P\"\nchart = \"table\"\n\
         sql = \"SELECT * FROM marts.no_such_table\"\n[[reports]]\nname = \"broken\"\n\
         schedule = \"0 8 * * *\"\nrole = \"manager\"\nformats = [\"pdf\"]\n\
         recipients = [\"director@sokana.example\"]\n",
    )
    .expect("write");
    let out = send(&project, &["broken"]);
    assert!(!out.status.success());
    let messages = smtp.messages();
    let to: Vec<&str> = messages.iter().map(|m| m.envelope_to.as_str()).collect();
    assert_eq!(to, ["director@sokana.example", "ops@sokana.example"], "{messages:#?}");
    assert!(messages[0].attachments.is_empty(), "nothing attached");
    assert!(messages[0].subject.contains("could not be made"), "{}", messages[0].subject);
    assert!(messages[0].text.contains("no_such_table"), "{}", messages[0].text);
    assert!(messages[1].text.contains("could not be made"), "{}", messages[1].text);
    let ledger = ledger(&project, "broken");
    assert!(ledger.contains(" failed ") && ledger.contains("the recipient was told so"), "{ledger}");
}

/// Kills `sokana report run --send` at `point`, then lets `sokana serve` (whose scheduler finishes
/// slots begun before a crash) deliver; answers the messages received.
async fn killed_at(point: &str) -> (Project, Vec<common::smtp::Received>) {
    let smtp = common::smtp::SmtpServer::start(&[]);
    let project = mailing_project(&smtp.url(), 0, 1).await;
    let mut cmd = project.cli();
    cmd.args(["report", "run", "executive-weekly", "--send", "--as-of", "2026-03-10"]);
    common::kill_at_named_point(cmd, point);
    let before = ledger(&project, "executive-weekly");
    let server = common::serve(&project);
    wait_until(
        "the delivery after the crash",
        || before.clone(),
        || ledger(&project, "executive-weekly").contains(" sent "),
    );
    drop(server);
    (project, smtp.messages())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_between_making_and_sending_still_sends_once() {
    let (project, messages) = killed_at("report-rendered").await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0].envelope_to, "director@sokana.example");
    let ledger = ledger(&project, "executive-weekly");
    assert!(!ledger.contains("possible repeat"), "{ledger}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_after_the_server_accepted_repeats_the_same_message_id_and_says_so() {
    let (project, messages) = killed_at("report-accepted").await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[0].message_id, messages[1].message_id);
    let ledger = ledger(&project, "executive-weekly");
    assert!(ledger.contains(" sent ") && ledger.contains("possible repeat"), "{ledger}");
}

/// A dashboard listing doulas by name, with the same report as an analyst and as a manager.
const DOULA_LIST: &str = r#"title = "Doula list"
[[panels]]
id = "doulas"
title = "Doulas"
chart = "table"
sql = "SELECT full_name, city FROM raw.doulas ORDER BY city, full_name"
[[reports]]
name = "doulas-analyst"
schedule = "0 8 * * *"
role = "analyst"
formats = ["pdf", "csv"]
[[reports]]
name = "doulas-manager"
schedule = "0 8 * * *"
role = "manager"
formats = ["pdf", "csv"]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_analyst_report_holds_no_pii() {
    let project = project().await;
    std::fs::write(project.dir.path().join("dashboards/doulas.toml"), DOULA_LIST).expect("write");
    let ctx = sokana::query::unmasked_session(&sokana::pipeline::warehouse(&project.config()).expect("warehouse"))
        .await
        .expect("session");
    let batches = sokana::query::run(&ctx, "SELECT full_name FROM raw.doulas").await.expect("names");
    let names = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).expect("csv");
    let names: Vec<&str> = names.lines().skip(1).collect();
    assert!(names.len() >= 3, "{names:?}");
    let day = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).expect("date");
    let (analyst, manager) = (project.dir.path().join("analyst"), project.dir.path().join("manager"));
    run_report(&project, "doulas-analyst", day, &analyst);
    run_report(&project, "doulas-manager", day, &manager);
    let seen = |dir: &std::path::Path, report: &str| {
        let pdf = pdf_text(&dir.join(format!("{report}.pdf")));
        let csv = std::fs::read_to_string(dir.join("doulas.csv")).expect("csv");
        names.iter().filter(|n| pdf.contains(*n) || csv.contains(*n)).count()
    };
    assert!(seen(&manager, "doulas-manager") > 0, "the manager's report names doulas");
    assert_eq!(seen(&analyst, "doulas-analyst"), 0, "no name in the analyst's report");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reports_api_lists_makes_sends_and_shows_the_ledger() {
    let smtp = common::smtp::SmtpServer::start(&[]);
    let project = mailing_project(&smtp.url(), 0, 1).await;
    let server = common::serve(&project);
    let billing = common::api_key(&project, sokana::auth::Role::Billing).await;
    let (status, listed) = common::get_json(&server, &billing, "/api/v1/reports").await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> =
        listed["reports"].as_array().expect("reports").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&"billing-monthly") && names.contains(&"executive-weekly"), "{listed}");
    assert!(listed["reports"][0].get("recipients").is_none(), "recipients are for administrators: {listed}");

    // The CSV made on demand with the caller's role equals the dashboard's.
    let (status, headers, csv) =
        common::get_bytes(&server, &billing, "/api/v1/reports/billing-monthly.csv?as_of=2026-04-01&panel=aging").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&csv));
    assert!(headers.starts_with("text/csv"), "{headers}");
    let (_, _, served) = common::get_bytes(
        &server,
        &billing,
        "/api/v1/dashboards/revenue/panels/aging.csv?period=2026-03-01..2026-04-01&raw=true",
    )
    .await;
    assert_eq!(csv, served);
    let (status, _, pdf) =
        common::get_bytes(&server, &billing, "/api/v1/reports/billing-monthly.pdf?as_of=2026-04-01").await;
    assert_eq!(status, 200);
    assert!(pdf.starts_with(b"%PDF-"));
    let (status, _, _) = common::get_bytes(&server, &billing, "/api/v1/reports/no-such.pdf").await;
    assert_eq!(status, 404);

    // Billing may not send (sending needs run_pipelines); a manager sends to one address.
    let client = reqwest::Client::new();
    let post = |key: &str, body: serde_json::Value| {
        client
            .post(format!("http://127.0.0.1:{}/api/v1/reports/executive-weekly/send", server.http))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let refused = post(&billing, serde_json::json!({})).await.expect("send");
    assert_eq!(refused.status(), 403);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let sent =
        post(&manager, serde_json::json!({ "to": ["kim@sokana.example"], "as_of": "2026-03-10" })).await.expect("send");
    assert_eq!(sent.status(), 200);
    let sent: serde_json::Value = sent.json().await.expect("json");
    assert_eq!(sent["summary"], "1 sent", "{sent}");
    assert_eq!(smtp.messages().len(), 1);
    let (status, ledger) = common::get_json(&server, &manager, "/api/v1/reports/executive-weekly/deliveries").await;
    assert_eq!(status, 200);
    assert_eq!(ledger["deliveries"][0]["recipient"], "kim@sokana.example", "{ledger}");
    assert_eq!(ledger["deliveries"][0]["state"], "sent", "{ledger}");
    assert_eq!(ledger["deliveries"][0]["trigger"], "api", "{ledger}");
}

/// The executive report's schedule in `project`, made every `seconds` seconds.
fn every(project: &Project, seconds: u32) {
    let path = project.dir.path().join("dashboards/executive.toml");
    let text = std::fs::read_to_string(&path).expect("executive.toml");
    let text = text.replace("schedule = \"0 8 * * MON\"", &format!("schedule = \"*/{seconds} * * * * *\""));
    std::fs::write(&path, text).expect("write");
}

/// Waits until the run log's decisions about the executive report satisfy `done`.
fn wait_for_decisions(project: &Project, what: &str, done: impl Fn(&[sokana::pipeline::runlog::Decision]) -> bool) {
    let decisions = || {
        let log = sokana::pipeline::runlog::RunLog::open(&project.config().state_dir()).expect("run log");
        log.decisions(Some("report:executive-weekly"), 100).expect("decisions")
    };
    wait_until(what, || format!("{:#?}", decisions()), || done(&decisions()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_report_is_retried_through_a_mail_server_outage_and_delivered_once() {
    let port = common::free_port();
    let project = mailing_project(&format!("smtp://127.0.0.1:{port}"), 3, 1).await;
    every(&project, 5);
    let server = common::serve(&project);
    wait_for_decisions(&project, "retry", |d| d.iter().any(|d| d.decision == "retrying"));
    // The mail server comes back: the next attempt delivers the slot.
    let smtp = common::smtp::SmtpServer::start_on(port, &[]);
    wait_for_decisions(&project, "success", |d| d.iter().any(|d| d.decision == "succeeded"));
    drop(server);
    let log = sokana::pipeline::runlog::RunLog::open(&project.config().state_dir()).expect("run log");
    let rows = log.deliveries(Some("report:executive-weekly"), 100).expect("ledger");
    let sent: Vec<_> = rows.iter().filter(|d| d.state == "sent").collect();
    let first = rows.iter().min_by_key(|d| d.slot).expect("a slot");
    assert_eq!(first.state, "sent", "{rows:#?}");
    assert!(first.attempts >= 2, "handed over once the server answered: {rows:#?}");
    assert_eq!(first.trigger, "schedule");
    // Each slot once: as many messages as sent rows, no two with one Message-ID.
    let messages = smtp.messages();
    let mut ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((messages.len(), ids.len()), (sent.len(), sent.len()), "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mail_server_that_stays_down_shows_on_the_data_health_dashboard() {
    let port = common::free_port();
    let project = mailing_project(&format!("smtp://127.0.0.1:{port}"), 1, 1).await;
    every(&project, 30);
    let server = common::serve(&project);
    wait_for_decisions(&project, "failure", |d| d.iter().any(|d| d.decision == "failed"));
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let (status, panel) =
        common::get_json(&server, &manager, "/api/v1/dashboards/data_health?period=last_30_days").await;
    assert_eq!(status, 200);
    let panels = panel["panels"].as_array().expect("panels");
    let deliveries = panels.iter().find(|p| p["id"] == "deliveries").expect("the deliveries panel");
    let rows = deliveries["data"]["frame"]["rows"].as_array().unwrap_or_else(|| panic!("rows: {deliveries}"));
    assert!(
        rows.iter().any(|r| r.to_string().contains("executive-weekly") && r.to_string().contains("failed")),
        "{deliveries}"
    );
}

/// The secret the tests' webhooks are signed with, and the variable that holds it.
const HOOK_SECRET: (&str, &str) = ("SOKANA_TEST_HOOK_SECRET", "a-test-secret-of-the-receiver");

/// A real HTTP receiver of webhooks: answers its requests with `statuses` in turn (`None`: never
/// answers), then 200, and keeps each request's headers and body.
struct Receiver {
    url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
}

async fn receiver(statuses: Vec<Option<u16>>) -> Receiver {
    use axum::http::StatusCode;
    type Shared =
        (std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>, std::sync::Arc<Vec<Option<u16>>>);
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let state: Shared = (received.clone(), std::sync::Arc::new(statuses));
    let hook = |axum::extract::State((received, statuses)): axum::extract::State<Shared>,
                headers: axum::http::HeaderMap,
                body: String| async move {
        let n = {
            let mut received = received.lock().expect("lock");
            received.push((headers, body));
            received.len() - 1
        };
        match statuses.get(n).copied().unwrap_or(Some(200)) {
            Some(status) => StatusCode::from_u16(status).expect("a status"),
            None => std::future::pending().await,
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, received }
}

impl Receiver {
    /// `[webhooks.ops]` posting here.
    fn config(&self, retries: u32, timeout_seconds: u64) -> String {
        format!(
            "[webhooks.ops]\nurl = {:?}\nsecret_env = {:?}\nretries = {retries}\nretry_seconds = 1\n\
             timeout_seconds = {timeout_seconds}\n",
            self.url, HOOK_SECRET.0
        )
    }

    /// The events received so far: (event, delivery id, body); each signature checked.
    fn events(&self) -> Vec<(String, String, serde_json::Value)> {
        let received = self.received.lock().expect("lock");
        received
            .iter()
            .map(|(headers, body)| {
                let header =
                    |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let signed = header("sokana-signature");
                let t: i64 = signed
                    .strip_prefix("t=")
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("no timestamp in {signed:?}"));
                assert_eq!(signed, sokana::webhook::signature(HOOK_SECRET.1.as_bytes(), t, body.as_bytes()));
                assert!((chrono::Utc::now().timestamp() - t).abs() < 300, "a fresh timestamp");
                let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
                assert_eq!(json["id"].as_str(), Some(header("sokana-delivery").as_str()));
                (header("sokana-event"), header("sokana-delivery"), json)
            })
            .collect()
    }
}

/// A project command with the webhook secret in its environment.
fn with_secret(mut command: std::process::Command) -> std::process::Command {
    command.env(HOOK_SECRET.0, HOOK_SECRET.1);
    command
}

fn webhook_ledger(project: &Project) -> Vec<sokana::pipeline::runlog::Delivery> {
    let log = sokana::pipeline::runlog::RunLog::open(&project.config().state_dir()).expect("run log");
    log.deliveries(Some("webhook:ops"), 100).expect("ledger")
}

/// `sokana serve` with the webhook secret in its environment.
fn serve_with_secret(project: &Project) -> common::Server {
    let mut serve = with_secret(project.cli());
    serve.arg("serve");
    common::serve_command(serve)
}

/// Runs the pipeline from the command line (which must succeed: a webhook never fails a run), then
/// serves until the webhook ledger has a row in `state`; answers the ledger.
fn run_then_serve_until(project: &Project, state: &str) -> Vec<sokana::pipeline::runlog::Delivery> {
    let ran = with_secret(project.cli()).args(["pipeline", "run", "sokana_core"]).output().expect("run");
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let server = serve_with_secret(project);
    wait_until(
        &format!("a webhook {state}"),
        || format!("{:#?}", webhook_ledger(project)),
        || webhook_ledger(project).iter().any(|d| d.state == state),
    );
    drop(server);
    webhook_ledger(project)
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_runs_are_posted_signed_and_retried_until_received() {
    let receiver = receiver(vec![Some(500), Some(503)]).await;
    let project = common::sokana_project(&receiver.config(3, 5)).await;
    // The command tries once (500); the server retries (503, then 200).
    let ledger = run_then_serve_until(&project, "sent");
    let events = receiver.events();
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(events.iter().all(|(event, id, _)| event == "pipeline_run.succeeded" && *id == events[0].1));
    let data = &events[0].2["data"];
    assert_eq!(data["pipeline"], "sokana_core");
    assert_eq!(data["trigger"], "manual");
    assert_eq!((ledger[0].attempts, ledger[0].state), (3, sokana::pipeline::runlog::DeliveryState::Sent));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_never_answers_is_given_up_after_its_retries() {
    let receiver = receiver(vec![None, None, None]).await;
    let project = common::sokana_project(&receiver.config(1, 1)).await;
    let ledger = run_then_serve_until(&project, "failed");
    let row = &ledger[0];
    assert_eq!(row.attempts, 2);
    assert!(row.detail.as_deref().is_some_and(|d| d.contains("no answer within 1 s")), "{row:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_health_alert_fires_once_then_resolves() {
    let smtp = common::smtp::SmtpServer::start(&[]);
    let hooks = receiver(Vec::new()).await;
    let project = mailing_project_with(&smtp.url(), 0, 1, &hooks.config(0, 5)).await;
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    auth.add_user("ops@sokana.example", sokana::auth::Role::Admin, "a long enough password 1").await.expect("admin");
    let path = project.dir.path().join("dashboards/data_health.toml");
    let text = std::fs::read_to_string(&path).expect("data_health.toml");
    std::fs::write(&path, text.replace("schedule = \"*/15 * * * *\"", "schedule = \"*/2 * * * * *\"")).expect("write");
    let decided = |what: &'static str| {
        let log = sokana::pipeline::runlog::RunLog::open(&project.config().state_dir()).expect("run log");
        let decisions = log.decisions(Some("report:data-health"), 1000).expect("decisions");
        decisions.iter().filter(|d| d.detail.as_deref().is_some_and(|t| t.starts_with(what))).count()
    };
    let wait = |what: &str, done: &dyn Fn() -> bool| wait_until(what, || format!("{:#?}", smtp.messages()), done);
    let server = serve_with_secret(&project);
    // All is well: the alert is evaluated, and quiet.
    wait("a quiet evaluation", &|| decided("quiet") > 0);
    assert!(smtp.messages().is_empty());

    // The source disappears: the pipeline's run fails, and the alert fires once.
    let source = project.sqlite_path();
    let moved = source.with_extension("moved");
    std::fs::rename(&source, &moved).expect("move the source away");
    let failed = with_secret(project.cli()).args(["pipeline", "run", "sokana_core"]).output().expect("pipeline run");
    assert!(!failed.status.success());
    let alerts = smtp.wait_for(1, std::time::Duration::from_secs(60));
    assert_eq!(alerts[0].envelope_to, "ops@sokana.example");
    assert!(alerts[0].subject.starts_with("[Alert] Data health: Problems now: 1 row(s)"), "{}", alerts[0].subject);
    assert!(
        alerts[0].text.contains("latest run failed") && alerts[0].text.contains("sokana_core"),
        "{}",
        alerts[0].text
    );
    // Later slots within the cool-down stay quiet.
    wait("slots within the cool-down", &|| decided("firing, within its cool-down") >= 2);
    assert_eq!(smtp.messages().len(), 1);

    // The source is back and the next run succeeds: one "resolved" message.
    std::fs::rename(&moved, &source).expect("move the source back");
    let ran = with_secret(project.cli()).args(["pipeline", "run", "sokana_core"]).output().expect("pipeline run");
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let messages = smtp.wait_for(2, std::time::Duration::from_secs(60));
    assert!(
        messages[1].subject.starts_with("[Resolved] Data health: Problems now: 0 row(s)"),
        "{}",
        messages[1].subject
    );
    let quiet = decided("quiet");
    wait("quiet again", &|| decided("quiet") > quiet);
    let alerts = || hooks.events().into_iter().filter(|(e, _, _)| e.starts_with("alert.")).count();
    wait_until("the resolved alert's webhook", || format!("{:#?}", hooks.events()), || alerts() == 2);
    drop(server);
    assert_eq!(smtp.messages().len(), 2);
    // The webhooks heard the same: the runs, and the alert firing then resolved.
    let events: Vec<String> = hooks.events().into_iter().map(|(e, _, _)| e).collect();
    let alerts: Vec<&String> = events.iter().filter(|e| e.starts_with("alert.")).collect();
    assert_eq!(alerts, ["alert.firing", "alert.resolved"], "{events:?}");
    assert!(events.contains(&"pipeline_run.failed".to_string()), "{events:?}");
}
