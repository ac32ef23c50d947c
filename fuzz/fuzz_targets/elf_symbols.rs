//! The symbol index of an ELF file a target's owner controls: parsing, name resolution (symbol
//! tables first), suggestions, glob search, address lookups, private-symbol bindings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpatch::symbols::{Pattern, Resolution, SymbolIndex};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(index) = SymbolIndex::from_bytes(Path::new("fuzz.elf"), data.to_vec()) else {
        return;
    };
    let _ = (index.architecture(), index.build_id(), index.is_position_independent());
    let _ = (index.symbol_versions(), index.compilers(), index.rustc_version());
    for name in ["main", "compute", "crate::pricing::calc", "ns::Calc::method(int)", "_start"] {
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
});
