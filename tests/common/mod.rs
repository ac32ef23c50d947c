//! Test harness shared by the integration tests: builds the test targets once, spawns them and
//! talks to them over their line protocol, runs the real `rpatch` binary and checks that the
//! target is left untraced.
//!
//! Nothing here sleeps to synchronise: replies are awaited with channel timeouts, and the few
//! waits for a state change are yield loops with a deadline.

#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// How long a target may take to print `ready` or to answer one command.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one run of `rpatch` may take before the test kills it and fails.
pub const RPATCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Exit codes of `rpatch` (see the CLI specification).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// Internal error.
    pub const INTERNAL: i32 = 1;
    /// Usage error.
    pub const USAGE: i32 = 2;
    /// No such process.
    pub const NO_SUCH_PROCESS: i32 = 3;
    /// Permission denied.
    pub const PERMISSION: i32 = 4;
    /// Target already traced by another process.
    pub const ALREADY_TRACED: i32 = 5;
    /// Library file missing or unreadable.
    pub const LIB_MISSING: i32 = 6;
    /// Library not ELF or of the wrong architecture.
    pub const LIB_NOT_ELF: i32 = 7;
    /// dlopen failed in the target.
    pub const DLOPEN_FAILED: i32 = 8;
    /// Function not found.
    pub const NOT_FOUND: i32 = 9;
    /// Ambiguous function name.
    pub const AMBIGUOUS: i32 = 10;
    /// Function cannot be patched.
    pub const UNPATCHABLE: i32 = 11;
    /// Replacement missing in the library.
    pub const REPLACEMENT_MISSING: i32 = 12;
    /// Nothing to roll back.
    pub const NOTHING_TO_ROLL_BACK: i32 = 13;
    /// The journal belongs to a different process with the same PID.
    pub const JOURNAL_MISMATCH: i32 = 14;
    /// A thread stays inside the function until --timeout.
    pub const BUSY: i32 = 15;
    /// Memory does not hold the expected bytes.
    pub const UNEXPECTED_BYTES: i32 = 16;
    /// The target exited during the operation.
    pub const TARGET_EXITED: i32 = 17;
    /// A later patch on the same function is still applied.
    pub const LATER_PATCH_APPLIED: i32 = 18;
    /// The target is of a kind rpatch cannot patch.
    pub const UNSUPPORTED: i32 = 19;
    /// A safety policy refused; an --allow-* flag overrides it.
    pub const REFUSED: i32 = 20;
    /// The replacement's signature differs.
    pub const SIGNATURE_MISMATCH: i32 = 21;
    /// `--strict`: the function has inlined copies.
    pub const INLINED_COPIES: i32 = 22;
    /// No thread could run the loader safely until --timeout.
    pub const NO_SAFE_THREAD: i32 = 23;
    /// `rehearse`: a check failed.
    pub const REHEARSAL_FAILED: i32 = 24;
    /// A manifest operation failed for some processes.
    pub const SOME_FAILED: i32 = 25;
    /// A manifest operation matched no process.
    pub const NONE_MATCHED: i32 = 26;
    /// The manifest cannot be read or is invalid.
    pub const MANIFEST_INVALID: i32 = 27;
}

/// The repository root (the `rpatch` package).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the built test targets are.
#[derive(Debug)]
pub struct Targets {
    /// `test-targets/build`: C and C++ targets and patch libraries.
    pub build: PathBuf,
    /// `test-targets/target/release`: the Rust targets.
    pub rust: PathBuf,
}

impl Targets {
    /// A C/C++ target or library in `test-targets/build`, e.g. `bin("basic_pie")`,
    /// `bin("fix_basic.so")`.
    pub fn bin(&self, name: &str) -> PathBuf {
        let p = self.build.join(name);
        assert!(p.exists(), "test target {} was not built", p.display());
        p
    }

    /// The Rust target `calcapp`.
    pub fn calcapp(&self) -> PathBuf {
        self.rust.join("calcapp")
    }

    /// The Rust patch library for `calcapp` (crate `calcapp`, a cdylib).
    pub fn calcapp_fix(&self) -> PathBuf {
        self.rust.join("libcalcapp.so")
    }
}

/// Builds every test target exactly once per test binary and returns where they are.
///
/// Several test binaries may run at once (`cargo test` runs them one after another, but
/// nextest or a developer may not): an exclusive file lock serialises the builds.
pub fn build_targets() -> &'static Targets {
    static BUILT: OnceLock<Result<Targets, String>> = OnceLock::new();
    match BUILT.get_or_init(build_targets_locked) {
        Ok(t) => t,
        Err(e) => panic!("building the test targets failed:\n{e}"),
    }
}

