//! Real-time scheduling for rpatch itself while the target is frozen.
//!
//! The frozen window is spent waiting for threads to stop and writing a few bytes; on a machine
//! whose cores are busy with the target's own threads, an ordinary-priority tracer waits for a
//! time slice at every step and the window stretches to tens of milliseconds. Raising rpatch to
//! SCHED_FIFO for just that window keeps it short. Without the privilege it stays as it was.

/// While alive, the calling thread runs under SCHED_FIFO (when permitted); dropping it restores
/// the previous policy and priority.
pub struct RealtimeGuard {
    previous: Option<(i32, libc::sched_param)>,
}

/// Priority used: above every ordinary (SCHED_OTHER) thread, below the kernel's own
/// high-priority real-time threads.
const FROZEN_PRIORITY: i32 = 50;

impl RealtimeGuard {
    /// Raises the calling thread to SCHED_FIFO if it is permitted; a no-op otherwise.
    pub fn raise() -> Self {
        // SAFETY: sched_getscheduler/sched_getparam/sched_setscheduler on pid 0 (this thread)
        // only read or write the plain sched_param structs passed by pointer, which live for
        // the duration of each call.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param = libc::sched_param { sched_priority: 0 };
            if policy < 0 || libc::sched_getparam(0, &mut param) != 0 {
                return Self { previous: None };
            }
            let fifo = libc::sched_param {
                sched_priority: FROZEN_PRIORITY,
            };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &fifo) != 0 {
                return Self { previous: None };
            }
            Self {
                previous: Some((policy, param)),
            }
        }
    }
}

impl Drop for RealtimeGuard {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.previous {
            // SAFETY: as in `raise`; restores what sched_getscheduler/sched_getparam returned.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}
