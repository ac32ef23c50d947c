//! Module identity: the journal records the build-id of each patched module as mapped; status
//! says when the file on disk has changed since it was mapped (an upgrade that a restart would
//! pick up), and the patch itself stays valid because the mapped build is unchanged.

mod common;

use common::*;

/// Replacing the executable on disk (by rename, as package managers do) while patched: status
/// keeps the patch applied, flags the file as changed on disk with the build-id recorded, and
/// rollback still restores the original code of the mapped build.
#[test]
fn file_replaced_on_disk_is_reported_and_rollback_still_works() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::copy(t.bin("basic_pie"), &app).unwrap();
    let mut target = Target::spawn(&app, &[]);
    let pid = target.pid_arg();
    let lib = t.bin("fix_basic.so");
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
    let before = rpatch(state.path(), &["status", &pid, "--json"]).json();
    let patch = &before["patches"][0];
    assert_eq!(patch["state"], "applied", "{before}");
    assert!(
        patch["module_build_id"]
            .as_str()
            .is_some_and(|b| b.len() >= 16),
        "{before}"
    );
    assert_eq!(patch["file_changed_on_disk"], false, "{before}");

    // Upgrade the file under the running process.
    let staged = dir.path().join("app.new");
    std::fs::copy(t.bin("basic_nopie"), &staged).unwrap();
    std::fs::rename(&staged, &app).unwrap();
    let after = rpatch(state.path(), &["status", &pid, "--json"]).json();
    let patch = &after["patches"][0];
    assert_eq!(patch["state"], "applied", "{after}");
    assert_eq!(patch["file_changed_on_disk"], true, "{after}");
    assert_eq!(patch["module_replaced"], false, "{after}");
    let text = rpatch(state.path(), &["status", &pid]);
    assert!(
        text.stdout.contains("file on disk changed"),
        "{}",
        text.stdout
    );

    assert_eq!(target.cmd("call 5"), "compute 5 500");
    rpatch(state.path(), &["rollback", &pid]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(target.pid());
}
