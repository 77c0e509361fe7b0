//! The query API: `POST /api/v1/query`, `GET /api/v1/queries`, `POST /api/v1/queries/{name}/run`,
//! `GET /api/v1/tables`, `GET /api/v1/query-log` and `GET /metrics`. Answers come as JSON, CSV,
//! Arrow IPC or Parquet (by `format`, else `Accept`); pages come from `limit`/`offset` or the
//! cursor of the page before; unpaged CSV, Arrow and Parquet stream. The router's middleware has
//! checked the caller before any handler here runs.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, RequestId};
use crate::auth::Identity;
use crate::query::engine::{Caller, EngineChoice, Page, QueryOutput, QueryRequest};
use crate::query::export::{self, Encoder, ExportFormat};
use crate::query::log::StatsOrder;
use crate::query::saved::{self, Given};
use crate::query::{Params, QueryError};

/// The largest page one request may ask for.
const MAX_PAGE: u64 = 100_000;

/// The body of `POST /api/v1/query` (and, without `sql`, of a saved query's run).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    #[serde(default)]
    sql: Option<String>,
    #[serde(default)]
    engine: Option<EngineChoice>,
    /// An array for `$1, $2, …`, an object for `$name`.
    #[serde(default)]
    params: Option<serde_json::Value>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    format: Option<ExportFormat>,
    /// Only these columns of the result, in this order.
    #[serde(default)]
    fields: Option<Vec<String>>,
}

impl ApiError {
    /// The answer to a query's failure: its status and code by kind; an internal fault's detail
    /// goes to the log under the request id, and the caller is told only that id.
    pub(super) fn query(e: QueryError, request_id: &RequestId) -> ApiError {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if e.is_internal() {
            tracing::error!(request_id = %request_id.0, error = %e, "a query failed inside the engine");
        }
        let mut error = ApiError::new(status, e.code(), e.public_message(&request_id.0)).with_request_id(request_id);
        error.position = e.position().map(|p| (p.line, p.column));
        error
    }
}

pub(super) fn caller(identity: Identity, request_id: &RequestId, address: Option<std::net::IpAddr>) -> Caller {
    Caller {
        scope: identity.scope().to_string(),
        user: identity.user,
        origin: "http",
        request_id: request_id.0.clone(),
        address,
    }
}

/// The format asked for: the body's or the URL's `format`, else the `Accept` header, else JSON.
fn wanted_format(
    body: Option<ExportFormat>,
    query: &FormatQuery,
    headers: &HeaderMap,
) -> Result<ExportFormat, QueryError> {
    if let Some(format) = body {
        return Ok(format);
    }
    if let Some(text) = &query.format {
        return ExportFormat::parse(text).ok_or_else(|| QueryError::Param {
            name: "format".into(),
            message: format!("{text:?} is not one of json, csv, csv-raw, arrow, parquet"),
        });
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Ok(if accept.contains("text/csv") {
        ExportFormat::Csv
    } else if accept.contains("application/vnd.apache.arrow.stream") {
        ExportFormat::Arrow
    } else if accept.contains("application/vnd.apache.parquet") {
        ExportFormat::Parquet
    } else {
        ExportFormat::Json
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

pub async fn post_query(
    State(state): State<AppState>,
    super::auth::Authenticated { identity, request_id, address }: super::auth::Authenticated,
    Query(url): Query<FormatQuery>,
    headers: HeaderMap,
    body: axum::extract::Json<QueryBody>,
) -> Result<Response, ApiError> {
    let body = body.0;
    let sql = body.sql.clone().ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "parameter", "parameter sql: required".into())
            .with_request_id(&request_id)
    })?;
    let params = match &body.params {
        Some(value) => saved::params_from_json(value).map_err(|e| ApiError::query(e, &request_id))?,
        None => Params::None,
    };
    answer(&state, caller(identity, &request_id, address), &request_id, &url, &headers, sql, params, &body)
        .await
        .map(super::auth::audited_by_query)
}

pub async fn run_saved(
    State(state): State<AppState>,
    super::auth::Authenticated { identity, request_id, address }: super::auth::Authenticated,
    Path(name): Path<String>,
    Query(url): Query<FormatQuery>,
    headers: HeaderMap,
    body: Option<axum::extract::Json<QueryBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    if body.sql.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "parameter",
            "parameter sql: a saved query brings its own".into(),
        )
        .with_request_id(&request_id));
    }
    let saved = find_saved(&state, &name).map_err(|e| e.with_request_id(&request_id))?;
    let given: BTreeMap<String, Given> = match &body.params {
        None | Some(serde_json::Value::Null) => BTreeMap::new(),
        Some(serde_json::Value::Object(map)) => map.iter().map(|(k, v)| (k.clone(), Given::Json(v.clone()))).collect(),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter",
                format!("parameter params: a saved query takes an object of named values, got {other}"),
            )
            .with_request_id(&request_id));
        }
    };
    let params = saved.bind(&given).map_err(|e| ApiError::query(e, &request_id))?;
    answer(
        &state,
        caller(identity, &request_id, address),
        &request_id,
        &url,
        &headers,
        saved.sql.clone(),
        params,
        &body,
    )
    .await
    .map(super::auth::audited_by_query)
}