fn build_targets_locked() -> Result<Targets, String> {
    let tt = repo_root().join("test-targets");
    let target_dir = tt.join("target");
    std::fs::create_dir_all(&target_dir).map_err(|e| format!("{}: {e}", target_dir.display()))?;
    let lock_path = target_dir.join(".build.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;

    let jobs = thread::available_parallelism().map_or(2, |n| n.get());
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&tt)
        .arg(format!("-j{jobs}"))
        // A jobserver inherited from an outer make would not be ours.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    run_build(make)?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cargo_build = Command::new(cargo);
    cargo_build
        .args(["build", "--release", "--manifest-path"])
        .arg(tt.join("rust/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("MAKEFLAGS")
        .env_remove("CARGO_MAKEFLAGS");
    run_build(cargo_build)?;

    drop(lock); // unlocks
    Ok(Targets {
        build: tt.join("build"),
        rust: target_dir.join("release"),
    })
}

fn run_build(mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n--- stderr\n{}\n--- stdout\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// A running test target. Dropping it kills (SIGKILL) and reaps it, also when the test panics.
pub struct Target {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    pid: u32,
}

impl Target {
    /// Starts `path` with `args`, stdin and stdout piped, and waits for its `ready <pid>` line.
    pub fn spawn(path: impl AsRef<Path>, args: &[&str]) -> Target {
        let path = path.as_ref();
        Self::start(Command::new(path), path, false, args)
    }

    /// Starts `path` with `args` through `wrapper` (e.g. `unshare --pid --fork ...`, which runs
    /// it in a new PID namespace): its `ready` line carries its PID inside the namespace, so
    /// the PID rpatch must be given is found among the wrapper's descendants by executable.
    /// Dropping the target kills both.
    pub fn spawn_wrapped(wrapper: &[&str], path: impl AsRef<Path>, args: &[&str]) -> Target {
        let path = path.as_ref();
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(path);
        Self::start(cmd, path, true, args)
    }

    fn start(mut cmd: Command, path: &Path, wrapped: bool, args: &[&str]) -> Target {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let pid = child.id();
        let mut t = Target {
            name,
            child,
            stdin,
            lines,
            stderr,
            pid,
        };
        let ready = t.read_line();
        let announced = ready
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{}: expected `ready <pid>`, got {ready:?}", t.name));
        if wrapped {
            let exe = std::fs::canonicalize(path).expect("target path");
            t.pid = descendant_running(pid, &exe)
                .unwrap_or_else(|| panic!("{}: no descendant of {pid} runs it", t.name));
        } else {
            assert_eq!(announced, pid, "{}: announced the wrong pid", t.name);
        }
        t
    }

    /// The target's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process id as a command-line argument.
    pub fn pid_arg(&self) -> String {
        self.pid.to_string()
    }

    /// Sends one command line and returns the target's one-line reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.read_line()
    }

    /// Sends one line without waiting for a reply (e.g. `quit`).
    pub fn send(&mut self, line: &str) {
        let name = &self.name;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{name}: cannot send {line:?}: {e}"));
    }

    /// Reads the next line of output (waits at most [`REPLY_TIMEOUT`]).
    pub fn read_line(&mut self) -> String {
        match self.lines.recv_timeout(REPLY_TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{} (pid {}) did not answer within {REPLY_TIMEOUT:?}; state: {}; stderr: {}",
                self.name,
                self.pid,
                describe_tasks(self.pid),
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!(
                "{} (pid {}) closed its output (exited: {:?}); stderr: {}",
                self.name,
                self.pid,
                self.child.try_wait(),
                self.stderr()
            ),
        }
    }

    /// Closes the target's stdin (it then exits 0).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (yielding, at most `timeout`) for the target to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} (pid {}) did not exit within {timeout:?}; state: {}",
                self.name,
                self.pid,
                describe_tasks(self.pid)
            );
            thread::yield_now();
        }
    }

    /// Everything the target wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stdin = None;
        if self.pid != self.child.id() {
            // The wrapped target (PID 1 of its namespace: everything in it dies with it).
            // SAFETY: kill(2) with a PID and a signal number has no memory effects.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A descendant of `pid` (breadth first) whose executable is `exe`, or a file of its name.
fn descendant_running(pid: u32, exe: &Path) -> Option<u32> {
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        // By name too: a wrapper whose private mounts hide the program runs a copy of it.
        let runs_it = |e: std::path::PathBuf| e == exe || e.file_name() == exe.file_name();
        if p != pid && std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(runs_it) {
            return Some(p);
        }
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).ok()?;
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                queue.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    None
}

