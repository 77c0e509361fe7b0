//! Planning: a query text to the plan its scope may run (masked, parameters bound, paged),
//! memoised per text and scope, with what `auto` routing and the cache key need from it; and the
//! text the query log keeps.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::push_down_filter::PushDownFilter;
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;

use super::execute::df_error;
use super::{EngineChoice, OptimisedPlan, QueryEngine, QueryRequest, read_only};
use crate::query::cache::KeyParts;
use crate::query::catalog::{self, tables_read};
use crate::query::duck;
use crate::query::scope;
use crate::query::{Params, QueryError, SqlError};
use crate::warehouse::TableName;

/// What planning told us about a query text, kept so that a repeated query is answered from the
/// cache without being planned again.
#[derive(Debug)]
pub(super) struct Prepared {
    /// A digest of DataFusion's logical plan, complete to the last literal (normalises spelling,
    /// spacing and `SELECT *`).
    pub(super) plan: Result<String, SqlError>,
    /// The answer's columns as DataFusion plans them; `auto` gives DuckDB's answers these names
    /// and types, so a query's schema does not depend on the engine that ran it.
    pub(super) schema: Option<SchemaRef>,
    /// DuckDB's parse of the text, and the tables it names.
    pub(super) duck: Result<duck::Inspected, SqlError>,
    /// Whether every table the plan scans is a warehouse table (not `information_schema` or
    /// `pg_catalog`, which DuckDB has its own, different, versions of).
    pub(super) warehouse_only: bool,
    /// Whether an answer may be kept: the plan reads warehouse tables only (whose versions are in
    /// the key) and calls no function whose value changes between runs (`now()`, `random()`).
    pub(super) cacheable: bool,
    pub(super) tables: Vec<TableName>,
    /// The same, as the query log and the audit trail name them.
    pub(super) table_names: Arc<[String]>,
    /// Columns the optimised plan reads from warehouse tables, `schema.table.column`, as the
    /// recorder describes them (with their class, for the audit trail).
    pub(super) columns: Arc<[String]>,
    pub(super) shape: Arc<str>,
}

impl QueryEngine {
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

    /// Plans the text once per (text, scope): later runs of the same text reuse what planning found.
    pub(super) async fn prepare(&self, request: &QueryRequest) -> Result<Arc<Prepared>, QueryError> {
        let memo = (request.sql.clone(), request.caller.scope.clone());
        if let Some(found) = self.prepared.get(&memo) {
            return Ok(found);
        }
        self.catalog.refresh_names().await?;
        let state = self.state_for(&request.caller.scope);
        // A mistake in the query may be DataFusion's dialect only, and DuckDB may take it; any
        // other failure (refused, an internal fault) is not a question of dialect.
        let plan = mistake_or_fail(self.plan_in(&state, &request.sql).await)?;
        let duck = match &plan {
            Ok(plan) if crate::query::forecast::forecasts(plan) => {
                Err(SqlError::invalid("forecast() runs on DataFusion"))
            }
            _ => mistake_or_fail(duck::inspect(&request.sql))?,
        };
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
        let plan = plan.map(|p| crate::query::cache::digest(&p));
        // Worked out once per text and scope, not on every run: each run's record shares them.
        let columns = match &self.recorder {
            Some(recorder) => recorder.describe_columns(columns),
            None => columns,
        };
        let prepared = Arc::new(Prepared {
            plan,
            schema,
            duck,
            warehouse_only,
            cacheable,
            table_names: tables.iter().map(ToString::to_string).collect(),
            tables,
            columns: columns.into(),
            shape: shape.into(),
        });
        // Only what DataFusion planned is kept: a text that failed may name a table that comes later.
        if planned {
            self.prepared.insert(memo, prepared.clone());
        }
        Ok(prepared)
    }

