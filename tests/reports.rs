//! Reports made from the command line: the Executive overview's weekly PDF holds the numbers the
//! metrics API answers for the same week (read back from the PDF with poppler's `pdftotext`),
//! with its period, page numbers and charts; the monthly billing report's CSV files equal the
//! dashboard's own CSV of the same panels, as the billing role sees them; an unknown report is
//! named with the ones there are.

mod common;

use chrono::{Datelike, Duration};
use common::Project;
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

    let server = common::serve(&project);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
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
        assert!(text.contains(&shown), "{view}.{measure} = {shown} not in the PDF:\n{text}");
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

    let unknown = project.cli().args(["report", "run", "no-such-report"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(stderr.contains("no-such-report") && stderr.contains("executive-weekly"), "{stderr}");
}
