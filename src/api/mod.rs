//! The HTTP server: health endpoints and the pipelines API today; the query API, dashboards and
//! the PostgreSQL wire endpoint join it as their issues land. Thin: it translates requests into
//! calls on the modules above and holds no business rules of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::pipeline::runlog::{RunLock, RunLog, RunLogError};
use crate::pipeline::spec::Pipeline;
use crate::pipeline::{self, schedule};
use crate::progress::{Progress, Silent};
use crate::warehouse::Warehouse;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub warehouse: Warehouse,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/api/v1/pipelines", get(list_pipelines))
        .route("/api/v1/pipelines/{name}/runs", get(list_runs).post(start_run))
        .route("/api/v1/pipelines/{name}/decisions", get(list_decisions))
        .with_state(state)
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

/// An error answered as JSON: `{"error": {"code", "message"}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: e.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response()
    }
}

fn find(state: &AppState, name: &str) -> Result<Pipeline, ApiError> {
    let pipelines = pipeline::load_pipelines(&state.config).map_err(ApiError::internal)?;
    pipelines.into_iter().find(|p| p.name == name).ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        code: "unknown_pipeline",
        message: format!("no pipeline named {name:?}"),
    })
}

fn run_log(state: &AppState) -> Result<RunLog, ApiError> {
    RunLog::open(&state.config.state_dir()).map_err(ApiError::internal)
}

async fn list_pipelines(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let pipelines = pipeline::load_pipelines(&state.config).map_err(ApiError::internal)?;
    let log = run_log(&state)?;
    let now = Utc::now();
    let mut out = Vec::new();
    for p in pipelines {
        let last = log.runs(Some(&p.name), 1).map_err(ApiError::internal)?.into_iter().next();
        out.push(json!({
            "name": p.name,
            "source": p.source,
            "tables": p.tables.iter().map(|t| t.target.to_string()).collect::<Vec<_>>(),
            "schedule": p.schedule.as_ref().map(|s| s.cron.as_str().to_string()),
            "timezone": p.schedule.as_ref().map(|s| s.timezone.name()),
            "catch_up": p.catch_up,
            "next_run": p.schedule.as_ref().and_then(|s| schedule::next_slot(s, now)),
            "last_run": last.map(|r| json!({
                "id": r.id, "status": r.status, "trigger": r.trigger,
                "started_at": r.started_at, "finished_at": r.finished_at, "error": r.error,
            })),
        }));
    }
    Ok(Json(json!({ "pipelines": out })))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn list_runs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&state, &name)?;
    let runs = run_log(&state)?.runs(Some(&name), q.limit.unwrap_or(20).min(1000)).map_err(ApiError::internal)?;
    Ok(Json(json!({ "pipeline": name, "runs": runs })))
}

async fn list_decisions(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&state, &name)?;
    let decisions =
        run_log(&state)?.decisions(Some(&name), q.limit.unwrap_or(50).min(1000)).map_err(ApiError::internal)?;
    Ok(Json(json!({ "pipeline": name, "decisions": decisions })))
}

/// Starts a run now; it goes on in the background and shows in the run log.
async fn start_run(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let pipeline = find(&state, &name)?;
    // A quick look at the lock gives the caller a clear 409; the run takes the lock for itself.
    match RunLock::acquire(&state.config.state_dir(), &name) {
        Ok(lock) => drop(lock),
        Err(RunLogError::AlreadyRunning { .. }) => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "already_running",
                message: format!("pipeline {name} is running"),
            });
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    let config = state.config.clone();
    tokio::spawn(async move {
        let progress: Arc<dyn Progress> = Arc::new(Silent);
        if let Err(e) = pipeline::run(&config, &pipeline, "api", &progress).await {
            tracing::warn!(pipeline = %pipeline.name, error = %e, "run started through the API failed");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "pipeline": name, "status": "started" }))).into_response())
}

/// Serves until the process is stopped (Ctrl-C), with the scheduler running beside the server.
pub async fn serve(listen: SocketAddr, state: AppState) -> std::io::Result<()> {
    let pipelines = pipeline::load_pipelines(&state.config).map_err(std::io::Error::other)?;
    let scheduled = schedule::start(state.config.clone(), pipelines);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let served = axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    for task in scheduled {
        task.abort();
    }
    served
}
