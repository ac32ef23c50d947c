//! Processes that share one address space without being threads of one process: a vfork (or
//! posix_spawn) child before its exec, a `clone(CLONE_VM)` child. They run the same code at
//! the same addresses as the process rpatch patches, so they are frozen and checked with it
//! during every write, and never get a journal of their own (the oldest of them keeps it).
//! The kernel tells them apart with `kcmp(KCMP_VM)`.

use super::{ProcessError, ThreadState, Tracer, all_pids, last_pid, live_task, read_stat};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::time::Instant;

/// `KCMP_VM` (`<linux/kcmp.h>`): compare the address spaces of two processes.
const KCMP_VM: libc::c_long = 1;

/// Whether processes `a` and `b` share one address space (`kcmp` returns 0 for "equal"; an
/// error, including no access, says no).
pub fn shares_address_space(a: i32, b: i32) -> bool {
    // SAFETY: kcmp(2) with KCMP_VM takes no pointers (the last two arguments are unused).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a,
            b,
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    rc == 0
}

/// What the last scan of one process's address-space sharers found (see
/// [`address_space_sharers`]), with the last PID handed out and the count of tasks created
/// since boot (`processes` in `/proc/stat`) read before it: the next scan of that process need
/// only compare the PIDs handed out since. Kept for the next operation in the process's journal
/// ([`remember_sharer_scan`], [`last_sharer_scan`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharerScan {
    /// The process scanned.
    pub pid: i32,
    /// The other processes found sharing its address space, sorted.
    pub sharers: Vec<i32>,
    /// The namespace's last PID, read before the scan.
    pub last_pid: i32,
    /// Tasks created since boot, read before the scan: every PID handed out since in any
    /// namespace created one, so a difference of at most [`FRESH_PIDS_MAX`] proves the PID
    /// counter has not gone round (however long ago the scan was).
    pub forks: u64,
}

thread_local! {
    static LAST_SCAN: RefCell<Option<SharerScan>> = const { RefCell::new(None) };
}

/// At most this many PIDs handed out since the last scan are compared one by one; beyond it
/// `/proc` is listed again.
const FRESH_PIDS_MAX: i32 = 512;

/// Takes `scan` (an earlier operation's, from the journal) as the last scan of its process, so
/// that this operation's first scan looks only at what was created since.
pub fn remember_sharer_scan(scan: SharerScan) {
    LAST_SCAN.set(Some(scan));
}

/// The last scan of `pid`'s sharers this operation made, to keep in its journal.
pub fn last_sharer_scan(pid: i32) -> Option<SharerScan> {
    LAST_SCAN.with_borrow(|scan| scan.as_ref().filter(|s| s.pid == pid).cloned())
}

