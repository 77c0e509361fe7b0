//! Dashboards as code: the files in `dashboards/` ([`spec`]), the filter values a viewer chose
//! ([`Selection`]), each panel's data fetched through the metrics layer or the query engine as the
//! viewer's role (so masking, the exact cache, the query log and the audit trail apply), and its
//! chart drawn by [`crate::chart`]. It does not speak HTTP, and it runs no query of its own making
//! beyond what the files and the metrics views say.

pub mod reports;
pub mod spec;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use chrono::{Months, NaiveDate};
use serde::Serialize;

use crate::chart::{self, Cell, Chart, Field, FieldKind, Format, Frame, Theme};
use crate::metrics::request::{Grain, MetricsRequest, Range};
use crate::metrics::{self, MetricsError};
use crate::query::engine::{Caller, QueryEngine, QueryRequest, Reads};
use crate::query::{Params, QueryError, Statement};
pub use spec::{Dashboard, FilterKind, PanelSpec, Preset, Source, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("no dashboard named {0:?}")]
    Unknown(String),
    #[error("dashboard {dashboard} has no panel {panel:?}")]
    UnknownPanel { dashboard: String, panel: String },
    /// The viewer's role may not open it.
    #[error("dashboard {0} is not open to your role")]
    Forbidden(String),
    /// A filter value from the URL that is unknown, malformed or outside the allowed set.
    #[error("filter {filter}: {message}")]
    Filter { filter: String, message: String },
    /// A panel whose file does not fit the metrics views or the warehouse.
    #[error("{path}: panel {panel}: {message}")]
    Panel { path: String, panel: String, message: String },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
}

/// Every dashboard of a project, loaded once, and the files that did not load.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    dashboards: Arc<BTreeMap<String, Arc<Dashboard>>>,
    problems: Arc<[SpecError]>,
}

impl Catalog {
    pub fn load(dir: &Path) -> Catalog {
        let (mut dashboards, mut problems) = spec::load_all(dir);
        // Reports are named across dashboards: a name taken by an earlier file is a problem of
        // the later one, whose report is left out.
        let mut named: BTreeMap<String, std::path::PathBuf> = BTreeMap::new();
        for d in &mut dashboards {
            d.reports.retain(|r| match named.get(&r.spec.name) {
                Some(first) => {
                    problems.push(SpecError {
                        path: d.path.clone(),
                        line: None,
                        message: format!(
                            "reports: the report name {:?} is taken by {}; report names are unique across dashboards",
                            r.spec.name,
                            first.display()
                        ),
                    });
                    false
                }
                None => {
                    named.insert(r.spec.name.clone(), d.path.clone());
                    true
                }
            });
        }
        let dashboards = dashboards.into_iter().map(|d| (d.id.clone(), Arc::new(d))).collect();
        Catalog { dashboards: Arc::new(dashboards), problems: problems.into() }
    }

    pub fn dashboards(&self) -> impl Iterator<Item = &Arc<Dashboard>> {
        self.dashboards.values()
    }

    pub fn problems(&self) -> &[SpecError] {
        &self.problems
    }

    pub fn get(&self, id: &str) -> Result<&Arc<Dashboard>, DashboardError> {
        self.dashboards.get(id).ok_or_else(|| DashboardError::Unknown(id.to_string()))
    }
}

/// The filter values a viewer chose (or the defaults), checked against the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Selection {
    /// The date range filter's name, preset (`None` for a custom range) and days.
    pub range: Option<(String, Option<Preset>, Range)>,
    /// The date range filter's preset, `all_time` (which has no range) included.
    pub preset: Option<Preset>,
    /// Select filters: name → values chosen (empty: all).
    pub selects: BTreeMap<String, Vec<String>>,
}

fn filter_error(filter: &str, message: impl Into<String>) -> DashboardError {
    DashboardError::Filter { filter: filter.to_string(), message: message.into() }
}

/// The days of `preset` as of `today` (`[from, to)`); `None` for all time.
pub fn preset_range(preset: Preset, today: NaiveDate) -> Option<Range> {
    let tomorrow = today.succ_opt()?;
    let month_start = Grain::Month.start(today);
    let quarter_start = Grain::Quarter.start(today);
    let year_start = Grain::Year.start(today);
    let week_start = Grain::Week.start(today);
    let (from, to) = match preset {
        Preset::Last30Days => (tomorrow - chrono::Duration::days(30), tomorrow),
        Preset::Last90Days => (tomorrow - chrono::Duration::days(90), tomorrow),
        Preset::MonthToDate => (month_start, tomorrow),
        Preset::QuarterToDate => (quarter_start, tomorrow),
        Preset::YearToDate => (year_start, tomorrow),
        Preset::LastWeek => (week_start - chrono::Duration::days(7), week_start),
        Preset::LastMonth => (month_start.checked_sub_months(Months::new(1))?, month_start),
        Preset::LastQuarter => (quarter_start.checked_sub_months(Months::new(3))?, quarter_start),
        Preset::LastYear => (year_start.checked_sub_months(Months::new(12))?, year_start),
        Preset::Last12Months => (month_start.checked_sub_months(Months::new(12))?, month_start),
        Preset::Next30Days => (today, today + chrono::Duration::days(30)),
        Preset::Next6Months => (month_start, month_start.checked_add_months(Months::new(6))?),
        Preset::AllTime => return None,
    };
    Some(Range { from, to })
}

