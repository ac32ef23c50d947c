//! Remote calls in a real arm64 process with rpatch-arch's bootstrap and stub, driven the way the
//! arm64 design wants a tracer to drive them (`rpatch_arch::aarch64::remote_call`): the thread
//! parks at the end of the bootstrap or the stub, and the tracer moves it back to its own code
//! with ptrace (registers, FP/SIMD state, signal mask); signals reaching the thread in the
//! bootstrap or the stub's tail are delivered only once it is back there; a thread stopped on
//! a call that may continue through `restart_syscall` is resumed unchanged first so the kernel
//! decides. These are the steps rpatch's injection layer will take on arm64, reduced to what
//! the guest scenarios check.

use crate::ptrace::{self, NT_PRFPREG, NT_PRSTATUS, Stop};
use object::{Object, ObjectSegment, ObjectSymbol};
use rpatch_arch::aarch64::insn::SVC0;
use rpatch_arch::aarch64::page_size_from_auxv;
use rpatch_arch::aarch64::remote_call::{
    self as stub, BOOTSTRAP_PARK, CallBlock, CallStub, Done, FpState, RETURN_SLOT_LEN, ResumeState,
    StubRegion, Syscall, data,
};
use rpatch_arch::aarch64::syscall::{self as sys, BlockedCall, Resume};
use rpatch_arch::aarch64::vector::{self, VectorState};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Signals blocked while the stub runs: all but the synchronous faults and glibc's internal
/// 32..34 (as rpatch's `CALL_BLOCK_MASK`).
pub const BLOCK_MASK: u64 = !((1 << (libc::SIGSEGV - 1))
    | (1 << (libc::SIGBUS - 1))
    | (1 << (libc::SIGILL - 1))
    | (1 << (libc::SIGFPE - 1))
    | (1 << (libc::SIGTRAP - 1))
    | (1 << (libc::SIGSYS - 1))
    | (1 << (libc::SIGKILL - 1))
    | (1 << (libc::SIGSTOP - 1))
    | (1 << 31)
    | (1 << 32)
    | (1 << 33));

/// Print each step (`rpatch.trace` on the kernel command line).
pub static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The latest steps, printed when a scenario hangs.
pub static RECENT: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Records a step (and prints it with `rpatch.trace`).
pub fn record(line: String) {
    if TRACE.load(std::sync::atomic::Ordering::Relaxed) {
        println!("trace: {line}");
    }
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if recent.len() == 40 {
        recent.pop_front();
    }
    recent.push_back(line);
}

macro_rules! trace {
    ($($arg:tt)*) => {
        record(format!($($arg)*))
    };
}

/// How long a bootstrap or a call may take (a loaded host runs the emulator slowly).
const DEADLINE: Duration = Duration::from_secs(60);

/// How many times a thread is let go for the kernel to decide a restart before its call is
/// re-issued as it stands.
const ASK_KERNEL_ROUNDS: u32 = 8;

/// One mapping of /proc/PID/maps.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub path: String,
}

pub fn maps(pid: i32) -> Result<Vec<Mapping>, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms, offset) = (f.next()?, f.next()?, f.next()?);
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms: perms.to_string(),
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: f.nth(2).unwrap_or("").to_string(),
            })
        })
        .collect())
}

/// Addresses in the target's libc.
#[derive(Debug, Clone, Copy)]
pub struct Libc {
    pub getpid: u64,
    pub dlopen: u64,
    pub dlerror: u64,
    pub errno_location: u64,
}

/// Where `path` (a loaded module) starts, and its file bytes.
pub(crate) fn module(pid: i32, suffix: &str) -> Result<(u64, String, Vec<u8>), String> {
    let m = maps(pid)?
        .into_iter()
        .find(|m| m.path.ends_with(suffix) && m.offset == 0)
        .ok_or(format!("{suffix} not mapped in {pid}"))?;
    let bytes = std::fs::read(&m.path).map_err(|e| format!("{}: {e}", m.path))?;
    Ok((m.start, m.path, bytes))
}

