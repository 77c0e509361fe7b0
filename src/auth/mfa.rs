//! The second factor: TOTP (RFC 6238: SHA-1, 6 digits, 30 s steps, one step of skew) with ten
//! single-use recovery codes. A code is accepted once: the last step used is kept per user.
//! Setup stores a secret that takes effect only when a code from it is confirmed.

use totp_rs::{Builder, Totp};

use super::{Auth, AuthError, Tokens, digest, now, random_string};

/// What setting up a second factor answers: shown once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrollment {
    /// The secret in base32, for typing into an authenticator app.
    pub secret: String,
    /// `otpauth://totp/…`, for a QR code.
    pub otpauth_url: String,
}

/// What confirming answers: the recovery codes (shown once) and a session with full rights.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Confirmed {
    pub recovery_codes: Vec<String>,
    #[serde(flatten)]
    pub tokens: Tokens,
}

const RECOVERY_CODES: usize = 10;

fn totp(secret: Vec<u8>, user: &str) -> Result<Totp, AuthError> {
    Builder::new()
        .with_secret(secret)
        .with_account_name(user)
        .with_issuer(Some("Sokana"))
        .build()
        .map_err(|e| AuthError::Internal(format!("TOTP: {e}")))
}

impl Auth {
    /// A new secret for `user`, pending until a code from it is confirmed.
    pub async fn mfa_setup(&self, user: &str) -> Result<Enrollment, AuthError> {
        let mut secret = vec![0u8; 20];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        let generator = totp(secret.clone(), user)?;
        let enabled = self.store.query("SELECT totp_enabled FROM users WHERE name = $1", &[user.into()]).await?;
        if enabled.first().is_some_and(|r| r.int(0) != 0) {
            return Err(AuthError::Conflict("a second factor is already set up; an admin can reset it".into()));
        }
        // Pending until confirmed: login asks for a code only once totp_enabled is set.
        self.store
            .execute(
                "UPDATE users SET totp_secret = $2 WHERE name = $1 AND totp_enabled = 0",
                &[user.into(), hex::encode(&secret).into()],
            )
            .await?;
        Ok(Enrollment {
            secret: generator.secret().to_base32(),
            otpauth_url: generator.to_url().map_err(|e| AuthError::Internal(e.to_string()))?,
        })
    }

    /// Confirms the pending secret with a code from it; turns the factor on, issues recovery
    /// codes, ends the enrolment session and opens a full one.
    pub async fn mfa_confirm(
        &self,
        user: &str,
        session: Option<&str>,
        code: &str,
        device: &super::Device,
    ) -> Result<Confirmed, AuthError> {
        let rows =
            self.store.query("SELECT totp_secret, totp_enabled FROM users WHERE name = $1", &[user.into()]).await?;
        let Some(row) = rows.first() else {
            return Err(AuthError::UnknownUser(user.into()));
        };
        if row.int(1) != 0 {
            return Err(AuthError::Conflict("a second factor is already set up".into()));
        }
        let Some(secret) = row.opt_text(0) else {
            return Err(AuthError::BadInput { field: "code", reason: "call /api/v1/auth/mfa/setup first".into() });
        };
        let step = self.matching_step(&secret, user, code)?.ok_or(AuthError::InvalidMfa)?;
        self.store
            .execute(
                "UPDATE users SET totp_enabled = 1, totp_last_step = $2 WHERE name = $1",
                &[user.into(), step.into()],
            )
            .await?;
        self.store.execute("DELETE FROM recovery_codes WHERE user_name = $1", &[user.into()]).await?;
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let code = format!("{}-{}", random_string(5), random_string(5)).to_lowercase();
            self.store
                .execute(
                    "INSERT INTO recovery_codes (user_name, hash) VALUES ($1, $2)",
                    &[user.into(), digest(&code).into()],
                )
                .await?;
            codes.push(code);
        }
        if let Some(session) = session {
            self.revoke_session(session, "second factor set up").await?;
        }
        let tokens = self.open_session(user, device, true).await?;
        Ok(Confirmed { recovery_codes: codes, tokens })
    }

    /// Removes a user's second factor (an admin's act, for a lost phone); they enrol again.
    pub async fn mfa_reset(&self, user: &str) -> Result<(), AuthError> {
        let changed = self
            .store
            .execute("UPDATE users SET totp_secret = NULL, totp_enabled = 0 WHERE name = $1", &[user.into()])
            .await?;
        if changed == 0 {
            return Err(AuthError::UnknownUser(user.into()));
        }
        self.store.execute("DELETE FROM recovery_codes WHERE user_name = $1", &[user.into()]).await?;
        self.revoke_user_sessions(user, "second factor reset").await
    }

    /// Accepts a current code for `user` once; a code for a step already used is refused.
    pub(super) async fn check_totp(&self, user: &str, code: &str) -> Result<(), AuthError> {
        let rows = self
            .store
            .query("SELECT totp_secret, totp_last_step FROM users WHERE name = $1 AND totp_enabled = 1", &[user.into()])
            .await?;
        let Some(row) = rows.first() else {
            return Err(AuthError::InvalidMfa);
        };
        let step = self.matching_step(&row.text(0), user, code)?;
        match step {
            Some(step) if step > row.int(1) => {
                // Only the first of two concurrent logins with the same code wins.
                let won = self
                    .store
                    .execute(
                        "UPDATE users SET totp_last_step = $2 WHERE name = $1 AND totp_last_step < $2",
                        &[user.into(), step.into()],
                    )
                    .await?;
                if won == 1 { Ok(()) } else { Err(AuthError::InvalidMfa) }
            }
            _ => {
                self.record_failure(user).await?;
                Err(AuthError::InvalidMfa)
            }
        }
    }

    fn matching_step(&self, secret_hex: &str, user: &str, code: &str) -> Result<Option<i64>, AuthError> {
        let secret = hex::decode(secret_hex).map_err(|e| AuthError::Internal(format!("a stored TOTP secret: {e}")))?;
        let generator = totp(secret, user)?;
        let code = code.trim();
        if code.len() != 6 || !code.chars().all(|c| c.is_ascii_digit()) {
            return Ok(None);
        }
        Ok(generator.check(code, now().max(0) as u64).map(|step| step as i64))
    }

    /// Spends one recovery code.
    pub(super) async fn use_recovery_code(&self, user: &str, code: &str) -> Result<(), AuthError> {
        let spent = self
            .store
            .execute(
                "UPDATE recovery_codes SET used_at = $3 WHERE user_name = $1 AND hash = $2 AND used_at IS NULL",
                &[user.into(), digest(code.trim()).into(), now().into()],
            )
            .await?;
        if spent == 1 {
            Ok(())
        } else {
            self.record_failure(user).await?;
            Err(AuthError::InvalidMfa)
        }
    }

    /// The current code for a secret in base32: what an authenticator app shows (for tests and
    /// the CLI's own login).
    pub fn current_code(secret_base32: &str, user: &str) -> Result<String, AuthError> {
        let secret = totp_rs::Secret::try_from_base32(secret_base32)
            .map_err(|e| AuthError::BadInput { field: "secret", reason: e.to_string() })?;
        let generator = Builder::new().with_secret(secret).with_account_name(user).build_noncompliant();
        Ok(generator.generate(now().max(0) as u64).to_string())
    }
}
