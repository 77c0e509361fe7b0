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
/// `phi` column; `server` is added to its `[server]` table.
async fn project_with(server: &str) -> Project {
    let project = common::sokana_project_with_dashboards(server).await;
    let root = project.dir.path();
    std::fs::write(root.join("queries/metrics/births.toml"), BIRTHS_VIEW).expect("view");
    std::fs::write(root.join("dashboards/births.toml"), BIRTHS_DASHBOARD).expect("dashboard");
    project
}

async fn project() -> Project {
    project_with("").await
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
    // The SQL behind the panel, its values written in, gives the same number in the console.
    let (status, kind, sql) = common::get_bytes(
        &server,
        &manager,
        "/api/v1/dashboards/executive/panels/collected.sql?period=2026-03-01..2026-04-01",
    )
    .await;
    assert_eq!((status, kind.as_str()), (200, "application/sql; charset=utf-8"));
    let sql = String::from_utf8(sql).expect("utf-8");
    assert!(sql.contains("2026-03-01") && !sql.contains('$'), "{sql}");
    let first = sql.split(";\n").next().expect("a statement");
    let base_url = format!("http://127.0.0.1:{}", server.http);
    let body = serde_json::json!({ "sql": first }).to_string();
    let ran = common::post_json(&base_url, &manager, "/api/v1/query", &body).await;
    assert_eq!(ran.status(), 200);
    let ran: Value = serde_json::from_slice(&ran.bytes().await.expect("body")).expect("json");
    assert_eq!(ran["rows"][0]["collected"], metric["rows"][0]["collected"], "{sql}");

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
    let viewer = common::api_key(&project, sokana::auth::Role::Viewer).await;
    let (status, _, _) = common::get_bytes(&server, &viewer, "/api/v1/dashboards/executive/panels/collected.sql").await;
    assert_eq!(status, 403, "a viewer may not run SQL, nor see it");
    let admin = common::api_key(&project, sokana::auth::Role::Admin).await;
    let births = "/api/v1/dashboards/births/panels/locations.csv";
    let (_, _, clear) = common::get_bytes(&server, &admin, births).await;
    let (_, _, masked) = common::get_bytes(&server, &manager, births).await;
    let lines = |csv: &[u8]| String::from_utf8_lossy(csv).lines().count();
    assert!(lines(&clear) > 2, "the admin sees the birth locations");
    assert_eq!(lines(&masked), 2, "a manager sees one masked group: {}", String::from_utf8_lossy(&masked));
    // Kept answers are kept per role: each reader is served their own again.
    assert_eq!(common::get_bytes(&server, &manager, births).await.2, masked);
    assert_eq!(common::get_bytes(&server, &admin, births).await.2, clear);

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

/// A new payment in the source, loaded by a pipeline run: new versions of `raw.payments` and of
/// the models over it.
pub fn commit_a_payment(project: &Project) {
    let db = rusqlite::Connection::open(project.sqlite_path()).expect("source");
    db.execute(
        "INSERT INTO payments (id, txn_date, amount, method, gateway, transaction_id, description) \
         SELECT max(id) + 1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 1000, 'card', 'stripe', 'live-test', 'live refresh' FROM payments",
        [],
    )
    .expect("insert a payment");
    let run = project.cli().args(["pipeline", "run", "--all"]).output().expect("sokana pipeline run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

/// The next `versions` event of a server-sent event stream, as table → version.
async fn next_versions(events: &mut reqwest::Response, buffer: &mut String) -> std::collections::BTreeMap<String, i64> {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                && event.lines().any(|l| l == "event: versions")
            {
                return serde_json::from_str(data).expect("versions are JSON");
            }
            continue;
        }
        let chunk = events.chunk().await.expect("the event stream").expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_rows_embed_links_and_live_events() {
    let project = project_with("embed_origins = [\"http://embedder.test\"]").await;
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    let password = "web-test-password-0123";
    auth.add_user("mona", sokana::auth::Role::Manager, password).await.expect("manager");
    let server = common::serve(&project);
    let base = format!("http://127.0.0.1:{}", server.http);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");

    // Pages send a reader who is not signed in to the sign-in page; the API still answers 401.
    let response = http.get(format!("{base}/dashboards/executive?period=last_30_days")).send().await.expect("page");
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/login?next=%2Fdashboards%2Fexecutive%3Fperiod%3Dlast_30_days");
    assert_eq!(http.get(format!("{base}/api/v1/dashboards")).send().await.expect("api").status(), 401);
    let login = http.get(format!("{base}/login")).send().await.expect("login page");
    let policy = login.headers()["content-security-policy"].to_str().expect("policy").to_string();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = login.text().await.expect("html");
    let script = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("a script");
    let asset = http.get(format!("{base}{script}")).send().await.expect("asset");
    assert_eq!(asset.status(), 200);
    assert!(asset.headers()["cache-control"].to_str().is_ok_and(|c| c.contains("immutable")));
    assert_eq!(http.get(format!("{base}/assets/app.0000.js")).send().await.expect("asset").status(), 404);

    // Signed in by cookie: the pages for the role, and none beyond it.
    let signed_in = http
        .post(format!("{base}/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "username": "mona", "password": password }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(signed_in.status(), 200);
    let cookie: String = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|c| c.to_str().ok()?.split(';').next().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ");
    let page = |path: &str| http.get(format!("{base}{path}")).header("cookie", cookie.clone()).send();
    let list = page("/dashboards").await.expect("list");
    assert_eq!(list.status(), 200);
    let list = list.text().await.expect("html");
    assert!(list.contains("Executive overview") && list.contains("href=\"/dashboards/revenue\""), "{list}");
    let executive =
        page("/dashboards/executive?period=last_90_days").await.expect("dashboard").text().await.expect("html");
    assert!(
        executive.contains("data-panel=\"collected\"")
            && executive.contains("<option value=\"last_90_days\" selected>")
    );
    let bad_filter = page("/dashboards/revenue?method=bitcoin").await.expect("bad filter").text().await.expect("html");
    assert!(bad_filter.contains("filter method:") && bad_filter.contains("back to their defaults"), "{bad_filter}");

    // The rows behind a number, as the reader's role sees them: a manager sees no phi.
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let admin = common::api_key(&project, sokana::auth::Role::Admin).await;
    let rows_path = "/api/v1/dashboards/births/panels/locations/rows?x=home";
    let (status, rows) = common::get_json(&server, &admin, rows_path).await;
    assert_eq!(status, 200, "{rows}");
    let located: Vec<&Value> = rows["rows"].as_array().expect("rows").iter().collect();
    assert!(!located.is_empty() && located.iter().all(|r| r["birth_location"] == "home"), "{rows}");
    let (status, masked) = common::get_json(&server, &manager, "/api/v1/dashboards/births/panels/locations/rows").await;
    assert_eq!(status, 200, "{masked}");
    assert!(masked["rows"].as_array().expect("rows").iter().all(|r| r["birth_location"].is_null()), "{masked}");
    let (status, march) = common::get_json(
        &server,
        &manager,
        "/api/v1/dashboards/executive/panels/revenue_by_month/rows?period=all_time&x=2026-03-01",
    )
    .await;
    assert_eq!(status, 200, "{march}");
    assert!(march["rows"].as_array().expect("rows").iter().all(|r| r["month"] == "2026-03-01"), "{march}");
    let (status, sql_panel) =
        common::get_json(&server, &manager, "/api/v1/dashboards/executive/panels/revenue_by_month/rows?x=March").await;
    assert_eq!(status, 400, "{sql_panel}");

    // The system tables (the run log, the tables' freshness) are for roles that may view pipelines.
    let system_sql = r#"{"sql": "SELECT count(*) AS runs FROM system.pipeline_runs"}"#;
    let analyst = common::api_key(&project, sokana::auth::Role::Analyst).await;
    let billing = common::api_key(&project, sokana::auth::Role::Billing).await;
    for (role, key, expected) in [("billing", &billing, 403), ("analyst", &analyst, 200)] {
        let response = common::post_json(&base, key, "/api/v1/query", system_sql).await;
        assert_eq!(response.status(), expected, "{role}: {}", response.text().await.unwrap_or_default());
    }

    // A signed embed link opens its one dashboard in a frame of the allowed site, as its maker.
    let embed = |key: &str, body: Value| {
        let (base, key) = (base.clone(), key.to_string());
        async move { common::post_json(&base, &key, "/api/v1/dashboards/executive/embed", &body.to_string()).await }
    };
    let made =
        embed(&manager, serde_json::json!({ "filters": { "period": "last_90_days" }, "lifetime_seconds": 600 })).await;
    assert_eq!(made.status(), 201);
    let made: Value = serde_json::from_slice(&made.bytes().await.expect("body")).expect("json");
    let url = made["url"].as_str().expect("url").to_string();
    let token = url.rsplit('/').next().expect("token").to_string();
    let framed = http.get(&url).send().await.expect("embed page");
    assert_eq!(framed.status(), 200);
    assert!(framed.headers().get("x-frame-options").is_none());
    let policy = framed.headers()["content-security-policy"].to_str().expect("policy").to_string();
    assert!(policy.contains("frame-ancestors http://embedder.test"), "{policy}");
    assert!(framed.text().await.expect("html").contains(&format!("data-base=\"/embed/{token}\"")));
    let svg = http.get(format!("{url}/panels/collected.svg?period=all_time")).send().await.expect("panel");
    assert_eq!(svg.status(), 200);
    assert!(svg.headers()["x-sokana-tables"].to_str().is_ok_and(|t| t.contains("marts.fct_payments@")));
    for (path, why) in [
        (format!("{base}/embed/{}x", token), "an altered link"),
        (format!("{base}/embed/{token}/panels/nope.svg"), "a panel the dashboard lacks"),
    ] {
        let status = http.get(&path).send().await.expect("embed").status();
        assert!(status == 401 || status == 404, "{why}: {status}");
    }
    let elsewhere =
        http.get(format!("{base}/api/v1/dashboards")).header("authorization", format!("Bearer {token}")).send().await;
    assert_eq!(elsewhere.expect("api").status(), 401, "an embed link opens no other route");
    for (body, why) in [
        (serde_json::json!({ "filters": { "nope": "x" } }), "an unknown filter"),
        (serde_json::json!({ "filters": { "period": "forever" } }), "a bad value"),
        (serde_json::json!({ "lifetime_seconds": 0 }), "no lifetime"),
        (serde_json::json!({ "lifetime_seconds": 86_400 * 30 }), "more than a week"),
    ] {
        assert_eq!(embed(&manager, body).await.status(), 400, "{why}");
    }
    let (_, audit) = common::get_json(&server, &admin, "/api/v1/audit?user=test-manager&limit=10000").await;
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"embed link") && actions.contains(&"view embed"), "embed links are audited: {actions:?}");
    // A link never shows more than its maker may see now: not at all once they are disabled.
    auth.set_disabled("test-manager", true).await.expect("disable");
    assert_eq!(http.get(&url).send().await.expect("embed").status(), 401);

    // Live refresh: the versions of the tables, then each change as it is committed.
    let mut events = http
        .get(format!("{base}/api/v1/events/tables"))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let before = next_versions(&mut events, &mut buffer).await;
    let payments = before.get("marts.fct_payments").copied().expect("fct_payments is listed");
    // A dashboard's whole answer is kept while its tables stand still, and made afresh after.
    let executive = |round: &'static str| {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        async move {
            let response = http
                .get(format!("{base}/api/v1/dashboards/executive?period=all_time"))
                .header("authorization", format!("Bearer {admin}"))
                .send()
                .await
                .expect(round);
            assert_eq!(response.status(), 200, "{round}");
            let cache = response.headers()["x-sokana-cache"].to_str().expect("cache header").to_string();
            let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
            let collected = panel(&body, "collected")["data"]["frame"]["rows"][0][0].as_f64().expect("collected");
            (cache, collected)
        }
    };
    let (_, collected) = executive("first").await;
    assert_eq!(executive("again").await, ("hit".to_string(), collected), "the same answer, kept");
    // Readers arriving together (live refresh redraws every open page at once) make it once.
    let together = (0..20).map(|_| {
        http.get(format!("{base}/api/v1/dashboards/executive?period=2026-02-01..2026-03-01"))
            .header("authorization", format!("Bearer {admin}"))
            .send()
    });
    let caches: Vec<String> = futures::future::join_all(together)
        .await
        .into_iter()
        .map(|r| r.expect("together").headers()["x-sokana-cache"].to_str().expect("header").to_string())
        .collect();
    assert_eq!(caches.iter().filter(|c| *c == "miss").count(), 1, "{caches:?}");
    // Kept compressed too: a client that takes gzip gets the same answer gzipped.
    let gzipped = http
        .get(format!("{base}/api/v1/dashboards/executive?period=all_time"))
        .header("authorization", format!("Bearer {admin}"))
        .header("accept-encoding", "br;q=0, gzip")
        .send()
        .await
        .expect("gzip");
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let mut text = String::new();
    let body = gzipped.bytes().await.expect("body");
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).expect("gunzip");
    let unzipped: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(panel(&unzipped, "collected")["data"]["frame"]["rows"][0][0].as_f64(), Some(collected));
    let (_, audit) = common::get_json(&server, &admin, "/api/v1/audit?user=test-admin&limit=10000").await;
    let kept =
        audit["entries"].as_array().expect("entries").iter().rev().find(|e| e["detail"] == "dashboard executive");
    let kept = kept.expect("a hit is audited as one record naming the dashboard");
    let tables = kept["tables"].to_string();
    assert!(
        tables.contains("marts.fct_payments") && kept["columns"].as_array().is_some_and(|c| !c.is_empty()),
        "{kept}"
    );
    commit_a_payment(&project);
    let after = loop {
        let versions = next_versions(&mut events, &mut buffer).await;
        if versions.contains_key("marts.fct_payments") {
            break versions;
        }
    };
    assert!(after["marts.fct_payments"] > payments, "{before:?} → {after:?}");
    let (cache, now) = executive("after a commit").await;
    assert_eq!((cache.as_str(), now), ("miss", collected + 1000.0), "made afresh over the new version");

    // The run log in SQL lists the administrators' tables (the audit trail's copy) to admins only.
    let audit_loads =
        r#"{"sql": "SELECT count(*) AS loads FROM system.table_loads WHERE \"table\" = 'raw.sokana_audit'"}"#;
    let mut counts = Vec::new();
    for key in [&admin, &analyst] {
        let response = common::post_json(&base, key, "/api/v1/query", audit_loads).await;
        let body: Value = serde_json::from_slice(&response.bytes().await.expect("body")).expect("json");
        counts.push(body["rows"][0]["loads"].as_i64().expect("a count"));
    }
    assert!(counts[0] > 0 && counts[1] == 0, "admin, analyst: {counts:?}");
}

