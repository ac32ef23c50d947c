//! rpatch: replace functions in running, unmodified Linux processes, check them, and undo them.
//!
//! The library exposes the operations as a typed API — [`attach`], [`rollback`], [`status`] —
//! each a pipeline of named phases (see `patch`). The `rpatch` binary is a thin front end.

mod error;
mod fault;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod inject;
pub mod journal;
pub mod log;
pub mod patch;
pub mod process;
pub mod rehearse;
pub mod resolve;
pub mod safety;
pub mod symbols;

pub use error::Error;
pub use patch::{
    Allowances, AttachOptions, AttachReport, FunctionRequest, RollbackOptions, RollbackReport,
    RollbackSelection, StatusReport,
};

pub use rehearse::{RehearseOptions, RehearseReport};
pub use resolve::{ResolveOptions, ResolveReport};

use inject::InjectError;
use log::Log;
use process::ProcessError;

/// Replaces functions in a running process with a library's versions (see [`AttachOptions`]).
pub fn attach(options: &AttachOptions, log: &Log) -> Result<AttachReport, Error> {
    exited_if_gone(options.pid, patch::attach(options, log))
}

/// Undoes patches (see [`RollbackOptions`]).
pub fn rollback(options: &RollbackOptions, log: &Log) -> Result<RollbackReport, Error> {
    exited_if_gone(options.pid, patch::rollback(options, log))
}

/// Lists recorded patches of `pid`, each verified against memory.
pub fn status(pid: i32, log: &Log) -> Result<StatusReport, Error> {
    exited_if_gone(pid, patch::status(pid, log))
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
/// ptrace or /proc call noticed first is an accident of timing.
fn exited_if_gone<T>(pid: i32, result: Result<T, Error>) -> Result<T, Error> {
    result.map_err(|e| {
        let benign = matches!(
            e,
            Error::Process(ProcessError::NoSuchProcess { .. } | ProcessError::Exited { .. })
        );
        // A thread that vanished under ptrace (ESRCH) is most often the process exiting.
        let vanished = matches!(
            &e,
            Error::Process(ProcessError::Ptrace {
                errno: nix::errno::Errno::ESRCH,
                ..
            }) | Error::Inject(InjectError::Process(ProcessError::Ptrace {
                errno: nix::errno::Errno::ESRCH,
                ..
            }))
        );
        let alive = if vanished {
            !process::exiting(pid)
        } else {
            process::live_task(pid).is_some()
        };
        if alive || benign {
            e
        } else {
            Error::Process(ProcessError::Exited { pid })
        }
    })
}
