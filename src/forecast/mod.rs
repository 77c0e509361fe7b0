//! Forecasts with prediction intervals, one series at a time: spacing the rows by their grain
//! (`series`), the models (`models`), choosing among them by backtest (`select`) and the forecast
//! that comes of it, with every fallback it took said in its notes. It reads no table and knows no
//! user: the query engine's `forecast` table function, the metrics API, dashboards and the command
//! line hand it rows they were allowed to read and show what it answers.

use chrono::NaiveDateTime;
use serde::Serialize;

pub mod input;
pub mod models;
pub mod select;
pub mod series;
pub mod table;

pub use models::Model;
pub use select::{Backtest, Score};
pub use series::{Fill, Grain, Series, show_time};

/// The fewest points a series may have.
pub const MIN_POINTS: usize = 3;
/// The furthest a forecast may reach, in grains.
pub const MAX_HORIZON: usize = 1000;
/// The levels a forecast's intervals are given at unless asked otherwise, in percent.
pub const DEFAULT_LEVELS: [f64; 2] = [80.0, 95.0];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForecastError {
    /// A row the series cannot take (duplicate time, NaN, a time off the grain).
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Grain(String),
    /// An option out of range or not known.
    #[error("{0}")]
    Option(String),
    #[error("a forecast needs at least {MIN_POINTS} points of history; the series has {points}")]
    TooShort { points: usize },
    #[error("no model could forecast this series: {0}")]
    NoModel(String),
}

/// What to forecast: how far, at which interval levels, and optionally with which season or
/// model instead of the ones the data and the backtest choose.
#[derive(Debug, Clone)]
pub struct Request {
    pub horizon: usize,
    pub levels: Vec<f64>,
    /// The season in grains (0 or 1 for none); detected from the grain and the data when `None`.
    pub season: Option<usize>,
    pub model: Option<Model>,
}

impl Request {
    pub fn new(horizon: usize) -> Request {
        Request { horizon, levels: DEFAULT_LEVELS.to_vec(), season: None, model: None }
    }

    fn check(&self, points: usize) -> Result<(), ForecastError> {
        if points < MIN_POINTS {
            return Err(ForecastError::TooShort { points });
        }
        if self.horizon == 0 || self.horizon > MAX_HORIZON {
            return Err(ForecastError::Option(format!("horizon {}: give 1 to {MAX_HORIZON} steps", self.horizon)));
        }
        if self.horizon > points {
            return Err(ForecastError::Option(format!(
                "horizon {}: a forecast may reach as far ahead as the history reaches back, here {points} steps",
                self.horizon
            )));
        }
        if let Some(level) = self.levels.iter().find(|level| !(50.0..100.0).contains(*level)) {
            return Err(ForecastError::Option(format!(
                "level {level}: give a percentage from 50 to below 100, e.g. 95"
            )));
        }
        if self.levels.is_empty() {
            return Err(ForecastError::Option("give at least one interval level, e.g. 95".to_string()));
        }
        Ok(())
    }
}

/// An interval at one level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bound {
    pub level: f64,
    pub lower: f64,
    pub upper: f64,
}

/// One step of the forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub time: NaiveDateTime,
    pub value: f64,
    pub bounds: Vec<Bound>,
}

/// A forecast and how it was made.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub grain: Grain,
    /// The seasons the models used, in grains; empty when none.
    pub seasons: Vec<usize>,
    /// The chosen model's name, e.g. `theta` or `combination(theta, holt_winters, mstl)`.
    pub model: String,
    pub members: Vec<Model>,
    pub history: Vec<(NaiveDateTime, f64)>,
    pub forecast: Vec<Point>,
    pub backtest: Option<Backtest>,
    /// Every fallback taken and every value changed, in words.
    pub notes: Vec<String>,
}

/// The models tried when the series is too short to backtest: robust, non-seasonal, combined.
const UNTESTED: [Model; 3] = [Model::Ses, Model::HoltDamped, Model::Theta];

