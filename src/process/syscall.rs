//! What a thread is doing in the kernel (from /proc/PID/task/TID/syscall), and the one syscall
//! fact that needs repairing after a ptrace interrupt: calls that fail with EINTR instead of
//! restarting.

use super::{Memory, status_fields};

/// Syscalls that return plain `-EINTR` when a ptrace interrupt arrives, with no restart code
/// (x86_64: semop, rt_sigtimedwait, semtimedop, epoll_wait, epoll_pwait, epoll_pwait2).
pub const EINTR_ONLY_SYSCALLS: [u64; 6] = [65, 128, 220, 232, 281, 441];

/// x86_64 `vfork`.
const SYS_VFORK: i64 = 58;
/// x86_64 `clone`, which blocks like vfork with CLONE_VFORK (posix_spawn).
const SYS_CLONE: i64 = 56;
/// x86_64 `clone3`, whose flags live in memory (counted as possibly vfork-like).
const SYS_CLONE3: i64 = 435;
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
        self.nr == SYS_VFORK
            || (self.nr == SYS_CLONE && self.args.first().is_some_and(|f| f & CLONE_VFORK != 0))
    }

    /// In `vfork` or any `clone` (whose CLONE_VFORK rpatch cannot always see): never borrowed.
    pub fn in_vfork_or_clone(&self) -> bool {
        matches!(self.nr, SYS_VFORK | SYS_CLONE | SYS_CLONE3)
    }

    /// In one of [`EINTR_ONLY_SYSCALLS`].
    pub fn eintr_only(&self) -> bool {
        u64::try_from(self.nr).is_ok_and(|nr| EINTR_ONLY_SYSCALLS.contains(&nr))
    }
}

/// Where thread `tid` of `pid` is blocked; `None` when it runs (or is gone).
pub fn blocked_syscall(pid: i32, tid: i32) -> Option<BlockedSyscall> {
    parse(&super::read_proc(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
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
/// pending for this very thread (its EINTR is then real) and provided `rip - 2` holds a
/// `syscall`, rewind `regs` so the thread re-enters the call. A process-wide pending signal does
/// not count: any thread may take it, and when another one does this thread's EINTR would be
/// spurious; when this one does, its handler runs and the call is re-entered, as a restartable
/// call would be. Returns whether `regs` changed.
pub fn repair_eintr(
    pid: i32,
    tid: i32,
    mem: &dyn Memory,
    regs: &mut libc::user_regs_struct,
) -> bool {
    if regs.rax as i64 != -(libc::EINTR as i64) || !EINTR_ONLY_SYSCALLS.contains(&regs.orig_rax) {
        return false;
    }
    let [pending, blocked] = status_fields(pid, tid, ["SigPnd", "SigBlk"]).map(|v| {
        v.and_then(|v| u64::from_str_radix(&v, 16).ok())
            .unwrap_or(u64::MAX)
    });
    if pending & !blocked != 0 {
        return false;
    }
    let mut insn = [0u8; 2];
    if mem.read_at(regs.rip - 2, &mut insn).is_err() || insn != [0x0f, 0x05] {
        return false;
    }
    regs.rax = regs.orig_rax;
    regs.rip -= 2;
    true
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
        let spawn = parse("56 0x4111 0x0 0x0 0x0 0x0 0x0 0x7ffc10 0x7f0012\n").unwrap();
        assert!(spawn.in_vfork() && spawn.in_vfork_or_clone());
        let plain_clone = parse("56 0x3d0f00 0x0 0x0 0x0 0x0 0x0 0x7ffc10 0x7f0012\n").unwrap();
        assert!(!plain_clone.in_vfork() && plain_clone.in_vfork_or_clone());
        assert!(
            parse("232 0x5 0x0 0x1 0xffffffff 0x0 0x0 0x1 0x2\n")
                .unwrap()
                .eintr_only()
        );
    }

    fn regs(rip: u64, rax: i64, orig: u64) -> libc::user_regs_struct {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.rip = rip;
        r.rax = rax as u64;
        r.orig_rax = orig;
        r
    }

    #[test]
    fn eintr_repair_needs_an_eintr_only_syscall_and_a_syscall_instruction() {
        let mem = crate::process::FakeMemory::default();
        mem.map(0x1000, vec![0x0f, 0x05, 0x90, 0x90]);
        let me = std::process::id() as i32;
        // Our own thread has no pending signal.
        let mut r = regs(0x1002, -4, 232);
        assert!(repair_eintr(me, me, &mem, &mut r));
        assert_eq!((r.rip, r.rax), (0x1000, 232));
        let mut read = regs(0x1002, -4, 0);
        assert!(
            !repair_eintr(me, me, &mem, &mut read),
            "read's EINTR is real"
        );
        let mut no_syscall = regs(0x1004, -4, 232);
        assert!(!repair_eintr(me, me, &mem, &mut no_syscall));
    }
}
