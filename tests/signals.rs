//! Threads inside signal handlers: the interrupted context's PC, saved in the signal frame, counts.

mod common;

use common::*;

/// A thread whose signal handler interrupted it 2 bytes into `sigtrapped` (inside the bytes a
/// jump would overwrite) blocks the patch with exit 15 and a message naming the signal frame;
/// once the handler has returned and the thread left the function, the patch lands.
#[test]
fn interrupted_pc_in_a_signal_frame_blocks_the_patch() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("sighandler"), &[]);
    let lib = t.bin("fix_basic.so");
    assert_eq!(target.cmd("trap"), "trapped");
    let args = [
        "attach",
        &target.pid_arg(),
        "--lib",
        lib.to_str().unwrap(),
        "--func",
        "sigtrapped=compute",
        "--timeout",
        "0.3",
    ];
    let message = rpatch(state.path(), &args)
        .expect_error(exit::BUSY)
        .to_string();
    assert!(message.contains("signal handler"), "{message}");
    assert_untraced(target.pid());
    assert_eq!(target.cmd("release"), "released 1");
    rpatch(state.path(), &args).expect_ok();
    assert_untraced(target.pid());
    assert_eq!(target.cmd("call 4"), "compute 4 5");
}

/// A thread inside a signal handler (blocked in read() there) is never the one borrowed for the
/// injected dlopen — the code it interrupted may hold any lock — even though a thread blocked in
/// a syscall is otherwise preferred: the main thread (in stdio) is borrowed instead.
#[test]
fn a_thread_in_a_signal_handler_is_not_borrowed() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("sighandler"), &[]);
    assert_eq!(target.cmd("trap"), "trapped");
    let lib = t.bin("fix_basic.so");
    let pid = target.pid_arg();
    let run = rpatch(
        state.path(),
        &[
            "attach",
            &pid,
            "--lib",
            lib.to_str().unwrap(),
            "--func",
            "compute",
            "-v",
        ],
    );
    run.expect_ok();
    let borrowed = run
        .stderr
        .lines()
        .find_map(|l| l.split("borrowing thread ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no borrowing line in:\n{}", run.stderr));
    assert_eq!(
        borrowed, pid,
        "borrowed a thread other than main:\n{}",
        run.stderr
    );
    assert_eq!(target.cmd("call 4"), "compute 4 400");
    assert_eq!(target.cmd("release"), "released 1");
    assert_untraced(target.pid());
}

/// The borrowed thread's whole FP/vector state survives the injected calls: four threads hold a
/// pattern in ymm0-15 (and, with AVX-512, zmm16-31 and k1-k7) and an unusual MXCSR across a
/// blocking read(); over five attach/rollback cycles, each followed by reads returning in every
/// thread, no thread ever finds a register changed.
#[test]
fn vector_registers_survive_the_injected_calls() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("fpkeep"), &["4"]);
    let lib = t.bin("fix_basic.so");
    let mut released = 0;
    for cycle in 1..=5 {
        attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 500", "cycle {cycle}");
        assert_eq!(target.cmd("release 4"), "released 4");
        rollback(state.path(), target.pid(), &[]).expect_ok();
        assert_eq!(target.cmd("release 4"), "released 4");
        released += 8;
    }
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    let stats = loop {
        let stats = target.cmd("stats");
        if stats.contains(&format!("checked={released} ")) || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::yield_now();
    };
    assert!(
        stats.contains(&format!("checked={released} corrupted=0")),
        "{stats}"
    );
    assert_untraced(target.pid());
}

/// Waits until `sigsuspender`'s only thread sleeps, which it does only in its wait (its
/// handlers' writes to a pipe that is read do not block).
fn wait_until_waiting(pid: u32, case: &str) {
    let deadline = std::time::Instant::now() + RPATCH_TIMEOUT;
    while proc_state(pid) != Some('S') {
        assert!(
            std::time::Instant::now() < deadline,
            "{case}: the target never went back to its wait"
        );
        std::thread::yield_now();
    }
}

/// A thread borrowed while it waits in `sigsuspend`, or in `epoll_wait` (the only thread of
/// `sigsuspender`), with a signal sent while it runs rpatch's code (rpatch is stopped,
/// `RPATCH_FAULT=POINT:stop`, right after resuming it into the bootstrap, the stub for `dlopen`,
/// or another call): the signal's handler runs and that wait returns EINTR, as without rpatch —
/// not issued again to sleep on — and the thread's own mask is back. Then a plain rollback; the
/// counts stay exact.
#[test]
fn a_signal_during_the_borrow_ends_the_threads_wait() {
    let t = build_targets();
    let lib = t.bin("fix_basic.so");
    let cases = ["bootstrap", "load-call", "call"]
        .into_iter()
        .flat_map(|point| [(point, "sigsuspend"), (point, "epoll")]);
    for (point, wait) in cases {
        let case = format!("{point} ({wait})");
        let state = state_dir();
        let mode: &[&str] = if wait == "epoll" { &["epoll"] } else { &[] };
        let mut target = Target::spawn(t.bin("sigsuspender"), mode);
        let pid = target.pid();
        let fault = format!("RPATCH_FAULT={point}:stop");
        let args = attach_args(pid, &lib, &["compute"], &[]);
        let mut run = RunningRpatch::spawn_via(&["env", &fault], state.path(), &args);
        let rpatch_pid = run.pid();
        // Stopped at the point (the point may be reached again: each stop is let go).
        let deadline = std::time::Instant::now() + RPATCH_TIMEOUT;
        while proc_state(rpatch_pid) != Some('T') {
            assert!(!run.finished(), "{case}: rpatch never stopped at the point");
            assert!(
                std::time::Instant::now() < deadline,
                "{case}: rpatch never stopped"
            );
            std::thread::yield_now();
        }
        // SAFETY: kill takes no pointers.
        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
        while !run.finished() {
            // SAFETY: as above; SIGCONT lets rpatch go on from each stop.
            unsafe { libc::kill(rpatch_pid as i32, libc::SIGCONT) };
            assert!(
                std::time::Instant::now() < deadline,
                "{case}: rpatch did not finish"
            );
            std::thread::yield_now();
        }
        run.wait().expect_ok();
        // Each signal is sent once the thread waits again: its report counts the returns of
        // the waits the earlier signals ended (on a loaded machine the thread may still be in
        // a handler long after it printed, and a signal then would be handled before that
        // return).
        wait_until_waiting(pid, &case);
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
        assert_eq!(
            target.read_line(),
            "handled 2 returns 1 eintr 1 mask_lost 0",
            "{case}: SIGUSR1 was handled while rpatch held the thread; its wait must have \
             returned"
        );
        wait_until_waiting(pid, &case);
        rollback_ok(state.path(), pid, &[]);
        wait_until_waiting(pid, &case);
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
        assert_eq!(
            target.read_line(),
            "handled 3 returns 2 eintr 2 mask_lost 0",
            "{case}: after the rollback"
        );
        assert_untraced(pid);
    }
}
