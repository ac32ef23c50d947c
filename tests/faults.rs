//! Fault injection: rpatch is killed (SIGKILL) at every named point of attach and rollback
//! (`RPATCH_FAULT`, see src/fault.rs). Afterwards the target runs, per function, either the old or
//! the new code — never a crash or a torn instruction; `status` reports exactly what memory holds;
//! and `rollback --all` brings back the original.

mod common;

use common::*;
use serde_json::Value;

const ATTACH_POINTS: &[&str] = &[
    "bootstrap",
    "load-call",
    "loaded",
    "intent",
    "frozen",
    "write",
    "written",
    "thawed",
];
const ROLLBACK_POINTS: &[&str] = &[
    "rollback-intent",
    "rollback-frozen",
    "rollback-write",
    "rollback-written",
    "rollback-thawed",
];

/// Runs rpatch with `RPATCH_FAULT=point` and checks it was killed there.
fn killed_at(state: &std::path::Path, point: &str, args: &[&str]) {
    let fault = format!("RPATCH_FAULT={point}");
    let run = rpatch_via(&["env", &fault], state, args);
    assert_eq!(run.code, -1, "rpatch was not killed at {point}: {run:?}");
}

/// The functions the target runs now must match what `status` says is applied and active.
fn assert_consistent(target: &mut Target, state: &std::path::Path, point: &str) {
    assert_untraced(target.pid());
    let status = rpatch(state, &["status", &target.pid_arg(), "--json"]);
    status.expect_ok();
    let json: Value = status.json();
    let active = |name: &str| {
        json["patches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["function"] == name && p["state"] == "applied" && p["active"] == true)
    };
    for p in json["patches"].as_array().unwrap() {
        assert_ne!(p["state"], "tampered", "{point}: {json}");
    }
    for (cmd, name, old, new) in [
        ("call 5", "compute", "compute 5 6", "compute 5 500"),
        ("call2 5", "compute2", "compute2 5 7", "compute2 5 1000"),
    ] {
        let reply = target.cmd(cmd);
        let expected = if active(name) { new } else { old };
        assert_eq!(reply, expected, "{point}: status {json}");
    }
}

fn restore_all(target: &mut Target, state: &std::path::Path, point: &str) {
    rpatch(state, &["rollback", &target.pid_arg(), "--all"]);
    assert_eq!(target.cmd("call 5"), "compute 5 6", "{point}");
    assert_eq!(target.cmd("call2 5"), "compute2 5 7", "{point}");
    assert_untraced(target.pid());
}

/// Killed at each point of an attach of two functions: consistent state, and the next
/// `rollback --all` returns to the original.
#[test]
fn attach_killed_at_every_point() {
    let t = build_targets();
    let lib = t.bin("fix_basic.so");
    for point in ATTACH_POINTS {
        // A fresh target and state for each point: `bootstrap` only happens on a first attach.
        let state = state_dir();
        let mut target = Target::spawn(t.bin("basic_pie"), &[]);
        let pid = target.pid_arg();
        let args = [
            "attach",
            &pid,
            "--lib",
            lib.to_str().unwrap(),
            "--func",
            "compute",
            "--func",
            "compute2",
        ];
        killed_at(state.path(), point, &args);
        assert_consistent(&mut target, state.path(), point);
        restore_all(&mut target, state.path(), point);
        // And the target can be patched normally afterwards.
        rpatch(state.path(), &args).expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 500", "{point}");
        restore_all(&mut target, state.path(), point);
    }
}

/// Killed at each point of a rollback of two functions: consistent state, and the next
/// `rollback --all` finishes the job.
#[test]
fn rollback_killed_at_every_point() {
    let t = build_targets();
    let lib = t.bin("fix_basic.so");
    for point in ROLLBACK_POINTS {
        let state = state_dir();
        let mut target = Target::spawn(t.bin("basic_pie"), &[]);
        let pid = target.pid_arg();
        rpatch(
            state.path(),
            &[
                "attach",
                &pid,
                "--lib",
                lib.to_str().unwrap(),
                "--func",
                "compute",
                "--func",
                "compute2",
            ],
        )
        .expect_ok();
        killed_at(state.path(), point, &["rollback", &pid, "--all"]);
        assert_consistent(&mut target, state.path(), point);
        restore_all(&mut target, state.path(), point);
    }
}

/// Bootstrap code a killed run left in slack bytes (killed right after resuming the thread into
/// it) is reported by `status`, and restored by the next operation with every thread stopped —
/// also when that run is killed in turn at each point of the restore: nothing is left
/// half-done, and a later rollback finishes it.
#[test]
fn slack_left_by_a_killed_bootstrap_is_restored_later() {
    let t = build_targets();
    let lib = t.bin("fix_basic.so");
    for point in ["slack-frozen", "slack-written", "slack-thawed"] {
        let state = state_dir();
        let mut target = Target::spawn(t.bin("basic_pie"), &[]);
        let pid = target.pid_arg();
        let attach = [
            "attach",
            &pid,
            "--lib",
            lib.to_str().unwrap(),
            "--func",
            "compute",
        ];
        killed_at(state.path(), "bootstrap", &attach);
        let status = rpatch(state.path(), &["status", &pid, "--json"]);
        status.expect_ok();
        let left = status.json()["slack_left"].as_array().unwrap().len();
        assert_eq!(left, 1, "{point}: {}", status.stdout);
        killed_at(state.path(), point, &attach);
        assert_consistent(&mut target, state.path(), point);
        restore_all(&mut target, state.path(), point);
        let status = rpatch(state.path(), &["status", &pid, "--json"]);
        assert_eq!(
            status.json()["slack_left"],
            serde_json::json!([]),
            "{point}: {}",
            status.stdout
        );
        assert_eq!(target.cmd("call 5"), "compute 5 6", "{point}");
        assert_untraced(target.pid());
    }
}
