//! Dashboard files (`dashboards/*.toml`): a title, the filters a viewer sets, and panels laid out
//! on a 12-column grid, each taking its data from a metrics view (the usual case) or from SQL and
//! drawing it as one chart. Parsed and checked at load time; every error names the file and the
//! key. The JSON Schema editors validate these files with is generated from [`DashboardFile`].
//!
//! ```toml
//! title = "Executive overview"
//! roles = ["admin", "manager"]          # optional: who may open it (every role when absent)
//!
//! [[filters]]
//! name = "period"
//! kind = "date_range"
//! default = "last_90_days"
//!
//! [[panels]]
//! id = "collected"
//! title = "Revenue collected"
//! chart = "kpi"
//! width = 3
//! metric = { view = "payments", measures = ["collected"], trend = "month" }
//! encoding = { y = ["collected"] }
//! compare = true
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::chart::{ChartKind, Encoding, Format};
use crate::metrics::request::Grain;
use crate::warehouse::is_identifier;

pub use crate::config::FileError as SpecError;

/// A dashboard file as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DashboardFile {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The roles that may open it; every role when absent.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    pub panels: Vec<PanelSpec>,
    /// Reports that send this dashboard on a schedule.
    #[serde(default)]
    pub reports: Vec<super::reports::ReportSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// A range of days with presets; applies to every metrics panel whose view has time.
    DateRange,
    /// Values of one dimension (several may be chosen); applies to every metrics panel whose view
    /// has that dimension.
    Select,
}

/// A range of days relative to today (in the dashboard's time zone, America/New_York).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    #[serde(rename = "last_30_days")]
    Last30Days,
    #[serde(rename = "last_90_days")]
    Last90Days,
    MonthToDate,
    QuarterToDate,
    YearToDate,
    /// Monday to Sunday of the week before this one.
    LastWeek,
    LastMonth,
    LastQuarter,
    LastYear,
    #[serde(rename = "last_12_months")]
    Last12Months,
    /// Today and the 29 days after (installments coming due).
    #[serde(rename = "next_30_days")]
    Next30Days,
    /// This month and the five after (due dates booked ahead).
    #[serde(rename = "next_6_months")]
    Next6Months,
    /// Everything, from the first day there is data.
    AllTime,
}

impl Preset {
    pub const ALL: [Preset; 13] = [
        Preset::Last30Days,
        Preset::Last90Days,
        Preset::MonthToDate,
        Preset::QuarterToDate,
        Preset::YearToDate,
        Preset::LastWeek,
        Preset::LastMonth,
        Preset::LastQuarter,
        Preset::LastYear,
        Preset::Last12Months,
        Preset::Next30Days,
        Preset::Next6Months,
        Preset::AllTime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Last30Days => "last_30_days",
            Preset::Last90Days => "last_90_days",
            Preset::MonthToDate => "month_to_date",
            Preset::QuarterToDate => "quarter_to_date",
            Preset::YearToDate => "year_to_date",
            Preset::LastWeek => "last_week",
            Preset::LastMonth => "last_month",
            Preset::LastQuarter => "last_quarter",
            Preset::LastYear => "last_year",
            Preset::Last12Months => "last_12_months",
            Preset::Next30Days => "next_30_days",
            Preset::Next6Months => "next_6_months",
            Preset::AllTime => "all_time",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Preset::Last30Days => "Last 30 days",
            Preset::Last90Days => "Last 90 days",
            Preset::MonthToDate => "Month to date",
            Preset::QuarterToDate => "Quarter to date",
            Preset::YearToDate => "Year to date",
            Preset::LastWeek => "Last week",
            Preset::LastMonth => "Last month",
            Preset::LastQuarter => "Last quarter",
            Preset::LastYear => "Last year",
            Preset::Last12Months => "Last 12 months",
            Preset::Next30Days => "Next 30 days",
            Preset::Next6Months => "Next 6 months",
            Preset::AllTime => "All time",
        }
    }

    pub fn parse(text: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == text)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSpec {
    /// The name in the URL (`?period=last_month`, `?method=card&method=cash`).
    pub name: String,
    pub kind: FilterKind,
    pub label: Option<String>,
    /// Date ranges: the preset shown first (last 90 days when not given).
    pub default: Option<Preset>,
    /// Selects: the metrics view whose dimension gives the values to choose from.
    pub view: Option<String>,
    /// Selects: the dimension filtered (the filter's name when not given).
    pub dimension: Option<String>,
}

