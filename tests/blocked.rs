//! Threads blocked in system calls (read, nanosleep, epoll_wait) while rpatch seizes the target,
//! injects dlopen and writes the patch: none of them may see EINTR or a lost wake-up. Also a
//! thread that stays inside the function to be patched, and a target that exits mid-attach.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const NO_ERRORS: &str = "errs read=0 nanosleep=0 epoll=0 held=0";
const WOKE_OK: &str = "woke read=ok epoll=ok";

/// The blocked target's thread ids by role (main, reader, sleeper, epoller, holder).
fn tids(target: &mut Target) -> HashMap<String, u32> {
    let reply = target.cmd("tids");
    reply
        .strip_prefix("tids ")
        .unwrap_or_else(|| panic!("bad tids reply {reply:?}"))
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// Attach and rollback while threads sit in read(), nanosleep() and epoll_wait(-1) (and one in
/// read() inside another function): the patch works, and afterwards every blocked thread still
/// wakes normally and none ever returned EINTR or a wrong result.
#[test]
fn attach_and_rollback_with_threads_blocked_in_syscalls() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("errs"), NO_ERRORS);

    attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(
        target.cmd("errs"),
        NO_ERRORS,
        "a blocked thread saw EINTR during attach"
    );
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_eq!(target.cmd("errs"), NO_ERRORS);

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_eq!(
        target.cmd("errs"),
        NO_ERRORS,
        "a blocked thread saw EINTR during rollback"
    );
}

/// Several attach/rollback cycles in a row without waking the threads in between: each cycle
/// interrupts the same blocked system calls again, and still none sees EINTR.
#[test]
fn repeated_cycles_with_blocked_threads() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_basic.so");

    for round in 1..=3u64 {
        attach_ok(state.path(), pid, &lib, &["compute"]);
        assert_eq!(target.cmd("call 5"), "compute 5 500");
        assert_eq!(rollback_ok(state.path(), pid, &[]), vec![round]);
        assert_eq!(target.cmd("call 5"), "compute 5 6");
        assert_untraced(pid);
    }
    assert_eq!(target.cmd("errs"), NO_ERRORS);
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_eq!(target.cmd("errs"), NO_ERRORS);
}

/// A function that a thread never leaves (`held`: the holder thread is blocked in read() below
/// it, so its return address is on that stack) is busy: with `--timeout 1` attach fails with 15,
/// names the function and the thread, and leaves the target exactly as it was.
#[test]
fn function_on_a_blocked_threads_stack_is_busy() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let pid = target.pid();
    let holder = tids(&mut target)["holder"];

    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["held"],
        &["--timeout", "1", "--json"],
    );
    let msg = run.expect_error(exit::BUSY);
    assert!(
        msg.contains("held"),
        "the message should name the function: {msg}"
    );
    assert!(
        msg.contains(&holder.to_string()) || msg.contains("holder"),
        "the message should name the thread (tid {holder} or \"holder\"): {msg}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("errs"), NO_ERRORS);
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_nothing_applied(state.path(), pid);
    assert_untraced(pid);
}

/// A function whose first bytes a thread is always at (`parked`: the parker thread sits in
/// pause() issued by the `syscall` at its entry, so its PC is parked+2) is busy: with
/// `--timeout 1` attach fails with 15, names the function and the thread, and leaves the target
/// exactly as it was.
#[test]
fn function_with_a_thread_inside_its_first_bytes_is_busy() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let pid = target.pid();
    let parker = tids(&mut target)["parker"];

    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["parked"],
        &["--timeout", "1", "--json"],
    );
    let msg = run.expect_error(exit::BUSY);
    assert!(
        msg.contains("parked"),
        "the message should name the function: {msg}"
    );
    assert!(
        msg.contains(&parker.to_string()) || msg.contains("parker"),
        "the message should name the thread (tid {parker} or \"parker\"): {msg}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("errs"), NO_ERRORS);
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_nothing_applied(state.path(), pid);

    // Other functions can still be patched meanwhile.
    attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}

/// A target that exits while rpatch works on it (here: while rpatch waits for the busy `parked`)
/// makes rpatch stop with 17 instead of hanging or reporting something else.
#[test]
fn target_exit_during_attach_is_reported() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_basic.so");

    let mut running = RunningRpatch::spawn(
        state.path(),
        &[
            "attach",
            &pid.to_string(),
            "--lib",
            lib.to_str().unwrap(),
            "--func",
            "parked",
            "--timeout",
            "30",
        ],
    );
    // Wait until rpatch has the target (some thread traced), then make the target exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tasks(pid).iter().any(|t| t.tracer != 0) {
        assert!(Instant::now() < deadline, "rpatch never seized the target");
        if running.finished() {
            let run = running.wait();
            panic!("rpatch finished before the target exited: {run:?}");
        }
        std::thread::yield_now();
    }
    target.send("quit");
    let started = Instant::now();
    let run = running.wait();
    run.expect_error(exit::TARGET_EXITED);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "rpatch noticed the exit only after {:?}",
        started.elapsed()
    );
    let status = target.wait_exit(REPLY_TIMEOUT);
    assert!(status.success(), "target exited with {status}");
}
