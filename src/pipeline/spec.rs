//! Pipeline files (`pipelines/*.toml`): what to extract from which source, keyed how, with which
//! cursor and column classes, into which warehouse table, on which schedule. Parsed and checked at
//! load time; every error names the file, the line and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::warehouse::{TableName, is_identifier};

#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SpecError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The class of a column (`domain.md`): what it reveals, and so who may see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnClass {
    /// Keys.
    Id,
    /// Safe to analyse.
    Dim,
    /// Identifies a person.
    Pii,
    /// Health information.
    Phi,
    /// Payment and insurance.
    Fin,
    /// Never leaves the source.
    Secret,
}

impl fmt::Display for ColumnClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnClass::Id => "id",
            ColumnClass::Dim => "dim",
            ColumnClass::Pii => "pii",
            ColumnClass::Phi => "phi",
            ColumnClass::Fin => "fin",
            ColumnClass::Secret => "secret",
        })
    }
}

/// The class of every warehouse column, decided in one place for the loader (which columns get no
/// statistics), the masking policy and the catalog (`GET /api/v1/tables`): a column its pipeline
/// lists has that class; a raw column it does not list (one the source added since) has the
/// pipeline's `defaults.new_column_class` (`phi` unless set), and a raw table no pipeline loads
/// counts as `phi` throughout; a mart column is `dim` (models select pseudonymised keys only).
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    listed: std::collections::HashMap<(TableName, String), ColumnClass>,
    unlisted: std::collections::HashMap<TableName, ColumnClass>,
}

impl Classifier {
    pub fn new<'a>(pipelines: impl IntoIterator<Item = &'a Pipeline>) -> Classifier {
        let mut classifier = Classifier::default();
        for pipeline in pipelines {
            for table in &pipeline.tables {
                classifier.unlisted.insert(table.target.clone(), pipeline.defaults.new_column_class);
                for (column, class) in &table.columns {
                    classifier.listed.insert((table.target.clone(), column.clone()), *class);
                }
            }
        }
        classifier
    }

    pub fn class_of(&self, table: &TableName, column: &str) -> ColumnClass {
        if let Some(class) = self.listed.get(&(table.clone(), column.to_string())) {
            return *class;
        }
        match self.unlisted.get(table) {
            Some(class) => *class,
            None if table.schema == "raw" => ColumnClass::Phi,
            None => ColumnClass::Dim,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Runs missed while the server was down are not made up.
    #[default]
    Skip,
    /// One run catches up on everything missed.
    Latest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    source: Spanned<String>,
    schedule: Option<Spanned<String>>,
    #[serde(default = "default_timezone")]
    timezone: Spanned<String>,
    #[serde(default = "default_catch_up")]
    catch_up: CatchUp,
    /// A scheduled run that fails is retried this many times, after `retry_delay_seconds`, doubling.
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_retry_delay")]
    retry_delay_seconds: u64,
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    tables: Vec<Spanned<TableFile>>,
}

fn default_timezone() -> Spanned<String> {
    Spanned::new(0..0, "UTC".into())
}
fn default_catch_up() -> CatchUp {
    CatchUp::Latest
}
fn default_retries() -> u32 {
    3
}
fn default_retry_delay() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Rows are re-read this far behind the cursor, to catch writes committed late.
    #[serde(default = "default_lookback")]
    pub lookback_seconds: u64,
    /// The class given to a source column that the file does not list (schema evolution).
    #[serde(default = "default_new_column_class")]
    pub new_column_class: ColumnClass,
    /// Rows per Arrow batch read from the source. Up to ten batches wait for the Parquet writer
    /// when reads outrun it (delta-rs' channel): 16 Ki rows kept a two-stream lineitem load at
    /// 190–225 MB peak where 64 Ki rows reached 280–460 MB, in the same time.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            lookback_seconds: default_lookback(),
            new_column_class: default_new_column_class(),
            batch_rows: default_batch_rows(),
        }
    }
}

fn default_lookback() -> u64 {
    300
}
fn default_new_column_class() -> ColumnClass {
    ColumnClass::Phi
}
fn default_batch_rows() -> usize {
    16_384
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    name: String,
    target: Option<String>,
    class: Option<ColumnClass>,
    #[serde(default)]
    primary_key: Vec<String>,
    cursor: Option<String>,
    #[serde(default)]
    detect_deletes: bool,
    #[serde(default)]
    partition_by: Vec<String>,
    #[serde(default)]
    columns: BTreeMap<String, ColumnClass>,
    #[serde(default)]
    subject: bool,
    #[serde(default)]
    references: BTreeMap<String, String>,
    #[serde(default)]
    admin_only: bool,
}

