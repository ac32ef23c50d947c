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
//! `-ERESTART_RESTARTBLOCK` to `restart_syscall` (x8 = 128), which continues the call from its
//! restart block (a sleep with the time left, a futex wait to its original deadline).
//!
//! A borrowed thread resumes at a PC the tracer sets, so that switch never happens by itself:
//! the tracer sets x8 = 128 in the resume state, and nothing of rpatch's resets the restart
//! block (no `rt_sigreturn`; the stub's park is a `ppoll`, which has none). Which calls need it
//! is decided by the kernel, not guessed: a thread stopped on the `svc` of a call that *may*
//! continue through `restart_syscall` ([`restarts_through_restart_block`]: `nanosleep`,
//! relative `clock_nanosleep`, `futex` waits with a timeout) with x8 still holding that call's
//! number is first resumed unchanged ([`Resume::AskKernel`]) — the kernel then switches x8
//! itself if the call had been interrupted — and stopped again once it blocks: x8 = 128 there
//! is the kernel's answer, kept in the resume state. (From the registers alone, a thread the
//! interrupt caught just *before* its `svc` looks the same as one rewound onto it, and
//! `restart_syscall` on a stale restart block returns `-EINTR`.) `ppoll` (glibc's `poll`),
//! `pselect6` and absolute sleeps restart as themselves, the time left written back or
//! absolute.
//!
//! **Plain `-EINTR`.** Some calls return `-EINTR` to user space when a ptrace interrupt
//! arrives, with no restart ([`EINTR_ONLY_SYSCALLS`]). The stop then has PC after the `svc` and
//! x0 = -4: the first argument is lost from the registers, so rewinding needs the arguments
//! read from `/proc/TID/syscall` *before* the interrupt ([`resume_state`]).
//!
//! **Temporary signal masks.** `rt_sigsuspend`, and `ppoll`, `pselect6`, `epoll_pwait(2)` given
//! a mask, run with a temporary mask that the kernel replaces by the thread's own on the way
//! out. Interrupted, the thread stops before that replacement, but PTRACE_GETSIGMASK reports the
//! mask that will be restored (the saved one) and PTRACE_SETSIGMASK cancels the pending
//! replacement: a tracer that reads the mask at the stop and sets it back when the thread
//! resumes gives it its own mask, and the re-issued call installs its temporary one again.

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
/// `__NR_rt_sigsuspend`.
pub const SYS_RT_SIGSUSPEND: u64 = 133;
/// `__NR_rt_sigprocmask`.
pub const SYS_RT_SIGPROCMASK: u64 = 135;
/// `__NR_rt_sigtimedwait`.
pub const SYS_RT_SIGTIMEDWAIT: u64 = 137;
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

/// What a tracer does with a thread it has just stopped, before it borrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Borrow it: afterwards it resumes from this state (PSTATE cleaned).
    At(ResumeState),
    /// The thread stands on the `svc` of a call that may continue through `restart_syscall`,
    /// and only the kernel knows whether it was interrupted inside it: let it go unchanged
    /// (the kernel switches x8 to `restart_syscall` if so) and stop it again once it blocks.
    /// Should that keep failing (a thread that never stays in the call), `reissue` re-issues
    /// the call as it stands: correct, but a relative timeout starts over.
    AskKernel {
        /// The state that re-issues the call.
        reissue: ResumeState,
    },
}

