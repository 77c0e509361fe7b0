//! Building SQL models into `marts.*`: each model's query runs through `query` over the current
//! versions of the tables it reads, and its result replaces the table in one commit. A model whose
//! inputs and SQL are unchanged since its last build is left alone; a model that fails keeps its
//! previous version and the models that read it are skipped, while the others are built.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::utils::{conjunction, disjunction};
use datafusion::logical_expr::{Expr, cast, col, lit};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::{Materialized, Model};
use super::runlog::{RunLog, Status, TableRecord};
use super::{PipelineError, Project};
use crate::progress::Progress;
use crate::query;
use crate::warehouse::{Maintenance, ReplaceRequest, TableName, Warehouse};

/// Where the key of `pseudonym()` comes from: this variable, or else a key file in the state
/// directory that the first build creates.
pub const PSEUDONYM_KEY_ENV: &str = "SOKANA_PSEUDONYM_KEY";
const PSEUDONYM_KEY_FILE: &str = "pseudonym.key";

/// Builds `models` (in build order), recording each in the run log under `run_id`. Models that
/// read an `unavailable` table (its load failed) are skipped.
pub async fn build(
    project: &Project,
    models: &[&Model],
    unavailable: &BTreeSet<TableName>,
    run_id: &str,
    log: &RunLog,
    progress: &Arc<dyn Progress>,
) -> Result<Vec<TableRecord>, PipelineError> {
    let warehouse = project.warehouse();
    let key = project.pseudonym_key()?;
    let ctx = model_session(warehouse, &key).await?;
    let maintenance = project.config().maintenance();
    let mut failed: BTreeSet<TableName> = unavailable.clone();
    let mut records = Vec::new();
    for model in models {
        let started = Instant::now();
        let label = model.target.to_string();
        progress.start(&label, None);
        let mut record = TableRecord { target: label.clone(), ..TableRecord::default() };
        if let Some(input) = model.reads.keys().find(|t| failed.contains(t)) {
            failed.insert(model.target.clone());
            record.status = Status::Skipped;
            record.error = Some(format!("not built: it reads {input}, which failed in this run"));
        } else {
            match build_one(&ctx, warehouse, &key, model, run_id, &maintenance, progress).await {
                Ok(Built::Unchanged) => record.status = Status::Unchanged,
                Ok(Built::Replaced { rows, version }) => {
                    record.status = Status::Succeeded;
                    (record.inserted, record.version) = (rows, Some(version));
                    // Maintenance first: a compaction makes a newer version, and vacuum may remove
                    // the files of the one just built, so the models that read this one must see
                    // the version maintenance leaves.
                    if let Err(e) = warehouse.maintain(&model.target, &maintenance, true).await {
                        tracing::warn!(table = %label, error = %e, "maintenance failed; the build itself is committed");
                    }
                    query::refresh(&ctx, warehouse, &model.target)
                        .await
                        .map_err(|e| PipelineError::Query(e.to_string()))?;
                }
                Err(e) => {
                    failed.insert(model.target.clone());
                    record.status = Status::Failed;
                    record.error = Some(match e {
                        PipelineError::Model { .. } => e.to_string(),
                        other => format!("{}: {other}", model.path.display()),
                    });
                }
            }
        }
        progress.finish(
            &label,
            &match (record.status, &record.error) {
                (_, Some(e)) => format!("{}: {e}", record.status),
                (Status::Unchanged, None) => "unchanged (inputs and SQL as at the last build)".into(),
                _ => format!("{} rows", record.inserted),
            },
        );
        record.duration_ms = started.elapsed().as_millis() as u64;
        log.record_table(run_id, &record)?;
        records.push(record);
    }
    Ok(records)
}

enum Built {
    Unchanged,
    Replaced { rows: u64, version: i64 },
}

/// A session over the warehouse with the functions models may call.
async fn model_session(warehouse: &Warehouse, key: &[u8]) -> Result<SessionContext, PipelineError> {
    let ctx = query::unmasked_session(warehouse).await.map_err(|e| PipelineError::Query(e.to_string()))?;
    ctx.register_udf(query::functions::pseudonym(key));
    Ok(ctx)
}

