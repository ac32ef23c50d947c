//! `attach`: load a patch library into the target and redirect functions to it.

use super::delivery::{Delivery, Loaded, Payload};
use super::islands::{self, ISLAND_SIZE};
use super::plan::{self, FunctionRequest, PlannedFunction};
use super::{
    frozen_write, identify, io, lock_target, now_secs, retry_while_traced_by_rpatch, wait_untraced,
};
use crate::Error;
use crate::error::hex;
use crate::fault::{FaultPoint, FrozenPoints};
use crate::inject::{
    InjectError, InjectedThread, LoaderFunctions, assess_stack, assess_thread, rank_threads,
};
use crate::journal::{Island, Journal, JournalData, JumpMethod, PatchRecord, PatchState};
use crate::log::Log;
use crate::process::{self, Memory, ModuleMap, ProcessError, ProcessInfo, Stop, Tracer};
use crate::safety::{GuardedRange, StackInspector};
use rpatch_arch::x86_64 as isa;
use serde::Serialize;
use std::path::{Path, PathBuf};
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
    /// Runtime entry address (hex).
    pub address: String,
    /// Size of the function in bytes.
    pub size: u64,
    /// `file:line` when known.
    pub location: Option<String>,
    /// Replacement name in the library.
    pub replacement_name: String,
    /// Runtime address of the replacement (hex; empty in a dry run).
    pub replacement: String,
    /// Library as given.
    pub library: PathBuf,
    /// `direct`, `island` or `absolute` (empty in a dry run).
    pub method: String,
    /// Island slot address (hex) when an island was used.
    pub island: Option<String>,
    /// The function's signature from DWARF (types with sizes), when known.
    pub signature: Option<String>,
    /// The replacement's signature from DWARF, when known.
    pub replacement_signature: Option<String>,
}

/// Result of `attach`.
#[derive(Debug, Clone, Serialize)]
pub struct AttachReport {
    /// Target PID.
    pub pid: i32,
    /// Whether this was only a plan.
    pub dry_run: bool,
    /// The patches.
    pub patches: Vec<PatchSummary>,
    /// Microseconds all threads were stopped (freeze to thaw).
    pub frozen_us: u64,
    /// Wall time of the whole operation.
    pub total_ms: f64,
    /// What the patch will not change or could not check (inlined copies, clones, aliases,
    /// signatures without DWARF, compiler versions).
    pub warnings: Vec<String>,
    /// Private objects of the target the library's references are bound to (see `binding`).
    pub bindings: Vec<super::binding::Binding>,
}

fn summary(p: &PlannedFunction, library: &std::path::Path) -> PatchSummary {
    PatchSummary {
        id: 0,
        function: p.function.name.clone(),
        module: p.module.clone(),
        address: format!("{:#x}", p.entry),
        size: p.function.size,
        location: p.function.location.clone(),
        replacement_name: p.replacement.name.clone(),
        replacement: String::new(),
        library: library.to_path_buf(),
        method: String::new(),
        island: None,
        signature: p.signature.as_ref().map(|s| s.render()),
        replacement_signature: p.replacement_signature.as_ref().map(|s| s.render()),
    }
}

/// Replaces the requested functions in the target with the library's versions.
pub fn attach(options: &AttachOptions, log: &Log) -> Result<AttachReport, Error> {
    let pid = options.pid;
    let deadline = Instant::now() + options.timeout;
    retry_while_traced_by_rpatch(pid, deadline, log, || attach_once(options, deadline, log))
}

