//! The classic-BPF evaluator: any program on any input ends with a return value. Input: a
//! 64-byte `seccomp_data`, then 8-byte instructions.
//! The body is `rpatch::fuzzing::seccomp_filter`, which the unit tests also run on every input kept in
//! `fuzz/regressions/seccomp_filter/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::seccomp_filter(data));
