//! Activeness check: may the bytes about to be written be changed under every thread right now?
//!
//! With every thread frozen, a thread whose PC lies inside the bytes being replaced would resume in
//! the middle of the new instruction. Such a thread blocks the write; the caller thaws, backs off
//! and retries until its timeout, then names the thread.
//!
//! By default a thread with a frame of the old function on its stack blocks too (kpatch's
//! consistency model): blocked in a system call made from inside the function, it would return
//! into the old code after the patch, mixing old and new behaviour. Stacks are unwound with the
//! modules' CFI by a [`StackInspector`] built before the freeze; where the unwind cannot be
//! trusted to the outermost frame, the rest of the stack is scanned conservatively (`scan`).

mod cfi;
pub(crate) mod scan;
mod stack;

pub use stack::{Doubt, LoadedCopy, StackInspector, StackWalk};

#[cfg(test)]
use crate::log::Log;
#[cfg(test)]
use crate::process::Frozen;
use crate::process::{ThreadState, thread_name};
use std::fmt::Write as _;
use std::ops::Range;
use std::time::Instant;

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
    /// The whole old function, `[entry, entry + size)`, when a return address into it on any
    /// thread's stack must block the write too: such a thread would come back into the old code
    /// after the patch (kpatch's consistency model). `None` checks PCs against `bytes` only (island
    /// slots, rollbacks: the old code is what comes back).
    pub stack_range: Option<Range<u64>>,
}

/// Where the address that blocks a thread was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSource {
    /// The PC of a context a signal interrupted, read from the signal frame on the stack.
    Interrupted,
    /// The thread's PC is inside the bytes to be written.
    Pc,
    /// A return address found by unwinding the thread's stack with CFI.
    Unwound,
    /// A stack word that returns into the function right after a call instruction, found by the
    /// conservative scan after the unwind stopped early (it may be a stale word: counted anyway).
    Scanned,
    /// The thread is in vfork() until its child execs or exits, and cannot be stopped before:
    /// nothing can be frozen (the function is then the whole process).
    InVfork,
}

/// A thread found executing inside a guarded range or with a frame of its function on its stack.
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
    /// Frame depth of the blocking address: 0 is the PC itself, 1 the innermost return address.
    /// For a scanned word it is a lower bound (frames unwound before the scan, plus one).
    pub depth: usize,
    /// The blocking address: the PC, or the return address into the function.
    pub address: u64,
    /// How it was found.
    pub source: FrameSource,
    /// Why the unwind of this thread stopped before its outermost frame, when it did: a scanned
    /// blocker may be a false alarm, and the message says so.
    pub incomplete: Option<Doubt>,
    /// Only the C library's thread start lies below the function's frame: it is the thread's
    /// main loop and may never return, so waiting will not help.
    pub outermost: bool,
}

impl Blocker {
    /// One sentence for messages and `-v`: the thread (tid and name), the function, and where in
    /// the thread it was found (PC, unwound frame, or conservative scan).
    pub fn describe(&self) -> String {
        let who = format!("thread {} ({})", self.tid, self.name);
        match self.source {
            FrameSource::InVfork => format!(
                "{who} is in vfork(), waiting for its child to exec or exit, and cannot be stopped until then"
            ),
            FrameSource::Pc => format!(
                "{who} is executing inside {} at {:#x}, in the bytes to be replaced",
                self.function, self.pc
            ),
            FrameSource::Interrupted => format!(
                "{who} is in a signal handler that interrupted {} at {:#x} (frame #{}), in the bytes to be replaced",
                self.function, self.address, self.depth
            ),
            FrameSource::Unwound if self.outermost => format!(
                "{who} has {} on its stack as its outermost function below the C library's thread \
                 start (frame #{}, returns to {:#x}): it is that thread's main loop and may never \
                 return; pass --allow-active to patch anyway (that thread keeps running the old \
                 code) or patch a function it calls instead",
                self.function, self.depth, self.address
            ),
            FrameSource::Unwound => format!(
                "{who} has {} on its stack: frame #{} returns to {:#x} (PC {:#x})",
                self.function, self.depth, self.address, self.pc
            ),
            FrameSource::Scanned => {
                let mut s = format!(
                    "{who} may have {} on its stack: a stack word holds {:#x}, just after a call \
                     in it (frame #{} or deeper)",
                    self.function, self.address, self.depth
                );
                if let Some(doubt) = &self.incomplete {
                    let _ = write!(
                        s,
                        "; found by a conservative scan because the unwind stopped early ({doubt})"
                    );
                }
                s
            }
        }
    }
}

