//! Tests of the symbols layer against tiny C, C++ and Rust programs compiled at test time.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection, ObjectSymbol};

use super::*;

const C_SOURCE: &str = r#"#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) int compute(int x) {
    return x * 7 + (x >> 2) - 3;
}

__attribute__((noinline)) static int helper(int x) {
    return compute(x) ^ 0x55;
}

int main(int argc, char **argv) {
    printf("%d\n", helper(argc) + compute(atoi(argc > 1 ? argv[1] : "3")));
    return 0;
}
"#;

const CPP_SOURCE: &str = r#"#include <cstdio>
namespace {
__attribute__((noinline)) int hidden(int x) { return x * 9; }
}

namespace ns {
template <typename T> __attribute__((noinline)) T twice(T x) { return x + x; }

struct Calc {
    int k;
    int method(int x);
    int over(int x) const;
    int over(double x) const;
    bool operator()(int x) const;
};

__attribute__((noinline)) int Calc::method(int x) {
    return k * x + 1;
}

__attribute__((noinline)) int Calc::over(int x) const {
    return k + x;
}

__attribute__((noinline)) int Calc::over(double x) const {
    return k + (int)(x * 2.0);
}

__attribute__((noinline)) bool Calc::operator()(int x) const {
    return x > k;
}
}

int main(int argc, char **) {
    ns::Calc c{argc};
    std::printf("%d %d %d %d\n", c.method(argc), c.over(argc), c.over(0.5 * argc), (int)c(argc));
    std::printf("%d %d %f\n", hidden(argc), ns::twice(argc), ns::twice(0.5 * argc));
    return 0;
}
"#;

const RUST_BIN_SOURCE: &str = r#"mod pricing {
    #[inline(never)]
    pub fn calc(x: u64) -> u64 {
        x.wrapping_mul(3) + 1
    }

    pub struct Pricer {
        pub k: u64,
    }

    impl Pricer {
        #[inline(never)]
        pub fn price(&self, x: u64) -> u64 {
            self.k * x + 7
        }
    }

    impl std::fmt::Display for Pricer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "P{}", self.k)
        }
    }

    #[inline(never)]
    pub fn scale<T: Into<u64>>(x: T) -> u64 {
        x.into() * 2
    }
}

fn main() {
    let a = std::env::args().count() as u64;
    let p = pricing::Pricer { k: a };
    println!(
        "{} {} {} {} {}",
        pricing::calc(a),
        p.price(a),
        p,
        pricing::scale(a as u32),
        pricing::scale(a as u16)
    );
}
"#;

const RUST_CDYLIB_SOURCE: &str = r#"mod pricing {
    #[unsafe(no_mangle)]
    pub fn calc(x: u64) -> u64 {
        x * 5 + 2
    }
}
"#;

/// Runs a compiler command, panicking with its stderr if it fails.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `source` as `name` in `dir` and returns its path.
fn write_source(dir: &Path, name: &str, source: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}

/// Compiles C_SOURCE with gcc and the given extra flags.
fn build_c(dir: &Path, out: &str, flags: &[&str]) -> PathBuf {
    let src = write_source(dir, "prog.c", C_SOURCE);
    let bin = dir.join(out);
    run(Command::new("gcc")
        .args(flags)
        .arg(&src)
        .arg("-o")
        .arg(&bin));
    bin
}

