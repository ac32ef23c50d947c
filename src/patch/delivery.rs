//! How a library's bytes reach the target and get loaded, without trusting any name that the
//! target's side can write.
//!
//! The patch library (and the binding shim) run with the target's privileges, and rpatch runs
//! as root: neither may be steered by whoever controls the target's file system (a container, a
//! tenant, the other users of a shared /dev/shm). So no file is created, opened or trusted by a
//! path in that file system. Two routes, the first preferred:
//!
//! **A sealed memfd.** The borrowed thread calls `memfd_create("rpatch:<sha256>",
//! MFD_CLOEXEC | MFD_NOEXEC_SEAL)` (before 6.3: `MFD_ALLOW_SEALING`); rpatch takes its own
//! descriptor of it with `pidfd_getfd` (never by reopening `/proc/PID/fd/N`, which another
//! thread could `dup2` over first), checks it is a fresh, unsealed, unlinked tmpfs file with
//! that name, writes the bytes, seals it (`SHRINK | GROW | WRITE | SEAL`: nobody can change it
//! any more, even if it was not ours), and reads it back through its own descriptor. The target
//! then `dlopen`s `/proc/self/fd/N`. glibc first compares that *name* with the loaded objects'
//! names, so N is chosen such that no loaded object is named `/proc/self/fd/N` (an earlier
//! attach's copy would be returned instead); it then compares the file identity, which a new
//! memfd never shares. This needs procfs in the target's mount namespace and `pidfd_getfd`
//! (5.6).
//!
//! **A fresh directory.** Otherwise the bytes go into a directory rpatch creates (`mkdirat`,
//! 0711, owned by rpatch's user) under the target's /dev/shm, /tmp, /var/tmp or /run — each
//! resolved inside the target's root without following symlinks, and skipped when mounted
//! noexec or read-only — as a file created with `O_EXCL` (0444). Nobody else can write there.
//! Both are removed again (relative to their directory fds) once loaded.
//!
//! Prevention, then a check: by the time `dlopen` returns, the library's constructors have run,
//! so only an inode nobody else can write is offered to the loader; afterwards the object the
//! loader returned must be that inode (its first mapping in /proc/PID/maps). A mismatch (a
//! thread of the target replaced fd N in between, say) applies no patch, does not `dlclose`
//! (destructors would run), and is refused with its own message.
//!
//! A library whose content is already loaded is reused instead of loaded again (see
//! [`Delivery::reuse`]): a patch library keeps one copy of its state however many attaches use
//! it, and an attach that gave up waiting for a slow constructor is completed by the next one.

use crate::Error;
use crate::files::{self, Root};
use crate::inject::{InjectError, InjectedThread, LoaderFunctions};
use crate::journal::{JournalData, LoadedObject};
use crate::log::Log;
use crate::process::{self, Memory, ModuleMap, ProcessError, seccomp};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl, openat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

/// `MFD_CLOEXEC`.
const MFD_CLOEXEC: u64 = 0x1;
/// `MFD_ALLOW_SEALING`.
const MFD_ALLOW_SEALING: u64 = 0x2;
/// `MFD_NOEXEC_SEAL` (6.3): not executable by `execve`, sealing allowed. Mapping it with
/// PROT_EXEC, which is all `dlopen` does, stays allowed.
const MFD_NOEXEC_SEAL: u64 = 0x8;
/// `F_DUPFD_CLOEXEC`.
const F_DUPFD_CLOEXEC: u64 = 1030;
/// How long each small remote call (memfd_create, fcntl, close) may take: it never blocks, but
/// on a loaded machine, with signals handled in the borrowed thread meanwhile, it can take
/// seconds; the bound only matters when something is wrong.
const SMALL_CALL: Duration = Duration::from_secs(10);
/// The most link-map entries walked (a loop in a corrupted list must end).
const MAX_LINK_MAPS: usize = 65536;
/// Directories of the target's file system where the fresh-directory route may create its
/// directory, best first.
const FALLBACK_DIRS: [&str; 4] = ["dev/shm", "tmp", "var/tmp", "run"];

/// Makes the first bytes of an ELF file, up to the end of its last PT_LOAD, the image a target
/// is handed: its section-header table, which lies beyond (with the symbol tables and DWARF
/// it describes), is dropped from the header (`e_shoff`, `e_shnum`, `e_shstrndx` zeroed). The
/// dynamic loader reads program headers only; rpatch reads everything else from the file
/// itself. A library's debug sections are often most of it (the demo's: 4 MB of 4.3): they are
/// neither copied into the target nor mapped. Bytes that are not a 64-bit little-endian ELF
/// header whose section table lies beyond them are left as they are.
pub fn loadable_image(bytes: &mut [u8]) {
    const E_SHOFF: usize = 0x28;
    const E_SHNUM: usize = 0x3c;
    const E_SHSTRNDX: usize = 0x3e;
    if bytes.len() < 0x40 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return;
    }
    let shoff = u64::from_le_bytes(bytes[E_SHOFF..E_SHOFF + 8].try_into().expect("8 bytes"));
    if shoff < bytes.len() as u64 {
        return;
    }
    bytes[E_SHOFF..E_SHOFF + 8].fill(0);
    bytes[E_SHNUM..E_SHNUM + 2].fill(0);
    bytes[E_SHSTRNDX..E_SHSTRNDX + 2].fill(0);
}

