//! The few ptrace requests the guest's tracer needs, on one thread of a target.

use std::io;

const PTRACE_CONT: libc::c_uint = 7;
const PTRACE_DETACH: libc::c_uint = 17;
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GETSIGINFO: libc::c_uint = 0x4202;
const PTRACE_EVENT_STOP: i32 = 128;
/// `NT_PRSTATUS`: x0..x30, sp, pc, pstate.
pub const NT_PRSTATUS: u64 = 1;
/// `NT_PRFPREG`: V0..V31, FPSR, FPCR.
pub const NT_PRFPREG: u64 = 2;

fn check(rc: libc::c_long, what: &str, tid: i32) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what} of {tid}: {e}")));
    }
    Ok(())
}

fn request(req: libc::c_uint, tid: i32, addr: u64, data: u64, what: &str) -> io::Result<()> {
    // SAFETY: ptrace with integer arguments, or pointers to live buffers the caller owns.
    let rc = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    check(rc, what, tid)
}

/// Seizes `tid` without stopping it.
pub fn seize(tid: i32) -> io::Result<()> {
    request(PTRACE_SEIZE, tid, 0, 0, "PTRACE_SEIZE")
}

/// Asks a seized thread to stop.
pub fn interrupt(tid: i32) -> io::Result<()> {
    request(PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT")
}

/// Resumes a stopped thread, delivering `sig` (0: none).
pub fn cont(tid: i32, sig: i32) -> io::Result<()> {
    request(PTRACE_CONT, tid, 0, sig as u64, "PTRACE_CONT")
}

/// Lets the thread go.
pub fn detach(tid: i32) -> io::Result<()> {
    request(PTRACE_DETACH, tid, 0, 0, "PTRACE_DETACH")
}

/// How a thread stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A PTRACE_INTERRUPT (or group) stop.
    Event,
    /// A signal about to be delivered.
    Signal(i32),
}

/// Waits for `tid`'s next stop (`None` with `WNOHANG` in `flags` when there is none yet).
fn wait(tid: i32, flags: i32) -> Result<Option<Stop>, String> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local.
    let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | flags) };
    if rc < 0 {
        return Err(format!("waitpid {tid}: {}", io::Error::last_os_error()));
    }
    if rc == 0 {
        return Ok(None);
    }
    if libc::WIFSTOPPED(status) {
        return Ok(Some(if status >> 16 == PTRACE_EVENT_STOP {
            Stop::Event
        } else {
            Stop::Signal(libc::WSTOPSIG(status))
        }));
    }
    Err(format!("thread {tid} ended (status {status:#x})"))
}

/// Waits for `tid`'s next stop.
pub fn wait_stop(tid: i32) -> Result<Stop, String> {
    Ok(wait(tid, 0)?.expect("a blocking wait reports a stop"))
}

/// `tid`'s stop if one is already there.
pub fn poll_stop(tid: i32) -> Result<Option<Stop>, String> {
    wait(tid, libc::WNOHANG)
}

/// `(si_code, si_pid)` of the signal `tid` is stopped for.
pub fn siginfo(tid: i32) -> io::Result<(i32, i32)> {
    // SAFETY: siginfo_t is plain data; PTRACE_GETSIGINFO fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    request(
        PTRACE_GETSIGINFO,
        tid,
        0,
        &raw mut info as u64,
        "PTRACE_GETSIGINFO",
    )?;
    // SAFETY: si_pid is read for every signal; for kernel-raised faults it is the union's
    // address field, only compared with a pid, never used.
    Ok((info.si_code, unsafe { info.si_pid() }))
}

/// Sends `sig` to thread `tid` of process `pid`.
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: a system call with integer arguments.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    check(rc, "tgkill", tid)
}

/// Stops `tid` (which runs): interrupt, then wait, passing on any signal that arrives first.
pub fn stop(tid: i32) -> Result<(), String> {
    interrupt(tid).map_err(|e| e.to_string())?;
    loop {
        match wait_stop(tid)? {
            Stop::Event => return Ok(()),
            Stop::Signal(sig) => {
                // A signal arrived before the interrupt took effect: deliver it and wait on.
                cont(tid, sig).map_err(|e| e.to_string())?;
            }
        }
    }
}

/// Reads register set `nt` into a buffer of `len` bytes (or fewer: what the kernel filled).
pub fn get_regset(tid: i32, nt: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: len,
    };
    request(
        PTRACE_GETREGSET,
        tid,
        nt,
        &raw mut iov as u64,
        "PTRACE_GETREGSET",
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes register set `nt`.
pub fn set_regset(tid: i32, nt: u64, bytes: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    request(
        PTRACE_SETREGSET,
        tid,
        nt,
        &raw mut iov as u64,
        "PTRACE_SETREGSET",
    )
}

/// The thread's signal mask.
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    request(
        PTRACE_GETSIGMASK,
        tid,
        8,
        &raw mut mask as u64,
        "PTRACE_GETSIGMASK",
    )?;
    Ok(mask)
}

/// Sets the thread's signal mask.
pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    let mut mask = mask;
    request(
        PTRACE_SETSIGMASK,
        tid,
        8,
        &raw mut mask as u64,
        "PTRACE_SETSIGMASK",
    )
}
