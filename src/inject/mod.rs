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
//!   stack][data]`, see `rpatch_arch`'s `remote_call` of each ISA): it saves the FP state, blocks
//!   asynchronous signals, saves errno, calls, restores all of it and jumps back to where the
//!   thread must resume. That is where the thread would be anyway: a system call it was
//!   interrupted in is re-issued exactly as the kernel's restart would (see `isa::call::resume_state`).
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

mod bootstrap;
mod errors;
mod loader;
mod region;
mod state;
mod thread;
mod thread_choice;

pub use errors::{InjectError, ThreadRefusal};
pub use loader::LoaderFunctions;
pub use region::Slack;
pub use thread_choice::{assess as assess_thread, assess_stack, rank_threads};

use crate::isa::call::Layout;
use crate::isa::remote_call::{CallStub, StubRegion};
use crate::process::{self, ProcessError, Regs, Tracer};
use crate::safety::StackInspector;
use nix::errno::Errno;
use std::ops::Range;
use std::time::Duration;

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
/// instructions and system calls that never block, but on a loaded machine the thread may wait
/// long for a CPU, and failing here costs the whole operation.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a thread found in the allocator or loader after the bootstrap is given to leave it.
const SAFE_POINT_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Where the bytes rpatch writes into a module's slack are recorded before they are written, so
/// that the record outlives rpatch: a run that dies, or gives up, before it can prove no thread
/// will come back into them leaves them in place with a record that a later run settles (see
/// `patch`).
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
/// the ISA's `remote_call` in `rpatch_arch`). No signal is lost, duplicated or re-sent: the kernel's
/// own siginfo is delivered.
pub struct InjectedThread<'t> {
    tracer: &'t mut Tracer,
    tid: i32,
    region: StubRegion,
    stub: CallStub,
    layout: Layout,
    errno_location: Option<u64>,
    /// Registers at the latest stop at the thread's own code (EINTR repaired).
    at_rest: Regs,
    /// FP state (arm64: a live SVE state whole) and signal mask at that stop: for putting the
    /// thread back with ptrace where the tracer does the return, and if rpatch's own code ever
    /// faulted.
    at_rest_xstate: crate::isa::FpSaved,
    at_rest_mask: u64,
    place: Where,
    /// Next free byte of the scratch area in the data block.
    scratch: u64,
    /// A signal was delivered since the thread was last judged at a safe point: it may be in a
    /// handler now, where no call may start.
    signalled: bool,
    /// The bootstrap was cut short to deliver a signal (its mappings may be incomplete).
    bootstrap_cut_short: bool,
    /// The stub region was mapped by this thread's bootstrap (not reused from an earlier run).
    region_created: bool,
    /// Signals delivered after moving the thread out of rpatch's code (for `-v`).
    signals_moved: u32,
    /// Unwinds the thread's stack, to tell when it is inside a signal handler.
    stacks: Option<&'t mut StackInspector>,
    /// rpatch's code the thread was last sent into.
    running_in: OwnCode,
    /// Copies of the process the current call made in this thread (a constructor that forks),
    /// left stopped: the call's end reports them.
    forked_in_call: Vec<i32>,
    /// The target's mappings as this borrow last read them, kept until it runs code that may
    /// map memory (a `dlopen`, with its constructors; an `mmap`): see
    /// [`InjectedThread::mappings`].
    mappings: Option<Vec<process::Mapping>>,
    /// Progress lines, and the status line while a call takes long.
    log: &'t crate::log::Log,
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