/// Line (1-based) of the first line of `source` containing `needle`.
fn line_of(source: &str, needle: &str) -> usize {
    source.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// The symbol table's (address, size) of `name`, read independently with `object`.
fn symtab_entry(bin: &Path, name: &str) -> (u64, u64) {
    let data = std::fs::read(bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} not in symtab"));
    (sym.address(), sym.size())
}

fn expect_found(index: &SymbolIndex, query: &str) -> FunctionSymbol {
    match index.resolve(query) {
        Resolution::Found(f) => f,
        other => panic!("{query}: expected Found, got {other:?}"),
    }
}

/// A C function is found with the symbol table's address and size and its definition's
/// file:line, in a PIE and in a non-PIE executable, with DWARF 5 and DWARF 4.
#[test]
fn c_function_pie_and_no_pie() {
    let dir = tempfile::tempdir().unwrap();
    let line = line_of(C_SOURCE, "int compute(");
    for (out, flags, pie) in [
        ("pie", &["-g", "-O1", "-fPIE", "-pie"][..], true),
        ("nopie", &["-g", "-O1", "-fno-pie", "-no-pie"][..], false),
        ("dwarf4", &["-gdwarf-4", "-O1"][..], true),
    ] {
        let bin = build_c(dir.path(), out, flags);
        let index = SymbolIndex::open(&bin).unwrap();
        assert_eq!(index.is_position_independent(), pie, "{out}");
        assert_eq!(index.architecture(), object::Architecture::X86_64);
        assert!(index.build_id().is_some_and(|id| !id.is_empty()), "{out}");
        assert!(index.load_segments().iter().any(|s| s.executable));
        let f = expect_found(&index, "compute");
        let (address, size) = symtab_entry(&bin, "compute");
        assert_eq!((f.address, f.size), (address, size), "{out}");
        assert_eq!(f.name, "compute");
        assert_eq!(f.linkage_name.as_deref(), Some("compute"));
        let location = f.location.expect("location");
        assert!(
            location.ends_with(&format!("prog.c:{line}")),
            "{out}: {location}"
        );
    }
}

/// A `static` C function (a local symbol) resolves, with its own location.
#[test]
fn c_static_function() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1"]);
    let index = SymbolIndex::open(&bin).unwrap();
    let f = expect_found(&index, "helper");
    assert_eq!(f.address, symtab_entry(&bin, "helper").0);
    assert!(f.size > 0);
    let line = line_of(C_SOURCE, "static int helper(");
    assert!(f.location.unwrap().ends_with(&format!("prog.c:{line}")));
}

/// Compressed debug sections (SHF_COMPRESSED) are inflated and used for locations.
#[test]
fn c_compressed_debug_sections() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1", "-gz=zlib"]);
    let data = std::fs::read(&bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let info = file.section_by_name(".debug_info").unwrap();
    assert_ne!(
        info.compressed_file_range().unwrap().format,
        object::CompressionFormat::None,
        "gcc did not compress"
    );
    let index = SymbolIndex::open(&bin).unwrap();
    let f = expect_found(&index, "compute");
    let line = line_of(C_SOURCE, "int compute(");
    assert!(f.location.unwrap().ends_with(&format!("prog.c:{line}")));
}

/// A stripped binary works from `.dynsym` alone (exported with -rdynamic), without location.
#[test]
fn stripped_binary_uses_dynsym() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1", "-rdynamic"]);
    run(Command::new("strip").arg(&bin));
    let index = SymbolIndex::open(&bin).unwrap();
    let f = expect_found(&index, "compute");
    assert!(f.size > 0);
    assert_eq!(f.location, None);
    assert!(matches!(
        index.resolve("helper"),
        Resolution::NotFound { .. }
    ));
}

/// A misspelt name is NotFound with the real name among the suggestions, first.
#[test]
fn not_found_suggests_close_names() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1"]);
    let index = SymbolIndex::open(&bin).unwrap();
    match index.resolve("compte") {
        Resolution::NotFound { suggestions } => {
            assert_eq!(suggestions.first().map(String::as_str), Some("compute"));
            assert!(suggestions.len() <= 5);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// `function_containing` names the function around an address inside its body, and nothing
/// for an address outside any function.
#[test]
fn function_containing_names_function() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1"]);
    let index = SymbolIndex::open(&bin).unwrap();
    let (address, size) = symtab_entry(&bin, "compute");
    let f = index.function_containing(address + size / 2).unwrap();
    assert_eq!(
        (f.name.as_str(), f.address, f.size),
        ("compute", address, size)
    );
    assert!(f.location.is_some());
    assert!(index.function_containing(0).is_none());
}

/// `file_bytes` returns the bytes stored in the file for a function (as the `.text` section
/// holds them), and None for a range not backed by the file.
#[test]
fn file_bytes_match_section_data() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1"]);
    let index = SymbolIndex::open(&bin).unwrap();
    let (address, size) = symtab_entry(&bin, "compute");
    let data = std::fs::read(&bin).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let text = file.section_by_name(".text").unwrap();
    let start = (address - text.address()) as usize;
    let expected = &text.data().unwrap()[start..start + size as usize];
    assert_eq!(
        index.file_bytes(address, size as usize).as_deref(),
        Some(expected)
    );
    assert_eq!(index.file_bytes(u64::MAX - 4, 8), None);
}

