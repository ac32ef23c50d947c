//! `rpatch rehearse`: a patch rehearsal for CI. Starts the target, waits until it is ready, runs
//! probes before, while and after the patch is applied, attaches and rolls back N times beside an
//! optional load, checks the target survived, stops it, and reports every step (JSON, JUnit).
//!
//! It drives the library's operations ([`crate::attach`], [`crate::rollback`]) in-process and
//! never uses ptrace itself. Every process it starts (target, probes, load) is the leader of its
//! own process group with `PR_SET_PDEATHSIG`; SIGTERM, SIGINT and SIGHUP kill and reap them all
//! before rehearse returns (see `child`).

mod child;
mod junit;
mod report;

pub use report::{
    Counts, ErrorSummary, Expectation, RehearseReport, SCHEMA_VERSION, Step, StepKind, StepStatus,
    TargetSummary,
};

use crate::log::Log;
use crate::patch::{AttachOptions, RollbackOptions, RollbackSelection};
use crate::{Error, ErrorKind, attach, rollback};
use child::{Captured, Collector, Deferred, Group, Signals, Wake, describe_status, wait};
use nix::sys::signal::Signal;
use regex_lite::Regex;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of the target's output kept for the report (the end of it).
const TARGET_LOG_CAP: usize = 64 * 1024;
/// Bytes of a probe's stdout or stderr kept.
const PROBE_OUTPUT_CAP: usize = 16 * 1024;
/// Bytes of the load command's output kept.
const LOAD_OUTPUT_CAP: usize = 64 * 1024;
/// How long a target whose output ended without a ready line is given to be seen exiting (it
/// closes its output a moment before its exit is reported, longer on a loaded machine).
const EXIT_AFTER_EOF: Duration = Duration::from_secs(5);
/// How often a readiness condition without a descriptor to wait on (a TCP port, a pid file) is
/// tried again.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// What to rehearse.
#[derive(Debug, Clone)]
pub struct RehearseOptions {
    /// TARGET and its arguments (started with stdin from /dev/null, stdout and stderr merged
    /// into the log).
    pub command: Vec<OsString>,
    /// The patch: library, functions, timeouts and overrides, as for `attach` (`pid` and
    /// `dry_run` are ignored). Rollbacks use the same `timeout` and `allow.active`.
    pub patch: AttachOptions,
    /// Ready once a line of the target's output matches.
    pub ready_line: Option<Regex>,
    /// Ready once 127.0.0.1 (or `[::1]`) accepts a TCP connection on this port.
    pub ready_port: Option<u16>,
    /// How long readiness may take.
    pub ready_timeout: Duration,
    /// The file where the target writes the pid of the process to patch (a daemon's worker).
    pub pid_file: Option<PathBuf>,
    /// Shell commands (`sh -c`) run before the first attach, after each attach and after each
    /// rollback; each must exit 0 and its stdout match the expectation of that moment.
    pub probes: Vec<String>,
    /// How long one probe may run.
    pub probe_timeout: Duration,
    /// What probe output must match while the patch is not applied.
    pub expect_before: Option<Regex>,
    /// What probe output must match while the patch is applied.
    pub expect_after: Option<Regex>,
    /// Attach/rollback cycles (at least 1).
    pub cycles: u32,
    /// A shell command run from readiness to the end beside everything; it must still run when
    /// the last rollback ends, then end by itself and exit 0. Besides `RPATCH_TARGET_PID` it gets
    /// `RPATCH_CYCLES_DONE`: a file that exists once the last rollback is done (a load may run
    /// until then).
    pub load: Option<String>,
    /// How long to wait for the load command once the cycles are done.
    pub load_timeout: Duration,
    /// How long the target may take to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// Where to write the JUnit report.
    pub junit: Option<PathBuf>,
}

/// Runs a rehearsal (see [`RehearseOptions`]); `progress` sees each step as it finishes.
///
/// Processes are started from the calling thread, whose death delivers their
/// `PR_SET_PDEATHSIG`: call it from a thread that lives as long as the process (the main
/// thread). While it runs, SIGTERM, SIGINT and SIGHUP are caught: the rehearsal then kills and
/// reaps what it started and fails with `interrupted` set (the caller may then re-raise it).
///
/// `Ok` only when every step passed; otherwise [`Error::RehearsalFailed`] carries the report.
/// The JUnit file, when asked for, is written either way.
pub fn rehearse(
    options: &RehearseOptions,
    log: &Log,
    progress: &mut dyn FnMut(&Step),
) -> Result<RehearseReport, Error> {
    if options.command.is_empty() {
        return Err(environment("options", "no TARGET command given".into()));
    }
    if options.cycles == 0 {
        return Err(environment("options", "--cycles must be at least 1".into()));
    }
    let signals = Signals::install().map_err(|e| environment("signals", e.to_string()))?;
    if let Some(path) = &options.junit {
        // Fail before starting anything when the report could not be written at the end.
        std::fs::write(path, b"").map_err(|e| {
            environment(
                "junit",
                format!("cannot write the JUnit report {}: {e}", path.display()),
            )
        })?;
    }
    let mut run = Rehearsal::new(options, log, signals);
    run.execute(progress);
    run.finish(progress)
}

