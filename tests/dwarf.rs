//! The attach checks DWARF makes possible, and DWARF found outside the executable: a
//! replacement with another signature is refused (unless `--force`), inlined copies are
//! reported (an error with `--strict`), a function that exists only inlined is refused naming
//! its callers, a generic instance is selected by its type arguments, compiler clones and
//! compiler versions are reported, and stripped executables are resolved through a
//! `.gnu_debuglink` file, a build-id directory, or `.dynsym` alone.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

/// `rpatch ARGS` with extra environment variables (the harness sets only the state dir).
fn rpatch_env(state: &Path, env: &[(&str, &Path)], args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rpatch"));
    cmd.args(args)
        .env("RPATCH_STATE_DIR", state)
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run rpatch");
    let run = Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    record(&run);
    check_json_contract(&run);
    run
}

/// The `warnings` list of an attach report, joined.
fn warnings(report: &Value) -> String {
    report["warnings"]
        .as_array()
        .unwrap_or_else(|| panic!("no warnings list in {report}"))
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `int compute(int)` replaced by `long compute(long)`: refused (21) with both signatures in
/// the message and nothing changed; with `--force` it is patched and the warning says so.
#[test]
fn signature_mismatch_refused_unless_forced() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_sig.so");

    let run = attach(state.path(), pid, &lib, &["compute"], &["--json"]);
    let message = run.expect_error(21);
    assert!(message.contains("int [4]"), "{message}");
    assert!(message.contains("long int [8]"), "{message}");
    assert!(message.contains("--force"), "{message}");
    assert!(
        run.json()["error"]["kind"] == "signature_mismatch",
        "{}",
        run.stdout
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_nothing_applied(state.path(), pid);

    let run = attach(
        state.path(),
        pid,
        &lib,
        &["compute"],
        &["--json", "--force"],
    );
    run.expect_ok();
    let report = run.json();
    check_attach_report(&report, pid, 1);
    assert!(warnings(&report).contains("--force"), "{report}");
    assert!(run.stderr.contains("rpatch: warning:"), "{}", run.stderr);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}

/// Matching signatures (C and Rust) pass without any signature warning.
#[test]
fn matching_signatures_pass_quietly() {
    let t = build_targets();
    let state = state_dir();
    let target = Target::spawn(t.bin("basic_pie"), &[]);
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--json", "--dry-run"],
    );
    run.expect_ok();
    assert_eq!(
        run.json()["warnings"],
        serde_json::json!([]),
        "{}",
        run.stdout
    );

    let target = Target::spawn(t.calcapp(), &[]);
    let run = attach(
        state.path(),
        target.pid(),
        &t.calcapp_fix(),
        &["calcapp::pricing::calc"],
        &["--json", "--dry-run"],
    );
    run.expect_ok();
    let w = warnings(&run.json());
    assert!(!w.contains("signature"), "{w}");
}

/// `scale` was inlined into caller_a and caller_b: attach warns naming both (stderr and the
/// JSON `warnings`) and patches the out-of-line copy only (a call through a pointer changes,
/// the inlined copies keep the old code); `--strict` refuses (22) and changes nothing.
#[test]
fn inlined_copies_warned_and_strict_refuses() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("inl"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_inl.so");
    assert_eq!(target.cmd("call 4"), "scale 4 13");
    assert_eq!(target.cmd("a 4"), "a 4 14");

    let run = attach(state.path(), pid, &lib, &["scale"], &["--json", "--strict"]);
    let message = run.expect_error(22);
    assert!(
        message.contains("caller_a") && message.contains("caller_b"),
        "{message}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 4"), "scale 4 13");
    assert_nothing_applied(state.path(), pid);

    let run = attach(state.path(), pid, &lib, &["scale"], &["--json"]);
    run.expect_ok();
    let w = warnings(&run.json());
    assert!(w.contains("caller_a") && w.contains("caller_b"), "{w}");
    assert!(w.contains("inl.c:"), "call sites are named: {w}");
    assert!(
        run.stderr.contains("rpatch: warning: scale was inlined"),
        "{}",
        run.stderr
    );
    assert_eq!(target.cmd("call 4"), "scale 4 400");
    assert_eq!(
        target.cmd("a 4"),
        "a 4 14",
        "the inlined copy keeps the old code"
    );
    assert_eq!(target.cmd("b 4"), "b 4 26");
    assert_untraced(pid);
}

