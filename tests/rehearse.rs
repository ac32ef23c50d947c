//! `rpatch rehearse`: the demo patch rehearsed end to end, each kind of failure (expectation,
//! target death, readiness) exiting 24 with the JUnit report saying which step failed, a real
//! HTTP server rehearsed under load, and no process left behind, also when rehearse itself is
//! killed mid-run.

mod common;

use common::{Value, build_targets, rpatch, state_dir};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Exit code of a rehearsal whose check failed.
const REHEARSAL_FAILED: i32 = 24;

/// A TCP port on loopback that nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// The JUnit report as the tests see it.
#[derive(Debug)]
struct Junit {
    /// (tests, failures, errors, skipped) as the `<testsuite>` attributes say.
    declared: (usize, usize, usize, usize),
    /// Each `<testcase>`: name and outcome (`passed`, `failure`, `error`, `skipped`) with the
    /// failure's message.
    cases: Vec<(String, String, String)>,
    /// The suite's `<system-out>` (the target's output).
    system_out: String,
}

impl Junit {
    /// Parses `path` and checks the counts on `<testsuites>` and `<testsuite>` match the test
    /// cases.
    #[track_caller]
    fn read(path: &Path) -> Junit {
        let xml = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("JUnit report {}: {e}", path.display()));
        let doc = roxmltree::Document::parse(&xml)
            .unwrap_or_else(|e| panic!("JUnit report is not XML ({e}):\n{xml}"));
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites", "root of {xml}");
        let suites: Vec<_> = root
            .children()
            .filter(|n| n.has_tag_name("testsuite"))
            .collect();
        assert_eq!(suites.len(), 1, "one testsuite in {xml}");
        let suite = suites[0];
        let num = |n: roxmltree::Node<'_, '_>, a: &str| -> usize {
            n.attribute(a)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("attribute {a} of {}", n.tag_name().name()))
        };
        let declared = (
            num(suite, "tests"),
            num(suite, "failures"),
            num(suite, "errors"),
            num(suite, "skipped"),
        );
        for a in ["tests", "failures", "errors", "skipped"] {
            assert_eq!(
                num(root, a),
                num(suite, a),
                "{a} on testsuites and testsuite"
            );
        }
        assert!(
            suite
                .attribute("time")
                .and_then(|t| t.parse::<f64>().ok())
                .is_some()
        );
        assert!(suite.attribute("name").is_some_and(|n| !n.is_empty()));
        let mut cases = Vec::new();
        for case in suite.children().filter(|n| n.has_tag_name("testcase")) {
            let name = case.attribute("name").expect("testcase name").to_string();
            assert!(case.attribute("classname").is_some_and(|c| !c.is_empty()));
            assert!(
                case.attribute("time")
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some()
            );
            let outcome = case
                .children()
                .find(|n| ["failure", "error", "skipped"].contains(&n.tag_name().name()));
            let (kind, message) = match outcome {
                Some(n) => (
                    n.tag_name().name().to_string(),
                    n.attribute("message").unwrap_or("").to_string(),
                ),
                None => ("passed".to_string(), String::new()),
            };
            cases.push((name, kind, message));
        }
        let count = |k: &str| cases.iter().filter(|c| c.1 == k).count();
        assert_eq!(
            declared,
            (
                cases.len(),
                count("failure"),
                count("error"),
                count("skipped")
            ),
            "declared counts vs test cases in {xml}"
        );
        let system_out = suite
            .children()
            .find(|n| n.has_tag_name("system-out"))
            .and_then(|n| n.text())
            .unwrap_or("")
            .to_string();
        Junit {
            declared,
            cases,
            system_out,
        }
    }

    /// The outcome of the case named `name`.
    #[track_caller]
    fn outcome(&self, name: &str) -> &str {
        &self
            .cases
            .iter()
            .find(|c| c.0 == name)
            .unwrap_or_else(|| panic!("no test case {name:?} in {:?}", self.cases))
            .1
    }

    /// The one failed (or errored) case: name and message.
    #[track_caller]
    fn only_failure(&self) -> (&str, &str) {
        let failed: Vec<_> = self
            .cases
            .iter()
            .filter(|c| c.1 == "failure" || c.1 == "error")
            .collect();
        assert_eq!(failed.len(), 1, "one failed case in {:?}", self.cases);
        (&failed[0].0, &failed[0].2)
    }
}

