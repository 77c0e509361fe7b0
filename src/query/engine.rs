//! The query engine every reader goes through (CLI, HTTP, the wire endpoint, dashboards): one
//! read-only SQL query in, Arrow out, on DataFusion or DuckDB or whichever `auto` has learned is
//! faster for the query's plan shape. It applies the limits (time, memory, rows), the result cache
//! and the query log. It knows callers only as a name and a data-access scope; who may call it is
//! decided above it.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{SecondsFormat, Utc};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt};

use super::cache::{CachedResult, KeyParts, ResultCache};
use super::catalog::{self, WarehouseCatalog, tables_read};
use super::duck::{self, DuckSession};
use super::log::{QueryLog, QueryRecord};
use super::scope::{self, PlanPolicy, ScopedStates};
use super::{Params, QueryError, SqlError, session_config};
use crate::config::Config;
use crate::warehouse::{SCHEMAS, TableName, Warehouse};

/// Which engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    Datafusion,
    Duckdb,
    Auto,
}

impl EngineChoice {
    pub fn parse(text: &str) -> Option<EngineChoice> {
        match text {
            "datafusion" => Some(EngineChoice::Datafusion),
            "duckdb" => Some(EngineChoice::Duckdb),
            "auto" => Some(EngineChoice::Auto),
            _ => None,
        }
    }

    /// As the API, the CLI and the query log spell it.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Datafusion => "datafusion",
            EngineChoice::Duckdb => "duckdb",
            EngineChoice::Auto => "auto",
        }
    }
}

/// Who asks, as far as the engine needs to know: a name for the log and the scope that decides
/// what data they may see (part of every cache key).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub scope: String,
    /// `cli`, `http`, `pgwire` or `dashboard`.
    pub origin: &'static str,
    pub request_id: String,
    /// The client's address, for the audit trail.
    pub address: Option<std::net::IpAddr>,
}

impl Caller {
    /// The person at the terminal, who can read the warehouse's files anyway.
    pub fn cli() -> Caller {
        Caller {
            user: std::env::var("USER").unwrap_or_else(|_| "cli".into()),
            scope: "admin".into(),
            origin: "cli",
            request_id: uuid::Uuid::new_v4().to_string(),
            address: None,
        }
    }
}

/// A page of a result: `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub offset: u64,
    pub limit: u64,
}

#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub sql: String,
    pub engine: EngineChoice,
    pub params: Params,
    pub page: Option<Page>,
    pub caller: Caller,
}

/// A collected answer.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub result: Arc<CachedResult>,
    /// The cache key, also the `ETag`.
    pub key: String,
    pub cache_hit: bool,
    /// The tables read and the version of each.
    pub tables: Vec<(TableName, i64)>,
}

/// A streamed answer: batches as the engine produces them.
pub struct QueryStream {
    pub schema: SchemaRef,
    pub engine: &'static str,
    pub batches: Pin<Box<dyn Stream<Item = Result<RecordBatch, QueryError>> + Send>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_limit_mb: u64,
    pub max_rows: u64,
}

/// What planning told us about a query text, kept so that a repeated query is answered from the
/// cache without being planned again.
#[derive(Debug)]
struct Prepared {
    /// A digest of DataFusion's logical plan, complete to the last literal (normalises spelling,
    /// spacing and `SELECT *`).
    plan: Result<String, SqlError>,
    /// The answer's columns as DataFusion plans them; `auto` gives DuckDB's answers these names
    /// and types, so a query's schema does not depend on the engine that ran it.
    schema: Option<SchemaRef>,
    /// DuckDB's parse of the text, and the tables it names.
    duck: Result<duck::Inspected, SqlError>,
    /// Whether every table the plan scans is a warehouse table (not `information_schema` or
    /// `pg_catalog`, which DuckDB has its own, different, versions of).
    warehouse_only: bool,
    /// Whether an answer may be kept: the plan reads warehouse tables only (whose versions are in
    /// the key) and calls no function whose value changes between runs (`now()`, `random()`).
    cacheable: bool,
    tables: Vec<TableName>,
    /// Columns the optimised plan reads from warehouse tables, `schema.table.column`.
    columns: Vec<String>,
    shape: String,
}

pub struct QueryEngine {
    catalog: Arc<WarehouseCatalog>,
    base: SessionContext,
    duck: tokio::sync::Mutex<Option<Arc<DuckSession>>>,
    duck_available: bool,
    cache: ResultCache,
    prepared: moka::sync::Cache<(String, String), Arc<Prepared>>,
    /// Optimised plans with the table versions they read, by [`Self::optimised`]'s key.
    plans: moka::sync::Cache<String, Arc<OptimisedPlan>>,
    /// Query texts as the log and the audit trail show them (no literals), by the text: making one
    /// parses the text, which would cost a cached answer as much as the rest of it.
    log_texts: moka::sync::Cache<String, String>,
    log: Option<QueryLog>,
    routing: Mutex<Routing>,
    limits: Limits,
    default_engine: EngineChoice,
    /// The base state as each scope sees it, masked by the policy.
    scoped: ScopedStates,
    recorder: Option<Arc<dyn AccessRecorder>>,
    pub queries: AtomicU64,
    pub errors: AtomicU64,
}

/// Told of every query the engine finishes, after the query log: the audit trail hangs here.
#[async_trait::async_trait]
pub trait AccessRecorder: Send + Sync {
    /// Keeps the record; the ticket names it to [`AccessRecorder::settle`].
    fn record(&self, caller: &Caller, record: &QueryRecord) -> u64;
    /// Waits until the record with `ticket` is durable; an answer is handed over only then.
    async fn settle(&self, ticket: u64) -> Result<(), String>;
}

fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

