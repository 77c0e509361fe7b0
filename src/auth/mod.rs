//! Who may connect and what they may do: users and roles in the engine's own metadata store
//! (`store`), passwords (argon2id), sessions with short-lived access tokens and rotating refresh
//! tokens (`session`), TOTP with recovery codes (`mfa`), API keys (`apikey`), and the permissions
//! and column visibilities of each role (`role`). The HTTP routes and the wire endpoint call in
//! here; this module knows nothing of HTTP, of SQL engines or of rendering.

pub mod apikey;
pub mod audit;
pub mod embed;
pub mod mfa;
pub mod policy;
pub mod role;
pub mod session;

use std::num::NonZeroU32;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

/// The metadata store, where users, sessions, keys and the audit trail live.
pub use crate::metastore as store;
pub use crate::metastore::{MetaStore, StoreError};
pub use role::{Permission, Role, Visibility};
pub use session::{Login, SessionInfo, Tokens};

use crate::config::Config;

/// The query engine every surface answers from (the API, reports made by the CLI or the
/// scheduler): masking by role, every query in the audit trail.
pub struct Serving {
    pub engine: Arc<crate::query::engine::QueryEngine>,
    pub auth: Arc<Auth>,
    pub policy: Arc<policy::MaskingPolicy>,
}

/// [`Serving`] for `project`.
pub async fn serving(project: &crate::pipeline::Project) -> Result<Serving, AuthError> {
    let key = project.pseudonym_key().map_err(|e| AuthError::Internal(e.to_string()))?;
    let policy =
        Arc::new(policy::MaskingPolicy::new(project.classes().clone(), &key).with_admin_only(project.admin_only()));
    let auth = Auth::open(project.config()).await?;
    let recorder = audit::QueryAudit { audit: auth.audit().clone(), policy: policy.clone() };
    let engine = project
        .query_engine()
        .map_err(|e| AuthError::Internal(e.to_string()))?
        .with_policy(policy.clone())
        .with_recorder(Arc::new(recorder));
    Ok(Serving { engine: Arc::new(engine), auth, policy })
}

/// The demo's administrator (product.md).
pub const ADMIN: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Key(String),
    #[error("wrong user name or password")]
    InvalidCredentials,
    #[error("too many failed logins for this user; try again in {retry_after} s")]
    Locked { retry_after: u64 },
    #[error("too many requests; try again in {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("this account needs a one-time code: send `totp` (or a `recovery_code`)")]
    MfaRequired,
    #[error("wrong or reused one-time code")]
    InvalidMfa,
    #[error("this account must set up a second factor first: POST /api/v1/auth/mfa/setup, then /confirm")]
    MfaEnrollmentRequired,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("the token has expired")]
    Expired,
    #[error("this refresh token was already used; the session is revoked (log in again)")]
    TokenReused,
    #[error("the session has ended; log in again")]
    SessionEnded,
    #[error("{0}")]
    Conflict(String),
    #[error("no user named {0:?}")]
    UnknownUser(String),
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("{field}: {reason}")]
    BadInput { field: &'static str, reason: String },
    #[error("the audit trail was changed at record {seq}: {reason}")]
    Tampered { seq: i64, reason: String },
    /// The end of the trail cannot be checked against the warehouse's copy.
    #[error("the audit trail cannot be checked to its end: {0}")]
    Unverifiable(String),
    #[error("the audit trail cannot be written; see the server's log")]
    AuditUnavailable,
    #[error("{0}")]
    Internal(String),
}

impl AuthError {
    /// A stable code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Store(_) | AuthError::Key(_) | AuthError::Internal(_) => "internal",
            AuthError::InvalidCredentials => "invalid_credentials",
            AuthError::Locked { .. } => "locked",
            AuthError::RateLimited { .. } => "rate_limited",
            AuthError::MfaRequired => "mfa_required",
            AuthError::InvalidMfa => "invalid_mfa",
            AuthError::MfaEnrollmentRequired => "mfa_enrollment_required",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::TokenReused => "token_reused",
            AuthError::SessionEnded => "session_ended",
            AuthError::Conflict(_) => "conflict",
            AuthError::UnknownUser(_) => "unknown_user",
            AuthError::UserExists(_) => "user_exists",
            AuthError::BadInput { .. } => "bad_request",
            AuthError::Tampered { .. } => "audit_tampered",
            AuthError::Unverifiable(_) => "audit_unverifiable",
            AuthError::AuditUnavailable => "audit_unavailable",
        }
    }
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
    /// The session an access token belongs to.
    pub session: Option<String>,
    /// The API key used, by id.
    pub api_key: Option<String>,
    /// A session of an account that must still set up its second factor: it may do that and
    /// nothing else.
    pub enrolling: bool,
}

