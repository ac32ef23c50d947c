//! `/init` of the arm64 test guest (scripts/test-aarch64.sh): runs each scenario against real,
//! dynamically linked arm64 processes and prints `PASS name` or `FAIL name: why`, then
//! `guest: N passed, M failed`, and powers the machine off.
//!
//! The kernel command line picks the set: `rpatch.mode=base` (any arm64 CPU) or
//! `rpatch.mode=bti` (a CPU with BTI and pointer authentication: the enforcement checks, which
//! the base set runs the other way round as a control).

mod ptrace;
mod remote;

use remote::Session;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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
        let mut l = String::new();
        match self.stdout.read_line(&mut l) {
            Ok(0) => Err("target closed its output".into()),
            Ok(_) => Ok(l.trim_end().to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn ask(&mut self, command: &str) -> Result<String, String> {
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
type Scenario = (&'static str, Box<dyn Fn() -> Result<(), String>>);

/// `sigstorm 4`: workers 0..3 are busy, reader, sleeper (1 ms nanosleep), epoller (5 ms).
const SIGSTORM: &str = "/t/sigstorm";
const BTIPAC: &str = "/t/btipac";
const PLANTED: &str = "/t/planted.so";

/// Makes a remote `getpid` and a `dlopen` of planted.so (with `dlerror` after it) in thread
/// `tid` of `t`, and checks the thread is back exactly as it was when `exact` (a thread that
/// cannot move on by itself).
fn remote_calls(t: &mut Target, tid: i32, exact: bool, reuse: Option<u64>) -> Result<u64, String> {
    let libc = remote::libc(t.pid)?;
    let mut s = Session::begin(t.pid, tid, reuse)?;
    let before = s.at_rest;
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
    let after = s.at_rest;
    if !s.lost_eintr.is_empty() {
        return Err(format!(
            "EINTR that could not be undone at: {:?}",
            s.lost_eintr
        ));
    }
    let region = s.region.base;
    let bootstrapped = s.bootstrapped;
    s.end()?;
    if exact && after != before {
        return Err(format!(
            "thread state changed:\nbefore {before:x?}\nafter  {after:x?}"
        ));
    }
    if reuse.is_none() != bootstrapped {
        return Err("the region was not bootstrapped/reused as asked".into());
    }
    if !remote::maps(t.pid)?.iter().any(|m| m.path == PLANTED) {
        return Err("planted.so is not mapped after dlopen".into());
    }
    let said = t.line()?;
    if said != "planted library ran" {
        return Err(format!("the library's constructor did not run (`{said}`)"));
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
    let stats = t.ask("stats")?;
    if !stats.contains(" spurious=0 ") {
        return Err(format!("a blocking call saw a spurious EINTR: {stats}"));
    }
    Ok(())
}

fn base_scenarios() -> Vec<Scenario> {
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
                    let regs = ptrace::get_regset(tid, ptrace::NT_PRSTATUS, 272)
                        .map_err(|e| e.to_string())?;
                    let fp = ptrace::get_regset(tid, ptrace::NT_PRFPREG, 528)
                        .map_err(|e| e.to_string())?;
                    let r = rpatch_arch::aarch64::remote_call::ResumeState::from_prstatus(&regs)
                        .ok_or("short")?;
                    ptrace::detach(tid).map_err(|e| e.to_string())?;
                    let inside = |a: u64, perms: &str| {
                        maps.iter()
                            .any(|m| m.start <= a && a < m.end && m.perms.starts_with(perms))
                    };
                    if fp.len() != 528
                        || !inside(r.pc, "r-x")
                        || !inside(r.sp, "rw")
                        || r.sp % 16 != 0
                    {
                        return Err(format!(
                            "thread {tid}: pc {:#x} sp {:#x} fp {} bytes",
                            r.pc,
                            r.sp,
                            fp.len()
                        ));
                    }
                }
                t.expect("call 5", "compute 5 6")
            }),
        ),
        ("remote-call-busy", Box::new(|| remote_on_role(0))),
        ("remote-call-read", Box::new(|| remote_on_role(1))),
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
fn bti_scenarios(enforced: bool) -> Vec<Scenario> {
    vec![
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
    let mut scenarios = base_scenarios();
    scenarios.extend(bti_scenarios(enforced));
    let (mut passed, mut failed) = (0, 0);
    for (name, run) in scenarios {
        let start = std::time::Instant::now();
        match run() {
            Ok(()) => {
                passed += 1;
                println!("PASS {name} ({} ms)", start.elapsed().as_millis());
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {name}: {why}");
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
