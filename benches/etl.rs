//! End-to-end ETL benchmark: PostgreSQL → Delta table on a local object store, beside DuckDB's
//! postgres scanner writing Parquet and `psql \copy … (format binary)` to /dev/null (the floor).
//!
//! Workloads: TPC-H `lineitem` (SF from `SOKANA_BENCH_SF`, default 1 = 6.0 M rows) and the
//! synthetic Sokana source (scale from `SOKANA_BENCH_SCALE`, default 100). The tools alternate
//! A/B/C/A/B/C for `SOKANA_BENCH_ROUNDS` rounds (default 3); every run checks the row count and a
//! checksum against the source. Prints medians and ratios as a Markdown table for benches/README.md.
//!
//! Needs the PostgreSQL server binaries and `pip install duckdb==1.5.5
//! duckdb-extension-postgres-scanner==1.5.5` (the extension is loaded from site-packages; the
//! benchmark machine has no network for `INSTALL`). Run: `cargo bench --bench etl`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use futures::SinkExt;

const LINEITEM_DDL: &str = "CREATE TABLE lineitem (
  l_orderkey bigint NOT NULL, l_partkey bigint, l_suppkey bigint, l_linenumber integer NOT NULL,
  l_quantity numeric(15,2), l_extendedprice numeric(15,2), l_discount numeric(15,2), l_tax numeric(15,2),
  l_returnflag text, l_linestatus text, l_shipdate date, l_commitdate date, l_receiptdate date,
  l_shipinstruct text, l_shipmode text, l_comment text, PRIMARY KEY (l_orderkey, l_linenumber))";

const LINEITEM_PIPELINE: &str = "source = \"core\"\n\n[[tables]]\nname = \"lineitem\"\n\
    primary_key = [\"l_orderkey\", \"l_linenumber\"]\ncursor = \"l_orderkey\"\n";

/// What each tool must reproduce: rows and a checksum per table.
struct Expected {
    tables: Vec<(String, i64, String)>,
}

struct Measure {
    seconds: f64,
    peak_mb: Option<f64>,
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let pressure = std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default();
    eprintln!("cpu pressure before start:\n{pressure}");
    let rounds: usize = env_or("SOKANA_BENCH_ROUNDS", 3);
    let sf: f64 = env_or("SOKANA_BENCH_SF", 1.0);
    let scale: f64 = env_or("SOKANA_BENCH_SCALE", 100.0);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let pg = common::Postgres::start();
    let mut report = vec![String::from(
        "| workload | rows | sokana (s) | duckdb scanner (s) | psql binary COPY (s) | sokana / duckdb | sokana / COPY | sokana peak RSS (MB) |\n|---|---|---|---|---|---|---|---|",
    )];

    let started = Instant::now();
    runtime.block_on(load_lineitem(&pg, sf));
    eprintln!("lineitem SF{sf} loaded into PostgreSQL in {:.1}s", started.elapsed().as_secs_f64());
    let lineitem = runtime.block_on(expected(&pg.url(), &["lineitem"]));
    let started = Instant::now();
    runtime.block_on(async {
        let client = pg.client().await;
        client.batch_execute("CREATE DATABASE sokana").await.expect("create database");
    });
    let sokana_url = format!("postgres://postgres@127.0.0.1:{}/sokana", pg.port);
    runtime.block_on(common::seed(&sokana_url, Path::new("."), scale));
    eprintln!("Sokana scale {scale} seeded into PostgreSQL in {:.1}s", started.elapsed().as_secs_f64());
    let tables: Vec<&str> =
        sokana::source::schema::TABLES.iter().map(|t| t.name).filter(|t| *t != "quickbooks_tokens").collect();
    let expected_sokana = runtime.block_on(expected(&sokana_url, &tables));
    if std::env::var_os("SOKANA_BENCH_HOLD").is_some() {
        // For profiling by hand: keep the loaded cluster until stdin closes.
        eprintln!("holding; lineitem at {}, Sokana at {sokana_url}", pg.url());
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return;
    }
    report.push(workload(&runtime, &pg.url(), &format!("TPC-H lineitem SF{sf}"), LINEITEM_PIPELINE, &lineitem, rounds));
    report.push(workload(
        &runtime,
        &sokana_url,
        &format!("Sokana scale {scale}"),
        sokana::SOKANA_CORE_PIPELINE,
        &expected_sokana,
        rounds,
    ));

