//! System-call facts for arm64 Linux: numbers, and where a thread stopped by ptrace in or near
//! a system call must resume.
//!
//! **arm64 rewinds before the stop.** When a thread in a restartable system call is
//! interrupted (a signal, or PTRACE_INTERRUPT), the kernel's `do_signal()` prepares the restart
//! *before* the ptrace stop, "so that a debugger will see the already changed PC": for
//! `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND` and `-ERESTART_RESTARTBLOCK` it sets
//! `x0 = orig_x0` and PC back onto the `svc`, and forgets the system call (NT_ARM_SYSTEM_CALL
//! reads -1). The return code is gone from the registers, so a tracer cannot tell the four
//! apart. Only when the PC is unchanged at resume does the kernel then switch
//! `-ERESTART_RESTARTBLOCK` to `restart_syscall` (x8 = 128).
//!
//! A thread that makes remote calls resumes through `rt_sigreturn` (see
//! [`remote_call`](super::remote_call)), and `rt_sigreturn` sets the thread's restart block to
//! "no restart": a `restart_syscall` issued after it returns `-EINTR`. So rpatch never sets
//! x8 = 128: the rewound call is re-issued as it was (x8 still holds its number, x0 its first
//! argument). For the calls that would have continued through `restart_syscall`
//! ([`restarts_through_restart_block`]) this means: `futex` waits and absolute sleeps resume
//! exactly; a *relative* `nanosleep`/`clock_nanosleep` or `FUTEX_WAIT` timeout starts over
//! from its full length. Callers that can choose another thread should
//! ([`restarts_through_restart_block`] tells them which to avoid).
//!
//! **Plain `-EINTR`.** Some calls return `-EINTR` to user space when a ptrace interrupt
//! arrives, with no restart ([`EINTR_ONLY_SYSCALLS`]). The stop then has PC after the `svc` and
//! x0 = -4: the first argument is lost from the registers, so rewinding needs the arguments
//! read from `/proc/TID/syscall` *before* the interrupt ([`resume_state`]).

use super::remote_call::ResumeState;

/// `__NR_epoll_pwait`.
pub const SYS_EPOLL_PWAIT: u64 = 22;
/// `__NR_read`.
pub const SYS_READ: u64 = 63;
/// `__NR_ppoll`.
pub const SYS_PPOLL: u64 = 73;
/// `__NR_futex`.
pub const SYS_FUTEX: u64 = 98;
/// `__NR_nanosleep`.
pub const SYS_NANOSLEEP: u64 = 101;
/// `__NR_clock_nanosleep`.
pub const SYS_CLOCK_NANOSLEEP: u64 = 115;
/// `__NR_restart_syscall`.
pub const SYS_RESTART_SYSCALL: u64 = 128;
/// `__NR_sigaltstack`.
pub const SYS_SIGALTSTACK: u64 = 132;
/// `__NR_rt_sigprocmask`.
pub const SYS_RT_SIGPROCMASK: u64 = 135;
/// `__NR_rt_sigtimedwait`.
pub const SYS_RT_SIGTIMEDWAIT: u64 = 137;
/// `__NR_rt_sigreturn`.
pub const SYS_RT_SIGRETURN: u64 = 139;
/// `__NR_getpid`.
pub const SYS_GETPID: u64 = 172;
/// `__NR_semtimedop`.
pub const SYS_SEMTIMEDOP: u64 = 192;
/// `__NR_semop`.
pub const SYS_SEMOP: u64 = 193;
/// `__NR_clone`.
pub const SYS_CLONE: u64 = 220;
/// `__NR_mmap`.
pub const SYS_MMAP: u64 = 222;
/// `__NR_clone3`.
pub const SYS_CLONE3: u64 = 435;
/// `__NR_epoll_pwait2`.
pub const SYS_EPOLL_PWAIT2: u64 = 441;

/// Calls that return plain `-EINTR` when a ptrace interrupt arrives (arm64 has no
/// `epoll_wait`: glibc uses `epoll_pwait`).
pub const EINTR_ONLY_SYSCALLS: [u64; 5] = [
    SYS_EPOLL_PWAIT,
    SYS_RT_SIGTIMEDWAIT,
    SYS_SEMTIMEDOP,
    SYS_SEMOP,
    SYS_EPOLL_PWAIT2,
];

