//! Per-ISA knowledge for rpatch: how a jump is encoded, which entry bytes must stay, and whether a
//! function's own code would branch into the bytes a patch overwrites.
//!
//! Nothing here touches a process: every function is pure, so it is unit-tested on byte slices.

pub mod aarch64;
pub mod x86_64;

/// Why a function cannot take an entry trampoline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unpatchable {
    /// Fewer bytes than the jump needs, after the kept prefix (e.g. `endbr64`).
    #[error("function is {available} bytes after its entry marker, a jump needs {needed}")]
    TooSmall {
        /// Bytes available for the jump.
        available: u64,
        /// Bytes the chosen jump needs.
        needed: u64,
    },
    /// An instruction of the function jumps into the bytes that would be overwritten; after the
    /// patch it would land in the middle of the new jump.
    #[error(
        "instruction at {from:#x} branches to {target:#x}, inside the bytes a patch overwrites"
    )]
    BranchIntoPatch {
        /// Address of the branching instruction.
        from: u64,
        /// Its target.
        target: u64,
    },
    /// The jump cannot reach its destination from where it would be written (arm64 `b`:
    /// ±128 MiB); the caller uses an island in reach, or the absolute jump.
    #[error("a branch at {from:#x} cannot reach {to:#x}")]
    OutOfReach {
        /// Address of the branch.
        from: u64,
        /// Where it should go.
        to: u64,
    },
}
