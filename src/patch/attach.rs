//! `attach`: load a patch library into the target and redirect functions to it. [`attach`]
//! reads as the list of its phases (DESIGN.md: Identify, Plan, Load, Freeze, Check, Write, Thaw);
//! each is a function here or in the module named beside it.

use super::admit::admit;
use super::binding::{self, Binding};
use super::code::expect_bytes;
use super::delivery::{Payload, loadable_image};
use super::load::{LoadPhase, LoadRequest, LoaderWindow, load_until};
use super::plan::{self, FunctionRequest, PlannedFunction};
use super::{
    explain_elsewhere, frozen_write, identify, lock_target, retry_while_traced_by_rpatch,
    wait_untraced,
};
use crate::Error;
use crate::error::{LibraryProblem, PatchMemory, Unsupported};
use crate::fault::{FaultPoint, FrozenPoints};
use crate::inject::LoaderFunctions;
use crate::isa;
use crate::journal::{
    Journal, JournalData, JumpMethod, Observed, PatchRecord, PatchState, PendingSave, Stale,
    now_secs, observe, reconcile,
};
use crate::log::{Log, PhaseClock, Phases};
use crate::process::{self, Memory, ModuleMap, ProcMem, Tracer};
use crate::safety::{GuardedRange, LoadedCopy, StackInspector};
use crate::symbols::{Knowledge, Signature};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What to patch.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Target process.
    pub pid: i32,
    /// Patch library (shared object).
    pub library: PathBuf,
    /// Functions to replace, applied together or not at all.
    pub functions: Vec<FunctionRequest>,
    /// How long to wait for busy threads to leave the functions.
    pub timeout: Duration,
    /// How long the injected dlopen may take (library constructors run inside it).
    pub load_timeout: Duration,
    /// Stop after planning; touch nothing.
    pub dry_run: bool,
    /// `--force`: patch even when the DWARF signatures of function and replacement differ.
    pub force: bool,
    /// `--strict`: refuse a function that has inlined copies (they keep the old code).
    pub strict: bool,
    /// `--all-matches`: a name matching several functions (generic instances) patches each.
    pub all_matches: bool,
    /// Safety policies the user chose to override.
    pub allow: Allowances,
}

/// Safety refusals a user may override, each with its own flag.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowances {
    /// `--allow-stopped`: patch a process stopped by SIGSTOP (nothing else runs while the
    /// loader works, so a stopped thread holding the loader lock would deadlock the load).
    pub stopped: bool,
    /// `--allow-seccomp`: patch a process with seccomp filters (an injected syscall the filter
    /// does not allow may kill it).
    pub seccomp: bool,
    /// `--allow-insecure-lib`: load a library others could have written (it runs with the
    /// target's privileges).
    pub insecure_lib: bool,
    /// `--allow-active`: skip the stack check (the PC check stays): threads with the old function
    /// on their stack will return into old code.
    pub active: bool,
}

/// One applied (or, in a dry run, planned) patch.
#[derive(Debug, Clone, Serialize)]
pub struct PatchSummary {
    /// Journal id (0 in a dry run).
    pub id: u64,
    /// Function name.
    pub function: String,
    /// Module holding it.
    pub module: PathBuf,
    /// Runtime entry address (`"0x..."` in JSON).
    #[serde(serialize_with = "crate::hex::serialize_address")]
    pub address: u64,
    /// Size of the function in bytes.
    pub size: u64,
    /// `file:line` when known.
    pub location: Option<String>,
    /// Replacement name in the library.
    pub replacement_name: String,
    /// Runtime address of the replacement (none in a dry run: the library is not loaded).
    #[serde(serialize_with = "crate::hex::serialize_opt_address")]
    pub replacement: Option<u64>,
    /// Library as given.
    pub library: PathBuf,
    /// How the jump reaches the replacement (none in a dry run).
    pub method: Option<JumpMethod>,
    /// Island slot address when an island was used.
    #[serde(serialize_with = "crate::hex::serialize_opt_address")]
    pub island: Option<u64>,
    /// The function's signature from DWARF (types with sizes), when known.
    #[serde(serialize_with = "serialize_signature")]
    pub signature: Option<Signature>,
    /// The replacement's signature from DWARF, when known.
    #[serde(serialize_with = "serialize_signature")]
    pub replacement_signature: Option<Signature>,
}

