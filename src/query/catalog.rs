//! The warehouse as DataFusion sees it: schemas `raw` and `marts` whose tables resolve, each time a
//! query is planned, to the table's newest committed version. A resolved table is a
//! [`VersionedTable`], so a plan carries the exact version of every table it reads; the result
//! cache keys on those versions and DuckDB's views are rebuilt from them. It reads the Delta log
//! and never writes the warehouse.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Constraints, Statistics};
use datafusion::datasource::{TableType, source_as_provider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown, TableScan};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use deltalake::DeltaTable;

use crate::warehouse::{TableName, Warehouse, WarehouseError};

/// How long the list of table names (for `information_schema` and `\d`) is trusted. Queries that
/// name a table never depend on it: a name is looked up in the warehouse when it is not listed.
const NAMES_TTL: Duration = Duration::from_secs(1);

/// A table pinned to one committed version; it answers scans exactly as delta-rs's provider does.
#[derive(Debug)]
pub struct VersionedTable {
    pub name: TableName,
    pub version: i64,
    inner: Arc<dyn TableProvider>,
}

impl VersionedTable {
    /// `inner` (a table's provider) as version `version` of warehouse table `name`.
    pub fn new(name: TableName, version: i64, inner: Arc<dyn TableProvider>) -> VersionedTable {
        VersionedTable { name, version, inner }
    }
}

#[async_trait]
impl TableProvider for VersionedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }
    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // delta-rs answers a scan of no columns from its log and ignores `limit` there: every row
        // comes back, and DataFusion, trusting the pushed limit, has dropped its own. With a limit,
        // read the first column and drop it instead.
        if let (Some(columns), Some(_)) = (projection, limit)
            && columns.is_empty()
            && !self.schema().fields().is_empty()
        {
            let one = self.inner.scan(state, Some(&vec![0]), filters, limit).await?;
            let none: Vec<ProjectionExpr> = Vec::new();
            return Ok(Arc::new(ProjectionExec::try_new(none, one)?));
        }
        self.inner.scan(state, projection, filters, limit).await
    }
    /// As the Delta provider says, except for filters that name no column (`NULL = 'x'`, which a
    /// masked column becomes): delta-rs counts those as partition filters it applies exactly, and
    /// then applies them to no row, so the filter would vanish. DataFusion keeps them instead.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        let mut answers = self.inner.supports_filters_pushdown(filters)?;
        for (answer, filter) in answers.iter_mut().zip(filters) {
            if filter.column_refs().is_empty() {
                *answer = TableProviderFilterPushDown::Unsupported;
            }
        }
        Ok(answers)
    }
    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

/// One table's open Delta handle and the provider for its loaded version.
struct Entry {
    table: DeltaTable,
    provider: Arc<VersionedTable>,
    /// On a local warehouse, the log directory's modification time when the version was checked.
    log_stamp: Option<SystemTime>,
}

/// A log directory untouched for this long, with the modification time it had at the last check,
/// has no new commit: every commit adds a file to it. The wait covers file systems that keep
/// coarse times.
const SETTLED: Duration = Duration::from_secs(1);

/// One table's slot: its entry once opened, under a lock of its own so that checking one table's
/// version never waits for another's; and, beside the lock, the provider last found current with
/// the log's time then, so that while the log stays still a check takes no lock that waits.
struct Slot {
    entry: tokio::sync::Mutex<Option<Entry>>,
    settled: Mutex<Option<(SystemTime, Arc<VersionedTable>)>>,
    /// The table's log directory on a local warehouse (made once: a check runs on every request).
    log_dir: Option<std::path::PathBuf>,
}

impl Slot {
    /// The modification time of a local table's log directory, when it has been still for
    /// [`SETTLED`]; `None` on object stores, or when it changed just now.
    fn log_stamp(&self) -> Option<SystemTime> {
        let modified = std::fs::metadata(self.log_dir.as_ref()?).and_then(|m| m.modified()).ok()?;
        SystemTime::now().duration_since(modified).is_ok_and(|age| age >= SETTLED).then_some(modified)
    }

    fn settled_at(&self, stamp: SystemTime) -> Option<Arc<VersionedTable>> {
        let settled = self.settled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        settled.as_ref().filter(|(seen, _)| *seen == stamp).map(|(_, provider)| provider.clone())
    }