impl Blocker {
    /// A thread in vfork(): the whole process cannot be frozen while it is.
    pub fn in_vfork(pid: i32, tid: i32) -> Self {
        Blocker {
            tid,
            name: thread_name(pid, tid),
            function: "the process".into(),
            pc: 0,
            depth: 0,
            address: 0,
            source: FrameSource::InVfork,
            incomplete: None,
            outermost: false,
        }
    }
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

/// [`check`], printing the per-thread unwind times with `-v` at once.
#[cfg(test)]
pub fn find_blocker(
    frozen: &Frozen,
    ranges: &[GuardedRange],
    stacks: Option<&mut StackInspector>,
    log: &Log,
) -> Option<Blocker> {
    let (blocker, summary) = check(frozen, ranges, stacks);
    if let Some(summary) = summary {
        log.step("check", summary.to_string());
    }
    blocker
}

/// The stack walks of one check, for `-v` (formatted only when printed, after the thaw).
pub struct CheckSummary {
    elapsed: std::time::Duration,
    walks: Vec<(i32, StackWalk)>,
}

impl std::fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stacks unwound in {} us", self.elapsed.as_micros())?;
        for (tid, walk) in &self.walks {
            write!(
                f,
                "; {tid}: {} frames{} in {} us ({} KiB copied{})",
                walk.frames.len(),
                match &walk.doubt {
                    None => String::new(),
                    Some(d) => format!(", incomplete: {d}"),
                },
                walk.elapsed.as_micros(),
                walk.copied / 1024,
                match walk.direct_reads {
                    0 => String::new(),
                    n => format!(", {n} direct reads"),
                }
            )?;
        }
        Ok(())
    }
}

/// Phase 5, *Check*: the first frozen thread that blocks the write, if any (see [`Checker`],
/// which this runs on every thread of `frozen`).
#[cfg(test)]
pub fn check(
    frozen: &Frozen,
    ranges: &[GuardedRange],
    stacks: Option<&mut StackInspector>,
) -> (Option<Blocker>, Option<CheckSummary>) {
    let mut checker = Checker::new(frozen.pid(), ranges, stacks);
    for t in frozen.threads() {
        if !checker.visit(t) {
            break;
        }
    }
    checker.finish()
}

/// Phase 5, *Check*, one thread at a time, as each is stopped (the freeze calls [`visit`] for
/// every thread it stops, while others are still stopping: a thread checked stays stopped until
/// the write, so its verdict holds). Its PC is checked against the bytes to be written; then,
/// with a stack inspector, its stack is unwound: the PCs of contexts interrupted by signals are
/// checked like PCs, and for the ranges that have a `stack_range` the return addresses are
/// checked against the whole function (conservatively when the unwind stops early). Nothing is
/// printed (the world is being stopped): [`finish`] returns the summary of the walks for `-v`.
///
/// [`visit`]: Checker::visit
/// [`finish`]: Checker::finish
pub struct Checker<'a> {
    pid: i32,
    ranges: &'a [GuardedRange],
    stacks: Option<&'a mut StackInspector>,
    functions: Vec<(usize, Range<u64>)>,
    resumes: Vec<(usize, Range<u64>)>,
    walks: Vec<(i32, StackWalk)>,
    elapsed: std::time::Duration,
    found: Option<Blocker>,
}

