//! `rpatch watch FILE.toml|DIR...`: keeps manifests applied — to every matching process running
//! when it starts, to each process that starts later (a restarted service: new PID), and as
//! manifests are added to, changed in or removed from a directory.
//!
//! New processes come from the proc connector, or from a scan of `/proc` every 100 ms where it
//! gives nothing (`events`); when scanning, an `exec` that keeps its PID is seen by a change of
//! the process's [`ExecKey`] (each process's looked at every 500 ms). A process is patched only once its dynamic loader is done
//! (`patch::loader_done`, retried every 10 ms), at most once per manifest; a patch a user rolled
//! back by hand stays rolled back (its journal says so). A manifest removed from a directory is
//! rolled back everywhere; a changed one is rolled back and the new one applied. Manifests and
//! libraries must be owned by root (or the user running watch) and not writable by group or
//! others. Everything runs on the calling thread: each target's ptrace calls stay on it.

use super::events::{EXEC_CHECK_SLICES, Events, ExecKey, POLL_INTERVAL, ProcConnector};
use super::manifest::LoadedManifest;
use super::report::{Failure, Outcome};
use super::select::{self, Match, Scanned};
use super::{FleetOptions, ManifestRollbackOptions, Selection};
use crate::log::Log;
use crate::patch::{
    self, Allowances, AttachOptions, AttachOutcome, FunctionRequest, ManifestTag, Readiness,
};
use crate::{Error, ErrorKind};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What `watch` does.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Manifest files, and directories whose `*.toml` files are manifests.
    pub paths: Vec<PathBuf>,
    /// Scan `/proc` every 100 ms instead of listening to the proc connector.
    pub poll: bool,
    /// Per attach: how long to wait for threads to leave the functions.
    pub timeout: Duration,
    /// Per attach: how long the library's loading may take.
    pub load_timeout: Duration,
}

/// Where `watch` learns of new processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSource {
    /// The kernel's proc connector (an event per `exec`).
    ProcConnector,
    /// A scan of `/proc` every 100 ms, and why (`--poll`, or the connector's probe failed).
    Polling(String),
}

/// One thing `watch` did or found: the daemon's log is one line per event.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// Watching started.
    Started {
        /// The manifests loaded (names).
        manifests: Vec<String>,
        /// Where new processes come from.
        source: EventSource,
    },
    /// A manifest was loaded (at start, or added to a directory).
    ManifestLoaded {
        /// Its name.
        name: String,
        /// Its file.
        path: PathBuf,
    },
    /// A manifest file was refused (invalid, unsafe ownership or mode, library hash differs).
    ManifestRefused {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A manifest left its directory (or changed): its patch is rolled back everywhere.
    ManifestRemoved {
        /// Its name.
        name: String,
        /// Its file.
        path: PathBuf,
    },
    /// Something happened to one process.
    Process {
        /// Process id.
        pid: i32,
        /// Its executable.
        exe: PathBuf,
        /// The manifest.
        manifest: String,
        /// What happened.
        what: ProcessEvent,
    },
    /// The proc connector lost events: every process is looked at again.
    EventsLost,
    /// The proc connector failed (why): `/proc` is scanned every 100 ms from now on.
    Polling(String),
    /// Watching stopped (SIGTERM); patches stay.
    Stopped,
}

/// What happened to one process.
#[derive(Debug, Clone)]
pub enum ProcessEvent {
    /// The patch was applied; `after_start_ms`: how long after the process started.
    Applied {
        /// Patch ids.
        patch_ids: Vec<u64>,
        /// Milliseconds from the process's start to the patch; for a process already known
        /// that executed a new program, from when watch learnt of that `exec` (its start time
        /// is its fork's).
        after_start_ms: Option<u64>,
        /// Whether `after_start_ms` counts from such an `exec`.
        after_exec: bool,
    },
    /// It carried the patch already.
    AlreadyApplied(Vec<u64>),
    /// The patch was rolled back by hand in it: not applied again.
    KeptRolledBack(Vec<u64>),
    /// It maps another build of a module of the manifest.
    Skipped(String),
    /// Its loader was not done within the time allowed.
    NotReady(String),
    /// The attach or rollback failed (it was left as it was).
    Failed(Failure),
    /// The manifest's patch was rolled back (the manifest was removed or changed).
    RolledBack(Vec<u64>),
    /// It shares the address space of another process (named in the reason) without being
    /// its thread: its code is that one's, patched with it.
    SharedMm(String),
    /// It was forked while a library loaded into its ancestor (named in the reason): never
    /// patched.
    Inconsistent(String),
}