fn find_saved(state: &AppState, name: &str) -> Result<saved::SavedQuery, ApiError> {
    let all = saved::load_all(&state.project.config().queries_dir()).map_err(ApiError::internal)?;
    all.into_iter()
        .find(|q| q.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_query", format!("no saved query named {name:?}")))
}

/// The cursor for the page after `page`: its position and a digest of the table versions it was
/// read from, so that paging on after a commit is refused rather than silently mixing versions.
fn cursor_for(page: Page, output: &QueryOutput) -> String {
    format!("{}.{}.{}", page.offset + page.limit, page.limit, versions_digest(output))
}

fn versions_digest(output: &QueryOutput) -> String {
    let mut hash = Sha256::new();
    for (table, version) in &output.tables {
        hash.update(format!("{table}@{version}|"));
    }
    hex::encode(&hash.finalize()[..8])
}

/// The answer to a query request. Every answer leaves after its query's audit record is stored,
/// and that record (who, from where, the request id, what was read) stands for the request: the
/// route's own record would only repeat it, so the answer is marked as audited.
#[allow(clippy::too_many_arguments)]
async fn answer(
    state: &AppState,
    caller: Caller,
    request_id: &RequestId,
    url: &FormatQuery,
    headers: &HeaderMap,
    sql: String,
    params: Params,
    body: &QueryBody,
) -> Result<Response, ApiError> {
    let fail = |e: QueryError| ApiError::query(e, request_id);
    let format = wanted_format(body.format, url, headers).map_err(fail)?;
    let mut expected_digest = None;
    let page = match (&body.cursor, body.limit, body.offset) {
        (Some(cursor), None, None) => {
            let bad = || QueryError::Param { name: "cursor".into(), message: "not a cursor this API issued".into() };
            let mut parts = cursor.split('.');
            let (Some(offset), Some(limit), Some(digest), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(fail(bad()));
            };
            expected_digest = Some(digest.to_string());
            Some(Page {
                offset: offset.parse().map_err(|_| fail(bad()))?,
                limit: limit.parse().map_err(|_| fail(bad()))?,
            })
        }
        (Some(_), _, _) => {
            return Err(fail(QueryError::Param {
                name: "cursor".into(),
                message: "give either a cursor or limit/offset, not both".into(),
            }));
        }
        (None, Some(limit), offset) => Some(Page { offset: offset.unwrap_or(0), limit }),
        (None, None, Some(offset)) => Some(Page { offset, limit: MAX_PAGE.min(state.engine.limits().max_rows) }),
        (None, None, None) => None,
    };
    if let Some(page) = page
        && (page.limit == 0 || page.limit > MAX_PAGE)
    {
        return Err(fail(QueryError::Param {
            name: "limit".into(),
            message: format!("must be between 1 and {MAX_PAGE}"),
        }));
    }
    let request =
        QueryRequest { sql, engine: body.engine.unwrap_or(state.engine.default_engine()), params, page, caller };
    let fields = body.fields.clone().unwrap_or_default();
    if page.is_none() && format != ExportFormat::Json {
        return stream(state, &request, format, fields, request_id).await;
    }
    let output = state.engine.query(&request).await.map_err(fail)?;
    if let Some(expected) = expected_digest
        && expected != versions_digest(&output)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "data_changed",
            "the tables changed since this cursor was issued; start again from the first page".into(),
        )
        .with_request_id(request_id));
    }
    let etag = format!("\"{}\"", output.key);
    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::ETAG, header_value(&etag));
    response_headers.insert("x-cache", HeaderValue::from_static(if output.cache_hit { "hit" } else { "miss" }));
    response_headers.insert("x-engine", HeaderValue::from_static(output.result.engine.name()));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }
    let result = &output.result;
    let (schema, batches) = if fields.is_empty() {
        (result.schema.clone(), result.batches.clone())
    } else {
        export::select_fields(&result.schema, &result.batches, &fields).map_err(fail)?
    };
    let next_cursor = page.filter(|_| result.has_more).map(|p| cursor_for(p, &output));
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    if format != ExportFormat::Json {
        if let Some(cursor) = &next_cursor {
            response_headers.insert("x-next-cursor", header_value(cursor));
        }
        let bytes = export::encode(format, schema, &batches).map_err(fail)?;
        return Ok((response_headers, bytes).into_response());
    }
    let selected;
    let rows = if fields.is_empty() {
        result.json_rows().map_err(fail)?
    } else {
        selected = export::encode(ExportFormat::Json, schema.clone(), &batches).map_err(fail)?;
        &selected
    };
    let head = AnswerHead {
        cached: output.cache_hit,
        columns: schema
            .fields()
            .iter()
            .map(|f| ColumnHead { name: f.name(), r#type: f.data_type().to_string() })
            .collect(),
        engine: result.engine,
        has_more: result.has_more,
        next_cursor: next_cursor.as_deref(),
        request_id: &request_id.0,
        row_count: batches.iter().map(|b| b.num_rows()).sum(),
        tables: output.tables.iter().map(|(t, v)| (t.to_string(), *v)).collect(),
    };
    // The rows are already JSON; they are spliced in rather than parsed and printed again.
    let mut text = Vec::with_capacity(rows.len() + 512);
    serde_json::to_writer(&mut text, &head).map_err(ApiError::internal)?;
    text.pop();
    text.extend_from_slice(b",\"rows\":");
    text.extend_from_slice(rows);
    text.push(b'}');
    Ok((response_headers, text).into_response())
}

/// A JSON answer's fields other than its rows, in the order clients have always seen them.
#[derive(serde::Serialize)]
struct AnswerHead<'a> {
    cached: bool,
    columns: Vec<ColumnHead<'a>>,
    engine: EngineChoice,
    has_more: bool,
    next_cursor: Option<&'a str>,
    request_id: &'a str,
    row_count: usize,
    tables: BTreeMap<String, i64>,
}

