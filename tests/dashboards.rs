//! Dashboards over a served project: every shipped dashboard checks and draws; its API answers
//! every panel's data for the viewer's role (KPIs equal to the source's own figures), exports
//! panels as SVG, PNG and CSV, keeps to the roles the file names and to the values the data
//! holds; bad files and bad filters are reported naming the file, panel, field or filter, and the
//! other dashboards keep working.

mod common;

use common::Project;
use serde_json::Value;

const BIRTHS_VIEW: &str = r#"label = "Births (test)"
table = "raw.phi_clients"
time = "created_at"
[[dimensions]]
name = "birth_location"
label = "Birth location"
[[measures]]
name = "clients"
label = "Clients"
sql = "count(*)"
format = "count"
"#;

const BIRTHS_DASHBOARD: &str = r#"title = "Births (test)"
[[panels]]
id = "locations"
title = "Clients by birth location"
chart = "table"
metric = { view = "births", measures = ["clients"], dimensions = ["birth_location"] }
"#;

/// The Sokana project with the shipped metrics views and dashboards, and a test dashboard over a
/// `phi` column.
async fn project() -> Project {
    let project = common::sokana_project("").await;
    let root = project.dir.path();
    for (dir, files) in
        [("queries/metrics", sokana::SOKANA_CORE_METRICS), ("dashboards", sokana::SOKANA_CORE_DASHBOARDS)]
    {
        std::fs::create_dir_all(root.join(dir)).expect("dir");
        for (name, text) in files {
            std::fs::write(root.join(dir).join(name), text).expect("write");
        }
    }
    std::fs::write(root.join("queries/metrics/births.toml"), BIRTHS_VIEW).expect("view");
    std::fs::write(root.join("dashboards/births.toml"), BIRTHS_DASHBOARD).expect("dashboard");
    project
}

