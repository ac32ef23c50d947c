//! Remote calls that survive the tracer, arm64 form: the machine code a borrowed thread of the
//! target runs, and the memory it runs on.
//!
//! The guarantees are those of the x86_64 design (see `x86_64::remote_call`): from the moment
//! rpatch changes a thread's registers, the thread finishes by itself and resumes its own code,
//! whether or not rpatch is still there, and the tracer is the only source of truth for the
//! state it resumes with. What differs is how the thread gets back.
//!
//! **Returning to a PC without a register.** x86_64 ends its stub with `jmp [saved rip]`, which
//! needs no register. A64 has no such instruction: `ret xN` and `br xN` need the target in a
//! register, which then cannot hold the thread's own value. (`rt_sigreturn` restores everything
//! at once, but it resets the thread's restart block, so a thread interrupted in `nanosleep`
//! would get `EINTR` from `restart_syscall`, and its frame would be a second copy of the
//! thread's state built by rpatch.) So the tracer does the return: the bootstrap and the stub
//! end their work by *parking* — a bounded `ppoll(NULL, 0, &time, NULL)` loop that changes no
//! restart block — and the tracer, which sees `DONE` (or the PC) reach the park, stops the
//! thread there and sets its registers with ptrace: NT_PRSTATUS (PSTATE.BTYPE clear: the PC is
//! set, not branched to), its FP state — NT_PRFPREG, or the whole NT_ARM_SVE payload of a
//! thread whose SVE state was live (see [`vector`](super::vector)) — and its signal mask. The
//! thread resumes at its own code
//! exactly, a restartable system call it was in included (x8 = `restart_syscall` where the
//! kernel would have set it, see [`syscall`](super::syscall)).
//!
//! **Without a tracer.** When the park time runs out (rpatch was killed, or gave up on a call
//! that took too long), the code returns by itself: it restores the FP/SIMD registers, the
//! signal mask, NZCV, SP and every general register from memory, and branches to the thread's
//! PC — with `ret x16` (never `br`: a mid-function PC is no landing pad in a BTI-guarded page;
//! `ret` sets no branch type) or, for the stub, through a per-call *return slot* in its code
//! page: `b pc` when the PC is within ±128 MiB of it, which keeps every register exact. Where
//! the thread resumes through `ret x16`, x16 (IP0, which any call may clobber through a veneer
//! or PLT stub) holds its PC instead of its own value; that is the price of a dead tracer, never
//! of a live one Likewise a thread whose SVE state was live gets
//! V0–V31 back but not the rest of Z0–Z31, nor P0–P15 and FFR (the call's system calls zeroed
//! them): rpatch borrows such a thread only when no other thread qualifies.
//!
//! * [`bootstrap_code`] runs from never-executed slack bytes at the end of an executable page:
//!   `mmap` of the code page (registers), `mmap` of the stack + data (from its frame), then the
//!   park, then the return by itself. Its frame, [`bootstrap_frame`], is written below the
//!   thread's stack pointer (arm64 Linux has no red zone) and holds the second call, the park
//!   time, the thread's own signal mask and its resume state. The tracer blocks asynchronous
//!   signals while it runs (the frame's mask puts the thread's own back).
//! * [`call_stub`] runs in the code page of a [`StubRegion`], on the region's stack: it saves
//!   V0–V31, FPSR and FPCR, saves errno, calls the function through `blr` (and `dlerror` when it
//!   returns 0), restores errno, sets `DONE` = [`Done::Returning`] and parks at
//!   [`CallStub::tail`].
//!
//! **Signals.** The tracer sets the signal mask before it sends the thread into the bootstrap or
//! the stub (PTRACE_SETSIGMASK: the thread's own mask plus every asynchronous signal but the C
//! library's internal ones), and writes the thread's own mask where a return without it finds
//! it (the bootstrap frame, [`data::MASK`]): a thread under a signal storm enters rpatch's code
//! at once instead of taking signal after signal at its first instruction. What can still
//! arrive there — a fault, glibc's 32–34 — is delivered in place before the stub's tail: its
//! frame returns into the code page, which does not change while a call may use it, and the
//! data block is rewritten only once the tracer saw the thread back in its own code
//! ([`Done::Settled`]). At and after the tail, and anywhere in the bootstrap, the tracer, which
//! sees every signal before its handler runs, first moves the thread to its resume state, so
//! the handler returns into the thread's own code. The return slot, the one part of the code
//! page that changes, is after the tail, and is written only for a settled region.
//!
//! Everything here is pure (encodings and layouts), unit-tested by decoding the bytes and by
//! running them in a small interpreter (`tests/emulate.rs`), and run for real in the arm64 guest
//! (`scripts/test-aarch64.sh`).

