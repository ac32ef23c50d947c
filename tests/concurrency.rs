//! Several rpatch runs on one target at once: they queue up on the target's lock (or wait for
//! another rpatch's ptrace to end) and each succeeds or fails for its own reasons, never because
//! another run was there first.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Ten rounds of three attaches started at once on one function, then three rollbacks started at
/// once: every run succeeds (the attaches stack, each rollback undoes the newest), and the target
/// ends each round running its original code, untraced.
#[test]
fn parallel_attaches_then_parallel_rollbacks_queue_up() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid_arg();
    let lib = t.bin("fix_basic.so");
    let attach_args = [
        "attach",
        &pid,
        "--lib",
        lib.to_str().unwrap(),
        "--func",
        "compute",
        "--timeout",
        "60",
    ];
    let rollback_args = ["rollback", &pid, "--timeout", "60"];
    for round in 1..=10 {
        let runs: Vec<RunningRpatch> = (0..3)
            .map(|_| RunningRpatch::spawn(state.path(), &attach_args))
            .collect();
        for run in runs {
            run.wait().expect_ok();
        }
        assert_eq!(target.cmd("call 5"), "compute 5 500", "round {round}");
        let applied = status(state.path(), target.pid())
            .iter()
            .filter(|p| p["state"] == "applied")
            .count();
        assert_eq!(applied, 3, "round {round}: three stacked patches");
        let runs: Vec<RunningRpatch> = (0..3)
            .map(|_| RunningRpatch::spawn(state.path(), &rollback_args))
            .collect();
        for run in runs {
            run.wait().expect_ok();
        }
        assert_eq!(target.cmd("call 5"), "compute 5 6", "round {round}");
        assert_nothing_applied(state.path(), target.pid());
        assert_untraced(target.pid());
    }
}

/// While one rpatch (its own state directory, as from inside a container) holds a thread of the
/// target traced — here for seconds, in a library constructor that blocks — a second rpatch with
/// another state directory waits for the target to be let go instead of failing with "already
/// traced" (5), then does its own work: here it finds nothing to roll back (13).
#[test]
fn a_run_waits_while_another_rpatch_traces_the_target() {
    let t = build_targets();
    let first_state = state_dir();
    let second_state = state_dir();
    let mut target = Target::spawn(t.bin("loaderlock"), &[]);
    let pid = target.pid_arg();
    let first = RunningRpatch::spawn(
        first_state.path(),
        &[
            "attach",
            &pid,
            "--lib",
            t.bin("blocking_ctor.so").to_str().unwrap(),
            "--func",
            "compute",
            "--load-timeout",
            "3",
        ],
    );
    // Until the first run has borrowed a thread for its (blocking) dlopen.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tasks(target.pid()).iter().any(|t| t.tracer != 0) {
        assert!(
            Instant::now() < deadline,
            "the first rpatch never traced the target"
        );
        std::thread::yield_now();
    }
    let second = RunningRpatch::spawn(
        second_state.path(),
        &["rollback", &pid, "--timeout", "60", "--json"],
    );
    first.wait().expect_error(exit::DLOPEN_FAILED);
    second.wait().expect_error(exit::NOTHING_TO_ROLL_BACK);
    assert_eq!(target.cmd("unlock"), "unlocked 1");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
}

/// A tracer that is not rpatch (a debugger) is reported at once, however long --timeout is
/// (the harness fails a run that takes minutes).
#[test]
fn another_tracer_is_reported_at_once() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let mut tracer = Target::spawn(t.bin("tracer"), &[&target.pid_arg()]);
    attach(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--timeout", "600"],
    )
    .expect_error(exit::ALREADY_TRACED);
    assert_eq!(tracer.cmd("ping"), "pong");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
}
