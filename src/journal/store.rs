//! Where journals live on disk, and how they are written durably.
//!
//! Root's journals decide what rpatch writes into processes (a rollback restores the bytes a
//! journal holds), so a state directory someone else could write is refused (see
//! [`StateDir::at`]), and every file in it is opened relative to the directory's fd, never
//! following a symlink; temporary files are created exclusively, and a journal's spare (see
//! [`StateDir::stage_journal`]) must be a regular file with no other link.

use super::{JournalData, JournalError, TargetIdentity};
use crate::files;
use crate::process::ExecImage;
use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, openat, renameat, renameat2};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn errno_err(path: &Path) -> impl FnOnce(Errno) -> JournalError + '_ {
    move |e| JournalError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// The largest journal file rpatch reads.
const MAX_JOURNAL_SIZE: u64 = 64 << 20;

/// The prefix of the image index's entries (see [`StateDir::index_image`]).
const IMAGE_INDEX_PREFIX: &str = "image-";

/// The file saying every journal in the directory is in the image index.
const IMAGE_INDEX_STAMP: &str = "image-index-v1";

/// The image index's entry for the journal of process `pid` started at `start`, of `image`.
fn image_index_name(image: &ExecImage, pid: i32, start: u64) -> String {
    format!(
        "{IMAGE_INDEX_PREFIX}{}-{pid}-{start}",
        crate::hex::hex(&image.at_random)
    )
}

/// The spare of journal `name` (see [`StateDir::stage_journal`]): a dot file, so no listing
/// takes it for a journal.
fn spare_name(name: &str) -> String {
    format!(".{name}.spare")
}