/// A signature in JSON: its rendering, `(x: u64 [8]) -> u64 [8]`.
fn serialize_signature<S: serde::Serializer>(
    sig: &Option<Signature>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match sig {
        Some(sig) => s.serialize_str(&sig.render()),
        None => s.serialize_none(),
    }
}

/// Result of `attach`.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// Version of this report's JSON layout (docs/schemas/attach.schema.json).
    pub schema_version: u32,
    /// Target PID.
    pub pid: i32,
    /// Whether this was only a plan.
    pub dry_run: bool,
    /// The patches.
    pub patches: Vec<PatchSummary>,
    /// Microseconds all threads were stopped (freeze to thaw).
    pub frozen_us: u64,
    /// Microseconds spent in each phase, in the order they ran: `identify`, `plan`, `load`,
    /// `tables` (unwind tables), `journal` (the intent, fsynced), `freeze` (freeze, check, write,
    /// thaw, with any retries), `settle`. They add up to nearly `total_ms`.
    pub phases_us: Phases,
    /// Wall time of the whole operation.
    pub total_ms: f64,
    /// What the patch will not change or could not check (inlined copies, clones, aliases,
    /// signatures without DWARF, compiler versions).
    pub warnings: Vec<String>,
    /// Private objects of the target the library's references are bound to (see `binding`).
    pub bindings: Vec<Binding>,
    /// Children the target forked while the library was loading (by another thread): their
    /// copy of the loader's state is half updated, so they are marked inconsistent and never
    /// patched (also in `warnings`).
    pub inconsistent_children: Vec<i32>,
}

impl AttachReport {
    /// The version of this report's JSON layout (`schema_version`): raised only when a field
    /// changes meaning or goes away; new fields may be added within a version (docs/json.md).
    pub const SCHEMA_VERSION: u32 = 1;
}

impl PatchSummary {
    /// A planned function, before anything is loaded.
    fn planned(p: &PlannedFunction, library: &Path) -> Self {
        PatchSummary {
            id: 0,
            function: p.function.name.clone(),
            module: p.module.clone(),
            address: p.entry,
            size: p.function.size,
            location: p.function.location.clone(),
            replacement_name: p.replacement.name.clone(),
            replacement: None,
            library: library.to_path_buf(),
            method: None,
            island: None,
            signature: p.signature.clone(),
            replacement_signature: p.replacement_signature.clone(),
        }
    }

    /// A function patched by `r`.
    fn applied(p: &PlannedFunction, r: &PatchRecord) -> Self {
        PatchSummary {
            id: r.id,
            replacement: Some(r.replacement),
            method: Some(r.method),
            island: r.island_slot,
            ..Self::planned(p, &r.library)
        }
    }
}

/// Replaces the requested functions in the target with the library's versions.
pub fn attach(options: &AttachOptions, log: &Log) -> Result<AttachReport, Error> {
    match attach_as(options, None, log)? {
        AttachOutcome::Done(report) => Ok(report),
        AttachOutcome::AlreadyApplied(_) | AttachOutcome::RolledBack(_) => {
            unreachable!("only a manifest's patch is found applied or rolled back")
        }
    }
}

/// The manifest a patch is applied from (`attach --manifest`): its name is recorded with each
/// patch, and the library's bytes must hash to `library_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestTag {
    /// The manifest's `name`.
    pub name: String,
    /// The SHA-256 (hex) the manifest gives for its library.
    pub library_sha256: String,
    /// Leave a process whose newest patch from this manifest was rolled back (by hand) alone
    /// (`watch`), rather than apply it again (`attach --manifest`, which is asked to).
    pub keep_rolled_back: bool,
    /// The build-ids (hex) of the manifest's modules: every function must resolve in a module
    /// of one of these builds (read from memory), not in another module with the same name.
    pub build_ids: Vec<String>,
}

impl ManifestTag {
    /// Whether `record` was applied from this manifest (same name, same library content).
    pub fn tags(&self, record: &PatchRecord) -> bool {
        record.manifest.as_deref() == Some(&self.name)
            && record.library_sha256 == self.library_sha256
    }
}

