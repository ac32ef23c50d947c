//! Acceptance of the core feature: `rpatch attach` replaces a function in a running process of
//! each kind (C PIE and non-PIE, Rust, C++, a function in a shared library), `status` reports it
//! and `rollback` restores the original, all observed from outside through the target's replies.

mod common;

use common::*;

/// Attach, status, rollback, status on one C target with `compute`; shared by PIE and non-PIE.
fn compute_roundtrip(binary: &str) {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin(binary), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("count"), "count 1 0");

    let report = attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_eq!(report["dry_run"], false);
    let p = &report["patches"][0];
    assert_eq!(p["id"], 1, "patch ids start at 1: {report}");
    assert!(p["function"].as_str().unwrap().contains("compute"), "{p}");
    assert!(
        p["library"].as_str().unwrap().ends_with("fix_basic.so"),
        "library should be the patch library's path: {p}"
    );
    let address = hex(&p["address"]);
    assert_ne!(hex(&p["replacement"]), address);
    assert_untraced(pid);

    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(target.cmd("call 7"), "compute 7 700");
    // The original body no longer runs; the other function is untouched.
    assert_eq!(target.cmd("count"), "count 1 0");
    assert_eq!(target.cmd("call2 5"), "compute2 5 7");

    let st = status(state.path(), pid);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0]["id"], 1);
    assert_eq!(st[0]["state"], "applied");
    assert_eq!(hex(&st[0]["address"]), address);
    assert_eq!(st[0]["method"], p["method"]);
    // The human-readable form works too and names the function.
    let human = rpatch(state.path(), &["status", &target.pid_arg()]);
    human.expect_ok();
    assert!(human.stdout.contains("compute"), "{}", human.stdout);
    assert_untraced(pid);

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("count"), "count 2 1");
    assert_eq!(states(state.path(), pid), vec![(1, "rolled_back".into())]);
    assert_untraced(pid);
}

/// A C position-independent executable: `compute` patched (5 -> 500), status "applied",
/// rollback restores 6, status "rolled_back", target untraced after every step.
#[test]
fn c_pie_attach_status_rollback() {
    compute_roundtrip("basic_pie");
}

/// The same on a non-PIE executable (fixed load address 0x400000, far from every library).
#[test]
fn c_non_pie_attach_status_rollback() {
    compute_roundtrip("basic_nopie");
}

/// A Rust function named by its path without hash (`calcapp::pricing::calc`), replaced from a
/// cdylib whose crate has the same name: 5 -> 5000, and rollback restores 15.
#[test]
fn rust_path_attach_and_rollback() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.calcapp(), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "calc 5 15");

    let report = attach_ok(
        state.path(),
        pid,
        &t.calcapp_fix(),
        &["calcapp::pricing::calc"],
    );
    assert!(
        report["patches"][0]["function"]
            .as_str()
            .unwrap()
            .contains("pricing::calc"),
        "{report}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "calc 5 5000");
    assert_eq!(target.cmd("call 12"), "calc 12 12000");
    assert_eq!(states(state.path(), pid), vec![(1, "applied".into())]);

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "calc 5 15");
}

/// `crate::pricing::calc` means the executable's own crate (here `calcapp`).
#[test]
fn rust_crate_relative_path() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.calcapp(), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "calc 5 15");

    attach_ok(
        state.path(),
        pid,
        &t.calcapp_fix(),
        &["crate::pricing::calc"],
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "calc 5 5000");

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_eq!(target.cmd("call 5"), "calc 5 15");
    assert_untraced(pid);
}

/// A C++ method named by its demangled name, with and without the parameter list.
#[test]
fn cpp_method_by_demangled_name() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("cpp_calc"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_cpp.so");
    assert_eq!(target.cmd("call 5"), "method 5 10");

    attach_ok(state.path(), pid, &lib, &["ns::Calc::method"]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "method 5 2500");
    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_eq!(target.cmd("call 5"), "method 5 10");

    let report = attach_ok(state.path(), pid, &lib, &["ns::Calc::method(int)"]);
    assert_eq!(report["patches"][0]["id"], 2, "ids keep counting: {report}");
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "method 5 2500");
    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![2]);
    assert_eq!(target.cmd("call 5"), "method 5 10");
    assert_untraced(pid);
}