/// The state directory: `$RPATCH_STATE_DIR`, else `/var/lib/rpatch` for root, else
/// `$XDG_STATE_HOME/rpatch` (default `~/.local/state/rpatch`). Mode 0700; journals 0600.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    dir: Arc<OwnedFd>,
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
        // An operation opens it more than once (its upkeep, then the target's lock): the
        // directory checked and opened last is used again while `root` still names that very
        // directory (one `stat` instead of a checked walk of every component).
        thread_local! {
            static OPENED: std::cell::RefCell<Option<StateDir>> = const { std::cell::RefCell::new(None) };
        }
        let same = |opened: &StateDir| {
            opened.root == root
                && match (fstat(opened.dir.as_fd()), nix::sys::stat::lstat(&root)) {
                    (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
                    _ => false,
                }
        };
        if let Some(opened) = OPENED.with_borrow(|o| o.as_ref().filter(|o| same(o)).cloned()) {
            return Ok(opened);
        }
        let opened = Self::at(root)?;
        OPENED.set(Some(opened.clone()));
        Ok(opened)
    }

    /// A state directory at `root`, created (0700) if missing.
    ///
    /// As root, the directory must be owned by root and writable by no one else, and so must
    /// every directory above it, except that a sticky directory owned by root (`/tmp`) may be
    /// world-writable: nobody else can rename or remove what root owns in it. This is checked
    /// on the directories as opened, one component at a time without following symlinks, before
    /// anything is created or chmod-ed.
    pub fn at(root: PathBuf) -> Result<Self, JournalError> {
        let strict = nix::unistd::geteuid().is_root();
        let dir = open_checked(&root, strict)?;
        Ok(Self {
            root,
            dir: Arc::new(dir),
        })
    }

    /// The directory path.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Journal file of a PID (for messages; files are opened relative to the directory fd).
    pub fn journal_path(&self, pid: i32) -> PathBuf {
        self.root.join(format!("{pid}.json"))
    }

    /// Reads and parses the journal file `name`, `None` when it does not exist.
    fn read_journal(&self, name: &str) -> Result<Option<JournalData>, JournalError> {
        let Some(bytes) = self.read_file(name, MAX_JOURNAL_SIZE)? else {
            return Ok(None);
        };
        self.parse_journal(name, &bytes).map(Some)
    }

    /// Parses the text of the journal file `name`.
    fn parse_journal(&self, name: &str, bytes: &[u8]) -> Result<JournalData, JournalError> {
        serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
            path: self.root.join(name),
            reason: e.to_string(),
        })
    }

    /// The journal of `pid` as saved now, read without its lock (files are replaced atomically,
    /// so what is read is one saved version); `None` when there is none or it cannot be read.
    pub fn peek(&self, pid: i32) -> Option<JournalData> {
        self.read_journal(&format!("{pid}.json")).ok().flatten()
    }

    /// The journal file `name` (one [`StateDir::journals`] listed) as saved now, read without
    /// a lock; `None` when it is gone or cannot be read.
    pub fn journal_named(&self, name: &str) -> Option<JournalData> {
        self.read_journal(name).ok().flatten()
    }

    /// The readable journals recorded for processes of the exec image `image` (current or
    /// retired), with their file names, found through the image index (see
    /// [`StateDir::index_image`]) instead of by reading every journal: a directory keeps the
    /// journal of every process patched since boot, and an attach of a never-patched process
    /// asks this. A directory whose journals were written before the index existed is indexed
    /// once, by reading them all.
    pub fn journals_of_image(&self, image: &ExecImage) -> Vec<(String, JournalData)> {
        let mut names = self.names();
        if !names.iter().any(|n| n == IMAGE_INDEX_STAMP) {
            for (_, data) in self.journals() {
                self.index_image(&data.identity);
            }
            let _ = self.create_empty(IMAGE_INDEX_STAMP);
            names = self.names();
        }
        let prefix = format!("{IMAGE_INDEX_PREFIX}{}-", crate::hex::hex(&image.at_random));
        let indexed: Vec<(i32, u64)> = names
            .iter()
            .filter_map(|n| {
                let (pid, start) = n.strip_prefix(&prefix)?.split_once('-')?;
                Some((pid.parse().ok()?, start.parse().ok()?))
            })
            .collect();
        let mut found = Vec::new();
        for (pid, start) in indexed {
            let retired = format!("retired-{pid}-{start}-");
            let candidates = std::iter::once(format!("{pid}.json")).chain(
                names
                    .iter()
                    .filter(|n| n.starts_with(&retired) && n.ends_with(".json"))
                    .cloned(),
            );
            for name in candidates {
                let Some(data) = self.journal_named(&name) else {
                    continue;
                };
                let id = &data.identity;
                if id.pid == pid && id.start_time == start && id.image.as_ref() == Some(image) {
                    found.push((name, data));
                }
            }
        }
        found
    }

    /// Records in the image index that a journal of `identity` exists: an empty file
    /// `image-HEX-PID-START` (HEX: the image's `AT_RANDOM` bytes), created before the journal
    /// is first written, so no journal of an image is ever missing from it. Not made durable:
    /// the index, like the journals it leads to, matters only while processes of this boot
    /// live. A failure only costs a lookup later (the journal is then not found as a dead
    /// ancestor's).
    pub(crate) fn index_image(&self, identity: &TargetIdentity) {
        if let Some(image) = &identity.image {
            let _ = self.create_empty(&image_index_name(image, identity.pid, identity.start_time));
        }
    }

    /// Creates the empty file `name` (0600) unless it exists.
    fn create_empty(&self, name: &str) -> Result<(), Errno> {
        match openat(
            self.dir.as_fd(),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(_) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every readable journal in the directory, current (`PID.json`) and retired
    /// (`retired-*.json`), with its file name. Unreadable or corrupt files are skipped.
    pub fn journals(&self) -> Vec<(String, JournalData)> {
        // Listed through the directory as opened (its fd), like every file in it.
        self.names()
            .into_iter()
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .filter_map(|n| {
                let data = self.journal_named(&n)?;
                Some((n, data))
            })
            .collect()
    }

    /// Moves the journal `name` (recorded for `identity`) aside as
    /// `retired-PID-START-IMAGE.json`, durably: the image it describes is no longer the one
    /// its process runs, but children forked from it may still hold its patches.
    fn retire(&self, name: &str, identity: &TargetIdentity) -> Result<(), JournalError> {
        let image = match &identity.image {
            Some(image) => image.short(),
            None => format!("{:x}", super::now_secs()),
        };
        let retired = format!(
            "retired-{}-{}-{image}.json",
            identity.pid, identity.start_time
        );
        let path = self.root.join(&retired);
        renameat(self.dir.as_fd(), name, self.dir.as_fd(), retired.as_str())
            .map_err(errno_err(&path))?;
        nix::unistd::fsync(self.dir.as_fd()).map_err(errno_err(&self.root))
    }

    /// Deletes what no live process can still need, and returns the names of the journals
    /// deleted:
    ///
    /// - every retired journal (`retired-*.json`, see [`StateDir::retire`]) whose image no live
    ///   process runs. A retired journal describes an exec image its process left (or a dead
    ///   process whose PID was reused); only a process running that very image — a child forked
    ///   before the exec that has not exec'd itself — holds its patches and may adopt them from
    ///   it. Once no live process runs the image (or the journal is of another boot, or
    ///   recorded no image, which no adoption matches), none ever will: a new process of an
    ///   image is only ever forked from a live one;
    /// - with `exited`, the journal of a process that exited (no `/proc/PID`), on the same
    ///   condition, with its lock file and spare (see [`StateDir::stage_journal`]), and the
    ///   lock file and spare of an exited process that has no journal (an attach that failed).
    ///   Without this every process ever patched (each restart of a service `rpatch watch`
    ///   patches again) left its files behind, and `status --all` and `watch`, which read every
    ///   journal, and every operation, which lists the directory (twice), slowed down with
    ///   them. Those (and the manifest operations) ask for it; an
    ///   operation on one process does it once the directory holds [`PRUNE_EXITED_AT`] journals:
    ///   knowing whether an image is still run reads every process's executable (0.3–1 ms),
    ///   which an attach should not pay for each process that exited before it, but may once for
    ///   dozens.
    ///
    /// Each is checked again and deleted under its process's lock (the lock an adoption from it
    /// takes), tried without waiting: one whose lock is busy is left for the next time. A lock
    /// file is unlinked while held; [`StateDir::lock`] takes a lock again when the file it
    /// locked was unlinked meanwhile. Call it holding no target's lock. Files that cannot be
    /// read are left alone. Journals of live processes are never touched (one of a dead process
    /// whose PID a live one has now is retired when that PID is next opened).
    pub fn prune(&self, exited: bool) -> Vec<String> {
        let names = self.names();
        let journals = names
            .iter()
            .filter(|n| journal_pid(n).is_some() || retired_pid(n).is_some())
            .count();
        let exited = exited || journals >= PRUNE_EXITED_AT;
        // The journals that may go: (name, pid, whether it is a process's current journal).
        let mut candidates = Vec::new();
        for name in &names {
            let current = match (retired_pid(name), journal_pid(name)) {
                (Some(pid), _) => (pid, false),
                (None, Some(pid)) if exited && !process_exists(pid) => (pid, true),
                _ => continue,
            };
            if let Ok(Some(data)) = self.read_journal(name) {
                candidates.push((name, current, data));
            }
        }
        let mut deleted = Vec::new();
        if !candidates.is_empty() {
            // Which of their images live processes run, read once for all of them. An image
            // none runs now never runs again; one run now may stop, which only keeps its
            // journal longer.
            let run = super::ImagesRun::of(candidates.iter().map(|(_, _, d)| &d.identity));
            for (name, (pid, current), _) in candidates {
                // Needed while its image runs, and (a current one) while a process has the PID.
                let needed = |d: &JournalData| {
                    run.still_run(&d.identity) || (current && process_exists(pid))
                };
                let unneeded = |d: &JournalData| !needed(d);
                if let Some(lock) = self.delete_under_lock(name, pid, unneeded) {
                    if current {
                        self.unlink_lock(pid, lock);
                    }
                    deleted.push(name.clone());
                }
            }
        }
        if exited {
            self.prune_orphan_locks(&names);
        }
        deleted
    }

    /// Unlinks the lock files and spares (among `names`, the directory's listing) of exited
    /// processes that have no journal, each under its lock taken without waiting (see
    /// [`StateDir::prune`]).
    fn prune_orphan_locks(&self, names: &[String]) {
        let listed: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        for name in names {
            let Some(pid) = lock_pid(name) else {
                continue;
            };
            let journal = format!("{pid}.json");
            if listed.contains(journal.as_str()) || process_exists(pid) {
                continue;
            }
            let Ok(lock) = self.lock_file(name) else {
                continue;
            };
            if lock.try_lock().is_ok() && !process_exists(pid) && !self.has(&journal) {
                self.remove(&spare_name(&journal));
                self.unlink_lock(pid, lock);
            }
        }
    }

    /// Deletes the journal `name` (and its image index entry) when, read under the lock of
    /// `pid` taken without waiting, `unneeded` says so; returns the lock, still held.
    fn delete_under_lock(
        &self,
        name: &str,
        pid: i32,
        unneeded: impl Fn(&JournalData) -> bool,
    ) -> Option<File> {
        let lock = self.lock_file(&format!("{pid}.lock")).ok()?;
        lock.try_lock().ok()?;
        let data = self.read_journal(name).ok().flatten().filter(&unneeded)?;
        unlinkat(self.dir.as_fd(), name, UnlinkatFlags::NoRemoveDir).ok()?;
        self.remove(&spare_name(name));
        let id = &data.identity;
        if let Some(image) = &id.image {
            self.remove(&image_index_name(image, id.pid, id.start_time));
        }
        Some(lock)
    }

    /// Whether the directory has an entry `name` (an error counts as one: nothing is deleted on
    /// a guess).
    fn has(&self, name: &str) -> bool {
        !matches!(
            nix::sys::stat::fstatat(
                self.dir.as_fd(),
                name,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW
            ),
            Err(Errno::ENOENT)
        )
    }

    /// Unlinks `pid`'s lock file while `held` (its lock, taken) is still open.
    fn unlink_lock(&self, pid: i32, held: File) {
        self.remove(&format!("{pid}.lock"));
        drop(held);
    }

    /// Unlinks `name` from the directory, best effort: what cannot be removed now (already
    /// gone, or an error) is no reason to fail, and a later prune tries again.
    fn remove(&self, name: &str) {
        let _ = unlinkat(self.dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
    }

    /// The names of the files in the directory (listed through the directory as opened).
    fn names(&self) -> Vec<String> {
        let listing = format!("/proc/self/fd/{}", self.dir.as_raw_fd());
        std::fs::read_dir(listing)
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Opens `name` in the directory for reading, `None` when it does not exist. A symlink, a
    /// FIFO or a directory there is an error.
    fn read_file(&self, name: &str, cap: u64) -> Result<Option<Vec<u8>>, JournalError> {
        let path = self.root.join(name);
        let fd = match openat(
            self.dir.as_fd(),
            name,
            files::READ_FLAGS | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(errno_err(&path)(e)),
        };
        let file = files::regular(File::from(fd)).map_err(io_err(&path))?;
        files::read_capped(&file, cap)
            .map(Some)
            .map_err(io_err(&path))
    }

    /// Replaces `name` in the directory with `bytes`, atomically: an exclusively created
    /// temporary file renamed over `name`; with `durable`, the file is fsynced before the rename
    /// and the directory after it.
    fn replace_file(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        durable: bool,
    ) -> Result<(), JournalError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.root.join(name);
        let (tmp, fd) = loop {
            let tmp = format!(
                ".{name}.{}.{}.tmp",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            match openat(
                self.dir.as_fd(),
                tmp.as_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(errno_err(&self.root.join(&tmp))(e)),
            }
        };
        let mut file = File::from(fd);
        let written = file
            .write_all(bytes)
            .and_then(|()| if durable { file.sync_all() } else { Ok(()) })
            .map_err(io_err(&path))
            .and_then(|()| {
                renameat(self.dir.as_fd(), tmp.as_str(), self.dir.as_fd(), name)
                    .map_err(errno_err(&path))
            });
        if written.is_err() {
            self.remove(&tmp);
            return written;
        }
        if !durable {
            return Ok(());
        }
        nix::unistd::fsync(self.dir.as_fd()).map_err(errno_err(&self.root))
    }

    /// The first half of a journal save: the spare is overwritten in place with `bytes` and,
    /// with `durable`, its write to the disk is started (`sync_file_range`, which does not
    /// wait), so that the device writes it while rpatch reads unwind tables; the journal is not
    /// touched yet. Saving by way of the spare, where a temporary file renamed over the journal
    /// would free the old one's blocks at every save (on ext4 mounted with `discard` and no
    /// journal, a synchronous discard request; measured: 130 µs per save instead of 450 µs, 620
    /// µs instead of 800 µs fsynced), creates and frees no file. The spare is only written under
    /// the target's lock, and is never read: a run killed while writing it leaves the journal
    /// whole. Where the spare cannot be used, the whole save is done here by
    /// [`Self::replace_file`].
    fn stage_journal(
        &self,
        name: &str,
        bytes: Vec<u8>,
        durable: bool,
    ) -> Result<Staged, JournalError> {
        let spare = spare_name(name);
        let Ok(file) = self.open_spare(&spare) else {
            self.replace_file(name, &bytes, 0o600, durable)?;
            return Ok(Staged::Placed);
        };
        file.write_all_at(&bytes, 0)
            .and_then(|()| file.set_len(bytes.len() as u64))
            .map_err(io_err(&self.root.join(name)))?;
        if durable {
            // A hint: an error here leaves the whole write to the fsync of `commit_staged`.
            // SAFETY: sync_file_range takes an fd we own and plain integers.
            unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        }
        Ok(Staged::Spare {
            file,
            spare,
            name: name.to_string(),
            bytes,
        })
    }

    /// The second half of a journal save: the staged spare is fsynced (with `durable`; its
    /// data is mostly on the disk by now), exchanged with the journal (`RENAME_EXCHANGE`), so
    /// the journal's previous file becomes the next spare, and the directory fsynced (with
    /// `durable`). The order is a whole save's: the content is durable before the name points
    /// to it. A filesystem without `RENAME_EXCHANGE` gets [`Self::replace_file`].
    fn commit_staged(&self, staged: Staged, durable: bool) -> Result<(), JournalError> {
        let Staged::Spare {
            file,
            spare,
            name,
            bytes,
        } = staged
        else {
            return Ok(());
        };
        let path = self.root.join(&name);
        if durable {
            file.sync_all().map_err(io_err(&path))?;
        }
        let dir = self.dir.as_fd();
        match renameat2(
            dir,
            spare.as_str(),
            dir,
            name.as_str(),
            RenameFlags::RENAME_EXCHANGE,
        ) {
            Ok(()) => {}
            // No journal yet: the spare becomes it.
            Err(Errno::ENOENT) => {
                renameat(dir, spare.as_str(), dir, name.as_str()).map_err(errno_err(&path))?;
            }
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                self.remove(&spare);
                return self.replace_file(&name, &bytes, 0o600, durable);
            }
            Err(e) => return Err(errno_err(&path)(e)),
        }
        if !durable {
            return Ok(());
        }
        nix::unistd::fsync(dir).map_err(errno_err(&self.root))
    }

    /// Opens (or creates, 0600) a journal's spare for writing: never through a symlink, and
    /// only a regular file with one link.
    fn open_spare(&self, spare: &str) -> std::io::Result<File> {
        let fd = openat(
            self.dir.as_fd(),
            spare,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        let (file, meta) = files::regular_with_metadata(File::from(fd))?;
        if meta.nlink() != 1 {
            return Err(std::io::Error::other("a spare with other links"));
        }
        Ok(file)
    }

    /// The program-knowledge cache of this state directory (`crate::cache`), disabled when its
    /// directory cannot be used: a cache only saves time.
    pub fn cache(&self) -> crate::cache::Cache {
        self.cache_dir()
            .map_or_else(|_| crate::cache::Cache::disabled(), crate::cache::Cache::at)
    }

    /// The program-knowledge cache's directory, `cache/` in the state directory: created (0700)
    /// when missing, opened without following a symlink, and refused unless it is a directory
    /// owned by rpatch's user that no one else may write.
    pub fn cache_dir(&self) -> std::io::Result<OwnedFd> {
        const NAME: &str = "cache";
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(self.dir.as_fd(), NAME, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(self.dir.as_fd(), NAME, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                openat(self.dir.as_fd(), NAME, flags, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        let st = fstat(&fd)?;
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the cache directory is not rpatch's own",
            ));
        }
        Ok(fd)
    }

    /// Opens (creating it, 0600) the lock file `name` in the directory.
    fn lock_file(&self, name: &str) -> Result<File, JournalError> {
        let path = self.root.join(name);
        let fd = openat(
            self.dir.as_fd(),
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno_err(&path))?;
        files::regular(File::from(fd)).map_err(io_err(&path))
    }
}

/// How many journals (current and retired) the directory holds before an operation on one
/// process prunes those of exited processes too (see [`StateDir::prune`]): with 4,000 files,
/// listing the directory took ~1 ms, twice per operation.
pub const PRUNE_EXITED_AT: usize = 64;

/// The PID in the name of a process's journal (`PID.json`).
fn journal_pid(name: &str) -> Option<i32> {
    name.strip_suffix(".json")?.parse().ok()
}

/// The PID in the name of a lock file (`PID.lock`).
fn lock_pid(name: &str) -> Option<i32> {
    name.strip_suffix(".lock")?.parse().ok()
}

/// Whether `/proc/PID` exists (a process, a zombie, or a thread of one): while it does, files
/// named after the PID are left alone.
fn process_exists(pid: i32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The PID in the name of a retired journal (`retired-PID-START-IMAGE.json`).
fn retired_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("retired-")?.strip_suffix(".json")?;
    rest.split('-').next()?.parse().ok()
}

/// Opens the directory `root`, creating what is missing (0700), one component at a time from
/// `/` with `O_NOFOLLOW` (a symlink met on the way is refused); with `strict`, every directory
/// on the way must be safe for root (see [`StateDir::at`]). The directory itself ends up 0700.
fn open_checked(root: &Path, strict: bool) -> Result<OwnedFd, JournalError> {
    let absolute = std::path::absolute(root).map_err(io_err(root))?;
    // Symlinks in the part that exists are resolved first; what is walked is the real path.
    let (existing, missing) = split_existing(&absolute);
    let mut path = std::fs::canonicalize(&existing).map_err(io_err(&existing))?;
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir =
        nix::fcntl::open("/", dir_flags, Mode::empty()).map_err(errno_err(Path::new("/")))?;
    let names: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            _ => None,
        })
        .chain(missing.iter().map(PathBuf::from))
        .collect();
    let last = names.len();
    check_dir(&dir, Path::new("/"), strict, last == 0)?;
    path = PathBuf::from("/");
    for (i, name) in names.iter().enumerate() {
        path.push(name);
        let next = match openat(&dir, name, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                match mkdirat(&dir, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno_err(&path)(e)),
                }
                openat(&dir, name, dir_flags, Mode::empty()).map_err(|e| refusal(&path, e))?
            }
            Err(e) => return Err(refusal(&path, e)),
        };
        check_dir(&next, &path, strict, i + 1 == last)?;
        dir = next;
    }
    let mine = fstat(&dir).map_err(errno_err(&path))?.st_uid == nix::unistd::geteuid().as_raw();
    if mine {
        fchmod(&dir, Mode::from_bits_truncate(0o700)).map_err(errno_err(&path))?;
    }
    Ok(dir)
}