/// Today in the dashboards' time zone.
pub fn today() -> NaiveDate {
    chrono::Utc::now().with_timezone(&crate::metrics::spec::DEFAULT_TIMEZONE).date_naive()
}

impl Selection {
    /// Reads the filter values in URL pairs: `NAME=preset` or `NAME=YYYY-MM-DD..YYYY-MM-DD` for a
    /// date range, `NAME=value` (repeated) for a select. Parameters that are not filters of this
    /// dashboard are left to the caller (`theme`, `page`); a value of the wrong form is an error
    /// naming the filter. Select values are checked against the data by [`check_values`].
    pub fn from_pairs<'a>(
        dashboard: &Dashboard,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        today: NaiveDate,
    ) -> Result<Selection, DashboardError> {
        let mut selection = Selection::default();
        let mut given_range = None;
        for (key, value) in pairs {
            let Some(filter) = dashboard.file.filters.iter().find(|f| f.name == key) else { continue };
            match filter.kind {
                FilterKind::DateRange => given_range = Some(parse_range(&filter.name, value, today)?),
                FilterKind::Select => {
                    if value.len() > 200 {
                        return Err(filter_error(key, "a value longer than 200 characters"));
                    }
                    selection.selects.entry(key.to_string()).or_default().push(value.to_string());
                }
            }
        }
        if let Some(filter) = dashboard.file.filters.iter().find(|f| f.kind == FilterKind::DateRange) {
            let (preset, range) = match given_range {
                Some(given) => given,
                None => {
                    let preset = filter.default.unwrap_or(Preset::Last90Days);
                    (Some(preset), preset_range(preset, today))
                }
            };
            selection.preset = preset;
            if let Some(range) = range {
                selection.range = Some((filter.name.clone(), preset, range));
            }
        }
        Ok(selection)
    }
}

fn parse_range(filter: &str, value: &str, today: NaiveDate) -> Result<(Option<Preset>, Option<Range>), DashboardError> {
    if let Some(preset) = Preset::parse(value) {
        return Ok((Some(preset), preset_range(preset, today)));
    }
    let expected = || {
        let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
        filter_error(
            filter,
            format!("expected one of {} or FROM..TO as 2026-01-01..2026-04-01, got {value:?}", names.join(", ")),
        )
    };
    let (from, to) = value.split_once("..").ok_or_else(expected)?;
    let date = |t: &str| NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d").map_err(|_| expected());
    let (from, to) = (date(from)?, date(to)?);
    if to <= from {
        return Err(filter_error(filter, format!("the range ends ({to}) before it starts ({from})")));
    }
    Ok((None, Some(Range { from, to })))
}

/// The select filters that apply to a metrics panel over `view`: those the panel names (or all)
/// whose dimension the view has.
fn applied_selects<'a>(
    dashboard: &'a Dashboard,
    panel: &PanelSpec,
    view: &metrics::spec::View,
) -> Vec<(&'a str, String)> {
    dashboard
        .file
        .filters
        .iter()
        .filter(|f| f.kind == FilterKind::Select)
        .filter(|f| panel.filters.as_ref().is_none_or(|names| names.contains(&f.name)))
        .filter_map(|f| {
            let dimension = f.dimension.clone().unwrap_or_else(|| f.name.clone());
            view.dimension(&dimension).map(|_| (f.name.as_str(), dimension))
        })
        .collect()
}

fn range_applies(dashboard: &Dashboard, panel: &PanelSpec) -> bool {
    dashboard
        .file
        .filters
        .iter()
        .filter(|f| f.kind == FilterKind::DateRange)
        .any(|f| panel.filters.as_ref().is_none_or(|names| names.contains(&f.name)))
}

/// Checks each chosen select value against the values its dimension takes in the data (as the
/// viewer's role sees them): a value outside that set is an error naming the filter.
pub async fn check_values(
    engine: &QueryEngine,
    views: &metrics::Catalog,
    dashboard: &Dashboard,
    selection: &Selection,
    caller: &Caller,
) -> Result<Reads, DashboardError> {
    let mut reads = Reads::default();
    for (name, chosen) in &selection.selects {
        let allowed = filter_values(engine, views, dashboard, name, caller).await?;
        if let Some(outside) = chosen.iter().find(|v| !allowed.values.contains(v)) {
            return Err(filter_error(name, format!("{outside:?} is not one of the values in the data")));
        }
        reads.add(&allowed.reads);
    }
    Ok(reads)
}

/// The values a select filter offers, and what finding them read.
#[derive(Debug, Clone, Default)]
pub struct FilterValues {
    pub values: Vec<String>,
    pub reads: Reads,
}

/// The values a select filter offers: its dimension's values in the data, most frequent first.
pub async fn filter_values(
    engine: &QueryEngine,
    views: &metrics::Catalog,
    dashboard: &Dashboard,
    name: &str,
    caller: &Caller,
) -> Result<FilterValues, DashboardError> {
    let filter = dashboard
        .file
        .filters
        .iter()
        .find(|f| f.name == name && f.kind == FilterKind::Select)
        .ok_or_else(|| filter_error(name, "the dashboard has no such select filter"))?;
    let view = views.view(filter.view.as_deref().unwrap_or_default())?;
    let dimension = filter.dimension.clone().unwrap_or_else(|| filter.name.clone());
    let measure = view.measures.first().map(|m| m.name.clone()).unwrap_or_default();
    let request = MetricsRequest {
        measures: vec![measure],
        dimensions: vec![dimension.clone()],
        grain: None,
        range: None,
        filters: Vec::new(),
        compare: false,
        order: None,
        limit: 1_000,
    };
    request.check(view)?;
    let answer = metrics::answer(engine, view, &request, caller).await?;
    let values = answer
        .rows
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r.get(&dimension).and_then(|v| v.as_str()).map(String::from)).collect())
        .unwrap_or_default();
    Ok(FilterValues { values, reads: answer.reads })
}

