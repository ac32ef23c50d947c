//! ptrace control: seize threads, stop them, read and set their registers, and let them go.
//!
//! All ptrace requests must come from the thread that attached, so a `Tracer` is used from one
//! thread only (it is deliberately not `Send`). Its `Drop` detaches every thread it holds.

use super::{ProcMem, ProcessError, Regs, permission_denied, status_field};
use crate::isa;
use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Why a seized thread is stopped; decides what happens when it is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Our PTRACE_INTERRUPT (or another ptrace event): resume with no signal.
    Event,
    /// A signal (raw number: real-time signals included) was about to be delivered: it is
    /// delivered when the thread is let go, so nothing that arrives while rpatch holds the thread is
    /// lost.
    Signal(i32),
    /// The thread was stopped by a signal we must swallow (the fault that ends an injected call).
    Suppressed,
    /// The thread created a process or thread (traced with `PTRACE_O_TRACEFORK`, `TRACEVFORK`,
    /// `TRACECLONE`): `child` starts traced by us and stopped; resume the thread with no signal.
    Born {
        /// The new process or thread.
        child: i32,
        /// Which call made it.
        birth: Birth,
    },
}

/// The system call that made a traced thread's child (see [`Stop::Born`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Birth {
    /// `fork` (or a `clone` the kernel reports as one): a copy of the process.
    Fork,
    /// `vfork` (posix_spawn): shares the address space until it execs or exits.
    Vfork,
    /// Any other `clone`: a thread, or a process sharing or copying the address space.
    Clone,
}

impl Birth {
    /// The birth a ptrace event number reports.
    fn of_event(event: i32) -> Option<Self> {
        match event {
            libc::PTRACE_EVENT_FORK => Some(Birth::Fork),
            libc::PTRACE_EVENT_VFORK => Some(Birth::Vfork),
            libc::PTRACE_EVENT_CLONE => Some(Birth::Clone),
            _ => None,
        }
    }
}

/// A seized, stopped thread.
#[derive(Debug, Clone)]
pub struct ThreadState {
    /// Thread id.
    pub tid: i32,
    /// Why it is stopped.
    pub stop: Stop,
    /// Registers at the stop (after the EINTR repair, see `process::repair_eintr`).
    pub regs: Regs,
}

/// A thread whose call returns a possibly spurious EINTR once, because rpatch could not prove
/// which call to re-enter (`process::EintrRepair::Kept`): operations report these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptEintr {
    /// The thread.
    pub tid: i32,
    /// Its call (`epoll_pwait`...).
    pub call: &'static str,
}

impl std::fmt::Display for KeptEintr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "thread {}'s {} may return EINTR once: it entered the call just as rpatch stopped it, \
             and which call to re-enter could not be proven",
            self.tid, self.call
        )
    }
}