/// A failure before the rehearsal could start (no report yet).
fn environment(step: &str, message: String) -> Error {
    Error::RehearsalFailed {
        step: step.into(),
        message,
        cause: None,
        interrupted: None,
        report: None,
    }
}

/// What a step found when it did not pass.
enum Problem {
    /// A check did not hold.
    Failed(String),
    /// The step could not run.
    Error(String),
    /// An attach or rollback failed with this error (which keeps its exit code).
    Cause(Error),
    /// A stop signal arrived.
    Interrupted(i32),
}

/// What a step found when it passed.
#[derive(Default)]
struct Done {
    message: String,
    frozen_us: Option<u64>,
    patch_ids: Vec<u64>,
}

/// The first failure, which ends the rehearsal.
struct Failure {
    step: String,
    message: String,
    cause: Option<Error>,
    interrupted: Option<i32>,
}

/// The started target.
struct Target {
    group: Group,
    /// Its output, shared with the thread reading it.
    output: Arc<Mutex<Captured>>,
    /// Says when the reader has seen EOF.
    reader_done: std::sync::mpsc::Receiver<()>,
    /// Readable once a line matched `--ready-line`.
    ready: UnixStream,
    /// /proc start time of the started process.
    start_time: u64,
}

/// The process patched: the target, or the one its pid file names.
#[derive(Clone, Copy)]
struct Patched {
    pid: i32,
    start_time: u64,
}

/// The running load command.
struct Load {
    group: Group,
    output: Collector,
    /// Directory holding the `cycles-done` marker (removed on drop).
    marker_dir: PathBuf,
    /// Whether it was still running when the last rollback ended.
    covered: bool,
}

impl Load {
    /// The file that exists once the last cycle's rollback is done (`RPATCH_CYCLES_DONE`).
    fn marker(&self) -> PathBuf {
        self.marker_dir.join("cycles-done")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.marker_dir);
    }
}

struct Rehearsal<'a> {
    options: &'a RehearseOptions,
    log: &'a Log,
    signals: Signals,
    started: Instant,
    report: RehearseReport,
    target: Option<Target>,
    patched: Option<Patched>,
    load: Option<Load>,
    failure: Option<Failure>,
    /// Output of the command the current step ran (probe, load), stored with its outcome.
    step_output: Option<String>,
}

impl<'a> Rehearsal<'a> {
    fn new(options: &'a RehearseOptions, log: &'a Log, signals: Signals) -> Self {
        let report = RehearseReport {
            schema_version: SCHEMA_VERSION,
            passed: false,
            target: TargetSummary {
                command: options
                    .command
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                pid: None,
                patched_pid: None,
                ended: None,
                log: String::new(),
                log_bytes: 0,
            },
            library: options.patch.library.clone(),
            functions: options
                .patch
                .functions
                .iter()
                .map(|f| {
                    if f.target == f.replacement {
                        f.target.clone()
                    } else {
                        format!("{}={}", f.target, f.replacement)
                    }
                })
                .collect(),
            cycles: options.cycles,
            steps: plan_steps(options),
            counts: Counts::default(),
            total_ms: 0.0,
            junit: options.junit.clone(),
            error: None,
        };
        Rehearsal {
            options,
            log,
            signals,
            started: Instant::now(),
            report,
            target: None,
            patched: None,
            load: None,
            failure: None,
            step_output: None,
        }
    }

    /// Runs the steps in order until one does not pass; the stop step runs whatever happened.
    fn execute(&mut self, progress: &mut dyn FnMut(&Step)) {
        let steps = self.report.steps.len();
        for i in 0..steps {
            let kind = self.report.steps[i].kind;
            if self.failure.is_some() || kind == StepKind::Stop {
                break;
            }
            let began = Instant::now();
            let outcome = match self.signals.caught() {
                Some(s) => Err(Problem::Interrupted(s)),
                None => self.run_step(i),
            };
            self.record(i, began, outcome);
            let step = &self.report.steps[i];
            if step.kind == StepKind::Rollback
                && step.cycle == Some(self.options.cycles)
                && step.status == StepStatus::Passed
                && let Some(load) = &mut self.load
            {
                load.covered = !load.group.has_exited();
                let _ = std::fs::write(load.marker(), b"");
            }
            progress(&self.report.steps[i]);
        }
    }

