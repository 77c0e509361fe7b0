//! `sokana sql`, `sokana query` and `sokana export duckdb`: running SQL and saved queries from the
//! terminal, the interactive shell, and exports to files. Thin: the engine does the work.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::StreamExt;

use sokana::api::AppState;
use sokana::config::Config;
use sokana::pipeline::Project;
use sokana::query::engine::{Caller, EngineChoice, QueryEngine, QueryRequest};
use sokana::query::export::{Encoder, ExportFormat};
use sokana::query::log::StatsOrder;
use sokana::query::saved::{self, Given};
use sokana::query::{self, OutputFormat, Params};

/// How `sokana sql` prints or writes a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CliFormat {
    Table,
    /// CSV with cells a spreadsheet would run as formulas neutralised (a leading `'`).
    Csv,
    /// CSV exactly as stored.
    #[value(name = "csv-raw")]
    CsvRaw,
    Json,
    Arrow,
    Parquet,
}

pub struct SqlArgs {
    pub sql: Option<String>,
    pub format: CliFormat,
    pub engine: Option<EngineChoice>,
    pub params: Vec<String>,
    pub output: Option<PathBuf>,
}

/// `NAME=VALUE` pairs: all-digit names are positions (`$1`), others names (`$since`). Values that
/// read as numbers or booleans are bound as such, the rest as text.
fn adhoc_params(pairs: &[String]) -> Result<Params> {
    if pairs.is_empty() {
        return Ok(Params::None);
    }
    let mut named = BTreeMap::new();
    for pair in pairs {
        let (name, value) = pair.split_once('=').with_context(|| format!("--param {pair:?}: expected NAME=VALUE"))?;
        let value = if let Ok(i) = value.parse::<i64>() {
            serde_json::json!(i)
        } else if let Ok(f) = value.parse::<f64>() {
            serde_json::json!(f)
        } else if let Ok(b) = value.parse::<bool>() {
            serde_json::json!(b)
        } else {
            serde_json::json!(value)
        };
        named.insert(name.to_string(), value);
    }
    if named.keys().all(|k| k.chars().all(|c| c.is_ascii_digit())) {
        let mut positions: Vec<(usize, serde_json::Value)> =
            named.into_iter().map(|(k, v)| (k.parse().unwrap_or(0), v)).collect();
        positions.sort_by_key(|(i, _)| *i);
        if positions.iter().enumerate().any(|(at, (i, _))| *i != at + 1) {
            bail!("--param: positional parameters must be numbered 1, 2, 3, … without gaps");
        }
        return Ok(query::saved::params_from_json(&serde_json::Value::Array(
            positions.into_iter().map(|(_, v)| v).collect(),
        ))?);
    }
    Ok(query::saved::params_from_json(&serde_json::Value::Object(named.into_iter().collect()))?)
}

pub async fn sql(project: &Project, args: SqlArgs) -> Result<()> {
    let config = project.config();
    let state = AppState::open(project).await?;
    let engine = state.engine.clone();
    let choice = args.engine.unwrap_or(engine.default_engine());
    let params = adhoc_params(&args.params)?;
    let outcome = match &args.sql {
        Some(sql) => run_one(&engine, sql.clone(), choice, params, args.format, args.output.as_deref()).await,
        None => shell(config, &engine, choice).await,
    };
    finish(&state).await?;
    outcome
}

/// Writes what the query log and the audit trail still hold, before the process ends.
pub(super) async fn finish(state: &AppState) -> Result<()> {
    if let Some(log) = state.engine.log() {
        log.close();
    }
    state.auth.audit().flush().await.context("writing the audit trail")
}

pub async fn show_log(config: &Config, by: StatsOrder, json: bool) -> Result<()> {
    let log = query::log::QueryLog::open(&config.state_dir())?;
    let stats = log.stats(by, 20)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!("{:>6} {:>6} {:>6} {:>10} {:>10}  sql", "runs", "errors", "hits", "mean ms", "max ms");
    for s in stats {
        let sql: String = s.sql.chars().take(100).collect();
        println!("{:>6} {:>6} {:>6} {:>10.2} {:>10.2}  {sql}", s.runs, s.errors, s.cache_hits, s.mean_ms, s.max_ms);
    }
    Ok(())
}

async fn run_one(
    engine: &Arc<QueryEngine>,
    sql: String,
    choice: EngineChoice,
    params: Params,
    format: CliFormat,
    output: Option<&Path>,
) -> Result<()> {
    let request = QueryRequest { sql, engine: choice, params, page: None, caller: Caller::cli() };
    let export = match format {
        CliFormat::Table => None,
        CliFormat::Csv => Some(ExportFormat::Csv),
        CliFormat::CsvRaw => Some(ExportFormat::CsvRaw),
        CliFormat::Json => Some(ExportFormat::Json),
        CliFormat::Arrow => Some(ExportFormat::Arrow),
        CliFormat::Parquet => Some(ExportFormat::Parquet),
    };
    match (export, output) {
        (Some(format), Some(path)) => write_stream(engine, &request, format, path).await,
        (Some(ExportFormat::Arrow | ExportFormat::Parquet), None) if std::io::stdout().is_terminal() => {
            bail!("--format arrow and parquet are binary: give --output FILE, or redirect standard output")
        }
        (Some(format), None) => {
            let mut stdout = std::io::stdout().lock();
            stream_to(engine, &request, format, &mut stdout).await
        }
        (None, _) => {
            let output = engine.query(&request).await?;
            println!("{}", query::format(&output.result.batches, OutputFormat::Table)?);
            eprintln!(
                "{} row(s) · {}{}",
                output.result.rows,
                output.result.engine,
                if output.cache_hit { " · cached" } else { "" }
            );
            Ok(())
        }
    }
}

