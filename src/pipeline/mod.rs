//! Pipelines: the files in `pipelines/`, and running them (extract from a source snapshot, load into
//! the warehouse, record every run). Owns the run log and the per-pipeline lock. It reads sources and
//! writes the warehouse only through their modules, and knows nothing of HTTP or rendering.

pub mod build;
pub mod erasures;
pub mod model;
pub mod project;
pub mod runlog;
pub mod schedule;
pub mod spec;
mod streams;
pub mod system;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

use crate::config::Config;
use crate::progress::Progress;
use crate::source::{
    ColumnType, CursorRange, CursorValue, ExtractSpec, Snapshot, SourceColumn, SourceError, SourceUrl, merge_partitions,
};
use crate::source::{ConnectOptions, Source};
use crate::warehouse::{LoadRequest, Maintenance, SyncMode, TableName, Warehouse, WarehouseError};
use erasures::{ErasureList, ErasureListError, Withhold};
use model::ModelGraph;
use runlog::{RunLock, RunLog, RunLogError, Status, TableRecord};
use spec::{ColumnClass, Pipeline, SpecError, Sync, TableSpec};

pub use project::Project;
use streams::{keep_out, observe, step_back, track_cursor};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    RunLog(#[from] RunLogError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("pipeline {pipeline}: {failed} of {total} table(s) failed; first: {first}")]
    TablesFailed { pipeline: String, failed: usize, total: usize, first: String },
    #[error("{}: {message}", path.display())]
    Model { path: std::path::PathBuf, message: String },
    #[error("query session: {0}")]
    Query(String),
    #[error("pseudonym key: {0}")]
    Key(String),
    #[error(transparent)]
    Erasures(#[from] ErasureListError),
    #[error("metadata store: {0}")]
    MetaStore(String),
    #[error("no pipeline named {name:?} in {dir} (have: {have})")]
    UnknownPipeline { name: String, dir: String, have: String },
}

/// The run log's name for builds of models alone (`sokana model build`), and the lock that keeps
/// two builds of the models from running at once.
pub const MODELS_RUN: &str = "models";
const MODELS_LOCK: &str = "models.build";

/// What one run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub tables: Vec<TableRecord>,
}

/// The built-in pipeline that copies the audit trail into the warehouse, and the source name it
/// reads from: the engine's own metadata store.
pub const AUDIT_PIPELINE: &str = "sokana_audit";
const AUDIT_PIPELINE_FILE: &str = include_str!("sokana_audit.toml");
const META_SOURCE: &str = "sokana_meta";

/// Loads the project's pipelines, and the built-in one for the audit trail.
fn load_pipelines(config: &Config) -> Result<Vec<Pipeline>, SpecError> {
    let mut pipelines = Pipeline::load_dir(&config.pipelines_dir())?;
    if let Some(clash) = pipelines.iter().find(|p| p.name == AUDIT_PIPELINE || p.source == META_SOURCE) {
        return Err(SpecError {
            path: clash.path.clone(),
            line: None,
            message: format!(
                "the pipeline name {AUDIT_PIPELINE:?} and the source name {META_SOURCE:?} are built in; rename them"
            ),
        });
    }
    let builtin = Path::new("(built in)").join(format!("{AUDIT_PIPELINE}.toml"));
    pipelines.push(Pipeline::parse(&builtin, AUDIT_PIPELINE_FILE)?);
    Ok(pipelines)
}

/// The project's models (`pipelines/models/*.sql`), checked against the tables `pipelines` load.
fn load_models(config: &Config, pipelines: &[Pipeline]) -> Result<ModelGraph, SpecError> {
    let raw: BTreeSet<TableName> = pipelines.iter().flat_map(|p| p.tables.iter().map(|t| t.target.clone())).collect();
    ModelGraph::load(&config.pipelines_dir().join("models"), &raw)
}

/// Builds the named models (all if none) and the models they read, as a run of [`MODELS_RUN`].
pub async fn build_models(
    project: &Project,
    names: &[String],
    trigger: &str,
    progress: &Arc<dyn Progress>,
) -> Result<RunSummary, PipelineError> {
    let config = project.config();
    let graph = project.models()?;
    let models = graph.select(names).map_err(|message| SpecError {
        path: config.pipelines_dir().join("models"),
        line: None,
        message,
    })?;
    let state_dir = config.state_dir();
    let _lock = RunLock::wait(&state_dir, MODELS_LOCK).await?;
    let log = RunLog::open(&state_dir)?;
    let run_id = log.start(MODELS_RUN, trigger)?;
    let outcome = build::build(project, &models, &BTreeSet::new(), &run_id, &log, progress).await;
    finish_run(&log, run_id, MODELS_RUN, outcome)
}

