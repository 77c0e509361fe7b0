//! Privacy requests about one person: everything the warehouse holds about them (export), and
//! their removal from raw tables, marts, old versions and the engine's caches (erasure). A person's
//! rows are traced through the pipelines' `subject` table and `references` (a payment through its
//! client, invoice or contract). It adds to the erasure list (`STATE/erasures.json`, kept by
//! `pipeline::erasures`), which later loads consult so that erased people are not loaded again. It writes the warehouse only through
//! `warehouse` and rebuilds marts only through `pipeline`; it knows nothing of HTTP or users (the
//! callers record the request in the audit trail).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::utils::disjunction;
use datafusion::logical_expr::{Expr, cast, ident, lit};
use datafusion::prelude::SessionContext;
use serde::Serialize;

pub use crate::pipeline::erasures::{ErasureList, ErasureListError, Withhold};

use crate::pipeline::spec::Pipeline;
use crate::pipeline::{self, PipelineError, Project};
use crate::progress::Progress;
use crate::query::{self, QueryError};
use crate::warehouse::{TableName, WarehouseError};

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    Trace(String),
    #[error(transparent)]
    List(#[from] ErasureListError),
}

impl From<datafusion::error::DataFusionError> for PrivacyError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        PrivacyError::Query(QueryError::from(e))
    }
}

/// How rows lead to a person: the tables in an order where every table comes after the tables it
/// references.
#[derive(Debug, Clone)]
pub struct Trace {
    pub subject: TableName,
    tables: Vec<TracedTable>,
}

#[derive(Debug, Clone)]
struct TracedTable {
    target: TableName,
    /// The one-column key, if the table has one (others are reached only through references).
    key: Option<String>,
    links: Vec<(String, TableName)>,
    subject: bool,
}

impl Trace {
    /// The trace of `pipelines`; an error when no table is marked `subject`, or references form a
    /// cycle.
    pub fn from_pipelines(pipelines: &[Pipeline]) -> Result<Trace, PrivacyError> {
        let mut pending: Vec<TracedTable> = Vec::new();
        for p in pipelines {
            let target_of = |source: &str| p.tables.iter().find(|t| t.source_table == source).map(|t| t.target.clone());
            for t in &p.tables {
                let links: Vec<(String, TableName)> =
                    t.references.iter().filter_map(|(c, r)| Some((c.clone(), target_of(r)?))).collect();
                if t.subject || !links.is_empty() {
                    let key = (t.primary_key.len() == 1).then(|| t.primary_key[0].clone());
                    pending.push(TracedTable { target: t.target.clone(), key, links, subject: t.subject });
                }
            }
        }
        let subjects: Vec<TableName> = pending.iter().filter(|t| t.subject).map(|t| t.target.clone()).collect();
        let [subject] = &subjects[..] else {
            return Err(PrivacyError::Trace(format!(
                "privacy requests need exactly one pipeline table marked `subject = true` (found {})",
                subjects.len()
            )));
        };
        let mut tables: Vec<TracedTable> = Vec::new();
        while !pending.is_empty() {
            // Ready: everything it references is placed already (or is not traced at all).
            let ready = pending
                .iter()
                .position(|t| t.links.iter().all(|(_, r)| r == &t.target || !pending.iter().any(|p| &p.target == r)));
            let Some(i) = ready else {
                let names: Vec<String> = pending.iter().map(|t| t.target.to_string()).collect();
                return Err(PrivacyError::Trace(format!("the references of {} form a cycle", names.join(", "))));
            };
            tables.push(pending.remove(i));
        }
        Ok(Trace { subject: subject.clone(), tables })
    }
}

/// A person's rows in one table.
#[derive(Debug, Clone)]
struct Matched {
    predicate: Expr,
    /// The keys of those rows (tables with a one-column key), as text.
    keys: Vec<String>,
    rows: u64,
}

