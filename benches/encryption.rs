//! Encryption at rest, side by side with the same warehouse in the clear: Sokana data at
//! `SOKANA_BENCH_SCALE` (default 20) seeded once into SQLite, loaded and modelled by the pipeline
//! into a plain warehouse and into an encrypted one, then the Sokana questions through DataFusion
//! (cache off) on each, alternating, `SOKANA_BENCH_ROUNDS` times (default 5). Reports load times,
//! per-query medians and the encrypted/plain ratios with their geometric mean, as Markdown for
//! benches/README.md. Run: `cargo bench --bench encryption`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sokana::query::Params;
use sokana::query::cache::ResultCache;
use sokana::query::catalog::WarehouseCatalog;
use sokana::query::engine::{Caller, EngineChoice, Limits, QueryEngine, QueryRequest};

const KEY: &str = "5eb63bbbe01eeed093cb22bb8f5acdc35eb63bbbe01eeed093cb22bb8f5acdc3";

const QUERIES: &[&str] = &[
    "SELECT * FROM marts.mart_revenue_monthly ORDER BY month",
    "SELECT * FROM marts.mart_ar_aging",
    "SELECT method, gateway, count(*) AS n, sum(amount) AS total FROM marts.fct_payments GROUP BY 1, 2 ORDER BY 4 DESC",
    "SELECT doula_key, type, sum(duration_hours) AS hours FROM marts.fct_hours GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 50",
    "SELECT status, count(*) AS n FROM raw.phi_clients GROUP BY 1 ORDER BY 2 DESC",
    "SELECT count(*), sum(length(description)) FROM raw.client_activities",
    "SELECT * FROM raw.phi_clients WHERE client_number = 'CL-00042'",
];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn main() {
    let scale: f64 = env_or("SOKANA_BENCH_SCALE", 20.0);
    let rounds: usize = env_or("SOKANA_BENCH_ROUNDS", 5);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let plain = common::Project::new("sqlite://operational.db");
    runtime.block_on(common::seed("sqlite://operational.db", plain.dir.path(), scale));
    let sealed = common::Project::with_config(
        "sqlite://operational.db",
        sokana::SOKANA_CORE_PIPELINE,
        "uri = \"warehouse\"\nkey_file = \"warehouse.key\"",
    );
    std::fs::write(sealed.dir.path().join("warehouse.key"), KEY).expect("key file");
    std::fs::copy(plain.sqlite_path(), sealed.sqlite_path()).expect("same source");

    let mut loads = Vec::new();
    for project in [&plain, &sealed] {
        project.add_core_models("bench-pseudonym-key-0123456789");
        let started = Instant::now();
        runtime.block_on(project.run()).expect("pipeline and models");
        loads.push(started.elapsed().as_secs_f64());
    }
    let bytes = |project: &common::Project| -> u64 {
        common::files_under(&project.dir.path().join("warehouse"))
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };

    let limits = Limits { timeout: Duration::from_secs(600), memory_limit_mb: 8 * 1024, max_rows: u64::MAX };
    let engines: Vec<QueryEngine> = [&plain, &sealed]
        .iter()
        .map(|project| {
            let warehouse = sokana::pipeline::warehouse(&project.config()).expect("warehouse");
            let catalog = Arc::new(WarehouseCatalog::new(warehouse));
            QueryEngine::new(catalog, limits, ResultCache::new(0, Duration::from_secs(1)), None).expect("engine")
        })
        .collect();
    let run = |engine: &QueryEngine, sql: &str| -> f64 {
        let request = QueryRequest {
            sql: sql.to_string(),
            engine: EngineChoice::Datafusion,
            params: Params::None,
            page: None,
            caller: Caller::cli(),
        };
        let started = Instant::now();
        runtime.block_on(engine.query(&request)).expect("query");
        started.elapsed().as_secs_f64() * 1000.0
    };

    println!(
        "Sokana scale {scale}: load (seed excluded) plain {:.2} s, encrypted {:.2} s ({:.3}×)",
        loads[0],
        loads[1],
        loads[1] / loads[0]
    );
    println!("warehouse bytes: plain {}, encrypted {}\n", bytes(&plain), bytes(&sealed));
    println!("| query | plain (ms) | encrypted (ms) | ratio |\n|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        for engine in &engines {
            run(engine, sql);
        }
        let mut samples = [Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (way, engine) in engines.iter().enumerate() {
                samples[way].push(run(engine, sql));
            }
        }
        let [plain_ms, sealed_ms] = samples.map(median);
        ratios.push(sealed_ms / plain_ms);
        println!("| E{} | {plain_ms:.2} | {sealed_ms:.2} | {:.3} |", i + 1, sealed_ms / plain_ms);
    }
    let geomean = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    println!("\ngeomean encrypted/plain: {geomean:.3} ({rounds} rounds, medians)\n");
    for (i, sql) in QUERIES.iter().enumerate() {
        println!("- E{}: `{sql}`", i + 1);
    }
}
