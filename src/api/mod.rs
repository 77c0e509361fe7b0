//! The HTTP server and the PostgreSQL wire endpoint: health, the pipelines API, the query API
//! (`query`), metrics and dashboards (`metrics`, `dashboards`, live refresh in `live`), the web
//! pages (`pages`) and the wire protocol (`pgwire`). Thin: it translates requests into calls on
//! the modules above and holds no business rules of its own.

mod auth;
mod cookies;
mod dashboards;
mod live;
mod metrics;
mod pages;
mod pgwire;
mod privacy;
mod query;
mod reports;
mod tls;

pub use auth::Access;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{MethodRouter, on};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Auth, Permission};
use crate::pipeline::runlog::{RunLock, RunLog, RunLogError};
use crate::pipeline::spec::Pipeline;
use crate::pipeline::{self, Project, schedule};
use crate::progress::{Progress, Silent};
use crate::query::engine::QueryEngine;

/// Request bodies larger than this are refused (a query is text, not data).
const MAX_BODY: usize = 1024 * 1024;

/// What every handler shares, behind one `Arc`: axum clones the state for each request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub project: Project,
    pub engine: Arc<QueryEngine>,
    pub auth: Arc<Auth>,
    /// The classes and administrators' tables the engine masks by, for the catalog listing.
    pub policy: Arc<crate::auth::policy::MaskingPolicy>,
    /// The metrics views (`queries/metrics/`), loaded at start.
    pub metrics: Arc<crate::metrics::Catalog>,
    /// The dashboards (`dashboards/`), loaded at start.
    pub dashboards: Arc<crate::dashboard::Catalog>,
    /// Reports made and sent, on request and on the scheduler.
    pub reporting: Arc<crate::report::job::Reporting>,
    pub queries_dir: std::path::PathBuf,
    /// The tables' versions, watched while a page listens for live refresh.
    pub tables: live::TableWatch,
}

