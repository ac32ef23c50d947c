//! The arm64 encodings checked two ways: decoded by capstone, and against words GNU `as`
//! assembled from the same instructions (`arch/tests/data/aarch64-vectors.txt`).

use super::insn::{self, PcRelative};
use super::remote_call::{
    self, BOOTSTRAP_FRAME_LEN, BOOTSTRAP_LEN, BOOTSTRAP_PARK, CallBlock, Done, FpState,
    MAGIC_VALUE, PARK_TIME, RETURN_SLOT_LEN, ResumeState, STACK_SIZE, StubRegion, Syscall,
    boot_frame, data,
};
use super::syscall::SYS_MMAP;
use super::*;
use capstone::prelude::*;

fn cs() -> Capstone {
    Capstone::new()
        .arm64()
        .mode(capstone::arch::arm64::ArchMode::Arm)
        .build()
        .expect("capstone arm64")
}

/// Decodes `code` at `addr` into "mnemonic operands" lines; `None` for a word capstone rejects.
fn disasm(code: &[u8], addr: u64) -> Vec<Option<String>> {
    let cs = cs();
    code.chunks_exact(4)
        .enumerate()
        .map(|(i, w)| {
            let insns = cs.disasm_count(w, addr + 4 * i as u64, 1).ok()?;
            let i = insns.iter().next()?;
            Some(
                format!("{} {}", i.mnemonic()?, i.op_str()?)
                    .trim()
                    .to_string(),
            )
        })
        .collect()
}

fn text(w: u32, addr: u64) -> String {
    disasm(&w.to_le_bytes(), addr)[0]
        .clone()
        .unwrap_or_else(|| panic!("capstone rejects {w:#010x}"))
}

fn words(code: &[u8]) -> Vec<u32> {
    code.chunks_exact(4).filter_map(insn::word).collect()
}

/// The encoder call for each single-instruction vector id (`.` is `AT`).
const AT: u64 = 0x1000_0000;

fn vectors() -> Vec<(&'static str, u32)> {
    use insn::*;
    vec![
        ("b_fwd", b(AT, AT + 0x1000).unwrap()),
        ("b_min", b(AT, AT - 0x800_0000).unwrap()),
        ("b_max", b(AT, AT + 0x7ff_fffc).unwrap()),
        ("bl_fwd", bl(AT, AT + 0x40).unwrap()),
        ("cbz_x16", cbz(16, AT, AT + 0x14).unwrap()),
        ("cbnz_x0_back", cbnz(0, AT, AT - 0x10).unwrap()),
        ("adr_x19_4k", adr(19, AT, AT + 0x41000).unwrap()),
        ("adr_x19_64k", adr(19, AT, AT + 0x50000).unwrap()),
        ("adr_x1_back", adr(1, AT, AT - 3).unwrap()),
        ("ldr_x16_lit", ldr_literal(16, 8).unwrap()),
        ("br_x16", br(16)),
        ("blr_x16", blr(16)),
        ("ret_x17", ret(17)),
        ("svc0", SVC0),
        ("brk0", brk(0)),
        ("movz_x8", movz(8, 139)),
        ("movz_x0", movz(0, 0)),
        ("add_x1_sp", add_imm(1, 31, 144)),
        ("add_sp_x19", add_imm(31, 19, 0x100)),
        ("add_x20_x19", add_imm(20, 19, 0x360)),
        ("ldr_x16_x19", ldr(16, 19, 0x50)),
        ("ldr_x8_sp", ldr(8, 31, 48)),
        ("str_x0_x19", str(0, 19, 0x10)),
        ("ldr_w1_x0", ldr_w(1, 0, 0)),
        ("str_w0_x19", str_w(0, 19, 0x358)),
        ("ldp_x0_sp", ldp(0, 1, 31, 0)),
        ("ldp_x4_x19", ldp(4, 5, 19, 0x40)),
        ("stp_q0", stp_q(0, 1, 20, 0)),
        ("stp_q30", stp_q(30, 31, 20, 0x1e0)),
        ("b_eq_back", b_eq(AT, AT - 0x20).unwrap()),
        ("cmn_x0", cmn_imm(0, 4)),
        ("ldp_q0", ldp_q(0, 1, 20, 0)),
        ("ldp_q30", ldp_q(30, 31, 20, 480)),
        ("msr_fpsr", msr_fpsr(0)),
        ("msr_fpcr", msr_fpcr(0)),
        ("msr_nzcv", msr_nzcv(16)),
        ("mov_sp_x16", add_imm(31, 16, 0)),
        ("ret_x16", ret(16)),
        ("mrs_fpsr", mrs_fpsr(0)),
        ("mrs_fpcr", mrs_fpcr(0)),
        ("nop", NOP),
        ("bti_c", BTI_C),
        ("bti_j", BTI_J),
        ("bti_jc", BTI_JC),
        ("paciasp", PACIASP),
        ("pacibsp", PACIBSP),
    ]
}

/// `(id, word, instruction)` from the checked-in file.
fn gas_vectors() -> Vec<(String, u32, String)> {
    include_str!("../../tests/data/aarch64-vectors.txt")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split('\t');
            let id = f.next().unwrap().to_string();
            let word = u32::from_str_radix(f.next().unwrap(), 16).unwrap();
            (id, word, f.next().unwrap().to_string())
        })
        .collect()
}

