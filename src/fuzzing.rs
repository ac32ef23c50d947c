//! The bodies of the fuzz targets (`fuzz/`), here so that every input a fuzzer found crashing is
//! replayed by the unit tests: drop it into `fuzz/regressions/<target>/` and `cargo test` runs it
//! through the same code (see the tests below). Each function panics only on a bug.
//!
//! What is fuzzed is what a target's owner controls and rpatch parses as root: ELF symbol tables
//! and DWARF, CFI and stack contents, /proc/PID/maps lines; plus the journal as found on disk,
//! the binding-shim writer's input and the seccomp filter evaluator.

use crate::journal::JournalData;
use crate::patch::shim::{self, AbsoluteSymbol};
use crate::process::seccomp::{self, Action, Insn, SeccompData};
use crate::process::{ProcMem, gaps, parse_maps};
use crate::safety::StackInspector;
use crate::symbols::{Pattern, Resolution, SymbolIndex};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the directory names under `fuzz/regressions/`).
pub const TARGETS: [(&str, Target); 7] = [
    ("elf_symbols", elf_symbols),
    ("dwarf_queries", dwarf_queries),
    ("unwinder", unwinder),
    ("maps_parser", maps_parser),
    ("journal_json", journal_json),
    ("shim_writer", shim_writer),
    ("seccomp_filter", seccomp_filter),
];

/// The symbol index of an ELF file: parsing, name resolution (symbol tables first),
/// suggestions, glob search, address lookups, private-symbol lookups.
pub fn elf_symbols(data: &[u8]) {
    let Ok(index) = SymbolIndex::from_bytes(Path::new("fuzz.elf"), data.to_vec()) else {
        return;
    };
    let _ = (
        index.architecture(),
        index.build_id(),
        index.is_position_independent(),
    );
    let _ = (
        index.symbol_versions(),
        index.compilers(),
        index.rustc_version(),
    );
    for name in [
        "main",
        "compute",
        "crate::pricing::calc",
        "ns::Calc::method(int)",
        "_start",
    ] {
        match index.resolve(name) {
            Resolution::Found(f) => {
                let _ = (index.aliases(&f), index.clones(&f));
                let _ = index.file_bytes(f.address, 16);
            }
            Resolution::Ambiguous(fs) => assert!(fs.len() > 1),
            Resolution::NotFound { suggestions } => assert!(suggestions.len() <= 5),
        }
        let _ = index.symbol_address(name);
        let _ = index.defined_symbols(name);
    }
    for seg in index.load_segments().iter().take(8) {
        let _ = index.function_containing(seg.vaddr.wrapping_add(seg.memsz / 2));
        let _ = index.symbol_name_containing(seg.vaddr);
    }
    let _ = index.search(&Pattern::parse("*::c*"));
}

/// DWARF: the full name index, signatures and the parallel scan for inlined copies.
pub fn dwarf_queries(data: &[u8]) {
    let Ok(index) = SymbolIndex::from_bytes(Path::new("fuzz.elf"), data.to_vec()) else {
        return;
    };
    if !index.has_dwarf() {
        return;
    }
    let _ = index.debug_info_size();
    let mut found = index.search(&Pattern::parse("**"));
    found.truncate(8);
    let details: Vec<_> = found.iter().map(|f| index.details(f)).collect();
    for pair in details.windows(2) {
        if let (Some(a), Some(b)) = (&pair[0].signature, &pair[1].signature) {
            let _ = (a.render(), a.mismatch(b));
        }
    }
    let _ = index.inline_scan(&found, Some(&Pattern::parse("*")));
}

