//! x86_64: the register view over `user_regs_struct` (PTRACE_GETREGS), the XSAVE area
//! (NT_X86_XSTATE), system-call facts, the entry jump (`jmp rel32`, ±2 GiB), the call forms
//! before a return address, framehop's x86_64 unwinder and the remote-call conventions of
//! `rpatch_arch::x86_64::remote_call`.

pub(crate) use rpatch_arch::x86_64::*;

use crate::process::Memory;
use nix::errno::Errno;
use nix::unistd::Pid;

/// The name reported for this architecture.
pub(crate) const NAME: &str = "x86_64";

/// `EM_X86_64`: the ELF machine of the executables and libraries rpatch patches here.
pub(crate) const ELF_MACHINE: u16 = 62;

/// The same, as the `object` crate names it.
pub(crate) const OBJECT_ARCHITECTURE: object::Architecture = object::Architecture::X86_64;

/// Alignment of an instruction's address (none on x86_64).
pub(crate) const CODE_ALIGN: u64 = 1;

/// `AUDIT_ARCH_X86_64`: what `seccomp_data.arch` holds for a 64-bit x86 call.
pub(crate) const AUDIT_ARCH: u32 = 0xc000_003e;

/// A stopped thread's general registers, as ptrace hands them over (`user_regs_struct`), with
/// the few questions the ISA-neutral code asks of them.
#[derive(Debug, Clone, Copy)]
pub struct Regs(pub(crate) libc::user_regs_struct);

impl Regs {
    /// Registers with only the PC, stack and frame pointers set (a stack walk's start).
    pub fn for_unwind(pc: u64, sp: u64, fp: u64) -> Self {
        // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        (r.rip, r.rsp, r.rbp) = (pc, sp, fp);
        Self(r)
    }

    /// Registers of a thread stopped right after the system call `nr` (first argument
    /// `arg0`) returned `ret`, with the PC at `pc` (for tests of the syscall rules).
    #[cfg(test)]
    pub fn after_syscall(pc: u64, ret: i64, nr: u64, arg0: u64) -> Self {
        let mut r = Self::for_unwind(pc, 0x7ffc_1000, 0);
        (r.0.rax, r.0.orig_rax, r.0.rdi) = (ret as u64, nr, arg0);
        r
    }

    /// The program counter.
    pub fn pc(&self) -> u64 {
        self.0.rip
    }

    /// Sets the program counter.
    pub fn set_pc(&mut self, pc: u64) {
        self.0.rip = pc;
    }

    /// The stack pointer.
    pub fn sp(&self) -> u64 {
        self.0.rsp
    }

    /// The frame pointer (`rbp`).
    pub fn frame_pointer(&self) -> u64 {
        self.0.rbp
    }

    /// The register a call leaves its return address in: none on x86_64 (it is on the stack).
    /// A port with one (arm64's x30) has its value checked like a frame's.
    pub fn link_register(&self) -> Option<u64> {
        None
    }

    /// Whether the thread stopped inside a system call (`orig_rax` is its number).
    pub fn in_syscall(&self) -> bool {
        (self.0.orig_rax as i64) >= 0
    }
}

/// Reads the registers of a ptrace-stopped thread.
/// The bootstrap code (`remote_call::assemble_bootstrap`), assembled when rpatch was built.
pub(crate) fn bootstrap_code() -> [u8; remote_call::BOOTSTRAP_LEN] {
    *prebuilt::bootstrap_code()
}

pub(crate) fn get_regs(tid: i32) -> Result<Regs, Errno> {
    nix::sys::ptrace::getregs(Pid::from_raw(tid)).map(Regs)
}

/// Sets the registers of a ptrace-stopped thread.
pub(crate) fn set_regs(tid: i32, regs: &Regs) -> Result<(), Errno> {
    nix::sys::ptrace::setregs(Pid::from_raw(tid), regs.0)
}

/// The regset name used in messages.
pub(crate) const FP_REGSET: &str = "XSTATE";

/// ELF note type of the x86 XSAVE area, for PTRACE_GETREGSET (not exported by the libc crate).
const NT_X86_XSTATE: usize = 0x202;

/// A stopped thread's FP/vector state as the tracer saved it: its XSAVE area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FpSaved(Vec<u8>);

/// The full extended FP/vector state (XSAVE area) of a ptrace-stopped thread.
pub(crate) fn get_fp_state(tid: i32) -> Result<FpSaved, Errno> {
    super::regset::get(tid, NT_X86_XSTATE, 64 * 1024).map(FpSaved)
}

