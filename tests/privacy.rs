//! Privacy requests end to end: one client's export, their erasure from the command line and over
//! HTTP (raw tables, marts, every file of every older version, the result cache), the audit
//! records of both, and later loads that keep the erased client out of a source that still has them.

mod common;

use common::{JsonRequest, JsonResponse};

use std::path::Path;

use serde_json::{Value, json};
use sokana::auth::{Auth, Role};

/// Clients with rows in the most tables, most rows first: (id, e-mail).
async fn busy_clients(config: &sokana::config::Config) -> Vec<(String, String)> {
    let ctx = sokana::query::unmasked_session(&sokana::pipeline::warehouse(config).expect("warehouse"))
        .await
        .expect("session");
    let sql = "SELECT c.id, c.email FROM raw.phi_clients c \
               JOIN raw.phi_contracts k ON k.client_id = c.id \
               JOIN raw.hours h ON h.client_id = c.id \
               JOIN raw.client_activities a ON a.client_id = c.id \
               GROUP BY c.id, c.email ORDER BY count(*) DESC, c.id LIMIT 2";
    let batches = sokana::query::run(&ctx, sql).await.expect("query");
    let csv = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).expect("csv");
    csv.lines()
        .skip(1)
        .map(|l| {
            let (id, email) = l.split_once(',').expect("two columns");
            (id.to_string(), email.to_string())
        })
        .collect()
}

/// Rows of each raw table that belong to `client` (directly or through a contract or schedule).
async fn rows_of(config: &sokana::config::Config, client: &str) -> Vec<(String, i64)> {
    let k = format!("(SELECT id FROM raw.phi_contracts WHERE client_id = '{client}')");
    let s = format!("(SELECT id FROM raw.payment_schedules WHERE contract_id IN {k})");
    let mut out = Vec::new();
    for (table, condition) in [
        ("phi_clients", format!("id = '{client}'")),
        ("hours", format!("client_id = '{client}'")),
        ("client_activities", format!("client_id = '{client}'")),
        ("doula_assignments", format!("client_id = '{client}'")),
        ("phi_contracts", format!("client_id = '{client}'")),
        ("phi_invoices", format!("client_id = '{client}'")),
        ("payment_schedules", format!("contract_id IN {k}")),
        ("payment_installments", format!("schedule_id IN {s}")),
    ] {
        let n = common::warehouse_count(config, &format!("SELECT count(*) FROM raw.{table} WHERE {condition}")).await;
        out.push((format!("raw.{table}"), n));
    }
    out
}

