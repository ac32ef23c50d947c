//! `status --all`: every live process on the host that this state directory holds patches for,
//! with its patches verified against memory (as `status PID` reports them).
//!
//! A process is looked at when it has a journal of its own, or when it runs an exec image some
//! journal records (current or retired): a forked child holds its ancestor's patches before
//! rpatch ever touched it, and is listed with them (its `status` adopts them, as `status PID`
//! does). Processes sharing another's address space, and children forked while a library
//! loaded (`inconsistent`), are listed too, saying so, even without patches of their own.

use super::select;
use crate::journal::{ExecImage, Inconsistent, StateDir};
use crate::log::Log;
use crate::patch::{PatchStatus, PatchView, SharedMm};
use crate::process;
use crate::{Error, ErrorKind};
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;

/// One patched process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Process id.
    pub pid: i32,
    /// Its executable, as the kernel reports it.
    pub exe: PathBuf,
    /// Every patch recorded for it, as `status PID` reports them (inherited ones included).
    pub patches: Vec<PatchStatus>,
    /// The manifests with at least one patch applied (in memory) now, sorted.
    pub manifest_names: Vec<String>,
    /// Other processes share its address space (as `status PID` reports it): for any but the
    /// owner, `patches` is empty, its code being the owner's.
    pub shared_mm: Option<SharedMm>,
    /// It was forked while a library loaded into the process named here: never patched.
    pub inconsistent: Option<Inconsistent>,
}

/// The result of `status --all`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusAllReport {
    /// Version of this report's JSON layout (docs/schemas/status-all.schema.json).
    pub schema_version: u32,
    /// Every live process with recorded or inherited patches, sharing the address space of
    /// one, or marked inconsistent, by PID.
    pub processes: Vec<ProcessStatus>,
}

impl StatusAllReport {
    /// The version of this report's JSON layout (`schema_version`).
    pub const SCHEMA_VERSION: u32 = 1;
}

/// Lists every live process with patches in the state directory: its own journal's, or those it
/// inherited from an ancestor's journal (adopted now), and processes sharing the address space
/// of one or marked inconsistent. A journal left by a process that is gone (or whose PID another
/// process now has) is not listed. Nothing is stopped.
pub fn status_all(log: &Log) -> Result<StatusAllReport, Error> {
    let state = StateDir::from_env()?;
    crate::prune_state(log, true);
    let images = recorded_images(&state);
    let mut processes = Vec::new();
    for pid in select::all_pids() {
        let own = state.journal_path(pid).exists();
        if !own && !runs_one_of(pid, &images) {
            continue;
        }
        let report = match crate::status_of(pid, log) {
            Ok(r) => r,
            // A process found by its image only is listed when it can be looked at.
            Err(e)
                if !own
                    || matches!(
                        e.kind(),
                        ErrorKind::NoSuchProcess
                            | ErrorKind::TargetExited
                            | ErrorKind::JournalOfOtherProcess
                            | ErrorKind::TargetUnsupported
                    ) =>
            {
                log.step("status", format!("PID {pid}: not listed: {e}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        let sharer = report.shared_mm.as_ref().is_some_and(|s| s.owner != pid);
        if report.patches.is_empty() && report.inconsistent.is_none() && !sharer {
            continue;
        }
        let mut manifest_names: Vec<String> = report
            .patches
            .iter()
            .filter(|p| p.state == PatchView::Applied)
            .filter_map(|p| p.manifest.clone())
            .collect();
        manifest_names.sort();
        manifest_names.dedup();
        processes.push(ProcessStatus {
            pid,
            exe: std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default(),
            patches: report.patches,
            manifest_names,
            shared_mm: report.shared_mm,
            inconsistent: report.inconsistent,
        });
    }
    Ok(StatusAllReport {
        schema_version: StatusAllReport::SCHEMA_VERSION,
        processes,
    })
}

/// The exec images journals of this state directory record something for (patches, or an
/// inconsistent mark): a process running one of them may hold it without a journal of its own.
fn recorded_images(state: &StateDir) -> HashSet<ExecImage> {
    state
        .journals()
        .into_iter()
        .filter(|(_, d)| !d.patches.is_empty() || d.inconsistent.is_some())
        .filter_map(|(_, d)| d.identity.image)
        .collect()
}

/// Whether `pid` runs one of `images` (its executable is compared first, which is cheap).
fn runs_one_of(pid: i32, images: &HashSet<ExecImage>) -> bool {
    images
        .iter()
        .any(|i| process::runs_executable(pid, i.exe_dev, i.exe_inode))
        && process::read_image(pid).is_ok_and(|i| images.contains(&i))
}
