//! SQL models (`pipelines/models/*.sql`): one `SELECT` per file, materialised as `marts.<file
//! stem>`, with an optional header of `-- @key: value` comment lines. Owns reading the files, finding
//! the tables each model reads (DataFusion's SQL parser, so CTEs and subqueries are understood), and
//! the build order; every error names the file and line. Building the models is `build`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use datafusion::common::TableReference;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use super::spec::SpecError;
use crate::warehouse::TableName;
use crate::warehouse::is_identifier;

/// How a model's table is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Materialized {
    /// Rebuilt in full whenever a table it reads has changed.
    Table,
    /// Only the partitions (values of `partition_by`) touched by changes to its inputs since its last
    /// build are recomputed and replaced.
    Incremental,
}

/// A parsed model file.
#[derive(Debug, Clone)]
pub struct Model {
    pub target: TableName,
    pub path: PathBuf,
    pub sql: String,
    pub materialized: Materialized,
    pub partition_by: Vec<String>,
    pub description: Option<String>,
    /// The warehouse tables the SQL reads, each with the 1-based line of its first mention.
    pub reads: BTreeMap<TableName, usize>,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.target.name
    }

    fn error(&self, line: Option<usize>, message: String) -> SpecError {
        SpecError { path: self.path.clone(), line, message }
    }

    /// Parses one model file.
    pub fn parse(path: &Path, text: &str) -> Result<Model, SpecError> {
        let err = |line: Option<usize>, message: String| SpecError { path: path.to_path_buf(), line, message };
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if !is_identifier(stem) {
            return Err(err(
                None,
                "a model's file name must be lower-case letters, digits and _ (e.g. dim_clients.sql)".into(),
            ));
        }
        let mut model = Model {
            target: TableName { schema: "marts".into(), name: stem.into() },
            path: path.to_path_buf(),
            sql: text.to_string(),
            materialized: Materialized::Table,
            partition_by: Vec::new(),
            description: None,
            reads: BTreeMap::new(),
        };
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let Some(comment) = trimmed.strip_prefix("--") else { break };
            let Some(option) = comment.trim().strip_prefix('@') else { continue };
            let (key, value) = option
                .split_once(':')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| err(Some(line_no), format!("header option {option:?} is not `-- @key: value`")))?;
            match key {
                "materialized" => {
                    model.materialized = match value {
                        "table" => Materialized::Table,
                        "incremental" => Materialized::Incremental,
                        other => {
                            return Err(err(
                                Some(line_no),
                                format!("@materialized: {other:?} is not one of table, incremental"),
                            ));
                        }
                    }
                }
                "partition_by" => {
                    model.partition_by = value.split(',').map(|c| c.trim().to_string()).collect();
                    if let Some(bad) = model.partition_by.iter().find(|c| !is_identifier(c)) {
                        return Err(err(Some(line_no), format!("@partition_by: {bad:?} is not a column name")));
                    }
                }
                "description" => model.description = Some(value.to_string()),
                other => {
                    return Err(err(
                        Some(line_no),
                        format!("unknown header option @{other} (known: materialized, partition_by, description)"),
                    ));
                }
            }
        }
        if model.materialized == Materialized::Incremental && model.partition_by.is_empty() {
            return Err(err(None, "an incremental model needs `-- @partition_by: COLUMN`".into()));
        }

        let statement = parse_query(text).map_err(|(line, message)| err(line, message))?;
        if model.materialized == Materialized::Incremental {
            incremental_is_exact(&statement).map_err(|message| err(None, message))?;
        }
        let (references, _ctes) =
            resolve_table_references(&statement, true).map_err(|e| err(None, e.find_root().to_string()))?;
        for reference in references {
            let table = table_name(&reference).map_err(|message| err(None, message))?;
            let line = line_of_reference(text, &table);
            model.reads.entry(table).or_insert(line);
        }
        Ok(model)
    }
}

