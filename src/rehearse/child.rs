//! The processes a rehearsal starts (target, probes, load), the signals that stop it, and the
//! one way the main thread waits for any of them.
//!
//! Every process is the leader of its own process group, so that it and whatever it starts can be
//! killed together, and gets `PR_SET_PDEATHSIG(SIGKILL)`, so that it dies with rehearse even when
//! rehearse is killed with SIGKILL. The death signal follows the parent *thread*: spawn only from
//! the thread that lives as long as the rehearsal (the main thread). Processes a child starts do
//! not inherit the death signal, and one that leaves the group (`setsid`) escapes the group kill.

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The signals that interrupt a rehearsal: SIGTERM (CI cancelling the job), SIGINT (Ctrl-C) and
/// SIGHUP (the terminal went away).
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Write end of the self-pipe the handler writes to (-1 when no [`Signals`] is installed).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The first stop signal received while a [`Signals`] is installed (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// Whether a [`Signals`] is installed (one at a time: the handler's state is global).
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // Only async-signal-safe work: atomics and write(2), with errno preserved.
    let _ = CAUGHT.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: __errno_location returns this thread's errno slot; write(2) gets a valid
        // one-byte buffer; the pipe is non-blocking, so a full pipe cannot block the handler.
        unsafe {
            let errno = *libc::__errno_location();
            let _ = libc::write(fd, [1u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// While alive, SIGTERM, SIGINT and SIGHUP no longer end the process: they are recorded and wake
/// [`wait`] through a self-pipe, so that the rehearsal can kill and reap what it started first.
/// Dropping it restores the dispositions it found.
pub struct Signals {
    read: OwnedFd,
    /// Kept open while the handler may write to it.
    _write: OwnedFd,
    previous: Vec<(Signal, nix::sys::signal::SigAction)>,
}

impl Signals {
    /// Installs the handlers (one `Signals` at a time in a process).
    pub fn install() -> io::Result<Signals> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(
                "a rehearsal is already running in this process",
            ));
        }
        let (read, write) = match nix::unistd::pipe2(
            nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK,
        ) {
            Ok(p) => p,
            Err(e) => {
                INSTALLED.store(false, Ordering::SeqCst);
                return Err(e.into());
            }
        };
        CAUGHT.store(0, Ordering::SeqCst);
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut signals = Signals {
            read,
            _write: write,
            previous: Vec::new(),
        };
        let mut mask = nix::sys::signal::SigSet::empty();
        for s in STOP_SIGNALS
            .iter()
            .filter_map(|&s| Signal::try_from(s).ok())
        {
            mask.add(s);
        }
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_stop_signal),
            nix::sys::signal::SaFlags::SA_RESTART,
            mask,
        );
        for s in STOP_SIGNALS
            .iter()
            .filter_map(|&s| Signal::try_from(s).ok())
        {
            // SAFETY: the handler only touches atomics and calls write(2) (async-signal-safe);
            // the previous action is kept and put back on drop.
            let previous = unsafe { nix::sys::signal::sigaction(s, &action) }?;
            signals.previous.push((s, previous));
        }
        Ok(signals)
    }

    /// The first stop signal received, if any.
    pub fn caught(&self) -> Option<i32> {
        match CAUGHT.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(&self.read, &mut buf), Ok(n) if n > 0) {}
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (s, previous) in self.previous.drain(..) {
            // SAFETY: puts back the action that was installed before `install`.
            let _ = unsafe { nix::sys::signal::sigaction(s, &previous) };
        }
        // The pipe's descriptors close after this body, once the handler no longer sees them.
        WAKE_FD.store(-1, Ordering::SeqCst);
        INSTALLED.store(false, Ordering::SeqCst);
    }
}

/// Blocks the stop signals on the calling thread while alive: the library's ptrace loops then
/// see no EINTR. A signal sent meanwhile is handled by another thread or stays pending until the
/// guard drops; either way it wakes the next [`wait`].
pub struct Deferred {
    old: nix::sys::signal::SigSet,
}

impl Deferred {
    /// Blocks SIGTERM, SIGINT and SIGHUP on this thread.
    pub fn new() -> Deferred {
        let mut set = nix::sys::signal::SigSet::empty();
        for s in STOP_SIGNALS {
            if let Ok(s) = Signal::try_from(s) {
                set.add(s);
            }
        }
        let mut old = nix::sys::signal::SigSet::empty();
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_BLOCK,
            Some(&set),
            Some(&mut old),
        );
        Deferred { old }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&self.old),
            None,
        );
    }
}

/// What ended a [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The descriptor at this index is readable (a pipe has data or EOF, a process exited).
    Ready(usize),
    /// The deadline passed.
    Timeout,
    /// A stop signal arrived.
    Signal(i32),
}

