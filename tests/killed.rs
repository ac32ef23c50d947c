//! Injected calls that do not end normally. rpatch killed (SIGKILL) while a thread of the
//! target runs one of them — the very first `mmap` from the slack bootstrap, or the `dlopen`
//! through the call stub, at several moments inside each: the target must not crash or hang,
//! must answer exactly as before (blocked threads see no EINTR, `wake` works), must be left
//! untraced, and a normal attach and rollback must work afterwards. And a library whose
//! constructor crashes inside the call: the thread is restored and the target runs on.
//!
//! The `RPATCH_FAULT=POINT[:MICROS]` hook makes rpatch kill itself right after resuming the thread
//! into that code (after sleeping MICROS while the thread runs on).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const NO_ERRORS: &str = "errs read=0 nanosleep=0 epoll=0 held=0";
const WOKE_OK: &str = "woke read=ok epoll=ok";

/// Runs `rpatch attach` with `RPATCH_FAULT=fault` and asserts it died of SIGKILL there.
#[track_caller]
fn attach_killed(state: &Path, pid: u32, lib: &Path, func: &str, fault: &str) {
    let fault_env = format!("RPATCH_FAULT={fault}");
    let pid_arg = pid.to_string();
    let run = rpatch_via(
        &["env", &fault_env],
        state,
        &[
            "attach",
            &pid_arg,
            "--lib",
            lib.to_str().unwrap(),
            "--func",
            func,
        ],
    );
    assert_eq!(
        run.code, -1,
        "rpatch should have been killed at {fault}: {run:?}"
    );
}

/// A copy of `lib` that differs in its trailing bytes, so rpatch's content-addressed copy has a
/// new name and the target's `dlopen` really loads it (instead of returning at once for a
/// library it already has).
fn fresh_copy(lib: &Path, dir: &Path, n: usize) -> PathBuf {
    let mut bytes = std::fs::read(lib).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, n + 1));
    let path = dir.join(format!("fresh-{n}.so"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Every thread's blocked-signal mask (`SigBlk`), by tid.
fn signal_masks(pid: u32) -> Vec<(u32, String)> {
    tasks(pid)
        .iter()
        .map(|t| {
            let status =
                std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", t.tid)).unwrap();
            let mask = status
                .lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .unwrap()
                .trim()
                .to_string();
            (t.tid, mask)
        })
        .collect()
}

/// Waits until the target has `n` distinct library copies (sealed memfds) mapped: proof that
/// a dlopen rpatch started before dying ran to its end on its own.
#[track_caller]
fn wait_loaded(pid: u32, n: usize) {
    let libs = "/memfd:rpatch:";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let loaded: BTreeSet<&str> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.starts_with(libs))
            .collect();
        if loaded.len() >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} libraries loaded: {loaded:?}",
            loaded.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The blocked target answers as if nothing happened: original result, no EINTR anywhere,
/// reader and epoller wake normally, nothing traced.
#[track_caller]
fn blocked_unharmed(target: &mut Target) {
    assert_untraced(target.pid());
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("errs"), NO_ERRORS);
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_eq!(target.cmd("errs"), NO_ERRORS);
}

/// After the kills, a normal attach and rollback work.
#[track_caller]
fn blocked_patch_cycle(target: &mut Target, state: &Path, lib: &Path) {
    let pid = target.pid();
    attach_ok(state, pid, lib, &["compute"]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(rollback_ok(state, pid, &[]).len(), 1);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("wake"), WOKE_OK);
    assert_eq!(target.cmd("errs"), NO_ERRORS);
}

/// Killed right after the borrowed thread (blocked in read) was sent into the slack bootstrap,
/// and at moments inside it: each time the thread maps nothing or the region, returns to its
/// read() and the target goes on untouched; the next rpatch maps a region anew and patches.
#[test]
fn killed_during_bootstrap_blocked_target_survives() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let lib = t.bin("fix_basic.so");
    let masks = signal_masks(target.pid());
    for fault in ["bootstrap", "bootstrap:5", "bootstrap:50", "bootstrap:500"] {
        attach_killed(state.path(), target.pid(), &lib, "compute", fault);
        blocked_unharmed(&mut target);
        assert_eq!(signal_masks(target.pid()), masks, "after a kill at {fault}");
    }
    blocked_patch_cycle(&mut target, state.path(), &lib);
}