/// A loaded, checked pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub path: PathBuf,
    pub source: String,
    pub schedule: Option<Schedule>,
    pub catch_up: CatchUp,
    pub retry: Retry,
    pub defaults: Defaults,
    pub tables: Vec<TableSpec>,
}

/// How a failed scheduled run is retried: `attempts` more times, the first after `delay`, each
/// later one after twice the wait before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub delay: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: croner::Cron,
    pub timezone: chrono_tz::Tz,
}

/// The IANA time zone `name` of a schedule; the error names the key.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse().map_err(|_| format!("key `timezone`: unknown IANA time zone {name:?}"))
}

/// A schedule's cron expression (`minute hour day-of-month month day-of-week`); the error names
/// the key.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    expr.parse().map_err(|e| format!("key `schedule`: invalid cron expression {expr:?}: {e}"))
}

/// How a table is kept up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sync {
    /// Rows past the cursor are merged by primary key.
    Incremental { cursor: String },
    /// The whole table is read each run and merged; rows gone from the source are deleted. For
    /// tables whose rows change without a usable cursor (e.g. `client_activities`).
    Full,
}

#[derive(Debug, Clone)]
pub struct TableSpec {
    pub source_table: String,
    pub target: TableName,
    pub primary_key: Vec<String>,
    pub sync: Sync,
    pub detect_deletes: bool,
    pub partition_by: Vec<String>,
    pub columns: BTreeMap<String, ColumnClass>,
    /// Rows of this table are people who may ask for their data or its erasure (`privacy`).
    pub subject: bool,
    /// Column → the source table (of this pipeline) whose single-column key it holds: how a row
    /// is traced to a person for privacy requests.
    pub references: BTreeMap<String, String>,
    /// Only administrators may read the table (the audit trail, say).
    pub admin_only: bool,
    /// 1-based line of the table's entry in the file, for errors found later (e.g. against the
    /// live source).
    pub line: usize,
}

impl Pipeline {
    /// Loads every `*.toml` in `dir`, sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Pipeline>, SpecError> {
        let entries = std::fs::read_dir(dir).map_err(|e| SpecError {
            path: dir.to_path_buf(),
            line: None,
            message: format!("cannot read the pipelines directory: {e}"),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Pipeline::load(p)).collect()
    }

