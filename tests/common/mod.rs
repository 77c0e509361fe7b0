//! Test harness: real servers started by the tests themselves (a throwaway PostgreSQL cluster, an
//! S3-protocol server), demo projects in temporary directories, and source-vs-warehouse checks.
#![allow(dead_code)]

pub mod smtp;
pub mod tpch;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use sokana::config::Config;
use sokana::pipeline::{self, spec::Pipeline};
use sokana::progress::{Progress, Silent};
use sokana::source::{ExtractSpec, SeedOptions, SourceUrl};

pub fn silent() -> Arc<dyn Progress> {
    Arc::new(Silent)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn pg_bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return dir;
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .filter(|d| d.join("initdb").is_file())
        .expect("PostgreSQL server binaries (initdb) not found: the test command installs the `postgresql` package")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs a PostgreSQL binary, as `nobody` when we are root (initdb refuses root).
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A cluster that accepts TLS connections only, with this certificate and key (PEM).
    pub fn start_tls_only(cert: &str, key: &str) -> Postgres {
        Postgres::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Postgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new().prefix("sokana-pg-").tempdir().expect("temp dir");
        if is_root() {
            let status = Command::new("chown").args(["65534:65534"]).arg(dir.path()).status().expect("chown");
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .output()
            .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut tls_options = String::new();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert_path, cert).expect("certificate");
            std::fs::write(&key_path, key).expect("key");
            std::fs::set_permissions(&key_path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            if is_root() {
                let status = Command::new("chown").args(["65534:65534"]).arg(&cert_path).arg(&key_path).status();
                assert!(status.expect("chown").success());
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "hostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
            )
            .expect("pg_hba");
            tls_options =
                format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", cert_path.display(), key_path.display());
        }
        // A port chosen free can be taken before the server binds it (by another test, or as the
        // local end of an outgoing connection): a bind failure is retried on another port.
        let mut attempts = 0;
        let port = loop {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off{tls_options}",
                dir.path().display()
            );
            let out = pg_command(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-l"])
                .arg(dir.path().join("log"))
                .args(["-w", "start"])
                .output()
                .expect("pg_ctl runs");
            if out.status.success() {
                break port;
            }
            let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
            attempts += 1;
            assert!(
                log.contains("could not bind") && attempts < 5,
                "pg_ctl start failed: {}{log}",
                String::from_utf8_lossy(&out.stderr),
            );
        };
        Postgres { dir, bin, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An S3-protocol server (moto, installed by the test command), killed when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
}

impl S3Server {
    pub fn start() -> S3Server {
        // As with PostgreSQL, the port chosen can be taken before moto binds it: moto then exits,
        // and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("python3")
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 -m moto.server: the test command installs moto[server]");
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().expect("moto's status").is_none() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server { child, port };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("moto did not start listening on port {port} within 60 s");
                }
                std::thread::yield_now();
            }
        }
        panic!("moto exited before listening, five times");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project in a temporary directory: a config naming one source `core`, the shipped pipeline.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Project {
    pub fn new(source_url: &str) -> Project {
        Project::with_pipeline(source_url, sokana::SOKANA_CORE_PIPELINE)
    }

    pub fn with_pipeline(source_url: &str, pipeline: &str) -> Project {
        Project::with_config(source_url, pipeline, "uri = \"warehouse\"")
    }

    pub fn with_config(source_url: &str, pipeline: &str, warehouse: &str) -> Project {
        let dir = tempfile::Builder::new().prefix("sokana-test-").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("pipelines")).expect("mkdir");
        std::fs::write(dir.path().join("pipelines/sokana_core.toml"), pipeline).expect("write pipeline");
        let config_path = dir.path().join("sokana.toml");
        std::fs::write(
            &config_path,
            format!("[warehouse]\n{warehouse}\n\n[sources.core]\nurl = {source_url:?}\nretries = 1\n"),
        )
        .expect("write config");
        Project { dir, config_path }
    }

    pub fn config(&self) -> Config {
        Config::load_with_env(Some(&self.config_path), []).expect("config loads")
    }

    /// The project as the library opens it (configuration, pipelines, warehouse), read now.
    pub fn opened(&self) -> pipeline::Project {
        pipeline::Project::open(self.config()).expect("project opens")
    }

    pub fn pipeline(&self) -> Pipeline {
        self.opened().pipelines()[0].clone()
    }

    pub async fn run(&self) -> Result<pipeline::RunSummary, pipeline::PipelineError> {
        let project = self.opened();
        let p = project.pipelines()[0].clone();
        pipeline::run(&project, &p, "test", &silent()).await
    }

    /// Adds the shipped models, with a fixed pseudonym key in the state directory.
    pub fn add_core_models(&self, key: &str) {
        let dir = self.dir.path().join("pipelines/models");
        std::fs::create_dir_all(&dir).expect("models dir");
        for (name, sql) in sokana::SOKANA_CORE_MODELS {
            std::fs::write(dir.join(name), sql).expect("write model");
        }
        let state = self.dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::write(state.join("pseudonym.key"), hex::encode(key)).expect("pseudonym key");
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("operational.db")
    }

    /// Runs the `sokana` binary with this project's config.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sokana"));
        cmd.arg("--config").arg(&self.config_path);
        cmd
    }
}

