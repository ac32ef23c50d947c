//! `rollback`: undo patches, newest first, restoring the bytes each one replaced.

use super::attach::ManifestTag;
use super::code::{expect_bytes, write_verified};
use super::{
    explain_elsewhere, frozen_write, identify, lock_target, retry_while_traced_by_rpatch,
    wait_untraced,
};
use crate::Error;
use crate::error::NothingToUndo;
use crate::fault::{FaultPoint, FrozenPoints};
use crate::isa;
use crate::journal::{Journal, PatchRecord, PatchState, Stale, reconcile};
use crate::log::{Log, PhaseClock, Phases};
use crate::process::{self, Memory, ModuleMap, Tracer};
use crate::safety::{GuardedRange, StackInspector};
use serde::Serialize;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use std::time::Instant;

/// Which patches to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackSelection {
    /// Every patch of the most recent attach that is still applied.
    Last,
    /// One patch by id.
    Id(u64),
    /// Every applied patch.
    All,
    /// Every applied patch of a manifest (`rollback --manifest`: same name, same library).
    Manifest(ManifestTag),
}

/// What to roll back.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// Target process.
    pub pid: i32,
    /// Which patches.
    pub selection: RollbackSelection,
    /// With `Id`, also undo later patches stacked on the same function.
    pub cascade: bool,
    /// How long to wait for threads to leave the bytes being restored and the replacements.
    pub timeout: Duration,
    /// Skip the stack check of the replacements (threads inside one finish in it: its code
    /// stays loaded). The PC check of the bytes being restored stays.
    pub allow_active: bool,
}

/// Result of `rollback`.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    /// Version of this report's JSON layout (docs/schemas/rollback.schema.json).
    pub schema_version: u32,
    /// Target PID.
    pub pid: i32,
    /// Ids undone, in the order undone.
    pub rolled_back: Vec<u64>,
    /// Microseconds all threads were stopped.
    pub frozen_us: u64,
    /// Microseconds spent in each phase, in the order they ran: `identify`, `plan`, `journal`
    /// (the rollback intent, fsynced), `tables` (unwind tables), `freeze` (freeze, check, write,
    /// thaw, with any retries), `settle`.
    pub phases_us: Phases,
    /// Wall time.
    pub total_ms: f64,
    /// What the rollback could not do cleanly (arm64: a call left to return EINTR once), also
    /// printed on stderr.
    pub warnings: Vec<String>,
}

impl RollbackReport {
    /// The version of this report's JSON layout (`schema_version`): raised only when a field
    /// changes meaning or goes away; new fields may be added within a version (docs/json.md).
    pub const SCHEMA_VERSION: u32 = 1;
}

/// Undoes patches in the target.
pub fn rollback(options: &RollbackOptions, log: &Log) -> Result<RollbackReport, Error> {
    let pid = options.pid;
    let deadline = Instant::now() + options.timeout;
    let since = crate::journal::now_secs();
    retry_while_traced_by_rpatch(pid, deadline, log, || rollback_once(options, deadline, log))
        .map_err(|e| explain_elsewhere(e, pid, since))
}

/// The ids `rollback` would undo now, newest first, and nothing else: the journal is settled
/// from memory (as `status` does), but the target is neither traced nor stopped
/// (`rollback --manifest --dry-run`).
pub fn rollback_preview(options: &RollbackOptions, log: &Log) -> Result<Vec<u64>, Error> {
    let pid = options.pid;
    let since = crate::journal::now_secs();
    let (state, lock) = lock_target(pid)?;
    let (info, identity) = identify(pid, log)?;
    super::lineage::refuse_shared_address_space(pid)?;
    // A forked child's inherited patches are its own to roll back, as in `rollback_once`.
    let mut journal =
        super::lineage::open_journal(&state, lock, &info, &identity, Stale::Refuse, log)?;
    reconcile(&mut journal, &process::ProcMem::open(pid)?)?;
    let selected = select(&journal, options);
    drop(journal);
    match selected {
        Ok(records) => Ok(records.iter().map(|r| r.id).collect()),
        Err(e) => Err(explain_elsewhere(e, pid, since)),
    }
}

