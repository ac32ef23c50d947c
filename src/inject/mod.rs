//! Remote function calls in the target: `dlopen` of the patch library (with `dlerror` on
//! failure) and `mmap` of jump-island pages, made by one seized thread while the others keep
//! running.
//!
//! **Crash-proof by construction.** From the moment rpatch changes the borrowed thread's
//! registers, the thread's state is self-consistent: if rpatch vanished at that instant (SIGKILL
//! included; the kernel then detaches the thread), the thread would run to completion and resume
//! its own code with its original registers, FP/vector state, errno and signal mask. No call
//! depends on the tracer catching a fault:
//!
//! * Every call runs through a stub in a region rpatch maps once per target (`[code r-x][256 KiB
//!   stack][data]`, see [`rpatch_arch::x86_64::remote_call`]): it saves the FP state, blocks
//!   asynchronous signals, saves errno, calls, restores all of it and jumps back to where the
//!   thread must resume. That is where the thread would be anyway: a system call it was
//!   interrupted in is re-issued exactly as the kernel's restart would (see [`resume_state`]).
//! * The region itself is mapped by a 31-byte bootstrap written into the never-executed slack at
//!   the end of an executable segment, which makes two `mmap` system calls and returns to the
//!   thread's resume state through a frame below its red zone. rpatch learns the result from
//!   `/proc/PID/maps` and puts the slack bytes back.
//! * rpatch watches each call (`DONE` in the data block, and ptrace stops): asynchronous signals
//!   are passed on (the stub delivers them once the thread is back on its own stack and mask); a
//!   fault inside the call sends the thread through the stub's restore path; once the stub is
//!   done rpatch interrupts the thread at its own code, ready for the next call or to be let go.
//!   A call that does not return in time is left to finish on its own.
//!
//! A later rpatch reuses an idle region (recognised by its code and data magic); a region whose
//! call never finished (its rpatch was killed and the callee still runs) is left alone.

mod region;
mod resume;
mod thread_choice;

pub use region::Slack;
pub use resume::resume_state;
pub use thread_choice::{ThreadCandidate, assess as assess_thread, assess_stack, rank_threads};

use crate::fault::FaultPoint;
use crate::log::Log;
use crate::process::{self, Memory, ModuleMap, ProcMem, ProcessError, Stop, Tracer};
use crate::safety::StackInspector;
use nix::errno::Errno;
use nix::unistd::Pid;
use rpatch_arch::x86_64::remote_call::{
    self as stub, BOOTSTRAP_FRAME_LEN, BOOTSTRAP_LEN, CallBlock, CallStub, Done, ENTRY_RFLAGS,
    FpSave, PAGE, RED_ZONE, SYS_MMAP, StubRegion, Syscall, data,
};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Errors of the injection layer.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// No loader entry point was found in the target.
    #[error(
        "PID {pid} has no dlopen (looked for dlopen and __libc_dlopen_mode in libc and the dynamic loader); is it statically linked?"
    )]
    NoDlopen {
        /// The PID.
        pid: i32,
    },
    /// A needed function is missing from the target's libc.
    #[error("PID {pid}: {function} not found in {module}")]
    MissingFunction {
        /// The PID.
        pid: i32,
        /// Function name.
        function: &'static str,
        /// Where it was looked for.
        module: String,
    },
    /// No thread is in a state where a call is safe.
    #[error("no thread of PID {pid} can safely run the loader now: {reasons}; retry shortly")]
    NoSafeThread {
        /// The PID.
        pid: i32,
        /// Why each thread was passed over.
        reasons: String,
    },
    /// The borrowed thread exited (the process lives on) before any call was made: another
    /// thread can be borrowed.
    #[error("thread {tid} of PID {pid} exited while rpatch prepared it for the load")]
    ThreadExited {
        /// The PID.
        pid: i32,
        /// The thread.
        tid: i32,
    },
    /// The borrowed thread exited in the middle of an injected call (a library constructor that
    /// ended its thread).
    #[error("thread {tid} exited during the injected call to {function}")]
    CallAborted {
        /// Function called.
        function: String,
        /// Thread.
        tid: i32,
    },
    /// A signal delivered at the end of an injected call left the borrowed thread in a handler
    /// that did not return in time; no further call was made.
    #[error(
        "thread {tid} of PID {pid} stayed in a signal handler after the injected call to {function}; the calls made so far stand, nothing was patched"
    )]
    InSignalHandler {
        /// The PID.
        pid: i32,
        /// Thread.
        tid: i32,
        /// The call after which it happened.
        function: String,
    },
    /// The code and stack the remote calls run on could not be set up.
    #[error("cannot map rpatch's call stub in PID {pid}: {reason}; the target was not changed")]
    NoStubRegion {
        /// The PID.
        pid: i32,
        /// Why.
        reason: String,
    },
    /// The target's dlopen refused the library.
    #[error("dlopen of {path} failed in PID {pid}: {message}")]
    DlopenFailed {
        /// The PID.
        pid: i32,
        /// Library path as loaded.
        path: String,
        /// dlerror() text.
        message: String,
    },
    /// The injected call faulted (e.g. a crashing library constructor); the thread was restored.
    #[error(
        "the injected call to {function} in thread {tid} faulted with signal {signal} at {address:#x}; the thread was restored"
    )]
    CallFaulted {
        /// Function called.
        function: String,
        /// Thread.
        tid: i32,
        /// Signal number.
        signal: i32,
        /// Faulting PC.
        address: u64,
    },
    /// The injected call did not return in time. The thread finishes it on its own and then
    /// resumes its code with its state restored by the stub.
    #[error(
        "the injected call to {function} in thread {tid} did not return within {ms} ms (a library constructor that blocks, or a loader lock held by another thread); the thread finishes the call on its own and then resumes its code"
    )]
    CallTimeout {
        /// Function called.
        function: String,
        /// Thread.
        tid: i32,
        /// Milliseconds waited.
        ms: u64,
    },
    /// A process-level failure.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The journal record of bytes about to be written could not be made durable.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

/// Runtime addresses of the libc functions rpatch calls in the target.
#[derive(Debug, Clone, Copy)]
pub struct LoaderFunctions {
    /// `dlopen`, or glibc < 2.34's `__libc_dlopen_mode`.
    pub dlopen: u64,
    /// Whether `dlopen` is `__libc_dlopen_mode` (needs the `__RTLD_DLOPEN` flag).
    pub legacy_dlopen: bool,
    /// `dlerror`, when the target has it in libc.
    pub dlerror: Option<u64>,
    /// `mmap`.
    pub mmap: u64,
    /// `__errno_location`, to save and restore the borrowed thread's errno.
    pub errno_location: Option<u64>,
}