impl Identity {
    /// The data-access scope, which the query engine puts in its cache keys.
    pub fn scope(&self) -> &'static str {
        self.role.name()
    }

    pub fn may(&self, permission: Permission) -> bool {
        !self.enrolling && self.role.allows(permission)
    }
}

/// What a wire connection's login proved, kept with the connection (in the server's memory only)
/// and checked again before each statement: the API key used, or the user and a digest of their
/// password hash as it was at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireLogin {
    ApiKey { id: String },
    Password { user: String, credential: String },
}

/// A user as listed (never with its hash or secrets).
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub mfa: bool,
    pub created_at: i64,
}

/// The connection a login comes from, kept with its session.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub user_agent: String,
    pub ip: Option<std::net::IpAddr>,
}

impl Device {
    /// The network the client is in (/24 or /48), not its address.
    pub fn ip_prefix(&self) -> String {
        match self.ip {
            Some(std::net::IpAddr::V4(ip)) => {
                let o = ip.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            Some(std::net::IpAddr::V6(ip)) => {
                let s = ip.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
            None => "local".into(),
        }
    }
}

/// Token lifetimes and the lockout threshold, from `[auth]`.
#[derive(Debug, Clone)]
struct Settings {
    access_minutes: i64,
    refresh_days: i64,
    lockout_after: i64,
}

/// Users, sessions, keys and the limits on trying them.
pub struct Auth {
    store: MetaStore,
    audit: Arc<audit::Audit>,
    /// Signs access tokens.
    token_key: [u8; 32],
    /// Makes each session's CSRF token.
    csrf_key: aws_lc_rs::hmac::Key,
    /// Signs embed links.
    embed_key: [u8; 32],
    settings: Settings,
    logins: DefaultKeyedRateLimiter<String>,
    api_keys: DefaultKeyedRateLimiter<String>,
    chain_key: audit::ChainKey,
}

impl Auth {
    /// Opens the store and the key file that `config` names, creating both when missing.
    pub async fn open(config: &Config) -> Result<Arc<Auth>, AuthError> {
        let state = config.state_dir();
        let store = MetaStore::open(&config.meta_store_url(), &config.base_dir).await?;
        let key_path =
            config.auth.key_file.as_ref().map(|p| config.resolve(p)).unwrap_or_else(|| state.join("auth.key"));
        let master = crate::keyfile::read_or_create(&key_path).map_err(AuthError::Key)?;
        // One key per use, each derived from the master key and what it is for.
        let derive = |purpose: &[u8]| -> [u8; 32] {
            Sha256::new().chain_update(&master).chain_update(purpose).finalize().into()
        };
        let token_key = derive(b"sokana access tokens");
        let csrf_key = derive(b"sokana csrf");
        let chain_key = audit::ChainKey::new(derive(b"sokana audit chain"));
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        Ok(Arc::new(Auth {
            audit: audit::Audit::start(store.clone(), chain_key.clone()),
            chain_key,
            store,
            token_key,
            csrf_key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &csrf_key),
            embed_key: derive(b"sokana embed links"),
            settings: Settings {
                access_minutes: config.auth.access_token_minutes,
                refresh_days: config.auth.refresh_token_days,
                lockout_after: config.auth.lockout_after,
            },
            logins: RateLimiter::keyed(per_minute(config.auth.logins_per_minute)),
            api_keys: RateLimiter::keyed(per_minute(config.auth.api_key_requests_per_minute)),
        }))
    }

    /// The CSRF token of a session: a MAC of its id, so a token planted in a cookie by someone
    /// else does not fit the session the browser holds.
    pub fn csrf_token(&self, session: &str) -> String {
        hex::encode(aws_lc_rs::hmac::sign(&self.csrf_key, session.as_bytes()).as_ref())
    }

    /// Whether `presented` is the session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, session: &str, presented: &str) -> bool {
        hex::decode(presented)
            .is_ok_and(|tag| aws_lc_rs::hmac::verify(&self.csrf_key, session.as_bytes(), &tag).is_ok())
    }

    /// How long a refresh token lives, in seconds.
    pub fn refresh_seconds(&self) -> i64 {
        self.settings.refresh_days * 86_400
    }

    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    pub fn audit(&self) -> &Arc<audit::Audit> {
        &self.audit
    }