/// Holds the threads of one process under ptrace.
pub struct Tracer {
    pid: i32,
    threads: BTreeMap<i32, ThreadState>,
    /// The held threads in the order they were asked to stop, which is the order they are let
    /// go in: the busy threads a freeze stops first go first.
    order: Vec<i32>,
    mem: ProcMem,
    /// EINTRs left to threads (see [`KeptEintr`]), in the order the threads were let go.
    kept_eintr: Vec<KeptEintr>,
    /// Held threads stopped with an EINTR that stays, reported once each when let go (a thread
    /// may be stopped several times on the same one while it is held).
    keeping_eintr: BTreeMap<i32, &'static str>,
    /// Not Send: ptrace requests are valid only from the attaching thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

fn ptrace_err(op: &'static str, tid: i32) -> impl FnOnce(Errno) -> ProcessError {
    move |errno| ProcessError::Ptrace { op, tid, errno }
}

impl Tracer {
    /// A tracer for `pid` holding no thread yet.
    pub fn new(pid: i32) -> Result<Self, ProcessError> {
        let mem = ProcMem::open(pid)?;
        Ok(Self {
            pid,
            threads: BTreeMap::new(),
            order: Vec::new(),
            mem,
            kept_eintr: Vec::new(),
            keeping_eintr: BTreeMap::new(),
            _not_send: std::marker::PhantomData,
        })
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The target's memory.
    pub fn mem(&self) -> &ProcMem {
        &self.mem
    }

    /// Threads currently held stopped.
    pub fn threads(&self) -> impl Iterator<Item = &ThreadState> {
        self.threads.values()
    }

    /// One held thread.
    pub fn thread(&self, tid: i32) -> Option<&ThreadState> {
        self.threads.get(&tid)
    }

    /// The threads whose call returns a possibly spurious EINTR once (see [`KeptEintr`]): an
    /// operation's report names them.
    pub fn kept_eintr(&self) -> &[KeptEintr] {
        &self.kept_eintr
    }

    /// Seizes `tid` and stops it. `Ok(false)` when the thread no longer exists.
    pub fn seize(&mut self, tid: i32, deadline: Instant) -> Result<bool, ProcessError> {
        if self.threads.contains_key(&tid) {
            return Ok(true);
        }
        if !self.seize_and_interrupt(tid, Observe::eintr_sleeper())? {
            return Ok(false);
        }
        self.await_stop(tid, deadline)
    }

    /// PTRACE_SEIZE + PTRACE_INTERRUPT without waiting, so many threads can be asked to stop at
    /// once. What `observe` asks is read between the two (see `process::Seen::fresh`: where an
    /// interrupted call loses an argument, that read is what proves which call to re-enter).
    /// `Ok(false)` when the thread no longer exists.
    fn seize_and_interrupt(&mut self, tid: i32, observe: Observe) -> Result<bool, ProcessError> {
        let mut seized = ptrace::seize(Pid::from_raw(tid), Options::empty());
        // EPERM also means "exiting" (PF_EXITING) before /proc shows it: look again briefly
        // before calling it a permission problem (real ones were caught by `identify`).
        for _ in 0..25 {
            if seized != Err(Errno::EPERM) || thread_is_exiting(self.pid, tid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            seized = ptrace::seize(Pid::from_raw(tid), Options::empty());
        }
        match seized {
            Ok(()) => {}
            Err(Errno::ESRCH) => return Ok(false),
            Err(Errno::EPERM) if thread_is_exiting(self.pid, tid) => {
                // The kernel refuses to attach to an exiting thread (or a zombie main thread).
                return if super::live_task(self.pid).is_some() {
                    Ok(false)
                } else {
                    Err(ProcessError::Exited { pid: self.pid })
                };
            }
            Err(Errno::EPERM) => {
                let tracer: i32 = status_field(self.pid, tid, "TracerPid")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if tracer != 0 {
                    let tracer_name = super::thread_name(tracer, tracer);
                    return Err(ProcessError::AlreadyTraced {
                        pid: self.pid,
                        tracer,
                        tracer_name,
                    });
                }
                return Err(permission_denied(
                    self.pid,
                    format!("PTRACE_SEIZE of thread {tid}"),
                ));
            }
            Err(e) => return Err(ptrace_err("SEIZE", tid)(e)),
        }
        if observe != Observe::Nothing {
            let switches = observe == Observe::CallAndSwitches;
            super::syscall::observe_seized(self.pid, tid, switches);
        }
        match ptrace::interrupt(Pid::from_raw(tid)) {
            Ok(()) => {
                if !self.order.contains(&tid) {
                    self.order.push(tid);
                }
                Ok(true)
            }
            Err(Errno::ESRCH) => Ok(self.forget_if_gone(tid)),
            Err(e) => {
                let _ = ptrace::detach(Pid::from_raw(tid), None);
                Err(ptrace_err("INTERRUPT", tid)(e))
            }
        }
    }

    /// Waits for the stop of a thread just interrupted and records it.
    fn await_stop(&mut self, tid: i32, deadline: Instant) -> Result<bool, ProcessError> {
        // A seized thread that never stops cannot be detached; the kernel detaches it when rpatch
        // exits. The error names it.
        match self.wait_stop(tid, deadline)? {
            Some(stop) => {
                self.record_stop(tid, stop)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn forget_if_gone(&mut self, tid: i32) -> bool {
        // ESRCH after a successful seize: the thread is exiting; reap its exit if reported.
        let mut status = 0;
        // SAFETY: waitpid only writes the status integer.
        unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        false
    }

    fn record_stop(&mut self, tid: i32, stop: Stop) -> Result<(), ProcessError> {
        let mut regs = isa::get_regs(tid).map_err(ptrace_err("GETREGS", tid))?;
        if stop == Stop::Event {
            self.repair_eintr(tid, &mut regs)?;
        }
        self.threads.insert(tid, ThreadState { tid, stop, regs });
        if !self.order.contains(&tid) {
            self.order.push(tid);
        }
        Ok(())
    }

    /// Repairs a spurious EINTR of thread `tid`, stopped by an interrupt with `regs` (see
    /// `process::repair_eintr`): sets the rewound registers, or remembers an EINTR that stays
    /// (see [`Self::kept_eintr`]). Returns whether `regs` changed.
    pub fn repair_eintr(&mut self, tid: i32, regs: &mut Regs) -> Result<bool, ProcessError> {
        match super::repair_eintr(self.pid, tid, &self.mem, regs) {
            super::EintrRepair::None => Ok(false),
            super::EintrRepair::Rewound => {
                self.keeping_eintr.remove(&tid);
                isa::set_regs(tid, regs).map_err(ptrace_err("SETREGS", tid))?;
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.regs = *regs;
                }
                Ok(true)
            }
            super::EintrRepair::Kept { call } => {
                self.keeping_eintr.insert(tid, call);
                Ok(false)
            }
        }
    }

    /// Waits until `tid` is in a ptrace-stop. `Ok(None)` if it exited.
    pub fn wait_stop(&mut self, tid: i32, deadline: Instant) -> Result<Option<Stop>, ProcessError> {
        let start = Instant::now();
        let mut spins = 0u32;
        // Made at the first sleep: most stops are seen while spinning.
        let mut stops: Option<StopSignal> = None;
        let mut pause = Duration::from_micros(20);
        loop {
            let mut status = 0i32;
            // SAFETY: waitpid only writes the status integer we pass a pointer to.
            let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if rc < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    Errno::ECHILD => {
                        self.threads.remove(&tid);
                        return Ok(None);
                    }
                    e => return Err(ptrace_err("waitpid", tid)(e)),
                }
            }
            if rc == 0 {
                if Instant::now() >= deadline {
                    return Err(ProcessError::StopTimeout {
                        pid: self.pid,
                        tid,
                        ms: start.elapsed().as_millis() as u64,
                    });
                }
                // A running thread stops within microseconds of the interrupt: a few spins
                // first. Then a sleep (not a yield, which hands a whole time slice to a busy
                // target thread on a loaded machine) that the stop's SIGCHLD ends; its timeout
                // only matters when another thread of this process takes the signal.
                spins += 1;
                if spins < 8 {
                    std::hint::spin_loop();
                } else {
                    stops.get_or_insert_with(StopSignal::new).wait(pause);
                    pause = (pause * 2).min(Duration::from_micros(100));
                }
                continue;
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.threads.remove(&tid);
                return Ok(None);
            }
            if libc::WIFSTOPPED(status) {
                let sig = libc::WSTOPSIG(status);
                let event = status >> 16;
                if let Some(birth) = Birth::of_event(event) {
                    let child = ptrace::getevent(Pid::from_raw(tid))
                        .map_err(ptrace_err("GETEVENTMSG", tid))?;
                    return Ok(Some(Stop::Born {
                        child: child as i32,
                        birth,
                    }));
                }
                return Ok(Some(if event != 0 || sig == libc::SIGTRAP | 0x80 {
                    Stop::Event
                } else {
                    Stop::Signal(sig)
                }));
            }
        }
    }

    /// Looks at every thread before the world is stopped (see [`Survey`]): what the freeze
    /// needs to know that costs a read of /proc per thread is read here, outside the frozen
    /// window. A thread in `vfork` (which cannot be stopped until its child execs or exits) is
    /// reported at once.
    pub fn survey(&self) -> Result<Survey, ProcessError> {
        let tids = match super::list_threads(self.pid) {
            Ok(t) => t,
            Err(ProcessError::NoSuchProcess { .. }) => {
                return Err(ProcessError::Exited { pid: self.pid });
            }
            Err(e) => return Err(e),
        };
        Survey::of(self.pid, tids)
    }

    /// Seizes and stops every thread (see [`Tracer::freeze`], which makes the result a guard),
    /// from a `survey` made just before. Every thread is asked to stop before any stop is waited
    /// for, running threads first (they need a CPU to reach the stop, sleeping ones stop at
    /// once); a thread blocked in a call that a ptrace interrupt makes fail with EINTR is
    /// stopped and repaired on its own, so that at most one such thread at a time is between
    /// its interrupt and its repair. Then the thread list is read again, and threads created
    /// meanwhile are stopped the same way, until a listing finds nothing new: a thread can only
    /// be created by a running thread, and a clone completes before its caller stops, so once a
    /// listing finds nothing new while all listed threads are stopped, the set is complete.
    ///
    /// `visit` is called with every thread as soon as it is stopped (while others may still be
    /// stopping); when it returns `false` the freeze ends early: the threads asked to stop so far
    /// are collected (so that the caller's release lets them all go) and `Ok(false)` is
    /// returned.
    pub(super) fn freeze_all(
        &mut self,
        survey: Survey,
        deadline: Instant,
        visit: &mut dyn FnMut(&ThreadState) -> bool,
    ) -> Result<bool, ProcessError> {
        let mut round = survey;
        // Every thread asked to stop so far: one that is still listed but not held could not
        // be seized (a zombie leader, a thread exiting) and is not new.
        let mut tried: Vec<i32> = Vec::new();
        loop {
            tried.extend(
                round
                    .running
                    .iter()
                    .chain(&round.blocked)
                    .chain(&round.eintr_only),
            );
            let mut asked = Vec::new();
            // A running thread may enter an EINTR-only call before its interrupt: where that
            // call would lose an argument, what it shows once seized is read (a blocked one
            // was seen in another call, which rarely ends just then: not read again, the
            // window stays short).
            let observe = if isa::EINTR_LOSES_AN_ARGUMENT {
                Observe::Call
            } else {
                Observe::Nothing
            };
            for &tid in &round.running {
                if !self.threads.contains_key(&tid) && self.seize_and_interrupt(tid, observe)? {
                    asked.push(tid);
                }
            }
            for &tid in &round.blocked {
                if !self.threads.contains_key(&tid)
                    && self.seize_and_interrupt(tid, Observe::Nothing)?
                {
                    asked.push(tid);
                }
            }
            let mut failure = None;
            let mut refused = false;
            // Real-time while these are stopped and repaired (the rest of the freeze waits at
            // the caller's priority, see `super::priority`): a tracer preempted between an
            // interrupt and its repair would stretch the window a SIGKILL of rpatch turns into
            // a spurious EINTR.
            let realtime =
                (!round.eintr_only.is_empty()).then(super::priority::RealtimeGuard::raise);
            for &tid in &round.eintr_only {
                if self.threads.contains_key(&tid) || refused {
                    continue;
                }
                // Stopped and repaired at once: between the interrupt and the repair, a tracer
                // that dies would leave this thread's call returning EINTR, so that window is
                // kept to the few microseconds a sleeping thread takes to stop.
                match self.seize_and_interrupt(tid, Observe::eintr_sleeper()) {
                    Ok(true) => match self.await_stop(tid, deadline) {
                        Ok(true) => {
                            refused = !self.threads.get(&tid).is_none_or(&mut *visit);
                        }
                        Ok(false) => {}
                        Err(e) => failure = failure.or(Some(e)),
                    },
                    Ok(false) => {}
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            drop(realtime);
            // Every thread recorded is one the caller's release lets go rather than leaving it
            // in its trap: the others' stops are collected even after a failure.
            match self.await_stops(&asked, deadline, visit, refused) {
                Ok(complete) => refused |= !complete,
                Err(e) => failure = failure.or(Some(e)),
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if refused {
                return Ok(false);
            }
            let tids = match super::list_threads(self.pid) {
                Ok(t) => t,
                Err(ProcessError::NoSuchProcess { .. }) => {
                    return Err(ProcessError::Exited { pid: self.pid });
                }
                Err(e) => return Err(e),
            };
            let new: Vec<i32> = tids
                .iter()
                .copied()
                .filter(|t| !self.threads.contains_key(t) && !tried.contains(t))
                .collect();
            if new.is_empty() {
                // Threads that exited since being stopped are dropped from the set.
                self.threads.retain(|tid, _| tids.contains(tid));
                self.order.retain(|tid| tids.contains(tid));
                if self.threads.is_empty() {
                    return Err(ProcessError::Exited { pid: self.pid });
                }
                return Ok(true);
            }
            // Rare: threads created since the survey. Their state is read now.
            round = Survey::of(self.pid, new)?;
        }
    }

    /// Waits for the stops of the threads `tids` (just interrupted), in whatever order they
    /// come, and records them, each visited (see [`Self::freeze_all`]) until a visit refuses
    /// (or, with `refused`, none is). A thread that exits meanwhile is forgotten. Each thread is
    /// waited for by its own id: `waitpid(-1)` would also reap children of rpatch's that are not
    /// tracees (a library user's, or `rehearse`'s target). `Ok(false)` when a visit refused.
    fn await_stops(
        &mut self,
        tids: &[i32],
        deadline: Instant,
        visit: &mut dyn FnMut(&ThreadState) -> bool,
        mut refused: bool,
    ) -> Result<bool, ProcessError> {
        let mut pending: Vec<i32> = tids.to_vec();
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        let mut stops = StopSignal::new();
        while !pending.is_empty() {
            let before = pending.len();
            let mut i = 0;
            while i < pending.len() {
                let tid = pending[i];
                let mut status = 0i32;
                // SAFETY: waitpid only writes the status integer we pass a pointer to.
                let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
                if rc == 0 || (rc < 0 && Errno::last() == Errno::EINTR) {
                    i += 1;
                    continue;
                }
                pending.swap_remove(i);
                if rc < 0 {
                    match Errno::last() {
                        // Gone, and reaped already.
                        Errno::ECHILD => {
                            self.threads.remove(&tid);
                            continue;
                        }
                        e => return Err(ptrace_err("waitpid", tid)(e)),
                    }
                }
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    self.threads.remove(&tid);
                } else if libc::WIFSTOPPED(status) {
                    self.record_stop(tid, stop_of(status))?;
                    if !refused && let Some(t) = self.threads.get(&tid) {
                        refused = !visit(t);
                    }
                }
            }
            if pending.len() < before {
                pause = Duration::from_micros(20);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::StopTimeout {
                    pid: self.pid,
                    tid: pending[0],
                    ms: start.elapsed().as_millis() as u64,
                });
            }
            // A thread stops once it has a CPU, microseconds after the interrupt on an idle
            // machine: sleep until a stop is signalled (or a while passes), not spin or poll
            // often, which would take a CPU from the very threads that need one to stop.
            stops.wait(pause);
            pause = (pause * 2).min(Duration::from_micros(100));
        }
        Ok(!refused)
    }

    /// Sets registers of a held thread (and records them as its current state).
    pub fn set_regs(&mut self, tid: i32, regs: Regs) -> Result<(), ProcessError> {
        isa::set_regs(tid, &regs).map_err(ptrace_err("SETREGS", tid))?;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.regs = regs;
        }
        Ok(())
    }

    /// Reads the current registers of a held thread.
    pub fn get_regs(&self, tid: i32) -> Result<Regs, ProcessError> {
        isa::get_regs(tid).map_err(ptrace_err("GETREGS", tid))
    }

    /// The full FP/vector state (x86_64: the XSAVE area; arm64: V0–V31, FPSR, FPCR, or the
    /// whole NT_ARM_SVE payload when the thread's SVE state is live), so an injected call
    /// cannot leave a changed SIMD register behind.
    pub(crate) fn get_xstate(&self, tid: i32) -> Result<isa::FpSaved, ProcessError> {
        isa::get_fp_state(tid).map_err(ptrace_err(isa::FP_REGSET, tid))
    }

    /// Restores a state read by `get_xstate`.
    pub(crate) fn set_xstate(&self, tid: i32, state: &isa::FpSaved) -> Result<(), ProcessError> {
        isa::set_fp_state(tid, state).map_err(ptrace_err(isa::FP_REGSET, tid))
    }

    /// Resumes a held thread without letting it go (for an injected call); delivers `sig`.
    pub fn cont(&mut self, tid: i32, sig: i32) -> Result<(), ProcessError> {
        if sig != 0 {
            // Its handler may run: what was seen of it proves nothing about its next stop.
            super::syscall::stale(tid);
        }
        // SAFETY: PTRACE_CONT takes no pointers; the signal is passed as the data word.
        let rc = unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0usize, sig as usize) };
        if rc < 0 {
            return Err(ptrace_err("CONT", tid)(Errno::last()));
        }
        Ok(())
    }

