//! Report subscriptions as written: `[[reports]]` tables in a dashboard's file, beside the
//! dashboard they send, validated with it (and by the same JSON Schema); the `report` module makes
//! and sends them. A report names when it
//! is sent (cron and IANA time zone), the dashboard's filter values (relative presets such as
//! `last_week` resolve in the report's time zone on the day of each slot), the role it renders
//! as, who receives it and in which formats.
//!
//! ```toml
//! [[reports]]
//! name = "executive-weekly"
//! schedule = "0 8 * * MON"              # minute hour day-of-month month day-of-week
//! timezone = "America/New_York"         # the default
//! filters = { period = "last_week" }
//! role = "manager"
//! recipients = ["director@example.org", "role:manager"]
//! formats = ["pdf"]
//! csv = "raw"                         # or standard, excel, excel_semicolon
//! catch_up = "latest"                   # or "skip" (the default)
//! freshness = { pipelines = ["sokana_core"], wait_minutes = 120 }
//! ```
//!
//! With an `alert` table, the report is an alert: sent only while a panel's figure is above or
//! below a limit, or outside its forecast's interval (or while a table panel has rows), at most
//! once per cool-down, and "resolved" when it clears.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::{DashboardFile, FilterKind, role_named};
use crate::auth::Role;
use crate::pipeline::spec::{CatchUp, Schedule, parse_cron, parse_timezone};

/// A report as written in a dashboard file.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Unique across every dashboard: lower-case letters, digits, `-` and `_`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// When it is sent: a cron expression (`minute hour day-of-month month day-of-week`), read in
    /// `timezone`.
    pub schedule: String,
    /// The IANA time zone of the schedule and of relative filter values (America/New_York when
    /// not given).
    pub timezone: Option<String>,
    /// The dashboard's filter values: a preset or `FROM..TO` for its date range (`last_week`,
    /// `last_month`), a value or a list of values for a select.
    #[serde(default)]
    pub filters: BTreeMap<String, FilterValue>,
    /// The role the report renders as: nobody receives more than this role may see.
    pub role: String,
    /// Addresses, and `role:NAME` for every active user of a role (who receives at most their own
    /// role's view).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// `pdf`, `csv` or both.
    pub formats: Vec<ReportFormat>,
    /// How CSV files are written: `raw` (RFC 4180, UTF-8, numbers unformatted: the default),
    /// `standard` (text that looks like a formula guarded with `'`), `excel` (with a byte-order
    /// mark), `excel_semicolon` (for Excel where numbers are written `1,5`: `;` between fields).
    #[serde(default = "raw_csv")]
    pub csv: crate::dashboard::CsvStyle,
    /// Slots missed while the server was down: `skip` them, or send the `latest` once.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Wait for fresh data before sending a scheduled slot.
    pub freshness: Option<Freshness>,
    /// Makes the report an alert: sent only when its condition holds.
    pub alert: Option<AlertSpec>,
}

/// An alert's condition, on one panel of the dashboard (so on a metric or on SQL, masked and
/// audited as the page is): with `above` or `below`, the panel's first figure (a KPI's value; a
/// missing value counts as 0) compared with the limit; without, whether the panel has any row. It
/// is evaluated at each slot of the schedule; while it holds it is sent once, then again only
/// after `cool_down_minutes`; when it clears, a "resolved" message follows.
///
/// With `below_forecast` or `above_forecast` (a level in percent, e.g. 95), the panel is a metric
/// of one measure per grain, and the condition is the period in progress against its forecast:
/// the measure so far (through the day before the slot's) under the lower bound, or over the upper
/// bound, of the forecast made from the whole periods before it, scaled to the days counted for
/// sums and counts. `below_forecast = 95` on weekly leads, sent on Mondays, fires when last week's leads
/// fell under the 95 % interval; on monthly revenue, sent daily, when the month so far tracks
/// under its share of the lower bound.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    /// The id of a panel of this dashboard.
    pub panel: String,
    pub above: Option<f64>,
    pub below: Option<f64>,
    /// Fires under the lower bound of the forecast's interval at this level (percent).
    pub below_forecast: Option<f64>,
    /// Fires over the upper bound of the forecast's interval at this level (percent).
    pub above_forecast: Option<f64>,
    #[serde(default = "default_cool_down_minutes")]
    pub cool_down_minutes: u32,
}

impl AlertSpec {
    /// The interval level an alert on a forecast compares with.
    pub fn forecast_level(&self) -> Option<f64> {
        self.below_forecast.or(self.above_forecast)
    }
}

fn default_cool_down_minutes() -> u32 {
    24 * 60
}

/// A scheduled slot waits until each pipeline named has succeeded since the end of the report's
/// period (or since the slot's day began, without a date range), for at most `wait_minutes`;
/// then it is sent anyway, with a warning on the PDF and in the message naming what is stale.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    pub pipelines: Vec<String>,
    #[serde(default = "default_wait_minutes")]
    pub wait_minutes: u32,
}