impl QueryEngine {
    /// The engine over `warehouse` (the one `config` names), with `config`'s limits and cache,
    /// logging to `STATE_DIR/queries.db`.
    pub fn open(config: &Config, warehouse: Warehouse) -> Result<QueryEngine, QueryError> {
        let log = QueryLog::open(&config.state_dir())?;
        let q = &config.query;
        let limits = Limits {
            timeout: Duration::from_secs_f64(q.timeout_seconds),
            memory_limit_mb: q.memory_limit_mb,
            max_rows: q.max_rows,
        };
        let mut engine = QueryEngine::new(
            Arc::new(WarehouseCatalog::new(warehouse)),
            limits,
            ResultCache::new(q.cache_mb * 1024 * 1024, Duration::from_secs(q.cache_ttl_seconds)),
            Some(log),
        )?;
        engine.default_engine = EngineChoice::parse(&q.engine).unwrap_or(EngineChoice::Datafusion);
        match super::log::timings(&config.state_dir(), 10_000) {
            Ok(timings) => {
                if let Ok(mut routing) = engine.routing.lock() {
                    for (shape, engine, us) in timings {
                        if let Some(engine) = EngineChoice::parse(&engine) {
                            routing.observe(&shape, engine, us);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "auto routing starts without the query log's timings"),
        }
        Ok(engine)
    }

    pub fn new(
        catalog: Arc<WarehouseCatalog>,
        limits: Limits,
        cache: ResultCache,
        log: Option<QueryLog>,
    ) -> Result<QueryEngine, QueryError> {
        let base = SessionContext::new_with_config_rt(session_config(), super::runtime_for(catalog.warehouse())?);
        let sokana =
            base.catalog("sokana").ok_or_else(|| QueryError::Internal("the default catalog is missing".into()))?;
        for schema in SCHEMAS {
            sokana.register_schema(schema, catalog.schema_provider(schema))?;
        }
        let duck_available = catalog.warehouse().plain_local_root().is_some();
        Ok(QueryEngine {
            catalog,
            base,
            duck: tokio::sync::Mutex::new(None),
            duck_available,
            cache,
            prepared: moka::sync::Cache::new(10_000),
            // A plan holds its tables' snapshots: one no longer asked for (its tables moved on)
            // is let go within minutes rather than when a thousand others push it out.
            plans: moka::sync::Cache::builder().max_capacity(1_000).time_to_idle(Duration::from_secs(600)).build(),
            log_texts: moka::sync::Cache::new(10_000),
            log,
            routing: Mutex::new(Routing::default()),
            limits,
            default_engine: EngineChoice::Datafusion,
            scoped: ScopedStates::default(),
            recorder: None,
            queries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// Drops every cached answer (after an erasure: none may outlive the rows it came from).
    pub fn purge_cache(&self) {
        self.cache.clear();
    }

    /// Installs the masking policy: every state a scope plans in has it as an analyzer rule.
    pub fn with_policy(mut self, policy: Arc<dyn PlanPolicy>) -> QueryEngine {
        self.scoped = ScopedStates::new(Some(policy));
        self
    }

    /// Installs the recorder told of every finished query.
    pub fn with_recorder(mut self, recorder: Arc<dyn AccessRecorder>) -> QueryEngine {
        self.recorder = Some(recorder);
        self
    }

    fn sees_everything(&self, scope: &str) -> bool {
        self.scoped.sees_everything(scope)
    }

    /// The state `scope` plans in: the base state with the masking rule for `scope`.
    fn state_for(&self, scope: &str) -> SessionState {
        self.scoped.for_scope(&self.base, scope)
    }

    /// Plans `sql` in `state` (a scope's): a query only. The plan is masked when it is analysed,
    /// as every plan of the state is.
    async fn plan_in(&self, state: &SessionState, sql: &str) -> Result<LogicalPlan, QueryError> {
        let plan = query_plan(state, sql).await?;
        if let LogicalPlan::DescribeTable(_) = &plan {
            // `DESCRIBE t` shows t's columns without scanning it: the policy judges a scan of t,
            // so a table the scope may not read is not described either.
            let table = described_table(state, sql)?;
            scope::refused(state, &query_plan(state, &format!("SELECT * FROM {table}")).await?)?;
        }
        Ok(plan)
    }

    /// The plan of `sql` as `scope` may see it, unbound and unoptimised: what a wire client's
    /// Describe is answered from, so that it shows no more than running the query would (masked
    /// columns keep their types; a table the scope may not read is refused).
    pub async fn describe(&self, sql: &str, scope: &str) -> Result<LogicalPlan, QueryError> {
        self.catalog.refresh_names().await?;
        let state = self.state_for(scope);
        let plan = self.plan_in(&state, sql).await?;
        scope::refused(&state, &plan)?;
        Ok(plan)
    }

    pub fn default_engine(&self) -> EngineChoice {
        self.default_engine
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn catalog(&self) -> &Arc<WarehouseCatalog> {
        &self.catalog
    }

    pub fn cache(&self) -> &ResultCache {
        &self.cache
    }

    pub fn log(&self) -> Option<&QueryLog> {
        self.log.as_ref()
    }

    /// Adds PostgreSQL's catalog (`pg_catalog` and its functions; `current_database()` is
    /// `sokana`) for wire-protocol clients, which query it on connect. Sessions made afterwards
    /// have it.
    pub fn install_pg_catalog(&self) -> Result<(), QueryError> {
        use datafusion_postgres::datafusion_pg_catalog::pg_catalog::{context::EmptyContextProvider, setup_pg_catalog};
        setup_pg_catalog(&self.base, "sokana", EmptyContextProvider).map_err(|e| QueryError::from(*e))?;
        self.scoped.reset();
        Ok(())
    }

    /// The wire endpoint's own session, for the statements it answers itself (`SET`, `SHOW`,
    /// transactions): the shared catalog, with a memory pool of its own, and refusing any plan that
    /// reads the warehouse (queries go through [`Self::query`], as the caller's scope).
    pub fn session(&self) -> Result<SessionContext, QueryError> {
        let state = SessionStateBuilder::new_from_existing(self.scoped.for_nobody(&self.base))
            .with_runtime_env(self.runtime()?)
            .build();
        Ok(SessionContext::new_with_state(state))
    }

    /// The runtime for one query: its own memory pool (spilling to disk when a sort or join
    /// outgrows it), sharing the engine's object stores and caches (Parquet footers, file
    /// statistics), which a new runtime would start without.
    fn runtime(&self) -> Result<Arc<RuntimeEnv>, QueryError> {
        Ok(RuntimeEnvBuilder::from_runtime_env(&self.base.runtime_env())
            .with_memory_limit(self.limits.memory_limit_mb as usize * 1024 * 1024, 1.0)
            .build_arc()?)
    }

    /// Plans `sql` (placeholders left unbound) without running it: unknown tables, columns and
    /// statements that are not queries are errors.
    pub async fn validate(&self, sql: &str) -> Result<(), QueryError> {
        query_plan(&self.base.state(), sql).await?;
        Ok(())
    }

    /// Runs a query and collects its answer, from the cache when the same query over the same
    /// table versions was answered before.
    pub async fn query(&self, request: &QueryRequest) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        let at = Utc::now();
        let mut record = QueryRecord::default();
        let result = self.query_logged(request, &mut record).await;
        let ticket = self.finish(request, record, at, started, result.as_ref().err().map(QueryError::code));
        // No answer leaves before the record of it is written (a crash must not lose it).
        if let (Ok(_), Some(recorder), Some(ticket)) = (&result, &self.recorder, ticket) {
            recorder.settle(ticket).await.map_err(QueryError::Audit)?;
        }
        result
    }

    async fn query_logged(&self, request: &QueryRequest, record: &mut QueryRecord) -> Result<QueryOutput, QueryError> {
        let (prepared, engine) = self.plan_for(request, record).await?;
        let normalised = match engine {
            EngineChoice::Duckdb if request.engine == EngineChoice::Duckdb => {
                prepared.duck.as_ref().map(|d| d.normalised.clone()).map_err(|e| QueryError::Sql(e.clone()))?
            }
            _ => prepared.plan.clone().map_err(QueryError::Sql)?,
        };
        let versions = self.catalog.versions(&prepared.tables).await?;
        let tables: Vec<(TableName, i64)> =
            prepared.tables.iter().zip(versions).filter_map(|(t, v)| v.map(|v| (t.clone(), v))).collect();
        self.cache.observe_versions(&tables);
        let key_for = |tables: &[(TableName, i64)]| {
            KeyParts {
                normalised: &normalised,
                params: &request.params,
                scope: &request.caller.scope,
                // Results are keyed by the engine asked for: `auto` answers are the same whichever ran.
                engine: request.engine.name(),
                page: request.page.map(|p| (p.offset, p.limit)),
                tables,
            }
            .key()
        };
        let key = key_for(&tables);
        if prepared.cacheable
            && let Some(hit) = self.cache.get(&key).await
        {
            record.cache_hit = true;
            (record.rows, record.bytes) = (hit.rows, hit.bytes);
            return Ok(QueryOutput { result: hit, key, cache_hit: true, tables });
        }
        let run_started = Instant::now();
        let cap = if request.page.is_some() { None } else { Some(self.limits.max_rows) };
        let reuse = prepared.cacheable.then_some(tables.as_slice());
        let run = async {
            match engine {
                EngineChoice::Duckdb => {
                    let answer = self.run_duckdb(request, &prepared.tables, cap).await?;
                    match self.conformed(request, &prepared, answer) {
                        Some(answer) => Ok(answer),
                        // DuckDB's answer does not fit DataFusion's plan (a NULL where the plan has
                        // none, a type that does not cast): DataFusion answers instead.
                        None => self.run_datafusion(request, cap, reuse).await,
                    }
                }
                _ => self.run_datafusion(request, cap, reuse).await,
            }
        };
        let seconds = self.limits.timeout.as_secs_f64();
        let (schema, mut batches, read) =
            tokio::time::timeout(self.limits.timeout, run).await.map_err(|_| QueryError::Timeout { seconds })??;
        if !prepared.shape.is_empty()
            && let Ok(mut routing) = self.routing.lock()
        {
            routing.observe(&prepared.shape, engine, run_started.elapsed().as_micros() as u64);
        }
        let mut has_more = false;
        if let Some(page) = request.page {
            has_more = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>() > page.limit;
            batches = truncate(batches, page.limit);
        }
        if prepared.cacheable {
            batches = batches
                .into_iter()
                .map(super::cache::compact)
                .collect::<Result<_, _>>()
                .map_err(|e| QueryError::Format(e.to_string()))?;
        }
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let bytes = batches.iter().map(|b| b.get_array_memory_size() as u64).sum();
        (record.rows, record.bytes) = (rows, bytes);
        let result = Arc::new(CachedResult {
            schema,
            batches,
            engine: engine.name(),
            rows,
            bytes,
            has_more,
            tables: read.clone(),
            json_rows: Default::default(),
        });
        // The key of what actually ran: a commit between the version check and planning moves it.
        let key = key_for(&read);
        if prepared.cacheable {
            self.cache.insert(key.clone(), result.clone()).await;
        }
        Ok(QueryOutput { result, key, cache_hit: false, tables: read })
    }

    /// Streams a query's answer without collecting it (exports). DataFusion streams in bounded
    /// memory; a query sent to DuckDB is collected first, within the row cap.
    pub async fn stream(self: &Arc<Self>, request: &QueryRequest) -> Result<QueryStream, QueryError> {
        let started = Instant::now();
        let at = Utc::now();
        let mut record = QueryRecord::default();
        let opened = self.open_stream(request, &mut record).await;
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                self.finish(request, record, at, started, Some(e.code()));
                return Err(e);
            }
        };
        // Rows leave before the stream's own record (written at its end, with the row count), so
        // a record of its start is made durable first.
        if let Some(recorder) = &self.recorder {
            let mut opening = record.clone();
            opening.at = at.to_rfc3339_opts(SecondsFormat::Micros, true);
            opening.sql = normalise_for_log(&request.sql);
            opening.error = Some("streaming".into());
            let ticket = recorder.record(&request.caller, &opening);
            recorder.settle(ticket).await.map_err(QueryError::Audit)?;
        }
        let deadline = tokio::time::Instant::now() + self.limits.timeout;
        let seconds = self.limits.timeout.as_secs_f64();
        let logger =
            StreamLog { engine: self.clone(), request: request.clone(), record, at, started, error: None, done: false };
        let state = (stream.batches, logger);
        let batches = futures::stream::unfold(state, move |(mut inner, mut logger)| async move {
            if logger.done {
                return None;
            }
            let item = match tokio::time::timeout_at(deadline, inner.next()).await {
                Err(_) => Some(Err(QueryError::Timeout { seconds })),
                Ok(item) => item,
            };
            match item {
                None => {
                    logger.done = true;
                    logger.finish();
                    None
                }
                Some(Ok(batch)) => {
                    logger.record.rows += batch.num_rows() as u64;
                    logger.record.bytes += batch.get_array_memory_size() as u64;
                    Some((Ok(batch), (inner, logger)))
                }
                Some(Err(e)) => {
                    logger.error = Some(e.code());
                    logger.done = true;
                    logger.finish();
                    Some((Err(e), (inner, logger)))
                }
            }
        });
        Ok(QueryStream { schema: stream.schema, engine: stream.engine, batches: Box::pin(batches) })
    }

    async fn open_stream(&self, request: &QueryRequest, record: &mut QueryRecord) -> Result<Stream0, QueryError> {
        let (prepared, engine) = self.plan_for(request, record).await?;
        // DataFusion streams in bounded memory, DuckDB's answers are collected within the row
        // cap: an export streams with DataFusion unless DuckDB was asked for by name.
        if engine == EngineChoice::Duckdb && request.engine == EngineChoice::Duckdb {
            let run = self.run_duckdb(request, &prepared.tables, Some(self.limits.max_rows));
            let seconds = self.limits.timeout.as_secs_f64();
            let (schema, batches, _) =
                tokio::time::timeout(self.limits.timeout, run).await.map_err(|_| QueryError::Timeout { seconds })??;
            let batches = futures::stream::iter(batches.into_iter().map(Ok));
            return Ok(Stream0 { schema, engine: "duckdb", batches: Box::pin(batches) });
        }
        record.engine = EngineChoice::Datafusion.name().into();
        let (physical, task, _) = self.physical(request, None).await?;
        let limit = self.limits.memory_limit_mb;
        let stream = execute_stream(physical, task).map_err(|e| df_error(e, limit))?;
        let schema = stream.schema();
        let batches = stream.map(move |b| b.map_err(|e| df_error(e, limit)));
        Ok(Stream0 { schema, engine: "datafusion", batches: Box::pin(batches) })
    }

    /// What planning found for `request` and the engine that will run it, noted in its log record.
    async fn plan_for(
        &self,
        request: &QueryRequest,
        record: &mut QueryRecord,
    ) -> Result<(Arc<Prepared>, EngineChoice), QueryError> {
        let prepared = self.prepare(request).await?;
        let engine = self.resolve(request, &prepared)?;
        record.engine = engine.name().into();
        record.shape = prepared.shape.clone();
        record.tables = prepared.tables.iter().map(ToString::to_string).collect();
        record.columns = prepared.columns.clone();
        Ok((prepared, engine))
    }

    /// Plans `request` on `state`, parameters bound and the page applied (one more row than the
    /// page, to tell whether another follows).
    async fn bound_plan(&self, state: &SessionState, request: &QueryRequest) -> Result<LogicalPlan, QueryError> {
        let mut plan = self.plan_in(state, &request.sql).await?;
        if !request.params.is_empty() {
            plan = plan.with_param_values(request.params.to_datafusion())?;
        }
        if let Some(page) = request.page {
            plan =
                LogicalPlanBuilder::from(plan).limit(page.offset as usize, Some(page.limit as usize + 1))?.build()?;
        }
        Ok(plan)
    }

    /// The optimised plan of `request` on `state`, and the table versions it reads. When `current`
    /// gives the versions the tables have now, a plan made for the same text, scope, parameters
    /// and page over those versions is reused: planning and optimising cost more than a
    /// millisecond-long query. Callers pass `current` only for plans that cannot change between
    /// runs (no clock, no catalog outside the warehouse).
    async fn optimised(
        &self,
        state: &SessionState,
        request: &QueryRequest,
        current: Option<&[(TableName, i64)]>,
    ) -> Result<OptimisedPlan, QueryError> {
        let key_for = |tables: &[(TableName, i64)]| {
            KeyParts {
                normalised: &request.sql,
                params: &request.params,
                scope: &request.caller.scope,
                engine: "plan",
                page: request.page.map(|p| (p.offset, p.limit)),
                tables,
            }
            .key()
        };
        if let Some(found) = current.and_then(|current| self.plans.get(&key_for(current))) {
            return Ok(found.as_ref().clone());
        }
        let bound = self.bound_plan(state, request).await?;
        let read = tables_read(&bound);
        let plan = state.optimize(&bound)?;
        if current.is_some() {
            self.plans.insert(key_for(&read), Arc::new((plan.clone(), read.clone())));
        }
        Ok((plan, read))
    }

    /// The physical plan of `request`, the context to execute it in (with the query's own memory
    /// pool), and the table versions it reads; `reuse` as for [`Self::optimised`].
    async fn physical(
        &self,
        request: &QueryRequest,
        reuse: Option<&[(TableName, i64)]>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>, Vec<(TableName, i64)>), QueryError> {
        let state = self.state_for(&request.caller.scope);
        let (plan, read) = self.optimised(&state, request, reuse).await?;
        let limit = self.limits.memory_limit_mb;
        let physical =
            state.query_planner().create_physical_plan(&plan, &state).await.map_err(|e| df_error(e, limit))?;
        let task = Arc::new(TaskContext::from(&state).with_runtime(self.runtime()?));
        Ok((physical, task, read))
    }

    /// Runs `request` on DataFusion; `reuse` as for [`Self::optimised`].
    async fn run_datafusion(
        &self,
        request: &QueryRequest,
        cap: Option<u64>,
        reuse: Option<&[(TableName, i64)]>,
    ) -> Result<Answer, QueryError> {
        let (physical, task, read) = self.physical(request, reuse).await?;
        let limit = self.limits.memory_limit_mb;
        // Executed on the query runtime: an operator that computes long between yields would
        // otherwise hold the caller's threads and keep its timeout from firing. Aborted when the
        // caller gives up (timeout, client gone).
        let task = query_runtime().spawn(async move {
            let mut stream = execute_stream(physical, task).map_err(|e| df_error(e, limit))?;
            let schema = stream.schema();
            let mut batches = Vec::new();
            let mut rows = 0u64;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| df_error(e, limit))?;
                rows += batch.num_rows() as u64;
                if let Some(cap) = cap
                    && rows > cap
                {
                    return Err(QueryError::TooManyRows { cap });
                }
                batches.push(batch);
            }
            Ok((schema, batches))
        });
        let _abort = AbortOnDrop(task.abort_handle());
        let (schema, batches) =
            task.await.map_err(|e| QueryError::Internal(format!("the query task ended: {e}")))??;
        Ok((schema, batches, read))
    }

    async fn run_duckdb(
        &self,
        request: &QueryRequest,
        tables: &[TableName],
        cap: Option<u64>,
    ) -> Result<Answer, QueryError> {
        let session = self.duck_session(tables).await?;
        let read: Vec<(TableName, i64)> =
            tables.iter().filter_map(|t| session.version(t).map(|v| (t.clone(), v))).collect();
        let conn = session.connect()?;
        let interrupt = conn.interrupt_handle();
        let cancelled = conn.cancelled();
        let sql = match request.page {
            // Numbers only are added to the text; the query itself is unchanged inside.
            Some(page) => {
                format!("SELECT * FROM ({}) AS page LIMIT {} OFFSET {}", request.sql, page.limit + 1, page.offset)
            }
            None => request.sql.clone(),
        };
        let params = request.params.clone();
        let limit_mb = self.limits.memory_limit_mb;
        let finished = Arc::new(AtomicBool::new(false));
        let task = tokio::task::spawn_blocking({
            let finished = finished.clone();
            move || {
                let result = duck::run(&conn, &sql, &params, cap);
                finished.store(true, Ordering::SeqCst);
                result
            }
        });
        // Dropped (timeout, client gone) before DuckDB finished: interrupt it so the thread is freed.
        let guard = Interrupt { handle: Some(interrupt), finished, cancelled };
        let joined = task.await;
        guard.disarm();
        let (schema, batches) =
            joined.map_err(|e| QueryError::Internal(format!("DuckDB: {e}")))?.map_err(|e| match e {
                QueryError::Memory { detail, .. } => QueryError::Memory { limit_mb, detail },
                other => other,
            })?;
        Ok((schema, batches, read))
    }

    /// DuckDB's answer for `request`; under `auto`, with DataFusion's column names and types (a
    /// caller who asked for `auto` gets one schema whichever engine ran). `None` when it does not
    /// fit them.
    fn conformed(&self, request: &QueryRequest, prepared: &Prepared, answer: Answer) -> Option<Answer> {
        let (schema, batches, read) = answer;
        let target = match (&prepared.schema, request.engine) {
            (Some(target), EngineChoice::Auto) => target.clone(),
            _ => return Some((schema, batches, read)),
        };
        if target.fields().len() != schema.fields().len() {
            return None;
        }
        let batches = batches
            .into_iter()
            .map(|batch| {
                let columns = batch
                    .columns()
                    .iter()
                    .zip(target.fields())
                    .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                RecordBatch::try_new(target.clone(), columns)
            })
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some((target, batches, read))
    }

    /// The DuckDB database, rebuilt when a table the query reads has a newer version than its view.
    async fn duck_session(&self, tables: &[TableName]) -> Result<Arc<DuckSession>, QueryError> {
        let versions = self.catalog.versions(tables).await?;
        let mut current = self.duck.lock().await;
        if let Some(session) = current.as_ref()
            && tables.iter().zip(&versions).all(|(t, v)| session.version(t) == *v)
        {
            return Ok(session.clone());
        }
        let session = Arc::new(DuckSession::open(&self.catalog, Some(self.limits.memory_limit_mb)).await?);
        *current = Some(session.clone());
        Ok(session)
    }

    /// Plans the text once per (text, scope): later runs of the same text reuse what planning found.
    async fn prepare(&self, request: &QueryRequest) -> Result<Arc<Prepared>, QueryError> {
        let memo = (request.sql.clone(), request.caller.scope.clone());
        if let Some(found) = self.prepared.get(&memo) {
            return Ok(found);
        }
        self.catalog.refresh_names().await?;
        let state = self.state_for(&request.caller.scope);
        // A mistake in the query may be DataFusion's dialect only, and DuckDB may take it; any
        // other failure (refused, an internal fault) is not a question of dialect.
        let plan = mistake_or_fail(self.plan_in(&state, &request.sql).await)?;
        let duck = mistake_or_fail(duck::inspect(&request.sql))?;
        let (tables, shape, warehouse_only, cacheable, columns) = match (&plan, &duck) {
            (Ok(plan), _) => {
                let read: Vec<TableName> = tables_read(plan).into_iter().map(|(t, _)| t).collect();
                let warehouse_only = catalog::scans_only_warehouse(plan);
                // What the optimised plan reads: a masked column is a constant and is not read.
                // Optimising analyses it too, so the masking rule's refusal comes from here.
                let columns = match state.optimize(plan).map_err(QueryError::from) {
                    Ok(optimized) => catalog::columns_read(&optimized),
                    Err(denied @ QueryError::Denied(_)) => return Err(denied),
                    Err(_) => catalog::columns_read(plan),
                };
                (read, shape(plan), warehouse_only, warehouse_only && !varies(plan), columns)
            }
            // DataFusion could not plan it: DuckDB's dialect alone; its functions are not known here.
            (Err(_), Ok(duck)) => (duck.tables.clone(), String::new(), true, false, Vec::new()),
            (Err(e), Err(_)) => return Err(QueryError::Sql(e.clone())),
        };
        let planned = plan.is_ok();
        let schema = plan.as_ref().ok().map(|p| p.schema().inner().clone());
        let plan = plan.map(|p| super::cache::digest(&p));
        let prepared = Arc::new(Prepared { plan, schema, duck, warehouse_only, cacheable, tables, columns, shape });
        // Only what DataFusion planned is kept: a text that failed may name a table that comes later.
        if planned {
            self.prepared.insert(memo, prepared.clone());
        }
        Ok(prepared)
    }

    /// The engine that runs the query: the one asked for, or for `auto` the faster for its shape.
    fn resolve(&self, request: &QueryRequest, prepared: &Prepared) -> Result<EngineChoice, QueryError> {
        let masked = !self.sees_everything(&request.caller.scope);
        match request.engine {
            EngineChoice::Datafusion => {
                prepared.plan.as_ref().map_err(|e| QueryError::Sql(e.clone()))?;
                Ok(EngineChoice::Datafusion)
            }
            EngineChoice::Duckdb => {
                if masked {
                    return Err(QueryError::Denied(format!(
                        "the DuckDB engine is for scopes that see every column; scope {:?} queries through DataFusion, where masking applies",
                        request.caller.scope
                    )));
                }
                if !self.duck_available {
                    return Err(SqlError::invalid(duck::NEEDS_PLAIN_LOCAL).into());
                }
                prepared.duck.as_ref().map_err(|e| QueryError::Sql(e.clone()))?;
                Ok(EngineChoice::Duckdb)
            }
            EngineChoice::Auto => {
                prepared.plan.as_ref().map_err(|e| QueryError::Sql(e.clone()))?;
                if masked || !self.duck_available || prepared.duck.is_err() || !prepared.warehouse_only {
                    return Ok(EngineChoice::Datafusion);
                }
                Ok(self.routing.lock().map(|mut r| r.choose(&prepared.shape)).unwrap_or(EngineChoice::Datafusion))
            }
        }
    }

    /// Counts and logs one query; `error` is the error's code (the log keeps no messages, which
    /// may quote the SQL). The ticket of its audit record, when a recorder is installed.
    fn finish(
        &self,
        request: &QueryRequest,
        mut record: QueryRecord,
        at: chrono::DateTime<Utc>,
        started: Instant,
        error: Option<&str>,
    ) -> Option<u64> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if error.is_some() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        record.at = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        record.user = request.caller.user.clone();
        record.origin = request.caller.origin.into();
        record.request_id = request.caller.request_id.clone();
        record.sql = self.log_texts.get_with_by_ref(&request.sql, || normalise_for_log(&request.sql));
        record.duration_us = started.elapsed().as_micros() as u64;
        record.error = error.map(str::to_string);
        if record.engine.is_empty() {
            record.engine = request.engine.name().into();
        }
        let ticket = self.recorder.as_ref().map(|recorder| recorder.record(&request.caller, &record));
        if let Some(log) = &self.log {
            log.record(record);
        }
        ticket
    }
}

/// An optimised plan and the table versions it reads.
type OptimisedPlan = (LogicalPlan, Vec<(TableName, i64)>);

/// A collected answer: its schema, its batches, and the table versions it read.
type Answer = (SchemaRef, Vec<RecordBatch>, Vec<(TableName, i64)>);

/// Batches and schema of an opened stream, before it is wrapped for the log and the deadline.
struct Stream0 {
    schema: SchemaRef,
    engine: &'static str,
    batches: Pin<Box<dyn Stream<Item = Result<RecordBatch, QueryError>> + Send>>,
}

/// Logs a streamed query when it ends, or when the reader goes away before the end.
struct StreamLog {
    engine: Arc<QueryEngine>,
    request: QueryRequest,
    record: QueryRecord,
    at: chrono::DateTime<Utc>,
    started: Instant,
    error: Option<&'static str>,
    done: bool,
}

impl StreamLog {
    fn finish(&mut self) {
        let record = std::mem::take(&mut self.record);
        self.engine.finish(&self.request, record, self.at, self.started, self.error);
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        if !self.done {
            self.error = Some("disconnected");
            self.done = true;
            self.finish();
        }
    }
}

/// The runtime DataFusion queries execute on, apart from the one serving requests and timers, so
/// that a query busy on every core leaves the server able to answer, time out and cancel. Made on
/// first use, one thread per core; it lives as long as the process.
fn query_runtime() -> tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> = std::sync::OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().thread_name("sokana-query").enable_all().build().ok()
    });
    match built {
        Some(runtime) => runtime.handle().clone(),
        // Without threads for a second runtime, queries run beside everything else.
        None => tokio::runtime::Handle::current(),
    }
}

