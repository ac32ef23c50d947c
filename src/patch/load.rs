//! Phase 3, *Load*: borrow one thread, have it load the binding shim and the patch library (see
//! `delivery`), decide where each function's jump goes (see [`Placement`]: mapping island pages
//! where needed), and give the thread back — while every other thread keeps running.

use super::delivery::{Delivery, Loaded, Payload};
use super::islands;
use super::plan::PlannedFunction;
use super::slack::JournalLedger;
use crate::Error;
use crate::error::UnpatchableReason;
use crate::inject::{
    InjectError, InjectedThread, LoaderFunctions, ThreadRefusal, assess_stack, assess_thread,
    rank_threads,
};
use crate::isa;
use crate::journal::{Island, Journal, JumpMethod};
use crate::log::Log;
use crate::process::{self, Held, Mapping, ModuleMap, ProcessInfo, Stop, Tracer};
use crate::safety::StackInspector;
use std::time::{Duration, Instant};

/// Where a function's jump goes, decided once (here) and encoded once: the bytes to write are
/// part of the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placement {
    /// How the jump reaches the replacement.
    pub method: JumpMethod,
    /// The island slot the jump goes to, for [`JumpMethod::Island`].
    pub island_slot: Option<u64>,
    /// Runtime address of the replacement.
    pub replacement: u64,
    /// The jump, encoded for the function's first byte written.
    pub jump: Vec<u8>,
}

/// What the Load phase produced.
pub(super) struct LoadPhase {
    /// The patch library as loaded (its load bias is `l_addr`).
    pub library: Loaded,
    /// Where each planned function's jump goes, in plan order.
    pub placements: Vec<Placement>,
    /// Island pages mapped during this load.
    pub new_islands: Vec<Island>,
    /// The stub region the load's calls ran through.
    pub stub: std::ops::Range<u64>,
    /// Every mapping the load made or used is new (the stub region, the library) and no
    /// island is older than it: then none can carry a mark a fork treats specially (see
    /// `attach::copied_on_fork`).
    pub all_new: bool,
}

/// When the target's dynamic loader ran a `dlopen` of this attach (clock ticks after boot, as
/// process start times count them), and the last PID allocated before it first ran: a child
/// forked meanwhile holds a half-updated loader (see `lineage::mark_born_during_load`), and has
/// a PID allocated since. Kept across attempts and failures alike.
#[derive(Debug, Default)]
pub(super) struct LoaderWindow(Option<(u64, u64, Option<i32>)>);

impl LoaderWindow {
    /// Runs `load` (a `dlopen` in the target), widening the window to cover it.
    fn around<T>(&mut self, load: impl FnOnce() -> T) -> T {
        let last_pid = process::last_pid();
        let start = process::boot_ticks();
        let result = load();
        let end = process::boot_ticks();
        self.0 = Some(match self.0 {
            Some((first, _, pid)) => (first, end, pid),
            None => (start, end, last_pid),
        });
        result
    }

    /// The ticks the loader ran in, if it ran.
    pub fn ticks(&self) -> Option<std::ops::RangeInclusive<u64>> {
        self.0.map(|(start, end, _)| start..=end)
    }

    /// The last PID allocated before the loader first ran (see `process::last_pid`), when it
    /// ran and that could be read: children forked since have PIDs allocated after it.
    pub fn last_pid_before(&self) -> Option<i32> {
        self.0.and_then(|(_, _, pid)| pid)
    }
}

/// What to load and for which functions.
pub(super) struct LoadRequest<'a> {
    /// The target.
    pub info: &'a ProcessInfo,
    /// Its loader entry points.
    pub functions: &'a LoaderFunctions,
    /// The binding shim, when the library references private symbols of the target.
    pub shim: Option<&'a [u8]>,
    /// The library's bytes (read once: what is hashed and journaled) and their hash.
    pub library: &'a Payload<'a>,
    /// The functions to place jumps for.
    pub planned: &'a [PlannedFunction],
    /// How long the library's loading may take.
    pub timeout: Duration,
}

