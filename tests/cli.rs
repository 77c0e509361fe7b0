//! The `sokana` binary as a newcomer uses it: the demo (twice), SQL output, config errors, and a
//! warehouse on an S3-protocol server.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::{Project, S3Server};

fn sokana() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sokana"))
}

#[test]
fn demo_builds_a_warehouse_and_rerunning_it_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    for _ in 0..2 {
        let out = sokana().args(["demo", "--no-serve", "--scale", "0.05", "--dir"]).arg(&demo).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(demo.join("operational.db").is_file() && demo.join("sokana.toml").is_file());
    let config = demo.join("sokana.toml");
    let out = sokana()
        .arg("--config")
        .arg(&config)
        .args(["sql", "--format", "csv", "SELECT count(*) AS n, count(DISTINCT id) AS d FROM raw.phi_clients"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8_lossy(&out.stdout);
    let row = csv.lines().nth(1).unwrap();
    let (n, d) = row.split_once(',').unwrap();
    assert_eq!(n, d, "no duplicate clients after two demo runs");
    let source = rusqlite::Connection::open(demo.join("operational.db")).unwrap();
    let expected: i64 = source.query_row("SELECT count(*) FROM phi_clients", [], |r| r.get(0)).unwrap();
    assert_eq!(n.parse::<i64>().unwrap(), expected);

    let out = sokana().arg("--config").arg(&config).args(["pipeline", "runs"]).output().unwrap();
    let runs = String::from_utf8_lossy(&out.stdout);
    assert!(runs.matches("succeeded").count() >= 2, "{runs}");
    assert!(!runs.contains("raw.quickbooks_tokens"), "secrets are never extracted");

    let out =
        sokana().arg("--config").arg(&config).args(["sql", "--format", "json", "SELECT 1 AS one"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"[{"one":1}]"#);
}

#[test]
fn sql_errors_and_config_errors_are_named() {
    let project = Project::new("sqlite://operational.db");
    let out = project.cli().args(["sql", "SELECT * FROM raw.nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("raw.nope"));

    std::fs::write(&project.config_path, "[warehouse]\nuri = \"w\"\nretention_hours = -\n").unwrap();
    let out = project.cli().args(["pipeline", "list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sokana.toml") && stderr.contains("line 3"), "{stderr}");

    std::fs::write(&project.config_path, "[warehouse]\nuri = \"w\"\n").unwrap();
    let out = project.cli().args(["pipeline", "list"]).env("SOKANA_SERVER__LISTEN", "not-an-address").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SOKANA_SERVER__LISTEN"), "{stderr}");
}

/// Creates a bucket on the S3 server (moto accepts unsigned requests).
fn create_bucket(port: u16, bucket: &str) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn the_warehouse_can_live_on_an_s3_protocol_server() {
    let s3 = S3Server::start();
    create_bucket(s3.port, "sokana");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let project = Project::with_config(
        "sqlite://operational.db",
        sokana::SOKANA_CORE_PIPELINE,
        "uri = \"s3://sokana/warehouse\"",
    );
    runtime.block_on(common::seed("sqlite://operational.db", project.dir.path(), 0.05));
    let with_s3 = |cmd: &mut Command| {
        cmd.env("AWS_ENDPOINT_URL", s3.endpoint())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
    };
    for _ in 0..2 {
        let mut cmd = project.cli();
        cmd.args(["pipeline", "run", "--all"]);
        with_s3(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut cmd = project.cli();
    cmd.args(["sql", "--format", "csv", "SELECT count(*) FROM raw.payments"]);
    with_s3(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let count: i64 = String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap();
    let source = rusqlite::Connection::open(project.sqlite_path()).unwrap();
    let expected: i64 = source.query_row("SELECT count(*) FROM payments", [], |r| r.get(0)).unwrap();
    assert_eq!(count, expected);

    // Encrypted in place on the server, then loaded into and queried through the key only.
    let key = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let sokana = |args: &[&str], key: Option<&str>| {
        let mut cmd = project.cli();
        cmd.args(args);
        with_s3(&mut cmd);
        if let Some(key) = key {
            cmd.env("SOKANA_WAREHOUSE_KEY", key);
        }
        cmd.output().unwrap()
    };
    for args in [&["warehouse", "encrypt"][..], &["pipeline", "run", "--all"]] {
        let out = sokana(args, Some(key));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = sokana(&["sql", "--format", "csv", "SELECT count(*) FROM raw.payments"], Some(key));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim(), expected.to_string());
    let out = sokana(&["sql", "SELECT count(*) FROM raw.payments"], None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("the warehouse is encrypted"));
    assert!(!project.dir.path().join("warehouse").exists(), "nothing was written locally");
}
