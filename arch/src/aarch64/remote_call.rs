//! Remote calls that survive the tracer, arm64 form: the machine code a borrowed thread of the
//! target runs, and the memory it runs on.
//!
//! The guarantees are those of the x86_64 design (see `x86_64::remote_call`): from the moment
//! rpatch changes a thread's registers, the thread finishes by itself and resumes its own code
//! with its exact state, whether or not rpatch is still there. How the thread gets back differs:
//!
//! **Resuming through `rt_sigreturn`.** A64 has no instruction that loads the PC from memory:
//! `ret xN`/`br xN` need the target in a register, which therefore cannot hold the thread's own
//! value. Only the kernel can restore all 31 general registers, SP, PC and PSTATE at once, and
//! it does so for `rt_sigreturn` from a signal frame (`struct rt_sigframe`: siginfo, then a
//! `ucontext` whose `uc_mcontext.__reserved` holds an FP/SIMD record and a terminator). So the
//! bootstrap and the stub end with `rt_sigreturn` on a frame rpatch prepared: it also restores
//! V0–V31, FPSR and FPCR, and the thread's signal mask *in the same system call*, so there is
//! no moment where the thread's own mask is in force while its PC is in rpatch's code (the
//! x86_64 stub's "tail" does not exist here: [`CallStub::tail`] is past the end of the code).
//! The PC is set by the kernel, not by a branch, so a mid-function PC in a BTI-guarded page is
//! fine (PSTATE.BTYPE comes from the frame, cleared). The frame's `uc_stack` is applied by
//! `rt_sigreturn` too, so the code first reads the thread's alternate signal stack into it
//! (`sigaltstack(NULL, &uc_stack)`). One cost: `rt_sigreturn` ends any pending
//! `restart_syscall` (see [`syscall`](super::syscall)).
//!
//! * [`bootstrap_code`] (48 bytes) runs from never-executed slack bytes at the end of an
//!   executable page: `mmap` of the code page (registers), `sigaltstack` into the frame, `mmap`
//!   of the stack + data (arguments in the frame's siginfo area), `rt_sigreturn`. Its frame,
//!   [`bootstrap_frame`], is written below the thread's stack pointer (arm64 has no red zone;
//!   16-byte aligned as `rt_sigreturn` requires) and carries the thread's registers, FP/SIMD
//!   state (read by the tracer: the bootstrap touches no FP register, and system calls preserve
//!   V0–V31) and its own signal mask.
//! * [`call_stub`] runs in the code page of a [`StubRegion`], on the region's stack: it blocks
//!   signals (the thread's mask goes straight into the frame), reads the alternate stack into
//!   the frame, stores V0–V31, FPSR and FPCR into the frame's FP/SIMD record, saves errno,
//!   calls the function through `blr` (and `dlerror` when it returns 0), restores errno, sets
//!   `DONE` and returns through `rt_sigreturn` on the frame in the data block, which the tracer
//!   filled with the resume state ([`CallBlock::encode`]).
//!
//! **Signals and the stub.** While the thread runs the stub its asynchronous signals are
//! blocked; a signal frame pushed before the block (at the first instructions) returns into the
//! code page, which never changes, and the data block is rewritten only after the tracer saw
//! the thread back in its own code (`Done::Settled`).
//!
//! Everything here is pure (encodings and layouts) and unit-tested by decoding the bytes.

use super::insn::{self, SVC0};
use super::syscall::{SYS_RT_SIGPROCMASK, SYS_RT_SIGRETURN, SYS_SIGALTSTACK};

/// Size of the stack an injected call runs on (as on x86_64; a multiple of every page size).
pub const STACK_SIZE: u64 = 256 * 1024;

/// Room for strings passed to calls (a `dlopen` path), after the frame.
pub const SCRATCH_SIZE: u64 = 4096 + 64;

/// `SIG_SETMASK`.
const SIG_SETMASK: u64 = 2;

