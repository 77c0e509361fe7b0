//! `sokana`: the command line. Thin: it parses arguments, draws progress and prints results; the
//! work is done by the library.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use sokana::config::Config;
use sokana::pipeline::{self, Project, spec::Pipeline};
use sokana::progress::Progress;
use sokana::query::engine::EngineChoice;
use sokana::query::log::StatsOrder;
use sokana::query::{self, OutputFormat};
use sokana::source::{self, SeedOptions, SourceError, SourceUrl};

mod cli;
use cli::queries::CliFormat;

#[derive(Parser)]
#[command(name = "sokana", version, about = "Embedded analytics for Sokana Collective")]
struct Cli {
    /// Config file (default: ./sokana.toml if present). Every key can be overridden by an
    /// environment variable SOKANA_SECTION__KEY.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a demo operational database, run every pipeline, and serve.
    Demo {
        /// Where to put everything: operational.db, sokana.toml, warehouse/.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Stop after the pipelines.
        #[arg(long)]
        no_serve: bool,
        /// Seed and use this PostgreSQL database instead of DIR/operational.db.
        #[arg(long, value_name = "URL")]
        source: Option<String>,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Dashboards: list them, draw one to SVG or PNG.
    Dashboard {
        #[command(subcommand)]
        command: DashboardCommand,
    },
    /// Forecasts with intervals: one series ahead, or every model's backtest on it.
    Forecast {
        #[command(subcommand)]
        command: ForecastCommand,
    },
    /// Reports: list them, make one now.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Write synthetic operational data into SQLite or PostgreSQL.
    Seed {
        /// sqlite://PATH or postgres://USER@HOST/DB
        #[arg(long, value_name = "URL")]
        source: String,
        /// 1 ≈ five years of a 1,500-client collective.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Drop and recreate the operational tables if they hold data.
        #[arg(long)]
        replace: bool,
    },
    /// List, run and inspect pipelines.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCommand,
    },
    /// Build the SQL models (`pipelines/models/*.sql`) and show their graph.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Run SQL over the warehouse; with no SQL, an interactive shell.
    Sql {
        #[arg(long, value_enum, default_value = "table")]
        format: CliFormat,
        /// Which engine answers: DataFusion, DuckDB over the same files, or auto (the faster for
        /// the query's plan shape, learned from the query log). Default: `query.engine` in the config.
        #[arg(long, value_enum)]
        engine: Option<EngineChoice>,
        /// A value for a placeholder: `--param 1=42` for $1, `--param since=2024-01-01` for $since.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Stream the result into FILE (any format; needed for arrow and parquet on a terminal).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Show the query log instead: the slowest or most frequent queries.
        #[arg(long, conflicts_with = "sql")]
        log: bool,
        #[arg(long, value_enum, default_value = "slowest", requires = "log")]
        by: StatsOrder,
        #[arg(long, requires = "log")]
        json: bool,
        sql: Option<String>,
    },
    /// Saved queries (`queries/*.sql`).
    Query {
        #[command(subcommand)]
        command: QueryCommand,
    },
    /// Export the warehouse for other tools.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Users, roles, second factors and sessions.
    User {
        #[command(subcommand)]
        command: cli::admin::UserCommand,
    },
    /// API keys for machine clients.
    Key {
        #[command(subcommand)]
        command: cli::admin::KeyCommand,
    },
    /// The audit trail of every data access.
    Audit {
        #[command(subcommand)]
        command: cli::admin::AuditCommand,
    },
    /// A person's data: everything the warehouse holds about them, or its erasure.
    Privacy {
        #[command(subcommand)]
        command: cli::admin::PrivacyCommand,
    },
    /// Encryption at rest of the warehouse's files.
    Warehouse {
        #[command(subcommand)]
        command: cli::admin::WarehouseCommand,
    },
    /// Validate every pipeline, model and saved query against the live source and warehouse.
    Check,
    /// Serve the HTTP endpoints.
    Serve,
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// The pipelines and their tables.
    List,
    /// Run pipelines now.
    Run {
        names: Vec<String>,
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
    /// Recent runs, newest first.
    Runs {
        name: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
        /// The scheduler's decisions (fired, skipped, caught up, retrying, failed) instead of runs.
        #[arg(long)]
        decisions: bool,
    },
}

#[derive(Subcommand)]
enum QueryCommand {
    /// The saved queries and their parameters.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a saved query by name.
    Run {
        name: String,
        /// A parameter value, checked against the type in the query's header.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        #[arg(long, value_enum)]
        engine: Option<EngineChoice>,
        #[arg(long, value_enum, default_value = "table")]
        format: CliFormat,
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DashboardCommand {
    /// The dashboards in `dashboards/`.
    List,
    /// Draw a dashboard (or one of its panels) to a file.
    Render {
        id: String,
        /// One panel only.
        #[arg(long)]
        panel: Option<String>,
        #[arg(long, value_enum, default_value = "svg")]
        format: PictureFormat,
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// A filter value, as in the dashboard's URL: `period=last_month`, `method=card`.
        #[arg(long = "filter", value_name = "NAME=VALUE")]
        filters: Vec<String>,
        #[arg(long)]
        dark: bool,
    },
}

#[derive(Subcommand)]
enum ForecastCommand {
    /// Forecast a series: a metric (VIEW.MEASURE), a query (--sql) or a CSV file (--input), with
    /// the model the backtest chooses and 80 % and 95 % intervals.
    Run {
        #[command(flatten)]
        series: cli::forecast::SeriesArgs,
        /// Steps ahead, in grains.
        #[arg(long, default_value_t = 12)]
        horizon: usize,
        /// An interval's level in percent (repeatable). Default: 80 and 95.
        #[arg(long = "level")]
        levels: Vec<f64>,
        /// auto (chosen by backtest) or one model: naive, seasonal_naive, drift, ses, holt_damped,
        /// holt_winters, holt_winters_log, theta, mstl.
        #[arg(long, default_value = "auto")]
        model: String,
        /// Answer the history's points too (kind = history).
        #[arg(long)]
        history: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: cli::forecast::ForecastFormat,
    },
    /// Backtest every model on a series: MASE, sMAPE and interval coverage against the seasonal
    /// naive, and the model chosen.
    Backtest {
        #[command(flatten)]
        series: cli::forecast::SeriesArgs,
        /// Steps ahead each origin is scored on.
        #[arg(long, default_value_t = 12)]
        horizon: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// The reports of every dashboard: schedule, time zone, role, formats, recipients.
    List,
    /// Make a report now, as its role, and write its PDF and CSV files into a directory (the
    /// current one unless --send is given), or send it. An alert, unless sent, prints what its
    /// condition finds (firing or quiet, and why).
    Run {
        name: String,
        #[arg(long, value_name = "DIR")]
        output: Option<PathBuf>,
        /// Make it as it would be made on this day (relative filters such as last_week count from
        /// it): a past slot again, or a period the data covers.
        #[arg(long, value_name = "YYYY-MM-DD")]
        as_of: Option<chrono::NaiveDate>,
        /// Send it by email ([smtp] in the configuration) to its recipients, or to --to.
        #[arg(long)]
        send: bool,
        /// Send it to this address instead of its recipients, as the report's role (repeatable;
        /// implies --send).
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
    },
    /// The delivery ledger: each message of each slot, newest first, and how it stands.
    Deliveries {
        /// One report's deliveries only.
        name: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PictureFormat {
    Svg,
    Png,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// A DuckDB database file with a view per warehouse table (`raw.*`, `marts.*`), for the DuckDB
    /// CLI or Python.
    Duckdb { file: PathBuf },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Build models now (all, or the named ones and the models they read); models whose inputs and
    /// SQL are unchanged since their last build are left as they are.
    Build { names: Vec<String> },
    /// The models in build order with the tables each reads.
    Graph {
        /// Graphviz DOT instead of text.
        #[arg(long)]
        dot: bool,
    },
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOKANA_LOG").unwrap_or_else(|_| "warn".into());
    let json_logs = std::env::var("SOKANA_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { dir, no_serve, source, scale, seed } => demo(&dir, no_serve, source, scale, seed).await,
        Command::Seed { source, scale, seed, replace } => {
            let url = SourceUrl::parse(&source, &std::env::current_dir()?)?;
            seed_source(&url, &SeedOptions { scale, seed, replace }).await?;
            Ok(())
        }
        Command::Pipeline { command } => pipeline_command(&open(&cli.config)?, command).await,
        Command::Model { command } => model_command(&open(&cli.config)?, command).await,
        Command::Sql { format, engine, params, output, log, by, json, sql } => {
            if log {
                return cli::queries::show_log(&Config::load(cli.config.as_deref())?, by, json).await;
            }
            cli::queries::sql(&open(&cli.config)?, cli::queries::SqlArgs { sql, format, engine, params, output }).await
        }
        Command::Query { command } => match command {
            QueryCommand::List { json } => cli::queries::list_saved(&Config::load(cli.config.as_deref())?, json),
            QueryCommand::Run { name, params, engine, format, output } => {
                cli::queries::run_saved(&open(&cli.config)?, &name, &params, engine, format, output.as_deref()).await
            }
        },
        Command::Export { command: ExportCommand::Duckdb { file } } => {
            cli::queries::export_duckdb(&open(&cli.config)?, &file).await
        }
        Command::User { command } => cli::admin::user(&Config::load(cli.config.as_deref())?, command).await,
        Command::Key { command } => cli::admin::key(&Config::load(cli.config.as_deref())?, command).await,
        Command::Audit { command } => cli::admin::audit(&Config::load(cli.config.as_deref())?, command).await,
        Command::Privacy { command } => cli::admin::privacy(&open(&cli.config)?, command, Bars::shared()).await,
        Command::Warehouse { command } => cli::admin::warehouse(&open(&cli.config)?, command, Bars::shared()).await,
        Command::Check => check(&open(&cli.config)?).await,
        Command::Forecast { command: ForecastCommand::Run { series, horizon, levels, model, history, format } } => {
            let args = cli::forecast::RunArgs {
                series: &series,
                horizon,
                levels: &levels,
                model: Some(&model),
                history,
                format,
            };
            cli::forecast::run(cli.config.as_deref(), args).await
        }
        Command::Forecast { command: ForecastCommand::Backtest { series, horizon, json } } => {
            cli::forecast::backtest(cli.config.as_deref(), &series, horizon, json).await
        }
        Command::Report { command: ReportCommand::List } => cli::reports::list(&open(&cli.config)?),
        Command::Report { command: ReportCommand::Run { name, output, as_of, send, to } } => {
            let run = cli::reports::Run { name: &name, output: output.as_deref(), as_of, send, to: &to };
            cli::reports::run(&open(&cli.config)?, &run).await
        }
        Command::Report { command: ReportCommand::Deliveries { name, limit } } => {
            cli::reports::deliveries(&open(&cli.config)?, name.as_deref(), limit).await
        }
        Command::Dashboard { command: DashboardCommand::List } => cli::dashboards::list(&open(&cli.config)?),
        Command::Dashboard { command: DashboardCommand::Render { id, panel, format, output, filters, dark } } => {
            let what = cli::dashboards::Render {
                id: &id,
                panel: panel.as_deref(),
                png: matches!(format, PictureFormat::Png),
                dark,
                output: &output,
                filters: &filters,
            };
            cli::dashboards::render(&open(&cli.config)?, what).await
        }
        Command::Serve => serve(&open(&cli.config)?).await,
    }
}

/// The project the configuration file names (`--config`, else `sokana.toml` here), read once:
/// configuration, pipelines and warehouse. Commands that need only the configuration (users, keys,
/// the audit trail, the query log) do not read the pipelines.
fn open(config: &Option<PathBuf>) -> Result<Project> {
    Ok(Project::open(Config::load(config.as_deref())?)?)
}

async fn seed_source(url: &SourceUrl, options: &SeedOptions) -> Result<source::SeedSummary> {
    let bar = spinner(&format!("seeding {url}"));
    let started = std::time::Instant::now();
    let summary = source::seed(url, options, &|rows| bar.set_message(format!("{rows} rows"))).await?;
    bar.finish_and_clear();
    let total: u64 = summary.rows.values().sum();
    eprintln!(
        "seeded {url}: {} clients, {total} rows in {} tables ({} assignments hard-deleted) in {:.1}s",
        summary.clients,
        summary.rows.len(),
        summary.deleted,
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

fn spinner(message: &str) -> ProgressBar {
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
    bar.set_prefix(message.to_string());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// One bar per table on a terminal; one line per finished table otherwise.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
    terminal: bool,
}

impl Bars {
    fn shared() -> Arc<dyn Progress> {
        let bars: Arc<dyn Progress> = Arc::new(Bars {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
            terminal: std::io::stderr().is_terminal(),
        });
        #[cfg(feature = "fault-points")]
        let bars = sokana::progress::fault::from_env(bars);
        bars
    }
}

impl Progress for Bars {
    fn start(&self, label: &str, total: Option<u64>) {
        if !self.terminal {
            return;
        }
        let bar = self.multi.add(match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        });
        let style = ProgressStyle::with_template("{spinner} {prefix:<28} {human_pos:>10} rows {per_sec:>12} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(label.to_string(), bar);
        }
    }

    fn update(&self, label: &str, done: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(label).cloned()) {
            bar.set_position(done);
        }
    }

    fn finish(&self, label: &str, message: &str) {
        match self.bars.lock().ok().and_then(|mut b| b.remove(label)) {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("  {label:<28} {message}"),
        }
    }
}

async fn run_pipelines(project: &Project, names: &[String], all: bool, trigger: &str) -> Result<()> {
    let selected: Vec<&Pipeline> = if all {
        project.pipelines().iter().collect()
    } else if names.is_empty() {
        bail!("name the pipelines to run, or pass --all");
    } else {
        project.select(names)?
    };
    let progress = Bars::shared();
    let mut failures = Vec::new();
    for p in selected {
        eprintln!("pipeline {} ({} tables from source {:?})", p.name, p.tables.len(), p.source);
        match pipeline::run(project, p, trigger, &progress).await {
            Ok(summary) => eprintln!("pipeline {} succeeded (run {})", p.name, summary.run_id),
            Err(e) => {
                eprintln!("pipeline {} failed: {e}", p.name);
                failures.push(p.name.clone());
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} pipeline(s) failed: {}; see `sokana pipeline runs`", failures.len(), failures.join(", "));
    }
    Ok(())
}

async fn pipeline_command(project: &Project, command: PipelineCommand) -> Result<()> {
    let config = project.config();
    match command {
        PipelineCommand::List => {
            for p in project.pipelines() {
                let schedule = p
                    .schedule
                    .as_ref()
                    .map_or("manual".to_string(), |s| format!("{} ({})", s.cron.as_str(), s.timezone));
                println!("{}  source={}  schedule={}  file={}", p.name, p.source, schedule, p.path.display());
                for t in &p.tables {
                    let sync = match &t.sync {
                        pipeline::spec::Sync::Incremental { cursor } => format!("incremental on {cursor}"),
                        pipeline::spec::Sync::Full => "full compare".to_string(),
                    };
                    let deletes = if t.detect_deletes { ", detects deletes" } else { "" };
                    println!(
                        "  {:<24} <- {:<22} key ({}), {sync}{deletes}",
                        t.target,
                        t.source_table,
                        t.primary_key.join(", ")
                    );
                }
            }
            Ok(())
        }
        PipelineCommand::Run { names, all } => run_pipelines(project, &names, all, "manual").await,
        PipelineCommand::Runs { name, limit, json, decisions: true } => {
            let decisions = pipeline::runlog::RunLog::open(&config.state_dir())?.decisions(name.as_deref(), limit)?;
            if json {
                return print_json(&decisions);
            }
            for d in decisions {
                println!(
                    "{}  {:<14} {:<10} slot {}  {}{}",
                    d.at,
                    d.pipeline,
                    d.decision,
                    d.slot.map_or("-".into(), |s| s.to_rfc3339()),
                    d.run_id.map(|r| format!("run {r}  ")).unwrap_or_default(),
                    d.detail.unwrap_or_default()
                );
            }
            Ok(())
        }
        PipelineCommand::Runs { name, limit, json, decisions: false } => {
            let runs = pipeline::runlog::RunLog::open(&config.state_dir())?.runs(name.as_deref(), limit)?;
            if json {
                return print_json(&runs);
            }
            for run in runs {
                println!(
                    "{}  {:<14} {:<11} {}  {}",
                    run.started_at,
                    run.pipeline,
                    run.status,
                    run.id,
                    run.error.as_deref().unwrap_or("")
                );
                for t in run.tables {
                    println!(
                        "    {:<32} {:<9} read {:>9}  +{:<8} ~{:<8} -{:<6} v{}  {} ms{}{}",
                        t.target,
                        t.status,
                        t.rows_read,
                        t.inserted,
                        t.updated,
                        t.deleted,
                        t.version.map_or("-".into(), |v| v.to_string()),
                        t.duration_ms,
                        if t.withheld > 0 {
                            format!("  {} withheld (erased people)", t.withheld)
                        } else {
                            String::new()
                        },
                        t.error.map(|e| format!("  {e}")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn model_command(project: &Project, command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Build { names } => {
            let summary = pipeline::build_models(project, &names, "manual", &Bars::shared()).await?;
            eprintln!("models built (run {})", summary.run_id);
        }
        ModelCommand::Graph { dot } => {
            let graph = project.models()?;
            print!("{}", if dot { graph.to_dot() } else { graph.to_text() });
        }
    }
    Ok(())
}

async fn check(project: &Project) -> Result<()> {
    let config = project.config();
    let mut problems = 0;
    match project.models() {
        Ok(graph) => {
            println!("ok    {} model(s) in {}", graph.models.len(), config.pipelines_dir().join("models").display())
        }
        Err(e) => {
            problems += 1;
            println!("error {e}");
        }
    }
    // One engine for every check: opening one reads the query log's timings.
    let engine = project.query_engine()?;
    match query::saved::load_all(&config.queries_dir()) {
        Ok(saved) => {
            for q in saved {
                match engine.validate(&q.sql).await {
                    Ok(()) => println!("ok    {}", q.path.display()),
                    Err(e) => {
                        problems += 1;
                        println!("error {}: {e}", q.path.display());
                    }
                }
            }
        }
        Err(e) => {
            problems += 1;
            println!("error {e}");
        }
    }
    let metrics = sokana::metrics::Catalog::load(&config.metrics_dir());
    for e in metrics.problems() {
        problems += 1;
        println!("error {e}");
    }
    if metrics.views().next().is_some() {
        for view in metrics.views() {
            let found = sokana::metrics::check(&engine, view).await;
            if found.is_empty() {
                println!("ok    {}", view.path.display());
            }
            for e in found {
                problems += 1;
                println!("error {e}");
            }
        }
    }
    let dashboards = sokana::dashboard::Catalog::load(&config.dashboards_dir());
    for e in dashboards.problems() {
        problems += 1;
        println!("error {e}");
    }
    for (dashboard, report) in sokana::report::all(&dashboards) {
        let waits_for = report.spec.freshness.iter().flat_map(|f| f.pipelines.iter());
        for unknown in waits_for.filter(|name| project.pipeline(name).is_none()) {
            problems += 1;
            println!(
                "error {}: report {}: key `freshness.pipelines`: no pipeline named {unknown:?}",
                dashboard.path.display(),
                report.spec.name
            );
        }
    }
    if dashboards.dashboards().next().is_some() {
        let queries_dir = config.queries_dir();
        let sources = sokana::dashboard::Sources { engine: &engine, views: &metrics, queries_dir: &queries_dir };
        let caller = query::engine::Caller { origin: "dashboard", ..query::engine::Caller::cli() };
        for dashboard in dashboards.dashboards() {
            let found = sokana::dashboard::check(&sources, dashboard, &caller).await;
            if found.is_empty() {
                println!("ok    {}", dashboard.path.display());
            }
            for e in found {
                problems += 1;
                println!("error {e}");
            }
        }
    }
    for p in project.pipelines() {
        match pipeline::check(config, p).await {
            Ok(errors) if errors.is_empty() => println!("ok    {}", p.path.display()),
            Ok(errors) => {
                for e in errors {
                    problems += 1;
                    println!("error {e}");
                }
            }
            Err(e) => {
                problems += 1;
                println!("error {}: {e}", p.path.display());
            }
        }
    }
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    Ok(())
}

async fn serve(project: &Project) -> Result<()> {
    let state = sokana::api::AppState::open(project).await?;
    // The addresses printed are the bound ones, so port 0 in the config shows the port chosen.
    sokana::api::serve(state, |at| {
        eprintln!(
            "serving on {scheme}://{http}  (health: /health/live, /health/ready; queries: POST /api/v1/query; \
             pipelines: /api/v1/pipelines; scheduled pipelines run on time; Ctrl-C stops)\n\
             PostgreSQL wire protocol on {pg}: psql -h {host} -p {port} -U admin sokana",
            scheme = if at.tls { "https" } else { "http" },
            http = at.http,
            pg = at.pgwire,
            host = at.pgwire.ip(),
            port = at.pgwire.port(),
        )
    })
    .await
    .context("sokana serve")
}

/// `sokana demo`: seed (once), write the config, run every pipeline, serve.
async fn demo(dir: &Path, no_serve: bool, source: Option<String>, scale: f64, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::path::absolute(dir)?;
    let source_url = source.unwrap_or_else(|| "sqlite://operational.db".to_string());
    let url = SourceUrl::parse(&source_url, &dir)?;
    match seed_source(&url, &SeedOptions { scale, seed, replace: false }).await {
        Ok(_) => {}
        Err(e) if matches!(e.downcast_ref::<SourceError>(), Some(SourceError::AlreadySeeded { .. })) => {
            eprintln!("{url} already holds demo data; reusing it");
        }
        Err(e) => return Err(e),
    }

    // The config is written before any pipeline runs, so an interrupted demo can be finished
    // with `sokana pipeline run --all --config DIR/sokana.toml`.
    let project_dir = match std::env::current_dir() {
        Ok(cwd) if cwd.join("pipelines/sokana_core.toml").is_file() => cwd,
        _ => {
            let pipelines = dir.join("pipelines");
            std::fs::create_dir_all(&pipelines)?;
            std::fs::write(pipelines.join("sokana_core.toml"), sokana::SOKANA_CORE_PIPELINE)?;
            std::fs::create_dir_all(pipelines.join("models"))?;
            for (name, sql) in sokana::SOKANA_CORE_MODELS {
                std::fs::write(pipelines.join("models").join(name), sql)?;
            }
            std::fs::create_dir_all(dir.join("queries"))?;
            for (name, sql) in sokana::SOKANA_CORE_QUERIES {
                std::fs::write(dir.join("queries").join(name), sql)?;
            }
            std::fs::create_dir_all(dir.join("dashboards"))?;
            for (name, text) in sokana::SOKANA_CORE_DASHBOARDS {
                std::fs::write(dir.join("dashboards").join(name), text)?;
            }
            std::fs::create_dir_all(dir.join("queries/metrics"))?;
            for (name, text) in sokana::SOKANA_CORE_METRICS {
                std::fs::write(dir.join("queries/metrics").join(name), text)?;
            }
            dir.clone()
        }
    };
    let config_path = dir.join("sokana.toml");
    let config_text = format!(
        "# Written by `sokana demo`.\n\n[project]\ndir = {project:?}\n\n[warehouse]\nuri = \"warehouse\"\n\n\
         [sources.core]\nurl = {source_url:?}\n\n[state]\ndir = \"state\"\n",
        project = project_dir.display().to_string(),
    );
    std::fs::write(&config_path, config_text).with_context(|| format!("writing {}", config_path.display()))?;
    let project = Project::open(Config::load(Some(&config_path))?)?;
    let config = project.config();
    eprintln!("config: {}", config_path.display());

    // The demo's login: SOKANA_DEMO_PASSWORD, or a new generated password printed below.
    let (password, generated) = match std::env::var("SOKANA_DEMO_PASSWORD") {
        Ok(p) if !p.is_empty() => (p, false),
        _ => (sokana::auth::generate_password(), true),
    };
    let auth = sokana::auth::Auth::open(config).await?;
    auth.ensure_admin(&password).await.context("setting the demo admin's password (SOKANA_DEMO_PASSWORD)")?;
    // One user per other role, named after it, to see each role's view of the dashboards.
    use sokana::auth::Role;
    for role in [Role::Manager, Role::Billing, Role::Analyst, Role::Viewer] {
        auth.ensure_user(role.name(), role, &password)
            .await
            .with_context(|| format!("setting the demo user {}", role.name()))?;
    }

    run_pipelines(&project, &[], true, "demo").await?;
    let ctx = query::unmasked_session(project.warehouse()).await?;
    let batches = query::run(
        &ctx,
        "SELECT table_schema || '.' || table_name AS \"table\" FROM information_schema.tables \
         WHERE table_schema IN ('raw', 'marts') ORDER BY 1",
    )
    .await?;
    eprintln!("warehouse: {}/warehouse\n{}", dir.display(), query::format(&batches, OutputFormat::Table)?);
    eprintln!(
        "try: cargo run --release -- sql --config {} \"SELECT status, count(*) FROM raw.phi_clients GROUP BY 1 ORDER BY 2 DESC\"",
        config_path.display()
    );
    let shown = if generated { password.as_str() } else { "(the value of SOKANA_DEMO_PASSWORD)" };
    eprintln!(
        "web: http://{listen}/ (users manager, billing, analyst and viewer; admin sets up a second factor first), \
         password {shown}\n\
         login: user {user}, password {shown}\n  \
         HTTP: curl -s http://{listen}/api/v1/auth/login -H 'content-type: application/json' \
         -d '{{\"username\": \"{user}\", \"password\": \"...\"}}'\n  \
         an admin sets up a second factor first (POST /api/v1/auth/mfa/setup, then /api/v1/auth/mfa/confirm); \
         see the README's security section\n  \
         psql: PGPASSWORD=<password><6-digit code> psql -h {host} -p {port} -U {user} sokana, \
         or with a key from `sokana key create --name psql --role analyst --config {config}` as the password",
        user = sokana::auth::ADMIN,
        host = config.server.pgwire.ip(),
        port = config.server.pgwire.port(),
        listen = config.server.listen,
        config = config_path.display(),
    );
    if no_serve {
        return Ok(());
    }
    serve(&project).await
}