fn attach_once(
    options: &AttachOptions,
    deadline: Instant,
    log: &Log,
) -> Result<AttachReport, Error> {
    let pid = options.pid;
    let (state, lock) = lock_target(pid)?;
    let (info, identity) = identify(pid, log)?;
    wait_untraced(pid, deadline, log)?;
    admit(&info, &options.library, options.allow)?;
    let mut journal = Journal::open_locked(lock, &state, &identity)?;
    // Records an interrupted earlier run left unsettled decide what memory must hold now.
    let mem = process::ProcMem::open(pid).map_err(|e| ProcessError::Io {
        pid,
        what: "/proc/PID/mem".into(),
        source: e,
    })?;
    super::status::reconcile(&mut journal, &mem)?;
    drop(mem);
    let library = plan::open_library(&options.library)?;
    let maps = process::read_maps(pid)?;
    let mut modules = ModuleMap::new(pid, &maps, &info.exe);
    let plan::Plan {
        functions: planned,
        warnings,
    } = plan::plan(
        &mut modules,
        &library,
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
    let bindings = super::binding::plan_bindings(&mut modules, &options.library)?;
    if options.dry_run {
        return Ok(AttachReport {
            pid,
            dry_run: true,
            patches: planned
                .iter()
                .map(|p| summary(p, &options.library))
                .collect(),
            frozen_us: 0,
            total_ms: log.elapsed_ms(),
            warnings,
            bindings,
        });
    }

    // The bytes loaded are the bytes read here, once: they are what is hashed and journaled.
    let library_bytes = read_library(&options.library)?;
    let shim = super::binding::prepare_shim(&bindings, log);
    let mut tracer = Tracer::new(pid)?;
    let functions = LoaderFunctions::find(&mut modules)?;
    // No thread may be fit to borrow right now (all in signal handlers, the allocator, the
    // loader), or the one borrowed may exit before the first call: both pass, so retry until
    // --timeout like a busy function.
    let mut backoff = Duration::from_millis(1);
    let loaded = loop {
        let attempt = load(
            &mut tracer,
            &mut modules,
            &functions,
            &info,
            shim.as_deref(),
            &library_bytes,
            &planned,
            &mut journal,
            options.load_timeout,
            log,
        );
        match attempt {
            Err(Error::Inject(
                e @ (InjectError::NoSafeThread { .. } | InjectError::ThreadExited { .. }),
            )) if Instant::now() + backoff < deadline => {
                log.step("load", format!("{e}; retrying"));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            attempt => break attempt?,
        }
    };
    let sha256 = Payload {
        what: "patch library",
        bytes: &library_bytes,
    }
    .sha256();
    crate::fault::point(FaultPoint::Loaded);
    // Unwind tables are read now: after the load (the new library is mapped), before the journal
    // intent and the freeze (nothing slow while frozen). Stacks are always unwound: a context
    // a signal interrupted resumes at its saved PC, which the PC check covers; --allow-active
    // skips only the return-address check.
    let mut stacks = StackInspector::for_process(pid, &info.exe, log)?;
    let group = journal.data.next_group();
    let mut records = Vec::new();
    {
        let ids = journal.data.next_id()..;
        for (id, (p, &placement)) in ids.zip(planned.iter().zip(&loaded.placements)) {
            let replacement = loaded
                .library
                .object
                .l_addr
                .wrapping_add(p.replacement.address);
            let new: Vec<u8> = match placement {
                Placement::Direct => isa::jmp_rel32(p.write_at, replacement)
                    .expect("reach checked")
                    .to_vec(),
                Placement::Island(slot) => isa::jmp_rel32(p.write_at, slot)
                    .expect("reach checked")
                    .to_vec(),
                Placement::Absolute => isa::jmp_abs(replacement).to_vec(),
            };
            let original = expected_bytes(&journal.data, p, new.len());
            records.push(PatchRecord {
                id,
                group,
                function: p.function.name.clone(),
                module: p.module.clone(),
                module_build_id: modules.mapped_build_id(&p.module),
                function_address: p.entry,
                address: p.write_at,
                original,
                new,
                replacement_name: p.replacement.name.clone(),
                replacement,
                replacement_size: p.replacement.size,
                library: options.library.clone(),
                loaded_from: loaded.library.name.clone().into(),
                library_sha256: sha256.clone(),
                method: placement.method(),
                island_slot: placement.slot(),
                state: PatchState::Intent,
                created: now_secs(),
                rolled_back: None,
                loaded: Some(loaded.library.object),
            });
        }
    }
    journal
        .data
        .islands
        .extend(loaded.new_islands.iter().copied());
    journal.data.patches.extend(records.iter().cloned());
    journal.save()?;
    log.step(
        "journal",
        format!("intent recorded in {}", journal.path().display()),
    );
    crate::fault::point(FaultPoint::Intent);

    let mut ranges: Vec<GuardedRange> = planned
        .iter()
        .zip(&records)
        .map(|(p, r)| GuardedRange {
            bytes: r.address..r.address + r.new.len() as u64,
            entry_ok: true,
            function: r.function.clone(),
            stack_range: (!options.allow.active)
                .then(|| p.entry..p.entry + p.function.size.max(r.new.len() as u64)),
        })
        .collect();
    // A function already patched runs its current replacement: that is the code being switched
    // away from, so no thread may have it on its stack either.
    for r in records.iter().filter(|_| !options.allow.active) {
        for earlier in journal.data.patches.iter().filter(|x| {
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
        |tracer| write_patches(tracer.mem(), &records),
    );
    let ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    let final_state = if result.is_ok() {
        PatchState::Applied
    } else {
        PatchState::Abandoned
    };
    for r in journal
        .data
        .patches
        .iter_mut()
        .filter(|r| ids.contains(&r.id))
    {
        r.state = final_state;
    }
    let saved = journal.save();
    let frozen = result?;
    saved?;
    super::slack::repair(&mut journal, &mut tracer, &mut stacks, options.timeout, log)?;
    Ok(AttachReport {
        pid,
        dry_run: false,
        patches: planned
            .iter()
            .zip(&records)
            .map(|(p, r)| PatchSummary {
                id: r.id,
                replacement: format!("{:#x}", r.replacement),
                method: method_name(r.method).into(),
                island: r.island_slot.map(|s| format!("{s:#x}")),
                ..summary(p, &options.library)
            })
            .collect(),
        frozen_us: frozen.as_micros() as u64,
        total_ms: log.elapsed_ms(),
        warnings,
        bindings,
    })
}

/// The safety policies that refuse a target or library unless overridden.
fn admit(info: &ProcessInfo, library: &Path, allow: Allowances) -> Result<(), Error> {
    let pid = info.pid;
    if !info.shadow_stack_threads.is_empty() {
        return Err(Error::Unsupported {
            reason: format!(
                "PID {pid} uses x86 shadow stacks (threads {:?}): an injected call cannot return on them; rpatch cannot patch it",
                info.shadow_stack_threads
            ),
        });
    }
    if info.state == 'T' && !allow.stopped {
        return Err(Error::Refused {
            reason: format!(
                "PID {pid} is stopped (SIGSTOP or job control): no other thread can run while the library loads, so a stopped thread holding the loader lock would deadlock it; resume it with kill -CONT {pid}"
            ),
            flag: "--allow-stopped",
        });
    }
    if !info.seccomp_threads.is_empty() && !allow.seccomp {
        return Err(Error::Refused {
            reason: format!(
                "PID {pid} runs under a seccomp filter (threads {:?}): the syscalls dlopen and mmap make on its behalf may be forbidden and kill it",
                info.seccomp_threads
            ),
            flag: "--allow-seccomp",
        });
    }
    if !allow.insecure_lib {
        library_trusted(pid, library)?;
    }
    Ok(())
}

/// A library runs with the target's privileges: refuse one that someone other than root or the
/// target's owner could have written.
fn library_trusted(pid: i32, library: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(library) else {
        return Ok(());
    }; // reported by Plan
    let target_uid: u32 = process::status_field(pid, pid, "Uid")
        .and_then(|v| v.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        .unwrap_or(0);
    let reason = if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by {}",
            if meta.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            }
        ))
    } else if meta.uid() != 0 && meta.uid() != target_uid {
        Some(format!(
            "is owned by uid {}, neither root nor the target's user (uid {target_uid})",
            meta.uid()
        ))
    } else {
        None
    };
    match reason {
        Some(r) => Err(Error::Refused {
            reason: format!(
                "patch library {} {r}: it would run inside PID {pid} with that process's privileges; fix its owner and mode (chmod go-w)",
                library.display()
            ),
            flag: "--allow-insecure-lib",
        }),
        None => Ok(()),
    }
}

/// The name of a jump method in reports.
pub fn method_name(m: JumpMethod) -> &'static str {
    match m {
        JumpMethod::Direct => "direct",
        JumpMethod::Island => "island",
        JumpMethod::Absolute => "absolute",
    }
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
fn write_patches(mem: &dyn Memory, records: &[PatchRecord]) -> Result<(), Error> {
    for r in records {
        let found = mem
            .read_vec(r.address, r.original.len())
            .map_err(|e| io(r, e))?;
        if found != r.original {
            return Err(Error::UnexpectedBytes {
                function: r.function.clone(),
                address: r.address,
                expected: hex(&r.original),
                found: hex(&found),
            });
        }
    }
    let mut written: Vec<&PatchRecord> = Vec::new();
    let result = records.iter().try_for_each(|r| {
        if !written.is_empty() {
            crate::fault::point(FaultPoint::Write);
        }
        if let Some(slot) = r.island_slot {
            mem.write_at(slot, &isa::island_slot(r.replacement))
                .map_err(|e| io(r, e))?;
        }
        mem.write_at(r.address, &r.new).map_err(|e| io(r, e))?;
        written.push(r);
        let back = mem.read_vec(r.address, r.new.len()).map_err(|e| io(r, e))?;
        if back != r.new {
            return Err(Error::UnexpectedBytes {
                function: r.function.clone(),
                address: r.address,
                expected: hex(&r.new),
                found: hex(&back),
            });
        }
        Ok(())
    });
    if result.is_err() {
        for r in written.iter().rev() {
            let _ = mem.write_at(r.address, &r.original);
        }
    }
    result
}

/// Where a function's jump goes.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// `jmp rel32` reaches the replacement itself.
    Direct,
    /// `jmp rel32` to this island slot.
    Island(u64),
    /// 14-byte absolute jump in place.
    Absolute,
}

