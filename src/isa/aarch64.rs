//! arm64: the register view over NT_PRSTATUS (`user_pt_regs`, PTRACE_GETREGSET) and
//! NT_ARM_SYSTEM_CALL, the FP/vector state (NT_PRFPREG, or NT_ARM_SVE whole where the SVE state
//! is live), system-call facts, the entry jump
//! (`b imm26`, ±128 MiB, after a kept `bti`, replacing a PAC-signing entry by `bti c`), the call
//! before a return address and PAC stripping, framehop's aarch64 unwinder and the remote-call
//! conventions of `rpatch_arch::aarch64::remote_call` (the tracer does the return).
//!
//! **Cache coherence.** Code is written through /proc/PID/mem (or PTRACE_POKEDATA), which the
//! kernel performs with `access_process_vm()` → `copy_to_user_page()`; on arm64 that is
//! `arch/arm64/mm/flush.c`: `copy_to_user_page()` copies and then calls
//! `flush_ptrace_access()` → `sync_icache_aliases()` for an executable VMA, which cleans the
//! D-cache to the point of unification and invalidates the I-cache for the range. So no
//! explicit cache maintenance is needed by the tracer; what remains is the rule rpatch keeps on
//! every ISA: code is written only while every thread that may run it is stopped.

pub(crate) use rpatch_arch::aarch64::*;

use crate::process::Memory;
use nix::errno::Errno;
use remote_call::ResumeState;

/// The name reported for this architecture.
pub(crate) const NAME: &str = "aarch64";

/// `EM_AARCH64`: the ELF machine of the executables and libraries rpatch patches here.
pub(crate) const ELF_MACHINE: u16 = 183;

/// The same, as the `object` crate names it.
pub(crate) const OBJECT_ARCHITECTURE: object::Architecture = object::Architecture::Aarch64;

/// Alignment of an instruction's address: every A64 instruction is 4 bytes at a multiple of 4
/// (a PC that is not faults with SIGBUS).
pub(crate) const CODE_ALIGN: u64 = INSN_LEN;

/// `AUDIT_ARCH_AARCH64`: what `seccomp_data.arch` holds for an arm64 call.
pub(crate) const AUDIT_ARCH: u32 = 0xc000_00b7;

/// `NT_PRSTATUS`: the general registers.
const NT_PRSTATUS: usize = 1;
/// `NT_PRFPREG`: V0–V31, FPSR, FPCR.
const NT_PRFPREG: usize = 2;
/// `NT_ARM_SYSTEM_CALL`: the system call the thread is in (-1: none, or already rewound).
const NT_ARM_SYSTEM_CALL: usize = 0x404;

/// A stopped thread's general registers (NT_PRSTATUS) and its system-call number
/// (NT_ARM_SYSTEM_CALL), with the few questions the ISA-neutral code asks of them.
#[derive(Debug, Clone, Copy)]
pub struct Regs {
    pub(crate) state: ResumeState,
    pub(crate) syscallno: i64,
}

impl Regs {
    /// Registers with only the PC, stack and frame pointers set (a stack walk's start).
    pub fn for_unwind(pc: u64, sp: u64, fp: u64) -> Self {
        let mut state = ResumeState {
            pc,
            sp,
            ..Default::default()
        };
        state.x[29] = fp;
        Self {
            state,
            syscallno: -1,
        }
    }

    /// Registers of a thread stopped right after the system call `nr` (first argument
    /// `arg0`, which arm64 overwrites with the return value) returned `ret`, with the PC at
    /// `pc` (for tests of the syscall rules).
    #[cfg(test)]
    pub fn after_syscall(pc: u64, ret: i64, nr: u64, _arg0: u64) -> Self {
        let mut r = Self::for_unwind(pc, 0x7ffc_1000, 0);
        (r.state.x[0], r.state.x[8]) = (ret as u64, nr);
        r
    }

    /// The program counter.
    pub fn pc(&self) -> u64 {
        self.state.pc
    }

    /// Sets the program counter (PSTATE.BTYPE cleared: the PC is set, not branched to).
    pub fn set_pc(&mut self, pc: u64) {
        self.state.pc = pc;
        self.state.pstate = remote_call::clean_pstate(self.state.pstate);
    }

    /// The stack pointer.
    pub fn sp(&self) -> u64 {
        self.state.sp
    }

