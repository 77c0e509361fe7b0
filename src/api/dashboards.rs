//! The dashboards API: the dashboards a caller's role may open, one dashboard's panels with their
//! data and chart specs for the filters in the query string (panels fetched concurrently, each
//! with its own error), and one panel as SVG, PNG or CSV; the JSON Schemas of the file formats.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::{Authenticated, audited_by_query};
use super::{ApiError, AppState, RequestId};
use crate::chart::Theme;
use crate::dashboard::{self, Dashboard, DashboardError, Selection, Sources};
use crate::query::cache::Derived;
use crate::query::engine::{Caller, Reads};

impl ApiError {
    fn dashboard(e: DashboardError, request_id: &RequestId) -> ApiError {
        let (status, code) = match e {
            DashboardError::Query(q) | DashboardError::Metrics(crate::metrics::MetricsError::Query(q)) => {
                return ApiError::query(q, request_id);
            }
            DashboardError::Unknown(_) | DashboardError::UnknownPanel { .. } => {
                (StatusCode::NOT_FOUND, "unknown_dashboard")
            }
            DashboardError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            DashboardError::Filter { .. } => (StatusCode::BAD_REQUEST, "filter"),
            DashboardError::Metrics(_) | DashboardError::Panel { .. } | DashboardError::Chart(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "panel")
            }
        };
        ApiError::new(status, code, e.to_string()).with_request_id(request_id)
    }
}

fn sources(state: &AppState) -> Sources<'_> {
    Sources { engine: &state.engine, views: &state.metrics, queries_dir: &state.queries_dir }
}

pub(super) fn pairs(query: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The dashboard `id` if the caller's role may open it.
fn open<'a>(state: &'a AppState, id: &str, caller: &Authenticated) -> Result<&'a std::sync::Arc<Dashboard>, ApiError> {
    let dashboard = state.dashboards.get(id).map_err(|e| ApiError::dashboard(e, &caller.request_id))?;
    if !dashboard.allows(caller.identity.role) {
        return Err(ApiError::dashboard(DashboardError::Forbidden(id.to_string()), &caller.request_id));
    }
    Ok(dashboard)
}

pub(super) fn dashboard_caller(caller: &Authenticated) -> Caller {
    Caller { origin: "dashboard", ..super::query::caller(caller.identity.clone(), &caller.request_id, caller.address) }
}

/// The filters in `pairs`, read (not yet checked against the data: see [`Reading::check`]).
fn selection(dashboard: &Dashboard, pairs: &[(String, String)], request_id: &RequestId) -> Result<Selection, ApiError> {
    Selection::from_pairs(dashboard, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), dashboard::today())
        .map_err(|e| ApiError::dashboard(e, request_id))
}

/// The dashboards the caller's role may open.
pub(super) async fn list(State(state): State<AppState>, caller: Authenticated) -> Json<serde_json::Value> {
    let dashboards: Vec<_> = state
        .dashboards
        .dashboards()
        .filter(|d| d.allows(caller.identity.role))
        .map(|d| json!({ "id": d.id, "title": d.file.title, "description": d.file.description, "panels": d.file.panels.len() }))
        .collect();
    let problems: Vec<String> = state.dashboards.problems().iter().map(ToString::to_string).collect();
    Json(json!({ "dashboards": dashboards, "problems": problems }))
}

