//! x86_64: `jmp rel32` trampolines, jump islands with absolute jumps, `endbr64` handling, and a
//! decoder pass (iced-x86) that refuses functions whose own branches target the patched bytes.

use crate::Unpatchable;
use iced_x86::{Decoder, DecoderOptions, FlowControl, OpKind};
use std::ops::Range;

pub mod prebuilt;
pub mod remote_call;

/// `endbr64`: the CET landing pad. It stays in place so indirect calls into the function still land
/// on a valid target when IBT is enforced; the jump is written after it.
pub const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Length of `jmp rel32`.
pub const JMP_REL32_LEN: usize = 5;

/// Length of the in-place absolute jump (`jmp [rip+0]` followed by the 8-byte target).
pub const JMP_ABS_LEN: usize = 14;

/// Size of one jump-island slot: an absolute jump padded to 16 bytes so slots stay aligned.
pub const ISLAND_SLOT_LEN: usize = 16;

/// Number of bytes at the function entry that must be kept (an `endbr64`, else none).
pub fn entry_prefix_len(code: &[u8]) -> usize {
    if code.starts_with(&ENDBR64) {
        ENDBR64.len()
    } else {
        0
    }
}

/// `jmp rel32` from `from` (address of the jump itself) to `to`, or `None` when `to` is out of the
/// ±2 GiB reach.
pub fn jmp_rel32(from: u64, to: u64) -> Option<[u8; JMP_REL32_LEN]> {
    let next = from.wrapping_add(JMP_REL32_LEN as u64);
    let delta = to.wrapping_sub(next) as i64;
    let rel = i32::try_from(delta).ok()?;
    let mut out = [0u8; JMP_REL32_LEN];
    out[0] = 0xe9;
    out[1..].copy_from_slice(&rel.to_le_bytes());
    Some(out)
}

