//! The thread's signal mask, read and set with ptrace (the FP/vector state layout is the
//! ISA's: `isa::call::layout`).

use crate::process::ProcessError;
use nix::errno::Errno;

/// Reads the signal mask of a ptrace-stopped thread.
pub(super) fn get_sigmask(tid: i32) -> Result<u64, ProcessError> {
    let mut mask = 0u64;
    // SAFETY: PTRACE_GETSIGMASK writes `size` (8) bytes to the pointer, which is a live u64.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            &mut mask as *mut u64,
        )
    };
    if rc < 0 {
        return Err(ProcessError::Ptrace {
            op: "GETSIGMASK",
            tid,
            errno: Errno::last(),
        });
    }
    Ok(mask)
}

/// Sets the signal mask of a ptrace-stopped thread.
pub(super) fn set_sigmask(tid: i32, mask: u64) -> Result<(), ProcessError> {
    // SAFETY: PTRACE_SETSIGMASK reads `size` (8) bytes from the pointer, a live u64.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            &mask as *const u64,
        )
    };
    if rc < 0 {
        return Err(ProcessError::Ptrace {
            op: "SETSIGMASK",
            tid,
            errno: Errno::last(),
        });
    }
    Ok(())
}