/// Every encoder form, the bootstrap and the 4 KiB stub (up to its return slot) come out
/// exactly as GNU `as` assembled them.
#[test]
fn encodings_match_the_gnu_as_vectors() {
    let gas = gas_vectors();
    let mine = vectors();
    for (id, word) in &mine {
        let (_, want, asm) = gas
            .iter()
            .find(|(g, ..)| g == id)
            .unwrap_or_else(|| panic!("{id} missing from the vector file"));
        assert_eq!(
            *word, *want,
            "{id} ({asm}): {word:#010x}, as says {want:#010x}"
        );
    }
    let boot = words(&remote_call::bootstrap_code());
    let stub = words(&remote_call::call_stub(4096).code);
    let mut seen = (0, 0);
    for (id, want, asm) in &gas {
        let ours = if let Some(n) = id.strip_prefix("boot.") {
            seen.0 += 1;
            boot[n.parse::<usize>().unwrap()]
        } else if let Some(n) = id.strip_prefix("stub4k.") {
            seen.1 += 1;
            stub[n.parse::<usize>().unwrap()]
        } else if let Some((_, w)) = mine.iter().find(|(m, _)| m == id) {
            *w
        } else if id.starts_with("blra") {
            // Only decoded (is_call), not encoded by rpatch.
            assert!(insn::is_call(*want), "{asm} is a call");
            continue;
        } else {
            panic!("vector {id} has no encoder in the test table");
        };
        assert_eq!(ours, *want, "{id} ({asm})");
    }
    assert_eq!(
        seen.0,
        boot.len(),
        "every bootstrap instruction has a vector"
    );
    let stub_len = remote_call::call_stub(4096).slot as usize / 4;
    assert_eq!(seen.1, stub_len, "every stub instruction has a vector");
}

/// Capstone decodes each encoder's word to the instruction GNU `as` was given (same mnemonic,
/// modulo the `movz` → `mov` alias and labels for branch targets).
#[test]
fn capstone_agrees_with_every_vector() {
    for (id, word, asm) in gas_vectors() {
        let got = text(word, AT);
        let want = asm
            .split_whitespace()
            .next()
            .unwrap()
            .replace("movz", "mov");
        let got_mnemonic = got.split_whitespace().next().unwrap();
        assert_eq!(
            got_mnemonic, want,
            "{id}: capstone says `{got}` for `{asm}`"
        );
    }
    assert_eq!(
        text(insn::ldr_literal(16, 8).unwrap(), 0x1000),
        "ldr x16, #0x1008"
    );
    assert_eq!(text(insn::add_imm(31, 19, 0x100), 0), "add sp, x19, #0x100");
    assert_eq!(
        text(insn::stp_q(30, 31, 20, 0x1e0), 0),
        "stp q30, q31, [x20, #0x1e0]"
    );
}

/// A small deterministic generator for the randomized comparisons.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// The last `#0x...` operand of capstone's text: a branch target or computed address.
fn last_address(text: &str) -> u64 {
    let hex = text.rsplit("#0x").next().unwrap();
    u64::from_str_radix(hex.trim_end_matches(']'), 16).unwrap()
}

/// The hand decoder of PC-relative instructions agrees with capstone on thousands of random
/// B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, ADR and ADRP words, forwards and backwards.
#[test]
fn pc_relative_decoding_agrees_with_capstone() {
    let classes: [(u32, u32, &str); 7] = [
        (0xfc00_0000, 0x1400_0000, "b"),
        (0xfc00_0000, 0x9400_0000, "bl"),
        (0xff00_0010, 0x5400_0000, "b."),
        (0x7e00_0000, 0x3400_0000, "cb"),
        (0x7e00_0000, 0x3600_0000, "tb"),
        (0x9f00_0000, 0x1000_0000, "adr"),
        (0x9f00_0000, 0x9000_0000, "adrp"),
    ];
    let pc = 0x10_0000_1000u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cs = cs();
    for (mask, value, name) in classes {
        for _ in 0..2000 {
            let w = (rng.next() & !mask) | value;
            let insns = cs.disasm_count(&w.to_le_bytes(), pc, 1).unwrap();
            let Some(i) = insns.iter().next() else {
                continue;
            };
            let text = format!("{} {}", i.mnemonic().unwrap(), i.op_str().unwrap());
            assert!(text.starts_with(name), "{w:#010x}: {text}");
            let want = last_address(&text);
            let got = match insn::pc_relative(w, pc) {
                Some(PcRelative::Branch(t) | PcRelative::Call(t) | PcRelative::Address(t)) => t,
                Some(PcRelative::Page(p)) => p,
                None => panic!("{w:#010x} ({text}) not decoded"),
            };
            assert_eq!(got, want, "{w:#010x}: {text}");
            let call = matches!(insn::pc_relative(w, pc), Some(PcRelative::Call(_)));
            assert_eq!(call, name == "bl", "{text}");
        }
    }
    // Non-branches are not mistaken for one.
    for w in [
        insn::NOP,
        insn::ldr(0, 1, 8),
        insn::ret(30),
        insn::br(16),
        insn::SVC0,
    ] {
        assert_eq!(insn::pc_relative(w, pc), None, "{}", text(w, pc));
    }
}

