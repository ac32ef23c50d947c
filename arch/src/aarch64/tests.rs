//! The arm64 encodings checked two ways: decoded by capstone, and against words GNU `as`
//! assembled from the same instructions (`arch/tests/data/aarch64-vectors.txt`).

use super::insn::{self, PcRelative};
use super::remote_call::{
    self, BOOTSTRAP_LEN, CallBlock, Done, FpState, MAGIC_VALUE, ResumeState, STACK_SIZE,
    StubRegion, Syscall, data, frame,
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

/// Every encoder form, the bootstrap and the 4 KiB stub come out exactly as GNU `as`
/// assembled them.
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
    let stub_len = remote_call::call_stub(4096).tail as usize / 4;
    assert_eq!(seen.1, stub_len, "every stub instruction has a vector");
}

/// Capstone decodes each encoder's word to the instruction GNU `as` was given (same mnemonic,
/// modulo the `movz` → `mov` alias).
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

fn resume_example() -> ResumeState {
    let mut r = ResumeState::default();
    for (i, x) in r.x.iter_mut().enumerate() {
        *x = 0x1000 + i as u64;
    }
    r.sp = 0x7ffc_0000_1230;
    r.pc = 0x55_0000_4444;
    r.pstate = 0x6000_0000 | remote_call::PSTATE_BTYPE | remote_call::PSTATE_SS;
    r
}

fn word_at(bytes: &[u8], off: u64) -> u64 {
    u64::from_le_bytes(bytes[off as usize..][..8].try_into().unwrap())
}

fn word32_at(bytes: &[u8], off: u64) -> u32 {
    u32::from_le_bytes(bytes[off as usize..][..4].try_into().unwrap())
}

#[test]
fn register_sets_round_trip() {
    let r = resume_example();
    let bytes = r.to_prstatus();
    assert_eq!(bytes.len(), ResumeState::PRSTATUS_LEN);
    assert_eq!(ResumeState::from_prstatus(&bytes), Some(r));
    assert_eq!(word_at(&bytes, 8 * 32), r.pc);
    let mut fp = FpState::default();
    fp.v[31] = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;
    (fp.fpsr, fp.fpcr) = (0x11, 0x0300_0000);
    let bytes = fp.to_prfpreg();
    assert_eq!(bytes.len(), FpState::PRFPREG_LEN);
    assert_eq!(FpState::from_prfpreg(&bytes), Some(fp));
}

#[test]
fn bootstrap_code_is_the_documented_sequence() {
    let code = remote_call::bootstrap_code();
    assert_eq!(code.len(), BOOTSTRAP_LEN);
    let text: Vec<String> = disasm(&code, 0).into_iter().map(Option::unwrap).collect();
    assert_eq!(
        text,
        [
            "svc #0",
            "mov x0, #0",
            "add x1, sp, #0x90",
            "mov x8, #0x84",
            "svc #0",
            "ldp x0, x1, [sp]",
            "ldp x2, x3, [sp, #0x10]",
            "ldp x4, x5, [sp, #0x20]",
            "ldr x8, [sp, #0x30]",
            "svc #0",
            "mov x8, #0x8b",
            "svc #0",
        ]
    );
    assert_eq!(
        frame::UC_STACK,
        0x90,
        "sigaltstack writes the frame's uc_stack"
    );
}

#[test]
fn bootstrap_frame_resumes_the_thread_exactly() {
    let resume = resume_example();
    let mut fp = FpState::default();
    fp.v[0] = 7;
    fp.v[31] = u128::MAX;
    (fp.fpsr, fp.fpcr) = (0x8000_0010, 0x0040_0000);
    let second = Syscall {
        nr: SYS_MMAP,
        args: [10, 11, 12, 13, 14, 15],
    };
    let f = remote_call::bootstrap_frame(&second, 0xabc, &resume, &fp);
    assert_eq!(f.len() as u64, remote_call::BOOTSTRAP_FRAME_LEN);
    // The second call where the code's ldp/ldr read it.
    let call: Vec<u64> = (0..7).map(|i| word_at(&f, 8 * i)).collect();
    assert_eq!(call, [10, 11, 12, 13, 14, 15, SYS_MMAP]);
    assert_eq!(word_at(&f, frame::UC_SIGMASK), 0xabc);
    assert_eq!(word_at(&f, frame::UC_FLAGS), 0);
    for i in 0..31 {
        assert_eq!(word_at(&f, frame::REGS + 8 * i), resume.x[i as usize]);
    }
    assert_eq!(word_at(&f, frame::SP), resume.sp);
    assert_eq!(word_at(&f, frame::PC), resume.pc);
    assert_eq!(
        word_at(&f, frame::PSTATE),
        0x6000_0000,
        "BTYPE and SS cleared"
    );
    assert_eq!(word32_at(&f, frame::FPSIMD), frame::FPSIMD_MAGIC);
    assert_eq!(word32_at(&f, frame::FPSIMD + 4), 528);
    assert_eq!(
        (word32_at(&f, frame::FPSR), word32_at(&f, frame::FPCR)),
        (fp.fpsr, fp.fpcr)
    );
    assert_eq!(word_at(&f, frame::VREGS), 7);
    assert_eq!(word_at(&f, frame::VREGS + 31 * 16 + 8), u64::MAX);
    assert_eq!(
        &f[frame::TERMINATOR as usize..],
        &[0; 16],
        "the records end"
    );
    // Below the stack pointer, 16-byte aligned, not overlapping it with anything read.
    for sp in [0x7ffc_0000_1230u64, 0x7ffc_0000_1238] {
        let at = remote_call::bootstrap_frame_addr(sp);
        assert_eq!(at % 16, 0);
        assert!(at + remote_call::BOOTSTRAP_FRAME_LEN <= sp);
        assert!(sp - at < remote_call::BOOTSTRAP_FRAME_LEN + 16);
    }
}

