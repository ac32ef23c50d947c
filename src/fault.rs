//! Fault injection for tests: `RPATCH_FAULT=<point>[:<micros>]` makes rpatch kill itself with
//! SIGKILL at a named point of an operation, so tests and `scripts/kill-stress.sh` can prove that
//! the target survives rpatch dying there and that `status` and `rollback` settle what it left.
//!
//! Points, in the order an attach reaches them: `bootstrap` (a thread was just resumed into the
//! slack code that maps the stub region), `load-call` (a thread was just resumed into the stub
//! for `dlopen`), `call` (into the stub for any other call), `loaded` (the library is loaded, the
//! thread given back, nothing recorded), `intent` (the journal intent is durable, nothing
//! stopped), `frozen` (every thread stopped, nothing written), `write` (the first function's
//! jump written, the others not yet), `written` (all written, threads still stopped), `thawed`
//! (threads resumed, the journal not yet completed). A rollback reaches `rollback-intent`,
//! `rollback-frozen`, `rollback-write`, `rollback-written`, `rollback-thawed`.

use std::sync::OnceLock;
use std::time::Duration;

/// When the environment variable `RPATCH_FAULT` names this point, rpatch kills itself with
/// SIGKILL here, so tests can prove the target survives rpatch dying at that moment.
/// `RPATCH_FAULT=NAME:MICROS` first sleeps that long (the target runs on meanwhile), to land the
/// death anywhere inside what was just started. The points are listed in the module docs.
pub fn point(name: &str) {
    static FAULT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        let value = std::env::var("RPATCH_FAULT").ok()?;
        Some(match value.split_once(':') {
            Some((point, micros)) => (point.to_string(), micros.parse().unwrap_or(0)),
            None => (value, 0),
        })
    });
    if let Some((point, micros)) = fault
        && point == name
    {
        std::thread::sleep(Duration::from_micros(*micros));
        // SAFETY: kill takes no pointers; SIGKILL ends this process at once.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unnamed_point_returns() {
        // RPATCH_FAULT is not set for unit tests: this must return.
        super::point("no-such-point");
    }
}
