//! Remote calls that survive the tracer: the machine code a borrowed thread of the target runs.
//!
//! rpatch makes one thread of the target call functions (`dlopen`, `mmap`). If rpatch dies at any
//! moment (SIGKILL included) while that thread runs the call, the kernel detaches the thread and
//! nobody is left to catch a fault or to put registers back. So every call goes through code in
//! the target that brings the thread back to its own code, with its exact state, by itself:
//!
//! * [`assemble_bootstrap`] (47 bytes) runs from the never-executed slack at the end of an executable
//!   page before anything of rpatch's is mapped: two `mmap` system calls (the stub region's code
//!   page and its stack + data), then it pops the thread's resume state from a
//!   [`bootstrap_frame`] written below the thread's red zone and returns to it. System calls only
//!   touch `rax`, `rcx` and `r11`, so this is all the state it has to restore.
//! * [`assemble_call_stub`] runs in the code page of a [`StubRegion`], on the region's own stack: it saves
//!   the FP/vector state (XSAVE), saves `errno`, calls the function (and a second one when the
//!   first returns 0: `dlerror` after a failed `dlopen`), then restores `errno`, the FP state,
//!   flags, the stack pointer, the thread's own signal mask (from the data block; the tracer
//!   holds the call's mask on the thread with ptrace from before its first instruction), every
//!   general register, sets `DONE` and jumps back through memory, needing no register.
//!
//! **Signals and the stub.** A signal delivered while the PC is in the stub leaves a frame on the
//! thread's stack that returns into it. Before the thread's own mask is restored that is
//! harmless: the code page never changes, and nothing rewrites the data block until the call is
//! over (`DONE`) and the tracer has seen the thread back in its own code (`Done::Settled`). From
//! the mask restore on (the stub's [`CallStub::tail`]) a signal is pending-deliverable with the
//! PC in rpatch's code: the tracer, which sees every signal before its handler runs, finishes
//! the return for the thread first (the registers it would load) so the frame points at the
//! thread's own code. With no tracer (a killed rpatch) such a frame still finds the data block
//! intact, since only a settled region is ever reused.
//!
//! Everything here is pure (encodings and layouts) and unit-tested by decoding the bytes. The two
//! assemblers run when rpatch is built (`build.rs` compiles this file into the build script);
//! at run time rpatch takes their output from `super::prebuilt`.

use iced_x86::code_asm::{
    AsmRegister64, CodeAssembler, dword_ptr, eax, ecx, edi, edx, r8, r9, r10, r10d, r11, r12, r13,
    r14, r15, rax, rbp, rbx, rcx, rdi, rdx, rsi, rsp,
};
use iced_x86::{BlockEncoderOptions, Code, IcedError, Instruction, MemoryOperand, Register};

/// Page size the layouts assume.
pub const PAGE: u64 = 4096;

/// Size of the stack an injected call runs on (the thread's own stack may be a small
/// sigaltstack or fiber stack; `dlopen` with constructors needs real room).
pub const STACK_SIZE: u64 = 256 * 1024;

/// Room for strings passed to calls (a `dlopen` path), after the XSAVE area.
pub const SCRATCH_SIZE: u64 = 4096 + 64;

/// Bytes below the stack pointer the System V ABI lets a function use without moving `rsp`.
pub const RED_ZONE: u64 = 128;

/// `rflags` a stub is entered with: IF set (as in user mode always) and the reserved bit 1.
pub const ENTRY_RFLAGS: u64 = 0x202;

/// The trap flag: never carried into the resume state (a single step would stop in the stub).
pub const RFLAGS_TF: u64 = 0x100;

/// `__NR_restart_syscall`: what a thread interrupted with `ERESTART_RESTARTBLOCK` re-executes.
pub const SYS_RESTART_SYSCALL: u64 = 219;

/// `__NR_mmap`.
pub const SYS_MMAP: u64 = 9;

/// `__NR_rt_sigprocmask`.
const SYS_RT_SIGPROCMASK: i32 = 14;

/// `SIG_SETMASK`.
const SIG_SETMASK: i32 = 2;

/// The general registers, flags and instruction pointer a thread resumes with, in the order the
/// data block stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResumeState {
    /// `rax`.
    pub rax: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `rsi`.
    pub rsi: u64,
    /// `rdi`.
    pub rdi: u64,
    /// `rbp`.
    pub rbp: u64,
    /// `rsp`.
    pub rsp: u64,
    /// `r8`.
    pub r8: u64,
    /// `r9`.
    pub r9: u64,
    /// `r10`.
    pub r10: u64,
    /// `r11`.
    pub r11: u64,
    /// `r12`.
    pub r12: u64,
    /// `r13`.
    pub r13: u64,
    /// `r14`.
    pub r14: u64,
    /// `r15`.
    pub r15: u64,
    /// `rflags`.
    pub rflags: u64,
    /// `rip`.
    pub rip: u64,
}