/// Parses `text` as exactly one query; errors carry the line sqlparser reports.
fn parse_query(text: &str) -> Result<Statement, (Option<usize>, String)> {
    let mut statements = DFParser::parse_sql_with_dialect(text, &PostgreSqlDialect {}).map_err(|e| {
        let message = e.to_string();
        // sqlparser ends its messages with "at Line: L, Column: C".
        let line = message.rsplit_once("Line: ").and_then(|(_, rest)| rest.split(',').next()?.trim().parse().ok());
        (line, format!("SQL syntax: {message}"))
    })?;
    let statement = match (statements.pop_front(), statements.is_empty()) {
        (Some(statement), true) => statement,
        (None, _) => return Err((None, "the file holds no SQL statement".into())),
        (Some(_), false) => return Err((None, "a model holds exactly one SELECT statement".into())),
    };
    match &statement {
        Statement::Statement(inner) if matches!(**inner, datafusion::sql::sqlparser::ast::Statement::Query(_)) => {
            Ok(statement)
        }
        _ => Err((None, "a model must be a query (SELECT or WITH … SELECT), not DDL or DML".into())),
    }
}

/// Refuses the shapes for which recomputing only the partitions that changed rows reach would
/// miss others: a window function (a running total carries one month into the next) and a table
/// or CTE read twice (a self-join would pair changed rows only with changed rows).
fn incremental_is_exact(statement: &Statement) -> Result<(), String> {
    use datafusion::sql::sqlparser::ast::{Expr, visit_expressions, visit_relations};
    let Statement::Statement(query) = statement else { return Ok(()) };
    let window = visit_expressions(query.as_ref(), |expr| match expr {
        Expr::Function(f) if f.over.is_some() => ControlFlow::Break(f.name.to_string()),
        _ => ControlFlow::Continue(()),
    });
    if let ControlFlow::Break(function) = window {
        return Err(format!(
            "an incremental model cannot use window functions ({function} … OVER): use `@materialized: table`"
        ));
    }
    let mut seen = BTreeSet::new();
    let twice = visit_relations(query.as_ref(), |name| {
        // CTEs count too: a CTE over a changed table, read twice, is the same self-join.
        let name = name.to_string().to_lowercase();
        if seen.insert(name.clone()) { ControlFlow::Continue(()) } else { ControlFlow::Break(name) }
    });
    if let ControlFlow::Break(table) = twice {
        return Err(format!("an incremental model cannot read a table twice ({table}): use `@materialized: table`"));
    }
    Ok(())
}

/// The warehouse table a reference in a model names; it must be qualified (`raw.x`, `marts.x`).
fn table_name(reference: &TableReference) -> Result<TableName, String> {
    let (catalog, schema) = match reference {
        TableReference::Bare { table } => {
            return Err(format!("table {table:?} must be qualified with its schema (raw.{table} or marts.{table})"));
        }
        TableReference::Partial { schema, .. } => (None, schema.as_ref()),
        TableReference::Full { catalog, schema, .. } => (Some(catalog.as_ref()), schema.as_ref()),
    };
    if catalog.is_some_and(|c| c != "sokana") {
        return Err(format!("{reference}: the only catalog is sokana"));
    }
    format!("{schema}.{}", reference.table()).parse()
}

/// The 1-based line where `table` is first mentioned (1 if the text spells it unusually).
fn line_of_reference(text: &str, table: &TableName) -> usize {
    let lower = text.to_lowercase();
    let needle = format!("{}.{}", table.schema, table.name);
    lower.find(&needle).map_or(1, |at| lower[..at].matches('\n').count() + 1)
}

/// The project's models in build order (every model after the ones it reads).
#[derive(Debug, Clone)]
pub struct ModelGraph {
    pub models: Vec<Model>,
}