#[derive(serde::Serialize)]
struct ColumnHead<'a> {
    name: &'a str,
    r#type: String,
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// An unpaged export: batches are encoded and sent as the engine produces them.
async fn stream(
    state: &AppState,
    request: &QueryRequest,
    format: ExportFormat,
    fields: Vec<String>,
    request_id: &RequestId,
) -> Result<Response, ApiError> {
    let fail = |e: QueryError| ApiError::query(e, request_id);
    let opened = state.engine.stream(request).await.map_err(fail)?;
    let indices =
        if fields.is_empty() { None } else { Some(export::field_indices(&opened.schema, &fields).map_err(fail)?) };
    let schema = match &indices {
        Some(indices) => {
            std::sync::Arc::new(opened.schema.project(indices).map_err(|e| fail(QueryError::Format(e.to_string())))?)
        }
        None => opened.schema.clone(),
    };
    let encoder = Encoder::new(format, schema).map_err(fail)?;
    let engine = opened.engine;
    let chunks = futures::stream::unfold((opened.batches, Some(encoder)), move |(mut batches, encoder)| {
        let indices = indices.clone();
        async move {
            let mut encoder = encoder?;
            match batches.next().await {
                Some(Ok(batch)) => {
                    let batch = match &indices {
                        Some(i) => batch.project(i).map_err(|e| QueryError::Format(e.to_string())),
                        None => Ok(batch),
                    };
                    let bytes = batch.and_then(|b| encoder.write(&b));
                    Some((bytes.map(bytes::Bytes::from).map_err(std::io::Error::other), (batches, Some(encoder))))
                }
                // A failure mid-stream can only end the body early: the status was sent already.
                Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), (batches, None))),
                None => {
                    Some((encoder.finish().map(bytes::Bytes::from).map_err(std::io::Error::other), (batches, None)))
                }
            }
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    headers.insert("x-cache", HeaderValue::from_static("bypass"));
    headers.insert("x-engine", HeaderValue::from_static(engine.name()));
    Ok((headers, Body::from_stream(chunks)).into_response())
}