/// Aborts a spawned query task when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Interrupts a DuckDB query when dropped before being disarmed. An interrupt that arrives while
/// DuckDB is still preparing the statement is lost when execution starts, so it is repeated (every
/// 20 ms, from a short-lived thread) until the query has stopped. The connection is then closed,
/// not kept for another query.
struct Interrupt {
    handle: Option<Arc<duckdb::InterruptHandle>>,
    finished: Arc<AtomicBool>,
    cancelled: Arc<AtomicBool>,
}

impl Interrupt {
    fn disarm(mut self) {
        self.handle = None;
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        let Some(handle) = self.handle.take() else { return };
        self.cancelled.store(true, Ordering::SeqCst);
        let finished = self.finished.clone();
        let repeat = move || {
            while !finished.load(Ordering::SeqCst) {
                handle.interrupt();
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        if std::thread::Builder::new().name("duckdb-interrupt".into()).spawn(repeat).is_err() {
            tracing::warn!("could not start the thread that interrupts a cancelled DuckDB query");
        }
    }
}

fn df_error(e: DataFusionError, limit_mb: u64) -> QueryError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(detail) => QueryError::Memory { limit_mb, detail: detail.clone() },
        _ => QueryError::from(e),
    }
}

/// The first `limit` rows of `batches`.
fn truncate(batches: Vec<RecordBatch>, limit: u64) -> Vec<RecordBatch> {
    let mut left = limit as usize;
    let mut out = Vec::new();
    for batch in batches {
        if left == 0 {
            break;
        }
        let take = batch.num_rows().min(left);
        out.push(batch.slice(0, take));
        left -= take;
    }
    out
}