impl ResumeState {
    /// The 18 words in data-block order (see [`data::SAVED`]).
    pub fn words(&self) -> [u64; 18] {
        [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rbp,
            self.rsp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rflags,
            self.rip,
        ]
    }
}

/// Registers restored by the stub, with their index in [`ResumeState::words`]; `rsp` is restored
/// separately (before the signal mask), `rflags` and `rip` too.
const GPRS: [(AsmRegister64, u64); 15] = [
    (rax, 0),
    (rbx, 1),
    (rcx, 2),
    (rdx, 3),
    (rsi, 4),
    (rdi, 5),
    (rbp, 6),
    (r8, 8),
    (r9, 9),
    (r10, 10),
    (r11, 11),
    (r12, 12),
    (r13, 13),
    (r14, 14),
    (r15, 15),
];

/// One system call: number and the six argument registers (`rdi rsi rdx r10 r8 r9`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// Syscall number (`rax`).
    pub nr: u64,
    /// Arguments.
    pub args: [u64; 6],
}

/// Length of [`assemble_bootstrap`]'s code.
pub const BOOTSTRAP_LEN: usize = 47;

/// Bytes the bootstrap frame occupies below the red zone: 21 words.
pub const BOOTSTRAP_FRAME_LEN: u64 = 21 * 8;

/// The bootstrap code, run from slack bytes of an executable page with `rsp` at a
/// [`bootstrap_frame`], `rax` and the argument registers holding the first system call, and
/// asynchronous signals blocked by the tracer (so nothing but its last system call can deliver
/// one there):
///
/// ```text
/// syscall                                   ; first call (registers)
/// pop rdi; pop rsi; pop rdx; pop r10; pop r8; pop r9; pop rax
/// syscall                                   ; second call (frame)
/// pop rax; pop rdi; mov rsi, rsp; xor edx, edx; mov r10d, 8
/// syscall                                   ; rt_sigprocmask(SIG_SETMASK, &frame mask, NULL)
/// pop rdx                                   ; (the mask word)
/// pop rdi; pop rsi; pop rdx; pop r10; pop r8; pop r9; pop rax; pop rcx; pop r11
/// popfq
/// ret 0x80                                  ; rip from the frame, rsp back above the red zone
/// ```
///
/// It uses no memory but the frame, so it works before any page of rpatch's exists, and puts
/// back by itself the signal mask the tracer changed: a thread whose tracer died leaves it with
/// its own mask. Results are not returned: rpatch reads `/proc/PID/maps` (a result written on
/// the stack would be below the thread's stack pointer once it resumes, i.e. garbage).
pub fn assemble_bootstrap() -> Vec<u8> {
    (|| -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        a.syscall()?;
        for reg in [rdi, rsi, rdx, r10, r8, r9, rax] {
            a.pop(reg)?;
        }
        a.syscall()?;
        a.pop(rax)?;
        a.pop(rdi)?;
        a.mov(rsi, rsp)?;
        a.xor(edx, edx)?;
        a.mov(r10d, 8)?;
        a.syscall()?;
        a.pop(rdx)?;
        for reg in [rdi, rsi, rdx, r10, r8, r9, rax, rcx, r11] {
            a.pop(reg)?;
        }
        a.popfq()?;
        a.ret_1(RED_ZONE as i32)?;
        a.assemble(0)
    })()
    .expect("the bootstrap code encodes")
}

/// The frame the bootstrap code pops, to be written at `resume.rsp - RED_ZONE -
/// BOOTSTRAP_FRAME_LEN`: the second system call, the mask restore (`rt_sigprocmask`,
/// `SIG_SETMASK`, the thread's own `mask`), then the registers a system call or the pops change,
/// then `rflags` and `rip`. After `ret 0x80` the stack pointer is `resume.rsp` exactly and the
/// red zone was never touched.
pub fn bootstrap_frame(second: &Syscall, mask: u64, resume: &ResumeState) -> [u64; 21] {
    let [a0, a1, a2, a3, a4, a5] = second.args;
    [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        second.nr,
        SYS_RT_SIGPROCMASK as u64,
        SIG_SETMASK as u64,
        mask,
        resume.rdi,
        resume.rsi,
        resume.rdx,
        resume.r10,
        resume.r8,
        resume.r9,
        resume.rax,
        resume.rcx,
        resume.r11,
        resume.rflags,
        resume.rip,
    ]
}