/// `rpatch rehearse ARGS -- TARGET...` with `--json` and `--junit` in a temporary directory.
struct Rehearsal {
    state: tempfile::TempDir,
    junit: PathBuf,
}

impl Rehearsal {
    fn new() -> Rehearsal {
        let state = state_dir();
        let junit = state.path().join("rehearsal.xml");
        Rehearsal { state, junit }
    }

    fn args(&self, args: &[&str], target: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = vec!["rehearse".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend([
            "--json".to_string(),
            "--junit".to_string(),
            self.junit.display().to_string(),
            "--".to_string(),
        ]);
        all.extend(target.iter().map(|s| s.to_string()));
        all
    }

    /// Runs it to the end; returns the exit code and the JSON report.
    fn run(&self, args: &[&str], target: &[&str]) -> (i32, Value, common::Run) {
        let run = rpatch(self.state.path(), &self.args(args, target));
        let report = run.json();
        (run.code, report, run)
    }
}

/// Checks the report's shape and that the target it started is gone with its whole group.
#[track_caller]
fn check_report(report: &Value, junit: &Junit) {
    assert_eq!(report["schema_version"], 1, "{report}");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), junit.cases.len(), "steps vs test cases");
    for (step, case) in steps.iter().zip(&junit.cases) {
        assert_eq!(step["name"].as_str(), Some(case.0.as_str()));
        let status = step["status"].as_str().unwrap();
        let expected = match case.1.as_str() {
            "failure" => "failed",
            "error" => "error",
            "skipped" => "skipped",
            _ => "passed",
        };
        assert_eq!(status, expected, "{step}");
        if ["attach", "rollback"].contains(&step["kind"].as_str().unwrap()) && status == "passed" {
            assert!(
                step["frozen_us"].as_u64().is_some(),
                "frozen time in {step}"
            );
        }
    }
    let counts = &report["counts"];
    assert_eq!(
        (
            counts["tests"].as_u64().unwrap() as usize,
            counts["failures"].as_u64().unwrap() as usize,
            counts["errors"].as_u64().unwrap() as usize,
            counts["skipped"].as_u64().unwrap() as usize,
        ),
        junit.declared
    );
    if let Some(pid) = report["target"]["pid"].as_i64() {
        assert_no_group_left(&[pid as i32]);
    }
}

/// Runs `scripts/check-schemas.sh ARGS` (check-jsonschema, offline); returns whether it passed
/// and what it printed.
fn check_schemas(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::repo_root().join("scripts/check-schemas.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/check-schemas.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "check-schemas.sh could not run (scripts/install-deps.sh installs check-jsonschema): {text}"
    );
    (out.status.success(), text)
}

/// Asserts that a `--json` report validates against docs/schemas/rehearse.schema.json.
#[track_caller]
fn assert_report_matches_schema(stdout: &str) {
    let dir = state_dir();
    let path = dir.path().join("report.json");
    std::fs::write(&path, stdout).expect("write report");
    let (ok, text) = check_schemas(&["--report", path.to_str().unwrap()]);
    assert!(ok, "report does not match its schema: {text}\n{stdout}");
}