pub fn libc(pid: i32) -> Result<Libc, String> {
    let (base, path, bytes) = module(pid, "/libc.so.6")?;
    let elf = object::File::parse(&*bytes).map_err(|e| format!("{path}: {e}"))?;
    let find = |name: &str| {
        elf.dynamic_symbols()
            .find(|s| s.name() == Ok(name) && s.address() != 0)
            .map(|s| base + s.address())
            .ok_or(format!("{name} not in {path}"))
    };
    Ok(Libc {
        getpid: find("getpid")?,
        dlopen: find("dlopen")?,
        dlerror: find("dlerror")?,
        errno_location: find("__errno_location")?,
    })
}

/// Never-executed bytes at the end of an executable mapping of libc or the target's executable:
/// past the end of the executable segment's file contents, within its last page.
fn slack(pid: i32) -> Result<u64, String> {
    let maps = maps(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    for suffix in ["/libc.so.6", exe.as_str()] {
        let (base, path, bytes) = module(pid, suffix)?;
        let elf = object::File::parse(&*bytes).map_err(|e| format!("{path}: {e}"))?;
        for seg in elf.segments() {
            let object::SegmentFlags::Elf { p_flags, .. } = seg.flags() else {
                continue;
            };
            if p_flags & object::elf::PF_X == object::elf::ProgramFlags(0) {
                continue;
            }
            let end = (base + seg.address() + seg.file_range().1).next_multiple_of(16);
            if let Some(m) = maps
                .iter()
                .find(|m| m.start < end && end <= m.end && m.perms.contains('x'))
                && m.end - end >= stub::BOOTSTRAP_LEN as u64
            {
                return Ok(end);
            }
        }
    }
    Err("no slack after an executable segment".into())
}

/// A free, page-aligned range of `len` bytes for the stub region, below libc's code and within
/// 120 MiB of it, so the return slot reaches a thread resuming in libc with a `b`.
fn free_base(pid: i32, len: u64, page: u64) -> Result<u64, String> {
    let maps = maps(pid)?;
    let libc = maps
        .iter()
        .find(|m| m.path.ends_with("/libc.so.6") && m.perms.contains('x'))
        .ok_or("libc has no code mapping")?;
    (1..120)
        .filter_map(|mib: u64| libc.start.checked_sub((mib << 20) + len))
        .map(|b| b & !(page - 1))
        .find(|&b| !maps.iter().any(|m| m.start < b + len && b < m.end))
        .ok_or("no free range near libc".into())
}

/// The call /proc/PID/task/TID/syscall shows, if the thread is blocked in one.
pub fn blocked_call(pid: i32, tid: i32) -> Option<BlockedCall> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    let nr: i64 = f.first()?.parse().ok()?;
    if nr < 0 || f.len() != 9 {
        return None;
    }
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut args = [0u64; 6];
    for (a, s) in args.iter_mut().zip(&f[1..7]) {
        *a = hex(s)?;
    }
    Some(BlockedCall {
        nr: nr as u64,
        args,
        pc: hex(f[8])?,
    })
}

/// Whether a signal is pending for thread `tid` itself (its EINTR is then its own).
fn thread_signal_pending(pid: i32, tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("SigPnd:"))?;
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .is_none_or(|bits| bits != 0)
}

