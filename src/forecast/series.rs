//! From rows of (time, value) to an evenly spaced series: the grain the times are spaced by, the
//! points missing between them filled as the caller asked, and every bad row named by its time.

use chrono::{Datelike, Duration, Months, NaiveDateTime, Timelike};
use serde::Serialize;

use super::ForecastError;

/// The most points a series may hold once its gaps are filled: a year of hours is 8,784.
pub const MAX_POINTS: usize = 100_000;

/// Rows of (time, value) as they come, in any order; `None` is a missing value.
pub type Rows = Vec<(NaiveDateTime, Option<f64>)>;

/// How far apart a series' points are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grain {
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl Grain {
    pub const ALL: [Grain; 6] = [Grain::Hour, Grain::Day, Grain::Week, Grain::Month, Grain::Quarter, Grain::Year];

    pub fn parse(text: &str) -> Result<Grain, ForecastError> {
        Grain::ALL.into_iter().find(|grain| grain.name().eq_ignore_ascii_case(text.trim())).ok_or_else(|| {
            ForecastError::Grain(format!("unknown grain {text:?}: use hour, day, week, month, quarter or year"))
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Grain::Hour => "hour",
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
            Grain::Quarter => "quarter",
            Grain::Year => "year",
        }
    }

    /// The seasons worth looking for at this grain, shortest first: a day's hours and a week's,
    /// a week's days and a year's, a year's weeks, months and quarters.
    pub fn seasons(self) -> &'static [usize] {
        match self {
            Grain::Hour => &[24, 168],
            Grain::Day => &[7, 365],
            Grain::Week => &[52],
            Grain::Month => &[12],
            Grain::Quarter => &[4],
            Grain::Year => &[],
        }
    }

    /// The time `steps` grains after `start`. Calendar grains count from `start` itself, so a
    /// series of month ends stays on month ends (Jan 31, Feb 29, Mar 31).
    pub fn add(self, start: NaiveDateTime, steps: usize) -> Option<NaiveDateTime> {
        let steps_i64 = i64::try_from(steps).ok()?;
        match self {
            Grain::Hour => start.checked_add_signed(Duration::try_hours(steps_i64)?),
            Grain::Day => start.checked_add_signed(Duration::try_days(steps_i64)?),
            Grain::Week => start.checked_add_signed(Duration::try_weeks(steps_i64)?),
            Grain::Month => start.checked_add_months(Months::new(u32::try_from(steps).ok()?)),
            Grain::Quarter => start.checked_add_months(Months::new(u32::try_from(steps.checked_mul(3)?).ok()?)),
            Grain::Year => start.checked_add_months(Months::new(u32::try_from(steps.checked_mul(12)?).ok()?)),
        }
    }

    /// How many grains `time` is after `start`, when it is a whole number of them.
    fn steps(self, start: NaiveDateTime, time: NaiveDateTime) -> Option<usize> {
        let estimate = match self {
            Grain::Hour => (time - start).num_hours(),
            Grain::Day => (time - start).num_days(),
            Grain::Week => (time - start).num_days() / 7,
            Grain::Month | Grain::Quarter | Grain::Year => {
                let months =
                    i64::from(time.year() - start.year()) * 12 + i64::from(time.month()) - i64::from(start.month());
                match self {
                    Grain::Quarter => months / 3,
                    Grain::Year => months / 12,
                    _ => months,
                }
            }
        };
        let steps = usize::try_from(estimate).ok()?;
        (self.add(start, steps)? == time).then_some(steps)
    }

    /// The grain that spaces these sorted, distinct times: the closest two decide it.
    fn detect(times: &[NaiveDateTime]) -> Option<Grain> {
        let closest = times.windows(2).map(|pair| pair[1] - pair[0]).min()?;
        let days = closest.num_seconds() as f64 / 86_400.0;
        let grain = if closest == Duration::hours(1) {
            Grain::Hour
        } else if closest == Duration::days(1) {
            Grain::Day
        } else if closest == Duration::weeks(1) {
            Grain::Week
        } else if (28.0..=31.0).contains(&days) {
            Grain::Month
        } else if (89.0..=92.0).contains(&days) {
            Grain::Quarter
        } else if (365.0..=366.0).contains(&days) {
            Grain::Year
        } else {
            return None;
        };
        Some(grain)
    }
}

