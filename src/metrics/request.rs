//! A metrics request (measures, dimensions, grain, time range, filters) read from a URL's query
//! string or built by a dashboard, checked against its view, and the query it becomes.
//!
//! The query is composed only of the view file's reviewed expressions and fixed templates; every
//! value from the request (dates, filter values, the limit) is a bound parameter, and every name
//! from the request is looked up in the view, so nothing a caller types becomes SQL text.

use chrono::{Datelike, Months, NaiveDate, TimeZone};
use datafusion::scalar::ScalarValue;
use serde::Serialize;

use super::MetricsError;
use super::spec::{Format, PERIOD, View};

/// A time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Grain {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Grain {
    pub fn parse(text: &str) -> Option<Grain> {
        Some(match text {
            "day" => Grain::Day,
            "week" => Grain::Week,
            "month" => Grain::Month,
            "quarter" => Grain::Quarter,
            "year" => Grain::Year,
            _ => return None,
        })
    }

    /// The first day of the bucket after the one that starts on `start`.
    pub fn after(self, start: NaiveDate) -> NaiveDate {
        let months = |n| start.checked_add_months(Months::new(n)).unwrap_or(start);
        match self {
            Grain::Day => start + chrono::Duration::days(1),
            Grain::Week => start + chrono::Duration::days(7),
            Grain::Month => months(1),
            Grain::Quarter => months(3),
            Grain::Year => months(12),
        }
    }

    /// The first day of the bucket before the one that starts on `start`.
    pub fn before(self, start: NaiveDate) -> NaiveDate {
        let months = |n| start.checked_sub_months(Months::new(n)).unwrap_or(start);
        match self {
            Grain::Day => start - chrono::Duration::days(1),
            Grain::Week => start - chrono::Duration::days(7),
            Grain::Month => months(1),
            Grain::Quarter => months(3),
            Grain::Year => months(12),
        }
    }

    /// The first day of the bucket that holds `day` (weeks start on Monday, as `date_trunc`'s).
    pub fn start(self, day: NaiveDate) -> NaiveDate {
        let first_of = |month: u32| NaiveDate::from_ymd_opt(day.year(), month, 1).unwrap_or(day);
        match self {
            Grain::Day => day,
            Grain::Week => day - chrono::Duration::days(i64::from(day.weekday().num_days_from_monday())),
            Grain::Month => first_of(day.month()),
            Grain::Quarter => first_of((day.month() - 1) / 3 * 3 + 1),
            Grain::Year => first_of(1),
        }
    }

    /// As `date_trunc` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
            Grain::Quarter => "quarter",
            Grain::Year => "year",
        }
    }
}

/// Days `[from, to)` in the view's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Range {
    /// The period before this one: as many whole months when the range is whole months (March
    /// against February, a quarter against the one before), else as many days.
    pub fn previous(self) -> Range {
        let months = (self.to.year() - self.from.year()) * 12 + self.to.month() as i32 - self.from.month() as i32;
        if self.from.day() == 1 && self.to.day() == 1 && months > 0 {
            let back = Months::new(months as u32);
            if let (Some(from), Some(to)) = (self.from.checked_sub_months(back), self.to.checked_sub_months(back)) {
                return Range { from, to };
            }
        }
        let days = self.to - self.from;
        Range { from: self.from - days, to: self.from }
    }
}

/// What order the rows come in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub field: String,
    pub descending: bool,
}

/// A checked request against one view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsRequest {
    pub measures: Vec<String>,
    pub dimensions: Vec<String>,
    pub grain: Option<Grain>,
    pub range: Option<Range>,
    /// Dimension name and the values it may take (any of them).
    pub filters: Vec<(String, Vec<String>)>,
    /// Whether to add the previous period's answer.
    pub compare: bool,
    pub order: Option<Order>,
    pub limit: u64,
}

/// Rows an answer has unless the request asks for fewer.
pub const DEFAULT_LIMIT: u64 = 1_000;
/// The longest range a request may ask for, in days (a century).
const MAX_RANGE_DAYS: i64 = 36_525;