    /// Marks how a held thread is stopped now (after an injected call's final fault).
    pub fn set_stop(&mut self, tid: i32, stop: Stop) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.stop = stop;
        }
    }

    /// Lets one thread go, delivering a signal that arrived while it was held.
    pub fn release(&mut self, tid: i32) {
        self.order.retain(|&t| t != tid);
        super::syscall::stale(tid);
        if let Some(call) = self.keeping_eintr.remove(&tid) {
            self.kept_eintr.push(KeptEintr { tid, call });
        }
        if let Some(t) = self.threads.remove(&tid) {
            let sig = match t.stop {
                Stop::Signal(s) => s,
                Stop::Event | Stop::Suppressed | Stop::Born { .. } => 0,
            };
            // SAFETY: PTRACE_DETACH takes no pointers; the signal is passed as the data word.
            // ESRCH (the thread died meanwhile) leaves nothing to release.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, sig as usize) };
        }
    }

    /// Phase 7, *Thaw*: lets every held thread go, in the order they were stopped (a busy
    /// thread, stopped first, waits least).
    pub fn release_all(&mut self) {
        let mut tids = std::mem::take(&mut self.order);
        tids.extend(
            self.threads
                .keys()
                .filter(|t| !tids.contains(t))
                .copied()
                .collect::<Vec<_>>(),
        );
        for tid in tids {
            self.release(tid);
        }
    }

    /// Holds `tid` (seized and stopped) until the returned guard is dropped, which lets it go.
    pub fn hold(&mut self, tid: i32) -> Held<'_> {
        Held { tracer: self, tid }
    }
}

