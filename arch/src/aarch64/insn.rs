//! A64 instruction encoders and the one decoder rpatch needs (where a PC-relative instruction
//! points), written by hand.
//!
//! Why not an assembler crate: rpatch emits about twenty instruction forms, every one a fixed
//! 32-bit word with a handful of fields, and no maintained Rust crate assembles A64 at run time
//! without a JIT-oriented macro layer (dynasm-rs) or a C library. A function per form is a few
//! lines, has no dependency, and is checked twice in the tests: every encoding is decoded by
//! capstone and compared with the intended text, and known-answer words assembled by GNU `as`
//! (`scripts/gen-aarch64-vectors.sh`, checked in as `arch/tests/data/aarch64-vectors.txt`) must
//! come out bit for bit.
//!
//! Register numbers are plain `u32` 0..=30; 31 means `sp` or `xzr`/`wzr` depending on the form,
//! as in the architecture. Offsets are in bytes and must be encodable; an encoder panics on an
//! operand it cannot encode (a bug in rpatch's own code generation, never input from a target).

/// `nop`.
pub const NOP: u32 = 0xd503_201f;
/// `bti c`: landing pad for calls (`blr`, and `br` through x16/x17).
pub const BTI_C: u32 = 0xd503_245f;
/// `bti j`: landing pad for jumps (`br`).
pub const BTI_J: u32 = 0xd503_249f;
/// `bti jc`: landing pad for both.
pub const BTI_JC: u32 = 0xd503_24df;
/// `paciasp`: signs x30 with key A and SP; also an implicit `bti c`.
pub const PACIASP: u32 = 0xd503_233f;
/// `pacibsp`: signs x30 with key B and SP; also an implicit `bti c`.
pub const PACIBSP: u32 = 0xd503_237f;
/// `svc #0`: the system call instruction as Linux uses it.
pub const SVC0: u32 = svc(0);

/// `x16` (IP0): the register veneers and PLT stubs may clobber between a call and its callee,
/// so an entry jump may use it; a `br x16` is also accepted by a `bti c` landing pad.
pub const X16: u32 = 16;

const fn reg(r: u32) -> u32 {
    assert!(r < 32, "register number");
    r
}

/// A signed field of `bits` bits holding `value / scale`, or `None` when it does not fit or
/// `value` is not a multiple of `scale`.
const fn field(value: i64, scale: i64, bits: u32) -> Option<u32> {
    if value % scale != 0 {
        return None;
    }
    let v = value / scale;
    let limit = 1i64 << (bits - 1);
    if v < -limit || v >= limit {
        return None;
    }
    Some((v as u32) & ((1u32 << bits) - 1))
}

/// An unsigned field of `bits` bits holding `value / scale`; panics when it does not fit.
const fn ufield(value: u64, scale: u64, bits: u32) -> u32 {
    assert!(value.is_multiple_of(scale), "misaligned offset");
    let v = value / scale;
    assert!(v < (1u64 << bits), "offset out of range");
    v as u32
}

fn delta(from: u64, to: u64) -> i64 {
    to.wrapping_sub(from) as i64
}

/// `b to`, located at `from`; `None` when `to` is not within ±128 MiB or not 4-byte aligned.
pub fn b(from: u64, to: u64) -> Option<u32> {
    Some(0x1400_0000 | field(delta(from, to), 4, 26)?)
}

/// `bl to`, located at `from`; `None` when out of reach.
pub fn bl(from: u64, to: u64) -> Option<u32> {
    Some(0x9400_0000 | field(delta(from, to), 4, 26)?)
}

/// `b.eq to`, located at `from`; `None` beyond ±1 MiB.
pub fn b_eq(from: u64, to: u64) -> Option<u32> {
    Some(0x5400_0000 | field(delta(from, to), 4, 19)? << 5)
}

/// `cbz xt, to` (64-bit), located at `from`; `None` beyond ±1 MiB.
pub fn cbz(rt: u32, from: u64, to: u64) -> Option<u32> {
    Some(0xb400_0000 | field(delta(from, to), 4, 19)? << 5 | reg(rt))
}

/// `cbnz xt, to` (64-bit), located at `from`; `None` beyond ±1 MiB.
pub fn cbnz(rt: u32, from: u64, to: u64) -> Option<u32> {
    Some(0xb500_0000 | field(delta(from, to), 4, 19)? << 5 | reg(rt))
}

/// `adr xd, to`, located at `from`; `None` beyond ±1 MiB.
pub fn adr(rd: u32, from: u64, to: u64) -> Option<u32> {
    let imm = field(delta(from, to), 1, 21)?;
    Some(0x1000_0000 | (imm & 3) << 29 | (imm >> 2) << 5 | reg(rd))
}

