//! Where journals and library copies live on disk, and how they are written durably.

use super::{JournalData, JournalError, TargetIdentity};
use crate::error::hex;
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The state directory: `$RPATCH_STATE_DIR`, else `/var/lib/rpatch` for root, else
/// `$XDG_STATE_HOME/rpatch` (default `~/.local/state/rpatch`).
///
/// Journals are private (0600). The directory itself is 0711 and `libs/` is 0755, because the
/// *target* opens the library copy with its own credentials, which may not be rpatch's.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state directory chosen from the environment, created if missing.
    pub fn from_env() -> Result<Self, JournalError> {
        let root = if let Some(dir) = std::env::var_os("RPATCH_STATE_DIR") {
            PathBuf::from(dir)
        } else if nix::unistd::geteuid().is_root() {
            PathBuf::from("/var/lib/rpatch")
        } else if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
            PathBuf::from(dir).join("rpatch")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".local/state/rpatch")
        };
        Self::at(root)
    }

    /// A state directory at `root`, created if missing.
    pub fn at(root: PathBuf) -> Result<Self, JournalError> {
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711)).map_err(io_err(&root))?;
        Ok(Self { root })
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Journal file of a PID.
    pub fn journal_path(&self, pid: i32) -> PathBuf {
        self.root.join(format!("{pid}.json"))
    }

    /// Copies `library` to `libs/<sha256>.so` (once per content) and returns that path and the hash.
    ///
    /// glibc's dlopen returns the already-loaded object when the file identity (device, inode)
    /// matches, so a rebuilt library at the same path would silently never load; a copy named by
    /// content loads each new content exactly once, and cannot change between hashing and loading.
    pub fn library_copy(&self, library: &Path) -> Result<(PathBuf, String), JournalError> {
        let mut bytes = Vec::new();
        File::open(library)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(library))?;
        self.library_bytes_copy(&bytes)
    }

    /// Stores `bytes` as `libs/<sha256>.so` (once per content) and returns that path and the
    /// hash, like [`Self::library_copy`], for a library rpatch generates itself (a binding shim).
    pub fn library_bytes_copy(&self, bytes: &[u8]) -> Result<(PathBuf, String), JournalError> {
        let hash = hex(&Sha256::digest(bytes));
        let libs = self.root.join("libs");
        fs::create_dir_all(&libs).map_err(io_err(&libs))?;
        fs::set_permissions(&libs, fs::Permissions::from_mode(0o755)).map_err(io_err(&libs))?;
        let dest = libs.join(format!("{hash}.so"));
        if !dest.exists() {
            let tmp = libs.join(format!(".{hash}.{}.tmp", std::process::id()));
            write_durably(&tmp, bytes, 0o444)?;
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            sync_dir(&libs)?;
        }
        Ok((dest, hash))
    }
}

/// The path under which the target can open the library copy `copy` (content hash `hash`).
///
/// The target resolves the path in its own mount namespace: a container, or a service with a
/// private /tmp, may not see rpatch's state directory. Then the copy is placed, once per
/// content, in a directory of the target's own file system (reached through /proc/PID/root):
/// /dev/shm, /tmp or /var/tmp, whichever accepts it.
pub fn library_path_in_target(pid: i32, copy: &Path, hash: &str) -> Result<PathBuf, JournalError> {
    let ns = |p: &str| {
        fs::metadata(p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok()
    };
    let dir = crate::process::proc_dir(pid);
    let root = dir.join("root");
    let same_namespace = ns("/proc/self/ns/mnt").is_some()
        && ns("/proc/self/ns/mnt") == ns(&dir.join("ns/mnt").to_string_lossy());
    if same_namespace || root.join(copy.strip_prefix("/").unwrap_or(copy)).exists() {
        return Ok(copy.to_path_buf());
    }
    let bytes = fs::read(copy).map_err(io_err(copy))?;
    let name = format!("rpatch-{hash}.so");
    let mut last_error = None;
    for dir in ["dev/shm", "tmp", "var/tmp"] {
        let inside = root.join(dir).join(&name);
        if inside.exists() {
            return Ok(Path::new("/").join(dir).join(&name));
        }
        let tmp = root
            .join(dir)
            .join(format!(".{name}.{}", std::process::id()));
        match write_durably(&tmp, &bytes, 0o444)
            .and_then(|()| fs::rename(&tmp, &inside).map_err(io_err(&inside)))
        {
            Ok(()) => return Ok(Path::new("/").join(dir).join(&name)),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| JournalError::Io {
        path: root,
        source: std::io::Error::other("no writable directory in the target's file system"),
    }))
}

/// The exclusive lock on one target's journal (an `flock` on `<pid>.lock`): every rpatch run on
/// a target takes it before anything else, so concurrent runs queue up instead of interleaving
/// or seeing each other's ptrace.
#[derive(Debug)]
pub struct TargetLock {
    pid: i32,
    file: File,
}

impl StateDir {
    /// Takes the lock of `pid`'s journal, waiting while another run holds it.
    pub fn lock(&self, pid: i32) -> Result<TargetLock, JournalError> {
        let lock_path = self.journal_path(pid).with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        file.lock().map_err(io_err(&lock_path))?;
        Ok(TargetLock { pid, file })
    }
}

/// An open, locked journal. The lock is held until drop so concurrent rpatch runs against one
/// target queue up instead of interleaving.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    _lock: File,
    /// The journal content; change it, then `save`.
    pub data: JournalData,
}

