//! Masking by column class, as a rewrite of the query plan: every scan of a warehouse table is
//! wrapped in a projection that shows each column as the caller's role may see it (as stored,
//! pseudonymised, or NULL). Everything above the scan (filters, joins, aggregates, subqueries,
//! CTEs, `SELECT *`) reads the masked columns, so no alias or predicate reaches a stored value.
//! Types are kept: a masked column has its stored type, so clients that described a statement
//! see the same schema they get.
//!
//! Tables marked `admin_only` are refused to other roles, and left out of the catalogs they list
//! (`information_schema`, `pg_catalog`).
//!
//! Classes come from the pipelines' [`Classifier`], the one the loader and the catalog use: a raw
//! column no pipeline lists has its pipeline's `new_column_class` (`phi` unless set). Models build
//! `marts.*` from pseudonymised keys and their columns count as `dim`; a model author who exposes
//! anything more must class it there.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast, lit};

use super::{Role, Visibility};
use crate::pipeline::spec::{Classifier, ColumnClass};
use crate::query::QueryError;
use crate::query::catalog::warehouse_table;
use crate::query::scope::PlanPolicy;
use crate::warehouse::TableName;

pub struct MaskingPolicy {
    classes: Arc<Classifier>,
    pseudonym: Arc<ScalarUDF>,
    /// Tables no one but an administrator may read (the audit trail).
    admin_only: HashSet<TableName>,
}

impl MaskingPolicy {
    /// The policy over `classes` (from the pipelines), pseudonymising with the same keyed hash
    /// the models use, so a masked `raw.*` key joins a mart's `*_key`.
    pub fn new(classes: Arc<Classifier>, pseudonym_key: &[u8]) -> MaskingPolicy {
        MaskingPolicy {
            classes,
            pseudonym: Arc::new(crate::query::functions::pseudonym(pseudonym_key)),
            admin_only: HashSet::new(),
        }
    }

    /// The same policy, refusing `tables` to everyone but administrators.
    pub fn with_admin_only(mut self, tables: HashSet<TableName>) -> MaskingPolicy {
        self.admin_only = tables;
        self
    }

    /// Whether only administrators may read `table`.
    pub fn is_admin_only(&self, table: &TableName) -> bool {
        self.admin_only.contains(table)
    }

    pub fn class_of(&self, table: &TableName, column: &str) -> ColumnClass {
        self.classes.class_of(table, column)
    }

    /// A scan of `table` as `role` sees it; `None` when nothing in it is masked.
    fn masked_scan(&self, scan: LogicalPlan, table: &TableName, role: Role) -> Result<Option<LogicalPlan>, QueryError> {
        let LogicalPlan::TableScan(ref inner) = scan else { return Ok(None) };
        let qualifier = inner.table_name.clone();
        let schema = inner.projected_schema.clone();
        let mut masked_any = false;
        let mut exprs = Vec::with_capacity(schema.fields().len());
        for (field_qualifier, field) in schema.iter() {
            let column = Expr::Column(datafusion::common::Column::new(field_qualifier.cloned(), field.name()));
            let shown = match role.sees(self.class_of(table, field.name())) {
                Visibility::Clear => {
                    exprs.push(column);
                    continue;
                }
                Visibility::Pseudonymised if is_text(field.data_type()) => {
                    let hashed = self.pseudonym.call(vec![cast(column, DataType::Utf8)]);
                    cast(hashed, field.data_type().clone())
                }
                // Keys that are not text (row numbers) would change type as hashes: hidden instead.
                Visibility::Pseudonymised | Visibility::Hidden => {
                    lit(ScalarValue::try_from(field.data_type()).map_err(|e| QueryError::Internal(e.to_string()))?)
                }
            };
            masked_any = true;
            exprs.push(shown.alias_qualified(Some(qualifier.clone()), field.name()));
        }
        if !masked_any {
            return Ok(None);
        }
        let projected = LogicalPlanBuilder::from(scan).project(exprs).and_then(|b| b.build());
        projected.map(Some).map_err(|e| QueryError::Internal(e.to_string()))
    }