/// `ldr xt, <pc + offset>` (literal); `None` when the offset is out of ±1 MiB or misaligned.
pub fn ldr_literal(rt: u32, offset: i64) -> Option<u32> {
    Some(0x5800_0000 | field(offset, 4, 19)? << 5 | reg(rt))
}

/// `br xn`.
pub const fn br(rn: u32) -> u32 {
    0xd61f_0000 | reg(rn) << 5
}

/// `blr xn`.
pub const fn blr(rn: u32) -> u32 {
    0xd63f_0000 | reg(rn) << 5
}

/// `ret xn`.
pub const fn ret(rn: u32) -> u32 {
    0xd65f_0000 | reg(rn) << 5
}

/// `svc #imm`.
pub const fn svc(imm: u16) -> u32 {
    0xd400_0001 | (imm as u32) << 5
}

/// `brk #imm`: a trap (SIGTRAP), used as padding so a stray jump into it stops.
pub const fn brk(imm: u16) -> u32 {
    0xd420_0000 | (imm as u32) << 5
}

/// `movz xd, #imm` (no shift): small constants such as syscall numbers.
pub const fn movz(rd: u32, imm: u16) -> u32 {
    0xd280_0000 | (imm as u32) << 5 | reg(rd)
}

/// `add xd, xn, #imm` (12-bit unsigned immediate, no shift); register 31 is `sp` on both sides,
/// so `add sp, xn, #0` is `mov sp, xn`.
pub const fn add_imm(rd: u32, rn: u32, imm: u64) -> u32 {
    0x9100_0000 | ufield(imm, 1, 12) << 10 | reg(rn) << 5 | reg(rd)
}

/// `cmn xn, #imm` (`adds xzr, xn, #imm`, 12-bit unsigned immediate): sets Z when
/// `xn == -imm`, e.g. a system call's `-EINTR`.
pub const fn cmn_imm(rn: u32, imm: u64) -> u32 {
    0xb100_001f | ufield(imm, 1, 12) << 10 | reg(rn) << 5
}

/// `ldr xt, [xn, #offset]` (unsigned, scaled offset).
pub const fn ldr(rt: u32, rn: u32, offset: u64) -> u32 {
    0xf940_0000 | ufield(offset, 8, 12) << 10 | reg(rn) << 5 | reg(rt)
}

/// `str xt, [xn, #offset]`.
pub const fn str(rt: u32, rn: u32, offset: u64) -> u32 {
    0xf900_0000 | ufield(offset, 8, 12) << 10 | reg(rn) << 5 | reg(rt)
}

/// `ldr wt, [xn, #offset]` (32-bit load, zero-extended).
pub const fn ldr_w(rt: u32, rn: u32, offset: u64) -> u32 {
    0xb940_0000 | ufield(offset, 4, 12) << 10 | reg(rn) << 5 | reg(rt)
}

/// `str wt, [xn, #offset]`.
pub const fn str_w(rt: u32, rn: u32, offset: u64) -> u32 {
    0xb900_0000 | ufield(offset, 4, 12) << 10 | reg(rn) << 5 | reg(rt)
}

/// `ldp xt1, xt2, [xn, #offset]` (signed offset, non-negative here).
pub const fn ldp(rt1: u32, rt2: u32, rn: u32, offset: u64) -> u32 {
    0xa940_0000 | ufield(offset, 8, 6) << 15 | reg(rt2) << 10 | reg(rn) << 5 | reg(rt1)
}

/// `stp qt1, qt2, [xn, #offset]` (128-bit SIMD&FP registers, signed offset, non-negative here).
pub const fn stp_q(qt1: u32, qt2: u32, rn: u32, offset: u64) -> u32 {
    0xad00_0000 | ufield(offset, 16, 6) << 15 | reg(qt2) << 10 | reg(rn) << 5 | reg(qt1)
}

/// `ldp qt1, qt2, [xn, #offset]`.
pub const fn ldp_q(qt1: u32, qt2: u32, rn: u32, offset: u64) -> u32 {
    0xad40_0000 | ufield(offset, 16, 6) << 15 | reg(qt2) << 10 | reg(rn) << 5 | reg(qt1)
}

/// `mrs xt, fpsr`.
pub const fn mrs_fpsr(rt: u32) -> u32 {
    0xd53b_4420 | reg(rt)
}

/// `mrs xt, fpcr`.
pub const fn mrs_fpcr(rt: u32) -> u32 {
    0xd53b_4400 | reg(rt)
}

/// `msr fpsr, xt`.
pub const fn msr_fpsr(rt: u32) -> u32 {
    0xd51b_4420 | reg(rt)
}

