//! The models a series can be forecast with, each fitted to the values alone and answering a
//! point forecast and a standard deviation per step ahead (intervals are normal around them).
//!
//! MSTL comes from `augurs` (its STL decomposition and AutoETS trend). augurs has no seasonal
//! exponential smoothing, no Theta and no baselines, so those are written here, after Hyndman et
//! al., *Forecasting with Exponential Smoothing* (2008), for the state-space recursions and their
//! variances, and Hyndman & Billah (2003) for Theta as simple exponential smoothing with drift.
//! Parameters are fitted by Nelder–Mead (`argmin`) on the one-step squared errors.

use argmin::core::{CostFunction, Executor};
use argmin::solver::neldermead::NelderMead;
use augurs_core::{Fit, Predict};
use augurs_ets::AutoETS;
use augurs_mstl::MSTLModel;
use serde::Serialize;

use super::ForecastError;

/// The z of a two-sided 95 % normal interval, used to read a standard deviation back from
/// augurs' intervals.
const Z95: f64 = 1.959_963_984_540_054;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// The last value, carried forward.
    Naive,
    /// The value one season before.
    SeasonalNaive,
    /// The line from the first value to the last, extended.
    Drift,
    /// The value one season before, moved by the change from one season to the next as damped
    /// Holt forecasts it (of the logarithm when every value is above zero): growth with seasons.
    SeasonalDrift,
    /// Simple exponential smoothing, ETS(A,N,N).
    Ses,
    /// Holt's linear trend, damped: ETS(A,Ad,N).
    HoltDamped,
    /// Holt-Winters with a damped trend and additive seasons: ETS(A,Ad,A).
    HoltWinters,
    /// Holt-Winters fitted to the logarithm: a trend and seasons that scale with the level.
    HoltWintersLog,
    /// Theta: exponential smoothing with half the linear trend, on seasonally adjusted values.
    Theta,
    /// STL decomposition over each season, with an AutoETS trend (augurs).
    Mstl,
}

impl Model {
    pub const ALL: [Model; 10] = [
        Model::Naive,
        Model::SeasonalNaive,
        Model::Drift,
        Model::SeasonalDrift,
        Model::Ses,
        Model::HoltDamped,
        Model::HoltWinters,
        Model::HoltWintersLog,
        Model::Theta,
        Model::Mstl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Model::Naive => "naive",
            Model::SeasonalNaive => "seasonal_naive",
            Model::Drift => "drift",
            Model::SeasonalDrift => "seasonal_drift",
            Model::Ses => "ses",
            Model::HoltDamped => "holt_damped",
            Model::HoltWinters => "holt_winters",
            Model::HoltWintersLog => "holt_winters_log",
            Model::Theta => "theta",
            Model::Mstl => "mstl",
        }
    }

    pub fn parse(text: &str) -> Result<Model, ForecastError> {
        Model::ALL.into_iter().find(|model| model.name() == text.trim()).ok_or_else(|| {
            let names: Vec<&str> = Model::ALL.iter().map(|model| model.name()).collect();
            ForecastError::Option(format!("unknown model {text:?}: use auto or one of {}", names.join(", ")))
        })
    }

    /// Whether the model needs a season, and two of them in the history.
    pub fn seasonal(self) -> bool {
        matches!(
            self,
            Model::SeasonalNaive | Model::SeasonalDrift | Model::HoltWinters | Model::HoltWintersLog | Model::Mstl
        )
    }

    /// Whether the model needs every value above zero.
    pub fn needs_positive(self) -> bool {
        self == Model::HoltWintersLog
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A model's forecast: a point and a standard deviation per step ahead, both of the logarithm
/// when `log`.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub point: Vec<f64>,
    pub sd: Vec<f64>,
    pub log: bool,
}

impl Prediction {
    /// The point forecast in the series' own units (the median, for a model of the logarithm).
    pub fn median(&self) -> Vec<f64> {
        if self.log { self.point.iter().map(|p| p.exp()).collect() } else { self.point.clone() }
    }

    /// The interval `z` standard deviations either side of the point, in the series' units.
    pub fn bounds(&self, z: f64) -> (Vec<f64>, Vec<f64>) {
        let side = |sign: f64| -> Vec<f64> {
            self.point
                .iter()
                .zip(&self.sd)
                .map(|(p, sd)| {
                    let bound = p + sign * z * sd;
                    if self.log { bound.exp() } else { bound }
                })
                .collect()
        };
        (side(-1.0), side(1.0))
    }

