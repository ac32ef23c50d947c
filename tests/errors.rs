//! Every failure has its exit code and message, and after any failure the target runs exactly as
//! before: same replies, no thread traced or stopped, nothing applied in the journal.

mod common;

use std::path::Path;

use common::*;

/// The basic target still computes the original `compute`, is untraced, and the journal holds
/// no applied patch.
#[track_caller]
fn assert_unchanged(target: &mut Target, state: &Path) {
    let pid = target.pid();
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(target.cmd("call2 5"), "compute2 5 7");
    assert_nothing_applied(state, pid);
    assert_untraced(pid);
}

/// Starts basic_pie and checks its baseline.
fn basic() -> Target {
    let mut target = Target::spawn(build_targets().bin("basic_pie"), &[]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    target
}

/// Malformed command lines are usage errors (2).
#[test]
fn usage_errors() {
    let state = state_dir();
    let s = state.path();
    rpatch::<&str>(s, &[]).expect_code(exit::USAGE);
    rpatch(s, &["attach"]).expect_code(exit::USAGE);
    rpatch(s, &["attach", "1", "--lib", "/nonexistent.so"]).expect_code(exit::USAGE);
    rpatch(s, &["attach", "notapid", "--lib", "/x.so", "--func", "f"]).expect_code(exit::USAGE);
    rpatch(s, &["rollback"]).expect_code(exit::USAGE);
    rpatch(s, &["frobnicate", "1"]).expect_code(exit::USAGE);
}

/// A PID with no process behind it: 3, for attach, rollback and status.
#[test]
fn no_such_process() {
    let t = build_targets();
    let state = state_dir();
    let pid = dead_pid();
    attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--json"],
    )
    .expect_error(exit::NO_SUCH_PROCESS);
    rollback(state.path(), pid, &[]).expect_error(exit::NO_SUCH_PROCESS);
    rpatch(state.path(), &["status", &pid.to_string()]).expect_error(exit::NO_SUCH_PROCESS);
}

/// An unprivileged user (nobody) cannot patch a root-owned process: 4, target unchanged.
#[test]
fn permission_denied() {
    if !is_root() {
        eprintln!("skipped: needs root to run rpatch as another user");
        return;
    }
    let t = build_targets();
    let state = state_dir();
    // nobody gets a state dir of its own (root refuses one others can write), so that the only
    // obstacle is the target.
    let nobody_state = state_dir();
    std::os::unix::fs::chown(nobody_state.path(), Some(65534), Some(65534)).unwrap();

    let mut target = basic();
    let lib = t.bin("fix_basic.so");
    let run = rpatch_via(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
        nobody_state.path(),
        &attach_args(target.pid(), &lib, &["compute"], &["--json"]),
    );
    run.expect_error(exit::PERMISSION);
    assert_unchanged(&mut target, state.path());
}

/// A target that another process already traces: 5, and the other tracer keeps it.
#[test]
fn already_traced() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    let pid = target.pid();
    let mut tracer = Target::spawn(t.bin("tracer"), &[&target.pid_arg()]);
    // The tracer's tracing thread (not its main thread) is the TracerPid.
    let tracer_tid = tasks(pid).iter().find(|t| t.tid == pid).unwrap().tracer;
    assert_ne!(tracer_tid, 0, "the helper did not trace the target");

    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_basic.so"),
        &["compute"],
        &["--json"],
    );
    run.expect_error(exit::ALREADY_TRACED);
    // The target still runs under its tracer, which rpatch left alone.
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_eq!(tracer.cmd("ping"), "pong");
    assert_eq!(
        tasks(pid).iter().find(|t| t.tid == pid).unwrap().tracer,
        tracer_tid,
        "rpatch disturbed the other tracer"
    );

    drop(tracer); // killed: the kernel detaches the target
    assert_unchanged(&mut target, state.path());
}

/// A library path that does not exist: 6.
#[test]
fn library_missing() {
    let state = state_dir();
    let mut target = basic();
    let missing = state.path().join("no-such-fix.so");
    let run = attach(
        state.path(),
        target.pid(),
        &missing,
        &["compute"],
        &["--json"],
    );
    let msg = run.expect_error(exit::LIB_MISSING);
    assert!(
        msg.contains("no-such-fix.so"),
        "the message should name the file: {msg}"
    );
    assert_unchanged(&mut target, state.path());
}

/// The PID of a kernel thread visible here (kthreadd, a kworker), if any: its stat flags hold
/// PF_KTHREAD.
fn kernel_thread() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let flags: u64 = stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(6)?
            .parse()
            .ok()?;
        (flags & 0x0020_0000 != 0).then_some(pid)
    })
}