/// PSTATE.BTYPE (bits 11:10): the branch type a BTI landing pad checks.
pub const PSTATE_BTYPE: u64 = 0b11 << 10;

/// PSTATE.SS: software step (never carried into a resume state: a step would stop in the stub).
pub const PSTATE_SS: u64 = 1 << 21;

/// `pstate` without BTYPE and SS: for a thread given a new PC (the stub's entry, or a resume
/// state), which is not reached by a branch.
pub fn clean_pstate(pstate: u64) -> u64 {
    pstate & !(PSTATE_BTYPE | PSTATE_SS)
}

/// The registers a thread resumes with, in `user_pt_regs` (NT_PRSTATUS) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResumeState {
    /// x0..x30.
    pub x: [u64; 31],
    /// `sp`.
    pub sp: u64,
    /// `pc`.
    pub pc: u64,
    /// `pstate`.
    pub pstate: u64,
}

impl ResumeState {
    /// Bytes of an NT_PRSTATUS register set.
    pub const PRSTATUS_LEN: usize = 34 * 8;

    /// From an NT_PRSTATUS register set (`user_pt_regs`, 272 bytes).
    pub fn from_prstatus(bytes: &[u8]) -> Option<Self> {
        let words: Vec<u64> = bytes
            .get(..Self::PRSTATUS_LEN)?
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let mut state = Self::default();
        state.x.copy_from_slice(&words[..31]);
        (state.sp, state.pc, state.pstate) = (words[31], words[32], words[33]);
        Some(state)
    }

    /// As an NT_PRSTATUS register set.
    pub fn to_prstatus(&self) -> Vec<u8> {
        self.x
            .iter()
            .chain([&self.sp, &self.pc, &self.pstate])
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }
}

/// The FP/SIMD state: NT_PRFPREG (`user_fpsimd_state`), which is also the body of the signal
/// frame's FP/SIMD record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FpState {
    /// V0..V31.
    pub v: [u128; 32],
    /// FPSR.
    pub fpsr: u32,
    /// FPCR.
    pub fpcr: u32,
}

impl FpState {
    /// Bytes of an NT_PRFPREG register set.
    pub const PRFPREG_LEN: usize = 528;

    /// From an NT_PRFPREG register set.
    pub fn from_prfpreg(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..Self::PRFPREG_LEN)?;
        let mut state = Self::default();
        for (v, chunk) in state.v.iter_mut().zip(bytes.chunks_exact(16)) {
            *v = u128::from_le_bytes(chunk.try_into().expect("16 bytes"));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        (state.fpsr, state.fpcr) = (word(512), word(516));
        Some(state)
    }

    /// As an NT_PRFPREG register set.
    pub fn to_prfpreg(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.v.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.extend_from_slice(&self.fpsr.to_le_bytes());
        out.extend_from_slice(&self.fpcr.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out
    }
}

/// One system call: number (x8) and the six argument registers (x0..x5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// Syscall number.
    pub nr: u64,
    /// Arguments.
    pub args: [u64; 6],
}

