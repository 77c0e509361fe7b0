//! The adapters a load's (and a model build's) record batch streams pass through on their way to
//! the warehouse writer: progress and row counts, the erasure list's withholding, the newest cursor
//! value, and the fault point the crash tests stop a process at. Each wraps a stream and changes
//! nothing else.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::execution::SendableRecordBatchStream;
use datafusion::functions_aggregate::min_max::MaxAccumulator;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use super::erasures::Withhold;
use crate::progress::Progress;
use crate::source::CursorValue;

/// Set to `TARGET:ROWS` (e.g. `raw.hours:5000`, `marts.fct_hours:1`) to stop a load or a model
/// build once that many rows of that table have streamed into the warehouse writer: the process
/// prints [`FAULT_POINT_MESSAGE`] to stderr and waits there, so that the crash tests can `kill -9`
/// it at an exact point, before the commit.
pub const FAULT_PAUSE_ENV: &str = "SOKANA_FAULT_PAUSE_AFTER_ROWS";
pub const FAULT_POINT_MESSAGE: &str = "fault point reached";

/// The row count at which [`FAULT_PAUSE_ENV`] stops the writing of `label`, if it names it.
fn fault_pause_after(label: &str) -> Option<u64> {
    std::env::var(FAULT_PAUSE_ENV)
        .ok()
        .and_then(|v| v.rsplit_once(':').filter(|(t, _)| *t == label).and_then(|(_, n)| n.parse().ok()))
}

/// Stops this thread for good once `total` rows of `label` reached the fault point, saying so.
fn pause_at_fault_point(label: &str, total: u64, pause_after: Option<u64>) {
    if pause_after.is_some_and(|n| total >= n) {
        eprintln!("{FAULT_POINT_MESSAGE}: {label} after {total} rows; waiting to be killed");
        loop {
            std::thread::park();
        }
    }
}

/// Counts the rows of `stream` into `total` (shared by a table's partitions) and honours
/// [`FAULT_PAUSE_ENV`] for `label`.
pub(super) fn with_fault_point(
    stream: SendableRecordBatchStream,
    label: &str,
    total: Arc<AtomicU64>,
) -> SendableRecordBatchStream {
    let Some(pause_after) = fault_pause_after(label) else { return stream };
    let schema = stream.schema();
    let label = label.to_string();
    let observed = stream.inspect(move |batch| {
        if let Ok(batch) = batch {
            let seen = total.fetch_add(batch.num_rows() as u64, Ordering::Relaxed) + batch.num_rows() as u64;
            pause_at_fault_point(&label, seen, Some(pause_after));
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, observed))
}

pub(super) fn step_back(cursor: CursorValue, seconds: u64) -> CursorValue {
    match cursor {
        CursorValue::Timestamp(ts) => CursorValue::Timestamp(ts - chrono::Duration::seconds(seconds as i64)),
        other => other,
    }
}

/// Counts rows as they stream, reports progress, and honours [`FAULT_PAUSE_ENV`].
pub(super) fn observe(
    stream: SendableRecordBatchStream,
    label: &str,
    read: Arc<AtomicU64>,
    progress: &Arc<dyn Progress>,
) -> SendableRecordBatchStream {
    let pause_after = fault_pause_after(label);
    let schema = stream.schema();
    let progress = progress.clone();
    let label = label.to_string();
    let observed = stream.inspect(move |batch| {
        if let Ok(batch) = batch {
            let total = read.fetch_add(batch.num_rows() as u64, Ordering::Relaxed) + batch.num_rows() as u64;
            progress.update(&label, total);
            pause_at_fault_point(&label, total, pause_after);
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, observed))
}

/// Keeps in `newest` the largest cursor value that passes through a stream (for the run log; the
/// next run reads it from the table).
pub(super) fn track_cursor(
    stream: SendableRecordBatchStream,
    column: usize,
    newest: Arc<Mutex<Option<CursorValue>>>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let tracked = stream.inspect(move |batch| {
        let Ok(batch) = batch else { return };
        let largest = MaxAccumulator::try_new(batch.column(column).data_type()).and_then(|mut max| {
            max.update_batch(std::slice::from_ref(batch.column(column)))?;
            max.evaluate()
        });
        if let Some(value) = largest.ok().as_ref().and_then(CursorValue::from_scalar)
            && let Ok(mut newest) = newest.lock()
        {
            *newest = (*newest).max(Some(value));
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, tracked))
}

/// Drops the rows of erased people from a load's stream, counting them.
pub(super) fn keep_out(
    stream: SendableRecordBatchStream,
    withhold: Withhold,
    count: Arc<AtomicU64>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let kept = stream.map(move |batch| {
        let (batch, dropped) =
            withhold.apply(batch?).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        count.fetch_add(dropped, Ordering::Relaxed);
        Ok(batch)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, kept))
}