    /// The frame pointer (x29).
    pub fn frame_pointer(&self) -> u64 {
        self.state.x[29]
    }

    /// The link register (x30): a leaf callee may hold the only return address into its caller
    /// there, so it is checked like a frame's (PAC bits included: strip them first).
    pub fn link_register(&self) -> Option<u64> {
        Some(self.state.x[30])
    }

    /// Whether the thread stopped inside a system call. At an interrupt or signal stop arm64
    /// has already rewound a restartable call onto its `svc` and forgotten it, so this is
    /// true only at stops inside the kernel's syscall path; a ranking hint, never a rule.
    pub fn in_syscall(&self) -> bool {
        self.syscallno >= 0
    }
}

/// Reads the registers of a ptrace-stopped thread.
/// The bootstrap code (`remote_call::bootstrap_code`).
pub(crate) fn bootstrap_code() -> [u8; remote_call::BOOTSTRAP_LEN] {
    remote_call::bootstrap_code()
}

pub(crate) fn get_regs(tid: i32) -> Result<Regs, Errno> {
    let bytes = super::regset::get(tid, NT_PRSTATUS, ResumeState::PRSTATUS_LEN)?;
    let state = ResumeState::from_prstatus(&bytes).ok_or(Errno::EIO)?;
    learn_pac_mask(tid);
    let syscallno = super::regset::get(tid, NT_ARM_SYSTEM_CALL, 4)
        .ok()
        .and_then(|b| Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)))
        .map_or(-1, i64::from);
    Ok(Regs { state, syscallno })
}

/// Sets the general registers of a ptrace-stopped thread.
pub(crate) fn set_regs(tid: i32, regs: &Regs) -> Result<(), Errno> {
    super::regset::set(tid, NT_PRSTATUS, &regs.state.to_prstatus())
}

/// The regset name used in messages.
pub(crate) const FP_REGSET: &str = "PRFPREG/ARM_SVE";

/// A stopped thread's FP/vector state as the tracer saved it, to be put back exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FpSaved {
    /// V0–V31, FPSR, FPCR (NT_PRFPREG): a CPU without SVE, or a thread whose SVE state is not
    /// live (its NT_ARM_SVE header says FPSIMD format), for which this is everything.
    Fpsimd(Vec<u8>),
    /// The whole NT_ARM_SVE payload of a thread with live SVE state: its header (vector
    /// length, `SVE_PT_REGS_SVE`, `SVE_PT_VL_INHERIT` as the kernel reported them), Z0–Z31,
    /// P0–P15 and FFR at that vector length, FPSR and FPCR.
    Sve(Vec<u8>),
}

/// The FP/vector state of a ptrace-stopped thread: its whole NT_ARM_SVE payload when its SVE
/// state is live, else NT_PRFPREG. The header is read first, then the payload at the size it
/// gives (the thread is stopped: nothing changes between the two reads).
pub(crate) fn get_fp_state(tid: i32) -> Result<FpSaved, Errno> {
    use vector::{HEADER_LEN, NT_ARM_SVE, SveHeader};
    // No NT_ARM_SVE (a CPU or kernel without SVE): NT_PRFPREG is the whole state.
    let header = super::regset::get(tid, NT_ARM_SVE as usize, HEADER_LEN)
        .ok()
        .and_then(|bytes| SveHeader::parse(&bytes));
    if let Some(header) = header.filter(SveHeader::is_live) {
        let payload = super::regset::get(tid, NT_ARM_SVE as usize, header.size as usize)?;
        if !header.describes(&payload) {
            return Err(Errno::EIO);
        }
        return Ok(FpSaved::Sve(payload));
    }
    super::regset::get(tid, NT_PRFPREG, remote_call::FpState::PRFPREG_LEN).map(FpSaved::Fpsimd)
}