impl Journal {
    /// Opens (or starts) the journal of `identity.pid`, refusing one that belongs to another
    /// process with the same PID. Takes the target's lock first.
    pub fn open(state: &StateDir, identity: &TargetIdentity) -> Result<Self, JournalError> {
        let lock = state.lock(identity.pid)?;
        Self::open_locked(lock, state, identity)
    }

    /// Like [`Self::open`], with the target's lock already taken.
    pub fn open_locked(
        lock: TargetLock,
        state: &StateDir,
        identity: &TargetIdentity,
    ) -> Result<Self, JournalError> {
        assert_eq!(lock.pid, identity.pid, "the lock of another target");
        let path = state.journal_path(identity.pid);
        let data = match fs::read(&path) {
            Ok(bytes) => {
                let data: JournalData =
                    serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if data.identity.start_time != identity.start_time
                    || data.identity.boot_id != identity.boot_id
                    || data.identity.pid != identity.pid
                {
                    return Err(JournalError::OtherProcess {
                        path,
                        pid: identity.pid,
                        recorded_start: data.identity.start_time,
                        recorded_boot: data.identity.boot_id,
                        actual_start: identity.start_time,
                    });
                }
                data
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                JournalData::new(identity.clone())
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(Self {
            path,
            _lock: lock.file,
            data,
        })
    }

    /// Path of the journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the journal atomically and durably (temp file, fsync, rename, fsync directory).
    pub fn save(&self) -> Result<(), JournalError> {
        let text = serde_json::to_vec_pretty(&self.data).expect("journal serialises");
        let tmp = self.path.with_extension("json.tmp");
        write_durably(&tmp, &text, 0o600)?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), JournalError> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JumpMethod, PatchRecord, PatchState};

    fn identity(start: u64) -> TargetIdentity {
        TargetIdentity {
            pid: 42,
            start_time: start,
            boot_id: "b".into(),
            exe: "/bin/x".into(),
        }
    }

    #[test]
    fn journal_round_trips_and_refuses_other_process() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        {
            let mut j = Journal::open(&state, &identity(7)).unwrap();
            j.data.patches.push(PatchRecord {
                id: 1,
                group: 1,
                function: "f".into(),
                module: "/bin/x".into(),
                module_build_id: Some("ab12".into()),
                function_address: 0x1000,
                address: 0x1004,
                original: vec![0x55, 0x48],
                new: vec![0xe9, 1, 2, 3, 4],
                replacement_name: "f".into(),
                replacement: 0x2000,
                replacement_size: 16,
                library: "/l.so".into(),
                loaded_from: "/s/l.so".into(),
                library_sha256: "00".into(),
                method: JumpMethod::Direct,
                island_slot: None,
                state: PatchState::Applied,
                created: 0,
                rolled_back: None,
            });
            j.save().unwrap();
        }
        let j = Journal::open(&state, &identity(7)).unwrap();
        assert_eq!(j.data.patches[0].original, vec![0x55, 0x48]);
        assert_eq!(j.data.next_id(), 2);
        drop(j);
        assert!(matches!(
            Journal::open(&state, &identity(8)),
            Err(JournalError::OtherProcess { .. })
        ));
    }

    #[test]
    fn library_copy_is_content_addressed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().join("s")).unwrap();
        let lib = dir.path().join("a.so");
        fs::write(&lib, b"one").unwrap();
        let (p1, h1) = state.library_copy(&lib).unwrap();
        let (p2, _) = state.library_copy(&lib).unwrap();
        assert_eq!(p1, p2);
        fs::write(&lib, b"two").unwrap();
        let (p3, h3) = state.library_copy(&lib).unwrap();
        assert_ne!(p1, p3);
        assert_ne!(h1, h3);
        assert_eq!(fs::read(p1).unwrap(), b"one");
    }
}
