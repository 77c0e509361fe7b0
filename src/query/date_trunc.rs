//! `date_trunc` for timestamps at the grains a dashboard groups by (hour to year), answering
//! exactly what DataFusion's own function answers, in a fraction of its time. DataFusion's takes
//! every row through chrono's time-zone arithmetic (about 250 ns a row: most of the time of a
//! dashboard's monthly series over a few hundred thousand rows), although a column holds only a
//! few distinct periods. This one asks DataFusion's function for the period around a value,
//! checks the interval of instants that share it, and answers every later value inside a known
//! interval with a comparison or two. Everything else (finer grains, dates, times, a grain that is
//! not a constant) goes to DataFusion's function unchanged.
//!
//! Written here because DataFusion has no cached or vectorised time-zone truncation to turn on;
//! the function it wraps stays the only definition of what a period is.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::{
    ArrowTimestampType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// Intervals kept per (grain, time zone, unit): a century of months, or years of days.
const MAX_PERIODS: usize = 2_048;

/// (grain, time zone, unit) combinations kept; beyond them a new one is not remembered.
const MAX_KEYS: usize = 64;

/// DataFusion's `date_trunc`, answered from known periods where it can be.
pub fn date_trunc() -> ScalarUDF {
    ScalarUDF::new_from_impl(PeriodTrunc {
        inner: datafusion::functions::datetime::date_trunc(),
        known: Mutex::new(HashMap::new()),
    })
}

type PeriodKey = (String, Option<Arc<str>>, TimeUnit);

#[derive(Debug)]
struct PeriodTrunc {
    inner: Arc<ScalarUDF>,
    /// Periods found so far: facts about the calendar, true for every query.
    known: Mutex<HashMap<PeriodKey, Periods>>,
}

impl PartialEq for PeriodTrunc {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for PeriodTrunc {}

impl Hash for PeriodTrunc {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

/// Disjoint intervals `[start, end)` of instants whose period starts at `start`, ordered.
#[derive(Debug, Clone, Default)]
struct Periods {
    intervals: Vec<(i64, i64)>,
    last: usize,
}

impl Periods {
    fn find(&mut self, value: i64) -> Option<i64> {
        if let Some(&(start, end)) = self.intervals.get(self.last)
            && start <= value
            && value < end
        {
            return Some(start);
        }
        let after = self.intervals.partition_point(|&(start, _)| start <= value);
        let (start, end) = *self.intervals.get(after.checked_sub(1)?)?;
        (value < end).then(|| {
            self.last = after - 1;
            start
        })
    }

    fn insert(&mut self, interval: (i64, i64)) {
        if self.intervals.len() < MAX_PERIODS {
            let at = self.intervals.partition_point(|&(start, _)| start < interval.0);
            self.intervals.insert(at, interval);
            self.last = at;
        }
    }
}

/// How far past a period's start the next period surely starts and the one after has not: a
/// guess that only decides how often an interval is found (each one is checked).
fn step_seconds(granularity: &str) -> Option<i64> {
    Some(match granularity {
        "hour" => 90 * 60,
        "day" => 36 * 3600,
        "week" => 8 * 86_400,
        "month" => 32 * 86_400,
        "quarter" => 93 * 86_400,
        "year" => 367 * 86_400,
        _ => return None,
    })
}

fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

fn granularity(value: &ColumnarValue) -> Option<String> {
    match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(v)) | ScalarValue::Utf8View(Some(v)) | ScalarValue::LargeUtf8(Some(v)),
        ) => Some(v.to_lowercase()),
        _ => None,
    }
}

impl PeriodTrunc {
    /// DataFusion's answer for one instant.
    fn truncate_one<T: ArrowTimestampType>(
        &self,
        args: &ScalarFunctionArgs,
        tz: &Option<Arc<str>>,
        value: i64,
    ) -> Result<Option<i64>> {
        let one = ScalarFunctionArgs {
            args: vec![args.args[0].clone(), ColumnarValue::Scalar(timestamp::<T>(value, tz.clone()))],
            arg_fields: args.arg_fields.clone(),
            number_rows: 1,
            return_field: args.return_field.clone(),
            config_options: args.config_options.clone(),
        };
        Ok(match self.inner.invoke_with_args(one)? {
            ColumnarValue::Scalar(scalar) => timestamp_value(&scalar),
            ColumnarValue::Array(array) => {
                array.as_primitive_opt::<T>().filter(|a| a.len() == 1 && a.is_valid(0)).map(|a| a.value(0))
            }
        })
    }

    /// The period of `value` and, when it checks out, the interval of instants that share it.
    fn period<T: ArrowTimestampType>(
        &self,
        args: &ScalarFunctionArgs,
        tz: &Option<Arc<str>>,
        value: i64,
        step: i64,
    ) -> Result<(i64, Option<(i64, i64)>)> {
        let Some(start) = self.truncate_one::<T>(args, tz, value)? else {
            return datafusion::common::exec_err!("date_trunc answered no value for {value}");
        };
        // Truncation is monotone, so if the period's first instant and the last instant before
        // the next period's start both truncate to `start`, so does everything between them.
        let next = start.checked_add(step).map(|probe| self.truncate_one::<T>(args, tz, probe));
        let interval = match next {
            Some(Ok(Some(end))) if start <= value && value < end => {
                let same = |at: i64| matches!(self.truncate_one::<T>(args, tz, at), Ok(Some(s)) if s == start);
                (same(start) && same(end - 1)).then_some((start, end))
            }
            _ => None,
        };
        Ok((start, interval))
    }