/// A panel's data, ready to draw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PanelData {
    pub frame: Frame,
    pub previous: Option<Frame>,
    pub trend: Option<Frame>,
    /// The measure forecast past the data: `period`, `value`, `lower_80` … `upper_95`.
    pub forecast: Option<Frame>,
    /// What the forecast is held against: `period`, `capacity`.
    pub capacity: Option<Frame>,
    /// The queries that ran, with `$n` where values were bound.
    pub sql: Vec<String>,
    /// Tables read and their versions (what live refresh watches).
    pub tables: Vec<metrics::TableVersion>,
    pub cache_hit: bool,
    /// What its queries read, for answers made from it.
    #[serde(skip)]
    pub reads: Reads,
    /// The statements that ran, with their values.
    #[serde(skip)]
    pub statements: Vec<Statement>,
}

/// The frame of a metrics answer's `forecast`: its periods, points and bounds, in the measure's format.
fn forecast_frame(forecast: &serde_json::Value, columns: &[metrics::Column]) -> Frame {
    let measure = columns.iter().find(|c| c.role == "measure");
    let format = measure.and_then(|m| m.format);
    let names = ["value", "lower_80", "upper_80", "lower_95", "upper_95"];
    let mut fields = vec![Field {
        name: metrics::spec::PERIOD.into(),
        label: "Period".into(),
        format: None,
        higher_is_better: None,
    }];
    fields.extend(names.iter().map(|name| Field {
        name: (*name).into(),
        label: measure.map_or_else(|| (*name).to_string(), |m| format!("{} ({name})", m.label)),
        format,
        higher_is_better: None,
    }));
    let rows = forecast["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
    let rows = rows
        .iter()
        .map(|row| {
            let period = row[metrics::spec::PERIOD].as_str().map_or(Cell::Null, |p| Cell::Text(p.to_string()));
            std::iter::once(period)
                .chain(names.iter().map(|name| row[*name].as_f64().map_or(Cell::Null, Cell::Number)))
                .collect()
        })
        .collect();
    Frame { fields, rows }
}

/// The capacity a forecast panel's demand is held against (`period`, `capacity`): its measure per
/// the panel's grain over the panel's range up to the forecast's first period, and for each period
/// of `forecast` the mean of its last `recent` periods before that one (with the answer it came
/// from). Counting up to the forecast, not to `as_of`, leaves out a period the demand's data does
/// not reach yet (availability entered ahead of the hours worked).
async fn capacity_frame(
    sources: &Sources<'_>,
    view: &metrics::spec::View,
    spec: &spec::CapacitySpec,
    base: &MetricsRequest,
    as_of: NaiveDate,
    forecast: &Frame,
    caller: &Caller,
) -> Result<(Frame, metrics::Answer), MetricsError> {
    let grain = base.grain.unwrap_or(Grain::Week);
    let first_ahead = forecast
        .index(metrics::spec::PERIOD)
        .and_then(|i| forecast.rows.first()?.get(i))
        .and_then(|cell| cell.raw().parse::<NaiveDate>().ok())
        .unwrap_or(as_of);
    let mut recent_from = grain.start(first_ahead);
    for _ in 0..spec.recent.max(1) {
        recent_from = grain.before(recent_from);
    }
    let from = base.range.map_or(recent_from, |r| r.from.min(recent_from));
    let request = MetricsRequest {
        measures: vec![spec.measure.clone()],
        dimensions: Vec::new(),
        grain: Some(grain),
        range: Some(Range { from, to: first_ahead.max(from) }),
        filters: Vec::new(),
        compare: false,
        order: None,
        limit: sources.engine.limits().max_rows,
    };
    request.check(view)?;
    let answer = metrics::answer(sources.engine, view, &request, caller).await?;
    let rows = answer.rows.as_array().map(Vec::as_slice).unwrap_or_default();
    let mut points: Vec<(NaiveDate, f64)> = rows
        .iter()
        .filter_map(|row| {
            let period = row.get(metrics::spec::PERIOD)?.as_str()?.parse::<NaiveDate>().ok()?;
            Some((period, row.get(&spec.measure)?.as_f64()?))
        })
        .collect();
    points.sort_by_key(|(period, _)| *period);
    let recent: Vec<f64> = points.iter().rev().take(spec.recent.max(1)).map(|(_, v)| *v).collect();
    let ahead = (!recent.is_empty()).then(|| recent.iter().sum::<f64>() / recent.len() as f64);
    let shown_from = base.range.map(|r| r.from);
    let mut frame_rows: Vec<Vec<Cell>> = points
        .iter()
        .filter(|(p, _)| shown_from.is_none_or(|from| *p >= from))
        .map(|(p, v)| vec![Cell::Text(p.to_string()), Cell::Number(*v)])
        .collect();
    if let (Some(ahead), Some(period)) = (ahead, forecast.index(metrics::spec::PERIOD)) {
        frame_rows
            .extend(forecast.rows.iter().filter_map(|row| Some(vec![row.get(period)?.clone(), Cell::Number(ahead)])));
    }
    let measure = view.measure(&spec.measure);
    let fields = vec![
        Field { name: metrics::spec::PERIOD.into(), label: "Period".into(), format: None, higher_is_better: None },
        Field {
            name: "capacity".into(),
            label: measure.map_or_else(|| spec.measure.clone(), |m| m.label.clone()),
            format: measure.map(|m| m.format),
            higher_is_better: None,
        },
    ];
    Ok((Frame { fields, rows: frame_rows }, answer))
}

/// The frame of a metrics answer's `columns` and `rows` (the answer's own, or its previous period's).
fn frame_of(columns: &[metrics::Column], rows: &serde_json::Value) -> Frame {
    let fields: Vec<Field> = columns
        .iter()
        .map(|c| Field {
            name: c.name.clone(),
            label: c.label.clone(),
            format: c.format,
            higher_is_better: c.higher_is_better,
        })
        .collect();
    let cell = |value: Option<&serde_json::Value>| match value {
        Some(serde_json::Value::Number(n)) => n.as_f64().map(Cell::Number).unwrap_or(Cell::Null),
        Some(serde_json::Value::String(s)) => Cell::Text(s.clone()),
        Some(serde_json::Value::Bool(b)) => Cell::Text(b.to_string()),
        _ => Cell::Null,
    };
    let rows = rows
        .as_array()
        .map(|rows| rows.iter().map(|row| fields.iter().map(|f| cell(row.get(&f.name))).collect()).collect())
        .unwrap_or_default();
    Frame { fields, rows }
}

/// The frame of a collected SQL answer: numbers as numbers (formatted as the panel says), every
/// other type as its text.
fn frame_of_batches(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::record_batch::RecordBatch],
    formats: &BTreeMap<String, Format>,
) -> Result<Frame, DashboardError> {
    let numeric = |t: &DataType| t.is_numeric();
    let fields = schema
        .fields()
        .iter()
        .map(|f| Field {
            name: f.name().clone(),
            label: readable(f.name()),
            format: numeric(f.data_type()).then(|| formats.get(f.name()).copied().unwrap_or_default()),
            higher_is_better: None,
        })
        .collect();
    let mut rows = Vec::new();
    let cast_error = |e: arrow::error::ArrowError| DashboardError::Query(QueryError::Format(e.to_string()));
    for batch in batches {
        let mut columns: Vec<Vec<Cell>> = Vec::new();
        for column in batch.columns() {
            let cells = if numeric(column.data_type()) {
                let values = arrow::compute::cast(column, &DataType::Float64).map_err(cast_error)?;
                let values = values.as_primitive::<Float64Type>();
                (0..values.len())
                    .map(|i| if values.is_null(i) { Cell::Null } else { Cell::Number(values.value(i)) })
                    .collect()
            } else {
                let values = arrow::compute::cast(column, &DataType::Utf8).map_err(cast_error)?;
                let values = values.as_string::<i32>();
                (0..values.len())
                    .map(|i| if values.is_null(i) { Cell::Null } else { Cell::Text(values.value(i).to_string()) })
                    .collect()
            };
            columns.push(cells);
        }
        for i in 0..batch.num_rows() {
            rows.push(columns.iter().map(|c| c[i].clone()).collect());
        }
    }
    Ok(Frame { fields, rows })
}

