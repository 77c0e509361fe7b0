//! Metrics defined once (the semantic layer): views over the marts declared in
//! `queries/metrics/*.toml` ([`spec`]), requests against them ([`request`]), and their answers, run
//! through the query engine as the caller's scope so that masking, the exact cache, the query log
//! and the audit trail apply as to any other query. Dashboards, reports and the API ask here for
//! "collected revenue in March" and get one number. It composes queries from reviewed files and
//! bound values; it does not run SQL of its own, know of HTTP, or touch the warehouse.

pub mod request;
pub mod spec;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::DataType;
use serde::Serialize;

use crate::query::engine::{Caller, QueryEngine, QueryOutput, QueryRequest, Reads};
use crate::query::{Params, QueryError, Statement};
use request::{Composed, Grain, MetricsRequest, Range, TimeColumn, compose};
use spec::{Format, SpecError, View};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no metrics view named {0:?}")]
    UnknownView(String),
    /// A request parameter that is unknown or holds a value it may not.
    #[error("parameter {parameter}: {message}")]
    Request { parameter: String, message: String },
    /// The view's table or time column does not fit the view file.
    #[error("{path}: {message}")]
    View { path: String, message: String },
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// Every view of a project, loaded once, and the files that did not load.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    views: Arc<BTreeMap<String, Arc<View>>>,
    problems: Arc<[SpecError]>,
}

impl Catalog {
    /// The views in `dir` (`queries/metrics/`).
    pub fn load(dir: &Path) -> Catalog {
        let (views, problems) = spec::load_all(dir);
        let views = views.into_iter().map(|v| (v.name.clone(), Arc::new(v))).collect();
        Catalog { views: Arc::new(views), problems: problems.into() }
    }

    /// The files that did not load, each error naming its file.
    pub fn problems(&self) -> &[SpecError] {
        &self.problems
    }

    pub fn views(&self) -> impl Iterator<Item = &Arc<View>> {
        self.views.values()
    }

    pub fn view(&self, name: &str) -> Result<&Arc<View>, MetricsError> {
        self.views.get(name).ok_or_else(|| MetricsError::UnknownView(name.to_string()))
    }
}

/// A column of an answer, as a chart or a table needs to know it.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    pub label: String,
    /// `period`, `dimension` or `measure`.
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub higher_is_better: Option<bool>,
}

/// The previous period's rows, for comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Previous {
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    pub rows: serde_json::Value,
}

/// A view's answer to a request.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub view: String,
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grain: Option<Grain>,
    pub timezone: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<chrono::NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<chrono::NaiveDate>,
    pub columns: Vec<Column>,
    /// An array of objects keyed by column name; measures are numbers, periods `YYYY-MM-DD`.
    pub rows: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// The query that ran, with `$n` where the request's values were bound.
    pub sql: String,
    pub cache_hit: bool,
    /// The warehouse tables read and their versions (what the answer is as of).
    pub tables: Vec<TableVersion>,
    /// What both periods' queries read, for answers made from this one.
    #[serde(skip)]
    pub reads: Reads,
    /// The statements that ran, with their values.
    #[serde(skip)]
    pub statements: Vec<Statement>,
    /// The measure forecast past the period in progress, when asked (see [`forecast`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableVersion {
    pub table: String,
    pub version: i64,
}

/// How `view`'s time column is stored, from the engine's catalog.
async fn time_column(engine: &QueryEngine, view: &View) -> Result<Option<TimeColumn>, MetricsError> {
    let Some(column) = &view.time else { return Ok(None) };
    let problem = |message: String| MetricsError::View { path: view.path.display().to_string(), message };
    let table = engine
        .catalog()
        .current(&view.table)
        .await
        .map_err(QueryError::from)?
        .ok_or_else(|| problem(format!("table: {} does not exist in the warehouse (yet)", view.table)))?;
    let schema = datafusion::datasource::TableProvider::schema(table.as_ref());
    let field = schema
        .field_with_name(column)
        .map_err(|_| problem(format!("time: {} has no column {column:?}", view.table)))?;
    match field.data_type() {
        DataType::Timestamp(_, _) => Ok(Some(TimeColumn::Timestamp)),
        DataType::Date32 | DataType::Date64 => Ok(Some(TimeColumn::Date)),
        other => Err(problem(format!("time: {}.{column} is {other}, not a timestamp or a date", view.table))),
    }
}

