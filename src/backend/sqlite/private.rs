//! The database file holds webhook signing secrets and run payloads, so it
//! and everything SQLite makes beside it are its owner's alone: the folder
//! `0700` when made here, the file `0600` (SQLite gives its `-wal` and
//! `-shm` files the database file's mode), a backup copy `0600`. Files
//! left readable by others by an earlier version are tightened at open.
//!
//! A folder every account can write (`o+w`, such as `/tmp`) is refused:
//! whoever can create files there could plant a readable `-wal` for SQLite
//! to reuse, or swap the files. A group-writable one trusts its group (a
//! Kubernetes volume with an `fsGroup` is `2775`).
//! The checks apply to the file a symlink at the path leads to, since
//! SQLite puts its `-wal` and `-shm` beside that one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

/// Makes the database's folder, checks that nobody else can write it,
/// opens (or creates) the file and tightens what was left readable; the
/// problem as a sentence for the operator otherwise.
pub(super) fn prepare(path: &Path) -> Result<File, String> {
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    create_folder(folder).map_err(|e| format!("cannot create its folder: {e}"))?;
    only_owner_writes(folder)?;
    // Created here, not by SQLite, so that it is the owner's alone.
    let file = open_file(path).map_err(|e| format!("cannot open it: {e}"))?;
    // A symlink at the path: SQLite works beside its target.
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot resolve it: {e}"))?;
    if let Some(real_folder) = real.parent() {
        only_owner_writes(real_folder)?;
    }
    tighten(&real).map_err(|e| format!("cannot make it private: {e}"))?;
    Ok(file)
}

/// Fails when every account may create or rename files in `folder`.
fn only_owner_writes(folder: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        let mode = std::fs::metadata(folder)
            .map_err(|e| format!("cannot read its folder {}: {e}", folder.display()))?
            .permissions()
            .mode();
        if mode & 0o002 != 0 {
            return Err(format!(
                "its folder {} is writable by every account (mode {:o}), which could then read the database: use a folder only its owner writes (chmod o-w)",
                folder.display(),
                mode & 0o7777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = folder;
    Ok(())
}

/// Makes `folder` and its missing parents; those made here are `0700`.
fn create_folder(folder: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(folder)
}

/// Opens the database file for reading and writing, creating it `0600`.
fn open_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).read(true).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

/// Creates `path` as a new empty `0600` file, open for writing; fails if
/// anything is there, a symlink included.
pub(super) fn create_new_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create_new(true).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)
}

/// Takes group and other permissions off the database file and its `-wal`
/// and `-shm` files where they have any.
fn tighten(path: &Path) -> io::Result<()> {
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

/// An empty `0600` file in the database's own folder for `VACUUM INTO`
/// to fill, removed when dropped.
pub(super) struct Staging(PathBuf);

impl Staging {
    /// A new staging file beside the database at `db`.
    pub(super) fn beside(db: &Path) -> io::Result<Self> {
        let mut name = std::fs::canonicalize(db)?.into_os_string();
        name.push(format!(".backup-{}", uuid::Uuid::new_v4().simple()));
        let path = PathBuf::from(name);
        create_new_file(&path)?;
        Ok(Self(path))
    }

    /// Where it is.
    pub(super) fn path(&self) -> &Path {
        &self.0
    }

    /// Copies what it holds into `out` and syncs it to disk.
    pub(super) fn copy_into(&self, out: &mut File) -> io::Result<()> {
        let mut copy = File::open(&self.0)?;
        io::copy(&mut copy, out)?;
        out.sync_all()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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

    #[test]
    fn a_folder_others_can_write_is_refused_also_behind_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let problem = prepare(&shared.join("flowgate.db")).unwrap_err();
        assert!(problem.contains("writable by every account"), "{problem}");
        assert!(
            !shared.join("flowgate.db").exists(),
            "nothing is created there"
        );
        // A symlink from a private folder to a file in the shared one.
        let private = dir.path().join("private");
        create_folder(&private).unwrap();
        std::fs::write(shared.join("x.db"), b"").unwrap();
        std::os::unix::fs::symlink(shared.join("x.db"), private.join("flowgate.db")).unwrap();
        let problem = prepare(&private.join("flowgate.db")).unwrap_err();
        assert!(problem.contains("writable by every account"), "{problem}");
        // The owner's own folder is fine.
        let file = prepare(&private.join("other.db"));
        assert!(file.is_ok(), "{:?}", file.err());
        assert_eq!(mode(&private.join("other.db")), 0o600);
    }

    #[test]
    fn a_staging_copy_lives_beside_the_database_and_goes_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("flowgate.db");
        std::fs::write(&db, b"").unwrap();
        let staging = Staging::beside(&db).unwrap();
        let path = staging.path().to_owned();
        let folder = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(path.parent(), Some(folder.as_path()));
        assert_eq!(mode(&path), 0o600);
        std::fs::write(&path, b"copy").unwrap();
        let mut out = create_new_file(&dir.path().join("out.db")).unwrap();
        staging.copy_into(&mut out).unwrap();
        drop(staging);
        assert!(!path.exists());
        assert_eq!(std::fs::read(dir.path().join("out.db")).unwrap(), b"copy");
    }
}
