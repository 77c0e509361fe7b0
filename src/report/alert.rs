//! Alerts: a report with an `alert` condition on one of its dashboard's panels. The panel's data
//! comes through the dashboard path as the report's role (masking, cache, audit), and the verdict
//! is whether the condition holds, in words, with the rows that make it hold. Whether to send (the
//! cool-down, the "resolved" message) is decided from the state the run log keeps per alert; the
//! message itself goes through [`super::deliver`] like any report.

use chrono::{DateTime, NaiveDate, Utc};

use super::{Report, ReportError};
use crate::chart::{Cell, ChartKind};
use crate::dashboard::{self, Dashboard, Selection, Sources};
use crate::metrics;
use crate::pipeline::runlog::AlertState;
use crate::query::engine::Caller;

/// Rows an alert's message lists at most.
const LISTED_ROWS: usize = 20;

/// What an alert's condition found.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub firing: bool,
    /// The panel, its figure or row count, and the limit: `New leads: 0 (alert below 1)`.
    pub summary: String,
    /// The panel's first rows, each as `column: value; …`.
    pub rows: Vec<String>,
}

/// Which message an alert's slot sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The condition holds (newly, or again after the cool-down).
    Firing,
    /// It held at the last message and holds no more.
    Resolved,
    /// Sent on request while the condition does not hold.
    Clear,
}

/// An alert's message: its kind and the verdict it reports.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: NoticeKind,
    pub verdict: Verdict,
}

impl Notice {
    pub fn subject(&self, title: &str) -> String {
        let word = match self.kind {
            NoticeKind::Firing => "Alert",
            NoticeKind::Resolved => "Resolved",
            NoticeKind::Clear => "Clear",
        };
        format!("[{word}] {title}: {}", self.verdict.summary)
    }
}