/// Records the end of a run: it failed if it could not go on, or if any table or model failed.
fn finish_run(
    log: &RunLog,
    run_id: String,
    pipeline: &str,
    outcome: Result<Vec<TableRecord>, PipelineError>,
) -> Result<RunSummary, PipelineError> {
    let error = match &outcome {
        Ok(tables) => tables.iter().find_map(|t| t.error.clone()).map(|first| PipelineError::TablesFailed {
            pipeline: pipeline.to_string(),
            failed: tables.iter().filter(|t| t.error.is_some()).count(),
            total: tables.len(),
            first,
        }),
        Err(_) => None,
    };
    let message = match (&outcome, &error) {
        (Err(e), _) => Some(e.to_string()),
        (_, Some(e)) => Some(e.to_string()),
        _ => None,
    };
    log.finish(&run_id, message.as_deref())?;
    let tables = outcome?;
    match error {
        Some(e) => Err(e),
        None => Ok(RunSummary { run_id, pipeline: pipeline.to_string(), tables }),
    }
}

/// The warehouse a configuration names, with its encryption keys (see [`crate::config`]).
pub use crate::config::{WAREHOUSE_KEY_VAR, open_warehouse as warehouse};

/// Connects to the pipeline's source. The metadata store is opened first when it is the source,
/// which creates it and its tables: the audit pipeline runs on a project no one has logged into.
async fn connect(config: &Config, pipeline: &Pipeline) -> Result<Source, PipelineError> {
    let (url, options) = if pipeline.source == META_SOURCE {
        let store = config.meta_store_url();
        crate::metastore::MetaStore::open(&store, &config.base_dir)
            .await
            .map_err(|e| PipelineError::MetaStore(e.to_string()))?;
        let url =
            if store.contains("://") || store.starts_with("sqlite:") { store } else { format!("sqlite://{store}") };
        (SourceUrl::parse(&url, &config.base_dir)?, ConnectOptions::default())
    } else {
        source_url(config, pipeline)?
    };
    Ok(url.connect(&options).await?)
}

fn source_url(config: &Config, pipeline: &Pipeline) -> Result<(SourceUrl, ConnectOptions), SpecError> {
    let source = config.sources.get(&pipeline.source).ok_or_else(|| SpecError {
        path: pipeline.path.clone(),
        line: None,
        message: format!(
            "source {:?} is not defined in the config (add [sources.{}] with a url to {})",
            pipeline.source,
            pipeline.source,
            config.path.as_ref().map_or("sokana.toml".into(), |p| p.display().to_string())
        ),
    })?;
    let url = SourceUrl::parse(&source.url, &config.base_dir).map_err(|e| SpecError {
        path: pipeline.path.clone(),
        line: None,
        message: e.to_string(),
    })?;
    Ok((url, source.connect_options()))
}

/// Runs one pipeline under its lock, recording the run. A table that fails does not stop the
/// others; the run then fails as a whole.
pub async fn run(
    project: &Project,
    pipeline: &Pipeline,
    trigger: &str,
    progress: &Arc<dyn Progress>,
) -> Result<RunSummary, PipelineError> {
    let config = project.config();
    let state_dir = config.state_dir();
    let _lock = RunLock::acquire(&state_dir, &pipeline.name)?;
    let log = RunLog::open(&state_dir)?;
    let run_id = log.start(&pipeline.name, trigger)?;
    let outcome = match run_locked(project, pipeline, &run_id, &log, progress).await {
        Ok(mut tables) => build_after_loads(project, pipeline, &tables, &run_id, &log, progress).await.map(|models| {
            tables.extend(models);
            tables
        }),
        Err(e) => Err(e),
    };
    let finished = finish_run(&log, run_id.clone(), &pipeline.name, outcome);
    announce(config, pipeline, trigger, &run_id, &finished).await;
    finished
}