/// A fresh state (journal) directory for one test.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rpatch-state-")
        .tempdir()
        .expect("create state dir")
}

/// The outcome of one `rpatch` run.
#[derive(Debug)]
pub struct Run {
    /// The arguments (for messages).
    pub args: Vec<String>,
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Asserts the exit code, showing everything rpatch printed when it differs.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            code,
            "`rpatch {}` exited {} instead of {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.args.join(" "),
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts success.
    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        self.expect_code(exit::OK)
    }

    /// Parses stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`rpatch {}`: stdout is not JSON ({e}):\n{}\n--- stderr\n{}",
                self.args.join(" "),
                self.stdout,
                self.stderr
            )
        })
    }

    /// Asserts an error exit: code `code`, a `rpatch: error: ` line on stderr, and when `--json`
    /// was given, `{"error":{"code":N,"kind":"snake_case","message":"..."}}` on stdout.
    /// Returns the error message (stderr).
    #[track_caller]
    pub fn expect_error(&self, code: i32) -> &str {
        self.expect_code(code);
        assert!(
            self.stderr
                .lines()
                .any(|l| l.starts_with("rpatch: error: ")),
            "`rpatch {}`: no `rpatch: error: ` line on stderr:\n{}",
            self.args.join(" "),
            self.stderr
        );
        if self.args.iter().any(|a| a == "--json") {
            let v = self.json();
            let err = &v["error"];
            assert_eq!(
                err["code"].as_i64(),
                Some(i64::from(code)),
                "error JSON: {v}"
            );
            let kind = err["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("no kind: {v}"));
            assert!(
                !kind.is_empty()
                    && kind
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "kind is not snake_case: {v}"
            );
            assert!(
                err["message"].as_str().is_some_and(|m| !m.is_empty()),
                "no message: {v}"
            );
        }
        &self.stderr
    }
}

/// With `RPATCH_TEST_CAPTURE=DIR` in the environment of `cargo test`, appends every `rpatch`
/// run whose arguments include `--json` to `DIR/<test binary>.<test>.jsonl` (arguments, exit code,
/// stdout): two captures of the suite, before and after a change, show what the change did to
/// the JSON interface (`scripts/json-captures.py` compares them).
pub fn record(run: &Run) {
    let Some(dir) = std::env::var_os("RPATCH_TEST_CAPTURE") else {
        return;
    };
    if !run.args.iter().any(|a| a == "--json") {
        return;
    }
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| s.split('-').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let test = thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", ".");
    let line = serde_json::json!({ "args": run.args, "code": run.code, "stdout": run.stdout });
    let path = Path::new(&dir).join(format!("{binary}.{test}.jsonl"));
    let mut file = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    writeln!(file, "{line}").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The JSON Schema (docs/schemas/) an `rpatch` run's `--json` output must follow: the
/// command's report on success, the error object on failure; `rehearse` prints its report
/// either way. `None` for runs without `--json`.
pub fn schema_of(run: &Run) -> Option<&'static str> {
    if !run.args.iter().any(|a| a == "--json") {
        return None;
    }
    let command = run.args.first()?.as_str();
    let has = |flag: &str| run.args.iter().any(|a| a == flag);
    Some(match (command, run.code) {
        ("rehearse", _) => "rehearse",
        // A manifest operation prints its report when processes failed (25) or none matched (26).
        ("attach" | "rollback", 0 | 25 | 26) if has("--manifest") => "fleet",
        ("status", 0) if has("--all") => "status-all",
        (_, 0) => match command {
            "attach" => "attach",
            "rollback" => "rollback",
            "status" => "status",
            "resolve" => "resolve",
            _ => return None,
        },
        _ => "error",
    })
}