/// Answers `request` against `view` as `caller`: the request's period and, when asked, the one before.
pub async fn answer(
    engine: &QueryEngine,
    view: &View,
    request: &MetricsRequest,
    caller: &Caller,
) -> Result<Answer, MetricsError> {
    let time = time_column(engine, view).await?;
    let current = compose(view, time, request, request.range);
    let previous_range = request.range.filter(|_| request.compare).map(Range::previous);
    let run = |composed: Composed| {
        let query = query_of(engine, composed, caller);
        async move {
            let output = engine.query(&query).await?;
            Ok::<_, QueryError>((Statement { sql: query.sql, params: query.params }, output))
        }
    };
    let (now, before) = match previous_range {
        Some(range) => {
            let (a, b) = futures::join!(run(current), run(compose(view, time, request, Some(range))));
            (a?, Some((range, b?)))
        }
        None => (run(current).await?, None),
    };
    let (statement, output) = now;
    let mut statements = vec![statement];
    let mut columns = Vec::new();
    if request.grain.is_some() {
        columns.push(Column {
            name: spec::PERIOD.into(),
            label: request.grain.map(|g| capitalised(g.name())).unwrap_or_default(),
            role: "period",
            format: None,
            higher_is_better: None,
        });
    }
    for d in request.dimensions.iter().filter_map(|d| view.dimension(d)) {
        columns.push(Column {
            name: d.name.clone(),
            label: d.label.clone(),
            role: "dimension",
            format: None,
            higher_is_better: None,
        });
    }
    for m in request.measures.iter().filter_map(|m| view.measure(m)) {
        columns.push(Column {
            name: m.name.clone(),
            label: m.label.clone(),
            role: "measure",
            format: Some(m.format),
            higher_is_better: Some(m.higher_is_better),
        });
    }
    let mut reads = Reads::of(&output);
    let previous = match before {
        Some((range, (statement, output))) => {
            reads.add(&Reads::of(&output));
            statements.push(statement);
            Some(Previous { from: range.from, to: range.to, rows: answer_rows(&output)? })
        }
        None => None,
    };
    Ok(Answer {
        view: view.name.clone(),
        label: view.label.clone(),
        grain: request.grain,
        timezone: view.timezone.name().to_string(),
        from: request.range.map(|r| r.from),
        to: request.range.map(|r| r.to),
        columns,
        rows: answer_rows(&output)?,
        previous,
        sql: statements[0].sql.clone(),
        cache_hit: output.cache_hit,
        tables: output.tables.iter().map(|(t, v)| TableVersion { table: t.to_string(), version: *v }).collect(),
        reads,
        statements,
        forecast: None,
    })
}

/// The series behind `request` (one measure per grain; filters kept) over the view's whole
/// history, as `caller` sees it: what a forecast is made from, with what it read. Periods that
/// end after `as_of` (the one in progress) are left out, since part of a month reads as a fall.
/// Each period is the midnight that starts it, as the forecast takes times.
pub async fn series(
    engine: &QueryEngine,
    view: &View,
    request: &MetricsRequest,
    as_of: chrono::NaiveDate,
    caller: &Caller,
) -> Result<(crate::forecast::series::Rows, Reads), MetricsError> {
    let bad =
        |parameter: &str, message: &str| MetricsError::Request { parameter: parameter.into(), message: message.into() };
    let (Some(grain), [measure]) = (request.grain, request.measures.as_slice()) else {
        return Err(bad("forecast", "a forecast is of one measure per period: give one measure and a grain"));
    };
    if !request.dimensions.is_empty() {
        return Err(bad("dimensions", "a forecast is of one series: leave dimensions out (filters may stay)"));
    }
    let whole =
        MetricsRequest { range: None, compare: false, order: None, limit: engine.limits().max_rows, ..request.clone() };
    let answer = answer(engine, view, &whole, caller).await?;
    let rows = answer.rows.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut points = Vec::with_capacity(rows.len());
    for row in rows {
        let period = row.get(spec::PERIOD).and_then(|p| p.as_str()).and_then(|p| p.parse::<chrono::NaiveDate>().ok());
        if let Some(start) = period.filter(|p| grain.after(*p) <= as_of).and_then(|p| p.and_hms_opt(0, 0, 0)) {
            points.push((start, row.get(measure.as_str()).and_then(serde_json::Value::as_f64)));
        }
    }
    Ok((points, answer.reads))
}