pub async fn list_saved(
    State(state): State<AppState>,
    caller: super::auth::Authenticated,
) -> Result<Response, ApiError> {
    let request_id = caller.request_id;
    let all = saved::load_all(&state.project.config().queries_dir()).map_err(|e| ApiError::query(e, &request_id))?;
    Ok(axum::Json(json!({ "queries": all })).into_response())
}

/// One table of the warehouse as the catalog listing shows it.
#[derive(Debug, serde::Serialize)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    pub table: String,
    pub version: Option<u64>,
    pub rows: u64,
    pub changed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, serde::Serialize)]
pub struct ColumnInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
    pub class: crate::pipeline::spec::ColumnClass,
}

/// Every table `who` may read: columns with types and classes, row count, version and when it
/// last changed. Tables for administrators only are not listed to anyone else.
pub(super) async fn table_listing(state: &AppState, who: &crate::auth::Identity) -> Result<Vec<TableInfo>, ApiError> {
    let administrator = who.may(crate::auth::Permission::Administer);
    let catalog = state.engine.catalog();
    let mut out = Vec::new();
    for name in catalog.warehouse().list_tables().await.map_err(ApiError::internal)? {
        if !administrator && state.policy.is_admin_only(&name) {
            continue;
        }
        let Some(table) = catalog.delta(&name).await.map_err(ApiError::internal)? else { continue };
        let (Ok(snapshot), Some((rows, changed))) = (table.snapshot(), crate::query::catalog::table_stats(&table))
        else {
            continue;
        };
        let schema = snapshot.snapshot().arrow_schema();
        let changed_at = changed.and_then(chrono::DateTime::from_timestamp_millis);
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnInfo {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
                nullable: f.is_nullable(),
                class: state.policy.class_of(&name, f.name()),
            })
            .collect();
        out.push(TableInfo {
            schema: name.schema.clone(),
            name: name.name.clone(),
            table: name.to_string(),
            version: table.version(),
            rows,
            changed_at,
            columns,
        });
    }
    Ok(out)
}

/// `GET /api/v1/tables`: [`table_listing`] as JSON.
pub async fn list_tables(
    State(state): State<AppState>,
    caller: super::auth::Authenticated,
) -> Result<Response, ApiError> {
    let tables = table_listing(&state, &caller.identity).await?;
    Ok(axum::Json(json!({ "tables": tables })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    by: Option<StatsOrder>,
    limit: Option<usize>,
}

/// The slowest or most frequent queries, or (`by` omitted) the most recent ones.
pub async fn query_log(
    State(state): State<AppState>,
    _caller: super::auth::Authenticated,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let Some(log) = state.engine.log() else { return Ok(axum::Json(json!({ "queries": [] })).into_response()) };
    let limit = q.limit.unwrap_or(20).min(1000);
    let body = match q.by {
        Some(by) => json!({ "by": by, "queries": log.stats(by, limit).map_err(ApiError::internal)? }),
        None => json!({ "recent": log.recent(limit).map_err(ApiError::internal)? }),
    };
    Ok(axum::Json(body).into_response())
}

/// Prometheus text: query counts, errors and the cache's hits and misses.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    use std::sync::atomic::Ordering::Relaxed;
    let engine = &state.engine;
    let text = format!(
        "# TYPE sokana_queries_total counter\nsokana_queries_total {}\n\
         # TYPE sokana_query_errors_total counter\nsokana_query_errors_total {}\n\
         # TYPE sokana_query_cache_hits_total counter\nsokana_query_cache_hits_total {}\n\
         # TYPE sokana_query_cache_misses_total counter\nsokana_query_cache_misses_total {}\n",
        engine.queries.load(Relaxed),
        engine.errors.load(Relaxed),
        engine.cache().hits.load(Relaxed),
        engine.cache().misses.load(Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