/// Finds the person's rows in every traced table, following references in order.
async fn find(ctx: &SessionContext, trace: &Trace, client: &str) -> Result<BTreeMap<TableName, Matched>, PrivacyError> {
    let mut found: BTreeMap<TableName, Matched> = BTreeMap::new();
    for table in &trace.tables {
        let Ok(frame) = ctx.table(reference(&table.target)).await else { continue };
        let mut parts: Vec<Expr> = Vec::new();
        if let (true, Some(key)) = (table.subject, &table.key) {
            parts.push(as_text(key).eq(lit(client)));
        }
        for (column, referenced) in &table.links {
            if let Some(m) = found.get(referenced).filter(|m| !m.keys.is_empty()) {
                parts.push(as_text(column).in_list(m.keys.iter().map(lit).collect(), false));
            }
        }
        let Some(predicate) = disjunction(parts) else { continue };
        let selected = match &table.key {
            Some(key) => vec![as_text(key)],
            None => vec![lit(1)],
        };
        let batches = frame.filter(predicate.clone())?.select(selected)?.collect().await?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            continue;
        }
        let keys = if table.key.is_some() { texts(&batches) } else { Vec::new() };
        found.insert(table.target.clone(), Matched { predicate, keys, rows });
    }
    Ok(found)
}

fn reference(name: &TableName) -> datafusion::common::TableReference {
    datafusion::common::TableReference::partial(name.schema.clone(), name.name.clone())
}

fn as_text(column: &str) -> Expr {
    cast(ident(column), DataType::Utf8)
}

/// The first column of `batches`, as text.
fn texts(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for batch in batches {
        if let Some(column) = batch.column(0).as_string_opt::<i32>() {
            out.extend(column.iter().flatten().map(str::to_string));
        }
    }
    out
}

/// Rows of the marts that carry one of `values` (a key of the person's rows, or the person's
/// pseudonym) in any text column.
async fn in_marts(
    ctx: &SessionContext,
    marts: &[TableName],
    values: &BTreeSet<String>,
) -> Result<BTreeMap<TableName, Vec<RecordBatch>>, PrivacyError> {
    let mut out = BTreeMap::new();
    if values.is_empty() {
        return Ok(out);
    }
    let list: Vec<Expr> = values.iter().map(lit).collect();
    for name in marts {
        let Ok(frame) = ctx.table(reference(name)).await else { continue };
        let parts: Vec<Expr> = frame
            .schema()
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8))
            .map(|f| as_text(f.name()).in_list(list.clone(), false))
            .collect();
        let Some(predicate) = disjunction(parts) else { continue };
        let batches = frame.filter(predicate)?.collect().await?;
        if batches.iter().any(|b| b.num_rows() > 0) {
            out.insert(name.clone(), batches);
        }
    }
    Ok(out)
}

/// A session over the warehouse as it is now.
async fn session(project: &Project) -> Result<SessionContext, PrivacyError> {
    Ok(query::unmasked_session(project.warehouse()).await?)
}

/// The person's pseudonym, as the marts show it.
fn pseudonym(project: &Project, client: &str) -> Result<String, PrivacyError> {
    Ok(query::functions::pseudonym_of(&project.pseudonym_key()?, client))
}

/// Everything the warehouse holds about one person.
#[derive(Debug, Serialize)]
pub struct Export {
    pub client: String,
    pub exported_at: String,
    /// `schema.table` → its rows about the person, as JSON objects.
    pub tables: BTreeMap<String, serde_json::Value>,
}

impl Export {
    pub fn rows(&self) -> u64 {
        self.tables.values().map(|v| v.as_array().map_or(0, |a| a.len() as u64)).sum()
    }
}

/// The person's rows in the raw tables (traced through references), and the mart rows that carry
/// one of their keys or their pseudonym.
pub async fn export(project: &Project, client: &str) -> Result<Export, PrivacyError> {
    let trace = Trace::from_pipelines(project.pipelines())?;
    let (ctx, pseudonym) = (session(project).await?, pseudonym(project, client)?);
    let found = find(&ctx, &trace, client).await?;
    let mut tables = BTreeMap::new();
    for (name, matched) in &found {
        let frame = ctx.table(reference(name)).await?.filter(matched.predicate.clone())?;
        let batches: Vec<RecordBatch> = frame.collect().await?;
        tables.insert(name.to_string(), as_json(&batches)?);
    }
    let marts = marts(project).await?;
    for (name, batches) in in_marts(&ctx, &marts, &person_values(&found, client, &pseudonym)).await? {
        tables.insert(name.to_string(), as_json(&batches)?);
    }
    Ok(Export { client: client.into(), exported_at: chrono::Utc::now().to_rfc3339(), tables })
}

