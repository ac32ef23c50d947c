//! Patch manifests on a fleet of processes: `manifest new`, `attach --manifest (PID...|--all)`
//! with the build-id as the contract, idempotency, `rollback --manifest`, `status --all`, the
//! exit codes 25 and 26, and processes in containers (new PID, mount and user namespaces owned
//! by a non-root user, private noexec /tmp and /dev/shm).
//!
//! Every test works on its own builds (copies of `basic_pie` with build-ids no other process
//! has, see `Builds`), so `--all` never reaches another test's processes.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A container as a runtime makes one, started by an unprivileged user (nobody): new user (that
/// user mapped to root inside), PID and mount namespaces, its own /proc, and private tmpfs on
/// /tmp and /dev/shm mounted noexec (as Docker mounts /dev/shm).
fn container() -> Vec<String> {
    let script = repo_root().join("test-targets/container.sh");
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
        script.to_str().unwrap(),
        "mount -t tmpfs -o noexec,nosuid,nodev tmpfs /tmp && \
         mount -t tmpfs -o noexec,nosuid,nodev tmpfs /dev/shm",
    ]
    .map(String::from)
    .to_vec()
}

/// A manifest for `compute` (fix_basic.so: x*100) in `module`, written beside it.
fn manifest_for(state: &Path, module: &Path) -> PathBuf {
    let t = build_targets();
    let out = module.with_file_name("fix.toml");
    manifest_new(state, &t.bin("fix_basic.so"), module, &["compute"], &out);
    out
}

fn fleet(state: &Path, command: &str, manifest: &Path, extra: &[&str]) -> Run {
    let mut args = vec![command, "--manifest", manifest.to_str().unwrap()];
    args.extend_from_slice(extra);
    rpatch(state, &args)
}

/// The acceptance scenario: 3 processes of one build, 1 of another build of the same module and
/// 1 of the first build in a container: `attach --manifest --all` patches exactly the 4 of the
/// right build and skips the other (both build-ids named); a second run finds all 4
/// `already_applied`; `status --all` lists them; `rollback --manifest --all` restores all 4.
#[test]
fn all_patches_exactly_the_processes_of_the_manifests_build() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, build) = builds.copy(&t.bin("basic_pie"), "a", "worker");
    let (other, other_build) = builds.copy(&t.bin("basic_pie"), "b", "worker");
    let manifest = manifest_for(state.path(), &app);
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&format!("build_id = \"{build}\"")), "{text}");
    let mut same: Vec<Target> = (0..3).map(|_| Target::spawn(&app, &[])).collect();
    let mut stranger = Target::spawn(&other, &[]);
    let wrapper = container();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut contained = Target::spawn_wrapped(&wrapper, &app, &[]);
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/pid", contained.pid())).unwrap(),
        std::fs::read_link("/proc/self/ns/pid").unwrap(),
        "the container has its own PID namespace"
    );
    let patched: Vec<u32> = same
        .iter()
        .map(Target::pid)
        .chain([contained.pid()])
        .collect();

    let run = fleet(
        state.path(),
        "attach",
        &manifest,
        &["--all", "--jobs", "2", "--json"],
    );
    run.expect_ok();
    let report = run.json();
    let results = fleet_results(&report);
    for pid in &patched {
        assert_eq!(
            results.get(pid).map(String::as_str),
            Some("applied"),
            "{report}"
        );
    }
    assert_eq!(
        results.get(&stranger.pid()).map(String::as_str),
        Some("skipped")
    );
    assert_eq!(results.len(), 5, "{report}");
    let skipped = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["result"] == "skipped")
        .unwrap();
    let reason = skipped["reason"].as_str().unwrap();
    assert!(
        reason.contains(&build) && reason.contains(&other_build),
        "{reason}"
    );
    assert_eq!(skipped["build_id"], other_build.as_str());
    assert_eq!(report["counts"]["applied"], 4);
    for target in same.iter_mut().chain([&mut contained]) {
        assert_eq!(target.cmd("call 5"), "compute 5 500");
    }
    assert_eq!(stranger.cmd("call 5"), "compute 5 6");

    // Idempotent: nothing to do the second time.
    let again = fleet(state.path(), "attach", &manifest, &["--all", "--json"]);
    again.expect_ok();
    let again = again.json();
    for pid in &patched {
        assert_eq!(
            fleet_results(&again).get(pid).map(String::as_str),
            Some("already_applied"),
            "{again}"
        );
    }
    assert_eq!(again["counts"]["applied"], 0);

    let status = rpatch(state.path(), &["status", "--all", "--json"]);
    status.expect_ok();
    let status = status.json();
    let listed: Vec<u32> = status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["manifest_names"], serde_json::json!(["fix_basic"]), "{p}");
            assert_eq!(p["patches"][0]["manifest"], "fix_basic", "{p}");
            p["pid"].as_u64().unwrap() as u32
        })
        .collect();
    let mut expected = patched.clone();
    expected.sort_unstable();
    assert_eq!(listed, expected);

    let back = fleet(state.path(), "rollback", &manifest, &["--all", "--json"]);
    back.expect_ok();
    let back = back.json();
    assert_eq!(back["counts"]["rolled_back"], 4, "{back}");
    for target in same.iter_mut().chain([&mut contained]) {
        assert_eq!(target.cmd("call 5"), "compute 5 6");
        assert_untraced(target.pid());
    }
    let none = fleet(state.path(), "rollback", &manifest, &["--all", "--json"]);
    none.expect_ok();
    assert_eq!(none.json()["counts"]["not_applied"], 4);
}

