//! The query engine every reader goes through (CLI, HTTP, the wire endpoint, dashboards): one
//! read-only SQL query in, Arrow out, on DataFusion or DuckDB or whichever `auto` has learned is
//! faster for the query's plan shape. It applies the limits (time, memory, rows), the result cache
//! and the query log. It knows callers only as a name and a data-access scope; who may call it is
//! decided above it.

mod execute;
mod plan;
mod request;
mod routing;

pub use plan::normalise_for_log;
pub use request::{Caller, EngineChoice, Limits, Page, QueryOutput, QueryRequest, QueryStream, Reads};

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use chrono::{SecondsFormat, Utc};
use datafusion::execution::SessionState;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionContext;
use futures::{Stream, StreamExt};

use crate::config::Config;
use crate::query::QueryError;
use crate::query::cache::{CachedResult, Derived, KeyParts, ResultCache};
use crate::query::catalog::WarehouseCatalog;
use crate::query::duck::DuckSession;
use crate::query::log::{QueryLog, QueryRecord};
use crate::query::scope::{PlanPolicy, ScopedStates};
use crate::warehouse::{SCHEMAS, TableName, Warehouse};
use execute::{df_error, truncate};
use plan::Prepared;
pub(crate) use plan::query_plan;
use routing::Routing;