/// With link-time optimisation the inlined copy sits in another unit than the function's
/// DWARF: attach still warns naming its caller (and `--strict` refuses), checks the signature,
/// and patches the out-of-line copy only.
#[test]
fn lto_inlined_copy_in_another_unit_is_warned() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("lto"), &[]);
    let pid = target.pid();
    let lib = t.bin("fix_inl.so");
    assert_eq!(target.cmd("call 4"), "scale 4 13");
    assert_eq!(target.cmd("across 4"), "across 4 14");

    let run = attach(state.path(), pid, &lib, &["scale"], &["--json", "--strict"]);
    let message = run.expect_error(22);
    assert!(message.contains("caller_across"), "{message}");
    assert_nothing_applied(state.path(), pid);

    let run = attach(state.path(), pid, &lib, &["scale"], &["--json"]);
    run.expect_ok();
    let w = warnings(&run.json());
    assert!(
        w.contains("caller_across") && w.contains("lto_main.c:"),
        "{w}"
    );
    assert!(!w.contains("signature"), "the signature is checked: {w}");
    assert_eq!(target.cmd("call 4"), "scale 4 400");
    assert_eq!(
        target.cmd("across 4"),
        "across 4 14",
        "the inlined copy keeps the old code"
    );
    assert_untraced(pid);
}

/// `offset_of` has no out-of-line copy: attach is refused (11) naming caller_c and caller_d,
/// the functions to patch instead.
#[test]
fn only_inlined_function_refused_naming_callers() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("inl"), &[]);
    let pid = target.pid();
    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_inl.so"),
        &["offset_of"],
        &["--json"],
    );
    let message = run.expect_error(exit::UNPATCHABLE);
    assert!(message.contains("only inlined"), "{message}");
    assert!(
        message.contains("caller_c") && message.contains("caller_d"),
        "{message}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("c 1"), "c 1 42");
}

/// A compiler clone (`mul_add.constprop.0`) is reported in the plan: callers that enter the
/// clone keep the old code.
#[test]
fn compiler_clone_reported() {
    let t = build_targets();
    let state = state_dir();
    let target = Target::spawn(t.bin("inl"), &[]);
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_inl.so"),
        &["mul_add"],
        &["--json", "--dry-run"],
    );
    run.expect_ok();
    let w = warnings(&run.json());
    assert!(w.contains("mul_add.constprop.0"), "{w}");
}