/// What an attach from a manifest did.
#[derive(Debug, Clone)]
pub enum AttachOutcome {
    /// The patch was applied (or, in a dry run, planned).
    Done(AttachReport),
    /// The process carries this manifest's patch already (checked under the journal's lock,
    /// against memory): nothing was done. The ids of its records.
    AlreadyApplied(Vec<u64>),
    /// With [`ManifestTag::keep_rolled_back`]: the newest patch from this manifest was rolled
    /// back in this process; nothing was done. The ids of its records.
    RolledBack(Vec<u64>),
}

/// [`attach`], applying the patch as `manifest`'s when one is given: a process that carries it
/// already is left alone, and every record carries its name.
pub fn attach_as(
    options: &AttachOptions,
    manifest: Option<&ManifestTag>,
    log: &Log,
) -> Result<AttachOutcome, Error> {
    let pid = options.pid;
    let deadline = Instant::now() + options.timeout;
    let since = crate::journal::now_secs();
    retry_while_traced_by_rpatch(pid, deadline, log, || {
        attach_once(options, manifest, deadline, log)
    })
    .map_err(|e| explain_elsewhere(e, pid, since))
}

/// The records of the newest attach (one group) tagged with `manifest` in `journal`, if any.
fn newest_attach_of<'j>(
    journal: &'j JournalData,
    manifest: &ManifestTag,
) -> Option<Vec<&'j PatchRecord>> {
    let group = journal
        .patches
        .iter()
        .filter(|r| manifest.tags(r))
        .map(|r| r.group)
        .max()?;
    Some(
        journal
            .patches
            .iter()
            .filter(|r| r.group == group)
            .collect(),
    )
}

/// The records of the newest attach of `manifest` in `journal` when they were rolled back (and
/// none is applied again).
fn rolled_back_from(journal: &JournalData, manifest: &ManifestTag) -> Option<Vec<u64>> {
    let records = newest_attach_of(journal, manifest)?;
    let rolled_back = records.iter().any(|r| r.state == PatchState::RolledBack)
        && records
            .iter()
            .all(|r| matches!(r.state, PatchState::RolledBack | PatchState::Abandoned));
    rolled_back.then(|| records.iter().map(|r| r.id).collect())
}

/// The records of the newest attach of `manifest` in `journal` when every one of them is applied
/// and memory holds it.
fn applied_from(
    journal: &JournalData,
    manifest: &ManifestTag,
    mem: &dyn Memory,
) -> Option<Vec<u64>> {
    let records = newest_attach_of(journal, manifest)?;
    let all_in_memory = records
        .iter()
        .all(|r| r.state == PatchState::Applied && observe(mem, journal, r) == Observed::Applied);
    all_in_memory.then(|| records.iter().map(|r| r.id).collect())
}