async fn build_one(
    ctx: &SessionContext,
    warehouse: &Warehouse,
    key: &[u8],
    model: &Model,
    run_id: &str,
    maintenance: &Maintenance,
    progress: &Arc<dyn Progress>,
) -> Result<Built, PipelineError> {
    let model_err = |message: String| PipelineError::Model { path: model.path.clone(), message };
    let mut inputs: BTreeMap<String, u64> = BTreeMap::new();
    for table in model.reads.keys() {
        let version = match warehouse.open(table).await? {
            Some(t) => t.version(),
            None => None,
        };
        let version = version.ok_or_else(|| model_err(format!("reads {table}, which has not been loaded yet")))?;
        inputs.insert(table.to_string(), version);
    }
    let sql_hash = hex::encode(Sha256::digest(model.sql.as_bytes()));
    // A model that reads the clock (days overdue "as of the build") is stale the next day even
    // when nothing else changed.
    let as_of = reads_clock(&model.sql).then(|| Utc::now().date_naive().to_string());
    let existing = warehouse.open(&model.target).await?;
    let mut built_from: Option<BTreeMap<String, u64>> = None;
    if let Some(table) = &existing {
        let last = warehouse.last_load(table, &model.target).await?;
        let field = |key: &str| last.as_ref().and_then(|p| p.get(key)).cloned().unwrap_or_default();
        let same_sql = field("sql_sha256") == json!(sql_hash) && field("as_of") == json!(as_of);
        if same_sql && field("inputs") == json!(inputs) {
            return Ok(Built::Unchanged);
        }
        if same_sql {
            built_from = serde_json::from_value(field("inputs")).ok();
        }
    }
    // An incremental model recomputes only the partitions that its inputs' changes since the last
    // build can reach; anything it cannot judge exactly makes it rebuild in full.
    let mut only: Option<Expr> = None;
    if let (Materialized::Incremental, Some(built_from)) = (&model.materialized, &built_from) {
        match touched(warehouse, key, model, built_from, &inputs).await {
            Ok(Touched::Nothing) => return Ok(Built::Unchanged),
            Ok(Touched::Only(predicate)) => only = Some(predicate),
            Ok(Touched::All) => {}
            Err(e) => {
                tracing::warn!(model = %model.target, error = %e, "finding the changed partitions failed; rebuilding in full")
            }
        }
    }

    let sql_err = |e: DataFusionError| model_err(e.find_root().to_string());
    let frame = ctx.sql(&model.sql).await.map_err(sql_err)?;
    let mut frame = match &existing {
        Some(table) => {
            let current = table.snapshot().map_err(|e| model_err(e.to_string()))?.snapshot().arrow_schema();
            keep_dropped_columns(frame, &current, model).map_err(sql_err)?
        }
        None => frame,
    };
    for column in &model.partition_by {
        if frame.schema().field_with_unqualified_name(column).is_err() {
            return Err(model_err(format!("@partition_by column {column:?} is not among the model's columns")));
        }
    }
    if let (Some(predicate), Some(table)) = (&only, &existing) {
        // A partial replacement must not change the table's columns; a full rebuild may.
        let current = table.snapshot().map_err(|e| model_err(e.to_string()))?.snapshot().arrow_schema();
        if stored(frame.schema().as_arrow()).fields() != stored(&current).fields() {
            only = None;
        } else {
            frame = frame.filter(predicate.clone()).map_err(sql_err)?;
        }
    }
    let plan = frame.create_physical_plan().await.map_err(sql_err)?;
    let schema = stored(&plan.schema());
    let streams = datafusion::physical_plan::execute_stream_partitioned(plan, ctx.task_ctx()).map_err(sql_err)?;
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let label = model.target.to_string();
    let rows = streams
        .into_iter()
        .map(|s| super::streams::observe(with_schema(s, schema.clone()), &label, written.clone(), progress));
    let outcome = warehouse
        .replace(ReplaceRequest {
            table: model.target.clone(),
            schema: schema.clone(),
            rows: rows.collect(),
            replace_where: only,
            partition_by: model.partition_by.clone(),
            provenance: json!({ "run_id": run_id, "model": model.path.display().to_string(),
                                "inputs": inputs, "sql_sha256": sql_hash, "as_of": as_of }),
            target_file_size: maintenance.target_file_size,
        })
        .await?;
    if !outcome.added_columns.is_empty() {
        tracing::warn!(model = %model.target, columns = %outcome.added_columns.join(", "), "model has new columns");
    }
    Ok(Built::Replaced { rows: outcome.inserted, version: outcome.version.unwrap_or_default() })
}