/// One dashboard: its filters (with the values chosen and, for selects, the values offered) and
/// every panel's spec and data, or the panel's error. The whole answer is kept (see
/// [`crate::query::cache::Derived`]): asked again with the same filters and role while its tables
/// stand still, it is served as made, with one record in the log and the audit trail.
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = pairs(query);
    let reading = reading(&state, &id, &caller, &pairs)?;
    let name = reading.derived_name("data");
    let _turn = match kept(&state, &name, &reading.caller, &caller.request_id).await? {
        Kept::Hit(kept) => return Ok(audited_by_query(derived_response(&kept, true, &headers))),
        Kept::Make(turn) => turn,
    };
    let mut reads = reading.check(&state, &caller.request_id).await?;
    let Reading { dashboard, selection, caller: as_caller, .. } = &reading;
    let sources = sources(&state);
    let answers = futures::future::join_all(dashboard.file.panels.iter().map(|panel| {
        let (sources, request_id) = (&sources, &caller.request_id);
        async move {
            let data = dashboard::panel_data(sources, dashboard, panel, selection, as_caller).await;
            let mut out = json!({
                "id": panel.id, "title": panel.title, "description": panel.description, "chart": panel.chart,
                "width": panel.width(), "height": panel.height(), "encoding": panel.encoding,
            });
            let read = match data {
                Ok(data) => {
                    out["data"] = json!(data);
                    Some(data.reads)
                }
                Err(e) => {
                    if let DashboardError::Query(q) = &e
                        && q.is_internal()
                    {
                        tracing::error!(request_id = %request_id.0, error = %q, "a dashboard panel failed");
                    }
                    out["error"] = json!(public_message(&e, request_id));
                    None
                }
            };
            (out, read)
        }
    }))
    .await;
    let mut panels = Vec::with_capacity(answers.len());
    for (panel, read) in answers {
        // A panel's error may pass (a timeout): the answer is not kept.
        reads.add(&read.unwrap_or_else(Reads::volatile));
        panels.push(panel);
    }
    let mut filters = Vec::new();
    for f in &dashboard.file.filters {
        let mut filter = json!({ "name": f.name, "kind": f.kind, "label": f.label.clone().unwrap_or_else(|| f.name.replace('_', " ")) });
        match f.kind {
            dashboard::FilterKind::DateRange => {
                if let Some((_, preset, range)) = selection.range.as_ref().filter(|(name, _, _)| *name == f.name) {
                    filter["preset"] = json!(preset.map(|p| p.name()));
                    filter["from"] = json!(range.from);
                    filter["to"] = json!(range.to);
                }
                filter["presets"] = json!(
                    dashboard::Preset::ALL
                        .iter()
                        .map(|p| json!({"name": p.name(), "label": p.label()}))
                        .collect::<Vec<_>>()
                );
            }
            dashboard::FilterKind::Select => {
                filter["values"] = json!(selection.selects.get(&f.name).cloned().unwrap_or_default());
                let options = dashboard::filter_values(&state.engine, &state.metrics, dashboard, &f.name, as_caller)
                    .await
                    .unwrap_or_else(|_| dashboard::FilterValues { values: Vec::new(), reads: Reads::volatile() });
                reads.add(&options.reads);
                filter["options"] = json!(options.values);
            }
        }
        filters.push(filter);
    }
    let body = json!({
        "id": dashboard.id, "title": dashboard.file.title, "description": dashboard.file.description,
        "filters": filters, "panels": panels,
    });
    let bytes = serde_json::to_vec(&body).map_err(ApiError::internal)?;
    let label = format!("dashboard {}", dashboard.id);
    Ok(audited_by_query(keep_json(&state, &name, as_caller, label, bytes, reads, &headers)))
}

/// Keeps the JSON `bytes` just made as the derived answer `name` for `caller` (with what they
/// read), and answers the request with `request` headers with them.
pub(super) fn keep_json(
    state: &AppState,
    name: &str,
    caller: &Caller,
    label: String,
    bytes: Vec<u8>,
    reads: Reads,
    request: &HeaderMap,
) -> Response {
    let made = Derived {
        encoded: encodings("application/json", &bytes),
        bytes: bytes.into(),
        headers: vec![("content-type", "application/json".into())],
        label,
        reads,
    };
    let response = derived_response(&made, false, request);
    state.engine.keep_derived(name, caller, made);
    response
}

/// A kept answer, or this request's turn to make it.
pub(super) enum Kept {
    Hit(std::sync::Arc<Derived>),
    /// Held while making the answer (`None`: made side by side, see [`crate::query::engine::QueryEngine::making`]).
    Make(Option<tokio::sync::OwnedMutexGuard<()>>),
}

/// The kept answer `name` for `caller`, or, when there is none, the turn to make it: a request
/// that waited while another made it looks again (without the turn) and is served that.
pub(super) async fn kept(
    state: &AppState,
    name: &str,
    caller: &Caller,
    request_id: &RequestId,
) -> Result<Kept, ApiError> {
    let look = || async { state.engine.derived(name, caller).await.map_err(|e| ApiError::query(e, request_id)) };
    if let Some(hit) = look().await? {
        return Ok(Kept::Hit(hit));
    }
    let turn = state.engine.making(name, caller).await;
    if turn.is_none()
        && let Some(hit) = look().await?
    {
        return Ok(Kept::Hit(hit));
    }
    Ok(Kept::Make(turn))
}

