//! `status`: what the journal says is applied, checked against the target's memory.

use super::attach::method_name;
use super::identify;
use crate::Error;
use crate::journal::{Journal, PatchRecord, PatchState};
use crate::log::Log;
use crate::process::{self, Memory, ModuleMap, ProcMem, ProcessError};
use rpatch_arch::x86_64 as isa;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// One patch as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PatchStatus {
    /// Journal id.
    pub id: u64,
    /// Function.
    pub function: String,
    /// Runtime entry address (hex).
    pub address: String,
    /// Library as given at attach.
    pub library: std::path::PathBuf,
    /// Replacement name.
    pub replacement_name: String,
    /// Replacement runtime address (hex).
    pub replacement: String,
    /// `direct`, `island` or `absolute`.
    pub method: String,
    /// Island slot (hex) when used.
    pub island: Option<String>,
    /// `applied`, `missing` (memory holds the original), `tampered` (memory holds neither),
    /// `rolled_back` or `abandoned` (an attach that failed before writing).
    pub state: String,
    /// Whether calls reach this replacement now (false when a later patch on the same function
    /// sits on top of it).
    pub active: bool,
    /// Build-id of the patched module as mapped at attach.
    pub module_build_id: Option<String>,
    /// The module mapped now is another build (or gone): the patch's bytes no longer describe it.
    pub module_replaced: bool,
    /// The file on disk at the module's path is another build than the one mapped (rebuilt or
    /// upgraded since the process started): a restart would run different code.
    pub file_changed_on_disk: bool,
}

/// Bootstrap code an earlier run left in a module's slack bytes (it died, or could not prove no
/// thread would come back into it): harmless where it is, restored by the next attach or rollback
/// once no thread runs it.
#[derive(Debug, Clone, Serialize)]
pub struct SlackLeft {
    /// First byte (hex).
    pub address: String,
    /// Module whose slack holds it.
    pub module: PathBuf,
}

/// Result of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Target PID.
    pub pid: i32,
    /// Journal file, if one exists.
    pub journal: Option<std::path::PathBuf>,
    /// Every patch ever recorded, oldest first.
    pub patches: Vec<PatchStatus>,
    /// Bootstrap code left in slack bytes, verified in memory.
    pub slack_left: Vec<SlackLeft>,
}

/// What memory says about a live record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observed {
    Applied,
    Missing,
    Tampered,
}

fn observe(mem: &dyn Memory, journal: &Journal, r: &PatchRecord) -> Observed {
    let top = journal
        .data
        .top_of_stack(r.address)
        .map(|t| t.id)
        .unwrap_or(r.id);
    if top != r.id {
        // A later patch sits on top: this one is intact if its island slot still jumps right.
        return if slot_intact(mem, r) {
            Observed::Applied
        } else {
            Observed::Tampered
        };
    }
    match mem.read_vec(r.address, r.new.len()) {
        Ok(bytes) if bytes == r.new && slot_intact(mem, r) => Observed::Applied,
        Ok(bytes) if bytes == r.original => Observed::Missing,
        _ => Observed::Tampered,
    }
}

fn slot_intact(mem: &dyn Memory, r: &PatchRecord) -> bool {
    match r.island_slot {
        Some(slot) => mem
            .read_vec(slot, isa::ISLAND_SLOT_LEN)
            .is_ok_and(|b| b == isa::island_slot(r.replacement)),
        None => true,
    }
}

