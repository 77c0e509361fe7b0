//! Metrics view files (`queries/metrics/*.toml`): one view over one warehouse table, with its time
//! column, the dimensions it may be grouped and filtered by and the measures it computes. Parsed and
//! checked at load time; every error names the file, the line when known, and the key.
//!
//! ```toml
//! label = "Payments"
//! description = "Payments received, on the day they were received."
//! table = "marts.fct_payments"
//! time = "txn_date"                # optional: a view without one answers as of now
//! timezone = "America/New_York"    # the default
//!
//! [[dimensions]]
//! name = "method"
//! label = "Payment method"         # `sql` defaults to the column of the same name
//!
//! [[measures]]
//! name = "collected"
//! label = "Collected"
//! sql = "sum(amount)"
//! format = "usd"
//! higher_is_better = true
//! ```

use std::path::{Path, PathBuf};

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;
use serde::{Deserialize, Serialize};

use crate::warehouse::{TableName, is_identifier};

pub use crate::config::FileError as SpecError;

pub use crate::chart::Format;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct ViewFile {
    label: String,
    #[serde(default)]
    description: String,
    table: String,
    time: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    dimensions: Vec<DimensionFile>,
    measures: Vec<MeasureFile>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct DimensionFile {
    name: String,
    label: String,
    sql: Option<String>,
    /// What orders the dimension's values when an answer is ordered by it (e.g. `bucket_order`
    /// for aging buckets); the values themselves when not given.
    sort: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct MeasureFile {
    name: String,
    label: String,
    sql: String,
    format: Format,
    #[serde(default = "yes")]
    higher_is_better: bool,
    #[serde(default)]
    description: String,
}

fn yes() -> bool {
    true
}

/// A view as loaded and checked.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub name: String,
    pub label: String,
    pub description: String,
    #[serde(serialize_with = "display")]
    pub table: TableName,
    pub time: Option<String>,
    #[serde(serialize_with = "display")]
    pub timezone: chrono_tz::Tz,
    pub dimensions: Vec<Dimension>,
    pub measures: Vec<Measure>,
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dimension {
    pub name: String,
    pub label: String,
    /// The SQL expression over the view's table (the column of the same name when not given).
    #[serde(skip)]
    pub sql: String,
    /// An expression ordering its values, aggregated per group as `min(sort)`.
    #[serde(skip)]
    pub sort: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub name: String,
    pub label: String,
    /// An aggregate SQL expression over the view's table.
    #[serde(skip)]
    pub sql: String,
    pub format: Format,
    pub higher_is_better: bool,
    pub description: String,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// The zone a view's days, weeks and months are counted in unless it names another.
pub const DEFAULT_TIMEZONE: chrono_tz::Tz = chrono_tz::America::New_York;

impl View {
    pub fn parse(path: &Path, text: &str) -> Result<View, SpecError> {
        let err = |line: Option<usize>, message: String| SpecError { path: path.to_path_buf(), line, message };
        let file: ViewFile = crate::config::parse_toml(path, text)?;
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        if !is_identifier(&name) {
            return Err(err(
                None,
                format!("view name {name:?} (the file name) must be lower-case letters, digits and _"),
            ));
        }
        let table: TableName = file.table.parse().map_err(|e: String| err(None, format!("table: {e}")))?;
        if let Some(time) = &file.time
            && !is_identifier(time)
        {
            return Err(err(None, format!("time: {time:?} is not a column name (lower-case letters, digits and _)")));
        }
        let timezone = match &file.timezone {
            None => DEFAULT_TIMEZONE,
            Some(zone) => zone
                .parse()
                .map_err(|_| err(None, format!("timezone: {zone:?} is not an IANA time zone like America/New_York")))?,
        };
        if file.measures.is_empty() {
            return Err(err(None, "measures: a view needs at least one measure".into()));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut check_name = |what: &str, name: &str| {
            if !is_identifier(name) {
                return Err(err(None, format!("{what} {name:?}: a name is lower-case letters, digits and _")));
            }
            if name == PERIOD || !names.insert(name.to_string()) {
                return Err(err(None, format!("{what} {name:?}: the name is taken (by `{PERIOD}` or another field)")));
            }
            Ok(())
        };
        let mut dimensions = Vec::new();
        for d in file.dimensions {
            check_name("dimension", &d.name)?;
            let sql = d.sql.unwrap_or_else(|| d.name.clone());
            one_expression(&sql).map_err(|m| err(None, format!("dimension {}: sql: {m}", d.name)))?;
            if let Some(sort) = &d.sort {
                one_expression(sort).map_err(|m| err(None, format!("dimension {}: sort: {m}", d.name)))?;
            }
            dimensions.push(Dimension { name: d.name, label: d.label, sql, sort: d.sort });
        }
        let mut measures = Vec::new();
        for m in file.measures {
            check_name("measure", &m.name)?;
            one_expression(&m.sql).map_err(|e| err(None, format!("measure {}: sql: {e}", m.name)))?;
            measures.push(Measure {
                name: m.name,
                label: m.label,
                sql: m.sql,
                format: m.format,
                higher_is_better: m.higher_is_better,
                description: m.description,
            });
        }
        Ok(View {
            name,
            label: file.label,
            description: file.description,
            table,
            time: file.time,
            timezone,
            dimensions,
            measures,
            path: path.to_path_buf(),
        })
    }

    pub fn measure(&self, name: &str) -> Option<&Measure> {
        self.measures.iter().find(|m| m.name == name)
    }

    pub fn dimension(&self, name: &str) -> Option<&Dimension> {
        self.dimensions.iter().find(|d| d.name == name)
    }
}

/// The name of the time bucket's column in every answer grouped by a grain.
pub const PERIOD: &str = "period";

/// Checks that `sql` is one SQL expression and nothing after it, so that putting it in a query's
/// select list or `GROUP BY` cannot change the query's structure (a comma, a closing parenthesis,
/// a second statement).
fn one_expression(sql: &str) -> Result<(), String> {
    let dialect = GenericDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql).map_err(|e| e.to_string())?;
    parser.parse_expr().map_err(|e| e.to_string())?;
    match parser.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(format!("one expression expected, but it goes on at {other}")),
    }
}

/// Every view in `dir` (`*.toml`), and the files that did not load (each error names its file):
/// one bad file does not take the others down. No views when the folder does not exist.
pub fn load_all(dir: &Path) -> (Vec<View>, Vec<SpecError>) {
    crate::config::load_each(dir, View::parse)
}

/// The JSON Schema of view files, as committed in `schemas/metrics-view.json`.
pub fn json_schema() -> String {
    crate::config::schema_text::<ViewFile>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<View, SpecError> {
        View::parse(Path::new("queries/metrics/payments.toml"), text)
    }

    const GOOD: &str = r#"
label = "Payments"
table = "marts.fct_payments"
time = "txn_date"

[[dimensions]]
name = "method"
label = "Payment method"

[[measures]]
name = "collected"
label = "Collected"
sql = "sum(amount)"
format = "usd"
"#;

    #[test]
    fn a_view_file_is_read_with_its_defaults() {
        let view = parse(GOOD).expect("parses");
        assert_eq!(view.name, "payments");
        assert_eq!(view.timezone, DEFAULT_TIMEZONE);
        assert_eq!(view.dimension("method").map(|d| d.sql.as_str()), Some("method"));
        assert!(view.measure("collected").is_some_and(|m| m.higher_is_better && m.format == Format::Usd));
    }

    #[test]
    fn mistakes_name_the_file_the_line_and_the_key() {
        let unknown = parse(&GOOD.replace("format = \"usd\"", "format = \"usd\"\ncolour = \"red\"")).unwrap_err();
        assert!(unknown.to_string().starts_with("queries/metrics/payments.toml:"), "{unknown}");
        assert!(unknown.to_string().contains("colour"), "{unknown}");
        assert_eq!(unknown.line, Some(15));
        let bad_format = parse(&GOOD.replace("\"usd\"", "\"euros\"")).unwrap_err();
        assert!(bad_format.to_string().contains("euros"), "{bad_format}");
        let zone = parse(&GOOD.replace("time = ", "timezone = \"Mars/Olympus\"\ntime = ")).unwrap_err();
        assert!(zone.message.contains("timezone: \"Mars/Olympus\""), "{zone}");
        let smuggled = parse(&GOOD.replace("sum(amount)", "sum(amount) FROM x; DROP TABLE y")).unwrap_err();
        assert!(smuggled.message.starts_with("measure collected: sql: one expression expected"), "{smuggled}");
        let comma =
            parse(&GOOD.replace("label = \"Payment method\"", "label = \"M\"\nsql = \"method, gateway\"")).unwrap_err();
        assert!(comma.message.starts_with("dimension method: sql:"), "{comma}");
        let taken = parse(&GOOD.replace("name = \"method\"", "name = \"period\"")).unwrap_err();
        assert!(taken.message.contains("taken"), "{taken}");
        let table = parse(&GOOD.replace("marts.fct_payments", "fct_payments")).unwrap_err();
        assert!(table.message.starts_with("table:"), "{table}");
    }
}