    /// Verifies the audit chain under this installation's key.
    pub async fn verify_audit(&self) -> Result<audit::Verified, AuthError> {
        audit::verify(&self.store, &self.chain_key).await
    }

    /// Records a login attempt (never the password).
    pub(crate) fn audit_login(
        &self,
        user: &str,
        origin: &str,
        device: &Device,
        outcome: &Result<impl Sized, AuthError>,
    ) {
        self.audit.record(audit::Event {
            user: user.to_string(),
            origin: origin.to_string(),
            address: device.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            action: "login".into(),
            outcome: match outcome {
                Ok(_) => "ok".into(),
                Err(e) => e.code().into(),
            },
            ..audit::Event::now()
        });
    }

    pub async fn add_user(&self, name: &str, role: Role, password: &str) -> Result<(), AuthError> {
        check_name(name)?;
        check_password(password)?;
        let hash = hash_password(password).await?;
        let now = now();
        let existing = self.store.query("SELECT name FROM users WHERE name = $1", &[name.into()]).await?;
        if !existing.is_empty() {
            return Err(AuthError::UserExists(name.into()));
        }
        self.store
            .execute(
                "INSERT INTO users (name, role, password_hash, created_at, password_changed_at) VALUES ($1, $2, $3, $4, $4)",
                &[name.into(), role.name().into(), hash.into(), now.into()],
            )
            .await?;
        Ok(())
    }

