//! The query layer end to end: TPC-H agrees across engines; the HTTP API answers in four formats
//! with identical contents, pages, caches exactly and refuses bad input clearly; psql and psycopg
//! use the PostgreSQL wire endpoint.

mod common;

use common::{JsonRequest, JsonResponse};

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use common::{Project, seed, tpch};
use serde_json::{Value, json};
use sokana::query::cache::ResultCache;
use sokana::query::catalog::WarehouseCatalog;
use sokana::query::engine::{Caller, EngineChoice, Limits, QueryEngine, QueryRequest};
use sokana::query::{OutputFormat, Params, QueryError};

const PASSWORD: &str = "query-test-password";

fn request(sql: &str, engine: EngineChoice) -> QueryRequest {
    QueryRequest { sql: sql.into(), engine, params: Params::None, page: None, caller: Caller::cli() }
}

fn engine(config: &sokana::config::Config, limits: Limits) -> Arc<QueryEngine> {
    let catalog = Arc::new(WarehouseCatalog::new(sokana::pipeline::warehouse(config).expect("warehouse")));
    Arc::new(
        QueryEngine::new(catalog, limits, ResultCache::new(64 << 20, Duration::from_secs(600)), None).expect("engine"),
    )
}

fn generous() -> Limits {
    Limits { timeout: Duration::from_secs(120), memory_limit_mb: 2048, max_rows: 1_000_000 }
}

/// The rows as cells of text, sorted (ties may come in either order) by their text with numbers
/// coarsened, so that rows whose numbers differ only in the last digits sort alike.
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let csv = sokana::query::format(batches, OutputFormat::Csv).expect("csv");
    let coarse = |cell: &String| match cell.parse::<f64>() {
        Ok(x) => format!("{x:.2e}"),
        Err(_) => cell.clone(),
    };
    let mut rows: Vec<Vec<String>> = csv.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect();
    rows.sort_by_key(|row| row.iter().map(coarse).collect::<Vec<_>>());
    rows
}

/// Equal cell for cell, numbers within a relative 1e-6 (one engine averages decimals into
/// decimals, the other into doubles).
fn agree(a: &[Vec<String>], b: &[Vec<String>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| match (p.parse::<f64>(), q.parse::<f64>()) {
                    (Ok(p), Ok(q)) => (p - q).abs() <= 1e-6 * p.abs().max(q.abs()).max(1.0),
                    _ => p == q,
                })
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn tpch_queries_agree_across_engines() {
    let project = Project::new("sqlite://operational.db");
    let config = project.config();
    tpch::load(&sokana::pipeline::warehouse(&config).expect("warehouse"), 0.01).await;
    let engine = engine(&config, generous());
    for n in 1..=22 {
        let sql = tpch::query(n);
        let datafusion = engine
            .query(&request(&sql, EngineChoice::Datafusion))
            .await
            .unwrap_or_else(|e| panic!("Q{n} on DataFusion: {e}"));
        let duckdb =
            engine.query(&request(&sql, EngineChoice::Duckdb)).await.unwrap_or_else(|e| panic!("Q{n} on DuckDB: {e}"));
        let (a, b) = (rows(&datafusion.result.batches), rows(&duckdb.result.batches));
        assert!(agree(&a, &b), "Q{n}: DataFusion and DuckDB disagree:\n{a:?}\n{b:?}");
        assert_eq!(datafusion.result.engine, EngineChoice::Datafusion);
        assert_eq!(duckdb.result.engine, EngineChoice::Duckdb);
    }
    // Q1 has rows at any scale: the comparison above compared something.
    let q1 = engine.query(&request(&tpch::query(1), EngineChoice::Auto)).await.expect("Q1 on auto");
    assert_eq!(q1.result.rows, 4, "Q1 groups by return flag and line status");
    // A limit over no columns (delta-rs answers those from its log) still limits.
    let none = engine.query(&request("SELECT 1 AS one FROM lineitem LIMIT 5", EngineChoice::Datafusion)).await;
    assert_eq!(none.expect("limit over no columns").result.rows, 5);
    // `auto` learns DuckDB first, and gives its answer DataFusion's names and types (DuckDB
    // averages decimals into doubles).
    let planned = engine.query(&request(&tpch::query(1), EngineChoice::Datafusion)).await.expect("Q1");
    assert_eq!(q1.result.engine, EngineChoice::Duckdb);
    assert_eq!(q1.result.schema, planned.result.schema);
}

/// A demo-like project, with the admin login set and an admin API key.
async fn sokana_project(extra_config: &str) -> (Project, String) {
    let project = common::sokana_project(extra_config).await;
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    // An admin's key: admins log in with a second factor, which one-shot tools cannot type.
    let key = auth.create_api_key("query tests", sokana::auth::Role::Admin, 1, "admin").await.expect("key").key;
    (project, key)
}

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(port: u16, key: &str) -> Api {
        Api { client: reqwest::Client::new(), base: format!("http://127.0.0.1:{port}"), key: key.to_string() }
    }

    fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body)
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await;
        response.expect("request").json().await.expect("json body")
    }

    async fn json(&self, body: Value) -> (u16, HashMap<String, String>, Value) {
        let response = self.post("/api/v1/query", body).send().await.expect("request");
        let status = response.status().as_u16();
        let headers =
            response.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
        (status, headers, response.json().await.expect("json body"))
    }
}

