//! Remote function calls in the target: `dlopen` of the patch library, `dlerror` on failure, and
//! `mmap` of jump-island pages, made from one seized thread while the others keep running.
//!
//! A call borrows the thread: its registers, FP/vector state and `errno` are saved first and put
//! back exactly afterwards (an `InjectedThread` guard does it on every path, panics included), so
//! a thread that was blocked in a syscall re-enters it as if nothing happened. The callee returns
//! to an unmapped address; the resulting fault stops the thread under ptrace and is swallowed.

mod thread_choice;

pub use thread_choice::{ThreadCandidate, assess as assess_thread, rank_threads};

use crate::process::{Memory, ModuleMap, ProcMem, ProcessError, Stop, Tracer};
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
    /// The injected call did not return in time; the thread was interrupted and restored.
    #[error(
        "the injected call to {function} in thread {tid} did not return within {ms} ms (a library constructor that blocks, or a loader lock held by another thread); the thread was restored"
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

/// Address the injected callee returns to: below `mmap_min_addr`, never mapped, so returning
/// faults at exactly this PC.
const RETURN_TRAP: u64 = 0x7a7c;

/// Bytes left untouched below the thread's stack pointer: the 128-byte red zone plus margin.
const STACK_GAP: u64 = 128 + 384;

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

/// A thread borrowed for remote calls. Dropping it restores the thread's registers, FP state and
/// errno, whatever happened in between.
pub struct InjectedThread<'t> {
    tracer: &'t mut Tracer,
    tid: i32,
    saved_regs: libc::user_regs_struct,
    saved_xstate: Vec<u8>,
    saved_errno: Option<(u64, [u8; 4])>,
    /// Next free byte (growing down) of the scratch area below the red zone.
    scratch: u64,
    restored: bool,
}

