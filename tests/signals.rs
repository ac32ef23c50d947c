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
