//! The adapters a load's (and a model build's) record batch streams pass through on their way to
//! the warehouse writer: progress and row counts, the erasure list's withholding, the newest cursor
//! value. Each wraps a stream and changes nothing else.

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

pub(super) fn step_back(cursor: CursorValue, seconds: u64) -> CursorValue {
    match cursor {
        CursorValue::Timestamp(ts) => CursorValue::Timestamp(ts - chrono::Duration::seconds(seconds as i64)),
        other => other,
    }
}

/// Counts the rows of `stream` into `read` (shared by a table's partitions) and reports the total
/// to `progress` after each batch, before the batch goes on to the writer.
pub(super) fn observe(
    stream: SendableRecordBatchStream,
    label: &str,
    read: Arc<AtomicU64>,
    progress: &Arc<dyn Progress>,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let progress = progress.clone();
    let label = label.to_string();
    let observed = stream.inspect(move |batch| {
        if let Ok(batch) = batch {
            let total = read.fetch_add(batch.num_rows() as u64, Ordering::Relaxed) + batch.num_rows() as u64;
            progress.update(&label, total);
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