    fn finite(self, model: Model) -> Result<Prediction, String> {
        let (lower, upper) = self.bounds(Z95);
        let mut all = self.median().into_iter().chain(lower).chain(upper);
        if all.all(f64::is_finite) { Ok(self) } else { Err(format!("{model} gave a value that is not a number")) }
    }
}

/// Fits `model` to `y` with the given seasons (primary first; empty for none) and forecasts `h`
/// steps. An error says why this model cannot take this series; callers try the others.
pub fn predict(model: Model, y: &[f64], seasons: &[usize], h: usize) -> Result<Prediction, String> {
    let m = seasons.first().copied().filter(|&m| m >= 2 && y.len() >= 2 * m);
    if model.seasonal() && m.is_none() {
        return Err(format!("{model} needs two full seasons of history"));
    }
    if model.needs_positive() && y.iter().any(|v| *v <= 0.0) {
        return Err(format!("{model} needs every value above zero"));
    }
    let m = m.unwrap_or(0);
    let prediction = match model {
        Model::Naive => seasonal_naive(y, 1, h),
        Model::SeasonalNaive => seasonal_naive(y, m, h),
        Model::Drift => drift(y, h),
        Model::SeasonalDrift => seasonal_drift(y, m, h),
        Model::Ses => Ets::new(y, 0, false).forecast(h),
        Model::HoltDamped => Ets::new(y, 0, true).forecast(h),
        Model::HoltWinters => Ets::new(y, m, true).forecast(h),
        Model::HoltWintersLog => {
            let logs: Vec<f64> = y.iter().map(|v| v.ln()).collect();
            Prediction { log: true, ..Ets::new(&logs, m, true).forecast(h) }
        }
        Model::Theta => theta(y, m, h),
        Model::Mstl => mstl(y, seasons, h)?,
    };
    prediction.finite(model)
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 }
}

/// Root mean square of `errors` over `dof` degrees of freedom (at least one).
fn sigma(errors: impl Iterator<Item = f64>, params: usize) -> f64 {
    let (sum, count) = errors.fold((0.0, 0usize), |(sum, count), e| (sum + e * e, count + 1));
    (sum / count.saturating_sub(params).max(1) as f64).sqrt()
}

fn seasonal_naive(y: &[f64], m: usize, h: usize) -> Prediction {
    let n = y.len();
    let m = m.clamp(1, n);
    let sd = sigma((m..n).map(|t| y[t] - y[t - m]), 0);
    Prediction {
        point: (0..h).map(|k| y[n - m + k % m]).collect(),
        sd: (0..h).map(|k| sd * ((k / m + 1) as f64).sqrt()).collect(),
        log: false,
    }
}

fn drift(y: &[f64], h: usize) -> Prediction {
    let n = y.len();
    let slope = (y[n - 1] - y[0]) / (n - 1).max(1) as f64;
    let sd = sigma((1..n).map(|t| y[t] - y[t - 1] - slope), 1);
    Prediction {
        point: (1..=h).map(|k| y[n - 1] + k as f64 * slope).collect(),
        sd: (1..=h).map(|k| sd * (k as f64 * (1.0 + k as f64 / (n - 1).max(1) as f64)).sqrt()).collect(),
        log: false,
    }
}

fn seasonal_drift(y: &[f64], m: usize, h: usize) -> Prediction {
    let log = y.iter().all(|v| *v > 0.0);
    let values: Vec<f64> = if log { y.iter().map(|v| v.ln()).collect() } else { y.to_vec() };
    let n = values.len();
    let changes: Vec<f64> = (m..n).map(|t| values[t] - values[t - m]).collect();
    let change = Ets::new(&changes, 0, true).forecast(h);
    let mut point: Vec<f64> = Vec::with_capacity(h);
    let mut sd: Vec<f64> = Vec::with_capacity(h);
    for k in 0..h {
        // A season ago: history for the first season ahead, this forecast after it.
        let (base, base_sd) = if k < m { (values[n - m + k], 0.0) } else { (point[k - m], sd[k - m]) };
        point.push(base + change.point[k]);
        sd.push((base_sd * base_sd + change.sd[k] * change.sd[k]).sqrt());
    }
    Prediction { point, sd, log }
}

/// Additive-error exponential smoothing: level, optionally a damped trend, optionally additive
/// seasons of length `m`. Fitted parameters: α, β, γ, φ and the initial level and trend.
struct Ets<'a> {
    y: &'a [f64],
    m: usize,
    trend: bool,
    /// The first season's deviations from its mean: the initial seasons, not fitted.
    seasons: Vec<f64>,
    scale: f64,
}