/// One thread held stopped by the tracer, let go when the guard is dropped (see
/// [`Tracer::hold`]); the tracer stays usable through the guard meanwhile.
pub struct Held<'t> {
    tracer: &'t mut Tracer,
    tid: i32,
}

impl Held<'_> {
    /// The thread held.
    pub fn tid(&self) -> i32 {
        self.tid
    }
}

impl std::ops::Deref for Held<'_> {
    type Target = Tracer;
    fn deref(&self) -> &Tracer {
        self.tracer
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Tracer {
        self.tracer
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.tracer.release(self.tid);
    }
}

/// Sleeping until a tracee stops: every ptrace stop sends its tracer a SIGCHLD, which this
/// thread blocks while the guard lives and waits for through a `signalfd`, with a timeout, so a
/// wait for stops costs no CPU and ends microseconds after the stop. A SIGCHLD another thread
/// of the process takes (a multi-threaded program calling rpatch's library, which leaves it
/// unblocked elsewhere) is not seen here: the wait then ends at its timeout, as a plain sleep.
/// One SIGCHLD taken here is raised again when the guard is dropped, so a program that waits
/// for its own children's SIGCHLD misses none.
struct StopSignal {
    fd: Option<nix::sys::signalfd::SignalFd>,
    previous: Option<nix::sys::signal::SigSet>,
    taken: bool,
}

