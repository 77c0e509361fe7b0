//! Signed embedding links: a token that opens one dashboard with fixed filters, as the user who
//! made it, until it expires. It is signed with its own key (derived from the master key), so an
//! access token is never an embed token or the other way round; at every use the user must still
//! be enabled and hold the same role (or the API key it was made with must still be valid with
//! that role), so that a link never shows more than its maker may see now.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::{Auth, AuthError, Identity, now, parse_role};

/// The longest an embed link may live: a week.
pub const MAX_EMBED_SECONDS: i64 = 7 * 86_400;

/// What an embed link grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedGrant {
    /// The user who made the link.
    pub sub: String,
    /// The role the link was made with.
    pub role: String,
    /// The API key it was made with, if one was: the key, not its owner, must still hold `role`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub dashboard: String,
    /// The dashboard's filters, locked: `(name, value)` as a URL would give them.
    pub filters: Vec<(String, String)>,
    pub iat: i64,
    pub exp: i64,
    /// Names the link in the audit trail.
    pub jti: String,
}

impl Auth {
    /// A link token for `dashboard` with `filters`, as `who`, for `seconds`.
    pub fn sign_embed(
        &self,
        who: &Identity,
        dashboard: &str,
        filters: Vec<(String, String)>,
        seconds: i64,
    ) -> Result<(String, EmbedGrant), AuthError> {
        if !(1..=MAX_EMBED_SECONDS).contains(&seconds) {
            return Err(AuthError::BadInput {
                field: "lifetime_seconds",
                reason: format!("{seconds} is outside 1..={MAX_EMBED_SECONDS}"),
            });
        }
        let issued = now();
        let grant = EmbedGrant {
            sub: who.user.clone(),
            role: who.role.name().into(),
            key: who.api_key.clone(),
            dashboard: dashboard.into(),
            filters,
            iat: issued,
            exp: issued + seconds,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &grant, &EncodingKey::from_secret(&self.embed_key))
                .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok((token, grant))
    }

    /// The grant of an embed token, and who it acts as now: refused when the token is altered or
    /// expired, or its maker is disabled or no longer has the role it was made with.
    pub async fn verify_embed(&self, token: &str) -> Result<(Identity, EmbedGrant), AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let grant = jsonwebtoken::decode::<EmbedGrant>(token, &DecodingKey::from_secret(&self.embed_key), &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::InvalidToken("not an embed link of this server".into()),
            })?
            .claims;
        let role = match &grant.key {
            Some(id) => self.api_key_identity(id).await.map_err(|_| AuthError::SessionEnded)?.role,
            None => {
                let rows = self
                    .store
                    .query("SELECT role, disabled FROM users WHERE name = $1", &[grant.sub.as_str().into()])
                    .await?;
                let row = rows.first().ok_or(AuthError::SessionEnded)?;
                if row.int(1) != 0 {
                    return Err(AuthError::SessionEnded);
                }
                parse_role(&row.text(0))?
            }
        };
        if role.name() != grant.role {
            return Err(AuthError::SessionEnded);
        }
        let identity =
            Identity { user: grant.sub.clone(), role, session: None, api_key: grant.key.clone(), enrolling: false };
        Ok((identity, grant))
    }
}
