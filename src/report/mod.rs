//! Reports: a dashboard rendered for a subscription ([`crate::dashboard::reports`]) as a PDF ([`pdf`]) and as CSV
//! files, as the report's role, for the period its filters name on the day of its slot. Every
//! panel's data comes through [`crate::dashboard`], so the numbers, the masking, the cache, the
//! query log and the audit trail are the web page's; the charts are the web page's SVGs. A panel
//! that fails fails the report (a report is never sent with a hole in it). [`email`] writes and
//! sends its messages, [`deliver`] sends a slot once through the delivery ledger, and [`job`] puts
//! reports on the pipelines' scheduler.

pub mod alert;
pub mod deliver;
pub mod email;
pub mod job;
pub mod pdf;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use crate::chart::{ChartKind, Theme};
pub use crate::dashboard::reports::{Recipient, Report, ReportFormat, ReportSpec};
use crate::dashboard::{self, Dashboard, DashboardError, FilterKind, PanelData, Selection, Sources};
use crate::pipeline::runlog::{RunLog, RunLogError, Status};
use crate::query::engine::Caller;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no report named {name:?}; reports: {known}")]
    Unknown { name: String, known: String },
    #[error("report {report}: {source}")]
    Dashboard {
        report: String,
        #[source]
        source: Box<DashboardError>,
    },
    #[error("report {report}: panel {panel} failed, so the report was not made: {message}")]
    Panel { report: String, panel: String, message: String },
    #[error("report {report}: {source}")]
    Pdf {
        report: String,
        #[source]
        source: pdf::PdfError,
    },
}

/// Every report of every dashboard in `dashboards`.
pub fn all(dashboards: &dashboard::Catalog) -> impl Iterator<Item = (&Dashboard, &Report)> {
    dashboards.dashboards().flat_map(|d| d.reports.iter().map(move |r| (d.as_ref(), r)))
}

