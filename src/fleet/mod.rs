//! The fleet on one host: a patch described by a manifest (`manifest`), applied to or rolled
//! back from every process that maps the module build it was made for (`select`), each process
//! on its own worker thread (`jobs`), with one outcome per process (`report`); and the status of
//! every patched process (`status_all`).
//!
//! This layer drives the operations of `patch` (attach, rollback, status) per process and never
//! traces a process itself.

mod events;
mod jobs;
mod manifest;
mod report;
mod select;
mod status_all;
mod watch;

pub use manifest::{
    LoadedManifest, Manifest, ManifestFunction, ManifestProblem, ManifestTarget,
    NewManifestOptions, NewManifestReport, new_manifest,
};
pub use report::{Failure, FleetReport, ManifestSummary, Operation, Outcome, ProcessOutcome};
pub use status_all::{ProcessStatus, StatusAllReport, status_all};
pub use watch::{EventSource, ProcessEvent, WatchEvent, WatchOptions, watch};

use crate::error::Unsupported;
use crate::log::Log;
use crate::patch::{
    self, Allowances, AttachOptions, AttachOutcome, FunctionRequest, RollbackOptions,
    RollbackSelection,
};
use crate::{Error, ErrorKind};
use select::Match;
use std::path::PathBuf;
use std::time::Duration;

/// Which processes a fleet operation considers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every process on the host (`--all`), in any PID, mount or user namespace: those mapping
    /// a module of the manifest are reported, the others are not.
    All,
    /// These PIDs: each is reported, `skipped` when it maps none of the manifest's modules.
    Pids(Vec<i32>),
}

/// What every fleet operation takes.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The manifest file.
    pub manifest: PathBuf,
    /// Which processes.
    pub processes: Selection,
    /// Check everything, change nothing.
    pub dry_run: bool,
    /// How many processes are worked on at once (each on one thread).
    pub jobs: usize,
    /// Per process: how long to wait for threads to leave the functions (`--timeout`).
    pub timeout: Duration,
}

/// `attach --manifest`.
#[derive(Debug, Clone)]
pub struct ManifestAttachOptions {
    /// The manifest, the processes, and how.
    pub fleet: FleetOptions,
    /// Per process: how long the library's loading may take.
    pub load_timeout: Duration,
    /// As for `attach`.
    pub force: bool,
    /// As for `attach`.
    pub strict: bool,
    /// As for `attach`.
    pub all_matches: bool,
    /// As for `attach`.
    pub allow: Allowances,
}

/// `rollback --manifest`.
#[derive(Debug, Clone)]
pub struct ManifestRollbackOptions {
    /// The manifest, the processes, and how.
    pub fleet: FleetOptions,
    /// Also roll back later patches stacked on the manifest's functions (else such a process
    /// fails with `stacked_patch`).
    pub cascade: bool,
    /// As for `rollback`.
    pub allow_active: bool,
}

/// A process to work on.
#[derive(Debug, Clone)]
struct Job {
    pid: i32,
    exe: PathBuf,
    build_id: String,
    functions: Vec<FunctionRequest>,
    /// Given by PID (not found by `--all`): reported even when it exited meanwhile.
    named: bool,
}

