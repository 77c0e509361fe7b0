//! How long-running work reports progress, without tying the library to a terminal: the CLI draws
//! bars, the API will expose a progress field, tests stay silent.

pub trait Progress: Send + Sync {
    /// A unit of work (a table, a seed) starts; `total` rows if known.
    fn start(&self, label: &str, total: Option<u64>);
    /// `done` rows so far.
    fn update(&self, label: &str, done: u64);
    fn finish(&self, label: &str, message: &str);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: Option<u64>) {}
    fn update(&self, _: &str, _: u64) {}
    fn finish(&self, _: &str, _: &str) {}
}

/// The crash tests' hook (built only with the `fault-points` feature, which the package's own
/// dev-dependency on itself turns on for tests and benches, so release and debug builds of the
/// binary do not have it): a [`Progress`] that stops the process at an exact row of a load or a
/// model build, before its commit, for the test to `kill -9` it there.
#[cfg(feature = "fault-points")]
pub mod fault {
    use std::sync::Arc;

    use super::Progress;

    /// Set to `TARGET:ROWS` (e.g. `raw.hours:5000`, `marts.fct_hours:1`) to stop once that many
    /// rows of that table have streamed towards the warehouse writer.
    pub const ENV: &str = "SOKANA_FAULT_PAUSE_AFTER_ROWS";
    /// What the process prints to stderr when it stops there.
    pub const MESSAGE: &str = "fault point reached";
    /// Set to the name of a point in the code (e.g. `report-rendered`) to stop there.
    pub const POINT_ENV: &str = "SOKANA_FAULT_PAUSE_AT";

    /// Stops the process here, for the test to kill it, when [`POINT_ENV`] names `point`.
    pub fn pause_at(point: &str) {
        if std::env::var(POINT_ENV).is_ok_and(|v| v == point) {
            eprintln!("{MESSAGE}: {point}; waiting to be killed");
            loop {
                std::thread::park();
            }
        }
    }

    struct FaultPoint {
        inner: Arc<dyn Progress>,
        target: String,
        rows: u64,
    }

    /// `inner`, stopping at the point [`ENV`] names if it is set (a value that is not
    /// `TARGET:ROWS` is reported and ignored, so the test waiting for the point fails, saying why).
    pub fn from_env(inner: Arc<dyn Progress>) -> Arc<dyn Progress> {
        let Ok(value) = std::env::var(ENV) else { return inner };
        match value.rsplit_once(':').and_then(|(target, rows)| Some((target.to_string(), rows.parse().ok()?))) {
            Some((target, rows)) => Arc::new(FaultPoint { inner, target, rows }),
            None => {
                eprintln!("{ENV}={value:?}: expected TARGET:ROWS, e.g. raw.hours:5000; no fault point set");
                inner
            }
        }
    }

    impl Progress for FaultPoint {
        fn start(&self, label: &str, total: Option<u64>) {
            self.inner.start(label, total);
        }

        fn update(&self, label: &str, done: u64) {
            self.inner.update(label, done);
            if label == self.target && done >= self.rows {
                eprintln!("{MESSAGE}: {label} after {done} rows; waiting to be killed");
                loop {
                    std::thread::park();
                }
            }
        }

        fn finish(&self, label: &str, message: &str) {
            self.inner.finish(label, message);
        }
    }
}