/// A symlink swapped in while walking (ELOOP, ENOTDIR) is a refusal, anything else an I/O error.
fn refusal(path: &Path, e: Errno) -> JournalError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => JournalError::UnsafeStateDir {
            path: path.to_path_buf(),
            reason: "is a symlink or not a directory".into(),
        },
        e => errno_err(path)(e),
    }
}

/// The longest prefix of `path` that exists, and the names below it that do not.
fn split_existing(path: &Path) -> (PathBuf, Vec<std::ffi::OsString>) {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    while std::fs::symlink_metadata(&existing).is_err() {
        match (
            existing.file_name().map(OsStr::to_os_string),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                missing.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    missing.reverse();
    (existing, missing)
}

/// Whether root may keep its journals in (`is_state_dir`) or under the directory `fd`.
fn check_dir(
    fd: &OwnedFd,
    path: &Path,
    strict: bool,
    is_state_dir: bool,
) -> Result<(), JournalError> {
    if !strict {
        return Ok(());
    }
    let st = fstat(fd).map_err(errno_err(path))?;
    let unsafe_dir = |reason: String| JournalError::UnsafeStateDir {
        path: path.to_path_buf(),
        reason,
    };
    if st.st_uid != 0 {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not root",
            st.st_uid
        )));
    }
    let writable = st.st_mode & 0o022;
    let sticky = st.st_mode & 0o1000 != 0;
    if writable != 0 && (is_state_dir || !sticky) {
        return Err(unsafe_dir(format!(
            "is writable by {} (mode {:o})",
            if writable & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            st.st_mode & 0o7777
        )));
    }
    Ok(())
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
    /// Takes the lock of `pid`'s journal, waiting while another run holds it. A lock file
    /// [`StateDir::prune`] unlinked while this run waited for it is no lock any more (a later
    /// run creates a new file): the lock is taken again on the file now at the name.
    pub fn lock(&self, pid: i32) -> Result<TargetLock, JournalError> {
        let lock_name = format!("{pid}.lock");
        let path = self.root.join(&lock_name);
        loop {
            let file = self.lock_file(&lock_name)?;
            file.lock().map_err(io_err(&path))?;
            if fstat(file.as_fd()).map_err(errno_err(&path))?.st_nlink > 0 {
                return Ok(TargetLock { pid, file });
            }
        }
    }
}