    /// The engine that runs the query: the one asked for, or for `auto` the faster for its shape.
    pub(super) fn resolve(&self, request: &QueryRequest, prepared: &Prepared) -> Result<EngineChoice, QueryError> {
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

    /// Plans `request` on `state`, parameters bound and the page applied (one more row than the
    /// page, to tell whether another follows).
    async fn bound_plan(&self, state: &SessionState, request: &QueryRequest) -> Result<LogicalPlan, QueryError> {
        bind(self.plan_in(state, &request.sql).await?, request)
    }

    /// The plan of `request`'s text before its values are bound, and that plan optimised, reused
    /// while its tables stay at `current`: a dashboard asked for a new range runs the same texts
    /// with new values, and parsing, planning and optimising each again cost more than running
    /// it over a small table.
    async fn unbound_plan(
        &self,
        state: &SessionState,
        request: &QueryRequest,
        current: &[(TableName, i64)],
    ) -> Result<Arc<Unbound>, QueryError> {
        let key_for = |tables: &[(TableName, i64)]| {
            KeyParts {
                normalised: &request.sql,
                params: &Params::None,
                scope: &request.caller.scope,
                engine: "unbound",
                page: None,
                tables,
            }
            .key()
        };
        if let Some(found) = self.unbound.get(&key_for(current)) {
            return Ok(found);
        }
        let plan = self.plan_in(state, &request.sql).await?;
        // Optimising with placeholders in place may fail where the bound plan would not; such a
        // text is optimised after each binding instead.
        let optimised = match state.optimize(&plan) {
            Ok(optimised) => Some(optimised),
            Err(error) => {
                tracing::debug!(%error, "a plan with placeholders did not optimise; it is optimised after each binding");
                None
            }
        };
        let optimised = optimised.and_then(|optimised| {
            let types = placeholder_types(&optimised)?;
            Some((optimised, types))
        });
        let unbound = Arc::new(Unbound { plan, optimised });
        self.unbound.insert(key_for(&tables_read(&unbound.plan)), unbound.clone());
        Ok(unbound)
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
        let plan = match current {
            Some(current) => {
                let unbound = self.unbound_plan(state, request, current).await?;
                match unbound.bind_optimised(state, request)? {
                    Some(plan) => plan,
                    None => state.optimize(&bind(unbound.plan.clone(), request)?)?,
                }
            }
            None => state.optimize(&self.bound_plan(state, request).await?)?,
        };
        let read = tables_read(&plan);
        if current.is_some() {
            self.plans.insert(key_for(&read), Arc::new((plan.clone(), read.clone())));
        }
        Ok((plan, read))
    }

    /// The physical plan of `request`, the context to execute it in (with the query's own memory
    /// pool), and the table versions it reads; `reuse` as for [`Self::optimised`].
    pub(super) async fn physical(
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
}

/// `plan` with `request`'s values bound and its page applied (one more row than the page, to tell
/// whether another follows).
fn bind(mut plan: LogicalPlan, request: &QueryRequest) -> Result<LogicalPlan, QueryError> {
    if !request.params.is_empty() {
        plan = plan.with_param_values(request.params.to_datafusion())?;
    }
    if let Some(page) = request.page {
        plan = LogicalPlanBuilder::from(plan).limit(page.offset as usize, Some(page.limit as usize + 1))?.build()?;
    }
    Ok(plan)
}

/// What runs on an optimised plan once its values are bound: the expressions holding them are
/// simplified, and filters pushed down again (a filter on a placeholder is not one the Delta scan
/// can prune files by; holding literals, it is).
static AFTER_BINDING: std::sync::LazyLock<Optimizer> = std::sync::LazyLock::new(|| {
    Optimizer::with_rules(vec![
        Arc::new(SimplifyExpressions::new()) as Arc<dyn OptimizerRule + Send + Sync>,
        Arc::new(PushDownFilter::new()),
    ])
});

/// A query text's plan before its values are bound, and, when every placeholder in it has a type,
/// the same plan optimised with the types of its placeholders.
pub(super) struct Unbound {
    plan: LogicalPlan,
    optimised: Option<(LogicalPlan, HashMap<String, Option<DataType>>)>,
}

impl Unbound {
    /// The optimised plan with `request`'s values bound, its expressions simplified and its filters
    /// pushed down again (so that a bound range prunes files as it would have), when each value
    /// has the type its placeholder was optimised for (see [`Params::typed_for`]) and no page is
    /// asked; `None` when the plan must be optimised after binding instead. Optimising is correct
    /// for any value of a typed placeholder; what a literal would have allowed beyond that (a
    /// limit pushed into a sort) is forgone.
    fn bind_optimised(&self, state: &SessionState, request: &QueryRequest) -> Result<Option<LogicalPlan>, QueryError> {
        let Some((optimised, types)) = &self.optimised else { return Ok(None) };
        if request.page.is_some() {
            return Ok(None);
        }
        let Some(values) = request.params.typed_for(types) else { return Ok(None) };
        if types.is_empty() {
            return Ok(Some(optimised.clone()));
        }
        let bound = optimised.clone().with_param_values(values)?;
        Ok(Some(AFTER_BINDING.optimize(bound, state, |_, _| {})?))
    }
}

/// The type of each placeholder in `plan`, by its id (`$1`, `$name`): `None` for one that has no
/// type but is only ever cast (a `LIMIT $n`, which analysis leaves as `CAST($n AS Int64)`), where
/// the cast decides. `None` overall when an untyped one is used otherwise or two of one id differ.
fn placeholder_types(plan: &LogicalPlan) -> Option<HashMap<String, Option<DataType>>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Cast, Expr, TryCast};
    use std::collections::hash_map::Entry;
    let mut types: HashMap<String, Option<DataType>> = HashMap::new();
    // Per untyped id: its uses, and those directly under a cast.
    let mut untyped: HashMap<String, (usize, usize)> = HashMap::new();
    let mut fits = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                match e {
                    Expr::Cast(Cast { expr, .. }) | Expr::TryCast(TryCast { expr, .. }) => {
                        if let Expr::Placeholder(p) = expr.as_ref()
                            && p.field.is_none()
                        {
                            untyped.entry(p.id.clone()).or_default().1 += 1;
                        }
                    }
                    Expr::Placeholder(p) => match p.field.as_ref().map(|f| f.data_type()) {
                        None => {
                            untyped.entry(p.id.clone()).or_default().0 += 1;
                            types.entry(p.id.clone()).or_insert(None);
                        }
                        Some(found) => match types.entry(p.id.clone()) {
                            Entry::Occupied(known) => fits &= known.get().as_ref() == Some(found),
                            Entry::Vacant(slot) => {
                                slot.insert(Some(found.clone()));
                            }
                        },
                    },
                    _ => {}
                }
                Ok(if fits { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
            })
        })
    });
    fits &= untyped.iter().all(|(id, (uses, cast))| uses == cast && types.get(id).is_some_and(Option::is_none));
    fits.then_some(types)
}

