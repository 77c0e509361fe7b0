//! Who may connect. Until users and roles land (the security issue), there is one account: the
//! administrator `admin`, whose password `sokana demo` sets (from `SOKANA_DEMO_PASSWORD`, or a
//! generated one it prints). The password is kept only as an argon2id hash in
//! `STATE_DIR/admin.argon2`. The HTTP data routes (Basic authentication) and the PostgreSQL wire
//! endpoint both check it here. This module knows nothing of HTTP or of queries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

/// The one user name until roles land.
pub const ADMIN: &str = "admin";
/// How long a verified password is remembered, so that per-request authentication does not pay
/// argon2's deliberate cost every time.
const REMEMBER: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("no login is set up yet: run `sokana demo` (it creates user admin)")]
    NoUsers,
}

/// The identity a check grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// The data-access scope (a role name), which the query engine puts in its cache keys.
    pub scope: String,
}

pub struct Authenticator {
    path: PathBuf,
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
}

fn hash_file(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.argon2")
}

/// Sets the administrator's password (written 0600, replacing any before).
pub fn set_admin_password(state_dir: &Path, password: &str) -> Result<(), AuthError> {
    let path = hash_file(state_dir);
    let store = |reason: String| AuthError::Store { path: path.clone(), reason };
    let mut salt = [0u8; 16];
    rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt).map_err(|e| store(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| store(e.to_string()))?;
    let hash = Argon2::default().hash_password(password.as_bytes(), &salt).map_err(|e| store(e.to_string()))?;
    std::fs::create_dir_all(state_dir).map_err(|e| store(e.to_string()))?;
    let partial = path.with_extension("partial");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&partial).map_err(|e| store(e.to_string()))?;
        file.write_all(hash.to_string().as_bytes()).map_err(|e| store(e.to_string()))?;
        file.sync_all().map_err(|e| store(e.to_string()))?;
    }
    std::fs::rename(&partial, &path).map_err(|e| store(e.to_string()))
}

/// A password of 20 letters and digits, for a demo without `SOKANA_DEMO_PASSWORD`.
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    // The thread generator is a CSPRNG seeded from the operating system.
    let mut rng = rand::rng();
    (0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

impl Authenticator {
    pub fn new(state_dir: &Path) -> Authenticator {
        Authenticator { path: hash_file(state_dir), remembered: Mutex::new(HashMap::new()) }
    }

    /// The identity for `user` and `password`, or `None` when they do not match. The hash file
    /// is read on every check that is not remembered, so a new password takes effect at once.
    pub fn verify(&self, user: &str, password: &str) -> Result<Option<Identity>, AuthError> {
        if user != ADMIN {
            return Ok(None);
        }
        let stored = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(AuthError::NoUsers),
            Err(e) => return Err(AuthError::Store { path: self.path.clone(), reason: e.to_string() }),
        };
        // Remembered by a digest of the stored hash and the password, so a changed password (a new
        // stored hash) is not matched by the old one.
        let digest: [u8; 32] =
            Sha256::new().chain_update(stored.trim()).chain_update([0]).chain_update(password).finalize().into();
        if let Ok(mut remembered) = self.remembered.lock() {
            remembered.retain(|_, at| at.elapsed() < REMEMBER);
            if remembered.contains_key(&digest) {
                return Ok(Some(admin()));
            }
        }
        let hash = PasswordHash::new(stored.trim())
            .map_err(|e| AuthError::Store { path: self.path.clone(), reason: format!("not an argon2 hash: {e}") })?;
        if Argon2::default().verify_password(password.as_bytes(), &hash).is_err() {
            return Ok(None);
        }
        if let Ok(mut remembered) = self.remembered.lock() {
            remembered.insert(digest, Instant::now());
        }
        Ok(Some(admin()))
    }
}

fn admin() -> Identity {
    Identity { user: ADMIN.into(), scope: "admin".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_set_password_lets_admin_in() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(dir.path());
        assert!(matches!(auth.verify(ADMIN, "x"), Err(AuthError::NoUsers)));
        set_admin_password(dir.path(), "correct horse").unwrap();
        assert_eq!(auth.verify(ADMIN, "correct horse").unwrap(), Some(admin()));
        assert_eq!(auth.verify(ADMIN, "correct horse").unwrap(), Some(admin()), "remembered");
        assert_eq!(auth.verify(ADMIN, "wrong").unwrap(), None);
        assert_eq!(auth.verify("postgres", "correct horse").unwrap(), None);
        set_admin_password(dir.path(), "new one").unwrap();
        assert_eq!(auth.verify(ADMIN, "correct horse").unwrap(), None, "the old password stops working");
        let text = std::fs::read_to_string(dir.path().join("admin.argon2")).unwrap();
        assert!(text.starts_with("$argon2id$") && !text.contains("new one"));
    }
}
