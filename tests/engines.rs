//! DuckDB over the warehouse: the same answers as DataFusion from the same files (partitioned and
//! evolved tables included), and no way out of the warehouse folder.

mod common;

use common::{Project, seed};
use sokana::query::{self, OutputFormat, catalog::WarehouseCatalog, duck::DuckSession};

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_answers_like_datafusion_from_the_same_files() {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.05).await;
    project.add_core_models("engines-test-key-0123456789");
    project.run().await.expect("pipeline with models");
    let warehouse = sokana::pipeline::warehouse(&project.config()).expect("warehouse");
    let datafusion = query::session(&warehouse).await.expect("datafusion");
    let duck =
        std::sync::Arc::new(DuckSession::open(&WarehouseCatalog::new(warehouse.clone()), None).await.expect("duckdb"));
    for sql in [
        "SELECT count(*) AS n, CAST(sum(amount) AS VARCHAR) AS total FROM raw.payments",
        // fct_payments is partitioned by month: the column comes from the file paths.
        "SELECT CAST(month AS VARCHAR) AS m, count(*) AS n, CAST(sum(amount) AS VARCHAR) AS total \
         FROM marts.fct_payments GROUP BY 1 ORDER BY 1",
        "SELECT status, count(*) AS n FROM marts.dim_clients GROUP BY 1 ORDER BY 1",
        "SELECT bucket, invoices, CAST(balance AS VARCHAR) AS balance FROM marts.mart_ar_aging ORDER BY bucket_order",
    ] {
        let expected = query::format(&query::run(&datafusion, sql).await.expect(sql), OutputFormat::Csv).expect("csv");
        let (_, batches) = duck.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(query::format(&batches, OutputFormat::Csv).expect("csv"), expected, "{sql}");
    }
    let (schema, batches) = duck.query("SELECT * FROM raw.payments WHERE false").expect("empty result");
    assert!(batches.iter().all(|b| b.num_rows() == 0));
    assert!(schema.field_with_name("amount").is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_cannot_reach_outside_the_warehouse() {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.02).await;
    project.run().await.expect("pipeline");
    let warehouse = sokana::pipeline::warehouse(&project.config()).expect("warehouse");
    let duck =
        std::sync::Arc::new(DuckSession::open(&WarehouseCatalog::new(warehouse.clone()), None).await.expect("duckdb"));
    let escape = project.dir.path().join("escaped.csv");
    let inside = project.dir.path().join("warehouse/raw/planted.csv");
    let operational = project.sqlite_path();
    for sql in [
        "SELECT * FROM read_csv('/etc/passwd')".to_string(),
        format!("COPY (SELECT 1) TO '{}'", escape.display()),
        format!("COPY (SELECT 1) TO '{}'", inside.display()),
        "CREATE TABLE raw.planted AS SELECT 1".to_string(),
        "DROP VIEW raw.phi_clients".to_string(),
        "SELECT 1; DROP VIEW raw.phi_clients".to_string(),
        format!("ATTACH '{}' AS source", operational.display()),
        "INSTALL httpfs".to_string(),
        "LOAD httpfs".to_string(),
        "SET enable_external_access = true".to_string(),
        "SELECT * FROM read_parquet('s3://elsewhere/data.parquet')".to_string(),
    ] {
        assert!(duck.query(&sql).is_err(), "must be refused: {sql}");
    }
    assert!(!escape.exists() && !inside.exists(), "nothing was written");
    assert!(duck.query("SELECT count(*) FROM raw.phi_clients").is_ok(), "the warehouse itself stays readable");

    let datafusion = query::session(&warehouse).await.expect("datafusion");
    for sql in [
        "CREATE EXTERNAL TABLE passwd STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "SELECT * FROM '/etc/passwd'".to_string(),
        format!("COPY (SELECT 1) TO '{}'", escape.display()),
        "INSERT INTO raw.payments (id) VALUES (1)".to_string(),
        "DROP TABLE raw.payments".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        assert!(query::run(&datafusion, &sql).await.is_err(), "must be refused: {sql}");
    }
    assert!(!escape.exists(), "nothing was written");
    assert!(query::run(&datafusion, "SELECT count(*) FROM raw.phi_clients").await.is_ok());
}