/// Applies a manifest's patch to every selected process that maps a module build it is for.
/// The library's hash is checked first: on a mismatch nothing is touched.
pub fn attach(options: &ManifestAttachOptions, log: &Log) -> Result<FleetReport, Error> {
    let fleet = &options.fleet;
    let manifest = LoadedManifest::load(&fleet.manifest)?;
    manifest.verify_library()?;
    crate::prune_state(log, true);
    let tag = manifest.tag();
    let (jobs, mut outcomes) = select(&manifest, fleet, log);
    let done = jobs::run_each(&jobs, fleet.jobs, log, |job, log| {
        let attach = AttachOptions {
            pid: job.pid,
            library: manifest.library.clone(),
            functions: job.functions.clone(),
            timeout: fleet.timeout,
            load_timeout: options.load_timeout,
            dry_run: fleet.dry_run,
            force: options.force,
            strict: options.strict,
            all_matches: options.all_matches,
            allow: options.allow,
        };
        let result = crate::exited_if_gone(job.pid, patch::attach_as(&attach, Some(&tag), log));
        finish(
            job,
            log,
            result.map(|outcome| match outcome {
                AttachOutcome::Done(r) if r.dry_run => (Outcome::WouldApply, Vec::new()),
                AttachOutcome::Done(r) => {
                    (Outcome::Applied, r.patches.iter().map(|p| p.id).collect())
                }
                AttachOutcome::AlreadyApplied(ids) => (Outcome::AlreadyApplied, ids),
                AttachOutcome::RolledBack(_) => unreachable!("attach --manifest applies it again"),
            }),
        )
    });
    outcomes.extend(done.into_iter().flatten());
    Ok(report(Operation::Attach, &manifest, fleet, outcomes, log))
}

/// Rolls a manifest's patch back in every selected process that maps a module build it is for.
pub fn rollback(options: &ManifestRollbackOptions, log: &Log) -> Result<FleetReport, Error> {
    let manifest = LoadedManifest::load(&options.fleet.manifest)?;
    Ok(rollback_loaded(&manifest, options, log))
}

/// [`rollback`] of a manifest already loaded (`watch` rolls back manifests whose file is gone).
fn rollback_loaded(
    manifest: &LoadedManifest,
    options: &ManifestRollbackOptions,
    log: &Log,
) -> FleetReport {
    let fleet = &options.fleet;
    crate::prune_state(log, true);
    let tag = manifest.tag();
    let (jobs, mut outcomes) = select(manifest, fleet, log);
    let done = jobs::run_each(&jobs, fleet.jobs, log, |job, log| {
        let rollback = RollbackOptions {
            pid: job.pid,
            selection: RollbackSelection::Manifest(tag.clone()),
            cascade: options.cascade,
            timeout: fleet.timeout,
            allow_active: options.allow_active,
        };
        let ids = if fleet.dry_run {
            patch::rollback_preview(&rollback, log)
        } else {
            patch::rollback(&rollback, log).map(|r| r.rolled_back)
        };
        let mut reason = None;
        let result = match crate::exited_if_gone(job.pid, ids) {
            Ok(ids) if fleet.dry_run => Ok((Outcome::WouldRollBack, ids)),
            Ok(ids) => Ok((Outcome::RolledBack, ids)),
            Err(e) if e.kind() == ErrorKind::NothingToRollBack => {
                // Said when another rpatch's patch libraries are there (`PatchedElsewhere`).
                if let Error::PatchedElsewhere { .. } = e {
                    reason = Some(e.to_string());
                }
                Ok((Outcome::NotApplied, Vec::new()))
            }
            Err(e) => Err(e),
        };
        finish(job, log, result).map(|outcome| ProcessOutcome {
            reason: outcome.reason.or(reason),
            ..outcome
        })
    });
    outcomes.extend(done.into_iter().flatten());
    report(Operation::Rollback, manifest, fleet, outcomes, log)
}

/// The outcome of one job; `None` for a process found by `--all` that exited meanwhile (it no
/// longer runs the code the manifest is for).
fn finish(
    job: &Job,
    log: &Log,
    result: Result<(Outcome, Vec<u64>), Error>,
) -> Option<ProcessOutcome> {
    let build_id = Some(job.build_id.clone());
    match result {
        Ok((result, patch_ids)) => {
            log.step("fleet", format!("PID {}: {result} {patch_ids:?}", job.pid));
            Some(ProcessOutcome {
                pid: job.pid,
                exe: job.exe.clone(),
                build_id,
                result,
                patch_ids,
                reason: None,
                error: None,
            })
        }
        Err(e) if !job.named && gone(&e) => {
            log.step("fleet", format!("PID {}: exited meanwhile", job.pid));
            None
        }
        Err(e) if relation(&e).is_some() => {
            let result = relation(&e).expect("checked");
            log.step("fleet", format!("PID {}: {result}: {e}", job.pid));
            Some(ProcessOutcome::related(
                job.pid,
                job.exe.clone(),
                build_id,
                result,
                &e,
            ))
        }
        Err(e) => {
            log.step("fleet", format!("PID {}: failed: {e}", job.pid));
            Some(ProcessOutcome::failed(
                job.pid,
                job.exe.clone(),
                build_id,
                &e,
            ))
        }
    }
}