/// The unwinder over one module's CFI and a stack, both hostile. Input:
/// `[rip offset u32][rsp offset u16][rbp offset u16][image length u32][image][stack]`.
pub fn unwinder(data: &[u8]) {
    const MODULE: u64 = 0x5555_0000_0000;
    const STACK: u64 = 0x7ffd_0000_0000;
    if data.len() < 12 {
        return;
    }
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    let rip = MODULE + u64::from(u32_at(0) % 0x10_0000);
    let rsp = STACK + u64::from(u16::from_le_bytes([data[4], data[5]]));
    let rbp = STACK + u64::from(u16::from_le_bytes([data[6], data[7]]));
    let image_len = (u32_at(8) as usize).min(data.len() - 12);
    let (image, stack) = data[12..].split_at(image_len);
    // The process memory: the stack bytes at their address in a sparse memfd.
    let Ok(fd) =
        nix::sys::memfd::memfd_create(c"fuzz-stack", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
    else {
        return;
    };
    let mem = std::fs::File::from(fd);
    if mem.write_all_at(stack, STACK).is_err() {
        return;
    }
    let images = [("fuzz.so".to_string(), MODULE, image)];
    let stack_end = STACK + stack.len().max(8) as u64;
    let data_mappings = std::iter::once(STACK..stack_end).collect();
    let mem = Box::new(ProcMem::from_file(mem));
    let mut inspector = StackInspector::from_images(mem, &images, data_mappings);
    let regs = crate::process::Regs::for_unwind(rip, rsp, rbp);
    let walk = inspector.walk(&regs);
    assert!(!walk.frames.is_empty());
}

/// /proc/PID/maps text (paths are the target's choice: any bytes but a newline) and what is
/// derived from it.
pub fn maps_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let maps = parse_maps(&text);
    for m in &maps {
        let _ = (m.executable(), m.is_file(), m.file_path());
        if m.has_file_name() {
            assert!(m.is_file() && !m.path.starts_with("/memfd:"));
            assert!(!m.path.ends_with(" (deleted)"));
        }
    }
    for (lo, hi) in [(0, u64::MAX), (0x10000, 0x7fff_ffff_0000)] {
        for (a, b) in gaps(&maps, lo, hi) {
            assert!(a < b && a >= lo && b <= hi);
        }
    }
}

/// A journal file: parsing never panics, the queries over it hold, what parses writes back to
/// the same data.
pub fn journal_json(data: &[u8]) {
    let Ok(journal) = serde_json::from_slice::<JournalData>(data) else {
        return;
    };
    let _ = (
        journal.next_id(),
        journal.next_group(),
        journal.slots_in_use(),
    );
    for r in journal.live().take(64) {
        let top = journal
            .top_of_stack(r.address)
            .expect("a live record is on its stack");
        assert!(top.id >= r.id);
    }
    let text = serde_json::to_vec(&journal).expect("serialises");
    let again: JournalData = serde_json::from_slice(&text).expect("reparses");
    assert_eq!(again, journal);
}

/// The binding-shim writer: any names and addresses give an ELF file that parses back with
/// exactly those symbols. Records separated by 0xff: value u64, size u64, kind u8, name.
pub fn shim_writer(data: &[u8]) {
    use object::{Object, ObjectSymbol};
    let mut symbols: Vec<AbsoluteSymbol> = Vec::new();
    for record in data.split(|&b| b == 0xff).take(256) {
        if record.len() < 18 {
            continue;
        }
        let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
        let name: String = String::from_utf8_lossy(&record[17..])
            .chars()
            .filter(|&c| c != '\0')
            .collect();
        if name.is_empty() || symbols.iter().any(|s| s.name == name) {
            continue;
        }
        symbols.push(AbsoluteSymbol {
            name,
            value: word(0),
            size: word(8),
            function: record[16] & 1 == 1,
        });
    }
    let bytes = shim::build("rpatch-bind-fuzz.so", &symbols);
    let file = object::File::parse(&*bytes).expect("the shim parses");
    for s in &symbols {
        let found = file
            .dynamic_symbols()
            .find(|d| d.name_bytes().ok() == Some(s.name.as_bytes()))
            .expect("every symbol is defined");
        assert_eq!(found.address(), s.value);
    }
}

/// The classic-BPF evaluator: any program on any input ends with a return value. Input: a
/// 64-byte `seccomp_data`, then 8-byte instructions.
pub fn seccomp_filter(data: &[u8]) {
    if data.len() < 64 {
        return;
    }
    let (head, body) = data.split_at(64);
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    let input = SeccompData {
        nr: word(0) as i32,
        arch: (word(0) >> 32) as u32,
        instruction_pointer: word(8),
        args: [word(16), word(24), word(32), word(40), word(48), word(56)],
    };
    let program: Vec<Insn> = body
        .chunks_exact(8)
        .take(4096)
        .map(|c| Insn {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let _ = Action::from_ret(seccomp::run(&program, &input)).is_fatal();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input a fuzzer found crashing (`fuzz/regressions/<target>/*`) runs clean now.
    #[test]
    fn fuzz_regressions_run_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut replayed = 0;
        for (name, run) in TARGETS {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for entry in dir {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("replaying {}", path.display());
                run(&data);
                replayed += 1;
            }
        }
        assert!(
            replayed > 0,
            "no regression inputs under {}",
            root.display()
        );
    }

    /// Small hand-made inputs reach every target (the fuzz targets themselves run only under
    /// scripts/fuzz.sh).
    #[test]
    fn every_target_accepts_trivial_input() {
        for (_, run) in TARGETS {
            run(b"");
            run(&[0u8; 128]);
            run(&[0xffu8; 128]);
        }
    }
}
