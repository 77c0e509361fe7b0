//! Extraction from a real PostgreSQL server (a throwaway cluster started here) into the warehouse.

mod common;

use common::{Postgres, Project, assert_matches_source};
use sokana::pipeline::runlog::RunLog;

#[tokio::test(flavor = "multi_thread")]
async fn postgres_full_and_incremental_loads_match_the_source() {
    let pg = Postgres::start();
    let project = Project::new(&pg.url());
    common::seed(&pg.url(), project.dir.path(), 0.2).await;
    let first = project.run().await.expect("first run");
    assert!(first.tables.iter().all(|t| t.status == "succeeded"), "{first:?}");
    assert_matches_source(&project).await;

    let client = pg.client().await;
    client
        .batch_execute(
            "UPDATE phi_clients SET status = 'matched', updated_at = now()
               WHERE id IN (SELECT id FROM phi_clients ORDER BY id LIMIT 3);
             DELETE FROM doula_assignments WHERE (client_id, doula_id) IN
               (SELECT client_id, doula_id FROM doula_assignments ORDER BY client_id LIMIT 4);
             INSERT INTO payments (id, txn_date, amount, method, gateway, transaction_id, description)
               SELECT max(id) + 1, now(), 99.99, 'card', 'stripe', 'txn_pg', 'test' FROM payments;
             ALTER TABLE admins ADD COLUMN title text;
             UPDATE admins SET title = 'Director', updated_at = now() WHERE id = (SELECT id FROM admins ORDER BY id LIMIT 1);",
        )
        .await
        .unwrap();
    let second = project.run().await.expect("incremental run");
    let get = |t: &str| second.tables.iter().find(|r| r.target == t).unwrap().clone();
    assert_eq!(get("raw.phi_clients").updated, 3);
    assert_eq!(get("raw.doula_assignments").deleted, 4);
    assert_eq!(get("raw.payments").inserted, 1);
    assert_eq!(get("raw.admins").updated, 1);
    assert_matches_source(&project).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn types_arrive_exactly_uuid_numeric_timestamptz_arrays_json() {
    let pg = Postgres::start();
    let project = Project::new(&pg.url());
    common::seed(&pg.url(), project.dir.path(), 0.05).await;
    project.run().await.expect("run");
    let client = pg.client().await;
    let total: String = client.query_one("SELECT sum(amount)::text FROM payments", &[]).await.unwrap().get(0);
    let config = project.config();
    let ctx = sokana::query::unmasked_session(&sokana::pipeline::warehouse(&config).unwrap()).await.unwrap();
    let batches = sokana::query::run(
        &ctx,
        "SELECT CAST(sum(amount) AS VARCHAR) AS total, arrow_typeof(min(amount)) AS t FROM raw.payments",
    )
    .await
    .unwrap();
    let text = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).unwrap();
    assert!(text.contains(&total), "sum of payments: source {total}, warehouse {text}");
    assert!(text.contains("Decimal128(12, 2)"), "{text}");
    let batches = sokana::query::run(
        &ctx,
        "SELECT arrow_typeof(languages) AS l, arrow_typeof(created_at) AS c FROM raw.doulas LIMIT 1",
    )
    .await
    .unwrap();
    let text = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).unwrap();
    assert!(text.contains("List") && text.contains("UTC"), "{text}");

    let row = client
        .query_one(
            "SELECT (sum(due_date - DATE '1970-01-01'))::text, (sum(floor(extract(epoch FROM created_at))))::bigint::text,
                    min(id::text), max(id::text) FROM phi_clients",
            &[],
        )
        .await
        .unwrap();
    let expected = format!(
        "{},{},{},{}",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3)
    );
    assert_eq!(common::client_fingerprint(&config).await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_is_retried_then_reported_and_nothing_committed() {
    let port = common::free_port();
    let project = Project::new(&format!("postgres://postgres@127.0.0.1:{port}/postgres"));
    let err = project.run().await.expect_err("unreachable").to_string();
    assert!(err.contains("cannot connect") && err.contains("2 attempt(s)") && err.contains(&port.to_string()), "{err}");
    let config = project.config();
    assert!(sokana::pipeline::warehouse(&config).unwrap().list_tables().await.unwrap().is_empty());
    let runs = RunLog::open(&config.state_dir()).unwrap().runs(None, 1).unwrap();
    assert_eq!(runs[0].status, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_never_appear_in_errors() {
    let port = common::free_port();
    let project = Project::new(&format!("postgres://postgres:hunter2secret@127.0.0.1:{port}/postgres"));
    let err = project.run().await.expect_err("unreachable").to_string();
    assert!(!err.contains("hunter2secret"), "{err}");
}

#[test]
fn a_crash_during_a_postgres_load_is_completed_by_the_next_run() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pg = Postgres::start();
    let project = Project::new(&pg.url());
    runtime.block_on(common::seed(&pg.url(), project.dir.path(), 0.2));
    let mut run = project.cli();
    run.args(["pipeline", "run", "--all"]);
    common::kill_at_fault_point(run, "raw.hours:100");
    let out = project.cli().args(["pipeline", "run", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    runtime.block_on(assert_matches_source(&project));
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_page_range_reads_are_one_consistent_snapshot() {
    let pg = Postgres::start();
    let project = Project::new(&pg.url());
    // Every table, however small, is read as parallel ctid ranges by the pool's connections.
    let mut config = std::fs::read_to_string(&project.config_path).unwrap();
    config.push_str("parallel_min_mb = 0\npool_size = 3\nparallel_streams = 2\n");
    std::fs::write(&project.config_path, config).unwrap();
    common::seed(&pg.url(), project.dir.path(), 0.2).await;
    project.run().await.expect("parallel first load");
    assert_matches_source(&project).await;
    pg.client()
        .await
        .batch_execute("UPDATE hours SET type = 'postpartum', updated_at = now() WHERE type IS NULL")
        .await
        .unwrap();
    let run = project.run().await.expect("parallel incremental load");
    assert!(run.tables.iter().find(|t| t.target == "raw.hours").unwrap().updated > 0);
    assert_matches_source(&project).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_without_time_zone_misses_no_row_on_a_server_east_of_utc() {
    let pg = Postgres::start();
    let client = pg.client().await;
    client
        .batch_execute(
            "ALTER DATABASE postgres SET timezone = 'Asia/Tokyo';
             CREATE TABLE visits (id int PRIMARY KEY, note text, updated_at timestamp);
             INSERT INTO visits VALUES (1, 'first', '2026-11-01 09:00:00'), (2, 'no cursor', NULL);",
        )
        .await
        .unwrap();
    let pipeline = "source = \"core\"\n[defaults]\nlookback_seconds = 0\n\n[[tables]]\nname = \"visits\"\nprimary_key = [\"id\"]\n\
                    cursor = \"updated_at\"\n[tables.columns]\nid = \"id\"\nnote = \"dim\"\nupdated_at = \"dim\"\n";
    let project = Project::with_pipeline(&pg.url(), pipeline);
    let first = project.run().await.expect("first load");
    assert_eq!((first.tables[0].inserted, first.tables[0].cursor.as_deref()), (2, Some("2026-11-01T09:00:00+00:00")));
    // Two hours past the cursor as the warehouse reads it (UTC); read in Tokyo's time, seven before.
    client.batch_execute("INSERT INTO visits VALUES (3, 'later', '2026-11-01 11:00:00')").await.unwrap();
    let second = project.run().await.expect("incremental load");
    let visits = &second.tables[0];
    assert_eq!((visits.rows_read, visits.inserted), (1, 1), "{visits:?}");
    assert_eq!(visits.cursor.as_deref(), Some("2026-11-01T11:00:00+00:00"));
    assert_eq!(common::warehouse_count(&project.config(), "SELECT count(*) FROM raw.visits").await, 3);
}

#[test]
fn demo_seeds_and_uses_a_postgres_source() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sokana"))
        .args(["demo", "--no-serve", "--scale", "0.05", "--source", &pg.url(), "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("operational.db").exists(), "the PostgreSQL database is the source");
    let config = std::fs::read_to_string(dir.path().join("sokana.toml")).unwrap();
    assert!(config.contains(&pg.url()), "{config}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let expected: i64 = runtime
        .block_on(async { pg.client().await.query_one("SELECT count(*) FROM payments", &[]).await.unwrap().get(0) });
    let config = sokana::config::Config::load_with_env(Some(&dir.path().join("sokana.toml")), []).unwrap();
    assert_eq!(runtime.block_on(common::warehouse_count(&config, "SELECT count(*) FROM raw.payments")), expected);
}

/// The URL's `sslmode` is honoured: a server that takes TLS only is read over TLS, its
/// certificate checked against `sslrootcert`; without a root that vouches for it, or in clear
/// text, the connection fails.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_only_server_is_read_over_verified_tls() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let pg = Postgres::start_tls_only(&certified.cert.pem(), &certified.signing_key.serialize_pem());
    let scratch = tempfile::tempdir().expect("temp dir");
    let root = scratch.path().join("root.pem");
    std::fs::write(&root, certified.cert.pem()).expect("root");
    let url = |query: &str| format!("postgres://postgres@localhost:{}/postgres?{query}", pg.port);
    let verified = url(&format!("sslmode=verify-full&sslrootcert={}", root.display()));
    let project = Project::new(&verified);
    common::seed(&verified, project.dir.path(), 0.02).await;
    let run = project.run().await.expect("a run over TLS");
    assert!(run.tables.iter().all(|t| t.status == "succeeded"), "{run:?}");
    assert_matches_source(&project).await;

    for (query, why) in [("sslmode=require", "certificate"), ("sslmode=disable", "no encryption")] {
        let other = Project::new(&url(query));
        let failed = other.run().await;
        let message = match failed {
            Ok(summary) => summary.tables.iter().filter_map(|t| t.error.clone()).collect::<Vec<_>>().join("; "),
            Err(e) => e.to_string(),
        };
        assert!(!message.is_empty(), "{query} must fail ({why})");
    }
}
