//! The conservative stack scan: when a thread's stack cannot be unwound to its outermost frame,
//! every word left on it that could be a return address into a guarded function counts as a
//! frame. Pure functions on byte slices, so the rules are unit-tested without a process.
//!
//! A word counts when it points just past a byte of the function (`word - 1` inside it: a
//! return address follows its call, and a call can be the function's last instruction) and the
//! bytes before it in the target end with a call instruction. The second test removes most data
//! words that merely look like code addresses (function pointers point at entries, not after
//! calls).

use std::ops::Range;

/// Longest x86_64 call instruction recognised before a return address (`ff 94 24 disp32`).
pub const MAX_CALL_LEN: usize = 7;

/// Whether `ret`, taken as a return address, belongs to a call made from inside `function`: the
/// call instruction ends at `ret`, so its last byte, `ret - 1`, is in the function.
pub fn returns_into(function: &Range<u64>, ret: u64) -> bool {
    ret.checked_sub(1)
        .is_some_and(|last| function.contains(&last))
}

/// Whether `before` (the bytes that end exactly at a candidate return address, at most
/// [`MAX_CALL_LEN`] of them, fewer near an unreadable page) ends with a call instruction:
/// `e8 rel32`, or one of the `ff /2` forms (`call reg`, `call [mem]` with any ModRM/SIB/disp).
/// Prefixes (REX, segment) sit before these bytes and need not be seen.
pub fn preceded_by_call(before: &[u8]) -> bool {
    let n = before.len();
    if n >= 5 && before[n - 5] == 0xe8 {
        return true;
    }
    (2..=MAX_CALL_LEN.min(n)).any(|len| {
        let insn = &before[n - len..];
        insn[0] == 0xff
            && (insn[1] >> 3) & 7 == 2
            && ff_call_len(insn[1], insn.get(2).copied()) == len
    })
}

/// Length of an `ff /2` call from its ModRM byte (and SIB byte, when there is one): opcode,
/// ModRM, optional SIB, displacement.
fn ff_call_len(modrm: u8, sib: Option<u8>) -> usize {
    let mode = modrm >> 6;
    let rm = modrm & 7;
    let has_sib = mode != 3 && rm == 4;
    let disp = match mode {
        0 if rm == 5 => 4,                                    // [rip + disp32]
        0 if has_sib && sib.is_some_and(|s| s & 7 == 5) => 4, // [index*s + disp32]
        1 => 1,
        2 => 4,
        _ => 0,
    };
    2 + usize::from(has_sib) + disp
}

/// A stack word that may be a return address into a guarded function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Address of the stack slot holding the word.
    pub slot: u64,
    /// The word: the would-be return address.
    pub value: u64,
    /// Index of the function (in the slice passed to [`candidates`]) it returns into.
    pub function: usize,
}

/// The first 8-byte-aligned word of `stack` (whose first byte is at address `base`) that lies
/// inside one of `ranges` (tagged with a caller's index): `(slot address, tag, word)`.
pub fn words_in(
    stack: &[u8],
    base: u64,
    ranges: &[(usize, Range<u64>)],
) -> Option<(u64, usize, u64)> {
    let skip = (base.wrapping_neg() & 7) as usize;
    let words = stack.get(skip..).unwrap_or(&[]).chunks_exact(8);
    words.enumerate().find_map(|(i, word)| {
        let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let (tag, _) = ranges.iter().find(|(_, r)| r.contains(&value))?;
        Some((base + skip as u64 + 8 * i as u64, *tag, value))
    })
}

