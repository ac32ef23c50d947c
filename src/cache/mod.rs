//! The program-knowledge cache: what rpatch derives from a file's contents alone (a module's
//! name lookups, signatures, inlined copies, unwind-table locations, libc's symbol addresses,
//! a patch library's SHA-256), kept in the state directory so the next operation on the same
//! build does not derive it again.
//!
//! This module owns the storage and its policy; what an entry holds is decided by its user
//! (`symbols::SymbolIndex` for a module or library, see `symbols/memo.rs`).
//!
//! * **Keys.** An entry is found by a [`Key`]: what it is about (`kind`), the build-id, and the
//!   [`FileIdentity`] of every file that contributed (device, inode, size, modification and
//!   change times, taken with `fstat` on the descriptor rpatch read, which for a target's module
//!   is the mapped inode itself, `/proc/PID/map_files`), plus whatever else decided the result
//!   (where debug files were looked for). A file changed in place gets a new change time, a
//!   replaced one a new inode: either way its old entries are never found again. A file changed
//!   within [`SETTLE`] of being read could share a change time with its previous content on a
//!   kernel with coarse timestamps, so nothing is stored for it until it has settled.
//! * **Entries.** One file per key, named by the key's SHA-256, holding the full key (checked on
//!   every read: a hash collision or a foreign file is a miss) and the value as JSON. Written to
//!   an exclusively created temporary file (0600) renamed into place; never fsynced (a lost
//!   entry costs only time). An entry that cannot be parsed is a miss and is replaced by the
//!   next store.
//! * **Size.** At most [`max_bytes`] (256 MiB unless `RPATCH_CACHE_MAX_BYTES` says otherwise);
//!   a store beyond it removes the least recently used entries first (a read touches its entry's
//!   modification time, at most once a minute).
//! * **Failure costs speed only.** A cache that cannot be opened, read or written is simply not
//!   used: every operation works without it.

use crate::files;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Layout version of an entry file; an entry of another version is a miss.
const FORMAT: u32 = 1;

/// The default size limit of the cache directory: 256 MiB.
const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// How long after its last change a file must have been left alone before anything derived
/// from it is stored: file times may be as coarse as a clock tick, so a file written twice
/// within one tick could show the same change time for two contents.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The largest entry read back (larger files in the directory are not ours).
const MAX_ENTRY: u64 = 64 << 20;

/// The cache's size limit: `$RPATCH_CACHE_MAX_BYTES`, else 256 MiB.
pub fn max_bytes() -> u64 {
    std::env::var("RPATCH_CACHE_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_MAX_BYTES)
}

/// What identifies one version of a file: a change of content in place changes its change time
/// (`st_ctime`, which no one can set), a replacement its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds.
    pub mtime_ns: i128,
    /// `st_ctime` in nanoseconds.
    pub ctime_ns: i128,
}

impl FileIdentity {
    /// The identity of an open file (`fstat`).
    pub fn of(file: &File) -> std::io::Result<Self> {
        Ok(Self::from_metadata(&file.metadata()?))
    }

    /// The identity from a file's metadata.
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        let ns = |secs: i64, nsecs: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsecs);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether the file has been left alone for at least [`SETTLE`]: only then is what was
    /// derived from it stored (see the module comment).
    pub fn settled(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let last = self.mtime_ns.max(self.ctime_ns);
        now - last >= SETTLE.as_nanos() as i128
    }

    fn describe(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

/// The key of an entry: built from every fact the value depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    text: String,
}

impl Key {
    /// A key for a value of `kind` (a name and a version of what the value holds, e.g.
    /// `module-v1`), derived from the file `identity` with build-id `build_id`.
    pub fn new(kind: &str, identity: &FileIdentity, build_id: Option<&[u8]>) -> Self {
        let build_id = build_id.map_or_else(|| "none".to_string(), crate::hex::hex);
        Self {
            text: format!("{kind} file={} build-id={build_id}", identity.describe()),
        }
    }

    /// Adds a fact the value depends on (`name=value`).
    pub fn with(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        use std::fmt::Write as _;
        let _ = write!(self.text, " {name}={value}");
        self
    }

    /// The entry's file name: the key's SHA-256.
    fn file_name(&self) -> String {
        let digest = Sha256::digest(self.text.as_bytes());
        format!("{}.json", crate::hex::hex(&digest[..16]))
    }
}

/// An entry file.
#[derive(Serialize, Deserialize)]
struct Entry<T> {
    format: u32,
    key: String,
    value: T,
}

/// Hit and store counts, for `-v`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Entries found.
    pub hits: u64,
    /// Entries looked for and not found (or unusable).
    pub misses: u64,
    /// Entries written.
    pub stores: u64,
}

/// The cache directory (`cache/` in the state directory), or nothing when it cannot be used.
#[derive(Debug)]
pub struct Cache {
    dir: Option<OwnedFd>,
    counts: std::sync::Mutex<Counts>,
}

