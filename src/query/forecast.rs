//! The `forecast` table function:
//!
//! ```sql
//! SELECT * FROM forecast('SELECT month, collected FROM marts.mart_revenue_monthly', horizon => 6, level => 95)
//! ```
//!
//! The first argument is a query answering one time column and one numeric column; the others,
//! named (`name => value`) or the horizon alone in second place, are `horizon` (steps ahead, 12 by
//! default), `level` (the interval's percentage, 95 by default; `levels => '80,95'` for several),
//! `grain` (`hour` … `year`, read from the times when not given), `season` (in grains; 0 for
//! none), `fill` (`zero`, the default, or `interpolate` for missing points), `model` (`auto`, the
//! default, or one model's name) and `history` (`true`, the default, to answer the series too).
//! It answers `time, value, lower, upper, model, kind` (`history` or `forecast`); with several
//! levels, `lower_80, upper_80, lower_95, upper_95`.
//!
//! This module owns planning it: the inner query is planned in the caller's own session state
//! before the outer one and put into the outer plan as the child of a forecast node, so the masking
//! rule, the audit trail's columns, the cache's table versions and the query log see the tables it
//! reads as they see any subquery's; the node runs on DataFusion only. The forecasting itself is
//! [`crate::forecast`]'s.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, SubqueryAlias, TableScan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use datafusion::sql::sqlparser::ast::{
    Expr as SqlExpr, FunctionArg, FunctionArgExpr, TableFactor, Value, ValueWithSpan, VisitMut, VisitorMut,
};

use super::{QueryError, SqlError};
use crate::forecast::{self as fc, Fill, Grain, Model, Request};

/// The function's name in SQL.
pub const NAME: &str = "forecast";

/// What a call asked, parsed and checked.
#[derive(Debug, Clone)]
struct Call {
    request: Request,
    grain: Option<Grain>,
    fill: Fill,
    history: bool,
    /// The options, canonically ([`Call::describe`]): what plan equality, hashing and `EXPLAIN`
    /// compare and show, made once rather than on every comparison.
    described: String,
}

impl Call {
    fn describe(&self) -> String {
        let levels: Vec<String> = self.request.levels.iter().map(|l| fc::table::level_name(*l)).collect();
        format!(
            "horizon={} levels={} grain={} season={} fill={:?} model={} history={}",
            self.request.horizon,
            levels.join(","),
            self.grain.map_or("auto", Grain::name),
            self.request.season.map_or("auto".to_string(), |s| s.to_string()),
            self.fill,
            self.request.model.map_or("auto", Model::name),
            self.history
        )
    }
}

fn invalid(message: impl Into<String>) -> DataFusionError {
    DataFusionError::External(Box::new(QueryError::Sql(SqlError::invalid(message))))
}