/// Where a metrics panel's data comes from.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    pub view: String,
    pub measures: Vec<String>,
    #[serde(default)]
    pub dimensions: Vec<String>,
    /// Time buckets along x (line, area, bar, heatmap over time).
    pub grain: Option<Grain>,
    /// KPI tiles: the grain of the sparkline drawn under the number.
    pub trend: Option<Grain>,
    /// Line and area charts of one measure per grain: periods forecast past the last complete one,
    /// drawn as a dashed line in its 80 % and 95 % bands (the model chosen by backtest).
    pub forecast: Option<usize>,
    /// With `forecast`: what the demand forecast is held against (the hours doulas marked
    /// available, say), drawn as a step line. Periods ahead hold its mean over its last `recent`
    /// whole periods; those where the forecast's 95 % upper bound is over it are flagged.
    pub capacity: Option<CapacitySpec>,
    /// A field of the answer to order by, `-` first for descending.
    pub order: Option<String>,
    pub limit: Option<u64>,
    /// A fixed range for this panel, whatever the dashboard's date filter says (`next_30_days`).
    pub range: Option<Preset>,
    /// Fixed filters of this panel: dimension → values.
    #[serde(default)]
    pub filters: std::collections::BTreeMap<String, Vec<String>>,
}

/// A capacity a forecast panel's demand is held against: a measure of a metrics view, per the
/// panel's grain.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    /// The metrics view (the panel's own when not given).
    pub view: Option<String>,
    pub measure: String,
    /// Whole periods whose mean is the capacity ahead (8 when not given).
    #[serde(default = "default_recent")]
    pub recent: usize,
}

fn default_recent() -> usize {
    8
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PanelSpec {
    /// Unique in the dashboard: the panel's name in URLs and exports.
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub chart: ChartKind,
    /// Columns of the 12-column grid it spans (3 for KPI tiles, 6 otherwise, when not given).
    pub width: Option<u8>,
    /// Rows of 50 px it spans (3 for KPI tiles, 6 otherwise, when not given).
    pub height: Option<u8>,
    /// Data from a metrics view.
    pub metric: Option<MetricSpec>,
    /// Data from SQL: inline, or `query` naming a saved query (`queries/NAME.sql`). The date range
    /// filter binds `$from` and `$to` (dates, `to` excluded) when the SQL names them.
    pub sql: Option<String>,
    pub query: Option<String>,
    /// SQL panels: the format of numeric columns (`usd`, `count`, …; `number` when not given).
    #[serde(default)]
    pub formats: std::collections::BTreeMap<String, Format>,
    #[serde(default)]
    pub encoding: Encoding,
    /// KPI tiles and charts over a range: also fetch the previous period.
    #[serde(default)]
    pub compare: bool,
    /// The dashboard filters that apply (every filter that fits the panel's view when not given).
    pub filters: Option<Vec<String>>,
}

/// A dashboard as loaded and checked.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub id: String,
    pub file: DashboardFile,
    pub roles: Vec<Role>,
    pub reports: Vec<super::reports::Report>,
    pub path: PathBuf,
}