/// The response of a derived answer to a request with `request` headers: its bytes (compressed
/// when the client accepts a coding it was kept in) and headers, and `x-sokana-cache: hit` when
/// it was kept from before (`miss` when just made).
pub(super) fn derived_response(derived: &Derived, hit: bool, request: &HeaderMap) -> Response {
    let coded = derived.encoded.iter().find(|(coding, _)| accepts(request, coding));
    let body = coded.map_or_else(|| derived.bytes.clone(), |(_, bytes)| bytes.clone());
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    if let Some((coding, _)) = coded {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
    }
    if !derived.encoded.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    headers.insert(CACHE_HEADER, HeaderValue::from_static(if hit { "hit" } else { "miss" }));
    for (name, value) in &derived.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

/// What a panel's error tells the viewer: an internal fault only by its request id.
fn public_message(e: &DashboardError, request_id: &RequestId) -> String {
    match e {
        DashboardError::Query(q) => q.public_message(&request_id.0),
        other => other.to_string(),
    }
}

/// One panel as `NAME.svg`, `NAME.png` or `NAME.csv` (`?raw=true`: CSV cells as stored, without
/// the spreadsheet-formula guard), with the dashboard's filters, `theme=dark`, `page=N` and, for
/// pictures, `width` and `height` in pixels (the panel's grid size when not given). The
/// `X-Sokana-Tables` header names the tables read and their versions, which live refresh watches.
pub(super) async fn panel(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    Path((id, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = pairs(query);
    let reading = reading(&state, &id, &caller, &pairs)?;
    let asked = Asked { file: &file, pairs: &pairs, headers: &headers };
    Ok(audited_by_query(panel_file(&state, &reading, &asked, &caller.request_id).await?))
}

/// A rendering parameter of a panel request: absent, or parsed by `parse`.
fn parameter<T>(
    pairs: &[(String, String)],
    key: &str,
    expected: &str,
    request_id: &RequestId,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    let Some((_, text)) = pairs.iter().find(|(k, _)| k == key) else { return Ok(None) };
    parse(text).map(Some).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "parameter",
            format!("parameter {key}: expected {expected}, got {text:?}"),
        )
        .with_request_id(request_id)
    })
}

/// Pictures are drawn between these sizes, in pixels.
const PIXELS: std::ops::RangeInclusive<u32> = 80..=4000;

/// A dashboard as one reader opens it: the filters chosen (or locked by an embed link) and who
/// reads, checked; what the panel and rows endpoints of both paths serve from.
pub(super) struct Reading {
    dashboard: std::sync::Arc<Dashboard>,
    selection: Selection,
    caller: Caller,
    /// Whether the reader may see the SQL behind a panel (`PANEL.sql`): one who may run SQL.
    sees_sql: bool,
}

impl Reading {
    /// Checks the chosen select values against the data as the reader sees it; what that read.
    async fn check(&self, state: &AppState, request_id: &RequestId) -> Result<Reads, ApiError> {
        dashboard::check_values(&state.engine, &state.metrics, &self.dashboard, &self.selection, &self.caller)
            .await
            .map_err(|e| ApiError::dashboard(e, request_id))
    }

    /// The name a derived answer of this reading is kept under: `what` (which must name everything
    /// else that decides its bytes), the dashboard, the filters and today's date (which presets
    /// and panels' own ranges are resolved against). The engine adds the reader's scope.
    fn derived_name(&self, what: &str) -> String {
        format!("dashboard {} {what} {:?} {}", self.dashboard.id, self.selection, dashboard::today())
    }
}

/// The dashboard `id` with the filters in `pairs`, for a signed-in caller whose role may open it.
fn reading(
    state: &AppState,
    id: &str,
    caller: &Authenticated,
    pairs: &[(String, String)],
) -> Result<Reading, ApiError> {
    let dashboard = open(state, id, caller)?.clone();
    let selection = selection(&dashboard, pairs, &caller.request_id)?;
    let sees_sql = caller.identity.may(crate::auth::Permission::RunSql);
    Ok(Reading { dashboard, selection, caller: dashboard_caller(caller), sees_sql })
}

