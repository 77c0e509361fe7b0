//! The metrics views over a served project: the shipped views plan against the live catalog and
//! answer the numbers the source holds; requests run as the caller's role (masking, the exact
//! cache, the query log); values from a request never become SQL; a broken view file is reported
//! by `sokana check` and the server, naming the file and the field, while the other views serve.

mod common;

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::America::New_York;
use common::Project;
use serde_json::Value;

/// The Sokana project with the shipped metrics views and one more, over a `phi` column, for the
/// masking check.
async fn project() -> Project {
    let project = common::sokana_project("").await;
    let dir = project.dir.path().join("queries/metrics");
    std::fs::create_dir_all(&dir).expect("metrics dir");
    for (name, text) in sokana::SOKANA_CORE_METRICS {
        std::fs::write(dir.join(name), text).expect("write view");
    }
    std::fs::write(
        dir.join("births.toml"),
        r#"label = "Births (test)"
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
"#,
    )
    .expect("write test view");
    project
}

fn source(project: &Project) -> rusqlite::Connection {
    rusqlite::Connection::open(project.sqlite_path()).expect("open source")
}

fn cents(value: &Value) -> i64 {
    (value.as_f64().expect("a number") * 100.0).round() as i64
}

fn cents_text(text: &str) -> i64 {
    let (units, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let negative = units.starts_with('-');
    let fraction = format!("{fraction:0<2}");
    let whole = units.trim_start_matches('-').parse::<i64>().expect("units") * 100
        + fraction[..2].parse::<i64>().expect("cents");
    if negative { -whole } else { whole }
}

/// Sums of `amount_column` per year (America/New_York) of `time_column`, from the source itself.
fn yearly_cents(project: &Project, table: &str, time_column: &str, amount_column: &str) -> BTreeMap<i32, i64> {
    let db = source(project);
    let mut statement = db
        .prepare(&format!(
            "SELECT {time_column}, CAST({amount_column} AS TEXT) FROM {table} WHERE {time_column} IS NOT NULL"
        ))
        .expect("prepare");
    let mut years = BTreeMap::new();
    let rows =
        statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))).expect("query");
    for row in rows {
        let (at, amount) = row.expect("row");
        let at = DateTime::parse_from_rfc3339(&at).expect("timestamp").with_timezone(&Utc);
        *years.entry(at.with_timezone(&New_York).year()).or_insert(0) += amount.as_deref().map(cents_text).unwrap_or(0);
    }
    years
}

