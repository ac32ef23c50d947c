//! The program-knowledge cache (`cache/` in the state directory): a later attach of the same
//! build reads nothing it learnt before, a file changed in place is never served what was
//! learnt from its earlier content, and a cache that cannot be used or holds garbage only costs
//! time. Observed from outside: the targets' replies, `-v`, the reports and the cache files.

mod common;

use common::*;
use object::{Object, ObjectSymbol};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// The `-v` line the cache prints at the end of an operation.
fn cache_line(run: &Run) -> String {
    run.stderr
        .lines()
        .find(|l| l.contains("] cache: "))
        .unwrap_or_else(|| panic!("no cache line in -v output:\n{}", run.stderr))
        .to_string()
}

/// (known, not known, stored) from a cache line.
fn cache_counts(run: &Run) -> (u64, u64, u64) {
    let line = cache_line(run);
    let numbers: Vec<u64> = line
        .split("cache: ")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(numbers.len(), 3, "{line}");
    (numbers[0], numbers[1], numbers[2])
}

/// Attaches `lib`'s `compute` with `-v --json`, successfully.
fn attach_verbose(state: &Path, pid: u32, lib: &Path) -> Run {
    let run = attach(state, pid, lib, &["compute"], &["-v", "--json"]);
    run.expect_ok();
    run
}

/// Waits until the file's last change is old enough for the cache to store what it learns
/// from it (a file changed within a clock tick could look unchanged: the cache leaves those
/// alone for 100 ms). Polls the file's times; no other process is waited for.
fn wait_settled(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = fs::metadata(path).unwrap();
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(m.ctime().max(m.mtime()) as u64, m.ctime_nsec() as u32);
        if SystemTime::now()
            .duration_since(changed)
            .is_ok_and(|age| age > Duration::from_millis(300))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never settled",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rewrites `path` in place with `bytes` (same inode), padded with zeros to `len` bytes, and
/// gives it the modification time `mtime`: only its change time tells the new content apart.
fn rewrite_in_place(path: &Path, bytes: &[u8], len: usize, mtime: SystemTime) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.set_len(len as u64).unwrap();
    f.set_modified(mtime).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The link-time address of `name` in the ELF file at `path`.
fn symbol_value(path: &Path, name: &str) -> u64 {
    let data = fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    file.symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} not in {}", path.display()))
        .address()
}

/// The lowest address `path` is mapped at in `pid`.
fn load_base(pid: u32, path: &Path) -> u64 {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.lines()
        .filter(|l| l.ends_with(&*path.to_string_lossy()))
        .filter_map(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
        .min()
        .unwrap_or_else(|| panic!("{} not mapped in {pid}", path.display()))
}

/// The entry branch check's verdicts are kept with the module's knowledge, and only for entries
/// that may take the jump: a function whose loop branches into its first bytes is refused (11)
/// by every attach, also once everything else about the build is known, while a later attach of
/// an accepted function in another process is served from the cache and still applies.
#[test]
fn a_refused_entry_stays_refused_with_a_warm_cache() {
    let t = build_targets();
    let state = state_dir();
    let lib = t.bin("fix_basic.so");
    wait_settled(&t.bin("basic_pie"));
    wait_settled(&lib);
    for round in 0..2 {
        let mut target = Target::spawn(t.bin("basic_pie"), &[]);
        let run = attach(state.path(), target.pid(), &lib, &["branchy"], &["--json"]);
        let message = run.expect_error(exit::UNPATCHABLE);
        assert!(message.contains("branchy"), "round {round}: {message}");
        assert_eq!(target.cmd("branchy 4"), "branchy 4 12", "round {round}");
        let run = attach_verbose(state.path(), target.pid(), &lib);
        if round == 1 {
            let (known, missed, _) = cache_counts(&run);
            assert!(known >= 3 && missed == 0, "{}", cache_line(&run));
        }
        assert_eq!(target.cmd("call 5"), "compute 5 500", "round {round}");
        assert_eq!(target.cmd("branchy 4"), "branchy 4 12", "round {round}");
        assert_untraced(target.pid());
    }
}

/// A second attach of the same build, in another process, reads nothing the first one learnt:
/// every module and the library are known, and the patch works as well as the first.
#[test]
fn a_later_attach_of_the_same_build_knows_every_file() {
    let t = build_targets();
    let state = state_dir();
    let lib = t.bin("fix_basic.so");
    wait_settled(&t.bin("basic_pie"));
    wait_settled(&lib);
    let mut first = Target::spawn(t.bin("basic_pie"), &[]);
    let run = attach_verbose(state.path(), first.pid(), &lib);
    let (_, missed, stored) = cache_counts(&run);
    assert!(missed > 0 && stored > 0, "{}", cache_line(&run));
    assert_eq!(first.cmd("call 5"), "compute 5 500");

    let mut second = Target::spawn(t.bin("basic_pie"), &[]);
    let run = attach_verbose(state.path(), second.pid(), &lib);
    let (known, missed, _) = cache_counts(&run);
    assert!(known >= 3 && missed == 0, "{}", cache_line(&run));
    assert_eq!(second.cmd("call 5"), "compute 5 500");
    assert_untraced(second.pid());
    // The report says where the time went.
    let phases = run.json()["phases_us"].clone();
    for phase in [
        "identify", "plan", "load", "tables", "journal", "freeze", "settle",
    ] {
        assert!(phases[phase].is_u64(), "{phase} missing in {phases}");
    }
    // Entries are rpatch's alone.
    let dir = state.path().join("cache");
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    for entry in fs::read_dir(&dir).unwrap() {
        let m = entry.unwrap().metadata().unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
    }
    assert_eq!(rollback_ok(state.path(), second.pid(), &[]), vec![1]);
    assert_eq!(second.cmd("call 5"), "compute 5 6");
}

/// An executable rewritten in place with another build (same inode, size and modification
/// time; no build-id) is not served the entry learnt from its earlier content: the patch lands
/// on the new build's function.
#[test]
fn a_module_changed_in_place_gets_no_stale_entry() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("prog");
    let (a, b) = (t.bin("basic_code_a"), t.bin("basic_code_b"));
    let (a_bytes, b_bytes) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let len = a_bytes.len().max(b_bytes.len());
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let lib = t.bin("fix_basic.so");

    rewrite_in_place(&prog, &a_bytes, len, mtime);
    wait_settled(&prog);
    let ino = fs::metadata(&prog).unwrap().ino();
    let mut first = Target::spawn(&prog, &[]);
    let report = attach_verbose(state.path(), first.pid(), &lib).json();
    let address = hex(&report["patches"][0]["address"]);
    assert_eq!(
        address - load_base(first.pid(), &prog),
        symbol_value(&a, "compute")
    );
    assert_eq!(first.cmd("call 5"), "compute 5 500");
    drop(first);

    rewrite_in_place(&prog, &b_bytes, len, mtime);
    let m = fs::metadata(&prog).unwrap();
    assert_eq!((m.ino(), m.len()), (ino, len as u64));
    assert_eq!(m.modified().unwrap(), mtime);
    let mut second = Target::spawn(&prog, &[]);
    let run = attach_verbose(state.path(), second.pid(), &lib);
    let address = hex(&run.json()["patches"][0]["address"]);
    assert_eq!(
        address - load_base(second.pid(), &prog),
        symbol_value(&b, "compute"),
        "the patch went where the earlier build had compute"
    );
    assert_ne!(symbol_value(&a, "compute"), symbol_value(&b, "compute"));
    assert_eq!(second.cmd("call 5"), "compute 5 500");
    assert_eq!(second.cmd("count"), "count 0 0", "the original never ran");
    assert_untraced(second.pid());
}

