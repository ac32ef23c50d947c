//! What a thread is doing in the kernel (from /proc/PID/task/TID/syscall), and the one syscall
//! fact that needs repairing after a ptrace interrupt: calls that fail with EINTR instead of
//! restarting.

use super::{Memory, status_fields};

use super::Regs;
use crate::isa::{self, sys};

/// Syscalls that return plain `-EINTR` when a ptrace interrupt arrives, with no restart code
/// (this ISA's numbers of epoll_wait, epoll_pwait(2), semop, semtimedop, rt_sigtimedwait).
pub const EINTR_ONLY_SYSCALLS: &[u64] = &sys::EINTR_ONLY;
const CLONE_VFORK: u64 = 0x4000;

/// A thread blocked in the kernel, as /proc/PID/task/TID/syscall shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedSyscall {
    /// Syscall number, -1 when blocked outside a syscall.
    pub nr: i64,
    /// Its arguments (empty when `nr` is -1).
    pub args: Vec<u64>,
    /// User stack pointer.
    pub sp: u64,
    /// User program counter.
    pub pc: u64,
}

impl BlockedSyscall {
    /// In `vfork`, or a `clone` with CLONE_VFORK: the thread cannot be stopped until its child
    /// execs or exits, and a child runs on its stack.
    pub fn in_vfork(&self) -> bool {
        Some(self.nr) == sys::VFORK
            || (self.nr == sys::CLONE && self.args.first().is_some_and(|f| f & CLONE_VFORK != 0))
    }

    /// In `vfork` or any `clone` (whose CLONE_VFORK rpatch cannot always see): never borrowed.
    pub fn in_vfork_or_clone(&self) -> bool {
        Some(self.nr) == sys::VFORK || self.nr == sys::CLONE || self.nr == sys::CLONE3
    }

    /// In one of [`EINTR_ONLY_SYSCALLS`].
    pub fn eintr_only(&self) -> bool {
        u64::try_from(self.nr).is_ok_and(|nr| EINTR_ONLY_SYSCALLS.contains(&nr))
    }
}

/// Where thread `tid` of `pid` is blocked; `None` when it runs (or is gone). The latest
/// answer for each thread is remembered (on the tracing thread, which alone makes ptrace
/// requests): an ISA whose interrupted call loses an argument (arm64's x0) checks it against
/// what `/proc` showed before the interrupt (see [`repair_eintr`]).
pub fn blocked_syscall(pid: i32, tid: i32) -> Option<BlockedSyscall> {
    read_and_remember(pid, tid, false, None)
}

/// [`blocked_syscall`] for a thread this tracer has just seized and not yet interrupted: what
/// it shows is remembered as *fresh* — no signal handler of the thread's can start before its
/// next stop without a signal-delivery stop rpatch sees (see [`Seen::fresh`]). With
/// `count_switches`, the thread's voluntary context switches are read first (see
/// [`Seen::switches`]).
pub(crate) fn observe_seized(pid: i32, tid: i32, count_switches: bool) {
    let switches = count_switches
        .then(|| voluntary_switches(pid, tid))
        .flatten();
    read_and_remember(pid, tid, true, switches);
}

/// The thread's `voluntary_ctxt_switches` (/proc/PID/task/TID/status).
pub(crate) fn voluntary_switches(pid: i32, tid: i32) -> Option<u64> {
    let [n] = status_fields(pid, tid, ["voluntary_ctxt_switches"]);
    n?.parse().ok()
}

/// Thread `tid` was given a signal to handle, or let go: what was seen of it is no longer
/// fresh.
pub(crate) fn stale(tid: i32) {
    SEEN.with(|m| {
        if let Some(seen) = m.borrow_mut().get_mut(&tid) {
            seen.fresh = false;
        }
    });
}

fn read_and_remember(
    pid: i32,
    tid: i32,
    fresh: bool,
    switches: Option<u64>,
) -> Option<BlockedSyscall> {
    let seen = parse(&super::read_proc(format!("/proc/{pid}/task/{tid}/syscall")).ok()?);
    SEEN.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= SEEN_MAX {
            m.clear();
        }
        match &seen {
            Some(b) if b.nr >= 0 => m.insert(
                tid,
                Seen {
                    call: b.clone(),
                    fresh,
                    switches,
                },
            ),
            _ => m.remove(&tid),
        }
    });
    seen
}

/// The latest blocked call seen of a thread before it was interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The call, as `/proc/PID/task/TID/syscall` showed it.
    pub call: BlockedSyscall,
    /// Read after this tracer seized the thread, and no signal handed to it since. Then no
    /// signal handler of the thread's runs before its next stop: one that starts makes a
    /// signal-delivery stop first, and one running when `/proc` was read would have had to be
    /// blocked in this very call itself. So the last system call the thread enters before an
    /// interrupt stop is a plain one, never a handler's `rt_sigreturn` (which restores registers
    /// that merely look like a call's return).
    pub fresh: bool,
    /// The thread's voluntary context switches, read just before `call` (when asked): a thread
    /// asleep in `call` then that an interrupt wakes stops with exactly one more (the stop's
    /// own); one that woke by itself and went to sleep in a call again has at least two more.
    pub switches: Option<u64>,
}

/// How many threads' latest blocked calls are remembered (a bound, not a cache policy: the
/// entries that matter are minutes old at most).
const SEEN_MAX: usize = 4096;

thread_local! {
    /// The latest blocked call [`blocked_syscall`] saw for each thread.
    static SEEN: std::cell::RefCell<std::collections::HashMap<i32, Seen>> =
        std::cell::RefCell::default();
}

