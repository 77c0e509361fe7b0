//! `auto` routing: per plan shape, the recent times of each engine, and the faster one chosen (with
//! a recheck of the other now and then).

use std::collections::{HashMap, VecDeque};

use super::EngineChoice;

/// Per plan shape, the recent times of each engine; `auto` picks the faster.
#[derive(Default)]
pub(super) struct Routing {
    shapes: HashMap<String, ShapeTimes>,
}

#[derive(Default)]
struct ShapeTimes {
    datafusion: VecDeque<u64>,
    duckdb: VecDeque<u64>,
    runs: u64,
}

/// Samples kept per engine and shape; and how many each engine needs before the choice is made on
/// times alone.
const KEEP: usize = 20;
const ENOUGH: usize = 2;
/// Once decided, one run in this many goes to the other engine, so a change in the data shows.
const RECHECK: u64 = 20;

impl Routing {
    /// Notes a run of `shape` on `engine` (DataFusion or DuckDB) that took `micros`.
    pub(super) fn observe(&mut self, shape: &str, engine: EngineChoice, micros: u64) {
        let times = self.shapes.entry(shape.to_string()).or_default();
        let samples = match engine {
            EngineChoice::Duckdb => &mut times.duckdb,
            EngineChoice::Datafusion => &mut times.datafusion,
            EngineChoice::Auto => return,
        };
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(micros);
    }

    /// The engine for the next run of `shape`: DataFusion or DuckDB.
    pub(super) fn choose(&mut self, shape: &str) -> EngineChoice {
        use EngineChoice::{Datafusion, Duckdb};
        let times = self.shapes.entry(shape.to_string()).or_default();
        times.runs += 1;
        // Learning: each engine runs the shape until it has a few samples (DuckDB first: it is
        // faster on most analytical shapes in our benchmark).
        if times.duckdb.len() < ENOUGH || times.datafusion.len() < ENOUGH {
            return if times.duckdb.len() <= times.datafusion.len() { Duckdb } else { Datafusion };
        }
        let faster = if median(&times.duckdb) <= median(&times.datafusion) { Duckdb } else { Datafusion };
        if times.runs.is_multiple_of(RECHECK) {
            return if faster == Duckdb { Datafusion } else { Duckdb };
        }
        faster
    }
}

/// The lower median: of two samples the smaller, so that a shape's first run on an engine (which
/// plans or prepares it, and reads cold files) does not decide against the engine on its own.
fn median(samples: &VecDeque<u64>) -> u64 {
    let mut sorted: Vec<u64> = samples.iter().copied().collect();
    sorted.sort_unstable();
    sorted[(sorted.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_learns_the_faster_engine_per_shape_and_rechecks() {
        let mut routing = Routing::default();
        let mut picks = Vec::new();
        for _ in 0..6 {
            let pick = routing.choose("s");
            picks.push(pick);
            routing.observe("s", pick, if pick == EngineChoice::Duckdb { 900 } else { 300 });
        }
        assert_eq!(picks.iter().filter(|p| **p == EngineChoice::Duckdb).count(), ENOUGH, "{picks:?}");
        let later: Vec<EngineChoice> = (0..40).map(|_| routing.choose("s")).collect();
        let rechecks = later.iter().filter(|p| **p == EngineChoice::Duckdb).count();
        assert_eq!(rechecks, 2, "one recheck in {RECHECK}: {later:?}");
        assert_eq!(routing.choose("other"), EngineChoice::Duckdb, "a new shape starts learning");
    }

    #[test]
    fn a_cold_first_run_does_not_decide() {
        let mut routing = Routing::default();
        use EngineChoice::{Datafusion, Duckdb};
        for (engine, micros) in [(Duckdb, 9_000), (Datafusion, 3_000), (Duckdb, 1_000), (Datafusion, 2_900)] {
            routing.observe("s", engine, micros);
        }
        assert_eq!(routing.choose("s"), Duckdb);
    }
}
