//! The traced process: who it is, its threads and memory, and ptrace control over them.
//!
//! Everything that changes a thread's state is undone by a guard (`Tracer`'s `Drop` detaches every
//! seized thread, re-delivering any signal that arrived while it was stopped), so an error or a
//! panic anywhere above leaves the target running as before.

mod build_id;
mod frozen;
mod image;
mod maps;
mod memory;
mod modules;
mod priority;
mod runtime;
pub mod seccomp;
mod shared_mm;
pub(crate) mod syscall;
mod tracer;

pub(crate) use crate::isa::Regs;
pub use build_id::build_id_in_memory;
#[cfg(test)]
pub use frozen::Frozen;
pub use image::{ExecImage, all_pids, images_run, read_image, runs_executable, runs_image};
pub use maps::{ForkFlag, Mapping, gaps, parse_fork_flags, parse_maps};
#[cfg(test)]
pub use memory::FakeMemory;
pub use memory::{CodeMemory, Memory, ProcMem};
pub use modules::{LoadedModule, ModuleMap};
pub use priority::{ExactSleeps, RealtimeGuard};
pub use runtime::Runtime;
pub use shared_mm::{
    FrozenSharers, SharerScan, address_space_sharers, last_sharer_scan, remember_sharer_scan,
    shared_address_space, shares_address_space,
};
pub use syscall::{EintrRepair, Seen, blocked_syscall, repair_eintr};
pub use tracer::{Birth, Held, Stop, Survey, ThreadState, Tracer};

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

/// How long a thread asked to stop (PTRACE_INTERRUPT) is waited for, at least. It stops as soon
/// as it next runs, which on a loaded machine can take a while; one that does not stop in this
/// time is stuck (uninterruptible sleep) rather than slow.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors of the process layer, each naming the process or thread involved.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// No process with this PID exists.
    #[error("no process with PID {pid}: check the PID (ps -p {pid})")]
    NoSuchProcess {
        /// The PID.
        pid: i32,
    },
    /// The process exited (or became a zombie) while rpatch worked on it.
    #[error("process {pid} exited during the operation")]
    Exited {
        /// The PID.
        pid: i32,
    },
    /// ptrace or /proc access was denied.
    #[error(
        "not permitted to trace PID {pid} ({detail}): run rpatch as the target's user or as root \
         (CAP_SYS_PTRACE), and check /proc/sys/kernel/yama/ptrace_scope (currently {scope})"
    )]
    PermissionDenied {
        /// The PID.
        pid: i32,
        /// What failed.
        detail: String,
        /// Yama ptrace_scope value, or "absent".
        scope: String,
    },
    /// Another tracer (a debugger, strace, another rpatch) is attached.
    #[error(
        "PID {pid} is already traced by PID {tracer} ({tracer_name}): detach that tracer first"
    )]
    AlreadyTraced {
        /// The PID.
        pid: i32,
        /// The tracer's PID.
        tracer: i32,
        /// The tracer's command name.
        tracer_name: String,
    },
    /// The target's architecture is not the one rpatch was built for.
    #[error("PID {pid} runs a {arch} executable; this rpatch patches {ours} processes only")]
    WrongArchitecture {
        /// The PID.
        pid: i32,
        /// Target architecture.
        arch: String,
        /// rpatch's architecture.
        ours: &'static str,
    },
    /// A ptrace request failed.
    #[error("ptrace {op} on thread {tid} failed: {errno}")]
    Ptrace {
        /// The request.
        op: &'static str,
        /// The thread.
        tid: i32,
        /// The error.
        errno: nix::Error,
    },
    /// A thread did not stop within the deadline.
    #[error("thread {tid} of PID {pid} did not stop within {ms} ms")]
    StopTimeout {
        /// The PID.
        pid: i32,
        /// The thread.
        tid: i32,
        /// Milliseconds waited.
        ms: u64,
    },
    /// A thread is blocked in vfork() until its child execs or exits: ptrace cannot stop it
    /// before then (the wait is not interruptible), so nothing can be frozen. Usually brief.
    #[error("thread {tid} of PID {pid} is in vfork(), waiting for its child to exec or exit")]
    InVfork {
        /// The PID.
        pid: i32,
        /// The thread.
        tid: i32,
    },
    /// Reading a /proc file failed.
    #[error("{what} of PID {pid}: {source}")]
    Io {
        /// The PID.
        pid: i32,
        /// The /proc file (`/proc/PID/maps`, `/proc/12/task/13/stat`).
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Reading or writing the target's memory failed.
    #[error("memory of {owner} at {address:#x} of PID {pid}: {source}")]
    Memory {
        /// The PID.
        pid: i32,
        /// What the memory holds (a function's code, the stub's data block, slack bytes).
        owner: String,
        /// The first address accessed.
        address: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The PID names a kernel thread: it has no user-space code to patch.
    #[error(
        "PID {pid} ({name}) is a kernel thread: it runs no user-space code that rpatch could patch"
    )]
    KernelThread {
        /// The PID.
        pid: i32,
        /// Its name.
        name: String,
    },
}