/// What a panel request asks for: the file (`PANEL.svg|png|csv|sql`), the URL's pairs (the
/// picture's theme, page and size) and the request's headers (the codings it accepts).
pub(super) struct Asked<'a> {
    file: &'a str,
    pairs: &'a [(String, String)],
    headers: &'a HeaderMap,
}

/// The file `asked` of the dashboard `reading` opened.
pub(super) async fn panel_file(
    state: &AppState,
    reading: &Reading,
    asked: &Asked<'_>,
    request_id: &RequestId,
) -> Result<Response, ApiError> {
    let Asked { file, pairs, headers: request_headers } = *asked;
    let Reading { dashboard, selection, caller: as_caller, sees_sql } = reading;
    let (name, extension) = file.rsplit_once('.').unwrap_or((file, ""));
    let panel = dashboard.panel(name).ok_or_else(|| {
        ApiError::dashboard(
            DashboardError::UnknownPanel { dashboard: dashboard.id.clone(), panel: name.to_string() },
            request_id,
        )
    })?;
    let theme = parameter(pairs, "theme", "light or dark", request_id, |t| match t {
        "light" => Some(Theme::Light),
        "dark" => Some(Theme::Dark),
        _ => None,
    })?
    .unwrap_or(Theme::Light);
    let page = parameter(pairs, "page", "a page number from 0", request_id, |t| t.parse::<usize>().ok())?.unwrap_or(0);
    let pixels = |t: &str| t.parse::<u32>().ok().filter(|n| PIXELS.contains(n));
    let expected = format!("a number of pixels from {} to {}", PIXELS.start(), PIXELS.end());
    let width = parameter(pairs, "width", &expected, request_id, pixels)?;
    let height = parameter(pairs, "height", &expected, request_id, pixels)?;
    let size = match (width, height) {
        (Some(w), Some(h)) => Some((w, h)),
        (None, None) => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter",
                "give both width and height, or neither".into(),
            )
            .with_request_id(request_id));
        }
    };
    // Before the kept answers are asked: an embed link reads as its maker, who may see the SQL.
    if extension == "sql" && !sees_sql {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{file}: the SQL behind a panel is shown only to roles that may run SQL, and never through an embed link"),
        )
        .with_request_id(request_id));
    }
    let raw = pairs.iter().any(|(k, v)| k == "raw" && v == "true");
    let name = reading.derived_name(&format!("panel {file} {theme:?} {page} {size:?} {raw}"));
    let _turn = match kept(state, &name, as_caller, request_id).await? {
        Kept::Hit(kept) => return Ok(derived_response(&kept, true, request_headers)),
        Kept::Make(turn) => turn,
    };
    let mut reads = reading.check(state, request_id).await?;
    let data = dashboard::panel_data(&sources(state), dashboard, panel, selection, as_caller)
        .await
        .map_err(|e| ApiError::dashboard(e, request_id))?;
    reads.add(&data.reads);
    let (content_type, bytes) = match extension {
        "svg" | "png" => {
            let svg = dashboard::render(dashboard, panel, &data, theme, size, page)
                .map_err(|e| ApiError::dashboard(e, request_id))?;
            if extension == "svg" {
                ("image/svg+xml", svg.into_bytes())
            } else {
                let png = crate::chart::render_png(&svg, 2.0).map_err(|e| ApiError::dashboard(e.into(), request_id))?;
                ("image/png", png)
            }
        }
        "sql" => {
            let text: Vec<String> = data.statements.iter().map(|s| format!("{};\n", s.with_values())).collect();
            ("application/sql; charset=utf-8", text.join("\n").into_bytes())
        }
        "csv" => {
            let csv = dashboard::csv(&data.frame, raw).map_err(|e| ApiError::dashboard(e, request_id))?;
            ("text/csv; charset=utf-8", csv)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_format",
                format!("a panel is served as .svg, .png, .csv or .sql, not {other:?}"),
            )
            .with_request_id(request_id));
        }
    };
    let tables: Vec<String> = data.tables.iter().map(|t| format!("{}@{}", t.table, t.version)).collect();
    let made = Derived {
        encoded: encodings(content_type, &bytes),
        bytes: bytes.into(),
        headers: vec![
            ("content-type", content_type.into()),
            ("content-disposition", format!("inline; filename=\"{}-{}.{extension}\"", dashboard.id, panel.id)),
            (TABLES_HEADER, tables.join(",")),
        ],
        label: format!("dashboard {} panel {}", dashboard.id, panel.id),
        reads,
    };
    let response = derived_response(&made, false, request_headers);
    state.engine.keep_derived(&name, as_caller, made);
    Ok(response)
}

