//! `rpatch watch`: manifests kept applied to running processes, to each process started later
//! (a restart: a new PID), respecting a rollback made by hand, following a directory's changes,
//! refusing unsafe files, and stopping on SIGTERM with the patches left in place. Both event
//! sources: the proc connector and the /proc scan (`--poll`).
//!
//! Each test has its own builds (see `Builds`): no other test's process ever matches.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

/// A running `rpatch watch`, its log lines read as they come; killed and reaped on drop.
struct Watch {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    /// Starts `rpatch watch ARGS` and waits for its `watching ...` line.
    fn start(state: &Path, args: &[&str]) -> Watch {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rpatch"))
            .arg("watch")
            .args(args)
            .env("RPATCH_STATE_DIR", state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rpatch watch");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch {
            child,
            lines,
            seen: Vec::new(),
        };
        watch.expect(|l| l.starts_with("watching ") || l.contains(r#""event":"started""#));
        watch
    }

    /// Returns the first line so far matching `want`, else waits (at most [`REPLY_TIMEOUT`])
    /// for one: lines about several processes come in any order.
    #[track_caller]
    fn expect(&mut self, want: impl Fn(&str) -> bool) -> String {
        self.expect_after(0, want)
    }

    /// As [`Watch::expect`], among the lines from the `mark`th on (`seen.len()` at some point).
    #[track_caller]
    fn expect_after(&mut self, mark: usize, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen[mark..].iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line from watch; it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the line saying what happened to `pid` (`applied`, `rolled back by hand`...).
    #[track_caller]
    fn expect_pid(&mut self, pid: u32, what: &str) -> String {
        let head = format!("PID {pid} ");
        self.expect(|l| l.starts_with(&head) && l.contains(what))
    }

    /// Sends SIGTERM and waits for a clean exit (0) after its `stopped` line.
    fn terminate(self) {
        self.terminate_keeping_lines();
    }

    /// [`Watch::terminate`], returning every line watch printed.
    fn terminate_keeping_lines(mut self) -> Vec<String> {
        // SAFETY: kill(2) with a PID and a signal number has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.expect(|l| {
            l.starts_with("stopped by SIGTERM")
                || l.contains(r#""event":"stopped""#) && l.contains(r#""signal":"SIGTERM""#)
        });
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "watch exited with {status}");
                return std::mem::take(&mut self.seen);
            }
            assert!(
                Instant::now() < deadline,
                "watch did not exit after SIGTERM"
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of manifests, root-owned 0755 like /etc/rpatch/patches.d.
fn patches_dir(builds: &Builds) -> PathBuf {
    let dir = builds.dir().join("patches.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Writes into `dir` a manifest named `name` for `compute` (fix_basic.so: x*100) in `module`.
fn add_manifest(state: &Path, dir: &Path, module: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.toml"));
    let staged = dir.join(format!(".{name}.tmp"));
    manifest_new(
        state,
        &build_targets().bin("fix_basic.so"),
        module,
        &["compute"],
        &staged,
    );
    let text = std::fs::read_to_string(&staged)
        .unwrap()
        .replace("name = \"fix_basic\"", &format!("name = \"{name}\""));
    std::fs::remove_file(&staged).unwrap();
    std::fs::write(&out, text).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    out
}

/// A process started after watch is patched soon after it starts, and again when it is
/// restarted (new PID); a process already running when watch starts is patched too. Returns
/// the latencies watch reported (ms from each process's start to its patch).
fn new_processes_are_patched(poll: bool) -> Vec<u64> {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("basic_pie"), "a", "service");
    let dir = patches_dir(&builds);
    add_manifest(state.path(), &dir, &app, "calc-fix");
    let mut running = Target::spawn(&app, &[]);
    let mut args = vec![dir.to_str().unwrap()];
    if poll {
        args.push("--poll");
    }
    let mut watch = Watch::start(state.path(), &args);
    watch.expect_pid(running.pid(), "applied");
    assert_eq!(running.cmd("call 5"), "compute 5 500");

    let mut latencies = Vec::new();
    for _restart in 0..2 {
        let mut fresh = Target::spawn(&app, &[]);
        let line = watch.expect_pid(fresh.pid(), "applied");
        let ms: u64 = line
            .split(", ")
            .last()
            .and_then(|s| s.strip_suffix(" ms after the process started"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no latency in {line:?}"));
        latencies.push(ms);
        poll_reply(&mut fresh, "call 5", "compute 5 500", REPLY_TIMEOUT);
        assert_untraced(fresh.pid());
        drop(fresh);
    }
    eprintln!("watch (poll: {poll}) patched new processes {latencies:?} ms after they started");
    watch.terminate();
    latencies
}

/// With the proc connector (exec events).
#[test]
fn new_and_restarted_processes_are_patched_from_exec_events() {
    let latencies = new_processes_are_patched(false);
    // Generous for a loaded machine; the figures are printed (typically well under a second).
    assert!(latencies.iter().all(|&ms| ms < 10_000), "{latencies:?}");
}

/// With `--poll` (a /proc scan every 100 ms, where the proc connector gives nothing).
#[test]
fn new_and_restarted_processes_are_patched_when_polling() {
    let latencies = new_processes_are_patched(true);
    assert!(latencies.iter().all(|&ms| ms < 10_000), "{latencies:?}");
}

/// A patch rolled back by hand is not applied again, not even by a new watch; SIGTERM stops
/// watch with every other patch left applied; a manifest removed from the directory is rolled
/// back everywhere; one added is applied; an unsafe one (writable by others, or whose library
/// is) is refused.
#[test]
fn hand_rollbacks_stay_and_the_directory_is_followed() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("basic_pie"), "a", "service");
    let (other_app, _) = builds.copy(&t.bin("basic_pie"), "b", "other");
    let dir = patches_dir(&builds);
    let manifest = add_manifest(state.path(), &dir, &app, "calc-fix");
    let mut kept = Target::spawn(&app, &[]);
    let mut undone = Target::spawn(&app, &[]);
    let mut watch = Watch::start(state.path(), &[dir.to_str().unwrap()]);
    watch.expect_pid(kept.pid(), "applied");
    watch.expect_pid(undone.pid(), "applied");
    rpatch(state.path(), &["rollback", &undone.pid_arg()]).expect_ok();
    watch.terminate();
    assert_eq!(kept.cmd("call 5"), "compute 5 500", "SIGTERM keeps patches");

    let mut watch = Watch::start(state.path(), &[dir.to_str().unwrap()]);
    watch.expect_pid(undone.pid(), "rolled back by hand");
    watch.expect_pid(kept.pid(), "already applied");
    assert_eq!(undone.cmd("call 5"), "compute 5 6");

    // Added: applied to the processes of its build.
    let mut other = Target::spawn(&other_app, &[]);
    add_manifest(state.path(), &dir, &other_app, "other-fix");
    watch.expect(|l| l.starts_with("manifest other-fix loaded"));
    watch.expect_pid(other.pid(), "applied");
    assert_eq!(other.cmd("call 5"), "compute 5 500");

    // Removed: rolled back everywhere.
    std::fs::remove_file(&manifest).unwrap();
    watch.expect(|l| l.starts_with("manifest calc-fix") && l.contains("removed"));
    watch.expect_pid(kept.pid(), "rolled back (patch");
    assert_eq!(kept.cmd("call 5"), "compute 5 6");
    assert_eq!(other.cmd("call 5"), "compute 5 500");

    // Unsafe files are refused.
    let unsafe_manifest = add_manifest(state.path(), &dir, &app, "open-fix");
    std::fs::set_permissions(&unsafe_manifest, std::fs::Permissions::from_mode(0o666)).unwrap();
    let line = watch.expect(|l| l.contains("open-fix.toml refused"));
    assert!(line.contains("writable by group or others"), "{line}");
    std::fs::remove_file(&unsafe_manifest).unwrap();
    let lib = dir.join("open.so");
    std::fs::copy(t.bin("fix_basic.so"), &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o666)).unwrap();
    let with_open_lib = dir.join("open-lib.toml");
    manifest_new(state.path(), &lib, &app, &["compute"], &with_open_lib);
    std::fs::set_permissions(&with_open_lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    let line = watch.expect(|l| l.contains("open-lib.toml refused"));
    assert!(
        line.contains("open.so is writable by group or others"),
        "{line}"
    );
    assert_eq!(kept.cmd("call 5"), "compute 5 6");
    watch.terminate();
    assert_untraced(kept.pid());
    assert_untraced(other.pid());
}

/// With `--poll --json`, where no event tells of an `exec`: a process watch patched that then
/// executes a program again in the same PID (here its own: only the exec image changes) is
/// patched again within seconds, not at the next 30 s rescan; every line watch prints is one
/// JSON object following docs/schemas/watch.schema.json.
#[test]
fn an_exec_keeping_the_pid_is_patched_again_when_polling() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("prefork"), "a", "reexec");
    let dir = patches_dir(&builds);
    add_manifest(state.path(), &dir, &app, "calc-fix");
    let mut master = Target::spawn(&app, &[]);
    let pid = master.pid();
    let mut watch = Watch::start(state.path(), &[dir.to_str().unwrap(), "--poll", "--json"]);
    let applied = |l: &str| {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        v["event"] == "process" && v["pid"] == pid && v["result"] == "applied"
    };
    watch.expect(applied);
    assert_eq!(master.cmd("call 5"), "compute 5 500");

    let mark = watch.seen.len();
    let execed = Instant::now();
    assert_eq!(master.cmd("exec"), format!("ready {pid}"));
    let line = watch.expect_after(mark, applied);
    let took = execed.elapsed();
    poll_reply(&mut master, "call 5", "compute 5 500", REPLY_TIMEOUT);
    eprintln!("watch --poll patched the new image {took:?} after the exec: {line}");
    // The rescan would come about 30 s after watch started; generous for a loaded machine.
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    watch.terminate_keeping_lines().iter().for_each(|line| {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        schema_violations("watch", &v).unwrap_or_else(|e| panic!("{line}: {e}"));
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["manifest"], "calc-fix", "{v}");
    assert_eq!(
        v["patch_ids"],
        serde_json::json!([1]),
        "a new image starts a journal: {v}"
    );
    let after = v["after_start_ms"].as_u64().unwrap();
    assert!(
        after <= took.as_millis() as u64,
        "counted from the exec: {v}"
    );
    assert_untraced(pid);
}
