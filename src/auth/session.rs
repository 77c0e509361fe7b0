//! Sessions: a login opens one, with a short-lived access token (a JWT naming the session) and a
//! refresh token that rotates on every use. A refresh token used a second time means it was
//! copied: the whole session is revoked, so the thief's copy and the owner's both stop working.
//! Access tokens are checked against their session on every request, so logout, revocation,
//! a disabled user or a changed role take effect at once rather than when the token expires.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Auth, AuthError, Device, Identity, digest, now, parse_role};

/// What a login or a refresh answers.
#[derive(Debug, Clone, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: i64,
    pub session_id: String,
    /// The account must set up its second factor before anything else.
    pub mfa_enrollment_required: bool,
}

/// A login request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub totp: Option<String>,
    #[serde(default)]
    pub recovery_code: Option<String>,
}

/// One session as listed.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
    pub user_agent: String,
    pub ip_prefix: String,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    sid: String,
    iat: i64,
    exp: i64,
}

const REFRESH_PREFIX: &str = "rt_";

impl Auth {
    /// Checks the password (and second factor) and opens a session.
    pub async fn login(&self, login: &Login, device: &Device) -> Result<Tokens, AuthError> {
        let outcome = self.login_unaudited(login, device).await;
        self.audit_login(&login.username, "http", device, &outcome);
        outcome
    }

    async fn login_unaudited(&self, login: &Login, device: &Device) -> Result<Tokens, AuthError> {
        self.limit_login(device)?;
        let (role, mfa_enabled) = self.check_password(&login.username, &login.password).await?;
        let mfa_done = if mfa_enabled {
            match (&login.totp, &login.recovery_code) {
                (Some(code), _) => self.check_totp(&login.username, code).await?,
                (None, Some(code)) => self.use_recovery_code(&login.username, code).await?,
                (None, None) => return Err(AuthError::MfaRequired),
            }
            true
        } else {
            false
        };
        self.clear_failures(&login.username).await?;
        let enrolling = role.requires_mfa() && !mfa_done;
        self.open_session(&login.username, device, !enrolling).await
    }

