//! Results as bytes: CSV, a JSON array of objects, an Arrow IPC stream and Parquet, written batch
//! by batch so that a result of any size passes through in bounded memory. The CLI writes them to
//! files, the API to response bodies. Nothing here runs queries.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use super::QueryError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// CSV with text cells that a spreadsheet would run as a formula neutralised.
    Csv,
    /// CSV exactly as stored, for programs (`csv-raw`).
    #[serde(rename = "csv-raw")]
    #[value(name = "csv-raw")]
    CsvRaw,
    Json,
    Arrow,
    Parquet,
}

impl ExportFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Csv | ExportFormat::CsvRaw => "text/csv; charset=utf-8",
            ExportFormat::Json => "application/json",
            ExportFormat::Arrow => "application/vnd.apache.arrow.stream",
            ExportFormat::Parquet => "application/vnd.apache.parquet",
        }
    }

    pub fn parse(text: &str) -> Option<ExportFormat> {
        match text {
            "csv" => Some(ExportFormat::Csv),
            "csv-raw" => Some(ExportFormat::CsvRaw),
            "json" => Some(ExportFormat::Json),
            "arrow" => Some(ExportFormat::Arrow),
            "parquet" => Some(ExportFormat::Parquet),
            _ => None,
        }
    }
}

/// Rows per Parquet row group: small enough that an export holds only one group in memory.
const PARQUET_ROW_GROUP: usize = 65_536;

/// A buffer the writers write into and the caller drains after every batch.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("export buffer poisoned"))?.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn take(&self) -> Vec<u8> {
        self.0.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default()
    }
}

enum Writer {
    Csv(Box<arrow::csv::Writer<Shared>>),
    Json(arrow::json::ArrayWriter<Shared>),
    Arrow(Box<arrow::ipc::writer::StreamWriter<Shared>>),
    Parquet(Box<ArrowWriter<Shared>>),
}

/// Encodes batches of one schema in one format; each call returns the bytes ready so far.
pub struct Encoder {
    buffer: Shared,
    writer: Writer,
    schema: SchemaRef,
    rows: usize,
    neutralise: bool,
}

fn err(e: impl std::fmt::Display) -> QueryError {
    QueryError::Format(e.to_string())
}

impl Encoder {
    pub fn new(format: ExportFormat, schema: SchemaRef) -> Result<Encoder, QueryError> {
        let buffer = Shared::default();
        let writer = match format {
            ExportFormat::Csv | ExportFormat::CsvRaw => {
                Writer::Csv(Box::new(arrow::csv::WriterBuilder::new().with_header(true).build(buffer.clone())))
            }
            ExportFormat::Json => Writer::Json(arrow::json::ArrayWriter::new(buffer.clone())),
            ExportFormat::Arrow => Writer::Arrow(Box::new(
                arrow::ipc::writer::StreamWriter::try_new(buffer.clone(), &schema).map_err(err)?,
            )),
            ExportFormat::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_row_count(Some(PARQUET_ROW_GROUP))
                    .build();
                Writer::Parquet(Box::new(
                    ArrowWriter::try_new(buffer.clone(), schema.clone(), Some(properties)).map_err(err)?,
                ))
            }
        };
        Ok(Encoder { buffer, writer, schema, rows: 0, neutralise: format == ExportFormat::Csv })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, QueryError> {
        self.rows += batch.num_rows();
        match &mut self.writer {
            Writer::Csv(w) if self.neutralise => w.write(&neutralised(batch)?).map_err(err)?,
            Writer::Csv(w) => w.write(batch).map_err(err)?,
            Writer::Json(w) => w.write(batch).map_err(err)?,
            Writer::Arrow(w) => w.write(batch).map_err(err)?,
            Writer::Parquet(w) => w.write(batch).map_err(err)?,
        }
        Ok(self.buffer.take())
    }

    /// The closing bytes (JSON's `]`, Arrow's end marker, Parquet's footer).
    pub fn finish(mut self) -> Result<Vec<u8>, QueryError> {
        match self.writer {
            Writer::Csv(w) => {
                drop(w.into_inner());
                if self.rows == 0 {
                    // Arrow's writer writes the header with the first row; an empty result keeps it.
                    let names: Vec<String> = self.schema.fields().iter().map(|f| csv_field(f.name())).collect();
                    self.buffer.write_all(format!("{}\n", names.join(",")).as_bytes()).map_err(err)?;
                }
            }
            Writer::Json(mut w) => {
                w.finish().map_err(err)?;
                if self.buffer.0.lock().map(|b| b.is_empty()).unwrap_or(false) {
                    self.buffer.write_all(b"[]").map_err(err)?;
                }
            }
            Writer::Arrow(mut w) => w.finish().map_err(err)?,
            Writer::Parquet(w) => {
                w.close().map_err(err)?;
            }
        }
        Ok(self.buffer.take())
    }
}