/// Restores a state read by [`get_fp_state`].
pub(crate) fn set_fp_state(tid: i32, state: &FpSaved) -> Result<(), Errno> {
    super::regset::set(tid, NT_X86_XSTATE, &state.0)
}

/// System-call numbers and facts the ISA-neutral code needs.
pub(crate) mod sys {
    /// Syscalls that return plain `-EINTR` when a ptrace interrupt arrives, with no restart
    /// code: semop, rt_sigtimedwait, semtimedop, epoll_wait, epoll_pwait, epoll_pwait2.
    pub const EINTR_ONLY: [u64; 6] = [65, 128, 220, 232, 281, 441];
    /// `vfork`.
    pub const VFORK: Option<i64> = Some(58);
    /// `clone`, which blocks like vfork with CLONE_VFORK (posix_spawn).
    pub const CLONE: i64 = 56;
    /// `clone3`, whose flags live in memory (counted as possibly vfork-like).
    pub const CLONE3: i64 = 435;
    /// `futex`: a thread blocked in it waits for a lock, and may hold another.
    pub const FUTEX: i64 = 202;
    /// `read`.
    #[cfg(test)]
    pub const READ: u64 = 0;
}

/// The system call instruction (`syscall`).
pub(crate) const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Whether an interrupted call's first argument can be lost from the registers, so that the
/// freeze reads `/proc/TID/syscall` of an EINTR-only sleeper again once it is seized (see
/// `process::Seen::fresh`): no, `orig_rax` keeps the number and no argument is lost.
pub(crate) const EINTR_LOSES_AN_ARGUMENT: bool = false;

/// A ptrace interrupt made one of [`sys::EINTR_ONLY`] fail with EINTR (the caller checked that
/// no signal is pending for the thread): rewind `regs` onto the 2-byte `syscall` instruction
/// with the call's number, so the thread re-enters the call. (`_before`, what
/// `/proc/TID/syscall` showed before the interrupt, is not needed: `orig_rax` keeps the number,
/// no argument is lost, and a signal handler's `rt_sigreturn` sets `orig_rax` to -1, so
/// registers it restores are never taken for an interrupted call.)
pub(crate) fn rewind_eintr(
    _pid: i32,
    _tid: i32,
    mem: &dyn Memory,
    regs: &mut Regs,
    _before: Option<&crate::process::Seen>,
) -> crate::process::EintrRepair {
    use crate::process::EintrRepair;
    let r = &mut regs.0;
    let mut insn = [0u8; 2];
    if mem.read_at(r.rip - 2, &mut insn).is_err() || insn != SYSCALL_INSN {
        return EintrRepair::None;
    }
    r.rax = r.orig_rax;
    r.rip -= 2;
    EintrRepair::Rewound
}

/// Whether `regs` show a plain `-EINTR` from one of [`sys::EINTR_ONLY`].
pub(crate) fn eintr_from_eintr_only_call(regs: &Regs) -> bool {
    regs.0.rax as i64 == -(libc::EINTR as i64) && sys::EINTR_ONLY.contains(&regs.0.orig_rax)
}

/// The entry jump: `jmp rel32`, reaching ±2 GiB.
pub(crate) mod jump {
    use super::{JMP_ABS_LEN, JMP_REL32_LEN};

    /// How far a near jump reaches either way (island candidates are searched within it).
    pub const NEAR_REACH: u64 = 1 << 31;

    /// Length of the near entry jump written after the kept prefix.
    pub fn near_len(_head: &[u8]) -> usize {
        JMP_REL32_LEN
    }

    /// Length of the in-place absolute jump (the fallback over the function's bytes).
    pub fn far_len(_head: &[u8]) -> usize {
        JMP_ABS_LEN
    }

    /// The near entry jump at `from` (after the kept prefix) to `to`, for a function whose
    /// first bytes are `head`; `None` when out of reach.
    pub fn near(_head: &[u8], from: u64, to: u64) -> Option<Vec<u8>> {
        super::jmp_rel32(from, to).map(|j| j.to_vec())
    }

    /// The absolute entry jump to `to`.
    pub fn far(_head: &[u8], to: u64) -> Vec<u8> {
        super::jmp_abs(to).to_vec()
    }

    /// Whether a near jump at `from` reaches `to` (an island slot).
    pub fn reaches(from: u64, to: u64) -> bool {
        super::jmp_rel32(from, to).is_some()
    }
}