/// A column name as a label: `days_overdue` reads "Days overdue".
fn readable(name: &str) -> String {
    let spaced = name.replace('_', " ");
    let mut chars = spaced.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// What the panels of a dashboard read from: the engine, the metrics views and saved queries.
pub struct Sources<'a> {
    pub engine: &'a QueryEngine,
    pub views: &'a metrics::Catalog,
    pub queries_dir: &'a Path,
}

/// What went wrong with `panel` of `dashboard`, naming both.
fn panel_error(dashboard: &Dashboard, panel: &PanelSpec, message: String) -> DashboardError {
    DashboardError::Panel { path: dashboard.path.display().to_string(), panel: panel.id.clone(), message }
}

/// The metrics request of a panel whose data comes from `spec`, with `selection` applied.
fn metric_request(
    dashboard: &Dashboard,
    panel: &PanelSpec,
    spec: &spec::MetricSpec,
    view: &metrics::spec::View,
    selection: &Selection,
) -> Result<MetricsRequest, DashboardError> {
    let mut filters: Vec<(String, Vec<String>)> = spec.filters.clone().into_iter().collect();
    for (name, dimension) in applied_selects(dashboard, panel, view) {
        if let Some(values) = selection.selects.get(name).filter(|v| !v.is_empty()) {
            filters.push((dimension, values.clone()));
        }
    }
    let timed = view.time.is_some();
    let range = match spec.range {
        Some(preset) => preset_range(preset, today()),
        None => selection.range.as_ref().filter(|_| range_applies(dashboard, panel)).map(|(_, _, r)| *r),
    };
    let request = MetricsRequest {
        measures: spec.measures.clone(),
        dimensions: spec.dimensions.clone(),
        grain: spec.grain,
        range: range.filter(|_| timed),
        filters,
        compare: panel.compare && timed && range.is_some(),
        order: spec.order.as_ref().map(|o| match o.strip_prefix('-') {
            Some(field) => metrics::request::Order { field: field.to_string(), descending: true },
            None => metrics::request::Order { field: o.clone(), descending: false },
        }),
        limit: spec.limit.unwrap_or(metrics::request::DEFAULT_LIMIT),
    };
    request.check(view).map_err(|e| panel_error(dashboard, panel, e.to_string()))?;
    Ok(request)
}

