//! `rpatch resolve`: every function matching an exact name, a glob or a substring, with its
//! address, size, file:line, signature, generic instance flag, clones and every place it was
//! inlined, on C, C++ and Rust targets, by file and in a running process.

mod common;

use common::*;
use std::path::Path;

/// `rpatch resolve ARGS... --json`, asserted successful; the JSON report.
#[track_caller]
fn resolve_json(args: &[&str]) -> Value {
    let state = state_dir();
    let mut all: Vec<&str> = vec!["resolve"];
    all.extend_from_slice(args);
    all.push("--json");
    let run = rpatch(state.path(), &all);
    run.expect_ok();
    run.json()
}

/// `rpatch resolve --exe PATH PATTERN --json`.
#[track_caller]
fn resolve_exe(path: &Path, pattern: &str) -> Value {
    resolve_json(&["--exe", path.to_str().unwrap(), pattern])
}

/// The matches' names, in report order.
fn names(v: &Value) -> Vec<String> {
    v["matches"]
        .as_array()
        .unwrap_or_else(|| panic!("no matches in {v}"))
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// The one match named `name`.
#[track_caller]
fn find<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("{name} not among the matches of {v}"))
}

/// 1-based line of the first line of `file` (under test-targets/) containing `needle`.
fn line_of(file: &str, needle: &str) -> usize {
    let text = std::fs::read_to_string(repo_root().join("test-targets").join(file)).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in {file}"))
        + 1
}