/// Characters that make a spreadsheet read a cell as a formula when they lead it (OWASP's list for
/// CSV injection).
const FORMULA_LEADS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `batch` with every text cell that starts like a formula prefixed by `'`, which spreadsheets
/// show but do not evaluate. Other columns (a negative number) are left as they are.
fn neutralised(batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
    use arrow::array::{Array, ArrayRef, AsArray, StringArray};
    use arrow::datatypes::DataType;
    let text = |column: &ArrayRef| -> Option<Vec<Option<String>>> {
        let values: Vec<Option<&str>> = match column.data_type() {
            DataType::Utf8 => column.as_string::<i32>().iter().collect(),
            DataType::LargeUtf8 => column.as_string::<i64>().iter().collect(),
            DataType::Utf8View => column.as_string_view().iter().collect(),
            _ => return None,
        };
        if !values.iter().flatten().any(|v| v.starts_with(FORMULA_LEADS)) {
            return None;
        }
        Some(
            values
                .into_iter()
                .map(|v| v.map(|v| if v.starts_with(FORMULA_LEADS) { format!("'{v}") } else { v.to_string() }))
                .collect(),
        )
    };
    let mut columns = Vec::with_capacity(batch.num_columns());
    let mut fields = Vec::with_capacity(batch.num_columns());
    for (column, field) in batch.columns().iter().zip(batch.schema().fields()) {
        match text(column) {
            Some(values) => {
                columns.push(Arc::new(StringArray::from(values)) as ArrayRef);
                fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
            }
            None => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    let schema = Arc::new(arrow::datatypes::Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(err)
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// All of `batches` in one buffer.
pub fn encode(format: ExportFormat, schema: SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, QueryError> {
    let mut encoder = Encoder::new(format, schema)?;
    let mut out = Vec::new();
    for batch in batches {
        out.extend(encoder.write(batch)?);
    }
    out.extend(encoder.finish()?);
    Ok(out)
}

/// `batches` with only the named columns, in the order named; an unknown name is an error that
/// names it and the columns there are.
pub fn select_fields(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    fields: &[String],
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let indices = field_indices(schema, fields)?;
    let projected = Arc::new(schema.project(&indices).map_err(err)?);
    let batches = batches.iter().map(|b| b.project(&indices).map_err(err)).collect::<Result<_, _>>()?;
    Ok((projected, batches))
}

/// The positions of `fields` in `schema`.
pub fn field_indices(schema: &SchemaRef, fields: &[String]) -> Result<Vec<usize>, QueryError> {
    fields
        .iter()
        .map(|name| {
            schema.index_of(name).map_err(|_| {
                let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                QueryError::Param {
                    name: "fields".into(),
                    message: format!("no column {name:?} in the result (it has: {})", known.join(", ")),
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn sample() -> (SchemaRef, Vec<RecordBatch>) {
        let schema =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let batch = |from: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + 3)),
                    Arc::new(StringArray::from(vec![Some("a,b"), None, Some("c")])),
                ],
            )
            .unwrap()
        };
        (schema.clone(), vec![batch(0), batch(3)])
    }

    #[test]
    fn every_format_round_trips_the_same_rows() {
        let (schema, batches) = sample();
        let csv = String::from_utf8(encode(ExportFormat::Csv, schema.clone(), &batches).unwrap()).unwrap();
        assert_eq!(csv.lines().count(), 7, "{csv}");
        assert!(csv.starts_with("n,s\n0,\"a,b\"\n"), "{csv}");
        let json: serde_json::Value =
            serde_json::from_slice(&encode(ExportFormat::Json, schema.clone(), &batches).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 6);
        let ipc = encode(ExportFormat::Arrow, schema.clone(), &batches).unwrap();
        let read: Vec<RecordBatch> = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, batches);
        let parquet = bytes::Bytes::from(encode(ExportFormat::Parquet, schema.clone(), &batches).unwrap());
        let reader =
            datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(parquet, 1024).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 6);
    }

    #[test]
    fn csv_cells_that_would_run_as_formulas_are_neutralised_unless_raw_is_asked_for() {
        let schema =
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false), Field::new("s", DataType::Utf8, true)]));
        let cells = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx", "plain", "a=b"];
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(-3..4)),
                Arc::new(StringArray::from(cells.iter().map(|c| Some(*c)).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let csv = String::from_utf8(encode(ExportFormat::Csv, schema.clone(), std::slice::from_ref(&batch)).unwrap())
            .unwrap();
        let mut reader = csv::ReaderBuilder::new().from_reader(csv.as_bytes());
        let rows: Vec<(String, String)> =
            reader.records().map(|r| r.unwrap()).map(|r| (r[0].to_string(), r[1].to_string())).collect();
        assert_eq!(rows[0], ("-3".to_string(), "'=HYPERLINK(\"http://x\")".to_string()), "numbers stay numbers");
        assert_eq!(
            rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
            ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "'\tx", "plain", "a=b"]
        );
        let raw = String::from_utf8(encode(ExportFormat::CsvRaw, schema, &[batch]).unwrap()).unwrap();
        assert!(raw.contains("\n-3,\"=HYPERLINK(\"\"http://x\"\")\"\n"), "{raw}");
    }

    #[test]
    fn empty_results_keep_their_shape() {
        let (schema, _) = sample();
        assert_eq!(String::from_utf8(encode(ExportFormat::Csv, schema.clone(), &[]).unwrap()).unwrap(), "n,s\n");
        assert_eq!(String::from_utf8(encode(ExportFormat::Json, schema, &[]).unwrap()).unwrap(), "[]");
    }

    #[test]
    fn unknown_fields_are_named() {
        let (schema, batches) = sample();
        let (projected, _) = select_fields(&schema, &batches, &["s".into()]).unwrap();
        assert_eq!(projected.fields().len(), 1);
        let e = select_fields(&schema, &batches, &["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("n, s"), "{e}");
    }
}