fn attach_once(
    options: &AttachOptions,
    manifest: Option<&ManifestTag>,
    deadline: Instant,
    log: &Log,
) -> Result<AttachOutcome, Error> {
    let pid = options.pid;
    let mut clock = PhaseClock::start(log, "identify");
    // Remote calls and stops are waited for with short sleeps: they are exact meanwhile.
    let _exact = process::ExactSleeps::new();
    // Phase 1, Identify (patch/mod.rs), and the policies (admit.rs).
    let (state, lock) = lock_target(pid)?;
    let (info, identity) = identify(pid, log)?;
    wait_untraced(&info, deadline, log)?;
    admit(&info, &options.library, options.allow)?;
    let mut journal =
        super::lineage::open_journal(&state, lock, &info, &identity, Stale::SetAside, log)?;
    super::lineage::refuse_shared_address_space_since(pid, &mut journal)?;
    if let Some(i) = &journal.data.inconsistent {
        return Err(Error::Unsupported {
            reason: Unsupported::Inconsistent { pid, parent: i.pid },
        });
    }
    // Records an interrupted earlier run left unsettled decide what memory must hold now.
    let mem = ProcMem::open(pid)?;
    reconcile(&mut journal, &mem)?;
    if let Some(ids) = manifest.and_then(|m| applied_from(&journal.data, m, &mem)) {
        log.step("journal", format!("already applied: patches {ids:?}"));
        return Ok(AttachOutcome::AlreadyApplied(ids));
    }
    if let Some(ids) = manifest
        .filter(|m| m.keep_rolled_back)
        .and_then(|m| rolled_back_from(&journal.data, m))
    {
        log.step("journal", format!("rolled back by hand: patches {ids:?}"));
        return Ok(AttachOutcome::RolledBack(ids));
    }
    drop(mem);

    // Phase 2, Plan (plan.rs, binding.rs): nothing is stopped.
    clock.enter("plan");
    let cache = Rc::new(state.cache());
    let library = plan::open_library(&options.library, &cache)?;
    let maps = process::read_maps(pid)?;
    let mut modules = ModuleMap::new(pid, &maps, &info.exe).with_cache(cache.clone());
    let (planned, warnings) = make_plan(&mut modules, &library, options, log)?;
    if let Some(m) = manifest {
        in_manifest_modules(&modules, &planned, m, pid)?;
    }
    let bindings = binding::plan_bindings(&mut modules, &library)?;
    if options.dry_run {
        return Ok(AttachOutcome::Done(AttachReport {
            schema_version: AttachReport::SCHEMA_VERSION,
            pid,
            dry_run: true,
            patches: planned
                .iter()
                .map(|p| PatchSummary::planned(p, &options.library))
                .collect(),
            frozen_us: 0,
            phases_us: clock.finish(),
            total_ms: log.elapsed_ms(),
            warnings,
            bindings,
            inconsistent_children: Vec::new(),
        }));
    }

    // Phase 3, Load (load.rs, delivery.rs): one borrowed thread; the others keep running.
    // The bytes loaded are the bytes read here, once: they are what is hashed and journaled.
    clock.enter("load");
    let (library_bytes, library_sha256, library_known) = read_library(&library, &options.library)?;
    if let Some(m) = manifest.filter(|m| m.library_sha256 != library_sha256) {
        return Err(Error::LibraryInvalid {
            path: options.library.clone(),
            problem: LibraryProblem::HashMismatch {
                expected: m.library_sha256.clone(),
                found: library_sha256,
            },
        });
    }
    let payload = Payload::with_sha256("patch library", &library_bytes, library_sha256);
    let shim = binding::prepare_shim(&bindings, log);
    let mut tracer = Tracer::new(pid)?;
    let functions = LoaderFunctions::find(&mut modules)?;
    // The unwind tables of every module, read before anything is stopped: the load unwinds the
    // threads it considers borrowing; the freeze, every thread.
    let mut stacks = StackInspector::new(&mut modules, &maps, log)?;
    let request = LoadRequest {
        info: &info,
        functions: &functions,
        shim: shim.as_deref(),
        library: &payload,
        planned: &planned,
        timeout: options.load_timeout,
    };
    let mut window = LoaderWindow::default();
    let loaded = load_until(
        &mut tracer,
        &mut modules,
        &mut stacks,
        &mut journal,
        &request,
        &mut window,
        deadline,
        log,
    );
    // Whatever the outcome, a child forked while the loader ran holds a half-loaded library.
    let inconsistent_children = match window.ticks() {
        Some(ticks) => {
            let since = window.last_pid_before();
            super::lineage::mark_born_during_load(&state, &journal.data, &info, ticks, since, log)
        }
        None => Vec::new(),
    };
    let mut warnings = warnings;
    warnings.extend(inconsistent_children.iter().map(|child| {
        format!(
            "PID {child} was forked while the library loaded: its loader state is half updated, so rpatch will never patch it (restart it)"
        )
    }));
    let loaded = loaded?;
    crate::fault::point(FaultPoint::Loaded);
    copied_on_fork(pid, &loaded, &journal.data)?;
    // The intent is durable before anything is stopped: written now, its disk write under way
    // while the unwind tables of what the load mapped (the library) are read, durable before
    // the freeze (nothing slow while frozen). Stacks are always unwound: a context a signal
    // interrupted resumes at its saved PC, which the PC check covers; --allow-active skips
    // only the return-address check.
    clock.enter("journal");
    let (records, intent) = record_intent(
        &mut journal,
        &mut modules,
        &planned,
        &loaded,
        &options.library,
        payload.sha256.clone(),
        manifest.map(|m| m.name.clone()),
    )?;
    clock.enter("tables");
    let maps_now = process::read_maps(pid)?;
    let mut modules_now = ModuleMap::new(pid, &maps_now, &info.exe).with_cache(cache.clone());
    // The library's own tables come from the bytes loaded (when they are the bytes what is
    // known about the library was derived from), not from reading its copy again.
    let copy = library_known.then_some(LoadedCopy {
        dev: loaded.library.object.dev,
        inode: loaded.library.object.inode,
        known: &library,
        bytes: &library_bytes,
    });
    stacks.refresh(&mut modules_now, &maps_now, copy, log)?;
    clock.enter("journal");
    intent.finish()?;
    log.step(
        "journal",
        format!("intent recorded in {}", journal.path().display()),
    );
    crate::fault::point(FaultPoint::Intent);

    // Phases 4 to 7, Freeze, Check, Write, Thaw (patch/mod.rs, safety/).
    clock.enter("freeze");
    let ranges = guarded_ranges(&planned, &records, &journal.data, options.allow.active);
    let result = frozen_write(
        FrozenPoints {
            frozen: FaultPoint::Frozen,
            written: FaultPoint::Written,
            thawed: FaultPoint::Thawed,
        },
        &mut tracer,
        &ranges,
        Some(&mut stacks),
        options.timeout,
        log,
        |mem| write_patches(mem, pid, &records),
    );
    clock.enter("settle");
    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    let final_state = if result.is_ok() {
        PatchState::Applied
    } else {
        PatchState::Abandoned
    };
    journal.data.mark(&ids, final_state);
    let saved = journal.save_settled();
    let frozen = result?;
    saved?;
    super::slack::repair(&mut journal, &mut tracer, &mut stacks, options.timeout, log)?;
    warnings.extend(tracer.kept_eintr().iter().map(|k| k.to_string()));
    // What was learnt about the modules and the library goes to the cache now.
    stacks.remember();
    drop((stacks, modules, modules_now, library));
    log_cache(&cache, log);
    Ok(AttachOutcome::Done(AttachReport {
        schema_version: AttachReport::SCHEMA_VERSION,
        pid,
        dry_run: false,
        patches: planned
            .iter()
            .zip(&records)
            .map(|(p, r)| PatchSummary::applied(p, r))
            .collect(),
        frozen_us: frozen.as_micros() as u64,
        phases_us: clock.finish(),
        total_ms: log.elapsed_ms(),
        warnings,
        bindings,
        inconsistent_children,
    }))
}

