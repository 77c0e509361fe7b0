//! Extraction from SQLite (the embedded default) into the warehouse: full load, incremental
//! inserts, updates and deletes, schema evolution, crashes, locks and bad input.

mod common;

use common::{Project, assert_matches_source, warehouse_count};
use rusqlite::Connection;
use sokana::pipeline::runlog::{RunLock, RunLog};

async fn seeded(scale: f64) -> Project {
    let project = Project::new("sqlite://operational.db");
    common::seed("sqlite://operational.db", project.dir.path(), scale).await;
    project
}

fn table<'a>(summary: &'a sokana::pipeline::RunSummary, target: &str) -> &'a sokana::pipeline::runlog::TableRecord {
    summary.tables.iter().find(|t| t.target == target).unwrap_or_else(|| panic!("no record for {target}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn full_load_then_incremental_changes_match_the_source_row_for_row() {
    let project = seeded(0.2).await;
    let first = project.run().await.expect("first run");
    assert!(first.tables.iter().all(|t| t.status == "succeeded"));
    assert!(table(&first, "raw.phi_clients").inserted > 200);
    assert_matches_source(&project).await;
    let expected: String = Connection::open(project.sqlite_path())
        .unwrap()
        .query_row(
            "SELECT CAST(sum(julianday(due_date) - 2440587.5) AS INTEGER) || ',' ||
                    sum(CAST(strftime('%s', created_at) AS INTEGER)) || ',' || min(id) || ',' || max(id) FROM phi_clients",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(common::client_fingerprint(&project.config()).await, expected, "dates, timestamps, uuids");

    let db = Connection::open(project.sqlite_path()).unwrap();
    let later = "2026-11-20T10:00:00.000000Z";
    db.execute_batch(&format!(
        "INSERT INTO phi_clients (id, client_number, status, created_at, updated_at)
           VALUES ('00000000-0000-4000-8000-000000000001', 'CL-99999', 'lead', '{later}', '{later}');
         UPDATE phi_clients SET status = 'contacted', updated_at = '{later}'
           WHERE id IN (SELECT id FROM phi_clients WHERE client_number <> 'CL-99999' ORDER BY id LIMIT 5);
         DELETE FROM doula_assignments WHERE rowid IN (SELECT rowid FROM doula_assignments ORDER BY client_id LIMIT 2);
         UPDATE client_activities SET description = 'edited note'
           WHERE id = (SELECT id FROM client_activities ORDER BY id LIMIT 1);
         DELETE FROM client_activities WHERE id = (SELECT id FROM client_activities ORDER BY id DESC LIMIT 1);
         INSERT INTO payments (id, txn_date, amount, method, gateway, transaction_id, description)
           VALUES ((SELECT max(id) + 1 FROM payments), '{later}', '125.50', 'card', 'stripe', 'txn_test', 'test payment');"
    ))
    .unwrap();
    let second = project.run().await.expect("incremental run");
    let clients = table(&second, "raw.phi_clients");
    assert_eq!((clients.inserted, clients.updated, clients.deleted), (1, 5, 0));
    assert_eq!(table(&second, "raw.doula_assignments").deleted, 2);
    let activities = table(&second, "raw.client_activities");
    assert_eq!((activities.inserted, activities.updated, activities.deleted), (0, 1, 1));
    assert_eq!(table(&second, "raw.payments").inserted, 1);
    assert_eq!(table(&second, "raw.payments").rows_read, 1, "only rows past the id cursor are read");
    assert_eq!(table(&second, "raw.hours").rows_read, 0, "an unchanged table reads nothing");
    assert_matches_source(&project).await;

    // Nothing changed: nothing is written, no version is made.
    let third = project.run().await.expect("idle run");
    assert!(third.tables.iter().all(|t| t.inserted + t.updated + t.deleted == 0 && t.version.is_none()), "{third:?}");
    assert_matches_source(&project).await;

    let runs = RunLog::open(&project.config().state_dir()).unwrap().runs(None, 10).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.status == "succeeded" && r.tables.len() == 12));
}