/// Validates `value` against `docs/schemas/<name>.schema.json` (compiled once per test binary);
/// returns every violation, one per line.
pub fn schema_violations(name: &str, value: &Value) -> Result<(), String> {
    static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let validator = {
        let mut all = VALIDATORS.get_or_init(Default::default).lock().unwrap();
        all.entry(name.to_string())
            .or_insert_with(|| {
                let path = repo_root().join(format!("docs/schemas/{name}.schema.json"));
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let schema: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                Arc::new(
                    jsonschema::validator_for(&schema)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
                )
            })
            .clone()
    };
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Every `--json` output of every test follows its documented schema: a renamed, missing or
/// unexpected field fails the test that produced it. A run killed before printing (the kill
/// tests) or stopped by a usage error prints nothing to check.
#[track_caller]
pub fn check_json_contract(run: &Run) {
    let Some(schema) = schema_of(run) else {
        return;
    };
    if run.stdout.trim().is_empty() && (run.code < 0 || run.code == exit::USAGE) {
        return;
    }
    let value = run.json();
    if let Err(violations) = schema_violations(schema, &value) {
        panic!(
            "`rpatch {}` (exit {}) printed JSON that does not follow docs/schemas/{schema}.schema.json:\n{violations}\n--- stdout\n{}",
            run.args.join(" "),
            run.code,
            run.stdout
        );
    }
}

/// Runs the real `rpatch` binary with `RPATCH_STATE_DIR=state` and stdin null.
pub fn rpatch<S: AsRef<OsStr>>(state: &Path, args: &[S]) -> Run {
    rpatch_cmd(Command::new(env!("CARGO_BIN_EXE_rpatch")), state, args)
}

/// Runs `rpatch` through a wrapper command (e.g. `setpriv ... rpatch ARGS`).
pub fn rpatch_via<S: AsRef<OsStr>>(wrapper: &[&str], state: &Path, args: &[S]) -> Run {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_rpatch"));
    rpatch_cmd(cmd, state, args)
}

fn rpatch_cmd<S: AsRef<OsStr>>(cmd: Command, state: &Path, args: &[S]) -> Run {
    RunningRpatch::start(cmd, state, args).wait()
}

/// An `rpatch` run in the background (for tests that act on the target meanwhile).
pub struct RunningRpatch {
    args: Vec<String>,
    child: Child,
    done: Receiver<(String, String)>,
}

impl RunningRpatch {
    /// Starts `rpatch ARGS` in the background.
    pub fn spawn<S: AsRef<OsStr>>(state: &Path, args: &[S]) -> RunningRpatch {
        RunningRpatch::start(Command::new(env!("CARGO_BIN_EXE_rpatch")), state, args)
    }

    /// Starts `WRAPPER... rpatch ARGS` in the background (`env VAR=VALUE`, which execs rpatch
    /// as the same process).
    pub fn spawn_via<S: AsRef<OsStr>>(wrapper: &[&str], state: &Path, args: &[S]) -> RunningRpatch {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(env!("CARGO_BIN_EXE_rpatch"));
        RunningRpatch::start(cmd, state, args)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start<S: AsRef<OsStr>>(mut cmd: Command, state: &Path, args: &[S]) -> RunningRpatch {
        let args_s: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let mut child = cmd
            .args(args)
            .env("RPATCH_STATE_DIR", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run rpatch {}: {e}", args_s.join(" ")));
        let mut out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, done) = mpsc::channel();
        thread::spawn(move || {
            let errs = thread::spawn(move || {
                let mut s = Vec::new();
                let _ = err.read_to_end(&mut s);
                String::from_utf8_lossy(&s).into_owned()
            });
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            let stderr = errs.join().unwrap_or_default();
            let _ = tx.send((String::from_utf8_lossy(&s).into_owned(), stderr));
        });
        RunningRpatch {
            args: args_s,
            child,
            done,
        }
    }

    /// Has it exited already?
    pub fn finished(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits (at most [`RPATCH_TIMEOUT`]) for it to finish; kills it and fails the test if not.
    pub fn wait(mut self) -> Run {
        match self.done.recv_timeout(RPATCH_TIMEOUT) {
            Ok((stdout, stderr)) => {
                let status = self.child.wait().expect("wait for rpatch");
                let run = Run {
                    args: std::mem::take(&mut self.args),
                    code: status.code().unwrap_or(-1),
                    stdout,
                    stderr,
                };
                record(&run);
                check_json_contract(&run);
                run
            }
            Err(_) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`rpatch {}` did not finish within {RPATCH_TIMEOUT:?}",
                    self.args.join(" ")
                );
            }
        }
    }
}

impl Drop for RunningRpatch {
    fn drop(&mut self) {
        // Only reached without `wait` when the test panicked: do not leave it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `rpatch attach PID --lib LIB --func F... EXTRA...`.
pub fn attach(state: &Path, pid: u32, lib: &Path, funcs: &[&str], extra: &[&str]) -> Run {
    rpatch(state, &attach_args(pid, lib, funcs, extra))
}

/// The arguments of `rpatch attach PID --lib LIB --func F... EXTRA...`, for a run made some
/// other way than [`attach`] (through a wrapper, in the background).
pub fn attach_args(pid: u32, lib: &Path, funcs: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "attach".to_string(),
        pid.to_string(),
        "--lib".to_string(),
        lib.to_str().expect("UTF-8 path").to_string(),
    ];
    for f in funcs {
        args.push("--func".into());
        args.push((*f).to_string());
    }
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args
}

/// `rpatch attach ... --json`, asserted successful; returns the JSON report.
#[track_caller]
pub fn attach_ok(state: &Path, pid: u32, lib: &Path, funcs: &[&str]) -> Value {
    let run = attach(state, pid, lib, funcs, &["--json"]);
    run.expect_ok();
    let v = run.json();
    check_attach_report(&v, pid, funcs.len());
    v
}

/// Checks the shape of an `attach --json` report.
#[track_caller]
pub fn check_attach_report(v: &Value, pid: u32, n: usize) {
    assert_eq!(v["pid"].as_u64(), Some(u64::from(pid)), "pid in {v}");
    assert!(v["dry_run"].is_boolean(), "dry_run in {v}");
    let patches = v["patches"]
        .as_array()
        .unwrap_or_else(|| panic!("no patches array in {v}"));
    assert_eq!(patches.len(), n, "number of patches in {v}");
    for p in patches {
        assert!(p["function"].as_str().is_some(), "function in {p}");
        hex(&p["address"]);
        assert!(p["library"].as_str().is_some(), "library in {p}");
        // A dry run assigns no ids and writes nothing, so it has no method or replacement yet.
        if v["dry_run"] == Value::Bool(false) {
            assert!(p["id"].as_u64().is_some_and(|i| i >= 1), "id in {p}");
            hex(&p["replacement"]);
            check_method(p);
        }
    }
    if v["dry_run"] == Value::Bool(false) {
        assert!(v["frozen_us"].as_u64().is_some(), "frozen_us in {v}");
    }
    assert!(v["total_ms"].as_f64().is_some(), "total_ms in {v}");
}

/// `method` is one of island/direct/absolute, and `island` is an address exactly for "island".
#[track_caller]
pub fn check_method(p: &Value) {
    let method = p["method"]
        .as_str()
        .unwrap_or_else(|| panic!("method in {p}"));
    match method {
        "island" => {
            hex(&p["island"]);
        }
        "direct" | "absolute" => assert!(p["island"].is_null(), "island in {p}"),
        other => panic!("unknown method {other:?} in {p}"),
    }
}

/// `rpatch rollback PID EXTRA... --json`, asserted successful; returns the ids rolled back.
#[track_caller]
pub fn rollback_ok(state: &Path, pid: u32, extra: &[&str]) -> Vec<u64> {
    let mut args = vec!["rollback".to_string(), pid.to_string()];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args.push("--json".into());
    let run = rpatch(state, &args);
    run.expect_ok();
    let v = run.json();
    assert_eq!(v["pid"].as_u64(), Some(u64::from(pid)), "pid in {v}");
    assert!(v["frozen_us"].as_u64().is_some(), "frozen_us in {v}");
    v["rolled_back"]
        .as_array()
        .unwrap_or_else(|| panic!("no rolled_back array in {v}"))
        .iter()
        .map(|i| i.as_u64().unwrap_or_else(|| panic!("id {i} in {v}")))
        .collect()
}

/// `rpatch rollback PID EXTRA...` (not asserted).
pub fn rollback(state: &Path, pid: u32, extra: &[&str]) -> Run {
    let mut args = vec!["rollback".to_string(), pid.to_string()];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    rpatch(state, &args)
}

/// `rpatch status PID --json`, asserted successful; returns the patches array.
#[track_caller]
pub fn status(state: &Path, pid: u32) -> Vec<Value> {
    let run = rpatch(state, &["status", &pid.to_string(), "--json"]);
    run.expect_ok();
    let v = run.json();
    assert_eq!(v["pid"].as_u64(), Some(u64::from(pid)), "pid in {v}");
    let patches = v["patches"]
        .as_array()
        .unwrap_or_else(|| panic!("no patches array in {v}"))
        .clone();
    for p in &patches {
        assert!(p["id"].as_u64().is_some(), "id in {p}");
        assert!(p["function"].as_str().is_some(), "function in {p}");
        hex(&p["address"]);
        assert!(p["library"].as_str().is_some(), "library in {p}");
        check_method(p);
        let st = p["state"]
            .as_str()
            .unwrap_or_else(|| panic!("state in {p}"));
        // "abandoned": an attach that failed after recording its intent (never in memory).
        assert!(
            ["applied", "missing", "tampered", "rolled_back", "abandoned"].contains(&st),
            "unknown state {st:?} in {p}"
        );
    }
    patches
}

/// `(id, state)` of every patch `status --json` reports, oldest first.
#[track_caller]
pub fn states(state: &Path, pid: u32) -> Vec<(u64, String)> {
    status(state, pid)
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Asserts that status reports no patch as applied (after a failed or dry-run attach the journal
/// must hold nothing that is not in memory).
#[track_caller]
pub fn assert_nothing_applied(state: &Path, pid: u32) {
    let patches = status(state, pid);
    assert!(
        patches.iter().all(|p| p["state"] != "applied"),
        "status reports an applied patch: {patches:?}"
    );
}

/// Parses a `"0x..."` address.
#[track_caller]
pub fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a hex address string, got {v}"));
    let digits = s
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("address {s:?} does not start with 0x"));
    u64::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("address {s:?}: {e}"))
}

/// One thread of a process as /proc shows it.
#[derive(Debug, Clone)]
pub struct TaskState {
    /// Thread id.
    pub tid: u32,
    /// Thread name (`comm`).
    pub name: String,
    /// The one-letter state (`R`, `S`, `t`, ...).
    pub state: char,
    /// `TracerPid`.
    pub tracer: u32,
}

/// The state letter of `/proc/PID/stat` (`T`: stopped), `None` once the process is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The threads of `pid` (threads that vanish while being read are skipped).
pub fn tasks(pid: u32) -> Vec<TaskState> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let fields: HashMap<&str, &str> = status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k, v.trim()))
            .collect();
        out.push(TaskState {
            tid,
            name: fields.get("Name").unwrap_or(&"?").to_string(),
            state: fields
                .get("State")
                .and_then(|s| s.chars().next())
                .unwrap_or('?'),
            tracer: fields
                .get("TracerPid")
                .and_then(|s| s.parse().ok())
                .unwrap_or(u32::MAX),
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

fn describe_tasks(pid: u32) -> String {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return "process gone".into();
    }
    tasks(pid)
        .iter()
        .map(|t| format!("{}({}) {} tracer={}", t.tid, t.name, t.state, t.tracer))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Asserts that no thread of `pid` is traced (`TracerPid` 0) or stopped (`t`/`T`), and that the
/// process is alive.
///
/// A thread that has just been detached may need a moment to be scheduled out of its stop, so a
/// stopped state is re-checked (yielding) for up to ten seconds before failing; a tracer is not.
#[track_caller]
pub fn assert_untraced(pid: u32) {
    // Generous: on a loaded machine a detached thread may wait long for a CPU.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ts = tasks(pid);
        assert!(!ts.is_empty(), "process {pid} has no threads (gone?)");
        let traced: Vec<_> = ts.iter().filter(|t| t.tracer != 0).collect();
        assert!(
            traced.is_empty(),
            "pid {pid}: threads still traced: {traced:?}"
        );
        let bad: Vec<_> = ts
            .iter()
            .filter(|t| matches!(t.state, 't' | 'T' | 'Z' | 'X'))
            .collect();
        if bad.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid}: threads stopped or dead: {bad:?}"
        );
        thread::yield_now();
    }
}