fn csv_of(batches: &[RecordBatch]) -> String {
    sokana::query::format(batches, OutputFormat::Csv).expect("csv")
}

#[tokio::test(flavor = "multi_thread")]
async fn http_api_formats_pages_cache_and_errors() {
    let (project, key) = sokana_project("[query]\nmax_rows = 2000\n").await;
    let server = common::serve(&project);
    let http = server.http;
    let api = Api::new(http, &key);
    let sql = "SELECT payment_id, client_key, CAST(amount AS VARCHAR) AS amount, txn_date FROM marts.fct_payments ORDER BY payment_id";

    // The same rows in JSON, CSV, Arrow and Parquet.
    let (status, headers, json) = api.json(json!({ "sql": sql })).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(headers["x-cache"], "miss");
    assert_eq!(headers["cache-control"], "no-store", "answers hold health data: no cache may keep them");
    let rows = json["rows"].as_array().expect("rows").clone();
    assert!(!rows.is_empty());
    let csv_body =
        api.post("/api/v1/query", json!({ "sql": sql })).header("accept", "text/csv").send().await.expect("csv");
    assert_eq!(csv_body.headers()["content-type"], "text/csv; charset=utf-8");
    let csv_text = csv_body.text().await.expect("csv text");
    assert_eq!(csv_text.lines().count(), rows.len() + 1);
    let arrow = api
        .post("/api/v1/query?format=arrow", json!({ "sql": sql }))
        .send()
        .await
        .expect("arrow")
        .bytes()
        .await
        .expect("bytes");
    let arrow_batches: Vec<RecordBatch> = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(arrow), None)
        .expect("arrow stream")
        .map(|b| b.expect("batch"))
        .collect();
    let parquet = api
        .post("/api/v1/query", json!({ "sql": sql, "format": "parquet" }))
        .send()
        .await
        .expect("parquet")
        .bytes()
        .await
        .expect("bytes");
    let parquet_batches: Vec<RecordBatch> =
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(parquet, 8192)
            .expect("parquet")
            .map(|b| b.expect("batch"))
            .collect();
    assert_eq!(csv_of(&arrow_batches), csv_text, "Arrow and CSV hold the same rows");
    assert_eq!(csv_of(&parquet_batches), csv_text, "Parquet and CSV hold the same rows");
    let first_csv_id = csv_text.lines().nth(1).and_then(|l| l.split(',').next()).expect("first id");
    assert_eq!(rows[0]["payment_id"].to_string(), first_csv_id, "JSON and CSV agree");

    // Compression when asked for.
    let gz =
        api.post("/api/v1/query", json!({ "sql": sql })).header("accept-encoding", "gzip").send().await.expect("gzip");
    assert_eq!(gz.headers().get("content-encoding").map(|v| v.to_str().unwrap_or("")), Some("gzip"));
    let small = api
        .post("/api/v1/query", json!({ "sql": "SELECT 1 AS one" }))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .expect("small answer");
    assert_eq!(small.headers().get("content-encoding"), None, "a small answer is not worth compressing");

    // Cache: a repeat hits; the ETag answers 304.
    let (_, headers, _) = api.json(json!({ "sql": sql })).await;
    assert_eq!(headers["x-cache"], "hit");
    let etag = headers["etag"].clone();
    let not_modified =
        api.post("/api/v1/query", json!({ "sql": sql })).header("if-none-match", &etag).send().await.expect("304");
    assert_eq!(not_modified.status().as_u16(), 304);

    // Pages: limit, then the cursor; together they are the first rows in order; fields select.
    let (_, _, first) = api.json(json!({ "sql": sql, "limit": 5, "fields": ["payment_id", "amount"] })).await;
    assert_eq!(first["row_count"], 5);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["columns"].as_array().map(Vec::len), Some(2));
    let cursor = first["next_cursor"].as_str().expect("cursor").to_string();
    let (_, _, second) = api.json(json!({ "sql": sql, "cursor": cursor, "fields": ["payment_id", "amount"] })).await;
    let paged: Vec<Value> =
        first["rows"].as_array().unwrap().iter().chain(second["rows"].as_array().unwrap()).cloned().collect();
    let expected: Vec<Value> =
        rows[..10].iter().map(|r| json!({ "payment_id": r["payment_id"], "amount": r["amount"] })).collect();
    assert_eq!(paged, expected);

    // A commit to a table the query reads misses; one to another table keeps the hit.
    let other = "SELECT count(*) AS n FROM raw.doulas";
    let (_, headers, before) = api.json(json!({ "sql": other })).await;
    assert_eq!(headers["x-cache"], "miss");
    let payments_sql = "SELECT count(*) AS n FROM raw.payments";
    let (_, _, payments_before) = api.json(json!({ "sql": payments_sql })).await;
    let conn = rusqlite::Connection::open(project.sqlite_path()).expect("sqlite");
    conn.execute(
        "INSERT INTO payments (id, txn_date, amount, method, gateway, transaction_id, description)
         SELECT max(id) + 1, '2026-01-01T00:00:00Z', '10.00', 'cash', NULL, 'txn_query_test', 'test' FROM payments",
        [],
    )
    .expect("new payment");
    project.run().await.expect("second run");
    let (_, headers, payments_after) = api.json(json!({ "sql": payments_sql })).await;
    assert_eq!(headers["x-cache"], "miss", "raw.payments changed");
    assert_eq!(payments_after["rows"][0]["n"].as_i64(), payments_before["rows"][0]["n"].as_i64().map(|n| n + 1));
    let (_, headers, after) = api.json(json!({ "sql": other })).await;
    assert_eq!(headers["x-cache"], "hit", "raw.doulas did not change");
    assert_eq!(after["rows"], before["rows"]);

    // Bad input: errors name what is wrong, with the SQL position and the request id.
    let (status, _, error) = api.json(json!({ "sql": "SELECT id FROM raw.payments\nWHER id > 1" })).await;
    assert_eq!(status, 400);
    assert_eq!(error["error"]["position"]["line"], 2, "{error}");
    assert!(error["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let (status, _, error) = api.json(json!({ "sql": "SELECT * FROM raw.nope" })).await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("raw.nope"), "{error}");
    let (status, _, error) = api.json(json!({ "sql": "SELECT id,\n  nope FROM raw.payments" })).await;
    assert_eq!(status, 400);
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("nope"), "{error}");
    assert_eq!(error["error"]["position"], json!({ "line": 2, "column": 3 }), "{error}");
    for escape in [
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
        "DROP TABLE raw.payments",
        "COPY (SELECT 1) TO '/tmp/sokana-escape.csv'",
        "SELECT * FROM '/etc/passwd'",
    ] {
        let (status, _, error) = api.json(json!({ "sql": escape })).await;
        assert_eq!(status, 400, "{escape}: {error}");
    }
    for escape in ["SELECT * FROM read_csv('/etc/passwd')", "ATTACH 'x.db' AS x", "INSTALL httpfs"] {
        let (status, _, error) = api.json(json!({ "sql": escape, "engine": "duckdb" })).await;
        assert_eq!(status, 400, "{escape}: {error}");
    }
    // More rows than the cap in JSON is refused with advice; the CSV export streams them all.
    let big = "SELECT a.id FROM raw.payments a CROSS JOIN raw.payments b";
    let (status, _, error) = api.json(json!({ "sql": big })).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error["error"]["code"], "too_many_rows");
    let export = api
        .post("/api/v1/query?format=csv", json!({ "sql": big }))
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("text");
    let n = payments_after["rows"][0]["n"].as_i64().unwrap_or(0);
    assert_eq!(export.lines().count() as i64, n * n + 1);
    // Without credentials nothing is answered.
    let anonymous = api
        .client
        .post(format!("{}/api/v1/query", api.base))
        .json(&json!({ "sql": "SELECT 1" }))
        .send()
        .await
        .expect("anon");
    assert_eq!(anonymous.status().as_u16(), 401);

    // Saved queries: listed, run with typed parameters, a wrong type named.
    std::fs::create_dir_all(project.dir.path().join("queries")).expect("queries dir");
    std::fs::write(
        project.dir.path().join("queries/payments_since.sql"),
        "-- @description: Payments on or after a day\n-- @param since: date = 2020-01-01\n\
         SELECT count(*) AS n FROM raw.payments WHERE txn_date >= $since\n",
    )
    .expect("saved query");
    let listed: Value = api.get("/api/v1/queries").await;
    assert_eq!(listed["queries"][0]["name"], "payments_since");
    assert_eq!(listed["queries"][0]["params"][0]["type"], "date");
    let ran: Value = api
        .post("/api/v1/queries/payments_since/run", json!({ "params": { "since": "2000-01-01" } }))
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("json");
    assert_eq!(ran["rows"][0]["n"], payments_after["rows"][0]["n"], "{ran}");
    let wrong = api
        .post("/api/v1/queries/payments_since/run", json!({ "params": { "since": "last tuesday" } }))
        .send()
        .await
        .expect("run");
    assert_eq!(wrong.status().as_u16(), 400);
    let wrong: Value = wrong.json().await.expect("json");
    assert!(wrong["error"]["message"].as_str().unwrap_or("").contains("parameter since"), "{wrong}");
    // Saved queries are found by name among the listed files: a path reaches no file.
    for name in ["..%2F..%2Fsokana.toml", "..%2Fqueries%2Fpayments_since", "%2Fetc%2Fpasswd"] {
        let traversal = api.post(&format!("/api/v1/queries/{name}/run"), json!({})).send().await.expect("run");
        assert_eq!(traversal.status().as_u16(), 404, "{name}");
    }

    // A client that leaves mid-stream: the server goes on answering, and the log says so.
    {
        use std::io::{Read, Write};
        let huge = "SELECT a.id FROM raw.payments a CROSS JOIN raw.payments b CROSS JOIN raw.payments c";
        let body = json!({ "sql": huge, "format": "csv" }).to_string();
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", http)).expect("connect");
        write!(
            socket,
            "POST /api/v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut some = [0u8; 4096];
        let read = socket.read(&mut some).expect("read some");
        assert!(read > 0);
    }
    let (status, _, _) = api.json(json!({ "sql": "SELECT 1 AS one" })).await;
    assert_eq!(status, 200, "the server still answers");
    let log: Value = loop {
        let log: Value = api.get("/api/v1/query-log?limit=50").await;
        if log["recent"].as_array().is_some_and(|r| r.iter().any(|q| q["error"] == "disconnected")) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recent = log["recent"].as_array().expect("recent");
    assert!(recent.iter().any(|q| q["cache_hit"] == true));
    assert!(recent.iter().all(|q| !q["sql"].as_str().unwrap_or("").contains("2000-01-01")), "the log keeps no values");
    let tables: Value = api.get("/api/v1/tables").await;
    let clients = tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["table"] == "raw.phi_clients")
        .expect("phi_clients listed")
        .clone();
    assert!(clients["rows"].as_u64().is_some_and(|n| n > 0));
    assert!(clients["columns"].as_array().expect("columns").iter().any(|c| c["class"] == "phi"), "{clients}");
}

