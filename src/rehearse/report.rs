//! The rehearsal report: every step with its time and outcome, printed by `--json` and written
//! as JUnit (see `junit`).

pub use crate::error::ErrorSummary;
use serde::Serialize;
use std::path::PathBuf;

/// The version of the JSON report's layout (`schema_version`); it changes only when a field
/// changes meaning or goes away (adding fields keeps it).
pub const SCHEMA_VERSION: u32 = 1;

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Start the target.
    Start,
    /// Wait until the target is ready (output line, TCP port, pid file).
    Ready,
    /// Run a probe and match its output.
    Probe,
    /// Attach the patch.
    Attach,
    /// Roll the patch back.
    Rollback,
    /// Wait for the load command and check its exit status.
    Load,
    /// Check the target is still alive and untraced.
    Alive,
    /// Stop the target (SIGTERM, then SIGKILL).
    Stop,
}

/// Which expectation a probe's output is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expectation {
    /// `--expect-before`: the patch is not applied (before the first attach, after each rollback).
    Before,
    /// `--expect-after`: the patch is applied.
    After,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// It ran and its check held.
    Passed,
    /// Its check did not hold (JUnit `<failure>`).
    Failed,
    /// It could not run: a command could not be started, or rehearse was interrupted (JUnit
    /// `<error>`).
    Error,
    /// It did not run because an earlier step failed (JUnit `<skipped>`).
    Skipped,
}

/// One step of the rehearsal (a JUnit test case).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Unique, human-readable name (`cycle 2: attach`, `cycle 2: probe 1 patched`).
    pub name: String,
    /// What it does.
    pub kind: StepKind,
    /// Attach/rollback cycle it belongs to (1-based); None outside the cycles.
    pub cycle: Option<u32>,
    /// Probe number (1-based) for probe steps.
    pub probe: Option<usize>,
    /// Probe steps: the expectation their output is matched against.
    pub expect: Option<Expectation>,
    /// Outcome.
    pub status: StepStatus,
    /// Wall time of the step in milliseconds (0 when skipped).
    pub time_ms: f64,
    /// One-line summary: what passed, or why it failed.
    pub message: Option<String>,
    /// Output of the probe or load command (its stdout, then its stderr), when it ran.
    pub output: Option<String>,
    /// Attach/rollback: microseconds every thread of the target was stopped.
    pub frozen_us: Option<u64>,
    /// Attach/rollback: the journal ids of the patches applied or rolled back.
    pub patch_ids: Vec<u64>,
    /// Attach/rollback failures: the error's exit code and kind, as `rpatch attach` would report
    /// them.
    pub error: Option<ErrorSummary>,
}

impl Step {
    /// A step not run yet.
    pub fn planned(name: String, kind: StepKind, cycle: Option<u32>) -> Step {
        Step {
            name,
            kind,
            cycle,
            probe: None,
            expect: None,
            status: StepStatus::Skipped,
            time_ms: 0.0,
            message: None,
            output: None,
            frozen_us: None,
            patch_ids: Vec::new(),
            error: None,
        }
    }
}

/// The target as the rehearsal saw it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetSummary {
    /// TARGET and its arguments.
    pub command: Vec<String>,
    /// Process id of the started command (also its process group id), once started.
    pub pid: Option<i32>,
    /// Process id that was patched: the started one, or the one `--pid-file` names.
    pub patched_pid: Option<i32>,
    /// How the started command ended (`exit 0`, `killed by SIGTERM`), once it has.
    pub ended: Option<String>,
    /// Its output (stdout and stderr, merged): the last 64 KiB.
    pub log: String,
    /// Bytes it wrote in all.
    pub log_bytes: u64,
}

/// Step counts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Steps in all.
    pub tests: usize,
    /// Passed.
    pub passed: usize,
    /// Failed checks.
    pub failures: usize,
    /// Steps that could not run.
    pub errors: usize,
    /// Steps not run.
    pub skipped: usize,
}

/// The result of `rpatch rehearse`.
#[derive(Debug, Clone, Serialize)]
pub struct RehearseReport {
    /// Version of this layout ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Whether every step passed.
    pub passed: bool,
    /// The target.
    pub target: TargetSummary,
    /// Patch library.
    pub library: PathBuf,
    /// The `--func` requests.
    pub functions: Vec<String>,
    /// Attach/rollback cycles asked for.
    pub cycles: u32,
    /// Every step, in order, including those not run.
    pub steps: Vec<Step>,
    /// Step counts.
    pub counts: Counts,
    /// Wall time of the whole rehearsal in milliseconds.
    pub total_ms: f64,
    /// The JUnit file written, if any.
    pub junit: Option<PathBuf>,
    /// Why the rehearsal failed (None when it passed): the exit code, kind and message `rpatch`
    /// exits with.
    pub error: Option<ErrorSummary>,
}

impl RehearseReport {
    /// Recounts the steps.
    pub fn count(&mut self) {
        let mut c = Counts {
            tests: self.steps.len(),
            ..Counts::default()
        };
        for s in &self.steps {
            match s.status {
                StepStatus::Passed => c.passed += 1,
                StepStatus::Failed => c.failures += 1,
                StepStatus::Error => c.errors += 1,
                StepStatus::Skipped => c.skipped += 1,
            }
        }
        self.counts = c;
        self.passed = c.failures == 0 && c.errors == 0 && c.skipped == 0;
    }

    /// The first step that failed or could not run.
    pub fn failed_step(&self) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| matches!(s.status, StepStatus::Failed | StepStatus::Error))
    }
}