/// `is_call` holds exactly for what capstone calls bl, blr, blraa, blrab, blraaz, blrabz,
/// over random words of the branch-register and immediate-branch encoding spaces.
#[test]
fn is_call_agrees_with_capstone() {
    let calls = ["bl", "blr", "blraa", "blrab", "blraaz", "blrabz"];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let cs = cs();
    let mut seen_calls = std::collections::BTreeSet::new();
    for (mask, value) in [
        (0xfe00_0000, 0xd600_0000), // branch (register) space, including PAC forms
        (0xffff_f000, 0xd63f_0000), // BLR and its PAC variants, densely
        (0xffff_f000, 0xd73f_0000),
        (0x7c00_0000, 0x1400_0000), // B and BL
    ] {
        for _ in 0..4000 {
            let w = (rng.next() & !mask) | value;
            let insns = cs.disasm_count(&w.to_le_bytes(), 0x1000, 1).unwrap();
            let mnemonic = insns
                .iter()
                .next()
                .map(|i| i.mnemonic().unwrap().to_string());
            let want = mnemonic.as_deref().is_some_and(|m| calls.contains(&m));
            assert_eq!(insn::is_call(w), want, "{w:#010x}: {mnemonic:?}");
            if want {
                seen_calls.insert(mnemonic.unwrap());
            }
        }
    }
    assert_eq!(
        seen_calls.len(),
        calls.len(),
        "every call form was drawn: {seen_calls:?}"
    );
    assert!(is_call_before(insn::bl(0, 0x40).unwrap().to_le_bytes()));
    assert!(!is_call_before(insn::b(0, 0x40).unwrap().to_le_bytes()));
}

#[test]
fn branch_reaches_128_mib_either_way_only() {
    let at = 0x4000_0000;
    assert_eq!(
        jump_destination(&b(at, at + 0x1000).unwrap(), at),
        Some(at + 0x1000)
    );
    let far = at + B_REACH - 4;
    assert_eq!(jump_destination(&b(at, far).unwrap(), at), Some(far));
    assert!(b(at, at + B_REACH).is_none());
    let back = at - B_REACH;
    assert_eq!(jump_destination(&b(at, back).unwrap(), at), Some(back));
    assert!(b(at, back - 4).is_none());
    assert!(b(at, at + 2).is_none(), "targets are 4-byte aligned");
    assert!(b(at + 2, at).is_none());
}

#[test]
fn absolute_jump_and_island_slot_decode() {
    let slot = island_slot(0x7fff_1234_5678);
    assert_eq!(slot.len(), 16);
    assert_eq!(jump_destination(&slot, 0x5000), Some(0x7fff_1234_5678));
    let text = disasm(&slot[..8], 0x5000);
    assert_eq!(
        text,
        [
            Some("ldr x16, #0x5008".to_string()),
            Some("br x16".to_string())
        ]
    );
}