/// Waits (up to `limit`) until `tid` is blocked in a system call.
pub fn wait_blocked(pid: i32, tid: i32, limit: Duration) -> Option<BlockedCall> {
    let until = Instant::now() + limit;
    loop {
        if let Some(b) = blocked_call(pid, tid) {
            return Some(b);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Waits until `tid` of `pid` is blocked in system call `nr`.
pub fn wait_in_call(pid: i32, tid: i32, nr: u64) -> Result<(), String> {
    let start = Instant::now();
    while blocked_call(pid, tid).is_none_or(|b| b.nr != nr) {
        if start.elapsed() > DEADLINE {
            return Err(format!("thread {tid} is not blocked in system call {nr}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// A thread's registers, FP/SIMD state and signal mask at a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub regs: ResumeState,
    pub fp: FpState,
    pub mask: u64,
}

impl Snapshot {
    /// Of stopped thread `tid`.
    pub fn take(tid: i32) -> Result<Self, String> {
        let regs = ptrace::get_regset(tid, NT_PRSTATUS, ResumeState::PRSTATUS_LEN)
            .map_err(|e| e.to_string())?;
        let fp =
            ptrace::get_regset(tid, NT_PRFPREG, FpState::PRFPREG_LEN).map_err(|e| e.to_string())?;
        Ok(Self {
            regs: ResumeState::from_prstatus(&regs).ok_or("short NT_PRSTATUS")?,
            fp: FpState::from_prfpreg(&fp).ok_or("short NT_PRFPREG")?,
            mask: ptrace::get_sigmask(tid).map_err(|e| e.to_string())?,
        })
    }

    /// What differs from `other`, in words.
    pub fn diff(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let (a, b) = (self.regs.words(), other.regs.words());
        for i in 0..34 {
            if a[i] != b[i] {
                let name = match i {
                    31 => "sp".to_string(),
                    32 => "pc".to_string(),
                    33 => "pstate".to_string(),
                    n => format!("x{n}"),
                };
                out.push(format!("{name} {:#x} -> {:#x}", a[i], b[i]));
            }
        }
        if self.fp != other.fp {
            out.push("FP/SIMD state".into());
        }
        if self.mask != other.mask {
            out.push(format!("mask {:#x} -> {:#x}", self.mask, other.mask));
        }
        out
    }
}

/// The vector state of stopped thread `tid` (absent register sets: no SVE/SME here).
pub fn vector_state(tid: i32) -> VectorState {
    let header = |nt: u32| ptrace::get_regset(tid, nt.into(), vector::HEADER_LEN).ok();
    let (sve, ssve, za) = (
        header(vector::NT_ARM_SVE),
        header(vector::NT_ARM_SSVE),
        header(vector::NT_ARM_ZA),
    );
    VectorState::from_headers(sve.as_deref(), ssve.as_deref(), za.as_deref())
}

/// The thread's state at its own code, where it resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtRest {
    /// Where it resumes (PSTATE cleaned, a spurious EINTR undone, x8 = restart_syscall where
    /// the kernel said so).
    pub resume: ResumeState,
    pub fp: FpState,
    pub mask: u64,
}

/// rpatch's code the thread may be running, which decides what a stop means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    /// Its own code.
    Nothing,
    /// The bootstrap, at this slack address.
    Bootstrap(u64),
    /// The stub's code page.
    Stub,
}

/// A thread borrowed for remote calls.
pub struct Session {
    pub pid: i32,
    pub tid: i32,
    mem: File,
    pub region: StubRegion,
    stub: CallStub,
    pub at_rest: AtRest,
    /// How long the bootstrap and the stub wait for the tracer at their park.
    pub park: Duration,
    /// Bootstrap runs in this session (0: an idle region was reused).
    pub bootstrap_runs: u32,
    /// The bootstrap was cut short by a signal delivered at the thread's own code.
    cut_short: bool,
    /// Signals delivered after moving the thread out of the bootstrap or the stub's tail.
    pub signals_moved: u32,
    /// Signals delivered where the thread was (its own code, or the stub before the tail).
    pub signals_in_place: u32,
    /// Times the thread was let go for the kernel to decide a restart.
    pub asked_kernel: u32,
    /// The return slot of the latest call was a `b` (a return without the tracer is exact).
    pub exact_slot: bool,
    /// Stops where an interrupt made an EINTR-only call fail and its arguments were not
    /// known, so the EINTR could not be undone (what /proc showed before each).
    pub lost_eintr: Vec<String>,
    /// Signals to send to the thread, each once: right before it is first sent into the
    /// bootstrap or the stub, or when a call is first seen over (`(signal, at)`), for the
    /// signal scenarios.
    pub inject: Vec<(i32, Moment)>,
    /// A signal was delivered at the thread's own code since it was last at rest: it may be in
    /// the handler.
    signalled: bool,
    /// The thread is traced by this session.
    attached: bool,
    /// Its signal mask when it was seized.
    own_mask: u64,
    /// The thread was resumed and its next stop not yet seen.
    running: bool,
}

/// When a scenario sends a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    /// Right before the thread is sent into the bootstrap.
    Bootstrap,
    /// Right before the thread is sent into the stub.
    StubEntry,
    /// When `DONE` says the call is over (the thread is at, or on its way to, the park); the
    /// signal must be one the call does not block, and its stop is waited for.
    Park,
}

fn e(err: std::io::Error) -> String {
    err.to_string()
}

impl Session {
    /// Seizes and stops `tid` at its own code, and makes sure the stub region exists: the one
    /// at `reuse`, or a new one mapped through the bootstrap.
    pub fn begin(pid: i32, tid: i32, reuse: Option<u64>) -> Result<Self, String> {
        let mut s = Self::seize(pid, tid)?;
        s.open(reuse)?;
        Ok(s)
    }

    /// Seizes and stops `tid` at its own code (nothing of rpatch's in the target yet).
    pub fn seize(pid: i32, tid: i32) -> Result<Self, String> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(e)?;
        let auxv = std::fs::read(format!("/proc/{pid}/auxv")).map_err(e)?;
        let page = page_size_from_auxv(&auxv).ok_or("no AT_PAGESZ")?;
        ptrace::seize(tid).map_err(e)?;
        let zero = AtRest {
            resume: ResumeState::default(),
            fp: FpState::default(),
            mask: 0,
        };
        let mut s = Self {
            pid,
            tid,
            mem,
            region: StubRegion { base: 0, page },
            stub: stub::call_stub(page),
            at_rest: zero,
            park: stub::PARK_TIME,
            bootstrap_runs: 0,
            cut_short: false,
            signals_moved: 0,
            signals_in_place: 0,
            asked_kernel: 0,
            exact_slot: false,
            lost_eintr: Vec::new(),
            inject: Vec::new(),
            signalled: false,
            attached: true,
            running: true,
            own_mask: 0,
        };
        s.settle(Own::Nothing)?;
        s.own_mask = s.at_rest.mask;
        Ok(s)
    }

    /// Checks the thread may be borrowed, and reuses or bootstraps the region.
    pub fn open(&mut self, reuse: Option<u64>) -> Result<(), String> {
        let on_svc = self.on_svc(self.at_rest.resume.pc);
        let vector = vector_state(self.tid);
        vector
            .may_borrow()
            .map_err(|r| format!("thread {}: {r}", self.tid))?;
        // rpatch saves a live SVE state whole (NT_ARM_SVE); this harness keeps NT_PRFPREG only,
        // which is everything once the thread's call on its `svc` discarded the rest.
        if vector.sve_live && !on_svc {
            return Err(format!(
                "thread {}: live SVE state, which this harness does not save",
                self.tid
            ));
        }
        match reuse {
            Some(base) => {
                self.region.base = base;
                let done = self.read_word(self.region.data() + data::DONE)?;
                if done != Done::Settled as u64 {
                    return Err(format!("region at {base:#x} is not idle (DONE {done})"));
                }
                let found = self.read(self.region.code(), self.region.page as usize)?;
                if !self.stub.matches(&found) {
                    return Err(format!("no stub of ours at {base:#x}"));
                }
                Ok(())
            }
            None => self.bootstrap(false),
        }
    }

    fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        self.mem
            .read_exact_at(&mut b, addr)
            .map_err(|err| format!("read {addr:#x}: {err}"))?;
        Ok(b)
    }

    fn read_word(&self, addr: u64) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.read(addr, 8)?.try_into().unwrap()))
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), String> {
        self.mem
            .write_all_at(bytes, addr)
            .map_err(|err| format!("write {addr:#x}: {err}"))
    }

    fn on_svc(&self, pc: u64) -> bool {
        self.read(pc, 4)
            .is_ok_and(|w| u32::from_le_bytes(w.try_into().unwrap()) == SVC0)
    }

    /// PTRACE_CONT, delivering `sig` (0: none).
    fn cont(&mut self, sig: i32) -> Result<(), String> {
        ptrace::cont(self.tid, sig).map_err(e)?;
        self.running = true;
        Ok(())
    }

    fn regs(&self) -> Result<ResumeState, String> {
        Ok(Snapshot::take(self.tid)?.regs)
    }

    fn set_regs(&self, regs: &ResumeState) -> Result<(), String> {
        ptrace::set_regset(self.tid, NT_PRSTATUS, &regs.to_prstatus()).map_err(e)
    }

    /// Puts the thread at its resume state: registers (PSTATE.BTYPE clear), FP/SIMD state and
    /// its own signal mask, all with ptrace. What the tracer does at the park.
    fn move_to_resume(&self) -> Result<(), String> {
        self.set_regs(&self.at_rest.resume.cleaned())?;
        ptrace::set_regset(self.tid, NT_PRFPREG, &self.at_rest.fp.to_prfpreg()).map_err(e)?;
        ptrace::set_sigmask(self.tid, self.at_rest.mask).map_err(e)
    }

    fn contains(&self, own: Own, pc: u64) -> bool {
        match own {
            Own::Nothing => false,
            Own::Bootstrap(slack) => (slack..slack + stub::BOOTSTRAP_LEN as u64).contains(&pc),
            Own::Stub => self.region.in_code(pc),
        }
    }

    /// At or past the park: the thread's work in rpatch's code is over.
    fn in_tail(&self, own: Own, pc: u64) -> bool {
        self.contains(own, pc)
            && match own {
                Own::Nothing => false,
                Own::Bootstrap(slack) => pc >= slack + BOOTSTRAP_PARK,
                Own::Stub => pc >= self.region.code() + self.stub.tail,
            }
    }

    /// A fault raised by the code the thread runs (not sent from outside).
    fn raised_here(&self) -> bool {
        match ptrace::siginfo(self.tid) {
            Ok((code, pid)) => code > 0 || pid == self.pid,
            Err(_) => true,
        }
    }

    /// The thread is in a signal-delivery stop for `sig` (see the module documentation).
    fn pass_signal(&mut self, sig: i32, own: Own) -> Result<(), String> {
        let regs = self.regs()?;
        trace!("signal {sig} at {:#x} ({own:?})", regs.pc);
        let fault = matches!(
            sig,
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
        );
        if self.contains(own, regs.pc) && fault && self.raised_here() {
            // rpatch's own code faulted: put the thread back, suppress the fault.
            self.move_to_resume()?;
            return Err(format!(
                "signal {sig} raised in rpatch's code at {:#x}",
                regs.pc
            ));
        }
        let moved = match own {
            Own::Bootstrap(_) if self.contains(own, regs.pc) => {
                self.cut_short = true;
                true
            }
            Own::Stub if self.in_tail(own, regs.pc) => {
                let returning = (Done::Returning as u64).to_le_bytes();
                self.write(self.region.data() + data::DONE, &returning)?;
                true
            }
            _ => false,
        };
        if moved {
            self.move_to_resume()?;
            self.signals_moved += 1;
        } else {
            self.signals_in_place += 1;
        }
        self.signalled |= moved || !self.contains(own, regs.pc);
        self.cont(sig)
    }

    /// Stops the running thread (a stop already reported is taken as is); signals reported
    /// before the stop go through `pass_signal`. Returns its registers.
    fn interrupt(&mut self, own: Own) -> Result<ResumeState, String> {
        let mut asked = false;
        loop {
            let stop = match ptrace::poll_stop(self.tid)? {
                Some(stop) => stop,
                None => {
                    if !asked {
                        ptrace::interrupt(self.tid).map_err(e)?;
                        asked = true;
                    }
                    ptrace::wait_stop(self.tid)?
                }
            };
            trace!("stop {stop:?} (asked {asked})");
            self.running = false;
            match stop {
                Stop::Event => return self.regs(),
                Stop::Signal(sig) => self.pass_signal(sig, own)?,
            }
        }
    }

    /// Stops the thread at its own code and records where it resumes; a thread still in `own`
    /// is moved there once at its park (the call or bootstrap is over), or let run on until it
    /// is.
    fn settle(&mut self, own: Own) -> Result<(), String> {
        let start = Instant::now();
        let mut rounds = 0;
        loop {
            let blocked = blocked_call(self.pid, self.tid).or_else(|| self.resumed_onto_svc());
            let regs = self.interrupt(own)?;
            trace!(
                "settle {own:?}: pc {:#x} x0 {:#x} x8 {}",
                regs.pc, regs.x[0], regs.x[8]
            );
            if self.contains(own, regs.pc) {
                if self.in_tail(own, regs.pc) {
                    return self.move_to_resume();
                }
                if start.elapsed() > DEADLINE {
                    return Err(format!(
                        "the thread stays in rpatch's code at {:#x}",
                        regs.pc
                    ));
                }
                self.cont(0)?;
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            let on_svc = self.on_svc(regs.pc);
            let spurious = !thread_signal_pending(self.pid, self.tid);
            let resume = match sys::resume_state(&regs, on_svc, blocked.as_ref(), spurious) {
                Resume::At(state) => state,
                Resume::AskKernel { reissue } if rounds >= ASK_KERNEL_ROUNDS => reissue,
                Resume::AskKernel { .. } => {
                    trace!("asking the kernel");
                    rounds += 1;
                    self.asked_kernel += 1;
                    self.cont(0)?;
                    wait_blocked(self.pid, self.tid, Duration::from_millis(100));
                    continue;
                }
            };
            let eintr = regs.x[0] as i64 == -(libc::EINTR as i64)
                && sys::EINTR_ONLY_SYSCALLS.contains(&regs.x[8]);
            if eintr && resume.pc == regs.pc && spurious {
                self.lost_eintr.push(format!("{blocked:?}"));
            }
            if resume != regs {
                self.set_regs(&resume)?;
            }
            let now = Snapshot::take(self.tid)?;
            self.at_rest = AtRest {
                resume,
                fp: now.fp,
                mask: now.mask,
            };
            return Ok(());
        }
    }

    /// The call the thread was last resumed onto, when its resume PC is an `svc`: /proc shows
    /// nothing when it has not re-entered it yet.
    fn resumed_onto_svc(&self) -> Option<BlockedCall> {
        let resume = self.at_rest.resume;
        (resume.pc != 0 && self.on_svc(resume.pc)).then(|| BlockedCall::resumed_onto_svc(&resume))
    }

    /// After a signal was delivered at the thread's own code it may be inside the handler,
    /// where no call may start: let it run until it is out. (rpatch unwinds the stack to tell;
    /// here a mask other than the thread's own, which a handler adds its signal to, says so.)
    fn leave_handlers(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.signalled) {
            return Ok(());
        }
        let mut rounds = 0;
        while self.at_rest.mask != self.own_mask {
            rounds += 1;
            if rounds > 100 {
                return Err("signals keep the thread in its handlers".into());
            }
            self.cont(0)?;
            std::thread::sleep(Duration::from_millis(1));
            wait_blocked(self.pid, self.tid, Duration::from_millis(200));
            self.settle(Own::Nothing)?;
        }
        self.signalled = false;
        Ok(())
    }

    /// Sends the signals injected for `moment`, once.
    fn send(&mut self, moment: Moment) -> Result<(), String> {
        let (now, later) = self.inject.iter().partition(|(_, at)| *at == moment);
        self.inject = later;
        for (sig, _) in now {
            ptrace::tgkill(self.pid, self.tid, sig).map_err(e)?;
        }
        Ok(())
    }

    /// Maps the region with the bootstrap from slack bytes, which are put back afterwards; run
    /// again when a signal cut it short. With `vanish`, the tracer lets the thread go at the
    /// park instead of moving it (as if rpatch died there): the thread returns by itself and
    /// the slack is left for the caller to restore.
    fn bootstrap(&mut self, vanish: bool) -> Result<(), String> {
        let slack = slack(self.pid)?;
        self.region.base = free_base(self.pid, self.region.len(), self.region.page)?;
        let r = self.region;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let code_page = Syscall {
            nr: sys::SYS_MMAP,
            args: [
                r.code(),
                r.page,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                flags,
                u64::MAX,
                0,
            ],
        };
        let rw = Syscall {
            nr: sys::SYS_MMAP,
            args: [
                r.rw_start(),
                r.rw_len(),
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                flags,
                u64::MAX,
                0,
            ],
        };
        let saved = self.read(slack, stub::BOOTSTRAP_LEN)?;
        for _ in 0..4 {
            self.leave_handlers()?;
            let rest = self.at_rest;
            let frame_at = stub::bootstrap_frame_addr(rest.resume.sp)
                .ok_or("the thread's stack pointer is not 16-byte aligned")?;
            let frame = stub::bootstrap_frame(&rw, rest.mask, self.park, &rest.resume);
            self.write(frame_at, &frame)?;
            self.write(slack, &stub::bootstrap_code())?;
            ptrace::set_sigmask(self.tid, BLOCK_MASK | rest.mask).map_err(e)?;
            let mut regs = rest.resume.cleaned();
            (regs.pc, regs.sp) = (slack, frame_at);
            regs.x[8] = code_page.nr;
            regs.x[..6].copy_from_slice(&code_page.args);
            self.set_regs(&regs)?;
            trace!("bootstrap at {slack:#x}, region {:#x}", r.base);
            self.send(Moment::Bootstrap)?;
            self.bootstrap_runs += 1;
            self.cont(0)?;
            if vanish {
                return self.vanish_at_park(Own::Bootstrap(slack));
            }
            let settled = self.settle(Own::Bootstrap(slack));
            // At its own code (or failed): the slack goes back.
            self.write(slack, &saved)?;
            settled?;
            // Out of any handler a signal cut short the bootstrap for, its mask is its own.
            self.leave_handlers()?;
            if self.at_rest.mask != rest.mask {
                return Err(format!(
                    "signal mask after the bootstrap {:#x}, was {:#x}",
                    self.at_rest.mask, rest.mask
                ));
            }
            let m = maps(self.pid)?;
            let mapped = m
                .iter()
                .any(|m| m.start == r.code() && m.perms.starts_with("r-x"))
                && m.iter()
                    .any(|m| m.start == r.rw_start() && m.perms.starts_with("rw"));
            if mapped {
                self.write(r.code(), &self.stub.code)?;
                self.write(r.data(), &stub::idle_header(r.data_len()))?;
                return Ok(());
            }
            if !std::mem::take(&mut self.cut_short) {
                return Err("the bootstrap's mmaps failed".into());
            }
        }
        Err("signals kept cutting the bootstrap short".into())
    }

    /// Waits until the thread is at the park of `own`, then lets it go there without moving
    /// it: what a tracer that dies at that moment leaves.
    fn vanish_at_park(&mut self, own: Own) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let regs = self.interrupt(own)?;
            if self.in_tail(own, regs.pc) {
                self.attached = false;
                return ptrace::detach(self.tid).map_err(e);
            }
            if start.elapsed() > DEADLINE {
                return Err(format!("never reached the park ({:#x})", regs.pc));
            }
            self.cont(0)?;
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Maps the region through a bootstrap the tracer abandons at its park (see
    /// [`Self::bootstrap`]); returns the slack address and its original bytes.
    pub fn bootstrap_and_vanish(mut self) -> Result<(u64, Vec<u8>), String> {
        let slack = slack(self.pid)?;
        let saved = self.read(slack, stub::BOOTSTRAP_LEN)?;
        self.bootstrap(true)?;
        Ok((slack, saved))
    }

    /// Arms one call and sends the thread into the stub.
    fn arm(&mut self, function: u64, args: [u64; 6], then: u64, errno: u64) -> Result<(), String> {
        self.leave_handlers()?;
        let r = self.region;
        let block = CallBlock {
            function,
            args,
            errno_location: errno,
            then_if_zero: then,
            mask: self.at_rest.mask,
            resume: self.at_rest.resume,
            park: self.park,
        };
        self.write(r.data(), &block.encode(r.data_len()))?;
        let slot_at = r.code() + self.stub.slot;
        let slot = stub::return_slot(slot_at, self.at_rest.resume.pc);
        self.exact_slot = slot.exact;
        self.write(slot_at, &slot.bytes[..RETURN_SLOT_LEN])?;
        let mut regs = self.at_rest.resume.cleaned();
        (regs.pc, regs.sp) = (r.code() + self.stub.entry, r.stack_top());
        self.set_regs(&regs)?;
        ptrace::set_sigmask(self.tid, BLOCK_MASK | self.at_rest.mask).map_err(e)?;
        trace!("call {function:#x} from {:#x}", self.at_rest.resume.pc);
        self.send(Moment::StubEntry)?;
        self.cont(0)
    }

    /// Calls `function(args)` (and `then` when it returns 0) in the thread; returns both
    /// results.
    pub fn call(
        &mut self,
        function: u64,
        args: [u64; 6],
        then: u64,
        errno_location: u64,
    ) -> Result<(u64, u64), String> {
        let r = self.region;
        self.arm(function, args, then, errno_location)?;
        let start = Instant::now();
        loop {
            match ptrace::poll_stop(self.tid)? {
                Some(Stop::Signal(sig)) => {
                    self.running = false;
                    self.pass_signal(sig, Own::Stub)?
                }
                Some(Stop::Event) => {
                    self.running = false;
                    self.cont(0)?
                }
                None => {}
            }
            if self.read_word(r.data() + data::DONE)? != Done::Running as u64 {
                break;
            }
            if start.elapsed() > DEADLINE {
                return Err("the call did not return in time".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        trace!("call over (DONE set)");
        if self.inject.iter().any(|&(_, at)| at == Moment::Park) {
            // The thread is parked: its stop for the signal comes before any interrupt.
            self.send(Moment::Park)?;
            match ptrace::wait_stop(self.tid)? {
                Stop::Signal(sig) => {
                    self.running = false;
                    self.pass_signal(sig, Own::Stub)?
                }
                Stop::Event => return Err("an event stop instead of the signal".into()),
            }
        }
        self.settle(Own::Stub)?;
        let result = self.read_word(r.data() + data::RESULT)?;
        let then_result = self.read_word(r.data() + data::THEN_RESULT)?;
        self.write(r.data() + data::DONE, &(Done::Settled as u64).to_le_bytes())?;
        Ok((result, then_result))
    }

    /// Arms a call and, as soon as the thread runs it, lets it go wherever it is: what a tracer
    /// that dies mid-call leaves. The thread finishes the call and returns by itself after the
    /// park time.
    pub fn call_and_vanish(mut self, function: u64, errno_location: u64) -> Result<(), String> {
        self.arm(function, [0; 6], 0, errno_location)?;
        self.interrupt(Own::Stub)?;
        self.attached = false;
        ptrace::detach(self.tid).map_err(e)
    }

    /// Writes `s` NUL-terminated into the data block's scratch area; returns its address.
    pub fn scratch_string(&self, s: &str) -> Result<u64, String> {
        let at = self.region.data() + self.region.scratch_offset();
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        self.write(at, &bytes)?;
        Ok(at)
    }

    /// Reads a NUL-terminated string of the target.
    pub fn read_string(&self, addr: u64) -> String {
        let b = self.read(addr, 256).unwrap_or_default();
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    /// Lets the thread go from its resume state (it is stopped there).
    pub fn end(mut self) -> Result<(), String> {
        trace!("detach {} at {:#x}", self.tid, self.at_rest.resume.pc);
        self.attached = false;
        ptrace::detach(self.tid).map_err(e)
    }
}

impl Drop for Session {
    /// After a failed scenario: the thread is stopped and let go wherever it is, so the target
    /// can be killed and reaped (a thread still traced by this process could not be).
    fn drop(&mut self) {
        if !self.attached {
            return;
        }
        if self.running {
            let _ = ptrace::interrupt(self.tid);
            while let Ok(Stop::Signal(sig)) = ptrace::wait_stop(self.tid) {
                let _ = ptrace::cont(self.tid, sig);
            }
        }
        let _ = ptrace::detach(self.tid);
    }
}

/// Seizes `tid` of `pid` once it is blocked in system call `nr` again, stops it and returns its
/// state (left stopped-then-detached: nothing is changed).
pub fn snapshot_when_blocked(pid: i32, tid: i32, nr: u64) -> Result<Snapshot, String> {
    wait_in_call(pid, tid, nr)?;
    ptrace::seize(tid).map_err(e)?;
    ptrace::stop(tid)?;
    let snap = Snapshot::take(tid);
    ptrace::detach(tid).map_err(e)?;
    snap
}