impl Placement {
    fn method(self) -> JumpMethod {
        match self {
            Placement::Direct => JumpMethod::Direct,
            Placement::Island(_) => JumpMethod::Island,
            Placement::Absolute => JumpMethod::Absolute,
        }
    }

    fn slot(self) -> Option<u64> {
        match self {
            Placement::Island(slot) => Some(slot),
            _ => None,
        }
    }
}

/// What the Load phase produced.
struct LoadPhase {
    /// The patch library as loaded (its load bias is `l_addr`).
    library: Loaded,
    /// Where each planned function's jump goes, in plan order.
    placements: Vec<Placement>,
    /// Island pages mapped during this load.
    new_islands: Vec<Island>,
}

/// Reads the patch library given by the operator (a regular file, size-capped).
fn read_library(path: &Path) -> Result<Vec<u8>, Error> {
    crate::files::open_host(path)
        .and_then(|f| crate::files::read_capped(&f, crate::files::max_file_size()))
        .map_err(|e| Error::LibraryMissing {
            path: path.into(),
            reason: e.to_string(),
        })
}

/// Phase 3, *Load*: borrow one thread, hand the binding shim (`RTLD_GLOBAL`, when the library
/// references private symbols of the target, see `binding`) and the library to the target and
/// load them (see `delivery`: never through a name the target's side can write), or reuse the
/// copy an earlier attach loaded; map island pages near the functions whose replacement is out
/// of `jmp rel32` reach, and give the thread back.
#[allow(clippy::too_many_arguments)]
fn load(
    tracer: &mut Tracer,
    modules: &mut ModuleMap,
    functions: &LoaderFunctions,
    info: &ProcessInfo,
    shim: Option<&[u8]>,
    library: &[u8],
    planned: &[PlannedFunction],
    journal: &mut Journal,
    timeout: Duration,
    log: &Log,
) -> Result<LoadPhase, Error> {
    let pid = tracer.pid();
    // Unwinding tells exactly what a thread is in the middle of (a signal handler, the loader);
    // without unwind tables the stack scan of `rank_threads` is what decides.
    let mut stacks = process::read_maps(pid)
        .ok()
        .and_then(|maps| StackInspector::new(modules, &maps, log).ok());
    let tid = borrow_thread(tracer, modules, stacks.as_mut(), log)?;
    let result = (|| {
        // With seccomp filters (--allow-seccomp), what the load calls is checked against the
        // borrowed thread's filters (it makes the calls) while it is stopped, before anything
        // runs in it.
        let filtered = process::status_field(pid, tid, "Seccomp").as_deref() == Some("2");
        let seccomp_tid = filtered.then_some(tid);
        let mut delivery = Delivery::prepare(pid, info.start_time, modules, seccomp_tid, log)?;
        let payload = Payload {
            what: "patch library",
            bytes: library,
        };
        let mut ledger = super::slack::JournalLedger::new(journal);
        let mut thread = InjectedThread::begin(
            tracer,
            modules,
            tid,
            functions,
            &mut ledger,
            stacks.as_mut(),
            log,
        )?;
        let reused = delivery.reuse(&mut thread, functions, &journal.data, &payload, timeout)?;
        let library = match reused {
            Some(loaded) => {
                log.step(
                    "load",
                    format!(
                        "the same library is loaded already (inode {}, l_addr {:#x}): reused",
                        loaded.object.inode, loaded.object.l_addr
                    ),
                );
                loaded
            }
            None => {
                if let Some(shim) = shim {
                    let shim = Payload {
                        what: "binding shim",
                        bytes: shim,
                    };
                    let loaded =
                        delivery.load(&mut thread, functions, &shim, true, timeout, log)?;
                    log.step(
                        "load",
                        format!("binding shim loaded from {} (RTLD_GLOBAL)", loaded.name),
                    );
                }
                let loaded =
                    delivery.load(&mut thread, functions, &payload, false, timeout, log)?;
                log.step(
                    "load",
                    format!(
                        "patch library loaded from {}, l_addr {:#x}",
                        loaded.name, loaded.object.l_addr
                    ),
                );
                loaded
            }
        };
        let l_addr = library.object.l_addr;
        let mut islands = journal.data.islands.clone();
        let mut reserved = journal.data.slots_in_use();
        let mut new_islands = Vec::new();
        let mut placements = Vec::new();
        for p in planned {
            let replacement = l_addr.wrapping_add(p.replacement.address);
            let placement = if isa::jmp_rel32(p.write_at, replacement).is_some() {
                Placement::Direct
            } else if let Some(slot) = islands::free_slot(&islands, &reserved, p.write_at) {
                Placement::Island(slot)
            } else {
                let maps = process::read_maps(pid)?;
                let mut mapped = None;
                for addr in islands::candidate_addresses(&maps, p.write_at) {
                    if let Some(page) = thread.map_page_at(functions, addr, ISLAND_SIZE)? {
                        mapped = Some(page);
                        break;
                    }
                }
                match mapped {
                    Some(page) => {
                        log.step("load", format!("island page mapped at {page:#x}"));
                        let island = Island {
                            address: page,
                            size: ISLAND_SIZE,
                        };
                        islands.push(island);
                        new_islands.push(island);
                        Placement::Island(page)
                    }
                    None if p.absolute_fits => Placement::Absolute,
                    None => {
                        return Err(Error::Unpatchable {
                            function: p.function.name.clone(),
                            reason: format!(
                                "no island page could be mapped within 2 GiB of it and its {} bytes cannot hold a {}-byte absolute jump",
                                p.room,
                                isa::JMP_ABS_LEN
                            ),
                        });
                    }
                }
            };
            if let Placement::Island(slot) = placement {
                reserved.push(slot);
            }
            placements.push(placement);
        }
        thread.restore()?;
        Ok(LoadPhase {
            library,
            placements,
            new_islands,
        })
    })();
    tracer.release(tid);
    result
}

