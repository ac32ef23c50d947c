//! Where a stopped thread must resume: its registers as the kernel would hand them back to it.
//!
//! A thread interrupted in a blocking system call stops with a restart code in `rax`; when it is
//! let go with no signal the kernel rewinds it onto its `syscall` instruction. rpatch's stubs
//! resume the thread themselves, with `orig_rax = -1` (no kernel restart), so the rewind is done
//! here, once, on the saved registers.

use crate::isa::remote_call::{RFLAGS_TF, ResumeState, SYS_RESTART_SYSCALL};

/// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`: re-execute the same system call.
const RESTART_SAME: [i64; 3] = [-512, -513, -514];

/// `-ERESTART_RESTARTBLOCK`: continue through `restart_syscall` (nanosleep, poll with timeout,
/// futex with timeout...), which resumes with the time left.
const RESTART_BLOCK: i64 = -516;

/// The state the thread must continue from, as if the kernel's syscall restart had run: for a
/// restart code, `rip` back onto the 2-byte `syscall` and `rax` the number to (re-)issue. The trap
/// flag is dropped (nothing of ours may be single-stepped).
pub fn resume_state(regs: &libc::user_regs_struct) -> ResumeState {
    let mut rip = regs.rip;
    let mut rax = regs.rax;
    if (regs.orig_rax as i64) >= 0 {
        let code = regs.rax as i64;
        if RESTART_SAME.contains(&code) {
            rip -= 2;
            rax = regs.orig_rax;
        } else if code == RESTART_BLOCK {
            rip -= 2;
            rax = SYS_RESTART_SYSCALL;
        }
    }
    ResumeState {
        rax,
        rbx: regs.rbx,
        rcx: regs.rcx,
        rdx: regs.rdx,
        rsi: regs.rsi,
        rdi: regs.rdi,
        rbp: regs.rbp,
        rsp: regs.rsp,
        r8: regs.r8,
        r9: regs.r9,
        r10: regs.r10,
        r11: regs.r11,
        r12: regs.r12,
        r13: regs.r13,
        r14: regs.r14,
        r15: regs.r15,
        rflags: regs.eflags & !RFLAGS_TF,
        rip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rip: u64, rax: i64, orig_rax: i64) -> libc::user_regs_struct {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.rip = rip;
        r.rax = rax as u64;
        r.orig_rax = orig_rax as u64;
        r.rsp = 0x7ffc_1000;
        r.rbx = 7;
        r.eflags = 0x246 | RFLAGS_TF;
        r
    }

    #[test]
    fn interrupted_syscalls_resume_on_their_syscall_instruction() {
        for code in [-512, -513, -514] {
            let s = resume_state(&regs(0x1002, code, 0));
            assert_eq!((s.rip, s.rax), (0x1000, 0), "read restarts (code {code})");
        }
        let s = resume_state(&regs(0x1002, -516, 35));
        assert_eq!(
            (s.rip, s.rax),
            (0x1000, SYS_RESTART_SYSCALL),
            "nanosleep continues through restart_syscall"
        );
    }

    #[test]
    fn finished_syscalls_and_user_code_resume_as_they_are() {
        // A completed read returning 5, an EINTR that is the target's own, user code.
        for (rax, orig) in [(5, 0), (-4, 232), (-512, -1), (0x1234, -1)] {
            let s = resume_state(&regs(0x2002, rax, orig));
            assert_eq!(
                (s.rip, s.rax),
                (0x2002, rax as u64),
                "rax {rax} orig {orig}"
            );
        }
    }

    #[test]
    fn resume_state_keeps_the_registers_and_drops_the_trap_flag() {
        let s = resume_state(&regs(0x1002, -512, 0));
        assert_eq!(s.rsp, 0x7ffc_1000);
        assert_eq!(s.rbx, 7);
        assert_eq!(s.rflags, 0x246);
    }
}
