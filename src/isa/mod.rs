//! The instruction set rpatch patches (its own: a target runs rpatch's architecture, see
//! `process::identify`), chosen in this one place. The rest of the crate names `isa::Regs`,
//! `isa::entry_jump`, `isa::call::...`; each ISA's module mirrors the same names:
//!
//! * `rpatch-arch`'s pure encodings for it (jumps, islands, landing pads, the stub and the
//!   bootstrap, re-exported);
//! * the register view ([`Regs`]: PC, SP, frame pointer, return value, syscall state) and how
//!   ptrace reads and writes it and the FP/vector state;
//! * system-call facts (numbers, the EINTR rewind), the ELF machine and seccomp's audit arch;
//! * the entry jump's lengths and reach, the call before a return address, the unwinder;
//! * [`call`]: how a remote call is set up, entered and returned from.
//!
//! A port to another ISA adds its module and its `cfg` arm here (ARCHITECTURE.md, "Where a new
//! ISA plugs in").

#[cfg(target_arch = "aarch64")]
#[path = "aarch64.rs"]
mod native;
#[cfg(target_arch = "x86_64")]
#[path = "x86_64.rs"]
mod native;

pub(crate) use native::*;

mod regset;

/// One remote call, as the ISA's data block needs it (see `call::Layout::block`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallArgs {
    /// Function to call.
    pub function: u64,
    /// Its six register arguments.
    pub args: [u64; 6],
    /// `__errno_location` (0: errno is not saved).
    pub errno_location: u64,
    /// Called with no arguments when `function` returns 0 (0: none).
    pub then_if_zero: u64,
    /// The thread's own signal mask, restored after the call (by the stub where the tracer
    /// does not do the return; during the call the tracer holds `CALL_BLOCK_MASK` on the
    /// thread with ptrace).
    pub own_mask: u64,
}
