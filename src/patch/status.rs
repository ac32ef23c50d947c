//! `status`: what the journal says is applied, checked against the target's memory.

use super::identify;
use crate::Error;
use crate::journal::{
    Inconsistent, JumpMethod, Observed, Origin, PatchState, Stale, observe, reconcile,
};
use crate::log::Log;
use crate::process::{self, ModuleMap, ProcMem};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// The state of a recorded patch as `status` reports it: the journal's state, and for a live
/// record what memory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchView {
    /// Memory holds the patch's jump.
    Applied,
    /// Memory holds the original code (the patch is recorded live but not in memory).
    Missing,
    /// Memory holds neither.
    Tampered,
    /// Rolled back.
    RolledBack,
    /// An attach that failed before writing.
    Abandoned,
}

impl PatchView {
    /// The snake_case name, as in `--json`.
    pub const fn name(self) -> &'static str {
        match self {
            PatchView::Applied => "applied",
            PatchView::Missing => "missing",
            PatchView::Tampered => "tampered",
            PatchView::RolledBack => "rolled_back",
            PatchView::Abandoned => "abandoned",
        }
    }
}

impl std::fmt::Display for PatchView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One patch as `status` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PatchStatus {
    /// Journal id.
    pub id: u64,
    /// Function.
    pub function: String,
    /// Runtime entry address (`"0x..."` in JSON).
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub address: u64,
    /// Library as given at attach.
    pub library: PathBuf,
    /// Replacement name.
    pub replacement_name: String,
    /// Replacement runtime address.
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub replacement: u64,
    /// How the jump reaches the replacement.
    pub method: JumpMethod,
    /// Island slot when used.
    #[serde(serialize_with = "crate::hex::serialize_opt_address")]
    pub island: Option<u64>,
    /// The patch's state, verified against memory.
    pub state: PatchView,
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
    /// The process inherited this patch from the process it was forked from: that process (PID,
    /// start time, boot id) and the patch's id in its journal. `null` for a patch made here.
    pub inherited: Option<Origin>,
    /// The manifest the patch was applied from (`attach --manifest`), if any.
    pub manifest: Option<String>,
}

/// Bootstrap code an earlier run left in a module's slack bytes (it died, or could not prove no
/// thread would come back into it): harmless where it is, restored by the next attach or rollback
/// once no thread runs it.
#[derive(Debug, Clone, Serialize)]
pub struct SlackLeft {
    /// First byte.
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub address: u64,
    /// Module whose slack holds it.
    pub module: PathBuf,
}

/// Result of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// Version of this report's JSON layout (docs/schemas/status.schema.json).
    pub schema_version: u32,
    /// Target PID.
    pub pid: i32,
    /// Journal file, if one exists.
    pub journal: Option<PathBuf>,
    /// Every patch ever recorded, oldest first.
    pub patches: Vec<PatchStatus>,
    /// Bootstrap code left in slack bytes, verified in memory.
    pub slack_left: Vec<SlackLeft>,
    /// The process was forked while rpatch loaded a library into the process named here (or
    /// descends from such a child): its loader state is half updated, and rpatch never loads
    /// anything into it (attach refuses; rollback works).
    pub inconsistent: Option<Inconsistent>,
    /// Other processes share this one's address space without being its threads (a vfork or
    /// posix_spawn child before its exec, a `clone(CLONE_VM)` child): they run the same code,
    /// recorded in the journal of the oldest of them, the owner. `null` when none does.
    pub shared_mm: Option<SharedMm>,
    /// Copies of patch libraries the process maps that no record here loaded: another rpatch,
    /// with another state directory, patched it (from the host, seen from a container sharing
    /// its PID namespace, or from another container). Its journal tells what they changed.
    pub unrecorded_libraries: Vec<PathBuf>,
}

/// Processes sharing one address space (see [`StatusReport::shared_mm`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SharedMm {
    /// The process whose journal records the patches of that address space: the oldest.
    pub owner: i32,
    /// Every process sharing it, this one included, sorted.
    pub processes: Vec<i32>,
}