/// Forecasts `series` as `request` asks.
pub fn forecast(series: &Series, request: &Request) -> Result<Outcome, ForecastError> {
    let y = &series.values;
    let n = y.len();
    request.check(n)?;
    let mut notes = Vec::new();
    if series.filled > 0 {
        let how = match series.fill {
            Fill::Zero => "as zero",
            Fill::Interpolate => "by straight lines between their neighbours",
        };
        notes.push(format!("{} missing {}s filled {how}", series.filled, series.grain));
    }
    let seasons = seasons(y, series.grain, request.season, &mut notes);
    let constant = y.iter().all(|v| *v == y[0]);
    let candidates: Vec<Model> = match request.model {
        Some(model) => vec![model],
        None if constant => {
            notes.push(format!("the history is constant at {}; the forecast holds it", y[0]));
            vec![Model::Naive]
        }
        None => Model::ALL
            .into_iter()
            .filter(|m| !m.seasonal() || !seasons.is_empty())
            .filter(|m| !m.needs_positive() || y.iter().all(|v| *v > 0.0))
            .collect(),
    };
    let backtest = if candidates.len() > 1 {
        select::backtest(y, &seasons, request.horizon, &candidates, &request.levels)
    } else {
        None
    };
    let members: Vec<Model> = match backtest.as_ref().and_then(Backtest::best) {
        Some(best) => best.members.clone(),
        None if candidates.len() > 1 => {
            notes.push(format!(
                "{n} points are too few to backtest; the forecast is the mean of simple exponential smoothing, damped Holt and Theta"
            ));
            UNTESTED.to_vec()
        }
        None => candidates,
    };
    let mut failures = Vec::new();
    let predictions: Vec<models::Prediction> = members
        .iter()
        .filter_map(|&model| models::predict(model, y, &seasons, request.horizon).map_err(|e| failures.push(e)).ok())
        .collect();
    if predictions.is_empty() {
        return Err(ForecastError::NoModel(failures.join("; ")));
    }
    let combined = select::Combined::of(&predictions, &request.levels);
    let non_negative = y.iter().all(|v| *v >= 0.0);
    let mut clamped = 0;
    let mut clamp = |v: f64| {
        if non_negative && v < 0.0 {
            clamped += 1;
            0.0
        } else {
            v
        }
    };
    let mut forecast = Vec::with_capacity(request.horizon);
    for k in 0..request.horizon {
        let time = series
            .time(n + k)
            .ok_or_else(|| ForecastError::Input("the forecast runs past the calendar's end".into()))?;
        let value = clamp(combined.median[k]);
        let bounds = request
            .levels
            .iter()
            .zip(&combined.bounds)
            .map(|(level, (lower, upper))| Bound { level: *level, lower: clamp(lower[k]), upper: clamp(upper[k]) })
            .collect();
        forecast.push(Point { time, value, bounds });
    }
    if clamped > 0 {
        notes.push(format!("{clamped} forecast values below zero raised to 0: the history has no negative value"));
    }
    let model = match members.as_slice() {
        [one] => one.name().to_string(),
        many => format!("combination({})", many.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")),
    };
    let history = (0..n).filter_map(|i| series.time(i).map(|t| (t, y[i]))).collect();
    Ok(Outcome { grain: series.grain, seasons, model, members, history, forecast, backtest, notes })
}

/// The seasons to model: the one asked for, or the grain's that the history holds twice and
/// shows in its autocorrelation. Says why a grain's season was left out.
pub fn seasons(y: &[f64], grain: Grain, asked: Option<usize>, notes: &mut Vec<String>) -> Vec<usize> {
    let n = y.len();
    if let Some(m) = asked {
        if m >= 2 && n < 2 * m {
            notes.push(format!("{n} points are fewer than two seasons of {m}; seasonal models left out"));
        }
        return if m >= 2 && n >= 2 * m { vec![m] } else { Vec::new() };
    }
    let mut found = Vec::new();
    for &m in grain.seasons() {
        if n < 2 * m {
            if found.is_empty() && m == grain.seasons()[0] {
                notes.push(format!("{n} {grain}s are fewer than two seasons of {m}; seasonal models left out"));
            }
        } else if models::seasonal_test(y, m) {
            found.push(m);
        } else if m == grain.seasons()[0] {
            notes.push(format!("no season of {m} {grain}s found in the history"));
        }
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::NaiveDate;

    /// The classic Box & Jenkins airline data (R's `datasets::AirPassengers`), 1949–1960.
    pub const AIR_PASSENGERS: &[f64] = &[
        112., 118., 132., 129., 121., 135., 148., 148., 136., 119., 104., 118., 115., 126., 141., 135., 125., 149.,
        170., 170., 158., 133., 114., 140., 145., 150., 178., 163., 172., 178., 199., 199., 184., 162., 146., 166.,
        171., 180., 193., 181., 183., 218., 230., 242., 209., 191., 172., 194., 196., 196., 236., 235., 229., 243.,
        264., 272., 237., 211., 180., 201., 204., 188., 235., 227., 234., 264., 302., 293., 259., 229., 203., 229.,
        242., 233., 267., 269., 270., 315., 364., 347., 312., 274., 237., 278., 284., 277., 317., 313., 318., 374.,
        413., 405., 355., 306., 271., 306., 315., 301., 356., 348., 355., 422., 465., 467., 404., 347., 305., 336.,
        340., 318., 362., 348., 363., 435., 491., 505., 404., 359., 310., 337., 360., 342., 406., 396., 420., 472.,
        548., 559., 463., 407., 362., 405., 417., 391., 419., 461., 472., 535., 622., 606., 508., 461., 390., 432.,
    ];

    fn monthly(values: &[f64]) -> Series {
        let start = NaiveDate::from_ymd_opt(1949, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).unwrap();
        let rows = values.iter().enumerate().map(|(i, v)| (Grain::Month.add(start, i).unwrap(), Some(*v))).collect();
        Series::from_rows(rows, Some(Grain::Month), Fill::Zero).unwrap()
    }

    #[test]
    fn air_passengers_next_year_inside_its_bands() {
        let outcome = forecast(&monthly(AIR_PASSENGERS), &Request::new(12)).unwrap();
        assert_eq!(outcome.seasons, vec![12]);
        assert_eq!(outcome.forecast.len(), 12);
        assert_eq!(show_time(outcome.forecast[0].time), "1961-01-01");
        for point in &outcome.forecast {
            let [b80, b95] = [point.bounds[0], point.bounds[1]];
            assert!(
                b95.lower <= b80.lower
                    && b80.lower <= point.value
                    && point.value <= b80.upper
                    && b80.upper <= b95.upper
            );
        }
        // July is the busiest month every year.
        let july = outcome.forecast[6].value;
        assert!(outcome.forecast.iter().all(|p| p.value <= july), "{:?}", outcome.forecast);
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let series = monthly(AIR_PASSENGERS);
        let err = |request: Request| forecast(&series, &request).unwrap_err().to_string();
        assert!(err(Request::new(0)).contains("horizon 0: give 1 to 1000"));
        assert!(err(Request::new(5000)).contains("horizon 5000: give 1 to 1000"));
        assert!(err(Request::new(200)).contains("as far ahead as the history reaches back, here 144"));
        assert!(err(Request { levels: vec![120.0], ..Request::new(3) }).contains("level 120"));
        let one = Series::from_rows(vec![(series.start, Some(5.0))], Some(Grain::Month), Fill::Zero);
        assert_eq!(one.unwrap_err(), ForecastError::TooShort { points: 1 });
    }

    #[test]
    fn all_zeros_and_constants_hold_their_value() {
        for value in [0.0, 7.5] {
            let outcome = forecast(&monthly(&[value; 30]), &Request::new(6)).unwrap();
            assert!(
                outcome
                    .forecast
                    .iter()
                    .all(|p| p.value == value && p.bounds.iter().all(|b| b.lower == value && b.upper == value))
            );
            assert!(outcome.notes.iter().any(|n| n.contains("constant")), "{:?}", outcome.notes);
        }
    }

    #[test]
    fn short_and_falling_series_fall_back_and_say_so() {
        let short: Vec<f64> = (0..10).map(|i| 100.0 - 10.0 * i as f64).collect();
        let outcome = forecast(&monthly(&short), &Request::new(10)).unwrap();
        assert!(outcome.seasons.is_empty());
        assert!(outcome.notes.iter().any(|n| n.contains("fewer than two seasons of 12")), "{:?}", outcome.notes);
        assert!(outcome.notes.iter().any(|n| n.contains("raised to 0")), "{:?}", outcome.notes);
        assert!(outcome.forecast.iter().all(|p| p.value >= 0.0 && p.bounds.iter().all(|b| b.lower >= 0.0)));
        let tiny = forecast(&monthly(&[3.0, 4.0, 6.0]), &Request::new(2)).unwrap();
        assert!(tiny.notes.iter().any(|n| n.contains("too few to backtest")), "{:?}", tiny.notes);
        assert!(tiny.forecast.iter().all(|p| p.value.is_finite()));
    }
}
