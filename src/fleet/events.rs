//! How `watch` learns that processes started: the kernel's proc connector (a netlink socket
//! that reports every `exec`), or, where it gives nothing, a scan of `/proc` every 100 ms.
//!
//! The proc connector reports only to listeners in the initial user, PID and network namespaces
//! (elsewhere the socket works and stays silent) and before Linux 6.6 needs CAP_NET_ADMIN, so it
//! is probed at start: a child is executed and its event must arrive within a second. When the
//! socket's buffer overflowed (ENOBUFS: events were lost), the caller rescans `/proc`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `NETLINK_CONNECTOR`'s multicast group and callback id of the proc connector.
const CN_IDX_PROC: u32 = 1;
/// See [`CN_IDX_PROC`].
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN`.
const PROC_CN_MCAST_LISTEN: u32 = 1;
/// `PROC_EVENT_EXEC`.
const PROC_EVENT_EXEC: u32 = 2;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR: usize = 16;
/// `sizeof(struct cn_msg)`: `cb_id` (8), seq, ack (8), len, flags (4).
const CN_MSG: usize = 20;
/// How often `/proc` is scanned without the proc connector.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How many polls it takes to look at every known process's [`ExecKey`] once (a slice of them
/// at each poll): an `exec` in a process already known is seen within this many
/// [`POLL_INTERVAL`]s when polling (500 ms), at a fifth of the cost of reading every
/// `/proc/PID/stat` every 100 ms.
pub const EXEC_CHECK_SLICES: usize = 5;

/// What `/proc/PID/stat` tells of the address space a process's last `exec` made, to see an
/// `exec` that keeps the PID (and start time) without the proc connector: the start and end
/// of its code and the start of its stack. `exec` sets all three; with address-space
/// randomisation (the default) the stack moves at every `exec`, even of the same program, and
/// the code of a position-independent one too; another program's code almost never ends at the
/// same address. Only `prctl(PR_SET_MM)` changes them otherwise (checkpoint/restore tools),
/// which at worst makes `watch` look at the process again. Not seen: the same program executed
/// again with randomisation off (`setarch -R`, `randomize_va_space=0`), which the periodic
/// rescan finds. One read of one small file: the cheapest signal there is (the exec image's
/// `AT_RANDOM` bytes, which always change, take three opens and a read of its memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecKey {
    start_code: u64,
    end_code: u64,
    start_stack: u64,
}

impl ExecKey {
    /// The key of `pid` now; `None` when it is gone or its fields read 0 (a process rpatch may
    /// not trace, a kernel thread, a zombie).
    pub fn of(pid: i32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&stat)
    }

    /// The key in the text of a `/proc/PID/stat` (fields 26 to 28, counted from 1; the
    /// command name, field 2, may hold spaces and parentheses, so fields are counted from the
    /// last `)`).
    fn parse(stat: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // `rest` starts with field 3.
        let mut fields = rest.split_whitespace().skip(26 - 3);
        let mut next = || fields.next()?.parse::<u64>().ok();
        let key = Self {
            start_code: next()?,
            end_code: next()?,
            start_stack: next()?,
        };
        (key.end_code != 0 && key.start_stack != 0).then_some(key)
    }
}

/// What a wait for events found.
#[derive(Debug, Default)]
pub struct Events {
    /// Processes that executed a new program (thread-group ids), in order.
    pub execs: Vec<i32>,
    /// Events were lost: every process must be looked at again.
    pub lost: bool,
}

/// A subscription to the proc connector's events.
pub struct ProcConnector {
    socket: OwnedFd,
}

impl ProcConnector {
    /// Subscribes, and checks that events arrive: a child is executed and its `exec` event must
    /// come within a second. Why not, otherwise (no permission, not the initial namespaces).
    pub fn connect() -> Result<Self, String> {
        let connector = Self::subscribe().map_err(|e| format!("proc connector: {e}"))?;
        let mut child =
            std::process::Command::new(std::env::current_exe().map_err(|e| format!("probe: {e}"))?)
                .arg("--version")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("probe: {e}"))?;
        let probe = child.id() as i32;
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            let events = connector
                .wait(deadline.saturating_duration_since(Instant::now()))
                .map_err(|e| format!("proc connector: {e}"))?;
            if events.execs.contains(&probe) || events.lost {
                return Ok(connector);
            }
        }
        Err("the proc connector reported no event for a child's exec within 1 s (rpatch is not in the initial user, PID and network namespaces, or lacks CAP_NET_ADMIN)".into())
    }

    fn subscribe() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the descriptor it returns is owned here.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // A large buffer: a burst of execs should not overflow it while a process is patched.
        let size: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with a pointer to a c_int that lives for the call; failure is fine
        // (SO_RCVBUFFORCE needs CAP_NET_ADMIN, the default buffer still works).
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // SAFETY: an all-zero sockaddr_nl is valid; the fields set are plain integers.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: bind(2) with a pointer to `addr` and its size, both valid for the call.
        let rc = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut message = Vec::with_capacity(NLMSG_HDR + CN_MSG + 4);
        message.extend(((NLMSG_HDR + CN_MSG + 4) as u32).to_ne_bytes());
        message.extend((libc::NLMSG_DONE as u16).to_ne_bytes());
        message.extend(0u16.to_ne_bytes()); // flags
        message.extend(0u32.to_ne_bytes()); // seq
        message.extend(std::process::id().to_ne_bytes());
        message.extend(CN_IDX_PROC.to_ne_bytes());
        message.extend(CN_VAL_PROC.to_ne_bytes());
        message.extend(0u32.to_ne_bytes()); // seq
        message.extend(0u32.to_ne_bytes()); // ack
        message.extend(4u16.to_ne_bytes()); // len
        message.extend(0u16.to_ne_bytes()); // flags
        message.extend(PROC_CN_MCAST_LISTEN.to_ne_bytes());
        // SAFETY: send(2) of a buffer that lives for the call.
        let sent = unsafe { libc::send(fd, message.as_ptr().cast(), message.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { socket })
    }

    /// Waits at most `timeout` for events, then returns all that are queued.
    pub fn wait(&self, timeout: Duration) -> io::Result<Events> {
        let mut events = Events::default();
        let mut fds = [nix::poll::PollFd::new(
            self.socket.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = timeout.as_millis().min(u16::MAX as u128) as u16;
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => return Ok(events),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(events),
            Err(e) => return Err(e.into()),
        }
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: recv(2) into `buf`, valid and large enough for `buf.len()` bytes.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(events),
                    Some(libc::ENOBUFS) => events.lost = true,
                    Some(libc::EINTR) => {}
                    _ => return Err(e),
                }
                continue;
            }
            parse(&buf[..n as usize], &mut events);
        }
    }
}

/// Adds the exec events of one datagram (netlink messages, each a `cn_msg` carrying a
/// `proc_event`) to `events`.
fn parse(mut data: &[u8], events: &mut Events) {
    let u32_at = |d: &[u8], i: usize| {
        d.get(i..i + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    while let Some(len) = u32_at(data, 0) {
        let len = len as usize;
        if len < NLMSG_HDR || len > data.len() {
            return;
        }
        let message = &data[..len];
        let event = NLMSG_HDR + CN_MSG;
        // proc_event: what (4), cpu (4), timestamp (8), then exec's process_pid, process_tgid.
        if u32_at(message, NLMSG_HDR) == Some(CN_IDX_PROC)
            && u32_at(message, event) == Some(PROC_EVENT_EXEC)
            && let Some(tgid) = u32_at(message, event + 20)
        {
            events.execs.push(tgid as i32);
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_message(tgid: u32) -> Vec<u8> {
        let mut m = Vec::new();
        let len = NLMSG_HDR + CN_MSG + 24;
        m.extend((len as u32).to_ne_bytes());
        m.extend([0u8; 12]);
        m.extend(CN_IDX_PROC.to_ne_bytes());
        m.extend(CN_VAL_PROC.to_ne_bytes());
        m.extend([0u8; 8]);
        m.extend(24u16.to_ne_bytes());
        m.extend([0u8; 2]);
        m.extend(PROC_EVENT_EXEC.to_ne_bytes());
        m.extend([0u8; 12]);
        m.extend((tgid + 1).to_ne_bytes()); // the thread
        m.extend(tgid.to_ne_bytes());
        m
    }

    /// The key is read from fields 26 to 28 whatever the command name holds; a process whose
    /// fields read 0 (not ours to trace) has none; our own is stable.
    #[test]
    fn exec_keys_come_from_the_stat_fields() {
        let fields: Vec<String> = (3..=52).map(|n| (n * 10).to_string()).collect();
        let stat = format!("42 (a) b) (c) {}", fields.join(" "));
        let key = ExecKey::parse(&stat).unwrap();
        assert_eq!(
            (key.start_code, key.end_code, key.start_stack),
            (260, 270, 280)
        );
        let hidden = stat.replace(" 260 270 280 ", " 0 0 0 ");
        assert_eq!(ExecKey::parse(&hidden), None);
        assert_eq!(ExecKey::parse("42 (x) S 1"), None);
        let me = std::process::id() as i32;
        assert!(ExecKey::of(me).is_some());
        assert_eq!(ExecKey::of(me), ExecKey::of(me));
    }

    #[test]
    fn exec_events_are_read_and_others_ignored() {
        let mut data = exec_message(42);
        let mut fork = exec_message(7);
        fork[NLMSG_HDR + CN_MSG..NLMSG_HDR + CN_MSG + 4].copy_from_slice(&1u32.to_ne_bytes());
        data.extend(fork);
        data.extend(exec_message(43));
        let mut events = Events::default();
        parse(&data, &mut events);
        assert_eq!(events.execs, vec![42, 43]);
        // A truncated message ends the parse.
        let mut events = Events::default();
        parse(&exec_message(9)[..30], &mut events);
        assert!(events.execs.is_empty());
    }
}