pub struct QueryEngine {
    catalog: Arc<WarehouseCatalog>,
    base: SessionContext,
    duck: tokio::sync::Mutex<Option<Arc<DuckSession>>>,
    duck_available: bool,
    cache: ResultCache,
    prepared: moka::sync::Cache<(String, String), Arc<Prepared>>,
    /// Optimised plans with the table versions they read, by [`Self::optimised`]'s key.
    plans: moka::sync::Cache<String, Arc<OptimisedPlan>>,
    /// Plans before their values are bound, by [`Self::unbound_plan`]'s key.
    unbound: moka::sync::Cache<String, Arc<plan::Unbound>>,
    /// Query texts as the log and the audit trail show them (no literals), by the text: making one
    /// parses the text, which would cost a cached answer as much as the rest of it.
    log_texts: moka::sync::Cache<String, Arc<str>>,
    log: Option<QueryLog>,
    /// One turn per derived answer being made (see [`QueryEngine::making`]).
    makers: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
    /// Derived answers that could not be kept (they read what may not be kept).
    volatile: moka::sync::Cache<String, ()>,
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
    /// The columns a plan reads (`schema.table.column`) as its records will carry them; asked
    /// once per planned text and scope.
    fn describe_columns(&self, columns: Vec<String>) -> Vec<String>;
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
                        routing.observe(&shape, engine, us);
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
        let base = super::session(catalog.warehouse())?;
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
            unbound: moka::sync::Cache::builder().max_capacity(1_000).time_to_idle(Duration::from_secs(600)).build(),
            log_texts: moka::sync::Cache::new(10_000),
            log,
            makers: moka::sync::Cache::builder().max_capacity(10_000).time_to_idle(Duration::from_secs(60)).build(),
            volatile: moka::sync::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(600)).build(),
            routing: Mutex::new(Routing::default()),
            limits,
            default_engine: EngineChoice::Datafusion,
            scoped: ScopedStates::default(),
            recorder: None,
            queries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// Adds a schema of tables that are not the warehouse's (the pipelines' `system` tables): plans
    /// that read them are never cached and run on DataFusion.
    pub fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn datafusion::catalog::SchemaProvider>,
    ) -> Result<(), QueryError> {
        let sokana =
            self.base.catalog("sokana").ok_or_else(|| QueryError::Internal("the default catalog is missing".into()))?;
        sokana.register_schema(name, schema)?;
        Ok(())
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
        // The engine asked for, until one is chosen (a query that fails before is logged under it).
        let mut record = QueryRecord { engine: request.engine, ..QueryRecord::default() };
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
            return Ok(QueryOutput {
                result: hit,
                key,
                cache_hit: true,
                tables,
                columns: prepared.columns.clone(),
                cacheable: true,
            });
        }
        let run_started = Instant::now();
        let cap = if request.page.is_some() { None } else { Some(self.limits.max_rows) };
        let reuse = prepared.cacheable.then_some(tables.as_slice());
        let run = async {
            match engine {
                EngineChoice::Duckdb => match self.run_duckdb(request, &prepared.tables, cap).await {
                    Ok(answer) => match self.conformed(request, &prepared, answer) {
                        Some(answer) => Ok((answer, EngineChoice::Duckdb)),
                        // DuckDB's answer does not fit DataFusion's plan (a NULL where the plan has
                        // none, a type that does not cast): DataFusion answers instead.
                        None => self.run_datafusion(request, cap, reuse).await.map(|a| (a, EngineChoice::Datafusion)),
                    },
                    // `auto` chose DuckDB for a query DataFusion planned, and DuckDB cannot run it
                    // (it needs an extension this build does not carry, such as ICU's time zones
                    // for `AT TIME ZONE`): DataFusion answers, and routing learns not to ask again.
                    Err(QueryError::Sql(e)) if request.engine == EngineChoice::Auto && prepared.plan.is_ok() => {
                        tracing::debug!(error = %e, "DuckDB could not run a query auto routed to it; DataFusion answers");
                        if let Ok(mut routing) = self.routing.lock() {
                            routing.observe(&prepared.shape, EngineChoice::Duckdb, u64::MAX / 1024);
                        }
                        self.run_datafusion(request, cap, reuse).await.map(|a| (a, EngineChoice::Datafusion))
                    }
                    Err(e) => Err(e),
                },
                _ => self.run_datafusion(request, cap, reuse).await.map(|a| (a, EngineChoice::Datafusion)),
            }
        };
        let seconds = self.limits.timeout.as_secs_f64();
        let ((schema, mut batches, read), engine) =
            tokio::time::timeout(self.limits.timeout, run).await.map_err(|_| QueryError::Timeout { seconds })??;
        record.engine = engine;
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
            engine,
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
        Ok(QueryOutput {
            result,
            key,
            cache_hit: false,
            tables: read,
            columns: prepared.columns.clone(),
            cacheable: prepared.cacheable,
        })
    }

    /// Streams a query's answer without collecting it (exports). DataFusion streams in bounded
    /// memory; a query sent to DuckDB is collected first, within the row cap.
    pub async fn stream(self: &Arc<Self>, request: &QueryRequest) -> Result<QueryStream, QueryError> {
        let started = Instant::now();
        let at = Utc::now();
        // The engine asked for, until one is chosen (a query that fails before is logged under it).
        let mut record = QueryRecord { engine: request.engine, ..QueryRecord::default() };
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
            opening.sql = self.log_text(&request.sql);
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
            return Ok(Stream0 { schema, engine: EngineChoice::Duckdb, batches: Box::pin(batches) });
        }
        record.engine = EngineChoice::Datafusion;
        let (physical, task, _) = self.physical(request, None).await?;
        let limit = self.limits.memory_limit_mb;
        let stream = execute_stream(physical, task).map_err(|e| df_error(e, limit))?;
        let schema = stream.schema();
        let batches = stream.map(move |b| b.map_err(|e| df_error(e, limit)));
        Ok(Stream0 { schema, engine: EngineChoice::Datafusion, batches: Box::pin(batches) })
    }

    /// What planning found for `request` and the engine that will run it, noted in its log record.
    async fn plan_for(
        &self,
        request: &QueryRequest,
        record: &mut QueryRecord,
    ) -> Result<(Arc<Prepared>, EngineChoice), QueryError> {
        let prepared = self.prepare(request).await?;
        let engine = self.resolve(request, &prepared)?;
        record.engine = engine;
        record.shape = prepared.shape.clone();
        record.tables = prepared.table_names.clone();
        record.columns = prepared.columns.clone();
        Ok((prepared, engine))
    }

    /// `sql` as the query log and the audit trail show it (no literals), normalised once per text.
    fn log_text(&self, sql: &str) -> Arc<str> {
        self.log_texts.get_with_by_ref(sql, || normalise_for_log(sql).into())
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
        record.sql = self.log_text(&request.sql);
        record.error = error.map(str::to_string);
        self.keep_record(&request.caller, record, at, started)
    }

    /// Logs `record` as `caller`'s and hands it to the recorder, whose ticket it returns.
    fn keep_record(
        &self,
        caller: &Caller,
        mut record: QueryRecord,
        at: chrono::DateTime<Utc>,
        started: Instant,
    ) -> Option<u64> {
        record.at = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        record.user = caller.user.clone();
        record.origin = caller.origin.into();
        record.request_id = caller.request_id.clone();
        record.duration_us = started.elapsed().as_micros() as u64;
        let ticket = self.recorder.as_ref().map(|recorder| recorder.record(caller, &record));
        if let Some(log) = &self.log {
            log.record(record);
        }
        ticket
    }

    /// The derived answer `name` kept for `caller`'s scope, if every table it read is still at
    /// the version it read: logged and recorded as one cached answer naming all it read, and
    /// handed over once that record is durable, as any answer is.
    pub async fn derived(&self, name: &str, caller: &Caller) -> Result<Option<Arc<Derived>>, QueryError> {
        let (started, at) = (Instant::now(), Utc::now());
        let key = derived_key(name, caller);
        let Some(found) = self.cache.derived(&key) else { return Ok(None) };
        let versions = self.catalog.versions(found.reads.tables.iter().map(|(t, _)| t)).await?;
        let current = found.reads.tables.iter().zip(&versions).all(|((_, read), now)| *now == Some(*read));
        if !current {
            let now: Vec<(TableName, i64)> =
                found.reads.tables.iter().zip(versions).filter_map(|((t, _), v)| v.map(|v| (t.clone(), v))).collect();
            self.cache.observe_versions(&now);
            self.cache.forget_derived(&key);
            return Ok(None);
        }
        let record = QueryRecord {
            engine: self.default_engine,
            sql: found.label.as_str().into(),
            tables: found.reads.tables.iter().map(|(t, _)| t.to_string()).collect(),
            columns: found.reads.columns.clone(),
            rows: found.reads.rows,
            bytes: found.bytes.len() as u64,
            cache_hit: true,
            ..QueryRecord::default()
        };
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let (Some(recorder), Some(ticket)) = (&self.recorder, self.keep_record(caller, record, at, started)) {
            recorder.settle(ticket).await.map_err(QueryError::Audit)?;
        }
        Ok(Some(found))
    }

    /// Keeps an answer made from this engine's answers for `caller`'s scope under `name` (which
    /// must name everything else it depends on: the filters, the size), unless it read something
    /// that may not be kept.
    pub fn keep_derived(&self, name: &str, caller: &Caller, derived: Derived) {
        let key = derived_key(name, caller);
        if derived.reads.volatile {
            self.volatile.insert(key.clone(), ());
        }
        self.cache.keep_derived(key, Arc::new(derived));
    }

    /// Waits until no other request is making the derived answer `name` for `caller`'s scope, and
    /// holds that turn until the guard is dropped: after a commit, the readers of one dashboard
    /// (live refresh redraws every open page at once) make its answer once, and the others are
    /// served what the first kept, instead of all computing it side by side. `None` when the
    /// answer was kept while this request waited, and for an answer that was not kept last time
    /// (one reading `system` tables: those are made side by side).
    pub async fn making(&self, name: &str, caller: &Caller) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let key = derived_key(name, caller);
        if self.volatile.contains_key(&key) {
            return None;
        }
        let turn = self.makers.get_with(key.clone(), || Arc::new(tokio::sync::Mutex::new(())));
        let held = turn.lock_owned().await;
        // Made while this request waited: it is read without the turn, so that the waiters'
        // reads (each awaiting its audit record) run side by side rather than one by one.
        if self.cache.has_derived(&key) {
            return None;
        }
        Some(held)
    }
}

