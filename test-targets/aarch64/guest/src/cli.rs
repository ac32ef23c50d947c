//! Scenarios that run the real `rpatch` binary (built for arm64 by scripts/test-aarch64.sh and
//! put at `/rpatch`) against arm64 processes: attach, observe the target's answers change, roll
//! back, observe them come back, and check that no blocking call saw a spurious EINTR.

use super::{BTIPAC, SIGSTORM, Scenario, Target, handled_exactly, ptrace};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The rpatch binary in the guest.
pub const RPATCH: &str = "/rpatch";
/// `compute(x) = x * 100` (test-targets/c/fix_basic.c).
const FIX_BASIC: &str = "/t/fix_basic.so";
/// Threads entering epoll_pwait all the time (test-targets/aarch64/epollers.c).
const EPOLLERS: &str = "/t/epollers";
/// btipac's replacements, built with branch protection (test-targets/aarch64/fix_btipac.c).
const FIX_BTIPAC: &str = "/t/fix_btipac.so";
/// A worker checking its SVE registers in a loop (test-targets/aarch64/sveregs.c).
const SVEREGS: &str = "/t/sveregs";

/// No blocking call of sigstorm's saw a spurious EINTR, but for at most `epoll_allowed` in
/// `epoll_pwait`: a run of rpatch killed between a thread's interrupt and its repair leaves that
/// thread's EINTR-only call failing (on x86_64 too, scripts/kill-stress.sh). sigstorm has one
/// epoll instance, so rpatch always proves which call to re-enter (`isa::rewind_eintr`).
fn no_spurious_eintr(t: &mut Target, epoll_allowed: u64) -> Result<(), String> {
    let stats = t.ask("stats")?;
    let field = |name: &str| {
        stats
            .split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("no {name} in `{stats}`"))
    };
    let (total, epoll) = (field("spurious")?, field("spurious_epoll")?);
    if total != epoll || epoll > epoll_allowed {
        return Err(format!("a blocking call saw a spurious EINTR: {stats}"));
    }
    Ok(())
}

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
    no_spurious_eintr(&mut t, 0)
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

/// A function starting with `bti c` and one starting with `paciasp` (pac-ret), patched while a
/// worker calls both in a loop: with BTI and pointer authentication enforced (the second boot)
/// any entry left wrong faults the worker. The replacements live in a guarded library too.
fn bti_pac_entries() -> Result<(), String> {
    let mut t = Target::spawn(BTIPAC, &["serve"])?;
    let pid = t.pid.to_string();
    t.expect("signed 5", "signed 5 12")?;
    let out = rpatch(&[
        "attach", &pid, "--lib", FIX_BTIPAC, "--func", "compute", "--func", "signed_", "--json",
    ])?;
    t.expect("call 5", "compute 5 500")?;
    t.expect("signed 5", "signed 5 5000")?;
    t.expect("spins", "spinning")?;
    // compute keeps its `bti c` and branches after it; signed_'s `paciasp` became `bti c`.
    let entries = entry_words(t.pid, &["compute", "signed_"], 2)?;
    let is_b = |w: u32| w & 0xfc00_0000 == 0x1400_0000;
    const BTI_C: u32 = 0xd503_245f;
    if entries.iter().any(|w| w[0] != BTI_C || !is_b(w[1])) {
        return Err(format!("entries after the patch: {entries:x?}"));
    }
    rpatch(&["rollback", &pid])?;
    const PACIASP: u32 = 0xd503_233f;
    let restored = entry_words(t.pid, &["signed_"], 1)?;
    if restored[0][0] != PACIASP {
        return Err(format!("signed_ starts with {:#x} after the rollback", restored[0][0]));
    }
    t.expect("call 5", "compute 5 6")?;
    t.expect("signed 5", "signed 5 12")?;
    t.expect("spins", "spinning")?;
    if !out.contains("\"island\"") && !out.contains("\"direct\"") {
        return Err(format!("no jump method in the report: {out}"));
    }
    Ok(())
}

/// The first `n` instruction words of each of `names` in the executable of `pid`.
fn entry_words(pid: i32, names: &[&str], n: usize) -> Result<Vec<Vec<u32>>, String> {
    use object::{Object, ObjectSymbol};
    use std::os::unix::fs::FileExt;
    let (base, path, bytes) = super::remote::module(pid, BTIPAC)?;
    let elf = object::File::parse(&*bytes).map_err(|e| format!("{path}: {e}"))?;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| e.to_string())?;
    names
        .iter()
        .map(|name| {
            let at = elf
                .symbols()
                .find(|s| s.name() == Ok(name))
                .map(|s| base + s.address())
                .ok_or(format!("{name} not in {path}"))?;
            let mut buf = vec![0u8; 4 * n];
            mem.read_exact_at(&mut buf, at).map_err(|e| e.to_string())?;
            Ok(buf
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
                .collect())
        })
        .collect()
}

