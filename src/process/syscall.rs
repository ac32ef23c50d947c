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
/// requests): an ISA whose interrupted call loses an argument (arm64's x0) rewinds it from
/// what `/proc` showed before the interrupt (see [`repair_eintr`]).
pub fn blocked_syscall(pid: i32, tid: i32) -> Option<BlockedSyscall> {
    let seen = parse(&super::read_proc(format!("/proc/{pid}/task/{tid}/syscall")).ok()?);
    SEEN.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= SEEN_MAX {
            m.clear();
        }
        match &seen {
            Some(b) if b.nr >= 0 => m.insert(tid, b.clone()),
            _ => m.remove(&tid),
        }
    });
    seen
}

/// How many threads' latest blocked calls are remembered (a bound, not a cache policy: the
/// entries that matter are minutes old at most).
const SEEN_MAX: usize = 4096;

thread_local! {
    /// The latest blocked call [`blocked_syscall`] saw for each thread.
    static SEEN: std::cell::RefCell<std::collections::HashMap<i32, BlockedSyscall>> =
        std::cell::RefCell::default();
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
/// call is re-entered, as a restartable call would be. Returns whether `regs` changed.
pub fn repair_eintr(pid: i32, tid: i32, mem: &dyn Memory, regs: &mut Regs) -> bool {
    if !isa::eintr_from_eintr_only_call(regs) {
        return false;
    }
    let [pending, blocked] = status_fields(pid, tid, ["SigPnd", "SigBlk"]).map(|v| {
        v.and_then(|v| u64::from_str_radix(&v, 16).ok())
            .unwrap_or(u64::MAX)
    });
    if pending & !blocked != 0 {
        return false;
    }
    let before = SEEN.with(|m| m.borrow().get(&tid).cloned());
    isa::rewind_eintr(mem, regs, before.as_ref())
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
        assert!(repair_eintr(me, me, &mem, &mut r));
        assert_eq!(r.pc(), 0x1000);
        let mut read = Regs::after_syscall(0x1000 + len, -4, sys::READ, 5);
        assert!(
            !repair_eintr(me, me, &mem, &mut read),
            "read's EINTR is real"
        );
        let mut no_syscall = Regs::after_syscall(0x1000 + 2 * len, -4, eintr_only, 5);
        assert!(!repair_eintr(me, me, &mem, &mut no_syscall));
    }
}