/// A library that no longer hashes to the manifest's SHA-256 is refused (library_invalid, exit
/// 7, both hashes named) before any process is touched: no journal or lock is made.
#[test]
fn a_library_whose_hash_differs_is_refused_with_nothing_touched() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("basic_pie"), "a", "worker");
    let lib = builds.dir().join("a/fix.so");
    std::fs::copy(t.bin("fix_basic.so"), &lib).unwrap();
    let manifest = app.with_file_name("fix.toml");
    manifest_new(state.path(), &lib, &app, &["compute"], &manifest);
    assert!(
        std::fs::read_to_string(&manifest)
            .unwrap()
            .contains("library = \"fix.so\""),
        "a library beside the manifest is named relative to it"
    );
    let mut target = Target::spawn(&app, &[]);
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes.push(0);
    std::fs::write(&lib, &bytes).unwrap();
    let run = fleet(state.path(), "attach", &manifest, &["--all", "--json"]);
    let message = run.expect_error(exit::LIB_NOT_ELF);
    assert_eq!(run.json()["error"]["kind"], "library_invalid");
    let expected = std::fs::read_to_string(&manifest).unwrap();
    let expected = expected
        .lines()
        .find_map(|l| l.strip_prefix("library_sha256 = \""))
        .unwrap()
        .trim_end_matches('"');
    assert!(message.contains(expected), "{message}");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    let made: Vec<_> = std::fs::read_dir(state.path()).unwrap().collect();
    assert!(made.is_empty(), "the state directory was touched: {made:?}");
}

/// PIDs given: each is reported. One exits meanwhile or never existed (failed, no_such_process),
/// the others are still patched: exit 25. Only processes of another build: all skipped, exit
/// 26; `--all` with no process of the build: exit 26 with an empty list.
#[test]
fn exit_25_when_some_fail_and_26_when_none_match() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("basic_pie"), "a", "worker");
    let (other, _) = builds.copy(&t.bin("basic_pie"), "b", "worker");
    let (unused, _) = builds.copy(&t.bin("basic_pie"), "c", "idle");
    let manifest = manifest_for(state.path(), &app);
    let mut target = Target::spawn(&app, &[]);
    let stranger = Target::spawn(&other, &[]);
    let dead = dead_pid();

    let run = fleet(
        state.path(),
        "attach",
        &manifest,
        &[&target.pid_arg(), &dead.to_string(), "--json"],
    );
    run.expect_code(exit::SOME_FAILED);
    assert!(
        run.stderr.contains("1 of 2 process(es) failed"),
        "{}",
        run.stderr
    );
    let report = run.json();
    let failed = &report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == dead)
        .unwrap()["error"];
    assert_eq!(failed["kind"], "no_such_process", "{report}");
    assert_eq!(failed["exit_code"], exit::NO_SUCH_PROCESS);
    assert_eq!(target.cmd("call 5"), "compute 5 500");

    let run = fleet(
        state.path(),
        "attach",
        &manifest,
        &[&stranger.pid_arg(), "--json"],
    );
    run.expect_code(exit::NONE_MATCHED);
    assert_eq!(run.json()["counts"]["skipped"], 1);

    let nobody = manifest_for(state.path(), &unused);
    for command in ["attach", "rollback"] {
        let run = fleet(state.path(), command, &nobody, &["--all", "--json"]);
        run.expect_code(exit::NONE_MATCHED);
        assert_eq!(run.json()["processes"], serde_json::json!([]));
    }
}

