//! The live status line: while rpatch waits (here, for a thread that keeps a function busy), a
//! terminal on stderr shows one line, redrawn in place, with what rpatch waits for, for how
//! long and the timeout; off a terminal, or with `--json`, nothing of it.

mod common;

use common::*;
use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// A pseudo-terminal: (master, slave).
fn pty() -> (File, File) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers passed; the name, termios and
    // window size pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    unsafe {
        (
            File::from(OwnedFd::from_raw_fd(master)),
            File::from(OwnedFd::from_raw_fd(slave)),
        )
    }
}

/// `rpatch attach` on `held` (busy: the blocked target's holder thread has it on its stack) with
/// stderr on `stderr`, waiting 2 s; returns the exit code and stdout.
fn attach_busy(target: &Target, stderr: Stdio, extra: &[&str]) -> (i32, String) {
    let t = build_targets();
    let state = state_dir();
    let lib = t.bin("fix_basic.so");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpatch"))
        .args(["attach", &target.pid_arg(), "--lib", lib.to_str().unwrap()])
        .args(["--func", "held", "--timeout", "2"])
        .args(extra)
        .env("RPATCH_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start rpatch");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), stdout)
}

/// Runs [`attach_busy`] with stderr on a terminal and returns what the terminal showed.
fn on_a_terminal(target: &Target, extra: &[&str]) -> (i32, String, String) {
    let (mut master, slave) = pty();
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        // EIO once every descriptor of the slave is closed (rpatch exited).
        let _ = master.read_to_end(&mut shown);
        String::from_utf8_lossy(&shown).into_owned()
    });
    let (code, stdout) = attach_busy(target, Stdio::from(slave), extra);
    let shown = reader.join().unwrap();
    (code, stdout, shown)
}

/// On a terminal the status line names the busy function and thread, counts the seconds
/// against the timeout, is redrawn in place (`\r`) and cleared before the error; with `--json`
/// or off a terminal nothing of it is printed.
#[test]
fn a_terminal_shows_what_rpatch_waits_for() {
    let t = build_targets();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let pid = target.pid();

    let (code, _, shown) = on_a_terminal(&target, &[]);
    assert_eq!(code, exit::BUSY, "{shown}");
    assert!(
        shown.contains("\r\x1b[Krpatch: waiting ") && shown.contains(" s of 2.0 s: thread "),
        "no status line on the terminal:\n{shown:?}"
    );
    assert!(shown.contains("held"), "{shown:?}");
    let error = shown.find("rpatch: error: ").expect("the error line");
    assert!(
        shown[..error].ends_with("\r\x1b[K"),
        "the status line was not cleared before the error: {shown:?}"
    );

    let (code, stdout, shown) = on_a_terminal(&target, &["--json"]);
    assert_eq!(code, exit::BUSY);
    assert!(
        !shown.contains("waiting"),
        "--json drew a status line: {shown:?}"
    );
    assert!(stdout.contains("\"kind\":\"busy\""), "{stdout}");

    let (code, _) = attach_busy(&target, Stdio::null(), &[]);
    assert_eq!(code, exit::BUSY);
    let off = rpatch(
        state_dir().path(),
        &[
            "attach",
            &pid.to_string(),
            "--lib",
            t.bin("fix_basic.so").to_str().unwrap(),
            "--func",
            "held",
            "--timeout",
            "1",
        ],
    );
    off.expect_error(exit::BUSY);
    assert!(!off.stderr.contains("waiting"), "{}", off.stderr);

    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
}
