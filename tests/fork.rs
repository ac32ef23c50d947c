//! Forked children and exec images: a prefork server's workers inherit their master's patches,
//! and each is then patched, inspected and rolled back on its own; an `execve` (same PID, same
//! start time) starts an image with no records.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// The master of test-targets/c/prefork.c.
fn prefork() -> Target {
    Target::spawn(build_targets().bin("prefork"), &[])
}

/// The PIDs of a `forked P...` or `workers P...` reply.
fn pids(reply: &str, word: &str) -> Vec<u32> {
    let rest = reply
        .strip_prefix(word)
        .unwrap_or_else(|| panic!("expected `{word} P...`, got {reply:?}"));
    rest.split_whitespace()
        .map(|p| p.parse().unwrap_or_else(|_| panic!("{reply:?}")))
        .collect()
}

/// `rpatch status PID --json`, asserted successful.
#[track_caller]
fn status_json(state: &Path, pid: u32) -> Value {
    let run = rpatch(state, &["status", &pid.to_string(), "--json"]);
    run.expect_ok();
    run.json()
}

/// A patch made before an `execve` is never taken for the new image's: the same PID and start
/// time then show no records, rollback has nothing to undo, and a new attach starts at id 1.
/// The old image's journal is kept aside while a worker forked before the exec still runs that
/// image (the worker adopts its patch from it), and deleted by the first operation after the
/// worker is gone.
#[test]
fn exec_after_patch_leaves_the_new_image_without_records() {
    let t = build_targets();
    let state = state_dir();
    let mut master = prefork();
    let pid = master.pid();
    attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_eq!(master.cmd("call 5"), "compute 5 500");
    let worker = pids(&master.cmd("orphans 1"), "forked ")[0];
    let _reaper = Reaper(vec![worker]);

    assert_eq!(master.cmd("exec"), format!("ready {pid}"));
    assert_eq!(master.cmd("call 5"), "compute 5 6");
    let after = status_json(state.path(), pid);
    assert_eq!(after["patches"], Value::Array(vec![]), "{after}");
    rollback(state.path(), pid, &["--json"]).expect_error(exit::NOTHING_TO_ROLL_BACK);
    let retired = || -> Vec<String> {
        std::fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&format!("retired-{pid}-")))
            .collect()
    };
    assert_eq!(
        retired().len(),
        1,
        "kept while the worker runs the old image"
    );
    assert_eq!(
        inherited_states(state.path(), worker),
        vec![(1, "applied".into(), u64::from(pid))]
    );
    // SAFETY: kill(2) with a PID and a signal number has no memory effects.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    while std::fs::read_to_string(format!("/proc/{worker}/stat"))
        .is_ok_and(|s| s[s.rfind(')').unwrap() + 1..].split_whitespace().next() != Some("Z"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "worker {worker} lives on"
        );
        std::thread::yield_now();
    }
    status_json(state.path(), pid);
    assert_eq!(
        retired(),
        Vec::<String>::new(),
        "no live process runs the old image"
    );

    let again = attach_ok(state.path(), pid, &t.bin("fix_basic_b.so"), &["compute"]);
    assert_eq!(again["patches"][0]["id"], 1, "{again}");
    assert_eq!(master.cmd("call 5"), "compute 5 35");
    assert_untraced(pid);
}