/// Killed while the borrowed thread runs dlopen through the stub, at moments from its very start
/// to well after it: the thread finishes the call (loading a new library each time), restores
/// itself and re-enters its read(); no blocked thread sees EINTR; then attach and rollback work.
#[test]
fn killed_during_dlopen_blocked_target_survives() {
    let t = build_targets();
    let state = state_dir();
    let libs = tempfile::tempdir().unwrap();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let lib = t.bin("fix_basic.so");
    let masks = signal_masks(target.pid());
    for (n, micros) in [0u64, 20, 100, 300, 1000, 3000].into_iter().enumerate() {
        let fresh = fresh_copy(&lib, libs.path(), n);
        let fault = format!("load-call:{micros}");
        attach_killed(state.path(), target.pid(), &fresh, "compute", &fault);
        wait_loaded(target.pid(), n + 1);
        blocked_unharmed(&mut target);
        assert_eq!(signal_masks(target.pid()), masks, "after a kill at {fault}");
    }
    blocked_patch_cycle(&mut target, state.path(), &lib);
}

/// The same for the Rust target (its main thread blocked reading stdin is borrowed): killed in
/// the bootstrap and in the dlopen, it keeps computing the original value, is untraced, and
/// attach + rollback work afterwards.
#[test]
fn killed_during_injection_rust_target_survives() {
    let t = build_targets();
    let state = state_dir();
    let libs = tempfile::tempdir().unwrap();
    let mut target = Target::spawn(t.calcapp(), &[]);
    let pid = target.pid();
    let lib = t.calcapp_fix();
    let func = "crate::pricing::calc";
    let faults = ["bootstrap", "bootstrap:50", "load-call", "load-call:200"];
    for (n, fault) in faults.into_iter().enumerate() {
        let fresh = fresh_copy(&lib, libs.path(), n);
        attach_killed(state.path(), pid, &fresh, func, fault);
        assert_untraced(pid);
        assert_eq!(target.cmd("call 5"), "calc 5 15", "after a kill at {fault}");
    }
    attach_ok(state.path(), pid, &lib, &[func]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "calc 5 5000");
    assert_eq!(rollback_ok(state.path(), pid, &[]).len(), 1);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "calc 5 15");
}

/// Compiles a library whose constructor runs `body` (C), with a `compute` to name as the patch.
fn crashing_library(dir: &Path, name: &str, body: &str) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    let lib = dir.join(format!("{name}.so"));
    std::fs::write(
        &src,
        format!(
            "#include <stdlib.h>\n#include <errno.h>\n\
             __attribute__((constructor)) static void boom(void) {{ {body} }}\n\
             int compute(int x) {{ return x * 100; }}\n"
        ),
    )
    .unwrap();
    let status = std::process::Command::new("cc")
        .args(["-O1", "-fPIC", "-shared", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed for {name}");
    lib
}

/// A library whose constructor faults (SIGSEGV, with errno changed first) or calls abort()
/// inside the injected dlopen: rpatch sends the thread through the stub's restore path (errno,
/// FP state, signal mask and registers back), reports the fault (8), and the target runs on
/// unchanged with no EINTR anywhere; a normal attach and rollback work afterwards.
#[test]
fn crashing_constructor_is_contained() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut target = Target::spawn(t.bin("blocked"), &[]);
    let masks = signal_masks(target.pid());
    let segv = crashing_library(dir.path(), "segv", "errno = 77; *(volatile int *)8 = 1;");
    let abort = crashing_library(dir.path(), "abort", "abort();");
    for (lib, signal) in [(&segv, "signal 11"), (&abort, "signal 6")] {
        let run = attach(state.path(), target.pid(), lib, &["compute"], &["--json"]);
        let message = run.expect_error(exit::DLOPEN_FAILED);
        assert!(message.contains(signal), "{message}");
        blocked_unharmed(&mut target);
        assert_eq!(signal_masks(target.pid()), masks, "after {}", lib.display());
    }
    blocked_patch_cycle(&mut target, state.path(), &t.bin("fix_basic.so"));
}