fn code(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

const F: u64 = 0x40_0000;

fn add_x0() -> u32 {
    insn::add_imm(0, 0, 1)
}

#[test]
fn plain_entry_gets_a_branch_or_an_absolute_jump() {
    let c = code(&[add_x0(), add_x0(), add_x0(), add_x0(), insn::ret(30)]);
    let p = entry_patch(&c, F, EntryJump::Branch(F + 0x10_0000)).unwrap();
    assert_eq!(p.range(), F..F + 4);
    assert_eq!(jump_destination(&p.bytes, p.at), Some(F + 0x10_0000));
    let p = entry_patch(&c, F, EntryJump::Absolute(0x7f00_0000_0000)).unwrap();
    assert_eq!(p.range(), F..F + 16);
    assert_eq!(jump_destination(&p.bytes, p.at), Some(0x7f00_0000_0000));
    // Too far for `b`; too short for the absolute jump.
    assert_eq!(
        entry_patch(&c, F, EntryJump::Branch(F + B_REACH)),
        Err(Unpatchable::OutOfReach {
            from: F,
            to: F + B_REACH
        })
    );
    let short = code(&[add_x0(), insn::ret(30)]);
    assert_eq!(
        entry_patch(&short, F, EntryJump::Absolute(0x7f00_0000_0000)),
        Err(Unpatchable::TooSmall {
            available: 8,
            needed: 16
        })
    );
}

#[test]
fn bti_stays_and_the_branch_goes_after_it() {
    for bti in [insn::BTI_C, insn::BTI_J, insn::BTI_JC] {
        let c = code(&[bti, add_x0(), insn::ret(30)]);
        assert_eq!(entry_marker(&c), EntryMarker::Bti(bti));
        assert_eq!(entry_prefix_len(&c), 4);
        let p = entry_patch(&c, F, EntryJump::Branch(F + 0x1000)).unwrap();
        assert_eq!(p.range(), F + 4..F + 8);
        assert_eq!(jump_destination(&p.bytes, p.at), Some(F + 0x1000));
    }
    // A branch back onto the kept bti would fall through into the jump: refused.
    let c = code(&[
        insn::BTI_C,
        add_x0(),
        add_x0(),
        insn::cbnz(0, F + 12, F).unwrap(),
        insn::ret(30),
    ]);
    assert_eq!(
        entry_patch(&c, F, EntryJump::Branch(F + 0x1000)),
        Err(Unpatchable::BranchIntoPatch {
            from: F + 12,
            target: F
        })
    );
}

#[test]
fn pac_signing_entry_is_replaced_by_bti_c_and_the_branch() {
    for pac in [insn::PACIASP, insn::PACIBSP] {
        let c = code(&[pac, add_x0(), add_x0(), insn::ret(30)]);
        assert_eq!(entry_marker(&c), EntryMarker::PacSign(pac));
        assert_eq!(entry_prefix_len(&c), 0);
        let p = entry_patch(&c, F, EntryJump::Branch(F + 0x2000)).unwrap();
        assert_eq!(p.range(), F..F + 8, "the check covers 8 bytes");
        let text = disasm(&p.bytes, F);
        assert_eq!(text[0].as_deref(), Some("bti c"));
        assert_eq!(jump_destination(&p.bytes[4..], F + 4), Some(F + 0x2000));
        // Nothing that signs is left in front of the jump, and none in the written bytes.
        assert!(
            !words(&p.bytes)
                .iter()
                .any(|w| [insn::PACIASP, insn::PACIBSP].contains(w))
        );
        let p = entry_patch(&c, F, EntryJump::Absolute(0x7f00_0000_0000)).unwrap_err();
        assert_eq!(
            p,
            Unpatchable::TooSmall {
                available: 16,
                needed: 20
            }
        );
    }
    // A branch to the second instruction (now the `b`) is refused.
    let c = code(&[
        insn::PACIASP,
        add_x0(),
        insn::b(F + 8, F + 4).unwrap(),
        insn::ret(30),
    ]);
    assert!(entry_patch(&c, F, EntryJump::Branch(F + 0x2000)).is_err());
}

#[test]
fn branches_into_the_patch_are_refused_and_calls_to_the_entry_are_not() {
    let patch = F..F + 4;
    let ok = |ws: &[u32]| check_branches(&code(ws), F, patch.clone()).is_ok();
    // A recursive `bl` of the entry is an ordinary call.
    assert!(ok(&[add_x0(), insn::bl(F + 4, F).unwrap(), insn::ret(30)]));
    // A loop to the entry, a self tail call, a tbz to it: refused.
    assert!(!ok(&[
        add_x0(),
        insn::cbnz(0, F + 4, F).unwrap(),
        insn::ret(30)
    ]));
    assert!(!ok(&[add_x0(), insn::b(F + 4, F).unwrap()]));
    let tbz_to_entry = 0x3600_0000 | ((-1i32 as u32) & 0x3fff) << 5; // tbz w0, #0, .-4
    assert!(!ok(&[add_x0(), tbz_to_entry, insn::ret(30)]));
    let b_eq_entry = 0x5400_0000 | ((-2i32 as u32) & 0x7ffff) << 5; // b.eq .-8
    assert!(!ok(&[add_x0(), insn::NOP, b_eq_entry, insn::ret(30)]));
    // A branch past the patched bytes is fine.
    assert!(ok(&[
        insn::cbz(0, F, F + 8).unwrap(),
        add_x0(),
        insn::ret(30)
    ]));
    // A `bl` into the middle of a 16-byte absolute jump is refused.
    let long = F..F + 16;
    let c = code(&[
        add_x0(),
        add_x0(),
        add_x0(),
        add_x0(),
        insn::bl(F + 16, F + 8).unwrap(),
    ]);
    assert_eq!(
        check_branches(&c, F, long),
        Err(Unpatchable::BranchIntoPatch {
            from: F + 16,
            target: F + 8
        })
    );
}

#[test]
fn computed_addresses_into_the_patch_are_refused() {
    let patch = F..F + 16;
    let ok = |ws: &[u32]| check_branches(&code(ws), F, patch.clone()).is_ok();
    let filler = [add_x0(); 4];
    // adr of a label inside the patched bytes (a computed jump target): refused.
    let mut c = filler.to_vec();
    c.extend([insn::adr(1, F + 16, F + 8).unwrap(), insn::br(1)]);
    assert!(!ok(&c));
    // adr of the entry itself (a pointer to the function) is a call target like any other.
    let mut c = filler.to_vec();
    c.extend([insn::adr(1, F + 16, F).unwrap(), insn::ret(30)]);
    assert!(ok(&c));
    // adrp + add forming an address inside the patch.
    let adrp_x2 = 0x9000_0002; // adrp x2, <this page>
    let mut c = filler.to_vec();
    c.extend([adrp_x2, insn::add_imm(2, 2, F % 4096 + 4), insn::br(2)]);
    assert!(!ok(&c));
    let mut c = filler.to_vec();
    c.extend([adrp_x2, insn::add_imm(2, 2, F % 4096 + 64), insn::br(2)]);
    assert!(ok(&c), "an address past the patch");
}

#[test]
fn pac_bits_are_stripped_with_the_mask() {
    let mask = 0x007f_0000_0000_0000; // 48-bit VA, no TBI for instructions
    assert_eq!(
        strip_pac(0x002a_aaaa_dead_beef, mask),
        0x0000_aaaa_dead_beef
    );
    assert_eq!(
        strip_pac(0x0000_aaaa_dead_beef, mask),
        0x0000_aaaa_dead_beef
    );
    assert_eq!(
        strip_pac(0xff80_8000_0000_1000, mask),
        0xffff_8000_0000_1000
    );
}

#[test]
fn page_size_comes_from_the_auxiliary_vector() {
    let auxv = |pairs: &[(u64, u64)]| -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|(k, v)| [k.to_le_bytes(), v.to_le_bytes()])
            .flatten()
            .collect()
    };
    for page in PAGE_SIZES {
        assert_eq!(
            page_size_from_auxv(&auxv(&[(33, 1), (6, page), (0, 0)])),
            Some(page)
        );
    }
    assert_eq!(
        page_size_from_auxv(&auxv(&[(33, 1), (0, 0), (6, 4096)])),
        None
    );
    assert_eq!(page_size_from_auxv(&auxv(&[(6, 8192), (0, 0)])), None);
}