/// `--dry-run` resolves and checks everything per process and changes nothing: `would_apply`,
/// then (once applied) `would_roll_back` with the ids, the patch still in place.
#[test]
fn dry_runs_change_nothing() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("basic_pie"), "a", "worker");
    let manifest = manifest_for(state.path(), &app);
    let mut target = Target::spawn(&app, &[]);
    let pid = target.pid();
    let run = fleet(
        state.path(),
        "attach",
        &manifest,
        &["--all", "--dry-run", "--json"],
    );
    run.expect_ok();
    assert_eq!(fleet_results(&run.json())[&pid], "would_apply");
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert!(status(state.path(), pid).is_empty());

    let applied = fleet(
        state.path(),
        "attach",
        &manifest,
        &[&target.pid_arg(), "--json"],
    );
    applied.expect_ok();
    let ids = applied.json()["processes"][0]["patch_ids"].clone();
    let run = fleet(
        state.path(),
        "rollback",
        &manifest,
        &["--all", "--dry-run", "--json"],
    );
    run.expect_ok();
    let report = run.json();
    assert_eq!(report["processes"][0]["result"], "would_roll_back");
    assert_eq!(report["processes"][0]["patch_ids"], ids);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_untraced(pid);
}

/// A later patch stacked on a manifest's function blocks its rollback (that process fails with
/// stacked_patch, exit 25) unless `--cascade`, which undoes both.
#[test]
fn rollback_cascades_only_when_asked() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (app, _) = builds.copy(&t.bin("basic_pie"), "a", "worker");
    let manifest = manifest_for(state.path(), &app);
    let mut target = Target::spawn(&app, &[]);
    let pid = target.pid();
    fleet(state.path(), "attach", &manifest, &["--all"]).expect_ok();
    attach_ok(state.path(), pid, &t.bin("fix_basic_b.so"), &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 35");

    let run = fleet(state.path(), "rollback", &manifest, &["--all", "--json"]);
    run.expect_code(exit::SOME_FAILED);
    let report = run.json();
    assert_eq!(
        report["processes"][0]["error"]["kind"], "stacked_patch",
        "{report}"
    );
    assert_eq!(
        report["processes"][0]["error"]["exit_code"],
        exit::LATER_PATCH_APPLIED
    );
    assert_eq!(target.cmd("call 5"), "compute 5 35");

    let run = fleet(
        state.path(),
        "rollback",
        &manifest,
        &["--all", "--cascade", "--json"],
    );
    run.expect_ok();
    assert_eq!(
        run.json()["processes"][0]["patch_ids"],
        serde_json::json!([2, 1])
    );
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}

/// A manifest that is not one (bad TOML, an unknown field, a malformed build-id) is refused with
/// manifest_invalid (exit 27) naming the problem; a missing one too.
#[test]
fn invalid_manifests_are_refused() {
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "name = \"x\"\nlibrary = \"x.so\"\nlibrary_sha256 = \"{}\"\n[[target]]\nmodule = \"m\"\nbuild_id = \"abcd\"\nfunctions = [{{ name = \"f\" }}]\n",
        "0".repeat(64)
    );
    for (text, says) in [
        ("name = ".to_string(), "not a valid manifest"),
        (good.clone() + "color = \"red\"\n", "color"),
        (good.replace("abcd", "xyz"), "target[0].build_id"),
        (good.replace("name = \"x\"", "name = \"a b\""), "name"),
    ] {
        let path = dir.path().join("m.toml");
        std::fs::write(&path, &text).unwrap();
        let run = fleet(state.path(), "attach", &path, &["--all", "--json"]);
        let message = run.expect_error(exit::MANIFEST_INVALID);
        assert!(message.contains(says), "{says}: {message}");
    }
    let run = fleet(
        state.path(),
        "rollback",
        &dir.path().join("none.toml"),
        &["--all"],
    );
    run.expect_error(exit::MANIFEST_INVALID);
}

/// Several PIDs or `--all` need a manifest; `--all` and PIDs exclude each other.
#[test]
fn manifest_arguments_are_checked() {
    let state = state_dir();
    let lib = build_targets().bin("fix_basic.so");
    let lib = lib.to_str().unwrap();
    for args in [
        vec!["attach", "1", "2", "--lib", lib, "--func", "compute"],
        vec!["attach", "--all", "--lib", lib, "--func", "compute"],
        vec!["attach", "--manifest", "m.toml", "--all", "1"],
        vec!["attach", "--manifest", "m.toml", "--lib", lib, "1"],
        vec!["rollback", "1", "2"],
        vec!["status", "1", "--all"],
    ] {
        rpatch(state.path(), &args).expect_code(exit::USAGE);
    }
}