impl StopSignal {
    fn new() -> Self {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
        let mut chld = SigSet::empty();
        chld.add(Signal::SIGCHLD);
        let mut previous = SigSet::empty();
        if pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&chld), Some(&mut previous)).is_err() {
            return Self {
                fd: None,
                previous: None,
                taken: false,
            };
        }
        let fd = nix::sys::signalfd::SignalFd::with_flags(
            &chld,
            nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
        )
        .ok();
        Self {
            fd,
            previous: Some(previous),
            taken: false,
        }
    }

    /// Sleeps until a SIGCHLD arrives or `timeout` passes.
    fn wait(&mut self, timeout: Duration) {
        let Some(fd) = &self.fd else {
            std::thread::sleep(timeout);
            return;
        };
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ts = nix::sys::time::TimeSpec::from_duration(timeout);
        if nix::poll::ppoll(&mut fds, Some(ts), None).is_ok_and(|n| n > 0) {
            // Drained: the next wait sleeps until the next SIGCHLD.
            while let Ok(Some(_)) = fd.read_signal() {
                self.taken = true;
            }
        }
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        self.fd = None;
        if let Some(previous) = self.previous {
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&previous),
                None,
            );
        }
        if self.taken {
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGCHLD);
        }
    }
}

/// What is read of a thread between its seize and its interrupt (see
/// [`Tracer::seize_and_interrupt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Observe {
    /// Nothing: this ISA's interrupted calls lose no argument, or the thread sleeps in a call
    /// that restarts.
    Nothing,
    /// Its `/proc/TID/syscall`.
    Call,
    /// Its voluntary context switches, then its `/proc/TID/syscall` (a thread that may sleep
    /// in an EINTR-only call: see `process::Seen::switches`).
    CallAndSwitches,
}