/// A mark of a chart that was clicked: its x value and its series, as the SVG's `data-x` and
/// `data-series` give them.
#[derive(Debug, Clone, Default)]
pub struct Mark {
    pub x: Option<String>,
    pub series: Option<String>,
}

/// Rows a drill-down shows at most.
pub const DRILL_ROWS: u64 = 500;

/// The rows of the warehouse behind `panel`'s numbers with `selection` applied, narrowed to
/// `mark` (its period, or its dimension values) when one was clicked, as `caller`. Only panels
/// on a metrics view have rows behind them; SQL panels answer an error naming the panel.
pub async fn rows_behind(
    sources: &Sources<'_>,
    dashboard: &Dashboard,
    panel: &PanelSpec,
    selection: &Selection,
    mark: &Mark,
    caller: &Caller,
) -> Result<crate::query::engine::QueryOutput, DashboardError> {
    let problem = |message: String| panel_error(dashboard, panel, message);
    let Some(Source::Metric(spec)) = panel.source() else {
        return Err(problem("only panels on a metrics view have rows behind their numbers".into()));
    };
    let view = sources.views.view(&spec.view)?;
    let mut request = metric_request(dashboard, panel, spec, view, selection)?;
    // The fields a mark's x and series stand for: the encoding's, or what a chart takes without
    // one (the time buckets, else the first dimension).
    let x = panel
        .encoding
        .x
        .as_deref()
        .or(spec.grain.map(|_| metrics::spec::PERIOD))
        .or(spec.dimensions.first().map(String::as_str));
    let fields = [("x", x, mark.x.as_deref()), ("series", panel.encoding.series.as_deref(), mark.series.as_deref())];
    for (parameter, field, value) in fields {
        let Some(value) = value else { continue };
        let Some(field) = field else {
            return Err(DashboardError::Filter {
                filter: parameter.into(),
                message: format!("panel {} has no {parameter} field to narrow by", panel.id),
            });
        };
        if field == metrics::spec::PERIOD {
            let (Some(grain), Ok(start)) = (spec.grain, NaiveDate::parse_from_str(value, "%Y-%m-%d")) else {
                return Err(DashboardError::Filter {
                    filter: "x".into(),
                    message: format!("expected the first day of a period as YYYY-MM-DD, got {value:?}"),
                });
            };
            let period = Range { from: start, to: grain.after(start) };
            request.range = Some(match request.range {
                Some(r) => {
                    Range { from: r.from.max(period.from), to: r.to.min(period.to).max(r.from.max(period.from)) }
                }
                None => period,
            });
        } else if view.dimension(field).is_some() {
            request.filters.push((field.to_string(), vec![value.to_string()]));
        }
    }
    Ok(metrics::rows_behind(sources.engine, view, &request, caller, DRILL_ROWS).await?)
}

/// Fetches `panel`'s data with `selection` applied, as `caller`.
pub async fn panel_data(
    sources: &Sources<'_>,
    dashboard: &Dashboard,
    panel: &PanelSpec,
    selection: &Selection,
    caller: &Caller,
) -> Result<PanelData, DashboardError> {
    let problem = |message: String| panel_error(dashboard, panel, message);
    let range = selection.range.as_ref().filter(|_| range_applies(dashboard, panel)).map(|(_, _, r)| *r);
    match panel.source() {
        Some(Source::Metric(spec)) => {
            let view = sources.views.view(&spec.view)?;
            let timed = view.time.is_some();
            let base = metric_request(dashboard, panel, spec, view, selection)?;
            let answer = metrics::answer(sources.engine, view, &base, caller).await?;
            let mut data = PanelData {
                frame: frame_of(&answer.columns, &answer.rows),
                previous: answer.previous.as_ref().map(|p| frame_of(&answer.columns, &p.rows)),
                trend: None,
                forecast: None,
                capacity: None,
                sql: vec![answer.sql.clone()],
                tables: answer.tables.clone(),
                cache_hit: answer.cache_hit,
                reads: answer.reads.clone(),
                statements: answer.statements.clone(),
            };
            if let (Some(grain), true) = (spec.trend, timed) {
                let trend = MetricsRequest { grain: Some(grain), compare: false, ..base.clone() };
                let answer = metrics::answer(sources.engine, view, &trend, caller).await?;
                data.trend = Some(frame_of(&answer.columns, &answer.rows));
                data.sql.push(answer.sql);
                data.cache_hit &= answer.cache_hit;
                data.reads.add(&answer.reads);
                data.statements.extend(answer.statements);
            }
            if spec.capacity.is_some() && spec.forecast.is_none() {
                return Err(problem("capacity: is held against a forecast: give the panel `forecast` too".into()));
            }
            if let Some(horizon) = spec.forecast {
                if !matches!(panel.chart, chart::ChartKind::Line | chart::ChartKind::Area) || base.grain.is_none() {
                    return Err(problem("forecast: draws on a line or area chart of one measure with a grain".into()));
                }
                let today = chrono::Utc::now().with_timezone(&view.timezone).date_naive();
                let as_of = base.range.map_or(today, |r| r.to.min(today));
                let ask = crate::forecast::Request::new(horizon);
                let (forecast, reads) = metrics::forecast(sources.engine, view, &base, &ask, as_of, caller)
                    .await
                    .map_err(|e| problem(format!("forecast: {e}")))?;
                let forecast = forecast_frame(&forecast, &answer.columns);
                data.reads.add(&reads);
                if let Some(capacity) = &spec.capacity {
                    let capacity_view = sources.views.view(capacity.view.as_deref().unwrap_or(&spec.view))?;
                    let (frame, answer) =
                        capacity_frame(sources, capacity_view, capacity, &base, as_of, &forecast, caller)
                            .await
                            .map_err(|e| problem(format!("capacity: {e}")))?;
                    data.capacity = Some(frame);
                    data.tables.extend(answer.tables);
                    data.sql.push(answer.sql);
                    data.cache_hit &= answer.cache_hit;
                    data.reads.add(&answer.reads);
                    data.statements.extend(answer.statements);
                }
                data.forecast = Some(forecast);
            }
            Ok(data)
        }
        Some(Source::Sql(sql)) => run_sql(sources, sql, range, &panel.formats, caller).await,
        Some(Source::Saved(name)) => {
            let saved = crate::query::saved::load_all(sources.queries_dir)?;
            let query = saved
                .into_iter()
                .find(|q| q.name == name)
                .ok_or_else(|| problem(format!("query: no saved query {name:?}")))?;
            run_sql(sources, &query.sql, range, &panel.formats, caller).await
        }
        None => Err(problem("give exactly one of metric, sql or query".into())),
    }
}