/// Whether the plan calls a function whose value may change from one run to the next: volatile
/// ones (`random()`) and stable ones (`now()`, `current_date`), which are fixed within one query only.
fn varies(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, Volatility};
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            let _ = expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    found = true;
                }
                Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
            });
        }
        Ok(if found { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    found
}

/// A plan's shape: its operators and the tables it reads, without expressions or literals. Queries
/// of one shape tend to favour the same engine.
fn shape(plan: &LogicalPlan) -> String {
    plan.display_indent()
        .to_string()
        .lines()
        .map(|line| {
            let depth = line.len() - line.trim_start().len();
            let node = line.trim_start();
            let name = match node.split_once(':') {
                Some(("TableScan", rest)) => format!("TableScan:{}", rest.split_whitespace().next().unwrap_or("")),
                Some((name, _)) => name.to_string(),
                None => node.to_string(),
            };
            format!("{depth}{name}")
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// The SQL as the log keeps it: parsed and printed again (spelling and spacing normalised), then
/// every literal token of the printed statement, of any kind (strings in every quoting, typed
/// strings such as `DATE '…'` and `INTERVAL '…'`, numbers, `ESCAPE` characters), replaced by `?`,
/// so the log groups queries that differ only in values and never holds the values (which may be
/// personal data). Working on tokens rather than on the syntax tree leaves no literal behind in
/// some node a tree walk does not visit. Text that does not parse is kept as a marker only.
pub fn normalise_for_log(sql: &str) -> String {
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    use datafusion::sql::sqlparser::{dialect::GenericDialect, parser::Parser};
    const UNPARSED: &str = "<SQL that did not parse>";
    let Ok(statements) = Parser::parse_sql(&GenericDialect {}, sql) else {
        return UNPARSED.into();
    };
    let printed = statements.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, &printed).tokenize() else {
        return UNPARSED.into();
    };
    let mut logged = String::with_capacity(printed.len());
    for token in tokens {
        let kept = match token {
            Token::Word(_)
            | Token::Placeholder(_)
            | Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab) => token,
            Token::Whitespace(_) => continue,
            Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => Token::Placeholder("?".into()),
            operator => operator,
        };
        logged.push_str(&kept.to_string());
    }
    logged
}

/// Per plan shape, the recent times of each engine; `auto` picks the faster.
#[derive(Default)]
struct Routing {
    shapes: HashMap<String, ShapeTimes>,
}

#[derive(Default)]
struct ShapeTimes {
    datafusion: VecDeque<u64>,
    duckdb: VecDeque<u64>,
    runs: u64,
}

/// Samples kept per engine and shape; and how many each engine needs before the choice is made on
/// times alone.
const KEEP: usize = 20;
const ENOUGH: usize = 2;
/// Once decided, one run in this many goes to the other engine, so a change in the data shows.
const RECHECK: u64 = 20;

impl Routing {
    /// Notes a run of `shape` on `engine` (DataFusion or DuckDB) that took `micros`.
    fn observe(&mut self, shape: &str, engine: EngineChoice, micros: u64) {
        let times = self.shapes.entry(shape.to_string()).or_default();
        let samples = match engine {
            EngineChoice::Duckdb => &mut times.duckdb,
            EngineChoice::Datafusion => &mut times.datafusion,
            EngineChoice::Auto => return,
        };
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(micros);
    }

    /// The engine for the next run of `shape`: DataFusion or DuckDB.
    fn choose(&mut self, shape: &str) -> EngineChoice {
        use EngineChoice::{Datafusion, Duckdb};
        let times = self.shapes.entry(shape.to_string()).or_default();
        times.runs += 1;
        // Learning: each engine runs the shape until it has a few samples (DuckDB first: it is
        // faster on most analytical shapes in our benchmark).
        if times.duckdb.len() < ENOUGH || times.datafusion.len() < ENOUGH {
            return if times.duckdb.len() <= times.datafusion.len() { Duckdb } else { Datafusion };
        }
        let faster = if median(&times.duckdb) <= median(&times.datafusion) { Duckdb } else { Datafusion };
        if times.runs.is_multiple_of(RECHECK) {
            return if faster == Duckdb { Datafusion } else { Duckdb };
        }
        faster
    }
}

/// The unoptimised plan of `sql`, which must be a query (no DDL, DML or settings).
async fn query_plan(state: &SessionState, sql: &str) -> Result<LogicalPlan, QueryError> {
    let plan = state.create_logical_plan(sql).await?;
    read_only().verify_plan(&plan)?;
    Ok(plan)
}

/// `result` with a mistake in the query kept as its value, to be weighed against the other
/// engine's reading; any other failure ends the caller.
fn mistake_or_fail<T>(result: Result<T, QueryError>) -> Result<Result<T, SqlError>, QueryError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(QueryError::Sql(mistake)) => Ok(Err(mistake)),
        Err(other) => Err(other),
    }
}