/// A library to load: its bytes exactly as rpatch read or built them, and their SHA-256, taken
/// once (it names the memfd, finds an earlier copy, and is journaled).
#[derive(Debug, Clone)]
pub struct Payload<'a> {
    /// What it is, for messages (`patch library`, `binding shim`).
    pub what: &'static str,
    /// The bytes.
    pub bytes: &'a [u8],
    /// SHA-256 of `bytes` (hex).
    pub sha256: String,
}

impl<'a> Payload<'a> {
    /// The payload `bytes`, hashed now.
    pub fn new(what: &'static str, bytes: &'a [u8]) -> Self {
        Self::with_sha256(what, bytes, crate::hex::hex(&Sha256::digest(bytes)))
    }

    /// The payload `bytes` whose SHA-256 is known already (`sha256`, hex): the program-knowledge
    /// cache remembers it for a file whose identity has not changed since it was hashed.
    pub fn with_sha256(what: &'static str, bytes: &'a [u8], sha256: String) -> Self {
        Self {
            what,
            bytes,
            sha256,
        }
    }

    /// (page-aligned p_vaddr, page-aligned p_offset) of the first PT_LOAD: where the loader's
    /// first mapping of the file lands relative to `l_addr`, and at which file offset.
    fn first_segment(&self) -> Option<(u64, u64)> {
        use object::{Object, ObjectSegment};
        let file = object::File::parse(self.bytes).ok()?;
        let seg = file.segments().next()?;
        Some((seg.address() & !0xfff, seg.file_range().0 & !0xfff))
    }
}

/// A library loaded in the target.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its identity (journaled).
    pub object: LoadedObject,
    /// The name `dlopen` was given (by the earlier attach, when reused).
    pub name: String,
}

/// Errors of delivering a library into the target.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A seccomp filter would kill the target on a call the load needs.
    #[error(
        "PID {pid} runs under a seccomp filter (thread {tid}) that answers {syscall} with {action}: loading a library would kill it, so rpatch cannot patch this process; nothing was changed"
    )]
    SeccompKills {
        /// The PID.
        pid: i32,
        /// The thread whose filters were read.
        tid: i32,
        /// The system call.
        syscall: &'static str,
        /// The filter's action.
        action: String,
    },
    /// No safe way to hand the library to the target was found.
    #[error("cannot hand the {what} to PID {pid} safely: {reasons}; nothing was loaded")]
    NoRoute {
        /// The PID.
        pid: i32,
        /// Patch library or binding shim.
        what: &'static str,
        /// Why each route was not taken.
        reasons: String,
    },
    /// The memfd or file rpatch prepared is not what it must be (someone else's object in its
    /// place, or changed while written).
    #[error("the {what} copy rpatch prepared in PID {pid} {reason}; nothing was loaded")]
    CopyTampered {
        /// The PID.
        pid: i32,
        /// Patch library or binding shim.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The loader returned an object that is not the copy rpatch prepared.
    #[error(
        "dlopen of {name} in PID {pid} returned an object that is not the {what} rpatch prepared ({detail}): something in the target replaced or shadowed it; no patch was applied (the object stays loaded: unloading it would run its destructors)"
    )]
    WrongObject {
        /// The PID.
        pid: i32,
        /// Patch library or binding shim.
        what: &'static str,
        /// The name dlopen was given.
        name: String,
        /// What was found instead.
        detail: String,
    },
}

/// The C library functions the memfd route calls in the target.
#[derive(Debug, Clone, Copy)]
struct Libc {
    memfd_create: Option<u64>,
    syscall: Option<u64>,
    fcntl: Option<u64>,
    close: Option<u64>,
}

/// Everything needed to deliver libraries into one target, prepared before the thread is
/// borrowed.
pub struct Delivery {
    pid: i32,
    root: Option<Root>,
    libc: Libc,
    /// Address of the dynamic loader's `_r_debug` (the head of the link-map list).
    r_debug: Option<u64>,
    pidfd: Option<OwnedFd>,
    /// Why the memfd route cannot be taken, when it cannot.
    no_memfd: Option<String>,
}

