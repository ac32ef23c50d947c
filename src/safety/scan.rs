//! The conservative stack scan: when a thread's stack cannot be unwound to its outermost frame,
//! every word left on it that could be a return address into a guarded function counts as a
//! frame. Pure functions on byte slices, so the rules are unit-tested without a process.
//!
//! A word counts when it points just past a byte of the function (`word - 1` inside it: a
//! return address follows its call, and a call can be the function's last instruction) and the
//! bytes before it in the target end with a call instruction (`isa::stack::preceded_by_call`). The second test removes most data
//! words that merely look like code addresses (function pointers point at entries, not after
//! calls).

use std::ops::Range;

/// Whether `ret`, taken as a return address, belongs to a call made from inside `function`: the
/// call instruction ends at `ret`, so its last byte, `ret - 1`, is in the function.
pub fn returns_into(function: &Range<u64>, ret: u64) -> bool {
    ret.checked_sub(1)
        .is_some_and(|last| function.contains(&last))
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
    pac_mask: u64,
) -> impl Iterator<Item = Candidate> + 'a {
    let skip = (base.wrapping_neg() & 7) as usize;
    let words = stack.get(skip..).unwrap_or(&[]).chunks_exact(8);
    words.enumerate().filter_map(move |(i, word)| {
        let saved = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let value = crate::isa::stack::strip(saved, pac_mask);
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
        let found: Vec<Candidate> = candidates(&stack, 0x7ffc_0000_0004, &functions, 0).collect();
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
            candidates(&stack[..3], 0x7ffc_0000_0004, &functions, 0).count(),
            0
        );
    }
}