/// The outcome of a process that is not patched on its own because of its relation to
/// another: it shares that one's address space (`shared_mm`), or was forked while a library
/// loaded into it (`inconsistent`).
fn relation(e: &Error) -> Option<Outcome> {
    match e {
        Error::Unsupported {
            reason: Unsupported::SharedAddressSpace { .. },
        } => Some(Outcome::SharedMm),
        Error::Unsupported {
            reason: Unsupported::Inconsistent { .. },
        } => Some(Outcome::Inconsistent),
        _ => None,
    }
}

fn gone(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::NoSuchProcess | ErrorKind::TargetExited)
}

fn report(
    operation: Operation,
    manifest: &LoadedManifest,
    fleet: &FleetOptions,
    outcomes: Vec<ProcessOutcome>,
    log: &Log,
) -> FleetReport {
    FleetReport::new(
        operation,
        fleet.dry_run,
        ManifestSummary {
            name: manifest.manifest.name.clone(),
            path: manifest.path.clone(),
            library_sha256: manifest.manifest.library_sha256.clone(),
        },
        outcomes,
        log.elapsed_ms(),
    )
}

/// The processes to work on, and those already decided (skipped: another build, or a PID
/// given that maps none of the manifest's modules; failed: a PID given that cannot be read).
/// Processes are scanned in parallel (reading maps and memory only).
fn select(
    manifest: &LoadedManifest,
    fleet: &FleetOptions,
    log: &Log,
) -> (Vec<Job>, Vec<ProcessOutcome>) {
    let (pids, named) = match &fleet.processes {
        Selection::All => (select::all_pids(), false),
        Selection::Pids(pids) => {
            let mut pids = pids.clone();
            pids.sort_unstable();
            pids.dedup();
            (pids, true)
        }
    };
    let scanned = jobs::run_each(&pids, fleet.jobs, log, |&pid, _| select::scan(pid));
    let mut jobs = Vec::new();
    let mut decided = Vec::new();
    for (pid, scanned) in pids.into_iter().zip(scanned) {
        let scanned = match scanned {
            Ok(s) => s,
            Err(e) => {
                if named {
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                    decided.push(ProcessOutcome::failed(pid, exe, None, &e.into()));
                } else {
                    log.step("select", format!("PID {pid}: not inspected: {e}"));
                }
                continue;
            }
        };
        let exe = &scanned.exe;
        match select::classify(&manifest.manifest, &scanned) {
            Match::Matched {
                build_id,
                functions,
            } => jobs.push(Job {
                pid,
                exe: exe.clone(),
                build_id,
                functions,
                named,
            }),
            Match::OtherBuild { build_id, reason } => {
                log.step("select", format!("PID {pid}: skipped: {reason}"));
                decided.push(ProcessOutcome::skipped(pid, exe.clone(), build_id, reason));
            }
            Match::Unrelated if named => {
                let wanted: Vec<String> = manifest
                    .manifest
                    .targets
                    .iter()
                    .map(|t| format!("{} build-id {}", t.module, t.build_id))
                    .collect();
                decided.push(ProcessOutcome::skipped(
                    pid,
                    exe.clone(),
                    None,
                    format!(
                        "maps none of the manifest's modules ({})",
                        wanted.join(", ")
                    ),
                ));
            }
            Match::Unrelated => {}
        }
    }
    log.step(
        "select",
        format!(
            "{} process(es) map a module build of manifest {}",
            jobs.len(),
            manifest.manifest.name
        ),
    );
    (jobs, decided)
}