    println!("{}", report.join("\n"));
    eprintln!("cpu pressure after:\n{}", std::fs::read_to_string("/proc/pressure/cpu").unwrap_or_default());
}

async fn load_lineitem(pg: &common::Postgres, sf: f64) {
    let client = pg.client().await;
    client.batch_execute(LINEITEM_DDL).await.expect("ddl");
    let sink = client.copy_in("COPY lineitem FROM STDIN (DELIMITER '|')").await.expect("copy in");
    let mut sink = std::pin::pin!(sink);
    let mut buffer = String::with_capacity(8 << 20);
    for item in tpchgen::generators::LineItemGenerator::new(sf, 1, 1) {
        use std::fmt::Write;
        let _ = writeln!(buffer, "{item}");
        // tbl lines end with a trailing '|', which COPY would read as one more column.
        buffer.truncate(buffer.len() - 2);
        buffer.push('\n');
        if buffer.len() >= 8 << 20 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut buffer))).await.expect("copy chunk");
        }
    }
    sink.send(bytes::Bytes::from(buffer)).await.expect("copy chunk");
    sink.as_mut().finish().await.expect("copy finish");
    client.batch_execute("VACUUM ANALYZE lineitem").await.expect("vacuum");
}

/// The column whose sum checks a table's contents, if any.
fn checksum_column(table: &str) -> Option<&'static str> {
    match table {
        "lineitem" => Some("l_extendedprice"),
        "payments" => Some("amount"),
        _ => None,
    }
}

async fn expected(url: &str, tables: &[&str]) -> Expected {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    let mut out = Vec::new();
    for t in tables {
        let sum = checksum_column(t).map_or("'0'".to_string(), |c| format!("coalesce(sum({c}), 0)::text"));
        let row = client.query_one(&format!("SELECT count(*), {sum} FROM {t}"), &[]).await.expect("expected");
        out.push((t.to_string(), row.get(0), row.get(1)));
    }
    Expected { tables: out }
}

fn workload(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    name: &str,
    pipeline: &str,
    expected: &Expected,
    rounds: usize,
) -> String {
    let (mut ours, mut duck, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        ours.push(run_sokana(runtime, url, pipeline, expected));
        duck.push(run_duckdb(url, expected));
        copy.push(run_copy(url, expected));
        eprintln!(
            "{name} round {}: sokana {:.2}s (peak {:.0} MB), duckdb {:.2}s, COPY {:.2}s",
            round + 1,
            ours[round].seconds,
            ours[round].peak_mb.unwrap_or(0.0),
            duck[round].seconds,
            copy[round].seconds
        );
    }
    let median = |v: &[Measure]| {
        let mut s: Vec<f64> = v.iter().map(|m| m.seconds).collect();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let (o, d, c) = (median(&ours), median(&duck), median(&copy));
    let peak = ours.iter().filter_map(|m| m.peak_mb).fold(0.0, f64::max);
    let rows: i64 = expected.tables.iter().map(|t| t.1).sum();
    format!("| {name} | {rows} | {o:.2} | {d:.2} | {c:.2} | {:.2} | {:.2} | {peak:.0} |", o / d, o / c)
}

fn run_sokana(runtime: &tokio::runtime::Runtime, url: &str, pipeline: &str, expected: &Expected) -> Measure {
    let project = common::Project::with_pipeline(url, pipeline);
    let started = Instant::now();
    let output = Command::new("python3")
        .args(["-c", PEAK_RSS_SCRIPT, env!("CARGO_BIN_EXE_sokana"), "--config"])
        .arg(&project.config_path)
        // The source's pipeline only: `--all` would also run the built-in audit pipeline, which
        // the peers have no counterpart of.
        .args(["pipeline", "run", "sokana_core"])
        .stderr(Stdio::inherit())
        .output()
        .expect("python3");
    let seconds = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "sokana failed");
    let peak_kb: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().expect("peak RSS");
    let config = project.config();
    for (table, rows, sum) in &expected.tables {
        let count = runtime.block_on(common::warehouse_count(&config, &format!("SELECT count(*) FROM raw.{table}")));
        assert_eq!(count, *rows, "sokana: raw.{table} row count");
        if let Some(column) = checksum_column(table) {
            let got = runtime
                .block_on(warehouse_text(&config, &format!("SELECT CAST(sum({column}) AS VARCHAR) FROM raw.{table}")));
            assert_eq!(&got, sum, "sokana: raw.{table} checksum");
        }
    }
    Measure { seconds, peak_mb: Some(peak_kb / 1024.0) }
}