/// A Rust target: `calcapp::pricing::calc` (found by its path in DWARF) replaced by the
/// cdylib's, then rolled back.
fn rust_target() -> Result<(), String> {
    let mut t = Target::spawn("/t/calcapp", &[])?;
    let pid = t.pid.to_string();
    t.expect("call 4", "calc 4 14")?;
    rpatch(&[
        "attach",
        &pid,
        "--lib",
        "/t/libcalcapp.so",
        "--func",
        "calcapp::pricing::calc",
    ])?;
    t.expect("call 4", "calc 4 4000")?;
    rpatch(&["rollback", &pid])?;
    t.expect("call 4", "calc 4 14")
}

/// A PIE executable lies far from where dlopen maps the library: the entry jump goes through
/// an island page in reach of the function, which the report says.
fn island() -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let pid = t.pid.to_string();
    let out = rpatch(&["attach", &pid, "--lib", FIX_BASIC, "--func", "compute", "--json"])?;
    t.expect("call 7", "compute 7 700")?;
    if !out.contains("\"island\"") {
        return Err(format!("the jump did not go through an island: {out}"));
    }
    rpatch(&["rollback", &pid])?;
    t.expect("call 7", "compute 7 8")
}

/// A small deterministic generator for the kill times (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// rpatch is SIGKILLed at a random moment of an attach or a rollback, `rounds` times on one target
/// (its four worker roles running and handling signals): the target always answers, either
/// patched or not, never both and never broken; the next run settles what the killed one left
/// (`status`, then a rollback of anything applied), and no blocking call saw a spurious EINTR.
fn random_kills(rounds: usize) -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let pid = t.pid.to_string();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let (mut killed, mut applied) = (0, 0);
    for round in 0..rounds {
        let rollback = round % 3 == 2 && t.ask("call 5")? == "compute 5 500";
        let args: Vec<&str> = if rollback {
            vec!["rollback", &pid]
        } else {
            vec!["attach", &pid, "--lib", FIX_BASIC, "--func", "compute"]
        };
        let mut child = Command::new(RPATCH)
            .args(&args)
            .env("RPATCH_STATE_DIR", "/tmp/rpatch-state")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{RPATCH}: {e}"))?;
        std::thread::sleep(Duration::from_millis(rng.below(1200)));
        if child.try_wait().map_err(|e| e.to_string())?.is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let answer = t.ask("call 5")?;
        match answer.as_str() {
            "compute 5 6" => {}
            "compute 5 500" => applied += 1,
            other => return Err(format!("round {round}: the target answered `{other}`")),
        }
        rpatch(&["status", &pid]).map_err(|e| format!("round {round}: {e}"))?;
        if t.ask("call 5")? != answer {
            return Err(format!("round {round}: status changed the target's answer"));
        }
    }
    // Whatever is applied now goes, newest first.
    if t.ask("call 5")? == "compute 5 500" {
        rpatch(&["rollback", &pid, "--all"])?;
    }
    t.expect("call 5", "compute 5 6")?;
    no_spurious_eintr(&mut t, killed)?;
    println!("note random-kills: {killed} of {rounds} runs killed mid-way, {applied} rounds ended patched");
    Ok(())
}

/// Every thread of a fresh target (so the attach bootstraps its stub region) gets SIGRTMIN+1
/// every 300 µs, round robin, through a whole first attach and its rollback, five times: both
/// complete, every signal is handled exactly once and no blocking call sees a spurious EINTR.
fn first_attach_under_signal_storm() -> Result<(), String> {
    for round in 0..5 {
        let mut t = Target::spawn(SIGSTORM, &["4"])?;
        let pid = t.pid;
        let tids = t.tids()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let storm = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    if ptrace::tgkill(pid, tids[i % tids.len()], libc::SIGRTMIN() + 1).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        };
        let started = Instant::now();
        let p = pid.to_string();
        let result = rpatch(&["attach", &p, "--lib", FIX_BASIC, "--func", "compute"])
            .and_then(|_| rpatch(&["rollback", &p]));
        stop.store(true, Ordering::Relaxed);
        storm.join().map_err(|_| "the storm thread panicked")?;
        result.map_err(|e| format!("round {round}: {e}"))?;
        let n = sent.load(Ordering::Relaxed);
        if n < 10 {
            return Err(format!("round {round}: only {n} signals sent in {:?}", started.elapsed()));
        }
        handled_exactly(&mut t, n).map_err(|e| format!("round {round}: {e}"))?;
        t.expect("call 5", "compute 5 6")?;
        no_spurious_eintr(&mut t, 0).map_err(|e| format!("round {round}: {e}"))?;
    }
    Ok(())
}