/// `__RTLD_DLOPEN`: the internal flag old glibc's `__libc_dlopen_mode` callers pass with the mode.
const RTLD_DLOPEN_INTERNAL: u64 = 0x8000_0000;

impl LoaderFunctions {
    /// Finds the functions in the target's libc (glibc, or musl's combined libc/loader).
    pub fn find(modules: &mut ModuleMap) -> Result<Self, InjectError> {
        let pid = modules.pid();
        let libc = modules
            .find_by_name("libc.so")
            .or_else(|| modules.find_by_name("libc-"))
            .or_else(|| modules.find_by_name("ld-musl"))
            .cloned()
            .ok_or(InjectError::NoDlopen { pid })?;
        let index = modules
            .symbols(&libc)
            .map_err(|_| InjectError::NoDlopen { pid })?;
        let bias = libc.bias(index.load_segments());
        let at = |name: &str| index.symbol_address(name).map(|a| a.wrapping_add(bias));
        let (dlopen, legacy_dlopen) = match at("dlopen") {
            Some(a) => (a, false),
            None => (
                at("__libc_dlopen_mode").ok_or(InjectError::NoDlopen { pid })?,
                true,
            ),
        };
        let mmap = at("mmap").ok_or_else(|| InjectError::MissingFunction {
            pid,
            function: "mmap",
            module: libc.path.display().to_string(),
        })?;
        Ok(Self {
            dlopen,
            legacy_dlopen,
            dlerror: if legacy_dlopen { None } else { at("dlerror") },
            mmap,
            errno_location: at("__errno_location"),
        })
    }

    /// The `mode` argument for a `RTLD_NOW` load with the entry point found.
    pub fn dlopen_mode(&self) -> u64 {
        let now = libc::RTLD_NOW as u64;
        if self.legacy_dlopen {
            now | RTLD_DLOPEN_INTERNAL
        } else {
            now
        }
    }
}

/// Signals held back while a call runs (bit `n - 1` for signal `n`): all but the synchronous
/// faults (blocking one would make the kernel reset its handler to the default if the call
/// faults) and the C library's internal signals 32 to 34 (glibc's `setxid` broadcast waits for
/// every thread to handle SIGSETXID, possibly while holding a lock `dlopen` needs). Held signals
/// are delivered when the stub restores the thread's own mask.
pub const CALL_BLOCK_MASK: u64 = {
    let passed = [
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGSEGV,
        libc::SIGSYS,
        libc::SIGKILL,
        libc::SIGSTOP,
        32,
        33,
        34,
    ];
    let mut mask = u64::MAX;
    let mut i = 0;
    while i < passed.len() {
        mask &= !(1u64 << (passed[i] - 1));
        i += 1;
    }
    mask
};

/// How many times the bootstrap is run before giving up (a run is retried when the kernel
/// refuses the address, or when a signal cut it short).
const BOOTSTRAP_ATTEMPTS: usize = 8;

/// How long the bootstrap and the return to the thread's own code may take: both are a few
/// instructions and system calls that never block.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a thread found in the allocator or loader after the bootstrap is given to leave it.
const SAFE_POINT_TIMEOUT: Duration = Duration::from_secs(2);

/// XSAVE component 18, AMX tile data: dynamically enabled per process (the kernel faults a
/// thread that touches it without permission), so never saved or restored by the stub.
const XFEATURE_TILE_DATA: u64 = 1 << 18;

/// How this machine's FP/vector state is saved by the stub: XSAVE of every component the kernel
/// enabled in XCR0 (but AMX tile data), in the standard format whose size CPUID leaf 0xD gives;
/// FXSAVE where the OS has not enabled XSAVE.
fn fp_layout() -> FpSave {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers. (The
    // intrinsic is safe from Rust 1.94 on; `unsafe` keeps the MSRV building.)
    #[allow(unused_unsafe)]
    let cpuid = |leaf, sub_leaf| unsafe { __cpuid_count(leaf, sub_leaf) };
    // CPUID.1:ECX bit 27: OSXSAVE, the kernel enabled XSAVE (and XGETBV).
    if cpuid(1, 0).ecx & (1 << 27) == 0 {
        return FpSave::Fxsave;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it exists because OSXSAVE is set. It touches no
    // memory and only the named registers.
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    let features = ((u64::from(hi) << 32) | u64::from(lo)) & !XFEATURE_TILE_DATA;
    // Components 0 and 1 (x87, SSE) live in the legacy area; each other one at the offset and
    // with the size CPUID.(0xD, i) gives for the standard format.
    let size = (2..64)
        .filter(|i| features & (1u64 << i) != 0)
        .map(|i| {
            let leaf = cpuid(0xd, i);
            u64::from(leaf.ebx) + u64::from(leaf.eax)
        })
        .fold(stub::XSAVE_MIN, u64::max);
    FpSave::Xsave { features, size }
}

/// ESRCH from ptrace on the borrowed thread, which rpatch holds traced: when the process is gone
/// it vanished because the process is being torn down, and that is what is reported; otherwise
/// the request met the thread running, and the error says which request.
fn exited_if_esrch(pid: i32) -> impl Fn(InjectError) -> InjectError {
    move |e| match e {
        InjectError::Process(ProcessError::Ptrace {
            errno: Errno::ESRCH,
            ..
        }) if process::exiting(pid) => ProcessError::Exited { pid }.into(),
        e => e,
    }
}

/// The mappings of `pid`. A live process always has some: an empty list means it is exiting
/// (its memory is released before its threads are gone), reported as such rather than as a
/// target with nothing to bootstrap from.
fn live_maps(pid: i32) -> Result<Vec<process::Mapping>, InjectError> {
    let maps = process::read_maps(pid)?;
    if maps.is_empty() {
        return Err(ProcessError::Exited { pid }.into());
    }
    Ok(maps)
}

/// Reads the signal mask of a ptrace-stopped thread.
fn get_sigmask(tid: i32) -> Result<u64, ProcessError> {
    let mut mask = 0u64;
    // SAFETY: PTRACE_GETSIGMASK writes `size` (8) bytes to the pointer, which is a live u64.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            &mut mask as *mut u64,
        )
    };
    if rc < 0 {
        return Err(ProcessError::Ptrace {
            op: "GETSIGMASK",
            tid,
            errno: Errno::last(),
        });
    }
    Ok(mask)
}

