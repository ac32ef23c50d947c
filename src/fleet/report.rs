//! What `attach --manifest` and `rollback --manifest` report: one outcome per process, counts,
//! and the kind of failure the whole run ends with (docs/schemas/fleet.schema.json).

use crate::{Error, ErrorKind};
use serde::Serialize;
use std::path::PathBuf;

/// Which operation a fleet report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `attach --manifest`.
    Attach,
    /// `rollback --manifest`.
    Rollback,
}

/// What happened to one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The patch was applied.
    Applied,
    /// The process carried this manifest's patch already.
    AlreadyApplied,
    /// The manifest's patch was rolled back.
    RolledBack,
    /// The process does not carry this manifest's patch.
    NotApplied,
    /// `--dry-run`: the patch would be applied (everything was resolved and checked).
    WouldApply,
    /// `--dry-run`: these patches would be rolled back.
    WouldRollBack,
    /// The process maps another build of a module of the manifest (or, given by PID, none of
    /// them): left alone.
    Skipped,
    /// The operation failed for this process (it was left as it was).
    Failed,
    /// The process shares the address space of another one (the owner, named in the reason)
    /// without being its thread (vfork or posix_spawn before its exec, `clone(CLONE_VM)`): its
    /// code is the owner's, patched or rolled back with the owner (also listed). Not a failure.
    SharedMm,
    /// The process was forked while rpatch loaded a library into its ancestor (named in the
    /// reason): its loader state is half updated, so nothing is ever loaded into it. It runs
    /// without the patch: for attach, the run ends with `some_processes_failed` (25).
    Inconsistent,
}

impl Outcome {
    /// The snake_case word, as in `--json`.
    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyApplied => "already_applied",
            Outcome::RolledBack => "rolled_back",
            Outcome::NotApplied => "not_applied",
            Outcome::WouldApply => "would_apply",
            Outcome::WouldRollBack => "would_roll_back",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::SharedMm => "shared_mm",
            Outcome::Inconsistent => "inconsistent",
        }
    }

    /// The outcomes every run of an operation counts (zeros included), in the order counts
    /// list them; [`Outcome::SPECIAL`] ones are counted only when some process has them.
    pub const fn of(operation: Operation, dry_run: bool) -> [Outcome; 4] {
        match (operation, dry_run) {
            (Operation::Attach, false) => [
                Outcome::Applied,
                Outcome::AlreadyApplied,
                Outcome::Skipped,
                Outcome::Failed,
            ],
            (Operation::Attach, true) => [
                Outcome::WouldApply,
                Outcome::AlreadyApplied,
                Outcome::Skipped,
                Outcome::Failed,
            ],
            (Operation::Rollback, false) => [
                Outcome::RolledBack,
                Outcome::NotApplied,
                Outcome::Skipped,
                Outcome::Failed,
            ],
            (Operation::Rollback, true) => [
                Outcome::WouldRollBack,
                Outcome::NotApplied,
                Outcome::Skipped,
                Outcome::Failed,
            ],
        }
    }
}

impl Outcome {
    /// Outcomes of processes in a particular relation to another (see each), counted only
    /// when some process has them.
    pub const SPECIAL: [Outcome; 2] = [Outcome::SharedMm, Outcome::Inconsistent];
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why one process failed: its error's kind, that kind's exit code, and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The stable kind of the error.
    pub kind: ErrorKind,
    /// The exit code a single-process run would have ended with.
    pub exit_code: i32,
    /// The message, as `rpatch: error:` would print it.
    pub message: String,
}

impl Failure {
    /// The failure an error stands for.
    pub fn of(error: &Error) -> Self {
        Self {
            kind: error.kind(),
            exit_code: error.exit_code(),
            message: error.to_string(),
        }
    }
}