/// Inputs are named for what they are: a directory given as the library (6, "is a directory",
/// not "writable by everyone"), a kernel thread's PID (19, "kernel thread", not "no process"),
/// an empty function or replacement name (2, usage) — and the target is left as it was.
#[test]
fn inputs_are_named_for_what_they_are() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    let pid = target.pid();
    let run = attach(
        state.path(),
        pid,
        Path::new("/tmp"),
        &["compute"],
        &["--json"],
    );
    let msg = run.expect_error(exit::LIB_MISSING);
    assert!(
        msg.contains("/tmp is a directory") && !msg.contains("writable"),
        "{msg}"
    );
    let lib = t.bin("fix_basic.so");
    let run = attach(state.path(), pid, &lib, &[""], &[]);
    run.expect_code(exit::USAGE);
    assert!(
        run.stderr.contains("a function name is needed"),
        "{}",
        run.stderr
    );
    let run = attach(state.path(), pid, &lib, &["compute="], &[]);
    run.expect_code(exit::USAGE);
    assert!(
        run.stderr.contains("a replacement name is needed"),
        "{}",
        run.stderr
    );
    match kernel_thread() {
        Some(kthread) => {
            let run = attach(state.path(), kthread, &lib, &["compute"], &["--json"]);
            let msg = run.expect_error(exit::UNSUPPORTED);
            assert!(msg.contains("is a kernel thread"), "{msg}");
            let run = rpatch(state.path(), &["status", &kthread.to_string()]);
            assert!(
                run.expect_error(exit::UNSUPPORTED)
                    .contains("kernel thread")
            );
        }
        None => eprintln!("no kernel thread visible in this PID namespace: that part skipped"),
    }
    assert_unchanged(&mut target, state.path());
}

/// A library that is a text file: 7.
#[test]
fn library_not_elf() {
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("notelf.so");
    std::fs::write(&lib, "this is not an ELF file\n").unwrap();
    let mut target = basic();
    attach(state.path(), target.pid(), &lib, &["compute"], &["--json"])
        .expect_error(exit::LIB_NOT_ELF);
    assert_unchanged(&mut target, state.path());
}

/// The 64-byte header of an ELF64 little-endian shared object for `machine`, with no program or
/// section headers.
fn elf_header(machine: u16) -> Vec<u8> {
    let mut h = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    h.extend(3u16.to_le_bytes()); // e_type: ET_DYN
    h.extend(machine.to_le_bytes()); // e_machine
    h.extend(1u32.to_le_bytes()); // e_version
    h.extend(0u64.to_le_bytes()); // e_entry
    h.extend(0u64.to_le_bytes()); // e_phoff
    h.extend(0u64.to_le_bytes()); // e_shoff
    h.extend(0u32.to_le_bytes()); // e_flags
    h.extend(64u16.to_le_bytes()); // e_ehsize
    h.extend(56u16.to_le_bytes()); // e_phentsize
    h.extend(0u16.to_le_bytes()); // e_phnum
    h.extend(64u16.to_le_bytes()); // e_shentsize
    h.extend(0u16.to_le_bytes()); // e_shnum
    h.extend(0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(h.len(), 64);
    h
}

/// An ELF library for another architecture (AArch64): 7.
#[test]
fn library_wrong_architecture() {
    const EM_AARCH64: u16 = 183;
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("arm64.so");
    std::fs::write(&lib, elf_header(EM_AARCH64)).unwrap();
    let mut target = basic();
    attach(state.path(), target.pid(), &lib, &["compute"], &["--json"])
        .expect_error(exit::LIB_NOT_ELF);
    assert_unchanged(&mut target, state.path());
}

/// dlopen fails inside the target (an undefined symbol): 8, with the dynamic loader's message
/// naming the symbol; the target runs on unchanged.
#[test]
fn dlopen_failure_reports_dlerror() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_dlopen_fail.so"),
        &["compute"],
        &["--json"],
    );
    let msg = run.expect_error(exit::DLOPEN_FAILED);
    assert!(
        msg.contains("no_such_function_xyz"),
        "the message should carry dlerror's text: {msg}"
    );
    assert!(
        run.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_function_xyz"),
        "{}",
        run.stdout
    );
    assert_unchanged(&mut target, state.path());
}

/// A misspelt function name: 9, and the message suggests the closest name.
#[test]
fn function_not_found_suggests_closest() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["compte"],
        &["--json"],
    );
    let msg = run.expect_error(exit::NOT_FOUND);
    assert!(
        msg.contains("compte"),
        "the message should repeat the name: {msg}"
    );
    assert!(
        msg.contains("compute"),
        "the message should suggest `compute`: {msg}"
    );
    let v = run.json();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("compute"),
        "{v}"
    );
    assert_unchanged(&mut target, state.path());
}

/// Two static functions with the same name in two files: 10, and the message lists both.
#[test]
fn ambiguous_name_lists_candidates() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("ambig"), &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("call 5"), "helper 5 6 7");

    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_ambig.so"),
        &["helper"],
        &["--json"],
    );
    let msg = run.expect_error(exit::AMBIGUOUS);
    // Candidates are told apart by source file (ambig_a.c / ambig_b.c) or by address.
    let by_file = msg.contains("ambig_a.c") && msg.contains("ambig_b.c");
    let mut addresses: Vec<&str> = msg
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() > 2 && w.starts_with("0x"))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert!(
        by_file || addresses.len() >= 2,
        "the message should list both candidates: {msg}"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "helper 5 6 7");
    assert_nothing_applied(state.path(), pid);
}

