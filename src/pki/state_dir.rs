//! The per-cluster state directory: the only local state flatstack keeps, and it holds only
//! secrets (CAs, keys, the bootstrap token, kubeconfigs). Directories are 0700 and secret
//! files 0600; a directory or key file anyone else could read is refused, not repaired.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::PkiError;

/// A cluster's state directory, checked for safe permissions.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

/// Bits no one but the owner may hold on the state directory and its secret files.
const GROUP_OR_OTHER: u32 = 0o077;

impl StateDir {
    /// The default location: `$XDG_DATA_HOME/flatstack/<cluster>` (or `~/.local/share/...`).
    pub(crate) fn default_path(cluster: &str) -> Result<PathBuf, PkiError> {
        let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(home) => PathBuf::from(home).join(".local/share"),
                None => return Err(PkiError::NoHome),
            },
        };
        Ok(base.join("flatstack").join(cluster))
    }

    /// Opens the directory if it exists with safe permissions.
    pub(crate) fn open_existing(path: &Path) -> Result<Option<StateDir>, PkiError> {
        match fs::metadata(path) {
            Ok(meta) => {
                check_private_dir(path, &meta)?;
                Ok(Some(StateDir {
                    path: path.to_path_buf(),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PkiError::io("read", path, source)),
        }
    }

    /// Opens the directory, creating it (and missing parents) with mode 0700.
    pub fn open_or_create(path: &Path) -> Result<StateDir, PkiError> {
        if let Some(dir) = StateDir::open_existing(path)? {
            return Ok(dir);
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|source| PkiError::io("create", path, source))?;
        // A pre-existing parent keeps its mode; the directory itself must be private.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|source| PkiError::io("set permissions on", path, source))?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Reads a secret file, refusing one that others could read.
    pub(crate) fn read_secret(&self, name: &str) -> Result<String, PkiError> {
        let path = self.join(name);
        let meta = fs::metadata(&path).map_err(|source| PkiError::io("read", &path, source))?;
        if meta.mode() & GROUP_OR_OTHER != 0 {
            return Err(PkiError::LoosePermissions {
                path,
                mode: meta.mode() & 0o7777,
                wanted: 0o600,
            });
        }
        fs::read_to_string(&path).map_err(|source| PkiError::io("read", &path, source))
    }

    /// Reads a public file (certificates).
    pub(crate) fn read_public(&self, name: &str) -> Result<String, PkiError> {
        let path = self.join(name);
        fs::read_to_string(&path).map_err(|source| PkiError::io("read", &path, source))
    }

    /// Writes a file atomically (temporary file, fsync, rename) with the given mode.
    pub(crate) fn write(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
    ) -> Result<PathBuf, PkiError> {
        write_atomically(&self.join(name), contents, mode)?;
        Ok(self.join(name))
    }
}

/// One writer per cluster on this machine: an exclusive lock on `lock` in the state
/// directory, held by every command that changes the cluster and released with the process
/// (the kernel drops it even when the process is killed).
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    /// The state directory, when it was created for this lock: removed again on release if
    /// nothing but the lock was written to it, so a command that refuses leaves nothing.
    created: Option<PathBuf>,
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let Some(dir) = &self.created else {
            return;
        };
        let only_the_lock = fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .all(|entry| entry.file_name() == "lock")
        });
        if only_the_lock {
            let _ = fs::remove_file(dir.join("lock"));
            let _ = fs::remove_dir(dir);
        }
    }
}

impl StateDir {
    /// Opens the state directory at `path`, creating it if needed, and takes the cluster's
    /// writer lock for `command`.
    pub(crate) fn open_locked(
        path: &Path,
        command: &str,
    ) -> Result<(StateDir, WriterLock), PkiError> {
        let (dir, created) = match StateDir::open_existing(path)? {
            Some(dir) => (dir, false),
            None => (StateDir::open_or_create(path)?, true),
        };
        let mut lock = dir.lock_for(command)?;
        lock.created = created.then(|| path.to_path_buf());
        Ok((dir, lock))
    }

    /// Takes the cluster's writer lock for `command`, or says who holds it.
    pub(crate) fn lock_for(&self, command: &str) -> Result<WriterLock, PkiError> {
        use std::io::{Read, Seek};
        let path = self.join("lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| PkiError::io("open", &path, source))?;
        match file.try_lock() {
            Ok(()) => {
                let now = time::OffsetDateTime::now_utc();
                let holder = format!(
                    "pid {}, `flatstack {command}`, since {} {:02}:{:02}:{:02} UTC\n",
                    std::process::id(),
                    now.date(),
                    now.hour(),
                    now.minute(),
                    now.second()
                );
                file.set_len(0)
                    .and_then(|()| file.rewind())
                    .and_then(|()| file.write_all(holder.as_bytes()))
                    .map_err(|source| PkiError::io("write", &path, source))?;
                Ok(WriterLock {
                    _file: file,
                    created: None,
                })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                Err(PkiError::Busy {
                    path,
                    holder: holder.trim().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(source)) => Err(PkiError::io("lock", &path, source)),
        }
    }
}

/// Writes `contents` to `path` so that readers see the old file or the whole new one.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = parent.join(format!(".{file_name}.tmp"));
    let result = (|| {
        let _ = fs::remove_file(&temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        File::open(parent)?.sync_all()
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&temporary);
        PkiError::io("write", path, source)
    })
}

fn check_private_dir(path: &Path, meta: &fs::Metadata) -> Result<(), PkiError> {
    if !meta.is_dir() {
        return Err(PkiError::NotADirectory(path.to_path_buf()));
    }
    if meta.mode() & GROUP_OR_OTHER != 0 {
        return Err(PkiError::LoosePermissions {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
            wanted: 0o700,
        });
    }
    Ok(())
}