/// Whether `Accept-Encoding` in `headers` admits `coding` (named, with a weight above zero).
/// By hand: tower-http negotiates inside its compression layer and does not export it.
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let named = parts.next().is_some_and(|name| name.eq_ignore_ascii_case(coding));
            let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0)));
            named && !refused
        })
}

/// `bytes` of `content_type` compressed as brotli and gzip, when worth it (text over a few KB;
/// PNG is compressed already). Once per kept answer, so at better levels than per response.
fn encodings(content_type: &str, bytes: &[u8]) -> Vec<(&'static str, bytes::Bytes)> {
    use std::io::Write;
    if content_type.starts_with("image/png") || bytes.len() < super::COMPRESS_ABOVE as usize {
        return Vec::new();
    }
    let mut encoded = Vec::new();
    let params = brotli::enc::BrotliEncoderParams { quality: 5, ..Default::default() };
    let mut br = Vec::new();
    if brotli::BrotliCompress(&mut &bytes[..], &mut br, &params).is_ok() {
        encoded.push(("br", br.into()));
    }
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    if gzip.write_all(bytes).is_ok()
        && let Ok(gzip) = gzip.finish()
    {
        encoded.push(("gzip", gzip.into()));
    }
    encoded
}

/// The tables a panel read, as `schema.table@version` separated by commas.
pub(super) const TABLES_HEADER: &str = "x-sokana-tables";

/// Whether a dashboard's answer was kept from before (`hit`) or made for this request (`miss`).
const CACHE_HEADER: &str = "x-sokana-cache";

/// `GET /api/v1/dashboards/{id}/panels/{panel}/rows`: the warehouse rows behind a panel's
/// numbers with the dashboard's filters, narrowed to one mark with `x` and `series` (the
/// values of a clicked bar or slice), as the caller's role sees them.
pub(super) async fn rows(
    State(state): State<AppState>,
    caller: Authenticated,
    Path((id, panel)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = pairs(query);
    let reading = reading(&state, &id, &caller, &pairs)?;
    Ok(audited_by_query(panel_rows(&state, &reading, &panel, &pairs, &caller.request_id).await?))
}

pub(super) async fn panel_rows(
    state: &AppState,
    reading: &Reading,
    panel: &str,
    pairs: &[(String, String)],
    request_id: &RequestId,
) -> Result<Response, ApiError> {
    reading.check(state, request_id).await?;
    let Reading { dashboard, selection, caller: as_caller, .. } = reading;
    let spec = dashboard.panel(panel).ok_or_else(|| {
        ApiError::dashboard(
            DashboardError::UnknownPanel { dashboard: dashboard.id.clone(), panel: panel.to_string() },
            request_id,
        )
    })?;
    let value = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mark = dashboard::Mark { x: value("x"), series: value("series") };
    let output = dashboard::rows_behind(&sources(state), dashboard, spec, selection, &mark, as_caller)
        .await
        .map_err(|e| ApiError::dashboard(e, request_id))?;
    let columns: Vec<serde_json::Value> = output
        .result
        .schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let rows = output.result.json_rows().map_err(|e| ApiError::query(e, request_id))?;
    let rows: serde_json::Value =
        if rows.is_empty() { json!([]) } else { serde_json::from_slice(rows).map_err(ApiError::internal)? };
    let count = rows.as_array().map_or(0, Vec::len);
    Ok(Json(json!({
        "dashboard": dashboard.id, "panel": spec.id, "columns": columns, "rows": rows,
        "truncated": count as u64 >= dashboard::DRILL_ROWS,
    }))
    .into_response())
}

/// A JSON Schema of the file formats (`dashboard.json`, `metrics-view.json`).
pub(super) async fn schema(Path(name): Path<String>) -> Result<Response, ApiError> {
    let found = crate::SCHEMAS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
    match found {
        Some(schema) => Ok(([(header::CONTENT_TYPE, "application/schema+json")], schema).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_schema",
            format!("no schema {name:?}; there are dashboard.json and metrics-view.json"),
        )),
    }
}