/// psql connected to the wire endpoint on `port` with an admin's API key, database `sokana`.
fn psql(port: u16, key: &str) -> Command {
    let bin = common::pg_bin_dir().join("psql");
    let mut cmd = Command::new(if bin.exists() { bin } else { "psql".into() });
    cmd.env("PGPASSWORD", key).env("PGCONNECT_TIMEOUT", "10");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "admin", "-d", "sokana"]);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_and_psycopg_use_the_wire_endpoint() {
    let (project, key) = sokana_project("").await;
    let server = common::serve(&project);
    let pg = server.pg;
    let source_count: i64 = rusqlite::Connection::open(project.sqlite_path())
        .expect("sqlite")
        .query_row("SELECT count(*) FROM phi_clients", [], |r| r.get(0))
        .expect("count");

    let out = psql(pg, &key).args(["-tA", "-c", "select count(*) from raw.phi_clients"]).output().expect("psql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), source_count.to_string());
    let out = psql(pg, &key).args(["-c", "explain select count(*) from raw.payments"]).output().expect("psql");
    assert!(String::from_utf8_lossy(&out.stdout).contains("logical_plan"), "{}", String::from_utf8_lossy(&out.stderr));
    // The catalog queries behind \dt work.
    let out = psql(pg, &key).args(["-c", "\\dt marts.*"]).output().expect("psql");
    assert!(String::from_utf8_lossy(&out.stdout).contains("dim_clients"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = psql(pg, &key).args(["-c", "drop table raw.phi_clients"]).output().expect("psql");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("only queries"));
    let out = psql(pg, &key).env("PGPASSWORD", "wrong").args(["-c", "select 1"]).output().expect("psql");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));

    // Garbage on the port ends that connection only.
    {
        use std::io::Write;
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", pg)).expect("connect");
        let _ = socket.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    let script = format!(
        "import psycopg\n\
         with psycopg.connect(host='127.0.0.1', port={pg}, user='admin', password='{key}', dbname='sokana') as c:\n\
         \x20   print(c.execute('select count(*) from raw.phi_clients where status = %s or %s', ('lead', True)).fetchone()[0])\n\
         \x20   print(c.execute('select count(*) from raw.phi_clients').fetchone()[0])\n"
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().expect("python3");
    assert!(out.status.success(), "psycopg: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines, vec![source_count.to_string(), source_count.to_string()]);

    // Every parameter type a driver sends binds, on both engines: `auto` runs a new query shape on
    // DuckDB first and DataFusion second, so four runs of each query reach both.
    let script = format!(
        r#"
import datetime, decimal, uuid
import psycopg
from psycopg.types.numeric import Int2, Int4, Int8, Float4
from psycopg.types.string import StrDumper
from psycopg.types.json import Json

class Text(str): pass
class Varchar(str): pass
class TextDumper(StrDumper): oid = 25
class VarcharDumper(StrDumper): oid = 1043

cases = [
    ("int2", Int2(5), "CAST(%s AS SMALLINT) = 5"),
    ("small int", 1, "1 = %s"),
    ("int4", Int4(70000), "CAST(%s AS INT) = 70000"),
    ("int8", Int8(5000000000), "CAST(%s AS BIGINT) = 5000000000"),
    ("float4", Float4(1.5), "CAST(%s AS REAL) = 1.5"),
    ("float8", 2.25, "CAST(%s AS DOUBLE) = 2.25"),
    ("numeric", decimal.Decimal("12.34"), "CAST(%s AS DECIMAL(10, 2)) = 12.34"),
    ("unknown text", "lead", "%s = 'lead'"),
    ("text", Text("lead"), "%s = 'lead'"),
    ("varchar", Varchar("lead"), "%s = 'lead'"),
    ("bool", True, "%s = true"),
    ("date", datetime.date(2024, 3, 5), "CAST(%s AS DATE) = DATE '2024-03-05'"),
    ("time", datetime.time(10, 30, 15), "CAST(%s AS TIME) = TIME '10:30:15'"),
    ("timestamp", datetime.datetime(2024, 3, 5, 10, 30), "CAST(%s AS TIMESTAMP) = TIMESTAMP '2024-03-05 10:30:00'"),
    ("timestamptz", datetime.datetime(2024, 3, 5, 10, 30, tzinfo=datetime.timezone.utc),
        "CAST(%s AS TIMESTAMP) = TIMESTAMP '2024-03-05 10:30:00'"),
    ("interval", datetime.timedelta(days=1, hours=2), "CAST(%s AS INTERVAL) = INTERVAL '1 day 2 hours'"),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "CAST(%s AS VARCHAR) = '12345678-1234-5678-1234-567812345678'"),
    ("bytea", b"abc", "CAST(%s AS BYTEA) = CAST('abc' AS BYTEA)"),
    ("json", Json({{"a": 1}}), "CAST(%s AS VARCHAR) = '{{\"a\": 1}}'"),
]
with psycopg.connect(host="127.0.0.1", port={pg}, user="admin", password="{key}", dbname="sokana") as c:
    c.adapters.register_dumper(Text, TextDumper)
    c.adapters.register_dumper(Varchar, VarcharDumper)
    for name, value, condition in cases:
        sql = "select count(*) from raw.phi_clients where " + condition
        counts = [c.execute(sql, (value,)).fetchone()[0] for _ in range(4)]
        print(name, *counts)
"#
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().expect("python3");
    assert!(out.status.success(), "psycopg parameters: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 19, "{stdout}");
    for line in stdout.lines() {
        let counts: Vec<&str> = line.rsplitn(5, ' ').take(4).collect();
        assert!(counts.iter().all(|n| *n == source_count.to_string()), "every run finds every client: {line}");
    }
}

/// A small loaded Sokana project and an engine over it (no policy: the command line's view).
async fn small_project() -> (Project, Arc<QueryEngine>) {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.01).await;
    project.run().await.expect("pipeline");
    let engine = engine(&project.config(), generous());
    (project, engine)
}

/// The values the wire endpoint decodes for each PostgreSQL parameter type bind on both engines.
#[tokio::test(flavor = "multi_thread")]
async fn every_wire_parameter_type_binds_on_both_engines() {
    use datafusion::scalar::ScalarValue;
    let (_project, engine) = small_project().await;
    let micros = 1_709_634_600_000_000i64; // 2024-03-05 10:30:00 UTC
    let cases: Vec<(ScalarValue, &str)> = vec![
        (ScalarValue::Int8(Some(5)), "CAST($1 AS TINYINT) = 5"),
        (ScalarValue::Int16(Some(5)), "CAST($1 AS SMALLINT) = 5"),
        (ScalarValue::Int32(Some(70_000)), "CAST($1 AS INT) = 70000"),
        (ScalarValue::Int64(Some(5_000_000_000)), "CAST($1 AS BIGINT) = 5000000000"),
        (ScalarValue::Float32(Some(1.5)), "CAST($1 AS REAL) = 1.5"),
        (ScalarValue::Float64(Some(2.25)), "CAST($1 AS DOUBLE) = 2.25"),
        (ScalarValue::Decimal128(Some(1234), 10, 2), "CAST($1 AS DECIMAL(10, 2)) = 12.34"),
        (ScalarValue::Utf8(Some("lead".into())), "$1 = 'lead'"),
        (ScalarValue::LargeUtf8(Some("lead".into())), "CAST($1 AS VARCHAR) = 'lead'"),
        (ScalarValue::Boolean(Some(true)), "$1 = true"),
        (ScalarValue::Date32(Some(19_787)), "CAST($1 AS DATE) = DATE '2024-03-05'"),
        (ScalarValue::Time64Nanosecond(Some(37_815_000_000_000)), "CAST($1 AS TIME) = TIME '10:30:15'"),
        (ScalarValue::Time64Microsecond(Some(37_815_000_000)), "CAST($1 AS TIME) = TIME '10:30:15'"),
        (
            ScalarValue::TimestampMicrosecond(Some(micros), None),
            "CAST($1 AS TIMESTAMP) = TIMESTAMP '2024-03-05 10:30:00'",
        ),
        (
            ScalarValue::TimestampMicrosecond(Some(micros), Some("+00:00".into())),
            "CAST($1 AS TIMESTAMP) = TIMESTAMP '2024-03-05 10:30:00'",
        ),
        (ScalarValue::new_interval_mdn(0, 1, 7_200_000_000_000), "CAST($1 AS INTERVAL) = INTERVAL '1 day 2 hours'"),
        (ScalarValue::Binary(Some(b"abc".to_vec())), "CAST($1 AS BYTEA) = CAST('abc' AS BYTEA)"),
    ];
    let total = engine.query(&request("SELECT count(*) AS n FROM raw.phi_clients", EngineChoice::Datafusion)).await;
    let total = csv_of(&total.expect("count").result.batches);
    for (value, condition) in cases {
        for choice in [EngineChoice::Duckdb, EngineChoice::Datafusion] {
            let sql = format!("SELECT count(*) AS n FROM raw.phi_clients WHERE {condition}");
            let mut asked = request(&sql, choice);
            asked.params = Params::Positional(vec![value.clone()]);
            let answer = engine.query(&asked).await.unwrap_or_else(|e| panic!("{choice:?} {value:?}: {e}"));
            assert_eq!(csv_of(&answer.result.batches), total, "{choice:?} {value:?}: {condition}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_end_runaway_queries_with_clear_errors() {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.05).await;
    project.run().await.expect("pipeline");
    let config = project.config();
    // Long, but yielding between batches, as scans and aggregations do.
    let runaways = [
        (EngineChoice::Datafusion, "SELECT sum(value) FROM range(100000000000)"),
        (EngineChoice::Duckdb, "SELECT sum(range) FROM range(100000000000)"),
    ];
    for (choice, runaway) in runaways {
        let quick = engine(&config, Limits { timeout: Duration::from_millis(500), ..generous() });
        let started = std::time::Instant::now();
        let e = quick.query(&request(runaway, choice)).await.expect_err("times out");
        assert!(matches!(e, QueryError::Timeout { .. }), "{choice:?}: {e}");
        assert!(started.elapsed() < Duration::from_secs(30), "{choice:?}: the timeout ended the query");
        let after = quick.query(&request("SELECT count(*) AS n FROM raw.payments", choice)).await;
        assert!(after.is_ok(), "{choice:?} still answers: {:?}", after.err());
    }
    let small = engine(&config, Limits { memory_limit_mb: 1, ..generous() });
    let hungry = "SELECT a.id, b.id FROM raw.payments a JOIN raw.payments b ON a.client_id = b.client_id ORDER BY a.txn_date, b.txn_date";
    let e = small.query(&request(hungry, EngineChoice::Datafusion)).await.expect_err("over the memory limit");
    assert!(matches!(e, QueryError::Memory { .. }), "{e}");
    // Answers that depend on the clock are never kept; warehouse-only answers are.
    for sql in ["SELECT now() AS t", "SELECT count(*) AS n FROM raw.payments WHERE txn_date < now()"] {
        small.query(&request(sql, EngineChoice::Datafusion)).await.expect(sql);
        assert!(!small.query(&request(sql, EngineChoice::Datafusion)).await.expect(sql).cache_hit, "{sql}");
    }
    let sql = "SELECT count(*) AS n FROM raw.payments";
    small.query(&request(sql, EngineChoice::Datafusion)).await.expect(sql);
    assert!(small.query(&request(sql, EngineChoice::Datafusion)).await.expect(sql).cache_hit);
    let capped = engine(&config, Limits { max_rows: 10, ..generous() });
    let e = capped.query(&request("SELECT id FROM raw.payments", EngineChoice::Duckdb)).await.expect_err("row cap");
    assert!(matches!(e, QueryError::TooManyRows { cap: 10 }), "{e}");
    let mut typed = request("SELECT count(*) FROM raw.payments WHERE amount > $1", EngineChoice::Datafusion);
    typed.params = Params::Positional(vec!["not a number".into()]);
    assert!(capped.query(&typed).await.is_err(), "a text value for a numeric comparison is refused");
}

/// With the result cache off, each engine reuses its work between runs of a query (DataFusion its
/// optimised plan, DuckDB its prepared statement on a pooled connection), and never across a commit
/// to a table the query reads.
#[tokio::test(flavor = "multi_thread")]
async fn reused_plans_and_statements_follow_commits() {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.02).await;
    project.run().await.expect("pipeline");
    let catalog = Arc::new(WarehouseCatalog::new(sokana::pipeline::warehouse(&project.config()).expect("warehouse")));
    let uncached =
        QueryEngine::new(catalog, generous(), ResultCache::new(0, Duration::from_secs(1)), None).expect("engine");
    let total = "SELECT count(*) AS n, CAST(sum(amount) AS VARCHAR) AS total FROM raw.payments";
    let newest = "SELECT id FROM raw.payments ORDER BY id DESC";
    let engines = [EngineChoice::Datafusion, EngineChoice::Duckdb];
    let answer = |sql: &'static str, choice: EngineChoice, paged: bool| {
        let uncached = &uncached;
        async move {
            let mut asked = request(sql, choice);
            asked.page = paged.then_some(sokana::query::engine::Page { offset: 0, limit: 3 });
            let output = uncached.query(&asked).await.unwrap_or_else(|e| panic!("{choice:?} {sql}: {e}"));
            assert!(!output.cache_hit, "the result cache is off");
            rows(&output.result.batches)
        }
    };
    let mut before = Vec::new();
    for choice in engines {
        let first = (answer(total, choice, false).await, answer(newest, choice, true).await);
        let again = (answer(total, choice, false).await, answer(newest, choice, true).await);
        assert_eq!(first, again, "{choice:?}: a repeat answers the same");
        before.push(first);
    }
    let conn = rusqlite::Connection::open(project.sqlite_path()).expect("sqlite");
    conn.execute(
        "INSERT INTO payments (id, txn_date, amount, method, gateway, transaction_id, description)
         SELECT max(id) + 1, '2026-01-01T00:00:00Z', '10.00', 'cash', NULL, 'txn_reuse_test', 'test' FROM payments",
        [],
    )
    .expect("new payment");
    let new_id: i64 = conn.query_row("SELECT max(id) FROM payments", [], |r| r.get(0)).expect("max id");
    project.run().await.expect("second run");
    for (choice, (totals, page)) in engines.into_iter().zip(before) {
        let after = answer(total, choice, false).await;
        let count: i64 = after[0][0].parse().expect("count");
        assert_eq!(count, totals[0][0].parse::<i64>().expect("count") + 1, "{choice:?} sees the commit");
        let paged = answer(newest, choice, true).await;
        assert_eq!(paged.len(), 3, "{choice:?}: a page of 3");
        assert!(paged.iter().any(|row| row[0] == new_id.to_string()), "{choice:?}: {paged:?} after {page:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_exports_checks_saved_queries_and_logs() {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.02).await;
    project.run().await.expect("pipeline");
    let dir = project.dir.path();
    let count = |args: &[&str]| {
        let out = project.cli().args(args).output().expect("sokana");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let expected = count(&["sql", "--format", "csv", "SELECT count(*) AS n FROM raw.phi_clients"]);

    // A DuckDB file analysts open themselves: same count through its views.
    let file = dir.join("analysts.duckdb");
    count(&["export", "duckdb", file.to_str().expect("path")]);
    let conn = duckdb::Connection::open(&file).expect("exported database opens");
    let n: i64 = conn.query_row("SELECT count(*) FROM raw.phi_clients", [], |r| r.get(0)).expect("count");
    assert_eq!(format!("n\n{n}"), expected);

    // Parquet written to a file, through a temporary name.
    let parquet = dir.join("clients.parquet");
    count(&[
        "sql",
        "--format",
        "parquet",
        "--output",
        parquet.to_str().expect("path"),
        "SELECT id FROM raw.phi_clients",
    ]);
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
        std::fs::File::open(&parquet).expect("parquet file"),
        4096,
    )
    .expect("parquet");
    assert_eq!(format!("n\n{}", reader.map(|b| b.expect("batch").num_rows()).sum::<usize>()), expected);

    // `check` names a saved query that reads an unknown column.
    std::fs::create_dir_all(dir.join("queries")).expect("queries");
    std::fs::write(dir.join("queries/broken.sql"), "SELECT nope FROM raw.phi_clients\n").expect("write");
    let out = project.cli().arg("check").output().expect("check");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("broken.sql") && stdout.contains("nope"), "{stdout}");

    // The shell: statements over several lines, `\d`, switching engines.
    let mut shell = project
        .cli()
        .arg("sql")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("shell");
    {
        use std::io::Write;
        let mut stdin = shell.stdin.take().expect("stdin");
        stdin
            .write_all(
                b"select count(*) AS n\n  from raw.phi_clients;\n\\d\n\\engine duckdb\nselect 41 + 1 AS x;\n\\q\n",
            )
            .expect("type");
    }
    let out = shell.wait_with_output().expect("shell ends");
    let text = String::from_utf8_lossy(&out.stdout);
    let n = expected.lines().nth(1).expect("count");
    assert!(text.contains(&format!("| {n} ")) && text.contains("raw.phi_clients") && text.contains("| 42 "), "{text}");

    // The log shows what ran, slowest first, without literal values.
    count(&["sql", "SELECT count(*) FROM raw.phi_clients WHERE status = 'lead'"]);
    let log = count(&["sql", "--log", "--json"]);
    let stats: Value = serde_json::from_str(&log).expect("log json");
    let sqls: Vec<&str> = stats.as_array().expect("rows").iter().filter_map(|r| r["sql"].as_str()).collect();
    assert!(sqls.iter().any(|s| s.contains("status = ?")), "{sqls:?}");
    assert!(sqls.iter().all(|s| !s.contains("lead")), "{sqls:?}");
    // The command line's queries are in the audit trail too, with the columns they read.
    let audit = count(&["audit", "list", "--limit", "1000"]);
    assert!(
        audit.lines().any(|l| l.contains("\"origin\":\"cli\"") && l.contains("raw.phi_clients.status:dim")),
        "{audit}"
    );
    assert!(!audit.contains("lead"), "the audit trail holds no values");
}

/// A plan's display abbreviates (a `VALUES` list shows five rows): two queries that differ only
/// past that point are different questions and must not share a cached answer.
#[tokio::test(flavor = "multi_thread")]
async fn plans_that_differ_only_where_their_display_abbreviates_are_cached_apart() {
    let (_project, engine) = small_project().await;
    let sql = |last: i64| format!("SELECT sum(x) AS s FROM (VALUES (1), (2), (3), (4), (5), (6), ({last})) AS t(x)");
    let first = engine.query(&request(&sql(7), EngineChoice::Datafusion)).await.expect("first");
    let second = engine.query(&request(&sql(700), EngineChoice::Datafusion)).await.expect("second");
    assert!(!second.cache_hit, "a different sixth row is a different query");
    assert_eq!(csv_of(&first.result.batches), "s\n28\n");
    assert_eq!(csv_of(&second.result.batches), "s\n721\n");
    let again = engine.query(&request(&sql(7), EngineChoice::Datafusion)).await.expect("again");
    assert!(again.cache_hit && csv_of(&again.result.batches) == "s\n28\n", "the same query is still a hit");
}