/// A `const` method typed as people call it, without its qualifier (`geo::Square::area(int)` for
/// `area(int) const`), is found in the target and in the library; a misspelt one suggests the
/// class's own method first.
#[test]
fn cpp_const_method_without_its_qualifier() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("cpp_calc"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_cpp.so");
    assert_eq!(target.cmd("area 2"), "area 2 18");

    let report = attach_ok(state.path(), pid, &lib, &["geo::Square::area(int)"]);
    assert_eq!(
        report["patches"][0]["function"], "geo::Square::area(int) const",
        "{report}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("area 2"), "area 2 2000");
    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_eq!(target.cmd("area 2"), "area 2 18");

    let run = attach(
        state.path(),
        pid,
        &lib,
        &["geo::Square::aera(int)"],
        &["--json"],
    );
    let message = run.expect_error(exit::NOT_FOUND);
    assert!(
        message.contains("did you mean geo::Square::area(int) const"),
        "{message}"
    );
    assert_untraced(pid);
}

/// `--func old=new` takes the replacement under another name from the library.
#[test]
fn replacement_with_another_name() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "compute 5 6");

    attach_ok(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute=compute_v2"],
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 5000");

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}

/// A function defined in a shared library the target loaded (`libvictim.so`'s `lib_compute`,
/// called through the PLT), not in the executable.
#[test]
fn function_in_a_loaded_shared_library() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("uses_lib"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "lib_compute 5 8");

    attach_ok(state.path(), pid, &t.bin("fix_victim.so"), &["lib_compute"]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "lib_compute 5 1500");
    assert_eq!(states(state.path(), pid), vec![(1, "applied".into())]);

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_eq!(target.cmd("call 5"), "lib_compute 5 8");
    assert_untraced(pid);
}

/// Two `--func` in one attach patch both functions (one patch id each); `rollback --all` undoes
/// both, newest first.
#[test]
fn two_functions_in_one_attach() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("call2 5"), "compute2 5 7");

    let report = attach_ok(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute", "compute2"],
    );
    let mut ids: Vec<u64> = report["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2], "{report}");
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(target.cmd("call2 5"), "compute2 5 1000");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "applied".into()), (2, "applied".into())]
    );

    assert_eq!(rollback_ok(state.path(), pid, &["--all"]), vec![2, 1]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("call2 5"), "compute2 5 7");
    assert_eq!(
        states(state.path(), pid),
        vec![(1, "rolled_back".into()), (2, "rolled_back".into())]
    );
}

/// `--dry-run` prints the plan and changes nothing: no patch in memory, none applied in the
/// journal, the target never left traced.
#[test]
fn dry_run_changes_nothing() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();

    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--dry-run", "--json"],
    );
    run.expect_ok();
    let v = run.json();
    assert_eq!(v["dry_run"], true, "{v}");
    check_attach_report(&v, pid, 1);
    assert!(
        v["patches"][0]["function"]
            .as_str()
            .unwrap()
            .contains("compute")
    );
    // The plan shows both signatures from DWARF, as the text output does.
    assert_eq!(
        v["patches"][0]["signature"], "(x: int [4]) -> int [4]",
        "{v}"
    );
    assert_eq!(
        v["patches"][0]["replacement_signature"], "(x: int [4]) -> int [4]",
        "{v}"
    );
    let text = attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--dry-run"],
    );
    text.expect_ok();
    assert!(
        text.stdout.contains("target       (x: int [4]) -> int [4]"),
        "{}",
        text.stdout
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_nothing_applied(state.path(), pid);
    rollback(state.path(), pid, &[]).expect_error(exit::NOTHING_TO_ROLL_BACK);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}

/// The target runs on normally after attach and rollback and exits 0 on `quit`, so the patch
/// left nothing behind that breaks its shutdown.
#[test]
fn target_exits_cleanly_after_patch_and_rollback() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    rollback_ok(state.path(), pid, &[]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    target.send("quit");
    let status = target.wait_exit(REPLY_TIMEOUT);
    assert!(status.success(), "target exited with {status}");
}

/// A patched target (replacement library loaded, jump in place) still exits 0 on `quit`.
#[test]
fn target_exits_cleanly_while_patched() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    attach_ok(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["compute"],
    );
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    target.close_stdin();
    let status = target.wait_exit(REPLY_TIMEOUT);
    assert!(status.success(), "target exited with {status}");
}