/// Waits until one of `fds` is readable, a stop signal arrives or `deadline` passes (a signal
/// received before the call counts at once).
pub fn wait(signals: &Signals, fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> Wake {
    loop {
        if let Some(s) = signals.caught() {
            return Wake::Signal(s);
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Wake::Timeout;
                }
                // Rounded up, so that a wake-up never comes before the deadline.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut polled: Vec<PollFd<'_>> = std::iter::once(signals.fd())
            .chain(fds.iter().copied())
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut polled, timeout) {
            Ok(0) => {}
            Ok(_) => {
                let ready = |p: &PollFd<'_>| {
                    p.revents()
                        .is_some_and(|r| !(r & !PollFlags::POLLNVAL).is_empty())
                };
                if ready(&polled[0]) {
                    signals.drain();
                    continue;
                }
                if let Some(i) = polled[1..].iter().position(ready) {
                    return Wake::Ready(i);
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            // poll fails only on bad arguments; treat it like a timeout rather than spin.
            Err(_) => return Wake::Timeout,
        }
    }
}

/// Whether `fd` is readable now (data, EOF or, for a pidfd, an exited process).
pub fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// A process started as the leader of its own process group. Dropping it kills the group and
/// reaps the leader.
pub struct Group {
    child: Child,
    pid: i32,
    pidfd: OwnedFd,
    status: Option<ExitStatus>,
}

impl Group {
    /// Starts `command` in a new process group with `PR_SET_PDEATHSIG(SIGKILL)`.
    pub fn spawn(command: &mut Command) -> io::Result<Group> {
        let parent = std::process::id() as libc::pid_t;
        command.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and calls only prctl and
        // getppid, which are async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent died before the prctl: nobody would kill this process.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let pid = child.id() as i32;
        match pidfd_open(pid) {
            Ok(pidfd) => Ok(Group {
                child,
                pid,
                pidfd,
                status: None,
            }),
            Err(e) => {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// The leader's stdout, when it was piped (once).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The leader's stderr, when it was piped (once).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// The leader's process id (also the process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Readable once the leader has exited.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Whether the leader has exited (it stays a zombie, holding its pid, until [`finish`]).
    ///
    /// [`finish`]: Group::finish
    pub fn has_exited(&self) -> bool {
        self.status.is_some() || readable(self.pidfd.as_fd())
    }

    /// The leader's exit status once it has exited, without reaping it.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        if !self.has_exited() {
            return None;
        }
        let mut info: libc::siginfo_t = unsafe_zeroed_siginfo();
        // SAFETY: waitid writes into `info`, which is a valid siginfo_t; WNOWAIT leaves the
        // zombie in place, so the pid stays ours until `finish` reaps it.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo, whose status field is valid to read.
        let (code, status) = unsafe { (info.si_code, info.si_status()) };
        use std::os::unix::process::ExitStatusExt;
        Some(match code {
            libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
            _ => ExitStatus::from_raw(status & 0x7f),
        })
    }

    /// Sends `signal` to every process of the group, until the leader is reaped (afterwards its
    /// id may belong to someone else).
    pub fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }

    /// Kills whatever is left of the group (SIGKILL) and reaps the leader; returns its status.
    pub fn finish(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        self.signal(Signal::SIGKILL);
        let status = loop {
            match self.child.wait() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Only possible if someone else reaped it: report it as killed.
                Err(_) => {
                    use std::os::unix::process::ExitStatusExt;
                    break ExitStatus::from_raw(libc::SIGKILL);
                }
            }
        };
        self.status = Some(status);
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.finish();
    }
}

fn unsafe_zeroed_siginfo() -> libc::siginfo_t {
    // SAFETY: siginfo_t is a plain C struct for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// `pidfd_open(2)`: a descriptor that becomes readable when the process exits (Linux 5.3+).
fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain system call with integer arguments; on success it returns a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// "exit 3", "killed by SIGKILL".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!(
            "killed by {}",
            Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.to_string())
        ),
        _ => status.to_string(),
    }
}

/// The last `cap` bytes of what a process wrote, and how much it wrote in all.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// The kept bytes (the end of the output).
    pub tail: Vec<u8>,
    /// Bytes written in all.
    pub total: u64,
}

impl Captured {
    /// Appends `data`, dropping the oldest bytes beyond `cap`.
    pub fn push(&mut self, data: &[u8], cap: usize) {
        self.total += data.len() as u64;
        self.tail.extend_from_slice(data);
        if self.tail.len() > cap {
            let cut = self.tail.len() - cap;
            self.tail.drain(..cut);
        }
    }

    /// The kept output as text, with a first line saying how much was left out.
    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.tail);
        let omitted = self.total - self.tail.len() as u64;
        if omitted > 0 {
            format!("[... {omitted} earlier bytes not kept ...]\n{text}")
        } else {
            text.into_owned()
        }
    }
}

/// Reads `pipe` to EOF in a thread, keeping the last `cap` bytes; `join` returns them.
pub struct Collector {
    done: mpsc::Receiver<Captured>,
    _thread: JoinHandle<()>,
}

impl Collector {
    /// Starts reading.
    pub fn start(pipe: impl Read + Send + 'static, cap: usize) -> Collector {
        let (tx, done) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut captured = Captured::default();
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => captured.push(&buf[..n], cap),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(captured);
        });
        Collector {
            done,
            _thread: thread,
        }
    }

    /// What was read, once the pipe's writers are all gone, or after `grace` (a process outside
    /// the killed group may still hold the pipe open).
    pub fn join(&self, grace: Duration) -> Captured {
        self.done.recv_timeout(grace).unwrap_or_default()
    }
}

/// A pipe whose write end is handed to a child as its stdout and stderr (merged, in order).
pub fn merged_output(command: &mut Command) -> io::Result<std::fs::File> {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let write2 = write.try_clone()?;
    command
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::from(write2));
    Ok(std::fs::File::from(read))
}