/// What [`repair_eintr`] did with a stopped thread's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EintrRepair {
    /// Nothing to repair: not an EINTR of one of [`EINTR_ONLY_SYSCALLS`], or a real one (a
    /// signal is pending for the thread).
    None,
    /// The call was rewound: the thread re-enters it when let go.
    Rewound,
    /// A possibly spurious EINTR that could not be undone with certainty (arm64: which call to
    /// re-enter is not proven, see `isa::rewind_eintr`): the thread's call returns EINTR once,
    /// and the operation's report says so.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Kept {
        /// The call's name (`epoll_pwait`...).
        call: &'static str,
    },
}

/// The file descriptors of thread `tid`'s file table that are epoll instances
/// (`anon_inode:[eventpoll]`); `None` when the table cannot be read. The target's world is
/// stopped when this is asked, so the answer holds until it is let go. (Asked where an
/// interrupted epoll wait loses its instance from the registers: arm64.)
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn epoll_fds(pid: i32, tid: i32) -> Option<Vec<u64>> {
    let dir = format!("/proc/{pid}/task/{tid}/fd");
    let mut fds: Vec<u64> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let fd: u64 = e.file_name().to_str()?.parse().ok()?;
            is_epoll_link(&e.path()).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    Some(fds)
}

#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
fn is_epoll_link(path: &std::path::Path) -> bool {
    std::fs::read_link(path).is_ok_and(|t| t.as_os_str() == "anon_inode:[eventpoll]")
}

fn parse(text: &str) -> Option<BlockedSyscall> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let nr: i64 = fields.first()?.parse().ok()?;
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let (sp, pc) = match fields[1..] {
        [ref args @ .., sp, pc] if args.len() <= 6 => (hex(sp)?, hex(pc)?),
        _ => return None,
    };
    let args = fields[1..fields.len() - 2]
        .iter()
        .map(|a| hex(a))
        .collect::<Option<_>>()?;
    Some(BlockedSyscall { nr, args, sp, pc })
}

/// A ptrace interrupt made one of [`EINTR_ONLY_SYSCALLS`] fail with EINTR: unless a signal is
/// pending for this very thread (its EINTR is then real) and provided the instruction before
/// the PC is the system call instruction, rewind `regs` so the thread re-enters the call. A
/// process-wide pending signal does not count: any thread may take it, and when another one
/// does this thread's EINTR would be spurious; when this one does, its handler runs and the
/// call is re-entered, as a restartable call would be. Where the ISA cannot prove which call
/// to re-enter (arm64, see `isa::rewind_eintr`) the EINTR is kept and said so.
pub fn repair_eintr(pid: i32, tid: i32, mem: &dyn Memory, regs: &mut Regs) -> EintrRepair {
    if !isa::eintr_from_eintr_only_call(regs) {
        return EintrRepair::None;
    }
    let [pending, blocked] =
        super::signal_masks(pid, tid, ["SigPnd", "SigBlk"]).map(|m| m.unwrap_or(u64::MAX));
    if pending & !blocked != 0 {
        return EintrRepair::None;
    }
    let before = SEEN.with(|m| m.borrow().get(&tid).cloned());
    isa::rewind_eintr(pid, tid, mem, regs, before.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocked_running_and_outside_syscall() {
        let read = parse("0 0x3 0x7ffd 0x1 0x0 0x0 0x0 0x7ffc10 0x7f0012\n").unwrap();
        assert_eq!(
            (read.nr, read.args.len(), read.sp, read.pc),
            (0, 6, 0x7ffc10, 0x7f0012)
        );
        assert!(parse("running\n").is_none());
        let outside = parse("-1 0x7ffc10 0x7f0012\n").unwrap();
        assert_eq!((outside.nr, outside.args.len()), (-1, 0));
        let clone = sys::CLONE;
        let spawn = parse(&format!(
            "{clone} 0x4111 0x0 0x0 0x0 0x0 0x0 0x7ffc10 0x7f0012\n"
        ))
        .unwrap();
        assert!(spawn.in_vfork() && spawn.in_vfork_or_clone());
        let plain_clone = parse(&format!(
            "{clone} 0x3d0f00 0x0 0x0 0x0 0x0 0x0 0x7ffc10 0x7f0012\n"
        ))
        .unwrap();
        assert!(!plain_clone.in_vfork() && plain_clone.in_vfork_or_clone());
        assert!(
            parse(&format!(
                "{} 0x5 0x0 0x1 0xffffffff 0x0 0x0 0x1 0x2\n",
                sys::EINTR_ONLY[3]
            ))
            .unwrap()
            .eintr_only()
        );
    }

    #[test]
    fn eintr_repair_needs_an_eintr_only_syscall_and_a_syscall_instruction() {
        let mem = crate::process::FakeMemory::default();
        let insn = isa::SYSCALL_INSN;
        let len = insn.len() as u64;
        let mut code = insn.to_vec();
        code.extend_from_slice(&[0; 8]);
        mem.map(0x1000, code);
        let me = std::process::id() as i32;
        let eintr_only = sys::EINTR_ONLY[3];
        // Our own thread has no pending signal.
        let mut r = Regs::after_syscall(0x1000 + len, -4, eintr_only, 5);
        assert_eq!(repair_eintr(me, me, &mem, &mut r), EintrRepair::Rewound);
        assert_eq!(r.pc(), 0x1000);
        let mut read = Regs::after_syscall(0x1000 + len, -4, sys::READ, 5);
        assert_eq!(
            repair_eintr(me, me, &mem, &mut read),
            EintrRepair::None,
            "read's EINTR is real"
        );
        let mut no_syscall = Regs::after_syscall(0x1000 + 2 * len, -4, eintr_only, 5);
        assert_ne!(
            repair_eintr(me, me, &mem, &mut no_syscall),
            EintrRepair::Rewound
        );
    }
}
