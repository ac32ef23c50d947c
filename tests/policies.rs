//! Safety policies: targets and libraries rpatch refuses unless the user overrides the refusal
//! with its `--allow-*` flag, and what the override does.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;

/// Waits until the process reports the given state letter (job-control stops are asynchronous).
fn wait_state(pid: u32, want: char) {
    let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
    while proc_state(pid) != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "PID {pid} never reached state {want}"
        );
        std::thread::yield_now();
    }
}

/// A SIGSTOPped target is refused (20) and stays stopped; with --allow-stopped the patch lands
/// while it is stopped, it stays stopped, and after SIGCONT it runs the new code.
#[test]
fn stopped_target_is_refused_unless_allowed() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_basic.so");
    let attach = |extra: &[&str]| {
        let mut args = vec![
            "attach",
            &target.pid_arg(),
            "--lib",
            lib.to_str().unwrap(),
            "--func",
            "compute",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        rpatch(state.path(), &args)
    };
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_state(pid, 'T');
    let message = attach(&[]).expect_error(exit::REFUSED).to_string();
    assert!(message.contains("--allow-stopped"), "{message}");
    assert_eq!(proc_state(pid), Some('T'), "refusal must leave it stopped");
    attach(&["--allow-stopped"]).expect_ok();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0\n"), "left traced:\n{status}");
    assert_eq!(
        proc_state(pid),
        Some('T'),
        "--allow-stopped must leave it stopped"
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
    rpatch(state.path(), &["rollback", &target.pid_arg()]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
}

/// A target under a seccomp filter is refused (20) untouched; --allow-seccomp patches it.
#[test]
fn seccomp_target_is_refused_unless_allowed() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &["--seccomp"]);
    let lib = t.bin("fix_basic.so");
    let message = attach(state.path(), target.pid(), &lib, &["compute"], &[])
        .expect_error(exit::REFUSED)
        .to_string();
    assert!(message.contains("seccomp"), "{message}");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
    attach(
        state.path(),
        target.pid(),
        &lib,
        &["compute"],
        &["--allow-seccomp"],
    )
    .expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(target.pid());
}

/// A world- or group-writable patch library, or one owned by another non-root user, is refused
/// (20) untouched; --allow-insecure-lib loads it.
#[test]
fn writable_library_is_refused_unless_allowed() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("fix.so");
    std::fs::copy(t.bin("fix_basic.so"), &lib).unwrap();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let base = [
        "attach",
        &target.pid_arg(),
        "--lib",
        lib.to_str().unwrap(),
        "--func",
        "compute",
    ];
    for mode in [0o666, 0o664] {
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(mode)).unwrap();
        let message = rpatch(state.path(), &base)
            .expect_error(exit::REFUSED)
            .to_string();
        assert!(message.contains("--allow-insecure-lib"), "{message}");
        assert_eq!(target.cmd("call 5"), "compute 5 6");
        assert_untraced(target.pid());
    }
    // Not writable by others, but owned by a user who is neither root nor the target's.
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&lib, Some(65534), Some(65534)).unwrap();
    let message = rpatch(state.path(), &base)
        .expect_error(exit::REFUSED)
        .to_string();
    assert!(message.contains("owned by uid 65534"), "{message}");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    let mut allowed = base.to_vec();
    allowed.push("--allow-insecure-lib");
    rpatch(state.path(), &allowed).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
}

/// --allow-active patches a function that a blocked thread has on its stack (the stack check is
/// skipped); that thread keeps running the old code until it returns, new calls see the new one.
#[test]
fn allow_active_skips_the_stack_check() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let lib = t.bin("fix_basic.so");
    let base = [
        "attach",
        &target.pid_arg(),
        "--lib",
        lib.to_str().unwrap(),
        "--func",
        "held",
        "--timeout",
        "0.2",
    ];
    rpatch(state.path(), &base).expect_error(exit::BUSY);
    let mut allowed = base.to_vec();
    allowed.push("--allow-active");
    rpatch(state.path(), &allowed).expect_ok();
    assert_untraced(target.pid());
    assert_eq!(target.cmd("errs"), "errs read=0 nanosleep=0 epoll=0 held=0");
}
