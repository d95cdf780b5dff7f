//! The database file holds webhook signing secrets and run payloads, so it
//! and everything SQLite makes beside it are its owner's alone: the folder
//! `0700` when made here, the file `0600` (SQLite gives its `-wal` and
//! `-shm` files the database file's mode), a backup copy `0600`. Files
//! left readable by others by an earlier version are tightened at open.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Makes `folder` and its missing parents; those made here are `0700`.
pub(super) fn create_folder(folder: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(folder)
}

/// Opens the database file for reading and writing, creating it `0600`.
pub(super) fn open_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).read(true).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

/// Creates `path` as a new empty `0600` file; fails if anything is there.
pub(super) fn create_new_file(path: &Path) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).map(drop)
}

/// Takes group and other permissions off the database file and its `-wal`
/// and `-shm` files where they have any.
pub(super) fn tighten(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        let mode = match std::fs::metadata(file) {
            Ok(meta) if meta.is_file() => meta.permissions().mode(),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode & 0o700))?;
            tracing::info!(file = %file.display(), "database file made private to its owner (0600)");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_folders_are_the_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("a/b");
        create_folder(&folder).unwrap();
        assert_eq!(mode(&folder), 0o700);
        let db = folder.join("flowgate.db");
        open_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        let copy = folder.join("copy.db");
        create_new_file(&copy).unwrap();
        assert_eq!(mode(&copy), 0o600);
        assert!(
            create_new_file(&copy).is_err(),
            "an existing file is never reused"
        );
    }

    #[test]
    fn readable_files_left_by_others_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("flowgate.db");
        for name in ["flowgate.db", "flowgate.db-wal"] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        tighten(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.path().join("flowgate.db-wal")), 0o600);
    }
}