/// How long a new process is looked at for a module of a manifest (its program may `exec`
/// another, its loader maps libraries).
const NEW_PROCESS_WINDOW: Duration = Duration::from_secs(2);
/// How often a matching process whose loader is not done is looked at again.
const READY_RETRY: Duration = Duration::from_millis(10);
/// How long a matching process may take to be done with its loader.
const READY_WAIT: Duration = Duration::from_secs(5);
/// How often manifest files and directories are read again.
const REFRESH: Duration = Duration::from_secs(1);
/// How often every process is looked at again: one may load a manifest's library late (a
/// plugin's `dlopen`), or, when scanning `/proc`, `exec` in a way its [`ExecKey`] does not
/// show (its own program again with address-space randomisation off).
const RESCAN: Duration = Duration::from_secs(30);

/// The manifests being kept applied, each by its identity (name and library hash).
type Key = (String, String);

/// Runs until `stop` is set (checked at least every 100 ms, between actions), reporting every
/// action to `report`. Paths that cannot be read, and manifests that are refused, are reported
/// and looked at again every second; nothing here ends the daemon but `stop`.
pub fn watch(
    options: &WatchOptions,
    log: &Log,
    stop: &AtomicBool,
    report: &mut dyn FnMut(WatchEvent),
) -> Result<(), Error> {
    let mut watcher = Watcher {
        options,
        log,
        manifests: Vec::new(),
        polling: true,
        refused: HashMap::new(),
        processes: HashMap::new(),
        report,
    };
    watcher.refresh_manifests();
    let connector = if options.poll {
        Err("--poll".to_string())
    } else {
        ProcConnector::connect()
    };
    let (mut connector, source) = match connector {
        Ok(c) => (Some(c), EventSource::ProcConnector),
        Err(why) => (None, EventSource::Polling(why)),
    };
    watcher.polling = connector.is_none();
    let names = watcher
        .manifests
        .iter()
        .map(|m| m.loaded.manifest.name.clone())
        .collect();
    (watcher.report)(WatchEvent::Started {
        manifests: names,
        source,
    });
    let mut known: HashSet<i32> = select::all_pids().into_iter().collect();
    for &pid in &known {
        watcher.enqueue(pid, Duration::ZERO);
    }
    let mut next_poll = Instant::now() + POLL_INTERVAL;
    let mut next_refresh = Instant::now() + REFRESH;
    let mut next_rescan = Instant::now() + RESCAN;
    let mut polls = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let due = watcher.next_due().unwrap_or(now + POLL_INTERVAL);
        let timeout = due.min(now + POLL_INTERVAL).saturating_duration_since(now);
        match &connector {
            Some(c) => {
                let Events { execs, lost } = match c.wait(timeout) {
                    Ok(events) => events,
                    Err(e) => {
                        // The socket broke: scan /proc from now on, starting with every process.
                        (watcher.report)(WatchEvent::Polling(format!("proc connector: {e}")));
                        connector = None;
                        watcher.polling = true;
                        Events {
                            execs: Vec::new(),
                            lost: true,
                        }
                    }
                };
                for pid in execs {
                    watcher.exec(pid);
                }
                if lost {
                    (watcher.report)(WatchEvent::EventsLost);
                    for pid in select::all_pids() {
                        if !watcher.processes.contains_key(&pid) {
                            watcher.enqueue(pid, NEW_PROCESS_WINDOW);
                        }
                    }
                }
            }
            None => {
                std::thread::sleep(timeout.min(next_poll.saturating_duration_since(now)));
                if Instant::now() >= next_poll {
                    let pids: HashSet<i32> = select::all_pids().into_iter().collect();
                    for &pid in pids.difference(&known) {
                        watcher.enqueue(pid, NEW_PROCESS_WINDOW);
                    }
                    known = pids;
                    watcher.look_for_execs(polls);
                    polls = polls.wrapping_add(1);
                    next_poll = Instant::now() + POLL_INTERVAL;
                }
            }
        }
        watcher.run_due();
        if Instant::now() >= next_refresh {
            watcher.refresh_manifests();
            watcher.forget_exited();
            next_refresh = Instant::now() + REFRESH;
        }
        if Instant::now() >= next_rescan {
            crate::prune_state(log, true);
            for pid in select::all_pids() {
                watcher.enqueue(pid, Duration::ZERO);
            }
            next_rescan = Instant::now() + RESCAN;
        }
    }
    (watcher.report)(WatchEvent::Stopped);
    Ok(())
}

