//! The reports API: the reports of the dashboards a caller may open; one report made now as its
//! PDF or one of its CSV files, with the caller's own role (never the report's); a send on request
//! to its recipients or to given addresses; its delivery ledger.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use super::auth::Authenticated;
use super::{ApiError, AppState, Limit, RequestId};
use crate::auth::{Permission, Role};
use crate::dashboard::Dashboard;
use crate::report::job::SendError;
use crate::report::{self, Report, ReportError};

impl ApiError {
    fn report(e: ReportError, request_id: &RequestId) -> ApiError {
        let (status, code) = match &e {
            ReportError::Unknown { .. } => (StatusCode::NOT_FOUND, "unknown_report"),
            ReportError::Dashboard { .. } | ReportError::Panel { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "report"),
            ReportError::Pdf { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string()).with_request_id(request_id)
    }

    fn send(e: SendError, request_id: &RequestId) -> ApiError {
        match e {
            SendError::Report(e) => ApiError::report(e, request_id),
            SendError::NoMail => ApiError::new(StatusCode::CONFLICT, "no_mail", e.to_string()),
            e => ApiError::internal(e).with_request_id(request_id),
        }
    }
}

/// The report `name` if the caller's role may open its dashboard (else it is not there for them).
fn find<'a>(state: &'a AppState, name: &str, caller: &Authenticated) -> Result<(&'a Dashboard, &'a Report), ApiError> {
    let found = report::find(&state.dashboards, name).map_err(|e| ApiError::report(e, &caller.request_id))?;
    if !found.0.allows(caller.identity.role) {
        let unknown = ReportError::Unknown { name: name.to_string(), known: String::new() };
        return Err(ApiError::report(unknown, &caller.request_id));
    }
    Ok(found)
}

/// The reports of the dashboards the caller may open; recipients for administrators only.
pub(super) async fn list(State(state): State<AppState>, caller: Authenticated) -> Json<serde_json::Value> {
    let admin = caller.identity.role.allows(Permission::Administer);
    let now = chrono::Utc::now();
    let reports: Vec<_> = report::all(&state.dashboards)
        .filter(|(d, _)| d.allows(caller.identity.role))
        .map(|(d, r)| {
            let mut out = json!({
                "name": r.spec.name, "description": r.spec.description, "dashboard": d.id,
                "schedule": r.spec.schedule, "timezone": r.schedule.timezone.name(), "role": r.role,
                "formats": r.spec.formats, "filters": r.spec.filters, "catch_up": r.spec.catch_up,
                "next_slot": crate::pipeline::schedule::next_slot(&r.schedule, now),
            });
            if admin {
                out["recipients"] = json!(r.recipients.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
            out
        })
        .collect();
    Json(json!({ "reports": reports, "mail": state.reporting.mailer.is_some() }))
}

#[derive(serde::Deserialize)]
pub(super) struct Made {
    /// The day the report is made as of (relative filters count from it).
    as_of: Option<chrono::NaiveDate>,
    /// Which CSV file, when the report has several.
    panel: Option<String>,
}

/// `NAME.pdf` or `NAME.csv`, made now with the caller's role.
pub(super) async fn file(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(file): Path<String>,
    Query(q): Query<Made>,
) -> Result<Response, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let (name, pdf) = match (file.strip_suffix(".pdf"), file.strip_suffix(".csv")) {
        (Some(name), _) => (name, true),
        (_, Some(name)) => (name, false),
        _ => return Err(bad(format!("{file:?}: ask for NAME.pdf or NAME.csv"))),
    };
    let (dashboard, report) = find(&state, name, &caller)?;
    let mut report = report.clone();
    report.spec.formats = vec![if pdf { report::ReportFormat::Pdf } else { report::ReportFormat::Csv }];
    let as_caller = super::dashboards::dashboard_caller(&caller);
    let today = q.as_of.unwrap_or_else(|| chrono::Utc::now().with_timezone(&report.schedule.timezone).date_naive());
    let warning = state.reporting.freshness_warning(dashboard, &report, today).map_err(ApiError::internal)?;
    let made =
        report::render(&state.reporting.sources(), dashboard, &report, today, chrono::Utc::now(), &as_caller, warning)
            .await
            .map_err(|e| ApiError::report(e, &caller.request_id))?;
    let (bytes, content_type, download) = match (made.pdf, pdf) {
        (Some(bytes), true) => (bytes, "application/pdf", format!("{name}-{today}.pdf")),
        _ => {
            let files: Vec<&str> = made.csv.iter().map(|(f, _)| f.trim_end_matches(".csv")).collect();
            let chosen = match (&q.panel, made.csv.len()) {
                (Some(panel), _) => made.csv.iter().find(|(f, _)| f.trim_end_matches(".csv") == panel),
                (None, 1) => made.csv.first(),
                (None, _) => None,
            };
            let Some((csv_name, bytes)) = chosen else {
                return Err(bad(format!("parameter `panel`: give one of {}", files.join(", "))));
            };
            (
                bytes.clone(),
                "text/csv; charset=utf-8",
                format!("{name}-{}-{today}.csv", csv_name.trim_end_matches(".csv")),
            )
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{download}\"")),
            (header::CACHE_CONTROL, "private, no-store".to_string()),
        ],
        bytes,
    )
        .into_response())
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SendRequest {
    /// Addresses to send it to instead of its recipients (with the report's role's view).
    #[serde(default)]
    to: Vec<String>,
    as_of: Option<chrono::NaiveDate>,
}

/// Sends the report now. The caller must see at least what the report's role sees: nobody sends
/// on more than they may read.
pub(super) async fn send(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
    body: Option<Json<SendRequest>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (_, report) = find(&state, &name, &caller)?;
    let role = caller.identity.role;
    if Role::seeing_less(report.role, role) != report.role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("report {name} renders as {}, which sees more than your role ({role})", report.role),
        )
        .with_request_id(&caller.request_id));
    }
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let to = request
        .to
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("field `to`: {a:?}: {e}")))
        })
        .collect::<Result<Vec<lettre::Address>, _>>()?;
    let outcome = state
        .reporting
        .send_now(&name, "api", &to, request.as_of)
        .await
        .map_err(|e| ApiError::send(e, &caller.request_id))?;
    Ok(Json(json!({
        "report": name,
        "summary": report::job::summary(&outcome.deliveries),
        "deliveries": outcome.deliveries,
    })))
}

/// The report's delivery ledger, newest slot first.
pub(super) async fn deliveries(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    find(&state, &name, &caller)?;
    let rows = state
        .reporting
        .deliveries(Some(&name), q.limit.unwrap_or(50).min(1000))
        .map_err(|e| ApiError::send(e, &caller.request_id))?;
    Ok(Json(json!({ "report": name, "deliveries": rows })))
}