/// rpatch run in a container that shares the host's PID namespace (its own mount namespace,
/// so its own, empty state directory) works on the host's processes, and on one patched from
/// the host it says so: `status` lists the host's patch library copies, `rollback` (13) and an
/// attach of the patched function (16) name them; the host's patch is left in place.
#[test]
fn an_rpatch_sharing_the_pid_namespace_names_patches_made_from_the_host() {
    let t = build_targets();
    let state = state_dir();
    let hide = state.path().to_str().unwrap();
    let in_container = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "mount -t tmpfs -o mode=0700 tmpfs \"$0\" && exec \"$@\"",
        hide,
    ];
    let mut patched = Target::spawn(t.bin("basic_pie"), &[]);
    let mut other = Target::spawn(t.bin("basic_pie"), &[]);
    let lib = t.bin("fix_basic.so");
    attach_ok(state.path(), patched.pid(), &lib, &["compute"]);

    let run = rpatch_via(
        &in_container,
        state.path(),
        &["status", &patched.pid_arg(), "--json"],
    );
    run.expect_ok();
    let report = run.json();
    assert_eq!(report["patches"], serde_json::json!([]), "{report}");
    let libraries = report["unrecorded_libraries"].as_array().unwrap();
    assert_eq!(libraries.len(), 1, "{report}");
    assert!(
        libraries[0].as_str().unwrap().starts_with("/memfd:rpatch:"),
        "{report}"
    );
    let text = rpatch_via(&in_container, state.path(), &["status", &patched.pid_arg()]);
    text.expect_ok();
    assert!(
        text.stdout.contains("the host, or another container"),
        "{}",
        text.stdout
    );

    let run = rpatch_via(
        &in_container,
        state.path(),
        &["rollback", &patched.pid_arg()],
    );
    let message = run.expect_error(exit::NOTHING_TO_ROLL_BACK);
    assert!(message.contains("/memfd:rpatch:"), "{message}");
    let args = attach_args(patched.pid(), &lib, &["compute"], &[]);
    let run = rpatch_via(&in_container, state.path(), &args);
    let message = run.expect_error(exit::UNEXPECTED_BYTES);
    assert!(message.contains("another mount namespace"), "{message}");
    assert_eq!(patched.cmd("call 5"), "compute 5 500");

    // It works on a process nobody patched, and keeps its own journal.
    let args = attach_args(other.pid(), &lib, &["compute"], &[]);
    rpatch_via(&in_container, state.path(), &args).expect_ok();
    assert_eq!(other.cmd("call 5"), "compute 5 500");
    assert!(!state.path().join(format!("{}.json", other.pid())).exists());
    assert_untraced(patched.pid());
    assert_untraced(other.pid());
}

/// A manifest for a shared library patches the processes that load that build of it, whatever
/// their executable; a function that resolves in the executable instead (searched first) is
/// not patched: that process fails with function_not_found, nothing loaded.
#[test]
fn a_library_target_patches_its_users_and_only_in_that_library() {
    let t = build_targets();
    let state = state_dir();
    let mut builds = Builds::new();
    let (user, _) = builds.copy(&t.bin("uses_lib"), "a", "user");
    let (lib, lib_build) = builds.copy_named(&t.bin("libvictim.so"), "a", "libvictim.so");
    let manifest = builds.dir().join("a/victim.toml");
    manifest_new(
        state.path(),
        &t.bin("fix_victim.so"),
        &lib,
        &["lib_compute"],
        &manifest,
    );
    let mut users: Vec<Target> = (0..2).map(|_| Target::spawn(&user, &[])).collect();
    let run = fleet(state.path(), "attach", &manifest, &["--all", "--json"]);
    run.expect_ok();
    let report = run.json();
    assert_eq!(report["counts"]["applied"], 2, "{report}");
    assert_eq!(report["processes"][0]["build_id"], lib_build.as_str());
    for u in &mut users {
        assert_eq!(u.cmd("call 2"), "lib_compute 2 600");
    }

    // `main` is the executable's, not the library's.
    let wrong = builds.dir().join("a/wrong.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "{ name = \"lib_compute\" }",
        "{ name = \"main\", replacement = \"lib_compute\" }",
    );
    std::fs::write(
        &wrong,
        text.replace("name = \"fix_victim\"", "name = \"wrong\""),
    )
    .unwrap();
    let run = fleet(
        state.path(),
        "attach",
        &wrong,
        &[&users[0].pid_arg(), "--force", "--json"],
    );
    run.expect_code(exit::SOME_FAILED);
    let failure = run.json()["processes"][0]["error"].clone();
    assert_eq!(failure["kind"], "function_not_found", "{failure}");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("not to a module of a build manifest wrong names"),
        "{failure}"
    );
    assert_eq!(users[0].cmd("call 2"), "lib_compute 2 600");
    assert_untraced(users[0].pid());
}