/// Offsets in an arm64 `struct rt_sigframe` (`siginfo_t info; ucontext_t uc;`), as
/// `rt_sigreturn` reads it from the stack pointer.
pub mod frame {
    /// The siginfo area (128 bytes): `rt_sigreturn` does not read it; the bootstrap keeps its
    /// second system call there.
    pub const INFO: u64 = 0;
    /// `uc.uc_flags`.
    pub const UC_FLAGS: u64 = 128;
    /// `uc.uc_stack` (`stack_t`: `ss_sp`, `ss_flags`, `ss_size`), applied by `rt_sigreturn`.
    pub const UC_STACK: u64 = 144;
    /// `uc.uc_sigmask`: the mask `rt_sigreturn` installs.
    pub const UC_SIGMASK: u64 = 168;
    /// `uc.uc_mcontext.regs[0]`; x1..x30 follow.
    pub const REGS: u64 = 312;
    /// `uc.uc_mcontext.sp`.
    pub const SP: u64 = 560;
    /// `uc.uc_mcontext.pc`.
    pub const PC: u64 = 568;
    /// `uc.uc_mcontext.pstate`.
    pub const PSTATE: u64 = 576;
    /// `uc.uc_mcontext.__reserved`: the records, here the FP/SIMD record then a terminator.
    pub const RESERVED: u64 = 592;
    /// The FP/SIMD record (`struct fpsimd_context`): magic, size, FPSR, FPCR, V0..V31.
    pub const FPSIMD: u64 = RESERVED;
    /// `fpsimd_context.fpsr`.
    pub const FPSR: u64 = FPSIMD + 8;
    /// `fpsimd_context.fpcr`.
    pub const FPCR: u64 = FPSIMD + 12;
    /// `fpsimd_context.vregs[0]` (16-byte aligned).
    pub const VREGS: u64 = FPSIMD + 16;
    /// `FPSIMD_MAGIC`.
    pub const FPSIMD_MAGIC: u32 = 0x4650_8001;
    /// `sizeof(struct fpsimd_context)`.
    pub const FPSIMD_SIZE: u32 = 528;
    /// The null record that ends the list.
    pub const TERMINATOR: u64 = FPSIMD + FPSIMD_SIZE as u64;
    /// Bytes `rt_sigreturn` reads: through the terminator. The rest of `__reserved` (the full
    /// structure is 4688 bytes) is never read, so a frame below a stack pointer may overlap
    /// the live stack above it with that unread part.
    pub const USED_LEN: u64 = TERMINATOR + 16;
    /// `sizeof(struct rt_sigframe)`: what a data block reserves.
    pub const FULL_LEN: u64 = 4688;
}

const _: () = assert!(frame::VREGS.is_multiple_of(16) && frame::USED_LEN.is_multiple_of(16));