/// The patches `status` reports for `pid`, as (id, state, inherited-from PID or 0).
#[track_caller]
fn inherited_states(state: &Path, pid: u32) -> Vec<(u64, String, u64)> {
    status(state, pid)
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["state"].as_str().unwrap().to_string(),
                p["inherited"]["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A patched master forks 3 workers: each runs the patch and `status` shows it as inherited from
/// the master (same id); rolling back one worker leaves the others and the master patched;
/// rolling back the master then leaves the workers' own state intact, and still undoable.
#[test]
fn workers_inherit_the_patch_and_are_rolled_back_independently() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    attach_ok(s, m, &t.bin("fix_basic.so"), &["compute"]);
    let workers = pids(&master.cmd("fork 3"), "forked ");
    assert_eq!(workers.len(), 3);
    for i in 0..3 {
        assert_eq!(master.cmd(&format!("w {i} call 5")), "compute 5 500");
    }
    for &w in &workers {
        assert_eq!(
            inherited_states(s, w),
            vec![(1, "applied".into(), u64::from(m))]
        );
        let origin = &status(s, w)[0]["inherited"];
        assert_eq!(origin["patch_id"], 1, "{origin}");
        let text = rpatch(s, &["status", &w.to_string()]);
        text.expect_ok();
        assert!(
            text.stdout
                .contains(&format!("inherited from PID {m} (patch 1)")),
            "{}",
            text.stdout
        );
    }

    assert_eq!(rollback_ok(s, workers[0], &[]), vec![1]);
    assert_untraced(workers[0]);
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 6");
    assert_eq!(master.cmd("w 1 call 5"), "compute 5 500");
    assert_eq!(master.cmd("w 2 call 5"), "compute 5 500");
    assert_eq!(master.cmd("call 5"), "compute 5 500");
    assert_eq!(
        inherited_states(s, workers[0]),
        vec![(1, "rolled_back".into(), u64::from(m))]
    );
    assert_eq!(states(s, m), vec![(1, "applied".into())]);

    assert_eq!(rollback_ok(s, m, &[]), vec![1]);
    assert_eq!(master.cmd("call 5"), "compute 5 6");
    assert_eq!(master.cmd("w 1 call 5"), "compute 5 500");
    assert_eq!(
        inherited_states(s, workers[1]),
        vec![(1, "applied".into(), u64::from(m))]
    );
    assert_eq!(
        inherited_states(s, workers[2]),
        vec![(1, "applied".into(), u64::from(m))]
    );
    assert_eq!(rollback_ok(s, workers[1], &[]), vec![1]);
    assert_eq!(master.cmd("w 1 call 5"), "compute 5 6");
    assert_eq!(master.cmd("w 2 call 5"), "compute 5 500");
    for p in [m, workers[0], workers[1], workers[2]] {
        assert_untraced(p);
    }
}

/// A patch stacks on an inherited one in the worker (reusing the library and island the worker
/// inherited) and undoes in LIFO order there, the master untouched; a worker forked after its
/// master rolled back holds nothing and has no records.
#[test]
fn stacking_on_an_inherited_patch() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    attach_ok(s, m, &t.bin("fix_basic.so"), &["compute"]);
    let w = pids(&master.cmd("fork 1"), "forked ")[0];
    let second = attach_ok(s, w, &t.bin("fix_basic_b.so"), &["compute"]);
    assert_eq!(second["patches"][0]["id"], 2, "{second}");
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 35");
    assert_eq!(master.cmd("call 5"), "compute 5 500");
    assert_eq!(
        inherited_states(s, w),
        vec![
            (1, "applied".into(), u64::from(m)),
            (2, "applied".into(), 0)
        ]
    );
    assert_eq!(rollback_ok(s, w, &[]), vec![2]);
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 500");
    assert_eq!(rollback_ok(s, w, &[]), vec![1]);
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 6");
    rollback(s, w, &["--json"]).expect_error(exit::NOTHING_TO_ROLL_BACK);

    assert_eq!(rollback_ok(s, m, &[]), vec![1]);
    let late = pids(&master.cmd("fork 1"), "forked ")[0];
    assert_eq!(master.cmd("w 1 call 5"), "compute 5 6");
    assert!(status(s, late).is_empty(), "forked after the rollback");
    for p in [m, w, late] {
        assert_untraced(p);
    }
}