/// `TIMER_ABSTIME` (clock_nanosleep flags).
const TIMER_ABSTIME: u64 = 1;
/// `FUTEX_WAIT`, `FUTEX_WAIT_BITSET` (the low bits of the futex op).
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;
/// The futex op's command bits (without PRIVATE and CLOCK_REALTIME).
const FUTEX_CMD_MASK: u64 = 0x7f;

/// Whether the kernel ends an interrupted call `nr(args)` with `-ERESTART_RESTARTBLOCK`, i.e.
/// would continue it through `restart_syscall` when left alone: `nanosleep`, relative
/// `clock_nanosleep`, and `futex` waits with a timeout. (`ppoll`, `pselect6` and absolute
/// sleeps restart as themselves, with the time left written back or absolute.)
pub fn restarts_through_restart_block(nr: u64, args: &[u64]) -> bool {
    let arg = |i: usize| args.get(i).copied().unwrap_or(0);
    match nr {
        SYS_NANOSLEEP | SYS_RESTART_SYSCALL => true,
        SYS_CLOCK_NANOSLEEP => arg(1) & TIMER_ABSTIME == 0,
        SYS_FUTEX => {
            matches!(arg(1) & FUTEX_CMD_MASK, FUTEX_WAIT | FUTEX_WAIT_BITSET) && arg(3) != 0
        }
        _ => false,
    }
}

/// A thread's system call as `/proc/PID/task/TID/syscall` showed it *before* the interrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedCall {
    /// The call's number.
    pub nr: u64,
    /// Its six arguments.
    pub args: [u64; 6],
    /// The user PC shown: the instruction after the `svc`.
    pub pc: u64,
}

impl BlockedCall {
    /// The call a thread is about to make when its resume state has it on an `svc` (a call
    /// the kernel rewound, re-issued): x8 and x0..x5 are the call. A tracer that resumed the
    /// thread there uses this when `/proc` showed it running at the next interrupt (it had not
    /// re-entered the call yet), so an `-EINTR` caused by that interrupt can still be undone.
    pub fn resumed_onto_svc(resume: &ResumeState) -> Self {
        let mut args = [0; 6];
        args.copy_from_slice(&resume.x[..6]);
        Self {
            nr: resume.x[8],
            args,
            pc: resume.pc + 4,
        }
    }
}

/// `-EINTR`.
const EINTR: i64 = 4;

/// The state a thread stopped at `regs` must continue from, given the call it was blocked in
/// before the interrupt (`blocked`; `None` when it was running or the file could not be read)
/// and whether an `-EINTR` it got may be undone (`eintr_spurious`: no signal is pending for the
/// thread itself, so the interrupt was rpatch's — see `process::syscall` for the x86_64 rule).
///
/// * A restartable call the kernel rewound (PC on the `svc`, `blocked.pc - 4`) needs nothing:
///   x0 and x8 already re-issue it (see the module documentation for `restart_syscall`).
/// * An [`EINTR_ONLY_SYSCALLS`] call that returned `-EINTR` to PC `blocked.pc` is rewound onto
///   its `svc` with x0 = its first argument, when `eintr_spurious` and x8 still holds its
///   number.
/// * PSTATE loses its branch type (a new PC is not reached by a branch) and the single-step
///   bit.
pub fn resume_state(
    regs: &ResumeState,
    blocked: Option<&BlockedCall>,
    eintr_spurious: bool,
) -> ResumeState {
    let mut state = *regs;
    state.pstate = super::remote_call::clean_pstate(state.pstate);
    if let Some(call) = blocked
        && eintr_spurious
        && EINTR_ONLY_SYSCALLS.contains(&call.nr)
        && regs.pc == call.pc
        && regs.x[0] as i64 == -EINTR
        && regs.x[8] == call.nr
    {
        state.pc = call.pc - 4;
        state.x[0] = call.args[0];
    }
    state
}

