//! The classic-BPF evaluator rpatch runs a target's seccomp filters with: any program on any
//! input ends with a return value and never reads out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpatch::process::seccomp::{Action, Insn, SeccompData, run};

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let (head, body) = data.split_at(64);
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().unwrap());
    let input = SeccompData {
        nr: word(0) as i32,
        arch: (word(0) >> 32) as u32,
        instruction_pointer: word(8),
        args: [word(16), word(24), word(32), word(40), word(48), word(56)],
    };
    let program: Vec<Insn> = body
        .chunks_exact(8)
        .take(4096)
        .map(|c| Insn {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let _ = Action::from_ret(run(&program, &input)).is_fatal();
});