/// The system calls a load makes on the target's behalf, with the arguments known in advance.
fn load_syscalls() -> Vec<(&'static str, seccomp::SeccompData)> {
    let call = |nr, args| seccomp::SeccompData::native(nr, args);
    vec![
        (
            "memfd_create",
            call(
                libc::SYS_memfd_create,
                [0, MFD_CLOEXEC | MFD_NOEXEC_SEAL, 0, 0, 0, 0],
            ),
        ),
        (
            "memfd_create",
            call(
                libc::SYS_memfd_create,
                [0, MFD_CLOEXEC | MFD_ALLOW_SEALING, 0, 0, 0, 0],
            ),
        ),
        (
            "fcntl",
            call(libc::SYS_fcntl, [0, F_DUPFD_CLOEXEC, 0, 0, 0, 0]),
        ),
        ("close", call(libc::SYS_close, [0; 6])),
        ("openat", call(libc::SYS_openat, [0; 6])),
        ("read", call(libc::SYS_read, [0; 6])),
        ("pread64", call(libc::SYS_pread64, [0; 6])),
        ("fstat", call(libc::SYS_fstat, [0; 6])),
        ("newfstatat", call(libc::SYS_newfstatat, [0; 6])),
        ("mmap", call(libc::SYS_mmap, [0; 6])),
        ("mprotect", call(libc::SYS_mprotect, [0; 6])),
        ("munmap", call(libc::SYS_munmap, [0; 6])),
    ]
}

