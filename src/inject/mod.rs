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

pub use resume::resume_state;
pub use thread_choice::{ThreadCandidate, assess as assess_thread, assess_stack, rank_threads};

use crate::log::Log;
use crate::process::{self, Memory, ModuleMap, ProcMem, ProcessError, Stop, Tracer};
use nix::errno::Errno;
use nix::unistd::Pid;
use rpatch_arch::x86_64::remote_call::{
    self as stub, BOOTSTRAP_FRAME_LEN, BOOTSTRAP_LEN, CallBlock, CallStub, ENTRY_RFLAGS, FpSave,
    PAGE, RED_ZONE, SYS_MMAP, StubRegion, Syscall, data,
};
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

/// How long the bootstrap and the return to the thread's own code may take: both are a few
/// instructions and system calls that never block.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a thread found in the allocator or loader after the bootstrap is given to leave it.
const SAFE_POINT_TIMEOUT: Duration = Duration::from_secs(2);

/// How this machine's FP/vector state is saved by the stub, and the size of the save area: the
/// XSAVE size of the enabled features (CPUID leaf 0xD), at least what ptrace reports for the
/// thread. `ptrace_len` is the length of the thread's NT_X86_XSTATE regset.
fn fp_layout(ptrace_len: usize) -> (FpSave, u64) {
    use std::arch::x86_64::__cpuid_count;
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification registers. (The
    // intrinsic is safe from Rust 1.94 on; `unsafe` keeps the MSRV building.)
    #[allow(unused_unsafe)]
    let cpuid = |leaf, sub_leaf| unsafe { __cpuid_count(leaf, sub_leaf) };
    // CPUID.1:ECX bit 27: OSXSAVE, the kernel enabled XSAVE.
    if cpuid(1, 0).ecx & (1 << 27) == 0 {
        return (FpSave::Fxsave, 512);
    }
    let enabled = u64::from(cpuid(0xd, 0).ebx);
    (FpSave::Xsave, enabled.max(ptrace_len as u64).max(576))
}

/// ESRCH from ptrace on the borrowed thread, which rpatch holds traced: when the process is gone
/// it vanished because the process is being torn down, and that is what is reported; otherwise
/// the request met the thread running, and the error says which request.
fn exited_if_esrch(pid: i32) -> impl Fn(InjectError) -> InjectError {
    move |e| match e {
        InjectError::Process(ProcessError::Ptrace {
            errno: Errno::ESRCH,
            ..
        }) if process::live_task(pid).is_none() => ProcessError::Exited { pid }.into(),
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

/// A thread borrowed for remote calls.
///
/// Between calls the thread is stopped at its own code. During a call it runs rpatch's stub,
/// which restores it by itself; dropping the guard (after an error or a panic) only makes sure
/// the thread is stopped so the tracer can let it go, wherever it is.
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
}

impl<'t> InjectedThread<'t> {
    /// Borrows `tid`, which the tracer holds stopped in an interrupt stop, and makes sure the
    /// stub region exists: an idle one left by an earlier rpatch is reused, else one is mapped
    /// through the bootstrap (which lets the thread run its own code for a moment; it is then
    /// re-checked with `assess_thread` and given time to leave the allocator or loader).
    pub fn begin(
        tracer: &'t mut Tracer,
        modules: &mut ModuleMap,
        tid: i32,
        functions: &LoaderFunctions,
        log: &Log,
    ) -> Result<Self, InjectError> {
        let pid = tracer.pid();
        Self::start(tracer, modules, tid, functions, log).map_err(exited_if_esrch(pid))
    }

    fn start(
        tracer: &'t mut Tracer,
        modules: &mut ModuleMap,
        tid: i32,
        functions: &LoaderFunctions,
        log: &Log,
    ) -> Result<Self, InjectError> {
        let pid = tracer.pid();
        let state = tracer
            .thread(tid)
            .ok_or(ProcessError::Exited { pid })?
            .clone();
        let at_rest_xstate = tracer.get_xstate(tid)?;
        let at_rest_mask = get_sigmask(tid)?;
        let (fp, xsave_len) = fp_layout(at_rest_xstate.len());
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
        };
        match reusable {
            Some(r) => log.step(
                "load",
                format!("reusing the call stub at {:#x} ({} bytes)", r.base, r.len()),
            ),
            None => {
                thread.bootstrap(modules, log)?;
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
            Ok(None) => Err(ProcessError::Exited { pid: self.pid() }.into()),
            Err(ProcessError::StopTimeout { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn cont(&mut self, sig: i32) -> Result<(), InjectError> {
        self.tracer.cont(self.tid, sig)?;
        self.place = Where::Running;
        Ok(())
    }

    /// Stops the running thread and returns its registers. A stop already reported is taken as
    /// is; only a thread with none pending gets a PTRACE_INTERRUPT (one sent to a thread that is
    /// already stopped would stop it again right after the next PTRACE_CONT, before it runs a
    /// single instruction: in a SIGSTOPped process, where every resume is followed by a group-stop
    /// trap, the thread would never run at all). Signals reported before the stop are delivered
    /// (the thread is in its own code or in code that copes with handlers), except a fault at an
    /// address `ours` claims: rpatch's own code faulted, and the thread is put back with ptrace
    /// (`Err(CallFaulted)`).
    fn interrupt(
        &mut self,
        deadline: Instant,
        what: &str,
        ours: &dyn Fn(u64) -> bool,
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
                        None => return Err(ProcessError::Exited { pid: self.pid() }.into()),
                    }
                }
            };
            match stop {
                Stop::Event => break,
                Stop::Signal(sig) => {
                    let regs = self.tracer.get_regs(self.tid)?;
                    if ours(regs.rip) && self.raised_here(sig) {
                        return Err(self.put_back(what, sig, regs.rip));
                    }
                    self.tracer.cont(self.tid, sig)?;
                }
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
            Err(Errno::ESRCH) => Err(ProcessError::Exited { pid: self.pid() }.into()),
            Err(errno) => Err(ProcessError::Ptrace {
                op: "INTERRUPT",
                tid: self.tid,
                errno,
            }
            .into()),
        }
    }

    /// Waits until the thread runs its own code again (its PC not in `ours`), stops it there and
    /// records that state as the one the next call resumes.
    fn settle(&mut self, what: &str, ours: &dyn Fn(u64) -> bool) -> Result<(), InjectError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut pause = Duration::from_micros(20);
        loop {
            let mut regs = self.interrupt(deadline, what, ours)?;
            if !ours(regs.rip) {
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
    fn bootstrap(&mut self, modules: &mut ModuleMap, log: &Log) -> Result<(), InjectError> {
        let pid = self.pid();
        let refused = |reason: String| InjectError::NoStubRegion { pid, reason };
        let mut tried = Vec::new();
        for _ in 0..3 {
            let maps = self.maps()?;
            let slack = region::find_slack(modules, &maps, self.tracer.mem()).ok_or_else(|| {
                refused(format!(
                    "no executable segment of a mapped file has {BOOTSTRAP_LEN} unused bytes at its end to bootstrap from"
                ))
            })?;
            let base = region::region_addresses(&maps, self.region.len())
                .into_iter()
                .find(|b| !tried.contains(b))
                .ok_or_else(|| refused("no free address range for it".into()))?;
            tried.push(base);
            self.region.base = base;
            self.run_bootstrap(&slack, &maps)?;
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
                            "call stub mapped at {base:#x} ({} bytes, {} KiB stack), bootstrapped from {} bytes of slack at {:#x} in {}",
                            self.region.len(),
                            region::REGION_STACK_KIB,
                            BOOTSTRAP_LEN,
                            slack.addr,
                            slack.module.display()
                        ),
                    );
                    return Ok(());
                }
                mapped => log.step(
                    "load",
                    format!("mapping the call stub at {base:#x} was refused ({mapped:?}); trying elsewhere"),
                ),
            }
        }
        Err(refused(format!(
            "the kernel refused every address tried ({})",
            tried
                .iter()
                .map(|b| format!("{b:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// One run of the bootstrap code from `slack`: mmap the code page and the stack + data of
    /// `self.region`, then back to the thread's own code, which rpatch waits for before putting
    /// the slack bytes back.
    fn run_bootstrap(
        &mut self,
        slack: &region::Slack,
        maps: &[process::Mapping],
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
        let frame: Vec<u8> = stub::bootstrap_frame(&stack_and_data, &resume)
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        self.tracer
            .mem()
            .write_at(frame_at, &frame)
            .map_err(|e| self.io("bootstrap frame on the thread's stack", e))?;
        self.write_text(slack.addr, &stub::bootstrap_code(), "slack bytes")?;
        let mut regs = self.at_rest;
        regs.rip = slack.addr;
        regs.rsp = frame_at;
        regs.eflags = ENTRY_RFLAGS;
        regs.orig_rax = u64::MAX;
        regs.rax = code_page.nr;
        let [a0, a1, a2, a3, a4, a5] = code_page.args;
        (regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) = (a0, a1, a2, a3, a4, a5);
        self.tracer.set_regs(self.tid, regs)?;
        self.cont(0)?;
        crate::fault::point("bootstrap");
        let code = slack.addr..slack.addr + BOOTSTRAP_LEN as u64;
        std::thread::sleep(Duration::from_micros(20));
        self.settle("mmap", &|rip| code.contains(&rip))?;
        // The thread is out: the slack gets the file's bytes back.
        self.write_text(slack.addr, &slack.original, "slack bytes")
    }

    /// After the bootstrap the thread ran its own code for a moment and may now be inside the
    /// allocator or the loader, where a `dlopen` would deadlock on a lock it holds itself: let it
    /// run on until it is somewhere safe.
    fn wait_for_safe_point(&mut self, modules: &mut ModuleMap) -> Result<(), InjectError> {
        let deadline = Instant::now() + SAFE_POINT_TIMEOUT;
        loop {
            let regs = self.at_rest;
            let in_syscall = (regs.orig_rax as i64) >= 0;
            match assess_thread(
                modules,
                self.tracer.mem(),
                self.tid,
                regs.rip,
                regs.rsp,
                in_syscall,
            ) {
                Ok(_) => return Ok(()),
                Err(why) if Instant::now() >= deadline => {
                    return Err(InjectError::NoSafeThread {
                        pid: self.pid(),
                        reasons: why,
                    });
                }
                Err(_) => {
                    self.cont(0)?;
                    std::thread::sleep(Duration::from_millis(1));
                    self.settle("safe point", &|_| false)?;
                }
            }
        }
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
        self.run(call, "call")
    }

    fn run(&mut self, call: &RemoteCall, fault_name: &str) -> Result<CallOutcome, InjectError> {
        let pid = self.pid();
        self.run_once(call, fault_name)
            .map_err(exited_if_esrch(pid))
    }

    fn run_once(
        &mut self,
        call: &RemoteCall,
        fault_name: &str,
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
        let mut args = [0u64; 6];
        args[..call.args.len()].copy_from_slice(call.args);
        let block = CallBlock {
            function: call.function,
            args,
            errno_location: self.errno_location.unwrap_or(0),
            then_if_zero: call.then_if_zero.unwrap_or(0),
            block_mask: CALL_BLOCK_MASK,
            resume: resume_state(&self.at_rest),
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
        self.cont(0)?;
        crate::fault::point(fault_name);

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
                Some(Stop::Signal(sig)) => self.cont(sig)?,
                Some(Stop::Event | Stop::Suppressed) => self.cont(0)?,
                None => {}
            }
            let done = self
                .tracer
                .mem()
                .read_u64(region.data() + data::DONE)
                .map_err(|e| self.io("stub data", e))?;
            if done == 1 {
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
        self.settle(call.name, &|rip| region.in_code(rip))?;
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
        let stopped = self.interrupt(Instant::now() + SETTLE_TIMEOUT, call.name, &|_| false);
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
            self.interrupt(Instant::now() + SETTLE_TIMEOUT, "restore", &|_| false)
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
        let outcome = self.run(&call, "load-call")?;
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

    #[test]
    fn fp_area_covers_what_ptrace_reports() {
        let (fp, len) = fp_layout(9000);
        match fp {
            FpSave::Xsave => assert!(len >= 9000),
            FpSave::Fxsave => assert_eq!(len, 512),
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
