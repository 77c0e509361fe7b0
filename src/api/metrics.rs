//! The metrics API: the views and their fields (`GET /api/v1/metrics`), and a view's answer to a
//! request given in the query string (`GET /api/v1/metrics/{view}`), run as the caller's role.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::{Authenticated, audited_by_query};
use super::dashboards::{Kept, derived_response, keep_json, kept};
use super::{ApiError, AppState, RequestId};
use crate::metrics::request::MetricsRequest;
use crate::metrics::{self, MetricsError};

impl ApiError {
    fn metrics(e: MetricsError, request_id: &RequestId) -> ApiError {
        match e {
            MetricsError::Query(e) => ApiError::query(e, request_id),
            MetricsError::UnknownView(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_view", e.to_string()).with_request_id(request_id)
            }
            MetricsError::Request { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "parameter", e.to_string()).with_request_id(request_id)
            }
            MetricsError::Spec(_) | MetricsError::View { .. } => {
                tracing::error!(request_id = %request_id.0, error = %e, "a metrics view does not fit the warehouse");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics_view", e.to_string())
                    .with_request_id(request_id)
            }
        }
    }
}

/// Every view with its dimensions and measures; files that did not load are listed as problems.
pub(super) async fn list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let views: Vec<_> = state.metrics.views().map(|v| v.as_ref()).collect();
    let problems: Vec<String> = state.metrics.problems().iter().map(ToString::to_string).collect();
    Json(json!({ "views": views, "problems": problems }))
}

pub(super) async fn answer(
    State(state): State<AppState>,
    Authenticated { identity, request_id, address }: Authenticated,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = state.metrics.view(&name).map_err(|e| ApiError::metrics(e, &request_id))?;
    let query = query.unwrap_or_default();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let (asked, pairs): (Vec<_>, Vec<_>) =
        pairs.into_iter().partition(|(k, _)| matches!(k.as_str(), "forecast" | "level"));
    let ask = forecast_asked(&asked).map_err(|e| ApiError::metrics(e, &request_id))?;
    let request = MetricsRequest::from_pairs(
        view,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        state.engine.limits().max_rows,
    )
    .map_err(|e| ApiError::metrics(e, &request_id))?;
    let caller = super::query::caller(identity, &request_id, address);
    let Some(ask) = ask else {
        let answer = metrics::answer(&state.engine, view, &request, &caller)
            .await
            .map_err(|e| ApiError::metrics(e, &request_id))?;
        return Ok(audited_by_query(Json(answer).into_response()));
    };
    // A forecast is fitted afresh from answers that may be cached: tens of milliseconds of CPU a
    // request. It is kept as a derived answer, by the request and the day, for as long as the
    // tables it read stay at the versions it read.
    let today = chrono::Utc::now().with_timezone(&view.timezone).date_naive();
    let kept_as = format!("metrics {name}?{query} as of {today}");
    let _turn = match kept(&state, &kept_as, &caller, &request_id).await? {
        Kept::Hit(hit) => return Ok(audited_by_query(derived_response(&hit, true, &headers))),
        Kept::Make(turn) => turn,
    };
    let mut answer =
        metrics::answer(&state.engine, view, &request, &caller).await.map_err(|e| ApiError::metrics(e, &request_id))?;
    let (forecast, reads) = metrics::forecast(&state.engine, view, &request, &ask, today, &caller)
        .await
        .map_err(|e| ApiError::metrics(e, &request_id))?;
    answer.forecast = Some(forecast);
    let mut all = answer.reads.clone();
    all.add(&reads);
    let bytes = serde_json::to_vec(&answer).map_err(ApiError::internal)?;
    let label = format!("metrics {name} forecast");
    Ok(audited_by_query(keep_json(&state, &kept_as, &caller, label, bytes, all, &headers)))
}

/// `forecast=N` (periods ahead) and `level=95` (repeatable; 80 and 95 when not given).
fn forecast_asked(pairs: &[(String, String)]) -> Result<Option<crate::forecast::Request>, MetricsError> {
    let bad = |parameter: &str, message: String| MetricsError::Request { parameter: parameter.into(), message };
    let mut horizon = None;
    let mut levels = Vec::new();
    for (key, value) in pairs {
        if key == "forecast" {
            horizon =
                Some(value.trim().parse::<usize>().map_err(|_| {
                    bad("forecast", format!("expected a number of periods ahead, e.g. 6, got {value:?}"))
                })?);
        } else {
            levels.push(
                value
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| bad("level", format!("expected a percentage, e.g. 95, got {value:?}")))?,
            );
        }
    }
    let Some(horizon) = horizon else {
        return if levels.is_empty() { Ok(None) } else { Err(bad("level", "a level needs forecast=N".into())) };
    };
    let mut request = crate::forecast::Request::new(horizon);
    if !levels.is_empty() {
        request.levels = levels;
    }
    Ok(Some(request))
}
