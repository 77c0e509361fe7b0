//! The metrics API: the views and their fields (`GET /api/v1/metrics`), and a view's answer to a
//! request given in the query string (`GET /api/v1/metrics/{view}`), run as the caller's role.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::{Authenticated, audited_by_query};
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
) -> Result<Response, ApiError> {
    let view = state.metrics.view(&name).map_err(|e| ApiError::metrics(e, &request_id))?;
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let request = MetricsRequest::from_pairs(
        view,
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        state.engine.limits().max_rows,
    )
    .map_err(|e| ApiError::metrics(e, &request_id))?;
    let answer = metrics::answer(&state.engine, view, &request, &super::query::caller(identity, &request_id, address))
        .await
        .map_err(|e| ApiError::metrics(e, &request_id))?;
    Ok(audited_by_query(Json(answer).into_response()))
}
