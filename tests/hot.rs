//! A 5-byte function called in tight loops by several threads: the patch must land while no
//! thread is inside the bytes being written, go through a jump island (a jmp rel32 cannot reach a
//! dlopen'ed library from a PIE), and every thread must see the new code.

mod common;

use std::time::Duration;

use common::*;

/// How long the threads may take to pick up a change (they loop millions of times a second).
const PICKUP: Duration = Duration::from_secs(10);

fn all(value: i32, threads: usize) -> String {
    let mut s = "hot".to_string();
    for _ in 0..threads {
        s.push_str(&format!(" {value}"));
    }
    s
}

/// Each thread's iteration counts (to show the threads keep running).
fn iterations(target: &mut Target) -> Vec<u64> {
    let reply = target.cmd("iters");
    let rest = reply
        .strip_prefix("iters ")
        .unwrap_or_else(|| panic!("bad iters reply {reply:?}"));
    rest.split(' ').map(|n| n.parse().unwrap()).collect()
}

/// Polls `iters` until every thread has run since `before` (they are not stuck or stopped).
fn assert_threads_progress(target: &mut Target, before: &[u64]) {
    let deadline = std::time::Instant::now() + PICKUP;
    loop {
        let now = iterations(target);
        if now.iter().zip(before).all(|(n, b)| n > b) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "threads stopped making progress: {before:?} -> {now:?}"
        );
        std::thread::yield_now();
    }
}

/// Four threads spin on the 5-byte `twice_plus_one`: after attach every thread's latest result
/// becomes 1020, the patch goes through an island (attach and status agree), the threads keep
/// running, and rollback brings every thread back to 21.
#[test]
fn hot_tiny_function_patched_under_load() {
    let t = build_targets();
    let state = state_dir();
    let threads = 4;
    let mut target = Target::spawn(t.bin("hot"), &[&threads.to_string()]);
    let pid = target.pid();
    assert_eq!(target.cmd("q"), all(21, threads));

    let report = attach_ok(state.path(), pid, &t.bin("fix_hot.so"), &["twice_plus_one"]);
    let p = &report["patches"][0];
    assert_eq!(
        p["method"], "island",
        "a 5-byte function needs an island: {report}"
    );
    let island = hex(&p["island"]);
    assert_untraced(pid);

    poll_reply(&mut target, "q", &all(1020, threads), PICKUP);
    assert_eq!(target.cmd("call 10"), "twice_plus_one 10 1020");
    let before = iterations(&mut target);
    assert_threads_progress(&mut target, &before);
    assert_eq!(target.cmd("q"), all(1020, threads));

    let st = status(state.path(), pid);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0]["state"], "applied");
    assert_eq!(st[0]["method"], "island");
    assert_eq!(hex(&st[0]["island"]), island);

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_untraced(pid);
    poll_reply(&mut target, "q", &all(21, threads), PICKUP);
    let before = iterations(&mut target);
    assert_threads_progress(&mut target, &before);
    assert_eq!(target.cmd("q"), all(21, threads));
    assert_eq!(states(state.path(), pid), vec![(1, "rolled_back".into())]);
}

/// Repeated attach/rollback cycles on busy threads: every cycle switches all threads over and
/// back, and none ever sees a torn instruction (they would crash or compute something else).
#[test]
fn hot_repeated_attach_rollback_cycles() {
    let t = build_targets();
    let state = state_dir();
    let threads = 6;
    let mut target = Target::spawn(t.bin("hot"), &[&threads.to_string()]);
    let pid = target.pid();
    let lib = t.bin("fix_hot.so");

    for round in 1..=5u64 {
        let report = attach_ok(state.path(), pid, &lib, &["twice_plus_one"]);
        assert_eq!(report["patches"][0]["id"], round, "{report}");
        poll_reply(&mut target, "q", &all(1020, threads), PICKUP);
        assert_eq!(rollback_ok(state.path(), pid, &[]), vec![round]);
        poll_reply(&mut target, "q", &all(21, threads), PICKUP);
        assert_untraced(pid);
    }
    let before = iterations(&mut target);
    assert_threads_progress(&mut target, &before);
}