/// A patch library rewritten in place with another library (same inode, size and modification
/// time) is loaded and resolved as what it is now, not as what the cache learnt before.
#[test]
fn a_library_changed_in_place_gets_no_stale_entry() {
    let t = build_targets();
    let state = state_dir();
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("fix.so");
    let (a_bytes, b_bytes) = (
        fs::read(t.bin("fix_basic.so")).unwrap(),
        fs::read(t.bin("fix_basic_b.so")).unwrap(),
    );
    let len = a_bytes.len().max(b_bytes.len());
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    rewrite_in_place(&lib, &a_bytes, len, mtime);
    wait_settled(&lib);
    let mut first = Target::spawn(t.bin("basic_pie"), &[]);
    attach_verbose(state.path(), first.pid(), &lib);
    assert_eq!(first.cmd("call 5"), "compute 5 500");
    drop(first);

    rewrite_in_place(&lib, &b_bytes, len, mtime);
    let mut second = Target::spawn(t.bin("basic_pie"), &[]);
    attach_verbose(state.path(), second.pid(), &lib);
    assert_eq!(second.cmd("call 5"), "compute 5 35");
    assert_untraced(second.pid());
}

/// A cache directory that cannot be made (a file is in its place) only costs time: attach and
/// rollback work, and `-v` says the cache was not used.
#[test]
fn an_unusable_cache_only_costs_time() {
    let t = build_targets();
    let state = state_dir();
    File::create(state.path().join("cache")).unwrap();
    let mut target = Target::spawn(t.bin("basic_pie"), &[]);
    let run = attach_verbose(state.path(), target.pid(), &t.bin("fix_basic.so"));
    assert!(
        cache_line(&run).contains("not used"),
        "{}",
        cache_line(&run)
    );
    assert_eq!(target.cmd("call 5"), "compute 5 500");
    assert_eq!(rollback_ok(state.path(), target.pid(), &[]), vec![1]);
    assert_eq!(target.cmd("call 5"), "compute 5 6");
    assert!(state.path().join("cache").is_file());
}

/// Entries overwritten with garbage are read as misses and written anew; the attach works.
#[test]
fn corrupt_entries_are_rewritten() {
    let t = build_targets();
    let state = state_dir();
    let lib = t.bin("fix_basic.so");
    wait_settled(&t.bin("basic_pie"));
    wait_settled(&lib);
    let first = Target::spawn(t.bin("basic_pie"), &[]);
    attach_verbose(state.path(), first.pid(), &lib);
    drop(first);
    let dir = state.path().join("cache");
    let entries: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!entries.is_empty());
    for path in &entries {
        fs::write(path, b"{\"format\":1,\"key\":\"truncated").unwrap();
    }
    let mut second = Target::spawn(t.bin("basic_pie"), &[]);
    let run = attach_verbose(state.path(), second.pid(), &lib);
    let (known, missed, stored) = cache_counts(&run);
    assert!(
        known == 0 && missed > 0 && stored > 0,
        "{}",
        cache_line(&run)
    );
    assert_eq!(second.cmd("call 5"), "compute 5 500");
    for path in &entries {
        let text = fs::read_to_string(path).unwrap();
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or_else(|e| panic!("{} still corrupt: {e}", path.display()));
    }
}
