//! `sokana forecast run` and `sokana forecast backtest`: one series (a metric, a query through the
//! engine, or a CSV file of `time,value`) forecast with its intervals, or every model's backtest on
//! it against the seasonal naive.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sokana::api::AppState;
use sokana::config::Config;
use sokana::forecast::series::Rows;
use sokana::forecast::{self as fc, Fill, Grain, Model, Request, Series};
use sokana::pipeline::Project;
use sokana::query::engine::{Caller, EngineChoice, QueryRequest};
use sokana::query::{OutputFormat, Params};

use super::queries::finish;

/// Where the series comes from, and how to space it.
#[derive(Debug, clap::Args)]
pub struct SeriesArgs {
    /// A metric as VIEW.MEASURE (e.g. payments.collected), per --grain (month unless given); the
    /// period in progress is left out.
    #[arg(conflicts_with_all = ["sql", "input"], required_unless_present_any = ["sql", "input"])]
    pub name: Option<String>,
    /// A query answering one time column and one numeric column, run through the query engine.
    #[arg(long, conflicts_with = "input")]
    pub sql: Option<String>,
    /// A CSV file with a header and rows of time,value (no project needed).
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// hour, day, week, month, quarter or year (read from the times when not given).
    #[arg(long)]
    pub grain: Option<String>,
    /// The season in grains (12 for months); 0 for none. Read from the grain and the data when not given.
    #[arg(long)]
    pub season: Option<usize>,
    /// What a missing point is: zero (sums and counts) or interpolate (levels and averages).
    #[arg(long, default_value = "zero")]
    pub fill: String,
    /// The last day of history (for a metric): periods ending after it are left out. Default: today.
    #[arg(long)]
    pub as_of: Option<chrono::NaiveDate>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ForecastFormat {
    Table,
    Csv,
    Json,
}

/// Reads the series `args` names: from the file without a project, else through the engine.
async fn series(config: Option<&Path>, args: &SeriesArgs) -> Result<Series> {
    let grain = args.grain.as_deref().map(Grain::parse).transpose().context("--grain")?;
    let fill = Fill::parse(&args.fill).context("--fill")?;
    let rows = match (&args.input, &args.sql, &args.name) {
        (Some(path), _, _) => fc::input::read_csv(path)?,
        (None, Some(sql), _) => rows_of_query(config, sql).await?,
        (None, None, Some(name)) => rows_of_metric(config, name, grain.unwrap_or(Grain::Month), args.as_of).await?,
        (None, None, None) => bail!("name a metric (VIEW.MEASURE), or give --sql or --input"),
    };
    Ok(Series::from_rows(rows, grain, fill)?)
}

async fn rows_of_query(config: Option<&Path>, sql: &str) -> Result<Rows> {
    let project = Project::open(Config::load(config)?)?;
    let state = AppState::open(&project).await?;
    let request = QueryRequest {
        sql: sql.to_string(),
        engine: EngineChoice::Auto,
        params: Params::default(),
        page: None,
        caller: Caller::cli(),
    };
    let output = state.engine.query(&request).await.context("running the series' query")?;
    let result = &output.result;
    let (rows, _) = fc::table::rows(&result.batches, &result.schema)?;
    finish(&state).await?;
    Ok(rows)
}

async fn rows_of_metric(
    config: Option<&Path>,
    name: &str,
    grain: Grain,
    as_of: Option<chrono::NaiveDate>,
) -> Result<Rows> {
    let Some((view_name, measure)) = name.split_once('.') else {
        bail!("{name:?}: name a metric as VIEW.MEASURE, e.g. payments.collected");
    };
    let project = Project::open(Config::load(config)?)?;
    let state = AppState::open(&project).await?;
    let view = state.metrics.view(view_name)?;
    let pairs = [("measures", measure), ("grain", grain.name())];
    let request = sokana::metrics::request::MetricsRequest::from_pairs(view, pairs, state.engine.limits().max_rows)?;
    let as_of = as_of.unwrap_or_else(|| chrono::Utc::now().with_timezone(&view.timezone).date_naive());
    let (rows, _) = sokana::metrics::series(&state.engine, view, &request, as_of, &Caller::cli()).await?;
    finish(&state).await?;
    Ok(rows)
}

fn request(args: &SeriesArgs, horizon: usize, levels: &[f64], model: Option<&str>) -> Result<Request> {
    let mut request = Request::new(horizon);
    if !levels.is_empty() {
        request.levels = levels.to_vec();
    }
    request.season = args.season;
    request.model = model.filter(|m| *m != "auto").map(Model::parse).transpose().context("--model")?;
    Ok(request)
}

/// What `sokana forecast run` was asked.
pub struct RunArgs<'a> {
    pub series: &'a SeriesArgs,
    pub horizon: usize,
    pub levels: &'a [f64],
    pub model: Option<&'a str>,
    pub history: bool,
    pub format: ForecastFormat,
}