/// A signal frame that resumes `resume` with the FP/SIMD state `fp` and signal mask `mask`
/// (`USED_LEN` bytes; `uc_stack` left zero for the code to fill).
fn resume_frame(resume: &ResumeState, fp: &FpState, mask: u64) -> Vec<u8> {
    let mut out = vec![0u8; frame::USED_LEN as usize];
    let mut put = |offset: u64, bytes: &[u8]| {
        out[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    };
    put(frame::UC_SIGMASK, &mask.to_le_bytes());
    for (i, x) in resume.x.iter().enumerate() {
        put(frame::REGS + 8 * i as u64, &x.to_le_bytes());
    }
    put(frame::SP, &resume.sp.to_le_bytes());
    put(frame::PC, &resume.pc.to_le_bytes());
    put(frame::PSTATE, &clean_pstate(resume.pstate).to_le_bytes());
    put(frame::FPSIMD, &frame::FPSIMD_MAGIC.to_le_bytes());
    put(frame::FPSIMD + 4, &frame::FPSIMD_SIZE.to_le_bytes());
    put(frame::FPSR, &fp.fpsr.to_le_bytes());
    put(frame::FPCR, &fp.fpcr.to_le_bytes());
    for (i, v) in fp.v.iter().enumerate() {
        put(frame::VREGS + 16 * i as u64, &v.to_le_bytes());
    }
    out
}

/// Length of [`bootstrap_code`].
pub const BOOTSTRAP_LEN: usize = 48;

/// Bytes the bootstrap frame occupies below the thread's stack pointer (its used part).
pub const BOOTSTRAP_FRAME_LEN: u64 = frame::USED_LEN;

/// Where the bootstrap frame goes for a thread whose stack pointer is `sp`: below it, 16-byte
/// aligned (which `rt_sigreturn` checks).
pub fn bootstrap_frame_addr(sp: u64) -> u64 {
    (sp - BOOTSTRAP_FRAME_LEN) & !15
}

/// The bootstrap code, run from slack bytes of an executable page with `sp` at a
/// [`bootstrap_frame`], x8 and x0..x5 holding the first system call, and asynchronous signals
/// blocked by the tracer (the frame holds the thread's own mask):
///
/// ```text
/// svc #0                      // first call (registers)
/// movz x0, #0                 // sigaltstack(NULL, &frame.uc_stack)
/// add  x1, sp, #144
/// movz x8, #132
/// svc #0
/// ldp  x0, x1, [sp]           // second call, from the frame's siginfo area
/// ldp  x2, x3, [sp, #16]
/// ldp  x4, x5, [sp, #32]
/// ldr  x8, [sp, #48]
/// svc #0
/// movz x8, #139               // rt_sigreturn: registers, FP/SIMD, mask, PC from the frame
/// svc #0
/// ```
///
/// It uses no memory but the frame, so it works before any page of rpatch's exists, and needs
/// no tracer to finish. Results are not returned: rpatch reads `/proc/PID/maps`.
pub fn bootstrap_code() -> [u8; BOOTSTRAP_LEN] {
    let words = [
        SVC0,
        insn::movz(0, 0),
        insn::add_imm(1, 31, frame::UC_STACK),
        insn::movz(8, SYS_SIGALTSTACK as u16),
        SVC0,
        insn::ldp(0, 1, 31, frame::INFO),
        insn::ldp(2, 3, 31, frame::INFO + 16),
        insn::ldp(4, 5, 31, frame::INFO + 32),
        insn::ldr(8, 31, frame::INFO + 48),
        SVC0,
        insn::movz(8, SYS_RT_SIGRETURN as u16),
        SVC0,
    ];
    let mut out = [0u8; BOOTSTRAP_LEN];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The frame [`bootstrap_code`] runs on, to be written at [`bootstrap_frame_addr`]: the second
/// system call in the siginfo area, then a signal frame resuming `resume` with `fp` and the
/// thread's own signal `mask`. After `rt_sigreturn` the thread is exactly at `resume` (PSTATE
/// without BTYPE and SS).
pub fn bootstrap_frame(second: &Syscall, mask: u64, resume: &ResumeState, fp: &FpState) -> Vec<u8> {
    let mut out = resume_frame(resume, fp, mask);
    for (i, word) in second.args.iter().chain([&second.nr]).enumerate() {
        out[8 * i..8 * i + 8].copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Offsets in the data block of a [`StubRegion`] (8-byte words unless said otherwise).
pub mod data {
    /// [`MAGIC_VALUE`](super::MAGIC_VALUE): identifies a region and its layout version.
    pub const MAGIC: u64 = 0x00;
    /// Length of the data block.
    pub const DATA_LEN: u64 = 0x08;
    /// [`Done`](super::Done): who owns the region.
    pub const DONE: u64 = 0x10;
    /// Function to call.
    pub const FUNCTION: u64 = 0x18;
    /// Six arguments (x0..x5).
    pub const ARGS: u64 = 0x20;
    /// `__errno_location`, or 0: errno is then neither saved nor restored.
    pub const ERRNO_LOCATION: u64 = 0x50;
    /// Function called when the first returns 0 (`dlerror`), or 0.
    pub const THEN: u64 = 0x58;
    /// x0 of the first call.
    pub const RESULT: u64 = 0x60;
    /// x0 of the second call.
    pub const THEN_RESULT: u64 = 0x68;
    /// Where errno lives (stored by the stub once known; 0 until then).
    pub const ERRNO_PTR: u64 = 0x70;
    /// errno's value before the call (32 bits).
    pub const ERRNO_VALUE: u64 = 0x78;
    /// Signal mask held during the call.
    pub const BLOCK_MASK: u64 = 0x80;
    /// The signal frame the stub returns through ([`frame`](super::frame) offsets within),
    /// 16-byte aligned.
    pub const FRAME: u64 = 0x100;
    /// End of the frame; the scratch area follows.
    pub const FRAME_END: u64 = FRAME + super::frame::FULL_LEN;
}

/// `"rpatchA1"`: the value at [`data::MAGIC`] (arm64 layout 1).
pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"rpatchA1");

/// The [`data::DONE`] word (the same states as on x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Done {
    /// A call is armed or running: the region belongs to that thread.
    Running = 0,
    /// The stub finished the call and is returning through `rt_sigreturn`.
    Returning = 1,
    /// The tracer saw the thread back in its own code: the region is free.
    Settled = 2,
}

/// The memory rpatch maps once per target for its calls:
/// `[code page r-x][stack rw, STACK_SIZE][data block rw]`, in pages of the target's size. The
/// code page below the stack is its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubRegion {
    /// Address of the code page (the region's start).
    pub base: u64,
    /// The target's page size (`AT_PAGESZ`: 4, 16 or 64 KiB).
    pub page: u64,
}

impl StubRegion {
    /// The code page.
    pub fn code(&self) -> u64 {
        self.base
    }

    /// Start of the read-write mapping (the stack's lowest byte).
    pub fn rw_start(&self) -> u64 {
        self.base + self.page
    }

    /// Initial stack pointer of a call (16-byte aligned; the data block starts here).
    pub fn stack_top(&self) -> u64 {
        self.rw_start() + STACK_SIZE
    }

    /// The data block.
    pub fn data(&self) -> u64 {
        self.stack_top()
    }

    /// Offset of the scratch area in the data block.
    pub fn scratch_offset(&self) -> u64 {
        data::FRAME_END
    }

    /// Length of the data block: header, frame, scratch, page-rounded.
    pub fn data_len(&self) -> u64 {
        (self.scratch_offset() + SCRATCH_SIZE).next_multiple_of(self.page)
    }

    /// Length of the read-write mapping (stack and data block).
    pub fn rw_len(&self) -> u64 {
        STACK_SIZE + self.data_len()
    }

    /// Length of the whole region.
    pub fn len(&self) -> u64 {
        self.page + self.rw_len()
    }

    /// Whether the region has no length (never: a region always has its code page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `addr` is in the code page.
    pub fn in_code(&self, addr: u64) -> bool {
        (self.base..self.base + self.page).contains(&addr)
    }
}

/// The encoded stub for one page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStub {
    /// The whole code page: the stub, then `brk #0` padding.
    pub code: Vec<u8>,
    /// Offset of the entry point (sp = stack top; other registers anything).
    pub entry: u64,
    /// Offset of the restore path, where rpatch sends a thread whose call faulted (sp = stack
    /// top): it restores errno and returns through the frame like a normal return.
    pub restore: u64,
    /// Offset just past the `rt_sigreturn`, which no thread ever reaches: the mask restore and
    /// the return are one system call, so unlike x86_64 no code runs with the thread's own
    /// mask in force. Kept so a tracer can treat both ISAs alike ("PC at or after `tail`").
    pub tail: u64,
}

