//! API keys for machine clients: `sk_<id>_<secret>`, shown once, stored as a digest, scoped to a
//! role, expiring, revocable, and rate limited per key.

use super::{Auth, AuthError, Identity, Role, digest, now, parse_role};
use crate::metastore::Row;

/// What creating a key answers: the key itself appears here and nowhere else.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub expires_at: i64,
}

/// A key as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

const PREFIX: &str = "sk_";

/// The columns [`key_identity`] reads, first in every query of a key (a macro, so that each query's
/// text is one constant rather than formatted on every request).
macro_rules! key_columns {
    () => {
        "k.role, k.expires_at, k.revoked_at, k.created_by, u.disabled"
    };
}

impl Auth {
    /// A new key acting as `owner` (who must exist; disabling them stops the key) with `role`.
    pub async fn create_api_key(&self, name: &str, role: Role, days: i64, owner: &str) -> Result<NewKey, AuthError> {
        if name.is_empty() || name.len() > 100 {
            return Err(AuthError::BadInput { field: "name", reason: "1 to 100 characters".into() });
        }
        if !(1..=366).contains(&days) {
            return Err(AuthError::BadInput { field: "expires_in_days", reason: "1 to 366".into() });
        }
        if self.store.query("SELECT name FROM users WHERE name = $1", &[owner.into()]).await?.is_empty() {
            return Err(AuthError::UnknownUser(owner.into()));
        }
        let id = super::random_string(12).to_lowercase();
        let secret = super::session::random_token();
        let now = now();
        let expires_at = now + days * 86_400;
        self.store
            .execute(
                "INSERT INTO api_keys (id, name, hash, role, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    id.as_str().into(),
                    name.into(),
                    digest(&secret).into(),
                    role.name().into(),
                    owner.into(),
                    now.into(),
                    expires_at.into(),
                ],
            )
            .await?;
        Ok(NewKey { key: format!("{PREFIX}{id}_{secret}"), id, expires_at })
    }

    pub async fn api_keys(&self) -> Result<Vec<KeyInfo>, AuthError> {
        let rows = self
            .store
            .query(
                "SELECT id, name, role, created_by, created_at, expires_at, revoked_at, last_used_at FROM api_keys \
                 ORDER BY created_at DESC",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyInfo {
                    id: r.text(0),
                    name: r.text(1),
                    role: parse_role(&r.text(2))?,
                    created_by: r.text(3),
                    created_at: r.int(4),
                    expires_at: r.int(5),
                    revoked_at: r.opt_int(6),
                    last_used_at: r.opt_int(7),
                })
            })
            .collect()
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<(), AuthError> {
        let changed = self
            .store
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[id.into(), now().into()],
            )
            .await?;
        if changed == 0 {
            return Err(AuthError::BadInput { field: "id", reason: format!("no active key {id:?}") });
        }
        Ok(())
    }

    /// Whether `token` looks like an API key rather than an access token.
    pub fn is_api_key(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    /// Who an API key acts for: its creator's name with the key's role.
    pub async fn verify_api_key(&self, token: &str) -> Result<Identity, AuthError> {
        let invalid = || AuthError::InvalidToken("unknown API key".into());
        let rest = token.strip_prefix(PREFIX).ok_or_else(invalid)?;
        let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
        let sql = concat!(
            "SELECT ",
            key_columns!(),
            ", k.hash, k.last_used_at FROM api_keys k JOIN users u ON u.name = k.created_by WHERE k.id = $1"
        );
        let row = self.store.lookup(sql, &[id.into()]).await?.ok_or_else(invalid)?;
        if !constant_time_eq(row.text(5).as_bytes(), digest(secret).as_bytes()) {
            return Err(invalid());
        }
        let identity = key_identity(id, &row)?;
        self.api_keys.check_key(&id.to_string()).map_err(super::rate_limited)?;
        // Kept to the minute: a write on every request would put a commit on the hot path.
        let now = now();
        if row.opt_int(6).is_none_or(|used| now - used >= 60) {
            self.store.execute("UPDATE api_keys SET last_used_at = $2 WHERE id = $1", &[id.into(), now.into()]).await?;
        }
        Ok(identity)
    }

    /// Who the key with `id` acts for now, without its secret (a wire connection that logged in
    /// with it, checked again).
    pub(super) async fn api_key_identity(&self, id: &str) -> Result<Identity, AuthError> {
        let sql = concat!(
            "SELECT ",
            key_columns!(),
            " FROM api_keys k JOIN users u ON u.name = k.created_by WHERE k.id = $1"
        );
        let row = self.store.lookup(sql, &[id.into()]).await?;
        key_identity(id, &row.ok_or(AuthError::SessionEnded)?)
    }

    /// An access token or an API key.
    pub async fn verify_bearer(&self, token: &str) -> Result<Identity, AuthError> {
        if Self::is_api_key(token) { self.verify_api_key(token).await } else { self.verify_access_token(token).await }
    }
}

/// The identity a key's row (starting with the columns of `key_columns!`) grants, unless it was revoked, its
/// owner disabled, or it expired.
fn key_identity(id: &str, row: &Row) -> Result<Identity, AuthError> {
    if row.opt_int(2).is_some() || row.int(4) != 0 {
        return Err(AuthError::InvalidToken("this API key was revoked".into()));
    }
    if row.int(1) <= now() {
        return Err(AuthError::Expired);
    }
    Ok(Identity {
        user: row.text(3),
        role: parse_role(&row.text(0))?,
        session: None,
        api_key: Some(id.to_string()),
        enrolling: false,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