    fn run_step(&mut self, i: usize) -> Result<Done, Problem> {
        let step = self.report.steps[i].clone();
        if !matches!(step.kind, StepKind::Start | StepKind::Ready)
            && let Some(gone) = self.target_gone()
        {
            return Err(Problem::Failed(gone));
        }
        self.log.step("rehearse", &step.name);
        match step.kind {
            StepKind::Start => self.start(),
            StepKind::Ready => self.ready(),
            StepKind::Probe => {
                let expect = match step.expect {
                    Some(Expectation::After) => self.options.expect_after.as_ref(),
                    _ => self.options.expect_before.as_ref(),
                };
                let n = step.probe.unwrap_or(1);
                let options = self.options;
                self.probe(&options.probes[n - 1], expect)
            }
            StepKind::Attach => self.attach(),
            StepKind::Rollback => self.rollback(),
            StepKind::Load => self.finish_load(),
            StepKind::Alive => self.alive(),
            StepKind::Stop => Ok(Done::default()),
        }
    }

    /// Stores a step's outcome; the first problem becomes the rehearsal's failure.
    fn record(&mut self, i: usize, began: Instant, outcome: Result<Done, Problem>) {
        let step = &mut self.report.steps[i];
        step.time_ms = began.elapsed().as_secs_f64() * 1000.0;
        step.output = self.step_output.take();
        match outcome {
            Ok(done) => {
                step.status = StepStatus::Passed;
                step.message = (!done.message.is_empty()).then_some(done.message);
                step.frozen_us = done.frozen_us;
                step.patch_ids = done.patch_ids;
            }
            Err(problem) => {
                let (status, message, cause, interrupted) = match problem {
                    Problem::Failed(m) => (StepStatus::Failed, m, None, None),
                    Problem::Error(m) => (StepStatus::Error, m, None, None),
                    Problem::Cause(e) => {
                        step.error = Some(ErrorSummary::of(&e));
                        (StepStatus::Failed, e.to_string(), Some(e), None)
                    }
                    Problem::Interrupted(s) => (
                        StepStatus::Error,
                        format!("interrupted by {}", signal_name(s)),
                        None,
                        Some(s),
                    ),
                };
                step.status = status;
                step.message = Some(message.clone());
                if self.failure.is_none() {
                    self.failure = Some(Failure {
                        step: step.name.clone(),
                        message,
                        cause,
                        interrupted,
                    });
                }
            }
        }
    }

    /// Stops everything, completes the report, writes the JUnit file.
    fn finish(mut self, progress: &mut dyn FnMut(&Step)) -> Result<RehearseReport, Error> {
        // The load, when the rehearsal stopped before waiting for it.
        if let Some(mut load) = self.load.take() {
            load.group.finish();
            if let Some(step) = self
                .report
                .steps
                .iter_mut()
                .find(|s| s.kind == StepKind::Load && s.status == StepStatus::Skipped)
            {
                step.message = Some("not waited for: an earlier step failed (killed)".into());
                step.output = Some(load.output.join(Duration::from_secs(1)).text());
            }
        }
        if let Some(i) = self
            .report
            .steps
            .iter()
            .position(|s| s.kind == StepKind::Stop)
            && self.target.is_some()
        {
            let began = Instant::now();
            let outcome = self.stop();
            self.record(i, began, outcome);
            progress(&self.report.steps[i]);
        }
        if let Some(mut target) = self.target.take() {
            let status = target.group.finish();
            self.report.target.ended = Some(describe_status(status));
            // EOF comes once the group is dead, unless a process that left it holds the pipe.
            let _ = target.reader_done.recv_timeout(Duration::from_secs(2));
            let output = target.output.lock().map(|o| o.clone()).unwrap_or_default();
            self.report.target.log = output.text();
            self.report.target.log_bytes = output.total;
        }
        self.report.total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.report.count();
        let failure = self.failure.take();
        if let Some(f) = &failure {
            let kind = f
                .cause
                .as_ref()
                .map_or(ErrorKind::RehearsalFailed, Error::kind);
            self.report.error = Some(ErrorSummary::new(
                kind,
                format!("rehearsal failed at step '{}': {}", f.step, f.message),
            ));
        }
        let mut junit_error = None;
        if let Some(path) = &self.options.junit {
            let xml = junit::render(&self.report, &timestamp());
            if let Err(e) = std::fs::write(path, xml) {
                junit_error = Some(format!(
                    "cannot write the JUnit report {}: {e}",
                    path.display()
                ));
            }
        }
        match (failure, junit_error) {
            (None, None) => Ok(self.report),
            (None, Some(message)) => Err(Error::RehearsalFailed {
                step: "junit".into(),
                message,
                cause: None,
                interrupted: None,
                report: Some(Box::new(self.report)),
            }),
            (Some(f), _) => Err(Error::RehearsalFailed {
                step: f.step,
                message: f.message,
                cause: f.cause.map(Box::new),
                interrupted: f.interrupted,
                report: Some(Box::new(self.report)),
            }),
        }
    }