/// Every file under `dir` that mentions `needle`: log entries as text, Parquet files (data and
/// checkpoints) decoded, whichever version they belong to.
fn files_mentioning(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for path in common::files_under(dir) {
        let text = if path.extension().is_some_and(|e| e == "parquet") {
            let file = std::fs::File::open(&path).expect("open");
            let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .expect("parquet")
                .build()
                .expect("reader");
            let batches: Vec<_> = reader.map(|b| b.expect("batch")).collect();
            datafusion::arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
        } else {
            String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned()
        };
        if text.contains(needle) {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_is_exported_then_erased_everywhere_and_stays_out() {
    let project = common::sokana_project("").await;
    let config = project.config();
    let clients = busy_clients(&config).await;
    let [(by_cli, email), (by_api, _)] = &clients[..] else { panic!("two busy clients: {clients:?}") };
    let before = rows_of(&config, by_cli).await;
    assert!(before.iter().filter(|(_, n)| *n > 0).count() >= 4, "a client with rows in several tables: {before:?}");

    // Export: every row the warehouse holds about them, and the marts that carry their pseudonym.
    let out = project.dir.path().join("export.json");
    let status = project.cli().args(["privacy", "export", "--client", by_cli, "--output"]).arg(&out).status();
    assert!(status.expect("export").success());
    let export: Value = serde_json::from_slice(&std::fs::read(&out).expect("export file")).expect("json");
    for (table, n) in &before {
        let exported = export["tables"][table].as_array().map_or(0, |rows| rows.len() as i64);
        assert_eq!(exported, *n, "{table} in the export");
    }
    assert_eq!(export["tables"]["raw.phi_clients"][0]["email"], json!(email));
    let dim = export["tables"]["marts.dim_clients"].as_array().expect("the client's row of marts.dim_clients");
    assert_eq!(dim.len(), 1);
    let pseudonym = dim[0]["client_key"].as_str().expect("client_key").to_string();
    let clients_in_dim = common::warehouse_count(&config, "SELECT count(*) FROM marts.dim_clients").await;

    let warehouse = project.dir.path().join("warehouse");
    assert!(!files_mentioning(&warehouse, email).is_empty(), "the search finds the e-mail before the erasure");

    // Erase from the command line.
    let output = project.cli().args(["privacy", "erase", "--client", by_cli]).output().expect("erase");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let erasure: Value = serde_json::from_slice(&output.stdout).expect("erasure json");
    for (table, n) in &before {
        assert_eq!(erasure["deleted"][table].as_i64().unwrap_or(0), *n, "{table} deleted");
    }
    assert_eq!(erasure["left_in_marts"], 0);
    assert!(erasure["rebuilt"].as_array().is_some_and(|m| m.iter().any(|t| t == "marts.dim_clients")));
    assert_eq!(erasure["source_still_holds"], true, "the SQLite source still has the client");
    assert!(String::from_utf8_lossy(&output.stderr).contains("erase them at the source too"));

    assert!(rows_of(&config, by_cli).await.iter().all(|(_, n)| *n == 0), "no raw row left");
    // Erasing again finds nothing to delete, and still finishes the tables the first one touched
    // (as it would after a crash between the deletes and cutting the history).
    let again = project.cli().args(["privacy", "erase", "--client", by_cli]).output().expect("erase again");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let again: Value = serde_json::from_slice(&again.stdout).expect("erasure json");
    assert_eq!(again["deleted"], json!({}));
    assert!(again["rebuilt"].as_array().is_some_and(|m| m.iter().any(|t| t == "marts.dim_clients")), "{again}");
    let dim_after = common::warehouse_count(&config, "SELECT count(*) FROM marts.dim_clients").await;
    assert_eq!(dim_after, clients_in_dim - 1);
    for needle in [by_cli.as_str(), email.as_str(), pseudonym.as_str()] {
        let files = files_mentioning(&warehouse, needle);
        assert!(files.is_empty(), "still in the warehouse's files: {files:?}");
    }

    // Both requests are in the audit trail, which still verifies.
    let list = project.cli().args(["audit", "list", "--limit", "1000"]).output().expect("audit list");
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.contains("\"privacy.export\"") && list.contains("\"privacy.erase\""), "{list}");
    assert!(!list.contains(email.as_str()), "the audit trail holds no personal data");
    assert!(project.cli().args(["pipeline", "run", "sokana_audit"]).status().expect("copy").success());
    assert!(project.cli().args(["audit", "verify"]).status().expect("verify").success());

    // The source changes the erased client again: the next load keeps them out, and says so.
    let db = rusqlite::Connection::open(project.sqlite_path()).expect("sqlite");
    let later = "2090-01-01T00:00:00.000000Z";
    db.execute("UPDATE phi_clients SET updated_at = ?1 WHERE id = ?2", rusqlite::params![later, by_cli])
        .expect("update");
    db.execute("UPDATE hours SET updated_at = ?1 WHERE client_id = ?2", rusqlite::params![later, by_cli])
        .expect("update");
    let summary = project.run().await.expect("next load");
    let withheld = |target: &str| summary.tables.iter().find(|t| t.target == target).map_or(0, |t| t.withheld);
    assert_eq!(withheld("raw.phi_clients"), 1);
    assert!(withheld("raw.hours") > 0 && withheld("raw.client_activities") > 0, "{summary:?}");
    assert!(rows_of(&config, by_cli).await.iter().all(|(_, n)| *n == 0), "nothing came back");
    let runs = project.cli().args(["pipeline", "runs"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&runs.stdout).contains("withheld (erased people)"));

    // Over HTTP, as an administrator: the server's cached answers about the client go too.
    let auth = Auth::open(&config).await.expect("auth");
    auth.ensure_admin("privacy-test-password").await.expect("admin");
    let admin = auth.create_api_key("privacy", Role::Admin, 1, "admin").await.expect("key").key;
    auth.add_user("ana", Role::Analyst, "privacy-test-password").await.expect("analyst");
    let analyst = auth.create_api_key("ana", Role::Analyst, 1, "ana").await.expect("key").key;
    drop(auth);
    let server = common::serve(&project);
    let http_port = server.http;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}/api/v1");
    let count_hours = || {
        let sql = format!("SELECT count(*) AS n FROM raw.hours WHERE client_id = '{by_api}'");
        let request = http.post(format!("{base}/query")).bearer_auth(&admin).json(&json!({ "sql": sql }));
        async move {
            let response = request.send().await.expect("query");
            let cache = response.headers().get("x-cache").map(|v| v.to_str().unwrap_or("").to_string());
            let body: Value = response.json().await.expect("json");
            (body["rows"][0]["n"].as_i64().expect("n"), cache.unwrap_or_default())
        }
    };
    let (hours, _) = count_hours().await;
    assert!(hours > 0);
    assert_eq!(count_hours().await, (hours, "hit".to_string()), "the answer is cached");
    let refused = http
        .post(format!("{base}/privacy/erase"))
        .bearer_auth(&analyst)
        .json(&json!({ "client": by_api }))
        .send()
        .await
        .expect("erase as analyst");
    assert_eq!(refused.status(), 403);
    let erased =
        http.post(format!("{base}/privacy/erase")).bearer_auth(&admin).json(&json!({ "client": by_api })).send().await;
    let erased = erased.expect("erase");
    assert_eq!(erased.status(), 200);
    let erased: Value = erased.json().await.expect("json");
    assert_eq!(erased["deleted"]["raw.hours"].as_i64(), Some(hours));
    assert_eq!(count_hours().await, (0, "miss".to_string()), "no stale answer after the erasure");
}
