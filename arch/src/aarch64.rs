//! arm64 (A64): `b imm26` entry jumps to islands within ±128 MiB, `ldr x16`/`br x16` absolute
//! jumps, BTI and PAC landing-pad rules at the entry, the branch-back check, return-address
//! facts (the call before it, PAC bits) and the page size; remote calls ([`remote_call`]),
//! system-call restart rules ([`syscall`]) and which threads' vector state allows borrowing
//! them ([`vector`]).
//!
//! Instructions are encoded and decoded by hand ([`insn`]); the tests check every encoding with
//! capstone and against words assembled by GNU `as`.

use crate::Unpatchable;
use std::ops::Range;

pub mod insn;
pub mod remote_call;
pub mod syscall;
pub mod vector;

use insn::{BTI_C, BTI_J, BTI_JC, PACIASP, PACIBSP, PcRelative, X16};

/// Length of every A64 instruction.
pub const INSN_LEN: u64 = 4;

/// Length of the entry jump `b imm26`.
pub const B_LEN: usize = 4;

/// How far `b imm26` reaches either way: ±128 MiB (the target must be within
/// `[at - B_REACH, at + B_REACH)`).
pub const B_REACH: u64 = 128 << 20;

/// Length of the absolute jump `ldr x16, #8; br x16; .quad target`.
pub const JMP_ABS_LEN: usize = 16;

/// Size of one jump-island slot: exactly one absolute jump (16-byte aligned slots keep the
/// 8-byte literal naturally aligned).
pub const ISLAND_SLOT_LEN: usize = 16;

/// Length of a call instruction: a return address minus this is the call.
pub const CALL_LEN: u64 = 4;

/// `b to` from `from` (the address of the branch itself), or `None` when `to` is beyond
/// ±128 MiB or either address is not 4-byte aligned.
pub fn b(from: u64, to: u64) -> Option<[u8; B_LEN]> {
    if !from.is_multiple_of(INSN_LEN) {
        return None;
    }
    Some(insn::b(from, to)?.to_le_bytes())
}

/// Absolute jump to `to` that needs no data outside itself: `ldr x16, #8; br x16; .quad to`.
/// It clobbers x16, which the procedure-call standard lets any call clobber (veneers, PLT
/// entries) — a function entry is always reached by a call or a tail call, so x16 is dead there.
/// `br x16` is accepted by a `bti c` landing pad (and by `paciasp`), which is how a function
/// compiled with branch protection starts, so the replacement may live in a guarded page.
pub fn jmp_abs(to: u64) -> [u8; JMP_ABS_LEN] {
    let mut out = [0u8; JMP_ABS_LEN];
    let ldr = insn::ldr_literal(X16, 8).expect("a literal 8 bytes ahead encodes");
    out[..4].copy_from_slice(&ldr.to_le_bytes());
    out[4..8].copy_from_slice(&insn::br(X16).to_le_bytes());
    out[8..].copy_from_slice(&to.to_le_bytes());
    out
}

/// One island slot: the absolute jump to `to`.
pub fn island_slot(to: u64) -> [u8; ISLAND_SLOT_LEN] {
    jmp_abs(to)
}

/// Where the jump encoded in `code` (located at `at`) goes: a `b imm26`, or the absolute
/// `ldr x16, #8; br x16; .quad`. Used to report and verify what a patch points at.
pub fn jump_destination(code: &[u8], at: u64) -> Option<u64> {
    let first = insn::word(code)?;
    if first & 0xfc00_0000 == 0x1400_0000 {
        return match insn::pc_relative(first, at)? {
            PcRelative::Branch(to) => Some(to),
            _ => None,
        };
    }
    let abs = jmp_abs(0);
    if code.len() >= JMP_ABS_LEN && code[..8] == abs[..8] {
        return Some(u64::from_le_bytes(code[8..16].try_into().ok()?));
    }
    None
}

/// What a function's first instruction is, as far as the entry patch cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMarker {
    /// An ordinary instruction: the jump goes at the entry.
    Plain,
    /// `bti c`, `bti j` or `bti jc` (the word): it stays, so indirect calls and jumps into a
    /// guarded page still land on a valid target; the jump goes after it.
    Bti(u32),
    /// `paciasp` or `pacibsp` (the word): it signs the return address, and it is an implicit
    /// `bti c`. It is replaced by `bti c` followed by the jump: the landing pad stays, and the
    /// replacement, which signs its own return address, never finds it signed already.
    PacSign(u32),
}

/// The marker at the start of `code`.
pub fn entry_marker(code: &[u8]) -> EntryMarker {
    match insn::word(code) {
        Some(w @ (BTI_C | BTI_J | BTI_JC)) => EntryMarker::Bti(w),
        Some(w @ (PACIASP | PACIBSP)) => EntryMarker::PacSign(w),
        _ => EntryMarker::Plain,
    }
}

/// Bytes at the function entry that stay as they are: 4 for a `bti`, else none (a `paciasp`
/// is overwritten: see [`EntryMarker::PacSign`]).
pub fn entry_prefix_len(code: &[u8]) -> usize {
    match entry_marker(code) {
        EntryMarker::Bti(_) => 4,
        EntryMarker::Plain | EntryMarker::PacSign(_) => 0,
    }
}

/// The kind of entry jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryJump {
    /// `b to` (4 bytes): to an island slot, or to the replacement itself when it is near.
    Branch(u64),
    /// The in-place absolute jump to the replacement (16 bytes), when no island is in reach.
    Absolute(u64),
}

/// The bytes an entry patch writes, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPatch {
    /// Address of the first byte written (the entry, or just after a kept `bti`).
    pub at: u64,
    /// The bytes written there.
    pub bytes: Vec<u8>,
}