/// Kills (SIGKILL) and reaps processes a test left running, also when it fails.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill(2) with a PID and a signal number has no memory effects.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A dead master's journal stays usable: a worker that outlived it (now a child of init)
/// adopts its patch on the first look, and rolls it back.
#[test]
fn a_dead_masters_journal_stays_usable_by_its_workers() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    attach_ok(s, m, &t.bin("fix_basic.so"), &["compute"]);
    let workers = pids(&master.cmd("orphans 1"), "forked ");
    let _reaper = Reaper(workers.clone());
    let w = workers[0];
    master.send("quit");
    master.wait_exit(REPLY_TIMEOUT);
    assert_ne!(
        std::fs::read_to_string(format!("/proc/{w}/stat"))
            .unwrap()
            .split_whitespace()
            .nth(3),
        Some(m.to_string().as_str()),
        "the worker is no longer the master's child"
    );
    assert_eq!(
        inherited_states(s, w),
        vec![(1, "applied".into(), u64::from(m))]
    );
    assert_eq!(rollback_ok(s, w, &[]), vec![1]);
    assert_eq!(
        inherited_states(s, w),
        vec![(1, "rolled_back".into(), u64::from(m))]
    );
    assert_untraced(w);
}

/// Memory a patch depends on that a fork would not copy as it is — rpatch's stub region and
/// island pages marked MADV_DONTFORK or MADV_WIPEONFORK — is refused at attach (19), with
/// nothing written; the same attach passes once the marks are gone.
#[test]
fn memory_a_fork_would_not_copy_is_refused() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    attach_ok(s, m, &t.bin("fix_basic.so"), &["compute"]);
    let lib_b = t.bin("fix_basic_b.so");
    for (mark, unmark, flag) in [
        ("dontfork", "dofork", "MADV_DONTFORK"),
        ("wipeonfork", "keeponfork", "MADV_WIPEONFORK"),
    ] {
        let marked = master.cmd(&format!("madvise {mark}"));
        let n: u32 = marked.strip_prefix("madvised ").unwrap().parse().unwrap();
        assert!(n >= 2, "the stub's code page and an island page: {marked}");
        let run = attach(s, m, &lib_b, &["compute"], &["--json"]);
        let message = run.expect_error(exit::UNSUPPORTED);
        assert!(message.contains(flag), "{message}");
        assert_eq!(master.cmd("call 5"), "compute 5 500");
        assert_eq!(states(s, m), vec![(1, "applied".into())]);
        assert_untraced(m);
        assert_eq!(master.cmd(&format!("madvise {unmark}")), marked);
    }
    attach_ok(s, m, &lib_b, &["compute"]);
    assert_eq!(master.cmd("call 5"), "compute 5 35");
}

/// A `clone(CLONE_VM)` process runs in its master's address space: while it is blocked inside
/// `shared_park`, patching that function in the master waits for it (15, naming it: it is
/// frozen and its stack checked with the master's threads); `status` reports the two as sharing
/// one address space, owned by the master; the sharer is refused as a target of its own (19);
/// once it is gone the patch goes through.
#[test]
fn a_process_sharing_the_address_space_is_frozen_and_checked_too() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    let sharer = pids(&master.cmd("share"), "shared ")[0];
    let lib = t.bin("fix_shared.so");
    // One freeze round is enough: the sharer never leaves the function.
    let run = attach(s, m, &lib, &["shared_park"], &["--timeout", "0", "--json"]);
    let message = run.expect_error(exit::BUSY);
    assert!(message.contains(&format!("thread {sharer} ")), "{message}");
    assert_untraced(m);
    assert_untraced(sharer);

    let mut all = [m, sharer];
    all.sort_unstable();
    for p in [m, sharer] {
        let v = status_json(s, p);
        assert_eq!(v["shared_mm"]["owner"], m, "{v}");
        let listed: Vec<u64> = v["shared_mm"]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(
            listed,
            all.iter().map(|&p| u64::from(p)).collect::<Vec<_>>()
        );
    }
    let text = rpatch(s, &["status", &sharer.to_string()]);
    assert!(
        text.stdout.contains(&format!("its patches are PID {m}'s")),
        "{}",
        text.stdout
    );
    let refused = attach(s, sharer, &t.bin("fix_basic.so"), &["compute"], &["--json"]);
    let message = refused.expect_error(exit::UNSUPPORTED);
    assert!(message.contains(&format!("PID {m}")), "{message}");
    rollback(s, sharer, &["--json"]).expect_error(exit::UNSUPPORTED);

    assert_eq!(master.cmd("unshare"), "unshared");
    attach_ok(s, m, &lib, &["shared_park"]);
    assert_eq!(status_json(s, m)["shared_mm"], Value::Null);
    assert_untraced(m);
}

