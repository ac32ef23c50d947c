//! `status --all`: every live process on the host that this state directory holds a journal
//! for, with its patches verified against memory (as `status PID` reports them).

use super::select;
use crate::journal::StateDir;
use crate::log::Log;
use crate::patch::{PatchStatus, PatchView};
use crate::{Error, ErrorKind};
use serde::Serialize;
use std::path::PathBuf;

/// One patched process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessStatus {
    /// Process id.
    pub pid: i32,
    /// Its executable, as the kernel reports it.
    pub exe: PathBuf,
    /// Every patch recorded for it, as `status PID` reports them.
    pub patches: Vec<PatchStatus>,
    /// The manifests with at least one patch applied (in memory) now, sorted.
    pub manifest_names: Vec<String>,
}

/// The result of `status --all`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusAllReport {
    /// Version of this report's JSON layout (docs/schemas/status-all.schema.json).
    pub schema_version: u32,
    /// Every live process with recorded patches, by PID.
    pub processes: Vec<ProcessStatus>,
}

impl StatusAllReport {
    /// The version of this report's JSON layout (`schema_version`).
    pub const SCHEMA_VERSION: u32 = 1;
}

/// Lists every live process with a journal in the state directory and recorded patches. A
/// journal left by a process that is gone (or whose PID another process now has) is not
/// listed. Nothing is stopped.
pub fn status_all(log: &Log) -> Result<StatusAllReport, Error> {
    let state = StateDir::from_env()?;
    let mut processes = Vec::new();
    for pid in select::all_pids() {
        if !state.journal_path(pid).exists() {
            continue;
        }
        let report = match crate::status(pid, log) {
            Ok(r) => r,
            Err(e)
                if matches!(
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
        if report.patches.is_empty() {
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
        });
    }
    Ok(StatusAllReport {
        schema_version: StatusAllReport::SCHEMA_VERSION,
        processes,
    })
}
