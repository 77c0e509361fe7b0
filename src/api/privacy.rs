//! Privacy requests over HTTP, for administrators: one client's data as JSON, and its erasure.
//! The erasure empties the engine's result cache, so no answer computed before it is served again.
//! Neither answers before its audit record is stored.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::Authenticated;
use super::{ApiError, AppState};
use crate::auth::audit::Event;
use crate::pipeline::PipelineError;
use crate::pipeline::runlog::RunLogError;
use crate::privacy::{self, PrivacyError};
use crate::progress::Progress;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PrivacyRequest {
    client: String,
}

impl From<PrivacyError> for ApiError {
    fn from(e: PrivacyError) -> ApiError {
        match e {
            PrivacyError::Pipeline(PipelineError::RunLog(RunLogError::AlreadyRunning { pipeline, .. })) => {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "already_running",
                    format!("pipeline {pipeline} is running; erase once it has finished"),
                )
            }
            other => ApiError::internal(other),
        }
    }
}

pub(super) async fn export(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(request): Json<PrivacyRequest>,
) -> Result<Json<privacy::Export>, ApiError> {
    let export = privacy::export(&state.project, &request.client).await?;
    let ticket = state.auth.audit().record(Event {
        tables: export.tables.keys().cloned().collect(),
        rows: export.rows(),
        ..caller.event("privacy.export", format!("client {}", request.client))
    });
    // The export leaves only once its record is durable.
    state.auth.audit().written(ticket).await?;
    Ok(Json(export))
}

pub(super) async fn erase(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(request): Json<PrivacyRequest>,
) -> Result<Json<privacy::Erasure>, ApiError> {
    let progress: std::sync::Arc<dyn Progress> = std::sync::Arc::new(crate::progress::Silent);
    let erasure = privacy::erase(&state.project, &request.client, &progress).await?;
    state.engine.purge_cache();
    let ticket = state.auth.audit().record(Event {
        tables: erasure.deleted.keys().chain(&erasure.rebuilt).cloned().collect(),
        rows: erasure.deleted.values().sum(),
        ..caller.event("privacy.erase", format!("client {}, erasure {}", request.client, erasure.id))
    });
    // Answered only once its record is durable: a crash must not leave an erasure nobody recorded.
    state.auth.audit().written(ticket).await?;
    Ok(Json(erasure))
}
