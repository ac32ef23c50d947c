//! Opening files in a file system someone else controls, without being led out of it.
//!
//! rpatch usually runs as root, and the process it patches may be a container whose inside was
//! prepared for it: any name under `/proc/PID/root` may be a symlink (absolute ones resolve
//! against *rpatch's* root when followed through that magic link), a FIFO (an open that never
//! returns), a directory, or a file that is truncated while rpatch reads it. So:
//!
//! * paths in a target's file system are resolved by the kernel inside a [`Root`] directory fd
//!   with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)`, or, where
//!   `openat2` is missing (before 5.6, or filtered), one component at a time with `O_NOFOLLOW`,
//!   refusing `..`;
//! * every read opens with `O_NONBLOCK | O_NOCTTY` and accepts a regular file only;
//! * the content is read into memory with a size cap ([`read_capped`]), never mapped: a mapping
//!   of a file its owner truncates kills the reader with SIGBUS.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// Flags of every read-only open rpatch makes in a file system it does not control: a FIFO
/// must not block, a terminal must not become the controlling one.
pub const READ_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_CLOEXEC);

/// The default for [`max_file_size`]: 1 GiB.
const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 30;

/// The largest file rpatch reads into memory from a file system the target controls:
/// `$RPATCH_MAX_FILE_SIZE` (bytes), else 1 GiB. A module or debug file larger than this is
/// treated as unreadable rather than exhausting rpatch's memory.
pub fn max_file_size() -> u64 {
    std::env::var("RPATCH_MAX_FILE_SIZE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(DEFAULT_MAX_FILE_SIZE)
}

/// A directory treated as `/` for resolving paths: the root of a target process (its mount
/// namespace and chroot), reached through `/proc/PID/root`.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    name: PathBuf,
}

impl Root {
    /// The root directory of process `pid`. The `/proc/PID` directory is opened first and its
    /// start time compared with `start_time` (when given), so a PID reused since it was
    /// identified is refused rather than giving another process's root.
    pub fn of_process(pid: i32, start_time: Option<u64>) -> io::Result<Self> {
        let dir = nix::fcntl::open(
            &PathBuf::from(format!("/proc/{pid}")),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        if let Some(expected) = start_time {
            let stat = openat(&dir, "stat", READ_FLAGS, Mode::empty())?;
            // Room for the whole line: /proc files have no size to size the buffer by, and
            // std's reads of one then start at 32 bytes and double (six reads, not two).
            let mut text = String::with_capacity(1024);
            io::Read::read_to_string(&mut File::from(stat), &mut text)?;
            let started = crate::process::parse_stat(&text).map(|(_, start, _)| start);
            if started != Some(expected) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("PID {pid} is no longer the process identified"),
                ));
            }
        }
        // `root` is a magic link: following it here (rpatch's own lookup in /proc, not a path
        // the target chose) yields the target's root directory in its mount namespace. A
        // leader that has exited has none: a live thread's, reached through the same checked
        // directory, is the process's.
        let proc_dir = crate::process::proc_dir(pid);
        let relative = proc_dir
            .strip_prefix(format!("/proc/{pid}"))
            .unwrap_or(Path::new(""))
            .join("root");
        let root = openat(
            &dir,
            &relative,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir: root,
            name: proc_dir.join("root"),
        })
    }

    /// Another handle on the same root directory (a duplicated descriptor).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            dir: self.dir.try_clone()?,
            name: self.name.clone(),
        })
    }

    /// A root at an open directory (tests; a directory rpatch created itself).
    #[cfg(test)]
    pub fn from_dir(dir: OwnedFd, name: PathBuf) -> Self {
        Self { dir, name }
    }

    /// The directory fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// `path` (absolute or relative, either way taken from this root) as it appears in messages.
    pub fn display(&self, path: &Path) -> PathBuf {
        self.name.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Opens the regular file at `path` inside this root for reading (see [`READ_FLAGS`]).
    pub fn open(&self, path: &Path) -> io::Result<File> {
        let fd = resolve_in(self.fd(), path, READ_FLAGS, Mode::empty())?;
        regular(File::from(fd))
    }

    /// Opens the directory at `path` inside this root (`O_PATH`), to create or look up names
    /// relative to it.
    pub fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        resolve_in(
            self.fd(),
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }
}

