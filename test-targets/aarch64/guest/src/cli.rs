//! Scenarios that run the real `rpatch` binary (built for arm64 by scripts/test-aarch64.sh and
//! put at `/rpatch`) against arm64 processes: attach, observe the target's answers change, roll
//! back, observe them come back, and check that no blocking call saw a spurious EINTR.

use super::{Scenario, Target, SIGSTORM};
use std::process::Command;

/// The rpatch binary in the guest.
pub const RPATCH: &str = "/rpatch";
/// `compute(x) = x * 100` (test-targets/c/fix_basic.c).
const FIX_BASIC: &str = "/t/fix_basic.so";

/// Runs rpatch with `args`; `Err` carries its exit code and output when it fails.
fn rpatch(args: &[&str]) -> Result<String, String> {
    let out = Command::new(RPATCH)
        .args(args)
        .env("RPATCH_STATE_DIR", "/tmp/rpatch-state")
        .output()
        .map_err(|e| format!("{RPATCH}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "rpatch {} exited {:?}: {}",
            args.join(" "),
            out.status.code(),
            text.trim()
        ));
    }
    Ok(text)
}

/// Attach, check, roll back, check: the whole cycle on `sigstorm 4` (busy, read, nanosleep and
/// epoll threads, every one handling signals).
fn attach_and_rollback(extra: &[&str]) -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let pid = t.pid.to_string();
    t.expect("call 5", "compute 5 6")?;
    let mut args = vec!["attach", pid.as_str(), "--lib", FIX_BASIC, "--func", "compute"];
    args.extend_from_slice(extra);
    rpatch(&args)?;
    t.expect("call 5", "compute 5 500")?;
    let status = rpatch(&["status", &pid])?;
    if !status.contains("compute") {
        return Err(format!("status does not list compute: {status}"));
    }
    rpatch(&["rollback", &pid])?;
    t.expect("call 5", "compute 5 6")?;
    let stats = t.ask("stats")?;
    if !stats.contains(" spurious=0 ") {
        return Err(format!("a blocking call saw a spurious EINTR: {stats}"));
    }
    Ok(())
}

/// Two attaches stacked on one function, undone newest first, then both at once with `--all`.
fn stacked() -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let pid = t.pid.to_string();
    let attach = ["attach", pid.as_str(), "--lib", FIX_BASIC];
    rpatch(&[&attach[..], &["--func", "compute"]].concat())?;
    t.expect("call 3", "compute 3 300")?;
    rpatch(&[&attach[..], &["--func", "compute=compute_v2"]].concat())?;
    t.expect("call 3", "compute 3 3000")?;
    rpatch(&["rollback", &pid])?;
    t.expect("call 3", "compute 3 300")?;
    rpatch(&["rollback", &pid])?;
    t.expect("call 3", "compute 3 4")?;
    rpatch(&[&attach[..], &["--func", "compute"]].concat())?;
    rpatch(&[&attach[..], &["--func", "compute=compute_v2"]].concat())?;
    t.expect("call 3", "compute 3 3000")?;
    rpatch(&["rollback", &pid, "--all"])?;
    t.expect("call 3", "compute 3 4")
}

/// The scenarios, when the rpatch binary is in the guest.
pub fn scenarios() -> Vec<Scenario> {
    if !std::path::Path::new(RPATCH).exists() {
        return Vec::new();
    }
    vec![
        ("rpatch-attach-rollback", Box::new(|| attach_and_rollback(&[]))),
        ("rpatch-stacked-lifo-and-all", Box::new(stacked)),
    ]
}