/// Puts back a state read by [`get_fp_state`]. A live SVE state is written back as read, header
/// included: the kernel (`sve_set_common()`) keeps the vector length (it is the thread's
/// own), keeps or clears VL_INHERIT as the header says, and loads Z, P, FFR, FPSR and FPCR.
/// Writing NT_ARM_SVE also sets the vector length the thread gets at its next `execve` to its
/// current one with VL_INHERIT, or to the system default without: the kernel offers no way
/// to read a length set for the next `execve` alone (`PR_SVE_SET_VL_ONEXEC`), so that one
/// is not kept. A state in FPSIMD format goes back through NT_PRFPREG, which leaves the
/// vector length settings alone (the kernel zero-extends V into Z if SVE is still enabled).
pub(crate) fn set_fp_state(tid: i32, state: &FpSaved) -> Result<(), Errno> {
    match state {
        FpSaved::Fpsimd(bytes) => super::regset::set(tid, NT_PRFPREG, bytes),
        FpSaved::Sve(payload) => super::regset::set(tid, vector::NT_ARM_SVE as usize, payload),
    }
}

/// System-call numbers and facts the ISA-neutral code needs.
pub(crate) mod sys {
    use rpatch_arch::aarch64::syscall as nr;

    /// Syscalls that return plain `-EINTR` when a ptrace interrupt arrives, with no restart
    /// code (arm64 has no `epoll_wait`: glibc uses `epoll_pwait`).
    pub const EINTR_ONLY: [u64; 5] = nr::EINTR_ONLY_SYSCALLS;
    /// `vfork`: none on arm64 (glibc uses `clone` with CLONE_VFORK).
    pub const VFORK: Option<i64> = None;
    /// `clone`, which blocks like vfork with CLONE_VFORK (posix_spawn).
    pub const CLONE: i64 = nr::SYS_CLONE as i64;
    /// `clone3`, whose flags live in memory (counted as possibly vfork-like).
    pub const CLONE3: i64 = nr::SYS_CLONE3 as i64;
    /// `futex`: a thread blocked in it waits for a lock, and may hold another.
    pub const FUTEX: i64 = nr::SYS_FUTEX as i64;
    /// `epoll_pwait` and `epoll_pwait2`: their first argument is an epoll instance.
    pub const EPOLL: [u64; 2] = [nr::SYS_EPOLL_PWAIT, nr::SYS_EPOLL_PWAIT2];
    /// `read`.
    #[cfg(test)]
    pub const READ: u64 = nr::SYS_READ;

    /// The name of one of [`EINTR_ONLY`], for messages.
    pub fn name(call: u64) -> &'static str {
        match call {
            nr::SYS_EPOLL_PWAIT => "epoll_pwait",
            nr::SYS_EPOLL_PWAIT2 => "epoll_pwait2",
            nr::SYS_RT_SIGTIMEDWAIT => "rt_sigtimedwait",
            nr::SYS_SEMTIMEDOP => "semtimedop",
            nr::SYS_SEMOP => "semop",
            _ => "a system call",
        }
    }
}

/// The system call instruction (`svc #0`).
pub(crate) const SYSCALL_INSN: [u8; 4] = insn::SVC0.to_le_bytes();

/// Whether `regs` show a plain `-EINTR` from one of [`sys::EINTR_ONLY`] (PC after the `svc`,
/// x8 still the call's number).
pub(crate) fn eintr_from_eintr_only_call(regs: &Regs) -> bool {
    regs.state.x[0] as i64 == -(libc::EINTR as i64) && sys::EINTR_ONLY.contains(&regs.state.x[8])
}

/// Whether an interrupted call's first argument can be lost from the registers, so that the
/// freeze reads `/proc/TID/syscall` of a thread again once it is seized (see
/// `process::Seen::fresh`): yes, the return value overwrites x0.
pub(crate) const EINTR_LOSES_AN_ARGUMENT: bool = true;