/// The state letter and TracerPid of process `pid`.
fn proc_state(pid: u32) -> (char, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .to_string()
    };
    (
        field("State:").chars().next().unwrap(),
        field("TracerPid:").parse().unwrap(),
    )
}

/// The children of `pid` (from every /proc/N/stat's parent field).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                let after = &s[s.rfind(')').unwrap() + 1..];
                after.split_whitespace().nth(1) == Some(pid.to_string().as_str())
            })
        })
        .collect()
}

/// A worker forked by another thread of the master while the library loads (its constructor
/// has the master fork, inside dlopen) holds a half-loaded library: the attach succeeds in the
/// master and names the worker, whose status says inconsistent; attaching to it is refused (19)
/// and it keeps running its own code.
#[test]
fn a_child_forked_while_the_library_loads_is_never_patched() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    let report = attach_ok(s, m, &t.bin("fix_forkmid.so"), &["compute"]);
    let w = pids(&master.cmd("workers"), "workers ")[0];
    assert_eq!(
        report["inconsistent_children"],
        serde_json::json!([w]),
        "{report}"
    );
    assert!(
        report["warnings"]
            .to_string()
            .contains(&format!("PID {w} was forked")),
        "{report}"
    );
    assert_eq!(master.cmd("call 5"), "compute 5 500");
    assert_eq!(
        master.cmd("w 0 call 5"),
        "compute 5 6",
        "forked before any jump"
    );

    let v = status_json(s, w);
    assert_eq!(v["inconsistent"]["pid"], m, "{v}");
    assert_eq!(v["patches"], Value::Array(vec![]), "{v}");
    let refused = attach(s, w, &t.bin("fix_basic.so"), &["compute"], &["--json"]);
    let message = refused.expect_error(exit::UNSUPPORTED);
    assert!(message.contains("half updated"), "{message}");
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 6");
    assert_untraced(m);
    assert_untraced(w);
}

/// A library constructor that forks in the borrowed thread: the child would return through
/// rpatch's stub into a copy of that thread's code, so it is left stopped (untraced, and marked
/// inconsistent) and the attach fails (8) naming it, with nothing patched; the master runs on
/// as before.
#[test]
fn a_fork_by_the_borrowed_thread_is_stopped_and_fails_the_attach() {
    let t = build_targets();
    let state = state_dir();
    let s = state.path();
    let mut master = prefork();
    let m = master.pid();
    let run = attach(s, m, &t.bin("fix_forkctor.so"), &["compute"], &["--json"]);
    let children = children_of(m);
    let _reaper = Reaper(children.clone());
    let message = run.expect_error(exit::DLOPEN_FAILED).to_string();
    assert_eq!(children.len(), 1, "{children:?}");
    let child = children[0];
    assert!(message.contains(&format!("child {child} ")), "{message}");
    assert_eq!(proc_state(child), ('T', 0), "stopped, not traced");
    let v = status_json(s, child);
    assert_eq!(v["inconsistent"]["pid"], m, "born during the load: {v}");
    assert_eq!(master.cmd("call 5"), "compute 5 6");
    assert_nothing_applied(s, m);
    assert_untraced(m);
}

/// `rpatch CMD --manifest MANIFEST EXTRA...`.
fn fleet(state: &Path, command: &str, manifest: &Path, extra: &[&str]) -> Run {
    let mut args = vec![command, "--manifest", manifest.to_str().unwrap()];
    args.extend_from_slice(extra);
    rpatch(state, &args)
}