pub async fn run(config: Option<&Path>, args: RunArgs<'_>) -> Result<()> {
    let series = series(config, args.series).await?;
    let request = request(args.series, args.horizon, args.levels, args.model)?;
    let outcome = fc::forecast(&series, &request)?;
    let time_type = arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None);
    let batch = fc::table::batch(&outcome, &request.levels, &time_type, args.history)?;
    match args.format {
        ForecastFormat::Table => {
            println!("{}", sokana::query::format(&[batch], OutputFormat::Table)?);
            eprintln!("{}", said(&outcome));
        }
        ForecastFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(std::io::stdout().lock());
            writer.write(&batch)?;
            eprintln!("{}", said(&outcome));
        }
        ForecastFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            writer.write(&batch)?;
            writer.finish()?;
            let rows: serde_json::Value = serde_json::from_slice(&writer.into_inner())?;
            let answer = serde_json::json!({
                "grain": outcome.grain,
                "seasons": outcome.seasons,
                "model": outcome.model,
                "notes": outcome.notes,
                "backtest": outcome.backtest,
                "rows": rows,
            });
            println!("{answer}");
        }
    }
    Ok(())
}

/// The model, seasons and notes in one line for the terminal.
fn said(outcome: &fc::Outcome) -> String {
    let seasons = match outcome.seasons.as_slice() {
        [] => "no season".to_string(),
        seasons => format!("season {}", seasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and ")),
    };
    let mut line =
        format!("model {} · {} · {} {}s of history", outcome.model, seasons, outcome.history.len(), outcome.grain);
    for note in &outcome.notes {
        line.push_str("\nnote: ");
        line.push_str(note);
    }
    line
}

/// Every model's backtest on the series, against the seasonal naive, and the one chosen.
pub async fn backtest(config: Option<&Path>, args: &SeriesArgs, horizon: usize, json: bool) -> Result<()> {
    let series = series(config, args).await?;
    let mut request = request(args, horizon, &[], None)?;
    request.levels = fc::DEFAULT_LEVELS.to_vec();
    let outcome = fc::forecast(&series, &request)?;
    let Some(backtest) = &outcome.backtest else {
        bail!("{} {}s are too few to hold any out: {}", series.values.len(), series.grain, outcome.notes.join("; "));
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "chosen": outcome.model, "seasons": outcome.seasons, "notes": outcome.notes, "backtest": backtest })
        );
        return Ok(());
    }
    let baseline = backtest.baseline().map(|b| b.mase);
    println!(
        "{} {}s; {} origin(s), {} steps ahead each; seasons {:?}",
        series.values.len(),
        series.grain,
        backtest.windows,
        backtest.horizon,
        outcome.seasons
    );
    println!("{:<52} {:>7} {:>9} {:>8} {:>8} {:>8}", "model", "MASE", "vs naive", "sMAPE", "cover80", "cover95");
    for score in &backtest.scores {
        let relative = baseline.filter(|b| *b > 0.0).map_or("".to_string(), |b| format!("{:.2}x", score.mase / b));
        let chosen = if score.model == outcome.model { "  ← chosen" } else { "" };
        println!(
            "{:<52} {:>7.3} {:>9} {:>8.2} {:>7.0}% {:>7.0}%{chosen}",
            score.model,
            score.mase,
            relative,
            score.smape,
            score.coverage[0] * 100.0,
            score.coverage[1] * 100.0
        );
    }
    for note in &outcome.notes {
        println!("note: {note}");
    }
    Ok(())
}