/// Worker threads of `epollers FDS 4` (test-targets/aarch64/epollers.c) alternate 200 µs of
/// work with a 1 ms `epoll_wait` on one of `fds` instances in turn, so rpatch often finds one
/// running and stops it just as it enters the call; `rounds` attaches and rollbacks. Nothing
/// signals the target, so every EINTR a worker sees is spurious. With one instance, rpatch
/// always proves which call to re-enter: no EINTR and no warning. With two, waited on from one
/// call site, an EINTR it could not undo is one its report warns of: for each thread, EINTRs
/// seen == warnings naming it, exactly (and every warning names an epoll_pwait).
fn epoll_race(fds: usize, rounds: usize) -> Result<(), String> {
    let mut t = Target::spawn(EPOLLERS, &[&fds.to_string(), "4"])?;
    let pid = t.pid.to_string();
    let mut warned: std::collections::BTreeMap<i32, u64> = Default::default();
    let mut count_warnings = |out: &str| -> Result<(), String> {
        for line in out.lines().filter(|l| l.contains("rpatch: warning:")) {
            let tid = line
                .split("thread ")
                .nth(1)
                .and_then(|r| r.split("'s epoll_pwait may return EINTR once").next())
                .and_then(|n| n.parse().ok())
                .ok_or(format!("an unexpected warning: {line}"))?;
            *warned.entry(tid).or_default() += 1;
        }
        Ok(())
    };
    for round in 0..rounds {
        let out = rpatch(&["attach", &pid, "--lib", FIX_BASIC, "--func", "compute"])
            .map_err(|e| format!("round {round}: {e}"))?;
        count_warnings(&out)?;
        t.expect("call 5", "compute 5 500")?;
        let out = rpatch(&["rollback", &pid]).map_err(|e| format!("round {round}: {e}"))?;
        count_warnings(&out)?;
        t.expect("call 5", "compute 5 6")?;
    }
    if fds == 1 && !warned.is_empty() {
        return Err(format!("warnings with one epoll instance: {warned:?}"));
    }
    // A thread sees its EINTR as soon as it runs again: wait for the counts to agree.
    let start = Instant::now();
    loop {
        let stats = t.ask("stats")?;
        let seen: std::collections::BTreeMap<i32, u64> = stats
            .split_whitespace()
            .find_map(|f| f.strip_prefix("threads="))
            .ok_or(format!("`{stats}`"))?
            .split(',')
            .filter_map(|p| {
                let (tid, n) = p.split_once(':')?;
                Some((tid.parse().ok()?, n.parse().ok()?))
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        if seen == warned {
            let total: u64 = warned.values().sum();
            println!("note epoll-race-{fds}: {rounds} attach/rollback rounds, {total} EINTR kept and warned of; {stats}");
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("EINTRs seen {seen:?}, warned of {warned:?}: {stats}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The number after `name=` in `line`.
fn field(line: &str, name: &str) -> Result<i64, String> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .ok_or(format!("no {name} in `{line}`"))
}

/// Waits until the worker of `sveregs` has passed more checks than `after` and returns how many;
/// fails as soon as it reports a register that differed.
fn sve_checks_after(t: &mut Target, after: i64, when: &str) -> Result<i64, String> {
    let start = Instant::now();
    loop {
        let said = t.ask("check")?;
        if field(&said, "bad")? != 0 {
            return Err(format!("{when}: the worker saw a register differ: `{said}`"));
        }
        let rounds = field(&said, "rounds")?;
        if rounds > after {
            return Ok(rounds);
        }
        // A generous bound: the worker runs as soon as rpatch lets it go, but a loaded host
        // may keep it from a CPU for a while.
        if start.elapsed() > Duration::from_secs(60) {
            return Err(format!("{when}: the worker passed no check since: `{said}`"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A thread with live SVE state, borrowed: the worker of `sveregs VL` keeps Z0–Z31, P0–P15,
/// FFR and FPCR at known values and checks them in a loop with no system call, while its main
/// thread serves commands from a signal handler, so rpatch can borrow only the worker, and
/// takes it with its SVE state live (`-v` says all three). `rounds` attaches and rollbacks; after
/// each the worker must have passed new checks, and at the end it must never have seen a
/// register differ, with its vector length and VL_INHERIT flag (prctl) unchanged. Without SVE
/// (the base boot) the target must say it is unsupported.
fn sve_borrowed(vl: u32, rounds: usize, sve: bool) -> Result<(), String> {
    let mut t = Target::spawn(SVEREGS, &[&vl.to_string()])?;
    let said = t.line()?;
    if !sve {
        return match said.as_str() {
            "unsupported" => Ok(()),
            _ => Err(format!("SVE offered by a CPU that lacks it: `{said}`")),
        };
    }
    let tid: i32 = said
        .strip_prefix("holding ")
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .ok_or(format!("`{said}`"))?;
    let got_vl = field(&said, "vl")?;
    let pid = t.pid.to_string();
    let mut checks = sve_checks_after(&mut t, 0, "before the first attach")?;
    let (mut borrowed, mut last_choice) = (0, 0);
    for round in 0..rounds {
        let out = rpatch(&["attach", &pid, "--lib", FIX_BASIC, "--func", "compute", "-v"])
            .map_err(|e| format!("round {round}: {e}"))?;
        borrowed += usize::from(out.contains(&format!("borrowing thread {tid} ")));
        last_choice += usize::from(out.contains(&format!(
            "thread {tid}: live SVE state, kept as a last choice"
        )));
        // The main thread, blocked in read in its SIGUSR1 handler, is seen there (the signal
        // frame is found through the vDSO's sigreturn trampoline, which has no CFI).
        let in_handler = format!("passing over: thread {pid} is inside a signal handler");
        if !out.contains(&in_handler) {
            return Err(format!("round {round}: no `{in_handler}`: {out}"));
        }
        if out.contains("borrowing thread") && !out.contains(&format!("borrowing thread {tid} ")) {
            return Err(format!("round {round}: another thread was borrowed: {out}"));
        }
        t.expect("call 5", "compute 5 500")?;
        checks = sve_checks_after(&mut t, checks, &format!("round {round}, after the attach"))?;
        rpatch(&["rollback", &pid]).map_err(|e| format!("round {round}: {e}"))?;
        t.expect("call 5", "compute 5 6")?;
        checks = sve_checks_after(&mut t, checks, &format!("round {round}, after the rollback"))?;
    }
    if borrowed != rounds || last_choice != rounds {
        return Err(format!(
            "thread {tid} borrowed in {borrowed} of {rounds} attaches, seen live in {last_choice}"
        ));
    }
    let end = t.ask("stop")?;
    let want = format!("bad=0 vl={got_vl}/{got_vl} inherit=1/1");
    if !end.starts_with("stopped ") || !end.ends_with(&want) {
        return Err(format!("`{end}`, expected `... {want}`"));
    }
    println!(
        "note sve-vl{vl}: thread {tid} borrowed with live SVE state (vl {got_vl}) in {rounds} \
         attaches; {} checks of Z0-Z31, P0-P15, FFR, FPCR: none differed; vl and VL_INHERIT kept",
        field(&end, "rounds")?
    );
    Ok(())
}

/// The scenarios, when the rpatch binary is in the guest (the same in both boots but for SVE,
/// which only the `max` CPU (`sve`) offers).
pub fn scenarios(sve: bool) -> Vec<Scenario> {
    if !std::path::Path::new(RPATCH).exists() {
        return Vec::new();
    }
    vec![
        ("rpatch-attach-rollback", Box::new(|| attach_and_rollback(&[]))),
        ("rpatch-stacked-lifo-and-all", Box::new(stacked)),
        ("rpatch-island", Box::new(island)),
        ("rpatch-rust-target", Box::new(rust_target)),
        ("rpatch-bti-pac-entries", Box::new(bti_pac_entries)),
        ("rpatch-first-attach-signal-storm", Box::new(first_attach_under_signal_storm)),
        ("rpatch-epoll-race-one-instance", Box::new(|| epoll_race(1, 6))),
        ("rpatch-epoll-race-two-instances", Box::new(|| epoll_race(2, 6))),
        ("rpatch-sve-live-vl32", Box::new(move || sve_borrowed(32, 3, sve))),
        ("rpatch-sve-live-vl256", Box::new(move || sve_borrowed(256, 2, sve))),
        ("rpatch-random-kills", Box::new(|| random_kills(50))),
    ]
}