    fn settle(&self, stamp: Option<SystemTime>, provider: &Arc<VersionedTable>) {
        let mut settled = self.settled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *settled = stamp.map(|stamp| (stamp, provider.clone()));
    }
}

/// Every committed warehouse table, each kept at its newest version.
pub struct WarehouseCatalog {
    warehouse: Warehouse,
    tables: Mutex<HashMap<TableName, Arc<Slot>>>,
    names: Mutex<(Vec<TableName>, Option<Instant>)>,
}

impl std::fmt::Debug for WarehouseCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarehouseCatalog").field("warehouse", &self.warehouse).finish_non_exhaustive()
    }
}

impl WarehouseCatalog {
    pub fn new(warehouse: Warehouse) -> WarehouseCatalog {
        WarehouseCatalog { warehouse, tables: Mutex::new(HashMap::new()), names: Mutex::new((Vec::new(), None)) }
    }

    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    fn slot(&self, name: &TableName) -> Arc<Slot> {
        let mut tables = self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = tables.get(name) {
            return slot.clone();
        }
        let log_dir =
            self.warehouse.local_root().map(|root| root.join(&name.schema).join(&name.name).join("_delta_log"));
        let slot = Arc::new(Slot { entry: Default::default(), settled: Default::default(), log_dir });
        tables.insert(name.clone(), slot.clone());
        slot
    }

    /// The table at its newest committed version, or `None` if it was never committed. One listing
    /// of the table's log when the table is already open; a full load only when it changed.
    pub async fn current(&self, name: &TableName) -> Result<Option<Arc<VersionedTable>>, WarehouseError> {
        let slot = self.slot(name);
        // Taken before the listing: a commit during it changes the time, and the next check lists.
        let stamp = slot.log_stamp();
        if let Some(provider) = stamp.and_then(|stamp| slot.settled_at(stamp)) {
            return Ok(Some(provider));
        }
        let mut entry = slot.entry.lock().await;
        if let Some(open) = entry.as_mut() {
            if stamp.is_some() && open.log_stamp == stamp {
                return Ok(Some(open.provider.clone()));
            }
            let loaded = open.provider.version;
            match open.table.get_latest_version().await {
                Ok(latest) if latest as i64 == loaded => {
                    open.log_stamp = stamp;
                    slot.settle(stamp, &open.provider);
                    return Ok(Some(open.provider.clone()));
                }
                Ok(_) => {
                    open.table.update_incremental(None).await.map_err(|e| WarehouseError::delta(name, e))?;
                    open.provider = pin(name, &open.table).await?;
                    open.log_stamp = stamp;
                    slot.settle(stamp, &open.provider);
                    return Ok(Some(open.provider.clone()));
                }
                // The loaded version's log was cleaned up (or the table removed): open afresh.
                Err(_) => *entry = None,
            }
        }
        let Some(table) = self.warehouse.open(name).await? else { return Ok(None) };
        let provider = pin(name, &table).await?;
        *entry = Some(Entry { table, provider: provider.clone(), log_stamp: stamp });
        slot.settle(stamp, &provider);
        // A table made since the names were listed is listed from its first use on.
        if let Ok(mut names) = self.names.lock()
            && let Err(at) = names.0.binary_search(name)
        {
            names.0.insert(at, name.clone());
        }
        Ok(Some(provider))
    }

    /// The table's Delta handle at its newest version (for DuckDB's views over its files).
    pub async fn delta(&self, name: &TableName) -> Result<Option<DeltaTable>, WarehouseError> {
        if self.current(name).await?.is_none() {
            return Ok(None);
        }
        Ok(self.slot(name).entry.lock().await.as_ref().map(|e| e.table.clone()))
    }