impl<'t> InjectedThread<'t> {
    /// Borrows `tid`, which the tracer holds stopped in an interrupt stop.
    pub fn begin(
        tracer: &'t mut Tracer,
        tid: i32,
        functions: &LoaderFunctions,
    ) -> Result<Self, InjectError> {
        let state = tracer
            .thread(tid)
            .ok_or(ProcessError::Exited { pid: tracer.pid() })?;
        let saved_regs = state.regs;
        let saved_xstate = tracer.get_xstate(tid)?;
        let scratch = (saved_regs.rsp - STACK_GAP) & !0xf;
        let mut thread = Self {
            tracer,
            tid,
            saved_regs,
            saved_xstate,
            saved_errno: None,
            scratch,
            restored: false,
        };
        if let Some(errno_location) = functions.errno_location {
            let addr = thread.call(
                "__errno_location",
                errno_location,
                &[],
                Duration::from_secs(2),
            )?;
            let mut value = [0u8; 4];
            thread
                .tracer
                .mem()
                .read_at(addr, &mut value)
                .map_err(|e| ProcessError::Io {
                    pid: thread.tracer.pid(),
                    what: "errno".into(),
                    source: e,
                })?;
            thread.saved_errno = Some((addr, value));
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

    /// Copies `data` into the scratch area and returns its address (16-byte aligned).
    pub fn push(&mut self, data: &[u8]) -> Result<u64, InjectError> {
        self.scratch = (self.scratch - data.len() as u64) & !0xf;
        self.tracer
            .mem()
            .write_at(self.scratch, data)
            .map_err(|e| ProcessError::Io {
                pid: self.tracer.pid(),
                what: "scratch stack".into(),
                source: e,
            })?;
        Ok(self.scratch)
    }

    /// Calls `function(args...)` in the thread and returns its `rax`. Signals that arrive for the
    /// thread during the call are delivered to it (a handler runs on the scratch stack and returns
    /// into the call), so none is lost; a fault inside the call is swallowed and reported.
    pub fn call(
        &mut self,
        name: &str,
        function: u64,
        args: &[u64],
        timeout: Duration,
    ) -> Result<u64, InjectError> {
        assert!(args.len() <= 6, "register arguments only");
        let mut regs = self.saved_regs;
        // At the callee's first instruction rsp+8 must be 16-byte aligned, as after a `call`.
        let sp = (self.scratch - 64) & !0xf;
        let sp = sp - 8;
        self.tracer
            .mem()
            .write_at(sp, &RETURN_TRAP.to_le_bytes())
            .map_err(|e| ProcessError::Io {
                pid: self.tracer.pid(),
                what: "scratch stack".into(),
                source: e,
            })?;
        regs.rsp = sp;
        regs.rip = function;
        regs.rax = 0;
        // No syscall restart may be applied to the injected context.
        regs.orig_rax = u64::MAX;
        let slots = [
            &mut regs.rdi,
            &mut regs.rsi,
            &mut regs.rdx,
            &mut regs.rcx,
            &mut regs.r8,
            &mut regs.r9,
        ];
        for (slot, value) in slots.into_iter().zip(args) {
            *slot = *value;
        }
        self.tracer.set_regs(self.tid, regs)?;
        self.tracer.cont(self.tid, 0)?;
        let deadline = Instant::now() + timeout;
        loop {
            let stop = match self.tracer.wait_stop(self.tid, deadline) {
                Ok(Some(stop)) => stop,
                Ok(None) => {
                    return Err(ProcessError::Exited {
                        pid: self.tracer.pid(),
                    }
                    .into());
                }
                Err(ProcessError::StopTimeout { .. }) => {
                    self.interrupt_running()?;
                    return Err(InjectError::CallTimeout {
                        function: name.to_string(),
                        tid: self.tid,
                        ms: timeout.as_millis() as u64,
                    });
                }
                Err(e) => return Err(e.into()),
            };
            match stop {
                Stop::Signal(sig) => {
                    let now = self.tracer.get_regs(self.tid)?;
                    if sig == libc::SIGSEGV && now.rip == RETURN_TRAP {
                        self.tracer.set_stop(self.tid, Stop::Suppressed);
                        return Ok(now.rax);
                    }
                    if is_fault(sig) {
                        self.tracer.set_stop(self.tid, Stop::Suppressed);
                        return Err(InjectError::CallFaulted {
                            function: name.to_string(),
                            tid: self.tid,
                            signal: sig,
                            address: now.rip,
                        });
                    }
                    // An asynchronous signal for this thread: deliver it now.
                    self.tracer.cont(self.tid, sig)?;
                }
                Stop::Event | Stop::Suppressed => self.tracer.cont(self.tid, 0)?,
            }
        }
    }

    /// Stops the thread after a call that did not return in time.
    fn interrupt_running(&mut self) -> Result<(), InjectError> {
        let pid = nix::unistd::Pid::from_raw(self.tid);
        nix::sys::ptrace::interrupt(pid).map_err(|errno| ProcessError::Ptrace {
            op: "INTERRUPT",
            tid: self.tid,
            errno,
        })?;
        match self
            .tracer
            .wait_stop(self.tid, Instant::now() + Duration::from_secs(5))?
        {
            Some(Stop::Signal(sig)) => {
                // Keep the signal for delivery after restore.
                self.tracer.set_stop(self.tid, Stop::Signal(sig));
                Ok(())
            }
            Some(_) => {
                self.tracer.set_stop(self.tid, Stop::Suppressed);
                Ok(())
            }
            None => Err(ProcessError::Exited {
                pid: self.tracer.pid(),
            }
            .into()),
        }
    }

    /// Puts the thread back exactly as it was; idempotent.
    pub fn restore(&mut self) -> Result<(), InjectError> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        if let Some((addr, value)) = self.saved_errno {
            // Best effort: errno lives in the thread's TLS, which cannot have gone away.
            let _ = self.tracer.mem().write_at(addr, &value);
        }
        self.tracer.set_xstate(self.tid, &self.saved_xstate)?;
        self.tracer.set_regs(self.tid, self.saved_regs)?;
        Ok(())
    }

    /// Calls `dlopen(path, RTLD_NOW)`; on failure reads `dlerror()`. Returns the handle (the
    /// library's `struct link_map *`).
    pub fn dlopen(
        &mut self,
        functions: &LoaderFunctions,
        path: &str,
        timeout: Duration,
    ) -> Result<u64, InjectError> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        let path_addr = self.push(&bytes)?;
        let handle = self.call(
            "dlopen",
            functions.dlopen,
            &[path_addr, functions.dlopen_mode()],
            timeout,
        )?;
        if handle != 0 {
            return Ok(handle);
        }
        let message = match functions.dlerror {
            Some(dlerror) => {
                let text = self.call("dlerror", dlerror, &[], Duration::from_secs(2))?;
                if text == 0 {
                    "dlopen returned NULL without an error message".to_string()
                } else {
                    self.tracer
                        .mem()
                        .read_c_string(text, 4096)
                        .unwrap_or_default()
                }
            }
            None => "dlopen returned NULL (this libc has no dlerror to say why)".to_string(),
        };
        Err(InjectError::DlopenFailed {
            pid: self.tracer.pid(),
            path: path.to_string(),
            message,
        })
    }

    /// Maps one anonymous page at exactly `addr` (MAP_FIXED_NOREPLACE), readable and executable.
    /// `Ok(None)` when the kernel refuses that address.
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
        // Errors here mean the thread is gone; nothing else can be done for it.
        let _ = self.restore();
    }
}

/// Synchronous fault signals: raised by the injected code itself, never to be delivered (the
/// target's handler would see a fault in code it never ran).
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