#[test]
fn region_layout_fits_every_page_size() {
    for page in PAGE_SIZES {
        let r = StubRegion {
            base: 0x7f00_0000_0000,
            page,
        };
        assert_eq!(r.stack_top() % 16, 0);
        assert_eq!((r.data() + data::FRAME) % 16, 0);
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
fn call_block_encodes_the_header_and_the_resume_frame() {
    let block = CallBlock {
        function: 0x1111,
        args: [1, 2, 3, 4, 5, 6],
        errno_location: 0x2222,
        then_if_zero: 0x3333,
        block_mask: 0xfff0,
        resume: resume_example(),
    };
    let bytes = block.encode(0x3000);
    assert_eq!(bytes.len() as u64, data::FRAME + frame::USED_LEN);
    let w = |off| word_at(&bytes, off);
    assert_eq!(w(data::MAGIC), MAGIC_VALUE);
    assert_eq!(w(data::DATA_LEN), 0x3000);
    assert_eq!(w(data::DONE), Done::Running as u64);
    assert_eq!(w(data::FUNCTION), 0x1111);
    assert_eq!(w(data::ARGS + 40), 6);
    assert_eq!(w(data::ERRNO_LOCATION), 0x2222);
    assert_eq!(w(data::THEN), 0x3333);
    assert_eq!(w(data::BLOCK_MASK), 0xfff0);
    assert_eq!(w(data::ERRNO_PTR), 0);
    assert_eq!(w(data::FRAME + frame::REGS + 8 * 30), 0x1000 + 30);
    assert_eq!(w(data::FRAME + frame::PC), 0x55_0000_4444);
    assert_eq!(w(data::FRAME + frame::PSTATE), 0x6000_0000);
    assert_eq!(
        word32_at(&bytes, data::FRAME + frame::FPSIMD),
        frame::FPSIMD_MAGIC
    );
    let idle = remote_call::idle_header(0x3000);
    assert_eq!(word_at(&idle, data::MAGIC), MAGIC_VALUE);
    assert_eq!(word_at(&idle, data::DONE), Done::Settled as u64);
}

/// The name of the data-block slot at `offset`, for readable expectations.
fn slot_name(offset: u64) -> String {
    let names = [
        (data::DONE, "DONE"),
        (data::FUNCTION, "FUNCTION"),
        (data::ERRNO_LOCATION, "ERRNO_LOCATION"),
        (data::THEN, "THEN"),
        (data::RESULT, "RESULT"),
        (data::THEN_RESULT, "THEN_RESULT"),
        (data::ERRNO_PTR, "ERRNO_PTR"),
        (data::ERRNO_VALUE, "ERRNO_VALUE"),
        (data::BLOCK_MASK, "BLOCK_MASK"),
        (data::FRAME, "FRAME"),
        (data::FRAME + frame::UC_SIGMASK, "FRAME.uc_sigmask"),
        (data::FRAME + frame::UC_STACK, "FRAME.uc_stack"),
        (data::FRAME + frame::FPSR, "FRAME.fpsr"),
        (data::FRAME + frame::FPCR, "FRAME.fpcr"),
        (data::FRAME + frame::VREGS, "FRAME.vregs"),
    ];
    if let Some((_, name)) = names.iter().find(|(o, _)| *o == offset) {
        return name.to_string();
    }
    if (data::ARGS..data::ARGS + 48).contains(&offset) {
        return format!("ARG{}", (offset - data::ARGS) / 8);
    }
    panic!("operand at unknown data offset {offset:#x}")
}

/// An instruction as text, with `x19`-relative operands named by data slot and branch targets
/// named by label.
fn describe(text: &str, labels: &[(u64, &str)]) -> String {
    if let Some((head, off)) = text.split_once("[x19, #0x") {
        let off = u64::from_str_radix(off.trim_end_matches(']'), 16).unwrap();
        return format!("{head}{}", slot_name(off));
    }
    if let Some(head) = text.strip_suffix("[x19]") {
        return format!("{head}{}", slot_name(0));
    }
    if let Some((head, off)) = text.split_once("x19, #0x")
        && head.starts_with("add")
    {
        let off = u64::from_str_radix(off, 16).unwrap();
        return format!("{head}&{}", slot_name(off));
    }
    if text.starts_with("cb") {
        let target = last_address(text);
        let label = labels
            .iter()
            .find(|(a, _)| *a == target)
            .expect("branch to a label")
            .1;
        let (head, _) = text.rsplit_once(", ").unwrap();
        return format!("{head}, ->{label}");
    }
    text.to_string()
}

/// Decodes the stub and checks it against the intended sequence: every data operand is the
/// named slot of the block the `adr` finds, the state is saved into the frame rt_sigreturn
/// reads, calls go through `blr` with an aligned stack, and the stub ends in `rt_sigreturn`
/// from the frame with nothing after it.
#[test]
fn call_stub_decodes_to_the_intended_instructions() {
    let region = StubRegion {
        base: 0x7f00_1230_0000,
        page: 4096,
    };
    let stub = remote_call::call_stub(region.page);
    assert_eq!(stub.entry, 0);
    let text: Vec<String> = disasm(&stub.code[..stub.tail as usize], region.code())
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let addr = |off: u64| region.code() + off;
    let call_at = text
        .iter()
        .position(|t| t.starts_with("ldp x0, x1"))
        .unwrap() as u64
        * 4;
    let errno_done = text.iter().position(|t| t == "mov x0, #1").unwrap() as u64 * 4;
    let labels = [
        (addr(call_at), "call"),
        (addr(stub.restore), "restore"),
        (addr(errno_done), "errno_done"),
    ];
    let got: Vec<String> = text.iter().map(|t| describe(t, &labels)).collect();
    let adr = format!("adr x19, #{:#x}", region.data());
    let mut want: Vec<String> = [
        adr.as_str(),
        "mov x0, #2",
        "add x1, &BLOCK_MASK",
        "add x2, &FRAME.uc_sigmask",
        "mov x3, #8",
        "mov x8, #0x87",
        "svc #0",
        "mov x0, #0",
        "add x1, &FRAME.uc_stack",
        "mov x8, #0x84",
        "svc #0",
        "add x20, &FRAME.vregs",
    ]
    .map(String::from)
    .to_vec();
    for pair in 0..16 {
        let offset = match pair {
            0 => String::new(),
            n => format!(", #{:#x}", 32 * n),
        };
        want.push(format!(
            "stp q{}, q{}, [x20{offset}]",
            2 * pair,
            2 * pair + 1
        ));
    }
    let rest = [
        "mrs x0, fpsr",
        "str w0, FRAME.fpsr",
        "mrs x0, fpcr",
        "str w0, FRAME.fpcr",
        "ldr x16, ERRNO_LOCATION",
        "cbz x16, ->call",
        "blr x16",
        "ldr w1, [x0]",
        "str w1, ERRNO_VALUE",
        "str x0, ERRNO_PTR",
        "ldp x0, x1, ARG0",
        "ldp x2, x3, ARG2",
        "ldp x4, x5, ARG4",
        "ldr x16, FUNCTION",
        "blr x16",
        "str x0, RESULT",
        "cbnz x0, ->restore",
        "ldr x16, THEN",
        "cbz x16, ->restore",
        "blr x16",
        "str x0, THEN_RESULT",
        // restore:
        adr.as_str(),
        "ldr x0, ERRNO_PTR",
        "cbz x0, ->errno_done",
        "ldr w1, ERRNO_VALUE",
        "str w1, [x0]",
        "mov x0, #1",
        "str x0, DONE",
        "add sp, &FRAME",
        "mov x8, #0x8b",
        "svc #0",
    ];
    want.extend(rest.map(String::from));
    assert_eq!(got, want);
    assert_eq!(
        text[(stub.restore / 4) as usize],
        adr,
        "restore recomputes the data base"
    );
    assert_eq!(
        Done::Returning as u64,
        1,
        "the DONE store writes `Returning`"
    );
    // Nothing runs after rt_sigreturn; the rest of the page traps.
    assert!(
        words(&stub.code[stub.tail as usize..])
            .iter()
            .all(|&w| w == insn::brk(0))
    );
}

#[test]
fn the_stub_depends_on_the_page_size_only() {
    assert_eq!(remote_call::call_stub(4096), remote_call::call_stub(4096));
    assert_ne!(
        remote_call::call_stub(4096).code[..4],
        remote_call::call_stub(65536).code[..4]
    );
}