/// A manifest being kept applied.
struct Watched {
    /// The file it was read from.
    path: PathBuf,
    /// Its content when read (a change is a removal and an addition).
    text: Vec<u8>,
    loaded: LoadedManifest,
}

impl Watched {
    fn key(&self) -> Key {
        (
            self.loaded.manifest.name.clone(),
            self.loaded.manifest.library_sha256.clone(),
        )
    }

    fn tag(&self) -> ManifestTag {
        ManifestTag {
            keep_rolled_back: true,
            ..self.loaded.tag()
        }
    }
}

/// What watch knows of one process.
struct Tracked {
    start_time: u64,
    /// What its last `exec` made of its address space, when polling: a change is an `exec`
    /// that kept the PID (see [`ExecKey`]).
    exec_key: Option<ExecKey>,
    /// When watch learnt that this process, settled before, executed a new program.
    execed: Option<Instant>,
    /// The manifests it was given (or found to map another build of): each manifest once. A
    /// manifest it maps no module of is looked at again at the next rescan.
    done: HashSet<Key>,
    pending: Option<Pending>,
}

/// A process to look at again.
struct Pending {
    /// Until when a manifest it does not map yet may still become its (0 for processes that
    /// were running already).
    window_end: Instant,
    /// Until when it may take to be done with its loader.
    ready_by: Instant,
    next: Instant,
    interval: Duration,
}

struct Watcher<'a> {
    options: &'a WatchOptions,
    log: &'a Log,
    manifests: Vec<Watched>,
    /// Whether new processes come from scanning `/proc` (no `exec` events).
    polling: bool,
    /// Files refused, with why (said once per reason; tried again at every refresh, as the
    /// library may be fixed without the manifest changing).
    refused: HashMap<PathBuf, String>,
    processes: HashMap<i32, Tracked>,
    report: &'a mut dyn FnMut(WatchEvent),
}