/// The table a `DESCRIBE` statement names.
fn described_table(state: &SessionState, sql: &str) -> Result<String, QueryError> {
    use datafusion::sql::parser::Statement as DfStatement;
    use datafusion::sql::sqlparser::ast::Statement;
    let dialect = state.config().options().sql_parser.dialect;
    match state.sql_to_statement(sql, &dialect)? {
        DfStatement::Statement(statement) => match *statement {
            Statement::ExplainTable { table_name, .. } => Ok(table_name.to_string()),
            _ => Err(SqlError::invalid("DESCRIBE names one table").into()),
        },
        _ => Err(SqlError::invalid("DESCRIBE names one table").into()),
    }
}

/// The lower median: of two samples the smaller, so that a shape's first run on an engine (which
/// plans or prepares it, and reads cold files) does not decide against the engine on its own.
fn median(samples: &VecDeque<u64>) -> u64 {
    let mut sorted: Vec<u64> = samples.iter().copied().collect();
    sorted.sort_unstable();
    sorted[(sorted.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_learns_the_faster_engine_per_shape_and_rechecks() {
        let mut routing = Routing::default();
        let mut picks = Vec::new();
        for _ in 0..6 {
            let pick = routing.choose("s");
            picks.push(pick);
            routing.observe("s", pick, if pick == EngineChoice::Duckdb { 900 } else { 300 });
        }
        assert_eq!(picks.iter().filter(|p| **p == EngineChoice::Duckdb).count(), ENOUGH, "{picks:?}");
        let later: Vec<EngineChoice> = (0..40).map(|_| routing.choose("s")).collect();
        let rechecks = later.iter().filter(|p| **p == EngineChoice::Duckdb).count();
        assert_eq!(rechecks, 2, "one recheck in {RECHECK}: {later:?}");
        assert_eq!(routing.choose("other"), EngineChoice::Duckdb, "a new shape starts learning");
    }

    #[test]
    fn a_cold_first_run_does_not_decide() {
        let mut routing = Routing::default();
        use EngineChoice::{Datafusion, Duckdb};
        for (engine, micros) in [(Duckdb, 9_000), (Datafusion, 3_000), (Duckdb, 1_000), (Datafusion, 2_900)] {
            routing.observe("s", engine, micros);
        }
        assert_eq!(routing.choose("s"), Duckdb);
    }

    #[test]
    fn the_log_keeps_no_literals() {
        let sql = "select * from raw.phi_clients where first_name = 'Jane' and id > 41 and x = $1";
        let logged = normalise_for_log(sql);
        assert!(!logged.contains("Jane") && !logged.contains("41"), "{logged}");
        assert!(logged.contains("$1"), "{logged}");
        assert_eq!(normalise_for_log("selec oops 'Jane'"), "<SQL that did not parse>");
    }

    /// Every kind of literal in every place a query can hold one: generated queries, each carrying
    /// a marker value, must all parse and none may leave its marker in the log.
    #[test]
    fn the_log_keeps_no_literal_of_any_kind_in_generated_sql() {
        use rand::{Rng, SeedableRng};
        let literals: &[fn(&str, u32) -> String] = &[
            |m, _| format!("'{m}'"),
            |m, _| format!("'it''s {m}'"),
            |m, _| format!("E'{m}\\n'"),
            |m, _| format!("N'{m}'"),
            |m, _| format!("U&'{m}'"),
            |m, _| format!("$${m}$$"),
            |m, _| format!("$tag${m}$tag$"),
            |_, n| format!("X'{n:08X}'"),
            |_, n| format!("{n}"),
            |_, n| format!("{n}.25"),
            |_, n| format!("{n}e3"),
            |_, n| format!("DATE '{}-01-02'", 1000 + n % 9000),
            |_, n| format!("TIMESTAMP '2024-03-{:02} 10:{:02}:00'", 1 + n % 28, n % 60),
            |_, n| format!("INTERVAL '{n} days'"),
            |_, n| format!("INTERVAL '{n}' DAY"),
            |m, _| format!("CAST('{m}' AS VARCHAR)"),
            |m, _| format!("'{m}'::text"),
        ];
        let places: &[fn(&str, &str) -> String] = &[
            |a, _| format!("SELECT * FROM raw.phi_clients WHERE first_name = {a}"),
            |a, b| format!("SELECT id FROM raw.phi_clients WHERE email IN ({a}, {b})"),
            |a, _| format!("SELECT id FROM raw.phi_clients WHERE email LIKE {a} ESCAPE '!'"),
            |a, _| format!("SELECT id FROM raw.phi_clients WHERE email ILIKE {a}"),
            |a, b| format!("SELECT {a} AS x, {b} AS y"),
            |a, b| format!("SELECT CASE WHEN status = {a} THEN {b} ELSE 'other zq' END FROM raw.phi_clients"),
            |a, b| format!("SELECT coalesce(first_name, {a}) FROM raw.phi_clients WHERE id BETWEEN {b} AND 2"),
            |a, b| format!("WITH t AS (SELECT {a} AS v) SELECT v FROM t WHERE v <> {b}"),
            |a, b| format!("SELECT * FROM (VALUES ({a}), ({b})) AS v(x)"),
            |a, _| format!("SELECT [{a}] AS list"),
            |a, b| format!("SELECT id FROM raw.phi_clients GROUP BY id HAVING count(*) > {a} ORDER BY {b}"),
            |a, _| format!("SELECT id FROM raw.phi_clients WHERE concat(first_name, {a}) IS NOT NULL LIMIT 5 OFFSET 7"),
            |a, b| format!("SELECT id FROM raw.phi_clients WHERE (first_name, last_name) = ({a}, {b})"),
            |a, _| format!("SELECT id FROM raw.phi_clients WHERE EXISTS (SELECT 1 FROM raw.payments WHERE note = {a})"),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(15);
        for round in 0..2_000u32 {
            let n = rng.random_range(1_000_000..9_000_000u32);
            let marker = format!("zq{n}x");
            let a = literals[rng.random_range(0..literals.len())](&marker, n);
            let b = literals[rng.random_range(0..literals.len())](&marker, n);
            let sql = places[rng.random_range(0..places.len())](&a, &b);
            let logged = normalise_for_log(&sql);
            assert_ne!(logged, "<SQL that did not parse>", "round {round}: {sql}");
            for secret in [marker.as_str(), &n.to_string(), &format!("{n:08X}"), "zq"] {
                assert!(!logged.contains(secret), "round {round}: {sql}\n  logged as: {logged}");
            }
        }
    }

    #[test]
    fn parser_errors_are_syntax_errors_with_their_position() {
        let parse = datafusion::sql::sqlparser::parser::ParserError::ParserError(
            "Expected: end of statement, found: x at Line: 2, Column: 8".into(),
        );
        let e = QueryError::from(DataFusionError::SQL(Box::new(parse), None));
        assert_eq!(e.code(), "syntax_error");
        assert_eq!(e.sqlstate(), "42601");
        assert_eq!(e.position(), Some(super::super::Position { line: 2, column: 8 }));
        let internal = QueryError::from(DataFusionError::Internal("a broken invariant".into()));
        assert_eq!((internal.http_status(), internal.sqlstate()), (500, "XX000"));
        assert!(!internal.public_message("r-1").contains("invariant"), "internal details stay in the log");
        let missing = QueryError::from(DataFusionError::Plan("table 'sokana.raw.nope' not found".into()));
        assert_eq!((missing.code(), missing.http_status(), missing.sqlstate()), ("not_found", 400, "42P01"));
    }
}