/// Runs [`load`] until it succeeds, fails for good, or `deadline` passes: no thread may be fit
/// to borrow right now (all in signal handlers, the allocator, the loader), or the one borrowed
/// may exit before the first call; both pass, so they are retried like a busy function.
#[allow(clippy::too_many_arguments)]
pub(super) fn load_until(
    tracer: &mut Tracer,
    modules: &mut ModuleMap,
    stacks: &mut StackInspector,
    journal: &mut Journal,
    request: &LoadRequest,
    window: &mut LoaderWindow,
    deadline: Instant,
    log: &Log,
) -> Result<LoadPhase, Error> {
    let mut backoff = Duration::from_millis(1);
    let since = Instant::now();
    loop {
        match load(tracer, modules, stacks, journal, request, window, log) {
            Err(Error::Inject(
                e @ (InjectError::NoSafeThread { .. } | InjectError::ThreadExited { .. }),
            )) if Instant::now() + backoff < deadline => {
                log.step("load", format!("{e}; retrying"));
                log.waiting(&e, since, deadline.saturating_duration_since(since));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            result => return result,
        }
    }
}

/// Borrows one thread, hands the binding shim (`RTLD_GLOBAL`) and the library to the target and
/// loads them (see `delivery`: never through a name the target's side can write), or reuses the
/// copy an earlier attach loaded; places every jump, and gives the thread back (also on error).
/// `stacks` (built from the snapshot the plan was made from) unwinds the candidate threads: it
/// tells exactly what a thread is in the middle of (a signal handler, the loader).
fn load(
    tracer: &mut Tracer,
    modules: &mut ModuleMap,
    stacks: &mut StackInspector,
    journal: &mut Journal,
    request: &LoadRequest,
    window: &mut LoaderWindow,
    log: &Log,
) -> Result<LoadPhase, Error> {
    let pid = tracer.pid();
    let mut held = borrow_thread(tracer, modules, Some(&mut *stacks), log)?;
    let tid = held.tid();
    // With seccomp filters (--allow-seccomp), what the load calls is checked against the
    // borrowed thread's filters (it makes the calls) while it is stopped, before anything runs
    // in it.
    let filtered = process::status_field(pid, tid, "Seccomp").as_deref() == Some("2");
    let seccomp_tid = filtered.then_some(tid);
    let mut delivery = Delivery::prepare(pid, request.info.start_time, modules, seccomp_tid, log)?;
    let payload = request.library;
    let functions = request.functions;
    let mut ledger = JournalLedger::new(journal);
    let mut thread = InjectedThread::begin(
        &mut held,
        modules,
        tid,
        functions,
        &mut ledger,
        Some(&mut *stacks),
        log,
    )?;
    let reused = delivery.reuse(
        &mut thread,
        functions,
        &journal.data,
        payload,
        request.timeout,
    )?;
    let library_new = reused.is_none();
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
            if let Some(shim) = request.shim {
                let shim = Payload::new("binding shim", shim);
                let loaded = window.around(|| {
                    delivery.load(&mut thread, functions, &shim, true, request.timeout, log)
                })?;
                log.step(
                    "load",
                    format!("binding shim loaded from {} (RTLD_GLOBAL)", loaded.name),
                );
            }
            let loaded = window.around(|| {
                delivery.load(&mut thread, functions, payload, false, request.timeout, log)
            })?;
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
    let (placements, new_islands) = place_jumps(
        &mut thread,
        functions,
        journal,
        request.planned,
        library.object.l_addr,
        log,
    )?;
    let stub = thread.region();
    let all_new = library_new && thread.region_created() && journal.data.islands.is_empty();
    thread.restore()?;
    Ok(LoadPhase {
        library,
        placements,
        new_islands,
        stub,
        all_new,
    })
}

/// Decides where each planned function's jump goes: straight to the replacement when
/// `jmp rel32` reaches it, else to a free slot of an island page within reach (mapping a new
/// page with the borrowed thread when none has one), else a 14-byte absolute jump in place
/// when the function has room for it.
fn place_jumps(
    thread: &mut InjectedThread,
    functions: &LoaderFunctions,
    journal: &Journal,
    planned: &[PlannedFunction],
    l_addr: u64,
    log: &Log,
) -> Result<(Vec<Placement>, Vec<Island>), Error> {
    let pid = journal.data.identity.pid;
    let mut islands = journal.data.islands.clone();
    let mut reserved = journal.data.slots_in_use();
    let mut new_islands = Vec::new();
    let mut placements = Vec::new();
    // Taken once, when the first island page is needed: the library is mapped by now (the
    // thread's snapshot since its `dlopen`, see `InjectedThread::mappings`).
    let mut maps: Option<Vec<Mapping>> = None;
    let island_size = islands::island_size(crate::isa::call::layout(pid).page());
    for p in planned {
        let replacement = l_addr.wrapping_add(p.replacement.address);
        let to_island = |slot: u64| {
            Some(Placement {
                method: JumpMethod::Island,
                island_slot: Some(slot),
                replacement,
                jump: isa::jump::near(&p.file_bytes, p.write_at, slot)?,
            })
        };
        let placement = if let Some(jump) = isa::jump::near(&p.file_bytes, p.write_at, replacement)
        {
            Placement {
                method: JumpMethod::Direct,
                island_slot: None,
                replacement,
                jump,
            }
        } else if let Some(placement) =
            islands::free_slot(&islands, &reserved, p.write_at).and_then(to_island)
        {
            placement
        } else {
            let maps = match &mut maps {
                Some(maps) => maps,
                None => maps.insert(thread.mappings()?),
            };
            let mut mapped = None;
            for addr in islands::candidate_addresses(maps, p.write_at, island_size) {
                if let Some(page) = thread.map_page_at(functions, addr, island_size)?
                    && let Some(placement) = to_island(page)
                {
                    mapped = Some((page, placement));
                    break;
                }
            }
            match mapped {
                Some((page, placement)) => {
                    log.step("load", format!("island page mapped at {page:#x}"));
                    let island = Island {
                        address: page,
                        size: island_size,
                    };
                    maps.push(islands::mapping_of(&island));
                    islands.push(island);
                    new_islands.push(island);
                    placement
                }
                None if p.absolute_fits => Placement {
                    method: JumpMethod::Absolute,
                    island_slot: None,
                    replacement,
                    jump: isa::jump::far(&p.file_bytes, replacement),
                },
                None => {
                    return Err(Error::Unpatchable {
                        function: p.function.name.clone(),
                        reason: UnpatchableReason::NoRoom {
                            room: p.room,
                            needed: isa::jump::far_len(&p.file_bytes) as u64,
                        },
                    });
                }
            }
        };
        if let Some(slot) = placement.island_slot {
            reserved.push(slot);
        }
        placements.push(placement);
    }
    Ok((placements, new_islands))
}

/// Seizes the best thread for the injected call (see `inject::rank_threads`), re-checking it
/// with its exact registers once stopped; it is let go when the returned guard is dropped. A
/// thread with live SVE state (`isa::sve_live`) is taken only when no other qualifies: rpatch
/// puts its whole SVE state back, but a stub or bootstrap that returns by itself (rpatch killed
/// mid-call) restores V0–V31 only, so such a thread is the last choice, not a refused one.
fn borrow_thread<'t>(
    tracer: &'t mut Tracer,
    modules: &mut ModuleMap,
    mut stacks: Option<&mut StackInspector>,
    log: &Log,
) -> Result<Held<'t>, Error> {
    let pid = tracer.pid();
    let tids = process::list_threads(pid)?;
    // Ranked a few at a time (see `rank_threads`): each thread of tier 0 is tried as soon as
    // it is found, the others once every thread has been ranked, in tier then TID order — the
    // order of one full ranking. Threads with live SVE state go last.
    let mut ranked = 0;
    let mut ranking_refused = Vec::new();
    let mut deferred = Vec::new();
    let mut refused = Vec::new();
    let mut last_choices = Vec::new();
    let mut any_candidate = false;
    loop {
        let (now, sve_allowed) = if ranked < tids.len() {
            let ranking = rank_threads(modules, tracer.mem(), &tids[ranked..]);
            ranked += ranking.examined;
            ranking_refused.extend(ranking.refused);
            any_candidate |= !ranking.candidates.is_empty();
            let (best, others): (Vec<_>, Vec<_>) =
                ranking.candidates.into_iter().partition(|c| c.tier == 0);
            deferred.extend(others);
            (best, false)
        } else if !deferred.is_empty() {
            deferred.sort_by_key(|c| (c.tier, c.tid));
            (std::mem::take(&mut deferred), false)
        } else if !last_choices.is_empty() {
            (std::mem::take(&mut last_choices), true)
        } else {
            break;
        };
        for candidate in now {
            let tid = candidate.tid;
            match judge_thread(
                tracer,
                modules,
                stacks.as_deref_mut(),
                tid,
                sve_allowed,
                log,
            )? {
                Judged::Usable(why) => {
                    log.step("load", format!("borrowing thread {tid} ({why})"));
                    return Ok(tracer.hold(tid));
                }
                Judged::SveLive => {
                    log.step(
                        "load",
                        format!("thread {tid}: live SVE state, kept as a last choice"),
                    );
                    last_choices.push(candidate);
                }
                Judged::Refused(Some(why)) => refused.push(why),
                Judged::Refused(None) => {}
            }
        }
    }
    Err(InjectError::NoSafeThread {
        pid,
        reasons: if any_candidate {
            refused
        } else {
            ranking_refused
        },
    }
    .into())
}