/// `calcgen::calc::widen::<u32>` selects that instance only (u32 path changes, u64 does not);
/// the bare `calcgen::calc::widen` matches both instances: ambiguous (10) listing them,
/// unless `--all-matches`, which patches each with its own instance from the library.
#[test]
fn generic_instance_selected_by_type_argument() {
    let t = build_targets();
    let lib = t.rust.join("libcalcgen.so");
    let state = state_dir();
    let mut target = Target::spawn(t.rust.join("calcgen"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("u32 5"), "gen32 5 15");
    assert_eq!(target.cmd("u64 5"), "gen64 5 15");

    let run = attach(
        state.path(),
        pid,
        &lib,
        &["calcgen::calc::widen"],
        &["--json"],
    );
    let message = run.expect_error(exit::AMBIGUOUS);
    assert!(
        message.contains("widen::<u32>") && message.contains("widen::<u64>"),
        "{message}"
    );
    assert!(message.contains("--all-matches"), "{message}");
    assert_nothing_applied(state.path(), pid);

    let report = attach_ok(state.path(), pid, &lib, &["calcgen::calc::widen::<u32>"]);
    assert_eq!(
        report["patches"][0]["function"], "calcgen::calc::widen::<u32>",
        "{report}"
    );
    assert_eq!(target.cmd("u32 5"), "gen32 5 5000");
    assert_eq!(target.cmd("u64 5"), "gen64 5 15");
    assert_untraced(pid);

    // A fresh process: --all-matches patches both instances in one attach.
    let state = state_dir();
    let mut target = Target::spawn(t.rust.join("calcgen"), &[]);
    let pid = target.pid();
    let run = attach(
        state.path(),
        pid,
        &lib,
        &["calcgen::calc::widen"],
        &["--json", "--all-matches"],
    );
    run.expect_ok();
    check_attach_report(&run.json(), pid, 2);
    assert_eq!(target.cmd("u32 5"), "gen32 5 5000");
    assert_eq!(target.cmd("u64 7"), "gen64 7 7000");
    assert_untraced(pid);
}

/// A patch library built by another rustc than the target is reported (Rust has no stable
/// ABI): the library's `.comment` is rewritten to claim another compiler.
#[test]
fn rustc_version_difference_warned() {
    let t = build_targets();
    let dir = tempfile::tempdir().unwrap();
    let comment = dir.path().join("comment");
    std::fs::write(&comment, b"rustc version 1.0.0 (a59807616 2015-05-15)\0").unwrap();
    let lib = dir.path().join("libcalcapp.so");
    let status = Command::new("objcopy")
        .arg("--update-section")
        .arg(format!(".comment={}", comment.display()))
        .arg(t.calcapp_fix())
        .arg(&lib)
        .status()
        .unwrap();
    assert!(status.success());
    let state = state_dir();
    let target = Target::spawn(t.calcapp(), &[]);
    let run = attach(
        state.path(),
        target.pid(),
        &lib,
        &["calcapp::pricing::calc"],
        &["--json", "--dry-run"],
    );
    run.expect_ok();
    let w = warnings(&run.json());
    assert!(
        w.contains("rustc version 1.0.0") && w.contains("stable ABI"),
        "{w}"
    );
}

/// A stripped executable whose DWARF is in a file named by `.gnu_debuglink`, beside it:
/// resolve gives the file:line and signature and says where the DWARF came from, and attach
/// checks the signature (no "not checked" warning) and patches.
#[test]
fn stripped_target_with_debuglink_file_beside_it() {
    let t = build_targets();
    let state = state_dir();
    let bin = t.bin("stripped_link");
    let run = rpatch(
        state.path(),
        &[
            "resolve",
            "--exe",
            bin.to_str().unwrap(),
            "compute",
            "--json",
        ],
    );
    run.expect_ok();
    let v = run.json();
    let m = &v["matches"][0];
    assert!(
        m["location"].as_str().unwrap().ends_with("basic.c:22"),
        "{v}"
    );
    assert_eq!(m["signature_text"], "(x: int [4]) -> int [4]", "{v}");
    let debug = &v["modules"][0]["debug_info"];
    assert_eq!(debug["kind"], "separate", "{v}");
    assert_eq!(debug["found_by"], "debuglink", "{v}");
    assert!(
        debug["path"]
            .as_str()
            .unwrap()
            .ends_with("build/stripped_link.debug"),
        "{v}"
    );

    let mut target = Target::spawn(&bin, &[]);
    let pid = target.pid();
    let report = attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    let w = warnings(&report);
    assert!(!w.contains("not checked"), "{w}");
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}

/// A stripped executable whose DWARF is only under `RPATCH_DEBUG_ROOT/.build-id/xx/yyyy.debug`:
/// found by build-id there (with a PID too, through /proc/PID/map_files), not found without
/// the variable (exit 9: the default root has no such file).
#[test]
fn stripped_target_with_build_id_directory() {
    let t = build_targets();
    let state = state_dir();
    let bin = t.bin("stripped_bid");
    let root = t.build.join("debugroot");
    let env = [("RPATCH_DEBUG_ROOT", root.as_path())];
    let run = rpatch_env(
        state.path(),
        &env,
        &[
            "resolve",
            "--exe",
            bin.to_str().unwrap(),
            "compute",
            "--json",
        ],
    );
    run.expect_ok();
    let v = run.json();
    assert!(
        v["matches"][0]["location"]
            .as_str()
            .unwrap()
            .ends_with("basic.c:22"),
        "{v}"
    );
    let debug = &v["modules"][0]["debug_info"];
    assert_eq!(debug["found_by"], "build-id", "{v}");
    assert!(
        debug["path"].as_str().unwrap().contains("/.build-id/"),
        "{v}"
    );

    let run = rpatch(
        state.path(),
        &[
            "resolve",
            "--exe",
            bin.to_str().unwrap(),
            "compute",
            "--json",
        ],
    );
    run.expect_error(exit::NOT_FOUND);

    let mut target = Target::spawn(&bin, &[]);
    let pid = target.pid();
    let run = rpatch_env(
        state.path(),
        &env,
        &[
            "attach",
            &target.pid_arg(),
            "--lib",
            t.bin("fix_basic.so").to_str().unwrap(),
            "--func",
            "compute",
            "--json",
        ],
    );
    run.expect_ok();
    check_attach_report(&run.json(), pid, 1);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}

/// A stripped executable with only `.dynsym` (exported with -rdynamic, no debug file): the
/// exported name still resolves and patches, with warnings saying what could not be checked.
#[test]
fn stripped_target_with_dynsym_only() {
    let t = build_targets();
    let state = state_dir();
    let bin = t.bin("stripped_dynsym");
    let run = rpatch(
        state.path(),
        &[
            "resolve",
            "--exe",
            bin.to_str().unwrap(),
            "compute",
            "--json",
        ],
    );
    run.expect_ok();
    let v = run.json();
    assert_eq!(v["matches"][0]["location"], Value::Null, "{v}");
    assert_eq!(v["matches"][0]["signature"], Value::Null, "{v}");
    assert!(v["notes"][0].as_str().unwrap().contains("no DWARF"), "{v}");

    let mut target = Target::spawn(&bin, &[]);
    let pid = target.pid();
    let report = attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    let w = warnings(&report);
    assert!(w.contains("signature not checked"), "{w}");
    assert!(w.contains("no DWARF"), "{w}");
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}