    /// A scan of a catalog table with the rows that name an administrators' table left out, so
    /// `\dt` and `information_schema` do not list what the caller may not read.
    fn catalog_scan(&self, scan: &LogicalPlan) -> Result<Option<LogicalPlan>, QueryError> {
        let LogicalPlan::TableScan(inner) = scan else { return Ok(None) };
        let (Some(schema), table) = (inner.table_name.schema(), inner.table_name.table()) else { return Ok(None) };
        let Some((_, _, schema_column, name_column)) = CATALOGS.iter().find(|(s, t, _, _)| *s == schema && *t == table)
        else {
            return Ok(None);
        };
        let has = |column: &str| inner.projected_schema.fields().iter().any(|f| f.name() == column);
        if self.admin_only.is_empty() || !has(name_column) {
            return Ok(None);
        }
        let column = |name: &str| Expr::Column(datafusion::common::Column::new(Some(inner.table_name.clone()), name));
        let hidden = self.admin_only.iter().map(|t| {
            let named = column(name_column).eq(lit(t.name.clone()));
            match schema_column.filter(|c| has(c)) {
                Some(c) => named.and(column(c).eq(lit(t.schema.clone()))),
                None => named,
            }
        });
        let Some(hidden) = hidden.reduce(Expr::or) else { return Ok(None) };
        let filtered = LogicalPlanBuilder::from(scan.clone()).filter(hidden.is_not_true()).and_then(|b| b.build());
        filtered.map(Some).map_err(|e| QueryError::Internal(e.to_string()))
    }
}

/// Catalog tables that name warehouse tables: (schema, table, the column holding the schema if
/// any, the column holding the table name).
const CATALOGS: &[(&str, &str, Option<&str>, &str)] = &[
    ("information_schema", "tables", Some("table_schema"), "table_name"),
    ("information_schema", "columns", Some("table_schema"), "table_name"),
    ("information_schema", "views", Some("table_schema"), "table_name"),
    ("pg_catalog", "pg_tables", Some("schemaname"), "tablename"),
    ("pg_catalog", "pg_class", None, "relname"),
    ("system", "tables", Some("schema"), "name"),
    ("system", "table_loads", Some("schema"), "name"),
];