fn parse_call(args: &[Expr]) -> DfResult<(String, Call)> {
    let literal = |expr: &Expr| match expr {
        Expr::Literal(value, _) => Some(value.clone()),
        _ => None,
    };
    let text = |value: &ScalarValue| match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Some(s.clone())
        }
        _ => None,
    };
    let number = |value: &ScalarValue| -> Option<f64> {
        match value.cast_to(&DataType::Float64).ok()? {
            ScalarValue::Float64(Some(v)) => Some(v),
            _ => None,
        }
    };
    let whole = |name: &str, value: &ScalarValue| -> DfResult<usize> {
        number(value)
            .filter(|v| v.fract() == 0.0 && *v >= 0.0)
            .map(|v| v as usize)
            .ok_or_else(|| invalid(format!("forecast(): {name} must be a whole number, got {value}")))
    };
    let Some(sql) = args.first().and_then(literal).as_ref().and_then(text) else {
        return Err(invalid(
            "forecast(): its first argument is the series' query, as a string: forecast('SELECT month, amount FROM …', horizon => 6)",
        ));
    };
    let mut call =
        Call { request: Request::new(12), grain: None, fill: Fill::Zero, history: true, described: String::new() };
    let mut level_given = false;
    let mut rest = &args[1..];
    // The horizon alone may come second, unnamed.
    if let Some(value) = rest.first().and_then(literal).filter(|v| text(v).is_none()) {
        call.request.horizon = whole("horizon", &value)?;
        rest = &rest[1..];
    }
    for pair in rest.chunks(2) {
        let (Some(name), Some(value)) =
            (pair.first().and_then(literal).as_ref().and_then(text), pair.get(1).and_then(literal))
        else {
            return Err(invalid("forecast(): give options by name, e.g. horizon => 6, level => 95"));
        };
        let word = || {
            text(&value).ok_or_else(|| invalid(format!("forecast(): {name} must be a string, e.g. {name} => 'month'")))
        };
        let problem = |e: fc::ForecastError| invalid(format!("forecast(): {e}"));
        match name.as_str() {
            "horizon" => call.request.horizon = whole("horizon", &value)?,
            "level" | "levels" => {
                let levels: Option<Vec<f64>> = match text(&value) {
                    Some(list) => list.split(',').map(|l| l.trim().parse().ok()).collect(),
                    None => number(&value).map(|v| vec![v]),
                };
                call.request.levels = levels.ok_or_else(|| {
                    invalid(format!("forecast(): {name} must be a percentage, e.g. 95, or a list, '80,95'"))
                })?;
                level_given = true;
            }
            "grain" => call.grain = Some(Grain::parse(&word()?).map_err(problem)?),
            "season" => call.request.season = Some(whole("season", &value)?),
            "fill" => call.fill = Fill::parse(&word()?).map_err(problem)?,
            "model" => {
                let model = word()?;
                call.request.model = if model == "auto" { None } else { Some(Model::parse(&model).map_err(problem)?) };
            }
            "history" => {
                call.history = match value {
                    ScalarValue::Boolean(Some(b)) => b,
                    _ => return Err(invalid("forecast(): history must be true or false")),
                }
            }
            other => {
                return Err(invalid(format!(
                    "forecast(): unknown option {other:?}; use horizon, level, grain, season, fill, model or history"
                )));
            }
        }
    }
    if !level_given {
        call.request.levels = vec![95.0];
    }
    call.described = call.describe();
    Ok((sql, call))
}

/// The table function, holding the inner plans made for the outer query being planned, by the
/// key its call was given (see [`plan`]).
#[derive(Debug, Default)]
pub struct ForecastFunction {
    inner: Mutex<HashMap<String, LogicalPlan>>,
}

impl TableFunctionImpl for ForecastFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let (key, call) = parse_call(args.exprs())?;
        let inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&key).cloned();
        let Some(inner) = inner else {
            return Err(invalid("forecast() runs through Sokana's query engine (sokana sql, the API, psql)"));
        };
        let (time_type, _) = series_types(inner.schema().inner())?;
        let schema = fc::table::schema(&time_type, &call.request.levels);
        Ok(Arc::new(ForecastTable { inner, call, schema }))
    }
}

/// The time column's type and the value column's position in the inner query's answer.
fn series_types(schema: &arrow::datatypes::Schema) -> DfResult<(DataType, usize)> {
    let columns = fc::table::columns(schema).map_err(|e| invalid(format!("forecast(): {e}")))?;
    Ok((schema.field(columns.time).data_type().clone(), columns.value))
}

/// The provider a call plans to; [`plan`] replaces its scan with the forecast node at once.
#[derive(Debug)]
struct ForecastTable {
    inner: LogicalPlan,
    call: Call,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for ForecastTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(invalid("forecast() runs through Sokana's query engine (sokana sql, the API, psql)"))
    }
}

/// The forecast in a logical plan: its one input is the series' query.
#[derive(Debug, Clone)]
struct ForecastNode {
    input: LogicalPlan,
    call: Call,
    schema: DFSchemaRef,
}

impl PartialEq for ForecastNode {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input && self.call.described == other.call.described && self.schema == other.schema
    }
}

impl Eq for ForecastNode {}

impl PartialOrd for ForecastNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        match self.input.partial_cmp(&other.input)? {
            std::cmp::Ordering::Equal => Some(self.call.described.cmp(&other.call.described)),
            unequal => Some(unequal),
        }
    }
}

