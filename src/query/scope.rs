//! Session states by data-access scope: each scope's state carries the masking policy as an
//! analyzer rule, so every plan made in it (the engine's, a library's fallback, an `EXPLAIN`) is
//! masked when it is analysed, whoever planned it. This module owns that rule and the map of
//! states; it does not decide what a scope may see (that is the [`PlanPolicy`], from `auth`) and
//! holds no unmasked state: the only one is [`super::unmasked_session`], named for model builds
//! and privacy requests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

use super::QueryError;
use super::catalog::warehouse_table;

/// The masking hook: `auth` says how each scope sees a plan. Without one, only the `admin` scope
/// may query.
pub trait PlanPolicy: Send + Sync {
    /// Whether `scope` sees every column as stored; only such scopes may use DuckDB, which the
    /// rewrite cannot reach.
    fn sees_everything(&self, scope: &str) -> bool;
    /// `plan` as `scope` may see it.
    fn rewrite(&self, plan: LogicalPlan, scope: &str) -> Result<LogicalPlan, QueryError>;
}

/// The scope that sees everything when no policy is installed (the local command line).
const UNRESTRICTED: &str = "admin";

/// Who a state's plans are masked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Reader {
    /// A data-access scope (a role's name).
    Scope(String),
    /// No one: plans that read a warehouse table are refused. The wire endpoint's own planner,
    /// which answers `SET`, `SHOW` and transaction statements; its queries go through the engine.
    Nobody,
}

/// The analyzer rule that masks a plan for its state's reader. It runs after DataFusion's own
/// rules, so views are inlined and subqueries are plans by then.
struct Masking {
    policy: Option<Arc<dyn PlanPolicy>>,
    reader: Reader,
}

impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masking").field("reader", &self.reader).finish_non_exhaustive()
    }
}

/// Whether `scope` sees every column as stored under `policy` (without one, only `admin` does).
fn sees_everything(policy: Option<&Arc<dyn PlanPolicy>>, scope: &str) -> bool {
    match policy {
        Some(policy) => policy.sees_everything(scope),
        None => scope == UNRESTRICTED,
    }
}

impl Masking {
    fn mask(&self, plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
        let scope = match &self.reader {
            Reader::Nobody if reads_warehouse(&plan) => {
                return Err(QueryError::Denied("this planner reads no warehouse table".into()));
            }
            Reader::Nobody => return Ok(plan),
            Reader::Scope(scope) => scope,
        };
        if sees_everything(self.policy.as_ref(), scope) {
            return Ok(plan);
        }
        match &self.policy {
            Some(policy) => policy.rewrite(plan, scope),
            None => Err(QueryError::Denied(format!("scope {scope:?} may not query: no masking policy is installed"))),
        }
    }
}

impl AnalyzerRule for Masking {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        self.mask(plan).map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn name(&self) -> &str {
        "sokana_masking"
    }
}

fn reads_warehouse(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && warehouse_table(scan).is_some()
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// One session state per scope, made from the engine's base state on first use and kept; made
/// again after the base changes (a catalog or a policy installed).
#[derive(Default)]
pub struct ScopedStates {
    policy: Option<Arc<dyn PlanPolicy>>,
    states: RwLock<HashMap<Reader, SessionState>>,
}

impl ScopedStates {
    pub fn new(policy: Option<Arc<dyn PlanPolicy>>) -> ScopedStates {
        ScopedStates { policy, states: RwLock::new(HashMap::new()) }
    }

    pub fn sees_everything(&self, scope: &str) -> bool {
        sees_everything(self.policy.as_ref(), scope)
    }

    /// The state whose plans `scope` may run, masked as the policy says.
    pub fn for_scope(&self, base: &SessionContext, scope: &str) -> SessionState {
        self.state(base, Reader::Scope(scope.into()))
    }

    /// A state that plans no read of the warehouse (see [`Reader::Nobody`]).
    pub fn for_nobody(&self, base: &SessionContext) -> SessionState {
        self.state(base, Reader::Nobody)
    }

    /// Forgets every state (the base changed).
    pub fn reset(&self) {
        self.states.write().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    fn state(&self, base: &SessionContext, reader: Reader) -> SessionState {
        if let Some(found) = self.states.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&reader) {
            return found.clone();
        }
        let base = base.state();
        let mut rules = base.analyzer().rules.clone();
        rules.push(Arc::new(Masking { policy: self.policy.clone(), reader: reader.clone() }));
        let state = SessionStateBuilder::new_from_existing(base).with_analyzer_rules(rules).build();
        self.states.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(reader, state.clone());
        state
    }
}

/// `Err` when analysing `plan` in `state` refuses it: the policy's verdict on a plan that is not
/// run here (a Describe, a `DESCRIBE`). Other analysis errors are left to the run that follows.
pub fn refused(state: &SessionState, plan: &LogicalPlan) -> Result<(), QueryError> {
    match state.analyzer().execute_and_check(plan.clone(), state.config_options(), |_, _| {}) {
        Ok(_) => Ok(()),
        Err(e) => match QueryError::from(e) {
            denied @ QueryError::Denied(_) => Err(denied),
            _ => Ok(()),
        },
    }
}