fn default_wait_minutes() -> u32 {
    120
}

fn raw_csv() -> crate::dashboard::CsvStyle {
    crate::dashboard::CsvStyle::Raw
}

/// One value or several.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum FilterValue {
    One(String),
    Many(Vec<String>),
}

impl FilterValue {
    pub fn values(&self) -> &[String] {
        match self {
            FilterValue::One(v) => std::slice::from_ref(v),
            FilterValue::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    /// The dashboard's charts and tables in one PDF.
    Pdf,
    /// One CSV file per panel, numbers unformatted.
    Csv,
}

impl ReportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ReportFormat::Pdf => "pdf",
            ReportFormat::Csv => "csv",
        }
    }
}

/// Who receives a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Address(String),
    Role(Role),
}

/// As written in the file: the address, or `role:NAME`.
impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recipient::Address(address) => f.write_str(address),
            Recipient::Role(role) => write!(f, "role:{}", role.name()),
        }
    }
}

/// A report as loaded and checked.
#[derive(Debug, Clone)]
pub struct Report {
    pub spec: ReportSpec,
    pub dashboard: String,
    pub schedule: Schedule,
    pub role: Role,
    pub recipients: Vec<Recipient>,
}

impl Report {
    /// The filter values as URL pairs, for [`crate::dashboard::Selection::from_pairs`].
    pub fn filter_pairs(&self) -> Vec<(&str, &str)> {
        self.spec
            .filters
            .iter()
            .flat_map(|(name, value)| value.values().iter().map(move |v| (name.as_str(), v.as_str())))
            .collect()
    }
}

fn is_report_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `address` has the form `local@domain.tld` (what SMTP servers accept is theirs to say).
fn is_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !address.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

/// The reports of dashboard `dashboard` (its file `file`), each checked. An error is the index of
/// the report in the file and what is wrong, naming the report and the key.
pub fn check(dashboard: &str, file: &DashboardFile) -> Result<Vec<Report>, (usize, String)> {
    (0..file.reports.len())
        .map(|i| {
            check_one(dashboard, file, i).map_err(|e| (i, format!("reports[{i}] ({:?}): {e}", file.reports[i].name)))
        })
        .collect()
}