/// How the period in progress on `day` stands against its forecast at `level` %, for `panel` (a
/// metric of one measure per grain) with `selection`'s filters, as `caller`: see
/// [`metrics::tracking`].
pub async fn panel_tracking(
    sources: &Sources<'_>,
    dashboard: &Dashboard,
    panel: &PanelSpec,
    selection: &Selection,
    level: f64,
    day: NaiveDate,
    caller: &Caller,
) -> Result<metrics::Tracking, DashboardError> {
    let problem = |message: String| panel_error(dashboard, panel, message);
    let Some(Source::Metric(spec)) = panel.source() else {
        return Err(problem("a forecast is of a metric: give the panel a `metric`".into()));
    };
    let view = sources.views.view(&spec.view)?;
    let request = metric_request(dashboard, panel, spec, view, selection)?;
    metrics::tracking(sources.engine, view, &request, level, day, caller)
        .await
        .map_err(|e| problem(format!("forecast: {e}")))
}

async fn run_sql(
    sources: &Sources<'_>,
    sql: &str,
    range: Option<Range>,
    formats: &BTreeMap<String, Format>,
    caller: &Caller,
) -> Result<PanelData, DashboardError> {
    let mut named = BTreeMap::new();
    let day =
        |d: NaiveDate| datafusion::scalar::ScalarValue::Date32(Some((d - NaiveDate::default()).num_days() as i32));
    // The date range binds `$from` and `$to` when the SQL names them; all time is the widest range.
    let (from, to) = match range {
        Some(r) => (r.from, r.to),
        None => (
            NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default(),
            NaiveDate::from_ymd_opt(2200, 1, 1).unwrap_or_default(),
        ),
    };
    if sql.contains("$from") {
        named.insert("from".to_string(), day(from));
    }
    if sql.contains("$to") {
        named.insert("to".to_string(), day(to));
    }
    let request = QueryRequest {
        sql: sql.to_string(),
        engine: sources.engine.default_engine(),
        params: if named.is_empty() { Params::None } else { Params::Named(named) },
        page: None,
        caller: caller.clone(),
    };
    let output = sources.engine.query(&request).await?;
    Ok(PanelData {
        frame: frame_of_batches(&output.result.schema, &output.result.batches, formats)?,
        previous: None,
        trend: None,
        forecast: None,
        capacity: None,
        sql: vec![sql.to_string()],
        tables: output
            .tables
            .iter()
            .map(|(t, v)| metrics::TableVersion { table: t.to_string(), version: *v })
            .collect(),
        cache_hit: output.cache_hit,
        reads: Reads::of(&output),
        statements: vec![Statement { sql: request.sql, params: request.params }],
    })
}

/// A chart of an ad-hoc query's answer (the SQL console's), the query run as `caller`.
pub async fn chart_of_sql(
    sources: &Sources<'_>,
    sql: &str,
    kind: chart::ChartKind,
    encoding: &chart::Encoding,
    theme: Theme,
    (width, height): (u32, u32),
    caller: &Caller,
) -> Result<String, DashboardError> {
    let data = run_sql(sources, sql, None, &BTreeMap::new(), caller).await?;
    Ok(chart::render_svg(&Chart {
        id: "console",
        kind,
        title: "Query result",
        description: "",
        encoding,
        data: &data.frame,
        previous: None,
        trend: None,
        forecast: None,
        capacity: None,
        theme,
        width,
        height,
        page: 0,
    })?)
}

/// Pixels per grid row and per grid column (of 12) at the width charts are drawn for export.
pub const ROW_PX: u32 = 50;
pub const EXPORT_WIDTH: u32 = 1200;