/// Where a panel's data comes from, resolved.
#[derive(Debug, Clone)]
pub enum Source<'a> {
    Metric(&'a MetricSpec),
    Sql(&'a str),
    Saved(&'a str),
}

impl PanelSpec {
    pub fn source(&self) -> Option<Source<'_>> {
        match (&self.metric, &self.sql, &self.query) {
            (Some(m), None, None) => Some(Source::Metric(m)),
            (None, Some(sql), None) => Some(Source::Sql(sql)),
            (None, None, Some(name)) => Some(Source::Saved(name)),
            _ => None,
        }
    }

    pub fn width(&self) -> u8 {
        self.width.unwrap_or(if self.chart == ChartKind::Kpi { 3 } else { 6 })
    }

    pub fn height(&self) -> u8 {
        self.height.unwrap_or(if self.chart == ChartKind::Kpi { 3 } else { 6 })
    }
}

impl Dashboard {
    pub fn parse(path: &Path, text: &str) -> Result<Dashboard, SpecError> {
        let err = |line: Option<usize>, message: String| SpecError { path: path.to_path_buf(), line, message };
        let file: DashboardFile = crate::config::parse_toml(path, text)?;
        let id = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if !is_identifier(&id) {
            return Err(err(
                None,
                format!("dashboard id {id:?} (the file name) must be lower-case letters, digits and _"),
            ));
        }
        let roles = file
            .roles
            .iter()
            .map(|name| role_named(name).map_err(|e| err(None, format!("roles: {e}"))))
            .collect::<Result<Vec<Role>, _>>()?;
        let mut names = std::collections::BTreeSet::new();
        for f in &file.filters {
            if !is_identifier(&f.name) || !names.insert(f.name.as_str()) || RESERVED.contains(&f.name.as_str()) {
                return Err(err(
                    None,
                    format!(
                        "filter {:?}: a unique name of lower-case letters, digits and _ (not {})",
                        f.name,
                        RESERVED.join(", ")
                    ),
                ));
            }
            if f.kind == FilterKind::Select && f.view.is_none() {
                return Err(err(
                    None,
                    format!("filter {}: a select names the metrics view its values come from (view)", f.name),
                ));
            }
        }
        if file.panels.is_empty() {
            return Err(err(None, "panels: a dashboard needs at least one panel".into()));
        }
        let mut ids = std::collections::BTreeSet::new();
        for p in &file.panels {
            if !is_identifier(&p.id) || !ids.insert(p.id.as_str()) {
                return Err(err(None, format!("panel {:?}: a unique id of lower-case letters, digits and _", p.id)));
            }
            if p.source().is_none() {
                return Err(err(None, format!("panel {}: give exactly one of metric, sql or query", p.id)));
            }
            if !(1..=12).contains(&p.width()) {
                return Err(err(None, format!("panel {}: width is a number of grid columns from 1 to 12", p.id)));
            }
            if !(1..=16).contains(&p.height()) {
                return Err(err(None, format!("panel {}: height is a number of 50 px rows from 1 to 16", p.id)));
            }
            for name in p.filters.iter().flatten() {
                if !names.contains(name.as_str()) {
                    return Err(err(None, format!("panel {}: filters: the dashboard has no filter {name:?}", p.id)));
                }
            }
        }
        let reports = super::reports::check(&id, &file).map_err(|(index, message)| {
            // The line of the report's own `[[reports]]` header, when it is written as one.
            let line =
                text.lines().enumerate().filter(|(_, l)| l.trim() == "[[reports]]").nth(index).map(|(n, _)| n + 1);
            err(line, message)
        })?;
        Ok(Dashboard { id, roles, file, reports, path: path.to_path_buf() })
    }

    /// Whether `role` may open it.
    pub fn allows(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role) || role == Role::Admin
    }

    pub fn panel(&self, id: &str) -> Option<&PanelSpec> {
        self.file.panels.iter().find(|p| p.id == id)
    }
}

/// A role by name; the error lists the roles there are.
pub(super) fn role_named(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| format!("{name:?} is not a role (admin, manager, billing, analyst, viewer)"))
}

/// Names a filter may not take: the page's own parameters.
const RESERVED: [&str; 5] = ["from", "to", "theme", "page", "format"];

/// Every dashboard in `dir` (`*.toml`) and the files that did not load: one bad file does not
/// take the others down.
pub fn load_all(dir: &Path) -> (Vec<Dashboard>, Vec<SpecError>) {
    crate::config::load_each(dir, Dashboard::parse)
}

/// The JSON Schema of dashboard files, as committed in `schemas/dashboard.json`.
pub fn json_schema() -> String {
    crate::config::schema_text::<DashboardFile>()
}