fn check_one(dashboard: &str, file: &DashboardFile, i: usize) -> Result<Report, String> {
    let spec = &file.reports[i];
    if !is_report_name(&spec.name) {
        return Err("key `name`: lower-case letters, digits, - and _, at most 64".into());
    }
    if file.reports[..i].iter().any(|r| r.name == spec.name) {
        return Err("key `name`: another report of this file has the same name".into());
    }
    let zone = spec.timezone.as_deref().unwrap_or(crate::metrics::spec::DEFAULT_TIMEZONE.name());
    let schedule = Schedule { cron: parse_cron(&spec.schedule)?, timezone: parse_timezone(zone)? };
    let role = role_named(&spec.role).map_err(|e| format!("key `role`: {e}"))?;
    for (name, value) in &spec.filters {
        let Some(filter) = file.filters.iter().find(|f| &f.name == name) else {
            let known: Vec<&str> = file.filters.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "key `filters.{name}`: the dashboard has no such filter (it has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        };
        if filter.kind == FilterKind::DateRange && value.values().len() != 1 {
            return Err(format!("key `filters.{name}`: a date range takes one value"));
        }
    }
    let recipients = spec
        .recipients
        .iter()
        .map(|r| match r.strip_prefix("role:") {
            Some(name) => role_named(name).map(Recipient::Role).map_err(|e| format!("key `recipients`: {e}")),
            None if is_address(r) => Ok(Recipient::Address(r.clone())),
            None => Err(format!("key `recipients`: {r:?} is neither an address (name@example.org) nor role:NAME")),
        })
        .collect::<Result<_, _>>()?;
    if spec.formats.is_empty() && spec.alert.is_none() {
        return Err("key `formats`: give pdf, csv or both".into());
    }
    if let Some(alert) = &spec.alert {
        if !file.panels.iter().any(|p| p.id == alert.panel) {
            let known: Vec<&str> = file.panels.iter().map(|p| p.id.as_str()).collect();
            return Err(format!(
                "key `alert.panel`: the dashboard has no panel {:?} (it has: {})",
                alert.panel,
                known.join(", ")
            ));
        }
        let limits = [alert.above, alert.below, alert.below_forecast, alert.above_forecast];
        if limits.iter().flatten().count() > 1 {
            return Err(
                "key `alert`: give one of `above`, `below`, `below_forecast` and `above_forecast`, or none".into()
            );
        }
        if limits.iter().flatten().any(|v| !v.is_finite()) {
            return Err("key `alert`: the limit must be a finite number".into());
        }
        if let Some(level) = alert.forecast_level() {
            if !(50.0..100.0).contains(&level) {
                return Err(format!(
                    "key `alert`: a forecast's level is a percentage from 50 to below 100, e.g. 95; got {level}"
                ));
            }
            let panel = file.panels.iter().find(|p| p.id == alert.panel);
            let metric = panel.and_then(|p| p.metric.as_ref());
            if !metric.is_some_and(|m| m.grain.is_some() && m.measures.len() == 1 && m.dimensions.is_empty()) {
                return Err(format!(
                    "key `alert.panel`: an alert on a forecast needs a metric panel of one measure per grain, \
                     without dimensions; {:?} is not one",
                    alert.panel
                ));
            }
        }
    }
    if let Some(freshness) = &spec.freshness {
        if freshness.pipelines.is_empty() {
            return Err("key `freshness.pipelines`: name the pipelines whose runs the report waits for".into());
        }
        if freshness.wait_minutes > 24 * 60 {
            return Err("key `freshness.wait_minutes`: at most 1440 (a day)".into());
        }
    }
    Ok(Report { spec: spec.clone(), dashboard: dashboard.to_string(), schedule, role, recipients })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::Dashboard;

    const DASHBOARD: &str = r#"title = "T"
[[filters]]
name = "period"
kind = "date_range"
[[panels]]
id = "p"
title = "P"
chart = "kpi"
sql = "SELECT 1 AS n"
"#;

    fn parse(report: &str) -> Result<Dashboard, String> {
        let text = format!("{DASHBOARD}\n[[reports]]\n{report}");
        Dashboard::parse(std::path::Path::new("dashboards/t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_bad_key_of_a_report_is_named_with_the_file_and_the_report() {
        let good = r#"name = "weekly"
schedule = "0 8 * * MON"
role = "manager"
formats = ["pdf"]
filters = { period = "last_week" }
recipients = ["a@example.org", "role:billing"]"#;
        let parsed = parse(good).expect("a good report");
        assert_eq!(
            parsed.reports[0].recipients,
            [Recipient::Address("a@example.org".into()), Recipient::Role(Role::Billing)]
        );
        assert_eq!(parsed.reports[0].schedule.timezone, chrono_tz::America::New_York);
        for (change, expected) in [
            (("0 8 * * MON", "0 25 * * *"), "key `schedule`: invalid cron expression"),
            (
                ("role = \"manager\"", "role = \"manager\"\ntimezone = \"Mars/Olympus\""),
                "unknown IANA time zone \"Mars/Olympus\"",
            ),
            (("\"manager\"", "\"boss\""), "key `role`: \"boss\" is not a role"),
            (("period = ", "quarter = "), "key `filters.quarter`: the dashboard has no such filter (it has: period)"),
            (("a@example.org", "a@example"), "\"a@example\" is neither an address"),
            (("role:billing", "role:nobody"), "key `recipients`: \"nobody\" is not a role"),
            (("[\"pdf\"]", "[]"), "key `formats`"),
            (("\"weekly\"", "\"Weekly Report\""), "key `name`"),
            (
                ("\"manager\"", "\"manager\"\nalert = { panel = \"p\", below_forecast = 95 }"),
                "key `alert.panel`: an alert on a forecast needs a metric panel of one measure per grain",
            ),
            (
                ("\"manager\"", "\"manager\"\nalert = { panel = \"p\", below_forecast = 120 }"),
                "a forecast's level is a percentage from 50 to below 100",
            ),
            (
                ("\"manager\"", "\"manager\"\nalert = { panel = \"p\", below = 1, below_forecast = 95 }"),
                "give one of `above`, `below`, `below_forecast` and `above_forecast`",
            ),
        ] {
            let text = good.replacen(change.0, change.1, 1);
            let err = parse(&text).expect_err(&text);
            assert!(err.contains("dashboards/t.toml:11: reports[0]"), "{err}");
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
    }

    #[test]
    fn a_report_name_is_taken_once_across_dashboards() {
        let dir = tempfile::tempdir().expect("dir");
        let report =
            "[[reports]]\nname = \"weekly\"\nschedule = \"0 8 * * MON\"\nrole = \"manager\"\nformats = [\"pdf\"]\n";
        for file in ["a.toml", "b.toml"] {
            std::fs::write(dir.path().join(file), format!("{DASHBOARD}\n{report}")).expect("write");
        }
        let catalog = crate::dashboard::Catalog::load(dir.path());
        let found: Vec<&str> =
            catalog.dashboards().flat_map(|d| d.reports.iter().map(|r| r.dashboard.as_str())).collect();
        assert_eq!(found, ["a"]);
        let problem = catalog.problems().iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n");
        assert!(
            problem.contains("b.toml") && problem.contains("\"weekly\" is taken by") && problem.contains("a.toml"),
            "{problem}"
        );
    }

    #[test]
    fn addresses_are_told_from_what_is_not_one() {
        assert!(is_address("director@example.org"));
        assert!(is_address("a.b+reports@mail.example.co.uk"));
        for bad in ["", "director", "@example.org", "director@example", "a b@example.org", "a@b.org,c@d.org"] {
            assert!(!is_address(bad), "{bad:?}");
        }
    }
}