/// Offsets in the data block of a [`StubRegion`] (all 8-byte words unless said otherwise).
pub mod data {
    /// [`MAGIC_VALUE`](super::MAGIC_VALUE): identifies a region (and its layout version) when a
    /// later rpatch looks for one to reuse.
    pub const MAGIC: u64 = 0x00;
    /// Length of the data block, so a later rpatch knows whether its XSAVE area fits.
    pub const DATA_LEN: u64 = 0x08;
    /// [`Done`](super::Done): who owns the region. Only a region whose tracer saw the last call's
    /// thread back in its own code (`Settled`) is ever reused.
    pub const DONE: u64 = 0x10;
    /// Function to call.
    pub const FUNCTION: u64 = 0x18;
    /// Six arguments.
    pub const ARGS: u64 = 0x20;
    /// `__errno_location`, or 0: errno is then neither saved nor restored.
    pub const ERRNO_LOCATION: u64 = 0x50;
    /// Function called when the first returns 0 (`dlerror`), or 0.
    pub const THEN: u64 = 0x58;
    /// `rax` of the first call.
    pub const RESULT: u64 = 0x60;
    /// `rax` of the second call.
    pub const THEN_RESULT: u64 = 0x68;
    /// Where errno lives (stored by the stub once known; 0 until then).
    pub const ERRNO_PTR: u64 = 0x70;
    /// errno's value before the call (32 bits).
    pub const ERRNO_VALUE: u64 = 0x78;
    /// The thread's own signal mask, restored by the stub's `rt_sigprocmask` (written by the
    /// tracer, which holds the call's mask on the thread with ptrace from before the stub's
    /// first instruction: a signal that comes as the thread is let into the stub waits for the
    /// tail, where the tracer delivers it on the thread's own registers).
    pub const OLD_MASK: u64 = 0x80;
    /// The XSAVE feature mask (`edx:eax` of `xsave64`/`xrstor64`).
    pub const XFEATURES: u64 = 0x88;
    /// The resume state, 18 words in [`ResumeState::words`](super::ResumeState::words) order.
    pub const SAVED: u64 = 0x90;
    /// The XSAVE (or FXSAVE) area, 64-byte aligned; the header block ends here.
    pub const XSAVE: u64 = 0x140;
}

// The saved registers end before the XSAVE area, which is 64-byte aligned as XSAVE requires.
const _: () = assert!(data::SAVED + 18 * 8 <= data::XSAVE && data::XSAVE.is_multiple_of(64));

/// `"rpatchS3"`: the value at [`data::MAGIC`] (layout 3: the XSAVE mask in the data block, the
/// [`Done`] states, and the thread's own mask written by the tracer, which holds the call's).
pub const MAGIC_VALUE: u64 = u64::from_le_bytes(*b"rpatchS3");

/// The [`data::DONE`] word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Done {
    /// A call is armed or running: the region belongs to that thread.
    Running = 0,
    /// The stub finished the call and is jumping back (or the tracer finished the return).
    Returning = 1,
    /// The tracer saw the thread back in its own code: the region is free.
    Settled = 2,
}

/// Size of the FXSAVE legacy area plus the XSAVE header: the smallest XSAVE state.
pub const XSAVE_MIN: u64 = 576;

/// How the stub saves the FP/vector state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpSave {
    /// `xsave64`/`xrstor64` of the components in `features` (`edx:eax`, read from the data
    /// block), a standard-format state of `size` bytes.
    Xsave {
        /// XSAVE feature mask (a subset of XCR0).
        features: u64,
        /// Standard-format size of those components (at least [`XSAVE_MIN`]).
        size: u64,
    },
    /// `fxsave64`/`fxrstor64` (x87 and SSE only), for CPUs or kernels without XSAVE.
    Fxsave,
}

impl FpSave {
    /// Bytes the data block reserves for the state.
    pub fn area_len(&self) -> u64 {
        match self {
            FpSave::Xsave { size, .. } => *size,
            FpSave::Fxsave => 512,
        }
    }
}

/// The memory rpatch maps once per target for its calls:
/// `[code page r-x][stack rw, STACK_SIZE][data block rw]`. The code page below the stack is its
/// guard: an overflow faults on a read-only page instead of running into other memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StubRegion {
    /// Address of the code page (the region's start).
    pub base: u64,
    /// Size of the XSAVE area in the data block.
    pub xsave_len: u64,
}

impl StubRegion {
    /// The code page.
    pub fn code(&self) -> u64 {
        self.base
    }

