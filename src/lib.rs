//! rpatch: replace functions in running, unmodified Linux processes, check them, and undo them.
//!
//! The library's public surface is the operations — [`attach`], [`rollback`], [`status`],
//! [`resolve`], [`rehearse`] — with their option and report types, and the [`Error`] they fail
//! with (its [`ErrorKind`] is the stable class, from which the exit code is derived). Everything
//! else is internal (`pub(crate)`): the phases of an operation are named in `patch`, which alone
//! knows their order; ARCHITECTURE.md follows one attach through the modules. The `rpatch`
//! binary is a thin front end that turns reports and errors into text or JSON.

pub(crate) mod cache;
pub mod error;
mod fault;
pub(crate) mod files;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
mod hex;
pub(crate) mod inject;
mod isa;
pub(crate) mod journal;
mod kind;
pub mod log;
pub(crate) mod patch;
pub(crate) mod process;
pub mod rehearse;
pub mod resolve;
pub(crate) mod safety;
pub(crate) mod symbols;

pub use error::{Error, ErrorKind, ErrorSummary};
pub use fleet::{
    FleetOptions, FleetReport, ManifestAttachOptions, ManifestRollbackOptions, NewManifestOptions,
    NewManifestReport, Selection, StatusAllReport,
};
pub use journal::{Inconsistent, JumpMethod, Origin, PatchState};
pub use patch::{
    Allowances, AttachOptions, AttachReport, Binding, FunctionRequest, PatchStatus, PatchSummary,
    PatchView, RollbackOptions, RollbackReport, RollbackSelection, SharedMm, SlackLeft,
    StatusReport,
};
pub use rehearse::{RehearseOptions, RehearseReport};
pub use resolve::{ResolveOptions, ResolveReport};
pub use symbols::{CloneSymbol, DebugInfoSource, InlineSite, Parameter, Signature, TypeInfo};

use log::Log;
use process::ProcessError;

/// Replaces functions in a running process with a library's versions (see [`AttachOptions`]).
pub fn attach(options: &AttachOptions, log: &Log) -> Result<AttachReport, Error> {
    prune_state(log, false);
    exited_if_gone(options.pid, patch::attach(options, log))
}

/// Undoes patches (see [`RollbackOptions`]).
pub fn rollback(options: &RollbackOptions, log: &Log) -> Result<RollbackReport, Error> {
    prune_state(log, false);
    exited_if_gone(options.pid, patch::rollback(options, log))
}

/// Lists recorded patches of `pid`, each verified against memory.
pub fn status(pid: i32, log: &Log) -> Result<StatusReport, Error> {
    prune_state(log, false);
    status_of(pid, log)
}

/// [`status`] without the state directory's upkeep (`status --all` does it once).
pub(crate) fn status_of(pid: i32, log: &Log) -> Result<StatusReport, Error> {
    exited_if_gone(pid, patch::status(pid, log))
}

/// The state directory's upkeep before an operation, holding no lock: deletes the retired
/// journals no live process can still need and, with `exited` (`status --all`, `watch`, the
/// manifest operations), the journals and lock files of processes that exited (see
/// `StateDir::prune`). Best effort: a state directory that cannot be opened is the operation's
/// to report.
pub(crate) fn prune_state(log: &Log, exited: bool) {
    let Ok(state) = journal::StateDir::from_env() else {
        return;
    };
    for name in state.prune(exited) {
        log.step(
            "journal",
            format!("deleted {name}: no live process runs the image it records"),
        );
    }
}

/// Applies a manifest's patch to every selected process that maps a module build it was made
/// for (`attach --manifest`; see [`fleet`]). Per-process failures are in the report
/// ([`FleetReport::failure`] gives the kind the run ends with); an error here means nothing was
/// touched (the manifest is invalid, its library's hash differs).
pub fn attach_manifest(options: &ManifestAttachOptions, log: &Log) -> Result<FleetReport, Error> {
    fleet::attach(options, log)
}

/// Rolls a manifest's patch back in every selected process (`rollback --manifest`).
pub fn rollback_manifest(
    options: &ManifestRollbackOptions,
    log: &Log,
) -> Result<FleetReport, Error> {
    fleet::rollback(options, log)
}

/// Every live process with recorded patches in this state directory (`status --all`).
pub fn status_all(log: &Log) -> Result<StatusAllReport, Error> {
    fleet::status_all(log)
}

/// Keeps manifests applied to every matching process, now and as processes start, until `stop`
/// is set (`rpatch watch`; see [`fleet::watch`]). Each action is reported to `report`.
pub fn watch(
    options: &fleet::WatchOptions,
    log: &Log,
    stop: &std::sync::atomic::AtomicBool,
    report: &mut dyn FnMut(fleet::WatchEvent),
) -> Result<(), Error> {
    fleet::watch(options, log, stop, report)
}

/// Writes a manifest for a patch library and a module (`manifest new`).
pub fn new_manifest(options: &NewManifestOptions) -> Result<NewManifestReport, Error> {
    fleet::new_manifest(options)
}

/// Rehearses a patch on a target it starts: probes before, while and after the patch is applied,
/// attach/rollback cycles beside an optional load, a JUnit report (see [`RehearseOptions`] and
/// [`rehearse::rehearse`], which this calls). Call it from the main thread.
pub fn rehearse(
    options: &RehearseOptions,
    log: &Log,
    progress: &mut dyn FnMut(&rehearse::Step),
) -> Result<RehearseReport, Error> {
    rehearse::rehearse(options, log, progress)
}

/// Lists the functions matching a pattern in a process or a file (see [`ResolveOptions`]).
pub fn resolve(options: &ResolveOptions, log: &Log) -> Result<ResolveReport, Error> {
    resolve::resolve(options, log)
}

/// A failure of any kind while the target died under us is reported as the death: whichever
/// ptrace or /proc call noticed first is an accident of timing. (Process errors reach the top
/// one way only, as [`Error::Process`]: see `From<InjectError> for Error`.)
pub(crate) fn exited_if_gone<T>(pid: i32, result: Result<T, Error>) -> Result<T, Error> {
    result.map_err(|e| {
        let benign = matches!(
            e,
            Error::Process(ProcessError::NoSuchProcess { .. } | ProcessError::Exited { .. })
        );
        if benign || !process_gone(pid, &e) {
            e
        } else {
            Error::Process(ProcessError::Exited { pid })
        }
    })
}

/// Whether `pid` has no live thread left. A ptrace request that found a thread rpatch holds gone
/// (ESRCH) most often means the process is being torn down, which takes its other threads a
/// moment: for such an error the answer is awaited briefly (`process::exiting`) rather than read
/// once.
fn process_gone(pid: i32, e: &Error) -> bool {
    // ESRCH from a ptrace request or from /proc/PID/mem: a thread vanished under us.
    let vanished = match e {
        Error::Process(ProcessError::Ptrace {
            errno: nix::errno::Errno::ESRCH,
            ..
        }) => true,
        Error::Process(ProcessError::Io { source, .. }) => {
            source.raw_os_error() == Some(libc::ESRCH)
        }
        _ => false,
    };
    if vanished {
        process::exiting(pid)
    } else {
        process::live_task(pid).is_none()
    }
}