use super::insn::{self, SVC0};
use super::syscall::{SYS_PPOLL, SYS_RT_SIGPROCMASK};
use std::time::Duration;

/// Size of the stack an injected call runs on (as on x86_64; a multiple of every page size).
pub const STACK_SIZE: u64 = 256 * 1024;

/// Room for strings passed to calls (a `dlopen` path), after the saved state.
pub const SCRATCH_SIZE: u64 = 4096 + 64;

/// How long the bootstrap and the stub wait at their park for the tracer before returning by
/// themselves: far longer than a live tracer takes to see them there (it polls for `DONE` and
/// the PC continuously), short enough that a thread whose tracer died is not held for long.
pub const PARK_TIME: Duration = Duration::from_secs(5);

/// `SIG_SETMASK`.
const SIG_SETMASK: u64 = 2;

/// `-EINTR` as `cmn` tests it.
const EINTR: u64 = 4;

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

    /// The 34 words in NT_PRSTATUS order: x0..x30, sp, pc, pstate.
    pub fn words(&self) -> [u64; 34] {
        let mut out = [0u64; 34];
        out[..31].copy_from_slice(&self.x);
        (out[31], out[32], out[33]) = (self.sp, self.pc, self.pstate);
        out
    }

    /// As an NT_PRSTATUS register set.
    pub fn to_prstatus(&self) -> Vec<u8> {
        self.words().iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The same state with PSTATE's branch type and single-step bits clear: how a thread is
    /// sent to a PC it did not branch to (a BTI-guarded page would otherwise check the landing
    /// pad, and a step bit would stop it after one instruction).
    pub fn cleaned(&self) -> Self {
        Self {
            pstate: clean_pstate(self.pstate),
            ..*self
        }
    }
}

/// The FP/SIMD state: NT_PRFPREG (`user_fpsimd_state`), which is also the layout of the data
/// block's FP area.
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

/// A `timespec` for a park of `park` (the `ppoll` timeout), as two words.
fn timespec(park: Duration) -> [u64; 2] {
    [park.as_secs(), u64::from(park.subsec_nanos())]
}

/// Offsets in the bootstrap's frame, below the thread's stack pointer (8-byte words).
pub mod boot_frame {
    /// The second system call: x0..x5, then its number.
    pub const SECOND: u64 = 0;
    /// The park's `timespec` (`ppoll` writes the time left back).
    pub const PARK_TIME: u64 = 64;
    /// The thread's own signal mask, restored when the bootstrap returns by itself.
    pub const MASK: u64 = 80;
    /// The resume state, 34 words in NT_PRSTATUS order (x0..x30, sp, pc, pstate).
    pub const SAVED: u64 = 96;
    /// Length of the frame (a multiple of 16, so the stack pointer stays aligned).
    pub const LEN: u64 = SAVED + 34 * 8;
}

const _: () = assert!(boot_frame::LEN.is_multiple_of(16));

/// Bytes the bootstrap frame occupies below the thread's stack pointer.
pub const BOOTSTRAP_FRAME_LEN: u64 = boot_frame::LEN;