impl Hash for ForecastNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.call.described.hash(state);
    }
}

impl UserDefinedLogicalNodeCore for ForecastNode {
    fn name(&self) -> &str {
        "Forecast"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "Forecast: {}", self.call.described)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = inputs.pop().ok_or_else(|| DataFusionError::Internal("a forecast has one input".into()))?;
        Ok(ForecastNode { input, call: self.call.clone(), schema: self.schema.clone() })
    }

    /// The forecast needs both of its input's columns whatever is asked of it.
    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        Some(vec![(0..self.input.schema().fields().len()).collect()])
    }
}

/// Rewrites the statement's `forecast(…)` calls (named options become name, value pairs, which
/// DataFusion's planner takes), plans each one's inner query in `state`, then the whole, and puts
/// each inner plan under its forecast node. A text without `forecast` is planned as it is.
pub async fn plan(state: &SessionState, sql: &str) -> Result<LogicalPlan, QueryError> {
    let function = state.table_functions().get(NAME).map(|f| f.function().clone());
    let holder = function.as_ref().and_then(|f| (f.as_ref() as &dyn Any).downcast_ref::<ForecastFunction>());
    let Some(holder) = holder.filter(|_| sql.to_ascii_lowercase().contains(NAME)) else {
        return Ok(state.create_logical_plan(sql).await?);
    };
    let dialect = state.config().options().sql_parser.dialect;
    let mut statement = state.sql_to_statement(sql, &dialect)?;
    let mut calls = Calls::default();
    if let datafusion::sql::parser::Statement::Statement(inner) = &mut statement {
        let _ = inner.visit(&mut calls);
    }
    if let Some(problem) = calls.problem {
        return Err(SqlError::invalid(problem).into());
    }
    let mut keys = Vec::new();
    for (key, inner_sql) in calls.found {
        let inner = Box::pin(super::engine::query_plan(state, &inner_sql)).await.map_err(|e| match e {
            QueryError::Sql(mistake) => {
                QueryError::Sql(SqlError { message: format!("in forecast()'s query: {}", mistake.message), ..mistake })
            }
            other => other,
        })?;
        holder.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key.clone(), inner);
        keys.push(key);
    }
    let planned = state.statement_to_plan(statement).await;
    {
        let mut held = holder.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.iter().for_each(|key| {
            held.remove(key);
        });
    }
    Ok(inline(planned?)?)
}

/// Finds the statement's `forecast(…)` calls: each one's inner query is swapped for a key that
/// names it, and its named options for name, value pairs.
#[derive(Default)]
struct Calls {
    found: Vec<(String, String)>,
    problem: Option<String>,
}

impl VisitorMut for Calls {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table { name, args: Some(args), .. } = factor else { return ControlFlow::Continue(()) };
        if !name.to_string().eq_ignore_ascii_case(NAME) {
            return ControlFlow::Continue(());
        }
        let mut rewritten = Vec::with_capacity(args.args.len() * 2);
        for (i, arg) in std::mem::take(&mut args.args).into_iter().enumerate() {
            match arg {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(ValueWithSpan {
                    value: Value::SingleQuotedString(sql),
                    span,
                }))) if i == 0 => {
                    let key = format!("sokana-forecast-{}", uuid::Uuid::new_v4());
                    self.found.push((key.clone(), sql));
                    rewritten.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(ValueWithSpan {
                        value: Value::SingleQuotedString(key),
                        span,
                    }))));
                }
                FunctionArg::Named { name, arg: FunctionArgExpr::Expr(value), .. }
                | FunctionArg::ExprNamed {
                    name: SqlExpr::Identifier(name), arg: FunctionArgExpr::Expr(value), ..
                } => {
                    let name = SqlExpr::Value(Value::SingleQuotedString(name.value.to_ascii_lowercase()).into());
                    rewritten.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(name)));
                    rewritten.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(value)));
                }
                _ if i == 0 => {
                    self.problem = Some(
                        "forecast(): its first argument is the series' query, as a string: forecast('SELECT month, amount FROM …', horizon => 6)"
                            .into(),
                    );
                    return ControlFlow::Break(());
                }
                other => rewritten.push(other),
            }
        }
        args.args = rewritten;
        ControlFlow::Continue(())
    }
}

