//! Parquet settings for every file the warehouse writes: the configured codec (LZ4 by default),
//! row groups of 128 Ki rows (a writer holds one modest row group in memory, readers skip at that
//! grain), and dictionary encoding only for the columns where it pays. It owns no I/O; the loads
//! and the compaction pass these settings to delta-rs.

use std::collections::HashSet;

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use deltalake::TableProperty;
use deltalake::parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;

const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The codec of the warehouse's Parquet files (`warehouse.compression`).
///
/// LZ4 is the default because a load is bound by CPU, not by disk: on the 2-core benchmark machine,
/// where the source database shares the CPU, loading the Sokana source at scale 100 took a median
/// 8.35 s with LZ4, 8.92 s with Snappy and 9.17 s with zstd (5.8, 6.2 and 7.0 s of the loader's CPU),
/// for 306, 288 and 179 MB of files. Choose `zstd` when storage or transfer costs more than CPU, or
/// `snappy` for readers that predate Parquet's `LZ4_RAW` (Spark before 3.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// LZ4 in Parquet's `LZ4_RAW` framing.
    #[default]
    Lz4,
    Snappy,
    Zstd,
    None,
}

impl Compression {
    fn parquet(self) -> ParquetCompression {
        match self {
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::Zstd => ParquetCompression::ZSTD(ZstdLevel::default()),
            Compression::Lz4 => ParquetCompression::LZ4_RAW,
            Compression::None => ParquetCompression::UNCOMPRESSED,
        }
    }
}

/// How many leading rows of a sample are looked at to judge a column's cardinality.
const SAMPLE_ROWS: usize = 4096;

/// Writer settings; with a `sample` of the rows to come, dictionary encoding is turned off for the
/// columns whose values are mostly distinct in it. The Parquet writer would otherwise try a
/// dictionary in every row group of such a column (hashing each value) before falling back to plain
/// encoding: measured on TPC-H lineitem, that was about a fifth of the loader's CPU time.
///
/// The `unindexed` columns are written without min/max statistics (see [`unindexed_table_properties`]).
pub fn writer_properties(
    compression: Compression,
    sample: Option<&RecordBatch>,
    unindexed: &[String],
) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(compression.parquet())
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
    for column in unindexed {
        builder = builder.set_column_statistics_enabled(ColumnPath::from(column.as_str()), EnabledStatistics::None);
    }
    if let Some(sample) = sample {
        for (field, column) in sample.schema().fields().iter().zip(sample.columns()) {
            let rows = column.len().min(SAMPLE_ROWS);
            if rows > 0 && !mostly_repeated(column, rows) {
                builder = builder.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
            }
        }
    }
    builder.build()
}

/// The Delta table properties that keep the `unindexed` columns of `schema` out of the statistics
/// in the table's log, for every later writer too (merges, compaction, erasure, other engines).
///
/// A column is unindexed when its minimum and maximum would put a person's data in the log (an
/// e-mail address, a diagnosis), which outlives the rows unless the history is cut, or when they
/// would prune nothing (random uuids span the whole range in every file). Their statistics also
/// cost the writer a comparison of every value: 4 % of a Sokana load's CPU.
pub fn unindexed_table_properties(schema: &Schema, unindexed: &[String]) -> Vec<(String, Option<String>)> {
    if unindexed.is_empty() {
        return Vec::new();
    }
    let indexed: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.name())
        .filter(|name| !unindexed.contains(name))
        .map(|name| {
            let plain = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain { name.clone() } else { format!("`{}`", name.replace('`', "``")) }
        })
        .collect();
    if indexed.is_empty() {
        return vec![(TableProperty::DataSkippingNumIndexedCols.as_ref().to_string(), Some("0".to_string()))];
    }
    vec![(TableProperty::DataSkippingStatsColumns.as_ref().to_string(), Some(indexed.join(",")))]
}

/// The columns a table keeps out of its statistics ([`unindexed_table_properties`]), read back
/// from its properties, so that every later writer of its files (compaction, erasure) leaves their
/// minimum and maximum out of the Parquet footers as the loads do.
pub fn unindexed_columns(table: &deltalake::DeltaTable) -> Vec<String> {
    let Ok(state) = table.snapshot() else { return Vec::new() };
    let schema = state.snapshot().arrow_schema();
    let properties = state.table_config();
    let all = || schema.fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    match (&properties.data_skipping_stats_columns, &properties.data_skipping_num_indexed_cols) {
        (Some(indexed), _) => {
            let indexed: HashSet<&str> = indexed.iter().filter_map(|c| c.path().first()).map(String::as_str).collect();
            all().into_iter().filter(|name| !indexed.contains(name.as_str())).collect()
        }
        // The kernel's type for the count is not re-exported by deltalake; only 0 is ever set here.
        (None, Some(count)) if format!("{count:?}") == "NumColumns(0)" => all(),
        _ => Vec::new(),
    }
}

/// Whether the first `rows` values of `column` have at most half as many distinct values as rows.
/// Columns whose type the row format cannot encode keep the writer's default (dictionary on).
fn mostly_repeated(column: &datafusion::arrow::array::ArrayRef, rows: usize) -> bool {
    let Ok(converter) = RowConverter::new(vec![SortField::new(column.data_type().clone())]) else { return true };
    let Ok(encoded) = converter.convert_columns(&[column.slice(0, rows)]) else { return true };
    let distinct: HashSet<&[u8]> = encoded.iter().map(|row| row.data()).collect();
    distinct.len() * 2 <= rows
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    #[test]
    fn dictionary_only_for_repeated_columns() {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..1000));
        let statuses: ArrayRef =
            Arc::new(StringArray::from_iter_values((0..1000).map(|i| ["active", "lead", "closed"][i % 3])));
        let sample = RecordBatch::try_from_iter([("id", ids), ("status", statuses)]).expect("batch");
        let props = writer_properties(Compression::default(), Some(&sample), &[]);
        assert!(!props.dictionary_enabled(&ColumnPath::from("id")));
        assert!(props.dictionary_enabled(&ColumnPath::from("status")));
        assert!(writer_properties(Compression::Zstd, None, &[]).dictionary_enabled(&ColumnPath::from("id")));
    }

    #[test]
    fn unindexed_columns_have_no_statistics_in_files_or_log() {
        use datafusion::arrow::datatypes::{DataType, Field};
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("email", DataType::Utf8, true),
            Field::new("Visit Date", DataType::Date32, true),
        ]);
        let unindexed = vec!["id".to_string(), "email".to_string()];
        let props = writer_properties(Compression::default(), None, &unindexed);
        assert_eq!(props.statistics_enabled(&ColumnPath::from("email")), EnabledStatistics::None);
        assert_ne!(props.statistics_enabled(&ColumnPath::from("Visit Date")), EnabledStatistics::None);
        assert_eq!(
            unindexed_table_properties(&schema, &unindexed),
            vec![("delta.dataSkippingStatsColumns".to_string(), Some("`Visit Date`".to_string()))]
        );
        assert_eq!(
            unindexed_table_properties(&schema, &["id", "email", "Visit Date"].map(String::from)),
            vec![("delta.dataSkippingNumIndexedCols".to_string(), Some("0".to_string()))]
        );
        assert!(unindexed_table_properties(&schema, &[]).is_empty());
    }
}
