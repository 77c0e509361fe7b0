//! SQL models: the shipped Sokana marts checked against figures computed independently from the
//! source (in Rust, from the SQLite file), and the failure cases: a model failing at run time, a
//! model changing its columns.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::America::New_York;
use common::{Project, seed, silent};
use hmac::{KeyInit, Mac};
use sokana::config::Config;
use sokana::pipeline;

const KEY: &str = "test-pseudonym-key-0123456789";

/// A project over a seeded SQLite source with the shipped models (or `models`, if given).
async fn project(scale: f64, models: Option<&[(&str, &str)]>) -> Project {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), scale).await;
    match models {
        Some(models) => {
            project.add_core_models(KEY);
            let dir = project.dir.path().join("pipelines/models");
            for entry in std::fs::read_dir(&dir).expect("models") {
                std::fs::remove_file(entry.expect("entry").path()).expect("remove shipped model");
            }
            for (name, sql) in models {
                std::fs::write(dir.join(format!("{name}.sql")), sql).expect("write model");
            }
        }
        None => project.add_core_models(KEY),
    }
    project
}

/// Query results as rows of strings (CSV rendering of the warehouse's values).
async fn rows(config: &Config, sql: &str) -> Vec<Vec<String>> {
    let ctx = sokana::query::unmasked_session(&pipeline::warehouse(config).expect("warehouse")).await.expect("session");
    let batches = sokana::query::run(&ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let csv = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).expect("csv");
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(csv.as_bytes());
    reader.records().map(|r| r.expect("csv row").iter().map(str::to_string).collect()).collect()
}

fn source(project: &Project) -> rusqlite::Connection {
    rusqlite::Connection::open(project.sqlite_path()).expect("open source")
}

fn ts(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}")).with_timezone(&Utc)
}