impl AppState {
    /// The state for `project`: a query engine over its warehouse masking by role, and its users.
    pub async fn open(project: &Project) -> Result<AppState, OpenError> {
        let config = project.config();
        let crate::auth::Serving { engine, auth, policy } = crate::auth::serving(project).await?;
        let metrics = crate::metrics::Catalog::load(&config.metrics_dir());
        for problem in metrics.problems() {
            tracing::error!(error = %problem, "a metrics view did not load; the others are served");
        }
        let dashboards = crate::dashboard::Catalog::load(&config.dashboards_dir());
        for problem in dashboards.problems() {
            tracing::error!(error = %problem, "a dashboard did not load; the others are served");
        }
        let (metrics, dashboards) = (Arc::new(metrics), Arc::new(dashboards));
        let reporting = crate::report::job::Reporting::new(
            config,
            engine.clone(),
            auth.clone(),
            metrics.clone(),
            dashboards.clone(),
        )
        .map_err(|e| OpenError::Setup(e.to_string()))?;
        Ok(AppState(Arc::new(Shared {
            project: project.clone(),
            tables: live::TableWatch::start(&engine),
            engine,
            auth,
            policy,
            metrics,
            dashboards,
            reporting: Arc::new(reporting),
            queries_dir: config.queries_dir(),
        })))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// One entry of the route table: the only way to add a route, so none is without a policy.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Route
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let handler = on(auth::method_filter(&method), handler);
    Route { method, path, access, handler }
}

/// Every route with who may call it (the README's table of routes × roles is this list).
pub fn routes() -> Vec<Route> {
    use Access::{Enrolling, Needs, Public, SignedIn};
    use Permission::*;
    vec![
        route(Method::GET, "/health/live", Public, live),
        route(Method::GET, "/health/ready", Public, ready),
        route(Method::GET, "/metrics", Needs(ViewOperations), query::metrics),
        route(Method::POST, "/api/v1/auth/login", Public, auth::login),
        route(Method::POST, "/api/v1/auth/refresh", Public, auth::refresh),
        route(Method::POST, "/api/v1/auth/logout", Enrolling, auth::logout),
        route(Method::GET, "/api/v1/auth/me", Enrolling, auth::me),
        route(Method::POST, "/api/v1/auth/mfa/setup", Enrolling, auth::mfa_setup),
        route(Method::POST, "/api/v1/auth/mfa/confirm", Enrolling, auth::mfa_confirm),
        route(Method::GET, "/api/v1/auth/sessions", SignedIn, auth::list_sessions),
        route(Method::DELETE, "/api/v1/auth/sessions/{id}", SignedIn, auth::revoke_session),
        route(Method::GET, "/api/v1/users", Needs(Administer), auth::list_users),
        route(Method::POST, "/api/v1/users", Needs(Administer), auth::add_user),
        route(Method::POST, "/api/v1/users/{name}/{action}", Needs(Administer), auth::user_action),
        route(Method::GET, "/api/v1/api-keys", Needs(Administer), auth::list_keys),
        route(Method::POST, "/api/v1/api-keys", Needs(Administer), auth::create_key),
        route(Method::DELETE, "/api/v1/api-keys/{id}", Needs(Administer), auth::revoke_key),
        route(Method::GET, "/api/v1/audit", Needs(Administer), auth::audit),
        route(Method::POST, "/api/v1/privacy/export", Needs(Administer), privacy::export),
        route(Method::POST, "/api/v1/privacy/erase", Needs(Administer), privacy::erase),
        route(Method::GET, "/api/v1/pipelines", Needs(ViewPipelines), list_pipelines),
        route(Method::GET, "/api/v1/pipelines/{name}/runs", Needs(ViewPipelines), list_runs),
        route(Method::POST, "/api/v1/pipelines/{name}/runs", Needs(RunPipelines), start_run),
        route(Method::GET, "/api/v1/pipelines/{name}/decisions", Needs(ViewPipelines), list_decisions),
        route(Method::POST, "/api/v1/query", Needs(RunSql), query::post_query),
        route(Method::GET, "/api/v1/queries", Needs(ReadCatalog), query::list_saved),
        route(Method::POST, "/api/v1/queries/{name}/run", Needs(ReadCatalog), query::run_saved),
        route(Method::GET, "/api/v1/tables", Needs(ReadCatalog), query::list_tables),
        route(Method::GET, "/api/v1/metrics", Needs(ViewDashboards), metrics::list),
        route(Method::GET, "/api/v1/metrics/{view}", Needs(ViewDashboards), metrics::answer),
        route(Method::GET, "/api/v1/dashboards", Needs(ViewDashboards), dashboards::list),
        route(Method::GET, "/api/v1/dashboards/{id}", Needs(ViewDashboards), dashboards::get),
        route(Method::GET, "/api/v1/dashboards/{id}/panels/{file}", Needs(ViewDashboards), dashboards::panel),
        route(Method::GET, "/api/v1/dashboards/{id}/panels/{panel}/rows", Needs(ViewDashboards), dashboards::rows),
        route(Method::POST, "/api/v1/dashboards/{id}/embed", Needs(ViewDashboards), dashboards::create_embed),
        route(Method::GET, "/api/v1/events/tables", Needs(ViewDashboards), dashboards::events),
        route(Method::GET, "/api/v1/reports", Needs(ViewDashboards), reports::list),
        route(Method::GET, "/api/v1/reports/{file}", Needs(ViewDashboards), reports::file),
        route(Method::POST, "/api/v1/reports/{name}/send", Needs(RunPipelines), reports::send),
        route(Method::GET, "/api/v1/reports/{name}/deliveries", Needs(ViewOperations), reports::deliveries),
        route(Method::POST, "/api/v1/chart", Needs(RunSql), dashboards::chart),
        route(Method::GET, "/api/v1/schemas/{name}", SignedIn, dashboards::schema),
        route(Method::GET, "/api/v1/query-log", Needs(ViewOperations), query::query_log),
        route(Method::GET, "/api/v1/openapi.json", SignedIn, openapi),
    ]
}

/// The web pages and what they load, with who may open them. A caller who is not signed in is
/// sent to the sign-in page instead of being answered 401; embed links carry their own grant.
pub fn pages() -> Vec<Route> {
    use Access::{Needs, Public};
    use Permission::*;
    vec![
        route(Method::GET, "/", Public, pages::home),
        route(Method::GET, "/login", Public, pages::login),
        route(Method::GET, "/assets/{file}", Public, pages::asset),
        route(Method::GET, "/dashboards", Needs(ViewDashboards), pages::dashboards),
        route(Method::GET, "/dashboards/{id}", Needs(ViewDashboards), pages::dashboard),
        route(Method::GET, "/tables", Needs(ReadCatalog), pages::tables),
        route(Method::GET, "/sql", Needs(RunSql), pages::sql_console),
        route(Method::GET, "/embed/{token}", Public, dashboards::embed_page),
        route(Method::GET, "/embed/{token}/panels/{file}", Public, dashboards::embed_panel),
        route(Method::GET, "/embed/{token}/panels/{panel}/rows", Public, dashboards::embed_rows),
        route(Method::GET, "/embed/{token}/events", Public, dashboards::embed_events),
    ]
}

/// The OpenAPI document of the routes above. Kept by hand as data: deriving it (utoipa) would mean
/// annotating every handler to get the same file, and a test keeps the two in step.
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Whether a matched route is a web page (whose callers are sent to sign in rather than answered 401).
fn is_page(path: &str) -> bool {
    static PAGES: std::sync::LazyLock<Vec<&'static str>> =
        std::sync::LazyLock::new(|| pages().into_iter().map(|r| r.path).collect());
    PAGES.contains(&path)
}

/// The access policy of a matched route.
fn access_of(method: &Method, path: &str) -> Option<Access> {
    static TABLE: std::sync::LazyLock<Vec<(Method, &'static str, Access)>> = std::sync::LazyLock::new(|| {
        routes().into_iter().chain(pages()).map(|r| (r.method, r.path, r.access)).collect()
    });
    TABLE.iter().find(|(m, p, _)| m == method && *p == path).map(|(_, _, access)| *access)
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for entry in routes().into_iter().chain(pages()) {
        router = router.route(entry.path, entry.handler);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::authorize))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
        .layer(compression())
        .layer(axum::middleware::from_fn(request_id))
        .layer(axum::middleware::from_fn_with_state(state.project.config().server.tls_cert.is_some(), security_headers))
        .with_state(state)
}

