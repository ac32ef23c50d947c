//! Short versions of the stress scripts (scripts/cycle-stress.sh): repeated attach/rollback
//! under a storm of queued real-time signals loses, duplicates and spuriously interrupts nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Kills and reaps the signal sender even when the test fails.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stat(stats: &str, key: &str) -> u64 {
    let field = stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {stats:?}"));
    field.parse().unwrap()
}

/// 20 attach/rollback cycles on an 8-thread target (busy threads and threads blocked in read,
/// nanosleep and epoll_wait) receiving a thread-directed real-time signal at ~1 kHz: every cycle
/// works, every signal sent is handled exactly once, no call sees an EINTR its thread did not
/// cause, and memory maps and file descriptors do not grow.
#[test]
fn cycles_under_a_signal_storm() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("sigstorm"), &["8"]);
    let pid = target.pid_arg();
    let lib = t.bin("fix_basic.so");
    let mut sender = Reaped(
        Command::new(t.bin("sigsend"))
            .args([&pid, "1000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start sigsend"),
    );
    let mut sender_out = BufReader::new(sender.0.stdout.take().unwrap());
    let mut line = String::new();
    sender_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sending");

    let mut baseline = None;
    for cycle in 1..=20 {
        rpatch(
            state.path(),
            &[
                "attach",
                &pid,
                "--lib",
                lib.to_str().unwrap(),
                "--func",
                "compute",
            ],
        )
        .expect_ok();
        assert_eq!(target.cmd("call 5"), "compute 5 500", "cycle {cycle}");
        rpatch(state.path(), &["rollback", &pid]).expect_ok();
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
    drop(sender.0.stdin.take());
    line.clear();
    sender_out.read_line(&mut line).unwrap();
    let sent: u64 = line
        .trim()
        .strip_prefix("sent ")
        .expect("sent N")
        .parse()
        .unwrap();
    assert!(
        sender.0.wait().unwrap().success(),
        "sender hit a full signal queue"
    );
    assert!(sent > 0);
    // The last signals may still be queued: wait (bounded) until all are handled.
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    let stats = loop {
        let stats = target.cmd("stats");
        if stat(&stats, "handled") >= sent || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::yield_now();
    };
    assert_eq!(stat(&stats, "handled"), sent, "{stats}");
    assert_eq!(stat(&stats, "spurious"), 0, "{stats}");
    assert_untraced(target.pid());
}

/// Short version of scripts/kill-stress.sh: rpatch is SIGKILLed at 12 pseudo-random instants of
/// attach and rollback against the 8-thread target; after each kill the target is untraced,
/// answers, and runs exactly what `status` says is applied; `rollback --all` restores it.
#[test]
fn random_kills_during_attach_and_rollback() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("sigstorm"), &["8"]);
    let pid = target.pid_arg();
    let lib = t.bin("fix_basic.so");
    let attach = [
        "attach",
        &pid,
        "--lib",
        lib.to_str().unwrap(),
        "--func",
        "compute",
    ];
    let rollback = ["rollback", &pid];
    // How long each takes, to spread the kills over the whole operation.
    let timed = |args: &[&str]| {
        let started = std::time::Instant::now();
        rpatch(state.path(), args).expect_ok();
        started.elapsed()
    };
    let span_attach = timed(&attach);
    let span_rollback = timed(&rollback);
    let mut seed = u64::from(std::process::id()) | 1;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..12 {
        let applied = rpatch(state.path(), &["status", &pid, "--json"])
            .stdout
            .contains("\"applied\"");
        let (args, span): (&[&str], _) = if applied && next() % 2 == 0 {
            (&rollback, span_rollback)
        } else {
            (&attach, span_attach)
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
        let _ = child.wait();

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
    rpatch(state.path(), &["rollback", &pid, "--all"]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
}