/// The example pipelines in docs/ci/ are valid GitHub Actions and GitLab CI files (the
/// validators' vendored schemas, offline), and the same validation rejects a broken workflow
/// and a report missing its schema version.
#[test]
fn example_pipelines_match_their_schemas() {
    let (ok, text) = check_schemas(&[]);
    assert!(ok, "{text}");
    let dir = state_dir();
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, "on: push\njobs:\n  rehearse:\n    steps: run\n").unwrap();
    let (ok, text) = check_schemas(&["--github", broken.to_str().unwrap()]);
    assert!(!ok, "a broken workflow passed: {text}");
    let (ok, text) = check_schemas(&["--gitlab", broken.to_str().unwrap()]);
    assert!(!ok, "a broken GitLab file passed: {text}");
    let report = dir.path().join("report.json");
    std::fs::write(&report, r#"{"passed": true, "steps": []}"#).unwrap();
    let (ok, text) = check_schemas(&["--report", report.to_str().unwrap()]);
    assert!(!ok, "an incomplete report passed: {text}");
}

/// Processes (not zombies) whose process group is one of `groups`.
fn live_in_groups(groups: &[i32]) -> Vec<(i32, i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (state, pgrp) = (fields[0], fields[2].parse::<i32>().unwrap_or(0));
        if groups.contains(&pgrp) && state != "Z" && state != "X" {
            found.push((pid, pgrp, stat[..close + 1].to_string()));
        }
    }
    found
}

/// Asserts that no live process is left in `groups` (waiting, yielding, at most 10 s for the
/// kernel to finish killing them: SIGKILL is asynchronous).
#[track_caller]
fn assert_no_group_left(groups: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = live_in_groups(groups);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left in groups {groups:?}: {left:?}"
        );
        std::thread::yield_now();
    }
}