pub async fn seed(url: &str, base: &Path, scale: f64) {
    let url = SourceUrl::parse(url, base).expect("url");
    sokana::source::seed(&url, &SeedOptions { scale, seed: 7, replace: false }, &|_| {}).await.expect("seed");
}

/// Asserts that every table of the pipeline holds exactly the source's rows: same count, and no
/// row on either side that the other lacks (all columns compared).
pub async fn assert_matches_source(project: &Project) {
    let config = project.config();
    let p = project.pipeline();
    let url = SourceUrl::parse(&config.sources["core"].url, &config.base_dir).expect("url");
    let source = url.connect(&config.sources["core"].connect_options()).await.expect("source");
    let mut snapshot = source.snapshot().await.expect("snapshot");
    let warehouse = pipeline::warehouse(&config).expect("warehouse");
    let ctx = sokana::query::unmasked_session(&warehouse).await.expect("session");
    for table in &p.tables {
        let columns = pipeline::select_columns(&p, table, snapshot.columns(&table.source_table).await.expect("cols"))
            .expect("columns");
        let names: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
        let spec = ExtractSpec { table: table.source_table.clone(), columns, range: None, batch_rows: 8192 };
        let schema = spec.arrow_schema();
        let partitions = snapshot.extract(spec).await.expect("extract");
        let batches: Vec<_> =
            sokana::source::merge_partitions(schema.clone(), partitions).try_collect().await.expect("rows");
        let source_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let local = SessionContext::new();
        local.register_table("src", Arc::new(MemTable::try_new(schema, vec![batches]).expect("mem"))).expect("reg");
        let tgt_batches = ctx
            .sql(&format!("SELECT {} FROM {}", names.join(", "), table.target))
            .await
            .expect("query target")
            .collect()
            .await
            .expect("collect target");
        let target_rows: usize = tgt_batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(target_rows, source_rows, "{}: row count", table.target);
        if target_rows == 0 {
            continue;
        }
        local
            .register_table(
                "tgt",
                Arc::new(MemTable::try_new(tgt_batches[0].schema(), vec![tgt_batches]).expect("mem")),
            )
            .expect("reg");
        for (a, b) in [("src", "tgt"), ("tgt", "src")] {
            let diff = local
                .sql(&format!("SELECT count(*) AS n FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})"))
                .await
                .expect("diff")
                .collect()
                .await
                .expect("diff rows");
            let n = diff[0]
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .expect("count")
                .value(0);
            assert_eq!(n, 0, "{}: {n} row(s) in {a} missing from {b}", table.target);
        }
    }
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// One number from a SQL query over the warehouse.
pub async fn warehouse_count(config: &Config, sql: &str) -> i64 {
    let ctx = sokana::query::unmasked_session(&pipeline::warehouse(config).expect("warehouse")).await.expect("session");
    let batches = sokana::query::run(&ctx, sql).await.expect("query");
    let column = batches[0].column(0);
    datafusion::arrow::compute::cast(column, &datafusion::arrow::datatypes::DataType::Int64)
        .expect("cast")
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .expect("int")
        .value(0)
}

/// Runs `cmd` with a fault point at `fault` (`TARGET:ROWS`), waits until the process reports that
/// it reached it (mid-load, before the commit), and kills it with SIGKILL.
pub fn kill_at_fault_point(cmd: Command, fault: &str) {
    kill_at(cmd, sokana::progress::fault::ENV, fault);
}

/// Runs `cmd` with the fault point named `point` in the code, and kills it there with SIGKILL.
pub fn kill_at_named_point(cmd: Command, point: &str) {
    kill_at(cmd, sokana::progress::fault::POINT_ENV, point);
}

fn kill_at(mut cmd: Command, env: &str, fault: &str) {
    use std::io::BufRead;
    let mut child = cmd.env(env, fault).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn sokana");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        let reached = line.contains(sokana::progress::fault::MESSAGE);
        seen.push(line);
        if reached {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
            return;
        }
    }
    let status = child.wait().expect("wait");
    panic!("the fault point {fault} was never reached ({status}):\n{}", seen.join("\n"));
}

/// Day numbers of `due_date`, whole seconds of `created_at`, and the smallest and largest id of
/// `raw.phi_clients`, as one line: compared with the same figures computed by the source itself,
/// it checks dates, timestamps and uuids independently of the extractor.
pub const CLIENT_FINGERPRINT_SQL: &str = "SELECT sum(CAST(date_part('epoch', due_date) AS BIGINT)) / 86400 AS d, \
     sum(CAST(date_part('epoch', created_at) AS BIGINT)) AS c, min(id) AS lo, max(id) AS hi FROM raw.phi_clients";

