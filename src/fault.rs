//! Fault injection for tests, compiled in only with the `fault-injection` cargo feature (release
//! builds leave it out: without it [`point`] is an empty function and `RPATCH_FAULT` means
//! nothing). With it, `RPATCH_FAULT=<point>[:<micros>]` makes rpatch kill itself with SIGKILL at
//! a named point of an operation, so tests and the stress scripts can prove that the target
//! survives rpatch dying there and that `status` and `rollback` settle what it left.
//!
//! The points, in the order an attach reaches them, are the [`FaultPoint`]s.

/// A named point of an operation where rpatch can be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// A thread was just resumed into the slack code that maps the stub region.
    Bootstrap,
    /// A thread was just resumed into the stub for `dlopen`.
    LoadCall,
    /// A thread was just resumed into the stub for any other call.
    Call,
    /// The library is loaded and the thread given back; nothing recorded.
    Loaded,
    /// The journal intent is durable; nothing stopped.
    Intent,
    /// Every thread stopped; nothing written.
    Frozen,
    /// The first function's jump written, the others not yet.
    Write,
    /// All written; threads still stopped.
    Written,
    /// Threads resumed; the journal not yet completed.
    Thawed,
    /// A rollback's intent is durable; nothing stopped.
    RollbackIntent,
    /// A rollback stopped every thread; nothing restored.
    RollbackFrozen,
    /// A rollback restored the first function, not the others.
    RollbackWrite,
    /// A rollback restored everything; threads still stopped.
    RollbackWritten,
    /// A rollback resumed the threads; the journal not yet completed.
    RollbackThawed,
    /// Restoring slack bytes an earlier run left: every thread stopped, nothing restored.
    SlackFrozen,
    /// Slack bytes restored; threads still stopped.
    SlackWritten,
    /// Slack bytes restored, threads resumed; the journal not yet updated.
    SlackThawed,
}

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl FaultPoint {
    /// The name `RPATCH_FAULT` takes.
    pub const fn name(self) -> &'static str {
        match self {
            FaultPoint::Bootstrap => "bootstrap",
            FaultPoint::LoadCall => "load-call",
            FaultPoint::Call => "call",
            FaultPoint::Loaded => "loaded",
            FaultPoint::Intent => "intent",
            FaultPoint::Frozen => "frozen",
            FaultPoint::Write => "write",
            FaultPoint::Written => "written",
            FaultPoint::Thawed => "thawed",
            FaultPoint::RollbackIntent => "rollback-intent",
            FaultPoint::RollbackFrozen => "rollback-frozen",
            FaultPoint::RollbackWrite => "rollback-write",
            FaultPoint::RollbackWritten => "rollback-written",
            FaultPoint::RollbackThawed => "rollback-thawed",
            FaultPoint::SlackFrozen => "slack-frozen",
            FaultPoint::SlackWritten => "slack-written",
            FaultPoint::SlackThawed => "slack-thawed",
        }
    }
}

/// The fault points of one frozen write (freeze, write, thaw), named per operation.
#[derive(Debug, Clone, Copy)]
pub struct FrozenPoints {
    /// Every thread stopped, nothing written.
    pub frozen: FaultPoint,
    /// Everything written, threads still stopped.
    pub written: FaultPoint,
    /// Threads resumed.
    pub thawed: FaultPoint,
}

/// When `RPATCH_FAULT` names this point (and the `fault-injection` feature is built in), rpatch
/// kills itself with SIGKILL here. `RPATCH_FAULT=NAME:MICROS` first sleeps that long (the target
/// runs on meanwhile), to land the death anywhere inside what was just started.
/// `RPATCH_FAULT=NAME:stop` instead stops rpatch there (SIGSTOP) until a SIGCONT: a test can then
/// act on the target at that very moment (send it a signal while it runs rpatch's code).
#[cfg(feature = "fault-injection")]
pub fn point(at: FaultPoint) {
    use std::sync::OnceLock;
    static FAULT: OnceLock<Option<(String, Option<u64>)>> = OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let value = std::env::var("RPATCH_FAULT").ok()?;
        Some(match value.split_once(':') {
            Some((point, "stop")) => (point.to_string(), None),
            Some((point, micros)) => (point.to_string(), Some(micros.parse().unwrap_or(0))),
            None => (value, Some(0)),
        })
    });
    match fault {
        Some((point, Some(micros))) if point == at.name() => {
            std::thread::sleep(std::time::Duration::from_micros(*micros));
            // SAFETY: kill takes no pointers; SIGKILL ends this process at once.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        Some((point, None)) if point == at.name() => {
            // SAFETY: kill takes no pointers; SIGSTOP stops this process until a SIGCONT.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        }
        _ => {}
    }
}

/// Without the `fault-injection` feature: nothing, whatever `RPATCH_FAULT` says.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_at: FaultPoint) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_point_returns() {
        // RPATCH_FAULT is not set for unit tests: this must return.
        point(FaultPoint::Frozen);
    }

    const ALL: [FaultPoint; 17] = [
        FaultPoint::Bootstrap,
        FaultPoint::LoadCall,
        FaultPoint::Call,
        FaultPoint::Loaded,
        FaultPoint::Intent,
        FaultPoint::Frozen,
        FaultPoint::Write,
        FaultPoint::Written,
        FaultPoint::Thawed,
        FaultPoint::RollbackIntent,
        FaultPoint::RollbackFrozen,
        FaultPoint::RollbackWrite,
        FaultPoint::RollbackWritten,
        FaultPoint::RollbackThawed,
        FaultPoint::SlackFrozen,
        FaultPoint::SlackWritten,
        FaultPoint::SlackThawed,
    ];

    #[test]
    fn point_names_are_distinct() {
        let mut names: Vec<&str> = ALL.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    /// A build without the feature ignores RPATCH_FAULT: naming a point does not kill.
    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn a_default_build_ignores_rpatch_fault() {
        // SAFETY: this test binary's other tests do not read the environment concurrently in a
        // way that matters (no other test reads RPATCH_FAULT).
        unsafe { std::env::set_var("RPATCH_FAULT", "frozen") };
        point(FaultPoint::Frozen);
    }
}
