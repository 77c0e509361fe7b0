//! Secret keys kept in files only their owner can read: read as hex, or made from 32 random bytes
//! on first use and written whole (a temporary file renamed into place) or not at all. Used for
//! the pseudonym key and the key that signs access tokens; knows nothing of what they protect.

use std::io::Write;
use std::path::Path;

/// The key in `path`, made when the file does not exist. An error names the file.
pub fn read_or_create(path: &Path) -> Result<Vec<u8>, String> {
    let fail = |reason: String| format!("{}: {reason}", path.display());
    match std::fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim()).map_err(|e| fail(format!("not a hex key: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut key)
                .map_err(|e| fail(format!("no randomness for a new key: {e}")))?;
            write_private(path, hex::encode(key).as_bytes()).map_err(|e| fail(e.to_string()))?;
            tracing::warn!(path = %path.display(), "created a new key file; back it up with the warehouse");
            Ok(key.to_vec())
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes `contents` to `path`, readable by its owner only, whole or not at all.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/k.key");
        let made = super::read_or_create(&path).unwrap();
        assert_eq!(made.len(), 32);
        assert_eq!(super::read_or_create(&path).unwrap(), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").unwrap();
        assert!(super::read_or_create(&path).unwrap_err().contains("k.key"));
    }
}
