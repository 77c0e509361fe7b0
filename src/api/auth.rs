//! Authentication and authorisation at the HTTP edge: the middleware that finds the caller
//! (`Authorization: Bearer` with an access token or an API key, or a browser's session cookie with
//! its CSRF token) and checks each route's `Access`, and the routes for logging in, sessions,
//! second factors, users and API keys.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, RequestId, cookies};
use crate::auth::audit::Event;
use crate::auth::{AuthError, Device, Identity, Login, Permission, Role};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health checks, login, refresh (which carries its own token).
    Public,
    /// Any signed-in caller, even one who must still set up a second factor.
    Enrolling,
    /// Any signed-in caller with a complete login.
    SignedIn,
    /// Callers whose role has this permission.
    Needs(Permission),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let status = match &e {
            AuthError::InvalidCredentials
            | AuthError::MfaRequired
            | AuthError::InvalidMfa
            | AuthError::InvalidToken(_)
            | AuthError::Expired
            | AuthError::TokenReused
            | AuthError::SessionEnded => StatusCode::UNAUTHORIZED,
            AuthError::Locked { .. } | AuthError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::MfaEnrollmentRequired => StatusCode::FORBIDDEN,
            AuthError::UnknownUser(_) => StatusCode::NOT_FOUND,
            AuthError::UserExists(_) | AuthError::Conflict(_) => StatusCode::CONFLICT,
            AuthError::BadInput { .. } => StatusCode::BAD_REQUEST,
            AuthError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AuthError::Store(_)
            | AuthError::Key(_)
            | AuthError::Internal(_)
            | AuthError::Tampered { .. }
            | AuthError::Unverifiable(_) => {
                tracing::error!(error = %e, "authentication failed inside");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into());
            }
        };
        let mut error = ApiError::new(status, e.code(), e.to_string());
        if let AuthError::Locked { retry_after } | AuthError::RateLimited { retry_after } = e {
            error.retry_after = Some(retry_after);
        }
        error
    }
}

/// Finds the caller, then lets the request through only if the route's `Access` admits them.
/// A route missing from the table is refused: the table is the only way in.
pub(super) async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = request.extensions().get::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
    let path = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_string());
    let access = path.as_deref().and_then(|p| super::access_of(request.method(), p));
    let Some(access) = access else {
        // Unknown paths fall through to the router's 404/405.
        return if path.is_none() {
            next.run(request).await
        } else {
            ApiError::new(StatusCode::FORBIDDEN, "no_policy", "this route has no access policy".into())
                .with_request_id(&request_id)
                .into_response()
        };
    };
    if access == Access::Public {
        // A stale token sent to the login route is not an error.
        return next.run(request).await;
    }
    let page = path.as_deref().is_some_and(super::is_page);
    let identity = match bearer(request.headers()) {
        Some(token) => match state.auth.verify_bearer(token).await {
            Ok(identity) => Some(identity),
            Err(e) => return unauthorized(ApiError::from(e), &request_id),
        },
        None => match from_cookie(&state, request.method(), request.headers()).await {
            Ok(identity) => identity,
            // A page whose session ended sends its reader to sign in again.
            Err(_) if page => None,
            Err(error) => return unauthorized(error.with_request_id(&request_id), &request_id),
        },
    };
    if page && identity.as_ref().is_none_or(|who| who.enrolling) {
        return to_sign_in(request.uri());
    }
    let verdict = match (access, &identity) {
        (Access::Public, _) => Ok(()),
        (_, None) => Err(unauthorized(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer TOKEN (an access token from POST /api/v1/auth/login, or an API key)".into(),
            ),
            &request_id,
        )),
        (Access::Enrolling, Some(_)) => Ok(()),
        (_, Some(who)) if who.enrolling => {
            Err(ApiError::from(AuthError::MfaEnrollmentRequired).with_request_id(&request_id).into_response())
        }
        (Access::SignedIn, Some(_)) => Ok(()),
        (Access::Needs(permission), Some(who)) if who.may(permission) => Ok(()),
        (Access::Needs(_), Some(who)) if page => Err(super::pages::error_page(
            StatusCode::FORBIDDEN,
            Some(who),
            &format!("Your role ({}) may not open this page.", who.role),
        )),
        (Access::Needs(_), Some(who)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("role {} may not {} {}", who.role, request.method(), path.as_deref().unwrap_or("")),
        )
        .with_request_id(&request_id)
        .into_response()),
    };
    if let Err(response) = verdict {
        return response;
    }
    let Some(identity) = identity else { return next.run(request).await };
    request.extensions_mut().insert(identity.clone());
    let action = format!("{} {}", request.method(), path.as_deref().unwrap_or(""));
    let detail = request.uri().path().to_string();
    let address = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let response = next.run(request).await;
    if response.extensions().get::<AuditedByQuery>().is_some() {
        return response;
    }
    state.auth.audit().record(Event {
        user: identity.user,
        role: identity.role.name().into(),
        origin: "http".into(),
        address: address.unwrap_or_default(),
        request_id: request_id.0,
        action,
        detail,
        outcome: response.status().as_u16().to_string(),
        ..Event::now()
    });
    response
}