impl Watcher<'_> {
    /// Looks at `pid` (again), for `window` at most if it maps none of the manifests yet.
    fn enqueue(&mut self, pid: i32, window: Duration) {
        if pid == std::process::id() as i32 {
            return;
        }
        let Ok((_, start_time, _)) = crate::process::read_stat(pid, pid) else {
            return;
        };
        let now = Instant::now();
        let fresh = || Tracked {
            start_time,
            exec_key: ExecKey::of(pid),
            execed: None,
            done: HashSet::new(),
            pending: None,
        };
        let tracked = self.processes.entry(pid).or_insert_with(fresh);
        if tracked.start_time != start_time {
            *tracked = fresh();
        }
        // A process already waited for keeps the longer of its window and this one.
        let (window_end, ready_by) = match &tracked.pending {
            Some(p) => (
                p.window_end.max(now + window),
                p.ready_by.max(now + READY_WAIT),
            ),
            None => (now + window, now + READY_WAIT),
        };
        tracked.pending = Some(Pending {
            window_end,
            ready_by,
            next: now,
            interval: READY_RETRY,
        });
    }

    /// `pid` executed a new program: a new image, to be given every manifest again.
    fn exec(&mut self, pid: i32) {
        if let Some(t) = self.processes.get_mut(&pid) {
            t.done.clear();
            t.exec_key = ExecKey::of(pid);
            // A process still being looked at since it appeared is still starting (a fork,
            // then its exec): its start time stays the reference.
            if t.pending.is_none() {
                t.execed = Some(Instant::now());
            }
        }
        self.enqueue(pid, NEW_PROCESS_WINDOW);
    }

    /// When polling (no `exec` events): looks at the [`ExecKey`] of one slice of the known
    /// processes (the `round`th of [`EXEC_CHECK_SLICES`]), and treats each whose key changed as
    /// having executed a new program: every process is looked at once per
    /// `EXEC_CHECK_SLICES` polls. A new PID is found by the scan itself.
    fn look_for_execs(&mut self, round: usize) {
        let slice = round % EXEC_CHECK_SLICES;
        let execed: Vec<i32> = self
            .processes
            .iter()
            .filter(|&(&pid, _)| pid.unsigned_abs() as usize % EXEC_CHECK_SLICES == slice)
            .filter(|&(&pid, t)| ExecKey::of(pid).is_some_and(|k| Some(k) != t.exec_key))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in execed {
            self.log
                .step("watch", format!("PID {pid} executed a new program"));
            self.exec(pid);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.processes
            .values()
            .filter_map(|t| t.pending.as_ref().map(|p| p.next))
            .min()
    }

    fn run_due(&mut self) {
        let now = Instant::now();
        let due: Vec<i32> = self
            .processes
            .iter()
            .filter(|(_, t)| t.pending.as_ref().is_some_and(|p| p.next <= now))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in due {
            self.step(pid);
        }
    }

    /// Looks at one process: the manifests it maps a module of are applied once its loader is
    /// done; the others are settled, or looked at again while its window is open.
    fn step(&mut self, pid: i32) {
        let Ok(scanned) = select::scan(pid) else {
            self.processes.remove(&pid);
            return;
        };
        let now = Instant::now();
        let Some(tracked) = self.processes.get_mut(&pid) else {
            return;
        };
        let Some(pending) = &tracked.pending else {
            return;
        };
        let (window_open, ready_by) = (now < pending.window_end, pending.ready_by);
        let mut candidates: Vec<(usize, Vec<FunctionRequest>)> = Vec::new();
        let mut waiting = false;
        let mut events = Vec::new();
        for (i, m) in self.manifests.iter().enumerate() {
            let key = m.key();
            if tracked.done.contains(&key) {
                continue;
            }
            match select::classify(&m.loaded.manifest, &scanned) {
                Match::Matched { functions, .. } => candidates.push((i, functions)),
                Match::OtherBuild { reason, .. } => {
                    tracked.done.insert(key);
                    events.push((i, ProcessEvent::Skipped(reason)));
                }
                Match::Unrelated if window_open && may_load_later(m, &scanned, self.polling) => {
                    waiting = true
                }
                Match::Unrelated => {}
            }
        }
        let mut retry_soon = false;
        if !candidates.is_empty() {
            match patch::loader_done(pid, self.log) {
                Ok(Readiness::Ready) => {
                    for (i, functions) in &candidates {
                        let what = self.apply(pid, *i, functions.clone(), scanned.exe.clone());
                        events.push((*i, what));
                    }
                    let tracked = self.processes.get_mut(&pid).expect("tracked");
                    for (i, _) in &candidates {
                        tracked.done.insert(self.manifests[*i].key());
                    }
                }
                Ok(Readiness::NotYet(why)) if now < ready_by => {
                    self.log
                        .step("watch", format!("PID {pid}: not ready: {why}"));
                    retry_soon = true;
                }
                Err(e) if gone(&e) => {
                    self.processes.remove(&pid);
                    return;
                }
                Err(e) if now < ready_by => {
                    self.log.step("watch", format!("PID {pid}: not ready: {e}"));
                    retry_soon = true;
                }
                outcome => {
                    let why = match outcome {
                        Ok(Readiness::NotYet(why)) => why,
                        Err(e) => e.to_string(),
                        Ok(Readiness::Ready) => unreachable!("handled above"),
                    };
                    let tracked = self.processes.get_mut(&pid).expect("tracked");
                    for (i, _) in &candidates {
                        tracked.done.insert(self.manifests[*i].key());
                        events.push((*i, ProcessEvent::NotReady(why.clone())));
                    }
                }
            }
        }
        for (i, what) in events {
            (self.report)(WatchEvent::Process {
                pid,
                exe: scanned.exe.clone(),
                manifest: self.manifests[i].loaded.manifest.name.clone(),
                what,
            });
        }
        let Some(tracked) = self.processes.get_mut(&pid) else {
            return;
        };
        let Some(pending) = &mut tracked.pending else {
            return;
        };
        if retry_soon {
            pending.next = Instant::now() + READY_RETRY;
        } else if waiting {
            pending.interval = (pending.interval * 2).min(Duration::from_millis(200));
            pending.next = Instant::now() + pending.interval;
        } else {
            tracked.pending = None;
            tracked.execed = None;
        }
    }

    /// Applies manifest `i` to `pid` (ready), as `attach --manifest` would, keeping a patch
    /// rolled back by hand rolled back.
    fn apply(
        &mut self,
        pid: i32,
        i: usize,
        functions: Vec<FunctionRequest>,
        exe: PathBuf,
    ) -> ProcessEvent {
        let m = &self.manifests[i];
        let options = AttachOptions {
            pid,
            library: m.loaded.library.clone(),
            functions,
            timeout: self.options.timeout,
            load_timeout: self.options.load_timeout,
            dry_run: false,
            force: false,
            strict: false,
            all_matches: false,
            allow: Allowances::default(),
        };
        let result =
            crate::exited_if_gone(pid, patch::attach_as(&options, Some(&m.tag()), self.log));
        self.log.step(
            "watch",
            format!("PID {pid} ({}): {result:?}", exe.display()),
        );
        match result {
            Ok(AttachOutcome::Done(r)) => {
                let execed = self.processes.get(&pid).and_then(|t| t.execed);
                ProcessEvent::Applied {
                    patch_ids: r.patches.iter().map(|p| p.id).collect(),
                    after_start_ms: execed
                        .map(|at| at.elapsed().as_millis() as u64)
                        .or_else(|| since_start_ms(pid)),
                    after_exec: execed.is_some(),
                }
            }
            Ok(AttachOutcome::AlreadyApplied(ids)) => ProcessEvent::AlreadyApplied(ids),
            Ok(AttachOutcome::RolledBack(ids)) => ProcessEvent::KeptRolledBack(ids),
            Err(e) => match super::relation(&e) {
                Some(Outcome::SharedMm) => ProcessEvent::SharedMm(e.to_string()),
                Some(_) => ProcessEvent::Inconsistent(e.to_string()),
                None => ProcessEvent::Failed(Failure::of(&e)),
            },
        }
    }

    /// Reads the manifest files and directories again: new manifests are applied to every
    /// process, removed ones rolled back everywhere, changed ones both.
    fn refresh_manifests(&mut self) {
        let mut found: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        let mut listed: Vec<PathBuf> = self.options.paths.clone();
        for path in &self.options.paths {
            match manifest_files(path) {
                Ok(files) => {
                    listed.extend(files.iter().cloned());
                    for file in files {
                        match read_checked(&file) {
                            Ok(text) => found.push((file, text)),
                            Err(reason) => self.refuse(file, reason),
                        }
                    }
                }
                Err(reason) => self.refuse(path.clone(), reason),
            }
        }
        // A file refused and gone is said again if it comes back refused.
        self.refused.retain(|p, _| listed.contains(p));
        // Removed or changed.
        let (kept, gone): (Vec<Watched>, Vec<Watched>) = std::mem::take(&mut self.manifests)
            .into_iter()
            .partition(|w| found.iter().any(|(p, t)| *p == w.path && *t == w.text));
        self.manifests = kept;
        for w in gone {
            (self.report)(WatchEvent::ManifestRemoved {
                name: w.loaded.manifest.name.clone(),
                path: w.path.clone(),
            });
            self.roll_back_everywhere(&w);
        }
        // Added or changed.
        let mut added = false;
        for (path, text) in found {
            if self.manifests.iter().any(|w| w.path == path) {
                continue;
            }
            match load_checked(&path) {
                Ok(loaded) => {
                    self.refused.remove(&path);
                    (self.report)(WatchEvent::ManifestLoaded {
                        name: loaded.manifest.name.clone(),
                        path: path.clone(),
                    });
                    self.manifests.push(Watched { path, text, loaded });
                    added = true;
                }
                Err(reason) => self.refuse(path, reason),
            }
        }
        if added {
            for pid in select::all_pids() {
                self.enqueue(pid, Duration::ZERO);
            }
        }
    }

    /// Says once (per reason) that `path` is refused.
    fn refuse(&mut self, path: PathBuf, reason: String) {
        if self.refused.get(&path) != Some(&reason) {
            self.refused.insert(path.clone(), reason.clone());
            (self.report)(WatchEvent::ManifestRefused { path, reason });
        }
    }

    /// Rolls the patch of a manifest that is no longer watched back in every process that
    /// carries it (as `rollback --manifest --all`).
    fn roll_back_everywhere(&mut self, w: &Watched) {
        let options = ManifestRollbackOptions {
            fleet: FleetOptions {
                manifest: w.path.clone(),
                processes: Selection::All,
                dry_run: false,
                jobs: 1,
                timeout: self.options.timeout,
            },
            cascade: false,
            allow_active: false,
        };
        let report = super::rollback_loaded(&w.loaded, &options, self.log);
        let key = w.key();
        for t in self.processes.values_mut() {
            t.done.remove(&key);
        }
        for p in report.processes {
            let what = match p.result {
                Outcome::RolledBack => ProcessEvent::RolledBack(p.patch_ids),
                Outcome::Failed => match p.error {
                    Some(e) => ProcessEvent::Failed(e),
                    None => continue,
                },
                _ => continue,
            };
            (self.report)(WatchEvent::Process {
                pid: p.pid,
                exe: p.exe,
                manifest: w.loaded.manifest.name.clone(),
                what,
            });
        }
    }

    /// Forgets processes that are gone.
    fn forget_exited(&mut self) {
        self.processes.retain(|&pid, t| {
            crate::process::read_stat(pid, pid).is_ok_and(|s| s.1 == t.start_time)
        });
    }
}