/// A ptrace interrupt made one of [`sys::EINTR_ONLY`] fail with EINTR (the caller checked that
/// no signal is pending for the thread). On arm64 the return value overwrote x0, the call's
/// first argument, and no interface gives it back at this stop: the kernel keeps it
/// (`orig_x0`), but no register set exposes it, and `/proc/TID/syscall` prints x0 itself (seen
/// on 6.1, even with NT_ARM_SYSTEM_CALL set back to the call's number so that the file shows
/// arguments at all). So the call is re-entered (PC back onto the `svc`) only when its first
/// argument is proven otherwise:
///
/// * for `epoll_pwait`/`epoll_pwait2`, when the thread's file table holds exactly one epoll
///   instance: an EINTR from epoll_pwait proves its first argument was one (a thread whose
///   handler for a real signal just returned onto such registers re-enters the call, as a
///   restartable call would be);
/// * from `before` when it is fresh (`process::Seen::fresh`: read after the seize, no signal
///   handed to the thread since, so no handler's `rt_sigreturn` can have restored registers that
///   merely look like this call's return), shows this very call (same number, PC and other
///   arguments) and the thread has made exactly one voluntary context switch since (the stop:
///   `process::Seen::switches`; a thread whose wait ended by itself and that slept in another
///   has made two), its first argument being an epoll instance for the epoll waits. One window
///   remains: a thread whose own wait ends in the microseconds between that read and the
///   interrupt, and that enters a wait on another instance from the same call site, with the
///   same other arguments, after the interrupt is posted but before it reaches its CPU.
///
/// Otherwise (a thread that was running when rpatch looked and entered the call just as the
/// interrupt came, in a process with several epoll instances, say) the EINTR is kept and
/// reported: re-entering a wait on the wrong instance could hang the thread, which is worse
/// than one EINTR, which callers of these calls must handle anyway.
pub(crate) fn rewind_eintr(
    pid: i32,
    tid: i32,
    mem: &dyn Memory,
    regs: &mut Regs,
    before: Option<&crate::process::Seen>,
) -> crate::process::EintrRepair {
    use crate::process::{EintrRepair, syscall::epoll_fds};
    let mut word = [0u8; 4];
    if mem.read_at(regs.pc().wrapping_sub(4), &mut word).is_err() || word != SYSCALL_INSN {
        return EintrRepair::None;
    }
    let nr = regs.state.x[8];
    let seen = before
        .filter(|seen| {
            let b = &seen.call;
            seen.fresh
                && u64::try_from(b.nr) == Ok(nr)
                && b.pc == regs.pc()
                && b.args.get(1..6) == Some(&regs.state.x[1..6])
                && seen.switches.is_some_and(|n| {
                    crate::process::syscall::voluntary_switches(pid, tid) == Some(n + 1)
                })
        })
        .and_then(|seen| seen.call.args.first().copied());
    let first = if sys::EPOLL.contains(&nr) {
        match epoll_fds(pid, tid).as_deref() {
            Some(&[only]) => Some(only),
            Some(fds) => seen.filter(|fd| fds.contains(fd)),
            None => None,
        }
    } else {
        seen
    };
    let Some(first) = first else {
        return EintrRepair::Kept {
            call: sys::name(nr),
        };
    };
    let mut args = [0; 6];
    args[0] = first;
    args[1..].copy_from_slice(&regs.state.x[1..6]);
    let call = syscall::BlockedCall {
        nr,
        args,
        pc: regs.pc(),
    };
    match syscall::resume_state(&regs.state, false, Some(&call), true) {
        syscall::Resume::At(state) if state.pc != regs.state.pc => {
            regs.state = state;
            EintrRepair::Rewound
        }
        _ => EintrRepair::None,
    }
}

/// The entry jump: `b imm26` reaching ±128 MiB (to an island slot or the replacement), or the
/// 16-byte `ldr x16, #8; br x16; .quad` in place. A PAC-signing entry (`paciasp`) is replaced
/// by `bti c` in front of the jump, so nothing signs a return address before the branch and
/// indirect calls still land on a valid target (see `rpatch_arch::aarch64::EntryMarker`).
pub(crate) mod jump {
    use super::{B_LEN, B_REACH, EntryMarker, JMP_ABS_LEN, entry_marker, insn};

    /// How far a near jump reaches either way (island candidates are searched within it).
    pub const NEAR_REACH: u64 = B_REACH;

    /// Bytes written in front of the jump for a function whose bytes at the write address are
    /// `at_write`: a `bti c` replacing a `paciasp`/`pacibsp`.
    fn landing_pad(at_write: &[u8]) -> Option<[u8; 4]> {
        matches!(entry_marker(at_write), EntryMarker::PacSign(_)).then(|| insn::BTI_C.to_le_bytes())
    }

    /// Length of the near entry jump written at the write address.
    pub fn near_len(at_write: &[u8]) -> usize {
        landing_pad(at_write).map_or(0, |p| p.len()) + B_LEN
    }

    /// Length of the in-place absolute jump (the fallback over the function's bytes).
    pub fn far_len(at_write: &[u8]) -> usize {
        landing_pad(at_write).map_or(0, |p| p.len()) + JMP_ABS_LEN
    }