/// Draws `panel`'s data as SVG at `width`×`height` (the panel's grid size when not given).
pub fn render(
    dashboard: &Dashboard,
    panel: &PanelSpec,
    data: &PanelData,
    theme: Theme,
    size: Option<(u32, u32)>,
    page: usize,
) -> Result<String, DashboardError> {
    let (width, height) =
        size.unwrap_or((EXPORT_WIDTH * u32::from(panel.width()) / 12, ROW_PX * u32::from(panel.height())));
    let id = format!("{}-{}", dashboard.id, panel.id);
    Ok(chart::render_svg(&Chart {
        id: &id,
        kind: panel.chart,
        title: &panel.title,
        description: &panel.description,
        encoding: &panel.encoding,
        data: &data.frame,
        previous: data.previous.as_ref(),
        trend: data.trend.as_ref(),
        forecast: data.forecast.as_ref(),
        capacity: data.capacity.as_ref(),
        theme,
        width,
        height,
        page,
    })?)
}

/// The error state of a panel, drawn in its frame.
pub fn render_error(dashboard: &Dashboard, panel: &PanelSpec, message: &str, theme: Theme) -> String {
    let id = format!("{}-{}", dashboard.id, panel.id);
    let empty = Frame::default();
    chart::render_error(
        &Chart {
            id: &id,
            kind: panel.chart,
            title: &panel.title,
            description: &panel.description,
            encoding: &panel.encoding,
            data: &empty,
            previous: None,
            trend: None,
            forecast: None,
            capacity: None,
            theme,
            width: EXPORT_WIDTH * u32::from(panel.width()) / 12,
            height: ROW_PX * u32::from(panel.height()),
            page: 0,
        },
        message,
    )
}

/// Checks every panel of `dashboard` against the live catalog (`sokana check`): its view and
/// fields exist, its chart's encoding names columns of the right kind, its data (with the default
/// filters) draws, and every filter is used by some panel. Each problem names the file, the panel
/// and the field.
pub async fn check(sources: &Sources<'_>, dashboard: &Dashboard, caller: &Caller) -> Vec<String> {
    let path = dashboard.path.display();
    let mut problems = Vec::new();
    for filter in &dashboard.file.filters {
        let used = dashboard.file.panels.iter().any(|p| {
            let named = p.filters.as_ref().is_none_or(|names| names.contains(&filter.name));
            named
                && match (filter.kind, p.source()) {
                    (FilterKind::DateRange, Some(Source::Metric(m))) => {
                        sources.views.view(&m.view).is_ok_and(|v| v.time.is_some())
                    }
                    (FilterKind::DateRange, Some(Source::Sql(sql))) => sql.contains("$from") || sql.contains("$to"),
                    (FilterKind::DateRange, _) => false,
                    (FilterKind::Select, Some(Source::Metric(m))) => sources
                        .views
                        .view(&m.view)
                        .is_ok_and(|v| v.dimension(filter.dimension.as_deref().unwrap_or(&filter.name)).is_some()),
                    (FilterKind::Select, _) => false,
                }
        });
        if !used {
            problems.push(format!("{path}: filter {}: no panel uses it", filter.name));
        }
        if let Some(view) = &filter.view {
            match sources.views.view(view) {
                Ok(v) if v.dimension(filter.dimension.as_deref().unwrap_or(&filter.name)).is_none() => {
                    problems.push(format!(
                        "{path}: filter {}: view {view} has no dimension {:?}",
                        filter.name,
                        filter.dimension.as_deref().unwrap_or(&filter.name)
                    ))
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{path}: filter {}: view: {e}", filter.name)),
            }
        }
    }
    let selection = Selection::from_pairs(dashboard, [], today()).unwrap_or_default();
    for panel in &dashboard.file.panels {
        let at = |message: String| format!("{path}: panel {}: {message}", panel.id);
        if let Some(Source::Metric(spec)) = panel.source() {
            let view = match sources.views.view(&spec.view) {
                Ok(view) => view,
                Err(e) => {
                    problems.push(at(format!("metric.view: {e}")));
                    continue;
                }
            };
            let mut fields: Vec<(String, FieldKind)> = Vec::new();
            if spec.grain.is_some() {
                fields.push((metrics::spec::PERIOD.to_string(), FieldKind::Dimension));
            }
            for d in &spec.dimensions {
                if view.dimension(d).is_none() {
                    problems.push(at(format!("metric.dimensions: view {} has no dimension {d:?}", view.name)));
                }
                fields.push((d.clone(), FieldKind::Dimension));
            }
            for m in &spec.measures {
                if view.measure(m).is_none() {
                    problems.push(at(format!("metric.measures: view {} has no measure {m:?}", view.name)));
                }
                fields.push((m.clone(), FieldKind::Measure));
            }
            if let Err(e) = chart::check(panel.chart, &panel.encoding, &fields) {
                problems.push(at(format!("encoding.{e}")));
                continue;
            }
        }
        match panel_data(sources, dashboard, panel, &selection, caller).await {
            Ok(data) => {
                if let Err(e) = render(dashboard, panel, &data, Theme::Light, None, 0) {
                    problems.push(at(match e {
                        DashboardError::Chart(chart::ChartError::DoesNotFit(m)) => m,
                        DashboardError::Chart(e) => format!("encoding.{e}"),
                        other => other.to_string(),
                    }));
                }
            }
            Err(e) => problems.push(at(e.to_string())),
        }
    }
    problems
}

/// A panel's rows as CSV (RFC 4180, UTF-8, a header of column names, numbers unformatted). Text
/// that a spreadsheet would run as a formula (a leading `=`, `+`, `-` or `@`) is prefixed with `'`
/// unless `raw`, as OWASP recommends for CSV downloads.
pub fn csv(frame: &Frame, raw: bool) -> Result<Vec<u8>, DashboardError> {
    write_csv(frame, if raw { CsvStyle::Raw } else { CsvStyle::Standard })
}

/// How a CSV file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CsvStyle {
    /// RFC 4180, UTF-8, numbers unformatted, text as stored.
    Raw,
    /// As `raw`, with text that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`)
    /// prefixed with `'`.
    #[default]
    Standard,
    /// For Excel where the list separator is `,`: a UTF-8 byte-order mark (so Excel reads UTF-8),
    /// formulas guarded.
    Excel,
    /// For Excel where the decimal separator is `,` (most of Europe): a byte-order mark, `;`
    /// between fields and `,` in numbers, formulas guarded.
    ExcelSemicolon,
}