/// Whether a process that maps none of `m`'s modules yet may still map one while its window is
/// open: its loader may still map libraries (a manifest for a `.so`), or nothing is mapped yet;
/// when polling, it may also `exec` another program (the proc connector reports each `exec`).
fn may_load_later(m: &Watched, scanned: &Scanned, polling: bool) -> bool {
    polling
        || scanned.modules.is_empty()
        || m.loaded
            .manifest
            .targets
            .iter()
            .any(|t| t.module.contains(".so"))
}

fn gone(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::NoSuchProcess | ErrorKind::TargetExited)
}

/// Milliseconds since `pid` started (its start time in /proc/PID/stat, clock ticks since boot).
fn since_start_ms(pid: i32) -> Option<u64> {
    let (_, start_ticks, _) = crate::process::read_stat(pid, pid).ok()?;
    // SAFETY: sysconf with a constant name has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Seconds since boot, to the hundredth (as precise as the start time's ticks).
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let now_ms = (uptime.split_whitespace().next()?.parse::<f64>().ok()? * 1000.0) as u64;
    let start_ms = start_ticks * 1000 / u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(now_ms.saturating_sub(start_ms))
}

/// The manifest files `path` names: itself, or a directory's `*.toml` files (sorted). A
/// directory must be safe like a manifest (see [`check_owner`]).
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    check_owner(path, &meta)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A file or directory watch trusts: owned by root (or the user watch runs as) and writable by
/// no one else — whoever can write a manifest or its library decides what code runs in every
/// matching process.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not root: refused",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}): refused",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The content of a manifest file that passes [`check_owner`].
fn read_checked(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    check_owner(path, &meta)?;
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Loads a manifest and checks its library: safe ownership and mode, and the manifest's hash.
fn load_checked(path: &Path) -> Result<LoadedManifest, String> {
    let loaded = LoadedManifest::load(path).map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&loaded.library)
        .map_err(|e| format!("{}: {e}", loaded.library.display()))?;
    check_owner(&loaded.library, &meta)?;
    loaded.verify_library().map_err(|e| e.to_string())?;
    Ok(loaded)
}
