//! Stacked patches and rollback: undo is LIFO per function, `--all`, `--id`, `--cascade`, and the
//! refusal to pull a patch out from under a later one.

mod common;

use common::*;

/// Starts basic_pie and stacks fix_basic.so (id 1, x*100) then fix_basic_b.so (id 2, x*7) on
/// `compute`.
fn stacked(state: &std::path::Path) -> Target {
    let t = build_targets();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "compute 5 6");

    let first = attach_ok(state, pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_eq!(first["patches"][0]["id"], 1, "{first}");
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    let second = attach_ok(state, pid, &t.bin("fix_basic_b.so"), &["compute"]);
    assert_eq!(second["patches"][0]["id"], 2, "{second}");
    assert_eq!(
        hex(&first["patches"][0]["address"]),
        hex(&second["patches"][0]["address"]),
        "both patches are on the same function"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 35");
    assert_eq!(
        states(state, pid),
        vec![(1, "applied".into()), (2, "applied".into())]
    );
    target
}

/// Two patches on one function, then plain rollbacks: the newest goes first (back to x*100),
/// then the original returns; a third rollback has nothing left (13).
#[test]
fn stacked_patches_roll_back_newest_first() {
    let state = state_dir();
    let mut target = stacked(state.path());
    let pid = target.pid();

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![2]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "applied".into()), (2, "rolled_back".into())]
    );

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "rolled_back".into()), (2, "rolled_back".into())]
    );

    rollback(state.path(), pid, &["--json"]).expect_error(exit::NOTHING_TO_ROLL_BACK);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
}

/// `rollback --all` undoes every applied patch, newest first.
#[test]
fn rollback_all() {
    let state = state_dir();
    let mut target = stacked(state.path());
    let pid = target.pid();

    assert_eq!(rollback_ok(state.path(), pid, &["--all"]), vec![2, 1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "rolled_back".into()), (2, "rolled_back".into())]
    );
    rollback(state.path(), pid, &["--all"]).expect_error(exit::NOTHING_TO_ROLL_BACK);
}

/// `rollback --id 1` while patch 2 is stacked on the same function is refused (18) and changes
/// nothing; with `--cascade` it undoes 2 and then 1.
#[test]
fn rollback_id_under_a_later_patch_needs_cascade() {
    let state = state_dir();
    let mut target = stacked(state.path());
    let pid = target.pid();

    let run = rollback(state.path(), pid, &["--id", "1", "--json"]);
    run.expect_error(exit::LATER_PATCH_APPLIED);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 35");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "applied".into()), (2, "applied".into())]
    );

    assert_eq!(
        rollback_ok(state.path(), pid, &["--id", "1", "--cascade"]),
        vec![2, 1]
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "rolled_back".into()), (2, "rolled_back".into())]
    );
}

/// `rollback --id` of the newest patch on a stack needs no cascade.
#[test]
fn rollback_id_of_the_top_patch() {
    let state = state_dir();
    let mut target = stacked(state.path());
    let pid = target.pid();

    assert_eq!(rollback_ok(state.path(), pid, &["--id", "2"]), vec![2]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "applied".into()), (2, "rolled_back".into())]
    );
    // An id that is already rolled back has nothing to roll back.
    rollback(state.path(), pid, &["--id", "2"]).expect_error(exit::NOTHING_TO_ROLL_BACK);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}

/// LIFO is per function: patches on different functions roll back independently by id.
#[test]
fn rollback_id_on_another_function_is_independent() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_basic.so");

    attach_ok(state.path(), pid, &lib, &["compute"]);
    attach_ok(state.path(), pid, &lib, &["compute2"]);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(target.cmd("call2 5"), "compute2 5 1000");

    assert_eq!(rollback_ok(state.path(), pid, &["--id", "1"]), vec![1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("call2 5"), "compute2 5 1000");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "rolled_back".into()), (2, "applied".into())]
    );

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![2]);
    assert_eq!(target.cmd("call2 5"), "compute2 5 7");
    assert_untraced(pid);
}

/// A function can be patched again after its patch was rolled back (the same library, loaded
/// again or reused), and ids keep counting.
#[test]
fn patch_again_after_rollback() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_basic.so");

    for round in 1..=3u64 {
        let report = attach_ok(state.path(), pid, &lib, &["compute"]);
        assert_eq!(report["patches"][0]["id"], round, "{report}");
        assert_eq!(target.cmd("call 5"), "compute 5 500");
        assert_eq!(rollback_ok(state.path(), pid, &[]), vec![round]);
        assert_eq!(target.cmd("call 5"), "compute 5 6");
        assert_untraced(pid);
    }
    assert_eq!(status(state.path(), pid).len(), 3);
}