fn bad(parameter: &str, message: impl Into<String>) -> MetricsError {
    MetricsError::Request { parameter: parameter.to_string(), message: message.into() }
}

fn date(parameter: &str, text: &str) -> Result<NaiveDate, MetricsError> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| bad(parameter, format!("expected a date like 2026-03-01, got {text:?}")))
}

impl MetricsRequest {
    /// Reads a request from URL query pairs: `measures=a,b`, `dimensions=d`, `grain=month`,
    /// `from=2026-01-01`, `to=2026-04-01` (exclusive), `filter.DIMENSION=value` (repeated for
    /// several values), `compare=previous`, `order=-measure`, `limit=N`. Every name is checked
    /// against `view`; an unknown parameter is an error, not ignored.
    pub fn from_pairs<'a>(
        view: &View,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        max_rows: u64,
    ) -> Result<MetricsRequest, MetricsError> {
        let mut request = MetricsRequest {
            measures: Vec::new(),
            dimensions: Vec::new(),
            grain: None,
            range: None,
            filters: Vec::new(),
            compare: false,
            order: None,
            limit: DEFAULT_LIMIT.min(max_rows),
        };
        let (mut from, mut to) = (None, None);
        let list = |text: &str| text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        for (key, value) in pairs {
            match key {
                "measures" => request.measures.extend::<Vec<String>>(list(value)),
                "dimensions" => request.dimensions.extend::<Vec<String>>(list(value)),
                "grain" => {
                    request.grain = Some(Grain::parse(value).ok_or_else(|| {
                        bad("grain", format!("expected day, week, month, quarter or year, got {value:?}"))
                    })?)
                }
                "from" => from = Some(date("from", value)?),
                "to" => to = Some(date("to", value)?),
                "compare" => {
                    request.compare = match value {
                        "previous" | "true" => true,
                        "none" | "false" | "" => false,
                        _ => return Err(bad("compare", format!("expected previous or none, got {value:?}"))),
                    }
                }
                "order" => {
                    let (descending, field) = match value.strip_prefix('-') {
                        Some(field) => (true, field),
                        None => (false, value),
                    };
                    request.order = Some(Order { field: field.to_string(), descending });
                }
                "limit" => {
                    request.limit =
                        value.trim().parse().ok().filter(|n| (1..=max_rows).contains(n)).ok_or_else(|| {
                            bad("limit", format!("expected a whole number from 1 to {max_rows}, got {value:?}"))
                        })?
                }
                _ => match key.strip_prefix("filter.") {
                    Some(dimension) => match request.filters.iter_mut().find(|(d, _)| d == dimension) {
                        Some((_, values)) => values.push(value.to_string()),
                        None => request.filters.push((dimension.to_string(), vec![value.to_string()])),
                    },
                    None => {
                        return Err(bad(
                            key,
                            "unknown parameter; expected measures, dimensions, grain, from, to, filter.DIMENSION, \
                             compare, order or limit",
                        ));
                    }
                },
            }
        }
        request.range = match (from, to) {
            (Some(from), Some(to)) => Some(Range { from, to }),
            (None, None) => None,
            (Some(_), None) => return Err(bad("to", "a range needs both from and to")),
            (None, Some(_)) => return Err(bad("from", "a range needs both from and to")),
        };
        request.check(view)?;
        Ok(request)
    }

    /// Checks every name and value against `view`.
    pub fn check(&self, view: &View) -> Result<(), MetricsError> {
        if self.measures.is_empty() {
            let names: Vec<&str> = view.measures.iter().map(|m| m.name.as_str()).collect();
            return Err(bad("measures", format!("name at least one of {}", names.join(", "))));
        }
        for measure in &self.measures {
            if view.measure(measure).is_none() {
                let names: Vec<&str> = view.measures.iter().map(|m| m.name.as_str()).collect();
                return Err(bad(
                    "measures",
                    format!("view {} has no measure {measure:?}; it has {}", view.name, names.join(", ")),
                ));
            }
        }
        let dimension_names = || view.dimensions.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
        for dimension in self.dimensions.iter().chain(self.filters.iter().map(|(d, _)| d)) {
            if view.dimension(dimension).is_none() {
                let parameter = if self.dimensions.contains(dimension) {
                    "dimensions".to_string()
                } else {
                    format!("filter.{dimension}")
                };
                return Err(bad(
                    &parameter,
                    format!("view {} has no dimension {dimension:?}; it has {}", view.name, dimension_names()),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in self.measures.iter().chain(&self.dimensions) {
            if !seen.insert(name) {
                return Err(bad("measures", format!("{name:?} is asked for twice")));
            }
        }
        if view.time.is_none() && (self.grain.is_some() || self.range.is_some() || self.compare) {
            let parameter = if self.grain.is_some() {
                "grain"
            } else if self.range.is_some() {
                "from"
            } else {
                "compare"
            };
            return Err(bad(parameter, format!("view {} has no time column: it answers as of now", view.name)));
        }
        if let Some(range) = self.range {
            let days = (range.to - range.from).num_days();
            if days <= 0 {
                return Err(bad("to", format!("to ({}) must come after from ({})", range.to, range.from)));
            }
            if days > MAX_RANGE_DAYS {
                return Err(bad("to", format!("a range of {days} days is longer than {MAX_RANGE_DAYS}")));
            }
        }
        if self.compare && self.range.is_none() {
            return Err(bad("compare", "comparing with the previous period needs a range (from and to)"));
        }
        if let Some(order) = &self.order {
            let known = order.field == PERIOD && self.grain.is_some()
                || self.measures.contains(&order.field)
                || self.dimensions.contains(&order.field);
            if !known {
                return Err(bad("order", format!("{:?} is not a field of the answer", order.field)));
            }
        }
        Ok(())
    }
}

/// A request's query: SQL composed from the view's expressions and `$n` placeholders, and the
/// values bound to them.
#[derive(Debug, Clone)]
pub struct Composed {
    pub sql: String,
    pub params: Vec<ScalarValue>,
}

/// How the view's time column is stored, which decides how it is bucketed and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeColumn {
    /// An instant (UTC): bucketed and bounded in the view's time zone.
    Timestamp,
    /// A calendar date: bucketed and bounded as it is.
    Date,
}

fn quoted(name: &str) -> String {
    // Names are checked identifiers (lower-case letters, digits, _): quoting only keeps keywords apart.
    format!("\"{name}\"")
}

/// The query answering `request` over `range` (the request's own, or the previous period).
pub fn compose(view: &View, time: Option<TimeColumn>, request: &MetricsRequest, range: Option<Range>) -> Composed {
    let mut params = Vec::new();
    let mut bind = |value: ScalarValue| {
        params.push(value);
        format!("${}", params.len())
    };
    let mut select = Vec::new();
    let mut group = Vec::new();
    if let (Some(grain), Some(column), Some(kind)) = (request.grain, &view.time, time) {
        let bucket = match kind {
            TimeColumn::Timestamp => {
                format!("date_trunc('{}', {column} AT TIME ZONE '{}')", grain.name(), view.timezone.name())
            }
            TimeColumn::Date => format!("date_trunc('{}', {column})", grain.name()),
        };
        // Grouped by the period's start and cast once per group, not once per row.
        select.push(format!("CAST({bucket} AS DATE) AS {}", quoted(PERIOD)));
        group.push(bucket);
    }
    for name in &request.dimensions {
        if let Some(d) = view.dimension(name) {
            select.push(format!("({}) AS {}", d.sql, quoted(&d.name)));
            group.push(format!("({})", d.sql));
        }
    }
    for name in &request.measures {
        if let Some(m) = view.measure(name) {
            // Counts answer whole numbers and every other measure a double, so that JSON carries
            // numbers (not decimal strings) and every engine agrees on the type.
            let kind = if m.format == Format::Count { "BIGINT" } else { "DOUBLE" };
            select.push(format!("CAST(({}) AS {kind}) AS {}", m.sql, quoted(&m.name)));
        }
    }
    let conditions = conditions(view, time, request, range, &mut bind);
    let mut sql = format!("SELECT {} FROM {}", select.join(", "), view.table);
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if !group.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", group.join(", ")));
    }
    let order = match &request.order {
        Some(order) => {
            let by = match view.dimension(&order.field).and_then(|d| d.sort.as_ref()) {
                Some(sort) => format!("min({sort})"),
                None => quoted(&order.field),
            };
            vec![format!("{by}{}", if order.descending { " DESC" } else { "" })]
        }
        None if request.grain.is_some() => {
            std::iter::once(PERIOD).chain(request.dimensions.iter().map(String::as_str)).map(quoted).collect()
        }
        // Without time, the largest first: what a bar chart or a top-N table shows.
        None => request.measures.first().map(|m| format!("{} DESC", quoted(m))).into_iter().collect(),
    };
    if !order.is_empty() {
        sql.push_str(&format!(" ORDER BY {} NULLS LAST", order.join(" NULLS LAST, ")));
    }
    sql.push_str(&format!(" LIMIT {}", bind(ScalarValue::Int64(Some(request.limit as i64)))));
    Composed { sql, params }
}

/// The `WHERE` conditions of `request` over `range`, each value bound through `bind`.
fn conditions(
    view: &View,
    time: Option<TimeColumn>,
    request: &MetricsRequest,
    range: Option<Range>,
    bind: &mut impl FnMut(ScalarValue) -> String,
) -> Vec<String> {
    let mut conditions = Vec::new();
    if let (Some(range), Some(column), Some(kind)) = (range, &view.time, time) {
        let (from, to) = match kind {
            TimeColumn::Timestamp => (instant(view, range.from), instant(view, range.to)),
            TimeColumn::Date => (day(range.from), day(range.to)),
        };
        conditions.push(format!("{column} >= {} AND {column} < {}", bind(from), bind(to)));
    }
    for (name, values) in &request.filters {
        if let Some(d) = view.dimension(name) {
            let placeholders: Vec<String> = values.iter().map(|v| bind(ScalarValue::Utf8(Some(v.clone())))).collect();
            conditions.push(format!("CAST(({}) AS VARCHAR) IN ({})", d.sql, placeholders.join(", ")));
        }
    }
    conditions
}

/// The rows of the view's table that `request`'s numbers are computed from (its range and
/// filters; no grouping), newest first when the view has a time column, at most `limit`.
pub fn compose_rows(view: &View, time: Option<TimeColumn>, request: &MetricsRequest, limit: u64) -> Composed {
    let mut params = Vec::new();
    let mut bind = |value: ScalarValue| {
        params.push(value);
        format!("${}", params.len())
    };
    let conditions = conditions(view, time, request, request.range, &mut bind);
    let mut sql = format!("SELECT * FROM {}", view.table);
    if !conditions.is_empty() {
        sql.push_str(&format!(" WHERE {}", conditions.join(" AND ")));
    }
    if let Some(column) = &view.time {
        sql.push_str(&format!(" ORDER BY {column} DESC NULLS LAST"));
    }
    sql.push_str(&format!(" LIMIT {}", bind(ScalarValue::Int64(Some(limit as i64)))));
    Composed { sql, params }
}

/// Midnight at the start of `day` in the view's zone, as a UTC instant (DST-aware: a day that
/// starts in a gap starts at the first instant that exists).
fn instant(view: &View, day: NaiveDate) -> ScalarValue {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    let at = match view.timezone.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(at) | chrono::LocalResult::Ambiguous(at, _) => at.timestamp_micros(),
        chrono::LocalResult::None => {
            // No zone in use skips more than an hour at midnight.
            let later = midnight + chrono::Duration::hours(1);
            view.timezone.from_local_datetime(&later).earliest().map(|at| at.timestamp_micros()).unwrap_or_default()
        }
    };
    ScalarValue::TimestampMicrosecond(Some(at), Some("UTC".into()))
}