impl Delivery {
    /// Prepares delivery into `pid` (started at `start_time`). `seccomp_tid`: the thread to be
    /// borrowed, stopped, when the target runs under seccomp filters: they are read and every
    /// call the load makes is evaluated; one the filter kills is refused here, one it fails
    /// with an errno rules the memfd route out.
    pub fn prepare(
        pid: i32,
        start_time: u64,
        modules: &mut ModuleMap,
        seccomp_tid: Option<i32>,
        log: &Log,
    ) -> Result<Self, Error> {
        let mut no_memfd = Vec::new();
        if let Some(tid) = seccomp_tid {
            match seccomp::filters(tid) {
                Ok(filters) => {
                    for (syscall, data) in load_syscalls() {
                        let action = seccomp::action(&filters, &data);
                        if action.is_fatal() {
                            return Err(DeliveryError::SeccompKills {
                                pid,
                                tid,
                                syscall,
                                action: action.name(),
                            }
                            .into());
                        }
                        if syscall == "memfd_create" && action != seccomp::Action::Allow {
                            no_memfd.push(format!("its seccomp filter answers memfd_create with {}", action.name()));
                        }
                    }
                    log.step(
                        "load",
                        format!("seccomp: {} filter(s) of thread {tid} kill none of the calls the load makes", filters.len()),
                    );
                }
                // Not root, or no CONFIG_CHECKPOINT_RESTORE: --allow-seccomp accepted the risk.
                Err(e) => log.step(
                    "load",
                    format!("seccomp filters of thread {tid} cannot be read ({e}); going ahead as --allow-seccomp says"),
                ),
            }
        }
        // The module map's (the plan opened it), duplicated rather than looked up again.
        let root = match modules.root() {
            Some(root) => root.try_clone().ok(),
            None => Root::of_process(pid, Some(start_time)).ok(),
        };
        let libc_module = modules.c_library().cloned();
        let libc = match libc_module.and_then(|m| Some((modules.symbols(&m).ok()?, m))) {
            Some((index, m)) => {
                let bias = m.bias(index.load_segments());
                let at = |name: &str| index.symbol_address(name).map(|a| a.wrapping_add(bias));
                Libc {
                    memfd_create: at("memfd_create"),
                    syscall: at("syscall"),
                    fcntl: at("fcntl64").or_else(|| at("fcntl")),
                    close: at("close"),
                }
            }
            None => Libc {
                memfd_create: None,
                syscall: None,
                fcntl: None,
                close: None,
            },
        };
        let r_debug = modules.glibc_loader().cloned().and_then(|m| {
            let index = modules.symbols(&m).ok()?;
            let bias = m.bias(index.load_segments());
            index
                .symbol_address("_r_debug")
                .map(|a| a.wrapping_add(bias))
        });
        if libc.memfd_create.is_none() && libc.syscall.is_none() {
            no_memfd.push("its C library has neither memfd_create nor syscall".into());
        }
        if libc.fcntl.is_none() || libc.close.is_none() {
            no_memfd.push("its C library has no fcntl or close".into());
        }
        if r_debug.is_none() {
            no_memfd.push(
                "the dynamic loader's _r_debug (the list of loaded objects) was not found".into(),
            );
        }
        match &root {
            Some(root) if procfs_mounted(root) => {}
            Some(_) => no_memfd.push("it has no procfs at /proc to open /proc/self/fd/N".into()),
            None => no_memfd.push("its root directory cannot be opened".into()),
        }
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => Some(fd),
            Err(e) => {
                no_memfd.push(format!("pidfd_open: {e}"));
                None
            }
        };
        let no_memfd = (!no_memfd.is_empty()).then(|| no_memfd.join("; "));
        if let Some(why) = &no_memfd {
            log.step("load", format!("no memfd route: {why}"));
        }
        Ok(Self {
            pid,
            root,
            libc,
            r_debug,
            pidfd,
            no_memfd,
        })
    }

    /// A copy of `payload` already loaded in the target, if there is one: recorded in the
    /// journal and still mapped where it was, or (after an attach that did not see its `dlopen`
    /// return: a constructor that took too long, a killed rpatch) a sealed memfd of rpatch's
    /// with exactly these bytes that the loader lists. The latter is confirmed with
    /// `dlopen(name, RTLD_NOLOAD)`, which waits, as any `dlopen` would, for a constructor still
    /// running to finish.
    pub fn reuse(
        &self,
        thread: &mut InjectedThread,
        functions: &LoaderFunctions,
        journal: &JournalData,
        payload: &Payload,
        timeout: Duration,
    ) -> Result<Option<Loaded>, Error> {
        let sha = &payload.sha256;
        let Some((vaddr, offset)) = payload.first_segment() else {
            return Ok(None);
        };
        let maps = thread.mappings()?;
        let recorded = journal
            .patches
            .iter()
            .rev()
            .filter(|r| r.library_sha256 == *sha)
            .filter_map(|r| Some((r.loaded?, r)))
            .find(|(o, _)| {
                maps.iter().any(|m| {
                    m.dev == o.dev
                        && m.inode == o.inode
                        && m.start == o.l_addr.wrapping_add(vaddr)
                        && m.offset == offset
                })
            });
        if let Some((object, r)) = recorded {
            return Ok(Some(Loaded {
                object,
                name: r.loaded_from.display().to_string(),
            }));
        }
        let Some(r_debug) = self.r_debug else {
            return Ok(None);
        };
        let prefix = format!("/memfd:rpatch:{}", &sha[..16]);
        for m in maps
            .iter()
            .filter(|m| m.path.starts_with(&prefix) && m.offset == offset)
        {
            // The bytes are checked, not the name: a sealed file with this content is ours.
            let link = process::proc_dir(self.pid)
                .join("map_files")
                .join(format!("{:x}-{:x}", m.start, m.end));
            let Ok(file) =
                nix::fcntl::open(&link, files::READ_FLAGS, Mode::empty()).map(File::from)
            else {
                continue;
            };
            if verify_copy(&file, payload.bytes, true).is_err() {
                continue;
            }
            let l_addr = m.start.wrapping_sub(vaddr);
            let Some((link_map, name)) = link_map_at(thread.mem(), r_debug, l_addr) else {
                continue;
            };
            let mut name_z = name.clone().into_bytes();
            name_z.push(0);
            let name_at = thread.push(&name_z)?;
            let handle = thread.call(
                "dlopen",
                functions.dlopen,
                &[name_at, functions.dlopen_mode() | libc::RTLD_NOLOAD as u64],
                timeout,
            )?;
            if handle != link_map {
                continue;
            }
            let l_addr = self.check_loaded(thread, handle, payload, &name, m.dev, m.inode)?;
            return Ok(Some(Loaded {
                object: LoadedObject {
                    dev: m.dev,
                    inode: m.inode,
                    l_addr,
                },
                name,
            }));
        }
        Ok(None)
    }

    /// Loads `payload` in the target through `thread` (`RTLD_GLOBAL` when `global`), by the
    /// memfd route when possible, else through a fresh directory.
    pub fn load(
        &mut self,
        thread: &mut InjectedThread,
        functions: &LoaderFunctions,
        payload: &Payload,
        global: bool,
        timeout: Duration,
        log: &Log,
    ) -> Result<Loaded, Error> {
        let mut reasons = Vec::new();
        if let Some(why) = &self.no_memfd {
            reasons.push(format!("memfd: {why}"));
        } else {
            match self.by_memfd(thread, functions, payload, global, timeout, log)? {
                Ok(loaded) => return Ok(loaded),
                Err(why) => {
                    log.step("load", format!("memfd route not taken: {why}"));
                    reasons.push(format!("memfd: {why}"));
                }
            }
        }
        match self.by_fresh_dir(thread, functions, payload, global, timeout, log)? {
            Ok(loaded) => Ok(loaded),
            Err(why) => {
                reasons.push(format!("fresh directory: {why}"));
                Err(DeliveryError::NoRoute {
                    pid: self.pid,
                    what: payload.what,
                    reasons: reasons.join("; "),
                }
                .into())
            }
        }
    }

    /// The memfd route. `Ok(Err(why))` when it cannot be taken but nothing was loaded (the
    /// fresh-directory route may follow); `Err` for a failure that ends the load.
    fn by_memfd(
        &mut self,
        thread: &mut InjectedThread,
        functions: &LoaderFunctions,
        payload: &Payload,
        global: bool,
        timeout: Duration,
        log: &Log,
    ) -> Result<Result<Loaded, String>, Error> {
        let pid = self.pid;
        let (Some(fcntl_fn), Some(close_fn), Some(r_debug), Some(pidfd)) = (
            self.libc.fcntl,
            self.libc.close,
            self.r_debug,
            self.pidfd.as_ref(),
        ) else {
            return Ok(Err("not available".into()));
        };
        let sha = &payload.sha256;
        let used = match fd_names_in_use(thread.mem(), r_debug) {
            Ok(used) => used,
            Err(e) => {
                return Ok(Err(format!(
                    "the list of loaded objects cannot be read ({e})"
                )));
            }
        };
        let name = format!("rpatch:{}", &sha[..16]);
        let mut name_z = name.clone().into_bytes();
        name_z.push(0);
        let name_at = thread.push(&name_z)?;
        let create = |thread: &mut InjectedThread, flags: u64| -> Result<i32, Error> {
            let value = match self.libc.memfd_create {
                Some(f) => thread.call("memfd_create", f, &[name_at, flags], SMALL_CALL)?,
                None => thread.call(
                    "syscall",
                    self.libc.syscall.expect("checked in prepare"),
                    &[libc::SYS_memfd_create as u64, name_at, flags],
                    SMALL_CALL,
                )?,
            };
            Ok(value as u32 as i32)
        };
        let mut sealed_exec = true;
        let mut fd = create(thread, MFD_CLOEXEC | MFD_NOEXEC_SEAL)?;
        if fd < 0 {
            // EINVAL before 6.3 (the stub keeps errno to itself: any failure gets one retry).
            sealed_exec = false;
            fd = create(thread, MFD_CLOEXEC | MFD_ALLOW_SEALING)?;
        }
        if fd < 0 {
            return Ok(Err("memfd_create failed in the target".into()));
        }
        let close_remote = |thread: &mut InjectedThread, fd: i32| {
            let _ = thread.call("close", close_fn, &[fd as u64], SMALL_CALL);
        };
        let ours = match pidfd_getfd(pidfd, fd) {
            Ok(f) => File::from(f),
            Err(e) => {
                close_remote(thread, fd);
                return Ok(Err(format!("pidfd_getfd: {e}")));
            }
        };
        let tampered = |reason: String| -> Error {
            DeliveryError::CopyTampered {
                pid,
                what: payload.what,
                reason,
            }
            .into()
        };
        // Another thread of the target may have put something else at `fd` already: whatever
        // `ours` is, it must be a fresh memfd with our name, then it is sealed and hashed.
        // (It is not closed in the target on a mismatch: `fd` is no longer ours to close.)
        check_fresh_memfd(&ours, &name, sealed_exec).map_err(tampered)?;
        write_all_at(&ours, payload.bytes)
            .map_err(|e| tampered(format!("cannot be written ({e})")))?;
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        fcntl(&ours, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| {
            tampered(format!(
                "cannot be sealed ({e}): someone else holds it writable"
            ))
        })?;
        let (dev, inode) = verify_copy(&ours, payload.bytes, true).map_err(tampered)?;
        log.step(
            "load",
            format!(
                "{} written to a sealed memfd ({} bytes, inode {inode}), fd {fd} in the target",
                payload.what,
                payload.bytes.len()
            ),
        );
        // glibc matches the name first: take a number no loaded object is named after.
        if used.contains(&fd) {
            let above = used.iter().copied().max().unwrap_or(0).max(fd) + 1;
            let dup = thread.call(
                "fcntl",
                fcntl_fn,
                &[fd as u64, F_DUPFD_CLOEXEC, above as u64],
                SMALL_CALL,
            )? as u32 as i32;
            close_remote(thread, fd);
            if dup < above {
                return Ok(Err(format!(
                    "fcntl(F_DUPFD_CLOEXEC, {above}) failed in the target"
                )));
            }
            let same = pidfd_getfd(pidfd, dup)
                .map(File::from)
                .ok()
                .and_then(|f| f.metadata().ok())
                .is_some_and(|m| m.dev() == dev && m.ino() == inode);
            if !same {
                return Err(tampered(format!(
                    "is no longer at fd {dup} after it was duplicated there"
                )));
            }
            log.step(
                "load",
                format!("fd {fd} is a loaded object's name: using fd {dup}"),
            );
            fd = dup;
        }
        drop(ours);
        let path = format!("/proc/self/fd/{fd}");
        let handle = if global {
            thread.dlopen_global(functions, &path, timeout)
        } else {
            thread.dlopen(functions, &path, timeout)
        };
        // The mapping keeps the memfd alive: the descriptor is not needed any more.
        close_remote(thread, fd);
        let handle = match handle {
            // The target could not open or map the memfd (a /proc that is not its own, a
            // security module denying executable memfd mappings): nothing ran, the
            // fresh-directory route may do.
            Err(InjectError::DlopenFailed { message, .. })
                if message.contains("cannot open shared object file")
                    || message.contains("failed to map segment") =>
            {
                return Ok(Err(format!("dlopen of {path} failed: {message}")));
            }
            handle => handle?,
        };
        let l_addr = self.check_loaded(thread, handle, payload, &path, dev, inode)?;
        Ok(Ok(Loaded {
            object: LoadedObject { dev, inode, l_addr },
            name: path,
        }))
    }

    /// The fresh-directory route. `Ok(Err(why))` when no directory could be used.
    fn by_fresh_dir(
        &mut self,
        thread: &mut InjectedThread,
        functions: &LoaderFunctions,
        payload: &Payload,
        global: bool,
        timeout: Duration,
        log: &Log,
    ) -> Result<Result<Loaded, String>, Error> {
        let Some(root) = &self.root else {
            return Ok(Err("the target's root directory cannot be opened".into()));
        };
        let mut skipped = Vec::new();
        for parent_path in FALLBACK_DIRS {
            let mut fresh = match FreshDir::create(root, parent_path) {
                Ok(fresh) => fresh,
                Err(why) => {
                    skipped.push(format!("/{parent_path}: {why}"));
                    continue;
                }
            };
            let file = match fresh.create_file("lib.so", payload.bytes) {
                Ok(file) => file,
                Err(why) => {
                    skipped.push(format!("/{parent_path}: {why}"));
                    continue;
                }
            };
            let tampered = |reason: String| -> Error {
                DeliveryError::CopyTampered {
                    pid: self.pid,
                    what: payload.what,
                    reason,
                }
                .into()
            };
            let (dev, inode) = verify_copy(&file, payload.bytes, false).map_err(tampered)?;
            let path = format!("/{parent_path}/{}/lib.so", fresh.name);
            log.step(
                "load",
                format!(
                    "{} written to {path} in the target's root (fresh directory)",
                    payload.what
                ),
            );
            let handle = if global {
                thread.dlopen_global(functions, &path, timeout)
            } else {
                thread.dlopen(functions, &path, timeout)
            };
            drop(fresh); // removes the file and the directory: the mapping keeps the inode
            let handle = handle?;
            let l_addr = self.check_loaded(thread, handle, payload, &path, dev, inode)?;
            return Ok(Ok(Loaded {
                object: LoadedObject { dev, inode, l_addr },
                name: path,
            }));
        }
        Ok(Err(skipped.join(", ")))
    }

    /// After `dlopen` returned `handle`: the object's first mapping must be the inode rpatch
    /// prepared, at `l_addr` plus the first segment's address. Returns `l_addr`.
    fn check_loaded(
        &self,
        thread: &mut InjectedThread,
        handle: u64,
        payload: &Payload,
        name: &str,
        dev: u64,
        inode: u64,
    ) -> Result<u64, Error> {
        let pid = self.pid;
        let l_addr = thread
            .mem()
            .read_u64(handle)
            .map_err(|e| ProcessError::Io {
                pid,
                what: "the loaded library's link map".into(),
                source: e,
            })?;
        let wrong = |detail: String| -> Error {
            DeliveryError::WrongObject {
                pid,
                what: payload.what,
                name: name.to_string(),
                detail,
            }
            .into()
        };
        let (vaddr, offset) = payload
            .first_segment()
            .ok_or_else(|| wrong("the prepared bytes have no loadable segment".into()))?;
        let start = l_addr.wrapping_add(vaddr);
        let maps = thread.mappings()?;
        let Some(m) = maps.iter().find(|m| m.start == start) else {
            return Err(wrong(format!("nothing is mapped at {start:#x}")));
        };
        let same = (m.dev == dev && m.inode == inode) || {
            // On overlayfs before 6.8 maps shows the underlying inode: compare what the
            // mapping's own file (map_files) says.
            let link = process::proc_dir(pid)
                .join("map_files")
                .join(format!("{:x}-{:x}", m.start, m.end));
            std::fs::metadata(link).is_ok_and(|s| s.dev() == dev && s.ino() == inode)
        };
        if !same || m.offset != offset {
            return Err(wrong(format!(
                "{:#x} maps {} (inode {}, offset {:#x}), not inode {inode}",
                m.start, m.path, m.inode, m.offset
            )));
        }
        Ok(l_addr)
    }
}