pub async fn client_fingerprint(config: &Config) -> String {
    let ctx = sokana::query::unmasked_session(&pipeline::warehouse(config).expect("warehouse")).await.expect("session");
    let batches = sokana::query::run(&ctx, CLIENT_FINGERPRINT_SQL).await.expect("query");
    let csv = sokana::query::format(&batches, sokana::query::OutputFormat::Csv).expect("csv");
    csv.lines().nth(1).expect("a row").to_string()
}

/// A demo-like project (small Sokana data, pipelines run, marts built) whose `sokana serve`
/// listens on ports the system chooses.
pub async fn sokana_project(extra_config: &str) -> Project {
    let project = Project::new("sqlite://operational.db");
    seed("sqlite://operational.db", project.dir.path(), 0.05).await;
    project.add_core_models("query-test-key-0123456789");
    let mut text = std::fs::read_to_string(&project.config_path).expect("config");
    text.push_str(&format!("\n[server]\nlisten = \"127.0.0.1:0\"\npgwire = \"127.0.0.1:0\"\n{extra_config}\n"));
    std::fs::write(&project.config_path, text).expect("config");
    project.run().await.expect("pipeline");
    project
}

/// [`sokana_project`] with the shipped metrics views (`queries/metrics/`) and dashboards.
pub async fn sokana_project_with_dashboards(extra_config: &str) -> Project {
    let project = sokana_project(extra_config).await;
    let root = project.dir.path();
    for (dir, files) in
        [("queries/metrics", sokana::SOKANA_CORE_METRICS), ("dashboards", sokana::SOKANA_CORE_DASHBOARDS)]
    {
        std::fs::create_dir_all(root.join(dir)).expect("dir");
        for (name, text) in files {
            std::fs::write(root.join(dir).join(name), text).expect("write");
        }
    }
    project
}

/// A running `sokana serve` and the ports it listens on, stopped when dropped.
pub struct Server {
    child: Child,
    pub http: u16,
    pub pg: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sokana serve` for `project`.
pub fn serve(project: &Project) -> Server {
    let mut command = project.cli();
    command.arg("serve");
    serve_command(command)
}

/// Starts `command` (a `sokana serve`) and reads the ports it bound from the lines it prints once
/// both endpoints accept connections; its other output is passed on to this test's stderr.
pub fn serve_command(mut command: Command) -> Server {
    use std::io::BufRead;
    let mut child = command.stderr(Stdio::piped()).spawn().expect("sokana serve");
    let stderr = child.stderr.take().expect("piped stderr");
    let (ports, found) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let port_after = |line: &str, prefix: &str| {
            let rest = line.split_once(prefix)?.1;
            let address = rest.split([' ', '/']).next()?.trim_end_matches(':');
            address.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        };
        let mut http = None;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            http = http.or(port_after(&line, "serving on http://")).or(port_after(&line, "serving on https://"));
            if let (Some(http), Some(pg)) = (http, port_after(&line, "PostgreSQL wire protocol on ")) {
                let _ = ports.send((http, pg));
            }
        }
    });
    match found.recv_timeout(Duration::from_secs(60)) {
        Ok((http, pg)) => Server { child, http, pg },
        Err(_) => {
            let exit = child.try_wait();
            let _ = child.kill();
            let _ = child.wait();
            panic!("sokana serve did not report its ports within 60 s (exit: {exit:?})");
        }
    }
}

/// JSON request bodies for reqwest without its `json` feature: turning that feature on for the
/// tests would change the reqwest that object_store (and through it DataFusion and delta-rs) is
/// built with, so a test or bench build after a release build would rebuild that whole stack.
pub trait JsonRequest {
    fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Self;
}

impl JsonRequest for reqwest::RequestBuilder {
    fn json<T: serde::Serialize + ?Sized>(self, body: &T) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).expect("a body that serialises"))
    }
}

/// JSON response bodies, for the same reason as [`JsonRequest`].
pub trait JsonResponse {
    fn json<T: serde::de::DeserializeOwned>(self) -> impl std::future::Future<Output = Result<T, String>> + Send;
}

impl JsonResponse for reqwest::Response {
    async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        let bytes = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

/// An API key of `role` for a new user of that role in `project`.
pub async fn api_key(project: &Project, role: sokana::auth::Role) -> String {
    let auth = sokana::auth::Auth::open(&project.config()).await.expect("auth");
    let user = format!("test-{role}");
    auth.add_user(&user, role, "test-user-password-0123").await.expect("user");
    auth.create_api_key("test", role, 1, &user).await.expect("key").key
}

/// `GET path` on `server` with `key`: the status, the content type and the body.
pub async fn get_bytes(server: &Server, key: &str, path: &str) -> (u16, String, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{path}", server.http))
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {key}"))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, kind, response.bytes().await.expect("body").to_vec())
}

/// `GET path` on `server` with `key`: the status and the JSON body.
pub async fn get_json(server: &Server, key: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = get_bytes(server, key, path).await;
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

/// `POST path` on `base` (`http://127.0.0.1:PORT`) with a JSON `body`, as the holder of API key `key`.
pub async fn post_json(base: &str, key: &str, path: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {key}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}
