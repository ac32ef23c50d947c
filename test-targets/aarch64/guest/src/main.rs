//! `/init` of the arm64 test guest (scripts/test-aarch64.sh): runs each scenario against real,
//! dynamically linked arm64 processes and prints `PASS name` or `FAIL name: why`, then
//! `guest: N passed, M failed`, and powers the machine off.
//!
//! The kernel command line picks the set: `rpatch.mode=base` (any arm64 CPU) or
//! `rpatch.mode=bti` (a CPU with BTI and pointer authentication: the enforcement checks, which
//! the base set runs the other way round as a control).

mod cli;
mod ptrace;
mod remote;

use remote::{Moment, Session, Snapshot};
use rpatch_arch::aarch64::syscall as sys;
use rpatch_arch::aarch64::vector::VectorRefusal;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// A target process, killed and reaped on drop.
struct Target {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: i32,
}

impl Target {
    fn spawn(path: &str, args: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{path}: {e}"))?;
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut t = Self {
            pid: child.id() as i32,
            child,
            stdin,
            stdout,
        };
        let ready = t.line()?;
        if ready != format!("ready {}", t.pid) {
            return Err(format!("{path} said `{ready}` instead of ready"));
        }
        Ok(t)
    }

    fn line(&mut self) -> Result<String, String> {
        remote::record(format!("{}: waiting for a line", self.pid));
        let mut l = String::new();
        match self.stdout.read_line(&mut l) {
            Ok(0) => Err("target closed its output".into()),
            Ok(_) => {
                remote::record(format!("{}: {}", self.pid, l.trim_end()));
                Ok(l.trim_end().to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn ask(&mut self, command: &str) -> Result<String, String> {
        remote::record(format!("{} <- {command}", self.pid));
        writeln!(self.stdin, "{command}").map_err(|e| e.to_string())?;
        self.line()
    }

    fn expect(&mut self, command: &str, want: &str) -> Result<(), String> {
        let got = self.ask(command)?;
        if got != want {
            return Err(format!("`{command}` answered `{got}`, expected `{want}`"));
        }
        Ok(())
    }

    /// Thread ids, in creation order (the main thread first).
    fn tids(&self) -> Result<Vec<i32>, String> {
        let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort();
        Ok(tids)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A named check: `Err` says why it failed.
type Scenario = (&'static str, Box<dyn Fn() -> Result<(), String> + Send>);

/// How long one scenario may take on a loaded host before it counts as hung.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(480);

/// `sigstorm 4`: workers 0..3 are busy, reader, sleeper (1 ms nanosleep), epoller (5 ms).
const SIGSTORM: &str = "/t/sigstorm";
const SLEEPERS: &str = "/t/sleepers";
const VECTORS: &str = "/t/vectors";
const BTIPAC: &str = "/t/btipac";
const PLANTED: &str = "/t/planted.so";

/// `read` (the reader's and the main thread's blocking call).
const SYS_READ: u64 = 63;

/// Makes a remote `getpid` and a `dlopen` of planted.so (with `dlerror` after it) in the
/// thread of session `s`, and checks the library's constructor ran.
fn getpid_and_dlopen(t: &mut Target, s: &mut Session) -> Result<(), String> {
    let libc = remote::libc(t.pid)?;
    let (pid, _) = s.call(libc.getpid, [0; 6], 0, libc.errno_location)?;
    if pid != t.pid as u64 {
        return Err(format!("remote getpid returned {pid}, expected {}", t.pid));
    }
    let path = s.scratch_string(PLANTED)?;
    let (handle, err) = s.call(
        libc.dlopen,
        [path, libc::RTLD_NOW as u64, 0, 0, 0, 0],
        libc.dlerror,
        libc.errno_location,
    )?;
    if handle == 0 {
        return Err(format!("remote dlopen failed: {}", s.read_string(err)));
    }
    if !s.lost_eintr.is_empty() {
        return Err(format!(
            "EINTR that could not be undone at: {:?}",
            s.lost_eintr
        ));
    }
    if !remote::maps(t.pid)?.iter().any(|m| m.path == PLANTED) {
        return Err("planted.so is not mapped after dlopen".into());
    }
    let said = t.line()?;
    if said != "planted library ran" {
        return Err(format!("the library's constructor did not run (`{said}`)"));
    }
    Ok(())
}

/// The state a thread rests at, as a snapshot to compare with a later one.
fn resting(s: &Session) -> Snapshot {
    Snapshot {
        regs: s.at_rest.resume,
        fp: s.at_rest.fp,
        mask: s.at_rest.mask,
    }
}

/// Once thread `tid` blocks in `read` again, what differs from `before` (PSTATE compared
/// without the bits a resume clears).
fn changes_after(t: &Target, tid: i32, before: &Snapshot) -> Result<Vec<String>, String> {
    let mut now = remote::snapshot_when_blocked(t.pid, tid, SYS_READ)?;
    now.regs = now.regs.cleaned();
    Ok(before.diff(&now))
}

/// Remote calls in thread `tid` of `t`; with `exact` (a thread that cannot move on by itself,
/// blocked in `read`), the thread must afterwards be back in `read` with every register, its
/// FP/SIMD state and its mask as before. Returns the region's address.
fn remote_calls(t: &mut Target, tid: i32, exact: bool, reuse: Option<u64>) -> Result<u64, String> {
    if exact {
        // Not still on its way into `read` (printing, say): its state there is the reference.
        remote::wait_in_call(t.pid, tid, SYS_READ)?;
    }
    let mut s = Session::begin(t.pid, tid, reuse)?;
    let before = resting(&s);
    getpid_and_dlopen(t, &mut s)?;
    let region = s.region.base;
    if reuse.is_none() != (s.bootstrap_runs > 0) {
        return Err("the region was not bootstrapped/reused as asked".into());
    }
    s.end()?;
    if exact {
        let changed = changes_after(t, tid, &before)?;
        if !changed.is_empty() {
            return Err(format!("thread state changed: {}", changed.join(", ")));
        }
    }
    Ok(region)
}

/// The worker of `sigstorm 4` with role `role` (0 busy, 1 read, 2 nanosleep, 3 epoll_wait).
fn remote_on_role(role: usize) -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let tid = t.tids()?[1 + role];
    // Only the reader cannot move on by itself: its state must come back bit for bit.
    remote_calls(&mut t, tid, role == 1, None)?;
    t.expect("call 5", "compute 5 6")?;
    no_spurious_eintr(&mut t)
}

fn no_spurious_eintr(t: &mut Target) -> Result<(), String> {
    let stats = t.ask("stats")?;
    if !stats.contains(" spurious=0 ") {
        return Err(format!("a blocking call saw a spurious EINTR: {stats}"));
    }
    Ok(())
}

/// How long the sleepers' calls last, and how far into one the remote calls come.
const SLEEP_MS: u64 = 2000;
const INTO_SLEEP_MS: u64 = 300;

/// `sleepers KIND`: the worker's call of `SLEEP_MS` is interrupted `INTO_SLEEP_MS` in by a
/// remote `getpid` and `dlopen`, and must end as it would have: no EINTR, the result `want`
/// (rc, errno), and — where the call `continues` (its deadline kept: restart_syscall, an
/// absolute time, or the time left written back) — at its deadline, not a full length after
/// the thread was let go; a `restart_block` call is resumed through `restart_syscall`.
fn restart(
    kind: &str,
    calls: &[u64],
    want: (i64, i32),
    continues: bool,
    restart_block: bool,
) -> Result<(), String> {
    let mut t = Target::spawn(SLEEPERS, &[kind, &SLEEP_MS.to_string()])?;
    let said = t.ask("go")?;
    let started = std::time::Instant::now();
    let tid: i32 = said
        .strip_prefix("sleeping ")
        .and_then(|n| n.parse().ok())
        .ok_or(format!("`{said}`"))?;
    let blocked = remote::wait_blocked(t.pid, tid, Duration::from_secs(10))
        .ok_or("the worker never blocked")?;
    if !calls.contains(&blocked.nr) {
        return Err(format!("blocked in {} instead of {calls:?}", blocked.nr));
    }
    std::thread::sleep(Duration::from_millis(INTO_SLEEP_MS));
    let mut s = Session::begin(t.pid, tid, None)?;
    getpid_and_dlopen(&mut t, &mut s)?;
    let x8 = s.at_rest.resume.x[8];
    let asked = s.asked_kernel;
    s.end()?;
    let released = started.elapsed().as_millis() as u64;
    let woke = t.line()?;
    let field = |name: &str| -> Result<i64, String> {
        woke.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or(format!("no {name} in `{woke}`"))
    };
    let (rc, errno, ms) = (field("rc")?, field("errno")? as i32, field("ms")? as u64);
    if (rc, errno) != want {
        return Err(format!("`{woke}`, expected rc={} errno={}", want.0, want.1));
    }
    if ms + 5 < SLEEP_MS {
        return Err(format!("woke early: `{woke}`"));
    }
    // Continuing, it ends at its deadline or as soon as it is let go, whichever is later;
    // started over, a full length after it was let go.
    if continues && ms >= released.max(SLEEP_MS) + SLEEP_MS / 2 {
        return Err(format!(
            "the call started over instead of continuing: `{woke}`, let go after {released} ms"
        ));
    }
    if restart_block && (x8 != sys::SYS_RESTART_SYSCALL || asked == 0) {
        return Err(format!(
            "resumed with x8 = {x8} after asking the kernel {asked} time(s), expected restart_syscall"
        ));
    }
    Ok(())
}

/// A thread in `sigsuspend` runs with a temporary mask, which the kernel replaces by its own on
/// the way out; at a ptrace stop PTRACE_GETSIGMASK reports its own (the saved) mask. Borrowed
/// there, it goes back into `sigsuspend` (not woken by the remote calls) and, woken, has its
/// own mask: the mask the tracer restores is the right one.
fn temporary_mask() -> Result<(), String> {
    let mut t = Target::spawn(SLEEPERS, &["sigsuspend", "0"])?;
    let usr1 = 1u64 << (libc::SIGUSR1 - 1);
    let said = t.ask("go")?;
    let tid: i32 = said
        .strip_prefix("sleeping ")
        .and_then(|n| n.parse().ok())
        .ok_or(format!("`{said}`"))?;
    let in_sigsuspend = |t: &Target| {
        remote::wait_blocked(t.pid, tid, Duration::from_secs(10))
            .filter(|b| b.nr == sys::SYS_RT_SIGSUSPEND)
            .ok_or("not in rt_sigsuspend")
    };
    in_sigsuspend(&t)?;
    let mut s = Session::begin(t.pid, tid, None)?;
    if s.at_rest.mask != usr1 {
        return Err(format!(
            "mask at the stop {:#x}, its own is {usr1:#x}",
            s.at_rest.mask
        ));
    }
    getpid_and_dlopen(&mut t, &mut s)?;
    s.end()?;
    in_sigsuspend(&t)?;
    writeln!(t.stdin, "wake").map_err(|e| e.to_string())?;
    let woke = t.line()?;
    let want = format!("rc=-1 errno={} ", libc::EINTR);
    if !woke.contains(&want) || !woke.ends_with(&format!("mask={usr1:x}")) {
        return Err(format!("`{woke}`: expected {want}and mask={usr1:x}"));
    }
    Ok(())
}

/// Signals sent (once each) to the reader of `sigstorm 4` at the given moments of a session
/// (bootstrap, then getpid and dlopen): every one handled exactly once, none making `read` fail,
/// and at least the given counts of signals delivered after moving the thread, delivered where
/// it was, and bootstrap runs.
fn signals_during(
    inject: &[(i32, Moment)],
    min_moved: u32,
    min_in_place: u32,
    min_bootstraps: u32,
) -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let tid = t.tids()?[2];
    let mut s = Session::seize(t.pid, tid)?;
    s.inject = inject.to_vec();
    s.open(None)?;
    getpid_and_dlopen(&mut t, &mut s)?;
    let (moved, in_place, runs) = (s.signals_moved, s.signals_in_place, s.bootstrap_runs);
    s.end()?;
    if moved < min_moved || in_place < min_in_place || runs < min_bootstraps {
        return Err(format!(
            "{moved} signal(s) moved, {in_place} delivered in place, {runs} bootstrap run(s)"
        ));
    }
    // sigstorm counts its own handler's signals: the real-time ones.
    let rt = inject
        .iter()
        .filter(|&&(sig, _)| sig >= libc::SIGRTMIN())
        .count();
    handled_exactly(&mut t, rt as u64)?;
    t.expect("call 5", "compute 5 6")?;
    no_spurious_eintr(&mut t)
}

/// Waits until sigstorm reports `n` handled signals (they are delivered as the thread runs on),
/// and fails on more.
fn handled_exactly(t: &mut Target, n: u64) -> Result<(), String> {
    let start = std::time::Instant::now();
    loop {
        let stats = t.ask("stats")?;
        let handled: u64 = stats
            .split_whitespace()
            .find_map(|f| f.strip_prefix("handled="))
            .and_then(|v| v.parse().ok())
            .ok_or(format!("`{stats}`"))?;
        if handled > n {
            return Err(format!("{handled} signals handled, {n} sent: {stats}"));
        }
        if handled == n {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("{handled} signals handled, {n} sent: {stats}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A thread sends SIGRTMIN+1 to the borrowed reader every 300 µs through a whole session: the
/// session completes (blocked from the moment the thread enters rpatch's code, the signals
/// cannot hold it at its first instruction), every signal is handled exactly once and `read`
/// sees no spurious EINTR. Remote `getpid` calls go on until at least 10 signals were sent in
/// the session: how many a fixed set of calls sees depends on how often the guest lets the
/// storm thread run.
fn signal_storm() -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let tid = t.tids()?[2];
    let pid = t.pid;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    let storm = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if ptrace::tgkill(pid, tid, libc::SIGRTMIN() + 1).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let session = (|| {
        let mut s = Session::begin(pid, tid, None)?;
        let first = sent.load(Ordering::Relaxed);
        let libc = remote::libc(pid)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while sent.load(Ordering::Relaxed) - first < 10 && std::time::Instant::now() < deadline {
            let (got, _) = s.call(libc.getpid, [0; 6], 0, libc.errno_location)?;
            if got != pid as u64 {
                return Err(format!("remote getpid returned {got}, expected {pid}"));
            }
        }
        getpid_and_dlopen(&mut t, &mut s)?;
        s.end()?;
        Ok::<u64, String>(sent.load(Ordering::Relaxed) - first)
    })();
    stop.store(true, Ordering::Relaxed);
    storm.join().map_err(|_| "the storm thread panicked")?;
    let during = session?;
    if during < 10 {
        return Err(format!("only {during} signals sent during the calls"));
    }
    handled_exactly(&mut t, sent.load(Ordering::Relaxed))?;
    t.expect("call 5", "compute 5 6")?;
    no_spurious_eintr(&mut t)
}

/// The tracer lets go of the reader in the middle of a call (as if rpatch were killed): the
/// thread finishes the call, waits out the park and returns by itself through the return slot,
/// every register exact.
fn tracer_dies_in_stub() -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let tid = t.tids()?[2];
    let libc = remote::libc(t.pid)?;
    remote::wait_in_call(t.pid, tid, SYS_READ)?;
    let mut s = Session::begin(t.pid, tid, None)?;
    s.park = Duration::from_millis(300);
    let before = resting(&s);
    let (pid, _) = s.call(libc.getpid, [0; 6], 0, libc.errno_location)?;
    if pid != t.pid as u64 {
        return Err(format!("remote getpid returned {pid}"));
    }
    let region = s.region;
    if !s.exact_slot {
        return Err("the region is out of reach of the thread's pc".into());
    }
    s.call_and_vanish(libc.getpid, libc.errno_location)?;
    let changed = changes_after(&t, tid, &before)?;
    if !changed.is_empty() {
        return Err(format!("thread state changed: {}", changed.join(", ")));
    }
    // Never settled: a later rpatch does not reuse the region.
    let mem = std::fs::File::open(format!("/proc/{}/mem", t.pid)).map_err(|e| e.to_string())?;
    let mut done = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(
        &mem,
        &mut done,
        region.data() + rpatch_arch::aarch64::remote_call::data::DONE,
    )
    .map_err(|e| e.to_string())?;
    if u64::from_le_bytes(done) != rpatch_arch::aarch64::remote_call::Done::Returning as u64 {
        return Err(format!(
            "DONE is {done:?} after a return without the tracer"
        ));
    }
    t.expect("call 5", "compute 5 6")?;
    no_spurious_eintr(&mut t)
}

/// The tracer lets go of the reader at the bootstrap's park: the thread returns by itself
/// through `ret x16`, every register exact but x16, which holds its PC.
fn tracer_dies_in_bootstrap() -> Result<(), String> {
    let mut t = Target::spawn(SIGSTORM, &["4"])?;
    let tid = t.tids()?[2];
    remote::wait_in_call(t.pid, tid, SYS_READ)?;
    let mut s = Session::seize(t.pid, tid)?;
    s.park = Duration::from_millis(300);
    let before = resting(&s);
    let (slack, original) = s.bootstrap_and_vanish()?;
    let changed = changes_after(&t, tid, &before)?;
    let want = format!("x16 {:#x} -> {:#x}", before.regs.x[16], before.regs.pc);
    if changed != [want.clone()] {
        return Err(format!("changed: {changed:?}, expected only {want}"));
    }
    // The thread is back in read: the slack gets the file's bytes again.
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{}/mem", t.pid))
        .map_err(|e| e.to_string())?;
    std::os::unix::fs::FileExt::write_all_at(&mem, &original, slack).map_err(|e| e.to_string())?;
    t.expect("call 5", "compute 5 6")?;
    no_spurious_eintr(&mut t)
}

/// `vectors MODE`: a worker spinning with live SVE state, in SME streaming mode or with ZA on is
/// seen so in its register-set headers; streaming mode and ZA are refused for borrowing
/// (`want`), live SVE state is not (rpatch saves it whole: the `rpatch-sve-*` scenarios). On a
/// CPU without the extension the target says `unsupported`, accepted only where `offered` is
/// false (SME depends on the emulator). Returns a note for the PASS line.
fn vector_state(
    mode: &str,
    offered: Option<bool>,
    want: Option<VectorRefusal>,
) -> Result<String, String> {
    let mut t = Target::spawn(VECTORS, &[mode])?;
    let said = t.line()?;
    let tid: i32 = match (said.strip_prefix("spinning "), offered) {
        (Some(tid), Some(false)) => {
            return Err(format!("{mode} offered by a CPU that lacks it: {tid}"));
        }
        (Some(tid), _) => tid.parse().map_err(|_| format!("`{said}`"))?,
        (None, Some(true)) if said == "unsupported" => {
            return Err(format!("{mode} not offered by this CPU"));
        }
        (None, _) if said == "unsupported" => return Ok(format!("{mode} not offered")),
        (None, _) => return Err(format!("`{said}`")),
    };
    let live = |s: &rpatch_arch::aarch64::vector::VectorState| match mode {
        "sve" => s.sve_live,
        "streaming" => s.streaming,
        _ => s.za_active,
    };
    // The worker enters its loop right after saying so: stop it until the state shows.
    ptrace::seize(tid).map_err(|e| e.to_string())?;
    let mut seen = None;
    for _ in 0..200 {
        ptrace::stop(tid)?;
        let state = remote::vector_state(tid);
        if live(&state) {
            seen = Some(state);
            break;
        }
        ptrace::cont(tid, 0).map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(10));
    }
    ptrace::detach(tid).map_err(|e| e.to_string())?;
    let state = seen.ok_or(format!("{mode}: the headers never showed live state"))?;
    match (state.may_borrow(), want) {
        (Ok(()), None) => return Ok(format!("{mode}: live, may be borrowed")),
        (Err(got), Some(want)) if got == want => {}
        (got, _) => return Err(format!("{mode}: {state:?} judged {got:?}")),
    }
    let want = want.expect("checked above");
    match Session::begin(t.pid, tid, None) {
        Err(why) if why.contains(&want.to_string()) => Ok(format!("{mode}: {want}")),
        Err(why) => Err(format!("{mode}: refused for another reason: {why}")),
        Ok(_) => Err(format!("{mode}: borrowed")),
    }
}

/// The three vector states, with what this CPU offers (`enforced`: the `max` boot, with SVE;
/// SME as the emulator provides it).
fn vector_states(enforced: bool) -> Result<(), String> {
    let sve = vector_state("sve", Some(enforced), None)?;
    let sme = (!enforced).then_some(false);
    let streaming = vector_state("streaming", sme, Some(VectorRefusal::Streaming))?;
    let za = vector_state("za", sme, Some(VectorRefusal::ZaActive))?;
    println!("note vector-states: {sve}; {streaming}; {za}");
    Ok(())
}

fn base_scenarios() -> Vec<Scenario> {
    let sigrt1 = libc::SIGRTMIN() + 1;
    vec![
        (
            "dynamic-threads",
            Box::new(|| {
                let mut t = Target::spawn(SIGSTORM, &["4"])?;
                let tids = t.tids()?;
                if tids.len() != 5 {
                    return Err(format!("{} threads, expected 5", tids.len()));
                }
                let maps = remote::maps(t.pid)?;
                for lib in ["/ld-linux-aarch64.so.1", "/libc.so.6"] {
                    if !maps.iter().any(|m| m.path.ends_with(lib)) {
                        return Err(format!("{lib} not mapped: not dynamically linked?"));
                    }
                }
                t.expect("call 5", "compute 5 6")
            }),
        ),
        (
            "getregset",
            Box::new(|| {
                let mut t = Target::spawn(SIGSTORM, &["4"])?;
                let maps = remote::maps(t.pid)?;
                for tid in t.tids()? {
                    ptrace::seize(tid).map_err(|e| e.to_string())?;
                    ptrace::stop(tid)?;
                    let snap = Snapshot::take(tid);
                    let vector = remote::vector_state(tid);
                    ptrace::detach(tid).map_err(|e| e.to_string())?;
                    let r = snap?.regs;
                    let inside = |a: u64, perms: &str| {
                        maps.iter()
                            .any(|m| m.start <= a && a < m.end && m.perms.starts_with(perms))
                    };
                    if !inside(r.pc, "r-x") || !inside(r.sp, "rw") || r.sp % 16 != 0 {
                        return Err(format!("thread {tid}: pc {:#x} sp {:#x}", r.pc, r.sp));
                    }
                    if vector.streaming || vector.za_active {
                        return Err(format!("thread {tid}: {vector:?}"));
                    }
                }
                t.expect("call 5", "compute 5 6")
            }),
        ),
        ("remote-call-busy", Box::new(|| remote_on_role(0))),
        ("remote-call-read-exact", Box::new(|| remote_on_role(1))),
        ("remote-call-nanosleep", Box::new(|| remote_on_role(2))),
        ("remote-call-epoll", Box::new(|| remote_on_role(3))),
        (
            "remote-call-main-and-region-reuse",
            Box::new(|| {
                let mut t = Target::spawn(SIGSTORM, &["4"])?;
                let tids = t.tids()?;
                // The main thread blocks in read(0): exact. Then a worker reuses the region.
                let region = remote_calls(&mut t, tids[0], true, None)?;
                // A second dlopen of the same library runs no constructor: one getpid suffices.
                let libc = remote::libc(t.pid)?;
                let mut s = Session::begin(t.pid, tids[2], Some(region))?;
                let (pid, _) = s.call(libc.getpid, [0; 6], 0, libc.errno_location)?;
                s.end()?;
                if pid != t.pid as u64 {
                    return Err(format!("getpid through the reused region returned {pid}"));
                }
                t.expect("call 9", "compute 9 10")
            }),
        ),
        // nanosleep is clock_nanosleep(CLOCK_REALTIME) in this glibc; either number counts.
        (
            "restart-nanosleep",
            Box::new(|| restart("nanosleep", &[101, 115], (0, 0), true, true)),
        ),
        (
            "restart-clock-nanosleep",
            Box::new(|| restart("clock_nanosleep", &[115], (0, 0), true, true)),
        ),
        (
            "restart-clock-nanosleep-abs",
            Box::new(|| restart("clock_nanosleep_abs", &[115], (0, 0), true, false)),
        ),
        (
            "restart-futex-timeout",
            Box::new(|| restart("futex", &[98], (-1, libc::ETIMEDOUT), true, true)),
        ),
        (
            "restart-poll",
            Box::new(|| restart("poll", &[73], (0, 0), true, false)),
        ),
        // epoll_pwait fails with EINTR when interrupted: rewound, it starts over (no EINTR).
        (
            "restart-epoll-pwait",
            Box::new(|| restart("epoll", &[22], (0, 0), false, false)),
        ),
        ("temporary-mask-sigsuspend", Box::new(temporary_mask)),
        (
            // glibc's SIGSETXID (33), not blocked during the bootstrap, cuts it short at its
            // first instruction: the thread is moved to its own code, the signal delivered
            // there, the bootstrap run again. SIGRTMIN+1, blocked, waits until the thread is
            // back at its own code.
            "signals-in-bootstrap",
            Box::new(move || {
                signals_during(
                    &[(33, Moment::Bootstrap), (sigrt1, Moment::Bootstrap)],
                    1,
                    1,
                    2,
                )
            }),
        ),
        (
            // SIGRTMIN+1, blocked during the call, is delivered once the thread is back at its
            // own code; 33 at the stub's entry is delivered there (its frame returns into the
            // stub); 33 arriving at the park is delivered after the move.
            "signals-in-stub",
            Box::new(move || {
                signals_during(
                    &[
                        (sigrt1, Moment::StubEntry),
                        (33, Moment::StubEntry),
                        (33, Moment::Park),
                    ],
                    1,
                    1,
                    1,
                )
            }),
        ),
        ("signal-storm", Box::new(signal_storm)),
        ("tracer-dies-in-stub", Box::new(tracer_dies_in_stub)),
        (
            "tracer-dies-in-bootstrap",
            Box::new(tracer_dies_in_bootstrap),
        ),
    ]
}

/// Runs `/t/btipac MODE` and returns how it ended: `Ok(code)` or `Err(signal)`.
fn btipac_ends(mode: &str) -> Result<Result<i32, i32>, String> {
    let status = Command::new(BTIPAC)
        .arg(mode)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match status.code() {
        Some(c) => Ok(c),
        None => Err(status.signal().unwrap_or(0)),
    })
}

/// The BTI/PAC checks. With `enforced` (the `bti` boot) they must trap; in the base boot the
/// same binary must run through (the control that shows the checks depend on the CPU).
/// NT_ARM_PAC_MASK of a stopped thread, as rpatch reads it (`isa::pac_mask`): with pointer
/// authentication (the `max` boot), the same non-empty mask for data and instructions, within
/// the bits above a 48- or 52-bit address and below the top byte; without (the base boot),
/// refused with EINVAL, which rpatch takes for "no codes to strip".
fn pac_mask(enforced: bool) -> Result<(), String> {
    const NT_ARM_PAC_MASK: u64 = 0x406;
    let t = Target::spawn(BTIPAC, &["serve"])?;
    let tid = t.tids()?[1];
    ptrace::seize(tid).map_err(|e| e.to_string())?;
    ptrace::stop(tid)?;
    let read = ptrace::get_regset(tid, NT_ARM_PAC_MASK, 16);
    ptrace::detach(tid).map_err(|e| e.to_string())?;
    match (read, enforced) {
        (Ok(bytes), true) if bytes.len() == 16 => {
            let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
            let (data, insn) = (word(0), word(8));
            if data != insn || insn == 0 || insn & !0x007f_f000_0000_0000 != 0 {
                return Err(format!("data mask {data:#x}, instruction mask {insn:#x}"));
            }
            println!("note pac-mask: NT_ARM_PAC_MASK instruction mask {insn:#x}");
            Ok(())
        }
        (Err(e), false) if e.to_string().contains("(os error 22)") => Ok(()),
        (read, _) => Err(format!("NT_ARM_PAC_MASK: {read:?}")),
    }
}

fn bti_scenarios(enforced: bool) -> Vec<Scenario> {
    vec![
        ("vector-states", Box::new(move || vector_states(enforced))),
        ("pac-mask", Box::new(move || pac_mask(enforced))),
        (
            "hwcaps",
            Box::new(move || {
                // SAFETY: getauxval reads the process's auxiliary vector.
                let (hw, hw2) = unsafe {
                    (
                        libc::getauxval(libc::AT_HWCAP),
                        libc::getauxval(libc::AT_HWCAP2),
                    )
                };
                let paca = hw & (1 << 30) != 0;
                let bti = hw2 & (1 << 17) != 0;
                if (paca && bti) != enforced {
                    return Err(format!("HWCAP_PACA {paca}, HWCAP2_BTI {bti}"));
                }
                Ok(())
            }),
        ),
        (
            "bti-guarded-pages",
            Box::new(move || {
                let t = Target::spawn(BTIPAC, &["serve"])?;
                let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", t.pid))
                    .map_err(|e| e.to_string())?;
                // VmFlags of the executable's r-xp mapping.
                let mut in_text = false;
                let mut flags = None;
                for line in smaps.lines() {
                    if line.contains(" r-xp ") {
                        in_text = line.ends_with(BTIPAC);
                    } else if in_text && let Some(f) = line.strip_prefix("VmFlags:") {
                        flags = Some(f.to_string());
                        break;
                    }
                }
                let flags = flags.ok_or("no VmFlags for the text mapping")?;
                if flags.split_whitespace().any(|f| f == "bt") != enforced {
                    return Err(format!("VmFlags:{flags}"));
                }
                Ok(())
            }),
        ),
        (
            "bti-bad-branch",
            Box::new(move || match (btipac_ends("bad-branch")?, enforced) {
                (Err(libc::SIGILL), true) | (Ok(0), false) => Ok(()),
                (end, _) => Err(format!("ended {end:?}")),
            }),
        ),
        (
            "pac-bad-return",
            Box::new(move || match (btipac_ends("bad-return")?, enforced) {
                (Err(libc::SIGSEGV | libc::SIGILL), true) | (Ok(0), false) => Ok(()),
                (end, _) => Err(format!("ended {end:?}")),
            }),
        ),
        (
            "remote-call-guarded-busy",
            Box::new(|| {
                // A worker spins in compute() in a guarded page: it resumes mid-function.
                let mut t = Target::spawn(BTIPAC, &["serve"])?;
                let tid = t.tids()?[1];
                remote_calls(&mut t, tid, false, None)?;
                t.expect("call 5", "compute 5 6")?;
                t.expect("spins", "spinning")
            }),
        ),
        (
            "remote-call-guarded-main",
            Box::new(|| {
                let mut t = Target::spawn(BTIPAC, &["serve"])?;
                let tid = t.tids()?[0];
                remote_calls(&mut t, tid, true, None)?;
                t.expect("call 7", "compute 7 8")
            }),
        ),
    ]
}

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        let _ = std::fs::create_dir_all("/proc");
        let _ = std::fs::create_dir_all("/dev");
        let _ = std::fs::create_dir_all("/tmp");
        // SAFETY: mount with static C strings.
        unsafe {
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                0,
                std::ptr::null(),
            );
            libc::mount(
                c"devtmpfs".as_ptr(),
                c"/dev".as_ptr(),
                c"devtmpfs".as_ptr(),
                0,
                std::ptr::null(),
            );
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let enforced = cmdline.split_whitespace().any(|a| a == "rpatch.mode=bti");
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "guest: kernel {}, mode {}",
        uname.trim(),
        if enforced { "bti" } else { "base" }
    );
    remote::TRACE.store(
        cmdline.split_whitespace().any(|a| a == "rpatch.trace"),
        std::sync::atomic::Ordering::Relaxed,
    );
    let only: Option<Vec<&str>> = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("rpatch.only="))
        .map(|list| list.split(',').collect());
    let mut scenarios = base_scenarios();
    scenarios.extend(bti_scenarios(enforced));
    scenarios.extend(cli::scenarios(enforced));
    if let Some(only) = &only {
        scenarios.retain(|(name, _)| only.contains(name));
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, run) in scenarios {
        let start = std::time::Instant::now();
        // Each scenario in a thread of its own (its ptrace requests all come from it), so a hung
        // one is reported with its latest steps instead of stalling the machine silently.
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(run());
        });
        match result.recv_timeout(SCENARIO_TIMEOUT) {
            Ok(Ok(())) => {
                passed += 1;
                println!("PASS {name} ({} ms)", start.elapsed().as_millis());
            }
            Ok(Err(why)) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
            Err(_) => {
                failed += 1;
                println!(
                    "FAIL {name}: no result after {} s; latest steps:",
                    SCENARIO_TIMEOUT.as_secs()
                );
                for line in remote::RECENT
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                {
                    println!("  {line}");
                }
                // Its target and thread are in an unknown state: stop here.
                break;
            }
        }
    }
    println!("guest: {passed} passed, {failed} failed");
    let _ = std::io::stdout().flush();
    if pid1 {
        // SAFETY: sync and power off; nothing runs after.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
}