/// The unoptimised plan of `sql`, which must be a query (no DDL, DML or settings).
pub(crate) async fn query_plan(state: &SessionState, sql: &str) -> Result<LogicalPlan, QueryError> {
    let plan = crate::query::forecast::plan(state, sql).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics query optimised with its placeholders in place, then bound and simplified,
    /// answers as the same query bound first and optimised after, for every range and filter.
    #[tokio::test]
    async fn a_plan_optimised_before_its_values_are_bound_answers_the_same() {
        use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
        use arrow::datatypes::{Field, Schema, TimeUnit};
        use datafusion::datasource::MemTable;
        use datafusion::prelude::SessionContext;
        use datafusion::scalar::ScalarValue;
        let hour = 3_600_000_000i64;
        let start = 1_767_243_600_000_000i64; // 2026-01-01 05:00 UTC, midnight in New York
        let utc = || Some("UTC".into());
        let schema = Arc::new(Schema::new(vec![
            Field::new("paid_at", DataType::Timestamp(TimeUnit::Microsecond, utc()), false),
            Field::new("method", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
        ]));
        let rows = 0..2_000i64;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.clone().map(|i| start + i * 7 * hour))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    rows.clone().map(|i| ["card", "cash", "check"][i as usize % 3]),
                )),
                Arc::new(Float64Array::from_iter_values(rows.map(|i| (i % 17) as f64 * 12.5))),
            ],
        )
        .expect("batch");
        let ctx = SessionContext::new();
        ctx.register_table("payments", Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("table")))
            .expect("register");
        let state = ctx.state();
        let sql = "SELECT CAST(date_trunc('month', paid_at AT TIME ZONE 'America/New_York') AS DATE) AS period, \
                   CAST(sum(amount) AS DOUBLE) AS collected, CAST(count(*) AS BIGINT) AS n FROM payments \
                   WHERE paid_at >= $1 AND paid_at < $2 AND CAST((method) AS VARCHAR) IN ($3, $4) \
                   GROUP BY 1 ORDER BY \"period\" NULLS LAST LIMIT $5";
        let plan = state.create_logical_plan(sql).await.expect("plan");
        let optimised = state.optimize(&plan).expect("optimise");
        let types = placeholder_types(&optimised).expect("every placeholder has a type");
        assert_eq!(types.len(), 5, "{types:?}");
        let unbound = Unbound { plan: plan.clone(), optimised: Some((optimised, types)) };
        let answer = |plan: LogicalPlan| {
            let ctx = &ctx;
            async move {
                let batches = ctx.execute_logical_plan(plan).await.expect("run").collect().await.expect("collect");
                arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
            }
        };
        let at = |day: i64| ScalarValue::TimestampMicrosecond(Some(start + day * 24 * hour), utc());
        let request = |params| QueryRequest {
            sql: sql.into(),
            engine: EngineChoice::Datafusion,
            params,
            page: None,
            caller: super::super::Caller::cli(),
        };
        for (from, to, methods, limit) in
            [(0, 90, ["card", "cash"], 10), (31, 400, ["check", "card"], 3), (200, 201, ["cash", "x"], 5)]
        {
            let request = request(Params::Positional(vec![
                at(from),
                at(to),
                ScalarValue::Utf8(Some(methods[0].into())),
                ScalarValue::Utf8(Some(methods[1].into())),
                ScalarValue::Int64(Some(limit)),
            ]));
            let fast =
                unbound.bind_optimised(&state, &request).expect("bind").expect("the optimised plan takes these values");
            let slow = state.optimize(&bind(plan.clone(), &request).expect("bind")).expect("optimise");
            let (fast, slow) = (answer(fast).await, answer(slow).await);
            assert_eq!(fast, slow, "{from}..{to} {methods:?} limit {limit}");
            assert!(slow.lines().count() > 4 || from == 200, "the case has rows: {slow}");
        }
        let untyped = request(Params::Positional(vec![ScalarValue::Int64(Some(1)); 5]));
        assert!(
            unbound.bind_optimised(&state, &untyped).expect("no error").is_none(),
            "values of other types are bound before optimising"
        );
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
}