/// A metrics view's period as a series' grain (the metrics have no hours).
impl From<crate::metrics::request::Grain> for Grain {
    fn from(grain: crate::metrics::request::Grain) -> Grain {
        use crate::metrics::request::Grain as Period;
        match grain {
            Period::Day => Grain::Day,
            Period::Week => Grain::Week,
            Period::Month => Grain::Month,
            Period::Quarter => Grain::Quarter,
            Period::Year => Grain::Year,
        }
    }
}

impl std::fmt::Display for Grain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a missing point between two present ones stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Nothing happened: right for sums and counts (a month without payments collected 0).
    #[default]
    Zero,
    /// The straight line between its neighbours: right for levels and averages.
    Interpolate,
}

impl Fill {
    pub fn parse(text: &str) -> Result<Fill, ForecastError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "zero" => Ok(Fill::Zero),
            "interpolate" => Ok(Fill::Interpolate),
            _ => Err(ForecastError::Option(format!("fill {text:?}: use zero or interpolate"))),
        }
    }
}

/// An evenly spaced series, oldest first.
#[derive(Debug, Clone)]
pub struct Series {
    pub grain: Grain,
    pub start: NaiveDateTime,
    pub values: Vec<f64>,
    /// How many points were missing (or null) and filled, and how.
    pub filled: usize,
    pub fill: Fill,
}

impl Series {
    /// The time of point `index` (which may lie past the end: the forecast's times).
    pub fn time(&self, index: usize) -> Option<NaiveDateTime> {
        self.grain.add(self.start, index)
    }

    /// Spaces `rows` (in any order; `None` values are missing) by `grain`, or by the grain their
    /// times show. Errors name the time of the offending row.
    pub fn from_rows(mut rows: Rows, grain: Option<Grain>, fill: Fill) -> Result<Series, ForecastError> {
        rows.sort_by_key(|(time, _)| *time);
        if let Some(pair) = rows.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(ForecastError::Input(format!(
                "time {} appears more than once; a series needs one value per time (group by the time column)",
                show_time(pair[0].0)
            )));
        }
        if let Some((time, Some(value))) = rows.iter().find(|(_, value)| value.is_some_and(|v| !v.is_finite())) {
            return Err(ForecastError::Input(format!(
                "the value at {} is {value}; only finite numbers can be forecast",
                show_time(*time)
            )));
        }
        let Some(&(start, _)) = rows.first().filter(|_| rows.len() >= super::MIN_POINTS) else {
            return Err(ForecastError::TooShort { points: rows.len() });
        };
        let times: Vec<NaiveDateTime> = rows.iter().map(|(time, _)| *time).collect();
        let grain = match grain {
            Some(grain) => grain,
            None => Grain::detect(&times).ok_or_else(|| {
                ForecastError::Grain(
                    "the times are not spaced by an hour, day, week, month, quarter or year; name the grain (grain => 'month')"
                        .to_string(),
                )
            })?,
        };
        let mut slots: Vec<Option<f64>> = Vec::new();
        for (time, value) in &rows {
            let step = grain.steps(start, *time).ok_or_else(|| {
                ForecastError::Input(format!(
                    "time {} is not a whole number of {grain}s after the first, {}",
                    show_time(*time),
                    show_time(start)
                ))
            })?;
            if step >= MAX_POINTS {
                return Err(ForecastError::Input(format!(
                    "the series spans more than {MAX_POINTS} {grain}s ({} to {}); use a coarser grain",
                    show_time(start),
                    show_time(*time)
                )));
            }
            if slots.len() <= step {
                slots.resize(step + 1, None);
            }
            slots[step] = *value;
        }
        let present: Vec<usize> = slots.iter().enumerate().filter(|(_, v)| v.is_some()).map(|(i, _)| i).collect();
        let filled = slots.len() - present.len();
        let values = match fill {
            Fill::Zero => slots.iter().map(|v| v.unwrap_or(0.0)).collect(),
            Fill::Interpolate => interpolate(&slots, &present),
        };
        Ok(Series { grain, start, values, filled, fill })
    }
}