/// What opening a journal does with one recorded for another process that had the same PID
/// (the PID was reused, or the journal is of another boot: a state directory outlives reboots,
/// and services often get the same PIDs again). That process is gone, and its patches with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// Refuse it (exit 14): `rollback` and `status` say whose journal it is rather than answer
    /// for a process it does not describe.
    Refuse,
    /// Set it aside and start a new journal: `attach` (and `watch`) must not be stopped by a
    /// journal of a process that no longer exists.
    SetAside,
}

/// An open, locked journal. The lock is held until drop so concurrent rpatch runs against one
/// target queue up instead of interleaving.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: StateDir,
    _lock: File,
    /// The journal content; change it, then `save`.
    pub data: JournalData,
    existed: bool,
    /// Whether the image index has this journal (see [`StateDir::index_image`]).
    indexed: std::cell::Cell<bool>,
}

/// Whether some live process still runs the image a journal of a dead process recorded: a
/// child it forked, which may hold its patches.
fn still_held(recorded: &TargetIdentity) -> bool {
    let live = crate::process::read_stat(recorded.pid, recorded.pid)
        .is_ok_and(|(_, start, _)| start == recorded.start_time);
    !live && super::image_still_run(recorded)
}

impl Journal {
    /// Opens (or starts) the journal of `identity.pid`, refusing one that belongs to another
    /// process with the same PID. Takes the target's lock first.
    #[cfg(test)]
    pub fn open(state: &StateDir, identity: &TargetIdentity) -> Result<Self, JournalError> {
        let lock = state.lock(identity.pid)?;
        Self::open_locked(lock, state, identity, Stale::Refuse)
    }