/// C++: a method resolves by qualified name and by demangled signature, an overloaded
/// name is Ambiguous with both overloads (each with a location), an operator resolves, an
/// anonymous-namespace function resolves by its bare name, template instances by arguments.
#[test]
fn cpp_methods_and_overloads() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_source(dir.path(), "calc.cpp", CPP_SOURCE);
    let bin = dir.path().join("calc");
    run(Command::new("g++")
        .args(["-g", "-O1"])
        .arg(&src)
        .arg("-o")
        .arg(&bin));
    let index = SymbolIndex::open(&bin).unwrap();

    let by_name = expect_found(&index, "ns::Calc::method");
    let by_signature = expect_found(&index, "ns::Calc::method(int)");
    let by_linkage = expect_found(&index, "_ZN2ns4Calc6methodEi");
    assert_eq!(by_name, by_signature);
    assert_eq!(by_name, by_linkage);
    assert_eq!(by_name.name, "ns::Calc::method(int)");
    assert_eq!(
        by_name.linkage_name.as_deref(),
        Some("_ZN2ns4Calc6methodEi")
    );
    assert_eq!(
        (by_name.address, by_name.size),
        symtab_entry(&bin, "_ZN2ns4Calc6methodEi")
    );
    let line = line_of(CPP_SOURCE, "int Calc::method(int x) {");
    assert!(
        by_name
            .location
            .as_deref()
            .unwrap()
            .ends_with(&format!("calc.cpp:{line}")),
        "{:?}",
        by_name.location
    );

    match index.resolve("ns::Calc::over") {
        Resolution::Ambiguous(all) => {
            assert_eq!(all.len(), 2, "{all:?}");
            assert!(all[0].address < all[1].address);
            assert!(all.iter().all(|f| f.location.is_some()));
            let mut names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                ["ns::Calc::over(double) const", "ns::Calc::over(int) const"]
            );
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    let one = expect_found(&index, "ns::Calc::over(double) const");
    assert_eq!(one.name, "ns::Calc::over(double) const");
    // The method's `const` may be left out, as people type a call: it matches when no other
    // overload has that parameter list, and is shown with its qualifier.
    let unqualified = expect_found(&index, "ns::Calc::over(double)");
    assert_eq!(unqualified, one);
    // A mistyped method suggests the methods of the class typed first.
    match index.resolve("ns::Calc::ovr(int)") {
        Resolution::NotFound { suggestions } => {
            assert!(
                suggestions
                    .first()
                    .is_some_and(|s| s.starts_with("ns::Calc::over(")),
                "{suggestions:?}"
            );
        }
        other => panic!("expected NotFound, got {other:?}"),
    }

    let call = expect_found(&index, "ns::Calc::operator()");
    assert_eq!(call.name, "ns::Calc::operator()(int) const");

    // Anonymous-namespace functions are file-local, typed like C statics.
    let hidden = expect_found(&index, "(anonymous namespace)::hidden");
    assert_eq!(hidden, expect_found(&index, "hidden"));
    assert_eq!(hidden.name, "(anonymous namespace)::hidden(int)");

    // Template instances match only with their arguments; the bare name suggests them.
    let twice = expect_found(&index, "ns::twice<int>");
    assert_eq!(twice.name, "ns::twice<int>(int)");
    match index.resolve("ns::twice") {
        Resolution::NotFound { suggestions } => {
            for instance in ["ns::twice<int>(int)", "ns::twice<double>(double)"] {
                assert!(suggestions.iter().any(|s| s == instance), "{suggestions:?}");
            }
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Rust binary, legacy and v0 mangling, DWARF 4 and 5: a module function resolves by crate path and by
/// `crate::` path, an inherent method by `Type::method` (also shown so under v0), a trait
/// method by `<Type as Trait>::method`, generic instances by turbofish; the bare generic path
/// is Ambiguous under legacy mangling (which drops generic arguments) and NotFound under v0,
/// suggesting the instances.
#[test]
fn rust_binary_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_source(dir.path(), "calc.rs", RUST_BIN_SOURCE);
    // The default mangling (legacy today; explicit `legacy` needs a nightly flag), v0, and
    // DWARF 5 (string-offset and address-index forms) for the crate's own units.
    for (name, flags) in [
        ("default", &[][..]),
        ("v0", &["-Csymbol-mangling-version=v0"][..]),
        ("dwarf5", &["-Cdwarf-version=5"][..]),
    ] {
        let bin = dir.path().join(format!("calcbin-{name}"));
        run(Command::new("rustc")
            .args(["--crate-name", "calcapp", "-g", "-C", "opt-level=1"])
            .args(flags)
            .arg(&src)
            .arg("-o")
            .arg(&bin));
        check_rust_binary(&SymbolIndex::open(&bin).unwrap());
    }
}

fn check_rust_binary(index: &SymbolIndex) {
    let calc = expect_found(index, "calcapp::pricing::calc");
    assert_eq!(calc.name, "calcapp::pricing::calc");
    let linkage = calc.linkage_name.clone().unwrap();
    let mangling = if linkage.starts_with("_ZN7calcapp7pricing4calc") {
        "legacy"
    } else {
        assert!(linkage.starts_with("_R"), "{linkage}");
        "v0"
    };
    assert!(calc.size > 0);
    let line = line_of(RUST_BIN_SOURCE, "pub fn calc(");
    let location = calc.location.clone().unwrap();
    assert!(location.ends_with(&format!("calc.rs:{line}")), "{location}");
    assert_eq!(expect_found(index, "crate::pricing::calc"), calc);
    assert_eq!(expect_found(index, &linkage), calc);

    let price = expect_found(index, "calcapp::pricing::Pricer::price");
    assert_eq!(price.name, "calcapp::pricing::Pricer::price", "{mangling}");
    let line = line_of(RUST_BIN_SOURCE, "pub fn price(");
    assert!(
        price
            .location
            .unwrap()
            .ends_with(&format!("calc.rs:{line}"))
    );

    let fmt = expect_found(
        index,
        "<calcapp::pricing::Pricer as core::fmt::Display>::fmt",
    );
    assert_eq!(
        fmt.name,
        "<calcapp::pricing::Pricer as core::fmt::Display>::fmt"
    );

    let u32_instance = expect_found(index, "calcapp::pricing::scale::<u32>");
    let u16_instance = expect_found(index, "calcapp::pricing::scale::<u16>");
    assert_ne!(u32_instance.address, u16_instance.address);
    assert_eq!(u32_instance.name, "calcapp::pricing::scale::<u32>");
    match (mangling, index.resolve("calcapp::pricing::scale")) {
        ("legacy", Resolution::Ambiguous(all)) => {
            let mut names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                [
                    "calcapp::pricing::scale::<u16>",
                    "calcapp::pricing::scale::<u32>"
                ]
            );
        }
        ("v0", Resolution::NotFound { suggestions }) => {
            assert!(suggestions.contains(&"calcapp::pricing::scale::<u32>".to_string()));
        }
        (_, other) => panic!("{mangling}: unexpected {other:?}"),
    }

    let inside = index.function_containing(calc.address + 1).unwrap();
    assert_eq!(inside.name, "calcapp::pricing::calc");
}

/// Rust cdylib: a `#[no_mangle]` function in a module resolves by its symbol and by its
/// DWARF path, and is shown under the path.
#[test]
fn rust_cdylib_no_mangle() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_source(dir.path(), "lib.rs", RUST_CDYLIB_SOURCE);
    let lib = dir.path().join("libcalc.so");
    run(Command::new("rustc")
        .args([
            "--crate-type",
            "cdylib",
            "--crate-name",
            "calcapp",
            "-g",
            "--edition",
            "2024",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&lib));
    let index = SymbolIndex::open(&lib).unwrap();
    assert!(index.is_position_independent());
    let by_path = expect_found(&index, "calcapp::pricing::calc");
    let by_symbol = expect_found(&index, "calc");
    let by_crate = expect_found(&index, "crate::pricing::calc");
    assert_eq!(by_path, by_symbol);
    assert_eq!(by_path, by_crate);
    assert_eq!(by_path.name, "calcapp::pricing::calc");
    assert_eq!(by_path.linkage_name.as_deref(), Some("calc"));
    assert_eq!((by_path.address, by_path.size), symtab_entry(&lib, "calc"));
    assert_eq!(index.symbol_address("calc"), Some(by_path.address));
}

/// The system libc exports the functions rpatch injects calls to, at their default version.
#[test]
fn libc_symbol_addresses() {
    // The glibc this test process runs on, found as rpatch finds a target's.
    let pid = std::process::id() as i32;
    let maps = crate::process::read_maps(pid).unwrap();
    let me = crate::process::ModuleMap::new(pid, &maps, &std::env::current_exe().unwrap());
    let Some(libc) = me
        .c_library()
        .filter(|m| m.runtime() == Some(crate::process::Runtime::CLibrary))
    else {
        eprintln!("skipping: not running on glibc");
        return;
    };
    let index = SymbolIndex::open(&libc.path).unwrap();
    assert!(index.is_position_independent());
    for name in ["dlopen", "dlerror", "mmap", "__errno_location", "malloc"] {
        assert!(index.symbol_address(name).is_some(), "{name}");
    }
    assert_eq!(index.symbol_address("no_such_symbol_here"), None);
    // dlopen has a default version (GLIBC_2.34) and compat ones; the default one wins.
    let default = index.symbol_address("dlopen").unwrap();
    if let Some(v234) = index.symbol_address("dlopen@GLIBC_2.34") {
        assert_eq!(default, v234);
    }
    let malloc = index.symbol_address("malloc").unwrap();
    let inside = index.function_containing(malloc + 1).unwrap();
    assert_eq!(inside.address, malloc);
    assert!(matches!(index.resolve("malloc"), Resolution::Found(_)));
}

/// Opening something that is not ELF, or nothing, gives typed errors.
#[test]
fn open_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = write_source(dir.path(), "notelf", "hello");
    assert!(matches!(
        SymbolIndex::open(&text),
        Err(SymbolError::NotElf { .. })
    ));
    assert!(matches!(
        SymbolIndex::open(&dir.path().join("missing")),
        Err(SymbolError::Io { .. })
    ));
}

