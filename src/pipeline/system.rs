//! System tables, so that the state of the data can be asked in SQL and drawn by dashboards like
//! any other data: `system.pipeline_runs` and `system.table_loads` (the pipelines' run log: each
//! run, and each table it loaded or model it built), `system.tables` (every warehouse table's
//! version, rows and age) and `system.report_deliveries` (the delivery ledger of reports and
//! webhooks, without the recipients' addresses). Each is read afresh at every scan; plans that read them are never
//! cached (they are not warehouse tables) and run on DataFusion. Who may read them, and which
//! rows name tables for administrators only, is the masking policy's business (`auth::policy`).

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::runlog::{Delivery, RunLog, RunRecord};
use crate::query::catalog::WarehouseCatalog;

/// The schema the system tables are in.
pub const SCHEMA: &str = "system";

/// Runs (and their tables) a scan reads at most, newest first.
const RUNS: usize = 5_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PipelineRuns,
    TableLoads,
    Tables,
    ReportDeliveries,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::PipelineRuns, Kind::TableLoads, Kind::Tables, Kind::ReportDeliveries];

    fn name(self) -> &'static str {
        match self {
            Kind::PipelineRuns => "pipeline_runs",
            Kind::TableLoads => "table_loads",
            Kind::Tables => "tables",
            Kind::ReportDeliveries => "report_deliveries",
        }
    }

    fn schema(self) -> SchemaRef {
        let text = |name: &str| Field::new(name, DataType::Utf8, true);
        let int = |name: &str| Field::new(name, DataType::Int64, true);
        let time = |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true);
        let fields = match self {
            Kind::PipelineRuns => vec![
                text("run_id"),
                text("pipeline"),
                text("trigger"),
                text("status"),
                time("started_at"),
                time("finished_at"),
                Field::new("duration_s", DataType::Float64, true),
                int("tables"),
                int("rows_loaded"),
                text("error"),
            ],
            Kind::TableLoads => vec![
                text("run_id"),
                text("pipeline"),
                time("started_at"),
                text("table"),
                text("schema"),
                text("name"),
                text("kind"),
                text("status"),
                int("rows_read"),
                int("inserted"),
                int("updated"),
                int("deleted"),
                int("version"),
                Field::new("duration_s", DataType::Float64, true),
                text("error"),
            ],
            Kind::Tables => vec![
                text("schema"),
                text("name"),
                text("table"),
                int("version"),
                int("rows"),
                time("changed_at"),
                Field::new("age_hours", DataType::Float64, true),
            ],
            Kind::ReportDeliveries => vec![
                text("report"),
                time("slot"),
                text("trigger"),
                text("view"),
                text("state"),
                int("attempts"),
                Field::new("possible_repeat", DataType::Boolean, true),
                text("detail"),
                time("updated_at"),
            ],
        };
        Arc::new(Schema::new(fields))
    }
}

/// The `system` schema.
#[derive(Debug)]
pub struct SystemSchema {
    state_dir: PathBuf,
    catalog: Arc<WarehouseCatalog>,
}