    /// The near entry jump at `from` to `to` for a function whose bytes at `from` are
    /// `at_write`; `None` when out of reach.
    pub fn near(at_write: &[u8], from: u64, to: u64) -> Option<Vec<u8>> {
        let mut out = landing_pad(at_write).map(Vec::from).unwrap_or_default();
        let b = super::b(from + out.len() as u64, to)?;
        out.extend_from_slice(&b);
        Some(out)
    }

    /// The absolute entry jump to `to`.
    pub fn far(at_write: &[u8], to: u64) -> Vec<u8> {
        let mut out = landing_pad(at_write).map(Vec::from).unwrap_or_default();
        out.extend_from_slice(&super::jmp_abs(to));
        out
    }

    /// Whether a near jump at `from` reaches `to` (an island slot).
    pub fn reaches(from: u64, to: u64) -> bool {
        super::b(from, to).is_some()
    }
}

/// Why the vector state of stopped thread `tid` keeps it from being borrowed for a call
/// (`rpatch_arch::aarch64::vector`): SME streaming mode or ZA storage in use. Live SVE state
/// does not: [`get_fp_state`] saves it whole and the tracer puts it back.
pub(crate) fn vector_refusal(tid: i32, _regs: &Regs, _mem: &dyn Memory) -> Option<&'static str> {
    use vector::{HEADER_LEN, NT_ARM_SSVE, NT_ARM_SVE, NT_ARM_ZA, VectorRefusal, VectorState};
    let header = |note: u32| super::regset::get(tid, note as usize, HEADER_LEN).ok();
    let (sve, ssve, za) = (header(NT_ARM_SVE), header(NT_ARM_SSVE), header(NT_ARM_ZA));
    let state = VectorState::from_headers(sve.as_deref(), ssve.as_deref(), za.as_deref());
    match state.may_borrow() {
        Ok(()) => None,
        Err(VectorRefusal::Streaming) => Some("it is in SME streaming mode"),
        Err(VectorRefusal::ZaActive) => Some("its SME ZA storage is in use"),
    }
}

/// Whether stopped thread `tid` has live SVE state (its NT_ARM_SVE header says SVE format): it is
/// borrowed only when no other thread qualifies (see `patch::load`), because a stub that returns
/// without the tracer restores V0–V31 only.
pub(crate) fn sve_live(tid: i32) -> bool {
    use vector::{HEADER_LEN, NT_ARM_SVE, SveHeader};
    super::regset::get(tid, NT_ARM_SVE as usize, HEADER_LEN)
        .ok()
        .and_then(|bytes| SveHeader::parse(&bytes))
        .is_some_and(|h| h.is_live())
}

/// The instruction mask of pointer-authentication codes for a 48-bit user address space:
/// bits 54..48 and 63..56 (covering the top byte too, should instruction addresses get no
/// top-byte-ignore). Used until the kernel's own mask is known (see [`pac_mask`]).
pub(crate) const DEFAULT_PAC_MASK: u64 = 0xff7f_0000_0000_0000;

/// `NT_ARM_PAC_MASK`: `struct user_pac_mask { __u64 data_mask; __u64 insn_mask; }`.
const NT_ARM_PAC_MASK: usize = 0x406;
/// [`PAC_MASK`] before any stopped thread was asked.
const PAC_MASK_UNKNOWN: u64 = u64::MAX;

/// The instruction mask NT_ARM_PAC_MASK reported (0: the kernel gives user space no pointer
/// authentication), learnt from the first stopped thread whose registers are read. The kernel
/// computes it from its virtual-address size alone (`ptrauth_user_pac_mask()`), so it is the
/// same for every thread of every process of this machine.
static PAC_MASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(PAC_MASK_UNKNOWN);

/// Reads NT_ARM_PAC_MASK from stopped thread `tid` unless known. EINVAL (`pac_mask_get()`
/// refuses when the system has no address authentication) or ENODEV (a kernel without the
/// register set, which has no pointer authentication for user space either) prove that no
/// return address carries a code: the mask is then 0, exact where the 48-bit constant would
/// cut address bits 51..48 of a process that opted into 52-bit addresses. Any other failure (the
/// thread vanished) leaves it unknown for the next thread.
fn learn_pac_mask(tid: i32) {
    use std::sync::atomic::Ordering::Relaxed;
    if PAC_MASK.load(Relaxed) != PAC_MASK_UNKNOWN {
        return;
    }
    let mask = match super::regset::get(tid, NT_ARM_PAC_MASK, 16) {
        Ok(bytes) => match bytes.get(8..16) {
            Some(insn) => u64::from_le_bytes(insn.try_into().expect("8 bytes")),
            None => return,
        },
        Err(Errno::EINVAL | Errno::ENODEV) => 0,
        Err(_) => return,
    };
    PAC_MASK.store(mask, Relaxed);
}