    /// Opens (or starts) the journal of `identity.pid`, refusing one that belongs to another
    /// process with the same PID; the target's lock is taken already.
    ///
    /// A journal of an earlier exec image of this very process (`execve` keeps PID and start
    /// time) is retired, not used: its records describe an address space that is gone, yet
    /// children forked before the exec may still hold its patches and adopt them from it. For
    /// the same reason the journal of a dead process whose PID was reused is retired rather than
    /// refused while some live process still runs its image.
    ///
    /// A journal of another process that had this PID (its start time or boot differs: that
    /// process is gone) is refused with [`JournalError::OtherProcess`], or, with
    /// [`Stale::SetAside`], retired like one that children may still need (the next prune
    /// deletes it once no live process runs its image).
    pub fn open_locked(
        lock: TargetLock,
        state: &StateDir,
        identity: &TargetIdentity,
        stale: Stale,
    ) -> Result<Self, JournalError> {
        assert_eq!(lock.pid, identity.pid, "the lock of another target");
        let path = state.journal_path(identity.pid);
        let name = format!("{}.json", identity.pid);
        let (data, existed) = match state.read_journal(&name)? {
            Some(data) => {
                let same_process = data.identity.same_process(identity);
                if !same_process && stale == Stale::Refuse && !still_held(&data.identity) {
                    return Err(JournalError::OtherProcess {
                        path,
                        pid: identity.pid,
                        recorded_start: data.identity.start_time,
                        recorded_boot: data.identity.boot_id,
                        actual_start: identity.start_time,
                    });
                }
                if same_process && data.identity.same_image(identity) {
                    let mut data = data;
                    // A journal written before images were recorded learns its image now.
                    data.identity.image = data.identity.image.or(identity.image);
                    (data, true)
                } else {
                    state.retire(&name, &data.identity)?;
                    (JournalData::new(identity.clone()), false)
                }
            }
            None => (JournalData::new(identity.clone()), false),
        };
        Ok(Self {
            path,
            state: state.clone(),
            _lock: lock.file,
            data,
            existed,
            indexed: std::cell::Cell::new(false),
        })
    }

    /// Whether the journal file existed when it was opened: a new journal is where a forked
    /// child adopts what it inherited (see `journal::inherit`).
    pub fn existed(&self) -> bool {
        self.existed
    }

    /// Path of the journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the journal atomically and durably (its spare written and fsynced, exchanged with
    /// it, the directory fsynced; see [`StateDir::commit_staged`]):
    /// for a record made *before* the target is changed (an intent, a rollback intent, slack
    /// bytes about to be written), which must survive whatever the change survives.
    pub fn save(&self) -> Result<(), JournalError> {
        self.begin_save()?.finish()
    }