impl SystemSchema {
    pub fn new(state_dir: PathBuf, catalog: Arc<WarehouseCatalog>) -> SystemSchema {
        SystemSchema { state_dir, catalog }
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        Kind::ALL.iter().map(|k| k.name().to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.name() == name) else { return Ok(None) };
        Ok(Some(Arc::new(SystemTable {
            kind,
            schema: kind.schema(),
            state_dir: self.state_dir.clone(),
            catalog: self.catalog.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        Kind::ALL.iter().any(|k| k.name() == name)
    }
}

#[derive(Debug)]
struct SystemTable {
    kind: Kind,
    schema: SchemaRef,
    state_dir: PathBuf,
    catalog: Arc<WarehouseCatalog>,
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Microseconds since the epoch of an RFC 3339 time, as the run log writes them.
fn micros(text: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text?).ok().map(|t| t.timestamp_micros())
}

impl SystemTable {
    async fn batch(&self) -> DfResult<RecordBatch> {
        let columns: Vec<ArrayRef> = match self.kind {
            Kind::PipelineRuns | Kind::TableLoads => {
                let dir = self.state_dir.clone();
                let runs = tokio::task::spawn_blocking(move || RunLog::open(&dir).and_then(|log| log.runs(None, RUNS)))
                    .await
                    .map_err(external)?
                    .map_err(external)?;
                if self.kind == Kind::PipelineRuns { run_columns(&runs) } else { load_columns(&runs) }
            }
            Kind::Tables => self.table_columns().await?,
            Kind::ReportDeliveries => {
                let dir = self.state_dir.clone();
                let rows =
                    tokio::task::spawn_blocking(move || RunLog::open(&dir).and_then(|log| log.deliveries(None, RUNS)))
                        .await
                        .map_err(external)?
                        .map_err(external)?;
                delivery_columns(&rows)
            }
        };
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    async fn table_columns(&self) -> DfResult<Vec<ArrayRef>> {
        let (mut schema, mut name, mut table) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
        let (mut version, mut rows) = (Int64Builder::new(), Int64Builder::new());
        let mut changed = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let mut age = Float64Builder::new();
        let now = chrono::Utc::now().timestamp_micros();
        for listed in self.catalog.warehouse().list_tables().await.map_err(external)? {
            let Some(delta) = self.catalog.delta(&listed).await.map_err(external)? else { continue };
            let Some((count, written_ms)) = crate::query::catalog::table_stats(&delta) else { continue };
            let at = written_ms.map(|ms| ms * 1000);
            schema.append_value(&listed.schema);
            name.append_value(&listed.name);
            table.append_value(listed.to_string());
            version.append_option(delta.version().map(|v| v as i64));
            rows.append_value(count as i64);
            changed.append_option(at);
            age.append_option(at.map(|at| (now - at) as f64 / 3.6e9));
        }
        Ok(vec![
            Arc::new(schema.finish()),
            Arc::new(name.finish()),
            Arc::new(table.finish()),
            Arc::new(version.finish()),
            Arc::new(rows.finish()),
            Arc::new(changed.finish()),
            Arc::new(age.finish()),
        ])
    }
}

fn delivery_columns(rows: &[Delivery]) -> Vec<ArrayRef> {
    let rows: Vec<&Delivery> = rows.iter().collect();
    let text = |f: &dyn Fn(&Delivery) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(|d| f(d)).collect::<arrow::array::StringArray>())
    };
    let time = |f: &dyn Fn(&Delivery) -> Option<i64>| -> ArrayRef {
        Arc::new(rows.iter().map(|d| f(d)).collect::<arrow::array::TimestampMicrosecondArray>().with_timezone("UTC"))
    };
    vec![
        // A report by its name; a webhook's events as `webhook:NAME`.
        text(&|d| Some(d.job.strip_prefix("report:").unwrap_or(&d.job).to_string())),
        time(&|d| Some(d.slot.timestamp_micros())),
        text(&|d| Some(d.trigger.clone())),
        text(&|d| Some(d.view.clone())),
        text(&|d| Some(d.state.as_str().to_string())),
        Arc::new(rows.iter().map(|d| Some(i64::from(d.attempts))).collect::<arrow::array::Int64Array>()),
        Arc::new(rows.iter().map(|d| Some(d.possible_repeat)).collect::<arrow::array::BooleanArray>()),
        text(&|d| d.detail.clone()),
        time(&|d| micros(Some(&d.updated_at))),
    ]
}

fn seconds(from: Option<i64>, to: Option<i64>) -> Option<f64> {
    Some((to? - from?) as f64 / 1e6)
}

fn run_columns(runs: &[RunRecord]) -> Vec<ArrayRef> {
    let (mut id, mut pipeline, mut trigger, mut status, mut error) =
        (StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut started = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut finished = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut duration, mut tables, mut loaded) = (Float64Builder::new(), Int64Builder::new(), Int64Builder::new());
    for run in runs {
        let (from, to) = (micros(Some(&run.started_at)), micros(run.finished_at.as_deref()));
        id.append_value(&run.id);
        pipeline.append_value(&run.pipeline);
        trigger.append_value(&run.trigger);
        status.append_value(run.status.as_str());
        started.append_option(from);
        finished.append_option(to);
        duration.append_option(seconds(from, to));
        tables.append_value(run.tables.len() as i64);
        loaded.append_value(run.tables.iter().map(|t| (t.inserted + t.updated + t.deleted) as i64).sum());
        error.append_option(run.error.as_deref());
    }
    vec![
        Arc::new(id.finish()),
        Arc::new(pipeline.finish()),
        Arc::new(trigger.finish()),
        Arc::new(status.finish()),
        Arc::new(started.finish()),
        Arc::new(finished.finish()),
        Arc::new(duration.finish()),
        Arc::new(tables.finish()),
        Arc::new(loaded.finish()),
        Arc::new(error.finish()),
    ]
}

fn load_columns(runs: &[RunRecord]) -> Vec<ArrayRef> {
    let (mut run_id, mut pipeline, mut table) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let (mut schema, mut name) = (StringBuilder::new(), StringBuilder::new());
    let (mut kind, mut status, mut error) = (StringBuilder::new(), StringBuilder::new(), StringBuilder::new());
    let mut started = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut read, mut inserted, mut updated) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
    let (mut deleted, mut version, mut duration) = (Int64Builder::new(), Int64Builder::new(), Float64Builder::new());
    for run in runs {
        for t in &run.tables {
            run_id.append_value(&run.id);
            pipeline.append_value(&run.pipeline);
            started.append_option(micros(Some(&run.started_at)));
            table.append_value(&t.target);
            let (in_schema, named) = t.target.split_once('.').unwrap_or(("", &t.target));
            schema.append_value(in_schema);
            name.append_value(named);
            // Models are the tables a run builds in `marts`; the rest are loads from a source.
            kind.append_value(if t.target.starts_with("marts.") { "model" } else { "load" });
            status.append_value(t.status.as_str());
            read.append_value(t.rows_read as i64);
            inserted.append_value(t.inserted as i64);
            updated.append_value(t.updated as i64);
            deleted.append_value(t.deleted as i64);
            version.append_option(t.version);
            duration.append_value(t.duration_ms as f64 / 1000.0);
            error.append_option(t.error.as_deref());
        }
    }
    vec![
        Arc::new(run_id.finish()),
        Arc::new(pipeline.finish()),
        Arc::new(started.finish()),
        Arc::new(table.finish()),
        Arc::new(schema.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(status.finish()),
        Arc::new(read.finish()),
        Arc::new(inserted.finish()),
        Arc::new(updated.finish()),
        Arc::new(deleted.finish()),
        Arc::new(version.finish()),
        Arc::new(duration.finish()),
        Arc::new(error.finish()),
    ]
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.batch().await?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}