/// The bits a pointer-authentication code occupies in a return address: the instruction mask
/// NT_ARM_PAC_MASK reports (read once from a stopped thread, see [`learn_pac_mask`]: every
/// stack walk and conservative scan runs on a stopped thread whose registers were read), or
/// [`DEFAULT_PAC_MASK`] before any thread was stopped.
pub(crate) fn pac_mask() -> u64 {
    match PAC_MASK.load(std::sync::atomic::Ordering::Relaxed) {
        PAC_MASK_UNKNOWN => DEFAULT_PAC_MASK,
        mask => mask,
    }
}

/// Return addresses on stacks: the call instruction before one, PAC stripping and the
/// unwinder's types.
pub(crate) mod stack {
    use framehop::aarch64::{CacheAarch64, PtrAuthMask, UnwindRegsAarch64, UnwinderAarch64};

    /// The unwinder over modules whose sections are `D`.
    pub type Unwinder<D> = UnwinderAarch64<D>;
    /// Its rule cache.
    pub type Cache = CacheAarch64;
    /// Its register set.
    pub type UnwindRegs = UnwindRegsAarch64;

    /// arm64 Linux has no red zone below the stack pointer.
    pub const RED_ZONE: u64 = 0;

    /// The registers a CFA rule may be based on for framehop to evaluate it (sp or x29 (the frame pointer)); the
    /// CFI check calls a frame with another rule incomplete.
    pub const CFA_REGISTERS: [gimli::Register; 2] = [gimli::AArch64::SP, gimli::AArch64::X29];

    /// The unwinder's registers for a thread stopped with `regs`; return addresses lose the
    /// PAC bits of `pac_mask` (framehop's mask is the bits kept).
    pub fn unwind_regs(regs: &super::Regs, pac_mask: u64) -> UnwindRegs {
        UnwindRegsAarch64::new_with_ptr_auth_mask(
            PtrAuthMask(!pac_mask),
            regs.state.x[30],
            regs.sp(),
            regs.frame_pointer(),
        )
    }

    /// Offsets from the stack pointer at the signal trampoline (`__kernel_rt_sigreturn`: the
    /// `struct rt_sigframe` is there) of the interrupted context's registers: `siginfo` (128
    /// bytes), then the `ucontext` whose `uc_mcontext` is at 176 (flags, link, stack, a 128-byte
    /// sigset, aligned to 16); in `sigcontext`, `regs[31]` follow the 8-byte fault address, then
    /// `sp` and `pc`.
    const SC_REGS: u64 = 128 + 176 + 8;
    const SC_FP: u64 = SC_REGS + 29 * 8;
    const SC_LR: u64 = SC_REGS + 30 * 8;
    const SC_SP: u64 = SC_REGS + 31 * 8;
    const SC_PC: u64 = SC_REGS + 32 * 8;

    /// The interrupted context of a signal frame whose trampoline runs with stack pointer `sp`:
    /// its PC and the unwinder's registers there.
    pub fn signal_context(
        sp: u64,
        word: impl Fn(u64) -> Option<u64>,
        pac_mask: u64,
    ) -> Option<(u64, UnwindRegs)> {
        let at = |off: u64| word(sp.checked_add(off)?);
        let (pc, lr, fp, csp) = (at(SC_PC)?, at(SC_LR)?, at(SC_FP)?, at(SC_SP)?);
        let regs = UnwindRegsAarch64::new_with_ptr_auth_mask(PtrAuthMask(!pac_mask), lr, csp, fp);
        Some((pc, regs))
    }

    /// The kernel's sigreturn trampoline, which a signal handler returns to
    /// (`__kernel_rt_sigreturn` in the vDSO: `mov x8, #139` (rt_sigreturn), `svc #0`). The arm64
    /// vDSO carries no unwind tables (6.1's has no `.eh_frame` section), so a signal frame is
    /// recognised by this code at a return address instead of by CFI marked as a signal frame.
    pub const SIGRETURN_CODE: Option<[u8; 8]> =
        Some([0x68, 0x11, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4]);

