//! Saved queries: `queries/*.sql`, each one query with a header naming its parameters, their types
//! and defaults:
//!
//! ```sql
//! -- @description: Revenue collected per month
//! -- @param since: date = 2024-01-01
//! -- @param doula: text
//! select month, collected from marts.mart_revenue_monthly where month >= $since
//! ```
//!
//! Values arrive as JSON or as text (the CLI), are checked against the declared type and bound as
//! typed parameters; they never become part of the SQL text. This module reads files and converts
//! values; running is the engine's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate};
use datafusion::scalar::ScalarValue;
use serde::Serialize;

use super::{Params, QueryError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Text,
    Integer,
    Float,
    Boolean,
    Date,
    Timestamp,
}

impl ParamType {
    fn parse(text: &str) -> Option<ParamType> {
        Some(match text.to_ascii_lowercase().as_str() {
            "text" | "varchar" | "string" => ParamType::Text,
            "integer" | "int" | "bigint" => ParamType::Integer,
            "float" | "double" | "numeric" => ParamType::Float,
            "boolean" | "bool" => ParamType::Boolean,
            "date" => ParamType::Date,
            "timestamp" | "timestamptz" => ParamType::Timestamp,
            _ => return None,
        })
    }

    fn example(self) -> &'static str {
        match self {
            ParamType::Text => "any text",
            ParamType::Integer => "a whole number like 42",
            ParamType::Float => "a number like 12.5",
            ParamType::Boolean => "true or false",
            ParamType::Date => "a date like 2024-01-31",
            ParamType::Timestamp => "a timestamp like 2024-01-31T09:30:00Z",
        }
    }

    /// `text` as a value of this type.
    pub fn from_text(self, name: &str, text: &str) -> Result<ScalarValue, QueryError> {
        let bad =
            || QueryError::Param { name: name.into(), message: format!("expected {}, got {text:?}", self.example()) };
        Ok(match self {
            ParamType::Text => ScalarValue::Utf8(Some(text.to_string())),
            ParamType::Integer => ScalarValue::Int64(Some(text.trim().parse().map_err(|_| bad())?)),
            ParamType::Float => ScalarValue::Float64(Some(text.trim().parse().map_err(|_| bad())?)),
            ParamType::Boolean => ScalarValue::Boolean(Some(match text.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "1" => true,
                "false" | "f" | "no" | "0" => false,
                _ => return Err(bad()),
            })),
            ParamType::Date => {
                let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| bad())?;
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).ok_or_else(bad)?;
                ScalarValue::Date32(Some((date - epoch).num_days() as i32))
            }
            ParamType::Timestamp => {
                let at = DateTime::parse_from_rfc3339(text.trim()).map_err(|_| bad())?;
                ScalarValue::TimestampMicrosecond(Some(at.timestamp_micros()), Some("UTC".into()))
            }
        })
    }

    /// A JSON value as a value of this type: strings are read as text is, numbers and booleans
    /// must match the type.
    pub fn from_json(self, name: &str, value: &serde_json::Value) -> Result<ScalarValue, QueryError> {
        use serde_json::Value as J;
        let bad =
            || QueryError::Param { name: name.into(), message: format!("expected {}, got {value}", self.example()) };
        match (self, value) {
            (_, J::Null) => ScalarValue::try_from(self.arrow()).map_err(|_| bad()),
            (_, J::String(text)) => self.from_text(name, text),
            (ParamType::Integer, J::Number(n)) => n.as_i64().map(|i| ScalarValue::Int64(Some(i))).ok_or_else(bad),
            (ParamType::Float, J::Number(n)) => n.as_f64().map(|f| ScalarValue::Float64(Some(f))).ok_or_else(bad),
            (ParamType::Boolean, J::Bool(b)) => Ok(ScalarValue::Boolean(Some(*b))),
            _ => Err(bad()),
        }
    }

    fn arrow(self) -> &'static arrow::datatypes::DataType {
        use arrow::datatypes::{DataType, TimeUnit};
        static TIMESTAMP: std::sync::LazyLock<DataType> =
            std::sync::LazyLock::new(|| DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        match self {
            ParamType::Text => &DataType::Utf8,
            ParamType::Integer => &DataType::Int64,
            ParamType::Float => &DataType::Float64,
            ParamType::Boolean => &DataType::Boolean,
            ParamType::Date => &DataType::Date32,
            ParamType::Timestamp => &TIMESTAMP,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The default as written in the header; a parameter without one is required.
    pub default: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SavedQuery {
    pub name: String,
    pub description: Option<String>,
    pub params: Vec<ParamSpec>,
    pub sql: String,
    #[serde(skip)]
    pub path: PathBuf,
}

/// Every saved query in `dir`, sorted by name; no directory means none.
pub fn load_all(dir: &Path) -> Result<Vec<SavedQuery>, QueryError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(QueryError::Saved(format!("{}: {e}", dir.display()))),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

/// Reads one saved query; header errors name the file and line.
pub fn load(path: &Path) -> Result<SavedQuery, QueryError> {
    let text = std::fs::read_to_string(path).map_err(|e| QueryError::Saved(format!("{}: {e}", path.display())))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<SavedQuery, QueryError> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(QueryError::Saved(format!(
            "{}: a saved query's file name must be letters, digits, _ or - (it is the query's name)",
            path.display()
        )));
    }
    let err = |line: usize, message: String| QueryError::Saved(format!("{}:{}: {message}", path.display(), line + 1));
    let mut description = None;
    let mut params: Vec<ParamSpec> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let Some(directive) = line.trim().strip_prefix("-- @") else { continue };
        // `@description: text` or `@param name: type [= default]`.
        let (key, value) = directive
            .split_once(|c: char| c == ':' || c.is_whitespace())
            .ok_or_else(|| err(number, format!("expected `-- @key: value`, got {line:?}")))?;
        match key.trim() {
            "description" => description = Some(value.trim().to_string()),
            "param" => {
                // `name: type` or `name: type = default`.
                let (name, rest) =
                    value.trim().split_once(':').map(|(n, r)| (n.trim(), r)).ok_or_else(|| {
                        err(number, format!("expected `-- @param name: type [= default]`, got {line:?}"))
                    })?;
                let (kind, default) = match rest.split_once('=') {
                    Some((k, d)) => (k.trim(), Some(d.trim().to_string())),
                    None => (rest.trim(), None),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err(number, format!("parameter name {name:?}: use letters, digits and _")));
                }
                let kind = ParamType::parse(kind).ok_or_else(|| {
                    err(
                        number,
                        format!(
                            "parameter {name}: unknown type {kind:?} (text, integer, float, boolean, date, timestamp)"
                        ),
                    )
                })?;
                if let Some(default) = &default {
                    kind.from_text(name, default).map_err(|e| err(number, e.to_string()))?;
                }
                if params.iter().any(|p| p.name == name) {
                    return Err(err(number, format!("parameter {name} is declared twice")));
                }
                params.push(ParamSpec { name: name.to_string(), kind, default });
            }
            other => return Err(err(number, format!("unknown header key @{other} (description, param)"))),
        }
    }
    for param in &params {
        if !mentions(text, &param.name) {
            return Err(QueryError::Saved(format!(
                "{}: parameter {} is declared but the query never uses ${}",
                path.display(),
                param.name,
                param.name
            )));
        }
    }
    Ok(SavedQuery { name, description, params, sql: text.to_string(), path: path.to_path_buf() })
}