/// What to do with a thread stopped at `regs` (see the module documentation), given whether
/// the word at its PC is `svc #0` (`on_svc`), the call it was blocked in before the interrupt
/// (`blocked`; `None` when it was running or the file could not be read) and whether an
/// `-EINTR` it got may be undone (`eintr_spurious`: no signal is pending for the thread itself,
/// so the interrupt was rpatch's — see `process::syscall` for the x86_64 rule).
///
/// * An [`EINTR_ONLY_SYSCALLS`] call that returned `-EINTR` to PC `blocked.pc` is rewound onto
///   its `svc` with x0 = its first argument, when `eintr_spurious` and x8 still holds its
///   number.
/// * On the `svc` of a call that may continue through `restart_syscall` (x8 and x0..x5 are the
///   call, as the kernel's rewind leaves them): [`Resume::AskKernel`]. With x8 =
///   `restart_syscall` the kernel has answered already: the state is kept.
/// * Anything else resumes as it is: a call rewound onto its `svc` re-issues itself.
///
/// PSTATE always loses its branch type and single-step bit.
pub fn resume_state(
    regs: &ResumeState,
    on_svc: bool,
    blocked: Option<&BlockedCall>,
    eintr_spurious: bool,
) -> Resume {
    let mut state = regs.cleaned();
    if let Some(call) = blocked
        && eintr_spurious
        && EINTR_ONLY_SYSCALLS.contains(&call.nr)
        && regs.pc == call.pc
        && regs.x[0] as i64 == -EINTR
        && regs.x[8] == call.nr
    {
        state.pc = call.pc - 4;
        state.x[0] = call.args[0];
        return Resume::At(state);
    }
    let nr = regs.x[8];
    if on_svc && nr != SYS_RESTART_SYSCALL && restarts_through_restart_block(nr, &regs.x[..6]) {
        return Resume::AskKernel { reissue: state };
    }
    Resume::At(state)
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

    fn at(r: Resume) -> ResumeState {
        match r {
            Resume::At(s) => s,
            other => panic!("expected a resume state, got {other:?}"),
        }
    }

    #[test]
    fn a_rewound_call_resumes_as_is_with_a_clean_pstate() {
        // Kernel already put PC on the svc (0x1000) and x0 = orig_x0: read re-issues itself.
        let r = regs(0x1000, 5, SYS_READ);
        let s = at(resume_state(
            &r,
            true,
            Some(&blocked(SYS_READ, 0x1004)),
            true,
        ));
        assert_eq!((s.pc, s.x[0], s.x[8]), (0x1000, 5, SYS_READ));
        assert_eq!(s.pstate, 0x6000_0000, "NZCV kept, BTYPE and SS cleared");
        assert_eq!((s.x[1], s.sp), (0x77, 0x7ffc_0000));
    }

    #[test]
    fn restart_block_calls_ask_the_kernel_until_x8_is_restart_syscall() {
        // nanosleep(req, rem) rewound onto its svc: only the kernel knows whether it was
        // interrupted inside (then it switches x8 to restart_syscall when let go unchanged).
        let mut r = regs(0x1000, 0x7ffc_1000, SYS_NANOSLEEP);
        assert_eq!(
            resume_state(&r, true, None, true),
            Resume::AskKernel {
                reissue: r.cleaned()
            }
        );
        // Relative clock_nanosleep and a futex wait with a timeout too; not an absolute sleep.
        r.x[8] = SYS_CLOCK_NANOSLEEP;
        r.x[..4].copy_from_slice(&[1, 0, 0x7ffc_1000, 0]);
        assert!(matches!(
            resume_state(&r, true, None, true),
            Resume::AskKernel { .. }
        ));
        r.x[1] = TIMER_ABSTIME;
        assert!(matches!(resume_state(&r, true, None, true), Resume::At(_)));
        r.x[8] = SYS_FUTEX;
        r.x[..4].copy_from_slice(&[0x1000, 128, 0, 0x2000]);
        assert!(matches!(
            resume_state(&r, true, None, true),
            Resume::AskKernel { .. }
        ));
        // The kernel's answer: x8 = restart_syscall, kept as is.
        r.x[8] = SYS_RESTART_SYSCALL;
        let s = at(resume_state(&r, true, None, true));
        assert_eq!((s.pc, s.x[8]), (0x1000, SYS_RESTART_SYSCALL));
        // Not on an svc (the call returned, or never started): nothing to ask.
        let mut r = regs(0x1004, 0, SYS_NANOSLEEP);
        r.x[0] = 0;
        assert!(matches!(resume_state(&r, false, None, true), Resume::At(_)));
    }

    #[test]
    fn a_spurious_eintr_is_rewound_with_the_first_argument_back() {
        let r = regs(0x2004, -4, SYS_EPOLL_PWAIT);
        let call = blocked(SYS_EPOLL_PWAIT, 0x2004);
        let s = at(resume_state(&r, false, Some(&call), true));
        assert_eq!((s.pc, s.x[0], s.x[8]), (0x2000, 5, SYS_EPOLL_PWAIT));
        // Not when a signal of the thread's own made it real, nor for other calls or states.
        let kept = |r: &ResumeState, call: &BlockedCall, spurious| {
            let s = at(resume_state(r, false, Some(call), spurious));
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
        // The same call known from the state the thread was resumed with (on the svc).
        let mut resumed = regs(0x2000, 5, SYS_EPOLL_PWAIT);
        resumed.x[1..6].copy_from_slice(&[6, 7, 8, 9, 10]);
        assert_eq!(BlockedCall::resumed_onto_svc(&resumed), call);
    }
}