fn panel<'a>(dashboard: &'a Value, id: &str) -> &'a Value {
    dashboard["panels"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == id))
        .unwrap_or_else(|| panic!("panel {id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sokana_dashboards_answer_for_each_role() {
    let project = project().await;
    let checked = project.cli().arg("check").output().expect("sokana check");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "sokana check: {out}{}", String::from_utf8_lossy(&checked.stderr));
    for (name, _) in sokana::SOKANA_CORE_DASHBOARDS {
        assert!(
            out.lines().any(|l| l.starts_with("ok ") && l.ends_with(&format!("/dashboards/{name}"))),
            "{name}: {out}"
        );
    }

    let server = common::serve(&project);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let (status, list) = common::get_json(&server, &manager, "/api/v1/dashboards").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["dashboards"].as_array().expect("list").iter().filter_map(|d| d["id"].as_str()).collect();
    for id in ["executive", "client_pipeline", "revenue", "doula_team"] {
        assert!(ids.contains(&id), "{ids:?}");
    }

    // Every panel of every dashboard has data, over all time.
    for id in ["executive", "client_pipeline", "revenue", "doula_team"] {
        let (status, dashboard) =
            common::get_json(&server, &manager, &format!("/api/v1/dashboards/{id}?period=all_time")).await;
        assert_eq!(status, 200, "{dashboard}");
        for p in dashboard["panels"].as_array().expect("panels") {
            assert!(p["error"].is_null(), "{id}/{}: {}", p["id"], p["error"]);
            assert!(p["data"]["frame"]["rows"].as_array().is_some_and(|r| !r.is_empty()), "{id}/{} has rows", p["id"]);
        }
    }

    // The executive KPIs equal the source's own figures.
    let (_, executive) = common::get_json(&server, &manager, "/api/v1/dashboards/executive?period=all_time").await;
    let db = rusqlite::Connection::open(project.sqlite_path()).expect("source");
    let scalar = |sql: &str| -> f64 { db.query_row(sql, [], |r| r.get::<_, f64>(0)).expect(sql) };
    let kpi = |id: &str| panel(&executive, id)["data"]["frame"]["rows"][0][0].as_f64().expect("a KPI value");
    assert_eq!(kpi("active_clients"), scalar("SELECT count(*) FROM phi_clients WHERE lower(trim(status)) = 'active'"));
    assert_eq!(kpi("new_leads"), scalar("SELECT count(*) FROM phi_clients"));
    assert!((kpi("collected") - scalar("SELECT sum(CAST(amount AS REAL)) FROM payments")).abs() < 0.01);
    assert!((kpi("invoiced") - scalar("SELECT sum(CAST(total_amount AS REAL)) FROM phi_invoices")).abs() < 0.01);
    assert_eq!(kpi("signed"), scalar("SELECT count(*) FROM phi_contracts WHERE signed_at IS NOT NULL"));

    // A filter moves the KPI to what the metrics API says for the same range.
    let (_, march) =
        common::get_json(&server, &manager, "/api/v1/dashboards/executive?period=2026-03-01..2026-04-01").await;
    let (_, metric) = common::get_json(
        &server,
        &manager,
        "/api/v1/metrics/payments?measures=collected&from=2026-03-01&to=2026-04-01",
    )
    .await;
    assert_eq!(panel(&march, "collected")["data"]["frame"]["rows"][0][0], metric["rows"][0]["collected"]);

    // Exports: SVG and PNG pictures of the panel, CSV of its rows.
    let base = "/api/v1/dashboards/revenue/panels";
    let (status, kind, svg) =
        common::get_bytes(&server, &manager, &format!("{base}/collections_by_month.svg?period=last_12_months")).await;
    assert_eq!((status, kind.as_str()), (200, "image/svg+xml"));
    assert!(String::from_utf8_lossy(&svg).contains("<title id=\"revenue-collections_by_month-title\">"));
    let (status, kind, png) = common::get_bytes(&server, &manager, &format!("{base}/methods.png?theme=dark")).await;
    assert_eq!((status, kind.as_str()), (200, "image/png"));
    assert_eq!(&png[1..4], b"PNG");
    let (status, kind, csv) = common::get_bytes(&server, &manager, &format!("{base}/aging.csv")).await;
    assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"));
    assert!(
        String::from_utf8_lossy(&csv).starts_with("bucket,outstanding,open_invoices\n"),
        "{}",
        String::from_utf8_lossy(&csv)
    );
    let (status, _, _) = common::get_bytes(&server, &manager, &format!("{base}/aging.xlsx")).await;
    assert_eq!(status, 404);

    // Roles: the revenue dashboard is not the analyst's; a manager sees no phi on any panel.
    let analyst = common::api_key(&project, sokana::auth::Role::Analyst).await;
    let (_, list) = common::get_json(&server, &analyst, "/api/v1/dashboards").await;
    assert!(!list.to_string().contains("\"revenue\""), "{list}");
    let (status, _) = common::get_json(&server, &analyst, "/api/v1/dashboards/revenue").await;
    assert_eq!(status, 403);
    let (status, _, _) = common::get_bytes(&server, &analyst, &format!("{base}/aging.csv")).await;
    assert_eq!(status, 403);
    let admin = common::api_key(&project, sokana::auth::Role::Admin).await;
    let births = "/api/v1/dashboards/births/panels/locations.csv";
    let (_, _, clear) = common::get_bytes(&server, &admin, births).await;
    let (_, _, masked) = common::get_bytes(&server, &manager, births).await;
    let lines = |csv: &[u8]| String::from_utf8_lossy(csv).lines().count();
    assert!(lines(&clear) > 2, "the admin sees the birth locations");
    assert_eq!(lines(&masked), 2, "a manager sees one masked group: {}", String::from_utf8_lossy(&masked));

    // The same from the command line.
    let output = project.dir.path().join("executive.png");
    let rendered = project
        .cli()
        .args(["dashboard", "render", "executive", "--format", "png", "--filter", "period=last_year", "--output"])
        .arg(&output)
        .output()
        .expect("render");
    assert!(rendered.status.success(), "{}", String::from_utf8_lossy(&rendered.stderr));
    assert_eq!(&std::fs::read(&output).expect("png")[1..4], b"PNG");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_files_and_bad_filters_are_named() {
    let project = project().await;
    let dir = project.dir.path().join("dashboards");
    std::fs::write(dir.join("syntax.toml"), "title = \"Broken\"\n[[panels]\nid = \"x\"\n").expect("write");
    std::fs::write(dir.join("unknown_field.toml"), "title = \"T\"\nsubtitle = \"S\"\n[[panels]]\nid = \"a\"\ntitle = \"A\"\nchart = \"kpi\"\nmetric = { view = \"payments\", measures = [\"collected\"] }\n").expect("write");
    std::fs::write(
        dir.join("wrong.toml"),
        r#"title = "Wrong"
[[filters]]
name = "unused"
kind = "select"
view = "contracts"
dimension = "service_type"
[[panels]]
id = "measure"
title = "Unknown measure"
chart = "kpi"
metric = { view = "payments", measures = ["refunds"] }
encoding = { y = ["refunds"] }
[[panels]]
id = "encoding"
title = "Encoding names a dimension as y"
chart = "bar"
metric = { view = "payments", measures = ["collected"], dimensions = ["method"] }
encoding = { x = "method", y = ["method"] }
[[panels]]
id = "failing_sql"
title = "SQL that fails"
chart = "table"
sql = "SELECT no_such_column FROM marts.fct_payments"
[[panels]]
id = "donut"
title = "A donut over every payment"
chart = "donut"
sql = "SELECT CAST(payment_id AS VARCHAR) AS payment, amount FROM marts.fct_payments"
encoding = { x = "payment", y = ["amount"] }
"#,
    )
    .expect("write");
    let checked = project.cli().arg("check").output().expect("sokana check");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success());
    for expected in [
        "syntax.toml:2:",
        "unknown_field.toml:",
        "subtitle",
        "wrong.toml: filter unused: no panel uses it",
        "wrong.toml: panel measure: metric.measures: view payments has no measure \"refunds\"",
        "wrong.toml: panel encoding: encoding.y: column \"method\" is a dimension or period",
        "wrong.toml: panel failing_sql:",
        "no_such_column",
        "wrong.toml: panel donut: a Donut chart shows at most 12 slices",
    ] {
        assert!(out.contains(expected), "check should say {expected:?}: {out}");
    }

    let server = common::serve(&project);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let (_, list) = common::get_json(&server, &manager, "/api/v1/dashboards").await;
    assert!(list["problems"].as_array().is_some_and(|p| p.len() == 2), "{list}");
    let (status, executive) = common::get_json(&server, &manager, "/api/v1/dashboards/executive").await;
    assert_eq!(status, 200, "the other dashboards keep working: {executive}");
    let (status, wrong) = common::get_json(&server, &manager, "/api/v1/dashboards/wrong").await;
    assert_eq!(status, 200, "{wrong}");
    assert!(panel(&wrong, "failing_sql")["error"].as_str().is_some_and(|e| e.contains("no_such_column")), "{wrong}");
    assert!(panel(&wrong, "measure")["error"].as_str().is_some_and(|e| e.contains("refunds")), "{wrong}");
    let (status, _) = common::get_json(&server, &manager, "/api/v1/dashboards/wrong/panels/donut.svg").await;
    assert_eq!(status, 422, "a chart that does not fit its data");

    for (query, filter) in [
        ("period=forever", "period"),
        ("period=2026-04-01..2026-03-01", "period"),
        ("method=bitcoin", "method"),
        ("method=card'%20OR%20'1'%3D'1", "method"),
    ] {
        let (status, body) = common::get_json(&server, &manager, &format!("/api/v1/dashboards/revenue?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| m.starts_with(&format!("filter {filter}:"))),
            "{query}: {body}"
        );
    }
    let (status, _) = common::get_json(&server, &manager, "/api/v1/dashboards/nope").await;
    assert_eq!(status, 404);
}