/// Whether `$name` appears in the text as a whole placeholder.
fn mentions(text: &str, name: &str) -> bool {
    let needle = format!("${name}");
    text.match_indices(&needle)
        .any(|(at, _)| !text[at + needle.len()..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_'))
}

impl SavedQuery {
    /// Binds the given values (by name) and the defaults; unknown names, missing required values
    /// and values of the wrong type are errors naming the parameter.
    pub fn bind(&self, given: &BTreeMap<String, Given>) -> Result<Params, QueryError> {
        if let Some(unknown) = given.keys().find(|k| !self.params.iter().any(|p| &p.name == *k)) {
            return Err(QueryError::Param {
                name: unknown.clone(),
                message: format!(
                    "query {} has no such parameter (it has: {})",
                    self.name,
                    self.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let mut bound = BTreeMap::new();
        for spec in &self.params {
            let value = match (given.get(&spec.name), &spec.default) {
                (Some(Given::Text(text)), _) => spec.kind.from_text(&spec.name, text)?,
                (Some(Given::Json(value)), _) => spec.kind.from_json(&spec.name, value)?,
                (None, Some(default)) => spec.kind.from_text(&spec.name, default)?,
                (None, None) => {
                    return Err(QueryError::Param {
                        name: spec.name.clone(),
                        message: "is required and has no default".into(),
                    });
                }
            };
            bound.insert(spec.name.clone(), value);
        }
        Ok(if bound.is_empty() { Params::None } else { Params::Named(bound) })
    }
}

/// A parameter value as given: text from the command line, JSON from the API.
#[derive(Debug, Clone)]
pub enum Given {
    Text(String),
    Json(serde_json::Value),
}

/// Values for an ad-hoc query's placeholders from JSON: an array for `$1, $2, …`, an object for
/// `$name`. Types follow JSON (whole numbers are bigint, other numbers double, strings text).
pub fn params_from_json(value: &serde_json::Value) -> Result<Params, QueryError> {
    use serde_json::Value as J;
    let scalar = |name: String, v: &J| -> Result<ScalarValue, QueryError> {
        Ok(match v {
            J::Null => ScalarValue::Null,
            J::Bool(b) => ScalarValue::Boolean(Some(*b)),
            J::Number(n) => match n.as_i64() {
                Some(i) => ScalarValue::Int64(Some(i)),
                None => ScalarValue::Float64(n.as_f64()),
            },
            J::String(s) => ScalarValue::Utf8(Some(s.clone())),
            other => {
                return Err(QueryError::Param {
                    name,
                    message: format!("must be a string, number, boolean or null, got {other}"),
                });
            }
        })
    };
    match value {
        J::Null => Ok(Params::None),
        J::Array(items) => Ok(Params::Positional(
            items.iter().enumerate().map(|(i, v)| scalar(format!("${}", i + 1), v)).collect::<Result<_, _>>()?,
        )),
        J::Object(map) => Ok(Params::Named(
            map.iter().map(|(k, v)| Ok((k.clone(), scalar(k.clone(), v)?))).collect::<Result<_, QueryError>>()?,
        )),
        other => Err(QueryError::Param {
            name: "params".into(),
            message: format!("must be an array (for $1, $2, …) or an object (for $name), got {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(text: &str) -> Result<SavedQuery, QueryError> {
        parse(Path::new("queries/q.sql"), text)
    }

    #[test]
    fn header_declares_typed_parameters_with_defaults() {
        let q =
            saved("-- @description: d\n-- @param since: date = 2024-01-01\n-- @param n: integer\nselect $since, $n")
                .unwrap();
        assert_eq!(q.params.len(), 2);
        let given = BTreeMap::from([("n".to_string(), Given::Json(serde_json::json!(3)))]);
        let Params::Named(bound) = q.bind(&given).unwrap() else { panic!("named") };
        assert_eq!(bound["n"], ScalarValue::Int64(Some(3)));
        assert_eq!(bound["since"], ScalarValue::Date32(Some(19723)));
    }

    #[test]
    fn bad_headers_and_values_name_the_line_or_parameter() {
        let e = saved("select 1\n-- @param x: money\n").unwrap_err().to_string();
        assert!(e.contains("queries/q.sql:2") && e.contains("money"), "{e}");
        let e = saved("-- @param x: integer\nselect 1").unwrap_err().to_string();
        assert!(e.contains("never uses $x"), "{e}");
        let q = saved("-- @param n: integer\nselect $n").unwrap();
        let wrong = BTreeMap::from([("n".to_string(), Given::Text("ten".into()))]);
        let e = q.bind(&wrong).unwrap_err().to_string();
        assert!(e.contains("parameter n") && e.contains("whole number"), "{e}");
        let e = q.bind(&BTreeMap::new()).unwrap_err().to_string();
        assert!(e.contains("required"), "{e}");
        let extra = BTreeMap::from([("m".to_string(), Given::Text("1".into()))]);
        assert!(q.bind(&extra).unwrap_err().to_string().contains("no such parameter"));
    }
}