/// Return addresses on stacks: the call instruction before one, and the unwinder's types.
pub(crate) mod stack {
    use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};

    /// The unwinder over modules whose sections are `D`.
    pub type Unwinder<D> = UnwinderX86_64<D>;
    /// Its rule cache.
    pub type Cache = CacheX86_64;
    /// Its register set.
    pub type UnwindRegs = UnwindRegsX86_64;

    /// Bytes below the stack pointer a leaf may use without moving it (the red zone), copied
    /// with the stack: its first frame may keep its saved registers there.
    pub const RED_ZONE: u64 = 128;

    /// The sigreturn trampoline's code, where its CFI does not say it is one: none needed here
    /// (glibc's `__restore_rt` and the vDSO's carry CFI marked as a signal frame).
    pub const SIGRETURN_CODE: Option<[u8; 8]> = None;

    /// The registers a CFA rule may be based on for framehop to evaluate it (rsp or rbp); the
    /// CFI check calls a frame with another rule incomplete.
    pub const CFA_REGISTERS: [gimli::Register; 2] = [gimli::X86_64::RSP, gimli::X86_64::RBP];

    /// The unwinder's registers for a thread stopped with `regs`. `_pac_mask` is unused here.
    pub fn unwind_regs(regs: &super::Regs, _pac_mask: u64) -> UnwindRegs {
        UnwindRegsX86_64::new(regs.pc(), regs.sp(), regs.frame_pointer())
    }

    /// Offsets in an x86_64 `ucontext_t` of the saved rip, rsp and rbp (`uc_mcontext.gregs`
    /// starts at 40; REG_RIP = 16, REG_RSP = 15, REG_RBP = 10), as glibc's sigreturn CFI also
    /// says. The ucontext is at the stack pointer of the signal trampoline's frame.
    const UC_RIP: u64 = 40 + 16 * 8;
    const UC_RSP: u64 = 40 + 15 * 8;
    const UC_RBP: u64 = 40 + 10 * 8;

    /// The interrupted context of a signal frame whose trampoline runs with stack pointer `sp`:
    /// its PC and the unwinder's registers there.
    pub fn signal_context(
        sp: u64,
        word: impl Fn(u64) -> Option<u64>,
        _pac_mask: u64,
    ) -> Option<(u64, UnwindRegs)> {
        let at = |off: u64| word(sp.checked_add(off)?);
        let (rip, rsp, rbp) = (at(UC_RIP)?, at(UC_RSP)?, at(UC_RBP)?);
        Some((rip, UnwindRegsX86_64::new(rip, rsp, rbp)))
    }

    /// Longest call instruction recognised before a return address (`ff 94 24 disp32`).
    pub const MAX_CALL_LEN: usize = 7;

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

    /// A saved return address as the code sees it (nothing to strip on x86_64).
    pub fn strip(addr: u64, _pac_mask: u64) -> u64 {
        addr
    }

    #[cfg(test)]
    mod tests {
        use super::*;

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
    }
}

/// Why the vector state of stopped thread `tid` keeps it from being borrowed for a call:
/// never on x86_64 (the stub's XSAVE keeps every enabled component but AMX tile data, which
/// it never touches).
pub(crate) fn vector_refusal(_tid: i32, _regs: &Regs, _mem: &dyn Memory) -> Option<&'static str> {
    None
}

/// Whether a thread's vector state makes it a last choice for borrowing: never on x86_64.
pub(crate) fn sve_live(_tid: i32) -> bool {
    false
}

/// The pointer-authentication mask of return addresses: none on x86_64.
pub(crate) fn pac_mask() -> u64 {
    0
}

/// Remote calls, x86_64 form (`rpatch_arch::x86_64::remote_call`): the stub restores the thread
/// by itself and jumps back through its saved `rip`; the tracer only sets registers and waits.
pub(crate) mod call {
    use super::Regs;
    use super::remote_call::{
        self as stub, BOOTSTRAP_FRAME_LEN, CallBlock, CallStub, ENTRY_RFLAGS, FpSave, RED_ZONE,
        RFLAGS_TF, ResumeState, SYS_RESTART_SYSCALL, StubRegion, Syscall,
    };
    use crate::process::Memory;

    /// Whether the tracer returns the thread to its own code after a call or the bootstrap (it
    /// sets registers, FP state and mask): no, the stub and the bootstrap return by themselves.
    pub const TRACER_RETURNS: bool = false;

    /// `mmap`'s number.
    pub const SYS_MMAP: u64 = stub::SYS_MMAP;

