//! Hostile situations: a main thread that has exited, threads appearing and vanishing during the
//! freeze, hundreds of threads, a deep recursion of the function on a stack.

mod common;

use common::*;

/// A process whose main thread has exited (a zombie leader whose /proc/PID/maps, mem and exe read
/// empty) while a worker runs on is patched and rolled back through the live thread's /proc entries.
#[test]
fn main_thread_exited() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("leaderless"), &[]);
    let lib = t.bin("fix_basic.so");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    let status = rpatch(state.path(), &["status", &target.pid_arg(), "--json"]);
    status.expect_ok();
    assert_eq!(status.json()["patches"][0]["state"], "applied");
    rpatch(state.path(), &["rollback", &target.pid_arg()]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
}

/// Threads created and exiting continuously (two spawners, each thread short-lived) do not stop
/// attach or rollback, and the target keeps spawning afterwards.
#[test]
fn threads_created_and_exiting_during_freeze() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("churn"), &[]);
    let lib = t.bin("fix_basic.so");
    for _ in 0..5 {
        attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 500");
        rpatch(state.path(), &["rollback", &target.pid_arg()]).expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 6");
    }
    let spawned = |target: &mut Target| -> u64 {
        target
            .cmd("spawned")
            .strip_prefix("spawned ")
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = spawned(&mut target);
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    while spawned(&mut target) < before + 10 {
        assert!(std::time::Instant::now() < deadline, "spawning stopped");
        std::thread::yield_now();
    }
    assert_untraced(target.pid());
}

/// 256 blocked threads: every one is frozen and released; the patch lands and rolls back.
#[test]
fn two_hundred_fifty_six_threads() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("many"), &["256"]);
    assert_eq!(target.cmd("threads"), "threads 256");
    let lib = t.bin("fix_basic.so");
    let run = attach(state.path(), target.pid(), &lib, &["compute"], &["--json"]);
    run.expect_ok();
    eprintln!("frozen for {} us with 257 threads", run.json()["frozen_us"]);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    rpatch(state.path(), &["rollback", &target.pid_arg()]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
}

/// A thread 2000 frames deep in a recursion of `recurse` blocks the patch (15, naming a frame);
/// once the recursion has unwound, the patch lands.
#[test]
fn deep_recursion_blocks_until_it_returns() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("many"), &["4"]);
    assert_eq!(target.cmd("deep 2000"), "deep 2000");
    let lib = t.bin("fix_basic.so");
    let message = attach(
        state.path(),
        target.pid(),
        &lib,
        &["recurse=compute"],
        &["--timeout", "0.3"],
    )
    .expect_error(exit::BUSY)
    .to_string();
    assert!(message.contains("recurse"), "{message}");
    assert_untraced(target.pid());
    assert_eq!(target.cmd("release"), "released 2000");
    attach(state.path(), target.pid(), &lib, &["recurse=compute"], &[]).expect_ok();
    assert_untraced(target.pid());
}

/// A target in its own mount namespace that cannot see rpatch's state directory (a tmpfs hides
/// it there, as a container or a private /tmp would) still loads the patch: the library copy is
/// placed in the target's own file system, reached through /proc/PID/root.
#[test]
fn library_path_hidden_in_the_targets_mount_namespace() {
    let t = build_targets();
    let state = state_dir();
    let hide = state.path().to_str().unwrap();
    let bin = t.bin("basic_pie");
    let mut target = Target::spawn(
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs \"$0\" && exec \"$1\"",
            hide,
            bin.to_str().unwrap(),
        ],
    );
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    let lib = t.bin("fix_basic.so");
    attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    rpatch(state.path(), &["rollback", &target.pid_arg()]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
}

/// Rollback waits while a thread has the replacement on its stack (15, naming the replacement):
/// afterwards every call must run the original. `--allow-active` rolls back anyway, and the
/// thread finishes in the replacement, whose code stays loaded.
#[test]
fn rollback_waits_for_threads_inside_the_replacement() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("many"), &["4"]);
    let lib = t.bin("fix_many.so");
    attach(state.path(), target.pid(), &lib, &["recurse"], &[]).expect_ok();
    assert_eq!(target.cmd("deep 5"), "deep 5");
    let pid = target.pid_arg();
    let message = rpatch(state.path(), &["rollback", &pid, "--timeout", "0.3"])
        .expect_error(exit::BUSY)
        .to_string();
    assert!(message.contains("replacement"), "{message}");
    assert_untraced(target.pid());
    rpatch(state.path(), &["rollback", &pid, "--allow-active"]).expect_ok();
    assert_eq!(target.cmd("release"), "released -5");
    assert_eq!(target.cmd("deep 3"), "deep 3");
    assert_eq!(target.cmd("release"), "released 3");
    assert_untraced(target.pid());
}

/// A function that is a thread's main loop (only the C library's thread start below it) gets the
/// specific message: it may never return; --allow-active or patching a callee are the ways out.
#[test]
fn a_threads_main_loop_is_named_as_such() {
    let t = build_targets();
    let state = state_dir();
    let target = Target::spawn(t.bin("many"), &["3"]);
    let lib = t.bin("fix_many.so");
    let message = attach(
        state.path(),
        target.pid(),
        &lib,
        &["idle"],
        &["--timeout", "0.2"],
    )
    .expect_error(exit::BUSY)
    .to_string();
    assert!(message.contains("main loop"), "{message}");
    assert!(message.contains("--allow-active"), "{message}");
    assert_untraced(target.pid());
}

/// Patching an already patched function waits while a thread has the *current replacement* on
/// its stack (that is the code being switched away from), and succeeds once it has returned.
#[test]
fn a_second_patch_waits_for_threads_in_the_first_replacement() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("many"), &["4"]);
    attach(
        state.path(),
        target.pid(),
        &t.bin("fix_many.so"),
        &["recurse"],
        &[],
    )
    .expect_ok();
    assert_eq!(target.cmd("deep 5"), "deep 5");
    let second = t.bin("fix_basic.so");
    let message = attach(
        state.path(),
        target.pid(),
        &second,
        &["recurse=compute"],
        &["--timeout", "0.3"],
    )
    .expect_error(exit::BUSY)
    .to_string();
    assert!(message.contains("current replacement"), "{message}");
    assert_untraced(target.pid());
    assert_eq!(target.cmd("release"), "released -5");
    attach(
        state.path(),
        target.pid(),
        &second,
        &["recurse=compute"],
        &[],
    )
    .expect_ok();
    assert_untraced(target.pid());
}

/// A thread blocked in vfork() cannot be stopped until its child execs or exits: attach waits
/// for it like for a busy thread and, at --timeout, fails with 15 naming the thread and vfork;
/// the target is untouched. Once the child has exited, the attach goes through (and the
/// vforking thread was never the one borrowed for the dlopen).
#[test]
fn a_thread_in_vfork_delays_the_freeze() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("vforker"), &[]);
    assert_eq!(target.cmd("vfork"), "vforked");
    let lib = t.bin("fix_basic.so");
    let message = attach(
        state.path(),
        target.pid(),
        &lib,
        &["compute"],
        &["--timeout", "0.5"],
    )
    .expect_error(exit::BUSY)
    .to_string();
    assert!(message.contains("vfork"), "{message}");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
    assert_eq!(target.cmd("release"), "released");
    attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(target.pid());
}