impl StatusReport {
    /// The version of this report's JSON layout (`schema_version`): raised only when a field
    /// changes meaning or goes away; new fields may be added within a version (docs/json.md).
    pub const SCHEMA_VERSION: u32 = 1;
}

/// Reports every recorded patch of `pid`, verified against memory. Reads memory without stopping
/// the target.
pub fn status(pid: i32, log: &Log) -> Result<StatusReport, Error> {
    let (state, lock) = super::lock_target(pid)?;
    let (info, identity) = identify(pid, log)?;
    // The sharer scan an attach or rollback kept: only what was created since is compared
    // (`status --all` asks this of every patched process). Not saved back: status writes
    // nothing it does not have to.
    if let Some(scan) = state
        .peek(pid)
        .filter(|d| d.identity.same_process(&identity))
        .and_then(|d| d.sharer_scan)
    {
        process::remember_sharer_scan(scan);
    }
    let shared_mm =
        process::shared_address_space(pid).map(|(owner, processes)| SharedMm { owner, processes });
    if let Some(shared) = shared_mm.as_ref().filter(|s| s.owner != pid) {
        // Its code is the owner's: nothing is recorded, or adopted, for this process.
        log.step(
            "journal",
            format!(
                "the address space is PID {}'s: see its status",
                shared.owner
            ),
        );
        return Ok(StatusReport {
            schema_version: StatusReport::SCHEMA_VERSION,
            pid,
            journal: None,
            patches: Vec::new(),
            slack_left: Vec::new(),
            inconsistent: None,
            shared_mm,
            unrecorded_libraries: Vec::new(),
        });
    }
    let maps = process::read_maps(pid)?;
    let mut modules =
        ModuleMap::new(pid, &maps, &info.exe).with_cache(std::rc::Rc::new(state.cache()));
    // Identity of each patched module: the build mapped now, and the file on disk now.
    let mut identities: HashMap<PathBuf, (Option<String>, Option<String>)> = HashMap::new();
    let mut journal =
        super::lineage::open_journal(&state, lock, &info, &identity, Stale::Refuse, log)?;
    let exists = state.journal_path(pid).exists();
    let mem = ProcMem::open(pid)?;
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
                PatchState::RolledBack => (PatchView::RolledBack, false),
                PatchState::Abandoned => (PatchView::Abandoned, false),
                PatchState::Applied | PatchState::Intent | PatchState::RollingBack => {
                    let top = journal.data.top_of_stack(r.address).map(|t| t.id) == Some(r.id);
                    match observe(&mem, &journal.data, r) {
                        Observed::Applied => (PatchView::Applied, top),
                        Observed::Missing => (PatchView::Missing, false),
                        Observed::Tampered => (PatchView::Tampered, false),
                    }
                }
            };
            PatchStatus {
                id: r.id,
                function: r.function.clone(),
                address: r.function_address,
                library: r.library.clone(),
                replacement_name: r.replacement_name.clone(),
                replacement: r.replacement,
                method: r.method,
                island: r.island_slot,
                state,
                active,
                module_build_id: r.module_build_id.clone(),
                module_replaced,
                file_changed_on_disk,
                inherited: r.inherited.clone(),
                manifest: r.manifest.clone(),
            }
        })
        .collect();
    let slack_left = journal
        .data
        .slack
        .iter()
        .map(|r| SlackLeft {
            address: r.address,
            module: r.module.clone(),
        })
        .collect();
    Ok(StatusReport {
        schema_version: StatusReport::SCHEMA_VERSION,
        pid,
        journal: exists.then(|| journal.path().to_path_buf()),
        patches,
        slack_left,
        inconsistent: journal.data.inconsistent.clone(),
        shared_mm,
        unrecorded_libraries: super::elsewhere::unrecorded_libraries(&maps, &journal.data, |_| {
            false
        }),
    })
}