/// Answers over [`COMPRESS_ABOVE`] bytes (and streamed exports, whose size is not known) are
/// compressed at the fastest level of the client's choice. At the default level, brotli made a
/// cached 600-byte answer cost several times its own work: most of the server's CPU under load
/// went to compressing (`benches/serve-load`), for a few hundred bytes saved.
fn compression() -> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
    tower_http::compression::CompressionLayer::new()
        .quality(tower_http::CompressionLevel::Fastest)
        .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE)))
}

/// Smaller answers are sent as they are.
pub(super) const COMPRESS_ABOVE: u16 = 4096;

/// A body whose declared length is over the limit is refused before a byte of it is read, and
/// before authentication: the client learns at once, and the server reads nothing for nothing.
/// (Bodies without a length are cut off at the limit by `DefaultBodyLimit`.)
async fn refuse_declared_oversize(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > MAX_BODY as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is {length} bytes; the limit is {MAX_BODY}"),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// The id of one request: the caller's `X-Request-Id` if it sent a short one, else a new UUID. It
/// is echoed in the response header, in error bodies and in the query log.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestId>().cloned().unwrap_or_else(|| RequestId(uuid::Uuid::new_v4().to_string())))
    }
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Headers every answer carries: nothing here is to be sniffed, framed (but embed pages, by the
/// sites they name), or followed by referrers; the API loads no scripts or styles (pages set
/// their own policy); no answer but the content-named assets is stored by any cache, the
/// browser's included (answers can hold health data; a client that kept one may still
/// revalidate it by its ETag).
/// Over TLS, browsers are told to use nothing else for a year.
async fn security_headers(State(tls): State<bool>, request: Request, next: Next) -> Response {
    use axum::http::header;
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if tls {
        headers
            .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // An embed page names the sites that may frame it in its own policy.
    if response.extensions().get::<pages::Framable>().is_none() {
        response.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    // Assets, named by their content, may be kept; nothing else.
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn live() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Ready when the warehouse can be listed.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.project.warehouse().list_tables().await {
        Ok(tables) => (StatusCode::OK, Json(json!({ "status": "ok", "tables": tables.len() }))),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": e.to_string() }))),
    }
}

/// An error answered as JSON: `{"error": {"code", "message", "position"?, "request_id"?}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Line and column in the SQL, when the error is there.
    position: Option<(u64, u64)>,
    request_id: Option<String>,
    /// Seconds, for 429 answers.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> ApiError {
        ApiError { status, code, message, position: None, request_id: None, retry_after: None }
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }

    fn with_request_id(mut self, id: &RequestId) -> ApiError {
        self.request_id = Some(id.0.clone());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some((line, column)) = self.position {
            error["position"] = json!({ "line": line, "column": column });
        }
        if let Some(id) = self.request_id {
            error["request_id"] = json!(id);
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

fn find(state: &AppState, name: &str) -> Result<Pipeline, ApiError> {
    state
        .project
        .pipeline(name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown_pipeline", format!("no pipeline named {name:?}")))
}

fn run_log(state: &AppState) -> Result<RunLog, ApiError> {
    RunLog::open(&state.project.config().state_dir()).map_err(ApiError::internal)
}

async fn list_pipelines(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let log = run_log(&state)?;
    let now = Utc::now();
    let mut out = Vec::new();
    for p in state.project.pipelines() {
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
pub(super) struct Limit {
    pub(super) limit: Option<usize>,
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
    match RunLock::acquire(&state.project.config().state_dir(), &name) {
        Ok(lock) => drop(lock),
        Err(RunLogError::AlreadyRunning { .. }) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "already_running", format!("pipeline {name} is running")));
        }
        Err(e) => return Err(ApiError::internal(e)),
    }
    let project = state.project.clone();
    tokio::spawn(async move {
        let progress: Arc<dyn Progress> = Arc::new(Silent);
        if let Err(e) = pipeline::run(&project, &pipeline, "api", &progress).await {
            tracing::warn!(pipeline = %pipeline.name, error = %e, "run started through the API failed");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "pipeline": name, "status": "started" }))).into_response())
}

/// The addresses a server listens on: with port 0 in `server.listen` or `server.pgwire`, the
/// ports the system chose.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: SocketAddr,
    pub pgwire: SocketAddr,
    /// Both endpoints speak TLS only.
    pub tls: bool,
}

/// Serves until the process is stopped (Ctrl-C), with the scheduler and the PostgreSQL wire
/// endpoint (on `server.pgwire`) running beside the server; over TLS when a certificate is set.
/// `ready` is called once both endpoints accept connections.
pub async fn serve(state: AppState, ready: impl FnOnce(Listening)) -> std::io::Result<()> {
    let tls = tls::Tls::from_config(state.project.config()).map_err(std::io::Error::other)?;
    let wire_tls = tls.as_ref().map(|t| t.pgwire.clone());
    let listen = state.project.config().server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("the HTTP endpoint on {listen} (server.listen): {e}")))?;
    let (wire, pgwire) =
        pgwire::start(state.project.config().server.pgwire, state.engine.clone(), state.auth.clone(), wire_tls).await?;
    ready(Listening { http: listener.local_addr()?, pgwire, tls: tls.is_some() });
    let mut jobs = schedule::PipelineJob::all(&state.project);
    jobs.extend(state.reporting.jobs());
    let mut scheduled = schedule::start(&state.project.config().state_dir(), jobs);
    if !state.reporting.webhooks.is_empty() {
        scheduled.push(state.reporting.webhooks.clone().start());
    }
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopping = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                stopping.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let config = axum_server::tls_rustls::RustlsConfig::from_config(tls.http);
            axum_server::from_tcp_rustls(listener.into_std()?, config)?.handle(handle).serve(app).await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        }
    };
    for task in scheduled {
        task.abort();
    }
    wire.abort();
    served
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn the_openapi_document_lists_every_route_and_no_other() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object().into_iter().flatten().map(move |(m, _)| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> =
            super::routes().iter().map(|r| (r.method.to_string(), r.path.to_string())).collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn the_openapi_document_names_each_routes_permission() {
        use super::Access;
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        for route in super::routes() {
            let expected = match route.access {
                Access::Public => "public".to_string(),
                Access::SignedIn => "signed_in".to_string(),
                Access::Enrolling => "enrolling".to_string(),
                Access::Needs(permission) => {
                    let name = format!("{permission:?}");
                    let mut snake = String::new();
                    for (i, c) in name.chars().enumerate() {
                        if c.is_ascii_uppercase() && i > 0 {
                            snake.push('_');
                        }
                        snake.push(c.to_ascii_lowercase());
                    }
                    snake
                }
            };
            let method = route.method.as_str().to_lowercase();
            assert_eq!(doc["paths"][route.path][&method]["x-permission"], expected, "{method} {}", route.path);
        }
    }
}