impl EntryPatch {
    /// The addresses the patch overwrites.
    pub fn range(&self) -> Range<u64> {
        self.at..self.at + self.bytes.len() as u64
    }
}

/// Plans the entry patch of the function whose machine code is `code` (all of it), located at
/// `func_addr`, following the landing-pad rules of [`EntryMarker`], and checks it with
/// [`check_branches`]. Nothing that signs a return address is ever left in front of the jump.
pub fn entry_patch(
    code: &[u8],
    func_addr: u64,
    jump: EntryJump,
) -> Result<EntryPatch, Unpatchable> {
    let marker = entry_marker(code);
    let keep = entry_prefix_len(code) as u64;
    let at = func_addr + keep;
    let mut bytes = Vec::new();
    if let EntryMarker::PacSign(_) = marker {
        bytes.extend_from_slice(&BTI_C.to_le_bytes());
    }
    let jump_at = at + bytes.len() as u64;
    match jump {
        EntryJump::Branch(to) => {
            let b = b(jump_at, to).ok_or(Unpatchable::OutOfReach { from: jump_at, to })?;
            bytes.extend_from_slice(&b);
        }
        EntryJump::Absolute(to) => bytes.extend_from_slice(&jmp_abs(to)),
    }
    let available = (code.len() as u64).saturating_sub(keep);
    if available < bytes.len() as u64 {
        return Err(Unpatchable::TooSmall {
            available,
            needed: bytes.len() as u64,
        });
    }
    let patch = EntryPatch { at, bytes };
    check_branches(code, func_addr, patch.range())?;
    Ok(patch)
}

/// Checks that writing over `patch` (absolute addresses) is safe for the function whose machine
/// code is `code`, located at `func_addr`: no instruction of the function may branch into
/// `[func_addr, patch.end)` — a kept `bti` included, since falling through it reaches the jump —
/// nor compute an address there (`adr`, `adrp` + `add`) that it could branch to through a
/// register. Exceptions, as on x86_64: the entry reached by a recursive `bl`, and an address
/// of the entry itself (a function pointer to itself), which after the patch reaches the
/// replacement like every other call. A loop head at the entry, a self tail call or a branch
/// into the middle would land inside the new jump or re-enter with live loop state.
///
/// Every word is decoded (A64 has no variable length to lose sync on); a literal pool word that
/// happens to look like a branch into the patch makes the check refuse, the safe direction.
pub fn check_branches(code: &[u8], func_addr: u64, patch: Range<u64>) -> Result<(), Unpatchable> {
    let forbidden = func_addr..patch.end;
    let words: Vec<u32> = code.chunks_exact(4).filter_map(insn::word).collect();
    for (i, &w) in words.iter().enumerate() {
        let pc = func_addr + 4 * i as u64;
        if patch.contains(&pc) {
            continue;
        }
        let target = match insn::pc_relative(w, pc) {
            Some(PcRelative::Branch(t)) => Some(t),
            Some(PcRelative::Call(t)) if t != func_addr && t != patch.start => Some(t),
            Some(PcRelative::Address(t)) if t != func_addr => Some(t),
            Some(PcRelative::Page(page)) => {
                adrp_add_target(&words, i, page).filter(|&t| t != func_addr)
            }
            _ => None,
        };
        if let Some(target) = target
            && forbidden.contains(&target)
        {
            return Err(Unpatchable::BranchIntoPatch { from: pc, target });
        }
    }
    Ok(())
}

/// The full address of an `adrp` at `words[i]` when the next instruction adds the low bits to
/// the same register (how compilers form a symbol's address).
fn adrp_add_target(words: &[u32], i: usize, page: u64) -> Option<u64> {
    let rd = insn::adrp_register(words[i])?;
    let (d, n, imm) = insn::add_immediate(*words.get(i + 1)?)?;
    (d == rd && n == rd && imm < 4096).then_some(page + imm)
}

/// Whether the instruction before a return address is a call (`bl`, `blr`, `blraa`...): `word`
/// is the 4 bytes at `return_address - CALL_LEN`. A saved value that passes is taken as a
/// return address by the conservative stack scan.
pub fn is_call_before(word: [u8; 4]) -> bool {
    insn::is_call(u32::from_le_bytes(word))
}

/// A return address without its pointer-authentication code. `mask` is the instruction mask
/// the kernel reports (`NT_ARM_PAC_MASK`, `insn_mask`): the bits a PAC may occupy. User
/// addresses have bit 55 clear, so those bits are cleared; an address with bit 55 set (the
/// kernel half) gets them set, as `xpaci` would.
pub fn strip_pac(addr: u64, mask: u64) -> u64 {
    if addr & (1 << 55) != 0 {
        addr | mask
    } else {
        addr & !mask
    }
}

/// Page sizes Linux arm64 kernels are built with.
pub const PAGE_SIZES: [u64; 3] = [4096, 16384, 65536];

/// `AT_PAGESZ`.
const AT_PAGESZ: u64 = 6;

/// The page size from a process's auxiliary vector (`/proc/PID/auxv`: pairs of 64-bit words),
/// when it is one arm64 kernels use.
pub fn page_size_from_auxv(auxv: &[u8]) -> Option<u64> {
    auxv.chunks_exact(16)
        .map(|pair| {
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
            (word(&pair[..8]), word(&pair[8..]))
        })
        .take_while(|&(key, _)| key != 0)
        .find(|&(key, _)| key == AT_PAGESZ)
        .map(|(_, value)| value)
        .filter(|size| PAGE_SIZES.contains(size))
}

#[cfg(test)]
mod tests;
