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