    /// What the stub region's layout depends on in this target: how the FP state is saved.
    #[derive(Debug, Clone, Copy)]
    pub struct Layout {
        fp: FpSave,
    }

    /// XSAVE component 18, AMX tile data: dynamically enabled per process (the kernel faults a
    /// thread that touches it without permission), so never saved or restored by the stub.
    pub(crate) const XFEATURE_TILE_DATA: u64 = 1 << 18;

    /// How this machine's FP/vector state is saved by the stub: XSAVE of every component the
    /// kernel enabled in XCR0 (but AMX tile data), in the standard format whose size CPUID leaf
    /// 0xD gives; FXSAVE where the OS has not enabled XSAVE. The same for every process.
    pub fn layout(_pid: i32) -> Layout {
        Layout { fp: fp_layout() }
    }

    pub(crate) fn fp_layout() -> FpSave {
        use std::arch::x86_64::__cpuid_count;
        // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers.
        // (The intrinsic is safe from Rust 1.94 on; `unsafe` keeps the MSRV building.)
        #[allow(unused_unsafe)]
        let cpuid = |leaf, sub_leaf| unsafe { __cpuid_count(leaf, sub_leaf) };
        // CPUID.1:ECX bit 27: OSXSAVE, the kernel enabled XSAVE (and XGETBV).
        if cpuid(1, 0).ecx & (1 << 27) == 0 {
            return FpSave::Fxsave;
        }
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 reads XCR0; it exists because OSXSAVE is set. It touches
        // no memory and only the named registers.
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
                options(nomem, nostack, preserves_flags));
        }
        let features = ((u64::from(hi) << 32) | u64::from(lo)) & !XFEATURE_TILE_DATA;
        // Components 0 and 1 (x87, SSE) live in the legacy area; each other one at the offset
        // and with the size CPUID.(0xD, i) gives for the standard format.
        let size = (2..64)
            .filter(|i| features & (1u64 << i) != 0)
            .map(|i| {
                let leaf = cpuid(0xd, i);
                u64::from(leaf.ebx) + u64::from(leaf.eax)
            })
            .fold(stub::XSAVE_MIN, u64::max);
        FpSave::Xsave { features, size }
    }

    impl Layout {
        /// The page size the region is laid out in.
        pub fn page(&self) -> u64 {
            stub::PAGE
        }

        /// The region at `base`.
        pub fn region(&self, base: u64) -> StubRegion {
            StubRegion {
                base,
                xsave_len: self.fp.area_len(),
            }
        }

        /// The stub for `region`.
        pub fn stub(&self, _region: &StubRegion) -> Result<CallStub, String> {
            // The same bytes at every address: they reach the data block relative to themselves.
            Ok(super::prebuilt::call_stub(self.fp))
        }

        /// The data block's bytes for a call (header and saved state, zeros up to the scratch
        /// area: XSAVE writes only XSTATE_BV, XRSTOR wants the rest of its header zero).
        pub fn block(
            &self,
            region: &StubRegion,
            call: &super::super::CallArgs,
            at_rest: &Regs,
            _mem: &dyn Memory,
        ) -> Vec<u8> {
            let block = CallBlock {
                function: call.function,
                args: call.args,
                errno_location: call.errno_location,
                then_if_zero: call.then_if_zero,
                own_mask: call.own_mask,
                resume: resume_state(at_rest),
                fp: self.fp,
            };
            let mut bytes = block.encode(region.data_len());
            bytes.resize(region.scratch_offset() as usize, 0);
            bytes
        }
    }

    /// Whether `found` (a code page read from a target) is `stub`: how a region left by an
    /// earlier rpatch is recognised.
    pub fn stub_matches(stub: &CallStub, found: &[u8]) -> bool {
        found == stub.code
    }

    /// Code the stub needs for one call outside its fixed code (none on x86_64: it jumps back
    /// through the data block).
    pub fn return_code(
        _stub: &CallStub,
        _region: &StubRegion,
        _at_rest: &Regs,
        _mem: &dyn Memory,
    ) -> Option<(u64, Vec<u8>)> {
        None
    }

    /// The registers that send a thread stopped at `at_rest` into rpatch's code at `pc` with
    /// stack pointer `sp`: flags as on entry to a function, no syscall restart (`orig_rax` = -1).
    pub fn entry_regs(at_rest: &Regs, pc: u64, sp: u64) -> Regs {
        let mut r = at_rest.0;
        r.rip = pc;
        r.rsp = sp;
        r.eflags = ENTRY_RFLAGS;
        r.orig_rax = u64::MAX;
        r.rax = 0;
        Regs(r)
    }

    /// The thread's registers at its resume state (the kernel's syscall restart applied, see
    /// [`resume_state`]), ready to be set with ptrace: `orig_rax` = -1 so the kernel applies no
    /// restart of its own.
    pub fn resume_regs(at_rest: &Regs, _mem: &dyn Memory) -> Regs {
        let r = resume_state(at_rest);
        let mut regs = at_rest.0;
        (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (r.rax, r.rbx, r.rcx, r.rdx);
        (regs.rsi, regs.rdi, regs.rbp, regs.rsp) = (r.rsi, r.rdi, r.rbp, r.rsp);
        (regs.r8, regs.r9, regs.r10, regs.r11) = (r.r8, r.r9, r.r10, r.r11);
        (regs.r12, regs.r13, regs.r14, regs.r15) = (r.r12, r.r13, r.r14, r.r15);
        (regs.eflags, regs.rip) = (r.rflags, r.rip);
        regs.orig_rax = u64::MAX;
        Regs(regs)
    }

    /// The registers a signal is delivered on to a thread whose resume state is `at_rest` (see
    /// `InjectedThread::pass_signal`). A thread interrupted in a system call the kernel would
    /// restart (`rax` one of its restart codes, `orig_rax` the call) gets exactly those
    /// registers, `rip` after the `syscall`: delivering the signal there, the kernel's own
    /// `handle_signal` decides what the call returns — EINTR after a handler (sigsuspend and
    /// pause always, other calls without SA_RESTART), or the call again — as when the signal
    /// comes while the thread sits in the call. Resumed on [`resume_regs`] instead, the call
    /// would be issued again after the handler, and a `sigsuspend` waiting for that very signal
    /// would sleep on. A call rpatch rewound after the stop's spurious EINTR (one of
    /// [`super::sys::EINTR_ONLY`], `rip` back on its `syscall`) gets that EINTR back when the
    /// signal has a handler (`caught`): such a call returns EINTR after any handler. Anything
    /// else: [`resume_regs`].
    pub fn signal_regs(at_rest: &Regs, mem: &dyn Memory, caught: bool) -> Regs {
        let r = &at_rest.0;
        let code = r.rax as i64;
        if (r.orig_rax as i64) >= 0 && (RESTART_SAME.contains(&code) || code == RESTART_BLOCK) {
            let mut regs = *r;
            regs.eflags &= !RFLAGS_TF;
            return Regs(regs);
        }
        let mut insn = [0u8; 2];
        let rewound = (r.orig_rax as i64) >= 0
            && r.rax == r.orig_rax
            && super::sys::EINTR_ONLY.contains(&r.orig_rax)
            && mem.read_at(r.rip, &mut insn).is_ok()
            && insn == super::SYSCALL_INSN;
        if rewound && caught {
            let mut regs = *r;
            regs.rip += 2;
            regs.rax = -(libc::EINTR as i64) as u64;
            regs.eflags &= !RFLAGS_TF;
            return Regs(regs);
        }
        resume_regs(at_rest, mem)
    }

    /// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`: re-execute the same system call.
    const RESTART_SAME: [i64; 3] = [-512, -513, -514];

    /// `-ERESTART_RESTARTBLOCK`: continue through `restart_syscall` (nanosleep, poll with
    /// timeout, futex with timeout...), which resumes with the time left.
    const RESTART_BLOCK: i64 = -516;

    /// Where a stopped thread must resume: its registers as the kernel would hand them back to
    /// it. A thread interrupted in a blocking system call stops with a restart code in `rax`;
    /// let go with no signal, the kernel rewinds it onto its `syscall` instruction. rpatch's
    /// stubs resume the thread themselves, with `orig_rax = -1` (no kernel restart), so the
    /// rewind is done here, once: `rip` back onto the 2-byte `syscall` and `rax` the number to
    /// (re-)issue. The trap flag is dropped (nothing of ours may be single-stepped).
    pub fn resume_state(regs: &Regs) -> ResumeState {
        let regs = &regs.0;
        let mut rip = regs.rip;
        let mut rax = regs.rax;
        if (regs.orig_rax as i64) >= 0 {
            let code = regs.rax as i64;
            if RESTART_SAME.contains(&code) {
                rip -= 2;
                rax = regs.orig_rax;
            } else if code == RESTART_BLOCK {
                rip -= 2;
                rax = SYS_RESTART_SYSCALL;
            }
        }
        ResumeState {
            rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            rbp: regs.rbp,
            rsp: regs.rsp,
            r8: regs.r8,
            r9: regs.r9,
            r10: regs.r10,
            r11: regs.r11,
            r12: regs.r12,
            r13: regs.r13,
            r14: regs.r14,
            r15: regs.r15,
            rflags: regs.eflags & !RFLAGS_TF,
            rip,
        }
    }

    /// The bootstrap's frame for a thread at `at_rest`: where it goes (below the red zone), its
    /// bytes, and the stack range it needs (which must be mapped read-write).
    pub fn bootstrap_frame(
        at_rest: &Regs,
        second: &Syscall,
        mask: u64,
        _mem: &dyn Memory,
    ) -> (u64, Vec<u8>, std::ops::Range<u64>) {
        let resume = resume_state(at_rest);
        let frame_at = resume.rsp - RED_ZONE - BOOTSTRAP_FRAME_LEN;
        let frame = stub::bootstrap_frame(second, mask, &resume)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        (frame_at, frame, frame_at..resume.rsp)
    }

    /// The registers that start the bootstrap at `code` with its frame at `frame_at`, making
    /// the system call `first` from registers.
    pub fn bootstrap_regs(at_rest: &Regs, code: u64, frame_at: u64, first: &Syscall) -> Regs {
        let mut regs = entry_regs(at_rest, code, frame_at).0;
        regs.rax = first.nr;
        let [a0, a1, a2, a3, a4, a5] = first.args;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) = (a0, a1, a2, a3, a4, a5);
        Regs(regs)
    }

    /// Whether only the kernel can tell how the thread's interrupted call must resume (never:
    /// x86_64's stop shows the restart code).
    pub fn asks_kernel(_at_rest: &Regs, _mem: &dyn Memory) -> bool {
        false
    }

    /// Whether a thread stopped at `pc` in the bootstrap at `code` waits there for the tracer
    /// (never: the bootstrap returns by itself).
    pub fn bootstrap_parked(_code: u64, _pc: u64) -> bool {
        false
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn regs(rip: u64, rax: i64, orig_rax: i64) -> Regs {
            let mut r = Regs::for_unwind(rip, 0x7ffc_1000, 0).0;
            r.rax = rax as u64;
            r.orig_rax = orig_rax as u64;
            r.rbx = 7;
            r.eflags = 0x246 | RFLAGS_TF;
            Regs(r)
        }

        #[test]
        fn interrupted_syscalls_resume_on_their_syscall_instruction() {
            for code in [-512, -513, -514] {
                let s = resume_state(&regs(0x1002, code, 0));
                assert_eq!((s.rip, s.rax), (0x1000, 0), "read restarts (code {code})");
            }
            let s = resume_state(&regs(0x1002, -516, 35));
            assert_eq!(
                (s.rip, s.rax),
                (0x1000, SYS_RESTART_SYSCALL),
                "nanosleep continues through restart_syscall"
            );
        }

        #[test]
        fn finished_syscalls_and_user_code_resume_as_they_are() {
            // A completed read returning 5, an EINTR that is the target's own, user code.
            for (rax, orig) in [(5, 0), (-4, 232), (-512, -1), (0x1234, -1)] {
                let s = resume_state(&regs(0x2002, rax, orig));
                assert_eq!(
                    (s.rip, s.rax),
                    (0x2002, rax as u64),
                    "rax {rax} orig {orig}"
                );
            }
        }

        #[test]
        fn resume_state_keeps_the_registers_and_drops_the_trap_flag() {
            let s = resume_state(&regs(0x1002, -512, 0));
            assert_eq!(s.rsp, 0x7ffc_1000);
            assert_eq!(s.rbx, 7);
            assert_eq!(s.rflags, 0x246);
        }

        /// The stub saves exactly what this machine's kernel enabled (but AMX tile data), in an
        /// area at least as large as the x87/SSE legacy area plus the XSAVE header.
        #[test]
        fn fp_layout_follows_the_enabled_components() {
            match fp_layout() {
                FpSave::Xsave { features, size } => {
                    assert_eq!(features & 0b11, 0b11, "x87 and SSE are always enabled");
                    assert_eq!(features & XFEATURE_TILE_DATA, 0);
                    assert!(size >= stub::XSAVE_MIN);
                    if features & 0b100 != 0 {
                        assert!(size >= 832, "AVX state follows the header");
                    }
                }
                FpSave::Fxsave => {}
            }
        }
    }
}
