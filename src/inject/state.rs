//! What the stub saves and restores besides the general registers: this machine's FP/vector
//! state layout, and the thread's signal mask (read and set with ptrace).

use crate::isa::remote_call::{self as stub, FpSave};
use crate::process::ProcessError;
use nix::errno::Errno;

/// XSAVE component 18, AMX tile data: dynamically enabled per process (the kernel faults a
/// thread that touches it without permission), so never saved or restored by the stub.
pub(super) const XFEATURE_TILE_DATA: u64 = 1 << 18;

/// How this machine's FP/vector state is saved by the stub: XSAVE of every component the kernel
/// enabled in XCR0 (but AMX tile data), in the standard format whose size CPUID leaf 0xD gives;
/// FXSAVE where the OS has not enabled XSAVE.
pub(super) fn fp_layout() -> FpSave {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers. (The
    // intrinsic is safe from Rust 1.94 on; `unsafe` keeps the MSRV building.)
    #[allow(unused_unsafe)]
    let cpuid = |leaf, sub_leaf| unsafe { __cpuid_count(leaf, sub_leaf) };
    // CPUID.1:ECX bit 27: OSXSAVE, the kernel enabled XSAVE (and XGETBV).
    if cpuid(1, 0).ecx & (1 << 27) == 0 {
        return FpSave::Fxsave;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it exists because OSXSAVE is set. It touches no
    // memory and only the named registers.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    let features = ((u64::from(hi) << 32) | u64::from(lo)) & !XFEATURE_TILE_DATA;
    // Components 0 and 1 (x87, SSE) live in the legacy area; each other one at the offset and
    // with the size CPUID.(0xD, i) gives for the standard format.
    let size = (2..64)
        .filter(|i| features & (1u64 << i) != 0)
        .map(|i| {
            let leaf = cpuid(0xd, i);
            u64::from(leaf.ebx) + u64::from(leaf.eax)
        })
        .fold(stub::XSAVE_MIN, u64::max);
    FpSave::Xsave { features, size }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The stub saves exactly what this machine's kernel enabled (but AMX tile data), in an
    /// area at least as large as the x87/SSE legacy area plus the XSAVE header.
    #[test]
    fn fp_layout_follows_the_enabled_components() {
        match fp_layout() {
            FpSave::Xsave { features, size } => {
                assert_eq!(features & 0b11, 0b11, "x87 and SSE are always enabled");
                assert_eq!(features & XFEATURE_TILE_DATA, 0);
                assert!(size >= stub::XSAVE_MIN);
                if features & 0b100 != 0 {
                    assert!(size >= 832, "AVX state follows the header");
                }
            }
            FpSave::Fxsave => {}
        }
    }
}