/// Absolute jump to `to` that needs no register: `jmp qword ptr [rip+0]; .quad to`.
pub fn jmp_abs(to: u64) -> [u8; JMP_ABS_LEN] {
    let mut out = [0u8; JMP_ABS_LEN];
    out[..6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
    out[6..].copy_from_slice(&to.to_le_bytes());
    out
}

/// One island slot: the absolute jump to `to`, padded with `int3` so a stray entry traps.
pub fn island_slot(to: u64) -> [u8; ISLAND_SLOT_LEN] {
    let mut out = [0xccu8; ISLAND_SLOT_LEN];
    out[..JMP_ABS_LEN].copy_from_slice(&jmp_abs(to));
    out
}

/// Where the jump encoded in `code` (located at `at`) goes: a `jmp rel32` or an absolute
/// `jmp [rip+0]`. Used to report and verify what a patch points at.
pub fn jump_destination(code: &[u8], at: u64) -> Option<u64> {
    match code {
        [0xe9, a, b, c, d, ..] => {
            let rel = i32::from_le_bytes([*a, *b, *c, *d]) as i64;
            Some(
                at.wrapping_add(JMP_REL32_LEN as u64)
                    .wrapping_add(rel as u64),
            )
        }
        [0xff, 0x25, 0, 0, 0, 0, rest @ ..] if rest.len() >= 8 => {
            Some(u64::from_le_bytes(rest[..8].try_into().ok()?))
        }
        _ => None,
    }
}

/// Checks that writing over `patch` (absolute addresses) is safe for the function whose machine
/// code is `code`, located at `func_addr`: no instruction of the function may branch into
/// `[func_addr, patch.end)` — the entry marker included, since falling through it reaches the jump
/// — except the entry itself being reached from outside, or by a recursive `call`. Such a branch
/// (a loop head at the entry, a self tail call) would land inside the new jump instruction or
/// re-enter with live loop state.
///
/// Bytes the decoder cannot make sense of (data in text, padding) stop the scan silently: the
/// branches that matter are in the decoded prefix of a compiler-generated function.
pub fn check_branches(code: &[u8], func_addr: u64, patch: Range<u64>) -> Result<(), Unpatchable> {
    let forbidden = func_addr..patch.end;
    let mut decoder = Decoder::with_ip(64, code, func_addr, DecoderOptions::NONE);
    for insn in &mut decoder {
        if insn.is_invalid() {
            break;
        }
        let target = match insn.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call
            | FlowControl::XbeginXabortXend => match insn.op0_kind() {
                OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64 => {
                    Some(insn.near_branch_target())
                }
                _ => None,
            },
            _ => None,
        };
        // A recursive `call` of the function's own entry is an ordinary call: after the patch it
        // reaches the replacement, as every other call does.
        let recursive_call = insn.flow_control() == FlowControl::Call
            && (target == Some(func_addr) || target == Some(patch.start));
        if let Some(target) = target
            && forbidden.contains(&target)
            && !patch.contains(&insn.ip())
            && !recursive_call
        {
            return Err(Unpatchable::BranchIntoPatch {
                from: insn.ip(),
                target,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel32_reaches_within_two_gib_only() {
        let j = jmp_rel32(0x1000, 0x2000).unwrap();
        assert_eq!(j, [0xe9, 0xfb, 0x0f, 0, 0]);
        assert_eq!(jump_destination(&j, 0x1000), Some(0x2000));
        assert!(jmp_rel32(0x1000, 0x1000 + (1u64 << 32)).is_none());
        let back = jmp_rel32(0x8000_0000, 0x10).unwrap();
        assert_eq!(jump_destination(&back, 0x8000_0000), Some(0x10));
    }

    #[test]
    fn absolute_jump_round_trips() {
        let j = jmp_abs(0x7fff_1234_5678);
        assert_eq!(jump_destination(&j, 0), Some(0x7fff_1234_5678));
        let slot = island_slot(0xdead_beef);
        assert_eq!(&slot[14..], &[0xcc, 0xcc]);
    }

    #[test]
    fn endbr64_is_kept() {
        assert_eq!(entry_prefix_len(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), 4);
        assert_eq!(entry_prefix_len(&[0x55]), 0);
    }

    #[test]
    fn loop_to_entry_is_refused() {
        // 0x1000: add eax,edi ; dec edi ; nop ; jnz 0x1000 ; ret
        let code = [0x01, 0xf8, 0xff, 0xcf, 0x90, 0x75, 0xf9, 0xc3];
        let err = check_branches(&code, 0x1000, 0x1000..0x1005).unwrap_err();
        assert_eq!(
            err,
            Unpatchable::BranchIntoPatch {
                from: 0x1005,
                target: 0x1000
            }
        );
    }

    #[test]
    fn recursive_call_is_fine_but_a_jump_to_the_entry_is_not() {
        // 0x1000: dec edi ; nop*3 ; call 0x1000 ; ret
        let call = [
            0xff, 0xcf, 0x90, 0x90, 0x90, 0xe8, 0xf6, 0xff, 0xff, 0xff, 0xc3,
        ];
        assert!(check_branches(&call, 0x1000, 0x1000..0x1005).is_ok());
        // 0x1000: dec edi ; nop*3 ; jmp 0x1000 (a loop head or tail call at the entry)
        let jmp = [0xff, 0xcf, 0x90, 0x90, 0x90, 0xe9, 0xf6, 0xff, 0xff, 0xff];
        assert!(check_branches(&jmp, 0x1000, 0x1000..0x1005).is_err());
        // A call into the middle of the overwritten bytes is refused too.
        let mid = [
            0xff, 0xcf, 0x90, 0x90, 0x90, 0xe8, 0xf7, 0xff, 0xff, 0xff, 0xc3,
        ];
        assert!(check_branches(&mid, 0x1000, 0x1000..0x1005).is_err());
    }

    #[test]
    fn branch_past_patch_is_fine() {
        // 0x1000: test edi,edi ; nop*3 ; jz 0x100a ; mov eax,1 ; ret ... target beyond 5 bytes
        let code = [
            0x85, 0xff, 0x90, 0x90, 0x90, 0x74, 0x03, 0xb8, 0x01, 0x00, 0xc3,
        ];
        assert!(check_branches(&code, 0x1000, 0x1000..0x1005).is_ok());
    }
}