/// Sets the signal mask of a ptrace-stopped thread.
fn set_sigmask(tid: i32, mask: u64) -> Result<(), ProcessError> {
    // SAFETY: PTRACE_SETSIGMASK reads `size` (8) bytes from the pointer, a live u64.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid,
            std::mem::size_of::<u64>(),
            &mask as *const u64,
        )
    };
    if rc < 0 {
        return Err(ProcessError::Ptrace {
            op: "SETSIGMASK",
            tid,
            errno: Errno::last(),
        });
    }
    Ok(())
}

/// One function call for the borrowed thread to make (see [`InjectedThread::call_with`]).
#[derive(Debug, Clone, Copy)]
pub struct RemoteCall<'a> {
    /// Function name, for messages.
    pub name: &'a str,
    /// Its address in the target.
    pub function: u64,
    /// Up to six register arguments.
    pub args: &'a [u64],
    /// A function called with no arguments when the first returns 0, in the same run of the
    /// stub (`dlerror` after a failed `dlopen`: its message is thread-local and must be read
    /// before anything else runs on that thread).
    pub then_if_zero: Option<u64>,
    /// How long the call may take.
    pub timeout: Duration,
}

/// What a [`RemoteCall`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    /// `rax` of the function.
    pub value: u64,
    /// `rax` of `then_if_zero`, when it ran.
    pub then_value: Option<u64>,
}

/// Where the borrowed thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    /// Stopped (interrupt stop) at its own code; `at_rest` holds its registers.
    AtRest,
    /// Running rpatch's code (a call or the bootstrap).
    Running,
    /// Stopped in the middle of a call that timed out: it finishes and restores itself once let
    /// go; no further call may use the region.
    Abandoned,
    /// Stopped in a fault rpatch's own code took; its state was put back with ptrace.
    Broken,
}

/// rpatch's code the borrowed thread may be running, which decides what a signal stop means.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnCode {
    /// None: the thread runs its own code (waiting for a safe point, or being stopped).
    Nothing,
    /// The bootstrap in slack bytes, which are restored afterwards.
    Bootstrap(Range<u64>),
    /// The stub's code page, which never changes while the region exists.
    Stub(StubRegion),
}

impl OwnCode {
    fn contains(&self, pc: u64) -> bool {
        match self {
            OwnCode::Nothing => false,
            OwnCode::Bootstrap(code) => code.contains(&pc),
            OwnCode::Stub(region) => region.in_code(pc),
        }
    }
}

/// Where the bytes rpatch writes into a module's slack are recorded, durably, before they are
/// written: a run that dies, or gives up, before it can prove no thread will come back into
/// them leaves them in place with a record that a later run settles (see `patch`).
pub trait SlackLedger {
    /// The bootstrap is about to be written at `slack` (or found there, left by a killed run).
    fn will_write(&mut self, slack: &Slack) -> Result<(), InjectError>;
    /// The slack holds the file's bytes again.
    fn restored(&mut self, slack: &Slack);
}

/// A thread borrowed for remote calls.
///
/// Between calls the thread is stopped at its own code. During a call it runs rpatch's stub,
/// which restores it by itself; dropping the guard (after an error or a panic) only makes sure
/// the thread is stopped so the tracer can let it go, wherever it is.
///
/// **The signal guarantee.** Every signal the thread receives while borrowed reaches rpatch as
/// a ptrace signal-delivery stop before any handler runs, and [`Self::pass_signal`] decides
/// where it is delivered, so that no signal frame ever returns into bytes rpatch restores or
/// rewrites: a thread in the bootstrap (slack bytes restored afterwards) or in the stub's tail
/// (past the restore of its own signal mask, about to leave through the data block) is first
/// moved to its resume state, so the handler returns into the thread's own code. Elsewhere in
/// the stub a frame may point into its code page: that page never changes, and the data block
/// is rewritten only once the call is over and the thread seen back in its own code (see
/// [`rpatch_arch::x86_64::remote_call`]). No signal is lost, duplicated or re-sent: the kernel's
/// own siginfo is delivered.
pub struct InjectedThread<'t> {
    tracer: &'t mut Tracer,
    tid: i32,
    region: StubRegion,
    stub: CallStub,
    fp: FpSave,
    errno_location: Option<u64>,
    /// Registers at the latest stop at the thread's own code (EINTR repaired).
    at_rest: libc::user_regs_struct,
    /// FP state and signal mask at that stop: only for putting the thread back with ptrace if
    /// rpatch's own code ever faulted.
    at_rest_xstate: Vec<u8>,
    at_rest_mask: u64,
    place: Where,
    /// Next free byte of the scratch area in the data block.
    scratch: u64,
    /// A signal was delivered since the thread was last judged at a safe point: it may be in a
    /// handler now, where no call may start.
    signalled: bool,
    /// The bootstrap was cut short to deliver a signal (its mappings may be incomplete).
    bootstrap_cut_short: bool,
    /// Signals delivered after moving the thread out of rpatch's code (for `-v`).
    signals_moved: u32,
    /// Unwinds the thread's stack, to tell when it is inside a signal handler.
    stacks: Option<&'t mut StackInspector>,
    /// rpatch's code the thread was last sent into.
    running_in: OwnCode,
}

impl<'t> InjectedThread<'t> {
    /// Borrows `tid`, which the tracer holds stopped in an interrupt stop, and makes sure the
    /// stub region exists: an idle one left by an earlier rpatch is reused, else one is mapped
    /// through the bootstrap (which lets the thread run its own code for a moment; it is then
    /// re-checked and given time to leave the allocator, the loader or a signal handler).
    /// `stacks`, when given, unwinds the thread to tell whether it is in a signal handler.
    pub fn begin(
        tracer: &'t mut Tracer,
        modules: &mut ModuleMap,
        tid: i32,
        functions: &LoaderFunctions,
        ledger: &mut dyn SlackLedger,
        stacks: Option<&'t mut StackInspector>,
        log: &Log,
    ) -> Result<Self, InjectError> {
        let pid = tracer.pid();
        Self::start(tracer, modules, tid, functions, ledger, stacks, log)
            .map_err(exited_if_esrch(pid))
    }