/// Evaluates `report`'s condition for the day `day` as `caller`; None when it is no alert.
pub async fn evaluate(
    sources: &Sources<'_>,
    dashboard: &Dashboard,
    report: &Report,
    day: NaiveDate,
    caller: &Caller,
) -> Result<Option<Verdict>, ReportError> {
    let Some(alert) = &report.spec.alert else { return Ok(None) };
    let name = &report.spec.name;
    let failed = |e: dashboard::DashboardError| ReportError::Dashboard { report: name.clone(), source: Box::new(e) };
    let panel = dashboard.file.panels.iter().find(|p| p.id == alert.panel).ok_or_else(|| ReportError::Panel {
        report: name.clone(),
        panel: alert.panel.clone(),
        message: "no such panel".into(),
    })?;
    let selection = Selection::from_pairs(dashboard, report.filter_pairs(), day).map_err(failed)?;
    if let Some(level) = alert.forecast_level() {
        let tracking =
            dashboard::panel_tracking(sources, dashboard, panel, &selection, level, day, caller).await.map_err(
                |e| ReportError::Panel { report: name.clone(), panel: panel.id.clone(), message: e.to_string() },
            )?;
        return Ok(Some(against_forecast(&panel.title, &tracking, alert.below_forecast.is_some())));
    }
    let data = dashboard::panel_data(sources, dashboard, panel, &selection, caller)
        .await
        .map_err(|e| ReportError::Panel { report: name.clone(), panel: panel.id.clone(), message: e.to_string() })?;
    let frame = &data.frame;
    let rows = frame
        .rows
        .iter()
        .take(LISTED_ROWS)
        .map(|row| {
            row.iter()
                .zip(&frame.fields)
                .map(|(cell, field)| match (field.format, cell.number()) {
                    (Some(format), Some(n)) => format!("{}: {}", field.label, format.full(n)),
                    _ => format!("{}: {}", field.label, cell.label()),
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    let limit = alert.above.map(|v| ("above", v)).or(alert.below.map(|v| ("below", v)));
    let Some((direction, limit)) = limit else {
        let count = frame.rows.len();
        let summary = format!("{}: {count} row(s)", panel.title);
        return Ok(Some(Verdict { firing: count > 0, summary, rows }));
    };
    let field = frame.fields.iter().position(|f| f.format.is_some()).unwrap_or(0);
    let value = frame.rows.first().and_then(|row| row.get(field)).and_then(Cell::number).unwrap_or(0.0);
    let firing = if direction == "above" { value > limit } else { value < limit };
    let format = frame.fields.get(field).and_then(|f| f.format);
    let shown = |v: f64| format.map_or_else(|| v.to_string(), |f| f.full(v));
    let summary = format!("{}: {} (alert {direction} {})", panel.title, shown(value), shown(limit));
    // A KPI's one row says what the summary says already.
    let rows = if panel.chart == ChartKind::Kpi { Vec::new() } else { rows };
    Ok(Some(Verdict { firing, summary, rows }))
}

/// The verdict of an alert on a forecast: whether the period so far fell under the lower bound
/// (`below`) or over the upper bound of its interval scaled to the days counted, in words and figures.
fn against_forecast(title: &str, t: &metrics::Tracking, below: bool) -> Verdict {
    let shown = |v: f64| t.format.full(v);
    let (expected, lower, upper) = t.expected();
    let firing = if below { t.actual < lower } else { t.actual > upper };
    let level = crate::forecast::table::level_name(t.level);
    let grain = t.grain.name();
    let whole = t.share >= 1.0;
    let period = if whole {
        format!("the {grain} from {}", t.period)
    } else {
        format!("the {grain} from {} through {} ({:.0} % of it)", t.period, t.through, t.share * 100.0)
    };
    let (side, bound) = if below { ("under", lower) } else { ("over", upper) };
    let verb = if firing { "is" } else { "is not" };
    let summary = format!(
        "{title}: {} in {period} {verb} {side} {}, the {level} % forecast's {} bound",
        shown(t.actual),
        shown(bound),
        if below { "lower" } else { "upper" },
    );
    let mut rows = vec![format!("Counted: {}", shown(t.actual))];
    if !whole {
        rows.push(format!(
            "Forecast for the days counted: {} ({level} % interval {} to {})",
            shown(expected),
            shown(lower),
            shown(upper)
        ));
    }
    rows.push(format!(
        "Forecast for the whole {grain}: {} ({level} % interval {} to {}), by {}",
        shown(t.forecast),
        shown(t.lower),
        shown(t.upper),
        t.model
    ));
    Verdict { firing, summary, rows }
}

/// Which message, if any, a verdict calls for after `state` (None: the alert never sent), and
/// the state to keep once it is sent.
pub fn decide(
    verdict: &Verdict,
    state: Option<&AlertState>,
    cool_down: chrono::Duration,
    now: DateTime<Utc>,
) -> (Option<NoticeKind>, AlertState) {
    let was_firing = state.is_some_and(|s| s.firing);
    let since = match state {
        Some(s) if s.firing == verdict.firing => s.since,
        _ => now,
    };
    let notified_at = state.and_then(|s| s.notified_at);
    let kind = match (verdict.firing, was_firing) {
        (true, false) => Some(NoticeKind::Firing),
        (true, true) if notified_at.is_none_or(|at| now - at >= cool_down) => Some(NoticeKind::Firing),
        (false, true) => Some(NoticeKind::Resolved),
        _ => None,
    };
    let notified_at = if kind.is_some() { Some(now) } else { notified_at };
    (kind, AlertState { firing: verdict.firing, since, notified_at, summary: verdict.summary.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart::Format;

    fn verdict(firing: bool) -> Verdict {
        Verdict { firing, summary: "s".into(), rows: Vec::new() }
    }

    #[test]
    fn an_alert_on_a_forecast_prorates_the_bounds_by_the_days_counted() {
        let day = |d: u32| NaiveDate::from_ymd_opt(2026, 10, d).expect("date");
        let week = metrics::Tracking {
            period: day(26),
            through: day(29),
            grain: metrics::request::Grain::Week,
            actual: 3.0,
            forecast: 14.0,
            lower: 7.0,
            upper: 21.0,
            level: 95.0,
            share: 4.0 / 7.0,
            model: "theta".into(),
            format: Format::Count,
        };
        // Four days of seven: 8 expected, and the interval's half-widths times sqrt(4/7).
        let verdict = against_forecast("New leads", &metrics::Tracking { actual: 2.0, ..week.clone() }, true);
        assert!(verdict.firing, "{verdict:?}");
        assert!(verdict.summary.contains("through 2026-10-29 (57 % of it) is under 3"), "{}", verdict.summary);
        assert!(verdict.rows[1].contains("8 (95 % interval 3 to 13)"), "{:?}", verdict.rows);
        assert!(!against_forecast("New leads", &week, true).firing, "3 is over 2.7");
        assert!(!against_forecast("New leads", &metrics::Tracking { actual: 13.0, ..week.clone() }, false).firing);
        assert!(against_forecast("New leads", &metrics::Tracking { actual: 14.0, ..week.clone() }, false).firing);
        // A whole period is judged whole, its figures in the measure's format (hours here).
        let hours = metrics::Tracking { share: 1.0, format: Format::Hours, ..week };
        let whole = against_forecast("New leads", &hours, true);
        assert!(
            whole.firing && whole.summary.contains("in the week from 2026-10-26 is under 7.0"),
            "{}",
            whole.summary
        );
        assert_eq!(whole.rows.len(), 2, "{:?}", whole.rows);
    }

    #[test]
    fn an_alert_sends_once_per_cool_down_and_says_when_it_clears() {
        let hour = chrono::Duration::hours(1);
        let cool_down = hour * 24;
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        // Quiet, and never fired: nothing to say.
        let (kind, state) = decide(&verdict(false), None, cool_down, t0);
        assert_eq!(kind, None);
        // It fires: sent.
        let (kind, state) = decide(&verdict(true), Some(&state), cool_down, t0 + hour);
        assert_eq!(kind, Some(NoticeKind::Firing));
        assert_eq!((state.since, state.notified_at), (t0 + hour, Some(t0 + hour)));
        // Still firing within the cool-down: quiet; after it: sent again, since unchanged.
        let (kind, state) = decide(&verdict(true), Some(&state), cool_down, t0 + hour * 5);
        assert_eq!(kind, None);
        let (kind, state) = decide(&verdict(true), Some(&state), cool_down, t0 + hour * 26);
        assert_eq!(kind, Some(NoticeKind::Firing));
        assert_eq!((state.since, state.notified_at), (t0 + hour, Some(t0 + hour * 26)));
        // It clears: resolved, once.
        let (kind, state) = decide(&verdict(false), Some(&state), cool_down, t0 + hour * 27);
        assert_eq!(kind, Some(NoticeKind::Resolved));
        let (kind, _) = decide(&verdict(false), Some(&state), cool_down, t0 + hour * 28);
        assert_eq!(kind, None);
    }
}