/// Helper behaviour: last path segments and edit distance.
#[test]
fn name_helpers() {
    use super::names::{last_segment, levenshtein};
    assert_eq!(last_segment("a::b::c"), "c");
    assert_eq!(last_segment("app::f::<u32>"), "f::<u32>");
    assert_eq!(last_segment("<a::B as c::D>::fmt"), "fmt");
    assert_eq!(last_segment("ns::C::m(int)"), "m(int)");
    assert_eq!(last_segment("plain"), "plain");
    assert_eq!(levenshtein("compte", "compute"), 1);
    assert_eq!(levenshtein("", "abc"), 3);
    assert_eq!(levenshtein("kitten", "sitting"), 3);
    use super::names::segments;
    assert_eq!(
        segments("geo::Square::area(int) const"),
        ["geo", "Square", "area"]
    );
    assert_eq!(segments("app::f::<u32>"), ["app", "f"]);
    assert_eq!(segments("compute"), ["compute"]);
}

/// The binary the timing tests measure: `$RPATCH_BIG_BINARY`, else this test executable
/// (a debug Rust binary with DWARF for std and every dependency).
fn big_binary() -> PathBuf {
    std::env::var_os("RPATCH_BIG_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap())
}

/// Not a check but a measurement (run with `--ignored --nocapture`): open, first resolve
/// (DWARF + name index), a later resolve, and a NotFound with suggestions on a large binary.
#[test]
#[ignore]
fn timing_large_binary() {
    let path = big_binary();
    let size = std::fs::metadata(&path).unwrap().len();
    let t = std::time::Instant::now();
    let index = SymbolIndex::open(&path).unwrap();
    let opened = t.elapsed();
    let t = std::time::Instant::now();
    let first = index.resolve("main");
    let first_time = t.elapsed();
    let t = std::time::Instant::now();
    let _ = index.resolve("core::fmt::write");
    let next_time = t.elapsed();
    let t = std::time::Instant::now();
    let _ = index.resolve("no_such_functoin");
    let missing_time = t.elapsed();
    eprintln!(
        "{} ({size} bytes): open {opened:?}, first resolve {first_time:?} (found main: {}), \
         next resolve {next_time:?}, not found {missing_time:?}",
        path.display(),
        matches!(first, Resolution::Found(_))
    );
}

/// Not a check but a measurement: where the first resolve's time goes (DWARF pass, name
/// index, suggestions). `RPATCH_ROUNDS=n` repeats the builds, for profiling under perf.
#[test]
#[ignore]
fn timing_phases() {
    let index = SymbolIndex::open(&big_binary()).unwrap();
    let rounds: usize = std::env::var("RPATCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        let (data, info) = index.dwarf_file();
        let dwarf =
            super::dwarf::DwarfIndex::build(&super::dwarf::load(data, info, index.sections()));
        let dwarf_time = t.elapsed();
        let t = std::time::Instant::now();
        let names = super::names::NameIndex::build(&index.info, &dwarf);
        let names_time = t.elapsed();
        let t = std::time::Instant::now();
        let _ = names.suggest("no_such_functoin");
        let suggest_time = t.elapsed();
        eprintln!(
            "{} symbols, {} subprograms, {} functions, {} names: DWARF {dwarf_time:?}, \
             names {names_time:?}, suggestions {suggest_time:?}",
            index.info.symbols.len(),
            dwarf.subprograms.len(),
            names.funcs.len(),
            names.by_name.len(),
        );
    }
}

const SIG_SOURCE: &str = r#"#include <stddef.h>
typedef unsigned long my_size;
struct point { int x, y; };
__attribute__((noinline)) const char *sig(const char *s, int *const p, my_size n,
                                          struct point pt, double d[4], ...) {
    return s + n + *p + pt.x + (int)d[0];
}
int main(int argc, char **argv) {
    int v = argc;
    double d[4] = {0};
    struct point pt = {1, 2};
    return sig(argv[0], &v, 1, pt, d) != 0;
}
"#;

/// Signatures read from DWARF name each type as C spells it (pointers, `const` on either side of
/// the `*`, typedefs, structs, arrays decaying to pointers) with its size, and note `...`.
#[test]
fn c_signature_types() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_source(dir.path(), "sig.c", SIG_SOURCE);
    let bin = dir.path().join("sig");
    run(Command::new("gcc")
        .args(["-g", "-O1"])
        .arg(&src)
        .arg("-o")
        .arg(&bin));
    let index = SymbolIndex::open(&bin).unwrap();
    let f = expect_found(&index, "sig");
    let details = index.details(&f);
    assert!(!details.generic && !details.rust);
    let sig = details.signature.expect("signature");
    let types: Vec<(String, Option<u64>)> = sig
        .params
        .iter()
        .map(|p| (p.ty.name.clone(), p.ty.size))
        .collect();
    assert_eq!(
        types,
        [
            ("const char *".to_string(), Some(8)),
            ("int * const".to_string(), Some(8)),
            ("my_size".to_string(), Some(8)),
            ("point".to_string(), Some(8)),
            ("double *".to_string(), Some(8)),
        ]
    );
    assert!(sig.variadic);
    let returns = sig.returns.clone().unwrap();
    assert_eq!(
        (returns.name.as_str(), returns.size),
        ("const char *", Some(8))
    );
    assert_eq!(sig.mismatch(&sig), None);
    let mut other = sig.clone();
    other.params[2].ty.size = Some(4);
    assert!(sig.mismatch(&other).unwrap().contains("parameter 3"));
}