    /// [`Self::save`] in two steps, so that the disk writes the record while rpatch does
    /// something else that changes nothing in the target (read unwind tables): the content
    /// is written and its write to the disk started now; [`PendingSave::finish`] makes it
    /// durable and puts it in place. Until then the journal on disk is the previous one, and
    /// a pending save dropped unfinished leaves it so. The target must not be changed before
    /// `finish` has returned `Ok`.
    pub fn begin_save(&self) -> Result<PendingSave<'_>, JournalError> {
        Ok(PendingSave {
            journal: self,
            staged: self.stage(true)?,
        })
    }

    /// Writes the journal atomically (the same exchange) without waiting for the disk: for a
    /// record of what memory holds *already* (an intent settled as applied or abandoned, a
    /// rollback done, slack bytes restored), and for the record of bootstrap bytes about to be
    /// written in slack (harmless where they are). Losing it loses nothing: it only survives a
    /// crash of the machine as far as the target does (a journal belongs to one process of one
    /// boot), a run that dies (SIGKILL included) leaves the page cache, and unsettled records
    /// are settled again from memory by [`super::reconcile`].
    pub fn save_settled(&self) -> Result<(), JournalError> {
        let staged = self.stage(false)?;
        self.state.commit_staged(staged, false)
    }

    fn stage(&self, durable: bool) -> Result<Staged, JournalError> {
        if !self.indexed.replace(true) {
            self.state.index_image(&self.data.identity);
        }
        let text = serde_json::to_vec_pretty(&self.data).expect("journal serialises");
        let name = format!("{}.json", self.data.identity.pid);
        self.state.stage_journal(&name, text, durable)
    }
}

/// A journal's content written to its spare, not yet in place (see [`StateDir::stage_journal`]).
enum Staged {
    /// In the spare `spare`, to be exchanged with journal `name`; `bytes` for the fallback.
    Spare {
        file: File,
        spare: String,
        name: String,
        bytes: Vec<u8>,
    },
    /// Already in place (the temporary-file fallback did the whole save).
    Placed,
}

/// A durable save begun by [`Journal::begin_save`]: written, its disk write under way.
#[must_use = "the save is durable, and the journal replaced, only once finished"]
pub struct PendingSave<'j> {
    journal: &'j Journal,
    staged: Staged,
}

