//! The symbol index of an ELF file: parsing, name resolution (symbol tables first),
//! suggestions, glob search, address lookups, private-symbol lookups.
//! The body is `rpatch::fuzzing::elf_symbols`, which the unit tests also run on every input kept in
//! `fuzz/regressions/elf_symbols/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::elf_symbols(data));
