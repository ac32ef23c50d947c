//! Orchestration of the phases of attach, rollback and status — the only module that knows their
//! order (DESIGN.md: Identify, Plan, Load, Freeze, Check, Write, Thaw).

mod attach;
mod binding;
mod delivery;
mod islands;
mod plan;
mod rollback;
pub mod shim;
mod slack;
mod status;

pub use attach::{Allowances, AttachOptions, AttachReport, PatchSummary, attach};
pub use delivery::DeliveryError;
pub use plan::{FunctionRequest, PlannedFunction};
pub use rollback::{RollbackOptions, RollbackReport, RollbackSelection, rollback};
pub use status::{PatchStatus, StatusReport, status};

use crate::Error;
use crate::fault::FrozenPoints;
use crate::journal::{StateDir, TargetIdentity, TargetLock};
use crate::log::Log;
use crate::process::{self, ProcessInfo, RealtimeGuard, Tracer};
use crate::safety::{GuardedRange, StackInspector, find_blocker};
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

/// The name every rpatch process has: a tracer of that name is another run (another state
/// directory, another user, or inside a container), which lets the target go within moments.
const RPATCH_COMM: &str = "rpatch";

/// Waits until no other process traces `pid`: while the tracer is another rpatch, until
/// `deadline`; any other tracer (a debugger, strace) is reported at once.
fn wait_untraced(pid: i32, deadline: Instant, log: &Log) -> Result<(), Error> {
    let mut logged = false;
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
                wait_untraced(pid, deadline, log)?;
            }
            result => return result,
        }
    }
}

/// Phases 4 to 7: freeze every thread, check no PC is inside `ranges` (and, with `stacks`, no
/// return address into their functions on any stack), run `write` while frozen, and thaw. When a
/// thread is in the way, thaw, back off and retry until `timeout`.
/// Returns how long the world was frozen in the successful round. `fault` names the
/// fault-injection points reached (see `fault`).
fn frozen_write(
    fault: FrozenPoints,
    tracer: &mut Tracer,
    ranges: &[GuardedRange],
    mut stacks: Option<&mut StackInspector>,
    timeout: Duration,
    log: &Log,
    mut write: impl FnMut(&Tracer) -> Result<(), Error>,
) -> Result<Duration, Error> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = Duration::from_micros(500);
    loop {
        // Real-time priority for the frozen window only (dropped at the end of each round).
        let _realtime = RealtimeGuard::raise();
        let frozen_at = Instant::now();
        // A thread gets at least a second to stop even when the overall timeout is short.
        let stop_deadline = deadline.max(frozen_at + Duration::from_secs(1));
        match tracer.freeze_all(stop_deadline) {
            Ok(()) => {}
            // A thread in vfork() cannot be stopped until its child execs or exits, usually
            // within moments: like a busy thread, wait and retry until the timeout.
            Err(crate::process::ProcessError::InVfork { tid, .. }) => {
                tracer.release_all();
                let detail = format!(
                    "thread {tid} ({}) is in vfork(), waiting for its child to exec or exit, and cannot be stopped until then",
                    process::thread_name(tracer.pid(), tid)
                );
                if Instant::now() + backoff > deadline {
                    return Err(Error::Busy {
                        function: "the process".into(),
                        tid,
                        thread: process::thread_name(tracer.pid(), tid),
                        pc: 0,
                        detail,
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                log.step("freeze", format!("{detail}; retrying"));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                tracer.release_all();
                return Err(e.into());
            }
        }
        log.step(
            "freeze",
            format!("{} threads stopped", tracer.threads().count()),
        );
        crate::fault::point(fault.frozen);
        match find_blocker(tracer, ranges, stacks.as_deref_mut(), log) {
            Some(blocker) => {
                tracer.release_all();
                if Instant::now() + backoff > deadline {
                    log.step("check", blocker.describe());
                    return Err(Error::Busy {
                        detail: blocker.describe(),
                        function: blocker.function,
                        tid: blocker.tid,
                        thread: blocker.name,
                        pc: blocker.address,
                        timeout_ms: timeout.as_millis() as u64,
                    });
                }
                log.step("check", format!("{}; retrying", blocker.describe()));
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            None => {
                tracer.enable_poke_fallback();
                let result = write(tracer);
                if result.is_ok() {
                    crate::fault::point(fault.written);
                }
                let write_path = tracer.mem().last_write_path();
                tracer.release_all();
                crate::fault::point(fault.thawed);
                let frozen = frozen_at.elapsed();
                log.step(
                    "thaw",
                    format!(
                        "frozen for {} us (writes via {write_path:?})",
                        frozen.as_micros()
                    ),
                );
                return result.map(|()| frozen);
            }
        }
    }
}

/// A failed read or write of a patch's bytes in the target, naming the function and address.
fn io(r: &crate::journal::PatchRecord, e: std::io::Error) -> Error {
    io_at(&r.function, r.address, e)
}

/// A failed read or write of the target's memory at `address`, in what `owner` names.
fn io_at(owner: &str, address: u64, e: std::io::Error) -> Error {
    Error::Process(process::ProcessError::Io {
        pid: 0,
        what: format!("memory of {owner} at {address:#x}"),
        source: e,
    })
}

/// Unix time in seconds, for journal records.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
