//! Column builders that turn source values into Arrow record batches of the warehouse's types.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, ListBuilder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::types::{ColumnType, SourceColumn};

pub fn arrow_schema(columns: &[SourceColumn]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|c| Field::new(&c.name, c.effective_type().arrow_type(), true)).collect::<Vec<_>>(),
    ))
}

pub enum ColumnBuilder {
    /// Text, gathered as bytes and checked as UTF-8 once per batch: one pass over the whole
    /// buffer, where a check per (mostly short) value was 4 % of a PostgreSQL load's CPU.
    Utf8(BinaryBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Decimal {
        builder: Decimal128Builder,
        precision: u8,
        scale: i8,
    },
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    List(ListBuilder<StringBuilder>),
}

impl ColumnBuilder {
    /// A builder for `capacity` values; text columns start with room for `text_bytes` bytes (at
    /// least 16 a value).
    fn new(ty: ColumnType, capacity: usize, text_bytes: usize) -> ColumnBuilder {
        match ty {
            ColumnType::Uuid | ColumnType::Text | ColumnType::Json => {
                ColumnBuilder::Utf8(BinaryBuilder::with_capacity(capacity, text_bytes.max(capacity * 16)))
            }
            ColumnType::SmallInt => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            ColumnType::Int => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::BigInt => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::Float => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Numeric { precision, scale } => {
                ColumnBuilder::Decimal { builder: Decimal128Builder::with_capacity(capacity), precision, scale }
            }
            ColumnType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamptz | ColumnType::Timestamp => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            ColumnType::TextArray => ColumnBuilder::List(ListBuilder::new(StringBuilder::new())),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            ColumnBuilder::Utf8(b) => {
                Arc::new(StringArray::try_from_binary(b.finish()).map_err(|_| "text is not UTF-8".to_string())?)
            }
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal { builder, precision, scale } => {
                Arc::new(builder.finish().with_precision_and_scale(*precision, *scale).map_err(|e| e.to_string())?)
            }
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish().with_timezone("UTC")),
            ColumnBuilder::List(b) => Arc::new(b.finish()),
        })
    }

    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal { builder, .. } => builder.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::List(b) => b.append_null(),
        }
    }
}

/// Accumulates rows into a record batch of a fixed schema.
pub struct BatchBuilder {
    schema: SchemaRef,
    types: Vec<ColumnType>,
    capacity: usize,
    pub columns: Vec<ColumnBuilder>,
    pub rows: usize,
}

impl BatchBuilder {
    pub fn new(columns: &[SourceColumn], capacity: usize) -> BatchBuilder {
        let types: Vec<ColumnType> = columns.iter().map(SourceColumn::effective_type).collect();
        BatchBuilder {
            schema: arrow_schema(columns),
            columns: types.iter().map(|ty| ColumnBuilder::new(*ty, capacity, 0)).collect(),
            types,
            capacity,
            rows: 0,
        }
    }

    pub fn finish(&mut self) -> Result<RecordBatch, String> {
        let mut arrays = Vec::with_capacity(self.columns.len());
        for ((column, ty), field) in self.columns.iter_mut().zip(&self.types).zip(self.schema.fields()) {
            let array = column.finish().map_err(|reason| format!("column {:?}: {reason}", field.name()))?;
            // Finishing hands the builder's buffers to the array and leaves it empty; the next batch
            // starts with room like this one's instead of growing from nothing by doubling (copies
            // that were a few per cent of a load's CPU).
            let text_bytes = array.as_string_opt::<i32>().map_or(0, |a| a.value_data().len());
            *column = ColumnBuilder::new(*ty, self.capacity, text_bytes);
            arrays.push(array);
        }
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())
    }
}

pub fn days_since_epoch(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

/// Parses the timestamp spellings found in SQLite databases: RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]`
/// (taken as UTC), a bare date, or Unix seconds.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        return Some(ts.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(ts) = DateTime::parse_from_str(text, format) {
            return Some(ts.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(ts) = NaiveDateTime::parse_from_str(text, format) {
            return Some(ts.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date.and_hms_opt(0, 0, 0).map(|ts| ts.and_utc());
    }
    text.parse::<i64>().ok().and_then(|secs| DateTime::from_timestamp(secs, 0))
}

/// Parses a decimal string into an integer scaled by `10^scale`, rounding half away from zero.
pub fn parse_decimal(text: &str, scale: i8) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = scale.max(0) as usize;
    let mut value: i128 = 0;
    for b in whole.bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale)) {
        value = value.checked_mul(10)?.checked_add((b - b'0') as i128)?;
    }
    if frac.len() > scale && frac.as_bytes()[scale] >= b'5' {
        value += 1;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_checked_as_utf8_when_the_batch_is_finished() {
        let columns = [SourceColumn { name: "notes".into(), ty: Some(ColumnType::Text), declared: "text".into() }];
        let mut builder = BatchBuilder::new(&columns, 4);
        let ColumnBuilder::Utf8(text) = &mut builder.columns[0] else { panic!("a text column") };
        text.append_value("ç a va");
        builder.rows = 1;
        let batch = builder.finish().expect("valid UTF-8");
        assert_eq!(batch.column(0).as_string::<i32>().value(0), "ç a va");

        let ColumnBuilder::Utf8(text) = &mut builder.columns[0] else { panic!("a text column") };
        text.append_value(b"caf\xe9");
        builder.rows = 1;
        assert_eq!(builder.finish().expect_err("Latin-1 bytes"), "column \"notes\": text is not UTF-8");
    }

    #[test]
    fn decimals_parse_exactly_and_round() {
        assert_eq!(parse_decimal("4200.00", 2), Some(420_000));
        assert_eq!(parse_decimal("4200", 2), Some(420_000));
        assert_eq!(parse_decimal("-0.5", 2), Some(-50));
        assert_eq!(parse_decimal("1.005", 2), Some(101));
        assert_eq!(parse_decimal(".25", 2), Some(25));
        assert_eq!(parse_decimal("12a", 2), None);
        assert_eq!(parse_decimal("", 2), None);
    }

    #[test]
    fn timestamps_in_common_sqlite_spellings() {
        let expected = DateTime::parse_from_rfc3339("2024-03-01T10:00:00Z").map(|t| t.with_timezone(&Utc)).ok();
        assert_eq!(parse_timestamp("2024-03-01T10:00:00Z"), expected);
        assert_eq!(parse_timestamp("2024-03-01 10:00:00"), expected);
        assert_eq!(parse_timestamp("2024-03-01 05:00:00-05:00"), expected);
        assert_eq!(parse_timestamp("1709287200"), expected);
        assert_eq!(parse_timestamp("next tuesday"), None);
    }
}