fn by_year(answer: &Value, measure: &str) -> BTreeMap<i32, i64> {
    answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let year = row["period"].as_str().expect("period")[..4].parse().expect("year");
            (year, cents(&row[measure]))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_views_answer_the_sources_numbers_as_the_callers_role() {
    let project = project().await;
    let checked = project.cli().arg("check").output().expect("sokana check");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "sokana check: {out}{}", String::from_utf8_lossy(&checked.stderr));
    for (name, _) in sokana::SOKANA_CORE_METRICS {
        assert!(out.contains(&format!("queries/metrics/{name}")), "check did not list {name}: {out}");
    }

    let server = common::serve(&project);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let (status, list) = common::get_json(&server, &manager, "/api/v1/metrics").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["views"].as_array().expect("views").iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(names.contains(&"payments") && names.contains(&"clients"), "{names:?}");
    assert_eq!(list["problems"], serde_json::json!([]));

    // Collected and invoiced revenue per year equal the source's sums, to the cent.
    let (status, collected) =
        common::get_json(&server, &manager, "/api/v1/metrics/payments?measures=collected&grain=year").await;
    assert_eq!(status, 200, "{collected}");
    assert_eq!(by_year(&collected, "collected"), yearly_cents(&project, "payments", "txn_date", "amount"));
    let (_, invoiced) =
        common::get_json(&server, &manager, "/api/v1/metrics/invoices?measures=invoiced&grain=year").await;
    assert_eq!(by_year(&invoiced, "invoiced"), yearly_cents(&project, "phi_invoices", "created_at", "total_amount"));

    // One calendar year, compared with the year before: the same figures as the yearly series.
    let years = by_year(&collected, "collected");
    let (&last_full, _) = years.iter().rev().nth(1).expect("two years of payments");
    let (status, year) = common::get_json(
        &server,
        &manager,
        &format!(
            "/api/v1/metrics/payments?measures=collected,payments&from={last_full}-01-01&to={}-01-01&compare=previous",
            last_full + 1
        ),
    )
    .await;
    assert_eq!(status, 200, "{year}");
    assert_eq!(cents(&year["rows"][0]["collected"]), years[&last_full]);
    assert_eq!(cents(&year["previous"]["rows"][0]["collected"]), years[&(last_full - 1)]);
    assert!(year["rows"][0]["payments"].is_u64(), "counts are whole numbers: {year}");
    assert_eq!(year["previous"]["from"], format!("{}-01-01", last_full - 1));

    // Active clients: the source's clients whose status, normalised, is active.
    let active: i64 = source(&project)
        .query_row("SELECT count(*) FROM phi_clients WHERE lower(trim(status)) = 'active'", [], |r| r.get(0))
        .expect("count");
    let (_, now) = common::get_json(&server, &manager, "/api/v1/metrics/client_status?measures=active_clients").await;
    assert_eq!(now["rows"][0]["active_clients"].as_i64(), Some(active), "{now}");

    // Asked again, the answer comes from the exact cache; the query log keeps no value of the request.
    let again = "/api/v1/metrics/payments?measures=collected&grain=year";
    let (_, second) = common::get_json(&server, &manager, again).await;
    assert_eq!(second["cache_hit"], true, "{second}");
    assert!(!second["sql"].as_str().expect("sql").contains(&last_full.to_string()));

    // Masking applies: a manager sees no phi, so the phi dimension is one NULL group; an admin sees it.
    let (_, masked) =
        common::get_json(&server, &manager, "/api/v1/metrics/births?measures=clients&dimensions=birth_location").await;
    let rows = masked["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{masked}");
    assert!(rows[0].get("birth_location").is_none_or(Value::is_null), "{masked}");
    let admin = common::api_key(&project, sokana::auth::Role::Admin).await;
    let (_, clear) =
        common::get_json(&server, &admin, "/api/v1/metrics/births?measures=clients&dimensions=birth_location").await;
    assert!(clear["rows"].as_array().expect("rows").len() > 1, "{clear}");

    // Every role may ask; a viewer's key answers too.
    let viewer = common::api_key(&project, sokana::auth::Role::Viewer).await;
    let (status, _) = common::get_json(&server, &viewer, "/api/v1/metrics/payments?measures=collected").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_and_bad_files_are_named_and_injection_goes_nowhere() {
    let project = project().await;
    let dir = project.dir.path().join("queries/metrics");
    std::fs::write(dir.join("broken.toml"), "label = \"Broken\"\ntable = \n").expect("write");
    std::fs::write(
        dir.join("wrong_column.toml"),
        "label = \"Wrong\"\ntable = \"marts.fct_payments\"\ntime = \"txn_date\"\n\
         [[measures]]\nname = \"collected\"\nlabel = \"C\"\nsql = \"sum(amount_usd)\"\nformat = \"usd\"\n",
    )
    .expect("write");
    let checked = project.cli().arg("check").output().expect("sokana check");
    let out = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success());
    assert!(out.contains("broken.toml:2:"), "{out}");
    assert!(out.contains("wrong_column.toml: measure collected:") && out.contains("amount_usd"), "{out}");

    let server = common::serve(&project);
    let manager = common::api_key(&project, sokana::auth::Role::Manager).await;
    let (_, list) = common::get_json(&server, &manager, "/api/v1/metrics").await;
    let problems = list["problems"].as_array().expect("problems");
    assert!(problems.iter().any(|p| p.as_str().is_some_and(|p| p.contains("broken.toml:2"))), "{list}");
    let (status, _) = common::get_json(&server, &manager, "/api/v1/metrics/payments?measures=collected").await;
    assert_eq!(status, 200, "the other views keep working");

    for (query, parameter) in [
        ("payments?measures=collected;DROP TABLE x", "measures"),
        ("payments?measures=collected&dimensions=amount", "dimensions"),
        ("payments?measures=collected&grain=month'--", "grain"),
        ("payments?measures=collected&from=2026-01-01'&to=2026-02-01", "from"),
        ("payments?measures=collected&limit=1e9", "limit"),
        ("payments?measures=collected&order=collected%20DESC%3B", "order"),
        ("payments?measures=collected&filter.method)%20OR%20(1=1=x", "filter.method) OR (1"),
        ("client_status?measures=active_clients&grain=month", "grain"),
    ] {
        let (status, body) = common::get_json(&server, &manager, &format!("/api/v1/metrics/{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "parameter", "{query}: {body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| m.starts_with(&format!("parameter {parameter}:"))),
            "{query}: {body}"
        );
    }
    // A filter value is a value: quotes and SQL in it match nothing and run nothing.
    let (status, body) = common::get_json(
        &server,
        &manager,
        "/api/v1/metrics/payments?measures=payments&filter.method=card'%20OR%20'1'='1",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["payments"], 0, "{body}");
    let (status, body) = common::get_json(&server, &manager, "/api/v1/metrics/nope?measures=x").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = common::get_json(&server, &manager, "/api/v1/metrics/wrong_column?measures=collected").await;
    assert_eq!(status, 400, "a view whose SQL fails answers as a query mistake: {body}");
}