impl ProcessError {
    /// The stable class of this error.
    pub fn kind(&self) -> crate::kind::ErrorKind {
        use crate::kind::ErrorKind;
        match self {
            ProcessError::NoSuchProcess { .. } => ErrorKind::NoSuchProcess,
            ProcessError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            ProcessError::AlreadyTraced { .. } => ErrorKind::AlreadyTraced,
            ProcessError::Exited { .. } => ErrorKind::TargetExited,
            ProcessError::WrongArchitecture { .. } | ProcessError::KernelThread { .. } => {
                ErrorKind::TargetUnsupported
            }
            ProcessError::Ptrace { .. }
            | ProcessError::StopTimeout { .. }
            | ProcessError::InVfork { .. }
            | ProcessError::Io { .. }
            | ProcessError::Memory { .. } => ErrorKind::Internal,
        }
    }
}

/// What rpatch learns about a target before touching it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    /// Process id (thread-group id).
    pub pid: i32,
    /// Start time in clock ticks since boot: with the boot id, identifies the process for life.
    pub start_time: u64,
    /// This boot's id.
    pub boot_id: String,
    /// Executable path as the kernel reports it.
    pub exe: PathBuf,
    /// The exec image it runs (see [`ExecImage`]): what a fork keeps and an exec replaces.
    pub image: ExecImage,
    /// Single-letter state of the leader (R, S, D, T, t, Z...).
    pub state: char,
    /// Threads running under a seccomp filter (`Seccomp: 2`): an injected syscall the filter
    /// does not expect may kill the whole process.
    pub seccomp_threads: Vec<i32>,
    /// Another process tracing one of its threads when it was identified (`TracerPid`).
    pub tracer: Option<i32>,
    /// Threads with an x86 shadow stack enabled (`x86_Thread_features: shstk`): a call that
    /// returns to an address the hardware did not push faults.
    pub shadow_stack_threads: Vec<i32>,
}

/// Reads a small kernel-generated file (/proc, /proc/sys) whole. `fs::read` first asks the
/// file's size (a `statx`, which /proc answers with 0) and then reads in pieces growing from 32
/// bytes: five or six system calls for a 300-byte `stat`. Here a 4 KiB buffer takes a typical
/// /proc file in one read, plus the one that sees its end; larger files (maps) double it.
/// rpatch reads such files a few hundred times per operation.
pub fn read_proc_bytes(path: impl AsRef<std::path::Path>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut buf = Vec::with_capacity(4096);
    // Through `take`, whose reading to the end asks no size and reads into the buffer's spare
    // capacity as it is (no zeroing first).
    file.by_ref().take(u64::MAX).read_to_end(&mut buf)?;
    Ok(buf)
}