/// A redirect to the sign-in page, which comes back to `uri` (a path on this server) after.
fn to_sign_in(uri: &axum::http::Uri) -> Response {
    let back = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let next: String = url::form_urlencoded::byte_serialize(back.as_bytes()).collect();
    axum::response::Redirect::to(&format!("/login?next={next}")).into_response()
}

/// Marks a response whose query's audit record, stored before it left, stands for the request.
#[derive(Clone, Copy)]
struct AuditedByQuery;

/// `response`, marked so that [`authorize`] adds no record of the route: its query's stands for it.
pub(super) fn audited_by_query(mut response: Response) -> Response {
    response.extensions_mut().insert(AuditedByQuery);
    response
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
    user: Option<String>,
}

/// The audit trail, oldest first from `after` (a sequence number); page on with the last `seq`.
/// It includes every record of a request answered before this one was received.
pub(super) async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    // Records of requests answered before this one (the route's own is written after its answer).
    state.auth.audit().caught_up().await;
    let entries = state.auth.audit().entries(q.after, limit, q.user.as_deref()).await?;
    Ok(Json(json!({ "entries": entries })))
}

fn unauthorized(error: ApiError, request_id: &RequestId) -> Response {
    let mut response = error.with_request_id(request_id).into_response();
    if response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// The caller a browser's session cookie names, if it sent one. Only sessions ride in cookies (not
/// API keys), and a request that changes state must carry the session's CSRF token as well.
async fn from_cookie(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
    let Some(token) = cookies::read(headers, cookies::ACCESS) else { return Ok(None) };
    let identity = state.auth.verify_bearer(&token).await?;
    let Some(session) = identity.session.as_deref() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "only a session travels in a cookie".into(),
        ));
    };
    if cookies::changes_state(method)
        && !cookies::csrf_header(headers).is_some_and(|presented| state.auth.csrf_matches(session, presented))
    {
        return Err(csrf_refused());
    }
    Ok(Some(identity))
}

fn csrf_refused() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "csrf",
        "a request signed in by cookie that changes anything must send X-CSRF-Token with the sokana_csrf cookie's value"
            .into(),
    )
}

/// The tokens as JSON, with the same tokens as cookies for a browser.
fn session_response(state: &AppState, tokens: &crate::auth::Tokens, body: impl serde::Serialize) -> Response {
    let mut response = Json(body).into_response();
    let csrf = state.auth.csrf_token(&tokens.session_id);
    cookies::set(response.headers_mut(), tokens, &csrf, state.auth.refresh_seconds());
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// The caller the middleware admitted, and the request's id.
pub(super) struct Authenticated {
    pub identity: Identity,
    pub request_id: RequestId,
    pub address: Option<std::net::IpAddr>,
}

impl Authenticated {
    /// An audit event of `action` by this caller, stamped now.
    pub(super) fn event(&self, action: &str, detail: String) -> Event {
        Event {
            user: self.identity.user.clone(),
            role: self.identity.role.name().into(),
            origin: "http".into(),
            address: self.address.map(|a| a.to_string()).unwrap_or_default(),
            request_id: self.request_id.0.clone(),
            action: action.into(),
            detail,
            outcome: "ok".into(),
            ..Event::now()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let request_id = parts.extensions.get::<RequestId>().cloned().unwrap_or_else(|| RequestId(String::new()));
        let identity = parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "this route needs a signed-in caller".into())
                .with_request_id(&request_id)
        })?;
        let address = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(Authenticated { identity, request_id, address })
    }
}

/// The client's user agent and address, kept with the session it opens.
pub(super) struct ClientDevice(pub Device);

impl<S: Send + Sync> FromRequestParts<S> for ClientDevice {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientDevice(Device { user_agent, ip }))
    }
}

pub(super) async fn login(
    State(state): State<AppState>,
    ClientDevice(device): ClientDevice,
    Json(body): Json<Login>,
) -> Result<Response, ApiError> {
    let tokens = state.auth.login(&body, &device).await?;
    Ok(session_response(&state, &tokens, &tokens))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshBody {
    /// Absent when a browser refreshes with its cookie.
    refresh_token: Option<String>,
}

pub(super) async fn refresh(
    State(state): State<AppState>,
    ClientDevice(device): ClientDevice,
    headers: HeaderMap,
    Json(body): Json<RefreshBody>,
) -> Result<Response, ApiError> {
    let token = match body.refresh_token {
        Some(token) => token,
        None => {
            let token = cookies::read(&headers, cookies::REFRESH).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "send {\"refresh_token\"}, or the sokana_refresh cookie".into(),
                )
            })?;
            // The refresh cookie names no session before it is used, so the CSRF token is checked
            // against its own cookie (which another site can neither read nor send).
            let csrf = cookies::read(&headers, cookies::CSRF);
            if csrf.is_none() || csrf.as_deref() != cookies::csrf_header(&headers) {
                return Err(csrf_refused());
            }
            token
        }
    };
    let tokens = state.auth.refresh(&token, &device).await?;
    Ok(session_response(&state, &tokens, &tokens))
}