async fn warehouse_text(config: &sokana::config::Config, sql: &str) -> String {
    let ctx = sokana::query::unmasked_session(&sokana::pipeline::warehouse(config).expect("warehouse"))
        .await
        .expect("session");
    let batches = sokana::query::run(&ctx, sql).await.expect("query");
    let csv = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).expect("csv");
    csv.lines().nth(1).unwrap_or_default().trim().to_string()
}

/// Runs a command and prints its peak resident memory in KiB. A small parent matters: Linux starts
/// a child's high-water mark at its parent's size at fork, so measured from this (large) process
/// every child would seem to use what the benchmark itself holds.
const PEAK_RSS_SCRIPT: &str = r#"
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

const DUCKDB_SCRIPT: &str = r#"
import os, sys, time, duckdb, duckdb_extension_postgres_scanner as ext
dsn, out, tables, sums = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4].split(",")
path = os.path.join(os.path.dirname(ext.__file__), "extensions", "v" + duckdb.__version__, "postgres_scanner.duckdb_extension")
con = duckdb.connect()
con.execute(f"LOAD '{path}'")
start = time.perf_counter()
con.execute(f"ATTACH '{dsn}' AS pg (TYPE postgres, READ_ONLY)")
for t in tables:
    con.execute(f"COPY (SELECT * FROM pg.public.{t}) TO '{out}/{t}.parquet' (FORMAT parquet)")
elapsed = time.perf_counter() - start
for t, s in zip(tables, sums):
    n, total = con.execute(f"SELECT count(*), coalesce(sum({s}), 0)::VARCHAR FROM '{out}/{t}.parquet'" if s != "-" else f"SELECT count(*), '0' FROM '{out}/{t}.parquet'").fetchone()
    print(t, n, total)
print("elapsed", elapsed)
"#;

fn run_duckdb(url: &str, expected: &Expected) -> Measure {
    let out = tempfile::tempdir().expect("tmp");
    let parsed = url::Url::parse(url).expect("url");
    let dsn = format!(
        "host=127.0.0.1 port={} user={} dbname={}",
        parsed.port().unwrap_or(5432),
        parsed.username(),
        parsed.path().trim_start_matches('/')
    );
    let tables: Vec<&str> = expected.tables.iter().map(|t| t.0.as_str()).collect();
    let sums: Vec<&str> = expected.tables.iter().map(|t| checksum_column(&t.0).unwrap_or("-")).collect();
    let started = Instant::now();
    let output = Command::new("python3")
        .args(["-c", DUCKDB_SCRIPT, &dsn])
        .arg(out.path())
        .args([tables.join(","), sums.join(",")])
        .output()
        .expect("python3 with duckdb");
    let wall = started.elapsed();
    assert!(output.status.success(), "duckdb: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    let mut seconds = wall.as_secs_f64();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["elapsed", s] => seconds = s.parse().unwrap_or(seconds),
            [table, n, total] => {
                let (_, rows, sum) = expected.tables.iter().find(|t| t.0 == *table).expect("table");
                assert_eq!(n.parse::<i64>().ok(), Some(*rows), "duckdb: {table} row count");
                if checksum_column(table).is_some() {
                    assert_eq!(total.parse::<f64>().ok(), sum.parse::<f64>().ok(), "duckdb: {table} checksum");
                }
            }
            _ => {}
        }
    }
    Measure { seconds, peak_mb: None }
}

fn run_copy(url: &str, expected: &Expected) -> Measure {
    let started = Instant::now();
    for (table, rows, _) in &expected.tables {
        let output = Command::new("psql")
            .args([url, "-X", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("\\copy (SELECT * FROM {table}) TO '/dev/null' (FORMAT binary)"))
            .output()
            .expect("psql");
        assert!(output.status.success(), "psql: {}", String::from_utf8_lossy(&output.stderr));
        let copied = String::from_utf8_lossy(&output.stdout).trim().strip_prefix("COPY ").and_then(|n| n.parse().ok());
        assert_eq!(copied, Some(*rows), "psql COPY: {table} row count");
    }
    Measure { seconds: started.elapsed().as_secs_f64(), peak_mb: None }
}