/// Where the bootstrap frame goes for a thread whose stack pointer is `sp`: right below it, so
/// that `add sp, sp, #LEN` gives the thread its stack pointer back. `None` when `sp` is not
/// 16-byte aligned (the architecture faults a misaligned `sp` used for a load).
pub fn bootstrap_frame_addr(sp: u64) -> Option<u64> {
    (sp.is_multiple_of(16) && sp >= BOOTSTRAP_FRAME_LEN).then(|| sp - BOOTSTRAP_FRAME_LEN)
}

/// The registers the self-return restores from a save area, as `ldp` pairs and single `ldr`s,
/// leaving out `skip` (loaded last by the caller: the base register, or the one the return
/// branches through). `offset` is the area's offset from the base register.
fn load_registers(words: &mut Vec<u32>, base: u32, offset: u64, skip: &[u32]) {
    let mut r = 0;
    while r < 31 {
        let pair = r + 1 < 31 && !skip.contains(&r) && !skip.contains(&(r + 1));
        if pair {
            words.push(insn::ldp(r, r + 1, base, offset + 8 * u64::from(r)));
            r += 2;
        } else {
            if !skip.contains(&r) {
                words.push(insn::ldr(r, base, offset + 8 * u64::from(r)));
            }
            r += 1;
        }
    }
}

/// `ppoll(NULL, 0, base + time, NULL)`, again while it returns `-EINTR`: the park. (With no
/// mask the size argument is not read.)
fn park(words: &mut Vec<u32>, base: u32, time: u64) {
    let at = 4 * words.len() as u64;
    words.extend([
        insn::movz(0, 0),
        insn::movz(1, 0),
        insn::add_imm(2, base, time),
        insn::movz(3, 0),
        insn::movz(8, SYS_PPOLL as u16),
        SVC0,
        insn::cmn_imm(0, EINTR),
    ]);
    let from = 4 * words.len() as u64;
    words.push(insn::b_eq(from, at).expect("the park loop is short"));
}

/// `rt_sigprocmask(SIG_SETMASK, base + set, NULL, 8)`.
fn set_mask(words: &mut Vec<u32>, base: u32, set: u64) {
    words.extend([
        insn::movz(0, SIG_SETMASK as u16),
        insn::add_imm(1, base, set),
        insn::movz(2, 0),
        insn::movz(3, 8),
        insn::movz(8, SYS_RT_SIGPROCMASK as u16),
        SVC0,
    ]);
}

/// The bootstrap's instruction words.
fn bootstrap_words() -> Vec<u32> {
    use boot_frame::{MASK, PARK_TIME, SAVED, SECOND};
    let sp = 31;
    let mut w = vec![
        SVC0,
        insn::ldp(0, 1, sp, SECOND),
        insn::ldp(2, 3, sp, SECOND + 16),
        insn::ldp(4, 5, sp, SECOND + 32),
        insn::ldr(8, sp, SECOND + 48),
        SVC0,
    ];
    park(&mut w, sp, PARK_TIME);
    set_mask(&mut w, sp, MASK);
    w.push(insn::ldr(16, sp, SAVED + 8 * 33));
    w.push(insn::msr_nzcv(16));
    load_registers(&mut w, sp, SAVED, &[16]);
    w.push(insn::ldr(16, sp, SAVED + 8 * 32));
    w.push(insn::add_imm(sp, sp, BOOTSTRAP_FRAME_LEN));
    w.push(insn::ret(16));
    w
}

/// Length of [`bootstrap_code`].
pub const BOOTSTRAP_LEN: usize = 160;

/// Offset of the bootstrap's park, after both `mmap`s: at a stop with the PC at or after it (in
/// the bootstrap), the region is mapped and the tracer moves the thread to its resume state.
pub const BOOTSTRAP_PARK: u64 = 24;

