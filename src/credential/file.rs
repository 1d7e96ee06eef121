//! Credentials files the proxy reads and rewrites (a subscription's tokens): owner-only
//! checks, and the atomic write-back that keeps a rotated refresh token from being lost.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// What a credentials file read found.
pub enum Read {
    /// The file does not exist (yet): nobody has signed in.
    Missing,
    Text(String),
}

/// Bits that must be clear on a credentials file: nobody but its owner may read it.
const GROUP_OTHER: u32 = 0o077;
/// Refreshed tokens are written with owner-only access.
const FILE_MODE: u32 = 0o600;
/// A directory the proxy creates for a state file.
const DIR_MODE: u32 = 0o700;

/// Reads `path` if it exists, refusing anything but a regular file readable by its owner
/// only. Errors name the path, never the content.
pub fn read_private(path: &Path) -> Result<Read, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.mode() & GROUP_OTHER != 0 {
        return Err(format!(
            "{} is readable by group or others (mode {:o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    std::fs::read_to_string(path)
        .map(Read::Text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Replaces `path` with `text` atomically: a temporary file in the same directory (mode
/// 0600), fsync, rename, fsync of the directory. A crash leaves the old file or the new
/// one, never half of either. A missing directory is created with mode 0700.
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let shown = path.display();
    let mut tmp = tempfile::Builder::new()
        .prefix(".paude-proxy-")
        .permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
        .map_err(|e| format!("cannot write beside {shown}: {e}"))?;
    tmp.write_all(text.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write beside {shown}: {e}"))?;
    tmp.persist(path)
        .map_err(|e| format!("cannot replace {shown}: {}", e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_files_are_read_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.json");
        assert!(matches!(read_private(&path), Ok(Read::Missing)));
        write_private(&path, "{\"a\":1}").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(matches!(read_private(&path), Ok(Read::Text(t)) if t == "{\"a\":1}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_private(&path).err().unwrap();
        assert!(err.contains("group or others"), "{err}");
        assert!(!err.contains("\"a\""), "{err}");
        assert!(read_private(dir.path()).is_err(), "a directory is refused");
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("auth.json");
        write_private(&path, "x").unwrap();
        let mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