/// Polls `probe` (a command whose reply is compared) until the reply is `want`, at most
/// `timeout`; returns the last reply on success and fails the test otherwise.
#[track_caller]
pub fn poll_reply(target: &mut Target, probe: &str, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let got = target.cmd(probe);
        if got == want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "`{probe}` still answers {got:?} after {timeout:?}, expected {want:?}"
        );
        thread::yield_now();
    }
}

/// Is the test running as root (required to run something as another user)?
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The pid of a process that has exited and been reaped (so almost surely no process has it).
pub fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("run true");
    let pid = child.id();
    child.wait().expect("wait true");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} was reused at once"
    );
    pid
}

/// A busy loop per CPU (`sh -c 'while :; do :; done'`), as on a shared, loaded CI machine: the
/// tests that prove rpatch safe under load run beside them. Killed and reaped on drop.
pub struct CpuHogs(Vec<Child>);

impl CpuHogs {
    /// One hog per available CPU.
    pub fn start() -> CpuHogs {
        let n = thread::available_parallelism().map_or(2, |n| n.get());
        CpuHogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// A signal-sending helper from test-targets (`sigsend PID HZ`, `sigontrace PID`): started and
/// waited for until it announces itself; [`SignalSender::finish`] stops it and returns how many
/// signals it queued. Killed and reaped on drop.
pub struct SignalSender {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl SignalSender {
    /// Starts `tool` with `args` and waits for its first line, `announce`.
    pub fn start(tool: &Path, args: &[&str], announce: &str) -> SignalSender {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", tool.display()));
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        out.read_line(&mut line)
            .expect("read the sender's first line");
        assert_eq!(line.trim(), announce, "{}", tool.display());
        SignalSender { child, out }
    }

    /// Stops sending (closes its stdin) and returns the number of signals queued; fails the
    /// test when a queue was ever full (a signal not sent cannot be counted).
    pub fn finish(mut self) -> u64 {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read `sent N`");
        let sent = line
            .trim()
            .strip_prefix("sent ")
            .unwrap_or_else(|| panic!("expected `sent N`, got {line:?}"))
            .parse()
            .expect("a number");
        let status = self.child.wait().expect("wait for the sender");
        assert!(status.success(), "the sender hit a full signal queue");
        sent
    }
}

impl Drop for SignalSender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `key=value` field of a `sigstorm` stats line.
pub fn stat(stats: &str, key: &str) -> u64 {
    let field = stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {stats:?}"));
    field.parse().unwrap()
}

/// Waits (bounded) until a `sigstorm` target has handled `sent` signals (the last ones may still
/// be queued or inside a slow handler) and returns its stats line, asserting none was lost or
/// handled twice and no call saw an EINTR it did not cause.
#[track_caller]
pub fn assert_signals_accounted(target: &mut Target, sent: u64) -> String {
    let stats = signals_handled(target, sent);
    assert_eq!(stat(&stats, "spurious"), 0, "{stats}");
    stats
}

/// [`assert_signals_accounted`] for a run in which rpatch was SIGKILLed `kills` times. A kill in
/// the microseconds between interrupting a thread blocked in `epoll_wait` (which fails with plain
/// EINTR, never restarted) and rewinding its registers leaves that one call returning EINTR, as
/// SIGSTOP/SIGCONT would: no tracer can repair a thread once it is dead. So at most one spurious
/// `epoll_wait` per kill is allowed; restartable calls (read, nanosleep) must see none.
#[track_caller]
pub fn assert_signals_accounted_after_kills(target: &mut Target, sent: u64, kills: u64) -> String {
    let stats = signals_handled(target, sent);
    assert_eq!(stat(&stats, "spurious_read"), 0, "{stats}");
    assert_eq!(stat(&stats, "spurious_nanosleep"), 0, "{stats}");
    assert!(
        stat(&stats, "spurious_epoll") <= kills,
        "{kills} kills: {stats}"
    );
    stats
}

/// Waits (bounded) until `target` has handled `sent` signals and asserts none was lost or
/// handled twice; returns the stats line.
#[track_caller]
fn signals_handled(target: &mut Target, sent: u64) -> String {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let stats = loop {
        let stats = target.cmd("stats");
        if stat(&stats, "handled") >= sent || Instant::now() > deadline {
            break stats;
        }
        thread::yield_now();
    };
    assert_eq!(stat(&stats, "handled"), sent, "{stats}");
    stats
}

/// Asserts that the slack bytes rpatch bootstrapped from (named in its `-v` output: "bootstrapped
/// from N bytes of slack at ADDR in PATH") hold the module file's bytes again in `pid`'s memory.
/// Returns whether a bootstrap was reported at all (a reused stub region needs none).
#[track_caller]
pub fn assert_slack_restored(pid: u32, verbose: &str) -> bool {
    let Some(line) = verbose.lines().find(|l| l.contains("bytes of slack at ")) else {
        return false;
    };
    let rest = &line[line.find("bootstrapped from ").expect("bootstrap line") + 18..];
    let len: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
    let after = &rest[rest.find("slack at ").unwrap() + 9..];
    let (addr, rest) = after.split_once(" in ").expect("ADDR in PATH");
    let path = rest.split([';', ' ']).next().expect("PATH");
    let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).expect("hex address");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let (start, offset) = maps
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let (lo, hi) = (
                u64::from_str_radix(lo, 16).ok()?,
                u64::from_str_radix(hi, 16).ok()?,
            );
            let offset = u64::from_str_radix(f.nth(1)?, 16).ok()?;
            (lo <= addr && addr + len as u64 <= hi && l.ends_with(path.trim()))
                .then_some((lo, offset))
        })
        .unwrap_or_else(|| panic!("no mapping of {path} holds {addr:#x}"));
    let mut in_memory = vec![0u8; len];
    let mem = File::open(format!("/proc/{pid}/mem")).expect("open mem");
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut in_memory, addr).expect("read slack");
    let file = File::open(path.trim()).expect("open module");
    let mut on_disk = vec![0u8; len];
    let at = addr - start + offset;
    let got = std::os::unix::fs::FileExt::read_at(&file, &mut on_disk, at).unwrap_or(0);
    on_disk[got..].fill(0); // past the file's end the kernel maps zeros
    assert_eq!(
        in_memory, on_disk,
        "the slack at {addr:#x} in {path} does not hold the file's bytes"
    );
    true
}