/// The 8-byte-aligned words of `stack` (whose first byte is at address `base`) that would return
/// into one of `functions`, innermost (lowest address) first. The call-instruction test is left to
/// the caller, which reads the code bytes before each candidate from the target.
pub fn candidates<'a>(
    stack: &'a [u8],
    base: u64,
    functions: &'a [Range<u64>],
) -> impl Iterator<Item = Candidate> + 'a {
    let skip = (base.wrapping_neg() & 7) as usize;
    let words = stack.get(skip..).unwrap_or(&[]).chunks_exact(8);
    words.enumerate().filter_map(move |(i, word)| {
        let value = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let function = functions.iter().position(|f| returns_into(f, value))?;
        Some(Candidate {
            slot: base + (skip + i * 8) as u64,
            value,
            function,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A return address counts for the function holding the byte before it: not the entry itself,
    /// but the end when a call is the last instruction.
    #[test]
    fn return_address_belongs_to_the_byte_before_it() {
        let f = 0x1000..0x1040;
        assert!(
            !returns_into(&f, 0x1000),
            "the entry itself is not after a call in f"
        );
        assert!(returns_into(&f, 0x1001));
        assert!(
            returns_into(&f, 0x1040),
            "a call that is f's last instruction"
        );
        assert!(!returns_into(&f, 0x1041));
        assert!(!returns_into(&f, 0));
    }

    /// Every call form a compiler emits (rel32, register, memory with SIB and displacements) is
    /// recognised ending exactly at the return address.
    #[test]
    fn recognises_call_forms() {
        // call rel32
        assert!(preceded_by_call(&[0x90, 0x90, 0xe8, 1, 2, 3, 4]));
        assert!(preceded_by_call(&[0xe8, 1, 2, 3, 4]));
        // call *%rax (ff d0), call *%r11 (41 ff d3)
        assert!(preceded_by_call(&[0x90, 0xff, 0xd0]));
        assert!(preceded_by_call(&[0x41, 0xff, 0xd3]));
        // call *(%rax) (ff 10), call *0x8(%rax) (ff 50 08), call *(%rsp) (ff 14 24)
        assert!(preceded_by_call(&[0xff, 0x10]));
        assert!(preceded_by_call(&[0xff, 0x50, 0x08]));
        assert!(preceded_by_call(&[0xff, 0x14, 0x24]));
        // call *0x8(%rsp) (ff 54 24 08), call *0x12345678(%rip) (ff 15 rel32)
        assert!(preceded_by_call(&[0xff, 0x54, 0x24, 0x08]));
        assert!(preceded_by_call(&[
            0x00, 0xff, 0x15, 0x78, 0x56, 0x34, 0x12
        ]));
        // call *0x100(%rax) (ff 90 disp32), call *0x100(%rsp) (ff 94 24 disp32)
        assert!(preceded_by_call(&[0xff, 0x90, 0, 1, 0, 0]));
        assert!(preceded_by_call(&[0xff, 0x94, 0x24, 0, 1, 0, 0]));
        // call *table(,%rax,8) (ff 14 c5 disp32)
        assert!(preceded_by_call(&[0xff, 0x14, 0xc5, 0, 0x10, 0, 0]));
    }

    /// Jumps, pushes and bytes that merely contain a call opcode earlier are not taken for a call
    /// ending at the return address.
    #[test]
    fn rejects_non_calls() {
        assert!(!preceded_by_call(&[]));
        assert!(!preceded_by_call(&[0x90; 7]));
        // jmp *%rax (ff e0): ff /4, not /2
        assert!(!preceded_by_call(&[0x90, 0xff, 0xe0]));
        // push (%rax) (ff 30): ff /6
        assert!(!preceded_by_call(&[0xff, 0x30]));
        // ff 50 08 is call *0x8(%rax), but ff 50 followed by two more bytes is not 4 bytes long
        assert!(!preceded_by_call(&[0xff, 0x50, 0x08, 0x90]));
        // an e8 that is not 5 bytes before the end
        assert!(!preceded_by_call(&[0xe8, 1, 2, 3, 4, 5]));
        // ff d0 followed by anything is no longer a call ending here
        assert!(!preceded_by_call(&[0xff, 0xd0, 0x90]));
    }

    /// Only aligned words that return into a guarded function are candidates, with their slot
    /// address and function index.
    #[test]
    fn finds_aligned_words_returning_into_functions() {
        let functions = [0x40_1000..0x40_1080, 0x7f00_0000_2000..0x7f00_0000_2100];
        let mut stack = Vec::new();
        // base 0x7ffc_0000_0004: the first 4 bytes are skipped to reach alignment
        stack.extend_from_slice(&[0xaa; 4]);
        for word in [
            0x40_1000u64,     // the entry: not a return address into the function
            0x40_1023,        // into function 0
            0x1234,           // unrelated
            0x7f00_0000_2100, // into function 1, after a call as its last instruction
            0x7f00_0000_2101, // past function 1
        ] {
            stack.extend_from_slice(&word.to_le_bytes());
        }
        stack.extend_from_slice(&[0x23, 0x10]); // trailing partial word: ignored
        let found: Vec<Candidate> = candidates(&stack, 0x7ffc_0000_0004, &functions).collect();
        assert_eq!(
            found,
            vec![
                Candidate {
                    slot: 0x7ffc_0000_0010,
                    value: 0x40_1023,
                    function: 0
                },
                Candidate {
                    slot: 0x7ffc_0000_0020,
                    value: 0x7f00_0000_2100,
                    function: 1
                },
            ]
        );
        assert_eq!(
            candidates(&stack[..3], 0x7ffc_0000_0004, &functions).count(),
            0
        );
    }
}