/// Settles records left unsettled by an interrupted attach or rollback, from what memory holds:
/// an attach intent is applied if memory holds its new bytes, abandoned if it holds the original;
/// a rollback intent is rolled back if memory holds the original, applied if it still holds the
/// new bytes. Patches stacked at one address are settled newest first (the order a rollback
/// restores them in). Saves the journal when anything changed.
pub(crate) fn reconcile(journal: &mut Journal, mem: &dyn Memory) -> Result<(), Error> {
    let mut unsettled: Vec<PatchRecord> = journal
        .data
        .patches
        .iter()
        .filter(|r| matches!(r.state, PatchState::Intent | PatchState::RollingBack))
        .cloned()
        .collect();
    unsettled.sort_by_key(|r| std::cmp::Reverse(r.id));
    let mut changed = false;
    for r in unsettled {
        // A rollback restores newest first: under a patch still applied, nothing was restored.
        let covered = journal
            .data
            .patches
            .iter()
            .any(|x| x.address == r.address && x.id > r.id && x.state == PatchState::Applied);
        if covered && r.state == PatchState::RollingBack {
            if let Some(rec) = journal.data.patches.iter_mut().find(|x| x.id == r.id) {
                rec.state = PatchState::Applied;
                changed = true;
            }
            continue;
        }
        let Ok(bytes) = mem.read_vec(r.address, r.new.len().max(r.original.len())) else {
            continue;
        };
        let holds = |b: &[u8]| bytes.starts_with(b);
        let settled = match r.state {
            PatchState::Intent if holds(&r.new) => PatchState::Applied,
            PatchState::Intent if holds(&r.original) => PatchState::Abandoned,
            PatchState::RollingBack if holds(&r.new) => PatchState::Applied,
            PatchState::RollingBack if holds(&r.original) => PatchState::RolledBack,
            _ => continue,
        };
        if let Some(rec) = journal.data.patches.iter_mut().find(|x| x.id == r.id) {
            rec.state = settled;
            if settled == PatchState::RolledBack {
                rec.rolled_back = Some(super::now_secs());
            }
            changed = true;
        }
    }
    let slack_before = journal.data.slack.len();
    super::slack::settle(journal, mem);
    if changed || journal.data.slack.len() != slack_before {
        journal.save()?;
    }
    Ok(())
}

/// Reports every recorded patch of `pid`, verified against memory. Reads memory without stopping
/// the target.
pub fn status(pid: i32, log: &Log) -> Result<StatusReport, Error> {
    let (state, lock) = super::lock_target(pid)?;
    let (info, identity) = identify(pid, log)?;
    let exists = state.journal_path(pid).exists();
    let maps = process::read_maps(pid)?;
    let mut modules = ModuleMap::new(pid, &maps, &info.exe);
    // Identity of each patched module: the build mapped now, and the file on disk now.
    let mut identities: HashMap<PathBuf, (Option<String>, Option<String>)> = HashMap::new();
    let mut journal = Journal::open_locked(lock, &state, &identity)?;
    let mem = ProcMem::open(pid).map_err(|e| ProcessError::Io {
        pid,
        what: "/proc/PID/mem".into(),
        source: e,
    })?;
    reconcile(&mut journal, &mem)?;
    let patches = journal
        .data
        .patches
        .iter()
        .map(|r| {
            let (mapped, on_disk) = identities
                .entry(r.module.clone())
                .or_insert_with(|| {
                    (
                        modules.mapped_build_id(&r.module),
                        modules.disk_build_id(&r.module),
                    )
                })
                .clone();
            let live = matches!(
                r.state,
                PatchState::Applied | PatchState::Intent | PatchState::RollingBack
            );
            let module_replaced =
                live && r.module_build_id.is_some() && mapped != r.module_build_id;
            let file_changed_on_disk = mapped.is_some() && on_disk != mapped;
            let (state, active) = match r.state {
                PatchState::RolledBack => ("rolled_back", false),
                PatchState::Abandoned => ("abandoned", false),
                PatchState::Applied | PatchState::Intent | PatchState::RollingBack => {
                    let top = journal.data.top_of_stack(r.address).map(|t| t.id) == Some(r.id);
                    match observe(&mem, &journal, r) {
                        Observed::Applied => ("applied", top),
                        Observed::Missing => ("missing", false),
                        Observed::Tampered => ("tampered", false),
                    }
                }
            };
            PatchStatus {
                id: r.id,
                function: r.function.clone(),
                address: format!("{:#x}", r.function_address),
                library: r.library.clone(),
                replacement_name: r.replacement_name.clone(),
                replacement: format!("{:#x}", r.replacement),
                method: method_name(r.method).into(),
                island: r.island_slot.map(|s| format!("{s:#x}")),
                state: state.into(),
                active,
                module_build_id: r.module_build_id.clone(),
                module_replaced,
                file_changed_on_disk,
            }
        })
        .collect();
    let slack_left = journal
        .data
        .slack
        .iter()
        .map(|r| SlackLeft {
            address: format!("{:#x}", r.address),
            module: r.module.clone(),
        })
        .collect();
    Ok(StatusReport {
        pid,
        journal: exists.then(|| journal.path().to_path_buf()),
        patches,
        slack_left,
    })
}