/// A master of its own build (a copy of prefork with a build-id no other test's process has,
/// so `--all` reaches only this test's processes) and a manifest of `lib` for its `compute`.
fn prefork_build(builds: &mut Builds, state: &Path, lib: &str) -> (Target, PathBuf) {
    let t = build_targets();
    let (app, _) = builds.copy(&t.bin("prefork"), "a", "prefork");
    let manifest = app.with_file_name("fix.toml");
    manifest_new(state, &t.bin(lib), &app, &["compute"], &manifest);
    (Target::spawn(&app, &[]), manifest)
}

/// `status --all --json`: each listed process's PID with its patches as (id, state,
/// inherited-from PID or 0), by PID.
#[track_caller]
fn status_all(state: &Path) -> std::collections::BTreeMap<u32, Vec<(u64, String, u64)>> {
    let run = rpatch(state, &["status", "--all", "--json"]);
    run.expect_ok();
    run.json()["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let patches = p["patches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["id"].as_u64().unwrap(),
                        p["state"].as_str().unwrap().to_string(),
                        p["inherited"]["pid"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            (p["pid"].as_u64().unwrap() as u32, patches)
        })
        .collect()
}

/// The acceptance scenario of forked children with a manifest: a master patched by `attach
/// --manifest` forks 3 workers; `status --all` lists them (never looked at before) with the
/// patch inherited, and so does each one's `status`; `attach --manifest --all` finds all four
/// `already_applied`; rolling back one worker leaves the others and the master patched;
/// `rollback --manifest --all` leaves none patched — each process's behaviour checked.
#[test]
fn a_manifests_patch_is_inherited_found_applied_and_rolled_back_everywhere() {
    let state = state_dir();
    let s = state.path();
    let mut builds = Builds::new();
    let (mut master, manifest) = prefork_build(&mut builds, s, "fix_basic.so");
    let m = master.pid();
    let run = fleet(s, "attach", &manifest, &[&master.pid_arg(), "--json"]);
    run.expect_ok();
    assert_eq!(fleet_results(&run.json())[&m], "applied");
    let workers = pids(&master.cmd("fork 3"), "forked ");
    assert_eq!(workers.len(), 3);

    let inherited = vec![(1, "applied".to_string(), u64::from(m))];
    let listed = status_all(s);
    assert_eq!(listed.get(&m), Some(&vec![(1, "applied".into(), 0)]));
    for w in &workers {
        assert_eq!(listed.get(w), Some(&inherited), "{listed:?}");
    }
    for (i, &w) in workers.iter().enumerate() {
        assert_eq!(inherited_states(s, w), inherited);
        assert_eq!(status(s, w)[0]["manifest"], "fix_basic");
        assert_eq!(master.cmd(&format!("w {i} call 5")), "compute 5 500");
    }

    let run = fleet(s, "attach", &manifest, &["--all", "--json"]);
    run.expect_ok();
    let report = run.json();
    let results = fleet_results(&report);
    assert_eq!(results.len(), 4, "{report}");
    for p in workers.iter().chain([&m]) {
        assert_eq!(results[p], "already_applied", "{report}");
    }
    assert_eq!(report["counts"]["already_applied"], 4, "{report}");

    assert_eq!(rollback_ok(s, workers[0], &[]), vec![1]);
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 6");
    assert_eq!(master.cmd("w 1 call 5"), "compute 5 500");
    assert_eq!(master.cmd("w 2 call 5"), "compute 5 500");
    assert_eq!(master.cmd("call 5"), "compute 5 500");

    // A worker forked now is first seen by the dry run, which finds its inherited patch.
    let late = pids(&master.cmd("fork 1"), "forked ")[0];
    let run = fleet(s, "rollback", &manifest, &["--all", "--dry-run", "--json"]);
    run.expect_ok();
    let report = run.json();
    let results = fleet_results(&report);
    assert_eq!(results[&workers[0]], "not_applied", "{report}");
    for p in [m, workers[1], workers[2], late] {
        assert_eq!(results[&p], "would_roll_back", "{report}");
    }
    assert_eq!(master.cmd("w 3 call 5"), "compute 5 500");

    let run = fleet(s, "rollback", &manifest, &["--all", "--json"]);
    run.expect_ok();
    let report = run.json();
    let results = fleet_results(&report);
    assert_eq!(results[&workers[0]], "not_applied", "{report}");
    for p in [m, workers[1], workers[2], late] {
        assert_eq!(results[&p], "rolled_back", "{report}");
    }
    assert_eq!(master.cmd("call 5"), "compute 5 6");
    for i in 0..4 {
        assert_eq!(master.cmd(&format!("w {i} call 5")), "compute 5 6");
    }
    let listed = status_all(s);
    for p in workers.iter().chain([&m, &late]) {
        let states: Vec<&str> = listed[p].iter().map(|(_, st, _)| st.as_str()).collect();
        assert_eq!(states, vec!["rolled_back"], "{listed:?}");
        assert_untraced(*p);
    }
}

