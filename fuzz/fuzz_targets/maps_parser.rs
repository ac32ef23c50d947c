//! /proc/PID/maps text (whose paths a target chooses: any bytes but `\n`) and what is derived
//! from it: gaps for islands and stubs, file names rpatch may or may not look up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpatch::process::{gaps, parse_maps};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let maps = parse_maps(&text);
    for m in &maps {
        let _ = (m.executable(), m.is_file(), m.file_path());
        if m.has_file_name() {
            assert!(m.is_file() && !m.path.starts_with("/memfd:") && !m.path.ends_with(" (deleted)"));
        }
    }
    for (lo, hi) in [(0, u64::MAX), (0x10000, 0x7fff_ffff_0000)] {
        for (a, b) in gaps(&maps, lo, hi) {
            assert!(a < b && a >= lo && b <= hi);
        }
    }
});