/// Streams the result into `path` through a temporary file beside it, renamed when complete, so
/// a failed export never leaves a truncated file under the name asked for.
async fn write_stream(
    engine: &Arc<QueryEngine>,
    request: &QueryRequest,
    format: ExportFormat,
    path: &Path,
) -> Result<()> {
    let partial =
        path.with_extension(format!("{}.partial", path.extension().map(|e| e.to_string_lossy()).unwrap_or_default()));
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let written = stream_to(engine, request, format, &mut writer).await.and_then(|()| Ok(writer.flush()?));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, path).with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    Ok(())
}

async fn stream_to(
    engine: &Arc<QueryEngine>,
    request: &QueryRequest,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<()> {
    let mut stream = engine.stream(request).await?;
    let mut encoder = Encoder::new(format, stream.schema.clone())?;
    let mut rows = 0u64;
    while let Some(batch) = stream.batches.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        out.write_all(&encoder.write(&batch)?)?;
    }
    out.write_all(&encoder.finish()?)?;
    eprintln!("{rows} row(s) · {}", stream.engine);
    Ok(())
}

/// The interactive shell: statements end with `;`, history in `STATE_DIR/sql_history`, `\d` lists
/// the tables and `\d TABLE` its columns, `\engine NAME` switches engines, `\q` quits.
async fn shell(config: &Config, engine: &Arc<QueryEngine>, mut choice: EngineChoice) -> Result<()> {
    use rustyline::error::ReadlineError;
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = config.state_dir().join("sql_history");
    let _ = editor.load_history(&history);
    eprintln!(
        "sokana sql ({}): end statements with ;  \\d tables  \\d TABLE columns  \\engine NAME  \\q quit",
        choice.name()
    );
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "sokana> " } else { "   ...> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if pending.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            let mut words = trimmed.split_whitespace();
            match (words.next(), words.next()) {
                (Some("\\q"), _) => break,
                (Some("\\d"), None) => {
                    let sql = "SELECT table_schema || '.' || table_name AS \"table\" FROM information_schema.tables \
                               WHERE table_schema IN ('raw', 'marts') ORDER BY 1";
                    report(
                        run_one(engine, sql.into(), EngineChoice::Datafusion, Params::None, CliFormat::Table, None)
                            .await,
                    );
                }
                (Some("\\d"), Some(table)) => {
                    let (schema, name) = table.split_once('.').unwrap_or(("marts", table));
                    let sql = "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                               WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position";
                    let params = Params::Positional(vec![schema.into(), name.into()]);
                    report(run_one(engine, sql.into(), EngineChoice::Datafusion, params, CliFormat::Table, None).await);
                }
                (Some("\\engine"), Some(next)) => match EngineChoice::parse(next) {
                    Some(next) => {
                        choice = next;
                        eprintln!("engine: {choice}");
                    }
                    None => eprintln!("unknown engine {next:?}: datafusion, duckdb or auto"),
                },
                _ => eprintln!("unknown command {trimmed:?}: \\d, \\d TABLE, \\engine NAME, \\q"),
            }
            continue;
        }
        if !pending.is_empty() {
            pending.push('\n');
        }
        pending.push_str(&line);
        if trimmed.ends_with(';') {
            let statement = std::mem::take(&mut pending);
            let _ = editor.add_history_entry(statement.as_str());
            let sql = statement.trim().trim_end_matches(';').to_string();
            report(run_one(engine, sql, choice, Params::None, CliFormat::Table, None).await);
        }
    }
    if let Some(dir) = history.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = editor.save_history(&history);
    Ok(())
}

fn report(outcome: Result<()>) {
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
    }
}

/// `sokana query list`.
pub fn list_saved(config: &Config, json: bool) -> Result<()> {
    let queries = saved::load_all(&config.queries_dir())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&queries)?);
        return Ok(());
    }
    for q in queries {
        let params: Vec<String> = q
            .params
            .iter()
            .map(|p| match &p.default {
                Some(d) => format!("{}: {:?} = {d}", p.name, p.kind),
                None => format!("{}: {:?}", p.name, p.kind),
            })
            .collect();
        println!("{:<32} {}  ({})", q.name, q.description.as_deref().unwrap_or(""), params.join(", "));
    }
    Ok(())
}

/// `sokana query run NAME --param k=v`.
pub async fn run_saved(
    project: &Project,
    name: &str,
    pairs: &[String],
    engine: Option<EngineChoice>,
    format: CliFormat,
    output: Option<&Path>,
) -> Result<()> {
    let path = project.config().queries_dir().join(format!("{name}.sql"));
    if !path.is_file() {
        bail!("no saved query {name:?} in {}", project.config().queries_dir().display());
    }
    let saved = saved::load(&path)?;
    let mut given = BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair.split_once('=').with_context(|| format!("--param {pair:?}: expected NAME=VALUE"))?;
        given.insert(k.to_string(), Given::Text(v.to_string()));
    }
    let params = saved.bind(&given)?;
    let state = AppState::open(project).await?;
    let choice = engine.unwrap_or(state.engine.default_engine());
    let outcome = run_one(&state.engine, saved.sql.clone(), choice, params, format, output).await;
    finish(&state).await?;
    outcome
}

/// `sokana export duckdb FILE`: a DuckDB database whose views read the warehouse's current files.
pub async fn export_duckdb(project: &Project, file: &Path) -> Result<()> {
    let catalog = query::catalog::WarehouseCatalog::new(project.warehouse().clone());
    let views = query::duck::export_database(&catalog, file).await?;
    eprintln!(
        "wrote {} with {views} view(s) over {}; open it with `duckdb {}` (the views read the files of today's \
         versions; export again after new loads)",
        file.display(),
        project.config().warehouse.uri,
        file.display()
    );
    Ok(())
}
