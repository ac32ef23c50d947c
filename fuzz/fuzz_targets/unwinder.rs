//! The unwinder over one module's CFI and a stack, both hostile. Input:
//! `[rip offset u32][rsp offset u16][rbp offset u16][image length u32][image][stack]`.
//! The body is `rpatch::fuzzing::unwinder`, which the unit tests also run on every input kept in
//! `fuzz/regressions/unwinder/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rpatch::fuzzing::unwinder(data));