/// The body of `POST /api/v1/chart`: a query and how to draw its answer.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChartBody {
    sql: String,
    chart: crate::chart::ChartKind,
    #[serde(default)]
    encoding: crate::chart::Encoding,
    #[serde(default)]
    theme: Option<String>,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
}

/// `POST /api/v1/chart`: the SQL console's chart of a query's answer, as SVG.
pub(super) async fn chart(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<ChartBody>,
) -> Result<Response, ApiError> {
    let request_id = &caller.request_id;
    let theme = match body.theme.as_deref() {
        None | Some("light") => Theme::Light,
        Some("dark") => Theme::Dark,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter",
                format!("theme: expected light or dark, got {other:?}"),
            )
            .with_request_id(request_id));
        }
    };
    let mut size = (body.width.unwrap_or(900), body.height.unwrap_or(360));
    for (key, value) in [("width", &mut size.0), ("height", &mut size.1)] {
        if !PIXELS.contains(value) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter",
                format!("{key}: expected a number of pixels from {} to {}, got {value}", PIXELS.start(), PIXELS.end()),
            )
            .with_request_id(request_id));
        }
    }
    let as_caller =
        Caller { origin: "console", ..super::query::caller(caller.identity.clone(), request_id, caller.address) };
    let svg = dashboard::chart_of_sql(&sources(&state), &body.sql, body.chart, &body.encoding, theme, size, &as_caller)
        .await
        .map_err(|e| ApiError::dashboard(e, request_id))?;
    Ok(audited_by_query(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()))
}

/// The body of `POST /api/v1/dashboards/{id}/embed`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EmbedBody {
    /// Filter name → a value or a list of values, locked for the link's viewers.
    #[serde(default)]
    filters: serde_json::Map<String, serde_json::Value>,
    /// How long the link works; an hour when not given, a week at most.
    #[serde(default)]
    lifetime_seconds: Option<i64>,
}

/// `POST /api/v1/dashboards/{id}/embed`: a link that opens this dashboard with these filters in
/// a frame, as the caller, until it expires.
pub(super) async fn create_embed(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<EmbedBody>,
) -> Result<Response, ApiError> {
    let request_id = &caller.request_id;
    let dashboard = open(&state, &id, &caller)?;
    let mut pairs = Vec::new();
    for (name, value) in body.filters {
        if !dashboard.file.filters.iter().any(|f| f.name == name) {
            let names: Vec<&str> = dashboard.file.filters.iter().map(|f| f.name.as_str()).collect();
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "filter",
                format!("filters.{name}: dashboard {} has no such filter (it has: {})", dashboard.id, names.join(", ")),
            )
            .with_request_id(request_id));
        }
        let values = match value {
            serde_json::Value::String(v) => vec![v],
            serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_string) => {
                items.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "filter",
                    format!("filters.{name}: expected a string or an array of strings, got {other}"),
                )
                .with_request_id(request_id));
            }
        };
        pairs.extend(values.into_iter().map(|v| (name.clone(), v)));
    }
    // The locked filters are checked now, as the caller, so that a link never fails later.
    let reading = Reading {
        dashboard: dashboard.clone(),
        selection: selection(dashboard, &pairs, request_id)?,
        caller: dashboard_caller(&caller),
        sees_sql: false,
    };
    reading.check(&state, request_id).await?;
    let seconds = body.lifetime_seconds.unwrap_or(3600);
    let (token, grant) = state.auth.sign_embed(&caller.identity, &dashboard.id, pairs, seconds)?;
    let scheme = if state.project.config().server.tls_cert.is_some() { "https" } else { "http" };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let url = format!("{scheme}://{host}/embed/{token}");
    state.auth.audit().record(caller.event("embed link", format!("dashboard {} link {}", dashboard.id, grant.jti)));
    let expires_at = chrono::DateTime::from_timestamp(grant.exp, 0).map(|t| t.to_rfc3339());
    Ok((StatusCode::CREATED, Json(json!({ "url": url, "expires_at": expires_at, "id": grant.jti }))).into_response())
}

/// What an embed link opens: its dashboard and locked selection, as its maker (checked now).
struct Embedded {
    reading: Reading,
    grant: crate::auth::embed::EmbedGrant,
    identity: crate::auth::Identity,
}