    pub fn load(path: &Path) -> Result<Pipeline, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            path: path.to_path_buf(),
            line: None,
            message: e.to_string(),
        })?;
        Pipeline::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Pipeline, SpecError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let err = |offset: Option<usize>, message: String| SpecError {
            path: path.to_path_buf(),
            line: offset.map(line_of),
            message,
        };
        let file: PipelineFile = toml::from_str(text).map_err(|e| {
            // toml's message already shows the line, column and key; keep the line for tools too.
            err(e.span().map(|s| s.start), e.message().trim().to_string())
        })?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if !is_identifier(&name) {
            return Err(err(
                None,
                format!("pipeline name {name:?} (the file name) must be lower-case letters, digits and _"),
            ));
        }
        if name == super::MODELS_RUN {
            return Err(err(None, format!("the pipeline name {name:?} is reserved for model builds; rename the file")));
        }
        let timezone = parse_timezone(file.timezone.get_ref()).map_err(|e| err(Some(file.timezone.span().start), e))?;
        let schedule = match &file.schedule {
            Some(expr) => Some(Schedule {
                cron: parse_cron(expr.get_ref()).map_err(|e| err(Some(expr.span().start), e))?,
                timezone,
            }),
            None => None,
        };
        let mut tables: Vec<TableSpec> = Vec::new();
        for spanned in &file.tables {
            let at = Some(spanned.span().start);
            let t = spanned.get_ref();
            let what = format!("table {:?}", t.name);
            if t.class == Some(ColumnClass::Secret) {
                return Err(err(
                    at,
                    format!("{what} is marked secret: secrets never leave the source; remove it from the pipeline"),
                ));
            }
            if let Some((col, _)) = t.columns.iter().find(|(_, class)| **class == ColumnClass::Secret) {
                return Err(err(
                    at,
                    format!(
                        "{what}, column {col:?} is marked secret: secrets never leave the source; remove the column"
                    ),
                ));
            }
            if t.primary_key.is_empty() {
                return Err(err(at, format!("{what} has no `primary_key`: every table needs one to merge updates")));
            }
            let target_text = t.target.clone().unwrap_or_else(|| format!("raw.{}", t.name));
            let target: TableName = target_text.parse().map_err(|e| err(at, format!("{what}, key `target`: {e}")))?;
            if tables.iter().any(|other| other.target == target) {
                return Err(err(at, format!("{what}: target {target} is used twice in this file")));
            }
            for key in t.primary_key.iter().chain(&t.cursor).chain(&t.partition_by).chain(t.references.keys()) {
                if !t.columns.is_empty() && !t.columns.contains_key(key) {
                    return Err(err(
                        at,
                        format!(
                            "{what}: column {key:?} is used as a key, cursor, partition or reference but not listed in `columns`"
                        ),
                    ));
                }
            }
            tables.push(TableSpec {
                source_table: t.name.clone(),
                target,
                primary_key: t.primary_key.clone(),
                sync: match &t.cursor {
                    Some(cursor) => Sync::Incremental { cursor: cursor.clone() },
                    None => Sync::Full,
                },
                detect_deletes: t.detect_deletes || t.cursor.is_none(),
                partition_by: t.partition_by.clone(),
                columns: t.columns.clone(),
                subject: t.subject,
                references: t.references.clone(),
                admin_only: t.admin_only,
                line: line_of(spanned.span().start),
            });
        }
        if tables.is_empty() {
            return Err(err(None, "no [[tables]]: a pipeline extracts at least one table".into()));
        }
        for (spanned, table) in file.tables.iter().zip(&tables) {
            let at = Some(spanned.span().start);
            if table.subject && table.primary_key.len() != 1 {
                return Err(err(
                    at,
                    format!("table {:?} is a `subject` and needs a one-column primary key", table.source_table),
                ));
            }
            for (column, referenced) in &table.references {
                let Some(other) = tables.iter().find(|o| &o.source_table == referenced) else {
                    return Err(err(
                        at,
                        format!(
                            "table {:?}, key `references.{column}`: no table {referenced:?} in this pipeline",
                            table.source_table
                        ),
                    ));
                };
                if other.primary_key.len() != 1 {
                    return Err(err(
                        at,
                        format!(
                            "table {:?}, key `references.{column}`: table {referenced:?} must have a one-column primary key",
                            table.source_table
                        ),
                    ));
                }
            }
        }
        if tables.iter().filter(|t| t.subject).count() > 1 {
            return Err(err(
                None,
                "more than one table is marked `subject`: privacy requests need one table of people".into(),
            ));
        }
        Ok(Pipeline {
            name,
            path: path.to_path_buf(),
            source: file.source.into_inner(),
            schedule,
            catch_up: file.catch_up,
            retry: Retry { attempts: file.retries, delay: std::time::Duration::from_secs(file.retry_delay_seconds) },
            defaults: file.defaults,
            tables,
        })
    }

    /// An error about this pipeline's table, pointing at its line.
    pub fn table_error(&self, table: &TableSpec, message: String) -> SpecError {
        SpecError { path: self.path.clone(), line: Some(table.line), message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
source = "core"
schedule = "0 2 * * *"
timezone = "America/New_York"

[[tables]]
name = "payments"
primary_key = ["id"]
cursor = "id"
[tables.columns]
id = "id"
amount = "fin"
"#;

    fn parse(text: &str) -> Result<Pipeline, SpecError> {
        Pipeline::parse(Path::new("pipelines/core.toml"), text)
    }

    #[test]
    fn parses_a_good_file() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "core");
        assert_eq!(p.tables[0].target.to_string(), "raw.payments");
        assert_eq!(p.tables[0].sync, Sync::Incremental { cursor: "id".into() });
        assert_eq!(p.tables[0].line, 6);
    }

    #[test]
    fn one_classifier_classes_listed_unlisted_and_mart_columns() {
        let with_default = GOOD.replace("[[tables]]", "[defaults]\nnew_column_class = \"pii\"\n\n[[tables]]");
        let pipelines = [parse(&with_default).unwrap()];
        let classes = Classifier::new(&pipelines);
        let payments: TableName = "raw.payments".parse().unwrap();
        assert_eq!(classes.class_of(&payments, "amount"), ColumnClass::Fin);
        assert_eq!(classes.class_of(&payments, "added_since"), ColumnClass::Pii, "the pipeline's default");
        assert_eq!(classes.class_of(&"raw.unloaded".parse().unwrap(), "x"), ColumnClass::Phi);
        assert_eq!(classes.class_of(&"marts.dim_clients".parse().unwrap(), "status"), ColumnClass::Dim);
        assert_eq!(Classifier::new(&[parse(GOOD).unwrap()]).class_of(&payments, "added_since"), ColumnClass::Phi);
    }

    /// HIPAA's identifiers include health plan beneficiary numbers; free text can hold anything.
    #[test]
    fn the_shipped_pipeline_classes_identifiers_and_free_text_as_personal() {
        let core = Pipeline::parse(Path::new("sokana_core.toml"), crate::SOKANA_CORE_PIPELINE).unwrap();
        let classes = Classifier::new([&core]);
        let class = |table: &str, column: &str| classes.class_of(&table.parse().unwrap(), column);
        assert_eq!(class("raw.phi_clients", "policy_number"), ColumnClass::Pii);
        assert_eq!(class("raw.payments", "description"), ColumnClass::Phi);
        assert_eq!(class("raw.doula_availability", "reason"), ColumnClass::Pii);
    }

    #[test]
    fn malformed_toml_names_file_line_and_key() {
        let e = parse(&GOOD.replace("cursor = \"id\"", "cursor = id")).unwrap_err();
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.to_string().starts_with("pipelines/core.toml:9"), "{e}");
        let e = parse(&GOOD.replace("cursor =", "cursr =")).unwrap_err();
        assert!(e.to_string().contains("cursr"), "{e}");
        assert_eq!(e.line, Some(9), "{e}");
    }

    #[test]
    fn secret_columns_and_tables_are_refused() {
        let e = parse(&GOOD.replace("amount = \"fin\"", "amount = \"secret\"")).unwrap_err();
        assert!(e.to_string().contains("secret") && e.to_string().contains("amount"), "{e}");
        let e = parse(&GOOD.replace("cursor = \"id\"", "cursor = \"id\"\nclass = \"secret\"")).unwrap_err();
        assert!(e.to_string().contains("marked secret"), "{e}");
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn missing_primary_key_bad_cron_and_zone() {
        let e = parse(&GOOD.replace("primary_key = [\"id\"]", "")).unwrap_err();
        assert!(e.to_string().contains("no `primary_key`"), "{e}");
        let e = parse(&GOOD.replace("0 2 * * *", "61 2 * * *")).unwrap_err();
        assert!(e.to_string().contains("cron") && e.line == Some(3), "{e}");
        let e = parse(&GOOD.replace("America/New_York", "America/Gotham")).unwrap_err();
        assert!(e.to_string().contains("time zone") && e.line == Some(4), "{e}");
    }

    #[test]
    fn references_name_a_table_of_the_file_with_a_one_column_key() {
        let with_ref = GOOD
            .replace("cursor = \"id\"\n", "cursor = \"id\"\nreferences = { client_id = \"clients\" }\n")
            .replace("amount = \"fin\"", "amount = \"fin\"\nclient_id = \"id\"");
        let e = parse(&with_ref).unwrap_err();
        assert!(e.to_string().contains("references.client_id") && e.to_string().contains("\"clients\""), "{e}");
        assert_eq!(e.line, Some(6));
        let clients = "\n[[tables]]\nname = \"clients\"\nprimary_key = [\"id\"]\nsubject = true\n";
        let p = parse(&format!("{with_ref}{clients}")).unwrap();
        assert!(p.tables[1].subject);
        assert_eq!(p.tables[0].references.get("client_id").map(String::as_str), Some("clients"));
        let e = parse(&format!("{with_ref}{}", clients.replace("[\"id\"]", "[\"id\", \"n\"]"))).unwrap_err();
        assert!(e.to_string().contains("one-column primary key"), "{e}");
        let e = parse(&with_ref.replace("client_id = \"id\"", "")).unwrap_err();
        assert!(e.to_string().contains("reference but not listed"), "{e}");
    }
}