// ---- remote calls ----

mod emulate;

use emulate::{Cpu, Sys};

const RT_SIGPROCMASK: u64 = 135;
const PPOLL: u64 = 73;

fn resume_example() -> ResumeState {
    let mut r = ResumeState::default();
    for (i, x) in r.x.iter_mut().enumerate() {
        *x = 0x1000 + i as u64;
    }
    r.sp = 0x7ffc_0000_1230;
    r.pc = 0x7f00_1234_4444;
    r.pstate = 0x6000_0000 | remote_call::PSTATE_BTYPE | remote_call::PSTATE_SS;
    r
}

/// FP/SIMD registers with a distinct value each.
fn fp_example() -> FpState {
    let mut fp = FpState::default();
    for (i, v) in fp.v.iter_mut().enumerate() {
        *v = 0x0123_4567_89ab_cdef_0000_0000_0000_0000 | i as u128;
    }
    (fp.fpsr, fp.fpcr) = (0x8000_0010, 0x0040_0000);
    fp
}

fn word_at(bytes: &[u8], off: u64) -> u64 {
    u64::from_le_bytes(bytes[off as usize..][..8].try_into().unwrap())
}

#[test]
fn register_sets_round_trip() {
    let r = resume_example();
    let bytes = r.to_prstatus();
    assert_eq!(bytes.len(), ResumeState::PRSTATUS_LEN);
    assert_eq!(ResumeState::from_prstatus(&bytes), Some(r));
    assert_eq!(word_at(&bytes, 8 * 32), r.pc);
    assert_eq!(r.words()[33], r.pstate);
    assert_eq!(r.cleaned().pstate, 0x6000_0000, "BTYPE and SS cleared");
    assert_eq!(r.cleaned().x, r.x);
    let fp = fp_example();
    let bytes = fp.to_prfpreg();
    assert_eq!(bytes.len(), FpState::PRFPREG_LEN);
    assert_eq!(FpState::from_prfpreg(&bytes), Some(fp));
}