impl Observe {
    /// For a thread that may sleep in an EINTR-only call.
    fn eintr_sleeper() -> Self {
        if isa::EINTR_LOSES_AN_ARGUMENT {
            Observe::CallAndSwitches
        } else {
            Observe::Nothing
        }
    }
}

/// The kind of ptrace stop a `waitpid` status reports.
fn stop_of(status: i32) -> Stop {
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if event != 0 || sig == libc::SIGTRAP | 0x80 {
        Stop::Event
    } else {
        Stop::Signal(sig)
    }
}

/// What a freeze needs to know about each thread, read just before it (see
/// [`Tracer::survey`]): which threads run (asked to stop first), which sleep, and which sleep in
/// a call that a ptrace interrupt makes fail with EINTR (stopped and repaired one at a time).
#[derive(Debug, Default, Clone)]
pub struct Survey {
    running: Vec<i32>,
    blocked: Vec<i32>,
    eintr_only: Vec<i32>,
    sleeping_at: Vec<(u64, u64)>,
}

impl Survey {
    /// Reads the state of threads `tids` of `pid` from `/proc` (see [`Tracer::survey`]); a
    /// thread in `vfork` is an error at once.
    fn of(pid: i32, tids: Vec<i32>) -> Result<Self, ProcessError> {
        let mut survey = Survey::default();
        for tid in tids {
            let blocked = super::blocked_syscall(pid, tid);
            if let Some(b) = &blocked {
                survey.sleeping_at.push((b.pc, b.sp));
            }
            match blocked {
                Some(b) if b.in_vfork() => return Err(ProcessError::InVfork { pid, tid }),
                Some(b) if b.eintr_only() => survey.eintr_only.push(tid),
                Some(_) => survey.blocked.push(tid),
                None => survey.running.push(tid),
            }
        }
        Ok(survey)
    }

    /// The PC and stack pointer of each thread seen asleep in a system call (as
    /// `/proc/PID/task/TID/syscall` showed them): where its stack walk will start once it is
    /// stopped, unless it wakes meanwhile.
    pub fn sleeping_at(&self) -> &[(u64, u64)] {
        &self.sleeping_at
    }
}

/// Whether a thread is gone, a zombie, or dead: an EPERM from PTRACE_SEIZE then means "exiting",
/// not "not permitted".
fn thread_is_exiting(pid: i32, tid: i32) -> bool {
    match super::read_stat(pid, tid) {
        Ok((state, ..)) => matches!(state, 'Z' | 'X' | 'x'),
        Err(_) => true,
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.release_all();
    }
}