/// Whether the target's root has procfs at /proc (a container without it cannot open
/// /proc/self/fd/N).
fn procfs_mounted(root: &Root) -> bool {
    root.open_dir(Path::new("/proc"))
        .ok()
        .and_then(|fd| nix::sys::statfs::fstatfs(&fd).ok())
        .is_some_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// The fd numbers N for which some loaded object is named `/proc/self/fd/N` (walking the
/// link-map list from `_r_debug.r_map`).
fn fd_names_in_use(mem: &dyn Memory, r_debug: u64) -> std::io::Result<Vec<i32>> {
    let mut used = Vec::new();
    let mut map = mem.read_u64(r_debug + 8)?;
    let mut seen = 0;
    while map != 0 && seen < MAX_LINK_MAPS {
        seen += 1;
        let name_at = mem.read_u64(map + 8)?;
        if name_at != 0 {
            let name = mem.read_c_string(name_at, 4096).unwrap_or_default();
            if let Some(n) = name
                .strip_prefix("/proc/self/fd/")
                .and_then(|n| n.parse().ok())
            {
                used.push(n);
            }
        }
        map = mem.read_u64(map + 24)?;
    }
    Ok(used)
}

/// The link map (address and name) of the loaded object whose load bias is `l_addr`.
fn link_map_at(mem: &dyn Memory, r_debug: u64, l_addr: u64) -> Option<(u64, String)> {
    let mut map = mem.read_u64(r_debug + 8).ok()?;
    let mut seen = 0;
    while map != 0 && seen < MAX_LINK_MAPS {
        seen += 1;
        if mem.read_u64(map).ok()? == l_addr {
            let name_at = mem.read_u64(map + 8).ok()?;
            let name = mem.read_c_string(name_at, 4096).ok()?;
            return (!name.is_empty()).then_some((map, name));
        }
        map = mem.read_u64(map + 24).ok()?;
    }
    None
}

/// `ours` must be what `memfd_create(name, ...)` just made: a regular, unlinked, empty file on
/// tmpfs named `/memfd:NAME`, carrying no seal but `F_SEAL_EXEC` (with MFD_NOEXEC_SEAL).
fn check_fresh_memfd(ours: &File, name: &str, sealed_exec: bool) -> Result<(), String> {
    let meta = ours
        .metadata()
        .map_err(|e| format!("cannot be examined ({e})"))?;
    if !meta.file_type().is_file() || meta.nlink() != 0 || meta.len() != 0 {
        return Err(format!(
            "was replaced: its descriptor now holds {} with {} link(s) and {} bytes, not the empty memfd rpatch created (another thread of the target reused the number)",
            if meta.file_type().is_file() {
                "a regular file"
            } else {
                "something other than a regular file"
            },
            meta.nlink(),
            meta.len()
        ));
    }
    let tmpfs = nix::sys::statfs::fstatfs(ours)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !tmpfs {
        return Err("is not on tmpfs".into());
    }
    let seals =
        fcntl(ours, FcntlArg::F_GET_SEALS).map_err(|e| format!("has no readable seals ({e})"))?;
    let expected = if sealed_exec { libc::F_SEAL_EXEC } else { 0 };
    if seals & !libc::F_SEAL_EXEC != 0 || (sealed_exec && seals != expected) {
        return Err(format!("already carries seals {seals:#x}"));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", ours.as_raw_fd()))
        .map_err(|e| format!("cannot be named ({e})"))?;
    let want = format!("/memfd:{name} (deleted)");
    if link.as_os_str() != want.as_str() {
        return Err(format!("is {}, not {want}", link.display()));
    }
    Ok(())
}

/// Checks the copy through rpatch's own descriptor: exactly the bytes `want` (and, for a memfd,
/// all four seals). Returns its (dev, inode). The bytes are compared, not hashed: the same
/// proof at a fraction of the cost for a library of megabytes.
fn verify_copy(file: &File, want: &[u8], memfd: bool) -> Result<(u64, u64), String> {
    let len = want.len() as u64;
    if memfd {
        let seals =
            fcntl(file, FcntlArg::F_GET_SEALS).map_err(|e| format!("has no seals ({e})"))?;
        let all = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        if seals & all != all {
            return Err(format!("is not sealed (seals {seals:#x})"));
        }
    }
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if meta.len() != len {
        return Err(format!("holds {} bytes, not {len}", meta.len()));
    }
    // Read back a piece at a time into one buffer (a library of megabytes is not copied whole
    // again), each piece compared with what was written.
    let mut buf = vec![0u8; want.len().clamp(1, 256 * 1024)];
    let mut at = 0usize;
    while at < want.len() {
        let n = (want.len() - at).min(buf.len());
        file.read_exact_at(&mut buf[..n], at as u64)
            .map_err(|e| format!("cannot be read back ({e})"))?;
        if buf[..n] != want[at..at + n] {
            let first = buf[..n].iter().zip(&want[at..]).position(|(a, b)| a != b);
            return Err(format!(
                "reads back other bytes than were written (from offset {})",
                at + first.unwrap_or(0)
            ));
        }
        at += n;
    }
    let mut past = [0u8; 1];
    if file.read_at(&mut past, len).is_ok_and(|n| n > 0) {
        return Err(format!("holds more than {len} bytes"));
    }
    Ok((meta.dev(), meta.ino()))
}

fn write_all_at(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all_at(bytes, 0)
}

/// `pidfd_open(pid, 0)`.
fn pidfd_open(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_getfd(pidfd, fd, 0)`: rpatch's own descriptor of the target's `fd` (the same open
/// file description, as a dup across processes).
fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_getfd takes three integers and returns a new descriptor or -1.
    let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if got < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(got as i32) })
}

/// A directory rpatch created (0711, its own) in a directory of the target's file system, with
/// the files it put there; both are removed on drop, relative to their directory fds.
struct FreshDir {
    parent: OwnedFd,
    name: String,
    dir: OwnedFd,
    files: Vec<String>,
}

impl FreshDir {
    /// Creates `.rpatch-<random>` in `parent_path` (resolved inside `root`, no symlinks), which
    /// must not be mounted noexec or read-only.
    fn create(root: &Root, parent_path: &str) -> Result<Self, String> {
        let parent = root
            .open_dir(Path::new(parent_path))
            .map_err(|e| e.to_string())?;
        let vfs = nix::sys::statvfs::fstatvfs(&parent).map_err(|e| e.to_string())?;
        let flags = vfs.flags();
        if flags.contains(nix::sys::statvfs::FsFlags::ST_NOEXEC) {
            return Err("mounted noexec".into());
        }
        if flags.contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Err("mounted read-only".into());
        }
        for _ in 0..16 {
            let name = format!(".rpatch-{}", random_hex());
            match mkdirat(&parent, name.as_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => continue,
                Err(e) => return Err(format!("mkdir: {e}")),
            }
            let dir = openat(
                &parent,
                name.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            );
            let fresh = match dir {
                Ok(dir) => FreshDir {
                    parent,
                    name,
                    dir,
                    files: Vec::new(),
                },
                Err(e) => {
                    let _ = unlinkat(&parent, name.as_str(), UnlinkatFlags::RemoveDir);
                    return Err(format!("the directory just made cannot be opened ({e})"));
                }
            };
            // Ours (no one could have replaced it since, or it would not be ours), then made
            // traversable for the target's user.
            let st = fstat(&fresh.dir).map_err(|e| e.to_string())?;
            if st.st_uid != nix::unistd::geteuid().as_raw() {
                return Err("the directory just made is not rpatch's".into());
            }
            fchmod(&fresh.dir, Mode::from_bits_truncate(0o711)).map_err(|e| e.to_string())?;
            return Ok(fresh);
        }
        Err("no unused name".into())
    }

    /// Creates `name` (0444) exclusively in the directory and writes `bytes` to it.
    fn create_file(&mut self, name: &str, bytes: &[u8]) -> Result<File, String> {
        let fd = openat(
            &self.dir,
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o400),
        )
        .map_err(|e| format!("create: {e}"))?;
        // Registered for removal before anything else can fail.
        self.files.push(name.to_string());
        let file = File::from(fd);
        write_all_at(&file, bytes).map_err(|e| format!("write: {e}"))?;
        fchmod(file.as_fd(), Mode::from_bits_truncate(0o444)).map_err(|e| e.to_string())?;
        Ok(file)
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = unlinkat(&self.dir, f.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        let _ = unlinkat(&self.parent, self.name.as_str(), UnlinkatFlags::RemoveDir);
    }
}

/// 16 random hex digits (getrandom).
fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // No getrandom: time and PID are unique enough for a name created with EEXIST checks.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (t ^ u64::from(std::process::id()).rotate_left(40)).to_le_bytes();
    }
    crate::hex::hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loadable image of a real ELF file (this test's own executable): its section table
    /// goes (it lies beyond the last PT_LOAD), the loader's view (program headers, segments)
    /// stays and still parses.
    #[test]
    fn a_loadable_image_drops_the_section_table_only() {
        let whole = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let file = object::File::parse(&*whole).unwrap();
        use object::{Object, ObjectSegment};
        let end = file
            .segments()
            .map(|s| s.file_range().0 + s.file_range().1)
            .max()
            .unwrap() as usize;
        let mut image = whole[..end].to_vec();
        loadable_image(&mut image);
        assert_eq!(&image[..0x28], &whole[..0x28], "the header up to e_shoff");
        assert_eq!(&image[0x40..], &whole[0x40..end]);
        let parsed = object::File::parse(&*image).unwrap();
        assert_eq!(parsed.segments().count(), file.segments().count());
        assert_eq!(parsed.sections().count(), 0);
        // Whole files, and what is not ELF, are left alone.
        let mut same = whole.clone();
        loadable_image(&mut same);
        assert_eq!(same, whole);
        let mut text = b"not an ELF file at all, but long enough to have a header.....".to_vec();
        let before = text.clone();
        loadable_image(&mut text);
        assert_eq!(text, before);
    }
}