    /// The call instruction before a return address is one 4-byte word.
    pub const MAX_CALL_LEN: usize = super::CALL_LEN as usize;

    /// Whether `before` (the bytes just before a return address) ends with a call instruction
    /// (`bl`, `blr`, `blraa`...).
    pub fn preceded_by_call(before: &[u8]) -> bool {
        before
            .len()
            .checked_sub(4)
            .and_then(|i| before[i..].try_into().ok())
            .is_some_and(super::is_call_before)
    }

    /// A saved return address as the code sees it: its PAC bits cleared.
    pub fn strip(addr: u64, pac_mask: u64) -> u64 {
        super::strip_pac(addr, pac_mask)
    }
}

/// Remote calls, arm64 form (`rpatch_arch::aarch64::remote_call`): the bootstrap and the stub
/// end by parking in a bounded `ppoll`, and the tracer moves the thread to its resume state
/// (registers, FP/SIMD state, signal mask); without a tracer they return by themselves.
pub(crate) mod call {
    use super::Regs;
    use super::remote_call::{
        self as stub, BOOTSTRAP_PARK, CallBlock, CallStub, PARK_TIME, ResumeState, StubRegion,
        Syscall,
    };
    use super::syscall::{self, Resume};
    use crate::process::Memory;

    /// Whether the tracer returns the thread to its own code after a call or the bootstrap (it
    /// sets registers, FP state and mask): yes, A64 has no register-free jump back.
    pub const TRACER_RETURNS: bool = true;

    /// `mmap`'s number.
    pub const SYS_MMAP: u64 = syscall::SYS_MMAP;

    /// What the stub region's layout depends on in this target: its page size.
    #[derive(Debug, Clone, Copy)]
    pub struct Layout {
        page: u64,
    }