/// Register holding the data block's address throughout the stub (callee-saved, so it survives
/// the calls).
const DATA: u32 = 19;
/// Register holding the FP/SIMD record's V0 slot while it is filled.
const VREGS: u32 = 20;
/// The register calls go through (`blr x16`).
const CALLEE: u32 = 16;

/// The stub's instructions, with forward labels resolved at the end.
struct StubAsm {
    words: Vec<u32>,
    page: u64,
    fixups: Vec<(usize, Label)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Call,
    Restore,
    ErrnoDone,
}

#[derive(Debug, Clone, Copy)]
enum Fixup {
    Cbz(u32),
    Cbnz(u32),
}

impl StubAsm {
    fn at(&self) -> u64 {
        4 * self.words.len() as u64
    }

    fn push(&mut self, w: u32) {
        self.words.push(w);
    }

    /// `adr x19, data`: the data block is `page + STACK_SIZE` after the code page's start.
    fn data_base(&mut self) {
        let to = self.page + STACK_SIZE;
        let w = insn::adr(DATA, self.at(), to).expect("the data block is within 1 MiB");
        self.push(w);
    }

    /// A conditional branch to a label, patched by [`Self::finish`].
    fn branch(&mut self, kind: Fixup, label: Label) {
        let index = self.words.len();
        self.push(match kind {
            Fixup::Cbz(rt) => 0xb400_0000 | rt,
            Fixup::Cbnz(rt) => 0xb500_0000 | rt,
        });
        self.fixups.push((index, label));
    }

