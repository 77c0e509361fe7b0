//! Choosing the model per series by rolling-origin backtest: each candidate is fitted on the
//! history up to an origin and scored on the points after it, at up to three origins one horizon
//! apart. The best few are also combined (the mean of their forecasts and of their bounds), which
//! the M3 and M4 competitions found more accurate than any one of them more often than not; the
//! combination is chosen when its backtest says so.

use serde::Serialize;

use super::models::{self, Model, Prediction};

/// How many of the best models a combination averages.
const COMBINED: usize = 3;
/// The most origins a backtest scores.
const WINDOWS: usize = 3;

/// The z of a two-sided normal interval at `level` percent.
pub fn z(level: f64) -> f64 {
    distrs::Normal::ppf(0.5 + level / 200.0, 0.0, 1.0)
}

/// One candidate's (or combination's) backtest.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub model: String,
    pub members: Vec<Model>,
    /// Mean absolute error over the in-sample seasonal naive's (lag 1 without a season).
    pub mase: f64,
    /// Symmetric mean absolute percentage error, 0 to 200.
    pub smape: f64,
    /// Share of held-out points inside the interval, per level, in the request's order.
    pub coverage: Vec<f64>,
}

/// The whole backtest: what was held out and every candidate's score, best first.
#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    pub windows: usize,
    pub horizon: usize,
    pub scores: Vec<Score>,
}

impl Backtest {
    pub fn best(&self) -> Option<&Score> {
        self.scores.first()
    }

    /// The score of the baseline the others are read against: seasonal naive, or naive.
    pub fn baseline(&self) -> Option<&Score> {
        let is = |model: Model| self.scores.iter().find(|s| s.members == [model]);
        is(Model::SeasonalNaive).or_else(|| is(Model::Naive))
    }
}

/// Forecasts from several models, averaged: the mean of their medians and of their bounds.
#[derive(Debug, Clone)]
pub struct Combined {
    pub median: Vec<f64>,
    /// (lower, upper) per level.
    pub bounds: Vec<(Vec<f64>, Vec<f64>)>,
}

impl Combined {
    pub fn of(predictions: &[Prediction], levels: &[f64]) -> Combined {
        let count = predictions.len().max(1) as f64;
        let h = predictions.first().map_or(0, |p| p.point.len());
        let mut median = vec![0.0; h];
        let mut bounds = vec![(vec![0.0; h], vec![0.0; h]); levels.len()];
        for prediction in predictions {
            add(&mut median, &prediction.median(), count);
            for (level, (lower, upper)) in levels.iter().zip(bounds.iter_mut()) {
                let (l, u) = prediction.bounds(z(*level));
                add(lower, &l, count);
                add(upper, &u, count);
            }
        }
        Combined { median, bounds }
    }
}

fn add(into: &mut [f64], values: &[f64], count: f64) {
    into.iter_mut().zip(values).for_each(|(sum, v)| *sum += v / count);
}

/// The least history a backtest fits on: two seasons when seasonal models are in play.
pub fn least_training(seasons: &[usize], candidates: &[Model]) -> usize {
    let m = seasons.first().copied().unwrap_or(1);
    if candidates.iter().any(|c| c.seasonal()) { (2 * m).max(6) } else { 6 }
}

/// Backtests `candidates` on `y`, best first, or `None` when the series is too short to hold
/// any points out.
pub fn backtest(
    y: &[f64],
    seasons: &[usize],
    horizon: usize,
    candidates: &[Model],
    levels: &[f64],
) -> Option<Backtest> {
    let n = y.len();
    let spare = n.checked_sub(least_training(seasons, candidates)).filter(|&spare| spare > 0)?;
    let horizon = horizon.min(spare);
    let windows = (spare / horizon).min(WINDOWS);
    let origins: Vec<usize> = (1..=windows).map(|w| n - w * horizon).collect();
    // Per candidate, its prediction at each origin; a candidate that fails at any is dropped.
    let mut runs: Vec<(Model, Vec<Prediction>)> = Vec::new();
    for &model in candidates {
        let predictions: Result<Vec<Prediction>, String> =
            origins.iter().map(|&origin| models::predict(model, &y[..origin], seasons, horizon)).collect();
        if let Ok(predictions) = predictions {
            runs.push((model, predictions));
        }
    }
    let score = |name: String, members: Vec<Model>, per_origin: Vec<Combined>| {
        let mut tally = Tally::new(levels.len());
        for (origin, combined) in origins.iter().zip(&per_origin) {
            tally.add(&y[..*origin], &y[*origin..*origin + horizon], combined, seasons);
        }
        tally.score(name, members)
    };
    let mut scores: Vec<Score> = runs
        .iter()
        .map(|(model, predictions)| {
            let per_origin = predictions.iter().map(|p| Combined::of(std::slice::from_ref(p), levels)).collect();
            score(model.name().to_string(), vec![*model], per_origin)
        })
        .collect();
    sort(&mut scores);
    if scores.len() >= COMBINED {
        let members: Vec<Model> = scores[..COMBINED].iter().flat_map(|s| s.members.clone()).collect();
        let per_origin = (0..origins.len())
            .map(|w| {
                let picked: Vec<Prediction> =
                    runs.iter().filter(|(model, _)| members.contains(model)).map(|(_, p)| p[w].clone()).collect();
                Combined::of(&picked, levels)
            })
            .collect();
        let name = format!("combination({})", members.iter().map(|m| m.name()).collect::<Vec<_>>().join(", "));
        scores.push(score(name, members, per_origin));
        sort(&mut scores);
    }
    Some(Backtest { windows, horizon, scores })
}