fn is_text(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

impl PlanPolicy for MaskingPolicy {
    fn sees_everything(&self, scope: &str) -> bool {
        Role::parse(scope).is_some_and(Role::sees_everything)
    }

    fn rewrite(&self, plan: LogicalPlan, scope: &str) -> Result<LogicalPlan, QueryError> {
        let role = Role::parse(scope).ok_or_else(|| QueryError::Internal(format!("unknown scope {scope:?}")))?;
        if role.sees_everything() {
            return Ok(plan);
        }
        let mut failure = None;
        let rewritten = plan
            .transform_up_with_subqueries(|node| {
                let table = match &node {
                    LogicalPlan::TableScan(scan) => warehouse_table(scan).map(|(name, _)| name),
                    _ => None,
                };
                let Some(table) = table else {
                    if let LogicalPlan::TableScan(scan) = &node
                        && scan.table_name.schema() == Some(crate::pipeline::system::SCHEMA)
                        && !role.allows(super::Permission::ViewPipelines)
                    {
                        failure = Some(QueryError::Denied(format!(
                            "{} shows the pipelines' runs and tables; role {role} may not view pipelines",
                            scan.table_name
                        )));
                        return Ok(Transformed::no(node));
                    }
                    return match self.catalog_scan(&node) {
                        Ok(Some(filtered)) => Ok(Transformed::yes(filtered)),
                        Ok(None) => Ok(Transformed::no(node)),
                        Err(e) => {
                            failure = Some(e);
                            Ok(Transformed::no(node))
                        }
                    };
                };
                if self.admin_only.contains(&table) {
                    failure = Some(QueryError::Denied(format!("{table} may be read by administrators only")));
                    return Ok(Transformed::no(node));
                }
                match self.masked_scan(node.clone(), &table, role) {
                    Ok(Some(masked)) => Ok(Transformed::yes(masked)),
                    Ok(None) => Ok(Transformed::no(node)),
                    Err(e) => {
                        failure = Some(e);
                        Ok(Transformed::no(node))
                    }
                }
            })
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(rewritten.data),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::pipeline::spec::Pipeline;
    use crate::query::catalog::VersionedTable;

    /// A session with `raw.payments` (two rows) and `raw.audit_log`, each a warehouse table held
    /// in memory, and the shipped pipeline's classes.
    fn fixture() -> (SessionContext, MaskingPolicy) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("client_id", DataType::Utf8, false),
            Field::new("amount", DataType::Float64, false),
            Field::new("description", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["client-a", "client-b"])),
                Arc::new(Float64Array::from(vec![10.0, 20.0])),
                Arc::new(StringArray::from(vec![Some("first visit"), None])),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        for name in ["raw.payments", "raw.audit_log"] {
            let table: TableName = name.parse().unwrap();
            let memory = MemTable::try_new(schema.clone(), vec![vec![batch.clone()]]).unwrap();
            let provider = VersionedTable::new(table.clone(), 7, Arc::new(memory));
            ctx.register_table(table.name.as_str(), Arc::new(provider)).unwrap();
        }
        let core = Pipeline::parse(Path::new("sokana_core.toml"), crate::SOKANA_CORE_PIPELINE).unwrap();
        let policy = MaskingPolicy::new(Arc::new(Classifier::new([&core])), b"a test key")
            .with_admin_only(HashSet::from(["raw.audit_log".parse().unwrap()]));
        (ctx, policy)
    }

    async fn rewritten(sql: &str, scope: &str) -> Result<LogicalPlan, QueryError> {
        let (ctx, policy) = fixture();
        let plan = ctx.state().create_logical_plan(sql).await.unwrap();
        policy.rewrite(plan, scope)
    }

    async fn run(plan: LogicalPlan) -> Vec<RecordBatch> {
        SessionContext::new().execute_logical_plan(plan).await.unwrap().collect().await.unwrap()
    }

    /// The rewrite on its own: each class as the role sees it, under a filter, a subquery and an
    /// alias, with the stored types kept.
    #[tokio::test]
    async fn the_rewrite_shows_each_column_as_the_role_sees_it() {
        let sql = "SELECT p.client_id AS who, p.amount, p.description FROM payments p \
                   WHERE p.amount IN (SELECT amount FROM payments WHERE description IS NOT NULL OR amount = 20) \
                   ORDER BY p.amount";
        let analyst = rewritten(sql, "analyst").await.unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&run(analyst.clone()).await).unwrap();
        assert!(!shown.to_string().contains("client-a"), "a key is pseudonymised:\n{shown}");
        assert!(!shown.to_string().contains("first visit"), "phi is hidden:\n{shown}");
        // The subquery's filter read the masked description: only the second row is left.
        let batches = run(analyst.clone()).await;
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
        assert!(shown.to_string().contains("20.0"), "fin is clear to analysts:\n{shown}");
        assert_eq!(analyst.schema().field(0).data_type(), &DataType::Utf8, "the stored type is kept");

        let manager = rewritten(sql, "manager").await.unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&run(manager).await).unwrap().to_string();
        assert!(shown.contains("client-b") && !shown.contains("first visit"), "{shown}");

        let admin = rewritten(sql, "admin").await.unwrap();
        let shown = datafusion::arrow::util::pretty::pretty_format_batches(&run(admin).await).unwrap().to_string();
        assert!(shown.contains("client-a") && shown.contains("first visit"), "{shown}");
    }

    #[tokio::test]
    async fn the_rewrite_refuses_an_administrators_table_anywhere_in_the_plan() {
        for sql in [
            "SELECT * FROM audit_log",
            "SELECT id FROM payments WHERE id IN (SELECT id FROM audit_log)",
            "WITH a AS (SELECT amount FROM audit_log) SELECT count(*) FROM a",
        ] {
            let refused = rewritten(sql, "manager").await;
            assert!(matches!(refused, Err(QueryError::Denied(_))), "{sql}: {refused:?}");
            assert!(rewritten(sql, "admin").await.is_ok(), "{sql}");
        }
    }
}