    // --- the steps ---------------------------------------------------------------------------

    fn start(&mut self) -> Result<Done, Problem> {
        let program = &self.options.command[0];
        let mut command = Command::new(program);
        command
            .args(&self.options.command[1..])
            .stdin(Stdio::null());
        let pipe = child::merged_output(&mut command)
            .map_err(|e| Problem::Error(format!("cannot create a pipe: {e}")))?;
        let group = Group::spawn(&mut command).map_err(|e| {
            Problem::Error(format!(
                "cannot start {}: {e}",
                Path::new(program).display()
            ))
        })?;
        // The command holds the pipe's write ends: drop it so the log sees EOF when the target
        // and its children are gone.
        drop(command);
        let (ready, notify) = UnixStream::pair()
            .map_err(|e| Problem::Error(format!("cannot create a socket pair: {e}")))?;
        let output = Arc::new(Mutex::new(Captured::default()));
        let reader_done = read_target_output(
            pipe,
            Arc::clone(&output),
            self.options.ready_line.clone(),
            notify,
        );
        let pid = group.pid();
        let start_time = proc_start_time(pid).unwrap_or(0);
        self.report.target.pid = Some(pid);
        self.target = Some(Target {
            group,
            output,
            reader_done,
            ready,
            start_time,
        });
        if self.options.pid_file.is_none() {
            self.patched = Some(Patched { pid, start_time });
            self.report.target.patched_pid = Some(pid);
        }
        Ok(Done {
            message: format!("pid {pid} (process group {pid})"),
            ..Done::default()
        })
    }