/// `frame` as a CSV file in `style`.
pub fn write_csv(frame: &Frame, style: CsvStyle) -> Result<Vec<u8>, DashboardError> {
    let failed = |e: csv::Error| DashboardError::Query(QueryError::Format(e.to_string()));
    let semicolon = style == CsvStyle::ExcelSemicolon;
    let mut out = Vec::new();
    if matches!(style, CsvStyle::Excel | CsvStyle::ExcelSemicolon) {
        out.extend_from_slice("\u{feff}".as_bytes());
    }
    let mut writer = csv::WriterBuilder::new().delimiter(if semicolon { b';' } else { b',' }).from_writer(out);
    writer.write_record(frame.fields.iter().map(|f| f.name.as_str())).map_err(failed)?;
    for row in &frame.rows {
        writer
            .write_record(row.iter().map(|cell| match cell {
                Cell::Null => String::new(),
                Cell::Number(n) if semicolon => n.to_string().replace('.', ","),
                Cell::Number(n) => n.to_string(),
                Cell::Text(t) if style != CsvStyle::Raw && t.starts_with(['=', '+', '-', '@']) => format!("'{t}"),
                Cell::Text(t) => t.clone(),
            }))
            .map_err(failed)?;
    }
    writer.into_inner().map_err(|e| DashboardError::Query(QueryError::Format(e.to_string())))
}

/// Every panel of a dashboard in one SVG, laid out on its grid at [`EXPORT_WIDTH`] (the picture a
/// PNG export or a report page shows). `panels` holds each panel's SVG, in the file's order.
pub fn compose(dashboard: &Dashboard, panels: &[String], theme: Theme) -> String {
    let column = EXPORT_WIDTH / 12;
    let gap = 8;
    let header = 56;
    let (mut x, mut y, mut row_height) = (0u32, header, 0u32);
    let mut body = String::new();
    for (panel, svg) in dashboard.file.panels.iter().zip(panels) {
        let width = u32::from(panel.width());
        if x + width > 12 {
            x = 0;
            y += row_height + gap;
            row_height = 0;
        }
        let height = ROW_PX * u32::from(panel.height());
        // Each panel's own SVG, placed by the outer one; its ids are already unique per panel.
        let placed = svg.replacen("<svg ", &format!("<svg x=\"{}\" y=\"{y}\" ", x * column), 1);
        body.push_str(&placed);
        body.push_str(&format!(
            "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{height}\" rx=\"6\" fill=\"none\" stroke=\"{}\"/>",
            x * column,
            width * column - gap,
            chart::theme::hex(theme.colours().grid)
        ));
        x += width;
        row_height = row_height.max(height);
    }
    let total = y + row_height;
    let colours = theme.colours();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total}\" viewBox=\"0 0 {w} {total}\" role=\"img\" aria-label=\"{title}\">\
         <rect width=\"100%\" height=\"100%\" fill=\"{bg}\"/>\
         <text x=\"12\" y=\"34\" font-family=\"sans-serif\" font-size=\"22\" font-weight=\"bold\" fill=\"{ink}\">{title}</text>{body}</svg>\n",
        w = EXPORT_WIDTH,
        title = chart::escape(&dashboard.file.title),
        bg = chart::theme::hex(colours.background),
        ink = chart::theme::hex(colours.text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::Field;

    #[test]
    fn csv_styles_differ_only_where_they_say() {
        let field = |name: &str| Field { name: name.into(), label: name.into(), format: None, higher_is_better: None };
        let frame = Frame {
            fields: vec![field("client"), field("amount")],
            rows: vec![
                vec![Cell::Text("=HYPERLINK(\"x\")".into()), Cell::Number(1234.5)],
                vec![Cell::Text("Zoë; \"Z\"".into()), Cell::Null],
            ],
        };
        let text = |style| String::from_utf8(write_csv(&frame, style).expect("csv")).expect("utf-8");
        assert_eq!(text(CsvStyle::Raw), "client,amount\n\"=HYPERLINK(\"\"x\"\")\",1234.5\n\"Zoë; \"\"Z\"\"\",\n");
        assert_eq!(text(CsvStyle::Standard), "client,amount\n\"'=HYPERLINK(\"\"x\"\")\",1234.5\n\"Zoë; \"\"Z\"\"\",\n");
        assert_eq!(text(CsvStyle::Excel), format!("\u{feff}{}", text(CsvStyle::Standard)));
        assert_eq!(
            text(CsvStyle::ExcelSemicolon),
            "\u{feff}client;amount\n\"'=HYPERLINK(\"\"x\"\")\";1234,5\n\"Zoë; \"\"Z\"\"\";\n"
        );
    }
}
