//! Loading under adverse conditions: the loader's lock held by another thread, and a patch
//! library whose constructor hangs. rpatch times out with a clear error and leaves the target
//! running; the borrowed thread finishes the load by itself once it can.

mod common;

use common::*;

/// While another thread holds the dynamic loader's lock (inside a dlopen whose constructor
/// blocks), the injected dlopen waits without stopping the other threads, and gives up after
/// --load-timeout with exit 8; the target keeps answering, and once the lock is released a new
/// attach succeeds.
#[test]
fn loader_lock_held_by_another_thread() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("loaderlock"), &[]);
    assert_eq!(target.cmd("lock"), "locked");
    let lib = t.bin("fix_basic.so");
    let message = attach(
        state.path(),
        target.pid(),
        &lib,
        &["compute"],
        &["--load-timeout", "1"],
    )
    .expect_error(exit::DLOPEN_FAILED)
    .to_string();
    assert!(message.contains("did not return"), "{message}");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
    assert_eq!(target.cmd("unlock"), "unlocked 1");
    attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(target.pid());
}

/// A patch library whose constructor hangs: exit 8 after --load-timeout, target untouched and
/// answering; when the constructor is released, the load completes in the target and the next
/// attach of the same library applies the patch.
#[test]
fn library_constructor_that_hangs() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("loaderlock"), &[]);
    let lib = t.bin("blocking_ctor.so");
    let message = attach(
        state.path(),
        target.pid(),
        &lib,
        &["compute"],
        &["--load-timeout", "1"],
    )
    .expect_error(exit::DLOPEN_FAILED)
    .to_string();
    assert!(message.contains("did not return"), "{message}");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
    assert_eq!(target.cmd("unlock"), "unlocked 1");
    attach(state.path(), target.pid(), &lib, &["compute"], &[]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(target.pid());
}