/// One process of a fleet operation.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessOutcome {
    /// Process id (as the host sees it).
    pub pid: i32,
    /// Its executable, as the kernel reports it.
    pub exe: PathBuf,
    /// The build-id of the manifest's module it maps (for `skipped`, the other build found;
    /// null when it has none).
    pub build_id: Option<String>,
    /// What happened.
    pub result: Outcome,
    /// The patch ids in the process's journal that were applied, found applied, rolled back,
    /// or would be rolled back.
    pub patch_ids: Vec<u64>,
    /// For `skipped` and `failed`: why, in one line.
    pub reason: Option<String>,
    /// For `failed`: the error.
    pub error: Option<Failure>,
}

impl ProcessOutcome {
    /// A process left alone, with the reason.
    pub fn skipped(pid: i32, exe: PathBuf, build_id: Option<String>, reason: String) -> Self {
        Self {
            pid,
            exe,
            build_id,
            result: Outcome::Skipped,
            patch_ids: Vec::new(),
            reason: Some(reason),
            error: None,
        }
    }

    /// A process not worked on because of its relation to another ([`Outcome::SharedMm`],
    /// [`Outcome::Inconsistent`]), with the refusal that says so as the reason.
    pub fn related(
        pid: i32,
        exe: PathBuf,
        build_id: Option<String>,
        result: Outcome,
        refusal: &Error,
    ) -> Self {
        Self {
            pid,
            exe,
            build_id,
            result,
            patch_ids: Vec::new(),
            reason: Some(first_line(&refusal.to_string())),
            error: None,
        }
    }

    /// A process the operation failed for.
    pub fn failed(pid: i32, exe: PathBuf, build_id: Option<String>, error: &Error) -> Self {
        let failure = Failure::of(error);
        Self {
            pid,
            exe,
            build_id,
            result: Outcome::Failed,
            patch_ids: Vec::new(),
            reason: Some(first_line(&failure.message)),
            error: Some(failure),
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// The manifest a fleet report is about.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestSummary {
    /// Its `name`.
    pub name: String,
    /// The manifest file, absolute.
    pub path: PathBuf,
    /// Its library's SHA-256 (checked against the file before anything was touched).
    pub library_sha256: String,
}

/// The result of `attach --manifest` or `rollback --manifest`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Version of this report's JSON layout (docs/schemas/fleet.schema.json).
    pub schema_version: u32,
    /// `attach` or `rollback`.
    pub operation: Operation,
    /// Whether nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// The manifest.
    pub manifest: ManifestSummary,
    /// Every matched process (and every PID given), by PID.
    pub processes: Vec<ProcessOutcome>,
    /// How many processes ended with each outcome this operation can have (zeros included),
    /// in the order [`Outcome::of`] lists them (a JSON object: outcome word to count).
    #[serde(serialize_with = "serialize_counts")]
    pub counts: Vec<(Outcome, usize)>,
    /// Wall time of the whole operation.
    pub total_ms: f64,
}

impl FleetReport {
    /// The version of this report's JSON layout (`schema_version`).
    pub const SCHEMA_VERSION: u32 = 1;

    /// A report of `processes` (sorted by PID here), with their counts.
    pub fn new(
        operation: Operation,
        dry_run: bool,
        manifest: ManifestSummary,
        mut processes: Vec<ProcessOutcome>,
        total_ms: f64,
    ) -> Self {
        processes.sort_by_key(|p| p.pid);
        let count = |o: Outcome| processes.iter().filter(|p| p.result == o).count();
        let counts = Outcome::of(operation, dry_run)
            .into_iter()
            .map(|o| (o, count(o)))
            .chain(
                Outcome::SPECIAL
                    .into_iter()
                    .map(|o| (o, count(o)))
                    .filter(|&(_, n)| n > 0),
            )
            .collect();
        Self {
            schema_version: Self::SCHEMA_VERSION,
            operation,
            dry_run,
            manifest,
            processes,
            counts,
            total_ms,
        }
    }

    /// How many processes ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.processes
            .iter()
            .filter(|p| p.result == outcome)
            .count()
    }