/// (caller, location) of every inlined site of a match.
fn sites(m: &Value) -> Vec<(String, String)> {
    m["inlined"]
        .as_array()
        .unwrap_or_else(|| panic!("no inlined list in {m}"))
        .iter()
        .map(|s| {
            (
                s["caller"].as_str().unwrap().to_string(),
                s["location"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// C, exact name: `scale` is found with the symbol table's address and size, its definition's
/// file:line and signature, and both functions it was inlined into, each with the call's
/// file:line; it is not a generic instance.
#[test]
fn c_exact_name_lists_inlined_sites() {
    let t = build_targets();
    let v = resolve_exe(&t.bin("inl"), "scale");
    assert_eq!(v["match_kind"], "exact", "{v}");
    assert_eq!(names(&v), ["scale"]);
    let m = find(&v, "scale");
    assert_eq!(m["symbol"], "scale");
    assert!(m["size"].as_u64().unwrap() >= 5, "{m}");
    assert_eq!(
        m["address"], m["file_address"],
        "--exe gives link-time addresses: {m}"
    );
    assert_eq!(m["generic"], false);
    let def = line_of("c/inl.c", "inline int scale(int x)");
    assert!(
        m["location"]
            .as_str()
            .unwrap()
            .ends_with(&format!("inl.c:{def}")),
        "{m}"
    );
    assert_eq!(m["signature_text"], "(x: int [4]) -> int [4]", "{m}");
    let a = line_of("c/inl.c", "int caller_a(int x)");
    let b = line_of("c/inl.c", "int caller_b(int x)");
    let s = sites(m);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].0, "caller_a");
    assert!(s[0].1.ends_with(&format!("inl.c:{a}")), "{s:?}");
    assert_eq!(s[1].0, "caller_b");
    assert!(s[1].1.ends_with(&format!("inl.c:{b}")), "{s:?}");

    // The human-readable form says the same.
    let state = state_dir();
    let run = rpatch(
        state.path(),
        &["resolve", "--exe", t.bin("inl").to_str().unwrap(), "scale"],
    );
    run.expect_ok();
    assert!(run.stdout.contains("into caller_a at "), "{}", run.stdout);
    assert!(run.stdout.contains("into caller_b at "), "{}", run.stdout);
}

/// C with link-time optimisation: `scale` (lto_scale.c) was inlined into `caller_across`
/// (lto_main.c), a copy whose DWARF sits in a unit of the link step that refers across units to
/// scale's: the scan of every unit finds it, and the signature is read where scale's parameters
/// are declared.
#[test]
fn lto_copy_inlined_in_another_unit_is_found() {
    let t = build_targets();
    let v = resolve_exe(&t.bin("lto"), "scale");
    let m = find(&v, "scale");
    assert_eq!(m["signature_text"], "(x: int [4]) -> int [4]", "{m}");
    let s = sites(m);
    let call = line_of("c/lto_main.c", "int caller_across(int x)");
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].0, "caller_across");
    assert!(s[0].1.ends_with(&format!("lto_main.c:{call}")), "{s:?}");
}

/// C, glob and substring: `caller_*` and `ller_` find the six callers; a function that exists
/// only inlined (`offset_of`) is listed apart with the two callers holding it; `mul_add` lists
/// its compiler clone `mul_add.constprop.0`.
#[test]
fn c_glob_substring_inlined_only_and_clones() {
    let t = build_targets();
    let inl = t.bin("inl");
    let callers = [
        "caller_a", "caller_b", "caller_c", "caller_d", "caller_k", "caller_v",
    ];
    for (pattern, kind) in [("caller_*", "glob"), ("ller_", "substring")] {
        let v = resolve_exe(&inl, pattern);
        assert_eq!(v["match_kind"], kind, "{v}");
        let mut n = names(&v);
        n.sort();
        assert_eq!(n, callers, "{pattern}: {v}");
    }

    let v = resolve_exe(&inl, "offset_of");
    assert_eq!(names(&v), Vec::<String>::new(), "no out-of-line copy: {v}");
    let only = &v["inlined_only"][0];
    assert_eq!(only["name"], "offset_of", "{v}");
    let callers: Vec<&str> = only["inlined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["caller"].as_str().unwrap())
        .collect();
    assert_eq!(callers, ["caller_c", "caller_d"], "{v}");

    let v = resolve_exe(&inl, "mul_add");
    let m = find(&v, "mul_add");
    let clones = m["clones"].as_array().unwrap();
    assert!(
        clones
            .iter()
            .any(|c| c["symbol"] == "mul_add.constprop.0" && c["kind"] == "constprop"),
        "{m}"
    );
}

/// C++: by qualified path, by glob over the class segment and by substring, the method is
/// found with its demangled name, symbol, location and signature (`this` included).
#[test]
fn cpp_path_glob_substring() {
    let t = build_targets();
    let bin = t.bin("cpp_calc");
    for (pattern, kind) in [
        ("ns::Calc::method", "exact"),
        ("ns::*::method", "glob"),
        ("Calc::meth", "substring"),
    ] {
        let v = resolve_exe(&bin, pattern);
        assert_eq!(v["match_kind"], kind, "{pattern}: {v}");
        let m = find(&v, "ns::Calc::method(int)");
        assert_eq!(m["symbol"], "_ZN2ns4Calc6methodEi", "{m}");
        let line = line_of("cpp/calc.cpp", "int Calc::method(int x)");
        let location = m["location"].as_str().unwrap();
        assert!(location.ends_with(&format!("calc.cpp:{line}")), "{m}");
        let sig = m["signature_text"].as_str().unwrap();
        assert!(
            sig.starts_with("(this: ") && sig.ends_with(", x: int [4]) -> int [4]"),
            "{m}"
        );
        assert_eq!(m["inlined"], serde_json::json!([]), "{m}");
    }
}

/// Rust: `calcapp::pricing::calc` by path, `crate::*::calc` by glob and `pricing::ca` by
/// substring; in calcgen, each instance of the generic `widen` is flagged generic with its own
/// signature, and the `#[inline(always)]` helper `bonus` is listed with both functions it
/// was inlined into.
#[test]
fn rust_path_glob_substring_generics_and_inlining() {
    let t = build_targets();
    for (pattern, kind) in [
        ("calcapp::pricing::calc", "exact"),
        ("crate::*::calc", "glob"),
        ("pricing::ca", "substring"),
    ] {
        let v = resolve_exe(&t.calcapp(), pattern);
        assert_eq!(v["match_kind"], kind, "{pattern}: {v}");
        assert_eq!(names(&v), ["calcapp::pricing::calc"], "{pattern}: {v}");
        let m = find(&v, "calcapp::pricing::calc");
        assert!(
            m["symbol"]
                .as_str()
                .unwrap()
                .starts_with("_ZN7calcapp7pricing4calc"),
            "{m}"
        );
        assert_eq!(m["size"], 5, "{m}");
        assert_eq!(m["signature_text"], "(x: u64 [8]) -> u64 [8]", "{m}");
        assert_eq!(m["generic"], false, "{m}");
        let line = line_of("rust/calcapp/src/main.rs", "pub fn calc(x: u64)");
        assert!(
            m["location"]
                .as_str()
                .unwrap()
                .ends_with(&format!("main.rs:{line}")),
            "{m}"
        );
    }

    let calcgen = t.rust.join("calcgen");
    let v = resolve_exe(&calcgen, "calcgen::calc::widen");
    let mut n = names(&v);
    n.sort();
    assert_eq!(
        n,
        ["calcgen::calc::widen::<u32>", "calcgen::calc::widen::<u64>"],
        "{v}"
    );
    let u32_instance = find(&v, "calcgen::calc::widen::<u32>");
    assert_eq!(u32_instance["generic"], true, "{v}");
    assert_eq!(u32_instance["signature_text"], "(x: u32 [4]) -> u64 [8]");
    let u64_instance = find(&v, "calcgen::calc::widen::<u64>");
    assert_eq!(u64_instance["signature_text"], "(x: u64 [8]) -> u64 [8]");

    let v = resolve_exe(&calcgen, "calcgen::calc::bonus");
    let only = &v["inlined_only"][0];
    assert_eq!(only["name"], "calcgen::calc::bonus", "{v}");
    let mut callers: Vec<&str> = only["inlined"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["caller"].as_str().unwrap())
        .collect();
    callers.sort();
    assert_eq!(
        callers,
        ["calcgen::calc::left", "calcgen::calc::right"],
        "{v}"
    );
    for s in only["inlined"].as_array().unwrap() {
        assert!(
            s["location"]
                .as_str()
                .unwrap()
                .contains("calcgen/src/main.rs:"),
            "{s}"
        );
    }
}

/// With a PID every mapped module is searched and addresses are the runtime ones: a function
/// of the executable (PIE, so its address is the file's plus the load bias) and one of a
/// shared library it loaded, each inside its module's mapping.
#[test]
fn pid_searches_every_module_with_runtime_addresses() {
    let t = build_targets();
    let mut target = Target::spawn(t.bin("uses_lib"), &[]);
    let pid = target.pid_arg();
    assert_eq!(target.cmd("call 5"), "lib_compute 5 8");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mapped = |module: &str, address: u64| {
        maps.lines().any(|l| {
            let mut f = l.split_whitespace();
            let range = f.next().unwrap();
            let path = l.split_whitespace().nth(5).unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap();
            let (lo, hi) = (
                u64::from_str_radix(lo, 16).unwrap(),
                u64::from_str_radix(hi, 16).unwrap(),
            );
            path.ends_with(module) && (lo..hi).contains(&address)
        })
    };

    let v = resolve_json(&[&pid, "lib_compute"]);
    assert_eq!(v["pid"].as_i64(), Some(i64::from(target.pid() as i32)));
    let m = find(&v, "lib_compute");
    assert!(
        m["module"].as_str().unwrap().ends_with("libvictim.so"),
        "{m}"
    );
    let address = hex(&m["address"]);
    assert_ne!(
        address,
        hex(&m["file_address"]),
        "a library runs at a bias: {m}"
    );
    assert!(
        mapped("libvictim.so", address),
        "{address:#x} not in libvictim.so:\n{maps}"
    );

    let v = resolve_json(&[&pid, "main"]);
    let m = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"].as_str().unwrap().ends_with("uses_lib"))
        .unwrap_or_else(|| panic!("main of uses_lib not found: {v}"));
    assert!(mapped("uses_lib", hex(&m["address"])), "{m}\n{maps}");
    assert_eq!(
        target.cmd("call 6"),
        "lib_compute 6 9",
        "resolve touches nothing"
    );
    assert_untraced(target.pid());
}

/// Nothing matching is exit 9 with suggestions; a bad argument list is a usage error (2).
#[test]
fn no_match_and_usage_errors() {
    let t = build_targets();
    let state = state_dir();
    let inl = t.bin("inl");
    let run = rpatch(
        state.path(),
        &["resolve", "--exe", inl.to_str().unwrap(), "scael", "--json"],
    );
    let message = run.expect_error(exit::NOT_FOUND);
    assert!(message.contains("scale"), "suggests scale: {message}");

    let run = rpatch(
        state.path(),
        &["resolve", "--exe", inl.to_str().unwrap(), "1", "scale"],
    );
    run.expect_code(exit::USAGE);
    let run = rpatch(state.path(), &["resolve", "scale"]);
    run.expect_code(exit::USAGE);
    let run = rpatch(state.path(), &["resolve", &dead_pid().to_string(), "scale"]);
    run.expect_error(exit::NO_SUCH_PROCESS);
}
