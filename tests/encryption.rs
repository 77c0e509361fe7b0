//! Encryption at rest: a warehouse with a key holds no readable file (data, log entries with
//! their column statistics, checkpoints), still loads incrementally and answers queries; without
//! the key, or with another, it refuses with a message that says why. A plain warehouse is
//! encrypted in place, and moved to a new key, by `sokana warehouse encrypt`.

mod common;

use std::path::PathBuf;

use common::{Project, seed, warehouse_count};

const KEY_A: &str = "4b1d0f3e9a7c25d86e0b13f4a2c9d7e1058b6a3f2e4d1c09b8a7f6e5d4c3b2a1";
const KEY_B: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";

/// Files of the warehouse (the encryption marker aside) that are not sealed, and files whose raw
/// bytes contain `needle`.
fn plain_files(project: &Project, needle: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut unsealed, mut mentioning) = (Vec::new(), Vec::new());
    for path in common::files_under(&project.dir.path().join("warehouse")) {
        if path.ends_with("_sokana/encryption.json") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read");
        if !bytes.starts_with(b"SKSEAL02") {
            unsealed.push(path.clone());
        }
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            mentioning.push(path);
        }
    }
    (unsealed, mentioning)
}

/// The smallest e-mail address in the source.
fn smallest_email(project: &Project) -> String {
    let source = rusqlite::Connection::open(project.sqlite_path()).expect("source");
    source.query_row("SELECT min(email) FROM phi_clients", [], |r| r.get(0)).expect("email")
}

/// The smallest language of a client (a `dim` column): the Delta log keeps it in plain JSON as
/// the column's minimum, so it is in the warehouse's files unless they are encrypted.
fn smallest_language(project: &Project) -> String {
    let source = rusqlite::Connection::open(project.sqlite_path()).expect("source");
    source.query_row("SELECT min(primary_language) FROM phi_clients", [], |r| r.get(0)).expect("language")
}

fn source_count(project: &Project, sql: &str) -> i64 {
    let source = rusqlite::Connection::open(project.sqlite_path()).expect("source");
    source.query_row(sql, [], |r| r.get(0)).expect("count")
}

fn set_key_file(project: &Project, keys: &str) {
    std::fs::write(project.dir.path().join("warehouse.key"), keys).expect("key file");
    let text = std::fs::read_to_string(&project.config_path).expect("config");
    if !text.contains("key_file") {
        let text = text.replace("[warehouse]\n", "[warehouse]\nkey_file = \"warehouse.key\"\n");
        std::fs::write(&project.config_path, text).expect("config");
    }
}

