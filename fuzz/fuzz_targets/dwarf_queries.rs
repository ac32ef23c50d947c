//! DWARF: the full name index, signatures and the parallel scan for inlined copies.
//! The body is `rpatch::fuzzing::dwarf_queries`, which the unit tests also run on every input kept in
//! `fuzz/regressions/dwarf_queries/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::dwarf_queries(data));