/// `request`'s measure forecast `horizon` periods past `as_of`'s, with intervals at `levels`: the
/// `forecast` part of an answer (model, seasons, notes, and per period the value and bounds).
/// Missing periods are zero for sums and counts and interpolated for other measures.
pub async fn forecast(
    engine: &QueryEngine,
    view: &View,
    request: &MetricsRequest,
    ask: &crate::forecast::Request,
    as_of: chrono::NaiveDate,
    caller: &Caller,
) -> Result<(serde_json::Value, Reads), MetricsError> {
    use crate::forecast as fc;
    let (outcome, reads) = forecast_outcome(engine, view, request, ask, as_of, caller).await?;
    let rows: Vec<serde_json::Value> = outcome
        .forecast
        .iter()
        .map(|point| {
            let mut row = serde_json::Map::new();
            row.insert(spec::PERIOD.into(), point.time.date().to_string().into());
            row.insert("value".into(), point.value.into());
            for bound in &point.bounds {
                let level = fc::table::level_name(bound.level);
                row.insert(format!("lower_{level}"), bound.lower.into());
                row.insert(format!("upper_{level}"), bound.upper.into());
            }
            serde_json::Value::Object(row)
        })
        .collect();
    let answer = serde_json::json!({
        "horizon": outcome.forecast.len(),
        "levels": ask.levels,
        "model": outcome.model,
        "seasons": outcome.seasons,
        "history": outcome.history.len(),
        "notes": outcome.notes,
        "rows": rows,
    });
    Ok((answer, reads))
}

/// The forecast itself, fitted off the thread pool that serves requests.
async fn forecast_outcome(
    engine: &QueryEngine,
    view: &View,
    request: &MetricsRequest,
    ask: &crate::forecast::Request,
    as_of: chrono::NaiveDate,
    caller: &Caller,
) -> Result<(crate::forecast::Outcome, Reads), MetricsError> {
    use crate::forecast as fc;
    let (rows, reads) = series(engine, view, request, as_of, caller).await?;
    let fill = if additive(view, request) { fc::Fill::Zero } else { fc::Fill::Interpolate };
    let grain = request.grain.map(fc::Grain::from);
    let ask = ask.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let series = fc::Series::from_rows(rows, grain, fill)?;
        fc::forecast(&series, &ask)
    })
    .await
    .map_err(|e| MetricsError::Query(QueryError::Internal(format!("the forecast stopped: {e}"))))?
    .map_err(|e| MetricsError::Request { parameter: "forecast".into(), message: e.to_string() })?;
    Ok((outcome, reads))
}

/// Whether `request`'s measure adds up over time (a sum or a count): a missing period is zero,
/// and part of a period holds about its share of the whole.
fn additive(view: &View, request: &MetricsRequest) -> bool {
    request.measures.first().and_then(|m| view.measure(m)).is_some_and(|m| {
        let sql = m.sql.trim_start().to_ascii_lowercase();
        sql.starts_with("sum(") || sql.starts_with("count(")
    })
}

/// The period in progress against its forecast, for alerts on forecasts: what the measure holds
/// so far and what a forecast made from the whole periods before it expected of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tracking {
    /// The period's first day and the last day counted (the day before the one asked about).
    pub period: chrono::NaiveDate,
    pub through: chrono::NaiveDate,
    pub grain: Grain,
    /// The measure over the days counted.
    pub actual: f64,
    /// The whole period's forecast and its interval at `level`.
    pub forecast: f64,
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
    /// The share of the period the days counted make (1 for a measure that does not add up over
    /// days, such as an average, which is compared whole).
    pub share: f64,
    pub model: String,
    /// The measure's format, for saying the figures.
    pub format: Format,
}

impl Tracking {
    /// The forecast and its bounds for the days counted: the whole period's value times their
    /// share, and the interval's half-widths times its square root (the spread of a sum of
    /// independent days), so that a few days into a month the interval is wide for what they hold.
    pub fn expected(&self) -> (f64, f64, f64) {
        let value = self.forecast * self.share;
        let spread = self.share.sqrt();
        let mut lower = value - (self.forecast - self.lower) * spread;
        if self.lower >= 0.0 {
            lower = lower.max(0.0);
        }
        (value, lower, value + (self.upper - self.forecast) * spread)
    }
}