    pub async fn users(&self) -> Result<Vec<User>, AuthError> {
        let rows = self
            .store
            .query("SELECT name, role, disabled, totp_enabled, created_at FROM users ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|r| {
                Ok(User {
                    name: r.text(0),
                    role: parse_role(&r.text(1))?,
                    disabled: r.int(2) != 0,
                    mfa: r.int(3) != 0,
                    created_at: r.int(4),
                })
            })
            .collect()
    }

    /// Disables (or enables again) a user; disabling ends their sessions and API keys at once.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), AuthError> {
        let changed = self
            .store
            .execute("UPDATE users SET disabled = $2 WHERE name = $1", &[name.into(), i64::from(disabled).into()])
            .await?;
        if changed == 0 {
            return Err(AuthError::UnknownUser(name.into()));
        }
        if disabled {
            self.revoke_user_sessions(name, "user disabled").await?;
        }
        Ok(())
    }

    /// Sets a new password and ends every session the old one opened.
    pub async fn reset_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        check_password(password)?;
        let hash = hash_password(password).await?;
        let changed = self
            .store
            .execute(
                "UPDATE users SET password_hash = $2, password_changed_at = $3 WHERE name = $1",
                &[name.into(), hash.into(), now().into()],
            )
            .await?;
        if changed == 0 {
            return Err(AuthError::UnknownUser(name.into()));
        }
        self.store.execute("DELETE FROM login_failures WHERE user_name = $1", &[name.into()]).await?;
        self.revoke_user_sessions(name, "password reset").await
    }

    /// The demo's administrator: created with `password`, or given it when it exists.
    pub async fn ensure_admin(&self, password: &str) -> Result<(), AuthError> {
        self.ensure_user(ADMIN, Role::Admin, password).await
    }

    /// A user created with `role` and `password`, or given both when it exists.
    pub async fn ensure_user(&self, name: &str, role: Role, password: &str) -> Result<(), AuthError> {
        match self.add_user(name, role, password).await {
            Err(AuthError::UserExists(_)) => {
                self.reset_password(name, password).await?;
                self.set_role(name, role).await
            }
            other => other,
        }
    }

    /// Checks a password, counting failures per user name and locking the name after
    /// `lockout_after` failures in a row, for 30 s doubling up to 15 min.
    pub async fn check_password(&self, name: &str, password: &str) -> Result<(Role, bool), AuthError> {
        let now = now();
        let failures = self
            .store
            .query("SELECT failures, locked_until FROM login_failures WHERE user_name = $1", &[name.into()])
            .await?;
        if let Some(row) = failures.first()
            && row.int(1) > now
        {
            return Err(AuthError::Locked { retry_after: (row.int(1) - now) as u64 });
        }
        let rows = self
            .store
            .query("SELECT password_hash, role, disabled, totp_enabled FROM users WHERE name = $1", &[name.into()])
            .await?;
        // An unknown name costs the same argon2 work as a known one, so timing does not tell them apart.
        let (hash, known) = match rows.first() {
            Some(row) => (row.text(0), true),
            None => (DUMMY_HASH.to_string(), false),
        };
        let matches = verify_password(&hash, password).await?;
        let enabled = rows.first().is_some_and(|r| r.int(2) == 0);
        if !(matches && known && enabled) {
            self.record_failure(name).await?;
            return Err(AuthError::InvalidCredentials);
        }
        let row = &rows[0];
        Ok((parse_role(&row.text(1))?, row.int(3) != 0))
    }

    async fn record_failure(&self, name: &str) -> Result<(), AuthError> {
        let rows = self.store.query("SELECT failures FROM login_failures WHERE user_name = $1", &[name.into()]).await?;
        let failures = rows.first().map_or(0, |r| r.int(0)) + 1;
        let over = failures - self.settings.lockout_after;
        let locked_until = if over >= 0 { now() + (30i64 << over.min(5)).min(900) } else { 0 };
        if rows.is_empty() {
            self.store
                .execute(
                    "INSERT INTO login_failures (user_name, failures, locked_until) VALUES ($1, $2, $3)",
                    &[name.into(), failures.into(), locked_until.into()],
                )
                .await?;
        } else {
            self.store
                .execute(
                    "UPDATE login_failures SET failures = $2, locked_until = $3 WHERE user_name = $1",
                    &[name.into(), failures.into(), locked_until.into()],
                )
                .await?;
        }
        Ok(())
    }

    async fn clear_failures(&self, name: &str) -> Result<(), AuthError> {
        self.store.execute("DELETE FROM login_failures WHERE user_name = $1", &[name.into()]).await?;
        Ok(())
    }

    /// A login over the PostgreSQL wire protocol, which carries only a password: an API key, or
    /// the user's password, followed by the current 6-digit code when the account has a second
    /// factor. Roles that need a second factor cannot log in before they have set one up. The
    /// [`WireLogin`] is kept with the connection and checked again before each statement.
    pub async fn verify_wire(
        &self,
        user: &str,
        secret: &str,
        device: &Device,
    ) -> Result<(Identity, WireLogin), AuthError> {
        let outcome = self.verify_wire_unaudited(user, secret, device).await;
        self.audit_login(user, "pgwire", device, &outcome);
        outcome
    }

    async fn verify_wire_unaudited(
        &self,
        user: &str,
        secret: &str,
        device: &Device,
    ) -> Result<(Identity, WireLogin), AuthError> {
        self.limit_login(device)?;
        if Self::is_api_key(secret) {
            let identity = self.verify_api_key(secret).await?;
            let id = identity.api_key.clone().ok_or_else(|| AuthError::Internal("an API key without an id".into()))?;
            return Ok((identity, WireLogin::ApiKey { id }));
        }
        let has_factor = self.has_second_factor(user).await?;
        let split = secret.len().checked_sub(6).filter(|&at| has_factor && secret.is_char_boundary(at));
        let (password, code) = match split {
            Some(at) => (&secret[..at], Some(&secret[at..])),
            None => (secret, None),
        };
        let (role, _) = self.check_password(user, password).await?;
        match code {
            Some(code) => self.check_totp(user, code).await?,
            None if role.requires_mfa() => return Err(AuthError::MfaEnrollmentRequired),
            None => {}
        }
        self.clear_failures(user).await?;
        let credential = self.credential(user).await?.ok_or(AuthError::InvalidCredentials)?;
        let identity = Identity { user: user.to_string(), role, session: None, api_key: None, enrolling: false };
        Ok((identity, WireLogin::Password { user: user.to_string(), credential }))
    }

    /// Whether the user has set up a second factor.
    async fn has_second_factor(&self, user: &str) -> Result<bool, AuthError> {
        let rows = self.store.query("SELECT totp_enabled FROM users WHERE name = $1", &[user.into()]).await?;
        Ok(rows.first().is_some_and(|r| r.int(0) != 0))
    }

    /// A digest of the user's stored password hash: it changes with every new password.
    async fn credential(&self, user: &str) -> Result<Option<String>, AuthError> {
        let rows = self.store.query("SELECT password_hash FROM users WHERE name = $1", &[user.into()]).await?;
        Ok(rows.first().map(|r| digest(&r.text(0))))
    }

    /// Who a wire connection acts as now: its login checked again, so that a revoked or expired
    /// key, a disabled user, a new password and a new role take effect on the connection's next
    /// statement, as they do on the next HTTP request.
    pub async fn recheck_wire(&self, login: &WireLogin) -> Result<Identity, AuthError> {
        match login {
            WireLogin::ApiKey { id } => self.api_key_identity(id).await,
            WireLogin::Password { user, credential } => {
                let rows = self
                    .store
                    .query(
                        "SELECT role, disabled, password_hash, totp_enabled FROM users WHERE name = $1",
                        &[user.as_str().into()],
                    )
                    .await?;
                let row = rows.first().ok_or(AuthError::SessionEnded)?;
                if row.int(1) != 0 || digest(&row.text(2)) != *credential {
                    return Err(AuthError::SessionEnded);
                }
                let role = parse_role(&row.text(0))?;
                // A role that now needs a second factor is not had by a login made without one.
                if role.requires_mfa() && row.int(3) == 0 {
                    return Err(AuthError::MfaEnrollmentRequired);
                }
                Ok(Identity { user: user.clone(), role, session: None, api_key: None, enrolling: false })
            }
        }
    }

    /// Gives a user another role; their sessions and wire connections act with it from their next
    /// request. A role that needs a second factor, given to someone without one, ends their
    /// sessions so that they set one up at their next login.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<(), AuthError> {
        let changed = self
            .store
            .execute("UPDATE users SET role = $2 WHERE name = $1", &[name.into(), role.name().into()])
            .await?;
        if changed == 0 {
            return Err(AuthError::UnknownUser(name.into()));
        }
        if role.requires_mfa() && !self.has_second_factor(name).await? {
            self.revoke_user_sessions(name, "role needs a second factor").await?;
        }
        Ok(())
    }

    /// Login attempts from one address are limited; an error says when to try again.
    pub fn limit_login(&self, device: &Device) -> Result<(), AuthError> {
        let key = device.ip.map(|ip| ip.to_string()).unwrap_or_default();
        self.logins.check_key(&key).map_err(rate_limited)
    }
}