/// The bootstrap code, run from slack bytes of an executable page with `sp` at a
/// [`bootstrap_frame`], x8 and x0..x5 holding the first system call, PSTATE.BTYPE clear, and
/// asynchronous signals blocked by the tracer:
///
/// ```text
///       svc  #0                   // first call (registers)
///       ldp  x0, x1, [sp]         // second call, from the frame
///       ldp  x2, x3, [sp, #16]
///       ldp  x4, x5, [sp, #32]
///       ldr  x8, [sp, #48]
///       svc  #0
/// park: mov  x0, #0               // ppoll(NULL, 0, &frame.park_time, NULL)
///       mov  x1, #0
///       add  x2, sp, #64
///       mov  x3, #0
///       mov  x8, #73
///       svc  #0                   // the tracer moves the thread from here
///       cmn  x0, #4
///       b.eq park                 // -EINTR: a handler ran; wait for the time left
///       mov  x0, #2               // no tracer came: rt_sigprocmask(SIG_SETMASK, &frame.mask,
///       add  x1, sp, #80          //   NULL, 8)
///       mov  x2, #0
///       mov  x3, #8
///       mov  x8, #135
///       svc  #0
///       ldr  x16, [sp, #360]      // pstate: NZCV
///       msr  nzcv, x16
///       ldp  x0, x1, [sp, #96]    // x0..x30 but x16
///       ...
///       ldr  x16, [sp, #352]      // pc
///       add  sp, sp, #368         // the thread's own sp
///       ret  x16
/// ```
///
/// It uses no memory but the frame, so it works before any page of rpatch's exists, and needs
/// no tracer to finish. Results are not returned: rpatch reads `/proc/PID/maps`.
pub fn bootstrap_code() -> [u8; BOOTSTRAP_LEN] {
    let words = bootstrap_words();
    let mut out = [0u8; BOOTSTRAP_LEN];
    assert_eq!(
        4 * words.len(),
        BOOTSTRAP_LEN,
        "BOOTSTRAP_LEN is the code's length"
    );
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The frame [`bootstrap_code`] runs on, to be written at [`bootstrap_frame_addr`]: the second
/// system call, the park time, the thread's own signal `mask` and its `resume` state (PSTATE
/// without BTYPE and SS).
pub fn bootstrap_frame(
    second: &Syscall,
    mask: u64,
    park: Duration,
    resume: &ResumeState,
) -> [u8; BOOTSTRAP_FRAME_LEN as usize] {
    let mut out = [0u8; BOOTSTRAP_FRAME_LEN as usize];
    let mut put = |offset: u64, value: u64| {
        out[offset as usize..offset as usize + 8].copy_from_slice(&value.to_le_bytes());
    };
    for (i, word) in second.args.iter().chain([&second.nr]).enumerate() {
        put(boot_frame::SECOND + 8 * i as u64, *word);
    }
    let [secs, nanos] = timespec(park);
    put(boot_frame::PARK_TIME, secs);
    put(boot_frame::PARK_TIME + 8, nanos);
    put(boot_frame::MASK, mask);
    for (i, word) in resume.cleaned().words().iter().enumerate() {
        put(boot_frame::SAVED + 8 * i as u64, *word);
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
    /// The thread's own signal mask, restored by a return without the tracer (the tracer
    /// blocks signals with ptrace before the call, and restores the mask itself).
    pub const MASK: u64 = 0x80;
    /// The park's `timespec` (`ppoll` writes the time left back).
    pub const PARK_TIME: u64 = 0x88;
    /// The resume state, 34 words in NT_PRSTATUS order ([`ResumeState::words`](super::ResumeState::words)),
    /// for a return without the tracer.
    pub const SAVED: u64 = 0x98;
    /// V0..V31, FPSR, FPCR as the stub saved them (NT_PRFPREG layout, 16-byte aligned).
    pub const FP: u64 = (SAVED + 34 * 8).next_multiple_of(16);
    /// FPSR within the FP area.
    pub const FPSR: u64 = FP + 512;
    /// FPCR within the FP area.
    pub const FPCR: u64 = FP + 516;
    /// End of the saved state; the scratch area follows.
    pub const END: u64 = FP + super::FpState::PRFPREG_LEN as u64;
}

const _: () = assert!(data::FP.is_multiple_of(16) && data::END.is_multiple_of(16));

/// `"rpatchA2"`: the value at [`data::MAGIC`] (arm64 layout 2: the park and the return slot).
pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"rpatchA2");

/// The [`data::DONE`] word (the same states as on x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Done {
    /// A call is armed or running: the region belongs to that thread.
    Running = 0,
    /// The call is over: the thread waits at the stub's tail for the tracer to move it (or
    /// returns by itself when none comes).
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
        data::END
    }

    /// Length of the data block: header, saved state, scratch, page-rounded.
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