/// Every piece of memory the patches will depend on — island pages, the stub region, the
/// library's mappings — reaches a child the target forks as it is: refused when one is marked
/// `MADV_DONTFORK` (the child would not have it) or `MADV_WIPEONFORK` (it would hold zeros), as
/// the child would then run jumps into memory it lacks. Checked after the load (the pages
/// exist), before anything is written.
fn copied_on_fork(pid: i32, loaded: &LoadPhase, journal: &JournalData) -> Result<(), Error> {
    // A mapping made now has no such mark (the kernel gives a new mapping none and merges it
    // with no marked neighbour): only memory an earlier run made can have been marked since.
    // Reading smaps (the kernel walks every mapping's pages for it) is then not needed.
    if loaded.all_new {
        return Ok(());
    }
    let flagged = process::fork_flags(pid)?;
    if flagged.is_empty() {
        return Ok(());
    }
    let object = loaded.library.object;
    let library = process::read_maps(pid)?
        .into_iter()
        .filter(|m| m.dev == object.dev && m.inode == object.inode)
        .map(|m| (PatchMemory::PatchLibrary, m.start..m.end));
    let islands = journal
        .islands
        .iter()
        .chain(&loaded.new_islands)
        .map(|i| (PatchMemory::IslandPage, i.address..i.address + i.size));
    let ours = islands
        .chain(std::iter::once((
            PatchMemory::CallStub,
            loaded.stub.clone(),
        )))
        .chain(library);
    for (part, range) in ours {
        if let Some((found, flag)) = flagged
            .iter()
            .find(|(f, _)| f.start < range.end && range.start < f.end)
        {
            return Err(Error::Unsupported {
                reason: Unsupported::NotCopiedOnFork {
                    pid,
                    part,
                    address: found.start.max(range.start),
                    flag: *flag,
                },
            });
        }
    }
    Ok(())
}