impl<'a> Checker<'a> {
    /// A check of `pid`'s threads against `ranges` (stacks unwound with `stacks` when given).
    pub fn new(
        pid: i32,
        ranges: &'a [GuardedRange],
        stacks: Option<&'a mut StackInspector>,
    ) -> Self {
        let functions = ranges
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.stack_range.clone()?)))
            .collect();
        // Where a PC must not resume, for the conservative scan of incomplete walks.
        let resumes = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let first_unsafe = r.bytes.start + u64::from(r.entry_ok);
                (i, first_unsafe..r.bytes.end.max(first_unsafe))
            })
            .collect();
        Self {
            pid,
            ranges,
            stacks,
            functions,
            resumes,
            walks: Vec::new(),
            elapsed: std::time::Duration::ZERO,
            found: None,
        }
    }

    fn blocker(pid: i32, tid: i32, pc: u64, range: &GuardedRange) -> Blocker {
        Blocker {
            tid,
            name: thread_name(pid, tid),
            function: range.function.clone(),
            pc,
            depth: 0,
            address: pc,
            source: FrameSource::Pc,
            incomplete: None,
            outermost: false,
        }
    }

    /// Checks one stopped thread; `false` once a thread blocks the write (nothing more needs
    /// checking).
    pub fn visit(&mut self, t: &ThreadState) -> bool {
        self.visit_in(self.pid, t)
    }

    /// [`Self::visit`] for a stopped thread of process `pid`: the target's, or one of a process
    /// sharing its address space (`process::FrozenSharers`), which runs the same code.
    pub fn visit_in(&mut self, pid: i32, t: &ThreadState) -> bool {
        if self.found.is_some() {
            return false;
        }
        let pc = t.regs.pc();
        if let Some(r) = self.ranges.iter().find(|r| pc_blocks(r, pc)) {
            self.found = Some(Self::blocker(pid, t.tid, pc, r));
            return false;
        }
        // Every stack is unwound even when no range asks for the return-address check: a
        // context a signal interrupted resumes at its saved PC, which must not be in the bytes
        // either.
        let Some(stacks) = self.stacks.as_deref_mut() else {
            return true;
        };
        // The link register (arm64's x30) may hold the only return address into a function: a
        // leaf callee that saved nothing yet, or one the walk cannot start in.
        if let Some(lr) = t.regs.link_register() {
            let ret = stacks.strip_pac(lr);
            let into = self
                .functions
                .iter()
                .find(|(_, f)| scan::returns_into(f, ret));
            if let Some((i, _)) = into {
                self.found = Some(Blocker {
                    depth: 1,
                    address: ret,
                    source: FrameSource::Unwound,
                    ..Self::blocker(pid, t.tid, pc, &self.ranges[*i])
                });
                return false;
            }
        }
        let started = Instant::now();
        let (walk, hit) = stacks.find_in_stack(&t.regs, &self.functions, &self.resumes);
        self.elapsed += started.elapsed();
        // A context interrupted by a signal resumes at its saved PC when the handler returns:
        // that PC must not be inside the bytes being written either.
        let interrupted = walk.interrupted.iter().find_map(|&depth| {
            let pc = walk.frames[depth];
            let range = self.ranges.iter().find(|r| pc_blocks(r, pc))?;
            Some(Blocker {
                depth,
                address: pc,
                source: FrameSource::Interrupted,
                ..Self::blocker(pid, t.tid, t.regs.pc(), range)
            })
        });
        if interrupted.is_some() {
            self.found = interrupted;
            return false;
        }
        let doubt = walk.doubt.clone();
        self.walks.push((t.tid, walk));
        if let Some(hit) = hit {
            let range = &self.ranges[hit.range];
            self.found = Some(Blocker {
                depth: hit.depth,
                address: hit.address,
                source: match (hit.interrupted, hit.scanned) {
                    (true, _) => FrameSource::Interrupted,
                    (false, true) => FrameSource::Scanned,
                    (false, false) => FrameSource::Unwound,
                },
                incomplete: doubt,
                outermost: hit.outermost,
                ..Self::blocker(pid, t.tid, t.regs.pc(), range)
            });
            return false;
        }
        true
    }

    /// The thread that blocks the write, if one did, and the summary of the walks.
    pub fn finish(self) -> (Option<Blocker>, Option<CheckSummary>) {
        let summary = self.stacks.is_some().then_some(CheckSummary {
            elapsed: self.elapsed,
            walks: self.walks,
        });
        (self.found, summary)
    }
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
            stack_range: None,
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

    /// Messages name the thread (tid and name), the function and the frame, and say when a
    /// conservative scan found it.
    #[test]
    fn blocker_descriptions_name_thread_function_and_frame() {
        let pc = Blocker {
            tid: 42,
            name: "holder".into(),
            function: "held".into(),
            pc: 0x1003,
            depth: 0,
            address: 0x1003,
            source: FrameSource::Pc,
            incomplete: None,
            outermost: false,
        };
        let text = pc.describe();
        assert!(
            text.contains("thread 42 (holder)") && text.contains("held"),
            "{text}"
        );
        let scanned = Blocker {
            depth: 3,
            address: 0x2010,
            source: FrameSource::Scanned,
            incomplete: Some(Doubt::NoModule { address: 0x9000 }),
            ..pc
        };
        let text = scanned.describe();
        assert!(text.contains("frame #3 or deeper"), "{text}");
        assert!(
            text.contains("conservative scan") && text.contains("0x9000"),
            "{text}"
        );
    }
}