async fn embedded(
    state: &AppState,
    token: &str,
    request_id: &RequestId,
    address: Option<std::net::IpAddr>,
) -> Result<Embedded, ApiError> {
    let (identity, grant) =
        state.auth.verify_embed(token).await.map_err(|e| ApiError::from(e).with_request_id(request_id))?;
    let dashboard = state.dashboards.get(&grant.dashboard).map_err(|e| ApiError::dashboard(e, request_id))?.clone();
    if !dashboard.allows(identity.role) {
        return Err(ApiError::dashboard(DashboardError::Forbidden(grant.dashboard.clone()), request_id));
    }
    let caller = Caller { origin: "embed", ..super::query::caller(identity.clone(), request_id, address) };
    let selection = selection(&dashboard, &grant.filters, request_id)?;
    Ok(Embedded { reading: Reading { dashboard, selection, caller, sees_sql: false }, grant, identity })
}

/// `GET /embed/{token}`: the dashboard of a signed link, for a frame on an allowed site.
pub(super) async fn embed_page(
    State(state): State<AppState>,
    request_id: RequestId,
    super::auth::ClientDevice(device): super::auth::ClientDevice,
    Path(token): Path<String>,
) -> Response {
    let address = device.ip;
    let embedded = match embedded(&state, &token, &request_id, address).await {
        Ok(e) => e,
        Err(e) => return super::pages::error_page(e.status, None, "This link has expired or is not valid."),
    };
    state.auth.audit().record(crate::auth::audit::Event {
        user: embedded.identity.user.clone(),
        role: embedded.identity.role.name().into(),
        origin: "embed".into(),
        address: address.map(|a| a.to_string()).unwrap_or_default(),
        request_id: request_id.0.clone(),
        action: "view embed".into(),
        detail: format!("dashboard {} link {}", embedded.reading.dashboard.id, embedded.grant.jti),
        outcome: "ok".into(),
        ..crate::auth::audit::Event::now()
    });
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&embedded.grant.filters).finish();
    let body = super::pages::dashboard_body(
        &state,
        &embedded.reading.dashboard,
        Some(query),
        &embedded.reading.caller,
        &request_id,
        Some(&token),
        false,
    )
    .await;
    super::pages::embed_page(&state, &embedded.reading.dashboard.file.title, body)
}

/// `GET /embed/{token}/panels/{file}`: a panel of a signed link's dashboard, with its locked
/// filters (only the picture's theme, page and size come from the URL).
pub(super) async fn embed_panel(
    State(state): State<AppState>,
    request_id: RequestId,
    super::auth::ClientDevice(device): super::auth::ClientDevice,
    headers: HeaderMap,
    Path((token, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let e = embedded(&state, &token, &request_id, device.ip).await?;
    let pairs = pairs(query);
    panel_file(&state, &e.reading, &Asked { file: &file, pairs: &pairs, headers: &headers }, &request_id).await
}

/// `GET /embed/{token}/panels/{panel}/rows`: the rows behind a panel of a signed link.
pub(super) async fn embed_rows(
    State(state): State<AppState>,
    request_id: RequestId,
    super::auth::ClientDevice(device): super::auth::ClientDevice,
    Path((token, panel)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let e = embedded(&state, &token, &request_id, device.ip).await?;
    panel_rows(&state, &e.reading, &panel, &pairs(query), &request_id).await
}

/// `GET /embed/{token}/events`: live refresh for a signed link's page.
pub(super) async fn embed_events(
    State(state): State<AppState>,
    request_id: RequestId,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (identity, _) =
        state.auth.verify_embed(&token).await.map_err(|e| ApiError::from(e).with_request_id(&request_id))?;
    Ok(table_events(&state, &identity).into_response())
}

/// `GET /api/v1/events/tables`: server-sent events with the versions of the tables the caller
/// may list, as they change.
pub(super) async fn events(State(state): State<AppState>, caller: Authenticated) -> Response {
    table_events(&state, &caller.identity).into_response()
}

fn table_events(state: &AppState, who: &crate::auth::Identity) -> impl IntoResponse + use<> {
    let administrator = who.may(crate::auth::Permission::Administer);
    let policy = state.policy.clone();
    super::live::events(state.tables.subscribe(), move |table| administrator || !policy.is_admin_only(table))
}