fn rollback_once(
    options: &RollbackOptions,
    deadline: Instant,
    log: &Log,
) -> Result<RollbackReport, Error> {
    let pid = options.pid;
    let mut clock = PhaseClock::start(log, "identify");
    let _exact = process::ExactSleeps::new();
    let (state, lock) = lock_target(pid)?;
    let (info, identity) = identify(pid, log)?;
    wait_untraced(&info, deadline, log)?;
    let mut journal =
        super::lineage::open_journal(&state, lock, &info, &identity, Stale::Refuse, log)?;
    super::lineage::refuse_shared_address_space_since(pid, &mut journal)?;
    let mut tracer = Tracer::new(pid)?;
    reconcile(&mut journal, tracer.mem())?;
    clock.enter("plan");
    let selected = select(&journal, options)?;
    let maps = process::read_maps(pid)?;
    let cache = Rc::new(state.cache());
    let mut modules = ModuleMap::new(pid, &maps, &info.exe).with_cache(cache.clone());
    same_builds(&mut modules, &selected, pid)?;
    log.step("plan", format!("rolling back {}", Ids(&selected)));
    let ranges = guarded_ranges(&selected, options.allow_active);
    // The rollback intent is durable before anything is stopped: if rpatch dies after writing
    // memory, the journal still tells what may have happened, and `reconcile` settles it. Its
    // disk write is under way while the unwind tables are read (before anything is stopped
    // too). Stacks are unwound even with --allow-active: a context a signal interrupted
    // resumes at its saved PC (an island slot being cleared, say), which the PC check covers.
    clock.enter("journal");
    let ids: Vec<u64> = selected.iter().map(|r| r.id).collect();
    journal.data.mark(&ids, PatchState::RollingBack);
    let intent = journal.begin_save()?;
    clock.enter("tables");
    let mut stacks = StackInspector::new(&mut modules, &maps, log)?;
    clock.enter("journal");
    intent.finish()?;
    crate::fault::point(FaultPoint::RollbackIntent);
    clock.enter("freeze");
    let result = frozen_write(
        FrozenPoints {
            frozen: FaultPoint::RollbackFrozen,
            written: FaultPoint::RollbackWritten,
            thawed: FaultPoint::RollbackThawed,
        },
        &mut tracer,
        &ranges,
        Some(&mut stacks),
        options.timeout,
        log,
        |mem| restore(mem, pid, &selected),
    );
    let frozen = match result {
        Ok(frozen) => frozen,
        Err(e) => {
            // Nothing, or only part, was restored: memory decides each record's state.
            reconcile(&mut journal, tracer.mem())?;
            return Err(e);
        }
    };
    clock.enter("settle");
    journal.data.mark(&ids, PatchState::RolledBack);
    journal.save_settled()?;
    super::slack::repair(&mut journal, &mut tracer, &mut stacks, options.timeout, log)?;
    let warnings = tracer.kept_eintr().iter().map(|k| k.to_string()).collect();
    stacks.remember();
    drop((stacks, modules));
    super::attach::log_cache(&cache, log);
    Ok(RollbackReport {
        schema_version: RollbackReport::SCHEMA_VERSION,
        pid,
        rolled_back: ids,
        frozen_us: frozen.as_micros() as u64,
        phases_us: clock.finish(),
        total_ms: log.elapsed_ms(),
        warnings,
    })
}

/// Patch ids for `-v`: `3, 2`.
struct Ids<'a>(&'a [PatchRecord]);

impl std::fmt::Display for Ids<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self.0.iter().map(|r| r.id.to_string()).collect();
        f.write_str(&ids.join(", "))
    }
}

/// The code at each address must still be the build that was patched.
fn same_builds(modules: &mut ModuleMap, selected: &[PatchRecord], pid: i32) -> Result<(), Error> {
    for r in selected {
        if let Some(recorded) = &r.module_build_id {
            let found = modules.mapped_build_id(&r.module);
            if found.as_ref() != Some(recorded) {
                return Err(Error::ModuleChanged {
                    function: r.function.clone(),
                    module: r.module.clone(),
                    pid,
                    recorded: recorded.clone(),
                    found,
                });
            }
        }
    }
    Ok(())
}

/// What no thread may be executing (the jumps and island slots being restored) and, unless
/// `allow_active`, what no thread may have on its stack (the replacements being switched away
/// from: after the rollback every call runs the original).
fn guarded_ranges(selected: &[PatchRecord], allow_active: bool) -> Vec<GuardedRange> {
    let mut ranges = Vec::new();
    for r in selected {
        ranges.push(GuardedRange {
            bytes: r.address..r.address + r.new.len() as u64,
            entry_ok: true,
            function: r.function.clone(),
            stack_range: None,
        });
        if !allow_active && r.replacement_size > 0 {
            ranges.push(GuardedRange {
                bytes: 0..0,
                entry_ok: true,
                function: format!(
                    "{} (replacement in {})",
                    r.replacement_name,
                    r.library.display()
                ),
                stack_range: Some(r.replacement..r.replacement + r.replacement_size),
            });
        }
        if let Some(slot) = r.island_slot {
            ranges.push(GuardedRange {
                bytes: slot..slot + isa::ISLAND_SLOT_LEN as u64,
                entry_ok: false,
                function: format!("{} (island slot)", r.function),
                stack_range: None,
            });
        }
    }
    ranges
}