/// `msr fpcr, xt`.
pub const fn msr_fpcr(rt: u32) -> u32 {
    0xd51b_4400 | reg(rt)
}

/// `msr nzcv, xt`: the condition flags from bits 31..28 of `xt`.
pub const fn msr_nzcv(rt: u32) -> u32 {
    0xd51b_4200 | reg(rt)
}

/// The 4-byte little-endian word at the start of `code`.
pub fn word(code: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(code.get(..4)?.try_into().ok()?))
}

/// Sign-extends the `bits`-bit field of `w` starting at bit `lo`, times `scale`.
fn signed(w: u32, lo: u32, bits: u32, scale: i64) -> i64 {
    let v = (w >> lo) & ((1 << bits) - 1);
    let shift = 64 - bits;
    (((v as i64) << shift) >> shift) * scale
}

/// What a PC-relative instruction refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcRelative {
    /// `b`, `b.cond`, `bc.cond`, `cbz`/`cbnz`, `tbz`/`tbnz`: control may continue at the target.
    Branch(u64),
    /// `bl`: a call of the target.
    Call(u64),
    /// `adr`: an address computed from the PC, which code may later branch to through a
    /// register.
    Address(u64),
    /// `adrp`: the 4 KiB page of a computed address; the low 12 bits come from a later
    /// instruction.
    Page(u64),
}

/// Where the instruction `w`, located at `pc`, points, if it is PC-relative control flow or
/// address computation. Literal loads (`ldr xt, label`) are not included: they read data.
pub fn pc_relative(w: u32, pc: u64) -> Option<PcRelative> {
    let at = |off: i64| pc.wrapping_add(off as u64);
    match w {
        // B, BL: imm26.
        _ if w & 0xfc00_0000 == 0x1400_0000 => Some(PcRelative::Branch(at(signed(w, 0, 26, 4)))),
        _ if w & 0xfc00_0000 == 0x9400_0000 => Some(PcRelative::Call(at(signed(w, 0, 26, 4)))),
        // B.cond (bit 4 = 0) and BC.cond (bit 4 = 1): imm19.
        _ if w & 0xff00_0000 == 0x5400_0000 => Some(PcRelative::Branch(at(signed(w, 5, 19, 4)))),
        // CBZ/CBNZ, 32 and 64 bit: imm19.
        _ if w & 0x7e00_0000 == 0x3400_0000 => Some(PcRelative::Branch(at(signed(w, 5, 19, 4)))),
        // TBZ/TBNZ: imm14.
        _ if w & 0x7e00_0000 == 0x3600_0000 => Some(PcRelative::Branch(at(signed(w, 5, 14, 4)))),
        // ADR: immhi:immlo, bytes.
        _ if w & 0x9f00_0000 == 0x1000_0000 => {
            let imm = ((w >> 5) & 0x7ffff) << 2 | (w >> 29) & 3;
            Some(PcRelative::Address(at(signed(imm, 0, 21, 1))))
        }
        // ADRP: immhi:immlo, 4 KiB pages of the PC's page.
        _ if w & 0x9f00_0000 == 0x9000_0000 => {
            let imm = ((w >> 5) & 0x7ffff) << 2 | (w >> 29) & 3;
            let page = pc & !0xfff;
            Some(PcRelative::Page(
                page.wrapping_add(signed(imm, 0, 21, 4096) as u64),
            ))
        }
        _ => None,
    }
}

/// If `w` is `add xd, xn, #imm` (64-bit, 12-bit immediate, optionally shifted by 12): `(xd, xn,
/// imm)`. The second half of an `adrp` + `add` address computation.
pub fn add_immediate(w: u32) -> Option<(u32, u32, u64)> {
    if w & 0xff80_0000 != 0x9100_0000 {
        return None;
    }
    let shift = if w & (1 << 22) != 0 { 12 } else { 0 };
    Some((w & 31, (w >> 5) & 31, u64::from((w >> 10) & 0xfff) << shift))
}

/// If `w` is `adrp xd, ...`: `xd`.
pub fn adrp_register(w: u32) -> Option<u32> {
    (w & 0x9f00_0000 == 0x9000_0000).then_some(w & 31)
}

/// Whether `w` is a call: `bl`, `blr`, or a pointer-authenticating `blraa`/`blrab`/`blraaz`/
/// `blrabz`. The instruction before a return address is one of these.
pub fn is_call(w: u32) -> bool {
    w & 0xfc00_0000 == 0x9400_0000          // BL
        || w & 0xffff_fc1f == 0xd63f_0000   // BLR
        || w & 0xffff_f81f == 0xd63f_081f   // BLRAAZ, BLRABZ
        || w & 0xffff_f800 == 0xd73f_0800 // BLRAA, BLRAB
}