/// `--all` reports the processes not patched on their own, with why: a `clone(CLONE_VM)`
/// process sharing the master's address space is `shared_mm` (its code is the master's: done
/// with it, exit 0), listed by `status --all`; a worker forked while the library loaded is
/// `inconsistent` (never patched: attach ends with 25), listed by `status --all` too.
#[test]
fn all_reports_sharers_and_inconsistent_children_with_their_reason() {
    let state = state_dir();
    let s = state.path();
    let mut builds = Builds::new();
    let (mut master, manifest) = prefork_build(&mut builds, s, "fix_forkmid.so");
    let m = master.pid();
    let sharer = pids(&master.cmd("share"), "shared ")[0];
    let run = fleet(s, "attach", &manifest, &["--all", "--json"]);
    run.expect_ok();
    let report = run.json();
    let worker = pids(&master.cmd("workers"), "workers ")[0];
    let results = fleet_results(&report);
    assert_eq!(results[&m], "applied", "{report}");
    assert_eq!(results[&sharer], "shared_mm", "{report}");
    assert_eq!(report["counts"]["shared_mm"], 1, "{report}");
    let reason = |report: &Value, pid: u32| -> String {
        report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        reason(&report, sharer).contains(&format!("with PID {m} ")),
        "{report}"
    );
    assert_eq!(master.cmd("call 5"), "compute 5 500");
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 6");

    let run = fleet(s, "attach", &manifest, &["--all", "--json"]);
    run.expect_code(exit::SOME_FAILED);
    assert!(run.stderr.contains("1 inconsistent"), "{}", run.stderr);
    let report = run.json();
    let results = fleet_results(&report);
    assert_eq!(results[&m], "already_applied", "{report}");
    assert_eq!(results[&sharer], "shared_mm", "{report}");
    assert_eq!(results[&worker], "inconsistent", "{report}");
    assert!(
        reason(&report, worker).contains(&format!("into PID {m}")),
        "{report}"
    );
    assert_eq!(master.cmd("w 0 call 5"), "compute 5 6");

    let run = rpatch(s, &["status", "--all", "--json"]);
    run.expect_ok();
    let listed = run.json();
    let entry = |pid: u32| {
        listed["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("PID {pid} not listed: {listed}"))
            .clone()
    };
    assert_eq!(entry(sharer)["shared_mm"]["owner"], m, "{listed}");
    assert_eq!(entry(sharer)["patches"], Value::Array(vec![]));
    assert_eq!(entry(worker)["inconsistent"]["pid"], m, "{listed}");
    assert_eq!(
        entry(m)["manifest_names"],
        serde_json::json!(["fix_forkmid"])
    );

    let run = fleet(s, "rollback", &manifest, &["--all", "--json"]);
    run.expect_ok();
    let report = run.json();
    let results = fleet_results(&report);
    assert_eq!(results[&m], "rolled_back", "{report}");
    assert_eq!(results[&sharer], "shared_mm", "{report}");
    assert_eq!(results[&worker], "not_applied", "{report}");
    assert_eq!(master.cmd("call 5"), "compute 5 6");
    assert_eq!(master.cmd("unshare"), "unshared");
    for p in [m, worker] {
        assert_untraced(p);
    }
}