/// What [`judge_thread`] found.
enum Judged {
    /// Borrowable, for this reason (the ranking's); the thread stays seized.
    Usable(String),
    /// Borrowable but with live SVE state, while such threads are not taken yet; let go.
    SveLive,
    /// Not borrowable, and why (`None`: it could not be seized, having exited); let go.
    Refused(Option<ThreadRefusal>),
}

/// Seizes thread `tid` and judges it with its exact registers: its PC and stack, a pending
/// signal, its vector state (`sve_allowed`: whether live SVE state is acceptable yet) and,
/// with `stacks`, its unwound stack. A thread not found usable is let go.
fn judge_thread(
    tracer: &mut Tracer,
    modules: &mut ModuleMap,
    stacks: Option<&mut StackInspector>,
    tid: i32,
    sve_allowed: bool,
    log: &Log,
) -> Result<Judged, Error> {
    if !tracer.seize(tid, Instant::now() + process::STOP_GRACE)? {
        return Ok(Judged::Refused(None));
    }
    let state = tracer.thread(tid).expect("seized").clone();
    let assessed = assess_thread(
        modules,
        tracer.mem(),
        tid,
        state.regs.pc(),
        state.regs.sp(),
        state.regs.in_syscall(),
    );
    let judged = match assessed {
        Ok(_) if state.stop != Stop::Event => {
            Judged::Refused(Some(ThreadRefusal::SignalPending(tid)))
        }
        Err(why) => Judged::Refused(Some(why)),
        Ok(c) => {
            let vector = isa::vector_refusal(tid, &state.regs, tracer.mem());
            let unwound = match (vector, stacks) {
                (Some(why), _) => Err(ThreadRefusal::VectorState(tid, why)),
                (None, Some(inspector)) => assess_stack(modules, &inspector.walk(&state.regs), tid),
                (None, None) => Ok(()),
            };
            match unwound {
                Ok(()) if !sve_allowed && isa::sve_live(tid) => Judged::SveLive,
                Ok(()) => Judged::Usable(c.why),
                Err(why) => {
                    log.step("load", format!("passing over: {why}"));
                    Judged::Refused(Some(why))
                }
            }
        }
    };
    if !matches!(judged, Judged::Usable(_)) {
        tracer.release(tid);
    }
    Ok(judged)
}