/// A separate debug file is used only if it is the file's: a debuglink target with another
/// build-id, or (without build-ids) another CRC, is rejected and the reason recorded.
#[test]
fn separate_debug_file_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1", "-Wl,--build-id=none"]);
    let debug = dir.path().join("prog.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&bin)
        .arg(&debug));
    let stripped = dir.path().join("stripped");
    run(Command::new("objcopy")
        .arg("--strip-all")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&bin)
        .arg(&stripped));
    let index = SymbolIndex::open(&stripped).unwrap();
    match index.debug_info() {
        DebugInfoSource::Separate { path, found_by } => {
            assert_eq!(path, &debug);
            assert_eq!(found_by, "debuglink");
        }
        other => panic!("{other:?}"),
    }
    let f = expect_found(&index, "helper");
    assert!(f.location.unwrap().ends_with("prog.c:8"));

    // Another build's debug file under the linked name: its CRC differs.
    let other = build_c(dir.path(), "other", &["-g", "-O2", "-Wl,--build-id=none"]);
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&other)
        .arg(&debug));
    let index = SymbolIndex::open(&stripped).unwrap();
    match index.debug_info() {
        DebugInfoSource::Missing { searched } => {
            assert!(searched.iter().any(|s| s.contains("CRC")), "{searched:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        index.resolve("helper"),
        Resolution::NotFound { .. }
    ));
}