fn rate_limited(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> AuthError {
    let clock = governor::clock::DefaultClock::default();
    AuthError::RateLimited { retry_after: not_until.wait_time_from(governor::clock::Clock::now(&clock)).as_secs() + 1 }
}

/// A valid argon2id hash of a random password, verified against when the user is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29rYW5hLWR1bW15LXNhbHQ$W3V8gq0o5r7F0Kbq8j0Yq0p9w8Xb6nM3kLq1tY2uZ4E";

fn parse_role(name: &str) -> Result<Role, AuthError> {
    Role::parse(name).ok_or_else(|| AuthError::Internal(format!("the store holds an unknown role {name:?}")))
}

fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadInput { field: "name", reason: "1 to 64 letters, digits, or _ - . @".into() })
    }
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < 12 {
        return Err(AuthError::BadInput { field: "password", reason: "at least 12 characters".into() });
    }
    if password.len() > 1024 {
        return Err(AuthError::BadInput { field: "password", reason: "at most 1024 bytes".into() });
    }
    Ok(())
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// argon2id with the crate's defaults (19 MiB, 2 passes), off the async threads.
async fn hash_password(password: &str) -> Result<String, AuthError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Internal(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Internal(e.to_string()))?
}

async fn verify_password(hash: &str, password: &str) -> Result<bool, AuthError> {
    let (hash, password) = (hash.to_string(), password.to_string());
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| AuthError::Internal(format!("a stored hash: {e}")))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    })
    .await
    .map_err(|e| AuthError::Internal(e.to_string()))?
}

/// A password of 20 letters and digits, for a demo without `SOKANA_DEMO_PASSWORD`.
pub fn generate_password() -> String {
    random_string(20)
}

/// `n` characters from an alphabet without look-alikes, from the operating system's CSPRNG.
pub(crate) fn random_string(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    // The thread generator is a CSPRNG seeded from the operating system.
    let mut rng = rand::rng();
    (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// SHA-256 of a high-entropy secret (token, key, recovery code), hex; such secrets need no
/// slow hash, since they cannot be guessed from a list.
pub(crate) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_dummy_hash_parses_and_matches_nothing() {
        assert!(!verify_password(DUMMY_HASH, "anything").await.unwrap());
    }

    #[test]
    fn devices_are_kept_as_networks() {
        let d = Device { user_agent: "x".into(), ip: Some("192.168.7.42".parse().unwrap()) };
        assert_eq!(d.ip_prefix(), "192.168.7.0/24");
        let d = Device { user_agent: "x".into(), ip: Some("2001:db8:1:2::5".parse().unwrap()) };
        assert_eq!(d.ip_prefix(), "2001:db8:1::/48");
    }
}