/// Which partitions of an incremental model the changes to its inputs reach.
enum Touched {
    Nothing,
    /// Those matching the predicate.
    Only(Expr),
    All,
}

/// More touched partitions than this are rebuilt as a whole.
const MAX_TOUCHED: usize = 1000;

/// Finds the partitions of `model` that the changes to its inputs between the versions it was
/// last built from (`before`) and now can reach. A change is a data file added or removed between
/// the two versions of an input; the model's SQL runs once per changed input with that input
/// replaced by the rows of those files (old and new), and the partition values it yields are the
/// ones to recompute. Exact for models whose every output row's partition comes from the input
/// rows behind it (group-by-month and row-wise models); outer joins over a changed input reach
/// every partition, which is still correct, only not cheaper.
async fn touched(
    warehouse: &Warehouse,
    key: &[u8],
    model: &Model,
    before: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> Result<Touched, PipelineError> {
    let df_err = |e: DataFusionError| PipelineError::Query(e.find_root().to_string());
    let delta_err = |e: deltalake::DeltaTableError| PipelineError::Query(e.to_string());
    let mut partitions: HashSet<Vec<ScalarValue>> = HashSet::new();
    let mut session: Option<SessionContext> = None;
    for (name, version) in now {
        let Some(then) = before.get(name) else { return Ok(Touched::All) };
        if then == version {
            continue;
        }
        let table: TableName = name.parse().map_err(PipelineError::Query)?;
        let Some(current) = warehouse.open(&table).await? else { return Ok(Touched::All) };
        let mut old = current.clone();
        if old.load_version(*then).await.is_err() {
            // That version's log or files are gone (retention): nothing to compare with.
            return Ok(Touched::All);
        }
        let files = |t: &deltalake::DeltaTable| -> Result<BTreeSet<String>, PipelineError> {
            Ok(t.snapshot().map_err(delta_err)?.log_data().iter().map(|f| f.path().to_string()).collect())
        };
        let (files_now, files_then) = (files(&current)?, files(&old)?);
        let added: Vec<String> = files_now.difference(&files_then).cloned().collect();
        let removed: Vec<String> = files_then.difference(&files_now).cloned().collect();
        let ctx = match &session {
            Some(ctx) => ctx,
            None => session.insert(model_session(warehouse, key).await?),
        };
        let mut changes: Option<DataFrame> = None;
        for (side, paths) in [(&current, added), (&old, removed)] {
            if paths.is_empty() {
                continue;
            }
            let provider = side.table_provider().with_file_paths(paths).build().await.map_err(df_err)?;
            let frame = ctx.read_table(Arc::new(provider)).map_err(df_err)?;
            changes = Some(match changes {
                Some(other) => other.union(frame).map_err(df_err)?,
                None => frame,
            });
        }
        let Some(changes) = changes else { continue };
        let schema = ctx
            .catalog("sokana")
            .and_then(|c| c.schema(&table.schema))
            .ok_or_else(|| PipelineError::Query(format!("schema {} is missing", table.schema)))?;
        schema.deregister_table(&table.name).map_err(df_err)?;
        schema.register_table(table.name.clone(), changes.into_view()).map_err(df_err)?;
        let columns: Vec<&str> = model.partition_by.iter().map(String::as_str).collect();
        let reached = ctx.sql(&model.sql).await.and_then(|f| f.select_columns(&columns)).and_then(|f| f.distinct());
        for batch in reached.map_err(df_err)?.collect().await.map_err(df_err)? {
            for row in 0..batch.num_rows() {
                let values = (0..batch.num_columns())
                    .map(|c| ScalarValue::try_from_array(batch.column(c), row))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(df_err)?;
                partitions.insert(values);
            }
        }
        // Back to the whole table for the next input's turn.
        query::refresh(ctx, warehouse, &table).await.map_err(|e| PipelineError::Query(e.to_string()))?;
        if partitions.len() > MAX_TOUCHED {
            return Ok(Touched::All);
        }
    }
    let matches = partitions.into_iter().map(|values| {
        let terms = model.partition_by.iter().zip(values).map(|(column, value)| {
            let column = col(format!("\"{}\"", column.replace('"', "\"\"")));
            if value.is_null() { column.is_null() } else { column.eq(lit(value)) }
        });
        conjunction(terms).unwrap_or_else(|| lit(true))
    });
    Ok(match disjunction(matches) {
        Some(predicate) => Touched::Only(predicate),
        None => Touched::Nothing,
    })
}

/// Whether SQL calls a function whose value depends on when it runs.
fn reads_clock(sql: &str) -> bool {
    let sql = sql.to_lowercase();
    ["now(", "current_date", "current_timestamp", "current_time", "today("].iter().any(|f| sql.contains(f))
}

/// Columns the table has and the model no longer produces are kept, as NULL, like a column dropped
/// from a source (readers of the mart keep working; the type rules apply to the rest).
fn keep_dropped_columns(frame: DataFrame, current: &Schema, model: &Model) -> Result<DataFrame, DataFusionError> {
    let produced: BTreeSet<String> = frame.schema().fields().iter().map(|f| f.name().clone()).collect();
    let dropped: Vec<_> = current.fields().iter().filter(|f| !produced.contains(f.name())).collect();
    if dropped.is_empty() {
        return Ok(frame);
    }
    tracing::warn!(
        model = %model.target,
        columns = %dropped.iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", "),
        "the model no longer produces these columns; they are kept as NULL"
    );
    let mut exprs: Vec<_> = produced.iter().map(|name| col(format!("\"{}\"", name.replace('"', "\"\"")))).collect();
    exprs.extend(dropped.iter().map(|f| cast(lit(ScalarValue::Null), f.data_type().clone()).alias(f.name())));
    frame.select(exprs)
}