/// Derived answers are kept per data-access scope: one scope's masked answer is never another's.
fn derived_key(name: &str, caller: &Caller) -> String {
    format!("{}\u{0}{name}", caller.scope)
}

/// An optimised plan and the table versions it reads.
type OptimisedPlan = (LogicalPlan, Vec<(TableName, i64)>);

/// A collected answer: its schema, its batches, and the table versions it read.
type Answer = (SchemaRef, Vec<RecordBatch>, Vec<(TableName, i64)>);

/// Batches and schema of an opened stream, before it is wrapped for the log and the deadline.
struct Stream0 {
    schema: SchemaRef,
    engine: EngineChoice,
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;

    #[test]
    fn parser_errors_are_syntax_errors_with_their_position() {
        let parse = datafusion::sql::sqlparser::parser::ParserError::ParserError(
            "Expected: end of statement, found: x at Line: 2, Column: 8".into(),
        );
        let e = QueryError::from(DataFusionError::SQL(Box::new(parse), None));
        assert_eq!(e.code(), "syntax_error");
        assert_eq!(e.sqlstate(), "42601");
        assert_eq!(e.position(), Some(crate::query::Position { line: 2, column: 8 }));
        let internal = QueryError::from(DataFusionError::Internal("a broken invariant".into()));
        assert_eq!((internal.http_status(), internal.sqlstate()), (500, "XX000"));
        assert!(!internal.public_message("r-1").contains("invariant"), "internal details stay in the log");
        let missing = QueryError::from(DataFusionError::Plan("table 'sokana.raw.nope' not found".into()));
        assert_eq!((missing.code(), missing.http_status(), missing.sqlstate()), ("not_found", 400, "42P01"));
    }
}
