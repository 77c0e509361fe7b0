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
    let datafusion = query::unmasked_session(&warehouse).await.expect("datafusion");
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

    // DuckDB nests block comments and knows dollar quoting; a parser that does not sees one
    // statement where DuckDB sees several, and duckdb-rs runs all but the last of them. DuckDB's
    // own parser decides: only a text that is one SELECT to DuckDB runs at all.
    let (_, before) = duck.query("SELECT count(*) AS n FROM raw.payments").expect("count");
    let replace = "CREATE OR REPLACE VIEW raw.payments AS SELECT 42 AS x";
    let copy = format!("COPY (SELECT 1) TO '{}'", escape.display());
    let copy_inside = format!("COPY (SELECT 1) TO '{}'", inside.display());
    for sql in [
        format!("SELECT 1 AS a /* /* */, ' */; {replace}; SELECT 2 AS b --' AS c"),
        format!("SELECT 1 AS a /* /* */, ' */; {copy}; SELECT 2 AS b --' AS c"),
        format!("SELECT 1 AS a /* /* */, ' */; {copy_inside}; SELECT 2 AS b --' AS c"),
        format!("SELECT $$ ' $$ AS a; {replace}; SELECT ' $$ AS b"),
        format!("SELECT $x$ $$ $x$ AS a; {replace}; --"),
        format!("SELECT 'it''s' AS a; {replace}"),
        format!("/* /* */ {replace}; /* */ */ SELECT 1; {replace}"),
        format!("{replace}; SELECT 1"),
        format!("WITH t AS (SELECT 1) SELECT * FROM t; {replace}"),
        "EXPLAIN ANALYZE SELECT 1".to_string(),
        "CALL pragma_version()".to_string(),
        "".to_string(),
    ] {
        assert!(duck.query(&sql).is_err(), "must be refused: {sql}");
    }
    // To DuckDB these are one SELECT each (an escaped quote keeps the string open): they may
    // run, and change nothing.
    for sql in [
        format!("SELECT E'\\' AS a; {replace}; SELECT 1 -- ' AS b"),
        format!("SELECT $$ ; {replace}; $$ AS a"),
        format!("SELECT 1 AS a /* ; {replace}; /* */ */"),
    ] {
        let _ = duck.query(&sql);
    }
    let (_, after) = duck.query("SELECT count(*) AS n FROM raw.payments").expect("the view is still the table");
    assert_eq!(
        query::format(&after, OutputFormat::Csv).expect("csv"),
        query::format(&before, OutputFormat::Csv).expect("csv")
    );
    assert!(!escape.exists() && !inside.exists(), "nothing was written");
    // One SELECT, however it is quoted or commented, still runs.
    let (_, one) =
        duck.query("SELECT 1 AS a /* /* nested */ still a comment */ , $$ ; $$ AS b").expect("one statement");
    assert_eq!(query::format(&one, OutputFormat::Csv).expect("csv"), "a,b\n1, ; \n");

    let datafusion = query::unmasked_session(&warehouse).await.expect("datafusion");
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