/// The records to undo, newest first.
fn select(journal: &Journal, options: &RollbackOptions) -> Result<Vec<PatchRecord>, Error> {
    let pid = options.pid;
    let applied: Vec<&PatchRecord> = journal
        .data
        .patches
        .iter()
        .filter(|r| r.state == PatchState::Applied)
        .collect();
    let mut chosen: Vec<PatchRecord> = match &options.selection {
        RollbackSelection::All => applied.iter().map(|r| (*r).clone()).collect(),
        RollbackSelection::Manifest(manifest) => {
            let mine: Vec<PatchRecord> = applied
                .iter()
                .filter(|r| manifest.tags(r))
                .map(|r| (*r).clone())
                .collect();
            if mine.is_empty() {
                return Err(Error::NothingToRollBack {
                    pid,
                    why: NothingToUndo::ManifestNotApplied(manifest.name.clone()),
                });
            }
            mine
        }
        RollbackSelection::Last => {
            let Some(group) = applied.iter().map(|r| r.group).max() else {
                return Err(Error::NothingToRollBack {
                    pid,
                    why: NothingToUndo::NoneApplied,
                });
            };
            applied
                .iter()
                .filter(|r| r.group == group)
                .map(|r| (*r).clone())
                .collect()
        }
        &RollbackSelection::Id(id) => {
            let Some(record) = journal.data.patches.iter().find(|r| r.id == id) else {
                return Err(Error::NothingToRollBack {
                    pid,
                    why: NothingToUndo::NoSuchPatch(id),
                });
            };
            if record.state != PatchState::Applied {
                return Err(Error::NothingToRollBack {
                    pid,
                    why: NothingToUndo::NotApplied {
                        id,
                        state: record.state,
                    },
                });
            }
            let later: Vec<&PatchRecord> = applied
                .iter()
                .copied()
                .filter(|r| r.address == record.address && r.id > id)
                .collect();
            if let Some(top) = later.iter().map(|r| r.id).max()
                && !options.cascade
            {
                return Err(Error::StackedAbove {
                    id,
                    function: record.function.clone(),
                    later: top,
                });
            }
            std::iter::once(record).chain(later).cloned().collect()
        }
    };
    if chosen.is_empty() {
        return Err(Error::NothingToRollBack {
            pid,
            why: NothingToUndo::NoneApplied,
        });
    }
    // Stacked patches on one function are undone top first; also any later patch on a function
    // being restored must go first, so take every applied patch above a chosen one.
    for r in applied {
        let above_chosen = chosen.iter().any(|c| c.address == r.address && c.id < r.id);
        if above_chosen && !chosen.iter().any(|c| c.id == r.id) {
            if options.selection == RollbackSelection::Last || options.cascade {
                chosen.push(r.clone());
            } else {
                let base = chosen
                    .iter()
                    .find(|c| c.address == r.address)
                    .expect("present");
                return Err(Error::StackedAbove {
                    id: base.id,
                    function: base.function.clone(),
                    later: r.id,
                });
            }
        }
    }
    chosen.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(chosen)
}

/// Phase 6 of a rollback (all threads frozen): verify each function holds the jump its patch
/// wrote (simulating the stack as patches come off), then restore, clear island slots, read back.
fn restore(mem: &dyn Memory, pid: i32, records: &[PatchRecord]) -> Result<(), Error> {
    let mut model: HashMap<u64, Vec<u8>> = HashMap::new();
    for r in records {
        match model.get(&r.address) {
            // A patch above this one, restored first in this rollback, leaves these bytes.
            Some(bytes) if bytes.len() >= r.new.len() && bytes[..r.new.len()] != r.new[..] => {
                return Err(Error::UnexpectedBytes {
                    function: r.function.clone(),
                    address: r.address,
                    expected: r.new.clone(),
                    found: bytes[..r.new.len()].to_vec(),
                });
            }
            Some(bytes) if bytes.len() >= r.new.len() => {}
            _ => expect_bytes(mem, r.site(pid), &r.new)?,
        }
        model.insert(r.address, r.original.clone());
    }
    for (i, r) in records.iter().enumerate() {
        if i == 1 {
            crate::fault::point(FaultPoint::RollbackWrite);
        }
        let site = r.site(pid);
        write_verified(mem, site, &r.original)?;
        if let Some(slot) = r.island_slot {
            mem.write_at(slot, &[0u8; isa::ISLAND_SLOT_LEN])
                .map_err(|e| site.io_at(slot, e))?;
        }
    }
    Ok(())
}
