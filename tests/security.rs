//! The process being patched, and everything its side of the machine can write (a container's
//! file system, a shared /dev/shm, its own file descriptors), must not be able to turn root's
//! rpatch against the host: no host file is written or read through a name the target chose,
//! no planted library runs, and attach either applies the real patch or refuses clearly,
//! leaving the target as it was.
//!
//! The container-like targets run in new mount and PID namespaces made with `unshare`
//! (`test-targets/container.sh` prepares their file system); their mounts never reach the host.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `unshare` into new mount and PID namespaces, then `container.sh SETUP`, then the target.
fn container(setup: &str) -> Vec<String> {
    let script = repo_root().join("test-targets/container.sh");
    [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        script.to_str().unwrap(),
        setup,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts `bin` in a container prepared by `setup`.
fn spawn_in_container(setup: &str, bin: &Path, args: &[&str]) -> Target {
    let wrapper = container(setup);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    Target::spawn_wrapped(&wrapper, bin, args)
}

fn sha256(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A directory only the host sees (the containers mount their own /tmp), holding one file
/// whose content must never change.
struct HostOnly {
    dir: tempfile::TempDir,
}

impl HostOnly {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rpatch-host-only-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("victim"), b"host only\n").unwrap();
        Self { dir }
    }

    fn victim(&self) -> PathBuf {
        self.dir.path().join("victim")
    }

    /// The victim is unchanged and nothing else appeared beside it.
    #[track_caller]
    fn assert_untouched(&self) {
        let content = std::fs::read(self.victim()).unwrap();
        assert!(
            content == b"host only\n",
            "a host file was overwritten: now {} bytes starting {:02x?}",
            content.len(),
            &content[..content.len().min(8)]
        );
        let names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["victim".to_string()],
            "files appeared on the host"
        );
    }
}