/// The `-v` line saying what the program-knowledge cache did.
pub(super) fn log_cache(cache: &crate::cache::Cache, log: &Log) {
    if !cache.enabled() {
        log.step("cache", "not used (its directory cannot be used)");
        return;
    }
    let c = cache.counts();
    log.step(
        "cache",
        format!(
            "{} file(s) known from earlier runs, {} not, {} entr(ies) stored",
            c.hits, c.misses, c.stores
        ),
    );
}

/// Phase 2, *Plan*: every requested function in the target and its replacement in the library,
/// checked (see `plan`); the plan and its warnings are logged.
fn make_plan(
    modules: &mut ModuleMap,
    library: &Knowledge,
    options: &AttachOptions,
    log: &Log,
) -> Result<(Vec<PlannedFunction>, Vec<String>), Error> {
    let plan::Plan {
        functions: planned,
        warnings,
    } = plan::plan(
        modules,
        library,
        &options.functions,
        plan::Checks {
            force: options.force,
            strict: options.strict,
            all_matches: options.all_matches,
        },
    )?;
    for w in &warnings {
        log.step("plan", format!("warning: {w}"));
    }
    for p in &planned {
        log.step(
            "plan",
            format!(
                "{} at {:#x} ({} bytes, {}) -> {} in {}",
                p.function.name,
                p.entry,
                p.function.size,
                p.module.display(),
                p.replacement.name,
                options.library.display()
            ),
        );
    }
    Ok((planned, warnings))
}

/// Each planned function must be in a module of a build the manifest names (a name the
/// executable also defines resolves there first).
fn in_manifest_modules(
    modules: &ModuleMap,
    planned: &[PlannedFunction],
    manifest: &ManifestTag,
    pid: i32,
) -> Result<(), Error> {
    let mem = ProcMem::open(pid)?;
    for p in planned {
        let found = modules
            .modules
            .iter()
            .find(|m| m.path == p.module)
            .and_then(|m| process::build_id_in_memory(&mem, m))
            .map(|id| crate::hex::hex(&id));
        if !found
            .as_ref()
            .is_some_and(|id| manifest.build_ids.contains(id))
        {
            return Err(Error::OutsideManifest {
                function: p.function.name.clone(),
                module: p.module.clone(),
                build_id: found,
                manifest: manifest.name.clone(),
            });
        }
    }
    Ok(())
}

/// The journal records of this attach, in state `intent`, with the island pages the load
/// mapped, their durable save begun: once it is finished, a run that dies leaves records
/// `reconcile` settles.
fn record_intent<'j>(
    journal: &'j mut Journal,
    modules: &mut ModuleMap,
    planned: &[PlannedFunction],
    loaded: &LoadPhase,
    library: &Path,
    library_sha256: String,
    manifest: Option<String>,
) -> Result<(Vec<PatchRecord>, PendingSave<'j>), Error> {
    let group = journal.data.next_group();
    let ids = journal.data.next_id()..;
    let records: Vec<PatchRecord> = ids
        .zip(planned.iter().zip(&loaded.placements))
        .map(|(id, (p, placement))| PatchRecord {
            id,
            group,
            function: p.function.name.clone(),
            module: p.module.clone(),
            module_build_id: modules.mapped_build_id(&p.module),
            function_address: p.entry,
            address: p.write_at,
            original: expected_bytes(&journal.data, p, placement.jump.len()),
            new: placement.jump.clone(),
            replacement_name: p.replacement.name.clone(),
            replacement: placement.replacement,
            replacement_size: p.replacement.size,
            library: library.to_path_buf(),
            loaded_from: loaded.library.name.clone().into(),
            library_sha256: library_sha256.clone(),
            method: placement.method,
            island_slot: placement.island_slot,
            state: PatchState::Intent,
            created: now_secs(),
            rolled_back: None,
            loaded: Some(loaded.library.object),
            inherited: None,
            manifest: manifest.clone(),
        })
        .collect();
    journal
        .data
        .islands
        .extend(loaded.new_islands.iter().copied());
    journal.data.patches.extend(records.iter().cloned());
    let pending = journal.begin_save()?;
    Ok((records, pending))
}

