//! The HTTP server: health endpoints today; the API, dashboards and the PostgreSQL wire endpoint
//! join it as their issues land. Thin: it translates requests into calls on the modules above and
//! holds no business rules of its own.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::warehouse::Warehouse;

#[derive(Clone)]
pub struct AppState {
    pub warehouse: Warehouse,
}

pub fn router(state: AppState) -> Router {
    Router::new().route("/health/live", get(live)).route("/health/ready", get(ready)).with_state(state)
}

async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the warehouse can be listed.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.warehouse.list_tables().await {
        Ok(tables) => (StatusCode::OK, Json(json!({ "status": "ok", "tables": tables.len() }))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": e.to_string() }))),
    }
}

/// Serves until the process is stopped (Ctrl-C).
pub async fn serve(listen: SocketAddr, state: AppState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