impl Cache {
    /// A cache that stores nothing and finds nothing.
    pub fn disabled() -> Self {
        Self {
            dir: None,
            counts: Default::default(),
        }
    }

    /// The cache in directory `dir` (opened by the caller, see `StateDir::cache_dir`).
    pub fn at(dir: OwnedFd) -> Self {
        Self {
            dir: Some(dir),
            counts: Default::default(),
        }
    }

    /// Whether anything can be found or stored.
    pub fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// What the cache did so far.
    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The value stored under `key`, if there is a readable one. A hit marks the entry as used
    /// now (for the eviction order).
    pub fn load<T: DeserializeOwned>(&self, key: &Key) -> Option<T> {
        let found = self.read(key);
        self.count(|c| match found {
            Some(_) => c.hits += 1,
            None => c.misses += 1,
        });
        found
    }

    fn read<T: DeserializeOwned>(&self, key: &Key) -> Option<T> {
        let dir = self.dir.as_ref()?;
        let fd = openat(
            dir.as_fd(),
            key.file_name().as_str(),
            files::READ_FLAGS | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .ok()?;
        let (file, meta) = files::regular_with_metadata(File::from(fd)).ok()?;
        let bytes = files::read_capped_sized(&file, meta.len(), MAX_ENTRY).ok()?;
        let entry: Entry<T> = serde_json::from_slice(&bytes).ok()?;
        if entry.format != FORMAT || entry.key != key.text {
            return None;
        }
        // Touched: the least recently used entries go first. Not again within TOUCH_AFTER of
        // the last touch: each is a metadata write the filesystem journals (an operation reads
        // four entries), and eviction needs no finer order than that.
        let used = meta.modified().ok()?;
        if used.elapsed().is_ok_and(|age| age >= TOUCH_AFTER) {
            let _ = nix::sys::stat::futimens(
                &file,
                &nix::sys::time::TimeSpec::UTIME_NOW,
                &nix::sys::time::TimeSpec::UTIME_NOW,
            );
        }
        Some(entry.value)
    }

    /// Stores `value` under `key` (replacing any entry there), then keeps the directory under
    /// its size limit. Failures are ignored: the cache only saves time.
    pub fn store<T: Serialize>(&self, key: &Key, value: &T) {
        let Some(dir) = self.dir.as_ref() else {
            return;
        };
        let entry = Entry {
            format: FORMAT,
            key: key.text.clone(),
            value,
        };
        let Ok(bytes) = serde_json::to_vec(&entry) else {
            return;
        };
        if write_entry(dir, &key.file_name(), &bytes).is_ok() {
            self.count(|c| c.stores += 1);
            evict(dir, max_bytes());
        }
    }
}

/// Writes `name` atomically: an exclusively created temporary file (0600), renamed into place.
fn write_entry(dir: &OwnedFd, name: &str, bytes: &[u8]) -> Result<(), Errno> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (tmp, fd) = loop {
        let tmp = format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        match openat(
            dir.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => break (tmp, fd),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut file = File::from(fd);
    let written = file
        .write_all(bytes)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|()| renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name));
    if written.is_err() {
        let _ = unlinkat(dir.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// How long after an entry was last marked used a read marks it again (see `Cache::read`).
const TOUCH_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the least recently used entries until the directory holds at most `limit` bytes
/// (temporary files older than a minute, left by a run that died, go as well).
fn evict(dir: &OwnedFd, limit: u64) {
    // Listed through the descriptor (the directory itself, wherever it is now).
    let Ok(listing) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut entries: Vec<(i128, u64, std::ffi::CString)> = Vec::new();
    let mut total = 0u64;
    for entry in listing.flatten() {
        let Ok(name) = std::ffi::CString::new(entry.file_name().into_vec()) else {
            continue;
        };
        let Ok(text) = name.to_str() else { continue };
        if !text.ends_with(".json") && !text.ends_with(".tmp") {
            continue;
        }
        let Ok(st) = nix::sys::stat::fstatat(
            dir.as_fd(),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        if text.ends_with(".tmp") {
            if now - st.st_mtime > 60 {
                let _ = unlinkat(dir.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir);
            }
            continue;
        }
        let size = st.st_size as u64;
        total += size;
        let used = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
        entries.push((used, size, name));
    }
    if total <= limit {
        return;
    }
    entries.sort();
    for (_, size, name) in entries {
        if total <= limit {
            break;
        }
        if unlinkat(dir.as_fd(), name.as_c_str(), UnlinkatFlags::NoRemoveDir).is_ok() {
            total -= size;
        }
    }
}

/// The directory's file (for tests and `fstat`).
#[cfg(test)]
fn entry_mode(dir: &OwnedFd, key: &Key) -> u32 {
    let fd = openat(
        dir.as_fd(),
        key.file_name().as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    nix::sys::stat::fstat(&fd).unwrap().st_mode & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn identity(ctime_ns: i128) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns,
        }
    }

    /// A stored value comes back under its key only, from an entry file of mode 0600.
    #[test]
    fn values_round_trip_under_their_key_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(open_dir(tmp.path()));
        let key = Key::new("test-v1", &identity(5), Some(&[0xab, 0xcd]));
        assert_eq!(cache.load::<Vec<u32>>(&key), None);
        cache.store(&key, &vec![1u32, 2, 3]);
        assert_eq!(cache.load::<Vec<u32>>(&key), Some(vec![1, 2, 3]));
        assert_eq!(entry_mode(cache.dir.as_ref().unwrap(), &key), 0o600);
        // Another change time, build-id or extra fact is another key.
        assert_eq!(
            cache.load::<Vec<u32>>(&Key::new("test-v1", &identity(6), Some(&[0xab, 0xcd]))),
            None
        );
        assert_eq!(
            cache.load::<Vec<u32>>(&Key::new("test-v1", &identity(5), None)),
            None
        );
        assert_eq!(
            cache.load::<Vec<u32>>(&key.clone().with("root", "/x")),
            None
        );
        let c = cache.counts();
        assert_eq!((c.hits, c.misses, c.stores), (1, 4, 1));
    }

    /// A corrupt entry, or one recording another key, is a miss, and the next store replaces it.
    #[test]
    fn corrupt_entries_are_misses_and_get_rewritten() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(open_dir(tmp.path()));
        let key = Key::new("test-v1", &identity(5), None);
        let path = tmp.path().join(key.file_name());
        std::fs::write(&path, b"{\"format\":1,\"key\":").unwrap();
        assert_eq!(cache.load::<u32>(&key), None);
        std::fs::write(&path, br#"{"format":1,"key":"another key","value":7}"#).unwrap();
        assert_eq!(cache.load::<u32>(&key), None);
        cache.store(&key, &7u32);
        assert_eq!(cache.load::<u32>(&key), Some(7));
    }

    /// Beyond the size limit the least recently used entries are removed first.
    #[test]
    fn least_recently_used_entries_go_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = open_dir(tmp.path());
        let cache = Cache::at(dir);
        let keys: Vec<Key> = (0..4)
            .map(|i| Key::new("test-v1", &identity(i), None))
            .collect();
        let big = "x".repeat(10_000);
        for (i, k) in keys.iter().enumerate() {
            cache.store(k, &big);
            // Stored (used) at second i since the epoch: an order, without waiting.
            let at = nix::sys::time::TimeSpec::new(i as i64 + 1, 0);
            nix::sys::stat::utimensat(
                cache.dir.as_ref().unwrap().as_fd(),
                k.file_name().as_str(),
                &at,
                &at,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        let size = std::fs::metadata(tmp.path().join(keys[0].file_name()))
            .unwrap()
            .len();
        // The oldest is read (used) now: the second oldest is the least recently used.
        assert!(cache.load::<String>(&keys[0]).is_some());
        evict(cache.dir.as_ref().unwrap(), 3 * size);
        let present: Vec<bool> = keys
            .iter()
            .map(|k| tmp.path().join(k.file_name()).exists())
            .collect();
        assert_eq!(present, [true, false, true, true]);
    }

    /// A read marks its entry used again only a minute after the last mark.
    #[test]
    fn a_read_marks_its_entry_at_most_once_a_minute() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::at(open_dir(tmp.path()));
        let key = Key::new("test-v1", &identity(6), None);
        cache.store(&key, &1u32);
        let path = tmp.path().join(key.file_name());
        let marked_ago = |secs: u64| {
            let at = SystemTime::now() - std::time::Duration::from_secs(secs);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
            assert_eq!(cache.load::<u32>(&key), Some(1));
            SystemTime::now()
                .duration_since(std::fs::metadata(&path).unwrap().modified().unwrap())
                .unwrap_or_default()
        };
        assert!(
            marked_ago(10) >= std::time::Duration::from_secs(9),
            "marked again"
        );
        assert!(
            marked_ago(120) < std::time::Duration::from_secs(60),
            "not marked"
        );
    }

    /// A disabled cache finds and stores nothing, without failing.
    #[test]
    fn a_disabled_cache_costs_nothing_but_speed() {
        let cache = Cache::disabled();
        let key = Key::new("test-v1", &identity(5), None);
        cache.store(&key, &1u32);
        assert_eq!(cache.load::<u32>(&key), None);
        assert!(!cache.enabled());
    }

    /// A file just changed is not settled; one left alone for a while is.
    #[test]
    fn recently_changed_files_are_not_settled() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let id = FileIdentity::of(&File::open(&path).unwrap()).unwrap();
        assert!(!id.settled());
        let old = FileIdentity {
            mtime_ns: id.mtime_ns - 1_000_000_000,
            ctime_ns: id.ctime_ns - 1_000_000_000,
            ..id
        };
        assert!(old.settled());
    }
}