/// Opens `path` relative to `dir`, which is treated as the root: no symlink (absolute,
/// relative or magic) is followed, and `..` cannot climb out. `openat2` where the kernel has it,
/// else one component at a time with `O_NOFOLLOW`.
pub fn resolve_in(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let relative = relative(path)?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW)
        .mode(mode)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_SYMLINKS,
        );
    match openat2(dir, &relative, how) {
        Ok(fd) => Ok(fd),
        // No openat2 (before 5.6), or a seccomp filter around rpatch forbids it.
        Err(Errno::ENOSYS | Errno::EPERM) => resolve_by_components(dir, path, flags, mode),
        Err(e) => Err(e.into()),
    }
}

/// The fallback of [`resolve_in`]: each directory component opened with
/// `O_PATH | O_DIRECTORY | O_NOFOLLOW` (a symlink fails with ENOTDIR), the last one with
/// `O_NOFOLLOW` (a symlink fails with ELOOP); `..` is refused.
pub fn resolve_by_components(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> io::Result<OwnedFd> {
    let relative = relative(path)?;
    let names: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return Ok(openat(dir, ".", flags, mode)?);
    };
    let mut current: Option<OwnedFd> = None;
    for name in parents {
        let at = current.as_ref().map_or(dir, |fd| fd.as_fd());
        let next = openat(
            at,
            *name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        current = Some(next);
    }
    let at = current.as_ref().map_or(dir, |fd| fd.as_fd());
    Ok(openat(at, *last, flags | OFlag::O_NOFOLLOW, mode)?)
}

/// `path` without its leading `/`, refusing `..` (nothing rpatch resolves in a target's root
/// has a reason to contain one).
fn relative(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} contains `..`", path.display()),
                ));
            }
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    Ok(out)
}

/// Opens a file rpatch itself chose the path of (a debug file under a debug root, the patch
/// library) for reading, with [`READ_FLAGS`], and accepts a regular file only.
pub fn open_host(path: &Path) -> io::Result<File> {
    let fd = nix::fcntl::open(path, READ_FLAGS, Mode::empty())?;
    regular(File::from(fd))
}

/// `file` if it is a regular file, else an error saying what it is.
pub fn regular(file: File) -> io::Result<File> {
    regular_with_metadata(file).map(|(file, _)| file)
}

/// [`regular`], with the metadata it was judged by (one `fstat` serving the caller's checks
/// too).
pub fn regular_with_metadata(file: File) -> io::Result<(File, std::fs::Metadata)> {
    let meta = file.metadata()?;
    if meta.file_type().is_file() {
        return Ok((file, meta));
    }
    let what = if meta.is_dir() {
        "a directory"
    } else {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        }
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {what}, not a regular file"),
    ))
}

/// Checks that the file `meta` describes is the inode `(dev, ino)` (as `/proc/PID/maps` names
/// the mapped file).
pub fn is_inode(meta: &std::fs::Metadata, dev: u64, ino: u64) -> io::Result<()> {
    if meta.dev() == dev && meta.ino() == ino {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "is inode {} on {:x}:{:x}, not the mapped inode {ino} on {:x}:{:x}",
                meta.ino(),
                libc::major(meta.dev()),
                libc::minor(meta.dev()),
                libc::major(dev),
                libc::minor(dev)
            ),
        ))
    }
}

/// The whole content of `file`, at most `cap` bytes: a larger file (or one growing past the cap
/// while read) is an error, a file shrinking while read yields what was there.
pub fn read_capped(file: &File, cap: u64) -> io::Result<Vec<u8>> {
    read_capped_sized(file, file.metadata()?.len(), cap)
}

