//! DWARF of an ELF file a target's owner controls: the full name index, signatures (parameter
//! and return types) and the parallel scan for inlined copies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpatch::symbols::{Pattern, SymbolIndex};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
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
});
