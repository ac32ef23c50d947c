//! Remote calls in a real arm64 process with rpatch-arch's bootstrap and stub: the same steps
//! rpatch's injection layer takes, reduced to what the guest scenarios check.

use crate::ptrace::{self, NT_PRFPREG, NT_PRSTATUS};
use object::{Object, ObjectSegment, ObjectSymbol};
use rpatch_arch::aarch64::remote_call::{
    self as stub, CallBlock, CallStub, Done, FpState, ResumeState, StubRegion, Syscall, data,
};
use rpatch_arch::aarch64::syscall::{self as sys, BlockedCall};
use rpatch_arch::aarch64::{page_size_from_auxv, remote_call::clean_pstate};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Signals blocked while the stub runs: all but the synchronous faults and glibc's internal two.
const BLOCK_MASK: u64 = !((1 << (libc::SIGSEGV - 1))
    | (1 << (libc::SIGBUS - 1))
    | (1 << (libc::SIGILL - 1))
    | (1 << (libc::SIGFPE - 1))
    | (1 << (libc::SIGTRAP - 1))
    | (1 << (libc::SIGABRT - 1))
    | (1 << (libc::SIGSYS - 1))
    | (1 << 31)
    | (1 << 32));

/// How long a bootstrap or a call may take (a loaded host runs the emulator slowly).
const DEADLINE: Duration = Duration::from_secs(60);

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
fn module(pid: i32, suffix: &str) -> Result<(u64, String, Vec<u8>), String> {
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

/// Never-executed bytes at the end of an executable mapping of the target's executable or
/// libc: past the end of the executable segment's file contents, within its last page.
fn slack(pid: i32) -> Result<u64, String> {
    let maps = maps(pid)?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| e.to_string())?
        .to_string_lossy()
        .into_owned();
    for suffix in [exe.as_str(), "/libc.so.6"] {
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

/// A free, page-aligned address range of `len` bytes for the stub region.
fn free_base(pid: i32, len: u64) -> Result<u64, String> {
    let maps = maps(pid)?;
    (0..64)
        .map(|k| 0x10_0000_0000 + k * 0x1000_0000)
        .find(|&b| !maps.iter().any(|m| m.start < b + len && b < m.end))
        .ok_or("no free range".into())
}

/// The call /proc/PID/task/TID/syscall shows, if the thread is blocked in one.
fn blocked_call(pid: i32, tid: i32) -> Option<BlockedCall> {
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

/// The thread's registers, stopped at its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtRest {
    /// Where it resumes (a spurious EINTR undone, PSTATE cleaned).
    pub resume: ResumeState,
    pub fp: FpState,
    pub mask: u64,
    /// The call it was blocked in before the interrupt.
    pub blocked_nr: Option<u64>,
}

/// A thread borrowed for remote calls.
pub struct Session {
    pub pid: i32,
    pub tid: i32,
    mem: File,
    pub region: StubRegion,
    stub: CallStub,
    pub at_rest: AtRest,
    /// The bootstrap ran in this session (else an idle region was reused).
    pub bootstrapped: bool,
    /// Stops where an interrupt made an EINTR-only call fail and its arguments were not
    /// known, so the EINTR could not be undone (what /proc showed before each).
    pub lost_eintr: Vec<String>,
}

impl Session {
    /// Seizes and stops `tid`, and makes sure the stub region exists: the one at `reuse`, or
    /// a new one mapped through the bootstrap.
    pub fn begin(pid: i32, tid: i32, reuse: Option<u64>) -> Result<Self, String> {
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| e.to_string())?;
        let auxv = std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| e.to_string())?;
        let page = page_size_from_auxv(&auxv).ok_or("no AT_PAGESZ")?;
        let stub = stub::call_stub(page);
        ptrace::seize(tid).map_err(|e| e.to_string())?;
        let mut s = Self {
            pid,
            tid,
            mem,
            region: StubRegion { base: 0, page },
            stub,
            at_rest: AtRest {
                resume: ResumeState::default(),
                fp: FpState::default(),
                mask: 0,
                blocked_nr: None,
            },
            bootstrapped: false,
            lost_eintr: Vec::new(),
        };
        s.stop_at_rest()?;
        match reuse {
            Some(base) => {
                s.region.base = base;
                let done = s.read_word(s.region.data() + data::DONE)?;
                if done != Done::Settled as u64 {
                    return Err(format!("region at {base:#x} is not idle (DONE {done})"));
                }
            }
            None => s.bootstrap()?,
        }
        Ok(s)
    }

    fn read_word(&self, addr: u64) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.mem
            .read_exact_at(&mut b, addr)
            .map_err(|e| format!("read {addr:#x}: {e}"))?;
        Ok(u64::from_le_bytes(b))
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), String> {
        self.mem
            .write_all_at(bytes, addr)
            .map_err(|e| format!("write {addr:#x}: {e}"))
    }

    /// Interrupts the running thread and records its state at rest.
    fn stop_at_rest(&mut self) -> Result<(), String> {
        // Not in a call per /proc: it may be about to re-enter the one it was resumed onto.
        let blocked = blocked_call(self.pid, self.tid).or_else(|| self.resumed_onto_svc());
        ptrace::stop(self.tid)?;
        let regs = ptrace::get_regset(self.tid, NT_PRSTATUS, ResumeState::PRSTATUS_LEN)
            .map_err(|e| e.to_string())?;
        let regs = ResumeState::from_prstatus(&regs).ok_or("short NT_PRSTATUS")?;
        let eintr = regs.x[0] as i64 == -(libc::EINTR as i64)
            && sys::EINTR_ONLY_SYSCALLS.contains(&regs.x[8]);
        if eintr && sys::resume_state(&regs, blocked.as_ref(), true).pc == regs.pc {
            self.lost_eintr.push(format!("{:?}", blocked));
        }
        let fp = ptrace::get_regset(self.tid, NT_PRFPREG, FpState::PRFPREG_LEN)
            .map_err(|e| e.to_string())?;
        self.at_rest = AtRest {
            resume: sys::resume_state(&regs, blocked.as_ref(), true),
            fp: FpState::from_prfpreg(&fp).ok_or("short NT_PRFPREG")?,
            mask: ptrace::get_sigmask(self.tid).map_err(|e| e.to_string())?,
            blocked_nr: blocked.map(|b| b.nr),
        };
        Ok(())
    }

    /// The call the thread was last resumed onto, when its resume PC is an `svc`.
    fn resumed_onto_svc(&self) -> Option<BlockedCall> {
        let resume = self.at_rest.resume;
        let mut w = [0u8; 4];
        self.mem.read_exact_at(&mut w, resume.pc).ok()?;
        (u32::from_le_bytes(w) == rpatch_arch::aarch64::insn::SVC0)
            .then(|| BlockedCall::resumed_onto_svc(&resume))
    }

    /// Runs the thread from `pc` with `sp` (and `set` for the other registers) until `back`
    /// says it is done, then stops it again at its own code (outside `own`).
    fn run(
        &mut self,
        pc: u64,
        sp: u64,
        set: impl FnOnce(&mut ResumeState),
        own: std::ops::Range<u64>,
        back: impl Fn(&Self) -> Result<bool, String>,
    ) -> Result<(), String> {
        let mut regs = self.at_rest.resume;
        regs.pc = pc;
        regs.sp = sp;
        regs.pstate = clean_pstate(regs.pstate);
        set(&mut regs);
        ptrace::set_regset(self.tid, NT_PRSTATUS, &regs.to_prstatus())
            .map_err(|e| e.to_string())?;
        ptrace::cont(self.tid, 0).map_err(|e| e.to_string())?;
        let start = Instant::now();
        loop {
            if start.elapsed() > DEADLINE {
                return Err("the thread did not come back in time".into());
            }
            if back(self)? {
                self.stop_at_rest()?;
                if !own.contains(&self.at_rest.resume.pc) {
                    return Ok(());
                }
                ptrace::cont(self.tid, 0).map_err(|e| e.to_string())?;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Maps the region with the bootstrap from slack bytes, which are put back afterwards.
    fn bootstrap(&mut self) -> Result<(), String> {
        let slack = slack(self.pid)?;
        self.region.base = free_base(self.pid, self.region.len())?;
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
        let rest = self.at_rest;
        let frame_at = stub::bootstrap_frame_addr(rest.resume.sp);
        let frame = stub::bootstrap_frame(&rw, rest.mask, &rest.resume, &rest.fp);
        let mut saved = vec![0u8; stub::BOOTSTRAP_LEN];
        self.mem
            .read_exact_at(&mut saved, slack)
            .map_err(|e| e.to_string())?;
        self.write(frame_at, &frame)?;
        self.write(slack, &stub::bootstrap_code())?;
        ptrace::set_sigmask(self.tid, !0).map_err(|e| e.to_string())?;
        let mapped = |s: &Self| -> Result<bool, String> {
            let m = maps(s.pid)?;
            Ok(m.iter()
                .any(|m| m.start == r.code() && m.perms.starts_with("r-x"))
                && m.iter()
                    .any(|m| m.start == r.rw_start() && m.perms.starts_with("rw")))
        };
        let ran = self.run(
            slack,
            frame_at,
            |regs| {
                regs.x[8] = code_page.nr;
                regs.x[..6].copy_from_slice(&code_page.args);
            },
            slack..slack + stub::BOOTSTRAP_LEN as u64,
            mapped,
        );
        // The thread is stopped at its own code (or the run failed): the slack goes back.
        self.write(slack, &saved)?;
        ran?;
        if self.at_rest.mask != rest.mask {
            return Err(format!(
                "signal mask after the bootstrap {:#x}, was {:#x}",
                self.at_rest.mask, rest.mask
            ));
        }
        self.write(r.code(), &self.stub.code)?;
        self.write(r.data(), &stub::idle_header(r.data_len()))?;
        self.bootstrapped = true;
        Ok(())
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
        let block = CallBlock {
            function,
            args,
            errno_location,
            then_if_zero: then,
            block_mask: BLOCK_MASK,
            resume: self.at_rest.resume,
        };
        self.write(r.data(), &block.encode(r.data_len()))?;
        let done = |s: &Self| Ok(s.read_word(r.data() + data::DONE)? == Done::Returning as u64);
        self.run(
            r.code() + self.stub.entry,
            r.stack_top(),
            |_| {},
            r.code()..r.code() + r.page,
            done,
        )?;
        let result = self.read_word(r.data() + data::RESULT)?;
        let then_result = self.read_word(r.data() + data::THEN_RESULT)?;
        self.write(r.data() + data::DONE, &(Done::Settled as u64).to_le_bytes())?;
        Ok((result, then_result))
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
        let mut b = vec![0u8; 256];
        let _ = self.mem.read_at(&mut b, addr);
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }

    /// Lets the thread go, from its resume state (a spurious EINTR undone).
    pub fn end(self) -> Result<(), String> {
        let regs = self.at_rest.resume.to_prstatus();
        ptrace::set_regset(self.tid, NT_PRSTATUS, &regs).map_err(|e| e.to_string())?;
        ptrace::detach(self.tid).map_err(|e| e.to_string())
    }
}
