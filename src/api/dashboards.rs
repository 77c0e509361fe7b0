//! The dashboards API: the dashboards a caller's role may open, one dashboard's panels with their
//! data and chart specs for the filters in the query string (panels fetched concurrently, each
//! with its own error), and one panel as SVG, PNG or CSV; the JSON Schemas of the file formats.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::{Authenticated, audited_by_query};
use super::{ApiError, AppState, RequestId};
use crate::chart::Theme;
use crate::dashboard::{self, Dashboard, DashboardError, Selection, Sources};
use crate::query::engine::Caller;

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

fn pairs(query: Option<String>) -> Vec<(String, String)> {
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

fn dashboard_caller(caller: &Authenticated) -> Caller {
    Caller { origin: "dashboard", ..super::query::caller(caller.identity.clone(), &caller.request_id, caller.address) }
}

async fn selection(
    state: &AppState,
    dashboard: &Dashboard,
    pairs: &[(String, String)],
    caller: &Caller,
    request_id: &RequestId,
) -> Result<Selection, ApiError> {
    let selection =
        Selection::from_pairs(dashboard, pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())), dashboard::today())
            .map_err(|e| ApiError::dashboard(e, request_id))?;
    dashboard::check_values(&state.engine, &state.metrics, dashboard, &selection, caller)
        .await
        .map_err(|e| ApiError::dashboard(e, request_id))?;
    Ok(selection)
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
/// every panel's spec and data, or the panel's error.
pub(super) async fn get(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let dashboard = open(&state, &id, &caller)?;
    let as_caller = dashboard_caller(&caller);
    let pairs = pairs(query);
    let selection = selection(&state, dashboard, &pairs, &as_caller, &caller.request_id).await?;
    let sources = sources(&state);
    let panels = futures::future::join_all(dashboard.file.panels.iter().map(|panel| {
        let (sources, selection, as_caller, request_id) = (&sources, &selection, &as_caller, &caller.request_id);
        async move {
            let data = dashboard::panel_data(sources, dashboard, panel, selection, as_caller).await;
            let mut out = json!({
                "id": panel.id, "title": panel.title, "description": panel.description, "chart": panel.chart,
                "width": panel.width(), "height": panel.height(), "encoding": panel.encoding,
            });
            match data {
                Ok(data) => out["data"] = json!(data),
                Err(e) => {
                    if let DashboardError::Query(q) = &e
                        && q.is_internal()
                    {
                        tracing::error!(request_id = %request_id.0, error = %q, "a dashboard panel failed");
                    }
                    out["error"] = json!(public_message(&e, request_id));
                }
            }
            out
        }
    }))
    .await;
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
                filter["options"] = json!(
                    dashboard::filter_values(&state.engine, &state.metrics, dashboard, &f.name, &as_caller)
                        .await
                        .unwrap_or_default()
                );
            }
        }
        filters.push(filter);
    }
    let body = json!({
        "id": dashboard.id, "title": dashboard.file.title, "description": dashboard.file.description,
        "filters": filters, "panels": panels,
    });
    Ok(audited_by_query(Json(body).into_response()))
}

/// What a panel's error tells the viewer: an internal fault only by its request id.
fn public_message(e: &DashboardError, request_id: &RequestId) -> String {
    match e {
        DashboardError::Query(q) => q.public_message(&request_id.0),
        other => other.to_string(),
    }
}

/// One panel as `NAME.svg`, `NAME.png` or `NAME.csv` (`?raw=true`: CSV cells as stored, without
/// the spreadsheet-formula guard), with the dashboard's filters, `theme=dark` and `page=N`.
pub(super) async fn panel(
    State(state): State<AppState>,
    caller: Authenticated,
    Path((id, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let dashboard = open(&state, &id, &caller)?;
    let (name, extension) = file.rsplit_once('.').unwrap_or((file.as_str(), ""));
    let panel = dashboard.panel(name).ok_or_else(|| {
        ApiError::dashboard(
            DashboardError::UnknownPanel { dashboard: id.clone(), panel: name.to_string() },
            &caller.request_id,
        )
    })?;
    let pairs = pairs(query);
    let param = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let theme = match param("theme") {
        None | Some("light") => Theme::Light,
        Some("dark") => Theme::Dark,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter",
                format!("parameter theme: expected light or dark, got {other:?}"),
            )
            .with_request_id(&caller.request_id));
        }
    };
    let page = match param("page") {
        None => 0,
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "parameter",
                format!("parameter page: expected a page number from 0, got {text:?}"),
            )
            .with_request_id(&caller.request_id)
        })?,
    };
    let as_caller = dashboard_caller(&caller);
    let selection = selection(&state, dashboard, &pairs, &as_caller, &caller.request_id).await?;
    let sources = sources(&state);
    let data = dashboard::panel_data(&sources, dashboard, panel, &selection, &as_caller)
        .await
        .map_err(|e| ApiError::dashboard(e, &caller.request_id))?;
    let (content_type, bytes) = match extension {
        "svg" => {
            let svg = dashboard::render(dashboard, panel, &data, theme, None, page)
                .map_err(|e| ApiError::dashboard(e, &caller.request_id))?;
            ("image/svg+xml", svg.into_bytes())
        }
        "png" => {
            let svg = dashboard::render(dashboard, panel, &data, theme, None, page)
                .map_err(|e| ApiError::dashboard(e, &caller.request_id))?;
            let png =
                crate::chart::render_png(&svg, 2.0).map_err(|e| ApiError::dashboard(e.into(), &caller.request_id))?;
            ("image/png", png)
        }
        "csv" => {
            let csv = dashboard::csv(&data.frame, param("raw") == Some("true"))
                .map_err(|e| ApiError::dashboard(e, &caller.request_id))?;
            ("text/csv; charset=utf-8", csv)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_format",
                format!("a panel is served as .svg, .png or .csv, not {other:?}"),
            )
            .with_request_id(&caller.request_id));
        }
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(disposition) =
        HeaderValue::from_str(&format!("inline; filename=\"{}-{}.{extension}\"", dashboard.id, panel.id))
    {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(audited_by_query(response))
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