/// Length of the stub's return slot.
pub const RETURN_SLOT_LEN: usize = 16;

/// The encoded stub for one page size (entered with signals blocked by the tracer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStub {
    /// The whole code page: the stub, the return slot (`brk #0` until a call writes it), then
    /// `brk #0` padding.
    pub code: Vec<u8>,
    /// Offset of the entry point (sp = stack top; other registers anything).
    pub entry: u64,
    /// Offset of the restore path, where rpatch sends a thread whose call faulted (sp = stack
    /// top): it restores errno and ends like a normal return.
    pub restore: u64,
    /// Offset of the tail: the park, then the return without a tracer. The call is over (`DONE`
    /// is `Returning`); at any stop with the PC at or after it the tracer moves the thread to
    /// its resume state (registers, FP/SIMD state, signal mask) before anything else.
    pub tail: u64,
    /// Offset of the return slot ([`return_slot`]), the last thing the tail runs.
    pub slot: u64,
}

impl CallStub {
    /// Whether `found` (a code page read from a target) is this stub, whatever its return
    /// slot holds: how a later rpatch recognises a region it may reuse.
    pub fn matches(&self, found: &[u8]) -> bool {
        let slot = self.slot as usize..self.slot as usize + RETURN_SLOT_LEN;
        found.len() == self.code.len()
            && found
                .iter()
                .zip(&self.code)
                .enumerate()
                .all(|(i, (a, b))| slot.contains(&i) || a == b)
    }
}

/// Register holding the data block's address throughout the stub (callee-saved, so it survives
/// the calls).
const DATA: u32 = 19;
/// Register holding the FP area's address while it is saved or restored.
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
    // FP/SIMD state, for a return without the tracer (which has its own copy).
    s.push(insn::add_imm(VREGS, DATA, data::FP));
    for pair in 0..16 {
        s.push(insn::stp_q(2 * pair, 2 * pair + 1, VREGS, 32 * pair as u64));
    }
    s.push(insn::mrs_fpsr(0));
    s.push(insn::str_w(0, DATA, data::FPSR));
    s.push(insn::mrs_fpcr(0));
    s.push(insn::str_w(0, DATA, data::FPCR));
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
    // The tail: wait for the tracer to move the thread.
    let tail = s.at();
    park(&mut s.words, DATA, data::PARK_TIME);
    // No tracer came: the thread's FP/SIMD state, mask, flags, stack and registers, then the
    // return slot.
    s.push(insn::add_imm(VREGS, DATA, data::FP));
    for pair in 0..16 {
        s.push(insn::ldp_q(2 * pair, 2 * pair + 1, VREGS, 32 * pair as u64));
    }
    s.push(insn::ldr_w(0, DATA, data::FPSR));
    s.push(insn::msr_fpsr(0));
    s.push(insn::ldr_w(0, DATA, data::FPCR));
    s.push(insn::msr_fpcr(0));
    set_mask(&mut s.words, DATA, data::MASK);
    s.push(insn::ldr(CALLEE, DATA, data::SAVED + 8 * 33));
    s.push(insn::msr_nzcv(CALLEE));
    s.push(insn::ldr(CALLEE, DATA, data::SAVED + 8 * 31));
    s.push(insn::add_imm(31, CALLEE, 0));
    load_registers(&mut s.words, DATA, data::SAVED, &[CALLEE, DATA]);
    s.push(insn::ldr(CALLEE, DATA, data::SAVED + 8 * u64::from(CALLEE)));
    s.push(insn::ldr(DATA, DATA, data::SAVED + 8 * u64::from(DATA)));
    let slot = s.at();
    let words = s.finish(&[
        (Label::Call, call),
        (Label::Restore, restore),
        (Label::ErrnoDone, errno_done),
    ]);
    let mut code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert!(
        slot + (RETURN_SLOT_LEN as u64) < page,
        "the stub and its slot fit the page"
    );
    let pad = insn::brk(0).to_le_bytes();
    while (code.len() as u64) < page {
        code.extend_from_slice(&pad);
    }
    CallStub {
        code,
        entry,
        restore,
        tail,
        slot,
    }
}

