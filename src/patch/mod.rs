//! Orchestration of the phases of attach, rollback and status — the only module that knows their
//! order (DESIGN.md: Identify, Plan, Load, Freeze, Check, Write, Thaw).

mod admit;
mod attach;
mod binding;
mod code;
mod delivery;
mod elsewhere;
mod islands;
mod lineage;
mod load;
mod plan;
mod ready;
mod rollback;
pub mod shim;
mod slack;
mod status;

pub use attach::{
    Allowances, AttachOptions, AttachOutcome, AttachReport, ManifestTag, PatchSummary, attach,
    attach_as,
};
pub use binding::Binding;
pub use delivery::DeliveryError;
pub use plan::{FunctionRequest, Generated, GeneratedCode, open_library};
pub use ready::{Readiness, loader_done};
pub use rollback::{
    RollbackOptions, RollbackReport, RollbackSelection, rollback, rollback_preview,
};
pub use status::{PatchStatus, PatchView, SharedMm, SlackLeft, StatusReport, status};

use crate::Error;
use crate::fault::FrozenPoints;
use crate::journal::{Stale, StateDir, TargetIdentity, TargetLock};
use crate::log::Log;
use crate::process::{
    self, CodeMemory, FrozenSharers, ProcessError, ProcessInfo, RealtimeGuard, ThreadState, Tracer,
};
use crate::safety::{Blocker, Checker, GuardedRange, StackInspector};
use std::time::{Duration, Instant};

/// Phase 1 for every operation: identify the target and build its journal identity.
fn identify(pid: i32, log: &Log) -> Result<(ProcessInfo, TargetIdentity), Error> {
    let info = process::identify(pid)?;
    log.step(
        "identify",
        format!("PID {pid} {} start {}", info.exe.display(), info.start_time),
    );
    let identity = TargetIdentity {
        pid,
        start_time: info.start_time,
        boot_id: info.boot_id.clone(),
        exe: info.exe.clone(),
        image: Some(info.image),
    };
    Ok((info, identity))
}

/// Takes the lock of `pid`'s journal before anything else is read about the target (so
/// concurrent runs queue up here), after checking the process exists and may be inspected (no
/// lock file is made for a PID that names nothing, and a user without access hears that first).
fn lock_target(pid: i32) -> Result<(StateDir, TargetLock), Error> {
    process::check_access(pid)?;
    let state = StateDir::from_env()?;
    let lock = state.lock(pid)?;
    Ok((state, lock))
}

/// `e`, explained when `pid` maps patch libraries no record of this state directory loaded (see
/// `elsewhere`): memory that does not hold what the journal says (an attach), or nothing to roll
/// back, most likely means another rpatch with another state directory patched it. Called after
/// the operation let the target's lock go; records abandoned since `since` (Unix seconds: this
/// operation's, which may have reused the other rpatch's copy) do not count as recording theirs.
fn explain_elsewhere(e: Error, pid: i32, since: u64) -> Error {
    if !matches!(
        e,
        Error::UnexpectedBytes { .. } | Error::NothingToRollBack { .. }
    ) {
        return e;
    }
    let found = (|| {
        let (state, lock) = lock_target(pid).ok()?;
        let (_, identity) = identify(pid, &Log::quiet()).ok()?;
        let journal =
            crate::journal::Journal::open_locked(lock, &state, &identity, Stale::Refuse).ok()?;
        let maps = process::read_maps(pid).ok()?;
        let libraries = elsewhere::unrecorded_libraries(&maps, &journal.data, |r| {
            r.state == crate::journal::PatchState::Abandoned && r.created >= since
        });
        let state_dir = state.journal_path(pid).parent()?.to_path_buf();
        (!libraries.is_empty()).then_some((libraries, state_dir))
    })();
    match found {
        Some((libraries, state_dir)) => Error::PatchedElsewhere {
            pid,
            libraries,
            state_dir,
            cause: Box::new(e),
        },
        None => e,
    }
}