/// The calcapp demo rehearsal's arguments for `port` (curl probes the HTTP mode).
fn demo_args(port: u16, expect_after: &str) -> Vec<String> {
    let t = build_targets();
    vec![
        "--lib".into(),
        t.calcapp_fix().display().to_string(),
        "--func".into(),
        "crate::pricing::calc".into(),
        "--ready-port".into(),
        port.to_string(),
        "--probe".into(),
        format!("curl -sSf http://127.0.0.1:{port}/calc/7"),
        "--expect-before".into(),
        "^calc 7 17$".into(),
        "--expect-after".into(),
        expect_after.into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The demo patch (calcapp + libcalcapp.so) rehearses cleanly over 3 cycles: exit 0, every step
/// passed in the JSON and JUnit reports (counts agree), frozen times reported, target stopped.
#[test]
fn demo_patch_rehearses_cleanly() {
    let t = build_targets();
    let port = free_port();
    let r = Rehearsal::new();
    let mut args = demo_args(port, "^calc 7 7000$");
    args.extend(["--cycles".into(), "3".into()]);
    let app = t.calcapp().display().to_string();
    let (code, report, run) = r.run(&strs(&args), &[&app, "--http", &port.to_string()]);
    run.expect_ok();
    assert_eq!(code, 0);
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    assert_eq!(report["passed"], true);
    assert!(report["error"].is_null(), "{report}");
    assert_report_matches_schema(&run.stdout);
    // start, ready, probe, 3 x (attach, probe, rollback, probe), alive, stop.
    assert_eq!(junit.declared, (17, 0, 0, 0), "{:?}", junit.cases);
    assert_eq!(junit.outcome("cycle 3: probe patched"), "passed");
    assert!(
        junit.system_out.contains("ready "),
        "target log: {}",
        junit.system_out
    );
    // The text on stderr says each step as it ended.
    assert!(
        run.stderr.contains("[pass] cycle 2: rollback"),
        "{}",
        run.stderr
    );
}

/// A probe whose output does not match --expect-after once patched fails the rehearsal: exit 24
/// (kind rehearsal_failed), the JUnit `<failure>` on that step, later steps skipped except the
/// target's stop, and the target gone.
#[test]
fn expectation_mismatch_exits_24_with_a_junit_failure() {
    let t = build_targets();
    let port = free_port();
    let r = Rehearsal::new();
    let args = demo_args(port, "^calc 7 70$");
    let app = t.calcapp().display().to_string();
    let (code, report, run) = r.run(&strs(&args), &[&app, "--http", &port.to_string()]);
    run.expect_error(REHEARSAL_FAILED);
    assert_eq!(code, REHEARSAL_FAILED);
    assert_eq!(report["error"]["kind"], "rehearsal_failed", "{report}");
    assert_report_matches_schema(&run.stdout);
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    let (name, message) = junit.only_failure();
    assert_eq!(name, "cycle 1: probe patched");
    assert!(
        message.contains("calc 7 7000") && message.contains("does not match"),
        "{message}"
    );
    // start, ready, probe, attach passed; rollback, probe, alive skipped; stop passed.
    assert_eq!(junit.declared, (9, 1, 0, 3), "{:?}", junit.cases);
    assert_eq!(junit.outcome("cycle 1: rollback"), "skipped");
    assert_eq!(junit.outcome("stop target"), "passed");
}

/// A target that dies during the rehearsal (killed here by the probe) fails it with exit 24 and
/// a JUnit failure saying it exited, on a later step.
#[test]
fn target_death_exits_24() {
    let t = build_targets();
    let port = free_port();
    let r = Rehearsal::new();
    let mut args = demo_args(port, "^calc 7 7000$");
    // The probe answers as expected, then kills the target behind rehearse's back.
    args[7] =
        format!("curl -sSf http://127.0.0.1:{port}/calc/7 && kill -KILL \"$RPATCH_TARGET_PID\"");
    let app = t.calcapp().display().to_string();
    let (code, report, run) = r.run(&strs(&args), &[&app, "--http", &port.to_string()]);
    run.expect_error(REHEARSAL_FAILED);
    assert_eq!(code, REHEARSAL_FAILED);
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    let (name, message) = junit.only_failure();
    assert_ne!(name, "probe before patch");
    assert!(
        message.contains("exited (killed by SIGKILL)"),
        "{name}: {message}"
    );
    assert_eq!(report["target"]["ended"], "killed by SIGKILL", "{report}");
}

/// A target that never prints the ready line fails at `ready` after --ready-timeout: exit 24,
/// every later step but the stop skipped, the target's output in `<system-out>`.
#[test]
fn readiness_timeout_exits_24() {
    let t = build_targets();
    let port = free_port();
    let r = Rehearsal::new();
    let lib = t.calcapp_fix().display().to_string();
    let args = [
        "--lib",
        &lib,
        "--func",
        "crate::pricing::calc",
        "--ready-line",
        "^listening on",
        "--ready-timeout",
        "1",
        "--probe",
        "true",
    ];
    let app = t.calcapp().display().to_string();
    let began = Instant::now();
    let (code, report, run) = r.run(&args, &[&app, "--http", &port.to_string()]);
    run.expect_error(REHEARSAL_FAILED);
    assert_eq!(code, REHEARSAL_FAILED);
    assert!(began.elapsed() >= Duration::from_secs(1));
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    let (name, message) = junit.only_failure();
    assert_eq!(name, "ready");
    assert!(message.contains("within 1 s"), "{message}");
    assert_eq!(junit.declared, (9, 1, 0, 6), "{:?}", junit.cases);
    assert!(junit.system_out.contains("ready "), "{}", junit.system_out);
}

/// A target that exits before it is ready fails `ready` at once (not after the timeout).
#[test]
fn target_exiting_before_ready_exits_24() {
    let t = build_targets();
    let r = Rehearsal::new();
    let lib = t.calcapp_fix().display().to_string();
    let args = [
        "--lib",
        &lib,
        "--func",
        "crate::pricing::calc",
        "--ready-line",
        "^never printed",
    ];
    let began = Instant::now();
    // calcapp without arguments exits 0 at EOF of stdin, which rehearse gives as /dev/null.
    let app = t.calcapp().display().to_string();
    let (code, report, run) = r.run(&args, &[&app]);
    run.expect_error(REHEARSAL_FAILED);
    assert_eq!(code, REHEARSAL_FAILED);
    assert!(
        began.elapsed() < Duration::from_secs(25),
        "waited for the timeout"
    );
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    let (name, message) = junit.only_failure();
    assert_eq!(name, "ready");
    assert!(
        message.contains("exited (exit 0) before it was ready"),
        "{message}"
    );
}

/// An attach error inside a rehearsal keeps its own exit code and kind (here: function not
/// found, 9), and the JUnit failure carries them.
#[test]
fn attach_errors_keep_their_exit_code() {
    let t = build_targets();
    let port = free_port();
    let r = Rehearsal::new();
    let mut args = demo_args(port, "^calc 7 7000$");
    args[3] = "crate::pricing::no_such_function".into();
    let app = t.calcapp().display().to_string();
    let (code, report, run) = r.run(&strs(&args), &[&app, "--http", &port.to_string()]);
    run.expect_error(common::exit::NOT_FOUND);
    assert_eq!(code, common::exit::NOT_FOUND);
    assert_eq!(report["error"]["kind"], "function_not_found", "{report}");
    assert_report_matches_schema(&run.stdout);
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    assert_eq!(junit.only_failure().0, "cycle 1: attach");
    let attach = &report["steps"][3];
    assert_eq!(attach["error"]["code"], 9, "{attach}");
}

/// The tokio + hyper server rehearsed beside a load that checks every response body: 3 cycles,
/// the load sees only the old and the new body and no error, and exits 0.
#[test]
fn http_server_rehearses_under_load() {
    let t = build_targets();
    let r = Rehearsal::new();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/quote/7");
    let load = format!(
        "{} {url} --seconds 120 --until \"$RPATCH_CYCLES_DONE\" --expect 'quote 7 17' --expect 'quote 7 7000'",
        t.rust.join("webcheck").display()
    );
    let lib = t.rust.join("libwebapp.so").display().to_string();
    let args = [
        "--lib",
        &lib,
        "--func",
        "webapp::pricing::quote",
        "--ready-line",
        "^ready ",
        "--probe",
        &format!("curl -sSf {url}"),
        "--expect-before",
        "^quote 7 17$",
        "--expect-after",
        "^quote 7 7000$",
        "--cycles",
        "3",
        "--load",
        &load,
    ];
    let app = t.rust.join("webapp").display().to_string();
    let (code, report, run) = r.run(&args, &[&app, "--port", &port.to_string()]);
    run.expect_ok();
    assert_eq!(code, 0);
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    assert_eq!(junit.declared.1 + junit.declared.2 + junit.declared.3, 0);
    let load = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "load")
        .expect("load step");
    let output = load["output"].as_str().unwrap_or("");
    assert!(output.contains(" 0 unexpected, 0 errors"), "{output}");
}

/// `rpatch rehearse` running in the background, its stderr lines readable as they come.
struct Background {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    _state: tempfile::TempDir,
    junit: PathBuf,
}

impl Background {
    /// Starts a demo rehearsal that runs for minutes (500 cycles) beside a load
    /// that sleeps.
    fn start(load: &str) -> Background {
        let t = build_targets();
        let state = state_dir();
        let junit = state.path().join("rehearsal.xml");
        let port = free_port();
        let mut args = demo_args(port, "^calc 7 7000$");
        args.extend(
            [
                "--cycles",
                "500",
                "--load",
                load,
                "--load-timeout",
                "1",
                "--junit",
                junit.to_str().unwrap(),
                "--",
                t.calcapp().to_str().unwrap(),
                "--http",
                &port.to_string(),
            ]
            .map(String::from),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpatch"))
            .arg("rehearse")
            .args(&args)
            .env("RPATCH_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rpatch rehearse");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            _state: state,
            junit,
        }
    }

    /// Waits for a stderr line containing `text`.
    #[track_caller]
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + common::RPATCH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no line with {text:?} from rpatch rehearse: {e}"),
            }
        }
    }

    /// The process groups of rehearse's children (target, load, probe) right now: each child
    /// leads its own group (a child caught between fork and its setpgid, still in the test's
    /// group, is not one of them yet).
    fn child_groups(&self) -> Vec<i32> {
        let me = self.child.id() as i32;
        let mut groups = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let (ppid, pgrp) = (
                fields[1].parse::<i32>().unwrap_or(0),
                fields[2].parse::<i32>().unwrap_or(0),
            );
            if ppid == me && pgrp == pid && !groups.contains(&pgrp) {
                groups.push(pgrp);
            }
        }
        groups
    }

    /// Waits for rehearse to end (at most [`common::RPATCH_TIMEOUT`]).
    #[track_caller]
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + common::RPATCH_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "rpatch rehearse did not end");
            // Drain what it prints meanwhile (it may block on a full pipe otherwise).
            let _ = self.lines.recv_timeout(Duration::from_millis(10));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM to rehearse mid-run (between cycles, target and load running) kills and reaps the