    /// Start of the read-write mapping (the stack's lowest byte).
    pub fn rw_start(&self) -> u64 {
        self.base + PAGE
    }

    /// Initial stack pointer of a call (16-byte aligned; the data block starts here).
    pub fn stack_top(&self) -> u64 {
        self.base + PAGE + STACK_SIZE
    }

    /// The data block.
    pub fn data(&self) -> u64 {
        self.stack_top()
    }

    /// Length of the data block: header, XSAVE area, scratch, page-rounded.
    pub fn data_len(&self) -> u64 {
        (self.scratch_offset() + SCRATCH_SIZE).next_multiple_of(PAGE)
    }

    /// Offset of the scratch area in the data block.
    pub fn scratch_offset(&self) -> u64 {
        data::XSAVE + self.xsave_len.next_multiple_of(64)
    }

    /// Length of the read-write mapping (stack and data block).
    pub fn rw_len(&self) -> u64 {
        STACK_SIZE + self.data_len()
    }

    /// Length of the whole region.
    pub fn len(&self) -> u64 {
        PAGE + self.rw_len()
    }

    /// Whether the region has no length (never: a region always has its code page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `addr` is in the code page.
    pub fn in_code(&self, addr: u64) -> bool {
        (self.base..self.base + PAGE).contains(&addr)
    }
}

/// The encoded main stub for one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallStub {
    /// The whole code page: the stub, then `int3` padding.
    pub code: Vec<u8>,
    /// Offset of the entry point (rsp = stack top, rflags = [`ENTRY_RFLAGS`]).
    pub entry: u64,
    /// Offset of the restore path, where rpatch sends a thread whose call faulted (rsp = stack
    /// top): it restores errno, FP state, flags, stack, mask and registers like a normal return.
    pub restore: u64,
    /// Offset of the tail: everything from the end of the system call that restores the thread's
    /// own signal mask on. A signal stop with the PC here may not be delivered where it is: the
    /// tracer first loads the registers the tail would (see the module documentation).
    pub tail: u64,
}

/// An assembler for the stub whose data operands are RIP-relative to the region's data block.
struct StubAsm {
    a: CodeAssembler,
    data: u64,
}

impl StubAsm {
    fn mem(&self, offset: u64) -> MemoryOperand {
        MemoryOperand::with_base_displ(Register::RIP, (self.data + offset) as i64)
    }

    fn add(&mut self, instruction: Result<Instruction, IcedError>) -> Result<(), IcedError> {
        self.a.add_instruction(instruction?)
    }

    /// `mov reg, [data+offset]`.
    fn load(&mut self, reg: AsmRegister64, offset: u64) -> Result<(), IcedError> {
        let m = self.mem(offset);
        self.add(Instruction::with2(
            Code::Mov_r64_rm64,
            Register::from(reg),
            m,
        ))
    }

    /// `mov [data+offset], reg`.
    fn store(&mut self, offset: u64, reg: AsmRegister64) -> Result<(), IcedError> {
        let m = self.mem(offset);
        self.add(Instruction::with2(
            Code::Mov_rm64_r64,
            m,
            Register::from(reg),
        ))
    }

    /// `lea reg, [data+offset]`.
    fn lea(&mut self, reg: AsmRegister64, offset: u64) -> Result<(), IcedError> {
        let m = self.mem(offset);
        self.add(Instruction::with2(Code::Lea_r64_m, Register::from(reg), m))
    }

    /// A one-operand instruction on `[data+offset]` (`call`, `jmp`, `push`, `xsave64`...).
    fn on_mem(&mut self, code: Code, offset: u64) -> Result<(), IcedError> {
        let m = self.mem(offset);
        self.add(Instruction::with1(code, m))
    }

    /// `rt_sigprocmask(SIG_SETMASK, [data+set], NULL, 8)`, without touching the flags (so it
    /// can run after `popfq`).
    fn set_mask(&mut self, set: u64) -> Result<(), IcedError> {
        self.a.mov(eax, SYS_RT_SIGPROCMASK)?;
        self.a.mov(edi, SIG_SETMASK)?;
        self.lea(rsi, set)?;
        self.a.mov(edx, 0)?;
        self.a.mov(r10d, 8)?;
        self.a.syscall()
    }