fn cents(text: &str) -> i64 {
    let (units, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let fraction = format!("{fraction:0<2}");
    units.parse::<i64>().expect("units") * 100 + fraction[..2].parse::<i64>().expect("cents")
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn ny_month(at: DateTime<Utc>) -> String {
    let local = at.with_timezone(&New_York);
    format!("{:04}-{:02}-01", local.year(), local.month())
}

fn ny_today() -> NaiveDate {
    Utc::now().with_timezone(&New_York).date_naive()
}

fn pseudonym(value: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).expect("key");
    mac.update(value.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

fn query_map<T>(conn: &rusqlite::Connection, sql: &str, f: impl Fn(&rusqlite::Row) -> rusqlite::Result<T>) -> Vec<T> {
    let mut stmt = conn.prepare(sql).expect("prepare");
    stmt.query_map([], f).expect("query").map(|r| r.expect("row")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sokana_marts_match_independent_figures_from_the_source() {
    let project = project(0.3, None).await;
    let summary = project.run().await.expect("pipeline with models");
    let built: Vec<&str> =
        summary.tables.iter().filter(|t| t.target.starts_with("marts.")).map(|t| t.target.as_str()).collect();
    assert_eq!(built.len(), sokana::SOKANA_CORE_MODELS.len(), "every model built: {built:?}");
    let config = project.config();
    let db = source(&project);

    // dim_clients: one row per client, keyed by the HMAC of the id, no personal columns.
    let clients: Vec<(String, String)> =
        query_map(&db, "SELECT id, lower(trim(status)) FROM phi_clients", |r| Ok((r.get(0)?, r.get(1)?)));
    let dim = rows(&config, "SELECT client_key, status FROM marts.dim_clients").await;
    assert_eq!(dim.len(), clients.len());
    let keys: BTreeMap<String, String> = dim.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    for (id, status) in &clients {
        let key = pseudonym(id);
        let got = keys.get(&key).unwrap_or_else(|| panic!("client key for a source client"));
        if !matches!(status.as_str(), "pending" | "customer") {
            assert_eq!(got, status);
        }
    }
    let columns = rows(
        &config,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'marts' AND table_name = 'dim_clients'",
    )
    .await;
    for personal in
        ["id", "client_number", "first_name", "email", "phone", "date_of_birth", "address_line1", "health_history"]
    {
        assert!(!columns.iter().any(|c| c[0] == personal), "dim_clients must not hold {personal}");
    }

    // mart_client_funnel: the current stages add up to all clients, per month and in total; the
    // months' clients and contacts match the source's creation months and status changes.
    let funnel = rows(
        &config,
        "SELECT CAST(intake_month AS VARCHAR), clients, reached_contacted, \
         now_lead + now_contacted + now_matched + now_interviewing + now_follow_up + now_contract + now_active \
         + now_complete + now_not_hired + now_other FROM marts.mart_client_funnel",
    )
    .await;
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let intake: Vec<(String, String, bool)> = query_map(
        &db,
        "SELECT c.id, c.created_at, EXISTS (SELECT 1 FROM client_activities a WHERE a.client_id = c.id \
         AND a.type = 'status_change' AND a.metadata LIKE '%\"to\":\"contacted\"%') FROM phi_clients c",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    for (_, created, contacted) in &intake {
        let entry = expected.entry(ny_month(ts(created))).or_default();
        entry.0 += 1;
        entry.1 += i64::from(*contacted);
    }
    assert_eq!(funnel.len(), expected.len());
    for row in &funnel {
        let (clients, contacted) = expected[&row[0]];
        assert_eq!((row[1].parse::<i64>().expect("n"), row[2].parse::<i64>().expect("n")), (clients, contacted));
        assert_eq!(row[3], row[1], "current stages add up to the month's clients in {}", row[0]);
    }

    // mart_revenue_monthly: collected by payment month equals the source's payments, cent for cent.
    let payments: Vec<(String, String)> =
        query_map(&db, "SELECT txn_date, printf('%.2f', amount) FROM payments", |r| Ok((r.get(0)?, r.get(1)?)));
    let mut collected: BTreeMap<String, i64> = BTreeMap::new();
    for (at, amount) in &payments {
        *collected.entry(ny_month(ts(at))).or_default() += cents(amount);
    }
    let mut invoiced: BTreeMap<String, i64> = BTreeMap::new();
    for (at, amount) in query_map(&db, "SELECT created_at, printf('%.2f', total_amount) FROM phi_invoices", |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    }) {
        *invoiced.entry(ny_month(ts(&at))).or_default() += cents(&amount);
    }
    let revenue = rows(
        &config,
        "SELECT CAST(month AS VARCHAR), CAST(invoiced AS VARCHAR), CAST(collected AS VARCHAR) \
         FROM marts.mart_revenue_monthly",
    )
    .await;
    for row in &revenue {
        assert_eq!(row[1], money(invoiced.get(&row[0]).copied().unwrap_or(0)), "invoiced in {}", row[0]);
        assert_eq!(row[2], money(collected.get(&row[0]).copied().unwrap_or(0)), "collected in {}", row[0]);
    }
    let total: i64 = payments.iter().map(|(_, a)| cents(a)).sum();
    let got = rows(&config, "SELECT CAST(sum(collected) AS VARCHAR) FROM marts.mart_revenue_monthly").await;
    assert_eq!(got[0][0], money(total));

    // mart_ar_aging: open invoice balances by days past due today (New York).
    let today = ny_today();
    let mut buckets: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (due, balance, status) in
        query_map(&db, "SELECT due_date, printf('%.2f', balance_amount), status FROM phi_invoices", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
    {
        let balance = cents(&balance);
        if balance <= 0 || status.trim().eq_ignore_ascii_case("paid") {
            continue;
        }
        let due: NaiveDate = due.parse().expect("date");
        let days = (today - due).num_days().max(0);
        let bucket = match days {
            0 => "current",
            1..=30 => "1-30",
            31..=60 => "31-60",
            61..=90 => "61-90",
            _ => "90+",
        };
        let entry = buckets.entry(bucket).or_default();
        entry.0 += 1;
        entry.1 += balance;
    }
    let aging = rows(
        &config,
        "SELECT bucket, invoices, CAST(balance AS VARCHAR) FROM marts.mart_ar_aging ORDER BY bucket_order",
    )
    .await;
    assert_eq!(aging.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["current", "1-30", "31-60", "61-90", "90+"]);
    for row in &aging {
        let (n, balance) = buckets.get(row[0].as_str()).copied().unwrap_or_default();
        assert_eq!((row[1].parse::<i64>().expect("n"), row[2].clone()), (n, money(balance)), "bucket {}", row[0]);
    }

    // mart_doula_utilization and fct_hours: hours per doula and month, in hours to the cent.
    let mut hours: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (doula, start, end) in query_map(&db, "SELECT doula_id, start_time, end_time FROM hours", |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
    }) {
        let (start, end) = (ts(&start), ts(&end));
        // Each shift rounds to 2 decimals of an hour, as fct_hours stores it.
        let hundredths = ((end - start).num_seconds() as f64 / 36.0).round() as i64;
        *hours.entry((pseudonym(&doula), ny_month(start))).or_default() += hundredths;
    }
    let utilization = rows(
        &config,
        "SELECT doula_key, CAST(month AS VARCHAR), CAST(hours AS VARCHAR) FROM marts.mart_doula_utilization",
    )
    .await;
    for row in &utilization {
        let expected = hours.get(&(row[0].clone(), row[1].clone())).copied().unwrap_or(0);
        assert_eq!(row[2], money(expected), "hours of a doula in {}", row[1]);
    }
    assert_eq!(
        utilization.iter().filter(|r| r[2] != "0.00").count(),
        hours.len(),
        "every doula-month with hours has a row"
    );

    // mart_referral_attribution: leads add up to clients, revenue to all payments.
    let referral =
        rows(&config, "SELECT sum(leads), CAST(sum(revenue) AS VARCHAR) FROM marts.mart_referral_attribution").await;
    assert_eq!(referral[0], [clients.len().to_string(), money(total)]);

    // fct_installments: days overdue as of today for unpaid, uncancelled installments past due.
    let mut overdue: BTreeMap<String, i64> = BTreeMap::new();
    for (id, due, status, paid) in
        query_map(&db, "SELECT id, due_date, status, paid_at FROM payment_installments", |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, Option<String>>(3)?))
        })
    {
        let due: NaiveDate = due.parse().expect("date");
        let open = paid.is_none() && !matches!(status.trim().to_lowercase().as_str(), "paid" | "cancelled");
        overdue.insert(id, if open && due < today { (today - due).num_days() } else { 0 });
    }
    let fct = rows(&config, "SELECT installment_id, days_overdue FROM marts.fct_installments").await;
    assert_eq!(fct.len(), overdue.len());
    for row in &fct {
        assert_eq!(row[1].parse::<i64>().expect("days"), overdue[&row[0]], "installment days overdue");
    }

    // fct_contracts: every contract, amounts to the cent.
    let contracts: Vec<String> = query_map(&db, "SELECT printf('%.2f', total_amount) FROM phi_contracts", |r| r.get(0));
    let got = rows(&config, "SELECT count(*), CAST(sum(total_amount) AS VARCHAR) FROM marts.fct_contracts").await;
    assert_eq!(got[0], [contracts.len().to_string(), money(contracts.iter().map(|a| cents(a)).sum())]);

    // A second run with no source change leaves every model as it was.
    let again = project.run().await.expect("second run");
    assert!(again.tables.iter().filter(|t| t.target.starts_with("marts.")).all(|t| t.status == "unchanged"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_model_keeps_its_last_version_and_skips_only_its_dependants() {
    let models: &[(&str, &str)] = &[
        ("payments_by_method", "SELECT method, count(*) AS n FROM raw.payments GROUP BY method"),
        ("fragile", "SELECT method, n FROM marts.payments_by_method"),
        ("downstream", "SELECT count(*) AS methods FROM marts.fragile"),
        ("independent", "SELECT count(*) AS clients FROM raw.phi_clients"),
    ];
    let project = project(0.05, Some(models)).await;
    project.run().await.expect("first build");
    let config = project.config();
    let before = rows(&config, "SELECT method, n FROM marts.fragile ORDER BY method").await;
    assert!(!before.is_empty());

    // `fragile` now fails at run time (a cast that cannot succeed), and new source rows arrive.
    let dir = project.dir.path().join("pipelines/models");
    std::fs::write(dir.join("fragile.sql"), "SELECT method, CAST(method AS BIGINT) AS n FROM marts.payments_by_method")
        .expect("rewrite model");
    source(&project)
        .execute_batch(
            "INSERT INTO payments (id, txn_date, amount, method) VALUES (99999999, '2030-01-01T00:00:00.000000Z', '1.00', 'zz');
             INSERT INTO phi_clients (id, client_number, status, created_at, updated_at)
               VALUES ('00000000-0000-4000-8000-000000000001', 'CL-X', 'lead', '2030-01-01T00:00:00.000000Z', '2030-01-01T00:00:00.000000Z');",
        )
        .expect("source changes");
    let error = project.run().await.expect_err("the run reports the failed model");
    assert!(error.to_string().contains("fragile"), "{error}");

    let runs = pipeline::runlog::RunLog::open(&config.state_dir()).expect("log").runs(None, 1).expect("runs");
    let status: BTreeMap<&str, (&str, Option<&str>)> =
        runs[0].tables.iter().map(|t| (t.target.as_str(), (t.status.as_str(), t.error.as_deref()))).collect();
    assert_eq!(status["marts.payments_by_method"].0, "succeeded");
    assert_eq!(status["marts.independent"].0, "succeeded");
    assert_eq!(status["marts.fragile"].0, "failed");
    assert!(status["marts.fragile"].1.is_some_and(|e| e.contains("fragile.sql")), "{:?}", status["marts.fragile"]);
    assert_eq!(status["marts.downstream"].0, "skipped");

    assert_eq!(
        rows(&config, "SELECT method, n FROM marts.fragile ORDER BY method").await,
        before,
        "previous version kept"
    );
    let methods = rows(&config, "SELECT count(*) FROM marts.payments_by_method WHERE method = 'zz'").await;
    assert_eq!(methods[0][0], "1", "the healthy model saw the new rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn model_columns_evolve_like_raw_tables() {
    let models: &[(&str, &str)] = &[("shape", "SELECT method, count(*) AS n FROM raw.payments GROUP BY method")];
    let project = project(0.05, Some(models)).await;
    project.run().await.expect("first build");
    let config = project.config();
    let path = project.dir.path().join("pipelines/models/shape.sql");

    // A new column is added; a column the model stops producing is kept, as NULL.
    std::fs::write(&path, "SELECT method, sum(amount) AS total FROM raw.payments GROUP BY method").expect("rewrite");
    pipeline::build_models(&project.opened(), &[], "test", &silent()).await.expect("evolved build");
    let got = rows(&config, "SELECT count(*), count(n), count(total) FROM marts.shape").await;
    assert_eq!(got[0][1], "0", "the dropped column is NULL");
    assert_eq!(got[0][0], got[0][2], "the new column is filled");

    // A type change is refused, naming the column, and the table keeps its last version.
    std::fs::write(&path, "SELECT method, CAST(count(*) AS VARCHAR) AS total FROM raw.payments GROUP BY method")
        .expect("rewrite");
    let error =
        pipeline::build_models(&project.opened(), &[], "test", &silent()).await.expect_err("type change refused");
    assert!(error.to_string().contains("total") && error.to_string().contains("type changed"), "{error}");
    let after = rows(&config, "SELECT count(total) FROM marts.shape").await;
    assert_eq!(after[0][0], got[0][2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_model_recomputes_only_the_touched_partitions() {
    let sql = "-- @materialized: incremental\n-- @partition_by: month\n\
               SELECT CAST(date_trunc('month', txn_date) AS DATE) AS month, sum(amount) AS total, count(*) AS n \
               FROM raw.payments GROUP BY 1";
    let project = project(0.1, Some(&[("monthly", sql)])).await;
    let first = project.run().await.expect("first build");
    let config = project.config();
    let months: usize = rows(&config, "SELECT count(*) FROM marts.monthly").await[0][0].parse().expect("n");
    assert!(months > 12, "a few years of months: {months}");
    assert_eq!(first.tables.iter().find(|t| t.target == "marts.monthly").map(|t| t.inserted), Some(months as u64));

    // One new payment in an old month: only that month is recomputed and replaced.
    source(&project)
        .execute("INSERT INTO payments (id, txn_date, amount, method) VALUES (99999999, '2022-03-15T12:00:00.000000Z', '10.00', 'card')", [])
        .expect("new payment");
    let second = project.run().await.expect("incremental build");
    let record = second.tables.iter().find(|t| t.target == "marts.monthly").expect("model record");
    assert_eq!((record.status.as_str(), record.inserted), ("succeeded", 1), "one partition rewritten: {record:?}");

    // The table equals a full recomputation, and the source's own figures.
    let full = "SELECT CAST(date_trunc('month', txn_date) AS DATE) AS month, sum(amount) AS total, count(*) AS n \
                FROM raw.payments GROUP BY 1";
    let expected =
        rows(&config, &format!("SELECT CAST(month AS VARCHAR), CAST(total AS VARCHAR), n FROM ({full}) ORDER BY 1"))
            .await;
    let got =
        rows(&config, "SELECT CAST(month AS VARCHAR), CAST(total AS VARCHAR), n FROM marts.monthly ORDER BY 1").await;
    assert_eq!(got, expected);
    let march: Vec<String> = query_map(
        &source(&project),
        "SELECT printf('%.2f', sum(amount)) FROM payments WHERE txn_date >= '2022-03' AND txn_date < '2022-04'",
        |r| r.get(0),
    );
    assert!(got.iter().any(|r| r[0] == "2022-03-01" && r[1] == march[0]), "{got:?}");

    // Nothing new: nothing recomputed.
    let third = project.run().await.expect("no-op build");
    assert!(third.tables.iter().any(|t| t.target == "marts.monthly" && t.status == "unchanged"));
}

#[test]
fn bad_model_files_are_reported_by_check_with_file_and_line() {
    let project = Project::new("sqlite://operational.db");
    let dir = project.dir.path().join("pipelines/models");
    std::fs::create_dir_all(&dir).expect("dir");
    let cases: &[(&str, &str, &str)] = &[
        ("broken", "SELECT method,\nFROM raw.payments WHERE", "broken.sql:2: SQL syntax"),
        ("unknown", "SELECT 1\nFROM raw.nowhere", "unknown.sql:2: unknown table raw.nowhere"),
        ("cycle_a", "SELECT * FROM marts.cycle_b", "models form a cycle"),
    ];
    for (name, sql, expected) in cases {
        for entry in std::fs::read_dir(&dir).expect("list") {
            std::fs::remove_file(entry.expect("entry").path()).expect("clean");
        }
        std::fs::write(dir.join(format!("{name}.sql")), sql).expect("write");
        if *name == "cycle_a" {
            std::fs::write(dir.join("cycle_b.sql"), "SELECT * FROM marts.cycle_a").expect("write");
        }
        let output = project.cli().arg("model").arg("graph").output().expect("run sokana");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{name}: {stderr}");
    }
    assert!(Path::new(&dir).is_dir());
}

/// Every table's rows as sorted JSON lines, by table: the warehouse's contents, independent of
/// how they are laid out in files and versions.
async fn contents(config: &Config) -> BTreeMap<String, Vec<String>> {
    let warehouse = pipeline::warehouse(config).expect("warehouse");
    let ctx = sokana::query::unmasked_session(&warehouse).await.expect("session");
    let mut out = BTreeMap::new();
    for table in warehouse.list_tables().await.expect("tables") {
        let batches = sokana::query::run(&ctx, &format!("SELECT * FROM {table}")).await.expect("scan");
        let json = sokana::query::format(&batches, sokana::query::OutputFormat::Json).expect("json");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).expect("rows");
        let mut lines: Vec<String> = rows.iter().map(ToString::to_string).collect();
        lines.sort();
        out.insert(table.to_string(), lines);
    }
    out
}

/// kill -9 at points through the loads and the model builds of a first run: after each, the next
/// run ends in exactly the warehouse an uninterrupted run makes.
#[test]
fn a_kill_at_any_point_of_loads_or_builds_is_completed_by_the_next_run() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let project = runtime.block_on(project(0.2, None));
    let config = project.config();
    let run_all = || {
        let out = project.cli().args(["pipeline", "run", "--all"]).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run_all();
    let expected = runtime.block_on(contents(&config));
    assert!(expected.contains_key("marts.fct_installments") && expected.contains_key("raw.payments"));
    let start_afresh = || {
        for dir in ["warehouse", "state/runs.db", "state/queries.db"] {
            let path = project.dir.path().join(dir);
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove warehouse");
            } else if path.exists() {
                std::fs::remove_file(&path).expect("remove run log");
            }
        }
    };
    for point in [
        "raw.phi_clients:1",
        "raw.hours:500",
        "raw.payments:1",
        "marts.dim_clients:1",
        "marts.fct_hours:500",
        "marts.fct_installments:1",
        "marts.fct_payments:1",
        "marts.mart_revenue_monthly:1",
    ] {
        start_afresh();
        let mut interrupted = project.cli();
        interrupted.args(["pipeline", "run", "--all"]);
        common::kill_at_fault_point(interrupted, point);
        run_all();
        let after = runtime.block_on(contents(&config));
        assert_eq!(after.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "after a kill at {point}");
        for (table, rows) in &expected {
            assert!(after[table] == *rows, "{table} differs after a kill at {point}");
        }
    }
}

/// At scale 20 a model reading two joins waited for ever: its partitions were read one after
/// another, while a partitioned join feeds them all at once.
#[test]
fn models_build_at_the_scale_where_partitioned_joins_appear() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let project = runtime.block_on(project(20.0, None));
    let out = project.cli().args(["pipeline", "run", "--all"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = project.config();
    let installments = runtime.block_on(rows(&config, "SELECT count(*) FROM marts.fct_installments"));
    let source: i64 =
        source(&project).query_row("SELECT count(*) FROM payment_installments", [], |r| r.get(0)).expect("count");
    assert_eq!(installments[0][0], source.to_string());
}