/// The schema a model's table is stored with: every field nullable (a column may be non-null in one
/// build and not the next), and DataFusion's view types as the plain types Delta tables hold.
fn stored(schema: &Schema) -> SchemaRef {
    let field = |f: &datafusion::arrow::datatypes::Field| {
        let ty = match f.data_type() {
            DataType::Utf8View => DataType::Utf8,
            DataType::BinaryView => DataType::Binary,
            other => other.clone(),
        };
        f.clone().with_data_type(ty).with_nullable(true)
    };
    Arc::new(Schema::new(schema.fields().iter().map(|f| field(f)).collect::<Vec<_>>()))
}

/// Casts each batch to `schema` (see [`stored`]).
fn with_schema(stream: SendableRecordBatchStream, schema: SchemaRef) -> SendableRecordBatchStream {
    let converted = {
        let schema = schema.clone();
        stream.map(move |batch| {
            let batch = batch?;
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(column, field)| datafusion::arrow::compute::cast(column, field.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
    };
    Box::pin(RecordBatchStreamAdapter::new(schema, converted))
}

/// The key for `pseudonym()`: from [`PSEUDONYM_KEY_ENV`], or the state directory's key file,
/// created (owner-only) with 32 random bytes on first use. Masking uses it too, so that a masked
/// raw key equals the mart's.
pub fn pseudonym_key(state_dir: &Path) -> Result<Vec<u8>, PipelineError> {
    if let Ok(key) = std::env::var(PSEUDONYM_KEY_ENV) {
        if key.len() < 16 {
            return Err(PipelineError::Key(format!("{PSEUDONYM_KEY_ENV} must be at least 16 characters")));
        }
        return Ok(key.into_bytes());
    }
    crate::keyfile::read_or_create(&state_dir.join(PSEUDONYM_KEY_FILE)).map_err(PipelineError::Key)
}