    /// `edx:eax` = the feature mask, then `xsave64`/`fxsave64` (or the restores) on the area.
    fn fp(&mut self, fp: FpSave, save: bool) -> Result<(), IcedError> {
        let code = match (fp, save) {
            (FpSave::Xsave { .. }, true) => Code::Xsave64_mem,
            (FpSave::Xsave { .. }, false) => Code::Xrstor64_mem,
            (FpSave::Fxsave, true) => Code::Fxsave64_m512byte,
            (FpSave::Fxsave, false) => Code::Fxrstor64_m512byte,
        };
        if let FpSave::Xsave { .. } = fp {
            for (reg, offset) in [(Register::EAX, 0), (Register::EDX, 4)] {
                let m = self.mem(data::XFEATURES + offset);
                self.add(Instruction::with2(Code::Mov_r32_rm32, reg, m))?;
            }
        }
        self.on_mem(code, data::XSAVE)
    }
}

/// Encodes the main stub for `region` (see the module documentation for what it does, and
/// [`data`] for the block it works on). The code depends on the kind of FP save only, not on the
/// feature mask, which is data.
pub fn assemble_call_stub(region: &StubRegion, fp: FpSave) -> Result<CallStub, IcedError> {
    let saved = |index: u64| data::SAVED + 8 * index;
    let mut s = StubAsm {
        a: CodeAssembler::new(64)?,
        data: region.data(),
    };
    let mut entry = s.a.create_label();
    let mut call_function = s.a.create_label();
    let mut restore = s.a.create_label();
    let mut errno_done = s.a.create_label();
    let mut tail = s.a.create_label();

    // Entry: rsp = stack top (16-byte aligned), rflags = ENTRY_RFLAGS, other registers anything.
    s.a.set_label(&mut entry)?;
    s.a.cld()?;
    s.fp(fp, true)?;
    // errno: value first, pointer second, so the restore path only sees a pointer with a value.
    s.load(rax, data::ERRNO_LOCATION)?;
    s.a.test(rax, rax)?;
    s.a.jz(call_function)?;
    s.a.call(rax)?;
    s.a.mov(ecx, dword_ptr(rax))?;
    let m = s.mem(data::ERRNO_VALUE);
    s.add(Instruction::with2(Code::Mov_rm32_r32, m, Register::ECX))?;
    s.store(data::ERRNO_PTR, rax)?;
    // The call itself (rsp is 16-byte aligned here, as the ABI wants at a call).
    s.a.set_label(&mut call_function)?;
    for (i, reg) in [rdi, rsi, rdx, rcx, r8, r9].into_iter().enumerate() {
        s.load(reg, data::ARGS + 8 * i as u64)?;
    }
    s.on_mem(Code::Call_rm64, data::FUNCTION)?;
    s.store(data::RESULT, rax)?;
    s.a.test(rax, rax)?;
    s.a.jnz(restore)?;
    s.load(rax, data::THEN)?;
    s.a.test(rax, rax)?;
    s.a.jz(restore)?;
    s.a.call(rax)?;
    s.store(data::THEN_RESULT, rax)?;

    // Restore path (also entered by rpatch after a fault, with rsp = stack top).
    s.a.set_label(&mut restore)?;
    s.load(rax, data::ERRNO_PTR)?;
    s.a.test(rax, rax)?;
    s.a.jz(errno_done)?;
    let m = s.mem(data::ERRNO_VALUE);
    s.add(Instruction::with2(Code::Mov_r32_rm32, Register::ECX, m))?;
    s.a.mov(dword_ptr(rax), ecx)?;
    s.a.set_label(&mut errno_done)?;
    s.fp(fp, false)?;
    // From here on nothing changes the flags: mov, lea and syscall (whose sysret restores them).
    s.on_mem(Code::Push_rm64, saved(16))?;
    s.a.popfq()?;
    // Back on the thread's own stack before the mask is restored. A signal pending since the
    // call began is delivered at the end of that system call: the tracer moves the thread to its
    // resume state before letting it be (the tail).
    s.load(rsp, saved(7))?;
    s.set_mask(data::OLD_MASK)?;
    s.a.set_label(&mut tail)?;
    for (reg, index) in GPRS {
        s.load(reg, saved(index))?;
    }
    let m = s.mem(data::DONE);
    s.add(Instruction::with2(
        Code::Mov_rm64_imm32,
        m,
        Done::Returning as u32,
    ))?;
    s.on_mem(Code::Jmp_rm64, saved(17))?;

    let result = s.a.assemble_options(
        region.code(),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let entry = result.label_ip(&entry)? - region.code();
    let restore = result.label_ip(&restore)? - region.code();
    let tail = result.label_ip(&tail)? - region.code();
    let mut code = result.inner.code_buffer;
    assert!(code.len() < PAGE as usize, "the stub fits its page");
    code.resize(PAGE as usize, 0xcc);
    Ok(CallStub {
        code,
        entry,
        restore,
        tail,
    })
}

/// What one call through the stub does: written as the data block's header.
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
    /// The thread's own signal mask, put back at the end (the tracer holds the call's mask on
    /// the thread with ptrace).
    pub own_mask: u64,
    /// Where and how the thread resumes afterwards.
    pub resume: ResumeState,
    /// How the FP state is saved (its feature mask goes into the block).
    pub fp: FpSave,
}