/// The journal's records as JSON.
fn journal(state: &Path, pid: u32) -> Vec<Value> {
    let text = std::fs::read_to_string(state.join(format!("{pid}.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["patches"].as_array().unwrap().clone()
}

/// Attach, call, status, rollback, call: the real patch applies and undoes, and nothing else
/// answers (the planted library's constructor would announce itself, its compute gives 666).
#[track_caller]
fn real_patch_cycle(target: &mut Target, state: &Path, lib: &Path) {
    let pid = target.pid();
    attach_ok(state, pid, lib, &["compute"]);
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(states(state, pid).last().unwrap().1, "applied");
    assert_eq!(rollback_ok(state, pid, &[]).len(), 1);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}

/// The next `count` PIDs the kernel hands out (the rpatch run's among them: the temporary
/// copies rpatch once wrote were named after its PID).
fn next_pids(count: u32) -> (u32, u32) {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (last + 1, last + count)
}

/// The original attack: a container plants symlinks (absolute and relative) to a host-only
/// file at every name the library copy could be written under (the temporary names carry the
/// writer's PID: the next few hundred are covered), a FIFO and a directory at others, and a
/// symlink at the state-dir path inside its root. The host file stays untouched, nothing
/// appears on the host, the real patch applies.
#[test]
fn symlinks_planted_by_a_container_never_lead_to_host_files() {
    let t = build_targets();
    let state = state_dir();
    let host = HostOnly::new();
    let lib = t.bin("fix_basic.so");
    let sha = sha256(&lib);
    let setup = format!(
        r#"
        mount -t tmpfs tmpfs /tmp
        mount -t tmpfs tmpfs /dev/shm
        mount -t tmpfs tmpfs /var/tmp
        mkdir -p {}/libs
        "#,
        state.path().display()
    );
    let mut target = spawn_in_container(&setup, &t.bin("saboteur"), &[]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    // Planted from outside, at once, so that the PIDs to come are known: the container's
    // own file system, reached the way the container's root would write it.
    let root = PathBuf::from(format!("/proc/{}/root", target.pid()));
    let victim = host.victim();
    let relative = PathBuf::from("../../../../../../../..").join(victim.strip_prefix("/").unwrap());
    let plant = |link: PathBuf, to: &Path| std::os::unix::fs::symlink(to, link).unwrap();
    plant(
        root.join(state.path().strip_prefix("/").unwrap())
            .join(format!("libs/{sha}.so")),
        &relative,
    );
    for dir in ["dev/shm", "tmp"] {
        plant(root.join(dir).join(format!("rpatch-{sha}.so")), &relative);
    }
    nix::unistd::mkfifo(
        &root.join(format!("var/tmp/rpatch-{sha}.so")),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let (first, last) = next_pids(500);
    for pid in first..=last {
        plant(
            root.join(format!("dev/shm/.rpatch-{sha}.so.{pid}")),
            &victim,
        );
        plant(root.join(format!("tmp/.rpatch-{sha}.so.{pid}")), &relative);
        std::fs::create_dir(root.join(format!("var/tmp/.rpatch-{sha}.so.{pid}"))).unwrap();
    }
    let run = attach(state.path(), target.pid(), &lib, &["compute"], &["--json"]);
    host.assert_untouched();
    run.expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(rollback_ok(state.path(), target.pid(), &[]).len(), 1);
    real_patch_cycle(&mut target, state.path(), &lib);
    host.assert_untouched();
    // Loaded from a sealed memfd, not from any of those names.
    let loaded = journal(state.path(), target.pid())[0]["loaded_from"].clone();
    assert!(
        loaded.as_str().unwrap().starts_with("/proc/self/fd/"),
        "{loaded}"
    );
}

/// A library planted where the copy was once trusted as is (/dev/shm, /tmp and the state-dir
/// path inside the target's root, under the real library's hash) never runs: the real patch
/// applies, and a second attach of the same library reuses the loaded copy.
#[test]
fn a_planted_library_never_runs() {
    let t = build_targets();
    let state = state_dir();
    let lib = t.bin("fix_basic.so");
    let planted = t.bin("planted.so");
    let sha = sha256(&lib);
    let state_path = state.path().to_str().unwrap();
    let planted = planted.to_str().unwrap();
    let setup = format!(
        r#"
        mount -t tmpfs tmpfs /dev/shm
        cp {planted} /dev/shm/planted.so
        mount -t tmpfs tmpfs /tmp
        mkdir -p {state_path}/libs
        for p in /dev/shm/rpatch-{sha}.so /tmp/rpatch-{sha}.so /var/tmp/rpatch-{sha}.so \
                 {state_path}/libs/{sha}.so; do
            cp /dev/shm/planted.so "$p" 2>/dev/null || true
        done
        "#
    );
    let mut target = spawn_in_container(&setup, &t.bin("saboteur"), &[]);
    real_patch_cycle(&mut target, state.path(), &lib);
    attach_ok(state.path(), target.pid(), &lib, &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(
        target.cmd("maps"),
        "maps 5",
        "one copy, reused (five mappings)"
    );
}

/// Docker-like: fresh procfs, /dev/shm and /tmp private tmpfs mounted noexec,nosuid,nodev:
/// the memfd is not subject to those mounts, attach works.
#[test]
fn docker_like_noexec_tmp_and_dev_shm() {
    let t = build_targets();
    let state = state_dir();
    let setup = r#"
        mount -t proc proc /proc
        mount -t tmpfs -o noexec,nosuid,nodev tmpfs /dev/shm
        mount -t tmpfs -o noexec,nosuid,nodev tmpfs /tmp
    "#;
    let mut target = spawn_in_container(setup, &t.bin("saboteur"), &[]);
    real_patch_cycle(&mut target, state.path(), &t.bin("fix_basic.so"));
}

/// No procfs in the target (so no /proc/self/fd/N to dlopen): the library goes through a
/// fresh directory rpatch creates, skipping /dev/shm and /tmp (noexec) and /var/tmp (a
/// symlink to a host directory), in /run; the directory is gone afterwards, the host untouched.
#[test]
fn a_target_without_proc_loads_through_a_fresh_directory() {
    let t = build_targets();
    let state = state_dir();
    let host = HostOnly::new();
    let host_dir = host.dir.path().to_str().unwrap().to_string();
    let setup = format!(
        r#"
        mount -t tmpfs -o noexec tmpfs /dev/shm
        mount -t tmpfs -o noexec tmpfs /tmp
        mount -t tmpfs tmpfs /var
        ln -s {host_dir} /var/tmp
        mount -t tmpfs tmpfs /run
        mount -t tmpfs tmpfs /proc
        "#
    );
    let mut target = spawn_in_container(&setup, &t.bin("saboteur"), &[]);
    let pid = target.pid();
    real_patch_cycle(&mut target, state.path(), &t.bin("fix_basic.so"));
    let loaded = journal(state.path(), pid)[0]["loaded_from"].clone();
    assert!(
        loaded.as_str().unwrap().starts_with("/run/.rpatch-"),
        "{loaded}"
    );
    let left: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root/run"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".rpatch-"))
        .collect();
    assert!(left.is_empty(), "left in /run: {left:?}");
    // Another library: another fresh directory.
    attach_ok(state.path(), pid, &t.bin("fix_basic_b.so"), &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 35");
    host.assert_untouched();
}

/// A thread of the target dup2()s another library over every fd number in a loop while rpatch
/// loads: rpatch either loads the real patch or refuses (the copy is not its memfd, or the
/// loader returned another object); the decoy's code is never patched in, and the target is
/// left running and untraced. Once the race stops, attach works.
///
/// The racer also swaps the descriptor the target's own loader opened mid-`dlopen` (it cannot
/// tell it from rpatch's memfd, both are that file); the loader then maps another file than
/// the one whose headers it read and glibc aborts the process ("Inconsistency detected by
/// ld.so"). A process that corrupts its own loader's descriptors can kill itself with any
/// `dlopen`; that outcome is accepted (rpatch must then report the exit, 17, or the failed load,
/// 8), and ends the test.
#[test]
fn dup2_racing_over_the_memfd_fd() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("saboteur"), &[]);
    let pid = target.pid();
    let decoy = t.bin("fix_basic_b.so");
    assert_eq!(
        target.cmd(&format!("race {}", decoy.to_str().unwrap())),
        "racing"
    );
    let lib = t.bin("fix_basic.so");
    for _ in 0..3 {
        let run = attach(state.path(), pid, &lib, &["compute"], &["--json"]);
        if !std::path::Path::new(&format!("/proc/{pid}/task")).exists()
            || tasks(pid).iter().all(|t| matches!(t.state, 'Z' | 'X'))
        {
            let status = target.wait_exit(REPLY_TIMEOUT);
            let stderr = target.stderr();
            assert!(
                stderr.contains("Inconsistency detected by ld.so"),
                "the target died otherwise ({status}): {stderr}"
            );
            assert!(
                [exit::TARGET_EXITED, exit::DLOPEN_FAILED].contains(&run.code),
                "{run:?}"
            );
            return;
        }
        let reply = target.cmd("call 5");
        match run.code {
            exit::OK => {
                assert_eq!(reply, "compute 5 500");
                rollback_ok(state.path(), pid, &[]);
            }
            exit::DLOPEN_FAILED => {
                let message = run.expect_error(exit::DLOPEN_FAILED);
                assert!(message.contains("rpatch prepared"), "{message}");
                assert_eq!(reply, "compute 5 6");
            }
            other => panic!("unexpected exit {other}: {}", run.stderr),
        }
        assert_untraced(pid);
        assert_nothing_applied(state.path(), pid);
    }
    assert!(target.cmd("norace").starts_with("raced "));
    real_patch_cycle(&mut target, state.path(), &lib);
}

/// Two attaches of different libraries: the second memfd gets the fd number the first was
/// loaded by (`/proc/self/fd/N`, a name glibc matches before anything else), so rpatch moves it
/// to another number; the second library is really loaded and its patch applies on top.
#[test]
fn fd_number_reuse_across_two_attaches() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("saboteur"), &[]);
    let pid = target.pid();
    attach_ok(state.path(), pid, &t.bin("fix_basic.so"), &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    attach_ok(state.path(), pid, &t.bin("fix_basic_b.so"), &["compute"]);
    assert_eq!(target.cmd("call 5"), "compute 5 35");
    let records = journal(state.path(), pid);
    let names: Vec<&str> = records
        .iter()
        .map(|r| r["loaded_from"].as_str().unwrap())
        .collect();
    assert_ne!(names[0], names[1], "{names:?}");
    assert_ne!(records[0]["loaded"]["inode"], records[1]["loaded"]["inode"]);
    assert_eq!(target.cmd("maps"), "maps 10", "two copies");
    assert_eq!(rollback_ok(state.path(), pid, &["--all"]).len(), 2);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}

/// A seccomp filter that kills the process on memfd_create: with --allow-seccomp, rpatch reads
/// the filter (PTRACE_SECCOMP_GET_FILTER), sees the kill, and refuses (19) naming the call; the
/// target lives on, untraced and unpatched.
#[test]
fn a_seccomp_filter_killing_memfd_create_is_refused_not_triggered() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("basic_pie"), &["--seccomp-kill-memfd"]);
    let pid = target.pid();
    let message = attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--allow-seccomp", "--json"],
    )
    .expect_error(exit::UNSUPPORTED)
    .to_string();
    assert!(
        message.contains("memfd_create") && message.contains("SECCOMP_RET_KILL_PROCESS"),
        "{message}"
    );
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
    assert_nothing_applied(state.path(), pid);
}

/// A module the target maps is truncated and rewritten in a loop while rpatch reads it (to
/// resolve, to unwind, to attach): rpatch never dies of SIGBUS (it reads copies, never maps
/// the target's files) and works.
#[test]
fn a_module_file_truncated_while_rpatch_reads_it() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    // A large ELF file with DWARF: this test's own executable.
    let module = dir.path().join("module");
    std::fs::copy(std::env::current_exe().unwrap(), &module).unwrap();
    let mut target = Target::spawn(t.bin("saboteur"), &[]);
    let pid = target.pid();
    let reply = target.cmd(&format!("churn {}", module.display()));
    assert!(reply.starts_with("churning "), "{reply}");
    // Every module's symbol tables are read (and this one's DWARF names: `compute` is not in
    // its symbol table).
    for _ in 0..3 {
        let pid = pid.to_string();
        let run = rpatch(state.path(), &["resolve", &pid, "compute", "--no-inlined"]);
        assert_eq!(run.code, exit::OK, "resolve: {}", run.stderr);
    }
    attach(state.path(), pid, &t.bin("fix_basic.so"), &["compute"], &[]).expect_ok();
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert!(target.cmd("calm").starts_with("calm "));
    assert_untraced(pid);
}