/// Straight lines between the present points; before the first and after the last, the nearest.
fn interpolate(slots: &[Option<f64>], present: &[usize]) -> Vec<f64> {
    let Some((&first, &last)) = present.first().zip(present.last()) else {
        return vec![0.0; slots.len()];
    };
    let at = |i: usize| slots[i].unwrap_or(0.0);
    let mut values: Vec<f64> = Vec::with_capacity(slots.len());
    values.extend(std::iter::repeat_n(at(first), first));
    for pair in present.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        for i in a..b {
            values.push(at(a) + (at(b) - at(a)) * (i - a) as f64 / (b - a) as f64);
        }
    }
    values.extend(std::iter::repeat_n(at(last), slots.len() - last));
    values
}

/// A time as people write it: the date alone when it is midnight.
pub fn show_time(time: NaiveDateTime) -> String {
    if time.num_seconds_from_midnight() == 0 {
        time.date().to_string()
    } else {
        time.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn day(y: i32, m: u32, d: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d).and_then(|d| d.and_hms_opt(0, 0, 0)).unwrap()
    }

    #[test]
    fn months_with_a_gap_are_filled_as_asked() {
        let rows = vec![(day(2024, 3, 1), Some(30.0)), (day(2024, 1, 1), Some(10.0)), (day(2024, 4, 1), None)];
        let zero = Series::from_rows(rows.clone(), None, Fill::Zero).unwrap();
        assert_eq!(zero.grain, Grain::Month);
        assert_eq!(zero.values, vec![10.0, 0.0, 30.0, 0.0]);
        assert_eq!(zero.filled, 2);
        let line = Series::from_rows(rows, None, Fill::Interpolate).unwrap();
        assert_eq!(line.values, vec![10.0, 20.0, 30.0, 30.0]);
        assert_eq!(line.time(5), Some(day(2024, 6, 1)));
    }

    #[test]
    fn month_ends_stay_month_ends() {
        let rows = vec![(day(2024, 1, 31), Some(1.0)), (day(2024, 2, 29), Some(2.0)), (day(2024, 3, 31), Some(3.0))];
        let series = Series::from_rows(rows, None, Fill::Zero).unwrap();
        assert_eq!(series.values.len(), 3);
        assert_eq!(series.time(3), Some(day(2024, 4, 30)));
    }

    #[test]
    fn bad_rows_are_named_by_their_time() {
        let twice = vec![(day(2024, 1, 1), Some(1.0)), (day(2024, 1, 1), Some(2.0))];
        let err = Series::from_rows(twice, None, Fill::Zero).unwrap_err().to_string();
        assert!(err.contains("2024-01-01 appears more than once"), "{err}");
        let nan = vec![(day(2024, 1, 1), Some(1.0)), (day(2024, 2, 1), Some(f64::NAN))];
        let err = Series::from_rows(nan, None, Fill::Zero).unwrap_err().to_string();
        assert!(err.contains("2024-02-01 is NaN"), "{err}");
        let off = vec![(day(2024, 1, 1), Some(1.0)), (day(2024, 2, 1), Some(1.0)), (day(2024, 2, 15), Some(1.0))];
        let err = Series::from_rows(off, Some(Grain::Month), Fill::Zero).unwrap_err().to_string();
        assert!(err.contains("2024-02-15 is not a whole number of months"), "{err}");
        let irregular =
            vec![(day(2024, 1, 1), Some(1.0)), (day(2024, 1, 11), Some(1.0)), (day(2024, 1, 14), Some(1.0))];
        let err = Series::from_rows(irregular, None, Fill::Zero).unwrap_err().to_string();
        assert!(err.contains("not spaced by an hour"), "{err}");
        assert!(Grain::parse("fortnight").unwrap_err().to_string().contains("unknown grain \"fortnight\""));
    }
}