/// The name every rpatch process has: a tracer of that name is another run (another state
/// directory, another user, or inside a container), which lets the target go within moments.
const RPATCH_COMM: &str = "rpatch";

/// Waits until no other process traces `pid`: while the tracer is another rpatch, until
/// `deadline`; any other tracer (a debugger, strace) is reported at once. `info` says whether
/// one did when the process was identified (nothing is read again when none did).
fn wait_untraced(info: &ProcessInfo, deadline: Instant, log: &Log) -> Result<(), Error> {
    match info.tracer {
        None => Ok(()),
        Some(_) => wait_until_untraced(info.pid, deadline, log),
    }
}

/// The wait of [`wait_untraced`], reading who traces `pid` until no one does.
fn wait_until_untraced(pid: i32, deadline: Instant, log: &Log) -> Result<(), Error> {
    let mut logged = false;
    let since = Instant::now();
    loop {
        let Some((tracer, tracer_name)) = process::tracer_of(pid)? else {
            return Ok(());
        };
        if tracer_name != RPATCH_COMM || Instant::now() >= deadline {
            return Err(process::ProcessError::AlreadyTraced {
                pid,
                tracer,
                tracer_name,
            }
            .into());
        }
        if !logged {
            log.step(
                "identify",
                format!("PID {pid} is traced by another rpatch (PID {tracer}); waiting"),
            );
            logged = true;
        }
        log.waiting(
            &format_args!("PID {pid} is traced by another rpatch (PID {tracer})"),
            since,
            deadline.saturating_duration_since(since),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `operation` (which traces `pid`) again while it fails because another rpatch started
/// tracing the target between the check and the first PTRACE_SEIZE (runs with different state
/// directories do not share a lock), until `deadline`.
fn retry_while_traced_by_rpatch<T>(
    pid: i32,
    deadline: Instant,
    log: &Log,
    mut operation: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    loop {
        match operation() {
            Err(Error::Process(process::ProcessError::AlreadyTraced { tracer_name, .. }))
                if tracer_name == RPATCH_COMM && Instant::now() < deadline =>
            {
                wait_until_untraced(pid, deadline, log)?;
            }
            result => return result,
        }
    }
}

/// Phases 4 to 7: freeze every thread, check no PC is inside `ranges` (and, with `stacks`, no
/// return address into their functions on any stack), run `write` while frozen, and thaw. When a
/// thread is in the way, thaw, back off and retry until `timeout`. Processes sharing the
/// target's address space (a `clone(CLONE_VM)` child) run the same code: they are frozen and
/// checked with it.
/// Returns how long the world was frozen in the successful round. `fault` names the
/// fault-injection points reached (see `fault`).
fn frozen_write(
    fault: FrozenPoints,
    tracer: &mut Tracer,
    ranges: &[GuardedRange],
    mut stacks: Option<&mut StackInspector>,
    timeout: Duration,
    log: &Log,
    mut write: impl FnMut(&CodeMemory) -> Result<(), Error>,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = Duration::from_micros(500);
    let pid = tracer.pid();
    loop {
        // Listed before the window: a scan of /proc is not for the frozen time.
        let sharers = process::address_space_sharers(pid);
        // What costs a /proc read per thread is read before anything is stopped.
        let survey = match tracer.survey() {
            Ok(survey) => Ok(survey),
            Err(ProcessError::InVfork { tid, .. }) => Err(tid),
            Err(e) => return Err(e.into()),
        };
        // The unwinder learns, before the window, the code where the sleeping threads will be
        // found: their walks in it then find everything cached (see `StackInspector::prewarm`).
        if let (Ok(survey), Some(stacks)) = (&survey, stacks.as_deref_mut()) {
            stacks.prewarm(survey.sleeping_at());
        }
        let frozen_at = Instant::now();
        // A thread gets its chance to stop even when the overall timeout is short or spent: on a
        // loaded machine it may wait long for a CPU (see `process::STOP_GRACE`).
        let stop_deadline = deadline.max(frozen_at + process::STOP_GRACE);
        // Phase 5, Check, runs on each thread as soon as it is stopped (see `safety::Checker`):
        // a thread in the way ends the freeze at once. Nothing is printed while the world is
        // stopped: what `-v` says is kept for the thaw.
        let mut checker = Checker::new(pid, ranges, stacks.as_deref_mut());
        let frozen = survey.map(|s| {
            tracer.freeze_checked(s, stop_deadline, &mut |t: &ThreadState| checker.visit(t))
        });
        let (blocker, phase) = match frozen {
            Ok(Ok(None)) => {
                let (blocker, summary) = checker.finish();
                if let Some(summary) = &summary {
                    log.step("check", summary.to_string());
                }
                (
                    blocker.expect("a check that ends a freeze names its thread"),
                    "check",
                )
            }
            Ok(Ok(Some(frozen))) => {
                // Real-time priority from the moment every thread is stopped to the thaw, where
                // rpatch alone works and nothing must take its CPU (see `process::priority`).
                let _realtime = RealtimeGuard::raise();
                // The processes sharing the address space are stopped once the target is, and
                // their threads checked the same way.
                let sharers = FrozenSharers::freeze(pid, &sharers, stop_deadline)?;
                let stopped = frozen.threads().count();
                let (shared_threads, shared_processes) =
                    (sharers.thread_count(), sharers.process_count());
                let clear = sharers
                    .processes()
                    .all(|(sharer, threads)| threads.iter().all(|t| checker.visit_in(sharer, t)));
                crate::fault::point(fault.frozen);
                let said = |log: &Log, summary: Option<crate::safety::CheckSummary>| {
                    log.step(
                        "freeze",
                        match shared_threads {
                            0 => format!("{stopped} threads stopped"),
                            n => format!(
                                "{stopped} threads stopped, and {n} threads of {shared_processes} processes sharing its address space"
                            ),
                        },
                    );
                    if let Some(summary) = &summary {
                        log.step("check", summary.to_string());
                    }
                };
                if !clear {
                    drop(sharers);
                    drop(frozen);
                    let (blocker, summary) = checker.finish();
                    said(log, summary);
                    (
                        blocker.expect("a check that refuses names its thread"),
                        "check",
                    )
                } else {
                    // Phase 6, Write.
                    let (result, write_path) = {
                        let memory = frozen.memory();
                        let result = write(&memory);
                        if result.is_ok() {
                            crate::fault::point(fault.written);
                        }
                        (result, memory.write_path())
                    };
                    // Phase 7, Thaw.
                    drop(frozen);
                    drop(sharers);
                    crate::fault::point(fault.thawed);
                    let elapsed = frozen_at.elapsed();
                    let (_, summary) = checker.finish();
                    said(log, summary);
                    log.step(
                        "thaw",
                        format!(
                            "frozen for {} us ({})",
                            elapsed.as_micros(),
                            match write_path {
                                Some(path) => format!("writes via {path}"),
                                None => "nothing written".into(),
                            }
                        ),
                    );
                    return result.map(|()| elapsed);
                }
            }
            // A thread in vfork() cannot be stopped until its child execs or exits, usually
            // within moments: like a busy thread, wait and retry until the timeout.
            Err(tid) | Ok(Err(ProcessError::InVfork { tid, .. })) => {
                (Blocker::in_vfork(pid, tid), "freeze")
            }
            Ok(Err(e)) => return Err(e.into()),
        };
        // Thawed (the guard is gone): wait and retry, or give up naming the thread.
        if Instant::now() + backoff > deadline {
            log.step(phase, blocker.describe());
            return Err(Error::Busy {
                blocker: Box::new(blocker),
                timeout_ms: timeout.as_millis() as u64,
            });
        }
        log.step(phase, format!("{}; retrying", blocker.describe()));
        log.waiting(&blocker.describe(), start, timeout);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}