/// The stub's return slot for one call, written at `slot_at` (the region's code page plus
/// [`CallStub::slot`]) for a thread resuming at `pc`. `exact` tells which form it is:
///
/// * `b pc` (then `brk` padding) when `pc` is within ±128 MiB: every register arrives as saved;
/// * else `ldr x16, #8; ret x16; .quad pc`: x16 arrives holding `pc`.
///
/// Only the return without a tracer runs it; the tracer writes it with the call's data block.
pub fn return_slot(slot_at: u64, pc: u64) -> ReturnSlot {
    let mut bytes = [0u8; RETURN_SLOT_LEN];
    for chunk in bytes.chunks_exact_mut(4) {
        chunk.copy_from_slice(&insn::brk(0).to_le_bytes());
    }
    let exact = match insn::b(slot_at, pc) {
        Some(b) => {
            bytes[..4].copy_from_slice(&b.to_le_bytes());
            true
        }
        None => {
            let ldr = insn::ldr_literal(CALLEE, 8).expect("a literal 8 bytes ahead encodes");
            bytes[..4].copy_from_slice(&ldr.to_le_bytes());
            bytes[4..8].copy_from_slice(&insn::ret(CALLEE).to_le_bytes());
            bytes[8..].copy_from_slice(&pc.to_le_bytes());
            false
        }
    };
    ReturnSlot { bytes, exact }
}

/// A return slot's bytes (see [`return_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReturnSlot {
    /// What to write at the slot.
    pub bytes: [u8; RETURN_SLOT_LEN],
    /// A `b pc`: the return without a tracer keeps x16 too.
    pub exact: bool,
}

/// What one call through the stub does: written as the data block's header and saved state.
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
    /// The thread's own signal mask (bit `n - 1` for signal `n`), which a return without the
    /// tracer puts back. The tracer blocks signals for the call itself, with ptrace.
    pub mask: u64,
    /// Where and how the thread resumes afterwards (PSTATE is cleaned on the way).
    pub resume: ResumeState,
    /// How long the stub waits at its tail for the tracer ([`PARK_TIME`]).
    pub park: Duration,
}

impl CallBlock {
    /// The bytes from the data block's start to the FP area, for a region with a data block of
    /// `data_len` bytes; `DONE` and the result slots are 0. The FP area is the stub's to fill.
    pub fn encode(&self, data_len: u64) -> Vec<u8> {
        let mut out = vec![0u8; data::FP as usize];
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
        put(data::MASK, self.mask);
        let [secs, nanos] = timespec(self.park);
        put(data::PARK_TIME, secs);
        put(data::PARK_TIME + 8, nanos);
        for (i, word) in self.resume.cleaned().words().iter().enumerate() {
            put(data::SAVED + 8 * i as u64, *word);
        }
        out
    }
}

/// The header of an idle region (no call armed, `DONE` = settled), written when a region is
/// created.
pub fn idle_header(data_len: u64) -> Vec<u8> {
    let mut out = vec![0u8; data::ARGS as usize];
    out[..8].copy_from_slice(&MAGIC_VALUE.to_le_bytes());
    out[data::DATA_LEN as usize..][..8].copy_from_slice(&data_len.to_le_bytes());
    out[data::DONE as usize..][..8].copy_from_slice(&(Done::Settled as u64).to_le_bytes());
    out
}