fn person_values(found: &BTreeMap<TableName, Matched>, client: &str, pseudonym: &str) -> BTreeSet<String> {
    let mut values: BTreeSet<String> = found.values().flat_map(|m| m.keys.iter().cloned()).collect();
    values.insert(client.to_string());
    values.insert(pseudonym.to_string());
    values
}

async fn marts(project: &Project) -> Result<Vec<TableName>, PrivacyError> {
    Ok(project.warehouse().list_tables().await?.into_iter().filter(|t| t.schema == "marts").collect())
}

fn as_json(batches: &[RecordBatch]) -> Result<serde_json::Value, PrivacyError> {
    let text = query::format(batches, query::OutputFormat::Json)?;
    serde_json::from_str(&text).map_err(|e| PrivacyError::Query(QueryError::Format(e.to_string())))
}

/// What an erasure did.
#[derive(Debug, Serialize)]
pub struct Erasure {
    pub id: String,
    pub client: String,
    /// Raw tables and the rows deleted from each.
    pub deleted: BTreeMap<String, u64>,
    /// Marts rebuilt without the person.
    pub rebuilt: Vec<String>,
    /// Mart rows that still carry one of the person's keys after the rebuild (should be 0).
    pub left_in_marts: u64,
    /// Whether the source still holds the person: later loads keep them out, and warn.
    pub source_still_holds: bool,
}

/// Removes the person from the raw tables, rebuilds the marts that read them, and cuts the
/// history of every table touched so the rows are physically gone. The person goes on the erasure
/// list first, so an erasure cut short is finished by running it again, and loads in between
/// already keep the person out. Takes every pipeline's lock: it fails at once while one runs.
pub async fn erase(project: &Project, client: &str, progress: &Arc<dyn Progress>) -> Result<Erasure, PrivacyError> {
    let trace = Trace::from_pipelines(project.pipelines())?;
    let _locks = pipeline::lock_all(project).await?;
    let warehouse = project.warehouse();
    let (ctx, pseudonym) = (session(project).await?, pseudonym(project, client)?);
    let found = find(&ctx, &trace, client).await?;

    let list = ErasureList::open(&project.config().state_dir());
    let earlier = list.tables_of(client)?;
    // Every table with rows goes on the list, keyless ones too, so a rerun knows to finish them.
    let keys: BTreeMap<String, Vec<String>> = found.iter().map(|(t, m)| (t.to_string(), m.keys.clone())).collect();
    let id = list.add(client, keys)?;

    let note = serde_json::json!({ "id": id, "at": chrono::Utc::now().to_rfc3339() });
    let mut deleted = BTreeMap::new();
    for (name, matched) in &found {
        progress.start(&name.to_string(), None);
        let rows = warehouse.delete_rows(name, matched.predicate.clone(), note.clone()).await?;
        let rows = rows.unwrap_or(matched.rows);
        progress.finish(&name.to_string(), &format!("{rows} rows erased"));
        deleted.insert(name.to_string(), rows);
    }

    let mut changed: BTreeSet<TableName> = found.keys().cloned().collect();
    changed.extend(earlier.iter().filter_map(|t| t.parse().ok()));
    let rebuilt = pipeline::rebuild_after_erasure(project, &changed, progress).await?;
    for name in changed.iter().chain(&rebuilt) {
        warehouse.forget_history(name).await?;
    }

    // A new session: the rebuilt marts and the erased tables are at new versions.
    let left = in_marts(&session(project).await?, &rebuilt, &person_values(&found, client, &pseudonym)).await?;
    let left_in_marts = left.values().flatten().map(|b| b.num_rows() as u64).sum();
    let source_still_holds = pipeline::source_holds(project, &trace.subject, client).await?;
    Ok(Erasure {
        id,
        client: client.into(),
        deleted,
        rebuilt: rebuilt.iter().map(ToString::to_string).collect(),
        left_in_marts,
        source_still_holds,
    })
}
