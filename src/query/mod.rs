//! SQL over the warehouse: a DataFusion session with every committed table registered by name
//! (`raw.phi_clients`, `marts.…`), and result formatting. It reads the warehouse and never writes
//! it; it knows nothing of HTTP or of users.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::warehouse::{SCHEMAS, TableName, Warehouse, WarehouseError};

pub mod duck;
pub mod duckdb_arrow;
pub mod functions;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    #[error("{0}")]
    Sql(String),
    #[error("formatting the result: {0}")]
    Format(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        // DataFusion wraps errors in context layers; the innermost message is the useful one.
        QueryError::Sql(e.find_root().to_string())
    }
}

/// A session over the warehouse's current versions.
pub async fn session(warehouse: &Warehouse) -> Result<SessionContext, QueryError> {
    let config = SessionConfig::new().with_information_schema(true).with_default_catalog_and_schema("sokana", "marts");
    let ctx = SessionContext::new_with_config(config);
    let catalog = ctx.catalog("sokana").ok_or_else(|| QueryError::Sql("the default catalog is missing".into()))?;
    for schema in SCHEMAS {
        catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    for name in warehouse.list_tables().await? {
        register(&ctx, warehouse, &name).await?;
    }
    Ok(ctx)
}

/// Points `name` in the session at the table's newest version (after a build committed one).
pub async fn refresh(ctx: &SessionContext, warehouse: &Warehouse, name: &TableName) -> Result<(), QueryError> {
    let schema = ctx
        .catalog("sokana")
        .and_then(|c| c.schema(&name.schema))
        .ok_or_else(|| QueryError::Sql(format!("schema {} is missing", name.schema)))?;
    schema.deregister_table(&name.name)?;
    register(ctx, warehouse, name).await
}

async fn register(ctx: &SessionContext, warehouse: &Warehouse, name: &TableName) -> Result<(), QueryError> {
    let Some(table) = warehouse.open(name).await? else { return Ok(()) };
    let provider = table.table_provider().await?;
    let schema = ctx
        .catalog("sokana")
        .and_then(|c| c.schema(&name.schema))
        .ok_or_else(|| QueryError::Sql(format!("schema {} is missing", name.schema)))?;
    schema.register_table(name.name.clone(), provider)?;
    Ok(())
}

/// Runs one statement and collects its result.
/// Runs one query and collects its result. Only queries run: DDL (`CREATE EXTERNAL TABLE` could
/// read any file), DML, `COPY … TO` and `SET` are refused before planning.
pub async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let read_only = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    Ok(ctx.sql_with_options(sql, read_only).await?.collect().await?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

/// Writes batches as an aligned table, CSV with a header, or a JSON array of objects.
pub fn format(batches: &[RecordBatch], format: OutputFormat) -> Result<String, QueryError> {
    let err = |e: arrow::error::ArrowError| QueryError::Format(e.to_string());
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches).map_err(err)?.to_string()),
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
                for batch in batches {
                    writer.write(batch).map_err(err)?;
                }
            }
            String::from_utf8(out).map_err(|e| QueryError::Format(e.to_string()))
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::json::ArrayWriter::new(&mut out);
                for batch in batches {
                    writer.write(batch).map_err(err)?;
                }
                writer.finish().map_err(err)?;
            }
            if out.is_empty() {
                out.extend_from_slice(b"[]");
            }
            String::from_utf8(out).map_err(|e| QueryError::Format(e.to_string()))
        }
    }
}
