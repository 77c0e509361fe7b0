//! Forecasts over a served Sokana project: the `forecast` table function from psql as an analyst
//! (history and forecast rows, bands around the point, DataFusion under `auto`), through the
//! query API with the caller's role (a table the role may not read stays unread, and the audit
//! trail names the table the inner query read); every bad input gets a message, not a crash; the
//! command line's backtest and run, from a metric and from a CSV file; alerts that hold the
//! period so far against its forecast, by email through a real SMTP server.

mod common;

use std::process::Command;

use common::Project;
use serde_json::Value;
use sokana::auth::Role;

/// Monthly new leads, the series the tests forecast.
const LEADS: &str = "SELECT date_trunc(''month'', lead_at) AS month, count(*) AS leads FROM marts.dim_clients WHERE lead_at < TIMESTAMP ''2026-11-01'' GROUP BY 1";

fn psql(port: u16, user: &str, key: &str) -> Command {
    let bin = common::pg_bin_dir().join("psql");
    let mut cmd = Command::new(if bin.exists() { bin } else { "psql".into() });
    cmd.env("PGPASSWORD", key).env("PGCONNECT_TIMEOUT", "10");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", "sokana", "-tA", "-F", ","]);
    cmd
}

async fn post_query(server: &common::Server, key: &str, sql: &str) -> (u16, Value) {
    let base = format!("http://127.0.0.1:{}", server.http);
    let response = common::post_json(&base, key, "/api/v1/query", &serde_json::json!({ "sql": sql }).to_string()).await;
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.expect("body")).expect("json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_analyst_forecasts_from_psql_and_bad_calls_are_told_why() {
    let project = common::sokana_project_with_dashboards("").await;
    let key = common::api_key(&project, Role::Analyst).await;
    let server = common::serve(&project);

    let sql = format!(
        "SELECT time, value, lower, upper, model, kind FROM forecast('{LEADS}', horizon => 6, level => 95) ORDER BY time"
    );
    let out = psql(server.pg, "analyst", &key).args(["-c", &sql]).output().expect("psql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    let forecast: Vec<&Vec<&str>> = rows.iter().filter(|r| r[5] == "forecast").collect();
    assert_eq!(forecast.len(), 6, "{text}");
    assert!(rows.iter().filter(|r| r[5] == "history").count() >= 24, "{text}");
    assert!(forecast[0][0].starts_with("2026-11-01"), "the month after the last: {text}");
    for row in &forecast {
        let [value, lower, upper]: [f64; 3] = [1, 2, 3].map(|i| row[i].parse().expect("a number"));
        assert!(lower <= value && value <= upper && lower >= 0.0 && upper.is_finite(), "{row:?}");
        assert!(!row[4].is_empty(), "the model is named: {row:?}");
    }
    // The horizon may come second, unnamed; several levels give suffixed columns.
    let sql = format!(
        "SELECT count(*), min(upper_95 - upper_80) >= 0 FROM forecast('{LEADS}', 3, levels => '80,95', history => false)"
    );
    let out = psql(server.pg, "analyst", &key).args(["-c", &sql]).output().expect("psql");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3,t", "{}", String::from_utf8_lossy(&out.stderr));

    // Bad calls: each a message naming what is wrong; the server answers the next.
    let bad = [
        ("SELECT * FROM forecast('SELECT 1 AS one', horizon => 3)", "must answer two columns"),
        (
            "SELECT * FROM forecast('SELECT lead_at, status FROM marts.dim_clients', horizon => 3)",
            "a time (date or timestamp) and a number",
        ),
        (
            "SELECT * FROM forecast('SELECT DATE ''2026-01-01'' AS d, 1 AS v UNION ALL SELECT DATE ''2026-01-01'', 2', horizon => 1)",
            "2026-01-01 appears more than once",
        ),
        ("SELECT * FROM forecast('SELECT DATE ''2026-01-01'' AS d, 1 AS v', horizon => 1)", "at least 3 points"),
        (
            "SELECT * FROM forecast('SELECT DATE ''2026-01-01'' AS d, 1 AS v UNION ALL SELECT DATE ''2026-01-11'', 2 UNION ALL SELECT DATE ''2026-01-14'', 3', horizon => 1)",
            "not spaced by an hour, day",
        ),
        (&format!("SELECT * FROM forecast('{LEADS}', horizon => 0)"), "horizon 0"),
        (&format!("SELECT * FROM forecast('{LEADS}', horizon => 5000)"), "horizon 5000"),
        (&format!("SELECT * FROM forecast('{LEADS}', grain => 'fortnight')"), "unknown grain \"fortnight\""),
        (&format!("SELECT * FROM forecast('{LEADS}', colour => 'red')"), "unknown option \"colour\""),
        ("SELECT * FROM forecast('SELECT month FROM nowhere.at_all')", "in forecast()'s query"),
        ("SELECT * FROM forecast(42)", "its first argument is the series' query"),
        (
            "SELECT * FROM forecast('SELECT make_date(2026, i, 1) AS d, CAST(''NaN'' AS DOUBLE) AS v FROM (VALUES (1), (2), (3), (4)) AS t(i)', horizon => 1)",
            "is NaN",
        ),
    ];
    for (sql, expected) in bad {
        let out = psql(server.pg, "analyst", &key).args(["-c", sql]).output().expect("psql");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expected), "{sql}: {err}");
    }
    // A series of zeros is forecast as zeros.
    let zeros = "SELECT * FROM forecast('SELECT make_date(2026, i, 1) AS d, 0 AS v FROM (VALUES (1), (2), (3), (4), (5), (6)) AS t(i)', horizon => 2, history => false)";
    let out = psql(server.pg, "analyst", &key).args(["-c", zeros]).output().expect("psql");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().count() == 2 && text.lines().all(|l| l.contains(",0,0,0,")),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_inner_query_runs_as_the_caller_and_is_audited() {
    let project = common::sokana_project_with_dashboards("").await;
    let analyst = common::api_key(&project, Role::Analyst).await;
    let server = common::serve(&project);

    let sql = format!("SELECT * FROM forecast('{LEADS}', horizon => 2)");
    let (status, answer) = post_query(&server, &analyst, &sql).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["engine"], "datafusion", "{answer}");
    // The answer is kept, keyed by the versions of the tables the inner query read.
    let (_, again) = post_query(&server, &analyst, &sql).await;
    assert_eq!(again["cached"], true, "{again}");

    // Health data is masked inside a forecast as anywhere: the analyst's series of a phi column
    // is nothing (every value hidden, so filled as zero), the admin's is not.
    let admin = common::api_key(&project, Role::Admin).await;
    let phi = "SELECT * FROM forecast('SELECT date_trunc(''month'', created_at) AS m, sum(number_of_babies) AS n FROM raw.phi_clients GROUP BY 1', horizon => 2)";
    let history = |answer: &Value| -> Vec<f64> {
        let rows = answer["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
        rows.iter().filter(|r| r["kind"] == "history").filter_map(|r| r["value"].as_f64()).collect()
    };
    let (status, masked) = post_query(&server, &analyst, phi).await;
    assert_eq!(status, 200, "{masked}");
    assert!(!history(&masked).is_empty() && history(&masked).iter().all(|v| *v == 0.0), "{masked}");
    let (status, clear) = post_query(&server, &admin, phi).await;
    assert_eq!(status, 200, "{clear}");
    assert!(history(&clear).iter().sum::<f64>() > 0.0, "{clear}");

    // The metrics API forecasts a measure past its history, with both levels' bounds.
    let path = "/api/v1/metrics/clients?measures=new_leads&grain=month&from=2026-01-01&to=2026-11-01&forecast=6";
    let (status, answer) = common::get_json(&server, &analyst, path).await;
    assert_eq!(status, 200, "{answer}");
    let rows = answer["forecast"]["rows"].as_array().expect("forecast rows");
    assert_eq!(rows.len(), 6, "{answer}");
    assert_eq!(rows[0]["period"], "2026-11-01", "{answer}");
    assert!(
        rows.iter()
            .all(|r| r["lower_95"].as_f64() <= r["lower_80"].as_f64()
                && r["upper_80"].as_f64() <= r["upper_95"].as_f64())
    );
    assert_eq!(answer["rows"].as_array().map(Vec::len), Some(10), "the answer itself is the range asked: {answer}");
    // Fitted once: the same request is then answered as kept, the same forecast.
    let kept = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", server.http))
        .header("authorization", format!("Bearer {analyst}"))
        .send()
        .await
        .expect("request");
    assert_eq!(kept.headers().get("x-sokana-cache").and_then(|v| v.to_str().ok()), Some("hit"));
    let kept: Value = serde_json::from_slice(&kept.bytes().await.expect("body")).expect("json");
    assert_eq!(kept["forecast"], answer["forecast"]);
    for (query, parameter) in [
        ("measures=new_leads&grain=month&forecast=soon", "forecast"),
        ("measures=new_leads&grain=month&forecast=6&dimensions=status", "dimensions"),
        ("measures=new_leads&grain=month&level=95", "level"),
        ("measures=new_leads,signed&grain=month&forecast=6", "forecast"),
        ("measures=new_leads&grain=month&forecast=0", "forecast"),
    ] {
        let (status, body) = common::get_json(&server, &analyst, &format!("/api/v1/metrics/clients?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(parameter), "{query}: {body}");
    }

    // The Forecasts dashboard's panels draw their bands, for the web page and the exports alike.
    let manager = common::api_key(&project, Role::Manager).await;
    let panel_svg = |panel: &str| {
        let path = format!("/api/v1/dashboards/forecasts/panels/{panel}.svg?period=last_12_months");
        let (server, manager) = (&server, &manager);
        async move {
            let (status, _, svg) = common::get_bytes(server, manager, &path).await;
            let svg = String::from_utf8_lossy(&svg).into_owned();
            assert_eq!(status, 200, "{path}: {svg}");
            svg
        }
    };
    for panel in ["collected_forecast", "leads_forecast", "postpartum_forecast", "due_forecast"] {
        let svg = panel_svg(panel).await;
        assert!(svg.contains("Forecast (80 % and 95 % intervals)") && svg.contains("forecast: "), "{panel}: {svg}");
    }
    // Postpartum demand is held against the hours doulas marked available, and says where it is over.
    let svg = panel_svg("postpartum_forecast").await;
    assert!(svg.contains("Capacity: Hours available") && svg.contains("Hours available ahead: "), "{svg}");
    assert!(
        svg.contains("stays under it at the 95 % upper bound") || svg.contains("over it at the 95 % upper bound in"),
        "{svg}"
    );
    assert!(panel_svg("due_ahead").await.contains("Booked births"));

    // The audit trail names what the inner query read.
    let (status, audit) = common::get_json(&server, &admin, "/api/v1/audit?limit=10000").await;
    assert_eq!(status, 200);
    let forecasts: Vec<&Value> =
        audit["entries"].as_array().expect("entries").iter().filter(|e| e.to_string().contains("forecast(")).collect();
    assert!(forecasts.iter().any(|e| e.to_string().contains("marts.dim_clients.lead_at")), "{forecasts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_backtests_a_metric_and_forecasts_a_file() {
    let project: Project = common::sokana_project_with_dashboards("").await;
    let out = project
        .cli()
        .args(["forecast", "backtest", "clients.new_leads", "--as-of", "2026-11-01", "--horizon", "6"])
        .output()
        .expect("backtest");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("vs naive") && text.contains("← chosen") && text.contains("holt_damped"), "{text}");

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("series.csv");
    let mut csv = String::from("time,value\n");
    for (i, value) in [
        112, 118, 132, 129, 121, 135, 148, 148, 136, 119, 104, 118, 115, 126, 141, 135, 125, 149, 170, 170, 158, 133,
        114, 140,
    ]
    .iter()
    .enumerate()
    {
        csv.push_str(&format!("{}-{:02}-01,{value}\n", 1949 + i / 12, i % 12 + 1));
    }
    std::fs::write(&path, csv).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sokana"))
        .args(["forecast", "run", "--input"])
        .arg(&path)
        .args(["--horizon", "12", "--format", "json"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = answer["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 12);
    assert_eq!(answer["seasons"], serde_json::json!([12]));
    assert!(
        rows.iter()
            .all(|r| r["lower_95"].as_f64() <= r["lower_80"].as_f64()
                && r["upper_80"].as_f64() <= r["upper_95"].as_f64())
    );

    std::fs::write(&path, "time,value\n1949-01-01,1\n1949-02-01,x\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sokana"))
        .args(["forecast", "run", "--input"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("series.csv:3: value \"x\" is not a number"), "{err}");
}

/// Alerts on forecasts: half of October is judged on its days against its share of the month's
/// forecast (the figure counted is the metrics API's); November, with no payment at all (the data
/// ends with October), is under the lower bound of its 60 % interval, and the manager is told by
/// email.
#[tokio::test(flavor = "multi_thread")]
async fn an_alert_holds_the_period_so_far_against_its_forecast() {
    let smtp = common::smtp::SmtpServer::start(&[]);
    let config = format!(
        "[smtp]\nurl = {:?}\nfrom = \"Sokana Analytics <reports@sokana.example>\"\nadmins = [\"ops@sokana.example\"]\n",
        smtp.url()
    );
    let project = common::sokana_project_with_dashboards(&config).await;
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    auth.add_user("director@sokana.example", Role::Manager, "a long enough password 1").await.expect("user");
    let report = |args: &[&str]| {
        let out = project.cli().args(["report", "run", "revenue-under-forecast"]).args(args).output().expect("report");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let half = report(&["--as-of", "2026-10-16"]);
    assert!(half.contains("in the month from 2026-10-01 through 2026-10-15 (48 % of it)"), "{half}");
    let key = common::api_key(&project, Role::Manager).await;
    let server = common::serve(&project);
    let path = "/api/v1/metrics/payments?measures=collected&from=2026-10-01&to=2026-10-16";
    let (status, answer) = common::get_json(&server, &key, path).await;
    assert_eq!(status, 200, "{answer}");
    let collected = answer["rows"][0]["collected"].as_f64().expect("collected");
    let counted = format!("Counted: {}", sokana::chart::Format::Usd.full(collected));
    assert!(half.contains(&counted), "{counted} not in {half}");
    drop(server);

    // The test project's revenue is small and noisy (its 95 % lower bound is $0): hold it to 60 %.
    let path = project.dir.path().join("dashboards/forecasts.toml");
    let text = std::fs::read_to_string(&path).expect("forecasts.toml");
    let text = text.replace(
        "panel = \"collected_forecast\", below_forecast = 95",
        "panel = \"collected_forecast\", below_forecast = 60",
    );
    std::fs::write(&path, text).expect("write");
    let november = report(&["--as-of", "2026-12-01"]);
    assert!(november.starts_with("firing: Revenue collected by month, and the next six: $0"), "{november}");
    assert!(
        november.contains("in the month from 2026-11-01 is under $") && november.contains("the 60 % forecast's"),
        "{november}"
    );
    report(&["--as-of", "2026-12-01", "--send"]);
    let messages = smtp.wait_for(1, std::time::Duration::from_secs(60));
    assert_eq!(messages[0].envelope_to, "director@sokana.example");
    assert!(
        messages[0].subject.starts_with("[Alert] Forecasts: Revenue collected by month"),
        "{}",
        messages[0].subject
    );
    assert!(messages[0].text.contains("Forecast for the whole month: $"), "{}", messages[0].text);
}
