//! A forecast in and out of Arrow: the rows of a query's answer (one time column, one numeric
//! column) as a series, and an outcome as the table the `forecast` SQL function, the metrics API
//! and the command line answer: `time, value, lower, upper, model, kind`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Float64Builder, StringBuilder, TimestampMicrosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::DateTime;

use super::series::Rows;
use super::{ForecastError, Outcome};

/// The time and value columns' positions in a query's answer.
pub struct Columns {
    pub time: usize,
    pub value: usize,
}

/// Finds the one time and the one numeric column of `schema`, or says what the query answered.
pub fn columns(schema: &Schema) -> Result<Columns, ForecastError> {
    let is_time = |t: &DataType| matches!(t, DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _));
    let shown =
        || schema.fields().iter().map(|f| format!("{} ({})", f.name(), f.data_type())).collect::<Vec<_>>().join(", ");
    let [a, b] = schema.fields().iter().collect::<Vec<_>>()[..] else {
        return Err(ForecastError::Input(format!(
            "the series query must answer two columns, a time and a number; it answered {}: {}",
            schema.fields().len(),
            shown()
        )));
    };
    match (is_time(a.data_type()), is_time(b.data_type())) {
        (true, false) if b.data_type().is_numeric() => Ok(Columns { time: 0, value: 1 }),
        (false, true) if a.data_type().is_numeric() => Ok(Columns { time: 1, value: 0 }),
        _ => Err(ForecastError::Input(format!(
            "the series query must answer a time (date or timestamp) and a number; it answered {}",
            shown()
        ))),
    }
}

/// The (time, value) rows of `batches`, and the time column's type (the answer keeps it).
pub fn rows(batches: &[RecordBatch], schema: &Schema) -> Result<(Rows, DataType), ForecastError> {
    let Columns { time, value } = columns(schema)?;
    let time_type = schema.field(time).data_type().clone();
    let micros_type = match &time_type {
        DataType::Timestamp(_, zone) => DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        _ => DataType::Timestamp(TimeUnit::Microsecond, None),
    };
    let fail = |e: arrow::error::ArrowError| ForecastError::Input(format!("reading the series: {e}"));
    let mut rows = Vec::new();
    for batch in batches {
        let times = cast(batch.column(time), &micros_type).map_err(fail)?;
        let values = cast(batch.column(value), &DataType::Float64).map_err(fail)?;
        let (Some(times), Some(values)) = (
            times.as_any().downcast_ref::<TimestampMicrosecondArray>(),
            values.as_any().downcast_ref::<Float64Array>(),
        ) else {
            return Err(ForecastError::Input("reading the series: unexpected column types".to_string()));
        };
        for i in 0..batch.num_rows() {
            if times.is_null(i) {
                return Err(ForecastError::Input(format!("row {} of the series has no time", rows.len() + 1)));
            }
            let at = DateTime::from_timestamp_micros(times.value(i))
                .ok_or_else(|| {
                    ForecastError::Input(format!("row {} of the series: time out of range", rows.len() + 1))
                })?
                .naive_utc();
            rows.push((at, (!values.is_null(i)).then(|| values.value(i))));
        }
    }
    Ok((rows, time_type))
}

/// The answer's columns for these interval levels: `lower`/`upper` for one level, `lower_80`,
/// `upper_80`, `lower_95`… for several.
pub fn schema(time_type: &DataType, levels: &[f64]) -> SchemaRef {
    let mut fields =
        vec![Field::new("time", output_time_type(time_type), false), Field::new("value", DataType::Float64, false)];
    for level in levels {
        let suffix = if levels.len() == 1 { String::new() } else { format!("_{}", level_name(*level)) };
        fields.push(Field::new(format!("lower{suffix}"), DataType::Float64, true));
        fields.push(Field::new(format!("upper{suffix}"), DataType::Float64, true));
    }
    fields.push(Field::new("model", DataType::Utf8, true));
    fields.push(Field::new("kind", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// `95` for 95.0, `99.5` for 99.5.
pub fn level_name(level: f64) -> String {
    if level.fract() == 0.0 { format!("{level:.0}") } else { level.to_string() }
}

/// Dates stay dates; any timestamp becomes microseconds in its own zone.
fn output_time_type(time_type: &DataType) -> DataType {
    match time_type {
        DataType::Date32 | DataType::Date64 => DataType::Date32,
        DataType::Timestamp(_, zone) => DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        _ => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

/// The outcome as one batch: the history (when asked) then the forecast.
pub fn batch(
    outcome: &Outcome,
    levels: &[f64],
    time_type: &DataType,
    history: bool,
) -> Result<RecordBatch, ForecastError> {
    let schema = schema(time_type, levels);
    let past = if history { outcome.history.len() } else { 0 };
    let count = past + outcome.forecast.len();
    let mut times = Vec::with_capacity(count);
    let mut values = Float64Builder::with_capacity(count);
    let mut bounds: Vec<(Float64Builder, Float64Builder)> =
        levels.iter().map(|_| (Float64Builder::with_capacity(count), Float64Builder::with_capacity(count))).collect();
    let mut models = StringBuilder::new();
    let mut kinds = StringBuilder::new();
    for (time, value) in outcome.history.iter().take(past) {
        times.push(time.and_utc().timestamp_micros());
        values.append_value(*value);
        bounds.iter_mut().for_each(|(lower, upper)| {
            lower.append_null();
            upper.append_null();
        });
        models.append_null();
        kinds.append_value("history");
    }
    for point in &outcome.forecast {
        times.push(point.time.and_utc().timestamp_micros());
        values.append_value(point.value);
        for ((lower, upper), bound) in bounds.iter_mut().zip(&point.bounds) {
            lower.append_value(bound.lower);
            upper.append_value(bound.upper);
        }
        models.append_value(&outcome.model);
        kinds.append_value("forecast");
    }
    // Built in its zone, not cast to it: arrow reads a cast from a zoneless timestamp as local time.
    let time_column: ArrayRef = match schema.field(0).data_type() {
        DataType::Timestamp(_, zone) => {
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone_opt(zone.clone()))
        }
        date => cast(&TimestampMicrosecondArray::from(times), date)
            .map_err(|e| ForecastError::Input(format!("writing the forecast's times: {e}")))?,
    };
    let mut columns: Vec<ArrayRef> = vec![time_column, Arc::new(values.finish())];
    for (mut lower, mut upper) in bounds {
        columns.push(Arc::new(lower.finish()));
        columns.push(Arc::new(upper.finish()));
    }
    columns.push(Arc::new(models.finish()));
    columns.push(Arc::new(kinds.finish()));
    RecordBatch::try_new(schema, columns).map_err(|e| ForecastError::Input(format!("writing the forecast: {e}")))
}
