//! A journal file: parsing never panics, the queries over it hold, what parses writes back to
//! the same data.
//! The body is `rpatch::fuzzing::journal_json`, which the unit tests also run on every input kept in
//! `fuzz/regressions/journal_json/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::journal_json(data));