/// [`read_proc_bytes`] as text (an error when it is not UTF-8, as `fs::read_to_string`).
pub fn read_proc(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    String::from_utf8(read_proc_bytes(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads `/proc/PID/stat`: (state, start time).
pub fn read_stat(pid: i32, tid: i32) -> Result<(char, u64, String), ProcessError> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let text = read_proc(&path).map_err(|e| map_proc_err(pid, &path, e))?;
    parsed_stat(pid, path, &text)
}

/// [`parse_stat`] of the line read at `path`, an error naming the file when it does not parse.
fn parsed_stat(pid: i32, path: String, text: &str) -> Result<(char, u64, String), ProcessError> {
    parse_stat(text).ok_or_else(|| ProcessError::Io {
        pid,
        what: path,
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable stat"),
    })
}

/// Parses a stat line into (state, start time, comm); the comm may contain spaces and parentheses.
pub(crate) fn parse_stat(text: &str) -> Option<(char, u64, String)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    // Field 22 overall; `rest` started at field 3.
    let start = rest.nth(18)?.parse().ok()?;
    Some((state, start, comm))
}

/// The parent of process `pid` (field 4 of `/proc/PID/stat`): the process it was forked from
/// while that one lives, else whoever adopted it (init, a subreaper). `None` when unreadable.
pub fn parent(pid: i32) -> Option<i32> {
    let text = read_proc(format!("/proc/{pid}/stat")).ok()?;
    let close = text.rfind(')')?;
    text[close + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// The processes whose parent is `pid`, with their start times (clock ticks after boot).
pub fn children(pid: i32) -> Vec<(i32, u64)> {
    all_pids()
        .into_iter()
        .filter(|&p| parent(p) == Some(pid))
        .filter_map(|p| Some((p, read_stat(p, p).ok()?.1)))
        .collect()
}

/// The last PID allocated in rpatch's PID namespace (`/proc/sys/kernel/ns_last_pid`), when it
/// can be read and `/proc` shows that namespace (`/proc/self` is this process). The kernel hands
/// PIDs out in increasing order, wrapping at `pid_max`: a process created after this was read
/// has a PID in the cyclic interval from it (excluded) to the value read later (included).
pub fn last_pid() -> Option<i32> {
    // Which namespace this process's /proc shows does not change while it runs: asked once.
    static PROC_IS_OURS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ours = PROC_IS_OURS.get_or_init(|| {
        fs::read_link("/proc/self")
            .ok()
            .and_then(|own| own.to_str()?.parse::<u32>().ok())
            == Some(std::process::id())
    });
    if !ours {
        return None;
    }
    read_proc("/proc/sys/kernel/ns_last_pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// [`children`] of `pid` with a PID allocated after `last` was the last one (an earlier
/// [`last_pid`]): only those are read (a read of `/proc/P/stat` per process is most of the
/// cost of [`children`]); none at all when no PID was allocated since. Without `last`, or when
/// the namespace's last PID cannot be read now, every child.
pub fn children_since(pid: i32, last: Option<i32>) -> Vec<(i32, u64)> {
    let Some(before) = last else {
        return children(pid);
    };
    match last_pid() {
        None => return children(pid),
        Some(now) if now == before => return Vec::new(),
        Some(_) => {}
    }
    let listed = all_pids();
    // Read again after the listing: every process listed has a PID allocated before this read.
    let Some(now) = last_pid() else {
        return children(pid);
    };
    let fresh = |p: i32| match before.cmp(&now) {
        std::cmp::Ordering::Less => before < p && p <= now,
        std::cmp::Ordering::Greater => p > before || p <= now,
        // The whole PID space handed out since: every process is new.
        std::cmp::Ordering::Equal => true,
    };
    listed
        .into_iter()
        .filter(|&p| fresh(p) && parent(p) == Some(pid))
        .filter_map(|p| Some((p, read_stat(p, p).ok()?.1)))
        .collect()
}

/// Now, in the clock ticks of process start times (`CLOCK_BOOTTIME`, which start times count).
pub fn boot_ticks() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    now.tv_sec as u64 * hz + now.tv_nsec as u64 / (1_000_000_000 / hz)
}

/// The Unix time (seconds) of a start time in clock ticks after boot, to compare it with the
/// journal's times (to the second: the boot time is known to the second).
pub fn start_unix_secs(start_ticks: u64) -> u64 {
    let btime = read_proc("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    btime + start_ticks / hz
}

fn map_proc_err(pid: i32, what: &str, e: std::io::Error) -> ProcessError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ProcessError::NoSuchProcess { pid },
        std::io::ErrorKind::PermissionDenied => permission_denied(pid, format!("reading {what}")),
        _ => ProcessError::Io {
            pid,
            what: what.to_string(),
            source: e,
        },
    }
}

/// A `PermissionDenied` with the Yama scope filled in.
pub fn permission_denied(pid: i32, detail: String) -> ProcessError {
    let scope = read_proc("/proc/sys/kernel/yama/ptrace_scope")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "absent".into());
    ProcessError::PermissionDenied { pid, detail, scope }
}

/// Reads a `Key:\tvalue` field from `/proc/PID/task/TID/status`.
pub fn status_field(pid: i32, tid: i32, key: &str) -> Option<String> {
    let [value] = status_fields(pid, tid, [key]);
    value
}

/// Whether process `pid` has a handler installed for signal `sig` (`SigCgt` of its status):
/// a signal it catches makes an interrupted `epoll_wait` return EINTR, one it ignores or leaves
/// to the default action does not. Unknown (the status cannot be read): false.
pub fn signal_caught(pid: i32, sig: i32) -> bool {
    let [caught] = signal_masks(pid, pid, ["SigCgt"]);
    (1..=64).contains(&sig) && caught.is_some_and(|m| m & (1u64 << (sig - 1)) != 0)
}

/// Signal-set fields of `/proc/PID/task/TID/status` (`SigPnd`, `SigBlk`, `SigCgt`...) as
/// masks (bit `n - 1` for signal `n`), from one read of it; `None` where unreadable.
pub fn signal_masks<const N: usize>(pid: i32, tid: i32, keys: [&str; N]) -> [Option<u64>; N] {
    status_fields(pid, tid, keys).map(|v| u64::from_str_radix(&v?, 16).ok())
}

/// Reads several `Key:\tvalue` fields of `/proc/PID/task/TID/status` from one read of it.
pub fn status_fields<const N: usize>(pid: i32, tid: i32, keys: [&str; N]) -> [Option<String>; N] {
    let mut out = [const { None }; N];
    let Ok(text) = read_proc(format!("/proc/{pid}/task/{tid}/status")) else {
        return out;
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|k| *k == key) {
            out[i] = Some(value.trim().to_string());
        }
    }
    out
}

/// Whether an `x86_Thread_features` status value (the features enabled for the thread, e.g.
/// `shstk wrss`) includes the shadow stack.
fn shadow_stack_enabled(features: &str) -> bool {
    features.split_whitespace().any(|w| w == "shstk")
}

/// Thread name (`comm`) of a thread, for messages.
pub fn thread_name(pid: i32, tid: i32) -> String {
    read_proc(format!("/proc/{pid}/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Where a running thread is, for a message about a wait that ran out: its scheduler state,
/// the system call it is blocked in (number, as `/proc/PID/task/TID/syscall` shows it) and the
/// kernel function it sleeps in (`wchan`), e.g. `state S, in system call 202, sleeping in
/// futex_wait_queue`. What cannot be read is left out.
pub fn describe_thread(pid: i32, tid: i32) -> String {
    let dir = format!("/proc/{pid}/task/{tid}");
    let mut parts = Vec::new();
    if let Ok((state, ..)) = read_stat(pid, tid) {
        parts.push(format!("state {state}"));
    }
    if let Ok(text) = read_proc(format!("{dir}/syscall")) {
        match text.split_whitespace().next() {
            Some("running") => parts.push("running".to_string()),
            Some(nr) if nr.parse::<i64>().is_ok_and(|n| n >= 0) => {
                parts.push(format!("in system call {nr}"));
            }
            _ => {}
        }
    }
    if let Ok(wchan) = read_proc(format!("{dir}/wchan")) {
        let wchan = wchan.trim();
        if !wchan.is_empty() && wchan != "0" {
            parts.push(format!("sleeping in {wchan}"));
        }
    }
    if parts.is_empty() {
        "unknown".to_string()
    } else {
        parts.join(", ")
    }
}

/// Thread ids of a process, sorted.
pub fn list_threads(pid: i32) -> Result<Vec<i32>, ProcessError> {
    let path = format!("/proc/{pid}/task");
    let dir = fs::read_dir(&path).map_err(|e| map_proc_err(pid, &path, e))?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// A thread of `pid` that has not exited, if any.
pub fn live_task(pid: i32) -> Option<i32> {
    list_threads(pid)
        .ok()?
        .into_iter()
        .find(|&tid| read_stat(pid, tid).is_ok_and(|(s, ..)| !matches!(s, 'Z' | 'X' | 'x')))
}

/// Whether `pid` is gone (no live thread left) or, after one of its threads vanished under
/// ptrace (ESRCH), on its way out: a process that exits takes its threads one at a time, so a
/// live one may still be listed for a moment. Waits at most 200 ms for that to settle; a
/// process still alive then only lost a thread.
pub fn exiting(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    loop {
        if live_task(pid).is_none() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The /proc directory that describes the process's memory: `/proc/PID`, or — when the main
/// thread has exited while others run, and `/proc/PID/{maps,mem,exe}` of the zombie leader read
/// empty — the directory of a live thread, which shares the address space.
pub fn proc_dir(pid: i32) -> PathBuf {
    // Asked before most reads of a target's memory files: one `readlink` answers it for a main
    // thread that still has the address space (an exited one has no executable link), where a
    // read of its `stat` takes three system calls and formatting fifty fields.
    if fs::read_link(format!("/proc/{pid}/exe")).is_ok() {
        return PathBuf::from(format!("/proc/{pid}"));
    }
    let leader_gone = read_stat(pid, pid).is_ok_and(|(s, ..)| matches!(s, 'Z' | 'X' | 'x'));
    match leader_gone.then(|| live_task(pid)).flatten() {
        Some(tid) => PathBuf::from(format!("/proc/{pid}/task/{tid}")),
        None => PathBuf::from(format!("/proc/{pid}")),
    }
}

/// Reads `/proc/PID/NAME` (or a live thread's, see [`proc_dir`]), a file describing the
/// process's mappings (`maps`, `smaps`).
fn read_mappings_file(pid: i32, name: &str) -> Result<String, ProcessError> {
    // Read at `/proc/PID` first: only when that fails or reads empty (an exited main thread)
    // is [`proc_dir`] asked for a live thread's (no look at the leader before every read).
    let read = |path: String| read_proc(&path).map_err(|e| map_proc_err(pid, &path, e));
    let leader = PathBuf::from(format!("/proc/{pid}"));
    let direct = read(leader.join(name).display().to_string());
    if direct.as_ref().is_ok_and(|text| !text.is_empty()) {
        return direct;
    }
    match proc_dir(pid) {
        dir if dir == leader => direct,
        dir => read(dir.join(name).display().to_string()),
    }
}

/// The target's memory map.
pub fn read_maps(pid: i32) -> Result<Vec<Mapping>, ProcessError> {
    Ok(parse_maps(&read_mappings_file(pid, "maps")?))
}

/// The mappings of `pid` that a fork does not copy as they are (`MADV_DONTFORK`,
/// `MADV_WIPEONFORK`), from `/proc/PID/smaps`.
pub fn fork_flags(pid: i32) -> Result<Vec<(std::ops::Range<u64>, ForkFlag)>, ProcessError> {
    Ok(parse_fork_flags(&read_mappings_file(pid, "smaps")?))
}

/// Phase 1, *Identify*: the process exists, is not a zombie, is not traced by someone else, is
/// ours to trace, and runs our architecture. Nothing is changed.
pub fn identify(pid: i32) -> Result<ProcessInfo, ProcessError> {
    if pid <= 0 {
        return Err(ProcessError::NoSuchProcess { pid });
    }
    let (mut state, start_time, _) = user_stat(pid)?;
    if matches!(state, 'Z' | 'X' | 'x') {
        // The main thread may have exited while others run on: that process is alive.
        let tid = live_task(pid).ok_or(ProcessError::Exited { pid })?;
        state = read_stat(pid, tid)?.0;
    }
    let dir = proc_dir(pid);
    let exe = fs::read_link(dir.join("exe")).map_err(|e| map_proc_err(pid, "/proc/PID/exe", e))?;
    // Opening mem needs the same access check as PTRACE_ATTACH: fail early with a clear message.
    drop(ProcMem::open(pid)?);
    check_architecture(pid)?;
    let image = read_image(pid)?;
    let boot_id = boot_id().unwrap_or_default();
    let (mut seccomp_threads, mut shadow_stack_threads) = (Vec::new(), Vec::new());
    let mut tracer = None;
    let me = std::process::id() as i32;
    for tid in list_threads(pid)? {
        let [seccomp, features, traced_by] =
            status_fields(pid, tid, ["Seccomp", "x86_Thread_features", "TracerPid"]);
        if seccomp.as_deref() == Some("2") {
            seccomp_threads.push(tid);
        }
        if features.is_some_and(|f| shadow_stack_enabled(&f)) {
            shadow_stack_threads.push(tid);
        }
        if let Some(t) = traced_by.and_then(|v| v.parse::<i32>().ok())
            && t != 0
            && t != me
        {
            tracer.get_or_insert(t);
        }
    }
    Ok(ProcessInfo {
        pid,
        start_time,
        boot_id,
        exe,
        image,
        state,
        seccomp_threads,
        tracer,
        shadow_stack_threads,
    })
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): journals record it, since PIDs and start
/// times repeat from one boot to the next.
pub fn boot_id() -> Option<String> {
    read_proc("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether rpatch may inspect `pid` at all: the process exists and its memory can be opened
/// (the same access check as PTRACE_ATTACH), with the error a user needs when not.
pub fn check_access(pid: i32) -> Result<(), ProcessError> {
    if pid <= 0 {
        return Err(ProcessError::NoSuchProcess { pid });
    }
    refuse_kernel_thread(pid)?;
    drop(ProcMem::open(pid)?);
    Ok(())
}

/// `PF_KTHREAD` in the flags of /proc/PID/stat.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A kernel thread (kthreadd, kworker...) has a PID but no user-space memory or executable:
/// say so rather than "no such process" when its /proc files read empty.
pub fn refuse_kernel_thread(pid: i32) -> Result<(), ProcessError> {
    user_stat_line(pid).map(drop)
}

/// `/proc/PID/stat`, refused for a kernel thread (see [`refuse_kernel_thread`]).
fn user_stat_line(pid: i32) -> Result<String, ProcessError> {
    let path = format!("/proc/{pid}/stat");
    let text = read_proc(&path).map_err(|e| map_proc_err(pid, &path, e))?;
    match stat_flags(&text) {
        Some(flags) if flags & PF_KTHREAD != 0 => Err(ProcessError::KernelThread {
            pid,
            name: parse_stat(&text)
                .map(|(_, _, comm)| comm)
                .unwrap_or_default(),
        }),
        _ => Ok(text),
    }
}

/// The main thread's (state, start time, comm), refused for a kernel thread: both from one
/// read of `/proc/PID/stat`.
fn user_stat(pid: i32) -> Result<(char, u64, String), ProcessError> {
    parsed_stat(pid, format!("/proc/{pid}/stat"), &user_stat_line(pid)?)
}

/// Field 9 of a stat line: the task's flags.
fn stat_flags(text: &str) -> Option<u64> {
    let close = text.rfind(')')?;
    // Field 3 is the first after the comm.
    text[close + 1..].split_whitespace().nth(6)?.parse().ok()
}

/// Another process tracing a thread of `pid` (its id and name), if any: ptrace allows one
/// tracer per thread.
pub fn tracer_of(pid: i32) -> Result<Option<(i32, String)>, ProcessError> {
    let tracer = list_threads(pid)?
        .into_iter()
        .filter_map(|tid| status_field(pid, tid, "TracerPid")?.parse::<i32>().ok())
        .find(|&t| t != 0 && t != std::process::id() as i32);
    Ok(tracer.map(|t| (t, thread_name(t, t))))
}

fn check_architecture(pid: i32) -> Result<(), ProcessError> {
    let path = proc_dir(pid).join("exe").display().to_string();
    let mut header = [0u8; 20];
    let f = fs::File::open(&path).map_err(|e| map_proc_err(pid, &path, e))?;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut header, 0)
        .map_err(|e| map_proc_err(pid, &path, e))?;
    let machine = u16::from_le_bytes([header[18], header[19]]);
    let (ours, expected) = (crate::isa::NAME, crate::isa::ELF_MACHINE);
    if header[4] != 2 || machine != expected {
        let arch = match (header[4], machine) {
            (1, _) => "32-bit".to_string(),
            (_, 62) => "x86_64".to_string(),
            (_, 183) => "aarch64".to_string(),
            (_, m) => format!("e_machine {m}"),
        };
        return Err(ProcessError::WrongArchitecture { pid, arch, ours });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file larger than the first buffer is read whole, and a /proc file reads as it does
    /// through `fs::read_to_string`.
    #[test]
    fn read_proc_reads_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        assert_eq!(read_proc_bytes(&path).unwrap(), bytes);
        let boot = "/proc/sys/kernel/random/boot_id";
        assert_eq!(read_proc(boot).unwrap(), fs::read_to_string(boot).unwrap());
        assert!(read_proc("/proc/self/nonexistent").is_err());
    }

    #[test]
    fn stat_with_odd_comm_parses() {
        let line =
            "123 (a) b (c)) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        let (state, start, comm) = parse_stat(line).unwrap();
        assert_eq!(state, 'S');
        assert_eq!(start, 98765);
        assert_eq!(comm, "a) b (c)");
    }

    /// The flags field of stat tells a kernel thread; PID 2 (kthreadd) is refused as one.
    #[test]
    fn kernel_threads_are_named_as_such() {
        let line = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 10 0 0";
        assert_eq!(stat_flags(line), Some(2129984));
        assert_ne!(stat_flags(line).unwrap() & PF_KTHREAD, 0);
        let kthreadd = read_proc("/proc/2/stat")
            .ok()
            .and_then(|t| stat_flags(&t))
            .is_some_and(|f| f & PF_KTHREAD != 0);
        if kthreadd {
            assert!(matches!(
                check_access(2),
                Err(ProcessError::KernelThread { pid: 2, .. })
            ));
        }
        assert!(refuse_kernel_thread(std::process::id() as i32).is_ok());
    }

    #[test]
    fn shadow_stack_is_read_from_the_enabled_features() {
        assert!(shadow_stack_enabled("shstk wrss"));
        assert!(shadow_stack_enabled("wrss shstk"));
        assert!(!shadow_stack_enabled(""));
        assert!(!shadow_stack_enabled("wrss"));
    }

    /// A child we fork is listed with its start time, which lies between two readings of the
    /// boot clock taken around the fork.
    #[test]
    fn children_start_between_boot_clock_readings() {
        let me = std::process::id() as i32;
        let before = boot_ticks();
        // SAFETY: the child only blocks in pause() until killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: pause(2) has no preconditions.
                unsafe { libc::pause() };
            }
        }
        let after = boot_ticks();
        let listed = children(me);
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let (_, start) = listed
            .into_iter()
            .find(|&(p, _)| p == child)
            .expect("the child is listed");
        assert!(
            before <= start && start <= after,
            "{before} <= {start} <= {after}"
        );
    }

    /// `children_since` lists a child forked after the last PID was read, and not one forked
    /// before (nor anything when no PID was allocated since).
    #[test]
    fn children_since_lists_only_children_forked_after_the_reading() {
        let me = std::process::id() as i32;
        let fork = || {
            // SAFETY: the child only blocks in pause() until killed.
            let child = unsafe { libc::fork() };
            if child == 0 {
                loop {
                    // SAFETY: pause(2) has no preconditions.
                    unsafe { libc::pause() };
                }
            }
            child
        };
        let older = fork();
        let Some(last) = last_pid() else {
            // /proc shows another PID namespace: nothing to compare (every child is listed).
            // SAFETY: kill and waitpid on our own child.
            unsafe {
                libc::kill(older, libc::SIGKILL);
                libc::waitpid(older, std::ptr::null_mut(), 0);
            }
            return;
        };
        let none_yet = children_since(me, last_pid());
        let newer = fork();
        let listed: Vec<i32> = children_since(me, Some(last))
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let everyone: Vec<i32> = children_since(me, None)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for child in [older, newer] {
            // SAFETY: kill and waitpid on our own children.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
        }
        assert!(listed.contains(&newer), "{listed:?} lacks {newer}");
        assert!(!listed.contains(&older), "{listed:?} has {older}");
        assert!(everyone.contains(&older) && everyone.contains(&newer));
        // Other tests fork meanwhile: the empty answer is only checked for what it may hold.
        assert!(!none_yet.iter().any(|&(p, _)| p == older));
    }

    /// A thread blocked in a read is described with its state and system call; the calling
    /// thread as running (state R: it reads its own files, so its system call is that read).
    #[test]
    fn describe_thread_names_state_and_system_call() {
        let me = std::process::id() as i32;
        let own = describe_thread(me, own_tid());
        assert!(own.contains("state R"), "{own}");
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            tx.send(own_tid()).unwrap();
            let mut byte = [0u8; 1];
            let _ = std::io::Read::read(&mut &reader, &mut byte);
        });
        let tid = rx.recv().unwrap();
        // Blocked once /proc shows it sleeping (it may take a moment to get there).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut seen = describe_thread(me, tid);
        while !seen.contains("state S") && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            seen = describe_thread(me, tid);
        }
        drop(writer);
        blocked.join().unwrap();
        assert!(
            seen.contains("state S") && seen.contains("in system call"),
            "{seen}"
        );
    }

    fn own_tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    /// Our parent is the process that forked us; our start lies within the last day.
    #[test]
    fn parent_and_start_time_of_self() {
        let me = std::process::id() as i32;
        // SAFETY: getppid has no preconditions.
        assert_eq!(parent(me), Some(unsafe { libc::getppid() }));
        let start = identify(me).unwrap().start_time;
        let now = crate::journal::now_secs();
        let started = start_unix_secs(start);
        assert!(
            started <= now + 1 && started + 86_400 * 365 > now,
            "{started} vs {now}"
        );
    }

    #[test]
    fn identifies_self_and_rejects_missing() {
        let me = identify(std::process::id() as i32).unwrap();
        assert!(me.start_time > 0);
        assert!(matches!(
            identify(0),
            Err(ProcessError::NoSuchProcess { .. })
        ));
        assert!(matches!(
            identify(i32::MAX),
            Err(ProcessError::NoSuchProcess { .. })
        ));
    }
}