/// The browser test's script and its packages (installed by `tests/run`).
fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboards_in_a_browser() {
    use std::io::BufRead;
    // Another origin on loopback (the script answers it; nothing listens): Chromium refuses
    // frames of a loopback page inside a page it takes for a public one.
    let embedder = format!("http://localhost:{}", common::free_port());
    let project = project_with(&format!("embed_origins = [\"{embedder}\"]")).await;
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    let password = "browser-test-password-0123";
    auth.add_user("mona", sokana::auth::Role::Manager, password).await.expect("manager");
    let server = common::serve(&project);
    let base = format!("http://127.0.0.1:{}", server.http);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let made = common::post_json(
        &base,
        &manager,
        "/api/v1/dashboards/executive/embed",
        r#"{"filters": {"period": "all_time"}}"#,
    )
    .await;
    let made: Value = serde_json::from_slice(&made.bytes().await.expect("body")).expect("json");
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "tests/run installs the browser test's packages (npm ci in tests/browser)"
    );

    let ids = ["executive", "client_pipeline", "revenue", "doula_team", "data_health"];
    let mut node = std::process::Command::new("node")
        .arg(dir.join("dashboards.mjs"))
        .current_dir(&dir)
        .env("BASE", &base)
        .env("USERNAME", "mona")
        .env("PASSWORD", password)
        .env("DASHBOARDS", ids.join(","))
        .env("EMBED_URL", made["url"].as_str().expect("an embed url"))
        .env("EMBEDDER", &embedder)
        .env("ARTIFACTS", &artifacts)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node (the test command installs Node.js packages; Node.js is on the machine)");
    let stdout = node.stdout.take().expect("piped stdout");
    let mut result = None;
    for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
        if line == "COMMIT" {
            commit_a_payment(&project);
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<Value>(json).expect("the result is JSON"));
        } else {
            eprintln!("{line}");
        }
    }
    assert!(node.wait().expect("node").success(), "the browser script failed (its error is above)");
    let result = result.expect("a RESULT line");
    eprintln!("browser result: {result:#}");

    assert!(result["loginUrl"].as_str().is_some_and(|u| u.contains("/login?next=")), "{result}");
    assert_eq!(result["consoleErrors"], serde_json::json!([]), "no console errors");
    assert_eq!(result["offsite"], serde_json::json!([]), "no request to another host");
    for id in ids {
        let page = &result["pages"][id];
        assert!(page["panels"].as_u64().is_some_and(|n| n > 0), "{id}: {page}");
        assert_eq!(page["charts"], page["panels"], "{id}: every panel drew its chart: {page}");
        assert!(page["marks"].as_u64().is_some_and(|n| n > 0), "{id}: {page}");
    }
    for (page, violations) in result["axe"].as_object().expect("axe results") {
        let serious: Vec<&Value> = violations
            .as_array()
            .expect("violations")
            .iter()
            .filter(|v| v["impact"] == "serious" || v["impact"] == "critical")
            .collect();
        assert!(serious.is_empty(), "{page}: serious or critical accessibility violations: {serious:?}");
    }

    // The KPI after the filter change equals the source's own sum over March 2026 in New York.
    let db = rusqlite::Connection::open(project.sqlite_path()).expect("source");
    let march: f64 = db
        .query_row(
            "SELECT sum(CAST(amount AS REAL)) FROM payments \
             WHERE datetime(txn_date) >= '2026-03-01 05:00:00' AND datetime(txn_date) < '2026-04-01 04:00:00'",
            [],
            |r| r.get(0),
        )
        .expect("March");
    let shown: f64 = result["collectedInMarch"].as_str().and_then(|v| v.parse().ok()).expect("the KPI's value");
    assert!((shown - march).abs() < 0.01, "the KPI shows {shown}, the source gives {march}");
    assert!(result["tooltip"].as_str().is_some_and(|t| t.contains('$')), "{result}");
    assert!(result["rowsShown"].as_u64().is_some_and(|n| n > 0), "{result}");
    let source = result["drill"]["source"].as_str().expect("a source clicked");
    let encoded: String = url::form_urlencoded::byte_serialize(source.as_bytes()).collect();
    assert!(
        result["drill"]["url"].as_str().is_some_and(|u| u.contains(&format!("referral_source={encoded}"))),
        "{result}"
    );
    let live = &result["live"];
    assert_eq!(live["reloaded"], false, "{live}");
    assert!(live["updated"].as_array().is_some_and(|u| u.iter().any(|p| p == "collected")), "{live}");
    let (before, after): (f64, f64) = (
        live["before"].as_str().and_then(|v| v.parse().ok()).expect("before"),
        live["after"].as_str().and_then(|v| v.parse().ok()).expect("after"),
    );
    assert!((after - before - 1000.0).abs() < 0.01, "the new payment of 1000 shows: {before} → {after}");
    assert_eq!(result["embed"]["charts"], result["embed"]["panels"], "{result}");
    assert_eq!(result["embed"]["filters"], 0, "an embed link's filters are locked: {result}");
}
