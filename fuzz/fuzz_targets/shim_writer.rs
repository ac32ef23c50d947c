//! The binding-shim writer: any names and addresses give an ELF file that parses back with
//! exactly those symbols. Records separated by 0xff: value u64, size u64, kind u8, name.
//! The body is `rpatch::fuzzing::shim_writer`, which the unit tests also run on every input kept in
//! `fuzz/regressions/shim_writer/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::shim_writer(data));
