//! Patches that use the target's private state: a patch library may leave references to the
//! target's non-exported globals, statics and functions undefined, and rpatch binds them to the
//! live objects (a generated shim of absolute symbols, loaded with RTLD_GLOBAL first). Observed
//! from outside: the patched function changes the target's own variables, which its unpatched
//! code then prints.

mod common;

use common::*;
use object::{Object, ObjectSymbol};
use std::path::Path;

/// Names `path` exports in `.dynsym` (defined there).
fn exported(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.dynamic_symbols()
        .filter(|s| !s.is_undefined())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect()
}

/// Library copies (sealed memfds, by inode) rpatch loaded into the process.
fn loaded_copies(pid: u32) -> usize {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let inodes: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter(|l| l.contains("/memfd:rpatch:"))
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.len()
}

/// C: `fix_private.so`'s `bump` adds to `extern int counter` (a plain global of the target) and
/// `extern int hidden` (a `static` of the target), neither exported, by `scaled(100)`, a
/// `static` function of the target the patch calls. After the attach the
/// target's own `show` sees the patch's increments: the patch wrote the target's variables, not
/// copies. Rollback restores the original bump, with the state kept; a second attach (same
/// library, same shim) binds again.
#[test]
fn c_patch_writes_the_targets_own_private_globals() {
    let t = build_targets();
    let state = state_dir();
    let binary = t.bin("private");
    let names = exported(&binary);
    assert!(
        !names.iter().any(|n| n == "counter" || n == "hidden"),
        "the target must not export its globals: {names:?}"
    );
    let mut target = Target::spawn(&binary, &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("bump"), "bump 1 1");

    // The plan names every binding before anything is touched.
    let plan = attach(
        state.path(),
        pid,
        &t.bin("fix_private.so"),
        &["bump"],
        &["--dry-run", "--json"],
    );
    plan.expect_ok();
    let json = plan.json();
    let bound: Vec<&str> = json["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(
        bound.contains(&"counter") && bound.contains(&"hidden"),
        "{bound:?}"
    );
    assert_eq!(
        target.cmd("show"),
        "counters 1 1",
        "a dry run changes nothing"
    );

    attach_ok(state.path(), pid, &t.bin("fix_private.so"), &["bump"]);
    assert_untraced(pid);
    assert_eq!(
        loaded_copies(pid),
        2,
        "the patch library and its binding shim"
    );
    assert_eq!(target.cmd("bump"), "bump 101 1001");
    assert_eq!(target.cmd("show"), "counters 101 1001");
    assert_eq!(target.cmd("bump"), "bump 201 2001");

    assert_eq!(rollback_ok(state.path(), pid, &[]), vec![1]);
    assert_eq!(target.cmd("bump"), "bump 202 2002");

    attach_ok(state.path(), pid, &t.bin("fix_private.so"), &["bump"]);
    assert_eq!(target.cmd("bump"), "bump 302 3002");
    assert_eq!(target.cmd("show"), "counters 302 3002");
    assert_eq!(loaded_copies(pid), 2, "same contents, same copies");
    assert_untraced(pid);
}

/// Rust: `counterapp-fix`'s `tick` adds to the target's private
/// `static COUNTER: AtomicU64`, declared in the patch as an `extern "Rust"` static whose
/// `#[link_name]` is the path without hash (`counterapp::state::COUNTER`). The target's own
/// `show` sees the increments.
#[test]
fn rust_patch_updates_the_targets_private_static() {
    let t = build_targets();
    let state = state_dir();
    let binary = t.rust.join("counterapp");
    assert!(
        !exported(&binary).iter().any(|n| n.contains("COUNTER")),
        "the target must not export COUNTER"
    );
    let mut target = Target::spawn(&binary, &[]);
    let pid = target.pid();
    assert_eq!(target.cmd("tick 2"), "tick 2 2");

    attach_ok(
        state.path(),
        pid,
        &t.rust.join("libcounterapp.so"),
        &["counterapp::state::tick"],
    );
    assert_untraced(pid);
    assert_eq!(target.cmd("tick 3"), "tick 3 302");
    assert_eq!(target.cmd("show"), "counter 302");
    assert_eq!(target.cmd("tick 1"), "tick 1 402");
    assert_untraced(pid);
}

/// A reference that names two different private symbols of the target (ambig's two
/// `static int helper`) is refused before anything is loaded: rpatch does not guess.
#[test]
fn an_ambiguous_private_reference_is_refused() {
    let t = build_targets();
    let state = state_dir();
    let mut target = Target::spawn(t.bin("ambig"), &[]);
    let pid = target.pid();
    let run = attach(
        state.path(),
        pid,
        &t.bin("fix_private_ambig.so"),
        &["call_a"],
        &[],
    );
    let message = run.expect_error(exit::LIB_NOT_ELF);
    assert!(
        message.contains("helper") && message.contains("2 different private symbols"),
        "{message}"
    );
    assert_nothing_applied(state.path(), pid);
    assert_eq!(target.cmd("call 1"), "helper 1 2 3");
    assert_untraced(pid);
}