    fn ready(&mut self) -> Result<Done, Problem> {
        let o = self.options;
        let began = Instant::now();
        let deadline = began + o.ready_timeout;
        let timeout_s = o.ready_timeout.as_secs_f64();
        let target = self.target.as_ref().expect("started");
        let mut found: Vec<String> = Vec::new();
        let exited = |t: &Target| {
            let status = t
                .group
                .exit_status()
                .map_or_else(|| "ended".into(), describe_status);
            Problem::Failed(format!(
                "the target exited ({status}) before it was ready; its output is in the report"
            ))
        };
        // With a pid file the started process may exit on purpose (a daemon forking its worker).
        let watch_exit = o.pid_file.is_none();
        if let Some(re) = &o.ready_line {
            let fds = [target.ready.as_fd(), target.group.exit_fd()];
            let fds = if watch_exit { &fds[..] } else { &fds[..1] };
            match wait(&self.signals, fds, Some(deadline)) {
                // It may have printed the line and exited at once: the line counts first. The
                // reader's end closing (output ended, no match) makes the socket readable too.
                Wake::Ready(_) if line_matched(&target.ready) => {
                    found.push(format!("a line matched /{re}/"));
                }
                Wake::Ready(_) if child::readable(target.group.exit_fd()) || !watch_exit => {
                    return Err(exited(target));
                }
                Wake::Ready(_) => {
                    // Output ends a moment before the exit is reported: a target that closed
                    // its output is given a few seconds to be seen exiting, so that the report
                    // names the exit when that is what happened.
                    let grace = deadline.min(Instant::now() + EXIT_AFTER_EOF);
                    return match wait(&self.signals, &[target.group.exit_fd()], Some(grace)) {
                        Wake::Ready(_) => Err(exited(target)),
                        Wake::Signal(s) => Err(Problem::Interrupted(s)),
                        Wake::Timeout => Err(Problem::Failed(format!(
                            "the target closed its output without printing a line matching /{re}/"
                        ))),
                    };
                }
                Wake::Timeout => {
                    return Err(Problem::Failed(format!(
                        "no line of the target's output matched /{re}/ within {timeout_s} s (a C program's stdout into a pipe is block-buffered: run it under `stdbuf -oL`)"
                    )));
                }
                Wake::Signal(s) => return Err(Problem::Interrupted(s)),
            }
        }
        if let Some(port) = o.ready_port {
            loop {
                if port_accepts(port) {
                    found.push(format!("port {port} accepts connections"));
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Problem::Failed(format!(
                        "nothing accepted a TCP connection on 127.0.0.1:{port} or [::1]:{port} within {timeout_s} s"
                    )));
                }
                let fds = [target.group.exit_fd()];
                let fds = if watch_exit { &fds[..] } else { &[] };
                match wait(
                    &self.signals,
                    fds,
                    Some(deadline.min(Instant::now() + RETRY_EVERY)),
                ) {
                    Wake::Ready(_) => return Err(exited(target)),
                    Wake::Signal(s) => return Err(Problem::Interrupted(s)),
                    Wake::Timeout => {}
                }
            }
        }
        if let Some(path) = &o.pid_file {
            let patched = loop {
                match read_pid_file(path, target.start_time) {
                    Ok(p) => break p,
                    Err(why) if Instant::now() >= deadline => {
                        return Err(Problem::Failed(format!(
                            "the pid file {} named no live process started by the target within {timeout_s} s: {why}",
                            path.display()
                        )));
                    }
                    Err(_) => {}
                }
                // Without --pid-file the started process is the target; with it, the started
                // process may exit (a daemon forking its worker): only the signal is waited for.
                if let Wake::Signal(s) = wait(
                    &self.signals,
                    &[],
                    Some(deadline.min(Instant::now() + RETRY_EVERY)),
                ) {
                    return Err(Problem::Interrupted(s));
                }
            };
            found.push(format!(
                "the pid file names process {} (patched)",
                patched.pid
            ));
            self.patched = Some(patched);
            self.report.target.patched_pid = Some(patched.pid);
        }
        if found.is_empty() {
            found.push("no readiness condition given: ready at once".into());
        }
        if let Some(command) = &o.load {
            match self.start_load(command) {
                Ok(pid) => found.push(format!("load started (pid {pid})")),
                Err(message) => {
                    // The target is ready; the load step itself could not run (and ends it).
                    if let Some(i) = self
                        .report
                        .steps
                        .iter()
                        .position(|s| s.kind == StepKind::Load)
                    {
                        self.record(i, Instant::now(), Err(Problem::Error(message)));
                    }
                    found.push("the load could not start".into());
                }
            }
        }
        Ok(Done {
            message: format!(
                "{} after {:.0} ms",
                found.join("; "),
                began.elapsed().as_secs_f64() * 1000.0
            ),
            ..Done::default()
        })
    }

    /// Starts the load command; returns its pid, or why it could not start.
    fn start_load(&mut self, load: &str) -> Result<i32, String> {
        let marker_dir = std::env::temp_dir().join(format!(
            "rpatch-rehearse-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir(&marker_dir)
            .map_err(|e| format!("cannot create {}: {e}", marker_dir.display()))?;
        let mut command = self.shell(load);
        command.env("RPATCH_CYCLES_DONE", marker_dir.join("cycles-done"));
        let started = child::merged_output(&mut command)
            .and_then(|pipe| Group::spawn(&mut command).map(|group| (pipe, group)));
        drop(command);
        match started {
            Ok((pipe, group)) => {
                let pid = group.pid();
                self.load = Some(Load {
                    group,
                    output: Collector::start(pipe, LOAD_OUTPUT_CAP),
                    marker_dir,
                    covered: false,
                });
                Ok(pid)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&marker_dir);
                Err(format!("cannot start the load command: {e}"))
            }
        }
    }

    /// `sh -c CMD` with stdin from /dev/null and `RPATCH_TARGET_PID` set.
    fn shell(&self, cmd: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(cmd).stdin(Stdio::null());
        if let Some(p) = self.patched {
            command.env("RPATCH_TARGET_PID", p.pid.to_string());
        }
        command
    }

    fn probe(&mut self, cmd: &str, expect: Option<&Regex>) -> Result<Done, Problem> {
        let mut command = self.shell(cmd);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut group = Group::spawn(&mut command)
            .map_err(|e| Problem::Error(format!("cannot run the probe: {e}")))?;
        drop(command);
        let stdout = Collector::start(group.take_stdout().expect("piped"), PROBE_OUTPUT_CAP);
        let stderr = Collector::start(group.take_stderr().expect("piped"), PROBE_OUTPUT_CAP);
        let deadline = Instant::now() + self.options.probe_timeout;
        let woke = wait(&self.signals, &[group.exit_fd()], Some(deadline));
        let status = group.finish();
        let out = stdout.join(Duration::from_secs(1)).text();
        let err = stderr.join(Duration::from_secs(1)).text();
        self.step_output = Some(show_output(&out, &err));
        let fail = Problem::Failed;
        match woke {
            Wake::Signal(s) => return Err(Problem::Interrupted(s)),
            Wake::Timeout => {
                return Err(fail(format!(
                    "the probe did not finish within {} s (killed)",
                    self.options.probe_timeout.as_secs_f64()
                )));
            }
            Wake::Ready(_) => {}
        }
        if !status.success() {
            return Err(fail(format!(
                "the probe failed ({})",
                describe_status(status)
            )));
        }
        let first = out.lines().next().unwrap_or("").trim();
        match expect {
            Some(re) if !re.is_match(&out) => Err(fail(format!(
                "the probe's output {first:?} does not match /{re}/"
            ))),
            Some(re) => Ok(Done {
                message: format!("{first:?} matches /{re}/"),
                ..Done::default()
            }),
            None => Ok(Done {
                message: format!("exit 0: {first:?}"),
                ..Done::default()
            }),
        }
    }

    fn attach(&mut self) -> Result<Done, Problem> {
        let patched = self.patched.expect("ready");
        let mut options = self.options.patch.clone();
        options.pid = patched.pid;
        options.dry_run = false;
        let result = {
            let _deferred = Deferred::new();
            attach(&options, self.log)
        };
        match result {
            Ok(r) => {
                let mut message = format!(
                    "{} patched, threads stopped for {} us",
                    r.patches
                        .iter()
                        .map(|p| format!("{} (patch {})", p.function, p.id))
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.frozen_us
                );
                for w in &r.warnings {
                    message += &format!("; warning: {w}");
                }
                Ok(Done {
                    message,
                    frozen_us: Some(r.frozen_us),
                    patch_ids: r.patches.iter().map(|p| p.id).collect(),
                })
            }
            Err(e) => Err(self.operation_failed("attach", e)),
        }
    }

    fn rollback(&mut self) -> Result<Done, Problem> {
        let patched = self.patched.expect("ready");
        let options = RollbackOptions {
            pid: patched.pid,
            selection: RollbackSelection::Last,
            cascade: false,
            timeout: self.options.patch.timeout,
            allow_active: self.options.patch.allow.active,
        };
        let result = {
            let _deferred = Deferred::new();
            rollback(&options, self.log)
        };
        match result {
            Ok(r) => Ok(Done {
                message: format!(
                    "patch {} rolled back, threads stopped for {} us",
                    r.rolled_back
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    r.frozen_us
                ),
                frozen_us: Some(r.frozen_us),
                patch_ids: r.rolled_back,
            }),
            Err(e) => Err(self.operation_failed("rollback", e)),
        }
    }

    /// An attach or rollback error keeps its own exit code, unless the target died meanwhile:
    /// that is the rehearsal's finding.
    fn operation_failed(&self, what: &str, e: Error) -> Problem {
        match self.target_gone() {
            Some(gone) => Problem::Failed(format!("{gone} ({what}: {e})")),
            None => Problem::Cause(e),
        }
    }

    fn finish_load(&mut self) -> Result<Done, Problem> {
        let Some(mut load) = self.load.take() else {
            return Err(Problem::Error("the load was not started".into()));
        };
        let ended_early = !load.covered;
        let deadline = Instant::now() + self.options.load_timeout;
        let woke = wait(&self.signals, &[load.group.exit_fd()], Some(deadline));
        let status = load.group.finish();
        let output = load.output.join(Duration::from_secs(1)).text();
        self.step_output = Some(output);
        match woke {
            Wake::Signal(s) => Err(Problem::Interrupted(s)),
            Wake::Timeout => Err(Problem::Failed(format!(
                "the load was still running {} s after the last cycle (killed): it must end by itself (e.g. wrk -d)",
                self.options.load_timeout.as_secs_f64()
            ))),
            Wake::Ready(_) if !status.success() => Err(Problem::Failed(format!(
                "the load failed ({})",
                describe_status(status)
            ))),
            Wake::Ready(_) if ended_early => Err(Problem::Failed(format!(
                "the load ended ({}) before the last rollback did: make it last longer than the cycles (or until $RPATCH_CYCLES_DONE exists)",
                describe_status(status)
            ))),
            Wake::Ready(_) => Ok(Done {
                message: "exit 0, ran beside every cycle".into(),
                ..Done::default()
            }),
        }
    }

    fn alive(&self) -> Result<Done, Problem> {
        let p = self.patched.expect("ready");
        // A thread just detached may need a moment to be scheduled out of its stop.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match untraced(p.pid) {
                Ok(threads) => {
                    return Ok(Done {
                        message: format!(
                            "pid {} runs, {threads} thread(s), none traced or stopped",
                            p.pid
                        ),
                        ..Done::default()
                    });
                }
                Err(why) if Instant::now() >= deadline => return Err(Problem::Failed(why)),
                Err(_) => {
                    if let Wake::Signal(s) = wait(
                        &self.signals,
                        &[],
                        Some(Instant::now() + Duration::from_millis(10)),
                    ) {
                        return Err(Problem::Interrupted(s));
                    }
                }
            }
        }
    }

    /// SIGTERM to the target's group (and the patched process when it left the group), SIGKILL
    /// to what is left after the stop timeout, or at once when rehearse was interrupted.
    fn stop(&mut self) -> Result<Done, Problem> {
        let interrupted = self.signals.caught();
        let target = self.target.as_mut().expect("started");
        let outside = self
            .patched
            .filter(|p| p.pid != target.group.pid() && alive(p.pid, p.start_time));
        let began = Instant::now();
        if let Some(s) = interrupted {
            target.group.finish();
            if let Some(p) = outside {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
            }
            // A signal that came after the last check still interrupts the rehearsal.
            if self.failure.is_none() {
                return Err(Problem::Interrupted(s));
            }
            return Ok(Done {
                message: format!("killed (rehearse got {})", signal_name(s)),
                ..Done::default()
            });
        }
        target.group.signal(Signal::SIGTERM);
        if let Some(p) = outside {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGTERM);
        }
        let deadline = began + self.options.stop_timeout;
        // The started process may have exited long ago (a daemon); then the patched one counts.
        let mut timed_out = false;
        if !target.group.has_exited() {
            timed_out = matches!(
                wait(&self.signals, &[target.group.exit_fd()], Some(deadline)),
                Wake::Timeout
            );
        }
        if let Some(p) = outside {
            while alive(p.pid, p.start_time) && Instant::now() < deadline {
                let _ = wait(
                    &self.signals,
                    &[],
                    Some(Instant::now() + Duration::from_millis(10)),
                );
            }
            if alive(p.pid, p.start_time) {
                timed_out = true;
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
            }
        }
        let status = target.group.finish();
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        Ok(Done {
            message: if timed_out {
                format!(
                    "still running {} s after SIGTERM: killed with SIGKILL",
                    self.options.stop_timeout.as_secs_f64()
                )
            } else {
                format!(
                    "stopped by SIGTERM in {ms:.0} ms ({})",
                    describe_status(status)
                )
            },
            ..Done::default()
        })
    }

    /// Why the target can no longer be rehearsed, when it is gone.
    fn target_gone(&self) -> Option<String> {
        let target = self.target.as_ref()?;
        match (self.patched, &self.options.pid_file) {
            (Some(p), Some(path)) if !alive(p.pid, p.start_time) => Some(format!(
                "the target's process {} (named by {}) is gone",
                p.pid,
                path.display()
            )),
            (_, Some(_)) => None,
            (_, None) => target.group.exit_status().map(|s| {
                format!(
                    "the target exited ({}); its output is in the report",
                    describe_status(s)
                )
            }),
        }
    }
}