    /// The newest version of each table (`None` for a table that is not committed), checked side
    /// by side.
    pub async fn versions<'a>(
        &self,
        names: impl IntoIterator<Item = &'a TableName>,
    ) -> Result<Vec<Option<i64>>, WarehouseError> {
        let checks =
            names.into_iter().map(|name| async move { self.current(name).await.map(|t| t.map(|t| t.version)) });
        futures::future::try_join_all(checks).await
    }

    /// Re-lists the warehouse's tables when the cached list is older than [`NAMES_TTL`].
    pub async fn refresh_names(&self) -> Result<(), WarehouseError> {
        let fresh = self.names.lock().map(|n| n.1.is_some_and(|at| at.elapsed() < NAMES_TTL)).unwrap_or(false);
        if !fresh {
            let listed = self.warehouse.list_tables().await?;
            if let Ok(mut names) = self.names.lock() {
                *names = (listed, Some(Instant::now()));
            }
        }
        Ok(())
    }

    /// The table names last listed.
    pub fn names(&self) -> Vec<TableName> {
        self.names.lock().map(|n| n.0.clone()).unwrap_or_default()
    }

    /// A DataFusion schema provider for `schema` (`raw` or `marts`).
    pub fn schema_provider(self: &Arc<Self>, schema: &str) -> Arc<dyn SchemaProvider> {
        Arc::new(WarehouseSchema { schema: schema.to_string(), catalog: self.clone() })
    }
}

async fn pin(name: &TableName, table: &DeltaTable) -> Result<Arc<VersionedTable>, WarehouseError> {
    let version = table.version().unwrap_or(0) as i64;
    let inner = table
        .table_provider()
        .await
        .map_err(|e| WarehouseError::Invalid { table: name.to_string(), reason: e.to_string() })?;
    Ok(Arc::new(VersionedTable::new(name.clone(), version, inner)))
}

/// One warehouse schema (`raw` or `marts`) as a DataFusion [`SchemaProvider`].
#[derive(Debug)]
struct WarehouseSchema {
    schema: String,
    catalog: Arc<WarehouseCatalog>,
}

impl WarehouseSchema {
    fn table_name(&self, name: &str) -> Option<TableName> {
        format!("{}.{name}", self.schema).parse().ok()
    }
}

#[async_trait]
impl SchemaProvider for WarehouseSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.names().into_iter().filter(|t| t.schema == self.schema).map(|t| t.name).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.table_name(name) else { return Ok(None) };
        let found = self.catalog.current(&table).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(found.map(|t| t as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_name(name).is_some_and(|t| self.catalog.names().contains(&t))
    }
}

/// What a table's current snapshot says of it: its rows and when its newest file was written
/// (milliseconds since the epoch); `None` when it has no snapshot (nothing committed).
pub fn table_stats(table: &DeltaTable) -> Option<(u64, Option<i64>)> {
    let snapshot = table.snapshot().ok()?;
    let rows = snapshot.log_data().iter().filter_map(|f| f.num_records()).map(|n| n as u64).sum();
    let changed = snapshot.log_data().iter().map(|f| f.modification_time()).max();
    Some((rows, changed))
}

/// The warehouse tables a plan reads, with the version each is pinned to, sorted and deduplicated.
pub fn tables_read(plan: &LogicalPlan) -> Vec<(TableName, i64)> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(read) = warehouse_table(scan)
        {
            out.push(read);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out.sort();
    out.dedup();
    out
}

/// The warehouse table a scan reads, and its version; `None` for other tables.
pub fn warehouse_table(scan: &TableScan) -> Option<(TableName, i64)> {
    let provider = source_as_provider(&scan.source).ok()?;
    let table = (provider.as_ref() as &dyn Any).downcast_ref::<VersionedTable>()?;
    Some((table.name.clone(), table.version))
}

/// The warehouse columns a plan's scans read, as `schema.table.column`, sorted: a scan's
/// projection when the optimiser set one, else every column of the table.
pub fn columns_read(plan: &LogicalPlan) -> Vec<String> {
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some((table, _)) = warehouse_table(scan)
        {
            let schema = scan.source.schema();
            let indices: Vec<usize> = match &scan.projection {
                Some(projection) => projection.clone(),
                None => (0..schema.fields().len()).collect(),
            };
            for i in indices {
                if let Some(field) = schema.fields().get(i) {
                    out.push(format!("{table}.{}", field.name()));
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out.sort();
    out.dedup();
    out
}

/// Whether every table a plan scans is a warehouse table.
pub fn scans_only_warehouse(plan: &LogicalPlan) -> bool {
    let mut only = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            only &= warehouse_table(scan).is_some();
        }
        Ok(TreeNodeRecursion::Continue)
    });
    only
}