/// The report named `name` and its dashboard.
pub fn find<'a>(dashboards: &'a dashboard::Catalog, name: &str) -> Result<(&'a Dashboard, &'a Report), ReportError> {
    all(dashboards).find(|(_, r)| r.spec.name == name).ok_or_else(|| ReportError::Unknown {
        name: name.to_string(),
        known: all(dashboards).map(|(_, r)| r.spec.name.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// A report made for one slot.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub pdf: Option<Vec<u8>>,
    /// `(file name, bytes)`: one file per table panel (every panel when there is no table).
    pub csv: Vec<(String, Vec<u8>)>,
    /// The period covered, in words.
    pub period: String,
    /// The figures of the KPI tiles, in full.
    pub headlines: Vec<pdf::Headline>,
    /// When the oldest table read last changed, in the report's time zone.
    pub data_as_of: String,
    /// What is stale, by the report's freshness rule.
    pub warning: Option<String>,
}

/// When a report made on `today` needs its data loaded by: the end of its period (its date range's
/// last day is over at midnight in the report's zone), or the start of `today` without a range.
pub fn data_due(dashboard: &Dashboard, report: &Report, today: NaiveDate) -> DateTime<Utc> {
    let zone = report.schedule.timezone;
    let end = Selection::from_pairs(dashboard, report.filter_pairs(), today)
        .ok()
        .and_then(|s| s.range.map(|(_, _, range)| range.to))
        .map_or(today, |to| to.min(today));
    let midnight = end.and_hms_opt(0, 0, 0).unwrap_or_default();
    // A midnight that a DST change skips: the first instant after it.
    zone.from_local_datetime(&midnight)
        .earliest()
        .or_else(|| zone.from_local_datetime(&(midnight + chrono::Duration::hours(1))).earliest())
        .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
}

/// What is stale for a report whose data is `due` by then, by its `freshness` rule: the pipelines
/// named that have not succeeded since (None when all have, or without a rule).
pub fn freshness_warning(log: &RunLog, report: &Report, due: DateTime<Utc>) -> Result<Option<String>, RunLogError> {
    let Some(rule) = &report.spec.freshness else { return Ok(None) };
    let zone = report.schedule.timezone;
    let mut stale = Vec::new();
    for pipeline in &rule.pipelines {
        let runs = log.runs(Some(pipeline), 100)?;
        let succeeded = runs
            .iter()
            .filter(|r| r.status == Status::Succeeded)
            .filter_map(|r| DateTime::parse_from_rfc3339(r.finished_at.as_deref()?).ok())
            .map(|t| t.with_timezone(&Utc))
            .max();
        match succeeded {
            Some(at) if at >= due => {}
            Some(at) => stale.push(format!("{pipeline} last succeeded {}", at.with_timezone(&zone).format(STAMP))),
            None => stale.push(format!("{pipeline} has not succeeded yet")),
        }
    }
    Ok((!stale.is_empty()).then(|| {
        format!(
            "The data may be incomplete: it was due by {}, and {}.",
            due.with_timezone(&zone).format(STAMP),
            stale.join("; ")
        )
    }))
}

/// `report` made as `caller` (whose role it must render as) for the day `today` of its time
/// zone, stamped `generated`, with `warning` (stale data) shown at its top.
pub async fn render(
    sources: &Sources<'_>,
    dashboard: &Dashboard,
    report: &Report,
    today: NaiveDate,
    generated: DateTime<Utc>,
    caller: &Caller,
    warning: Option<String>,
) -> Result<Rendered, ReportError> {
    let name = &report.spec.name;
    let failed = |source: DashboardError| ReportError::Dashboard { report: name.clone(), source: Box::new(source) };
    let selection = Selection::from_pairs(dashboard, report.filter_pairs(), today).map_err(failed)?;
    let started = std::time::Instant::now();
    dashboard::check_values(sources.engine, sources.views, dashboard, &selection, caller).await.map_err(failed)?;
    // Every panel at once, as the web page asks for them.
    let selection = &selection;
    let answers = futures::future::try_join_all(dashboard.file.panels.iter().map(|panel| async move {
        match dashboard::panel_data(sources, dashboard, panel, selection, caller).await {
            Ok(data) => Ok((panel, data)),
            Err(e) => Err(ReportError::Panel { report: name.clone(), panel: panel.id.clone(), message: e.to_string() }),
        }
    }))
    .await?;
    let data_ms = started.elapsed().as_millis();
    let zone = report.schedule.timezone;
    let period = describe_period(dashboard, selection);
    let headlines: Vec<pdf::Headline> = answers.iter().filter_map(|(panel, data)| headline(panel, data)).collect();
    let data_as_of = data_as_of(sources, &answers, zone).await;
    let csv = if report.spec.formats.contains(&ReportFormat::Csv) {
        let tables = answers.iter().any(|(p, _)| p.chart == ChartKind::Table);
        answers
            .iter()
            .filter(|(p, _)| !tables || p.chart == ChartKind::Table)
            .map(|(panel, data)| Ok((format!("{}.csv", panel.id), dashboard::write_csv(&data.frame, report.spec.csv)?)))
            .collect::<Result<_, DashboardError>>()
            .map_err(failed)?
    } else {
        Vec::new()
    };
    let pdf = if report.spec.formats.contains(&ReportFormat::Pdf) {
        let mut charts = Vec::new();
        let mut rows: Vec<Vec<pdf::ChartRef>> = Vec::new();
        let mut tables = Vec::new();
        let mut used = 0u8;
        for (panel, data) in &answers {
            if panel.chart == ChartKind::Table {
                tables.push(table(panel, data));
                continue;
            }
            let width = panel.width();
            let size = (PRINT_WIDTH * u32::from(width) / 12, dashboard::ROW_PX * u32::from(panel.height()));
            let svg = dashboard::render(dashboard, panel, data, Theme::Light, Some(size), 0).map_err(failed)?;
            if rows.is_empty() || used + width > 12 {
                rows.push(Vec::new());
                used = 0;
            }
            used += width;
            let alt = if panel.description.is_empty() { panel.title.clone() } else { panel.description.clone() };
            if let Some(row) = rows.last_mut() {
                row.push(pdf::ChartRef { file: format!("/charts/{}.svg", charts.len()), width, alt });
            }
            charts.push(svg);
        }
        let content = pdf::Content {
            title: dashboard.file.title.clone(),
            description: report.spec.description.clone(),
            report: name.clone(),
            period: period.clone(),
            filters: describe_filters(dashboard, selection),
            data_as_of: data_as_of.clone(),
            generated: generated.with_timezone(&zone).format(STAMP).to_string(),
            warning: warning.clone().unwrap_or_default(),
            headlines: headlines.clone(),
            chart_rows: rows,
            tables,
        };
        Some(
            pdf::render(&content, &charts, generated)
                .map_err(|source| ReportError::Pdf { report: name.clone(), source })?,
        )
    } else {
        None
    };
    tracing::debug!(report = %name, data_ms, layout_ms = (started.elapsed().as_millis() - data_ms), "report made");
    Ok(Rendered { pdf, csv, period, headlines, data_as_of, warning })
}

/// How a report prints a time: `Dec 4, 2026 07:41 EST`.
const STAMP: &str = "%b %-d, %Y %H:%M %Z";

/// The width, in the charts' pixels, of a page's text column: a chart's text then prints at
/// about the size of the report's own (the web page's 1,200 px would shrink it to 5 pt).
const PRINT_WIDTH: u32 = 760;

/// A KPI tile's figure in full, with its previous period's when the tile compares.
fn headline(panel: &dashboard::PanelSpec, data: &PanelData) -> Option<pdf::Headline> {
    if panel.chart != ChartKind::Kpi {
        return None;
    }
    let field = data.frame.fields.iter().position(|f| f.format.is_some())?;
    let format = data.frame.fields[field].format?;
    let value_of =
        |frame: &crate::chart::Frame| frame.rows.first().and_then(|row| row.get(field)).and_then(|c| c.number());
    let value = value_of(&data.frame);
    let previous = data.previous.as_ref().map(value_of);
    let shown = |v: Option<f64>| v.map_or_else(|| "none".to_string(), |v| format.full(v));
    let change = match (value, previous.flatten()) {
        (Some(now), Some(before)) if before != 0.0 => format!("{:+.1}%", (now - before) / before.abs() * 100.0),
        _ => String::new(),
    };
    Some(pdf::Headline {
        title: panel.title.clone(),
        value: shown(value),
        previous: previous.map(shown).unwrap_or_default(),
        change,
    })
}

/// A table panel's rows as the PDF prints them: every row, numbers formatted as on the page.
fn table(panel: &dashboard::PanelSpec, data: &PanelData) -> pdf::Table {
    let fields = &data.frame.fields;
    pdf::Table {
        title: panel.title.clone(),
        description: panel.description.clone(),
        header: fields.iter().map(|f| f.label.clone()).collect(),
        numeric: fields.iter().map(|f| f.format.is_some()).collect(),
        rows: data
            .frame
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(fields)
                    .map(|(cell, field)| match (field.format, cell.number()) {
                        (Some(format), Some(n)) => format.full(n),
                        _ => cell.label(),
                    })
                    .collect()
            })
            .collect(),
    }
}

/// The date range in words: `Last week: Nov 23 – Nov 29, 2026` (`to` is excluded, so the last day shown is the one before).
fn describe_period(dashboard: &Dashboard, selection: &Selection) -> String {
    let label = selection.preset.map(|p| p.label().to_string());
    match &selection.range {
        Some((_, _, range)) => {
            let last = range.to.pred_opt().unwrap_or(range.to);
            let days = format!("{} – {}", range.from.format("%b %-d, %Y"), last.format("%b %-d, %Y"));
            match label {
                Some(label) => format!("{label}: {days}"),
                None => days,
            }
        }
        None if dashboard.file.filters.iter().any(|f| f.kind == FilterKind::DateRange) => {
            label.unwrap_or_else(|| "All time".into())
        }
        None => "As of now".into(),
    }
}

fn describe_filters(dashboard: &Dashboard, selection: &Selection) -> Vec<String> {
    selection
        .selects
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(name, values)| {
            let label = dashboard.file.filters.iter().find(|f| &f.name == name).and_then(|f| f.label.clone());
            format!("{}: {}", label.unwrap_or_else(|| name.clone()), values.join(", "))
        })
        .collect()
}