/// The steps of a rehearsal, in order, all `skipped` until they run.
fn plan_steps(o: &RehearseOptions) -> Vec<Step> {
    let mut steps = vec![
        Step::planned("start target".into(), StepKind::Start, None),
        Step::planned("ready".into(), StepKind::Ready, None),
    ];
    let probes = |steps: &mut Vec<Step>, cycle: Option<u32>, expect: Expectation| {
        let when = match (cycle, expect) {
            (None, _) => "before patch",
            (Some(_), Expectation::After) => "patched",
            (Some(_), Expectation::Before) => "rolled back",
        };
        for n in 1..=o.probes.len() {
            let probe = if o.probes.len() == 1 {
                format!("probe {when}")
            } else {
                format!("probe {n} {when}")
            };
            let name = match cycle {
                Some(c) => format!("cycle {c}: {probe}"),
                None => probe,
            };
            let mut step = Step::planned(name, StepKind::Probe, cycle);
            step.probe = Some(n);
            step.expect = Some(expect);
            steps.push(step);
        }
    };
    probes(&mut steps, None, Expectation::Before);
    for c in 1..=o.cycles.max(1) {
        let cycle = Some(c);
        steps.push(Step::planned(
            format!("cycle {c}: attach"),
            StepKind::Attach,
            cycle,
        ));
        probes(&mut steps, cycle, Expectation::After);
        steps.push(Step::planned(
            format!("cycle {c}: rollback"),
            StepKind::Rollback,
            cycle,
        ));
        probes(&mut steps, cycle, Expectation::Before);
    }
    if o.load.is_some() {
        steps.push(Step::planned("load".into(), StepKind::Load, None));
    }
    steps.push(Step::planned(
        "target alive and untraced".into(),
        StepKind::Alive,
        None,
    ));
    steps.push(Step::planned("stop target".into(), StepKind::Stop, None));
    steps
}

