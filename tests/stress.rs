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