    fn start(
        tracer: &'t mut Tracer,
        modules: &mut ModuleMap,
        tid: i32,
        functions: &LoaderFunctions,
        ledger: &mut dyn SlackLedger,
        stacks: Option<&'t mut StackInspector>,
        log: &Log,
    ) -> Result<Self, InjectError> {
        let pid = tracer.pid();
        let state = tracer
            .thread(tid)
            .ok_or(ProcessError::Exited { pid })?
            .clone();
        let at_rest_xstate = tracer.get_xstate(tid)?;
        let at_rest_mask = get_sigmask(tid)?;
        let fp = fp_layout();
        let xsave_len = fp.area_len();
        let maps = live_maps(pid)?;
        let reusable = region::find_idle_region(&maps, tracer.mem(), xsave_len, |r| {
            stub::call_stub(r, fp).ok().map(|s| s.code)
        });
        let region = reusable.unwrap_or(StubRegion { base: 0, xsave_len });
        let stub = stub::call_stub(&region, fp).map_err(|e| InjectError::NoStubRegion {
            pid,
            reason: format!("encoding the stub: {e}"),
        })?;
        let mut thread = Self {
            tracer,
            tid,
            region,
            stub,
            fp,
            errno_location: functions.errno_location,
            at_rest: state.regs,
            at_rest_xstate,
            at_rest_mask,
            place: Where::AtRest,
            scratch: region.data() + region.scratch_offset(),
            signalled: false,
            bootstrap_cut_short: false,
            signals_moved: 0,
            stacks,
            running_in: OwnCode::Nothing,
        };
        match reusable {
            Some(r) => log.step(
                "load",
                format!("reusing the call stub at {:#x} ({} bytes)", r.base, r.len()),
            ),
            None => {
                thread.bootstrap(modules, ledger, log)?;
                thread.wait_for_safe_point(modules)?;
            }
        }
        Ok(thread)
    }

    /// The borrowed thread's id.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The target's memory.
    pub fn mem(&self) -> &ProcMem {
        self.tracer.mem()
    }

    /// The stub region the calls run in.
    pub fn region(&self) -> StubRegion {
        self.region
    }

    fn pid(&self) -> i32 {
        self.tracer.pid()
    }

    /// The target's mappings; none at all means its address space is being torn down.
    fn maps(&self) -> Result<Vec<process::Mapping>, InjectError> {
        live_maps(self.pid())
    }

    fn io(&self, what: &str, source: std::io::Error) -> InjectError {
        ProcessError::Io {
            pid: self.pid(),
            what: what.into(),
            source,
        }
        .into()
    }