/// The register names of `ldp`/`ldr` loads in capstone text, in order.
fn loaded_registers(text: &[String]) -> Vec<u32> {
    text.iter()
        .filter(|t| t.starts_with("ldp x") || t.starts_with("ldr x"))
        .flat_map(|t| {
            let ops = t.split_once(' ').unwrap().1;
            ops.split(", ")
                .take_while(|o| o.starts_with('x'))
                .map(|o| o[1..].parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn bootstrap_code_is_the_documented_sequence() {
    let code = remote_call::bootstrap_code();
    assert_eq!(code.len(), BOOTSTRAP_LEN);
    let text: Vec<String> = disasm(&code, 0).into_iter().map(Option::unwrap).collect();
    assert_eq!(
        text[..14],
        [
            "svc #0",
            "ldp x0, x1, [sp]",
            "ldp x2, x3, [sp, #0x10]",
            "ldp x4, x5, [sp, #0x20]",
            "ldr x8, [sp, #0x30]",
            "svc #0",
            "mov x0, #0",
            "mov x1, #0",
            "add x2, sp, #0x40",
            "mov x3, #0",
            "mov x8, #0x49",
            "svc #0",
            "cmn x0, #4",
            "b.eq #0x18",
        ]
    );
    assert_eq!(BOOTSTRAP_PARK, 0x18, "the park starts after both mmaps");
    assert_eq!(
        text[14..22],
        [
            "mov x0, #2",
            "add x1, sp, #0x50",
            "mov x2, #0",
            "mov x3, #8",
            "mov x8, #0x87",
            "svc #0",
            "ldr x16, [sp, #0x168]",
            "msr nzcv, x16",
        ]
    );
    // Every register but x16 from the frame, then x16 = pc, the thread's sp, `ret x16`.
    let mut loaded = loaded_registers(&text[22..]);
    assert_eq!(loaded.pop(), Some(16));
    loaded.sort();
    assert_eq!(loaded, (0..31).filter(|&r| r != 16).collect::<Vec<_>>());
    assert_eq!(
        text[text.len() - 3..],
        ["ldr x16, [sp, #0x160]", "add sp, sp, #0x170", "ret x16"]
    );
    assert_eq!(
        (boot_frame::SAVED + 8 * 32, BOOTSTRAP_FRAME_LEN),
        (0x160, 0x170)
    );
    assert!(!text.iter().any(|t| t.starts_with("br")), "never `br`");
}

/// A CPU set up to run the bootstrap from slack at `slack` for a thread at `resume`.
fn bootstrap_cpu(slack: u64, resume: &ResumeState, fp: &FpState, park: Duration) -> Cpu {
    let frame_at = remote_call::bootstrap_frame_addr(resume.sp).unwrap();
    let second = Syscall {
        nr: SYS_MMAP,
        args: [10, 11, 12, 13, 14, 15],
    };
    let mut cpu = Cpu::new();
    cpu.code
        .insert(slack, remote_call::bootstrap_code().to_vec());
    cpu.write(
        frame_at,
        &remote_call::bootstrap_frame(&second, 0xabc, park, resume),
    );
    // The tracer's entry registers: its own, then pc, sp and the first call.
    cpu.x = resume.x;
    cpu.x[8] = SYS_MMAP;
    cpu.x[..6].copy_from_slice(&[1, 2, 3, 4, 5, 6]);
    (cpu.pc, cpu.sp) = (slack, frame_at);
    (cpu.q, cpu.fpsr, cpu.fpcr) = (fp.v, fp.fpsr.into(), fp.fpcr.into());
    cpu.mask = !0;
    cpu
}

use std::time::Duration;

/// Run without a tracer, the bootstrap makes its two mmaps, parks (again after a handler cut
/// the park short), puts the thread's own mask back and returns to the thread's PC with every
/// register, the flags, the stack pointer and the FP/SIMD state as they were, but x16 (= pc).
#[test]
fn bootstrap_returns_by_itself_to_the_thread() {
    let resume = resume_example();
    let fp = fp_example();
    let park = Duration::from_millis(1500);
    let mut cpu = bootstrap_cpu(0x7f00_0000_0fa0, &resume, &fp, park);
    // mmap, mmap, ppoll cut short by a handler, ppoll timing out, rt_sigprocmask.
    cpu.sys_results = vec![0x5000, 0x6000, -4, 0, 0];
    cpu.run_until(resume.pc, 200);
    let frame_at = resume.sp - BOOTSTRAP_FRAME_LEN;
    let ppoll = Sys {
        nr: PPOLL,
        args: [0, 0, frame_at + boot_frame::PARK_TIME, 0, 0x6000, 0],
    };
    let nr: Vec<u64> = cpu.syscalls.iter().map(|s| s.nr).collect();
    assert_eq!(nr, [SYS_MMAP, SYS_MMAP, PPOLL, PPOLL, RT_SIGPROCMASK]);
    assert_eq!(cpu.syscalls[0].args, [1, 2, 3, 4, 5, 6]);
    assert_eq!(cpu.syscalls[1].args, [10, 11, 12, 13, 14, 15]);
    assert_eq!((cpu.syscalls[2].args[..4]), ppoll.args[..4]);
    assert_eq!(
        (cpu.read_u64(frame_at + 64), cpu.read_u64(frame_at + 72)),
        (1, 500_000_000),
        "the park time"
    );
    assert_eq!(cpu.mask, 0xabc, "the thread's own mask");
    let mut want = resume.x;
    want[16] = resume.pc;
    assert_eq!(cpu.x, want);
    assert_eq!((cpu.sp, cpu.nzcv), (resume.sp, 0x6000_0000));
    assert_eq!(
        (cpu.q, cpu.fpsr, cpu.fpcr),
        (fp.v, fp.fpsr.into(), fp.fpcr.into())
    );
}

#[test]
fn bootstrap_frame_sits_right_below_an_aligned_stack_pointer() {
    assert_eq!(
        remote_call::bootstrap_frame_addr(0x7ffc_0000_1230),
        Some(0x7ffc_0000_1230 - 368)
    );
    assert_eq!(remote_call::bootstrap_frame_addr(0x7ffc_0000_1238), None);
    let f = remote_call::bootstrap_frame(
        &Syscall {
            nr: SYS_MMAP,
            args: [0; 6],
        },
        7,
        PARK_TIME,
        &resume_example(),
    );
    assert_eq!(
        word_at(&f, boot_frame::SAVED + 8 * 33),
        0x6000_0000,
        "PSTATE cleaned"
    );
    assert_eq!(word_at(&f, boot_frame::PARK_TIME), 5);
}

#[test]
fn region_layout_fits_every_page_size() {
    for page in PAGE_SIZES {
        let r = StubRegion {
            base: 0x7f00_0000_0000,
            page,
        };
        assert_eq!(r.stack_top() % 16, 0);
        assert_eq!((r.data() + data::FP) % 16, 0);
        assert_eq!(r.data_len() % page, 0);
        assert_eq!(r.rw_start() % page, 0);
        assert!(r.scratch_offset() + remote_call::SCRATCH_SIZE <= r.data_len());
        assert_eq!(r.len(), page + STACK_SIZE + r.data_len());
        assert!(r.in_code(r.base + page - 4) && !r.in_code(r.rw_start()));
        let stub = remote_call::call_stub(page);
        assert_eq!(stub.code.len() as u64, page);
        // Both `adr`s find this region's data block.
        let adrs: Vec<u64> = words(&stub.code)
            .iter()
            .enumerate()
            .filter_map(
                |(i, &w)| match insn::pc_relative(w, r.code() + 4 * i as u64) {
                    Some(PcRelative::Address(t)) => Some(t),
                    _ => None,
                },
            )
            .collect();
        assert_eq!(adrs, [r.data(), r.data()], "page {page}");
    }
}

#[test]
fn call_block_encodes_the_header_and_the_resume_state() {
    let block = CallBlock {
        function: 0x1111,
        args: [1, 2, 3, 4, 5, 6],
        errno_location: 0x2222,
        then_if_zero: 0x3333,
        mask: 0x3,
        resume: resume_example(),
        park: Duration::from_millis(250),
    };
    let bytes = block.encode(0x3000);
    assert_eq!(bytes.len() as u64, data::FP);
    let w = |off| word_at(&bytes, off);
    assert_eq!(w(data::MAGIC), MAGIC_VALUE);
    assert_eq!(w(data::DATA_LEN), 0x3000);
    assert_eq!(w(data::DONE), Done::Running as u64);
    assert_eq!(w(data::FUNCTION), 0x1111);
    assert_eq!(w(data::ARGS + 40), 6);
    assert_eq!(w(data::ERRNO_LOCATION), 0x2222);
    assert_eq!(w(data::THEN), 0x3333);
    assert_eq!(w(data::MASK), 0x3);
    assert_eq!(w(data::ERRNO_PTR), 0);
    assert_eq!(
        (w(data::PARK_TIME), w(data::PARK_TIME + 8)),
        (0, 250_000_000)
    );
    assert_eq!(w(data::SAVED + 8 * 30), 0x1000 + 30);
    assert_eq!(w(data::SAVED + 8 * 32), 0x7f00_1234_4444);
    assert_eq!(w(data::SAVED + 8 * 33), 0x6000_0000, "PSTATE cleaned");
    let idle = remote_call::idle_header(0x3000);
    assert_eq!(word_at(&idle, data::MAGIC), MAGIC_VALUE);
    assert_eq!(word_at(&idle, data::DONE), Done::Settled as u64);
}

const REGION: StubRegion = StubRegion {
    base: 0x7f00_1230_0000,
    page: 4096,
};

/// A CPU that enters the stub of `REGION` for one call (the tracer's entry registers: the
/// thread's own, pc and sp changed; its own FP/SIMD state), with `getpid`-like function
/// 0x4000_0000 returning `result`, `dlerror`-like 0x4000_1000 and `__errno_location`
/// 0x4000_2000 returning 0x5000 (errno = 11).
fn stub_cpu(resume: &ResumeState, fp: &FpState, result: u64) -> (Cpu, remote_call::CallStub) {
    let stub = remote_call::call_stub(REGION.page);
    let mut cpu = Cpu::new();
    let mut code = stub.code.clone();
    let slot = remote_call::return_slot(REGION.code() + stub.slot, resume.pc);
    code[stub.slot as usize..][..RETURN_SLOT_LEN].copy_from_slice(&slot.bytes);
    cpu.code.insert(REGION.code(), code);
    let block = CallBlock {
        function: 0x4000_0000,
        args: [1, 2, 3, 4, 5, 6],
        errno_location: 0x4000_2000,
        then_if_zero: 0x4000_1000,
        mask: 0x3,
        resume: *resume,
        park: PARK_TIME,
    };
    cpu.write(REGION.data(), &block.encode(REGION.data_len()));
    cpu.write(REGION.data() + data::FP, &[0; 528]);
    cpu.write(0x5000, &11u32.to_le_bytes());
    cpu.functions.insert(0x4000_0000, (result, vec![]));
    cpu.functions.insert(0x4000_1000, (0x7777, vec![]));
    cpu.functions.insert(0x4000_2000, (0x5000, vec![]));
    cpu.x = resume.x;
    (cpu.pc, cpu.sp) = (REGION.code() + stub.entry, REGION.stack_top());
    (cpu.q, cpu.fpsr, cpu.fpcr) = (fp.v, fp.fpsr.into(), fp.fpcr.into());
    // The tracer blocked signals with ptrace: the thread's own mask plus the call's.
    cpu.mask = 0xfff3;
    (cpu, stub)
}

/// The stub's whole run without a tracer: saves errno, calls with the six arguments, stores the
/// result, restores errno, sets DONE, parks (again after a handler cut the park short), then
/// puts back FP/SIMD state, the thread's own mask, flags, sp and every register — x16 included,
/// through a `b` return slot — and lands on the thread's PC.
#[test]
fn stub_makes_the_call_and_returns_by_itself_exactly() {
    let resume = resume_example();
    let fp = fp_example();
    let (mut cpu, stub) = stub_cpu(&resume, &fp, 1234);
    cpu.write(0x5000, &11u32.to_le_bytes());
    // ppoll cut short, ppoll timing out, rt_sigprocmask.
    cpu.sys_results = vec![-4, 0, 0];
    cpu.run_until(resume.pc, 400);
    let data = REGION.data();
    let calls = &cpu.functions[&0x4000_0000].1;
    assert_eq!(calls, &[[1, 2, 3, 4, 5, 6]]);
    assert!(
        cpu.functions[&0x4000_1000].1.is_empty(),
        "no dlerror after success"
    );
    assert_eq!(cpu.read_u64(data + data::RESULT), 1234);
    assert_eq!(cpu.read_u64(data + data::DONE), Done::Returning as u64);
    let nr: Vec<u64> = cpu.syscalls.iter().map(|s| s.nr).collect();
    assert_eq!(nr, [PPOLL, PPOLL, RT_SIGPROCMASK]);
    assert_eq!(cpu.syscalls[0].args[..4], [0, 0, data + data::PARK_TIME, 0]);
    assert_eq!(cpu.syscalls[2].args[..3], [2, data + data::MASK, 0]);
    assert_eq!(cpu.mask, 0x3, "the thread's own mask is back");
    assert_eq!(cpu.x, resume.x, "every register, x16 included");
    assert_eq!((cpu.sp, cpu.nzcv), (resume.sp, 0x6000_0000));
    assert_eq!(
        (cpu.q, cpu.fpsr, cpu.fpcr),
        (fp.v, fp.fpsr.into(), fp.fpcr.into())
    );
    assert_eq!(cpu.read(0x5000, 4), 11u32.to_le_bytes(), "errno kept");
    assert!(cpu.pc >= REGION.code() + stub.tail || cpu.pc == resume.pc);
}

/// A PC beyond ±128 MiB of the slot: the slot loads it into x16 and `ret`s, the only register
/// that does not come back.
#[test]
fn a_far_pc_is_reached_through_x16() {
    let mut resume = resume_example();
    resume.pc = 0x55_0000_4444;
    let slot = remote_call::return_slot(REGION.code() + 0x300, resume.pc);
    assert!(!slot.exact);
    assert_eq!(
        disasm(&slot.bytes[..8], REGION.code() + 0x300),
        [
            Some(format!("ldr x16, #{:#x}", REGION.code() + 0x308)),
            Some("ret x16".to_string())
        ]
    );
    let (mut cpu, _) = stub_cpu(&resume, &fp_example(), 1);
    cpu.run_until(resume.pc, 400);
    let mut want = resume.x;
    want[16] = resume.pc;
    assert_eq!(cpu.x, want);
    let near = remote_call::return_slot(REGION.code() + 0x300, REGION.code() + 0x7ff_0000);
    assert!(near.exact);
    assert_eq!(
        disasm(&near.bytes, REGION.code() + 0x300)[0],
        Some(format!("b #{:#x}", REGION.code() + 0x7ff_0000))
    );
}

/// When the function returns 0 the second function (dlerror) runs in the same stub run.
#[test]
fn a_zero_result_calls_the_then_function() {
    let resume = resume_example();
    let (mut cpu, _) = stub_cpu(&resume, &fp_example(), 0);
    cpu.run_until(resume.pc, 400);
    assert_eq!(cpu.functions[&0x4000_1000].1.len(), 1);
    assert_eq!(cpu.read_u64(REGION.data() + data::THEN_RESULT), 0x7777);
    assert_eq!(cpu.x, resume.x);
}

/// The restore path, where the tracer sends a thread whose call faulted: errno back, DONE,
/// the park, the return.
#[test]
fn the_restore_path_ends_like_a_return() {
    let resume = resume_example();
    let (mut cpu, stub) = stub_cpu(&resume, &fp_example(), 1);
    // Where the fault left things: errno saved, errno clobbered by the callee.
    cpu.write(REGION.data() + data::ERRNO_PTR, &0x5000u64.to_le_bytes());
    cpu.write(REGION.data() + data::ERRNO_VALUE, &11u64.to_le_bytes());
    cpu.write(REGION.data() + data::FP, &fp_example().to_prfpreg());
    cpu.write(0x5000, &99u32.to_le_bytes());
    cpu.pc = REGION.code() + stub.restore;
    cpu.run_until(resume.pc, 400);
    assert_eq!(cpu.read(0x5000, 4), 11u32.to_le_bytes());
    assert_eq!(
        cpu.read_u64(REGION.data() + data::DONE),
        Done::Returning as u64
    );
    assert_eq!((cpu.x, cpu.mask), (resume.x, 0x3));
}

#[test]
fn call_stub_layout_is_as_documented() {
    let stub = remote_call::call_stub(REGION.page);
    let text: Vec<String> = disasm(&stub.code[..stub.slot as usize], REGION.code())
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let at = |off: u64| &text[(off / 4) as usize];
    assert_eq!(stub.entry, 0);
    assert_eq!(at(stub.entry), &format!("adr x19, #{:#x}", REGION.data()));
    assert_eq!(at(stub.restore), &format!("adr x19, #{:#x}", REGION.data()));
    // The DONE store comes right before the tail, which starts with the park.
    assert_eq!(at(stub.tail - 4), "str x0, [x19, #0x10]");
    assert_eq!(at(stub.tail - 8), "mov x0, #1");
    assert_eq!(at(stub.tail + 8), "add x2, x19, #0x88");
    assert_eq!(
        at(stub.tail + 28),
        &format!("b.eq #{:#x}", REGION.code() + stub.tail)
    );
    // No `br` anywhere, calls through `blr x16` only, the page ends in traps.
    assert!(!text.iter().any(|t| t.starts_with("br ")));
    assert_eq!(
        text.iter()
            .filter(|t| t.starts_with("blr"))
            .collect::<Vec<_>>(),
        ["blr x16"; 3]
    );
    assert!(
        words(&stub.code[stub.slot as usize..])
            .iter()
            .all(|&w| w == insn::brk(0))
    );
    // The tail restores every register but x16 and x19 from SAVED, then those two.
    let tail_text = &text[(stub.tail / 4) as usize..];
    let mut loaded = loaded_registers(tail_text);
    assert_eq!(loaded.split_off(loaded.len() - 2), [16, 19]);
    loaded.retain(|&r| r != 16);
    loaded.sort();
    assert_eq!(
        loaded,
        (0..31).filter(|&r| r != 16 && r != 19).collect::<Vec<_>>()
    );
    // A later rpatch recognises the page whatever a call left in the slot.
    let mut found = stub.code.clone();
    found[stub.slot as usize..][..RETURN_SLOT_LEN]
        .copy_from_slice(&remote_call::return_slot(REGION.code() + stub.slot, 0x1000).bytes);
    assert!(stub.matches(&found));
    found[0] ^= 1;
    assert!(!stub.matches(&found));
}

#[test]
fn the_stub_depends_on_the_page_size_only() {
    assert_eq!(remote_call::call_stub(4096), remote_call::call_stub(4096));
    assert_ne!(
        remote_call::call_stub(4096).code[..4],
        remote_call::call_stub(65536).code[..4]
    );
}