/// Whether the output reader signalled a line matching `--ready-line` (one byte on `ready`),
/// rather than ending without one (end of file on `ready`) or not yet.
fn line_matched(ready: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    let _ = ready.set_nonblocking(true);
    let got = (&*ready).read(&mut byte);
    let _ = ready.set_nonblocking(false);
    matches!(got, Ok(1))
}

/// Reads the target's merged output to EOF, keeping its end in `output`; the first line matching
/// `ready_line` makes `notify` readable (one byte).
fn read_target_output(
    mut pipe: std::fs::File,
    output: Arc<Mutex<Captured>>,
    ready_line: Option<Regex>,
    mut notify: UnixStream,
) -> std::sync::mpsc::Receiver<()> {
    let (done, reader_done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready_line = ready_line;
        let mut line: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        let mut matches = |line: &[u8], ready_line: &mut Option<Regex>| {
            if let Some(re) = ready_line.as_ref()
                && re.is_match(String::from_utf8_lossy(line).trim_end_matches(['\r', '\n']))
            {
                let _ = notify.write_all(b"r");
                *ready_line = None;
            }
        };
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if let Ok(mut o) = output.lock() {
                o.push(&buf[..n], TARGET_LOG_CAP);
            }
            if ready_line.is_none() {
                continue;
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    matches(&line, &mut ready_line);
                    line.clear();
                } else if line.len() < 64 * 1024 {
                    line.push(b);
                }
            }
        }
        if !line.is_empty() {
            matches(&line, &mut ready_line);
        }
        let _ = done.send(());
    });
    reader_done
}