/// Queues the run's webhook event (`pipeline_run.succeeded` or `.failed`) and sends what is due
/// once; `sokana serve` retries what this leaves. A webhook's problem never fails the run.
async fn announce(
    config: &Config,
    pipeline: &Pipeline,
    trigger: &str,
    run_id: &str,
    finished: &Result<RunSummary, PipelineError>,
) {
    if config.webhooks.is_empty() {
        return;
    }
    let hooks = match crate::webhook::Webhooks::new(config) {
        Ok(hooks) => hooks,
        Err(e) => {
            tracing::error!(error = %e, "webhooks not sent");
            return;
        }
    };
    let (event, data) = match finished {
        Ok(summary) => (
            "pipeline_run.succeeded",
            serde_json::json!({
                "pipeline": pipeline.name, "run_id": run_id, "trigger": trigger,
                "tables": summary.tables.iter().map(|t| serde_json::json!({
                    "table": t.target, "status": t.status, "inserted": t.inserted, "updated": t.updated,
                    "deleted": t.deleted, "version": t.version,
                })).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => (
            "pipeline_run.failed",
            serde_json::json!({ "pipeline": pipeline.name, "run_id": run_id, "trigger": trigger, "error": e.to_string() }),
        ),
    };
    if let Err(e) = hooks.enqueue(event, trigger, data) {
        tracing::error!(error = %e, "webhooks: the event could not be queued");
        return;
    }
    if let Err(e) = hooks.deliver_due().await {
        tracing::error!(error = %e, "webhooks: the queue could not be read");
    }
}

/// Builds the models downstream of the tables a pipeline loads; models reading a table whose load
/// failed in this run are skipped.
async fn build_after_loads(
    project: &Project,
    pipeline: &Pipeline,
    tables: &[TableRecord],
    run_id: &str,
    log: &RunLog,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<TableRecord>, PipelineError> {
    let config = project.config();
    let graph = project.models()?;
    let loaded: BTreeSet<TableName> = pipeline.tables.iter().map(|t| t.target.clone()).collect();
    let models = graph.downstream_of(&loaded);
    if models.is_empty() {
        return Ok(Vec::new());
    }
    let failed: BTreeSet<TableName> =
        tables.iter().filter(|t| t.error.is_some()).filter_map(|t| t.target.parse().ok()).collect();
    let _lock = RunLock::wait(&config.state_dir(), MODELS_LOCK).await?;
    build::build(project, &models, &failed, run_id, log, progress).await
}

async fn run_locked(
    project: &Project,
    pipeline: &Pipeline,
    run_id: &str,
    log: &RunLog,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<TableRecord>, PipelineError> {
    let config = project.config();
    let warehouse = project.warehouse();
    let source = connect(config, pipeline).await?;
    let mut snapshot = source.snapshot().await?;
    let maintenance = config.maintenance();
    let erasures = ErasureList::open(&config.state_dir());
    let loads = Loads {
        pipeline,
        classes: project.classes(),
        warehouse,
        erasures: &erasures,
        maintenance: &maintenance,
        run_id,
        progress,
    };
    let mut records = Vec::new();
    for table in &pipeline.tables {
        let started = Instant::now();
        let label = table.target.to_string();
        progress.start(&label, None);
        let mut record = TableRecord { target: label.clone(), ..TableRecord::default() };
        match loads.load(table, snapshot.as_mut(), &mut record).await {
            Ok(()) => {
                if let Err(e) = warehouse.maintain(&table.target, &maintenance, record.version.is_some()).await {
                    tracing::warn!(table = %label, error = %e, "maintenance failed; the load itself is committed");
                }
                record.status = Status::Succeeded;
                progress.finish(
                    &label,
                    &format!(
                        "{} read, {} inserted, {} updated, {} deleted",
                        record.rows_read, record.inserted, record.updated, record.deleted
                    ),
                );
            }
            Err(e) => {
                record.status = Status::Failed;
                record.error = Some(e.to_string());
                progress.finish(&label, &format!("failed: {e}"));
            }
        }
        record.duration_ms = started.elapsed().as_millis() as u64;
        log.record_table(run_id, &record)?;
        records.push(record);
    }
    Ok(records)
}

/// The columns to extract: those the file lists, plus any new source column (schema evolution;
/// it takes the pipeline's `new_column_class`). A listed column missing from the source is an error.
pub fn select_columns(
    pipeline: &Pipeline,
    table: &TableSpec,
    source_columns: Option<Vec<SourceColumn>>,
) -> Result<Vec<SourceColumn>, SpecError> {
    let Some(columns) = source_columns else {
        return Err(pipeline.table_error(
            table,
            format!("table {:?} does not exist in source {:?}", table.source_table, pipeline.source),
        ));
    };
    if let Some(missing) = table.columns.keys().find(|c| !columns.iter().any(|s| &s.name == *c)) {
        return Err(pipeline.table_error(
            table,
            format!(
                "table {:?} has no column {missing:?} in source {:?} (it has: {})",
                table.source_table,
                pipeline.source,
                columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if let Sync::Incremental { cursor } = &table.sync {
        let column = columns.iter().find(|c| &c.name == cursor).ok_or_else(|| {
            pipeline.table_error(table, format!("cursor column {cursor:?} is not in table {:?}", table.source_table))
        })?;
        if !matches!(
            column.ty,
            Some(
                ColumnType::Timestamptz
                    | ColumnType::Timestamp
                    | ColumnType::Int
                    | ColumnType::BigInt
                    | ColumnType::SmallInt
            )
        ) {
            return Err(pipeline.table_error(
                table,
                format!("cursor column {cursor:?} is {}; a cursor must be a timestamp or an integer", column.declared),
            ));
        }
    }
    Ok(columns)
}

/// The loads of one run of a pipeline: what every table's load shares.
struct Loads<'a> {
    pipeline: &'a Pipeline,
    classes: &'a spec::Classifier,
    warehouse: &'a Warehouse,
    erasures: &'a ErasureList,
    maintenance: &'a Maintenance,
    run_id: &'a str,
    progress: &'a Arc<dyn Progress>,
}

impl Loads<'_> {
    /// Loads `table` from `snapshot` into the warehouse in one commit, noting what it did in
    /// `record`.
    async fn load(
        &self,
        table: &TableSpec,
        snapshot: &mut dyn Snapshot,
        record: &mut TableRecord,
    ) -> Result<(), PipelineError> {
        let columns = select_columns(self.pipeline, table, snapshot.columns(&table.source_table).await?)?;
        let withhold = self.erasures.withhold(self.pipeline, table)?;
        let existing = self.warehouse.open(&table.target).await?;
        // The cursor is the largest value the table holds: it is committed with the rows by
        // construction, and the source is not scanned for it (the CRM has no index on `updated_at`;
        // a `max()` there cost a sequential scan per table per run).
        let previous: Option<CursorValue> = match (&existing, &table.sync) {
            (Some(t), Sync::Incremental { cursor }) => {
                CursorValue::from_scalar(&self.warehouse.max_value(t, &table.target, cursor).await?)
            }
            _ => None,
        };
        let batch_rows = self.pipeline.defaults.batch_rows;

        // Every key in the source, when deletes must be found (read first: a snapshot reads one
        // stream at a time).
        let source_keys = match (&existing, table.detect_deletes) {
            (Some(_), true) => {
                let key_columns: Vec<SourceColumn> =
                    table.primary_key.iter().filter_map(|k| columns.iter().find(|c| &c.name == k).cloned()).collect();
                let spec =
                    ExtractSpec { table: table.source_table.clone(), columns: key_columns, range: None, batch_rows };
                let schema = spec.arrow_schema();
                let keys: Vec<RecordBatch> = merge_partitions(schema, snapshot.extract(spec).await?)
                    .try_collect()
                    .await
                    .map_err(|e| WarehouseError::Source { table: table.target.to_string(), reason: e.to_string() })?;
                Some(keys)
            }
            _ => None,
        };

        let (mode, range, cursor_column) = match &table.sync {
            Sync::Full => (SyncMode::Full, None, None),
            // The first load reads everything, rows with a NULL cursor included.
            Sync::Incremental { cursor } => (
                SyncMode::Incremental,
                previous.map(|p| CursorRange {
                    column: cursor.clone(),
                    after: step_back(p, self.pipeline.defaults.lookback_seconds),
                }),
                columns.iter().position(|c| &c.name == cursor),
            ),
        };
        // Personal data and uuids get no min/max statistics (see `warehouse::parquet`).
        let unindexed = columns
            .iter()
            .filter(|c| {
                let class = self.classes.class_of(&table.target, &c.name);
                c.effective_type() == ColumnType::Uuid || matches!(class, ColumnClass::Pii | ColumnClass::Phi)
            })
            .map(|c| c.name.clone())
            .collect();
        let spec = ExtractSpec { table: table.source_table.clone(), columns, range, batch_rows };
        let schema = spec.arrow_schema();
        let partitions = snapshot.extract(spec).await?;
        let read = Arc::new(AtomicU64::new(0));
        let withheld = Arc::new(AtomicU64::new(0));
        let newest = Arc::new(Mutex::new(previous));
        let rows = partitions
            .into_iter()
            .map(|p| observe(p, &table.target.to_string(), read.clone(), self.progress))
            .map(|p| match &withhold {
                Some(w) => keep_out(p, w.clone(), withheld.clone()),
                None => p,
            })
            .map(|p| match cursor_column {
                Some(column) => track_cursor(p, column, newest.clone()),
                None => p,
            })
            .collect();
        let outcome = self
            .warehouse
            .load(LoadRequest {
                table: table.target.clone(),
                primary_key: table.primary_key.clone(),
                partition_by: table.partition_by.clone(),
                mode,
                schema,
                rows,
                source_keys,
                provenance: json!({
                    "run_id": self.run_id,
                    "pipeline": self.pipeline.name,
                    "source_table": table.source_table,
                }),
                target_file_size: self.maintenance.target_file_size,
                unindexed,
            })
            .await?;
        if !outcome.added_columns.is_empty() {
            tracing::warn!(
                table = %table.target,
                class = %self.pipeline.defaults.new_column_class,
                columns = %outcome.added_columns.join(", "),
                "new source columns added to the warehouse table; classify them in {}",
                self.pipeline.path.display()
            );
        }
        record.rows_read = read.load(Ordering::Relaxed);
        record.withheld = withheld.load(Ordering::Relaxed);
        if record.withheld > 0 {
            tracing::warn!(
                table = %table.target,
                rows = record.withheld,
                "the source still holds rows of erased people; they were kept out of the warehouse (erase them at the source)"
            );
        }
        record.inserted = outcome.inserted;
        record.updated = outcome.updated;
        record.deleted = outcome.deleted;
        record.version = outcome.version;
        record.cursor = newest.lock().ok().and_then(|c| *c).map(|c| c.to_string());
        Ok(())
    }
}

/// Every pipeline's lock and the models' (privacy erasure): fails at once if a pipeline is running,
/// waits for a model build to end.
pub async fn lock_all(project: &Project) -> Result<Vec<RunLock>, PipelineError> {
    let state_dir = project.config().state_dir();
    let mut locks = Vec::new();
    for p in project.pipelines() {
        locks.push(RunLock::acquire(&state_dir, &p.name)?);
    }
    locks.push(RunLock::wait(&state_dir, MODELS_LOCK).await?);
    Ok(locks)
}

/// Rebuilds the models downstream of `changed` after an erasure (the caller holds the locks),
/// recorded as a run of the models; returns the models rebuilt.
pub async fn rebuild_after_erasure(
    project: &Project,
    changed: &BTreeSet<TableName>,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<TableName>, PipelineError> {
    let config = project.config();
    let graph = project.models()?;
    let models = graph.downstream_of(changed);
    if models.is_empty() {
        return Ok(Vec::new());
    }
    let log = RunLog::open(&config.state_dir())?;
    let run_id = log.start(MODELS_RUN, "privacy erase")?;
    let outcome = build::build(project, &models, &BTreeSet::new(), &run_id, &log, progress).await;
    finish_run(&log, run_id, MODELS_RUN, outcome)?;
    Ok(models.iter().map(|m| m.target.clone()).collect())
}

/// Whether the source behind `subject` (a pipeline's target table) still holds the row keyed `key`.
pub async fn source_holds(project: &Project, subject: &TableName, key: &str) -> Result<bool, PipelineError> {
    let Some((pipeline, table)) =
        project.pipelines().iter().find_map(|p| p.tables.iter().find(|t| &t.target == subject).map(|t| (p, t)))
    else {
        return Ok(false);
    };
    let source = connect(project.config(), pipeline).await?;
    let mut snapshot = source.snapshot().await?;
    let columns = select_columns(pipeline, table, snapshot.columns(&table.source_table).await?)?;
    let key_columns: Vec<SourceColumn> = columns.into_iter().filter(|c| table.primary_key.contains(&c.name)).collect();
    let spec = ExtractSpec { table: table.source_table.clone(), columns: key_columns, range: None, batch_rows: 65_536 };
    let mut keys = merge_partitions(spec.arrow_schema(), snapshot.extract(spec).await?);
    let wanted = std::collections::BTreeSet::from([key.to_string()]);
    let probe = Withhold::single(&table.primary_key[0], wanted);
    while let Some(batch) = keys.next().await {
        let batch = batch.map_err(|e| WarehouseError::Source { table: subject.to_string(), reason: e.to_string() })?;
        let (_, found) = probe.apply(batch)?;
        if found > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks a pipeline against its source's live catalog: tables, columns and cursors exist.
pub async fn check(config: &Config, pipeline: &Pipeline) -> Result<Vec<SpecError>, PipelineError> {
    let source = connect(config, pipeline).await?;
    let mut snapshot = source.snapshot().await?;
    let mut errors = Vec::new();
    for table in &pipeline.tables {
        if let Err(e) = select_columns(pipeline, table, snapshot.columns(&table.source_table).await?) {
            errors.push(e);
        }
    }
    Ok(errors)
}