/// A 2-byte function cannot hold a jump: 11.
#[test]
fn function_too_small() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    assert_eq!(target.cmd("tiny 9"), "tiny 9 9");
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["tiny"],
        &["--json"],
    );
    let msg = run.expect_error(exit::UNPATCHABLE);
    assert!(
        msg.contains("tiny"),
        "the message should name the function: {msg}"
    );
    assert_eq!(target.cmd("tiny 9"), "tiny 9 9");
    assert_unchanged(&mut target, state.path());
}

/// A function whose own loop jumps back into its first 5 bytes cannot be overwritten there: 11.
#[test]
fn function_with_branch_into_patched_bytes() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    assert_eq!(target.cmd("branchy 4"), "branchy 4 12");
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["branchy"],
        &["--json"],
    );
    let msg = run.expect_error(exit::UNPATCHABLE);
    assert!(
        msg.contains("branchy"),
        "the message should name the function: {msg}"
    );
    assert_eq!(target.cmd("branchy 4"), "branchy 4 12");
    assert_unchanged(&mut target, state.path());
}

/// The library does not define the replacement: 12.
#[test]
fn replacement_missing_in_library() {
    let t = build_targets();
    let state = state_dir();
    let mut target = basic();
    let run = attach(
        state.path(),
        target.pid(),
        &t.bin("fix_empty.so"),
        &["compute"],
        &["--json"],
    );
    let msg = run.expect_error(exit::REPLACEMENT_MISSING);
    assert!(
        msg.contains("compute"),
        "the message should name the replacement: {msg}"
    );
    assert_unchanged(&mut target, state.path());

    // Likewise for a renamed replacement that does not exist.
    attach(
        state.path(),
        target.pid(),
        &t.bin("fix_basic.so"),
        &["compute=compute_v9"],
        &[],
    )
    .expect_error(exit::REPLACEMENT_MISSING);
    assert_unchanged(&mut target, state.path());
}

/// Rollback on a process that was never patched: 13.
#[test]
fn nothing_to_roll_back() {
    let state = state_dir();
    let mut target = basic();
    rollback(state.path(), target.pid(), &["--json"]).expect_error(exit::NOTHING_TO_ROLL_BACK);
    rollback(state.path(), target.pid(), &["--all"]).expect_error(exit::NOTHING_TO_ROLL_BACK);
    assert_unchanged(&mut target, state.path());
}

/// A journal left by a process of another boot that had the same PID (a state directory
/// outlives reboots, and services get the same PIDs again) does not stop an attach: it is set
/// aside, the patch applies, and the next operation deletes it (no live process runs its
/// image). Rollback and status then answer for the live process alone.
#[test]
fn attach_sets_aside_a_journal_of_another_boot() {
    let state = state_dir();
    let mut target = basic();
    let pid = target.pid();
    let stale = format!(
        r#"{{"version":1,"identity":{{"pid":{pid},"start_time":1,"boot_id":"00000000-another-boot","exe":"/usr/sbin/gone"}},"islands":[],"patches":[]}}"#
    );
    let journal = state.path().join(format!("{pid}.json"));
    std::fs::write(&journal, &stale).unwrap();

    attach_ok(
        state.path(),
        pid,
        &build_targets().bin("fix_basic.so"),
        &["compute"],
    );
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert!(
        !std::fs::read_to_string(&journal)
            .unwrap()
            .contains("another-boot"),
        "the stale journal is still the target's"
    );
    assert_eq!(status(state.path(), pid).len(), 1);
    let left: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("retired-"))
        .collect();
    assert!(
        left.is_empty(),
        "the stale journal was not pruned: {left:?}"
    );
    rollback_ok(state.path(), pid, &[]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}

/// A journal recorded for another process that had the same PID (same boot, different start
/// time): 14, and the journal is left as it was.
#[test]
fn journal_of_a_different_process() {
    let state = state_dir();
    let mut target = basic();
    let pid = target.pid();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    // The layout of src/journal (JournalData with a nested TargetIdentity, format version 1).
    let fake = format!(
        r#"{{"version":1,"identity":{{"pid":{pid},"start_time":1,"boot_id":"{}","exe":"/bin/true"}},"islands":[],"patches":[]}}"#,
        boot_id.trim()
    );
    let journal = state.path().join(format!("{pid}.json"));
    std::fs::write(&journal, &fake).unwrap();

    rollback(state.path(), pid, &["--json"]).expect_error(exit::JOURNAL_MISMATCH);
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        fake,
        "journal was changed"
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert_untraced(pid);
}