/// How the period in progress on `day` stands against its forecast at `level` %, as `caller`:
/// the measure is counted from the period's first day through the day before `day` (the last
/// whole day loaded), and the forecast comes from the whole periods before it, so a day that
/// starts a period judges the one that just ended, in full. For sums and counts, the forecast is
/// scaled to the days counted (see [`Tracking::expected`]; weekdays and weekends weigh alike).
pub async fn tracking(
    engine: &QueryEngine,
    view: &View,
    request: &MetricsRequest,
    level: f64,
    day: chrono::NaiveDate,
    caller: &Caller,
) -> Result<Tracking, MetricsError> {
    let Some(grain) = request.grain else {
        return Err(MetricsError::Request {
            parameter: "grain".into(),
            message: "a forecast is of one measure per period: give a grain".into(),
        });
    };
    let through = day.pred_opt().unwrap_or(day);
    let period = grain.start(through);
    let ask = crate::forecast::Request { levels: vec![level], ..crate::forecast::Request::new(1) };
    let (outcome, _) = forecast_outcome(engine, view, request, &ask, period, caller).await?;
    let point = outcome.forecast.first().ok_or_else(|| MetricsError::Request {
        parameter: "forecast".into(),
        message: "the forecast answered no period".into(),
    })?;
    let bound = point.bounds.first().map_or((point.value, point.value), |b| (b.lower, b.upper));
    let so_far = MetricsRequest {
        grain: None,
        range: Some(Range { from: period, to: day }),
        compare: false,
        order: None,
        ..request.clone()
    };
    let answer = answer(engine, view, &so_far, caller).await?;
    let measure = request.measures.first().map(String::as_str).unwrap_or_default();
    let actual = answer
        .rows
        .as_array()
        .and_then(|rows| rows.first())
        .and_then(|row| row.get(measure))
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    let days = |from: chrono::NaiveDate, to: chrono::NaiveDate| (to - from).num_days().max(1) as f64;
    let share = if additive(view, request) {
        (days(period, through + chrono::Duration::days(1)) / days(period, grain.after(period))).min(1.0)
    } else {
        1.0
    };
    Ok(Tracking {
        period,
        through,
        grain,
        actual,
        forecast: point.value,
        lower: bound.0,
        upper: bound.1,
        level,
        share,
        model: outcome.model,
        format: view.measure(measure).map(|m| m.format).unwrap_or_default(),
    })
}

fn answer_rows(output: &QueryOutput) -> Result<serde_json::Value, MetricsError> {
    let bytes = output.result.json_rows()?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_slice(bytes).map_err(|e| MetricsError::Query(QueryError::Format(e.to_string())))
}

/// The rows behind `request`'s numbers (see [`request::compose_rows`]), as `caller`: masked by
/// their role like every other answer.
pub async fn rows_behind(
    engine: &QueryEngine,
    view: &View,
    request: &MetricsRequest,
    caller: &Caller,
    limit: u64,
) -> Result<QueryOutput, MetricsError> {
    let time = time_column(engine, view).await?;
    let query = query_of(engine, request::compose_rows(view, time, request, limit), caller);
    Ok(engine.query(&query).await?)
}

/// The engine request of a composed query, on the engine's default choice, as `caller`.
fn query_of(engine: &QueryEngine, composed: Composed, caller: &Caller) -> QueryRequest {
    QueryRequest {
        sql: composed.sql,
        engine: engine.default_engine(),
        params: Params::Positional(composed.params),
        page: None,
        caller: caller.clone(),
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Checks every view against the live catalog: its table and time column exist, and each measure
/// and dimension plans (`sokana check`). Each problem names the file and the field.
pub async fn check(engine: &QueryEngine, view: &View) -> Vec<String> {
    let path = view.path.display();
    let time = match time_column(engine, view).await {
        Ok(time) => time,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    let all = |measures: Vec<String>, dimensions: Vec<String>| MetricsRequest {
        measures,
        dimensions,
        grain: view.time.as_ref().map(|_| Grain::Month),
        range: None,
        filters: Vec::new(),
        compare: false,
        order: None,
        limit: 1,
    };
    for m in &view.measures {
        let composed = compose(view, time, &all(vec![m.name.clone()], Vec::new()), None);
        if let Err(e) = engine.validate(&composed.sql).await {
            problems.push(format!("{path}: measure {}: {e}", m.name));
        }
    }
    for d in &view.dimensions {
        let first = view.measures.first().map(|m| m.name.clone()).into_iter().collect();
        let composed = compose(view, time, &all(first, vec![d.name.clone()]), None);
        if let Err(e) = engine.validate(&composed.sql).await {
            problems.push(format!("{path}: dimension {}: {e}", d.name));
        }
    }
    problems
}