impl CallBlock {
    /// The header bytes (`data::XSAVE` long) for a region with a data block of `data_len`
    /// bytes; `DONE` and the result slots are 0.
    pub fn encode(&self, data_len: u64) -> Vec<u8> {
        let mut out = vec![0u8; data::XSAVE as usize];
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
        put(data::OLD_MASK, self.own_mask);
        if let FpSave::Xsave { features, .. } = self.fp {
            put(data::XFEATURES, features);
        }
        for (i, word) in self.resume.words().iter().enumerate() {
            put(data::SAVED + 8 * i as u64, *word);
        }
        out
    }
}

/// The header of an idle region (no call armed, `DONE` = settled), written when a region is
/// created.
pub fn idle_header(data_len: u64) -> Vec<u8> {
    let mut out = vec![0u8; data::XSAVE as usize];
    out[..8].copy_from_slice(&MAGIC_VALUE.to_le_bytes());
    out[data::DATA_LEN as usize..][..8].copy_from_slice(&data_len.to_le_bytes());
    out[data::DONE as usize..][..8].copy_from_slice(&(Done::Settled as u64).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .into_iter()
            .collect()
    }

    const REGION: StubRegion = StubRegion {
        base: 0x7f00_0000_0000,
        xsave_len: 2696,
    };

    const XSAVE: FpSave = FpSave::Xsave {
        features: 0x2e7,
        size: 2696,
    };

    #[test]
    fn bootstrap_code_is_the_documented_sequence() {
        let code = assemble_bootstrap();
        assert_eq!(code.len(), BOOTSTRAP_LEN);
        let text: Vec<String> = decode(&code, 0).iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            [
                "syscall",
                "pop rdi",
                "pop rsi",
                "pop rdx",
                "pop r10",
                "pop r8",
                "pop r9",
                "pop rax",
                "syscall",
                "pop rax",
                "pop rdi",
                "mov rsi,rsp",
                "xor edx,edx",
                "mov r10d,8",
                "syscall",
                "pop rdx",
                "pop rdi",
                "pop rsi",
                "pop rdx",
                "pop r10",
                "pop r8",
                "pop r9",
                "pop rax",
                "pop rcx",
                "pop r11",
                "popfq",
                "ret 80h"
            ]
        );
    }

    #[test]
    fn bootstrap_frame_returns_to_the_original_stack_pointer() {
        let resume = ResumeState {
            rax: 1,
            rcx: 2,
            rdx: 3,
            rsi: 4,
            rdi: 5,
            r8: 6,
            r9: 7,
            r10: 8,
            r11: 9,
            rflags: 0x246,
            rip: 0x4000,
            rsp: 0x7ffc_0000_1000,
            ..Default::default()
        };
        let second = Syscall {
            nr: SYS_MMAP,
            args: [10, 11, 12, 13, 14, 15],
        };
        let frame = bootstrap_frame(&second, 0xabc, &resume);
        assert_eq!(
            frame,
            [
                10, 11, 12, 13, 14, 15, 9, 14, 2, 0xabc, 5, 4, 3, 8, 6, 7, 1, 2, 9, 0x246, 0x4000
            ]
        );
        // 20 pops and the ret's own word, then ret's immediate: back to rsp exactly.
        let frame_at = resume.rsp - RED_ZONE - BOOTSTRAP_FRAME_LEN;
        assert_eq!(frame_at + 21 * 8 + RED_ZONE, resume.rsp);
    }

    #[test]
    fn region_layout_is_aligned_and_disjoint() {
        assert_eq!(REGION.stack_top() % 16, 0);
        assert_eq!((REGION.data() + data::XSAVE) % 64, 0);
        assert_eq!(REGION.data_len() % PAGE, 0);
        assert!(REGION.scratch_offset() + SCRATCH_SIZE <= REGION.data_len());
        assert!(REGION.scratch_offset() >= data::XSAVE + REGION.xsave_len);
        assert_eq!(REGION.len(), PAGE + STACK_SIZE + REGION.data_len());
        assert!(REGION.in_code(REGION.base + 10));
        assert!(!REGION.in_code(REGION.rw_start()));
    }

    #[test]
    fn call_block_encodes_every_field_at_its_offset() {
        let block = CallBlock {
            function: 0x1111,
            args: [1, 2, 3, 4, 5, 6],
            errno_location: 0x2222,
            then_if_zero: 0x3333,
            own_mask: 0x1234,
            resume: ResumeState {
                rax: 0xa0,
                rip: 0xb0,
                ..Default::default()
            },
            fp: XSAVE,
        };
        let bytes = block.encode(0x5000);
        let word = |off: u64| u64::from_le_bytes(bytes[off as usize..][..8].try_into().unwrap());
        assert_eq!(bytes.len() as u64, data::XSAVE);
        assert_eq!(word(data::MAGIC), MAGIC_VALUE);
        assert_eq!(word(data::DATA_LEN), 0x5000);
        assert_eq!(word(data::DONE), 0);
        assert_eq!(word(data::FUNCTION), 0x1111);
        assert_eq!(word(data::ARGS + 40), 6);
        assert_eq!(word(data::ERRNO_LOCATION), 0x2222);
        assert_eq!(word(data::THEN), 0x3333);
        assert_eq!(word(data::OLD_MASK), 0x1234);
        assert_eq!(word(data::XFEATURES), 0x2e7);
        assert_eq!(word(data::SAVED), 0xa0);
        assert_eq!(word(data::SAVED + 17 * 8), 0xb0);
        assert_eq!(word(data::ERRNO_PTR), 0);
        let idle = idle_header(0x5000);
        assert_eq!(&idle[..8], &MAGIC_VALUE.to_le_bytes());
        assert_eq!(idle[data::DONE as usize], Done::Settled as u8);
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
            (data::OLD_MASK, "OLD_MASK"),
            (data::XFEATURES, "XFEATURES"),
            (data::XFEATURES + 4, "XFEATURES_HI"),
            (data::XSAVE, "XSAVE"),
        ];
        if let Some((_, name)) = names.iter().find(|(o, _)| *o == offset) {
            return name.to_string();
        }
        if (data::ARGS..data::ARGS + 48).contains(&offset) {
            return format!("ARG{}", (offset - data::ARGS) / 8);
        }
        if (data::SAVED..data::SAVED + 18 * 8).contains(&offset) {
            return format!("SAVED{}", (offset - data::SAVED) / 8);
        }
        panic!("operand at unknown data offset {offset:#x}")
    }

    /// An instruction as text, a RIP-relative data operand shown as `mnemonic SLOT`.
    fn describe(i: &Instruction, data: u64) -> String {
        let has_memory = (0..i.op_count()).any(|n| i.op_kind(n) == iced_x86::OpKind::Memory);
        if has_memory && i.memory_base() == Register::RIP {
            let mnemonic = format!("{:?}", i.mnemonic()).to_lowercase();
            format!("{mnemonic} {}", slot_name(i.memory_displacement64() - data))
        } else {
            i.to_string()
        }
    }

    /// Decodes the stub and checks it against the intended sequence: every data operand is the
    /// named slot of this region's block, calls are made with an aligned stack, the state is
    /// restored in the documented order and the last instruction jumps through `saved rip`.
    #[test]
    fn call_stub_decodes_to_the_intended_instructions() {
        for fp in [XSAVE, FpSave::Fxsave] {
            let stub = assemble_call_stub(&REGION, fp).unwrap();
            assert_eq!(stub.code.len() as u64, PAGE);
            assert_eq!(stub.entry, 0);
            let insns: Vec<Instruction> = decode(&stub.code, REGION.code())
                .into_iter()
                .take_while(|i| i.mnemonic() != Mnemonic::Int3)
                .collect();
            let text: Vec<String> = insns.iter().map(|i| describe(i, REGION.data())).collect();
            let restore = insns
                .iter()
                .position(|i| i.ip() == REGION.code() + stub.restore)
                .expect("the restore label is on an instruction boundary");
            let (fp_mask, save, rstor): (&[&str], _, _) = match fp {
                FpSave::Xsave { .. } => (
                    &["mov XFEATURES", "mov XFEATURES_HI"],
                    "xsave64 XSAVE",
                    "xrstor64 XSAVE",
                ),
                FpSave::Fxsave => (&[], "fxsave64 XSAVE", "fxrstor64 XSAVE"),
            };
            let mut want: Vec<String> = vec!["cld".into()];
            want.extend(fp_mask.iter().map(|s| s.to_string()));
            want.push(save.into());
            want.extend(["mov ERRNO_LOCATION".into(), "test rax,rax".into()]);
            want.push("je ->call".into());
            let call = [
                "call rax",
                "mov ecx,[rax]",
                "mov ERRNO_VALUE",
                "mov ERRNO_PTR",
                "mov ARG0",
                "mov ARG1",
                "mov ARG2",
                "mov ARG3",
                "mov ARG4",
                "mov ARG5",
                "call FUNCTION",
                "mov RESULT",
                "test rax,rax",
                "jne ->restore",
                "mov THEN",
                "test rax,rax",
                "je ->restore",
                "call rax",
                "mov THEN_RESULT",
            ];
            want.extend(call.iter().map(|s| s.to_string()));
            assert_eq!(
                want.len(),
                restore,
                "{fp:?}: the restore path follows the call"
            );
            let restore_path = [
                "mov ERRNO_PTR",
                "test rax,rax",
                "je ->fp",
                "mov ERRNO_VALUE",
                "mov [rax],ecx",
            ];
            want.extend(restore_path.iter().map(|s| s.to_string()));
            want.extend(fp_mask.iter().map(|s| s.to_string()));
            want.push(rstor.into());
            let unblock = [
                "push SAVED16",
                "popfq",
                "mov SAVED7",
                "mov eax,0Eh",
                "mov edi,2",
                "lea OLD_MASK",
                "mov edx,0",
                "mov r10d,8",
                "syscall",
            ];
            want.extend(unblock.iter().map(|s| s.to_string()));
            for index in [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15] {
                want.push(format!("mov SAVED{index}"));
            }
            want.extend(["mov DONE".into(), "jmp SAVED17".into()]);

            // Branches are compared by where they go.
            let label_of = |target: u64| -> &str {
                let index = insns.iter().position(|i| i.ip() == target).unwrap();
                match text[index].as_str() {
                    "mov ARG0" => "->call",
                    _ if index == restore => "->restore",
                    _ if text[index].starts_with("mov XFEATURES")
                        || text[index].contains("rstor") =>
                    {
                        "->fp"
                    }
                    other => panic!("branch to {other}"),
                }
            };
            let got: Vec<String> = insns
                .iter()
                .zip(&text)
                .map(|(i, t)| match i.mnemonic() {
                    Mnemonic::Je | Mnemonic::Jne => {
                        format!(
                            "{} {}",
                            &t[..t.find(' ').unwrap()],
                            label_of(i.near_branch_target())
                        )
                    }
                    _ => t.clone(),
                })
                .collect();
            assert_eq!(got, want, "{fp:?}");
            // The tail starts right after the system call that restores the thread's mask.
            let tail = insns
                .iter()
                .position(|i| i.ip() == REGION.code() + stub.tail)
                .expect("the tail label is on an instruction boundary");
            assert_eq!(text[tail - 1], "syscall");
            assert_eq!(text[tail - 4], "lea OLD_MASK");
            assert_eq!(text[tail..].len(), 17, "15 registers, DONE, the jump");
            let done = text.iter().position(|t| t == "mov DONE").unwrap();
            assert_eq!(insns[done].immediate32(), Done::Returning as u32);

            // rax..r15 but rsp restored, each once, from its own slot.
            let restored: Vec<(Register, String)> = insns[insns.len() - 17..insns.len() - 2]
                .iter()
                .zip(&text[insns.len() - 17..insns.len() - 2])
                .map(|(i, t)| (i.op0_register(), t.clone()))
                .collect();
            for (reg, slot) in &restored {
                let index = [
                    Register::RAX,
                    Register::RBX,
                    Register::RCX,
                    Register::RDX,
                    Register::RSI,
                    Register::RDI,
                    Register::RBP,
                    Register::RSP,
                    Register::R8,
                    Register::R9,
                    Register::R10,
                    Register::R11,
                    Register::R12,
                    Register::R13,
                    Register::R14,
                    Register::R15,
                ]
                .iter()
                .position(|r| r == reg)
                .unwrap();
                assert_eq!(slot, &format!("mov SAVED{index}"));
            }
            let sp_load = insns
                .iter()
                .position(|i| i.op0_register() == Register::RSP)
                .unwrap();
            assert_eq!(text[sp_load], "mov SAVED7");
        }
    }

    #[test]
    fn the_stub_is_the_same_for_every_region_with_the_same_layout() {
        let other = StubRegion {
            base: 0x5555_0000_0000,
            ..REGION
        };
        let fewer_features = FpSave::Xsave {
            features: 0x7,
            size: 832,
        };
        assert_eq!(
            assemble_call_stub(&REGION, XSAVE).unwrap().code,
            assemble_call_stub(&other, fewer_features).unwrap().code
        );
    }
}