/// Whether the kernel rewound the thread onto the `svc` of `blocked` before the stop (a
/// restartable call was interrupted).
pub fn rewound(regs: &ResumeState, blocked: &BlockedCall) -> bool {
    regs.pc.wrapping_add(4) == blocked.pc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(pc: u64, x0: i64, x8: u64) -> ResumeState {
        let mut r = ResumeState {
            pc,
            sp: 0x7ffc_0000,
            pstate: 0x6000_0000 | 0xc00 | 1 << 21, // Z, C, BTYPE 3, SS
            ..Default::default()
        };
        r.x[0] = x0 as u64;
        r.x[8] = x8;
        r.x[1] = 0x77;
        r
    }

    fn blocked(nr: u64, pc: u64) -> BlockedCall {
        BlockedCall {
            nr,
            args: [5, 6, 7, 8, 9, 10],
            pc,
        }
    }

    #[test]
    fn restart_block_calls_are_classified() {
        assert!(restarts_through_restart_block(SYS_NANOSLEEP, &[1, 0]));
        assert!(restarts_through_restart_block(
            SYS_CLOCK_NANOSLEEP,
            &[1, 0, 2, 0]
        ));
        assert!(!restarts_through_restart_block(
            SYS_CLOCK_NANOSLEEP,
            &[1, TIMER_ABSTIME, 2, 0]
        ));
        // FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME with a timeout.
        assert!(restarts_through_restart_block(
            SYS_FUTEX,
            &[0x1000, 9 | 128 | 256, 0, 0x2000]
        ));
        assert!(
            !restarts_through_restart_block(SYS_FUTEX, &[0x1000, 128, 0, 0]),
            "no timeout"
        );
        assert!(
            !restarts_through_restart_block(SYS_FUTEX, &[0x1000, 1, 1, 0]),
            "FUTEX_WAKE"
        );
        assert!(!restarts_through_restart_block(
            SYS_PPOLL,
            &[0, 1, 0x3000, 0]
        ));
        assert!(!restarts_through_restart_block(SYS_READ, &[0, 0, 1]));
    }

    #[test]
    fn a_rewound_call_resumes_as_is_with_a_clean_pstate() {
        // Kernel already put PC on the svc (0x1000) and x0 = orig_x0.
        let r = regs(0x1000, 5, SYS_NANOSLEEP);
        let call = blocked(SYS_NANOSLEEP, 0x1004);
        assert!(rewound(&r, &call));
        let s = resume_state(&r, Some(&call), true);
        assert_eq!((s.pc, s.x[0], s.x[8]), (0x1000, 5, SYS_NANOSLEEP));
        assert_eq!(s.pstate, 0x6000_0000, "NZCV kept, BTYPE and SS cleared");
        assert_eq!((s.x[1], s.sp), (0x77, 0x7ffc_0000));
    }

    #[test]
    fn a_spurious_eintr_is_rewound_with_the_first_argument_back() {
        let r = regs(0x2004, -4, SYS_EPOLL_PWAIT);
        let call = blocked(SYS_EPOLL_PWAIT, 0x2004);
        let s = resume_state(&r, Some(&call), true);
        assert_eq!((s.pc, s.x[0], s.x[8]), (0x2000, 5, SYS_EPOLL_PWAIT));
        // Not when a signal of the thread's own made it real, nor for other calls or states.
        let kept = |r: &ResumeState, call: &BlockedCall, spurious| {
            let s = resume_state(r, Some(call), spurious);
            (s.pc, s.x[0]) == (r.pc, r.x[0])
        };
        assert!(kept(&r, &call, false));
        assert!(kept(&r, &blocked(SYS_READ, 0x2004), true));
        assert!(
            kept(&regs(0x2004, 3, SYS_EPOLL_PWAIT), &call, true),
            "returned events"
        );
        assert!(
            kept(&regs(0x3000, -4, SYS_EPOLL_PWAIT), &call, true),
            "elsewhere now"
        );
        assert!(kept(&regs(0x2004, -4, 63), &call, true), "x8 changed");
        assert!(!rewound(&r, &call));
        // The same call known from the state the thread was resumed with (on the svc).
        let mut resumed = regs(0x2000, 5, SYS_EPOLL_PWAIT);
        resumed.x[1..6].copy_from_slice(&[6, 7, 8, 9, 10]);
        assert_eq!(BlockedCall::resumed_onto_svc(&resumed), call);
    }
}