    /// The target's page size from its auxiliary vector (`AT_PAGESZ`; 4, 16 or 64 KiB), else
    /// rpatch's own (the same kernel).
    pub fn layout(pid: i32) -> Layout {
        let page = std::fs::read(format!("/proc/{pid}/auxv"))
            .ok()
            .and_then(|auxv| super::page_size_from_auxv(&auxv))
            // SAFETY: sysconf has no memory effects.
            .unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64);
        Layout { page }
    }

    impl Layout {
        /// The page size the region is laid out in.
        pub fn page(&self) -> u64 {
            self.page
        }

        /// The region at `base`.
        pub fn region(&self, base: u64) -> StubRegion {
            StubRegion {
                base,
                page: self.page,
            }
        }

        /// The stub for `region`.
        pub fn stub(&self, region: &StubRegion) -> Result<CallStub, String> {
            Ok(stub::call_stub(region.page))
        }

        /// The data block's bytes for a call (header and saved state; the FP area is the
        /// stub's to write).
        pub fn block(
            &self,
            region: &StubRegion,
            call: &super::super::CallArgs,
            at_rest: &Regs,
            mem: &dyn Memory,
        ) -> Vec<u8> {
            let block = CallBlock {
                function: call.function,
                args: call.args,
                errno_location: call.errno_location,
                then_if_zero: call.then_if_zero,
                mask: call.own_mask,
                resume: resume_state(at_rest, mem),
                park: PARK_TIME,
            };
            block.encode(region.data_len())
        }
    }

    /// Whether `found` (a code page read from a target) is `stub`, whatever its return slot
    /// holds: how a region left by an earlier rpatch is recognised.
    pub fn stub_matches(stub: &CallStub, found: &[u8]) -> bool {
        stub.matches(found)
    }

    /// The stub's return slot for one call (the branch back to the thread's PC it takes when no
    /// tracer comes), written into the code page of a settled region before the call.
    pub fn return_code(
        stub: &CallStub,
        region: &StubRegion,
        at_rest: &Regs,
        mem: &dyn Memory,
    ) -> Option<(u64, Vec<u8>)> {
        let at = region.code() + stub.slot;
        let slot = stub::return_slot(at, resume_state(at_rest, mem).pc);
        Some((at, slot.bytes.to_vec()))
    }

    /// The registers that send a thread stopped at `at_rest` into rpatch's code at `pc` with
    /// stack pointer `sp` (PSTATE.BTYPE clear: the PC is set, not branched to).
    pub fn entry_regs(at_rest: &Regs, pc: u64, sp: u64) -> Regs {
        let mut r = *at_rest;
        r.state.sp = sp;
        r.set_pc(pc);
        r
    }

    /// The thread's registers at its resume state (see [`resume_state`]).
    pub fn resume_regs(at_rest: &Regs, mem: &dyn Memory) -> Regs {
        Regs {
            state: resume_state(at_rest, mem),
            syscallno: -1,
        }
    }

    /// The registers a signal is delivered on to a thread whose resume state is `at_rest` (see
    /// `InjectedThread::pass_signal`): its resume registers, so after a handler the interrupted
    /// call is issued again. arm64's kernel turns an interrupted call into EINTR (sigsuspend,
    /// pause, a call without SA_RESTART) only inside the `do_signal` of the stop that
    /// interrupted it, which a later delivery cannot reproduce without the handler's
    /// SA_RESTART flag, which ptrace does not show.
    pub fn signal_regs(at_rest: &Regs, mem: &dyn Memory, _caught: bool) -> Regs {
        resume_regs(at_rest, mem)
    }

    /// Whether the thread stopped on the `svc` of a call the kernel may continue through
    /// `restart_syscall` (`syscall::Resume::AskKernel`): only the kernel knows whether it was
    /// interrupted inside it. The caller lets the thread go unchanged until it blocks again and
    /// stops it there: x8 = `restart_syscall` then is the kernel's answer.
    pub fn asks_kernel(at_rest: &Regs, mem: &dyn Memory) -> bool {
        matches!(
            syscall::resume_state(&at_rest.state, on_svc(at_rest, mem), None, false),
            Resume::AskKernel { .. }
        )
    }

    fn on_svc(at_rest: &Regs, mem: &dyn Memory) -> bool {
        let mut word = [0u8; 4];
        mem.read_at(at_rest.pc(), &mut word).is_ok() && word == super::SYSCALL_INSN
    }

    /// Where a stopped thread must resume. arm64 rewinds a restartable system call before the
    /// stop (PC on the `svc`, x0 = its first argument), so the registers are the resume state
    /// already, with PSTATE's branch type and step bits cleared (x8 = `restart_syscall` where
    /// the kernel chose it, see [`asks_kernel`]). A call the kernel was not asked about is
    /// re-issued as itself from the start (a sleep then sleeps its whole time again).
    pub fn resume_state(at_rest: &Regs, mem: &dyn Memory) -> ResumeState {
        match syscall::resume_state(&at_rest.state, on_svc(at_rest, mem), None, false) {
            Resume::At(state) => state,
            Resume::AskKernel { reissue } => reissue,
        }
    }

    /// The bootstrap's frame for a thread at `at_rest`: where it goes (right below the stack
    /// pointer: no red zone), its bytes, and the stack range it needs (which must be mapped
    /// read-write; an impossible range when the stack pointer is misaligned).
    pub fn bootstrap_frame(
        at_rest: &Regs,
        second: &Syscall,
        mask: u64,
        mem: &dyn Memory,
    ) -> (u64, Vec<u8>, std::ops::Range<u64>) {
        let resume = resume_state(at_rest, mem);
        match stub::bootstrap_frame_addr(resume.sp) {
            Some(at) => {
                let frame = stub::bootstrap_frame(second, mask, PARK_TIME, &resume);
                (at, frame.to_vec(), at..resume.sp)
            }
            None => (0, Vec::new(), 0..u64::MAX),
        }
    }

    /// The registers that start the bootstrap at `code` with its frame at `frame_at`, making
    /// the system call `first` from registers.
    pub fn bootstrap_regs(at_rest: &Regs, code: u64, frame_at: u64, first: &Syscall) -> Regs {
        let mut r = entry_regs(at_rest, code, frame_at);
        r.state.x[..6].copy_from_slice(&first.args);
        r.state.x[8] = first.nr;
        r
    }

    /// Whether a thread stopped at `pc` in the bootstrap at `code` waits at its park for the
    /// tracer (both mappings made).
    pub fn bootstrap_parked(code: u64, pc: u64) -> bool {
        pc >= code + BOOTSTRAP_PARK
    }
}