pub(super) async fn logout(State(state): State<AppState>, caller: Authenticated) -> Result<Response, ApiError> {
    let Some(session) = caller.identity.session else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "an API key has no session to end".into()));
    };
    state.auth.revoke_session(&session, "logged out").await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    cookies::clear(response.headers_mut());
    Ok(response)
}

pub(super) async fn me(caller: Authenticated) -> Json<serde_json::Value> {
    let who = caller.identity;
    Json(json!({
        "user": who.user, "role": who.role, "session": who.session, "api_key": who.api_key,
        "mfa_enrollment_required": who.enrolling,
    }))
}

#[derive(Deserialize)]
pub(super) struct SessionsQuery {
    /// Admins: every user's sessions.
    #[serde(default)]
    all: bool,
}

pub(super) async fn list_sessions(
    State(state): State<AppState>,
    caller: Authenticated,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let everyone = q.all && caller.identity.may(Permission::Administer);
    if q.all && !everyone {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "only admins list everyone's sessions".into()));
    }
    let sessions = state.auth.sessions(if everyone { None } else { Some(&caller.identity.user) }).await?;
    Ok(Json(json!({ "sessions": sessions, "current": caller.identity.session })))
}

pub(super) async fn revoke_session(
    State(state): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.auth.revoke_session_as(&id, &caller.identity).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn mfa_setup(State(state): State<AppState>, caller: Authenticated) -> Result<Response, ApiError> {
    api_key_has_no_login(&caller)?;
    Ok(Json(state.auth.mfa_setup(&caller.identity.user).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CodeBody {
    code: String,
}

pub(super) async fn mfa_confirm(
    State(state): State<AppState>,
    caller: Authenticated,
    ClientDevice(device): ClientDevice,
    Json(body): Json<CodeBody>,
) -> Result<Response, ApiError> {
    api_key_has_no_login(&caller)?;
    let who = &caller.identity;
    let confirmed = state.auth.mfa_confirm(&who.user, who.session.as_deref(), &body.code, &device).await?;
    Ok(session_response(&state, &confirmed.tokens, &confirmed))
}

fn api_key_has_no_login(caller: &Authenticated) -> Result<(), ApiError> {
    if caller.identity.api_key.is_some() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "an API key has no second factor".into()));
    }
    Ok(())
}

pub(super) async fn list_users(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "users": state.auth.users().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUser {
    name: String,
    role: Role,
    password: String,
}

pub(super) async fn add_user(State(state): State<AppState>, Json(body): Json<NewUser>) -> Result<Response, ApiError> {
    state.auth.add_user(&body.name, body.role, &body.password).await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": body.name, "role": body.role }))).into_response())
}

/// `disable`, `enable`, `reset-password` (body `{"password"}`) or `reset-mfa` for one user.
pub(super) async fn user_action(
    State(state): State<AppState>,
    Path((name, action)): Path<(String, String)>,
    body: Option<Json<serde_json::Value>>,
) -> Result<Response, ApiError> {
    match action.as_str() {
        "disable" => state.auth.set_disabled(&name, true).await?,
        "enable" => state.auth.set_disabled(&name, false).await?,
        "reset-mfa" => state.auth.mfa_reset(&name).await?,
        "set-role" => {
            let role = body.as_ref().and_then(|b| b.get("role")).and_then(|r| r.as_str()).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "body: {\"role\": \"…\"} is required".into())
            })?;
            let role = Role::parse(role).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("role: {role:?} is not a role"))
            })?;
            state.auth.set_role(&name, role).await?
        }
        "reset-password" => {
            let password = body.as_ref().and_then(|b| b.get("password")).and_then(|p| p.as_str()).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "body: {\"password\": \"…\"} is required".into())
            })?;
            state.auth.reset_password(&name, password).await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_action",
                format!("{other:?} is not one of disable, enable, set-role, reset-password, reset-mfa"),
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_keys(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "api_keys": state.auth.api_keys().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewKeyBody {
    name: String,
    role: Role,
    #[serde(default = "default_key_days")]
    expires_in_days: i64,
}

fn default_key_days() -> i64 {
    90
}

pub(super) async fn create_key(
    State(state): State<AppState>,
    caller: Authenticated,
    Json(body): Json<NewKeyBody>,
) -> Result<Response, ApiError> {
    let key = state.auth.create_api_key(&body.name, body.role, body.expires_in_days, &caller.identity.user).await?;
    Ok((StatusCode::CREATED, Json(key)).into_response())
}

pub(super) async fn revoke_key(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    state.auth.revoke_api_key(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The methods a route table entry can name.
pub(super) fn method_filter(method: &Method) -> axum::routing::MethodFilter {
    match *method {
        Method::POST => axum::routing::MethodFilter::POST,
        Method::DELETE => axum::routing::MethodFilter::DELETE,
        Method::PUT => axum::routing::MethodFilter::PUT,
        _ => axum::routing::MethodFilter::GET,
    }
}