/// A `.gnu_debuglink` naming a path (absolute, or with `..`) is ignored, even when a debug
/// file with the right CRC is there: the name is chosen by whoever built the file.
#[test]
fn a_debuglink_that_is_a_path_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1", "-Wl,--build-id=none"]);
    let debug = dir.path().join("prog.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&bin)
        .arg(&debug));
    let crc = crc32fast::hash(&std::fs::read(&debug).unwrap());
    for name in [
        debug.display().to_string(),
        format!(
            "../{}/prog.debug",
            dir.path().file_name().unwrap().to_string_lossy()
        ),
    ] {
        let mut section = name.clone().into_bytes();
        section.push(0);
        section.resize(section.len().next_multiple_of(4), 0);
        section.extend_from_slice(&crc.to_le_bytes());
        let contents = dir.path().join("link");
        std::fs::write(&contents, &section).unwrap();
        let stripped = dir.path().join("stripped");
        run(Command::new("objcopy")
            .arg("--strip-all")
            .arg(format!(
                "--add-section=.gnu_debuglink={}",
                contents.display()
            ))
            .arg(&bin)
            .arg(&stripped));
        let index = SymbolIndex::open(&stripped).unwrap();
        match index.debug_info() {
            DebugInfoSource::Missing { searched } => assert!(
                searched.iter().any(|s| s.contains("not a plain file name")),
                "{name}: {searched:?}"
            ),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// `lookup` answers a miss with an empty list; glob and substring searches find by pattern.
#[test]
fn lookup_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c(dir.path(), "prog", &["-g", "-O1"]);
    let index = SymbolIndex::open(&bin).unwrap();
    // A name the symbol table knows is answered from it and one DWARF unit: neither the full
    // DWARF index nor the name index is built.
    let f = expect_found(&index, "compute");
    assert!(f.location.is_some());
    assert!(index.details(&f).signature.is_some());
    assert!(index.dwarf.get().is_none() && index.names.get().is_none());
    assert!(index.lookup("no_such_function").is_empty());
    assert_eq!(index.lookup("compute").len(), 1);
    let names = |p: Pattern| -> Vec<String> {
        let mut v: Vec<String> = index.search(&p).into_iter().map(|f| f.name).collect();
        v.sort();
        v
    };
    assert_eq!(names(Pattern::parse("*elp*")), ["helper"]);
    assert_eq!(names(Pattern::Substring("omput".into())), ["compute"]);
}

/// Several symbols at one address are one function, and each reports the others as aliases.
#[test]
fn aliases_at_one_address() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_source(
        dir.path(),
        "alias.c",
        "__attribute__((noinline)) int compute(int x) { return x * 7 + 1; }\n\
         int compute_alias(int) __attribute__((alias(\"compute\")));\n\
         int main(int argc, char **argv) { (void)argv; return compute_alias(argc); }\n",
    );
    let bin = dir.path().join("alias");
    run(Command::new("gcc")
        .args(["-g", "-O1"])
        .arg(&src)
        .arg("-o")
        .arg(&bin));
    let index = SymbolIndex::open(&bin).unwrap();
    let f = expect_found(&index, "compute");
    assert_eq!(expect_found(&index, "compute_alias").address, f.address);
    assert_eq!(index.aliases(&f), ["compute_alias"]);
    assert!(index.clones(&f).is_empty());
}