async fn query_error(project: &Project) -> String {
    let warehouse = sokana::pipeline::warehouse(&project.config()).expect("warehouse");
    match sokana::query::unmasked_session(&warehouse).await {
        Err(e) => e.to_string(),
        Ok(ctx) => {
            sokana::query::run(&ctx, "SELECT count(*) FROM raw.phi_clients").await.expect_err("refused").to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_warehouse_loads_and_answers_but_its_files_reveal_nothing() {
    // Compaction after every load with new files, so it too runs over encrypted files.
    let project = Project::with_config(
        "sqlite://operational.db",
        sokana::SOKANA_CORE_PIPELINE,
        "uri = \"warehouse\"\ncompact_min_files = 2",
    );
    seed("sqlite://operational.db", project.dir.path(), 0.05).await;
    project.add_core_models("encryption-test-key-0123456789");
    set_key_file(&project, KEY_A);
    project.run().await.expect("first load");

    let config = project.config();
    let clients = source_count(&project, "SELECT count(*) FROM phi_clients");
    assert_eq!(warehouse_count(&config, "SELECT count(*) FROM raw.phi_clients").await, clients);
    assert!(warehouse_count(&config, "SELECT count(*) FROM marts.dim_clients").await > 0);

    // An incremental load merges through the encrypted files: the changed row replaces the old one.
    let later = "2026-11-25T10:00:00.000000Z";
    rusqlite::Connection::open(project.sqlite_path())
        .expect("source")
        .execute_batch(&format!(
            "UPDATE phi_clients SET status = 'encrypted-test', updated_at = '{later}' \
             WHERE id = (SELECT min(id) FROM phi_clients);
             INSERT INTO payments (id, txn_date, amount, method, gateway, transaction_id, description)
               VALUES ((SELECT max(id) + 1 FROM payments), '{later}', '125.50', 'card', 'stripe', 'txn_t', 'test');"
        ))
        .expect("update");
    let summary = project.run().await.expect("second load");
    let clients_table = summary.tables.iter().find(|t| t.target == "raw.phi_clients").expect("clients");
    assert_eq!((clients_table.inserted, clients_table.updated), (0, 1), "{summary:?}");
    assert_eq!(warehouse_count(&config, "SELECT count(*) FROM raw.phi_clients").await, clients);
    assert_eq!(
        warehouse_count(&config, "SELECT count(*) FROM raw.phi_clients WHERE status = 'encrypted-test'").await,
        1
    );

    let warehouse = sokana::pipeline::warehouse(&config).expect("warehouse");
    let payments = warehouse.open(&"raw.payments".parse().expect("name")).await.expect("open").expect("table");
    let history: Vec<deltalake::kernel::CommitInfo> =
        futures::TryStreamExt::try_collect(payments.history(None)).await.expect("history");
    assert!(history.iter().any(|c| c.operation.as_deref() == Some("OPTIMIZE")), "{history:?}");

    // An erasure deletes, vacuums and checkpoints through the encrypted files too.
    let first: String = rusqlite::Connection::open(project.sqlite_path())
        .expect("source")
        .query_row("SELECT min(id) FROM phi_clients", [], |r| r.get(0))
        .expect("id");
    let erased = project.cli().args(["privacy", "erase", "--client", &first]).output().expect("sokana privacy erase");
    assert!(erased.status.success(), "{}", String::from_utf8_lossy(&erased.stderr));
    assert_eq!(warehouse_count(&config, "SELECT count(*) FROM raw.phi_clients").await, clients - 1);

    let (unsealed, mentioning) = plain_files(&project, &smallest_email(&project));
    assert!(unsealed.is_empty(), "files left in the clear: {unsealed:?}");
    assert!(mentioning.is_empty(), "files that show an e-mail address: {mentioning:?}");

    // Without the key, or with another one, the warehouse says so.
    let config_text = std::fs::read_to_string(&project.config_path).expect("config");
    std::fs::write(&project.config_path, config_text.replace("key_file = \"warehouse.key\"\n", "")).expect("config");
    let error = query_error(&project).await;
    assert!(error.contains("the warehouse is encrypted"), "{error}");
    std::fs::write(&project.config_path, &config_text).expect("config");
    set_key_file(&project, KEY_B);
    let error = query_error(&project).await;
    assert!(error.contains("not among the configured keys"), "{error}");
    set_key_file(&project, "not hex");
    let error = sokana::pipeline::warehouse(&project.config()).expect_err("bad key").to_string();
    assert!(error.contains("warehouse.key_file") && error.contains("warehouse.key: key 1"), "{error}");

    // DuckDB reads the Parquet files as they are, so it is not offered on an encrypted warehouse.
    set_key_file(&project, KEY_A);
    let duck = project.cli().args(["sql", "--engine", "duckdb", "SELECT 1"]).output().expect("sokana sql");
    assert!(!duck.status.success());
    assert!(String::from_utf8_lossy(&duck.stderr).contains("unencrypted"), "{}", String::from_utf8_lossy(&duck.stderr));
    let export = project.dir.path().join("w.duckdb");
    let exported = project.cli().args(["export", "duckdb"]).arg(&export).output().expect("sokana export");
    assert!(!exported.status.success() && !export.exists());
    let auto = project.cli().args(["sql", "--engine", "auto", "SELECT count(*) AS n FROM raw.phi_clients"]).output();
    let auto = auto.expect("sokana sql");
    assert!(auto.status.success(), "{}", String::from_utf8_lossy(&auto.stderr));
    assert!(String::from_utf8_lossy(&auto.stdout).contains(&(clients - 1).to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_warehouse_is_encrypted_in_place_then_moved_to_a_new_key() {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.02).await;
    project.run().await.expect("plain load");
    let clients = source_count(&project, "SELECT count(*) FROM phi_clients");
    // Personal data has no statistics, so even a plain warehouse's log holds no e-mail address;
    // a `dim` column's minimum is there until the files are encrypted.
    let (_, mentioning) = plain_files(&project, &smallest_email(&project));
    assert!(mentioning.iter().all(|p| !p.to_string_lossy().contains("_delta_log")), "{mentioning:?}");
    let language = smallest_language(&project);
    let (_, mentioning) = plain_files(&project, &language);
    assert!(mentioning.iter().any(|p| p.to_string_lossy().contains("_delta_log")), "{language}: {mentioning:?}");

    // A file no log references, put beside the tables before encryption: not sealed (sealing it
    // would make it pass for the warehouse's own), and reported.
    let planted = project.dir.path().join("warehouse/raw/payments/planted.parquet");
    std::fs::write(&planted, b"PAR1 not the warehouse's").expect("plant");

    set_key_file(&project, KEY_A);
    let error = query_error(&project).await;
    assert!(error.contains("run `sokana warehouse encrypt`"), "{error}");

    let encrypt = |project: &Project| {
        let out = project.cli().args(["warehouse", "encrypt"]).output().expect("sokana warehouse encrypt");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("report")
    };
    let report = encrypt(&project);
    let files = report["encrypted"].as_u64().expect("count");
    assert!(files > 10 && report["rekeyed"] == 0, "{report}");
    assert_eq!(report["left_plain"], serde_json::json!(["raw/payments/planted.parquet"]), "{report}");
    let (unsealed, mentioning) = plain_files(&project, &language);
    assert_eq!(unsealed, vec![planted.clone()], "only the planted file is left as it was");
    assert!(mentioning.is_empty(), "{mentioning:?}");
    std::fs::remove_file(&planted).expect("remove");

    // In an encrypted warehouse a plain object is never sealed, a forged commit least of all; and a
    // sealed commit copied over another version's does not open.
    let log = project.dir.path().join("warehouse/raw/payments/_delta_log");
    let forged = log.join("00000000000000000099.json");
    std::fs::write(&forged, b"{\"commitInfo\":{}}\n").expect("forge");
    let report = encrypt(&project);
    assert_eq!(report["left_plain"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(std::fs::read(&forged).expect("forged"), b"{\"commitInfo\":{}}\n", "left as it was");
    std::fs::remove_file(&forged).expect("remove");
    let payments_commit = log.join("00000000000000000000.json");
    let saved = std::fs::read(&payments_commit).expect("payments' first commit");
    let clients_commit = project.dir.path().join("warehouse/raw/phi_clients/_delta_log/00000000000000000000.json");
    std::fs::copy(&clients_commit, &payments_commit).expect("swap");
    let warehouse = sokana::pipeline::warehouse(&project.config()).expect("warehouse");
    let name: sokana::warehouse::TableName = "raw.payments".parse().expect("name");
    assert!(warehouse.open(&name).await.is_err(), "another table's commit in payments' log does not open");
    std::fs::write(&payments_commit, saved).expect("restore");
    assert_eq!(warehouse_count(&project.config(), "SELECT count(*) FROM raw.phi_clients").await, clients);

    // Rotation: the new key first, the old one still accepted; every file moves to the new key.
    set_key_file(&project, &format!("{KEY_B}\n{KEY_A}\n"));
    let report = encrypt(&project);
    assert_eq!((report["rekeyed"].as_u64(), report["encrypted"].as_u64()), (Some(files), Some(0)), "{report}");
    set_key_file(&project, KEY_B);
    assert_eq!(warehouse_count(&project.config(), "SELECT count(*) FROM raw.phi_clients").await, clients);
    let report = encrypt(&project);
    assert_eq!(report["current"].as_u64(), Some(files), "a second run has nothing left to do: {report}");

    // An interrupted encryption is refused until it is run again.
    let marker = project.dir.path().join("warehouse/_sokana/encryption.json");
    std::fs::write(&marker, r#"{"state":"encrypting"}"#).expect("marker");
    let error = query_error(&project).await;
    assert!(error.contains("was interrupted"), "{error}");
    encrypt(&project);
    assert_eq!(warehouse_count(&project.config(), "SELECT count(*) FROM raw.phi_clients").await, clients);
}

/// Nothing derived from an encrypted warehouse's rows goes to disk in the clear: a sort that
/// outgrows its memory, which spills to disk and finishes over a plain warehouse, fails over an
/// encrypted one.
#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_warehouse_never_spills_to_disk() {
    use sokana::query::cache::ResultCache;
    use sokana::query::catalog::WarehouseCatalog;
    use sokana::query::engine::{Caller, EngineChoice, Limits, QueryEngine, QueryRequest};
    use std::time::Duration;
    let sort = |project: &Project| {
        let warehouse = sokana::pipeline::warehouse(&project.config()).expect("warehouse");
        let limits = Limits { timeout: Duration::from_secs(120), memory_limit_mb: 16, max_rows: 10_000_000 };
        let cache = ResultCache::new(0, Duration::from_secs(1));
        let engine = QueryEngine::new(std::sync::Arc::new(WarehouseCatalog::new(warehouse)), limits, cache, None)
            .expect("engine");
        let request = QueryRequest {
            sql: "SELECT a.description, b.description AS other FROM raw.client_activities a \
                  CROSS JOIN raw.client_activities b ORDER BY 1, 2"
                .into(),
            engine: EngineChoice::Datafusion,
            params: sokana::query::Params::None,
            page: None,
            caller: Caller::cli(),
        };
        async move { engine.query(&request).await.map(|answer| answer.result.rows) }
    };
    let plain = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", plain.dir.path(), 0.05).await;
    plain.run().await.expect("plain load");
    let rows = sort(&plain).await.expect("a plain warehouse's sort spills and finishes");
    assert!(rows > 100_000, "{rows} rows: enough to outgrow 16 MB");

    let encrypted = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", encrypted.dir.path(), 0.05).await;
    set_key_file(&encrypted, KEY_A);
    encrypted.run().await.expect("encrypted load");
    let error = sort(&encrypted).await.expect_err("no spilling").to_string();
    assert!(error.contains("more memory than its limit"), "{error}");
}
