//! The bridge from DuckDB's Arrow to the engine's. The `duckdb` crate is built on its own release of
//! `arrow` (58) while DataFusion and delta-rs share another (59); the two releases' types are
//! distinct to the compiler but describe the same memory. Batches cross through the Arrow C Data
//! Interface: exported by DuckDB's arrow, imported by ours, buffers moved, not copied. This module
//! owns that crossing and nothing else; it is the one place with `unsafe` in the crate.

use std::sync::Arc;

use arrow::array::{Array, StructArray};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use duckdb::arrow as duck;

/// Moves a batch produced by DuckDB into the engine's Arrow.
pub fn to_engine(batch: duck::record_batch::RecordBatch) -> Result<RecordBatch, ArrowError> {
    let rows = batch.num_rows();
    let exported = duck::array::Array::into_data(duck::array::StructArray::from(batch));
    let (array, schema) =
        duck::ffi::to_ffi(&exported).map_err(|e| ArrowError::CDataInterface(format!("exporting from DuckDB: {e}")))?;
    // SAFETY: `FFI_ArrowArray` and `FFI_ArrowSchema` are, in every arrow release, the `#[repr(C)]`
    // structs that the Arrow C Data Interface specifies (same fields, same order), so a value of one
    // release's type is a valid value of the other's; `transmute` also checks that the sizes agree.
    // Ownership moves with the value: the importer calls the exporter's release callback once.
    let array: arrow::ffi::FFI_ArrowArray = unsafe { std::mem::transmute(array) };
    let schema: arrow::ffi::FFI_ArrowSchema = unsafe { std::mem::transmute(schema) };
    // SAFETY: `array` and `schema` were just exported together by a conforming producer.
    let imported = unsafe { arrow::ffi::from_ffi(array, &schema) }?;
    let columns = StructArray::from(imported);
    if columns.len() != rows {
        return Err(ArrowError::CDataInterface(format!("{rows} rows exported, {} imported", columns.len())));
    }
    Ok(RecordBatch::from(columns))
}

/// The engine's schema for a DuckDB schema (for results with no batches).
pub fn schema_to_engine(schema: &duck::datatypes::Schema) -> Result<arrow::datatypes::SchemaRef, ArrowError> {
    let exported = duck::ffi::FFI_ArrowSchema::try_from(schema)
        .map_err(|e| ArrowError::CDataInterface(format!("exporting a schema from DuckDB: {e}")))?;
    // SAFETY: as in `to_engine`; the schema struct is the C Data Interface's `ArrowSchema`.
    let exported: arrow::ffi::FFI_ArrowSchema = unsafe { std::mem::transmute(exported) };
    Ok(Arc::new(arrow::datatypes::Schema::try_from(&exported)?))
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Decimal128Type, Int32Type, TimeUnit};

    use super::*;

    #[test]
    fn duckdb_results_arrive_with_their_types_and_values() {
        let conn = duckdb::Connection::open_in_memory().expect("duckdb");
        let sql = "SELECT i::BIGINT AS id, 'row ' || i AS label, (i * 1.25)::DECIMAL(12, 2) AS amount,
                          DATE '2026-01-01' + i::INT AS day, TIMESTAMPTZ '2026-01-01 00:00:00+00' AS at,
                          CASE WHEN i % 2 = 0 THEN NULL ELSE i % 7 = 0 END AS flag, [i::INT, i::INT + 1] AS pair
                   FROM range(5000) t(i) ORDER BY i";
        let mut statement = conn.prepare(sql).expect("prepare");
        let batches: Vec<RecordBatch> =
            statement.query_arrow([]).expect("query").map(|b| to_engine(b).expect("bridge")).collect();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 5000);
        let first = &batches[0];
        let schema = first.schema();
        let types: Vec<(&str, &DataType)> =
            schema.fields().iter().map(|f| (f.name().as_str(), f.data_type())).collect();
        assert_eq!(types[0], ("id", &DataType::Int64));
        assert_eq!(types[2], ("amount", &DataType::Decimal128(12, 2)));
        assert_eq!(types[3], ("day", &DataType::Date32));
        assert!(matches!(types[4].1, DataType::Timestamp(TimeUnit::Microsecond, Some(_))), "{:?}", types[4]);
        assert_eq!(first.column(0).as_any().downcast_ref::<Int64Array>().expect("ids").value(3), 3);
        assert_eq!(first.column(1).as_string::<i32>().value(3), "row 3");
        assert_eq!(first.column(2).as_primitive::<Decimal128Type>().value(3), 375);
        assert!(first.column(5).is_null(0) && first.column(5).as_boolean().value(7));
        let pair = first.column(6).as_list::<i32>().value(3);
        assert_eq!(pair.as_primitive::<Int32Type>().values(), &[3, 4]);
        let total: i64 = batches
            .iter()
            .map(|b| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values().iter().sum::<i64>())
            .sum();
        assert_eq!(total, 4999 * 5000 / 2);
    }

    #[test]
    fn empty_results_keep_their_schema() {
        let conn = duckdb::Connection::open_in_memory().expect("duckdb");
        let mut statement = conn.prepare("SELECT 1::INT AS one, 'x' AS two WHERE false").expect("prepare");
        let arrow = statement.query_arrow([]).expect("query");
        let schema = schema_to_engine(&arrow.get_schema()).expect("schema");
        assert_eq!(schema.field(0).name(), "one");
        assert_eq!(schema.field(0).data_type(), &DataType::Int32);
        assert_eq!(arrow.map(|b| b.num_rows()).sum::<usize>(), 0);
    }
}
