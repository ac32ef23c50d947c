//! Activeness check: may the bytes about to be written be changed under every thread right now?
//!
//! With every thread frozen, a thread whose PC lies inside the bytes being replaced would resume in
//! the middle of the new instruction. Such a thread blocks the write; the caller thaws, backs off
//! and retries until its timeout, then names the thread.

use crate::process::{Tracer, thread_name};
use std::ops::Range;

/// A range about to be written, with what it belongs to (for messages).
#[derive(Debug, Clone)]
pub struct GuardedRange {
    /// Addresses that will change.
    pub bytes: Range<u64>,
    /// Whether a PC exactly at `bytes.start` is safe: true for a function entry (the thread will
    /// execute the new jump from its first byte), false for an island slot being cleared.
    pub entry_ok: bool,
    /// Function the range belongs to.
    pub function: String,
}

/// A thread found executing inside a guarded range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocker {
    /// Thread id.
    pub tid: i32,
    /// Thread name.
    pub name: String,
    /// Function it is in.
    pub function: String,
    /// Its PC.
    pub pc: u64,
}

/// Whether `pc` lies in `range` in a way that makes writing it unsafe.
pub fn pc_blocks(range: &GuardedRange, pc: u64) -> bool {
    let first_unsafe = if range.entry_ok {
        range.bytes.start + 1
    } else {
        range.bytes.start
    };
    (first_unsafe..range.bytes.end).contains(&pc)
}

/// Phase 5, *Check*: the first frozen thread whose PC is inside a guarded range, if any.
pub fn find_blocker(tracer: &Tracer, ranges: &[GuardedRange]) -> Option<Blocker> {
    tracer.threads().find_map(|t| {
        let pc = t.regs.rip;
        ranges.iter().find(|r| pc_blocks(r, pc)).map(|r| Blocker {
            tid: t.tid,
            name: thread_name(tracer.pid(), t.tid),
            function: r.function.clone(),
            pc,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_pc_is_safe_inside_is_not() {
        let r = GuardedRange {
            bytes: 0x1000..0x1005,
            entry_ok: true,
            function: "f".into(),
        };
        assert!(!pc_blocks(&r, 0x1000));
        assert!(pc_blocks(&r, 0x1001));
        assert!(pc_blocks(&r, 0x1004));
        assert!(!pc_blocks(&r, 0x1005));
        let slot = GuardedRange {
            entry_ok: false,
            ..r
        };
        assert!(pc_blocks(&slot, 0x1000));
    }
}