/// What no thread may be executing (the bytes each jump overwrites) and, unless `allow_active`,
/// what no thread may have on its stack: each function, and a function's current replacement
/// when it is patched already (that is the code being switched away from).
fn guarded_ranges(
    planned: &[PlannedFunction],
    records: &[PatchRecord],
    journal: &JournalData,
    allow_active: bool,
) -> Vec<GuardedRange> {
    let mut ranges: Vec<GuardedRange> = planned
        .iter()
        .zip(records)
        .map(|(p, r)| GuardedRange {
            bytes: r.address..r.address + r.new.len() as u64,
            entry_ok: true,
            function: r.function.clone(),
            stack_range: (!allow_active)
                .then(|| p.entry..p.entry + p.function.size.max(r.new.len() as u64)),
        })
        .collect();
    for r in records.iter().filter(|_| !allow_active) {
        for earlier in journal.patches.iter().filter(|x| {
            x.address == r.address
                && x.id < r.id
                && x.state == PatchState::Applied
                && x.replacement_size > 0
        }) {
            ranges.push(GuardedRange {
                bytes: 0..0,
                entry_ok: true,
                function: format!(
                    "{} (current replacement {} from {})",
                    earlier.function,
                    earlier.replacement_name,
                    earlier.library.display()
                ),
                stack_range: Some(
                    earlier.replacement..earlier.replacement + earlier.replacement_size,
                ),
            });
        }
    }
    ranges
}

/// What memory must hold at `p.write_at` for `len` bytes before this patch: the file's code with
/// every live patch at that address laid over it, oldest first (patches stack).
fn expected_bytes(journal: &JournalData, p: &PlannedFunction, len: usize) -> Vec<u8> {
    let mut bytes = p.file_bytes.clone();
    bytes.resize(bytes.len().max(len), 0);
    for live in journal.live().filter(|r| r.address == p.write_at) {
        bytes[..live.new.len()].copy_from_slice(&live.new);
    }
    bytes.truncate(len);
    bytes
}

/// Phase 6, *Write* (all threads frozen): verify every function holds the expected bytes, then
/// write island slots and jumps, and read them back. Either all are written or none stays.
fn write_patches(mem: &dyn Memory, pid: i32, records: &[PatchRecord]) -> Result<(), Error> {
    for r in records {
        expect_bytes(mem, r.site(pid), &r.original)?;
    }
    let mut written: Vec<&PatchRecord> = Vec::new();
    let result = records.iter().try_for_each(|r| {
        if !written.is_empty() {
            crate::fault::point(FaultPoint::Write);
        }
        let site = r.site(pid);
        if let Some(slot) = r.island_slot {
            mem.write_at(slot, &isa::island_slot(r.replacement))
                .map_err(|e| site.io_at(slot, e))?;
        }
        mem.write_at(r.address, &r.new).map_err(|e| site.io(e))?;
        written.push(r);
        expect_bytes(mem, site, &r.new)
    });
    if result.is_err() {
        for r in written.iter().rev() {
            let _ = mem.write_at(r.address, &r.original);
        }
    }
    result
}

/// Reads the patch library given by the operator (a regular file, size-capped) through the
/// descriptor the plan read: the part the target loads (see [`loadable_image`]), with the
/// SHA-256 of the whole file, and whether it is the content the plan was made from.
fn read_library(library: &Knowledge, path: &Path) -> Result<(Vec<u8>, String, bool), Error> {
    let end = library
        .load_segments()
        .iter()
        .map(|s| s.offset.saturating_add(s.filesz))
        .max()
        .unwrap_or(u64::MAX);
    let (mut bytes, sha256, known) = library.contents(end).map_err(|e| Error::LibraryMissing {
        path: path.into(),
        problem: crate::error::LibraryAccess::Io(e),
    })?;
    loadable_image(&mut bytes);
    Ok((bytes, sha256, known))
}