/// Copies of a test target that differ only in their GNU build-id, in a directory every user
/// can read (`test-targets/target/builds-*`, not under /tmp: containers mount their own), removed
/// on drop. Build-ids are what manifests match processes by, so each test gets builds no other
/// test's processes run, and "another build of the same module" is a copy under the same file
/// name with another build-id.
pub struct Builds {
    dir: PathBuf,
    made: u32,
    /// Appended to every file name: another test's copies never share one with these.
    suffix: String,
}

impl Builds {
    /// A fresh, empty directory of builds.
    pub fn new() -> Builds {
        use std::os::unix::fs::PermissionsExt;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let suffix = format!("-{}-{n}", std::process::id());
        let dir = repo_root().join(format!("test-targets/target/builds{suffix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Builds {
            dir,
            made: 0,
            suffix,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// As [`Builds::copy`], under exactly `name` (a shared library its users find by name).
    pub fn copy_named(&mut self, src: &Path, build: &str, name: &str) -> (PathBuf, String) {
        let (path, id) = self.copy(src, build, name);
        let named = path.with_file_name(name);
        std::fs::rename(&path, &named).unwrap();
        (named, id)
    }

    /// Copies `src` to `<dir>/<build>/<name>-<unique suffix>` with a build-id no other file has;
    /// returns the copy and its build-id (hex). Copies made with one `name` by one `Builds`
    /// share their file name (another build of the same module).
    pub fn copy(&mut self, src: &Path, build: &str, name: &str) -> (PathBuf, String) {
        use sha2::Digest;
        use std::os::unix::fs::PermissionsExt;
        self.made += 1;
        let mut bytes = std::fs::read(src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        // The note: namesz 4, descsz N, type 3 (NT_GNU_BUILD_ID), "GNU\0", then N bytes.
        let at = bytes
            .windows(8)
            .position(|w| w == b"\x03\x00\x00\x00GNU\x00")
            .unwrap_or_else(|| panic!("{} has no build-id note", src.display()));
        let len = u32::from_le_bytes(bytes[at - 4..at].try_into().unwrap()) as usize;
        let seed = format!(
            "{}-{}-{build}-{:?}",
            self.dir.display(),
            self.made,
            Instant::now()
        );
        let id: Vec<u8> = sha2::Sha256::digest(seed.as_bytes())[..len].to_vec();
        bytes[at + 8..at + 8 + len].copy_from_slice(&id);
        let dir = self.dir.join(build);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join(format!("{name}{}", self.suffix));
        std::fs::write(&path, &bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (path, id.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl Drop for Builds {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rpatch manifest new --lib LIB --module MODULE --func F... -o OUT`, asserted successful.
#[track_caller]
pub fn manifest_new(state: &Path, lib: &Path, module: &Path, funcs: &[&str], out: &Path) {
    let mut args: Vec<String> = vec![
        "manifest".into(),
        "new".into(),
        "--lib".into(),
        lib.to_str().unwrap().into(),
        "--module".into(),
        module.to_str().unwrap().into(),
        "-o".into(),
        out.to_str().unwrap().into(),
    ];
    for f in funcs {
        args.push("--func".into());
        args.push((*f).into());
    }
    rpatch(state, &args).expect_ok();
}

/// The `result` of each process of a fleet report, by PID.
#[track_caller]
pub fn fleet_results(report: &Value) -> std::collections::BTreeMap<u32, String> {
    report["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes in {report}"))
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap() as u32,
                p["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