    pub(super) async fn open_session(&self, user: &str, device: &Device, complete: bool) -> Result<Tokens, AuthError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now();
        let expires = now + self.settings.refresh_days * 86_400;
        let agent: String = device.user_agent.chars().take(200).collect();
        self.store
            .execute(
                "INSERT INTO sessions (id, user_name, created_at, last_seen_at, expires_at, user_agent, ip_prefix, complete) \
                 VALUES ($1, $2, $3, $3, $4, $5, $6, $7)",
                &[
                    id.as_str().into(),
                    user.into(),
                    now.into(),
                    expires.into(),
                    agent.into(),
                    device.ip_prefix().into(),
                    i64::from(complete).into(),
                ],
            )
            .await?;
        self.issue(user, &id, expires, !complete).await
    }

    /// A token pair for `session`, which expires at `session_expires`: the access token ends then
    /// at the latest.
    async fn issue(
        &self,
        user: &str,
        session: &str,
        session_expires: i64,
        enrolling: bool,
    ) -> Result<Tokens, AuthError> {
        let now = now();
        let lifetime = (self.settings.access_minutes * 60).min(session_expires - now).max(0);
        let claims = Claims { sub: user.to_string(), sid: session.to_string(), iat: now, exp: now + lifetime };
        let access_token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&self.token_key))
                .map_err(|e| AuthError::Internal(e.to_string()))?;
        let refresh_token = format!("{REFRESH_PREFIX}{}", random_token());
        self.store
            .execute(
                "INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES ($1, $2, $3)",
                &[digest(&refresh_token).into(), session.into(), now.into()],
            )
            .await?;
        Ok(Tokens {
            access_token,
            refresh_token,
            token_type: "Bearer",
            expires_in: lifetime,
            session_id: session.to_string(),
            mfa_enrollment_required: enrolling,
        })
    }

    /// Trades a refresh token for a new pair. The old one is spent; spending it again revokes
    /// the session.
    pub async fn refresh(&self, refresh_token: &str, device: &Device) -> Result<Tokens, AuthError> {
        self.limit_login(device)?;
        let hash = digest(refresh_token);
        let rows = self
            .store
            .query(
                "SELECT t.session_id, t.rotated_at, s.user_name, s.revoked_at, s.expires_at, s.complete, u.disabled \
                 FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id JOIN users u ON u.name = s.user_name \
                 WHERE t.hash = $1",
                &[hash.as_str().into()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Err(AuthError::InvalidToken("unknown refresh token".into()));
        };
        let (session, user) = (row.text(0), row.text(2));
        if row.opt_int(3).is_some() || row.int(6) != 0 {
            return Err(AuthError::SessionEnded);
        }
        if row.int(4) <= now() {
            return Err(AuthError::Expired);
        }
        // Spend the token; only one caller can win this update.
        let spent = if row.opt_int(1).is_none() {
            self.store
                .execute(
                    "UPDATE refresh_tokens SET rotated_at = $2 WHERE hash = $1 AND rotated_at IS NULL",
                    &[hash.as_str().into(), now().into()],
                )
                .await?
        } else {
            0
        };
        if spent == 0 {
            self.revoke_session(&session, "refresh token reused").await?;
            tracing::warn!(session = %session, "a refresh token was used twice; the session is revoked");
            return Err(AuthError::TokenReused);
        }
        self.store
            .execute("UPDATE sessions SET last_seen_at = $2 WHERE id = $1", &[session.as_str().into(), now().into()])
            .await?;
        self.issue(&user, &session, row.int(4), row.int(5) == 0).await
    }

    /// Who an access token acts for, checked against its session now.
    pub async fn verify_access_token(&self, token: &str) -> Result<Identity, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&self.token_key), &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::InvalidToken(e.to_string()),
            })?
            .claims;
        let row = self
            .store
            .lookup(
                "SELECT s.revoked_at, s.complete, u.disabled, u.role, s.expires_at FROM sessions s \
                 JOIN users u ON u.name = s.user_name WHERE s.id = $1 AND s.user_name = $2",
                &[claims.sid.as_str().into(), claims.sub.as_str().into()],
            )
            .await?;
        let Some(row) = row else {
            return Err(AuthError::SessionEnded);
        };
        if row.opt_int(0).is_some() || row.int(2) != 0 {
            return Err(AuthError::SessionEnded);
        }
        // A token cannot outlive its session, whatever its own expiry says.
        if row.int(4) <= now() {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            user: claims.sub,
            role: parse_role(&row.text(3))?,
            session: Some(claims.sid),
            api_key: None,
            enrolling: row.int(1) == 0,
        })
    }

    pub async fn revoke_session(&self, id: &str, reason: &str) -> Result<(), AuthError> {
        self.store
            .execute(
                "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
                &[id.into(), now().into(), reason.into()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn revoke_user_sessions(&self, user: &str, reason: &str) -> Result<(), AuthError> {
        self.store
            .execute(
                "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE user_name = $1 AND revoked_at IS NULL",
                &[user.into(), now().into(), reason.into()],
            )
            .await?;
        Ok(())
    }

    /// Sessions of `user`, or of everyone; newest first.
    pub async fn sessions(&self, user: Option<&str>) -> Result<Vec<SessionInfo>, AuthError> {
        let sql = "SELECT id, user_name, created_at, last_seen_at, expires_at, user_agent, ip_prefix, revoked_at, \
                   revoked_reason FROM sessions";
        let rows = match user {
            Some(u) => {
                self.store.query(&format!("{sql} WHERE user_name = $1 ORDER BY created_at DESC"), &[u.into()]).await?
            }
            None => self.store.query(&format!("{sql} ORDER BY created_at DESC"), &[]).await?,
        };
        Ok(rows
            .iter()
            .map(|r| SessionInfo {
                id: r.text(0),
                user: r.text(1),
                created_at: r.int(2),
                last_seen_at: r.int(3),
                expires_at: r.int(4),
                user_agent: r.text(5),
                ip_prefix: r.text(6),
                revoked_at: r.opt_int(7),
                revoked_reason: r.opt_text(8),
            })
            .collect())
    }

    /// Revokes a session that `by` owns, or any session when `by` administers.
    pub async fn revoke_session_as(&self, id: &str, by: &Identity) -> Result<(), AuthError> {
        let rows = self.store.query("SELECT user_name FROM sessions WHERE id = $1", &[id.into()]).await?;
        let owner = rows.first().map(|r| r.text(0));
        let admin = by.may(super::Permission::Administer);
        match owner {
            Some(owner) if owner == by.user || admin => {
                self.revoke_session(id, &format!("revoked by {}", by.user)).await
            }
            // Someone else's session is reported as missing, not as forbidden, so ids cannot be probed.
            _ => Err(AuthError::BadInput { field: "id", reason: format!("no session {id:?} of yours") }),
        }
    }
}

/// 32 random bytes, base64url (the thread generator is a CSPRNG seeded from the operating system).
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
