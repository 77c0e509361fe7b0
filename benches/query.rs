//! Query benchmark: the 22 TPC-H queries over the warehouse at `SOKANA_BENCH_SF` (default 1), and
//! questions over the Sokana marts, each run five ways in the same process on the same Parquet files:
//!
//! - DataFusion through our layer (`QueryEngine`, cache off) and DataFusion alone (a bare
//!   `SessionContext` over delta-rs's providers);
//! - DuckDB through our layer and DuckDB alone (an in-memory DuckDB with plain views over the
//!   same files);
//! - `auto` through our layer, after the runs above taught it the faster engine per plan shape.
//!
//! Each query is run once to warm up, then `SOKANA_BENCH_ROUNDS` samples (default 3) per way (a
//! sample of a query under 200 ms is the mean of enough runs to last 200 ms),
//! alternating ways; medians are reported with per-query ratios and geometric means as Markdown for
//! benches/README.md. A pass measures cached repeats (server time inside the engine). Then the
//! same five ways over the Sokana marts at `SOKANA_BENCH_SCALE` (default 100): seeded into SQLite,
//! loaded and modelled by the pipeline.
//! Run: `cargo bench --bench query`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::prelude::{SessionConfig, SessionContext};
use sokana::query::cache::ResultCache;
use sokana::query::catalog::WarehouseCatalog;
use sokana::query::engine::{Caller, EngineChoice, Limits, QueryEngine, QueryRequest};
use sokana::query::{Params, duckdb_arrow};
use sokana::warehouse::Warehouse;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn geomean(values: &[f64]) -> f64 {
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// The least time one sample of a query lasts (short queries are repeated within a sample).
const SAMPLE_MS: f64 = 200.0;

const WAYS: [&str; 5] = ["datafusion (layer)", "datafusion (bare)", "duckdb (layer)", "duckdb (bare)", "auto (layer)"];

/// Sokana workload: the questions the marts answer (a saved query among them, its parameter
/// written in), and a raw-table aggregate.
const SOKANA_QUERIES: &[&str] = &[
    "SELECT month, invoices, invoiced, payments, collected, outstanding FROM marts.mart_revenue_monthly \
     WHERE month >= DATE '2022-01-01' ORDER BY month",
    "SELECT * FROM marts.mart_ar_aging",
    "SELECT * FROM marts.mart_client_funnel",
    "SELECT method, gateway, count(*) AS n, sum(amount) AS total FROM marts.fct_payments GROUP BY 1, 2 ORDER BY 4 DESC",
    "SELECT month, count(DISTINCT client_key) AS clients, sum(amount) AS collected FROM marts.fct_payments GROUP BY 1 ORDER BY 1",
    "SELECT doula_key, type, sum(duration_hours) AS hours FROM marts.fct_hours GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 50",
    "SELECT status, count(*) AS n FROM raw.phi_clients GROUP BY 1 ORDER BY 2 DESC",
    "SELECT p.month, count(*) AS payments, sum(p.amount) AS amount FROM marts.fct_payments p \
     JOIN raw.phi_contracts k ON k.id = p.contract_id WHERE k.status IS NOT NULL GROUP BY 1 ORDER BY 1",
];

fn main() {
    let sf: f64 = env_or("SOKANA_BENCH_SF", 1.0);
    let scale: f64 = env_or("SOKANA_BENCH_SCALE", 100.0);
    let rounds: usize = env_or("SOKANA_BENCH_ROUNDS", 3);
    eprintln!("cpu pressure before start:\n{}", std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // SOKANA_BENCH_SF=0 skips TPC-H.
    if sf > 0.0 {
        let dir = tempfile::Builder::new().prefix("sokana-bench-query-").tempdir().expect("temp dir");
        let root = url::Url::from_directory_path(dir.path().join("warehouse")).expect("url");
        let warehouse = Warehouse::new(root);
        let started = Instant::now();
        runtime.block_on(common::tpch::load(&warehouse, sf));
        eprintln!("TPC-H SF{sf} written in {:.1}s", started.elapsed().as_secs_f64());
        let tpch: Vec<(String, String)> = (1..=22).map(|n| (format!("Q{n}"), common::tpch::query(n))).collect();
        let bench = Bench::new(&runtime, warehouse, rounds);
        let table = bench.measure(&tpch);
        println!("TPC-H SF{sf}, {rounds} rounds, medians in ms:\n\n{table}\n");
        let (median_us, max_us) = bench.cached_repeats(&tpch);
        println!(
            "cached repeats ({} queries, in-engine time): median {median_us:.0} µs, max {max_us:.0} µs",
            tpch.len()
        );
    }

    let project = common::Project::new("sqlite://operational.db");
    let started = Instant::now();
    runtime.block_on(async {
        common::seed("sqlite://operational.db", project.dir.path(), scale).await;
        project.add_core_models("bench-pseudonym-key-0123456789");
        project.run().await.expect("pipeline and models");
    });
    eprintln!("Sokana scale {scale} seeded, loaded and modelled in {:.1}s", started.elapsed().as_secs_f64());
    let sokana: Vec<(String, String)> =
        SOKANA_QUERIES.iter().enumerate().map(|(i, sql)| (format!("S{}", i + 1), sql.to_string())).collect();
    let bench = Bench::new(&runtime, sokana::pipeline::warehouse(&project.config()).expect("warehouse"), rounds);
    let table = bench.measure(&sokana);
    println!("Sokana marts at scale {scale}, {rounds} rounds, medians in ms:\n\n{table}\n");
    for (label, sql) in &sokana {
        println!("- {label}: `{}`", sql.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    eprintln!("cpu pressure after:\n{}", std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default());
}

/// One warehouse, read five ways.
struct Bench<'a> {
    runtime: &'a tokio::runtime::Runtime,
    catalog: Arc<WarehouseCatalog>,
    layer: QueryEngine,
    bare_df: SessionContext,
    bare_duck: duckdb::Connection,
    limits: Limits,
    rounds: usize,
}

impl<'a> Bench<'a> {
    fn new(runtime: &'a tokio::runtime::Runtime, warehouse: Warehouse, rounds: usize) -> Bench<'a> {
        let limits = Limits { timeout: Duration::from_secs(600), memory_limit_mb: 16 * 1024, max_rows: u64::MAX };
        let catalog = Arc::new(WarehouseCatalog::new(warehouse.clone()));
        let layer = QueryEngine::new(catalog.clone(), limits, ResultCache::new(0, Duration::from_secs(1)), None)
            .expect("engine");
        let bare_df = runtime.block_on(bare_datafusion(&warehouse));
        let bare_duck = runtime.block_on(bare_duckdb(&catalog));
        Bench { runtime, catalog, layer, bare_df, bare_duck, limits, rounds }
    }

    /// One run of `sql` one way: milliseconds and rows.
    fn run(&self, way: usize, sql: &str) -> (f64, u64) {
        let request = |engine: EngineChoice| QueryRequest {
            sql: sql.to_string(),
            engine,
            params: Params::None,
            page: None,
            caller: Caller::cli(),
        };
        let started = Instant::now();
        let rows = match way {
            0 => {
                self.runtime
                    .block_on(self.layer.query(&request(EngineChoice::Datafusion)))
                    .expect("layer df")
                    .result
                    .rows
            }
            1 => self.runtime.block_on(async {
                let batches = self.bare_df.sql(sql).await.expect("plan").collect().await.expect("run");
                batches.iter().map(|b| b.num_rows() as u64).sum()
            }),
            2 => {
                self.runtime.block_on(self.layer.query(&request(EngineChoice::Duckdb))).expect("layer duck").result.rows
            }
            3 => {
                let mut statement = self.bare_duck.prepare(sql).expect("prepare");
                let batches: Vec<_> = statement.query_arrow([]).expect("run").collect();
                // The bare run converts to our Arrow too, as our layer must: same work per row.
                batches.into_iter().map(|b| duckdb_arrow::to_engine(b).expect("bridge").num_rows() as u64).sum()
            }
            _ => self.runtime.block_on(self.layer.query(&request(EngineChoice::Auto))).expect("layer auto").result.rows,
        };
        (started.elapsed().as_secs_f64() * 1000.0, rows)
    }

    /// Every query every way, alternating; a Markdown table of medians and ratios.
    fn measure(&self, queries: &[(String, String)]) -> String {
        let mut table = vec![format!(
            "| query | {} | df layer / bare | duck layer / bare | df / duck (bare) | auto / duck bare |\n|---|{}---|---|---|---|",
            WAYS.iter().map(|w| format!("{w} ms")).collect::<Vec<_>>().join(" | "),
            "---|".repeat(WAYS.len())
        )];
        let mut ratios: [Vec<f64>; 4] = Default::default();
        let mut totals = [0.0f64; 5];
        for (label, sql) in queries {
            // Warm-up: file metadata, DuckDB's views, and auto's first samples.
            let warm: Vec<(f64, u64)> = (0..WAYS.len()).map(|way| self.run(way, sql)).collect();
            let rows: Vec<u64> = warm.iter().map(|w| w.1).collect();
            assert!(rows.windows(2).all(|w| w[0] == w[1]), "{label}: the ways disagree on row counts: {rows:?}");
            // A sample of a query that takes milliseconds is the mean of enough runs to last
            // SAMPLE_MS: single runs of it vary by half between rounds on this machine.
            let slowest = warm.iter().map(|w| w.0).fold(0.0, f64::max);
            let repeats = ((SAMPLE_MS / slowest).ceil() as usize).clamp(1, 100);
            let mut samples: [Vec<f64>; 5] = Default::default();
            for _ in 0..self.rounds {
                for (way, bucket) in samples.iter_mut().enumerate() {
                    let total: f64 = (0..repeats).map(|_| self.run(way, sql).0).sum();
                    bucket.push(total / repeats as f64);
                }
            }
            let m: Vec<f64> = samples.iter().map(|s| median(s.clone())).collect();
            for (total, value) in totals.iter_mut().zip(&m) {
                *total += value;
            }
            let r = [m[0] / m[1], m[2] / m[3], m[1] / m[3], m[4] / m[3]];
            for (bucket, value) in ratios.iter_mut().zip(r) {
                bucket.push(value);
            }
            table.push(format!(
                "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                m.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" | "),
                r[0],
                r[1],
                r[2],
                r[3]
            ));
            eprintln!("{}", table.last().map(String::as_str).unwrap_or(""));
        }
        table.push(format!(
            "| total / geomean | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            totals.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" | "),
            geomean(&ratios[0]),
            geomean(&ratios[1]),
            geomean(&ratios[2]),
            geomean(&ratios[3])
        ));
        table.join("\n")
    }

    /// The same request twice on an engine with the cache on; the second's time, median and max.
    fn cached_repeats(&self, queries: &[(String, String)]) -> (f64, f64) {
        let cached = QueryEngine::new(
            self.catalog.clone(),
            self.limits,
            ResultCache::new(1 << 30, Duration::from_secs(3600)),
            None,
        )
        .expect("engine");
        let mut hits = Vec::new();
        for (label, sql) in queries {
            let request = QueryRequest {
                sql: sql.clone(),
                engine: EngineChoice::Datafusion,
                params: Params::None,
                page: None,
                caller: Caller::cli(),
            };
            let first = self.runtime.block_on(cached.query(&request)).expect("first");
            assert!(!first.cache_hit);
            let started = Instant::now();
            let again = self.runtime.block_on(cached.query(&request)).expect("again");
            hits.push(started.elapsed().as_secs_f64() * 1e6);
            assert!(again.cache_hit, "{label} repeat must hit");
        }
        (median(hits.clone()), hits.iter().copied().fold(0.0, f64::max))
    }
}

/// DataFusion alone: the tables registered straight from delta-rs, default settings, by schema
/// (`raw.payments`) and, for the unqualified TPC-H queries, by name alone.
async fn bare_datafusion(warehouse: &Warehouse) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new());
    let catalog = ctx.catalog("datafusion").expect("default catalog");
    for schema in sokana::warehouse::SCHEMAS {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new())).expect("schema");
    }
    for name in warehouse.list_tables().await.expect("tables") {
        let table = warehouse.open(&name).await.expect("open").expect("committed");
        let provider = table.table_provider().await.expect("provider");
        ctx.register_table(TableReference::partial(name.schema.as_str(), name.name.as_str()), provider.clone())
            .expect("register");
        if !ctx.table_exist(name.name.as_str()).expect("lookup") {
            ctx.register_table(name.name.as_str(), provider).expect("register");
        }
    }
    ctx
}

/// DuckDB alone: plain views over the same Parquet files, default settings, named as above.
async fn bare_duckdb(catalog: &WarehouseCatalog) -> duckdb::Connection {
    let conn = duckdb::Connection::open_in_memory().expect("duckdb");
    let mut unqualified = std::collections::HashSet::new();
    for name in catalog.warehouse().list_tables().await.expect("tables") {
        let table = catalog.delta(&name).await.expect("open").expect("committed");
        let files: Vec<String> = table.get_file_uris().expect("files").map(|f| format!("'{f}'")).collect();
        let (schema, table) = (&name.schema, &name.name);
        conn.execute_batch(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE VIEW {schema}.{table} AS SELECT * FROM read_parquet([{}])",
            files.join(", ")
        ))
        .expect("view");
        if unqualified.insert(table.clone()) {
            conn.execute_batch(&format!("CREATE VIEW {table} AS SELECT * FROM {schema}.{table}")).expect("view");
        }
    }
    conn
}
