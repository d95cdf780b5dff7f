//! The signing key file `flowgate` writes on first start when none is
//! configured: 32 random bytes in hex, readable by its owner alone.

use std::path::Path;

use super::ConfigError;

/// Writes a new random key to `path` (never over an existing file); the
/// key's bytes as the signer uses them.
pub(super) fn generate_key_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| ConfigError::new(format!("cannot generate a signing key: {e}")))?;
    let key = hex::encode(raw);
    let fail = |e: std::io::Error| {
        ConfigError::new(format!(
            "cannot write signing key file {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A folder made for the key is its owner's alone, like the key.
        let mut folder = std::fs::DirBuilder::new();
        folder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
        folder.create(dir).map_err(fail)?;
    }
    write_private(path, key.as_bytes()).map_err(fail)?;
    tracing::warn!(path = %path.display(), "generated a new signing key");
    Ok(key.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_and_its_new_folder_are_the_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".flowgate/signing.key");
        let key = super::generate_key_file(&path).unwrap();
        assert_eq!(key.len(), 64, "32 random bytes, hex");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert!(
            super::generate_key_file(&path).is_err(),
            "never overwritten"
        );
    }
}