#[tokio::test(flavor = "multi_thread")]
async fn new_source_columns_are_added_and_type_changes_refused() {
    let project = seeded(0.05).await;
    project.run().await.expect("first run");
    let db = Connection::open(project.sqlite_path()).unwrap();
    db.execute_batch(
        "ALTER TABLE doulas ADD COLUMN bio text;
         UPDATE doulas SET bio = 'certified 2019', updated_at = '2026-11-21T00:00:00.000000Z'
           WHERE id = (SELECT id FROM doulas ORDER BY id LIMIT 1);",
    )
    .unwrap();
    let run = project.run().await.expect("run with a new column");
    assert_eq!(table(&run, "raw.doulas").updated, 1);
    let config = project.config();
    assert_eq!(warehouse_count(&config, "SELECT count(*) FROM raw.doulas WHERE bio = 'certified 2019'").await, 1);
    assert_eq!(
        warehouse_count(&config, "SELECT count(*) FROM raw.doulas WHERE bio IS NULL").await + 1,
        warehouse_count(&config, "SELECT count(*) FROM raw.doulas").await
    );
    assert_matches_source(&project).await;

    // hourly_rate becomes text in the source: the load of that table is refused, others go on.
    db.execute_batch(
        "ALTER TABLE phi_contracts RENAME TO old_contracts;
         CREATE TABLE phi_contracts (id uuid PRIMARY KEY, client_id uuid, status text, service_type text,
           total_amount numeric(12,2), deposit_amount numeric(12,2), total_hours numeric(8,2), hourly_rate text,
           signed_at timestamptz, created_at timestamptz, updated_at timestamptz);
         INSERT INTO phi_contracts SELECT * FROM old_contracts;
         UPDATE phi_contracts SET updated_at = '2026-11-22T00:00:00.000000Z'
           WHERE id = (SELECT id FROM phi_contracts ORDER BY id LIMIT 1);
         UPDATE admins SET full_name = 'Renamed Admin', updated_at = '2026-11-22T00:00:00.000000Z'
           WHERE id = (SELECT id FROM admins ORDER BY id LIMIT 1);",
    )
    .unwrap();
    let err = project.run().await.expect_err("type change is refused").to_string();
    assert!(err.contains("raw.phi_contracts") && err.contains("hourly_rate") && err.contains("type changed"), "{err}");
    let runs = RunLog::open(&config.state_dir()).unwrap().runs(None, 1).unwrap();
    let last = &runs[0];
    assert_eq!(last.status, "failed");
    let admins = last.tables.iter().find(|t| t.target == "raw.admins").unwrap();
    assert_eq!((admins.status.as_str(), admins.updated), ("succeeded", 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_column_added_with_its_cursor_loads_everything_once() {
    let project = seeded(0.05).await;
    project.run().await.expect("first run");
    // client_activities had no cursor; the source gains `updated_at` and the pipeline names it as
    // the cursor in the same change, so the warehouse table does not have the column yet.
    let db = Connection::open(project.sqlite_path()).unwrap();
    db.execute_batch(
        "ALTER TABLE client_activities ADD COLUMN updated_at timestamptz;
         UPDATE client_activities SET updated_at = '2026-11-23T00:00:00.000000Z';",
    )
    .unwrap();
    let path = project.dir.path().join("pipelines/sokana_core.toml");
    let pipeline = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "name = \"client_activities\"\nprimary_key = [\"id\"]\n",
            "name = \"client_activities\"\nprimary_key = [\"id\"]\ncursor = \"updated_at\"\n",
        )
        .replace(
            "timestamp = \"dim\"\n\n[[tables]]\nname = \"phi_contracts\"",
            "timestamp = \"dim\"\nupdated_at = \"dim\"\n\n[[tables]]\nname = \"phi_contracts\"",
        );
    assert_eq!(pipeline.matches("updated_at = \"dim\"\n\n[[tables]]\nname = \"phi_contracts\"").count(), 1);
    assert!(pipeline.contains("cursor = \"updated_at\"\nreferences = { client_id"), "the pipeline file changed shape");
    std::fs::write(&path, pipeline).unwrap();

    let run = project.run().await.expect("run with the new cursor");
    let activities = table(&run, "raw.client_activities");
    let source_rows: i64 = db.query_row("SELECT count(*) FROM client_activities", [], |r| r.get(0)).unwrap();
    assert_eq!((activities.rows_read, activities.inserted), (source_rows as u64, 0), "read whole, merged");
    let config = project.config();
    let with_cursor = "SELECT count(*) FROM raw.client_activities WHERE updated_at IS NOT NULL";
    assert_eq!(warehouse_count(&config, with_cursor).await, source_rows);
    assert_matches_source(&project).await;

    // From now on the column is the cursor: an idle run reads nothing past it.
    let idle = project.run().await.expect("idle run");
    assert_eq!(table(&idle, "raw.client_activities").rows_read, 0);
}

#[test]
fn a_crash_in_the_middle_of_a_load_loses_and_duplicates_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let project = runtime.block_on(seeded(0.2));

    // kill -9 while client_activities streams into new files, before its commit.
    let mut run = project.cli();
    run.args(["pipeline", "run", "--all"]);
    common::kill_at_fault_point(run, "raw.client_activities:1000");
    let config = project.config();
    let committed =
        runtime.block_on(async { sokana::pipeline::warehouse(&config).unwrap().list_tables().await.unwrap() });
    let names: Vec<String> = committed.iter().map(|t| t.to_string()).collect();
    assert!(names.contains(&"raw.hours".to_string()), "tables before the crash are committed: {names:?}");
    assert!(!names.contains(&"raw.client_activities".to_string()), "the interrupted table has no version: {names:?}");

    let out = project.cli().args(["pipeline", "run", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    runtime.block_on(assert_matches_source(&project));
    let runs = RunLog::open(&config.state_dir()).unwrap().runs(Some("sokana_core"), 10).unwrap();
    assert_eq!(runs.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(), ["succeeded", "interrupted"]);

    // Again during an incremental merge: every activity edited, crash while they stream.
    let db = Connection::open(project.sqlite_path()).unwrap();
    db.execute_batch("UPDATE client_activities SET description = description || ' (reviewed)'").unwrap();
    let mut run = project.cli();
    run.args(["pipeline", "run", "--all"]);
    common::kill_at_fault_point(run, "raw.client_activities:1");
    let out = project.cli().args(["pipeline", "run", "--all"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    runtime.block_on(assert_matches_source(&project));
}

#[test]
fn a_second_run_of_a_running_pipeline_is_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let project = runtime.block_on(seeded(0.02));
    let _held = RunLock::acquire(&project.config().state_dir(), "sokana_core").unwrap();
    let out = project.cli().args(["pipeline", "run", "sokana_core"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sokana_core is already running"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_database_is_named() {
    let project = Project::new("sqlite://operational.db");
    std::fs::write(project.sqlite_path(), b"this is not a database, just text").unwrap();
    let err = project.run().await.expect_err("not sqlite").to_string();
    assert!(err.contains("operational.db") && err.contains("not a SQLite database"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tables_and_columns_point_at_the_pipeline_line() {
    let pipeline = "source = \"core\"\n\n[[tables]]\nname = \"clients\"\nprimary_key = [\"id\"]\n\n\
                    [[tables]]\nname = \"doulas\"\nprimary_key = [\"id\"]\ncursor = \"updated_at\"\n\
                    [tables.columns]\nid = \"id\"\nnickname = \"pii\"\nupdated_at = \"dim\"\n";
    let project = Project::with_pipeline("sqlite://operational.db", pipeline);
    common::seed("sqlite://operational.db", project.dir.path(), 0.01).await;
    let err = project.run().await.expect_err("unknown table").to_string();
    assert!(err.contains("2 of 2 table(s) failed"), "{err}");
    assert!(err.contains("sokana_core.toml:3") && err.contains("\"clients\" does not exist"), "{err}");
    let runs = RunLog::open(&project.config().state_dir()).unwrap().runs(None, 1).unwrap();
    let doulas = runs[0].tables.iter().find(|t| t.target == "raw.doulas").unwrap();
    let message = doulas.error.as_deref().unwrap();
    assert!(message.contains("sokana_core.toml:7") && message.contains("no column \"nickname\""), "{message}");
    let out = project.cli().arg("check").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nickname"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_warehouse_fails_clearly_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    let uri = format!("uri = {:?}", blocker.join("warehouse").display().to_string());
    let project = Project::with_config("sqlite://operational.db", sokana::SOKANA_CORE_PIPELINE, &uri);
    common::seed("sqlite://operational.db", project.dir.path(), 0.01).await;
    let err = project.run().await.expect_err("unwritable").to_string();
    assert!(err.contains("not-a-directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_source_file_is_reported_and_nothing_committed() {
    let project = Project::new("sqlite://missing.db");
    let err = project.run().await.expect_err("missing").to_string();
    assert!(err.contains("missing.db") && err.contains("no such file"), "{err}");
    let tables = sokana::pipeline::warehouse(&project.config()).unwrap().list_tables().await.unwrap();
    assert!(tables.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn small_files_are_compacted_and_old_versions_vacuumed() {
    let project = Project::with_config(
        "sqlite://operational.db",
        sokana::SOKANA_CORE_PIPELINE,
        "uri = \"warehouse\"\ncompact_min_files = 3\nretention_hours = 0",
    );
    common::seed("sqlite://operational.db", project.dir.path(), 0.05).await;
    project.run().await.expect("first run");
    let db = Connection::open(project.sqlite_path()).unwrap();
    // Each run adds one doula: a new small file per run, until compaction folds them into one.
    for day in 21..23 {
        db.execute(
            "INSERT INTO doulas (id, full_name, account_status, created_at, updated_at)
             VALUES (?1, 'New Doula', 'pending', ?2, ?2)",
            [format!("00000000-0000-4000-8000-0000000000{day}"), format!("2026-11-{day}T00:00:00.000000Z")],
        )
        .unwrap();
        assert_eq!(project.run().await.expect("incremental run").tables[1].inserted, 1);
    }
    let config = project.config();
    let warehouse = sokana::pipeline::warehouse(&config).unwrap();
    let name: sokana::warehouse::TableName = "raw.doulas".parse().unwrap();
    let table = warehouse.open(&name).await.unwrap().unwrap();
    let active: Vec<String> = table.get_file_uris().unwrap().collect();
    assert_eq!(active.len(), 1, "compacted into one file: {active:?}");
    let on_disk = std::fs::read_dir(project.dir.path().join("warehouse/raw/doulas"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "parquet"))
        .count();
    assert_eq!(on_disk, 1, "files of old versions are vacuumed");
    let checkpoints = std::fs::read_dir(project.dir.path().join("warehouse/raw/doulas/_delta_log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".checkpoint.parquet"))
        .count();
    assert_eq!(checkpoints, 1, "a checkpoint after the compaction");
    // The log's statistics cover the cursor, never personal data or uuids, also for the files the
    // compaction wrote.
    let mut with_statistics = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(project.dir.path().join("warehouse/raw/doulas/_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(stats) = action["add"]["stats"].as_str() {
                let stats: serde_json::Value = serde_json::from_str(stats).unwrap();
                with_statistics.extend(stats["minValues"].as_object().into_iter().flatten().map(|(k, _)| k.clone()));
            }
        }
    }
    assert!(with_statistics.contains("updated_at") && with_statistics.contains("city"), "{with_statistics:?}");
    for column in ["id", "full_name", "email", "phone"] {
        assert!(!with_statistics.contains(column), "{column} has statistics: {with_statistics:?}");
    }
    // Nor do the compacted file's own Parquet footers.
    let compacted = match url::Url::parse(&active[0]) {
        Ok(url) => url.to_file_path().unwrap(),
        Err(_) => std::path::PathBuf::from(&active[0]),
    };
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(&compacted).unwrap()).unwrap();
    let footer = reader.metadata();
    let schema = footer.file_metadata().schema_descr();
    let mut in_footer = std::collections::BTreeSet::new();
    for group in footer.row_groups() {
        for (i, column) in group.columns().iter().enumerate() {
            if column.statistics().is_some_and(|s| s.min_bytes_opt().is_some()) {
                in_footer.insert(schema.column(i).name().to_string());
            }
        }
    }
    assert!(in_footer.contains("updated_at"), "{in_footer:?}");
    for column in ["id", "full_name", "email", "phone"] {
        assert!(!in_footer.contains(column), "{column} has statistics in the compacted file: {in_footer:?}");
    }
    assert_matches_source(&project).await;
}