/// Writes the content of a `.gnu_debuglink` section naming `name` with CRC `crc`.
fn debuglink_section(dir: &Path, name: &str, crc: u32) -> PathBuf {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let path = dir.join("debuglink");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A target stripped of its symbol table whose `.gnu_debuglink` names a debug file by an
/// absolute path (or one with `..`): the name is ignored, so its private `compute` is not
/// found (9) in the file or in a process running it, where following the link would have read
/// the file it names.
#[test]
fn an_absolute_gnu_debuglink_is_not_followed() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let debug = elsewhere.path().join("basic.debug");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {out:?}");
    };
    // No build-id, so the link's CRC is what would vouch for the debug file.
    let unlinked = dir.path().join("unlinked");
    run(std::process::Command::new("objcopy")
        .arg("--remove-section=.note.gnu.build-id")
        .arg(t.bin("basic_pie"))
        .arg(&unlinked));
    run(std::process::Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&unlinked)
        .arg(&debug));
    let crc = crc32fast::hash(&std::fs::read(&debug).unwrap());
    let relative = format!(
        "../{}/basic.debug",
        elsewhere.path().file_name().unwrap().to_string_lossy()
    );
    for name in [debug.to_str().unwrap(), relative.as_str()] {
        let stripped = dir.path().join("stripped");
        let _ = std::fs::remove_file(&stripped);
        run(std::process::Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!(
                "--add-section=.gnu_debuglink={}",
                debuglink_section(dir.path(), name, crc).display()
            ))
            .arg(&unlinked)
            .arg(&stripped));
        // Resolving in the file and in a process running it.
        let exe = stripped.to_str().unwrap();
        rpatch(state.path(), &["resolve", "--exe", exe, "compute"]).expect_error(exit::NOT_FOUND);
        let mut target = Target::spawn(&stripped, &[]);
        let pid = target.pid().to_string();
        let lib = t.bin("fix_basic.so");
        let message = rpatch(
            state.path(),
            &[
                "attach",
                &pid,
                "--lib",
                lib.to_str().unwrap(),
                "--func",
                "compute",
                "--dry-run",
            ],
        )
        .expect_error(exit::NOT_FOUND)
        .to_string();
        assert!(!message.contains("basic.debug"), "{message}");
        assert_eq!(target.cmd("call 5"), "compute 5 6");
    }
}