fn day(day: NaiveDate) -> ScalarValue {
    ScalarValue::Date32(Some((day - NaiveDate::default()).num_days() as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn view() -> View {
        View::parse(
            Path::new("payments.toml"),
            r#"
label = "Payments"
table = "marts.fct_payments"
time = "txn_date"
[[dimensions]]
name = "method"
label = "Method"
[[measures]]
name = "collected"
label = "Collected"
sql = "sum(amount)"
format = "usd"
"#,
        )
        .expect("view")
    }

    fn request(query: &str) -> Result<MetricsRequest, MetricsError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        MetricsRequest::from_pairs(&view(), pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), 100_000)
    }

    #[test]
    fn a_day_falls_in_the_bucket_date_trunc_gives_it() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("date");
        let thursday = day(2026, 10, 29);
        assert_eq!(Grain::Day.start(thursday), thursday);
        assert_eq!(Grain::Week.start(thursday), day(2026, 10, 26));
        assert_eq!(Grain::Week.start(day(2026, 11, 1)), day(2026, 10, 26), "Sunday ends the week");
        assert_eq!(Grain::Month.start(thursday), day(2026, 10, 1));
        assert_eq!(Grain::Quarter.start(thursday), day(2026, 10, 1));
        assert_eq!(Grain::Quarter.start(day(2026, 9, 30)), day(2026, 7, 1));
        assert_eq!(Grain::Year.start(thursday), day(2026, 1, 1));
        assert_eq!(Grain::Month.before(day(2026, 3, 1)), day(2026, 2, 1));
        assert_eq!(Grain::Week.before(day(2026, 10, 26)), day(2026, 10, 19));
    }

    #[test]
    fn values_are_bound_and_names_come_from_the_view() {
        let r = request("measures=collected&dimensions=method&grain=month&from=2026-03-01&to=2026-04-01&filter.method=card'%3B%20DROP%20TABLE%20x%3B--&filter.method=cash").expect("request");
        let composed = compose(&view(), Some(TimeColumn::Timestamp), &r, r.range);
        assert!(!composed.sql.contains("DROP"), "{}", composed.sql);
        assert!(composed.sql.contains("IN ($3, $4)"), "{}", composed.sql);
        assert_eq!(composed.params[2], ScalarValue::Utf8(Some("card'; DROP TABLE x;--".into())));
        // 2026-03-01 starts at 05:00 UTC (EST), 2026-04-01 at 04:00 UTC (EDT).
        assert_eq!(
            composed.params[0],
            ScalarValue::TimestampMicrosecond(Some(1_772_341_200_000_000), Some("UTC".into()))
        );
        assert_eq!(
            composed.params[1],
            ScalarValue::TimestampMicrosecond(Some(1_775_016_000_000_000), Some("UTC".into()))
        );
        assert!(
            composed.sql.contains("date_trunc('month', txn_date AT TIME ZONE 'America/New_York')"),
            "{}",
            composed.sql
        );
    }

    #[test]
    fn mistakes_name_the_parameter() {
        let cases = [
            ("measures=nope", "measures"),
            ("measures=collected&dimensions=doula", "dimensions"),
            ("measures=collected&filter.doula=x", "filter.doula"),
            ("measures=collected&grain=fortnight", "grain"),
            ("measures=collected&from=2026-13-01&to=2026-02-01", "from"),
            ("measures=collected&from=2026-03-01&to=2026-02-01", "to"),
            ("measures=collected&from=2026-03-01", "to"),
            ("measures=collected&compare=previous", "compare"),
            ("measures=collected&limit=0", "limit"),
            ("measures=collected&order=method", "order"),
            ("measures=collected&measure=collected", "measure"),
            ("measures=collected,collected", "measures"),
            ("", "measures"),
        ];
        for (query, parameter) in cases {
            match request(query) {
                Err(MetricsError::Request { parameter: p, .. }) => assert_eq!(p, parameter, "{query}"),
                other => panic!("{query}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_previous_period_is_as_many_months_or_days_before() {
        let range = |a: &str, b: &str| Range { from: a.parse().expect("date"), to: b.parse().expect("date") };
        assert_eq!(range("2026-03-01", "2026-04-01").previous(), range("2026-02-01", "2026-03-01"));
        assert_eq!(range("2026-01-01", "2026-04-01").previous(), range("2025-10-01", "2026-01-01"));
        assert_eq!(range("2026-03-10", "2026-04-09").previous(), range("2026-02-08", "2026-03-10"));
    }
}