/// Seizes the best thread for the injected call (see `inject::rank_threads`), re-checking it with
/// its exact registers once stopped.
fn borrow_thread(
    tracer: &mut Tracer,
    modules: &mut ModuleMap,
    mut stacks: Option<&mut StackInspector>,
    log: &Log,
) -> Result<i32, Error> {
    let pid = tracer.pid();
    let tids = process::list_threads(pid)?;
    let ranked = rank_threads(modules, tracer.mem(), &tids)
        .map_err(|reasons| InjectError::NoSafeThread { pid, reasons })?;
    let mut refused = Vec::new();
    for candidate in ranked {
        if !tracer.seize(candidate.tid, Instant::now() + Duration::from_secs(2))? {
            continue;
        }
        let state = tracer.thread(candidate.tid).expect("seized").clone();
        let in_syscall = (state.regs.orig_rax as i64) >= 0;
        let usable = state.stop == Stop::Event;
        match assess_thread(
            modules,
            tracer.mem(),
            candidate.tid,
            state.regs.rip,
            state.regs.rsp,
            in_syscall,
        ) {
            Ok(c) if usable => {
                let unwound = match stacks.as_deref_mut() {
                    Some(inspector) => {
                        assess_stack(modules, &inspector.walk(&state.regs), candidate.tid)
                    }
                    None => Ok(()),
                };
                match unwound {
                    Ok(()) => {
                        log.step("load", format!("borrowing thread {} ({})", c.tid, c.why));
                        return Ok(c.tid);
                    }
                    Err(why) => {
                        log.step("load", format!("passing over: {why}"));
                        refused.push(why);
                    }
                }
            }
            Ok(_) => refused.push(format!(
                "thread {} has a signal being delivered",
                candidate.tid
            )),
            Err(why) => refused.push(why),
        }
        tracer.release(candidate.tid);
    }
    Err(InjectError::NoSafeThread {
        pid,
        reasons: refused.join("; "),
    }
    .into())
}