/// Replaces each scan of a forecast call's provider by its forecast node over the inner plan,
/// under the scan's name so that qualified columns still resolve.
fn inline(plan: LogicalPlan) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(TableScan { table_name, source, .. }) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some(table) = datafusion::datasource::source_as_provider(source).ok().and_then(|provider| {
            (provider.as_ref() as &dyn Any)
                .downcast_ref::<ForecastTable>()
                .map(|t| (t.inner.clone(), t.call.clone(), t.schema.clone()))
        }) else {
            return Ok(Transformed::no(node));
        };
        let (input, call, schema) = table;
        let schema = Arc::new(DFSchema::try_from_qualified_schema(table_name.clone(), &schema)?);
        let forecast = LogicalPlan::Extension(Extension { node: Arc::new(ForecastNode { input, call, schema }) });
        let aliased = SubqueryAlias::try_new(Arc::new(forecast), table_name.clone())?;
        Ok(Transformed::new(LogicalPlan::SubqueryAlias(aliased), true, TreeNodeRecursion::Jump))
    })
    .map(|t| t.data)
}

/// Whether `plan` forecasts: such plans run on DataFusion, which alone knows the node.
pub fn forecasts(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Extension(Extension { node }) = node
            && node.as_any().is::<ForecastNode>()
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The engine's physical planner: DataFusion's, knowing the forecast node.
#[derive(Debug)]
pub struct Planner;

#[async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(NodePlanner)])
            .create_physical_plan(plan, session)
            .await
    }
}

struct NodePlanner;

#[async_trait]
impl ExtensionPlanner for NodePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<ForecastNode>() else { return Ok(None) };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal("a forecast has one input".into()));
        };
        Ok(Some(Arc::new(ForecastExec::new(input.clone(), node.call.clone(), node.schema.inner().clone()))))
    }
}

/// Collects the series' rows, forecasts them and answers one batch.
#[derive(Debug)]
struct ForecastExec {
    input: Arc<dyn ExecutionPlan>,
    call: Call,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ForecastExec {
    fn new(input: Arc<dyn ExecutionPlan>, call: Call, schema: SchemaRef) -> ForecastExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        ForecastExec { input, call, schema, properties }
    }
}

impl DisplayAs for ForecastExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ForecastExec: {}", self.call.described)
    }
}

impl ExecutionPlan for ForecastExec {
    fn name(&self) -> &'static str {
        "ForecastExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| DataFusionError::Internal("a forecast has one input".into()))?;
        Ok(Arc::new(ForecastExec::new(input, self.call.clone(), self.schema.clone())))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("a forecast has one partition, not {partition}")));
        }
        let input = self.input.clone();
        let call = self.call.clone();
        let answer = async move {
            let batches = datafusion::physical_plan::collect(input.clone(), context).await?;
            let schema = input.schema();
            // Fitting is CPU work of milliseconds to a second: off the runtime's threads.
            tokio::task::spawn_blocking(move || forecast_batches(&batches, &schema, &call))
                .await
                .map_err(|e| DataFusionError::Internal(format!("the forecast stopped: {e}")))?
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::once(answer))))
    }
}

fn forecast_batches(
    batches: &[arrow::record_batch::RecordBatch],
    schema: &SchemaRef,
    call: &Call,
) -> DfResult<arrow::record_batch::RecordBatch> {
    let problem = |e: fc::ForecastError| invalid(format!("forecast(): {e}"));
    let (rows, time_type) = fc::table::rows(batches, schema).map_err(problem)?;
    let series = fc::Series::from_rows(rows, call.grain, call.fill).map_err(problem)?;
    let outcome = fc::forecast(&series, &call.request).map_err(problem)?;
    fc::table::batch(&outcome, &call.request.levels, &time_type, call.history).map_err(problem)
}
