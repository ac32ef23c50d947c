//! Short versions of the stress scripts (scripts/cycle-stress.sh, kill-stress.sh,
//! first-attach-stress.sh), run the way a shared CI machine runs them: beside a CPU hog per core,
//! with thread-directed real-time signals to every thread of the target, the main thread included.
//! Nothing may be lost, duplicated or spuriously interrupted, and the target never dies.

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

/// A thread borrowed for the first attach of a process has a real-time signal queued the moment
/// rpatch seizes it, so the signal is delivered the instant the thread is resumed into the
/// bootstrap; the handler then sleeps 50 ms with its frame on the stack. Ten fresh targets, each
/// attached once under load (CPU hogs, and a 1 kHz storm of signals to every thread): every one
/// survives, patched and untraced, every signal is handled exactly once, no call sees a spurious
/// EINTR, and the slack the bootstrap used holds the file's bytes again.
#[test]
fn first_attach_with_a_signal_on_the_borrowed_thread() {
    let t = build_targets();
    let _hogs = CpuHogs::start();
    let lib = t.bin("fix_basic.so");
    // Signals that landed on a thread while it was traced (a watcher starved of CPU may miss
    // a short traced window now and then, not every time).
    let mut landed = 0;
    for trial in 1..=10 {
        let state = state_dir();
        let mut target = Target::spawn(t.bin("sigstorm"), &["8", "50"]);
        let pid = target.pid_arg();
        let storm = SignalSender::start(&t.bin("sigsend"), &[&pid, "1000"], "sending");
        let sender = SignalSender::start(&t.bin("sigontrace"), &[&pid], "watching");
        let run = attach(
            state.path(),
            target.pid(),
            &lib,
            &["compute"],
            &["-v", "--timeout", "30"],
        );
        run.expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 500", "trial {trial}");
        let on_trace = sender.finish();
        landed += on_trace;
        let sent = on_trace + storm.finish();
        assert_signals_accounted(&mut target, sent);
        assert!(
            assert_slack_restored(target.pid(), &run.stderr),
            "trial {trial}: the first attach did not bootstrap: {}",
            run.stderr
        );
        assert_untraced(target.pid());
        let status = rpatch(state.path(), &["status", &pid, "--json"]);
        status.expect_ok();
        assert_eq!(status.json()["slack_left"], serde_json::json!([]));
    }
    assert!(landed > 0, "no signal ever landed on a traced thread");
}

/// 20 attach/rollback cycles on an 8-thread target (busy threads and threads blocked in read,
/// nanosleep and epoll_wait) receiving a thread-directed real-time signal at ~1 kHz on every
/// thread, beside a CPU hog per core: every cycle works, every signal sent is handled exactly
/// once, no call sees an EINTR its thread did not cause, and memory maps and file descriptors do
/// not grow.
#[test]
fn cycles_under_a_signal_storm() {
    let t = build_targets();
    let _hogs = CpuHogs::start();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("sigstorm"), &["8"]);
    let pid = target.pid_arg();
    let lib = t.bin("fix_basic.so");
    let sender = SignalSender::start(&t.bin("sigsend"), &[&pid, "1000"], "sending");
    let mut baseline = None;
    for cycle in 1..=20 {
        attach(
            state.path(),
            target.pid(),
            &lib,
            &["compute"],
            &["--timeout", "30"],
        )
        .expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 500", "cycle {cycle}");
        rpatch(state.path(), &["rollback", &pid, "--timeout", "30"]).expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 6", "cycle {cycle}");
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .lines()
            .count();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        match baseline {
            None => baseline = Some((maps, fds)),
            Some(b) => assert_eq!((maps, fds), b, "maps/fds grew by cycle {cycle}"),
        }
    }
    let sent = sender.finish();
    assert!(sent > 0);
    assert_signals_accounted(&mut target, sent);
    assert_untraced(target.pid());
}

/// Short version of scripts/kill-stress.sh: rpatch is SIGKILLed at 12 pseudo-random instants of
/// attach and rollback against the 8-thread target under a signal storm and CPU hogs; after each
/// kill the target is untraced, answers, and runs exactly what `status` says is applied;
/// `rollback --all` restores it, and no signal was lost or duplicated.
#[test]
fn random_kills_during_attach_and_rollback() {
    let t = build_targets();
    let _hogs = CpuHogs::start();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("sigstorm"), &["8"]);
    let pid = target.pid_arg();
    let lib = t.bin("fix_basic.so");
    let sender = SignalSender::start(&t.bin("sigsend"), &[&pid, "1000"], "sending");
    let attach_args = [
        "attach",
        &pid,
        "--lib",
        lib.to_str().unwrap(),
        "--func",
        "compute",
        "--timeout",
        "30",
    ];
    let rollback_args = ["rollback", &pid, "--timeout", "30"];
    // How long each takes, to spread the kills over the whole operation.
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        rpatch(state.path(), args).expect_ok();
        started.elapsed()
    };
    let span_attach = timed(&attach_args);
    let span_rollback = timed(&rollback_args);
    let mut seed = u64::from(std::process::id()) | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = 0;
    for round in 0..12 {
        let applied = rpatch(state.path(), &["status", &pid, "--json"])
            .stdout
            .contains("\"applied\"");
        let (args, span): (&[&str], _) = if applied && next() % 2 == 0 {
            (&rollback_args, span_rollback)
        } else {
            (&attach_args, span_attach)
        };
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rpatch"))
            .args(args)
            .env("RPATCH_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The random instant of the kill is the experiment, not a synchronisation.
        std::thread::sleep(span.mul_f64((next() % 1000) as f64 / 1000.0));
        let _ = child.kill();
        let status = child.wait().unwrap();
        // Killed before it finished (a run that completed exited by itself).
        kills += u64::from(status.signal() == Some(libc::SIGKILL));

        assert_untraced(target.pid());
        let status = rpatch(state.path(), &["status", &pid, "--json"]);
        status.expect_ok();
        assert!(
            !status.stdout.contains("\"tampered\""),
            "round {round}: {}",
            status.stdout
        );
        let active = status
            .stdout
            .contains("\"state\":\"applied\",\"active\":true");
        let expected = if active {
            "compute 5 500"
        } else {
            "compute 5 6"
        };
        assert_eq!(
            target.cmd("call 5"),
            expected,
            "round {round}: {}",
            status.stdout
        );
    }
    rpatch(
        state.path(),
        &["rollback", &pid, "--all", "--timeout", "30"],
    );
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    let sent = sender.finish();
    assert_signals_accounted_after_kills(&mut target, sent, kills);
    assert_untraced(target.pid());
    // Whatever a killed run left in slack bytes, the runs after it settled.
    let status = rpatch(state.path(), &["status", &pid, "--json"]);
    assert_eq!(
        status.json()["slack_left"],
        serde_json::json!([]),
        "{}",
        status.stdout
    );
}