fn sort(scores: &mut [Score]) {
    scores.sort_by(|a, b| a.mase.total_cmp(&b.mase).then(a.members.len().cmp(&b.members.len())));
}

/// Sums of errors over the backtest's origins.
struct Tally {
    mase: f64,
    smape: f64,
    covered: Vec<usize>,
    origins: usize,
    points: usize,
}

impl Tally {
    fn new(levels: usize) -> Tally {
        Tally { mase: 0.0, smape: 0.0, covered: vec![0; levels], origins: 0, points: 0 }
    }

    fn add(&mut self, train: &[f64], actual: &[f64], forecast: &Combined, seasons: &[usize]) {
        let scale = mase_scale(train, seasons.first().copied().unwrap_or(1));
        let errors: f64 = actual.iter().zip(&forecast.median).map(|(a, f)| (a - f).abs()).sum();
        self.mase += errors / actual.len() as f64 / scale;
        self.smape +=
            actual.iter().zip(&forecast.median).map(|(a, f)| smape(*a, *f)).sum::<f64>() / actual.len() as f64;
        for (covered, (lower, upper)) in self.covered.iter_mut().zip(&forecast.bounds) {
            *covered += actual.iter().enumerate().filter(|(i, a)| lower[*i] <= **a && **a <= upper[*i]).count();
        }
        self.origins += 1;
        self.points += actual.len();
    }

    fn score(self, model: String, members: Vec<Model>) -> Score {
        let origins = self.origins.max(1) as f64;
        let points = self.points.max(1) as f64;
        Score {
            model,
            members,
            mase: self.mase / origins,
            smape: self.smape / origins,
            coverage: self.covered.iter().map(|c| *c as f64 / points).collect(),
        }
    }
}

/// The in-sample mean absolute error of the seasonal naive (lag `m`), or of the naive when that is
/// zero, or 1 for a constant history (errors are then read in the series' units).
pub fn mase_scale(train: &[f64], m: usize) -> f64 {
    let lag_mean = |lag: usize| {
        let diffs: Vec<f64> = (lag..train.len()).map(|t| (train[t] - train[t - lag]).abs()).collect();
        if diffs.is_empty() { 0.0 } else { diffs.iter().sum::<f64>() / diffs.len() as f64 }
    };
    [lag_mean(m.max(1)), lag_mean(1)].into_iter().find(|s| *s > 0.0).unwrap_or(1.0)
}

/// sMAPE of one point, in percent; 0 when both are 0.
pub fn smape(actual: f64, forecast: f64) -> f64 {
    let denominator = actual.abs() + forecast.abs();
    if denominator == 0.0 { 0.0 } else { 200.0 * (actual - forecast).abs() / denominator }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backtest_ranks_a_seasonal_model_above_the_naive_on_air_passengers() {
        let y = super::super::tests::AIR_PASSENGERS;
        let backtest = backtest(y, &[12], 12, &Model::ALL, &[80.0, 95.0]).unwrap();
        assert_eq!(backtest.windows, 3);
        let best = backtest.best().unwrap();
        let naive = backtest.scores.iter().find(|s| s.members == [Model::Naive]).unwrap();
        assert!(best.mase < naive.mase / 2.0, "{best:?} against {naive:?}");
        assert!(best.coverage[0] <= best.coverage[1]);
    }

    #[test]
    fn metrics_of_known_values() {
        assert_eq!(smape(0.0, 0.0), 0.0);
        assert!((smape(100.0, 50.0) - 200.0 * 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(mase_scale(&[5.0, 5.0, 5.0], 1), 1.0);
        assert_eq!(mase_scale(&[1.0, 2.0, 4.0], 1), 1.5);
        assert!((z(95.0) - 1.959_964).abs() < 1e-5);
    }
}