/// Tasks created since boot (`processes` in `/proc/stat`).
fn forks_since_boot() -> Option<u64> {
    let stat = super::read_proc("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("processes "))?
        .trim()
        .parse()
        .ok()
}

/// The other processes sharing `pid`'s address space, sorted. Every process is compared with
/// `kcmp` directly: one system call each, about a microsecond, where a look at its executable
/// first (`/proc/P/exe`, a path walk) cost several times that. Every operation lists them at
/// its start and before each freeze.
///
/// The first scan of a process lists `/proc`; a later one — in this operation, or in a later
/// one that took the earlier's from the journal ([`remember_sharer_scan`]) — only compares the
/// sharers found then and the PIDs handed out since (the namespace's last PID and the count of
/// tasks created are read before each scan). An
/// address space is shared only by a process created sharing it, after the one it shares it
/// with: one made after the scan has a PID allocated after it. A listing of `/proc` with a
/// comparison of every process is most of what a freeze round costs outside the frozen window
/// otherwise. When the PIDs cannot be followed (another PID namespace's `/proc`, the PID
/// counter wrapped, many processes started), `/proc` is listed again.
pub fn address_space_sharers(pid: i32) -> Vec<i32> {
    // Compared through a live thread: a main thread that has exited (a zombie while others run)
    // has no address space any more, nor has a kernel thread, and `kcmp` finds two "none" equal.
    let leader_alive = read_stat(pid, pid).is_ok_and(|(s, ..)| !matches!(s, 'Z' | 'X' | 'x'));
    let Some(me) = (if leader_alive {
        Some(pid)
    } else {
        live_task(pid)
    }) else {
        return Vec::new();
    };
    let forks = forks_since_boot();
    let now = last_pid();
    let earlier = LAST_SCAN.with_borrow_mut(|scan| scan.take().filter(|s| s.pid == pid));
    let few_since = |earlier: &SharerScan, now: i32| {
        (0..=FRESH_PIDS_MAX).contains(&(now - earlier.last_pid))
            && forks.is_some_and(|f| {
                f.checked_sub(earlier.forks)
                    .is_some_and(|n| n <= FRESH_PIDS_MAX as u64)
            })
    };
    let mut found: Vec<i32> = match (earlier, now) {
        (Some(earlier), Some(now)) if few_since(&earlier, now) => {
            // A thread of `pid` (or of a sharer) shares it too: only thread group leaders count.
            let fresh = ((earlier.last_pid + 1)..=now).filter(|&p| {
                p != pid
                    && shares_address_space(me, p)
                    && super::status_field(p, p, "Tgid").is_some_and(|t| t.trim() == p.to_string())
            });
            earlier
                .sharers
                .into_iter()
                .filter(|&p| shares_address_space(me, p))
                .chain(fresh)
                .collect()
        }
        _ => all_pids()
            .into_iter()
            .filter(|&p| p != pid && shares_address_space(me, p))
            .collect(),
    };
    // One made between the earlier scan's PID read and its listing is found by both.
    found.sort_unstable();
    found.dedup();
    if let (Some(last_pid), Some(forks)) = (now, forks) {
        LAST_SCAN.set(Some(SharerScan {
            pid,
            sharers: found.clone(),
            last_pid,
            forks,
        }));
    }
    found
}

/// `pid` and the processes sharing its address space, when there are any: (the owner, all of
/// them sorted). The owner is the oldest (lowest start time, then PID): the process that had
/// the address space first, whose journal describes it.
pub fn shared_address_space(pid: i32) -> Option<(i32, Vec<i32>)> {
    let mut all = address_space_sharers(pid);
    if all.is_empty() {
        return None;
    }
    all.push(pid);
    all.sort_unstable();
    let owner = all
        .iter()
        .copied()
        .min_by_key(|&p| (read_stat(p, p).map_or(u64::MAX, |(_, start, _)| start), p))
        .unwrap_or(pid);
    Some((owner, all))
}

/// The processes sharing a target's address space, every thread stopped, for as long as the
/// value lives: dropping it lets them go (each `Tracer`'s `Drop`). See [`FrozenSharers::freeze`].
#[derive(Default)]
pub struct FrozenSharers {
    tracers: Vec<Tracer>,
}

impl FrozenSharers {
    /// Stops every thread of each process in `known` that shares `pid`'s address space; when
    /// there was any, lists the sharers again until no new one appears (a sharer still running
    /// may create another). Called with `pid` itself frozen, so it creates none. Processes gone
    /// meanwhile are skipped; on an error everything stopped so far is let go.
    pub fn freeze(pid: i32, known: &[i32], deadline: Instant) -> Result<Self, ProcessError> {
        let mut frozen = Self::default();
        let mut pending: Vec<i32> = known.to_vec();
        while !pending.is_empty() {
            for sharer in pending {
                let mut tracer = Tracer::new(sharer)?;
                match tracer
                    .survey()
                    .and_then(|survey| tracer.freeze_all(survey, deadline, &mut |_| true))
                {
                    Ok(_) => frozen.tracers.push(tracer),
                    Err(ProcessError::Exited { .. } | ProcessError::NoSuchProcess { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            pending = address_space_sharers(pid)
                .into_iter()
                .filter(|p| !frozen.tracers.iter().any(|t| t.pid() == *p))
                .collect();
        }
        Ok(frozen)
    }

    /// Each frozen process (its PID) with its stopped threads.
    pub fn processes(&self) -> impl Iterator<Item = (i32, Vec<&ThreadState>)> {
        self.tracers
            .iter()
            .map(|t| (t.pid(), t.threads().collect()))
    }

    /// How many processes are frozen.
    pub fn process_count(&self) -> usize {
        self.tracers.len()
    }

    /// How many threads are stopped.
    pub fn thread_count(&self) -> usize {
        self.tracers.iter().map(|t| t.threads().count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `clone(CLONE_VM)` child shares our address space (and is found by the scan, also by
    /// one that only looks at the processes created since the last); a forked child does not,
    /// nor does a thread.
    #[test]
    fn clone_vm_children_share_the_address_space_forked_ones_do_not() {
        let me = std::process::id() as i32;
        let before = address_space_sharers(me);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || stopped.recv());
        // SAFETY: the child only blocks in pause() until killed.
        let forked = unsafe { libc::fork() };
        if forked == 0 {
            loop {
                // SAFETY: pause(2) has no preconditions.
                unsafe { libc::pause() };
            }
        }
        let mut stack = vec![0u8; 64 * 1024];
        extern "C" fn park(_: *mut libc::c_void) -> libc::c_int {
            loop {
                // SAFETY: a raw ppoll system call with no descriptors and no timeout (pause(2),
                // which arm64 lacks): nothing of the C library's state is used by this child,
                // which shares our memory but not our thread.
                unsafe {
                    libc::syscall(
                        libc::SYS_ppoll,
                        std::ptr::null::<libc::pollfd>(),
                        0,
                        std::ptr::null::<libc::timespec>(),
                        std::ptr::null::<libc::sigset_t>(),
                        0,
                    )
                };
            }
        }
        // SAFETY: the child runs `park` on its own stack (the top of `stack`, which outlives it:
        // it is killed and reaped below before `stack` is dropped) and touches nothing else.
        let shared = unsafe {
            libc::clone(
                park,
                stack.as_mut_ptr().add(stack.len()).cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                std::ptr::null_mut(),
            )
        };
        let sharers = address_space_sharers(me);
        let both = shared_address_space(me);
        // A scan kept from an earlier operation is taken as it is while few tasks were created
        // after it, however long ago it was: one that found no sharer, with both counters as they
        // are now, is believed (the child, made before it, is not compared)...
        let kept = SharerScan {
            pid: me,
            sharers: Vec::new(),
            last_pid: last_pid().unwrap(),
            forks: forks_since_boot().unwrap(),
        };
        remember_sharer_scan(kept.clone());
        let believed = address_space_sharers(me);
        // ...but not once more tasks were created after it than PIDs are compared one by one:
        // the PID counter may have gone round, and every process is compared again.
        remember_sharer_scan(SharerScan {
            forks: kept.forks.saturating_sub(10_000),
            ..kept
        });
        let rescanned = address_space_sharers(me);
        let kept_now = last_sharer_scan(me).unwrap();
        drop(stop);
        let _ = thread.join();
        for child in [forked, shared] {
            // SAFETY: kill and waitpid on our own children.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
        }
        drop(stack);
        assert!(shared > 0 && forked > 0);
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(sharers, vec![shared]);
        assert_eq!(believed, Vec::<i32>::new());
        assert_eq!(rescanned, vec![shared]);
        assert_eq!(kept_now.sharers, vec![shared], "{kept_now:?}");
        let (owner, all) = both.unwrap();
        assert_eq!(owner, me, "the older process owns it");
        let mut expected = vec![me, shared];
        expected.sort_unstable();
        assert_eq!(all, expected);
    }
}
