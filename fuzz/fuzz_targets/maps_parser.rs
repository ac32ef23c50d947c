//! /proc/PID/maps text (paths are the target's choice: any bytes but a newline) and what is
//! derived from it.
//! The body is `rpatch::fuzzing::maps_parser`, which the unit tests also run on every input kept in
//! `fuzz/regressions/maps_parser/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::maps_parser(data));
