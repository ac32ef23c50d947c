//! Real-time scheduling for rpatch itself while the target is frozen.
//!
//! Once every thread is stopped, rpatch alone works until the thaw (the thread list read again,
//! the write, the threads let go); on a machine whose cores are busy, an ordinary-priority
//! tracer waits for a time slice at every step and that stretches the window. Raising rpatch to
//! SCHED_FIFO from that moment to the thaw keeps it short: at priority 50 as root
//! (CAP_SYS_NICE), else at the highest priority `RLIMIT_RTPRIO` grants (a user given `rtprio`
//! in limits.conf, or a service with `LimitRTPRIO=`). Without either it stays as it was. Not
//! while threads are still stopping: rpatch then mostly sleeps, and a real-time tracer woken
//! by every stop preempts the very threads still on their way to theirs (measured, 8 threads:
//! longest pause 433 µs with SCHED_FIFO from the first interrupt, 276 µs from the last stop).
//! The exception is a thread blocked in a call a ptrace interrupt makes fail with EINTR: from
//! its interrupt to its repair rpatch stays real-time, since a SIGKILL of rpatch in between
//! leaves that call failing (see `Tracer::freeze_all`). Sleeps while waiting for threads are
//! made exact (a timer slack of 1 ns instead of the default 50 us, which an ordinary thread
//! would otherwise add to every short sleep).

/// While alive, the calling thread's sleeps are exact (a timer slack of 1 ns instead of the
/// default 50 us): rpatch polls a borrowed thread's progress and waits for threads to stop with
/// sleeps of tens of microseconds, which the default slack would more than double. Dropping it
/// restores the previous slack.
pub struct ExactSleeps {
    previous: Option<libc::c_ulong>,
}

impl ExactSleeps {
    /// Makes the calling thread's sleeps exact (see the type).
    pub fn new() -> Self {
        // SAFETY: PR_GET_TIMERSLACK / PR_SET_TIMERSLACK take and return plain integers.
        let previous = unsafe {
            let old = libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0);
            (old > 0 && libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) == 0)
                .then_some(old as libc::c_ulong)
        };
        Self { previous }
    }
}

impl Default for ExactSleeps {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ExactSleeps {
    fn drop(&mut self) {
        if let Some(slack) = self.previous {
            // SAFETY: as in `new`.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack, 0, 0, 0) };
        }
    }
}

/// While alive, the calling thread runs under SCHED_FIFO (when permitted) with exact sleeps;
/// dropping it restores the previous policy, priority and slack.
pub struct RealtimeGuard {
    previous: Option<(i32, libc::sched_param)>,
    _exact: ExactSleeps,
    /// The real-time priority taken, 0 when none.
    pub priority: i32,
}

/// Priority used: above every ordinary (SCHED_OTHER) thread, below the kernel's own
/// high-priority real-time threads.
const FROZEN_PRIORITY: i32 = 50;

impl RealtimeGuard {
    /// Raises the calling thread to SCHED_FIFO if it is permitted (see the module comment);
    /// otherwise only the timer slack changes.
    pub fn raise() -> Self {
        let mut guard = Self {
            previous: None,
            _exact: ExactSleeps::new(),
            priority: 0,
        };
        // SAFETY: sched_getscheduler/sched_getparam/sched_setscheduler on pid 0 (this thread)
        // only read or write the plain sched_param structs passed by pointer, which live for
        // the duration of each call.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param = libc::sched_param { sched_priority: 0 };
            if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
                return guard;
            }
            for priority in [FROZEN_PRIORITY, granted_priority()] {
                if priority <= 0 {
                    continue;
                }
                let fifo = libc::sched_param {
                    sched_priority: priority,
                };
                if libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) == 0 {
                    guard.previous = Some((policy, param));
                    guard.priority = priority;
                    return guard;
                }
            }
        }
        guard
    }
}

/// The highest real-time priority `RLIMIT_RTPRIO` lets an unprivileged thread take (at most
/// [`FROZEN_PRIORITY`]); 0 when it grants none.
fn granted_priority() -> i32 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur.min(FROZEN_PRIORITY as u64) as i32
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous {
            // SAFETY: as in `raise`; restores what sched_getscheduler/sched_getparam returned.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}