#[derive(Debug, Clone, Copy)]
struct EtsParams {
    alpha: f64,
    beta: f64,
    gamma: f64,
    phi: f64,
    level: f64,
    slope: f64,
}

impl<'a> Ets<'a> {
    fn new(y: &'a [f64], m: usize, trend: bool) -> Ets<'a> {
        let first = &y[..m.min(y.len())];
        let first_mean = mean(first);
        let seasons = first.iter().map(|v| v - first_mean).collect();
        let scale = {
            let spread = y.iter().map(|v| (v - mean(y)).abs()).sum::<f64>() / y.len() as f64;
            if spread > 0.0 { spread } else { mean(y).abs().max(1.0) }
        };
        Ets { y, m, trend, seasons, scale }
    }

    /// The starting guess: smoothing at textbook values, the level and trend from the first
    /// season(s) (or the first values).
    fn start(&self) -> EtsParams {
        let y = self.y;
        let (level, slope) = if self.m >= 2 {
            let first = mean(&y[..self.m]);
            let second = mean(&y[self.m..(2 * self.m).min(y.len())]);
            (first, (second - first) / self.m as f64)
        } else {
            let k = (y.len() - 1).min(4);
            (y[0], if k > 0 { (y[k] - y[0]) / k as f64 } else { 0.0 })
        };
        EtsParams { alpha: 0.3, beta: 0.05, gamma: 0.1, phi: 0.95, level, slope: if self.trend { slope } else { 0.0 } }
    }

    fn pack(&self, p: &EtsParams) -> Vec<f64> {
        let mut v = vec![p.alpha, p.level / self.scale];
        if self.trend {
            v.extend([p.beta, p.phi, p.slope / self.scale]);
        }
        if self.m >= 2 {
            v.push(p.gamma);
        }
        v
    }

    /// The parameters in `v`, or `None` outside the region where the model is stable and
    /// forecastable (Hyndman et al.'s usual bounds).
    fn unpack(&self, v: &[f64]) -> Option<EtsParams> {
        let mut p = EtsParams { alpha: v[0], level: v[1] * self.scale, beta: 0.0, phi: 1.0, slope: 0.0, gamma: 0.0 };
        let mut next = 2;
        if self.trend {
            (p.beta, p.phi, p.slope) = (v[2], v[3], v[4] * self.scale);
            next = 5;
        }
        if self.m >= 2 {
            p.gamma = v[next];
        }
        let ok = (1e-4..=0.9999).contains(&p.alpha)
            && (!self.trend || ((1e-4..=p.alpha).contains(&p.beta) && (0.8..=0.98).contains(&p.phi)))
            && (self.m < 2 || (1e-4..=(1.0 - p.alpha)).contains(&p.gamma));
        ok.then_some(p)
    }

    /// Runs the recursion over the history: the sum of squared one-step errors, and the final
    /// level, trend and seasons (indexed by time modulo the season).
    fn run(&self, p: &EtsParams) -> (f64, f64, f64, Vec<f64>) {
        let (mut level, mut slope) = (p.level, p.slope);
        let mut seasons = self.seasons.clone();
        let mut sse = 0.0;
        for (t, y) in self.y.iter().enumerate() {
            let season = if self.m >= 2 { seasons[t % self.m] } else { 0.0 };
            let error = y - (level + p.phi * slope + season);
            sse += error * error;
            level = level + p.phi * slope + p.alpha * error;
            slope = p.phi * slope + p.beta * error;
            if self.m >= 2 {
                seasons[t % self.m] = season + p.gamma * error;
            }
        }
        (sse, level, slope, seasons)
    }

    fn fit(&self) -> EtsParams {
        let start = self.start();
        let best = minimise(&self.pack(&start), |v| match self.unpack(v) {
            Some(p) => self.run(&p).0,
            None => f64::MAX,
        });
        best.and_then(|v| self.unpack(&v)).unwrap_or(start)
    }

    fn forecast(&self, h: usize) -> Prediction {
        let p = self.fit();
        let (sse, level, slope, seasons) = self.run(&p);
        let n = self.y.len();
        let params = self.pack(&p).len();
        let sd = (sse / n.saturating_sub(params).max(1) as f64).sqrt();
        let mut damped_sum = 0.0;
        let mut phi_power = 1.0;
        let mut point = Vec::with_capacity(h);
        let mut sds = Vec::with_capacity(h);
        let mut spread: f64 = 1.0;
        for k in 1..=h {
            phi_power *= p.phi;
            damped_sum += phi_power;
            let season = if self.m >= 2 { seasons[(n + k - 1) % self.m] } else { 0.0 };
            point.push(level + damped_sum * slope + season);
            sds.push(sd * spread.sqrt());
            // c_k = α + β φ_k + γ [k is a whole number of seasons], Hyndman et al. (2008) table 6.1.
            let seasonal = if self.m >= 2 && k.is_multiple_of(self.m) { p.gamma } else { 0.0 };
            let c = p.alpha + p.beta * damped_sum + seasonal;
            spread += c * c;
        }
        Prediction { point, sd: sds, log: false }
    }
}

/// Nelder–Mead from `start`, each coordinate first stepped by a tenth (or 0.05 for values below
/// one, the smoothing parameters). `None` when the solver fails.
fn minimise(start: &[f64], cost: impl Fn(&[f64]) -> f64) -> Option<Vec<f64>> {
    struct Problem<F>(F);
    impl<F: Fn(&[f64]) -> f64> CostFunction for Problem<F> {
        type Param = Vec<f64>;
        type Output = f64;
        fn cost(&self, param: &Vec<f64>) -> Result<f64, argmin::core::Error> {
            Ok((self.0)(param))
        }
    }
    let mut simplex = vec![start.to_vec()];
    for i in 0..start.len() {
        let mut vertex = start.to_vec();
        vertex[i] += if vertex[i].abs() < 1.0 { 0.05 } else { 0.1 * vertex[i].abs() };
        simplex.push(vertex);
    }
    let solver = NelderMead::new(simplex).with_sd_tolerance(1e-8).ok()?;
    let result = Executor::new(Problem(cost), solver).configure(|state| state.max_iters(400)).run().ok()?;
    result.state.best_param
}

/// Theta (Hyndman & Billah 2003): simple exponential smoothing of the seasonally adjusted values
/// plus half their linear-regression slope; seasons by classical multiplicative decomposition when
/// the values are positive and the autocorrelation at the season is significant.
fn theta(y: &[f64], m: usize, h: usize) -> Prediction {
    let n = y.len();
    let indices =
        (m >= 2 && y.iter().all(|v| *v > 0.0) && seasonal_test(y, m)).then(|| seasonal_indices(y, m)).flatten();
    let adjusted: Vec<f64> = match &indices {
        Some(indices) => y.iter().enumerate().map(|(t, v)| v / indices[t % m]).collect(),
        None => y.to_vec(),
    };
    let ses = Ets::new(&adjusted, 0, false);
    let p = ses.fit();
    let (sse, level, _, _) = ses.run(&p);
    let sd = (sse / (n.saturating_sub(2)).max(1) as f64).sqrt();
    let slope = regression_slope(&adjusted);
    let alpha = p.alpha;
    let tail = (1.0 - alpha).powi(i32::try_from(n).unwrap_or(i32::MAX)) / alpha;
    let mut point = Vec::with_capacity(h);
    let mut sds = Vec::with_capacity(h);
    for k in 1..=h {
        let index = indices.as_ref().map_or(1.0, |indices| indices[(n + k - 1) % m]);
        point.push((level + slope / 2.0 * (k as f64 - 1.0 + 1.0 / alpha - tail)) * index);
        sds.push(sd * (1.0 + (k as f64 - 1.0) * alpha * alpha).sqrt() * index);
    }
    Prediction { point, sd: sds, log: false }
}

fn regression_slope(y: &[f64]) -> f64 {
    let n = y.len() as f64;
    let t_mean = (n - 1.0) / 2.0;
    let y_mean = mean(y);
    let (cov, var) = y.iter().enumerate().fold((0.0, 0.0), |(cov, var), (t, v)| {
        let dt = t as f64 - t_mean;
        (cov + dt * (v - y_mean), var + dt * dt)
    });
    if var > 0.0 { cov / var } else { 0.0 }
}

/// Autocorrelation of `y` at `lag`.
fn autocorrelation(y: &[f64], lag: usize) -> f64 {
    let mean = mean(y);
    let var: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
    if var == 0.0 || lag >= y.len() {
        return 0.0;
    }
    (lag..y.len()).map(|t| (y[t] - mean) * (y[t - lag] - mean)).sum::<f64>() / var
}

/// Whether the autocorrelation at the season is significant at 90 % (the test Theta and
/// Hyndman's `forecast` use), in the values or in their changes from one point to the next: a
/// strong trend makes every lag of the values alike and hides the season, their changes show it.
/// With fewer than three seasons there is too little to test, and the grain's season is trusted.
pub fn seasonal_test(y: &[f64], m: usize) -> bool {
    let n = y.len();
    if n < 3 * m {
        return true;
    }
    let significant = |y: &[f64]| {
        let sum: f64 = (1..m).map(|k| autocorrelation(y, k).powi(2)).sum();
        autocorrelation(y, m).abs() > 1.645 * ((1.0 + 2.0 * sum) / y.len() as f64).sqrt()
    };
    let changes: Vec<f64> = y.windows(2).map(|pair| pair[1] - pair[0]).collect();
    significant(y) || significant(&changes)
}

/// Classical multiplicative seasonal indices (mean 1) from a centred moving average.
fn seasonal_indices(y: &[f64], m: usize) -> Option<Vec<f64>> {
    let n = y.len();
    let half = m / 2;
    let mut sums = vec![0.0; m];
    let mut counts = vec![0usize; m];
    for t in half..n.saturating_sub(half) {
        let trend = if m.is_multiple_of(2) {
            (0.5 * y[t - half] + y[t + 1 - half..t + half].iter().sum::<f64>() + 0.5 * y[t + half]) / m as f64
        } else {
            y[t - half..=t + half].iter().sum::<f64>() / m as f64
        };
        if trend > 0.0 {
            sums[t % m] += y[t] / trend;
            counts[t % m] += 1;
        }
    }
    if counts.contains(&0) {
        return None;
    }
    let raw: Vec<f64> = sums.iter().zip(&counts).map(|(s, c)| s / *c as f64).collect();
    let norm = mean(&raw);
    Some(raw.iter().map(|r| r / norm).collect())
}

fn mstl(y: &[f64], seasons: &[usize], h: usize) -> Result<Prediction, String> {
    let periods: Vec<usize> = seasons.iter().copied().filter(|&m| m >= 2 && y.len() >= 2 * m).collect();
    let model = MSTLModel::new(periods, AutoETS::non_seasonal().into_trend_model());
    let fitted = model.fit(y).map_err(|e| format!("mstl: {e}"))?;
    let forecast = fitted.predict(h, 0.95).map_err(|e| format!("mstl: {e}"))?;
    let intervals = forecast.intervals.ok_or("mstl gave no intervals")?;
    let sd = forecast.point.iter().zip(&intervals.upper).map(|(p, u)| (u - p) / Z95).collect();
    Ok(Prediction { point: forecast.point, sd, log: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn air_passengers() -> Vec<f64> {
        super::super::tests::AIR_PASSENGERS.to_vec()
    }

    #[test]
    fn every_model_answers_finite_forecasts_for_a_seasonal_series() {
        let y = air_passengers();
        for model in Model::ALL {
            let p = predict(model, &y, &[12], 12).unwrap_or_else(|e| panic!("{model}: {e}"));
            assert_eq!(p.point.len(), 12, "{model}");
            let median = p.median();
            let (lower, upper) = p.bounds(Z95);
            for k in 0..12 {
                assert!(lower[k] <= median[k] && median[k] <= upper[k], "{model} step {k}");
            }
            assert!(upper[11] - lower[11] >= upper[0] - lower[0] - 1e-9, "{model}: intervals widen");
        }
    }

    #[test]
    fn holt_winters_beats_the_seasonal_naive_on_air_passengers() {
        let y = air_passengers();
        let (train, test) = y.split_at(132);
        let error = |model| {
            let p = predict(model, train, &[12], 12).unwrap();
            p.median().iter().zip(test).map(|(f, a)| (f - a).abs()).sum::<f64>()
        };
        assert!(error(Model::HoltWintersLog) < error(Model::SeasonalNaive) * 0.6);
    }

    #[test]
    fn seasonal_models_refuse_a_short_series() {
        let y = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert!(predict(Model::HoltWinters, &y, &[12], 3).unwrap_err().contains("two full seasons"));
        assert!(predict(Model::HoltWintersLog, &[0.0, 1.0, 2.0, 3.0], &[2], 2).unwrap_err().contains("above zero"));
        let theta = predict(Model::Theta, &y, &[12], 3).unwrap();
        assert!(theta.point[0] > 5.0, "theta extends the trend: {:?}", theta.point);
    }
}