/// When the oldest of the tables read last changed: every figure is at least this fresh.
async fn data_as_of(
    sources: &Sources<'_>,
    answers: &[(&dashboard::PanelSpec, PanelData)],
    zone: chrono_tz::Tz,
) -> String {
    let mut names: Vec<&str> = answers.iter().flat_map(|(_, d)| d.tables.iter().map(|t| t.table.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    let mut oldest: Option<i64> = None;
    for name in names {
        let Ok(table) = name.parse() else { continue };
        if let Ok(Some(delta)) = sources.engine.catalog().delta(&table).await
            && let Some((_, Some(changed))) = crate::query::catalog::table_stats(&delta)
        {
            oldest = Some(oldest.map_or(changed, |o| o.min(changed)));
        }
    }
    match oldest.and_then(DateTime::from_timestamp_millis) {
        Some(at) => at.with_timezone(&zone).format(STAMP).to_string(),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekly(freshness: &str) -> (Dashboard, Report) {
        let text = format!(
            "title = \"T\"\n[[filters]]\nname = \"period\"\nkind = \"date_range\"\n[[panels]]\nid = \"p\"\n\
             title = \"P\"\nchart = \"kpi\"\nsql = \"SELECT 1 AS n\"\n[[reports]]\nname = \"weekly\"\n\
             schedule = \"0 8 * * MON\"\nrole = \"manager\"\nformats = [\"pdf\"]\n\
             filters = {{ period = \"last_week\" }}\n{freshness}\n"
        );
        let dashboard = Dashboard::parse(std::path::Path::new("t.toml"), &text).expect("dashboard");
        let report = dashboard.reports[0].clone();
        (dashboard, report)
    }

    #[test]
    fn last_weeks_data_is_due_at_the_mondays_midnight_in_new_york() {
        let (dashboard, report) = weekly("");
        let tuesday = NaiveDate::from_ymd_opt(2026, 3, 10).expect("date");
        // Last week ends Sunday March 8; Monday 00:00 EDT is 04:00 UTC.
        assert_eq!(data_due(&dashboard, &report, tuesday), Utc.with_ymd_and_hms(2026, 3, 9, 4, 0, 0).unwrap());
    }

    #[test]
    fn a_pipeline_that_has_not_succeeded_since_the_data_was_due_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let log = RunLog::open(dir.path()).expect("log");
        let (_, report) = weekly("freshness = { pipelines = [\"core\", \"other\"] }");
        let run = log.start("core", "test").expect("run");
        log.finish(&run, None).expect("finish");
        let failed = log.start("other", "test").expect("run");
        log.finish(&failed, Some("broke")).expect("finish");
        let hour = chrono::Duration::hours(1);
        let warning = freshness_warning(&log, &report, Utc::now() - hour).expect("log").expect("other is stale");
        assert!(warning.contains("other has not succeeded yet") && !warning.contains("core"), "{warning}");
        let warning = freshness_warning(&log, &report, Utc::now() + hour).expect("log").expect("both are stale");
        assert!(warning.contains("core last succeeded") && warning.contains("other"), "{warning}");
        let (_, without_rule) = weekly("");
        assert_eq!(freshness_warning(&log, &without_rule, Utc::now() + hour).expect("log"), None);
    }
}