/// [`read_capped`] of a file whose size `fstat` just gave.
pub fn read_capped_sized(file: &File, size: u64, cap: u64) -> io::Result<Vec<u8>> {
    if size > cap {
        return Err(too_large(size, cap));
    }
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    // Grown since fstat: read on, still under the cap (in small reads: almost always this
    // finds the end at once, and a large buffer would be zeroed for nothing).
    let mut chunk = [0u8; 4096];
    loop {
        match file.read_at(&mut chunk, buf.len() as u64) {
            Ok(0) => break,
            Ok(n) => {
                if buf.len() as u64 + n as u64 > cap {
                    return Err(too_large(buf.len() as u64 + n as u64, cap));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

fn too_large(size: u64, cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "is {size} bytes, more than the {cap} rpatch reads from a file system it does not control (RPATCH_MAX_FILE_SIZE)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_at(dir: &Path) -> Root {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        Root::from_dir(fd, dir.to_path_buf())
    }

    /// A tree with a real file, symlinks out of it (absolute and relative), a symlinked
    /// directory, a FIFO and a directory where a file is expected.
    fn hostile_tree() -> (tempfile::TempDir, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"host only").unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("lib")).unwrap();
        std::fs::write(r.join("lib/real.so"), b"inside").unwrap();
        symlink(outside.path().join("secret"), r.join("lib/abs")).unwrap();
        symlink("../../../../../../../../../../../../tmp", r.join("lib/rel")).unwrap();
        symlink(outside.path(), r.join("linkdir")).unwrap();
        nix::unistd::mkfifo(&r.join("lib/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(r.join("lib/dir.so")).unwrap();
        (root, outside)
    }

    #[test]
    fn resolution_stays_inside_the_root_and_refuses_links_fifos_and_directories() {
        let (tree, outside) = hostile_tree();
        let root = root_at(tree.path());
        let ok = root.open(Path::new("/lib/real.so")).unwrap();
        assert_eq!(read_capped(&ok, 100).unwrap(), b"inside");
        for bad in [
            "/lib/abs",
            "lib/rel/x",
            "/linkdir/secret",
            "/lib/../lib/real.so",
            "/lib/fifo",
            "/lib/dir.so",
        ] {
            assert!(root.open(Path::new(bad)).is_err(), "{bad} was opened");
        }
        // The same with the component-by-component fallback.
        for bad in [
            "/lib/abs",
            "lib/rel/x",
            "/linkdir/secret",
            "/lib/../lib/real.so",
        ] {
            assert!(
                resolve_by_components(root.fd(), Path::new(bad), READ_FLAGS, Mode::empty())
                    .is_err(),
                "{bad} was opened by components"
            );
        }
        let fd = resolve_by_components(
            root.fd(),
            Path::new("/lib/real.so"),
            READ_FLAGS,
            Mode::empty(),
        )
        .unwrap();
        assert_eq!(read_capped(&File::from(fd), 100).unwrap(), b"inside");
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"host only"
        );
    }

    #[test]
    fn reads_are_capped_and_identity_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        let f = open_host(&path).unwrap();
        assert_eq!(read_capped(&f, 1000).unwrap().len(), 1000);
        assert!(read_capped(&f, 999).is_err());
        let meta = f.metadata().unwrap();
        is_inode(&meta, meta.dev(), meta.ino()).unwrap();
        assert!(is_inode(&meta, meta.dev(), meta.ino() + 1).is_err());
        assert!(open_host(dir.path()).is_err());
    }

    #[test]
    fn the_root_of_a_process_is_checked_against_its_start_time() {
        let me = std::process::id() as i32;
        let (_, start, _) = crate::process::read_stat(me, me).unwrap();
        assert!(Root::of_process(me, Some(start)).is_ok());
        assert!(Root::of_process(me, Some(start + 1)).is_err());
        let root = Root::of_process(me, None).unwrap();
        assert!(
            root.open(Path::new("/proc/self/status")).is_err(),
            "magic link followed"
        );
    }
}