/// Whether loopback accepts a TCP connection on `port` (IPv4, then IPv6).
fn port_accepts(port: u16) -> bool {
    let addrs: [std::net::SocketAddr; 2] = [
        (std::net::Ipv4Addr::LOCALHOST, port).into(),
        (std::net::Ipv6Addr::LOCALHOST, port).into(),
    ];
    addrs
        .iter()
        .any(|a| std::net::TcpStream::connect_timeout(a, Duration::from_millis(500)).is_ok())
}

/// The process a pid file names, when it is alive and started no earlier than the target (a
/// stale file from an earlier run names an older process, or a reused pid).
fn read_pid_file(path: &Path, target_start: u64) -> Result<Patched, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("it holds {:?}, not a pid", text.trim()))?;
    let start_time = proc_start_time(pid).ok_or_else(|| format!("process {pid} is not running"))?;
    if start_time < target_start {
        return Err(format!(
            "process {pid} is older than the target (a stale pid file?)"
        ));
    }
    if !alive(pid, start_time) {
        return Err(format!("process {pid} is not running"));
    }
    Ok(Patched { pid, start_time })
}

/// State letter and start time (clock ticks since boot) from /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the name.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

fn proc_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, s)| s)
}

/// Whether `pid` is the process that started at `start_time` and has not exited.
fn alive(pid: i32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|(state, start)| start == start_time && !matches!(state, 'Z' | 'X'))
}

/// Ok(thread count) when every thread of `pid` runs untraced and unstopped.
fn untraced(pid: i32) -> Result<usize, String> {
    let dir = format!("/proc/{pid}/task");
    let tasks = std::fs::read_dir(&dir).map_err(|_| format!("process {pid} is gone"))?;
    let mut count = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let tid = task.file_name().to_string_lossy().into_owned();
        let tracer = field("TracerPid:");
        if tracer != "0" {
            return Err(format!("thread {tid} is still traced by {tracer}"));
        }
        let state = field("State:");
        if state.starts_with(['t', 'T', 'Z', 'X']) {
            return Err(format!("thread {tid} is {state}"));
        }
        count += 1;
    }
    if count == 0 {
        return Err(format!("process {pid} has no threads left"));
    }
    Ok(count)
}

/// A command's stdout, then its stderr under a `--- stderr` line when it wrote any.
fn show_output(out: &str, err: &str) -> String {
    if err.trim().is_empty() {
        out.to_string()
    } else {
        format!("{out}--- stderr\n{err}")
    }
}

fn signal_name(s: i32) -> String {
    Signal::try_from(s).map_or_else(|_| format!("signal {s}"), |s| s.to_string())
}

/// The current time as JUnit writes it: `2025-01-31T12:34:56` (UTC).
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