    /// The kind the run ends with, when it is not a success: `some_processes_failed` when any
    /// process failed or is `inconsistent` (it runs without the patch; the others were still
    /// done), `no_process_matched` when no process matched (every one was skipped, or none was
    /// found). `None`: every matched process ended applied or already applied (rolled back or
    /// not applied), processes sharing a matched one's address space included.
    pub fn failure(&self) -> Option<ErrorKind> {
        if self.not_done() > 0 {
            Some(ErrorKind::SomeProcessesFailed)
        } else if self
            .processes
            .iter()
            .all(|p| matches!(p.result, Outcome::Skipped | Outcome::SharedMm))
        {
            Some(ErrorKind::NoProcessMatched)
        } else {
            None
        }
    }

    /// How many processes the operation was not done for: failed, or (attach) inconsistent.
    pub fn not_done(&self) -> usize {
        self.count(Outcome::Failed)
            + match self.operation {
                Operation::Attach => self.count(Outcome::Inconsistent),
                Operation::Rollback => 0,
            }
    }

    /// Whether the run changed something (or, in a dry run, would): what Ansible calls
    /// `changed`.
    pub fn changed(&self) -> bool {
        [
            Outcome::Applied,
            Outcome::RolledBack,
            Outcome::WouldApply,
            Outcome::WouldRollBack,
        ]
        .iter()
        .any(|&o| self.count(o) > 0)
    }
}

/// Counts as a JSON object, in their order.
fn serialize_counts<S: serde::Serializer>(
    counts: &[(Outcome, usize)],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(counts.len()))?;
    for (outcome, n) in counts {
        map.serialize_entry(outcome.name(), n)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(pid: i32, result: Outcome) -> ProcessOutcome {
        ProcessOutcome {
            pid,
            exe: "/x".into(),
            build_id: None,
            result,
            patch_ids: Vec::new(),
            reason: None,
            error: None,
        }
    }

    fn report(results: &[Outcome]) -> FleetReport {
        let processes = results
            .iter()
            .enumerate()
            .map(|(i, &r)| outcome(100 - i as i32, r))
            .collect();
        let manifest = ManifestSummary {
            name: "m".into(),
            path: "/m.toml".into(),
            library_sha256: "00".into(),
        };
        FleetReport::new(Operation::Attach, false, manifest, processes, 1.0)
    }

    #[test]
    fn exit_kinds_follow_the_outcomes() {
        use Outcome::*;
        assert_eq!(report(&[Applied, AlreadyApplied, Skipped]).failure(), None);
        assert_eq!(
            report(&[Applied, Failed, Skipped]).failure(),
            Some(ErrorKind::SomeProcessesFailed)
        );
        assert_eq!(
            report(&[Skipped]).failure(),
            Some(ErrorKind::NoProcessMatched)
        );
        assert_eq!(report(&[]).failure(), Some(ErrorKind::NoProcessMatched));
        let r = report(&[Applied, Skipped, Applied]);
        assert_eq!(r.processes[0].pid, 98, "sorted by PID");
        assert_eq!(r.count(Applied), 2);
        assert_eq!(r.count(AlreadyApplied), 0);
        assert!(r.changed());
        assert!(!report(&[AlreadyApplied]).changed());
        let special = report(&[AlreadyApplied, SharedMm]);
        assert_eq!(special.failure(), None, "a sharer is done with its owner");
        assert_eq!(
            serde_json::to_value(&special).unwrap()["counts"],
            serde_json::json!({"applied": 0, "already_applied": 1, "skipped": 0, "failed": 0, "shared_mm": 1})
        );
        assert_eq!(
            report(&[AlreadyApplied, Inconsistent]).failure(),
            Some(ErrorKind::SomeProcessesFailed),
            "an inconsistent child runs without the patch"
        );
        assert_eq!(report(&[Inconsistent]).not_done(), 1);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["counts"],
            serde_json::json!({"applied": 2, "already_applied": 0, "skipped": 1, "failed": 0})
        );
    }
}