    /// `rt_sigprocmask(SIG_SETMASK, data+set, data+old, 8)`.
    fn set_mask(&mut self, set: u64, old: u64) {
        self.push(insn::movz(0, SIG_SETMASK as u16));
        self.push(insn::add_imm(1, DATA, set));
        self.push(insn::add_imm(2, DATA, old));
        self.push(insn::movz(3, 8));
        self.push(insn::movz(8, SYS_RT_SIGPROCMASK as u16));
        self.push(SVC0);
    }

    fn finish(mut self, labels: &[(Label, u64)]) -> Vec<u32> {
        for (index, label) in std::mem::take(&mut self.fixups) {
            let to = labels
                .iter()
                .find(|(l, _)| *l == label)
                .expect("label set")
                .1;
            let from = 4 * index as u64;
            let w = self.words[index];
            let rt = w & 31;
            self.words[index] = if w & 0xff00_0000 == 0xb400_0000 {
                insn::cbz(rt, from, to)
            } else {
                insn::cbnz(rt, from, to)
            }
            .expect("labels are near");
        }
        self.words
    }
}

/// Encodes the stub for regions of page size `page` (see the module documentation for what it
/// does, and [`data`] for the block it works on). The code depends on the page size only: the
/// data block is found PC-relatively.
pub fn call_stub(page: u64) -> CallStub {
    let mut s = StubAsm {
        words: Vec::new(),
        page,
        fixups: Vec::new(),
    };
    // Entry: sp = stack top (16-byte aligned), other registers anything.
    let entry = s.at();
    s.data_base();
    // The thread's own mask goes straight into the frame rt_sigreturn installs.
    s.set_mask(data::BLOCK_MASK, data::FRAME + frame::UC_SIGMASK);
    s.push(insn::movz(0, 0));
    s.push(insn::add_imm(1, DATA, data::FRAME + frame::UC_STACK));
    s.push(insn::movz(8, SYS_SIGALTSTACK as u16));
    s.push(SVC0);
    // FP/SIMD state into the frame's record (the tracer wrote its header).
    s.push(insn::add_imm(VREGS, DATA, data::FRAME + frame::VREGS));
    for pair in 0..16 {
        s.push(insn::stp_q(2 * pair, 2 * pair + 1, VREGS, 32 * pair as u64));
    }
    s.push(insn::mrs_fpsr(0));
    s.push(insn::str_w(0, DATA, data::FRAME + frame::FPSR));
    s.push(insn::mrs_fpcr(0));
    s.push(insn::str_w(0, DATA, data::FRAME + frame::FPCR));
    // errno: value first, pointer second, so the restore path only sees a pointer with a value.
    s.push(insn::ldr(CALLEE, DATA, data::ERRNO_LOCATION));
    s.branch(Fixup::Cbz(CALLEE), Label::Call);
    s.push(insn::blr(CALLEE));
    s.push(insn::ldr_w(1, 0, 0));
    s.push(insn::str_w(1, DATA, data::ERRNO_VALUE));
    s.push(insn::str(0, DATA, data::ERRNO_PTR));
    // The call (sp is 16-byte aligned, as the procedure-call standard requires).
    let call = s.at();
    for pair in 0..3 {
        s.push(insn::ldp(
            2 * pair,
            2 * pair + 1,
            DATA,
            data::ARGS + 16 * pair as u64,
        ));
    }
    s.push(insn::ldr(CALLEE, DATA, data::FUNCTION));
    s.push(insn::blr(CALLEE));
    s.push(insn::str(0, DATA, data::RESULT));
    s.branch(Fixup::Cbnz(0), Label::Restore);
    s.push(insn::ldr(CALLEE, DATA, data::THEN));
    s.branch(Fixup::Cbz(CALLEE), Label::Restore);
    s.push(insn::blr(CALLEE));
    s.push(insn::str(0, DATA, data::THEN_RESULT));
    // Restore path (also entered by rpatch after a fault, with sp = stack top).
    let restore = s.at();
    s.data_base();
    s.push(insn::ldr(0, DATA, data::ERRNO_PTR));
    s.branch(Fixup::Cbz(0), Label::ErrnoDone);
    s.push(insn::ldr_w(1, DATA, data::ERRNO_VALUE));
    s.push(insn::str_w(1, 0, 0));
    let errno_done = s.at();
    s.push(insn::movz(0, Done::Returning as u16));
    s.push(insn::str(0, DATA, data::DONE));
    // Everything else — registers, sp, pc, pstate, FP/SIMD, the mask — from the frame at once.
    s.push(insn::add_imm(31, DATA, data::FRAME));
    s.push(insn::movz(8, SYS_RT_SIGRETURN as u16));
    s.push(SVC0);
    let tail = s.at();
    let words = s.finish(&[
        (Label::Call, call),
        (Label::Restore, restore),
        (Label::ErrnoDone, errno_done),
    ]);
    let mut code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert!((code.len() as u64) < page, "the stub fits its page");
    let pad = insn::brk(0).to_le_bytes();
    while (code.len() as u64) < page {
        code.extend_from_slice(&pad);
    }
    CallStub {
        code,
        entry,
        restore,
        tail,
    }
}