    fn truncate_array<T: ArrowTimestampType>(
        &self,
        args: &ScalarFunctionArgs,
        grain: String,
        array: &dyn Array,
    ) -> Result<Option<ArrayRef>> {
        let Some(array) = array.as_primitive_opt::<T>() else { return Ok(None) };
        let DataType::Timestamp(unit, tz) = array.data_type() else { return Ok(None) };
        let Some(step) = step_seconds(&grain).map(|s| s * per_second(*unit)) else { return Ok(None) };
        let key = (grain, tz.clone(), *unit);
        let mut periods = self.lock().get(&key).cloned().unwrap_or_default();
        let known_before = periods.intervals.len();
        let mut out = Vec::with_capacity(array.len());
        for (i, &value) in array.values().iter().enumerate() {
            if array.is_null(i) {
                out.push(0);
                continue;
            }
            let start = match periods.find(value) {
                Some(start) => start,
                None => {
                    let (start, interval) = self.period::<T>(args, tz, value, step)?;
                    if let Some(interval) = interval {
                        periods.insert(interval);
                    }
                    start
                }
            };
            out.push(start);
        }
        if periods.intervals.len() > known_before {
            let mut known = self.lock();
            if known.len() < MAX_KEYS || known.contains_key(&key) {
                known.insert(key, periods);
            }
        }
        let result = PrimitiveArray::<T>::new(out.into(), array.nulls().cloned()).with_timezone_opt(tz.clone());
        Ok(Some(Arc::new(result)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeriodKey, Periods>> {
        // The map holds only checked facts, so one left by a panicking thread is still sound.
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn timestamp<T: ArrowTimestampType>(value: i64, tz: Option<Arc<str>>) -> ScalarValue {
    match T::UNIT {
        TimeUnit::Second => ScalarValue::TimestampSecond(Some(value), tz),
        TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(value), tz),
        TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(value), tz),
        TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(value), tz),
    }
}

fn timestamp_value(scalar: &ScalarValue) -> Option<i64> {
    match scalar {
        ScalarValue::TimestampSecond(v, _)
        | ScalarValue::TimestampMillisecond(v, _)
        | ScalarValue::TimestampMicrosecond(v, _)
        | ScalarValue::TimestampNanosecond(v, _) => *v,
        _ => None,
    }
}

impl ScalarUDFImpl for PeriodTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let (Some(grain), Some(ColumnarValue::Array(array))) = (granularity(&args.args[0]), args.args.get(1)) {
            let answered = match array.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => {
                    self.truncate_array::<TimestampSecondType>(&args, grain, array)?
                }
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    self.truncate_array::<TimestampMillisecondType>(&args, grain, array)?
                }
                DataType::Timestamp(TimeUnit::Microsecond, _) => {
                    self.truncate_array::<TimestampMicrosecondType>(&args, grain, array)?
                }
                DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                    self.truncate_array::<TimestampNanosecondType>(&args, grain, array)?
                }
                _ => None,
            };
            if let Some(array) = answered {
                return Ok(ColumnarValue::Array(array));
            }
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::TimestampMicrosecondArray;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::execution::FunctionRegistry;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Instants every 7 hours 13 minutes over six years (both DST changes of each year, leap
    /// days), some null, in an order that jumps back and forth.
    fn instants() -> RecordBatch {
        let start = 1_577_836_800_000_000i64; // 2020-01-01 UTC
        let mut values: Vec<Option<i64>> =
            (0..7_300).map(|i| (i % 97 != 0).then_some(start + i * 25_980_000_000)).collect();
        values.reverse();
        values.rotate_left(1_234);
        let column = |tz: Option<&str>| {
            Arc::new(TimestampMicrosecondArray::from(values.clone()).with_timezone_opt(tz.map(Arc::from))) as ArrayRef
        };
        let schema = Schema::new(vec![
            Field::new("utc", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
            Field::new("naive", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]);
        RecordBatch::try_new(Arc::new(schema), vec![column(Some("UTC")), column(None)]).expect("batch")
    }

    async fn answers(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
        ctx.sql(sql).await.expect("plan").collect().await.expect("run")
    }

    #[tokio::test]
    async fn periods_are_the_ones_datafusion_answers_in_every_zone_and_grain() {
        let builtin = SessionContext::new();
        let ours = SessionContext::new();
        ours.register_udf(date_trunc());
        for ctx in [&builtin, &ours] {
            ctx.register_batch("t", instants()).expect("register");
        }
        for grain in ["hour", "day", "week", "month", "quarter", "year", "minute"] {
            for column in [
                "utc",
                "naive",
                "utc AT TIME ZONE 'America/New_York'",
                "utc AT TIME ZONE 'Asia/Kathmandu'",
                "utc AT TIME ZONE 'Australia/Lord_Howe'",
                "utc AT TIME ZONE 'America/Sao_Paulo'",
            ] {
                let sql = format!("SELECT date_trunc('{grain}', {column}) AS p FROM t");
                assert_eq!(answers(&ours, &sql).await, answers(&builtin, &sql).await, "{sql}");
            }
        }
        let known = ours.udf("date_trunc").expect("registered");
        let inner = known.inner().downcast_ref::<PeriodTrunc>().expect("ours");
        assert!(inner.lock().values().all(|p| !p.intervals.is_empty()), "every grain found its periods");
    }
}
