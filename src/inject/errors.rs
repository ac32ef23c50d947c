//! The injection layer's errors: each names the process, the thread and the call involved.

use crate::process::ProcessError;

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
    #[error(
        "no thread of PID {pid} can safely run the loader now: {}; retry shortly",
        Refusals(reasons)
    )]
    NoSafeThread {
        /// The PID.
        pid: i32,
        /// Why each thread was passed over.
        reasons: Vec<ThreadRefusal>,
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
    /// Code the injected call ran (a library constructor) forked in the borrowed thread. The
    /// child's copy of that thread would return from the call through the stub into the
    /// thread's own code, running it twice: it is left stopped, and nothing is patched.
    #[error(
        "the injected call to {function} forked in thread {tid} of PID {pid} (a constructor of the library?): the child{} {} would have returned through rpatch's call stub into a copy of that thread's own code, so {} left stopped (SIGSTOP); kill {} (kill -KILL {}) or let {} run on (kill -CONT {}) once you know what {} does; nothing was patched, the library stays loaded",
        if children.len() == 1 { "" } else { "ren" },
        Pids(children),
        if children.len() == 1 { "it is" } else { "they are" },
        if children.len() == 1 { "it" } else { "them" },
        Pids(children),
        if children.len() == 1 { "it" } else { "them" },
        Pids(children),
        if children.len() == 1 { "it" } else { "they" }
    )]
    ForkedInCall {
        /// The PID.
        pid: i32,
        /// The borrowed thread.
        tid: i32,
        /// Function called.
        function: String,
        /// The children left stopped.
        children: Vec<i32>,
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
        "the injected call to {function} in thread {tid} did not return within {ms} ms (a library constructor that blocks, or a loader lock held by another thread; the thread was then: {seen}); the thread finishes the call on its own and then resumes its code"
    )]
    CallTimeout {
        /// Function called.
        function: String,
        /// Thread.
        tid: i32,
        /// Milliseconds waited.
        ms: u64,
        /// Where the thread was when the wait ended (`process::describe_thread`): what it waits
        /// for tells a blocking constructor from a lock held elsewhere.
        seen: String,
    },
    /// A process-level failure.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The journal record of bytes about to be written could not be made durable.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

impl InjectError {
    /// The stable class of this error.
    pub fn kind(&self) -> crate::kind::ErrorKind {
        use crate::kind::ErrorKind;
        match self {
            InjectError::DlopenFailed { .. }
            | InjectError::CallFaulted { .. }
            | InjectError::CallTimeout { .. }
            | InjectError::CallAborted { .. }
            | InjectError::ForkedInCall { .. }
            | InjectError::InSignalHandler { .. } => ErrorKind::LoadFailed,
            // Both pass: another thread, or the same one a moment later, will do.
            InjectError::NoSafeThread { .. } | InjectError::ThreadExited { .. } => {
                ErrorKind::NoSafeThread
            }
            InjectError::NoDlopen { .. }
            | InjectError::MissingFunction { .. }
            | InjectError::NoStubRegion { .. } => ErrorKind::TargetUnsupported,
            InjectError::Process(e) => e.kind(),
            InjectError::Journal(crate::journal::JournalError::OtherProcess { .. }) => {
                ErrorKind::JournalOfOtherProcess
            }
            InjectError::Journal(_) => ErrorKind::Internal,
        }
    }
}

/// Why a thread cannot run the loader now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadRefusal {
    /// In vfork or clone: a child may be running on its stack.
    InVforkOrClone(i32),
    /// Its PC is inside the dynamic loader (which holds its lock).
    InLoader(i32),
    /// Its PC is inside the allocator (which may hold its lock).
    InAllocator(i32),
    /// Its unwound stack shows the dynamic loader.
    LoaderOnStack(i32),
    /// Its unwound stack shows the allocator.
    AllocatorOnStack(i32),
    /// It is inside a signal handler (the code it interrupted may hold any lock).
    InSignalHandler(i32),
    /// A signal is being delivered to it.
    SignalPending(i32),
    /// It is still in an earlier call that did not finish.
    StillInCall(i32),
    /// Its vector state cannot be kept across a call (arm64: SME streaming mode, ZA in use);
    /// the reason in words.
    VectorState(i32, &'static str),
}

impl std::fmt::Display for ThreadRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ThreadRefusal::InVforkOrClone(tid) => write!(
                f,
                "thread {tid} is in vfork/clone (a child may be running on its stack)"
            ),
            ThreadRefusal::InLoader(tid) => write!(f, "thread {tid} is inside the dynamic loader"),
            ThreadRefusal::InAllocator(tid) => write!(f, "thread {tid} is inside the allocator"),
            ThreadRefusal::LoaderOnStack(tid) => {
                write!(f, "thread {tid} has the dynamic loader on its stack")
            }
            ThreadRefusal::AllocatorOnStack(tid) => {
                write!(f, "thread {tid} has the allocator on its stack")
            }
            ThreadRefusal::InSignalHandler(tid) => {
                write!(f, "thread {tid} is inside a signal handler")
            }
            ThreadRefusal::SignalPending(tid) => {
                write!(f, "thread {tid} has a signal being delivered")
            }
            ThreadRefusal::StillInCall(tid) => write!(
                f,
                "thread {tid} is still in an earlier call that did not finish"
            ),
            ThreadRefusal::VectorState(tid, why) => write!(f, "thread {tid}: {why}"),
        }
    }
}

/// Refusals joined for a message.
struct Refusals<'a>(&'a [ThreadRefusal]);

impl std::fmt::Display for Refusals<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// PIDs for messages: `12 13 14`.
struct Pids<'a>(&'a [i32]);

impl std::fmt::Display for Pids<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pids: Vec<String> = self.0.iter().map(|p| p.to_string()).collect();
        f.write_str(&pids.join(" "))
    }
}