/// What one call through the stub does: written as the data block's header and frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBlock {
    /// Function to call.
    pub function: u64,
    /// Its six register arguments.
    pub args: [u64; 6],
    /// `__errno_location` (0: errno is not saved).
    pub errno_location: u64,
    /// Called with no arguments when `function` returns 0 (0: none).
    pub then_if_zero: u64,
    /// Signals blocked during the call (bit `n - 1` for signal `n`).
    pub block_mask: u64,
    /// Where and how the thread resumes afterwards.
    pub resume: ResumeState,
}

impl CallBlock {
    /// The bytes from the data block's start to the end of the frame's used part, for a region
    /// with a data block of `data_len` bytes; `DONE` and the result slots are 0. The frame's
    /// signal mask, alternate stack and FP/SIMD values are the stub's to fill.
    pub fn encode(&self, data_len: u64) -> Vec<u8> {
        let mut out = vec![0u8; data::FRAME as usize];
        let mut put = |offset: u64, value: u64| {
            out[offset as usize..offset as usize + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(data::MAGIC, MAGIC_VALUE);
        put(data::DATA_LEN, data_len);
        put(data::FUNCTION, self.function);
        for (i, arg) in self.args.iter().enumerate() {
            put(data::ARGS + 8 * i as u64, *arg);
        }
        put(data::ERRNO_LOCATION, self.errno_location);
        put(data::THEN, self.then_if_zero);
        put(data::BLOCK_MASK, self.block_mask);
        out.extend(resume_frame(&self.resume, &FpState::default(), 0));
        out
    }
}

/// The header of an idle region (no call armed, `DONE` = settled), written when a region is
/// created.
pub fn idle_header(data_len: u64) -> Vec<u8> {
    let mut out = vec![0u8; data::FRAME as usize];
    out[..8].copy_from_slice(&MAGIC_VALUE.to_le_bytes());
    out[data::DATA_LEN as usize..][..8].copy_from_slice(&data_len.to_le_bytes());
    out[data::DONE as usize..][..8].copy_from_slice(&(Done::Settled as u64).to_le_bytes());
    out
}
