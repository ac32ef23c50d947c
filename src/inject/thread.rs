//! The borrowed thread's life: borrowing it (reusing or bootstrapping the stub region), the
//! remote calls it makes through the stub, every ptrace stop it reports meanwhile (the signal
//! guarantee, see [`InjectedThread`]), and giving it back.

use super::state::{get_sigmask, set_sigmask};
use super::*;
use crate::fault::FaultPoint;
use crate::isa::remote_call::{Done, data};
use crate::isa::{CallArgs, call};
use crate::log::Log;
use crate::process::{
    self, Birth, CodeMemory, Memory, ModuleMap, ProcMem, ProcessError, Regs, Stop,
};
use crate::safety::StackInspector;
use nix::errno::Errno;
use nix::sys::ptrace::Options;
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// How long a thread let go so the kernel decides its system call's restart is given to block
/// in it again (it does at once unless a signal handler runs first).
const ASK_KERNEL_TIME: Duration = Duration::from_millis(200);

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
        log: &'t Log,
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
        log: &'t Log,
    ) -> Result<Self, InjectError> {
        let pid = tracer.pid();
        let state = tracer
            .thread(tid)
            .ok_or(ProcessError::Exited { pid })?
            .clone();
        let at_rest_xstate = tracer.get_xstate(tid)?;
        let at_rest_mask = get_sigmask(tid)?;
        let layout = call::layout(pid);
        let maps = live_maps(pid)?;
        let mem = tracer.mem();
        let reusable = region::find_idle_region(
            &maps,
            mem,
            layout.page(),
            |base| layout.region(base),
            |r| {
                layout.stub(r).is_ok_and(|stub| {
                    mem.read_vec(r.code(), stub.code.len())
                        .is_ok_and(|found| call::stub_matches(&stub, &found))
                })
            },
        );
        let region = reusable.unwrap_or(layout.region(0));
        let stub = layout
            .stub(&region)
            .map_err(|e| InjectError::NoStubRegion {
                pid,
                reason: format!("encoding the stub: {e}"),
            })?;
        let mut thread = Self {
            tracer,
            tid,
            region,
            stub,
            layout,
            errno_location: functions.errno_location,
            at_rest: state.regs,
            at_rest_xstate,
            at_rest_mask,
            place: Where::AtRest,
            scratch: region.data() + region.scratch_offset(),
            signalled: false,
            bootstrap_cut_short: false,
            region_created: reusable.is_none(),
            signals_moved: 0,
            stacks,
            running_in: OwnCode::Nothing,
            forked_in_call: Vec::new(),
            mappings: Some(maps),
            log,
        };
        // Every process or thread the borrowed thread makes is reported (see `child_born`).
        let births = Options::PTRACE_O_TRACEFORK
            | Options::PTRACE_O_TRACEVFORK
            | Options::PTRACE_O_TRACECLONE;
        nix::sys::ptrace::setoptions(Pid::from_raw(tid), births).map_err(|errno| {
            ProcessError::Ptrace {
                op: "SETOPTIONS",
                tid,
                errno,
            }
        })?;
        thread.let_kernel_choose_restart()?;
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

    /// The addresses of the stub region the thread's calls run through.
    pub fn region(&self) -> std::ops::Range<u64> {
        self.region.base..self.region.base + self.region.len()
    }

    /// Whether the stub region was mapped by this thread (not found from an earlier run).
    pub fn region_created(&self) -> bool {
        self.region_created
    }

    /// The target's memory.
    pub fn mem(&self) -> &ProcMem {
        self.tracer.mem()
    }

    pub(super) fn pid(&self) -> i32 {
        self.tracer.pid()
    }

    /// The target's mappings: as this borrow last read them when it has run nothing since
    /// that may map memory, else read now (none at all means its address space is being torn
    /// down: an error). The other threads run on either way, so this is a snapshot like any
    /// read: what it is used for is checked where it matters (a page is mapped with
    /// MAP_FIXED_NOREPLACE, a library's mapping against its inode).
    pub fn mappings(&mut self) -> Result<Vec<process::Mapping>, InjectError> {
        if let Some(maps) = &self.mappings {
            return Ok(maps.clone());
        }
        let maps = live_maps(self.pid())?;
        self.mappings = Some(maps.clone());
        Ok(maps)
    }

    pub(super) fn io(&self, what: &str, source: std::io::Error) -> InjectError {
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
    pub(super) fn write_text(
        &self,
        addr: u64,
        bytes: &[u8],
        what: &str,
    ) -> Result<(), InjectError> {
        CodeMemory::new(self.tracer.mem(), self.tid)
            .write_at(addr, bytes)
            .map_err(|e| self.io(what, e))
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

    pub(super) fn cont(&mut self, sig: i32) -> Result<(), InjectError> {
        self.tracer.cont(self.tid, sig)?;
        self.place = Where::Running;
        Ok(())
    }

    /// Moves the stopped thread to its resume state (the kernel's syscall restart applied, see
    /// `isa::call::resume_regs`), with no restart of the kernel's own. `with_mask`: its own
    /// signal mask too. Where the tracer does the return (`isa::call::TRACER_RETURNS`), its FP
    /// state and mask are always set as well: rpatch's code has not restored them.
    fn move_to_resume_state(&mut self, with_mask: bool) -> Result<(), InjectError> {
        let moved = call::resume_regs(&self.at_rest, self.tracer.mem());
        self.move_to(moved, with_mask)
    }

    /// [`Self::move_to_resume_state`] for signal `sig` about to be delivered there: the
    /// registers are `call::signal_regs`, on which the kernel decides what an interrupted call
    /// returns after the handler (EINTR, or the call again), as it would have without rpatch.
    fn move_to_signal_state(&mut self, sig: i32, with_mask: bool) -> Result<(), InjectError> {
        let caught = process::signal_caught(self.pid(), sig);
        let moved = call::signal_regs(&self.at_rest, self.tracer.mem(), caught);
        self.move_to(moved, with_mask)
    }

    /// Sets the thread's registers to `moved`, with its own FP state and mask where they are not
    /// its own already.
    fn move_to(&mut self, moved: Regs, with_mask: bool) -> Result<(), InjectError> {
        self.tracer.set_regs(self.tid, moved)?;
        if call::TRACER_RETURNS {
            self.tracer.set_xstate(self.tid, &self.at_rest_xstate)?;
        }
        if with_mask || call::TRACER_RETURNS {
            set_sigmask(self.tid, self.at_rest_mask)?;
        }
        Ok(())
    }

    /// Where only the kernel knows how the thread's interrupted call resumes (arm64: through
    /// `restart_syscall` or as itself, see `isa::call::asks_kernel`): lets it go unchanged
    /// until it blocks in a call again (at most [`ASK_KERNEL_TIME`]), and stops it there; that
    /// stop's registers are the kernel's answer.
    fn let_kernel_choose_restart(&mut self) -> Result<(), InjectError> {
        if !call::asks_kernel(&self.at_rest, self.tracer.mem()) {
            return Ok(());
        }
        let (pid, tid) = (self.pid(), self.tid);
        self.cont(0)?;
        let deadline = Instant::now() + ASK_KERNEL_TIME;
        while Instant::now() < deadline
            && process::blocked_syscall(pid, tid).is_none_or(|b| b.nr < 0)
        {
            std::thread::sleep(Duration::from_micros(100));
        }
        self.settle("restart", &OwnCode::Nothing)
    }

    /// Whether a thread stopped at `pc` in `own` code is past the point where its work is done
    /// and only the return to its own code is left (the stub's tail; on ISAs where the tracer
    /// returns the thread, the bootstrap's park).
    fn returning(&self, own: &OwnCode, pc: u64) -> bool {
        match own {
            OwnCode::Stub(region) => region.in_code(pc) && pc >= region.code() + self.stub.tail,
            OwnCode::Bootstrap(code) => {
                code.contains(&pc) && call::bootstrap_parked(code.start, pc)
            }
            OwnCode::Nothing => false,
        }
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
        let pc = self.tracer.get_regs(self.tid)?.pc();
        if own.contains(pc) && self.raised_here(sig) {
            return Err(self.put_back(what, sig, pc));
        }
        match own {
            OwnCode::Bootstrap(code) if code.contains(&pc) => {
                self.move_to_signal_state(sig, true)?;
                // Parked, the bootstrap's work is done: nothing to run again.
                self.bootstrap_cut_short = !call::bootstrap_parked(code.start, pc);
                self.signals_moved += 1;
            }
            OwnCode::Stub(region) if self.returning(own, pc) => {
                // Errno, flags and stack are the thread's own already (FP state and mask too,
                // unless the tracer does the return).
                self.move_to_signal_state(sig, false)?;
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
    /// [`Self::pass_signal`]. Any ptrace-stop clears a pending interrupt (kernel `ptrace_stop`:
    /// "any trap clears pending STOP trap"), so after a signal, a fork/clone event or a suppressed
    /// stop the thread is asked again: a thread that creates threads all the time would
    /// otherwise never be seen stopping.
    fn interrupt(
        &mut self,
        deadline: Instant,
        what: &str,
        own: &OwnCode,
    ) -> Result<Regs, InjectError> {
        // A thread asked to stop does so as soon as it next runs: it gets that chance even when
        // the caller's deadline ran out while it was running.
        let stop_by = deadline.max(Instant::now() + process::STOP_GRACE);
        loop {
            let stop = match self.poll_stop()? {
                Some(stop) => stop,
                None => {
                    self.ask_to_stop()?;
                    match self.tracer.wait_stop(self.tid, stop_by)? {
                        Some(stop) => stop,
                        None => return Err(self.vanished()),
                    }
                }
            };
            match stop {
                Stop::Event => break,
                Stop::Signal(sig) => self.pass_signal(sig, what, own)?,
                Stop::Suppressed => self.tracer.cont(self.tid, 0)?,
                Stop::Born { child, birth } => {
                    self.child_born(child, birth)?;
                    self.tracer.cont(self.tid, 0)?;
                }
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
    pub(super) fn settle(&mut self, what: &str, own: &OwnCode) -> Result<(), InjectError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut pause = Duration::from_micros(20);
        loop {
            let mut regs = self.interrupt(deadline, what, own)?;
            if call::TRACER_RETURNS && self.returning(own, regs.pc()) {
                // Parked at the end of rpatch's code, waiting for the tracer: the return.
                self.move_to_resume_state(false)?;
                regs = self.tracer.get_regs(self.tid)?;
            }
            if !own.contains(regs.pc()) {
                self.tracer.repair_eintr(self.tid, &mut regs)?;
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
                    seen: process::describe_thread(self.pid(), self.tid),
                });
            }
            self.cont(0)?;
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// A process or thread the borrowed thread just made, traced by us and stopping at birth.
    /// A copy of the process made while the thread runs an injected call (a constructor that
    /// forks) would, like the thread, return from the call through the stub — into a copy of
    /// the thread's own code, running it twice: it is left stopped (SIGSTOP, then let go, so it
    /// stays stopped untraced) and the call's end reports it. Anything else — a thread, a vfork
    /// child that will exec, a process sharing the address space, a child the thread's own code
    /// made — goes its way.
    fn child_born(&mut self, child: i32, birth: Birth) -> Result<(), InjectError> {
        let pid = self.pid();
        let in_call = matches!(self.running_in, OwnCode::Stub(_))
            && self
                .tracer
                .mem()
                .read_u64(self.region.data() + data::DONE)
                .is_ok_and(|done| done == Done::Running as u64);
        let copy = match birth {
            Birth::Fork => true,
            Birth::Vfork => false,
            Birth::Clone => {
                process::read_stat(pid, child).is_err()
                    && !process::shares_address_space(pid, child)
            }
        };
        // Its first stop comes at once (it is stopped before it runs); one that exits first
        // needs nothing more.
        if self
            .tracer
            .wait_stop(child, Instant::now() + SETTLE_TIMEOUT)?
            .is_none()
        {
            return Ok(());
        }
        if in_call && copy {
            // SAFETY: kill(2) with a PID and a signal number has no memory effects.
            unsafe { libc::kill(child, libc::SIGSTOP) };
            self.forked_in_call.push(child);
            self.log.step(
                "load",
                format!(
                    "the call forked PID {child} in thread {}: leaving it stopped",
                    self.tid
                ),
            );
        }
        // ESRCH: it died meanwhile.
        let _ = nix::sys::ptrace::detach(Pid::from_raw(child), None);
        Ok(())
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

    /// After the bootstrap the thread ran its own code for a moment and may now be inside the
    /// allocator, the loader or a signal handler, where a `dlopen` could deadlock on a lock held
    /// by the code it interrupted: let it run on until it is somewhere safe.
    fn wait_for_safe_point(&mut self, modules: &mut ModuleMap) -> Result<(), InjectError> {
        let deadline = Instant::now() + SAFE_POINT_TIMEOUT;
        loop {
            let regs = self.at_rest;
            let verdict = assess_thread(
                modules,
                self.tracer.mem(),
                self.tid,
                regs.pc(),
                regs.sp(),
                regs.in_syscall(),
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
                        reasons: vec![why],
                    });
                }
                Err(_) => self.run_for_a_moment()?,
            }
        }
    }

    /// After a call during which a signal was delivered (at the call's end, where the stub
    /// restored the mask), the thread may be in that signal's handler: let it run until it has
    /// returned from it, so the next call starts where the thread was, not inside the handler.
    /// A handler may sleep, and on a loaded machine the thread may wait long for a CPU, so it is
    /// given as long as the call itself was (`timeout`), not a fixed moment.
    fn leave_signal_handlers(&mut self, after: &str, timeout: Duration) -> Result<(), InjectError> {
        if !self.signalled {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
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
                reasons: vec![ThreadRefusal::StillInCall(self.tid)],
            });
        }
        let region = self.region;
        let own = OwnCode::Stub(region);
        let mut args = [0u64; 6];
        args[..call.args.len()].copy_from_slice(call.args);
        let block = CallArgs {
            function: call.function,
            args,
            errno_location: self.errno_location.unwrap_or(0),
            then_if_zero: call.then_if_zero.unwrap_or(0),
            own_mask: self.at_rest_mask,
        };
        let bytes = self
            .layout
            .block(&region, &block, &self.at_rest, self.tracer.mem());
        self.tracer
            .mem()
            .write_at(region.data(), &bytes)
            .map_err(|e| self.io("stub data", e))?;
        if let Some((at, code)) =
            call::return_code(&self.stub, &region, &self.at_rest, self.tracer.mem())
        {
            // The region is settled (no thread runs in it): its return path may change.
            self.write_text(at, &code, "stub return")?;
        }
        let entry = call::entry_regs(
            &self.at_rest,
            region.code() + self.stub.entry,
            region.stack_top(),
        );
        self.tracer.set_regs(self.tid, entry)?;
        // Signals wait from the stub's first instruction: one that comes as the thread is let
        // go is not delivered at the entry, on top of a call that has not begun (its handler
        // would return into the stub, and an interrupted call such as sigsuspend would then be
        // issued again rather than return), but at the end, on the thread's own registers.
        set_sigmask(self.tid, CALL_BLOCK_MASK | self.at_rest_mask)?;
        self.running_in = own.clone();
        self.cont(0)?;
        crate::fault::point(fault_point);

        let started = Instant::now();
        let deadline = started + call.timeout;
        let mut fault = None;
        let mut polls = 0u32;
        loop {
            match self.poll_stop()? {
                Some(Stop::Signal(sig)) if self.raised_here(sig) => {
                    let at = self.tracer.get_regs(self.tid)?.pc();
                    if region.in_code(at) {
                        return Err(self.put_back(call.name, sig, at));
                    }
                    // The callee crashed: suppress the fault and send the thread through the
                    // stub's restore path, which puts everything back as a return would.
                    fault = Some((sig, at));
                    let mut regs = entry;
                    regs.set_pc(region.code() + self.stub.restore);
                    self.tracer.set_regs(self.tid, regs)?;
                    self.cont(0)?;
                }
                Some(Stop::Signal(sig)) => self.pass_signal(sig, call.name, &own)?,
                Some(Stop::Event | Stop::Suppressed) => self.cont(0)?,
                Some(Stop::Born { child, birth }) => {
                    self.child_born(child, birth)?;
                    self.cont(0)?;
                }
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
                if polls.is_multiple_of(1024) {
                    self.log.waiting(
                        &format_args!("{} to return in thread {}", call.name, self.tid),
                        started,
                        call.timeout,
                    );
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        self.settle(call.name, &own)?;
        if !self.forked_in_call.is_empty() {
            return Err(InjectError::ForkedInCall {
                pid: self.pid(),
                tid: self.tid,
                function: call.name.to_string(),
                children: std::mem::take(&mut self.forked_in_call),
            });
        }
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
        self.leave_signal_handlers(call.name, call.timeout)?;
        Ok(CallOutcome { value, then_value })
    }

    /// A call ran out of time: stop the thread where it is so the tracer can let it go; it then
    /// finishes the call and restores itself through the stub.
    fn abandon(&mut self, call: &RemoteCall) -> InjectError {
        let timeout = InjectError::CallTimeout {
            function: call.name.to_string(),
            tid: self.tid,
            ms: call.timeout.as_millis() as u64,
            seen: process::describe_thread(self.pid(), self.tid),
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
        self.mappings = None;
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
        self.mappings = None;
        let result = self.call(
            "mmap",
            functions.mmap,
            &[addr, len, prot, flags, u64::MAX, 0],
            SETTLE_TIMEOUT,
        )?;
        // Anything but the exact address is a refusal (MAP_FAILED, or a pre-4.17 kernel that
        // ignored MAP_FIXED_NOREPLACE: such a page is simply left unused).
        Ok((result == addr).then_some(addr))
    }
}