impl PendingSave<'_> {
    /// Waits until the content is on the disk, puts it in place of the journal and makes that
    /// durable: from here on the target may be changed.
    pub fn finish(self) -> Result<(), JournalError> {
        self.journal.state.commit_staged(self.staged, true)
    }
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
            image: None,
        }
    }

    /// A journal is replaced by exchanging it with its spare: every save leaves the journal
    /// whole and the spare holding the one before; a spare that is not a plain file of ours (a
    /// symlink planted there) is never written through, and the save still happens.
    #[test]
    fn saves_exchange_the_journal_with_its_spare() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let mut j = Journal::open(&state, &identity(7)).unwrap();
        let spare = dir.path().join(".42.json.spare");
        j.save_settled().unwrap();
        assert!(!spare.exists(), "the first save's spare became the journal");
        j.data.islands.push(crate::journal::Island {
            address: 0x7000,
            size: 4096,
        });
        j.save().unwrap();
        let on_disk = |p: &Path| -> JournalData {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        assert_eq!(on_disk(&dir.path().join("42.json")).islands.len(), 1);
        assert!(
            on_disk(&spare).islands.is_empty(),
            "the spare holds the previous journal"
        );
        j.data.islands.clear();
        j.save_settled().unwrap();
        assert!(on_disk(&dir.path().join("42.json")).islands.is_empty());
        // A symlink at the spare's name: followed by nothing, and the save goes the other way.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"untouched").unwrap();
        std::fs::remove_file(&spare).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &spare).unwrap();
        j.data.islands.push(crate::journal::Island {
            address: 0x9000,
            size: 4096,
        });
        j.save().unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert_eq!(
            on_disk(&dir.path().join("42.json")).islands[0].address,
            0x9000
        );
    }

    /// A durable save begun is not in place until finished: the journal on disk stays the
    /// previous one meanwhile, and stays so when the pending save is dropped unfinished.
    #[test]
    fn a_begun_save_is_in_place_only_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let mut j = Journal::open(&state, &identity(7)).unwrap();
        j.save().unwrap();
        let islands = || -> usize {
            let text = std::fs::read(dir.path().join("42.json")).unwrap();
            serde_json::from_slice::<JournalData>(&text)
                .unwrap()
                .islands
                .len()
        };
        let island = crate::journal::Island {
            address: 0x7000,
            size: 4096,
        };
        j.data.islands.push(island);
        drop(j.begin_save().unwrap());
        assert_eq!(islands(), 0, "dropped unfinished: the journal is untouched");
        let pending = j.begin_save().unwrap();
        assert_eq!(islands(), 0, "not in place before it is finished");
        pending.finish().unwrap();
        assert_eq!(islands(), 1);
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
                loaded: None,
                inherited: None,
                manifest: None,
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

    fn image(byte: u8) -> crate::process::ExecImage {
        crate::process::ExecImage {
            exe_dev: 1,
            exe_inode: 2,
            at_random: [byte; 16],
        }
    }

    /// A journal of an earlier exec image of the same process (same PID and start time) is
    /// moved aside and a new one starts; one written before images were recorded is kept when
    /// the executable path is the same, and learns its image.
    #[test]
    fn another_exec_image_retires_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let legacy = TargetIdentity {
            image: None,
            ..identity(7)
        };
        let mut j = Journal::open(&state, &legacy).unwrap();
        assert!(!j.existed());
        j.data.islands.push(crate::journal::Island {
            address: 0x1000,
            size: 4096,
        });
        j.save().unwrap();
        drop(j);
        let first = TargetIdentity {
            image: Some(image(1)),
            ..identity(7)
        };
        let j = Journal::open(&state, &first).unwrap();
        assert!(j.existed());
        assert_eq!(j.data.islands.len(), 1, "same executable path: kept");
        assert_eq!(j.data.identity.image, Some(image(1)));
        j.save().unwrap();
        drop(j);
        let execed = TargetIdentity {
            image: Some(image(2)),
            ..identity(7)
        };
        let j = Journal::open(&state, &execed).unwrap();
        assert!(!j.existed());
        assert!(j.data.islands.is_empty());
        drop(j);
        let names: Vec<String> = state.journals().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            vec![format!("retired-42-7-{}.json", image(1).short())],
            "the old image's journal is kept aside"
        );
    }

    /// This process's PID, the boot id, its exec image, and an image of the same executable no
    /// process runs (other random bytes).
    fn this_process() -> (
        i32,
        String,
        crate::process::ExecImage,
        crate::process::ExecImage,
    ) {
        let me = std::process::id() as i32;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap()
            .trim()
            .to_string();
        let mine = crate::process::read_image(me).unwrap();
        let gone = crate::process::ExecImage {
            at_random: [0xee; 16],
            ..mine
        };
        (me, boot, mine, gone)
    }

    /// Retired journals go once no live process runs their image: ours (this test process
    /// runs it) stays, as does one whose lock another run holds; one of another boot, or
    /// without an image, goes; current journals are never touched.
    #[test]
    fn retired_journals_go_once_no_process_runs_their_image() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let (me, boot, mine, gone_image) = this_process();
        let write = |pid: i32, boot: &str, image: Option<crate::process::ExecImage>| {
            let identity = TargetIdentity {
                pid,
                start_time: 7,
                boot_id: boot.into(),
                exe: "/bin/x".into(),
                image,
            };
            let data = serde_json::to_vec(&JournalData::new(identity.clone())).unwrap();
            let name = format!("{pid}.json");
            state.replace_file(&name, &data, 0o600, false).unwrap();
            state.retire(&name, &identity).unwrap();
        };
        write(1001, &boot, Some(mine));
        write(1002, &boot, Some(gone_image));
        write(1003, "another-boot", Some(mine));
        write(1004, &boot, None);
        write(1005, &boot, Some(gone_image));
        // The current journal of a live process (this one), of an image nobody runs.
        let current = JournalData::new(TargetIdentity {
            pid: me,
            start_time: 7,
            boot_id: boot.clone(),
            exe: "/bin/x".into(),
            image: Some(gone_image),
        });
        let text = serde_json::to_vec(&current).unwrap();
        state
            .replace_file(&format!("{me}.json"), &text, 0o600, false)
            .unwrap();
        let busy = state.lock(1005).unwrap();
        let mut deleted = state.prune(false);
        deleted.sort();
        let pids: Vec<&str> = deleted.iter().map(|n| &n[8..12]).collect();
        assert_eq!(pids, vec!["1002", "1003", "1004"], "{deleted:?}");
        drop(busy);
        let deleted = state.prune(false);
        assert_eq!(deleted.len(), 1, "{deleted:?}");
        assert!(deleted[0].starts_with("retired-1005-"));
        let mut left: Vec<String> = state.journals().into_iter().map(|(n, _)| n).collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                format!("{me}.json"),
                format!("retired-1001-7-{}.json", mine.short())
            ]
        );
    }

    /// A PID no process has now: a child's, once reaped (another if its PID was taken again).
    fn exited_pid() -> i32 {
        loop {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id() as i32;
            child.wait().unwrap();
            if !process_exists(pid) {
                return pid;
            }
        }
    }

    /// The journal of a process that exited goes with its lock file once no live process runs
    /// its image (one this test process runs stays), unless another run holds its lock; so
    /// does the lock file of an exited process without a journal. A live process's files stay.
    #[test]
    fn journals_and_locks_of_exited_processes_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let (me, boot, mine, gone_image) = this_process();
        let write = |pid: i32, image: crate::process::ExecImage| {
            let identity = TargetIdentity {
                pid,
                start_time: 7,
                boot_id: boot.clone(),
                exe: "/bin/x".into(),
                image: Some(image),
            };
            drop(state.lock(pid).unwrap());
            let data = serde_json::to_vec(&JournalData::new(identity)).unwrap();
            state
                .replace_file(&format!("{pid}.json"), &data, 0o600, false)
                .unwrap();
        };
        let (gone, held, busy, lock_only) =
            (exited_pid(), exited_pid(), exited_pid(), exited_pid());
        write(gone, gone_image);
        write(held, mine);
        write(busy, gone_image);
        write(me, gone_image);
        drop(state.lock(lock_only).unwrap());
        drop(state.lock(me).unwrap());
        let other_run = state.lock(busy).unwrap();
        let files = |state: &StateDir| {
            let mut names = state.names();
            names.retain(|n| !n.starts_with("image-"));
            names.sort();
            names
        };
        let mut expected = vec![
            format!("{busy}.json"),
            format!("{busy}.lock"),
            format!("{held}.json"),
            format!("{held}.lock"),
            format!("{me}.json"),
            format!("{me}.lock"),
        ];
        expected.sort();
        assert!(
            state.prune(false).is_empty(),
            "an operation on one process leaves them"
        );
        assert_eq!(files(&state).len(), expected.len() + 3);
        assert_eq!(state.prune(true), vec![format!("{gone}.json")]);
        assert_eq!(files(&state), expected);
        drop(other_run);
        assert_eq!(state.prune(true), vec![format!("{busy}.json")]);
        expected.retain(|n| !n.starts_with(&format!("{busy}.")));
        assert_eq!(files(&state), expected);
    }

    /// Once the directory holds `PRUNE_EXITED_AT` journals, an operation on one process prunes
    /// those of exited processes too (PIDs above pid_max: no process has them).
    #[test]
    fn many_journals_of_exited_processes_go_with_any_operation() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let write = |pid: i32| {
            let data = serde_json::to_vec(&JournalData::new(TargetIdentity { pid, ..identity(7) }))
                .unwrap();
            state
                .replace_file(&format!("{pid}.json"), &data, 0o600, false)
                .unwrap();
        };
        let pids = (pid_max + 1..).take(PRUNE_EXITED_AT);
        for pid in pids.clone().take(PRUNE_EXITED_AT - 1) {
            write(pid);
        }
        assert!(state.prune(false).is_empty(), "one fewer: left for later");
        write(pid_max + PRUNE_EXITED_AT as i32);
        let mut deleted = state.prune(false);
        deleted.sort();
        let mut all: Vec<String> = pids.map(|p| format!("{p}.json")).collect();
        all.sort();
        assert_eq!(deleted, all);
    }

    /// A run waiting for a lock that prune unlinks meanwhile takes the lock again on the file
    /// now at the name, not the unlinked one.
    #[test]
    fn a_lock_unlinked_while_waited_for_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let pid = exited_pid();
        let first = state.lock_file(&format!("{pid}.lock")).unwrap();
        first.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                let lock = state.lock(pid).unwrap();
                fstat(lock.file.as_fd()).unwrap()
            })
        };
        rx.recv().unwrap();
        // The waiter is blocked on `first`'s file (/proc/locks lists it as a waiter, `->`).
        let inode = format!(":{} ", fstat(first.as_fd()).unwrap().st_ino);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::fs::read_to_string("/proc/locks")
            .unwrap()
            .lines()
            .any(|l| l.contains("-> FLOCK") && l.contains(&inode))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the waiter never blocked"
            );
            std::thread::yield_now();
        }
        state.unlink_lock(pid, first);
        let locked = waiter.join().unwrap();
        assert!(locked.st_nlink > 0, "the waiter holds an unlinked file");
        let at_name = nix::sys::stat::fstatat(
            state.dir.as_fd(),
            format!("{pid}.lock").as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        assert_eq!(locked.st_ino, at_name.st_ino);
    }

    /// Journals of one exec image are found through the image index: a journal written
    /// before the index existed (no entry) is indexed once, a retired one is found under its
    /// new name, and journals of other images are neither returned nor read.
    #[test]
    fn journals_of_an_image_are_found_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::at(dir.path().to_path_buf()).unwrap();
        let image = |b: u8| crate::process::ExecImage {
            exe_dev: 1,
            exe_inode: 2,
            at_random: [b; 16],
        };
        let with_image = |pid: i32, b: u8| TargetIdentity {
            image: Some(image(b)),
            ..TargetIdentity { pid, ..identity(7) }
        };
        // Written the way an older version did: the file alone, no index entry.
        let legacy = serde_json::to_vec(&JournalData::new(with_image(100, 1))).unwrap();
        state
            .replace_file("100.json", &legacy, 0o600, false)
            .unwrap();
        for (pid, b) in [(101, 1), (102, 2)] {
            let j = Journal::open(&state, &with_image(pid, b)).unwrap();
            j.save_settled().unwrap();
        }
        let found = |b: u8| {
            let mut names: Vec<String> = state
                .journals_of_image(&image(b))
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            names.sort();
            names
        };
        assert_eq!(found(1), vec!["100.json", "101.json"]);
        assert_eq!(found(2), vec!["102.json"]);
        // A journal of another image is not read: it may be garbage without harm.
        std::fs::write(dir.path().join("102.json"), b"not json").unwrap();
        assert_eq!(found(1), vec!["100.json", "101.json"]);
        state.retire("101.json", &with_image(101, 1)).unwrap();
        assert_eq!(
            found(1),
            vec![
                "100.json".to_string(),
                format!("retired-101-7-{}.json", image(1).short())
            ]
        );
        assert!(found(3).is_empty());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn root_refuses_a_state_dir_others_can_write_before_changing_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: the strict checks apply to root only");
            return;
        }
        let base = tempfile::tempdir().unwrap();
        // Group- or world-writable state dir: refused, and left as it was (no chmod first).
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        for m in [0o777, 0o770, 0o1777] {
            set_mode(&open, m);
            let e = StateDir::at(open.clone()).unwrap_err();
            assert!(matches!(e, JournalError::UnsafeStateDir { .. }), "{e}");
            assert_eq!(mode(&open), m);
        }
        // Owned by someone else.
        let theirs = base.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        set_mode(&theirs, 0o700);
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        assert!(matches!(
            StateDir::at(theirs.clone()),
            Err(JournalError::UnsafeStateDir { .. })
        ));
        // A world-writable ancestor that is not sticky: even a fresh directory under it is
        // refused (anyone could rename it away and put their own in its place).
        let parent = base.path().join("parent");
        std::fs::create_dir(&parent).unwrap();
        set_mode(&parent, 0o777);
        assert!(matches!(
            StateDir::at(parent.join("state")),
            Err(JournalError::UnsafeStateDir { .. })
        ));
        assert!(!parent.join("state").exists(), "created before checking");
        // Sticky and root-owned (like /tmp): fine; the state dir itself ends up 0700.
        set_mode(&parent, 0o1777);
        let state = StateDir::at(parent.join("state")).unwrap();
        assert_eq!(mode(state.path()), 0o700);
        // An existing root-owned 0755 dir is accepted and tightened.
        let old = base.path().join("old");
        std::fs::create_dir(&old).unwrap();
        set_mode(&old, 0o755);
        StateDir::at(old.clone()).unwrap();
        assert_eq!(mode(&old), 0o700);
    }

    #[test]
    fn files_in_the_state_dir_are_never_reached_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let state = StateDir::at(dir.path().join("s")).unwrap();
        std::os::unix::fs::symlink(&victim, state.path().join("42.json")).unwrap();
        std::os::unix::fs::symlink(&victim, state.path().join("42.lock")).unwrap();
        assert!(Journal::open(&state, &identity(7)).is_err());
        std::fs::remove_file(state.path().join("42.lock")).unwrap();
        assert!(Journal::open(&state, &identity(7)).is_err());
        std::fs::remove_file(state.path().join("42.json")).unwrap();
        nix::unistd::mkfifo(
            &state.path().join("42.json"),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(Journal::open(&state, &identity(7)).is_err(), "FIFO read");
        std::fs::remove_file(state.path().join("42.json")).unwrap();
        let j = Journal::open(&state, &identity(7)).unwrap();
        j.save().unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(
            std::fs::symlink_metadata(state.path().join("42.json"))
                .unwrap()
                .file_type()
                .is_file()
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}