    /// Copies `data` into the scratch area of the data block and returns its address (16-byte
    /// aligned). The area lives as long as the borrow.
    pub fn push(&mut self, data: &[u8]) -> Result<u64, InjectError> {
        let at = self.scratch.next_multiple_of(16);
        let end = self.region.data() + self.region.data_len();
        if at + data.len() as u64 > end {
            return Err(self.io(
                "scratch area",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "argument too long"),
            ));
        }
        self.tracer
            .mem()
            .write_at(at, data)
            .map_err(|e| self.io("scratch area", e))?;
        self.scratch = at + data.len() as u64;
        Ok(at)
    }

    /// Writes to a page the target cannot write (slack, stub code), falling back to
    /// PTRACE_POKEDATA through the stopped thread when the kernel refuses forced writes through
    /// /proc/PID/mem.
    fn write_text(&self, addr: u64, bytes: &[u8], what: &str) -> Result<(), InjectError> {
        let mem = self.tracer.mem();
        mem.set_poke_thread(Some(Pid::from_raw(self.tid)));
        let result = mem.write_at(addr, bytes);
        mem.set_poke_thread(None);
        result.map_err(|e| self.io(what, e))
    }

    /// A stop of the thread that is already there (non-blocking); `None` when it runs on.
    fn poll_stop(&mut self) -> Result<Option<Stop>, InjectError> {
        match self.tracer.wait_stop(self.tid, Instant::now()) {
            Ok(Some(stop)) => Ok(Some(stop)),
            Ok(None) => Err(self.vanished()),
            Err(ProcessError::StopTimeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The borrowed thread is gone: the process exited, or (it lives on) just this thread.
    fn vanished(&self) -> InjectError {
        let pid = self.pid();
        if process::live_task(pid).is_some() {
            InjectError::ThreadExited { pid, tid: self.tid }
        } else {
            ProcessError::Exited { pid }.into()
        }
    }

    fn cont(&mut self, sig: i32) -> Result<(), InjectError> {
        self.tracer.cont(self.tid, sig)?;
        self.place = Where::Running;
        Ok(())
    }

    /// The thread's registers at its resume state (the kernel's syscall restart applied, see
    /// [`resume_state`]), ready to be set with ptrace: `orig_rax` = -1 so the kernel applies no
    /// restart of its own.
    fn resume_regs(&self) -> libc::user_regs_struct {
        let r = resume_state(&self.at_rest);
        let mut regs = self.at_rest;
        (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (r.rax, r.rbx, r.rcx, r.rdx);
        (regs.rsi, regs.rdi, regs.rbp, regs.rsp) = (r.rsi, r.rdi, r.rbp, r.rsp);
        (regs.r8, regs.r9, regs.r10, regs.r11) = (r.r8, r.r9, r.r10, r.r11);
        (regs.r12, regs.r13, regs.r14, regs.r15) = (r.r12, r.r13, r.r14, r.r15);
        (regs.eflags, regs.rip) = (r.rflags, r.rip);
        regs.orig_rax = u64::MAX;
        regs
    }

    /// The thread is in a signal-delivery stop for `sig` (see the signal guarantee on the type):
    /// a fault raised by rpatch's own code is suppressed and the thread put back; a signal
    /// arriving while it runs the bootstrap (at its last system call, which unblocks signals, or
    /// one the mask cannot hold back) is delivered only after the thread was moved to its resume
    /// state with its own mask (what is left of the bootstrap, or all of it, is run again when
    /// its mappings are incomplete); one arriving in the stub's
    /// tail after the tracer finished the return for it (the tail only loads the registers of
    /// the resume state); anything else is delivered where the thread is.
    fn pass_signal(&mut self, sig: i32, what: &str, own: &OwnCode) -> Result<(), InjectError> {
        let regs = self.tracer.get_regs(self.tid)?;
        if own.contains(regs.rip) && self.raised_here(sig) {
            return Err(self.put_back(what, sig, regs.rip));
        }
        match own {
            OwnCode::Bootstrap(code) if code.contains(&regs.rip) => {
                let moved = self.resume_regs();
                self.tracer.set_regs(self.tid, moved)?;
                set_sigmask(self.tid, self.at_rest_mask)?;
                self.bootstrap_cut_short = true;
                self.signals_moved += 1;
            }
            OwnCode::Stub(region)
                if region.in_code(regs.rip) && regs.rip >= region.code() + self.stub.tail =>
            {
                // Errno, FP state, flags, stack and mask are the thread's own already.
                let moved = self.resume_regs();
                self.tracer.set_regs(self.tid, moved)?;
                self.tracer
                    .mem()
                    .write_at(
                        region.data() + data::DONE,
                        &(Done::Returning as u64).to_le_bytes(),
                    )
                    .map_err(|e| self.io("stub data", e))?;
                self.signals_moved += 1;
            }
            _ => {}
        }
        self.signalled = true;
        self.cont(sig)
    }

    /// Stops the running thread and returns its registers. A stop already reported is taken as
    /// is; only a thread with none pending gets a PTRACE_INTERRUPT (one sent to a thread that is
    /// already stopped would stop it again right after the next PTRACE_CONT, before it runs a
    /// single instruction: in a SIGSTOPped process, where every resume is followed by a group-stop
    /// trap, the thread would never run at all). Signals reported before the stop go through
    /// [`Self::pass_signal`].
    fn interrupt(
        &mut self,
        deadline: Instant,
        what: &str,
        own: &OwnCode,
    ) -> Result<libc::user_regs_struct, InjectError> {
        let mut asked = false;
        loop {
            let stop = match self.poll_stop()? {
                Some(stop) => stop,
                None => {
                    if !asked {
                        self.ask_to_stop()?;
                        asked = true;
                    }
                    match self.tracer.wait_stop(self.tid, deadline)? {
                        Some(stop) => stop,
                        None => return Err(self.vanished()),
                    }
                }
            };
            match stop {
                Stop::Event => break,
                Stop::Signal(sig) => self.pass_signal(sig, what, own)?,
                Stop::Suppressed => self.tracer.cont(self.tid, 0)?,
            }
        }
        // Stopped, though maybe still inside rpatch's code: the caller decides what that means.
        self.tracer.set_stop(self.tid, Stop::Event);
        self.place = Where::Abandoned;
        Ok(self.tracer.get_regs(self.tid)?)
    }

    /// Whether `sig`, reported in a signal-delivery-stop, is a fault of the code the thread runs
    /// (raised by the kernel for an instruction, or by the target itself as `abort()` does) rather
    /// than a signal sent from outside, which must be delivered like any other.
    fn raised_here(&self, sig: i32) -> bool {
        if !is_fault(sig) {
            return false;
        }
        match nix::sys::ptrace::getsiginfo(Pid::from_raw(self.tid)) {
            // SAFETY: si_pid reads the union member set for signals sent by a process (si_code
            // <= 0: SI_USER, SI_TKILL, SI_QUEUE), the only case where it is read.
            Ok(info) => info.si_code > 0 || unsafe { info.si_pid() } == self.pid(),
            Err(_) => true,
        }
    }

    /// PTRACE_INTERRUPT.
    fn ask_to_stop(&self) -> Result<(), InjectError> {
        match nix::sys::ptrace::interrupt(Pid::from_raw(self.tid)) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(self.vanished()),
            Err(errno) => Err(ProcessError::Ptrace {
                op: "INTERRUPT",
                tid: self.tid,
                errno,
            }
            .into()),
        }
    }

    /// Waits until the thread runs its own code again (its PC not in `own`), stops it there and
    /// records that state as the one the next call resumes. With the signal guarantee, a thread
    /// whose PC left `own` has no frame that returns into the bootstrap, nor into the stub after
    /// `DONE`.
    fn settle(&mut self, what: &str, own: &OwnCode) -> Result<(), InjectError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut pause = Duration::from_micros(20);
        loop {
            let mut regs = self.interrupt(deadline, what, own)?;
            if !own.contains(regs.rip) {
                let pid = self.pid();
                if process::repair_eintr(pid, self.tid, self.tracer.mem(), &mut regs) {
                    self.tracer.set_regs(self.tid, regs)?;
                }
                self.at_rest = regs;
                self.at_rest_xstate = self.tracer.get_xstate(self.tid)?;
                self.at_rest_mask = get_sigmask(self.tid)?;
                self.place = Where::AtRest;
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.place = Where::Abandoned;
                return Err(InjectError::CallTimeout {
                    function: what.into(),
                    tid: self.tid,
                    ms: SETTLE_TIMEOUT.as_millis() as u64,
                });
            }
            self.cont(0)?;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Puts a thread whose fault happened in rpatch's own code (never expected: a bug, or a data
    /// block overwritten by the target) back with ptrace: registers, FP state, mask and errno as
    /// at its last stop at its own code; the fault is suppressed.
    fn put_back(&mut self, what: &str, signal: i32, address: u64) -> InjectError {
        let tid = self.tid;
        let errno = (|| {
            let at = self.region.data();
            let mem = self.tracer.mem();
            let ptr = mem.read_u64(at + data::ERRNO_PTR).ok()?;
            let value = mem.read_u64(at + data::ERRNO_VALUE).ok()?;
            (ptr != 0 && self.region.base != 0).then_some((ptr, value as u32))
        })();
        let result = (|| -> Result<(), ProcessError> {
            self.tracer.set_xstate(tid, &self.at_rest_xstate)?;
            self.tracer.set_regs(tid, self.at_rest)?;
            set_sigmask(tid, self.at_rest_mask)?;
            if let Some((ptr, value)) = errno {
                let _ = self.tracer.mem().write_at(ptr, &value.to_le_bytes());
            }
            Ok(())
        })();
        self.tracer.set_stop(tid, Stop::Suppressed);
        self.place = Where::Broken;
        match result {
            Ok(()) => InjectError::CallFaulted {
                function: what.into(),
                tid,
                signal,
                address,
            },
            Err(e) => e.into(),
        }
    }

    /// Maps the stub region with the bootstrap code in some slack bytes, and writes the stub.
    /// A bootstrap cut short by a signal is run again at the same address (its system calls
    /// fail harmlessly for what is already mapped).
    fn bootstrap(
        &mut self,
        modules: &mut ModuleMap,
        ledger: &mut dyn SlackLedger,
        log: &Log,
    ) -> Result<(), InjectError> {
        let pid = self.pid();
        let refused = |reason: String| InjectError::NoStubRegion { pid, reason };
        let mut tried = Vec::new();
        let mut again = None;
        for _ in 0..BOOTSTRAP_ATTEMPTS {
            let maps = self.maps()?;
            let slack = region::find_slack(modules, &maps, self.tracer.mem()).ok_or_else(|| {
                refused(format!(
                    "no executable segment of a mapped file has {BOOTSTRAP_LEN} unused bytes at its end to bootstrap from"
                ))
            })?;
            let base = match again.take() {
                Some(base) => base,
                None => {
                    let base = region::region_addresses(&maps, self.region.len())
                        .into_iter()
                        .find(|b| !tried.contains(b))
                        .ok_or_else(|| refused("no free address range for it".into()))?;
                    tried.push(base);
                    base
                }
            };
            self.region.base = base;
            self.run_bootstrap(&slack, &maps, ledger)?;
            let maps = self.maps()?;
            match region::region_mapped(&maps, &self.region) {
                (true, true) => {
                    self.stub = stub::call_stub(&self.region, self.fp)
                        .map_err(|e| refused(format!("encoding the stub: {e}")))?;
                    self.write_text(self.region.code(), &self.stub.code, "stub code")?;
                    let header = stub::idle_header(self.region.data_len());
                    self.tracer
                        .mem()
                        .write_at(self.region.data(), &header)
                        .map_err(|e| self.io("stub data", e))?;
                    self.scratch = self.region.data() + self.region.scratch_offset();
                    log.step(
                        "load",
                        format!(
                            "call stub mapped at {base:#x} ({} bytes, {} KiB stack), bootstrapped from {} bytes of slack at {:#x} in {}{}",
                            self.region.len(),
                            region::REGION_STACK_KIB,
                            BOOTSTRAP_LEN,
                            slack.addr,
                            slack.module.display(),
                            match std::mem::take(&mut self.signals_moved) {
                                0 => String::new(),
                                n => format!("; {n} signal(s) arriving in it delivered at the thread's own code"),
                            }
                        ),
                    );
                    return Ok(());
                }
                mapped if std::mem::take(&mut self.bootstrap_cut_short) => {
                    log.step(
                        "load",
                        format!(
                            "a signal interrupted the bootstrap ({mapped:?} mapped at {base:#x}); delivered at the thread's own code, running it again"
                        ),
                    );
                    again = Some(base);
                }
                mapped => log.step(
                    "load",
                    format!("mapping the call stub at {base:#x} was refused ({mapped:?}); trying elsewhere"),
                ),
            }
        }
        Err(refused(format!(
            "the kernel refused every address tried ({}), or signals kept interrupting the bootstrap",
            tried
                .iter()
                .map(|b| format!("{b:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// One run of the bootstrap code from `slack`: mmap the code page and the stack + data of
    /// `self.region`, then back to the thread's own code, which rpatch waits for before putting
    /// the slack bytes back. The bytes are recorded in `ledger` before they are written; when the
    /// thread cannot be seen back in its own code they stay, recorded, for a later run.
    fn run_bootstrap(
        &mut self,
        slack: &Slack,
        maps: &[process::Mapping],
        ledger: &mut dyn SlackLedger,
    ) -> Result<(), InjectError> {
        let pid = self.pid();
        let resume = resume_state(&self.at_rest);
        let frame_at = resume.rsp - RED_ZONE - BOOTSTRAP_FRAME_LEN;
        let room = maps
            .iter()
            .any(|m| m.start <= frame_at && resume.rsp <= m.end && m.perms.starts_with("rw"));
        if !room {
            return Err(InjectError::NoStubRegion {
                pid,
                reason: format!(
                    "thread {} has no room for {} bytes below its stack pointer {:#x}",
                    self.tid,
                    RED_ZONE + BOOTSTRAP_FRAME_LEN,
                    resume.rsp
                ),
            });
        }
        let region = self.region;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let code_page = Syscall {
            nr: SYS_MMAP,
            args: [region.code(), PAGE, rx, flags, u64::MAX, 0],
        };
        let stack_and_data = Syscall {
            nr: SYS_MMAP,
            args: [region.rw_start(), region.rw_len(), rw, flags, u64::MAX, 0],
        };
        let frame: Vec<u8> = stub::bootstrap_frame(&stack_and_data, self.at_rest_mask, &resume)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        self.tracer
            .mem()
            .write_at(frame_at, &frame)
            .map_err(|e| self.io("bootstrap frame on the thread's stack", e))?;
        ledger.will_write(slack)?;
        if !slack.leftover {
            self.write_text(slack.addr, &stub::bootstrap_code(), "slack bytes")?;
        }
        let mut regs = self.at_rest;
        regs.rip = slack.addr;
        regs.rsp = frame_at;
        regs.eflags = ENTRY_RFLAGS;
        regs.orig_rax = u64::MAX;
        regs.rax = code_page.nr;
        let [a0, a1, a2, a3, a4, a5] = code_page.args;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) = (a0, a1, a2, a3, a4, a5);
        let code = OwnCode::Bootstrap(slack.addr..slack.addr + BOOTSTRAP_LEN as u64);
        self.tracer.set_regs(self.tid, regs)?;
        // Asynchronous signals wait until the bootstrap's last system call restores the
        // thread's own mask (from the frame, so also when rpatch dies meanwhile): signals
        // pending now would otherwise cut every run short on a thread under a signal storm.
        set_sigmask(self.tid, CALL_BLOCK_MASK | self.at_rest_mask)?;
        self.running_in = code.clone();
        self.cont(0)?;
        crate::fault::point(FaultPoint::Bootstrap);
        std::thread::sleep(Duration::from_micros(20));
        let settled = self.settle("mmap", &code);
        // Back in its own code (or put back after a fault) with no frame returning into the
        // slack: it gets the file's bytes back — unless a killed run left our code there, which
        // some other thread may still be running; that is restored only with every thread
        // stopped and checked (see `patch`).
        let out = matches!(self.place, Where::AtRest | Where::Broken);
        if out && !slack.leftover {
            self.write_text(slack.addr, &slack.original, "slack bytes")?;
            ledger.restored(slack);
        }
        settled
    }

    /// After the bootstrap the thread ran its own code for a moment and may now be inside the
    /// allocator, the loader or a signal handler, where a `dlopen` could deadlock on a lock held
    /// by the code it interrupted: let it run on until it is somewhere safe.
    fn wait_for_safe_point(&mut self, modules: &mut ModuleMap) -> Result<(), InjectError> {
        let deadline = Instant::now() + SAFE_POINT_TIMEOUT;
        loop {
            let regs = self.at_rest;
            let in_syscall = (regs.orig_rax as i64) >= 0;
            let verdict = assess_thread(
                modules,
                self.tracer.mem(),
                self.tid,
                regs.rip,
                regs.rsp,
                in_syscall,
            )
            .map(|_| ())
            .and_then(|()| match self.stacks.as_deref_mut() {
                Some(inspector) => assess_stack(modules, &inspector.walk(&regs), self.tid),
                None => Ok(()),
            });
            match verdict {
                Ok(()) => {
                    self.signalled = false;
                    return Ok(());
                }
                Err(why) if Instant::now() >= deadline => {
                    return Err(InjectError::NoSafeThread {
                        pid: self.pid(),
                        reasons: why,
                    });
                }
                Err(_) => self.run_for_a_moment()?,
            }
        }
    }

    /// After a call during which a signal was delivered (at the call's end, where the stub
    /// restored the mask), the thread may be in that signal's handler: let it run until it has
    /// returned from it, so the next call starts where the thread was, not inside the handler.
    fn leave_signal_handlers(&mut self, after: &str) -> Result<(), InjectError> {
        if !self.signalled {
            return Ok(());
        }
        let deadline = Instant::now() + SAFE_POINT_TIMEOUT;
        loop {
            let regs = self.at_rest;
            let in_handler = match self.stacks.as_deref_mut() {
                Some(inspector) => !inspector.walk(&regs).interrupted.is_empty(),
                None => false,
            };
            if !in_handler {
                self.signalled = false;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(InjectError::InSignalHandler {
                    pid: self.pid(),
                    tid: self.tid,
                    function: after.to_string(),
                });
            }
            self.run_for_a_moment()?;
        }
    }

    /// Lets the thread run its own code for about a millisecond and stops it again.
    fn run_for_a_moment(&mut self) -> Result<(), InjectError> {
        self.cont(0)?;
        std::thread::sleep(Duration::from_millis(1));
        self.settle("safe point", &OwnCode::Nothing)
    }

    /// Calls `function(args...)` in the thread and returns its `rax` (see [`Self::call_with`]).
    pub fn call(
        &mut self,
        name: &str,
        function: u64,
        args: &[u64],
        timeout: Duration,
    ) -> Result<u64, InjectError> {
        let call = RemoteCall {
            name,
            function,
            args,
            then_if_zero: None,
            timeout,
        };
        Ok(self.call_with(&call)?.value)
    }

    /// Makes one call through the stub. Signals that arrive meanwhile are delivered when it
    /// ends (none lost, none twice); a fault inside the call is suppressed, the thread restored
    /// and the fault reported; on a timeout the thread is left to finish the call by itself.
    pub fn call_with(&mut self, call: &RemoteCall) -> Result<CallOutcome, InjectError> {
        self.run(call, FaultPoint::Call)
    }

    fn run(
        &mut self,
        call: &RemoteCall,
        fault_point: FaultPoint,
    ) -> Result<CallOutcome, InjectError> {
        let pid = self.pid();
        let tid = self.tid;
        self.run_once(call, fault_point)
            .map_err(exited_if_esrch(pid))
            .map_err(|e| match e {
                InjectError::ThreadExited { .. } => InjectError::CallAborted {
                    function: call.name.to_string(),
                    tid,
                },
                e => e,
            })
    }

    fn run_once(
        &mut self,
        call: &RemoteCall,
        fault_point: FaultPoint,
    ) -> Result<CallOutcome, InjectError> {
        assert!(call.args.len() <= 6, "register arguments only");
        if self.place != Where::AtRest {
            return Err(InjectError::NoSafeThread {
                pid: self.pid(),
                reasons: format!(
                    "thread {} is still in an earlier call that did not finish",
                    self.tid
                ),
            });
        }
        let region = self.region;
        let own = OwnCode::Stub(region);
        let mut args = [0u64; 6];
        args[..call.args.len()].copy_from_slice(call.args);
        let block = CallBlock {
            function: call.function,
            args,
            errno_location: self.errno_location.unwrap_or(0),
            then_if_zero: call.then_if_zero.unwrap_or(0),
            block_mask: CALL_BLOCK_MASK,
            resume: resume_state(&self.at_rest),
            fp: self.fp,
        };
        let mut bytes = block.encode(region.data_len());
        // A zeroed XSAVE header: XSAVE writes only XSTATE_BV, XRSTOR wants the rest zero.
        bytes.resize(region.scratch_offset() as usize, 0);
        self.tracer
            .mem()
            .write_at(region.data(), &bytes)
            .map_err(|e| self.io("stub data", e))?;
        let entry = {
            let mut regs = self.at_rest;
            regs.rip = region.code() + self.stub.entry;
            regs.rsp = region.stack_top();
            regs.eflags = ENTRY_RFLAGS;
            regs.orig_rax = u64::MAX;
            regs.rax = 0;
            regs
        };
        self.tracer.set_regs(self.tid, entry)?;
        self.running_in = own.clone();
        self.cont(0)?;
        crate::fault::point(fault_point);

        let deadline = Instant::now() + call.timeout;
        let mut fault = None;
        let mut polls = 0u32;
        loop {
            match self.poll_stop()? {
                Some(Stop::Signal(sig)) if self.raised_here(sig) => {
                    let at = self.tracer.get_regs(self.tid)?;
                    if region.in_code(at.rip) {
                        return Err(self.put_back(call.name, sig, at.rip));
                    }
                    // The callee crashed: suppress the fault and send the thread through the
                    // stub's restore path, which puts everything back as a return would.
                    fault = Some((sig, at.rip));
                    let mut regs = entry;
                    regs.rip = region.code() + self.stub.restore;
                    self.tracer.set_regs(self.tid, regs)?;
                    self.cont(0)?;
                }
                Some(Stop::Signal(sig)) => self.pass_signal(sig, call.name, &own)?,
                Some(Stop::Event | Stop::Suppressed) => self.cont(0)?,
                None => {}
            }
            let done = self
                .tracer
                .mem()
                .read_u64(region.data() + data::DONE)
                .map_err(|e| self.io("stub data", e))?;
            if done != Done::Running as u64 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.abandon(call));
            }
            polls += 1;
            if polls < 16 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        self.settle(call.name, &own)?;
        // Back in its own code, out of the tail: the region is free for the next call (and,
        // marked settled, for a later rpatch).
        self.tracer
            .mem()
            .write_at(
                region.data() + data::DONE,
                &(Done::Settled as u64).to_le_bytes(),
            )
            .map_err(|e| self.io("stub data", e))?;
        let read = |offset| {
            self.tracer
                .mem()
                .read_u64(region.data() + offset)
                .map_err(|e| self.io("stub data", e))
        };
        let value = read(data::RESULT)?;
        let then_value = match call.then_if_zero {
            Some(_) if value == 0 => Some(read(data::THEN_RESULT)?),
            _ => None,
        };
        if let Some((signal, address)) = fault {
            return Err(InjectError::CallFaulted {
                function: call.name.to_string(),
                tid: self.tid,
                signal,
                address,
            });
        }
        self.leave_signal_handlers(call.name)?;
        Ok(CallOutcome { value, then_value })
    }

    /// A call ran out of time: stop the thread where it is so the tracer can let it go; it then
    /// finishes the call and restores itself through the stub.
    fn abandon(&mut self, call: &RemoteCall) -> InjectError {
        let timeout = InjectError::CallTimeout {
            function: call.name.to_string(),
            tid: self.tid,
            ms: call.timeout.as_millis() as u64,
        };
        let own = self.running_in.clone();
        let stopped = self.interrupt(Instant::now() + SETTLE_TIMEOUT, call.name, &own);
        match stopped {
            Ok(_) => timeout,
            Err(e) => e,
        }
    }

    /// Ends the borrow. The thread is stopped, normally at its own code (after a timed-out or
    /// interrupted call: inside it, and it finishes and restores itself once the tracer lets it
    /// go). Idempotent.
    pub fn restore(&mut self) -> Result<(), InjectError> {
        if self.place == Where::Running {
            // Wherever it is now, the call (or bootstrap) in progress owns the thread: no
            // further call may start, and the stub (or the bootstrap frame) brings it back.
            let pid = self.pid();
            let own = self.running_in.clone();
            self.interrupt(Instant::now() + SETTLE_TIMEOUT, "restore", &own)
                .map_err(exited_if_esrch(pid))?;
        }
        Ok(())
    }

    /// Calls `dlopen(path, RTLD_NOW)` and, in the same run of the stub when it returns NULL,
    /// `dlerror()`. Returns the handle (the library's `struct link_map *`).
    pub fn dlopen(
        &mut self,
        functions: &LoaderFunctions,
        path: &str,
        timeout: Duration,
    ) -> Result<u64, InjectError> {
        self.dlopen_mode(functions, path, functions.dlopen_mode(), timeout)
    }

    /// Like [`Self::dlopen`] with `RTLD_NOW | RTLD_GLOBAL`: the library's symbols join the
    /// global scope, so libraries loaded after it bind their undefined references to them (a
    /// binding shim defining the target's private symbols for the patch library).
    pub fn dlopen_global(
        &mut self,
        functions: &LoaderFunctions,
        path: &str,
        timeout: Duration,
    ) -> Result<u64, InjectError> {
        let mode = functions.dlopen_mode() | libc::RTLD_GLOBAL as u64;
        self.dlopen_mode(functions, path, mode, timeout)
    }

    fn dlopen_mode(
        &mut self,
        functions: &LoaderFunctions,
        path: &str,
        mode: u64,
        timeout: Duration,
    ) -> Result<u64, InjectError> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        let path_addr = self.push(&bytes)?;
        let call = RemoteCall {
            name: "dlopen",
            function: functions.dlopen,
            args: &[path_addr, mode],
            then_if_zero: functions.dlerror,
            timeout,
        };
        let outcome = self.run(&call, FaultPoint::LoadCall)?;
        if outcome.value != 0 {
            return Ok(outcome.value);
        }
        let message = match outcome.then_value {
            Some(0) => "dlopen returned NULL without an error message".to_string(),
            Some(text) => self
                .tracer
                .mem()
                .read_c_string(text, 4096)
                .unwrap_or_default(),
            None => "dlopen returned NULL (this libc has no dlerror to say why)".to_string(),
        };
        Err(InjectError::DlopenFailed {
            pid: self.pid(),
            path: path.to_string(),
            message,
        })
    }

    /// Maps one anonymous page at exactly `addr` (MAP_FIXED_NOREPLACE), readable and executable,
    /// by calling the target's `mmap` through the stub. `Ok(None)` when the kernel refuses that
    /// address.
    pub fn map_page_at(
        &mut self,
        functions: &LoaderFunctions,
        addr: u64,
        len: u64,
    ) -> Result<Option<u64>, InjectError> {
        let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let result = self.call(
            "mmap",
            functions.mmap,
            &[addr, len, prot, flags, u64::MAX, 0],
            Duration::from_secs(2),
        )?;
        // Anything but the exact address is a refusal (MAP_FAILED, or a pre-4.17 kernel that
        // ignored MAP_FIXED_NOREPLACE: such a page is simply left unused).
        Ok((result == addr).then_some(addr))
    }
}

impl Drop for InjectedThread<'_> {
    fn drop(&mut self) {
        // Only after an error or a panic mid-call: stop the thread wherever it is, so the tracer
        // can let it go; the stub restores it by itself. Errors mean it is gone already.
        let _ = self.restore();
    }
}

/// Synchronous fault signals: when raised by the injected call itself they are never delivered
/// (the target's handler would see a fault in code it never ran).
fn is_fault(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGILL
            | libc::SIGFPE
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGSYS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_hold_back_every_signal_but_faults_and_libc_internals() {
        let bit = |sig: i32| 1u64 << (sig - 1);
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGCHLD,
            libc::SIGALRM,
            35,
            64,
        ] {
            assert_ne!(CALL_BLOCK_MASK & bit(sig), 0, "signal {sig} is held");
        }
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            32,
            33,
            34,
        ] {
            assert_eq!(CALL_BLOCK_MASK & bit(sig), 0, "signal {sig} passes");
        }
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

    #[test]
    fn a_vanished_borrowed_thread_means_the_process_exited_only_when_it_did() {
        let esrch = InjectError::from(ProcessError::Ptrace {
            op: "GETREGS",
            tid: 12,
            errno: Errno::ESRCH,
        });
        let gone = i32::MAX;
        let alive = std::process::id() as i32;
        let copy = |e: &InjectError| match e {
            InjectError::Process(ProcessError::Ptrace { op, tid, errno }) => {
                InjectError::from(ProcessError::Ptrace {
                    op,
                    tid: *tid,
                    errno: *errno,
                })
            }
            _ => unreachable!(),
        };
        assert!(matches!(
            exited_if_esrch(alive)(copy(&esrch)),
            InjectError::Process(ProcessError::Ptrace { .. })
        ));
        assert!(matches!(
            exited_if_esrch(gone)(esrch),
            InjectError::Process(ProcessError::Exited { pid }) if pid == gone
        ));
        let eperm = InjectError::from(ProcessError::Ptrace {
            op: "GETREGS",
            tid: 12,
            errno: Errno::EPERM,
        });
        assert!(matches!(
            exited_if_esrch(gone)(eperm),
            InjectError::Process(ProcessError::Ptrace { .. })
        ));
    }
}