impl ModelGraph {
    /// Loads `dir/*.sql` (a missing directory means no models) and orders them. `raw_tables` are
    /// the tables the pipelines load; a model may read those and other models, nothing else.
    pub fn load(dir: &Path, raw_tables: &BTreeSet<TableName>) -> Result<ModelGraph, SpecError> {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(SpecError {
                    path: dir.to_path_buf(),
                    line: None,
                    message: format!("cannot read the models directory: {e}"),
                });
            }
        };
        paths.sort();
        let mut models = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| SpecError {
                path: path.clone(),
                line: None,
                message: e.to_string(),
            })?;
            models.push(Model::parse(&path, &text)?);
        }
        ModelGraph::order(models, raw_tables)
    }

    /// Checks every reference and sorts the models so that each comes after what it reads; a cycle
    /// is reported with its path.
    pub fn order(models: Vec<Model>, raw_tables: &BTreeSet<TableName>) -> Result<ModelGraph, SpecError> {
        let names: BTreeSet<TableName> = models.iter().map(|m| m.target.clone()).collect();
        for model in &models {
            for (table, line) in &model.reads {
                if *table == model.target {
                    return Err(model.error(Some(*line), format!("{table} reads itself")));
                }
                if !names.contains(table) && !raw_tables.contains(table) {
                    let known = if table.schema == "raw" {
                        "no pipeline loads it".to_string()
                    } else {
                        format!("there is no model file {}.sql", table.name)
                    };
                    return Err(model.error(Some(*line), format!("unknown table {table}: {known}")));
                }
            }
        }
        // Depth-first, in file-name order, so the order is stable; the stack finds cycles.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Visiting,
            Done,
        }
        fn visit(
            index: usize,
            models: &[Model],
            marks: &mut [Mark],
            stack: &mut Vec<usize>,
            order: &mut Vec<usize>,
        ) -> Result<(), SpecError> {
            match marks[index] {
                Mark::Done => return Ok(()),
                Mark::Visiting => {
                    let start = stack.iter().position(|&i| i == index).unwrap_or(0);
                    let path: Vec<String> =
                        stack[start..].iter().chain([&index]).map(|&i| models[i].target.to_string()).collect();
                    let from = &models[*stack.last().unwrap_or(&index)];
                    let line = from.reads.get(&models[index].target).copied();
                    return Err(from.error(line, format!("models form a cycle: {}", path.join(" → "))));
                }
                Mark::New => {}
            }
            marks[index] = Mark::Visiting;
            stack.push(index);
            for table in models[index].reads.keys() {
                if let Some(dep) = models.iter().position(|m| &m.target == table) {
                    visit(dep, models, marks, stack, order)?;
                }
            }
            stack.pop();
            marks[index] = Mark::Done;
            order.push(index);
            Ok(())
        }
        let mut marks = vec![Mark::New; models.len()];
        let mut order = Vec::with_capacity(models.len());
        for index in 0..models.len() {
            visit(index, &models, &mut marks, &mut Vec::new(), &mut order)?;
        }
        let mut slots: Vec<Option<Model>> = models.into_iter().map(Some).collect();
        Ok(ModelGraph { models: order.into_iter().filter_map(|i| slots[i].take()).collect() })
    }

    /// The models named in `names` and every model they read, in build order; all models if
    /// `names` is empty. An unknown name is an error listing the known ones.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Model>, String> {
        if names.is_empty() {
            return Ok(self.models.iter().collect());
        }
        let mut wanted: BTreeSet<TableName> = BTreeSet::new();
        for name in names {
            let model = self.models.iter().find(|m| m.name() == name || m.target.to_string() == *name);
            let Some(model) = model else {
                let known: Vec<&str> = self.models.iter().map(Model::name).collect();
                return Err(format!("no model named {name:?} (have: {})", known.join(", ")));
            };
            wanted.insert(model.target.clone());
        }
        // Walk backwards through the build order, so each model's inputs are added before they are seen.
        for model in self.models.iter().rev() {
            if wanted.contains(&model.target) {
                wanted.extend(model.reads.keys().filter(|t| t.schema == "marts").cloned());
            }
        }
        Ok(self.models.iter().filter(|m| wanted.contains(&m.target)).collect())
    }

    /// The models that read any of `tables`, directly or through other models, in build order.
    pub fn downstream_of(&self, tables: &BTreeSet<TableName>) -> Vec<&Model> {
        let mut reached = tables.clone();
        let mut out = Vec::new();
        for model in &self.models {
            if model.reads.keys().any(|t| reached.contains(t)) {
                reached.insert(model.target.clone());
                out.push(model);
            }
        }
        out
    }

    /// The graph as text: one model per line in build order, with what it reads.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (step, model) in self.models.iter().enumerate() {
            let reads: Vec<String> = model.reads.keys().map(ToString::to_string).collect();
            let _ = writeln!(out, "{:>3}. {} ← {}", step + 1, model.target, reads.join(", "));
        }
        out
    }

    /// The graph in Graphviz DOT, edges from each table to the models that read it.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph models {\n  rankdir=LR;\n  node [shape=box];\n");
        let raw: BTreeSet<&TableName> =
            self.models.iter().flat_map(|m| m.reads.keys()).filter(|t| t.schema == "raw").collect();
        for table in raw {
            let _ = writeln!(out, "  \"{table}\" [style=dashed];");
        }
        for model in &self.models {
            let _ = writeln!(out, "  \"{}\";", model.target);
            for table in model.reads.keys() {
                let _ = writeln!(out, "  \"{table}\" -> \"{}\";", model.target);
            }
        }
        out.push_str("}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, sql: &str) -> Result<Model, SpecError> {
        Model::parse(Path::new(&format!("models/{name}.sql")), sql)
    }

    fn raw(names: &[&str]) -> BTreeSet<TableName> {
        names.iter().map(|n| format!("raw.{n}").parse().expect("table name")).collect()
    }

    #[test]
    fn header_and_references() {
        let m = model(
            "mart_x",
            "-- Monthly figures.\n-- @materialized: incremental\n-- @partition_by: month\n\
             WITH p AS (SELECT * FROM raw.payments)\nSELECT month FROM p JOIN marts.dim_clients d ON true",
        )
        .expect("parses");
        assert_eq!(m.materialized, Materialized::Incremental);
        assert_eq!(m.partition_by, ["month"]);
        let reads: Vec<(String, usize)> = m.reads.iter().map(|(t, l)| (t.to_string(), *l)).collect();
        assert_eq!(reads, [("marts.dim_clients".to_string(), 5), ("raw.payments".to_string(), 4)]);
    }

    #[test]
    fn bad_files_name_the_line() {
        let e = model("m", "-- @materialised: table\nSELECT 1").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("unknown header option @materialised"), "{e}");
        let e = model("m", "SELECT a,\nFROM raw.payments WHERE").unwrap_err();
        assert!(e.message.starts_with("SQL syntax"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(model("m", "DELETE FROM raw.payments").unwrap_err().message.contains("must be a query"));
        assert!(model("m", "SELECT * FROM payments").unwrap_err().message.contains("must be qualified"));
        assert!(model("m", "SELECT 1; SELECT 2").unwrap_err().message.contains("exactly one"));
        let incremental = "-- @materialized: incremental\n-- @partition_by: month\n";
        let e = model("m", &format!("{incremental}SELECT month, sum(n) OVER (ORDER BY month) FROM raw.t")).unwrap_err();
        assert!(e.message.contains("window functions"), "{e}");
        let e =
            model("m", &format!("{incremental}SELECT a.month FROM raw.t a JOIN raw.t b ON a.id = b.id")).unwrap_err();
        assert!(e.message.contains("read a table twice (raw.t)"), "{e}");
        let e =
            model("m", &format!("{incremental}WITH c AS (SELECT * FROM raw.t) SELECT c.month FROM c JOIN c d ON true"))
                .unwrap_err();
        assert!(e.message.contains("read a table twice (c)"), "{e}");
        assert!(model("m", &format!("{incremental}SELECT month, count(*) FROM raw.t GROUP BY 1")).is_ok());
    }

    #[test]
    fn order_unknown_tables_and_cycles() {
        let a = model("a", "SELECT * FROM marts.b").expect("a");
        let b = model("b", "SELECT * FROM raw.payments").expect("b");
        let c = model("c", "SELECT * FROM marts.a JOIN marts.b ON true").expect("c");
        let graph = ModelGraph::order(vec![c.clone(), a.clone(), b.clone()], &raw(&["payments"])).expect("order");
        let order: Vec<&str> = graph.models.iter().map(Model::name).collect();
        assert_eq!(order, ["b", "a", "c"]);
        let chosen: Vec<&str> = graph.select(&["a".into()]).expect("select").into_iter().map(Model::name).collect();
        assert_eq!(chosen, ["b", "a"]);
        assert!(graph.to_text().contains("  1. marts.b ← raw.payments"), "{}", graph.to_text());
        let dot = graph.to_dot();
        assert!(
            dot.contains("\"raw.payments\" -> \"marts.b\";") && dot.contains("\"marts.a\" -> \"marts.c\";"),
            "{dot}"
        );

        let e = ModelGraph::order(vec![b.clone()], &raw(&["hours"])).unwrap_err();
        assert!(e.message.contains("unknown table raw.payments"), "{e}");
        let e = ModelGraph::order(vec![a.clone()], &raw(&["payments"])).unwrap_err();
        assert!(e.message.contains("no model file b.sql"), "{e}");

        let x = model("x", "SELECT 1 FROM marts.y").expect("x");
        let y = model("y", "SELECT 1\nFROM marts.x").expect("y");
        let e = ModelGraph::order(vec![x, y], &raw(&[])).unwrap_err();
        assert!(e.message.contains("cycle: marts.x → marts.y → marts.x"), "{e}");
        assert_eq!((e.path.to_str(), e.line), (Some("models/y.sql"), Some(2)));
    }
}