/// target, the load and any probe: nothing is left in their process groups. Rehearse writes the
/// JUnit report (the interrupted step an `<error>`) and then ends by SIGTERM itself.
#[test]
fn sigterm_mid_run_leaves_no_process() {
    use std::os::unix::process::ExitStatusExt;
    let mut r = Background::start("sleep 600");
    r.wait_for("[pass] cycle 1: attach");
    let groups = r.child_groups();
    assert!(groups.len() >= 2, "target and load groups: {groups:?}");
    assert!(!live_in_groups(&groups).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(r.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM to rehearse");
    let status = r.wait_exit();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert_no_group_left(&groups);
    let junit = Junit::read(&r.junit);
    let (name, message) = junit.only_failure();
    assert!(
        message.contains("interrupted by SIGTERM"),
        "{name}: {message}"
    );
    assert_eq!(junit.outcome(name), "error");
    assert_eq!(junit.outcome("stop target"), "passed");
}

/// Rehearse killed with SIGKILL cannot clean up: the target and the load die with it anyway
/// (PR_SET_PDEATHSIG), so nothing is left in their process groups.
#[test]
fn sigkill_of_rehearse_takes_target_and_load_along() {
    let mut r = Background::start("exec sleep 600");
    r.wait_for("[pass] cycle 1: probe patched");
    let groups = r.child_groups();
    assert!(groups.len() >= 2, "target and load groups: {groups:?}");
    r.child.kill().expect("SIGKILL to rehearse");
    r.child.wait().expect("reap rehearse");
    assert_no_group_left(&groups);
}

/// `--pid-file`: TARGET is a shell that starts the service in the background, writes its pid
/// and exits at once (as a daemon's launcher does); rehearse patches the process the file
/// names, finds the launcher's exit no failure, and stops the service at the end.
#[test]
fn pid_file_names_the_process_to_patch() {
    let t = build_targets();
    let port = free_port();
    let r = Rehearsal::new();
    let pid_file = r.state.path().join("service.pid");
    let mut args = demo_args(port, "^calc 7 7000$");
    args.extend(["--pid-file".into(), pid_file.display().to_string()]);
    let launcher = format!(
        "'{}' --http {port} </dev/null >/dev/null 2>&1 & echo $! > '{}'",
        t.calcapp().display(),
        pid_file.display()
    );
    let (code, report, run) = r.run(&strs(&args), &["/bin/sh", "-c", &launcher]);
    run.expect_ok();
    assert_eq!(code, 0);
    let junit = Junit::read(&r.junit);
    check_report(&report, &junit);
    let started = report["target"]["pid"].as_i64().unwrap();
    let patched = report["target"]["patched_pid"].as_i64().unwrap();
    let written: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(patched, written);
    assert_ne!(patched, started, "{report}");
    assert_eq!(
        report["target"]["ended"], "exit 0",
        "the launcher exits by itself"
    );
    assert!(
        !Path::new(&format!("/proc/{patched}/exe")).exists(),
        "the patched service was not stopped"
    );
}
