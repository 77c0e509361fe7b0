//! The logical column types the engine understands, how each is declared in PostgreSQL and SQLite,
//! and which Arrow type it becomes in the warehouse.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

/// Scale used for a `numeric` column declared without one (PostgreSQL's unconstrained numeric).
pub const DEFAULT_NUMERIC_SCALE: i8 = 9;

/// A column type as the source declares it, reduced to what analytics needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Uuid,
    Text,
    SmallInt,
    Int,
    BigInt,
    Float,
    Numeric {
        precision: u8,
        scale: i8,
    },
    Bool,
    Date,
    /// `timestamptz`; stored in the warehouse in UTC.
    Timestamptz,
    /// `timestamp` without time zone; the source's wall clock, taken as UTC.
    Timestamp,
    TextArray,
    /// `json` or `jsonb`, carried as JSON text.
    Json,
}

impl ColumnType {
    /// Parses a declared type: PostgreSQL's `format_type()` output or a SQLite declaration.
    /// Unknown declarations return `None`; the caller decides (PostgreSQL casts them to text).
    pub fn parse(declared: &str) -> Option<ColumnType> {
        let decl = declared.trim().to_ascii_lowercase();
        if let Some(element) = decl.strip_suffix("[]") {
            return match ColumnType::parse(element)? {
                ColumnType::Text | ColumnType::Uuid => Some(ColumnType::TextArray),
                _ => None,
            };
        }
        let (base, args) = match decl.split_once('(') {
            Some((base, rest)) => (base.trim(), rest.trim_end_matches(')').trim()),
            None => (decl.as_str(), ""),
        };
        Some(match base {
            "uuid" => ColumnType::Uuid,
            "text" | "varchar" | "character varying" | "char" | "character" | "bpchar" | "citext" | "clob" | "name" => {
                ColumnType::Text
            }
            "smallint" | "int2" => ColumnType::SmallInt,
            "integer" | "int" | "int4" => ColumnType::Int,
            "bigint" | "int8" | "bigserial" | "serial8" => ColumnType::BigInt,
            "real" | "float4" | "double precision" | "float8" | "double" | "float" => ColumnType::Float,
            "numeric" | "decimal" => {
                let mut parts = args.split(',').map(str::trim);
                let precision = parts.next().filter(|p| !p.is_empty());
                let scale = parts.next();
                match precision {
                    None => ColumnType::Numeric { precision: 38, scale: DEFAULT_NUMERIC_SCALE },
                    Some(p) => ColumnType::Numeric {
                        precision: p.parse().ok().filter(|p| (1..=38).contains(p))?,
                        scale: scale.map_or(Some(0), |s| s.parse().ok())?,
                    },
                }
            }
            "boolean" | "bool" => ColumnType::Bool,
            "date" => ColumnType::Date,
            "timestamptz" | "timestamp with time zone" => ColumnType::Timestamptz,
            "timestamp" | "timestamp without time zone" | "datetime" => ColumnType::Timestamp,
            "json" | "jsonb" => ColumnType::Json,
            _ => return None,
        })
    }

    /// The type as written in a PostgreSQL `CREATE TABLE`.
    pub fn postgres_ddl(&self) -> String {
        match self {
            ColumnType::Uuid => "uuid".into(),
            ColumnType::Text => "text".into(),
            ColumnType::SmallInt => "smallint".into(),
            ColumnType::Int => "integer".into(),
            ColumnType::BigInt => "bigint".into(),
            ColumnType::Float => "double precision".into(),
            ColumnType::Numeric { precision, scale } => format!("numeric({precision},{scale})"),
            ColumnType::Bool => "boolean".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamptz => "timestamptz".into(),
            ColumnType::Timestamp => "timestamp".into(),
            ColumnType::TextArray => "text[]".into(),
            ColumnType::Json => "jsonb".into(),
        }
    }

    /// The type as declared in SQLite. SQLite keeps the declaration verbatim, which is how the
    /// extractor recovers the logical type (SQLite itself only has storage classes).
    pub fn sqlite_ddl(&self) -> String {
        match self {
            ColumnType::Int | ColumnType::SmallInt | ColumnType::BigInt => "integer".into(),
            other => other.postgres_ddl(),
        }
    }

    /// The Arrow type of the column in the warehouse.
    pub fn arrow_type(&self) -> DataType {
        match self {
            ColumnType::Uuid | ColumnType::Text | ColumnType::Json => DataType::Utf8,
            ColumnType::SmallInt => DataType::Int16,
            ColumnType::Int => DataType::Int32,
            ColumnType::BigInt => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Numeric { precision, scale } => DataType::Decimal128(*precision, *scale),
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamptz | ColumnType::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            ColumnType::TextArray => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.postgres_ddl())
    }
}

/// A column of a source table, as read from the source's catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumn {
    pub name: String,
    /// `None` for a type the engine has no mapping for; PostgreSQL extracts it as text.
    pub ty: Option<ColumnType>,
    pub declared: String,
}

impl SourceColumn {
    /// The type the warehouse stores: unknown types travel as text.
    pub fn effective_type(&self) -> ColumnType {
        self.ty.unwrap_or(ColumnType::Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_and_sqlite_declarations() {
        assert_eq!(ColumnType::parse("numeric(12,2)"), Some(ColumnType::Numeric { precision: 12, scale: 2 }));
        assert_eq!(
            ColumnType::parse("numeric"),
            Some(ColumnType::Numeric { precision: 38, scale: DEFAULT_NUMERIC_SCALE })
        );
        assert_eq!(ColumnType::parse("timestamp with time zone"), Some(ColumnType::Timestamptz));
        assert_eq!(ColumnType::parse("text[]"), Some(ColumnType::TextArray));
        assert_eq!(ColumnType::parse("character varying(255)"), Some(ColumnType::Text));
        assert_eq!(ColumnType::parse("INTEGER"), Some(ColumnType::Int));
        assert_eq!(ColumnType::parse("tsvector"), None);
        assert_eq!(ColumnType::parse("numeric(99,2)"), None);
    }

    #[test]
    fn ddl_round_trips_through_parse() {
        for ty in [
            ColumnType::Uuid,
            ColumnType::Numeric { precision: 8, scale: 2 },
            ColumnType::Timestamptz,
            ColumnType::TextArray,
            ColumnType::Json,
            ColumnType::Date,
            ColumnType::Bool,
        ] {
            assert_eq!(ColumnType::parse(&ty.postgres_ddl()), Some(ty));
            assert_eq!(ColumnType::parse(&ty.sqlite_ddl()), Some(ty));
        }
    }
}
