//! Command-line front end: parses arguments, calls the library, prints its reports as text
//! (`text`) or JSON, and exits with the code of the error's kind. Also writes shell completions
//! and the man page, both generated from the argument definitions below.

mod text;
mod watch_json;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rpatch::log::Log;
use rpatch::rehearse::StepStatus;
use rpatch::{
    Allowances, AttachOptions, AttachReport, Error, ErrorSummary, FleetOptions, FleetReport,
    FunctionRequest, ManifestAttachOptions, ManifestRollbackOptions, NewManifestOptions,
    RehearseOptions, ResolveOptions, ResolveReport, RollbackOptions, RollbackReport,
    RollbackSelection, Selection, StatusAllReport, StatusReport,
};
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// Live-patch functions in a running, unmodified process.
#[derive(Debug, Parser)]
#[command(name = "rpatch", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replace functions in PID with the versions in a patch library, or apply a manifest's
    /// patch to every process that maps the module build it is for (--manifest).
    Attach(AttachArgs),
    /// Undo patches (default: those of the most recent attach still applied), or a manifest's
    /// patch in every process that carries it (--manifest).
    Rollback(RollbackArgs),
    /// Show recorded patches, each verified against the target's memory (--all: every
    /// patched process on the host).
    Status(StatusArgs),
    /// Patch manifests: a library, its SHA-256, and per module build-id the functions it
    /// replaces (docs/manifest.md).
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Keep manifests applied: to every matching process now, to each one that starts later (a
    /// restarted service: new PID), and as manifests are added to, changed in or removed from a
    /// directory (removed: rolled back everywhere). One line per action on stdout; SIGTERM
    /// stops it and the patches stay.
    Watch(WatchArgs),
    /// List the functions matching a name, glob (`crate::*::calc`) or substring, with size,
    /// file:line, signature, generic instance, aliases, clones and inlined copies.
    Resolve(ResolveArgs),
    /// Rehearse a patch for CI: start TARGET, wait until it is ready, run probes before, while
    /// and after the patch is applied, attach and roll back N times beside an optional load,
    /// check the target survived, stop it; every step reported (text, --json, --junit).
    /// Exit 24 when a check fails; attach and rollback errors keep their own codes.
    Rehearse(Box<RehearseArgs>),
    /// Print a shell completion script (install: see README, "Shell completions and man page").
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Print the man pages (roff) of rpatch and of each command, or write them to a directory
    /// (`rpatch.1`, `rpatch-attach.1`...): `rpatch man | man -l -`.
    Man {
        /// Write one file per page into this directory (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Shells `rpatch completions` writes scripts for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

#[derive(Debug, Args)]
struct Common {
    /// Print machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Print each phase with timings on stderr.
    #[arg(short, long)]
    verbose: bool,
}

/// `rpatch manifest ...`.
#[derive(Debug, Subcommand)]
enum ManifestCommand {
    /// Write a manifest for a patch library: its SHA-256, the module's build-id (both read from
    /// the files) and the functions; each must exist in the module, each replacement in the
    /// library.
    New(ManifestNewArgs),
}

#[derive(Debug, Args)]
struct ManifestNewArgs {
    /// Patch library (named in the manifest relative to the manifest's directory when it is
    /// inside it, else by its absolute path).
    #[arg(long)]
    lib: PathBuf,
    /// The module the patch is for (an executable or a shared library of the exact build the
    /// processes run): its build-id is the contract.
    #[arg(long, value_name = "PATH")]
    module: PathBuf,
    /// Function to replace: NAME, or NAME=REPLACEMENT when the library names it differently.
    #[arg(long = "func", required = true, value_name = "NAME[=REPLACEMENT]", value_parser = function_request)]
    funcs: Vec<FunctionRequest>,
    /// The patch's name (default: the library's file stem): journals record it.
    #[arg(long)]
    name: Option<String>,
    /// The manifest file to write.
    #[arg(short, long, value_name = "FILE.toml")]
    output: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "A new process is patched once its dynamic loader is done (its main thread runs \
main), at most once per manifest; a patch rolled back by hand is not applied again. Manifests, \
their directories and libraries must be owned by root and not writable by group or others. New \
processes come from the kernel's proc connector (probed at start), else from a scan of /proc \
every 100 ms."
)]
struct WatchArgs {
    /// Manifest files, or directories whose *.toml files are manifests (read again every
    /// second).
    #[arg(required = true, value_name = "FILE.toml|DIR")]
    paths: Vec<PathBuf>,
    /// Scan /proc every 100 ms for new processes instead of listening to the proc connector.
    #[arg(long)]
    poll: bool,
    /// Per attach: seconds to wait for threads to leave the functions.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Per attach: seconds the library's loading may take.
    #[arg(long, default_value_t = 10.0)]
    load_timeout: f64,
    /// Print each phase of each operation with timings on stderr.
    #[arg(short, long)]
    verbose: bool,
    /// One JSON object per line per event on stdout (docs/schemas/watch.schema.json) instead
    /// of a line of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct AttachArgs {
    /// Target process id; with --manifest, any number of them (or --all).
    #[arg(value_name = "PID", required_unless_present = "all")]
    pids: Vec<i32>,
    /// Patch library (a shared object: C/C++ -shared -fPIC, Rust cdylib).
    #[arg(
        long,
        required_unless_present = "manifest",
        conflicts_with = "manifest"
    )]
    lib: Option<PathBuf>,
    /// Function to replace: NAME, or NAME=REPLACEMENT when the library names it differently.
    /// Repeat to patch several functions together (all or none).
    #[arg(long = "func", required_unless_present = "manifest", conflicts_with = "manifest", value_name = "NAME[=REPLACEMENT]", value_parser = function_request)]
    funcs: Vec<FunctionRequest>,
    /// Apply this manifest's patch (its library, build-ids and functions) to the PIDs given,
    /// or with --all to every process on the host that maps a module build it is for; each
    /// process is reported (exit 25 when some failed, 26 when none matched).
    #[arg(long, value_name = "FILE.toml")]
    manifest: Option<PathBuf>,
    /// With --manifest: every process on the host (any PID, mount or user namespace).
    #[arg(long, requires = "manifest", conflicts_with = "pids")]
    all: bool,
    /// With --manifest: how many processes are patched at once (default: twice the CPUs, at
    /// least 4).
    #[arg(long, requires = "manifest", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Seconds to wait for threads to leave the functions before giving up.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Seconds the library's loading (its constructors included) may take.
    #[arg(long, default_value_t = 10.0)]
    load_timeout: f64,
    /// Resolve and check everything, print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Patch even while threads have the function on their stack (they return into old code);
    /// no thread may be executing the bytes being replaced, whatever this says.
    #[arg(long)]
    allow_active: bool,
    /// Patch a process stopped with SIGSTOP (it stays stopped; the load may deadlock if a stopped
    /// thread holds the loader lock).
    #[arg(long)]
    allow_stopped: bool,
    /// Patch a process running under a seccomp filter (an injected syscall may be forbidden).
    #[arg(long)]
    allow_seccomp: bool,
    /// Load a library that is group/world-writable or owned by another non-root user.
    #[arg(long)]
    allow_insecure_lib: bool,
    /// Patch even when the replacement's DWARF signature differs from the function's.
    #[arg(long)]
    force: bool,
    /// Refuse a function that was inlined into callers (they would keep the old code).
    #[arg(long)]
    strict: bool,
    /// When a name matches several functions (generic instances), patch each of them.
    #[arg(long)]
    all_matches: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Probes and the load run as `sh -c CMD` with RPATCH_TARGET_PID set to the patched process. \
Every process rehearse starts is the leader of its own process group and is killed with it; a \
process that leaves the group (setsid) or is started by one (its children) may survive rehearse \
being killed with SIGKILL. A C program's stdout into a pipe is block-buffered: for --ready-line, \
run it under `stdbuf -oL`."
)]
struct RehearseArgs {
    /// Patch library (a shared object: C/C++ -shared -fPIC, Rust cdylib).
    #[arg(long)]
    lib: PathBuf,
    /// Function to replace: NAME, or NAME=REPLACEMENT when the library names it differently.
    #[arg(long = "func", required = true, value_name = "NAME[=REPLACEMENT]", value_parser = function_request)]
    funcs: Vec<FunctionRequest>,
    /// Seconds each attach and rollback waits for threads to leave the functions.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Seconds the library's loading in the target may take (attach's --load-timeout).
    #[arg(long, default_value_t = 10.0)]
    lib_load_timeout: f64,
    /// As for attach (and rollback: threads may finish in the replacement).
    #[arg(long)]
    allow_active: bool,
    /// As for attach.
    #[arg(long)]
    allow_stopped: bool,
    /// As for attach.
    #[arg(long)]
    allow_seccomp: bool,
    /// As for attach.
    #[arg(long)]
    allow_insecure_lib: bool,
    /// As for attach: patch despite a signature difference, or a closure or async body.
    #[arg(long)]
    force: bool,
    /// As for attach: refuse a function with inlined copies.
    #[arg(long)]
    strict: bool,
    /// As for attach: a name matching several functions patches each.
    #[arg(long)]
    all_matches: bool,
    /// Ready once a line of TARGET's output (stdout or stderr) matches this regex (Rust regex
    /// syntax; `\d`, `\w`, `\s` and `(?i)` are ASCII-only).
    #[arg(long, value_name = "REGEX")]
    ready_line: Option<String>,
    /// Ready once a TCP connection to this port on loopback (127.0.0.1 or [::1]) is accepted.
    #[arg(long, value_name = "PORT")]
    ready_port: Option<u16>,
    /// Seconds readiness may take.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    ready_timeout: f64,
    /// Patch the process whose pid TARGET writes to FILE (a daemon's worker), not TARGET itself.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// A check (`sh -c CMD`) run before the first attach, after each attach and after each
    /// rollback: it must exit 0 and its stdout match --expect-before / --expect-after.
    #[arg(long = "probe", value_name = "CMD")]
    probes: Vec<String>,
    /// Seconds one probe may run before it is killed and fails.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    probe_timeout: f64,
    /// Regex every probe's stdout must match while the patch is not applied (`^`/`$` match at
    /// line boundaries).
    #[arg(long, value_name = "REGEX", requires = "probes")]
    expect_before: Option<String>,
    /// Regex every probe's stdout must match while the patch is applied.
    #[arg(long, value_name = "REGEX", requires = "probes")]
    expect_after: Option<String>,
    /// Attach/rollback cycles.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    cycles: u32,
    /// A load (`sh -c CMD`, e.g. `wrk -d 20s ...`) run from readiness to the end beside
    /// everything: it must end by itself after the last cycle and exit 0.
    #[arg(long, value_name = "CMD")]
    load: Option<String>,
    /// Seconds to wait for the load to end after the last cycle.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    load_timeout: f64,
    /// Seconds TARGET may take to exit after SIGTERM at the end before it gets SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    stop_timeout: f64,
    /// Write the steps as a JUnit XML report to FILE (also when the rehearsal fails).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
    /// The target command and its arguments.
    #[arg(last = true, required = true, value_name = "TARGET [ARGS]")]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct ResolveArgs {
    /// `PID PATTERN`, or `PATTERN` alone with --exe.
    #[arg(value_name = "PID|PATTERN", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// Search this file instead of a process (addresses as linked).
    #[arg(long, value_name = "PATH")]
    exe: Option<PathBuf>,
    /// Skip the scan for inlined copies (it reads all of the DWARF).
    #[arg(long)]
    no_inlined: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// Target process id; with --manifest, any number of them (or --all).
    #[arg(value_name = "PID", required_unless_present = "all")]
    pids: Vec<i32>,
    /// Undo this patch id.
    #[arg(long, conflicts_with_all = ["all", "manifest"])]
    id: Option<u64>,
    /// Without --manifest: undo every applied patch of PID, newest first. With --manifest:
    /// every process on the host that maps a module build the manifest is for.
    #[arg(long)]
    all: bool,
    /// With --id or --manifest: also undo later patches stacked on the same functions.
    #[arg(long)]
    cascade: bool,
    /// Roll back this manifest's patch (same name, same library) in the PIDs given, or with
    /// --all in every process on the host that maps a module build it is for.
    #[arg(long, value_name = "FILE.toml")]
    manifest: Option<PathBuf>,
    /// With --manifest: show what would be rolled back, change nothing.
    #[arg(long, requires = "manifest")]
    dry_run: bool,
    /// With --manifest: how many processes are worked on at once (default: twice the CPUs, at
    /// least 4).
    #[arg(long, requires = "manifest", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Seconds to wait for threads to leave the bytes being restored and the replacements.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Roll back even while threads have the replacement on their stack (they finish in it;
    /// its code stays loaded). No thread may be executing the bytes being restored.
    #[arg(long)]
    allow_active: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Target process id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pid: Option<i32>,
    /// Every live process with patches recorded in this state directory.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: Common,
}

/// Parses one `--func`: a name must be given on both sides of a `=`.
fn function_request(spec: &str) -> Result<FunctionRequest, String> {
    let request = FunctionRequest::parse(spec);
    if request.target.is_empty() {
        return Err("a function name is needed (NAME or NAME=REPLACEMENT)".into());
    }
    if request.replacement.is_empty() {
        return Err(format!(
            "a replacement name is needed after '=' ({}=REPLACEMENT)",
            request.target
        ));
    }
    Ok(request)
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

impl Common {
    /// The log for one operation: `-v` lines, and the live status line on a terminal (never
    /// with `--json`, never off a TTY).
    fn log(&self) -> Log {
        Log::new(self.verbose).with_status_line(!self.json && std::io::stderr().is_terminal())
    }
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    let (common, log, result) = match cli.command {
        Command::Attach(a) => {
            let log = a.common.log();
            let allow = Allowances {
                stopped: a.allow_stopped,
                seccomp: a.allow_seccomp,
                insecure_lib: a.allow_insecure_lib,
                active: a.allow_active,
            };
            if let Some(manifest) = a.manifest {
                let options = ManifestAttachOptions {
                    fleet: fleet_options(manifest, a.all, a.pids, a.dry_run, a.jobs, a.timeout),
                    load_timeout: seconds(a.load_timeout),
                    force: a.force,
                    strict: a.strict,
                    all_matches: a.all_matches,
                    allow,
                };
                let result = rpatch::attach_manifest(&options, &log);
                return finish(&a.common, &log, result.map(|r| Output::Fleet(Box::new(r))));
            }
            let (Some(library), [pid]) = (a.lib, a.pids.as_slice()) else {
                usage("give one PID (several PIDs, or --all, need --manifest)".into())
            };
            let options = AttachOptions {
                pid: *pid,
                library,
                functions: a.funcs,
                timeout: seconds(a.timeout),
                load_timeout: seconds(a.load_timeout),
                dry_run: a.dry_run,
                force: a.force,
                strict: a.strict,
                all_matches: a.all_matches,
                allow,
            };
            let result = rpatch::attach(&options, &log).map(|r| Output::Attach(Box::new(r)));
            (a.common, log, result)
        }
        Command::Rollback(r) => {
            let log = r.common.log();
            if let Some(manifest) = r.manifest {
                let options = ManifestRollbackOptions {
                    fleet: fleet_options(manifest, r.all, r.pids, r.dry_run, r.jobs, r.timeout),
                    cascade: r.cascade,
                    allow_active: r.allow_active,
                };
                let result = rpatch::rollback_manifest(&options, &log);
                return finish(&r.common, &log, result.map(|r| Output::Fleet(Box::new(r))));
            }
            let [pid] = r.pids.as_slice() else {
                usage("give one PID (several PIDs need --manifest)".into())
            };
            let selection = match (r.id, r.all) {
                (Some(id), _) => RollbackSelection::Id(id),
                (None, true) => RollbackSelection::All,
                (None, false) => RollbackSelection::Last,
            };
            let options = RollbackOptions {
                allow_active: r.allow_active,
                pid: *pid,
                selection,
                cascade: r.cascade,
                timeout: seconds(r.timeout),
            };
            let result = rpatch::rollback(&options, &log).map(Output::Rollback);
            (r.common, log, result)
        }
        Command::Watch(w) => return watch(w),
        Command::Manifest(ManifestCommand::New(m)) => {
            let options = NewManifestOptions {
                library: m.lib,
                module: m.module,
                functions: m.funcs,
                name: m.name,
                output: m.output,
            };
            return match rpatch::new_manifest(&options) {
                Ok(report) => {
                    print!("{}", text::new_manifest(&report));
                    Ok(0)
                }
                Err(error) => {
                    report_error(&error, false)?;
                    Ok(error.exit_code())
                }
            };
        }
        Command::Resolve(r) => {
            let log = r.common.log();
            let (pid, pattern) = match (&r.exe, r.args.as_slice()) {
                (Some(_), [pattern]) => (None, pattern.clone()),
                (None, [pid, pattern]) => match pid.parse::<i32>() {
                    Ok(pid) => (Some(pid), pattern.clone()),
                    Err(_) => usage(format!("PID must be a number, not '{pid}'")),
                },
                (Some(_), _) => usage("with --exe, give only the PATTERN".into()),
                (None, _) => usage("give PID PATTERN, or --exe PATH PATTERN".into()),
            };
            let options = ResolveOptions {
                pid,
                exe: r.exe,
                pattern,
                inlined: !r.no_inlined,
            };
            let result = rpatch::resolve(&options, &log).map(|r| Output::Resolve(Box::new(r)));
            (r.common, log, result)
        }
        Command::Rehearse(r) => return rehearse(*r),
        Command::Status(s) => {
            let log = s.common.log();
            let result = match s.pid {
                Some(pid) => rpatch::status(pid, &log).map(Output::Status),
                None => rpatch::status_all(&log).map(|r| Output::StatusAll(Box::new(r))),
            };
            (s.common, log, result)
        }
        Command::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "rpatch", &mut std::io::stdout());
            return Ok(0);
        }
        Command::Man { out_dir } => {
            man_pages(out_dir.as_deref())?;
            return Ok(0);
        }
    };
    finish(&common, &log, result)
}

/// The options every manifest operation takes, from the command line.
fn fleet_options(
    manifest: PathBuf,
    all: bool,
    pids: Vec<i32>,
    dry_run: bool,
    jobs: Option<u16>,
    timeout: f64,
) -> FleetOptions {
    // Patching is mostly waiting for the targets (threads to stop, the loader to run): twice
    // as many jobs as CPUs, at least 4 (50 processes on 2 CPUs: 1.25 s with 2 jobs, 0.66 s
    // with 4).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let default_jobs = (2 * cpus).max(4);
    FleetOptions {
        manifest,
        processes: if all {
            Selection::All
        } else {
            Selection::Pids(pids)
        },
        dry_run,
        jobs: jobs.map_or(default_jobs, usize::from),
        timeout: seconds(timeout),
    }
}

/// Prints an operation's report (text or JSON) or its error, and returns the exit code. A fleet
/// report is printed whatever its processes' outcomes; its exit code is that of the kind the run
/// ends with (25 some failed, 26 none matched), said on stderr too.
fn finish(common: &Common, log: &Log, result: Result<Output, Error>) -> anyhow::Result<i32> {
    log.clear_status();
    match result {
        Ok(output) => {
            // What the patch will not change or could not check: on stderr for people (also in
            // the JSON report for scripts).
            let warnings = match &output {
                Output::Attach(r) => r.warnings.as_slice(),
                Output::Rollback(r) => r.warnings.as_slice(),
                _ => &[],
            };
            for w in warnings {
                eprintln!("rpatch: warning: {w}");
            }
            if common.json {
                println!("{}", output.json()?);
            } else {
                print!("{}", output.text());
            }
            if let Output::Fleet(r) = &output
                && let Some(kind) = r.failure()
            {
                eprintln!("rpatch: error: {}", text::fleet_failure(r, kind));
                return Ok(i32::from(kind.exit_code()));
            }
            Ok(0)
        }
        Err(error) => {
            report_error(&error, common.json)?;
            Ok(error.exit_code())
        }
    }
}

/// The man pages of `rpatch` and of each command (`rpatch-attach`...), from the argument
/// definitions: on stdout, or one `NAME.1` file each in `dir`.
fn man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let top = Cli::command();
    let mut pages = vec![top.clone()];
    // A page per command and per command of a command group (`rpatch-manifest-new`).
    let mut queue: Vec<(String, clap::Command)> = top
        .get_subcommands()
        .map(|c| (format!("rpatch-{}", c.get_name()), c.clone()))
        .collect();
    while let Some((name, sub)) = queue.pop() {
        queue.extend(
            sub.get_subcommands()
                .map(|c| (format!("{name}-{}", c.get_name()), c.clone())),
        );
        pages.push(sub.name(name.clone()).bin_name(name));
    }
    for page in pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page.clone()).render(&mut roff)?;
        match dir {
            Some(dir) => {
                let path = dir.join(format!("{}.1", page.get_name()));
                std::fs::write(&path, roff)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            None => std::io::Write::write_all(&mut std::io::stdout(), &roff)?,
        }
    }
    Ok(())
}

/// `rpatch watch`: runs until SIGTERM, SIGINT or SIGHUP, one line per action on stdout (text,
/// or with `--json` one JSON object).
fn watch(w: WatchArgs) -> anyhow::Result<i32> {
    use nix::sys::signal::{SigSet, Signal};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    // The signals are taken synchronously by one thread (blocked everywhere else, before any
    // other thread exists): the loop sees the flag within 100 ms and stops between actions.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block()?;
    let stop = Arc::new(AtomicBool::new(false));
    let caught = Arc::new(AtomicI32::new(0));
    {
        let (stop, caught) = (stop.clone(), caught.clone());
        std::thread::spawn(move || {
            if let Ok(signal) = signals.wait() {
                caught.store(signal as i32, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            }
        });
    }
    let options = rpatch::fleet::WatchOptions {
        paths: w.paths,
        poll: w.poll,
        timeout: seconds(w.timeout),
        load_timeout: seconds(w.load_timeout),
    };
    let log = Log::new(w.verbose);
    let result = rpatch::watch(&options, &log, &stop, &mut |event| {
        let signal = Signal::try_from(caught.load(Ordering::SeqCst)).ok();
        if w.json {
            println!("{}", watch_json::event(&event, signal));
        } else {
            println!("{}", text::watch_event(&event, signal));
        }
    });
    match result {
        Ok(()) => Ok(0),
        Err(error) => {
            report_error(&error, false)?;
            Ok(error.exit_code())
        }
    }
}

/// Compiles a regex given on the command line, or exits with a usage error. `regex-lite`, not
/// `regex`: its Unicode class and case tables would be relocated at every start of rpatch
/// (9,100 relocations, 224 KiB of `.data.rel.ro`, 0.1 ms a run here), for probes that match
/// ASCII output.
fn regex(flag: &str, pattern: Option<&str>, multi_line: bool) -> Option<regex_lite::Regex> {
    let pattern = pattern?;
    match regex_lite::RegexBuilder::new(pattern)
        .multi_line(multi_line)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => usage(format!("{flag} '{pattern}' is not a valid regex: {e}")),
    }
}

/// `rpatch rehearse`: progress on stderr as each step ends, the report on stdout.
fn rehearse(r: RehearseArgs) -> anyhow::Result<i32> {
    let log = r.common.log();
    let options = RehearseOptions {
        command: r.command,
        patch: AttachOptions {
            pid: 0,
            library: r.lib,
            functions: r.funcs,
            timeout: seconds(r.timeout),
            load_timeout: seconds(r.lib_load_timeout),
            dry_run: false,
            force: r.force,
            strict: r.strict,
            all_matches: r.all_matches,
            allow: Allowances {
                stopped: r.allow_stopped,
                seccomp: r.allow_seccomp,
                insecure_lib: r.allow_insecure_lib,
                active: r.allow_active,
            },
        },
        ready_line: regex("--ready-line", r.ready_line.as_deref(), false),
        ready_port: r.ready_port,
        ready_timeout: seconds(r.ready_timeout),
        pid_file: r.pid_file,
        probes: r.probes,
        probe_timeout: seconds(r.probe_timeout),
        expect_before: regex("--expect-before", r.expect_before.as_deref(), true),
        expect_after: regex("--expect-after", r.expect_after.as_deref(), true),
        cycles: r.cycles,
        load: r.load,
        load_timeout: seconds(r.load_timeout),
        stop_timeout: seconds(r.stop_timeout),
        junit: r.junit,
    };
    let json = r.common.json;
    let result = rpatch::rehearse(&options, &log, &mut |step| {
        log.clear_status();
        eprintln!("rpatch: rehearse: {}", text::step_line(step));
        let failed = !matches!(step.status, StepStatus::Passed | StepStatus::Skipped);
        if let Some(output) = step.output.as_deref().filter(|_| failed) {
            let lines: Vec<&str> = output.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("  | {l}");
            }
        }
    });
    log.clear_status();
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", text::rehearsal(&report));
            }
            Ok(0)
        }
        Err(error) => {
            let Error::RehearsalFailed {
                report: Some(report),
                interrupted,
                ..
            } = &error
            else {
                report_error(&error, json)?;
                return Ok(error.exit_code());
            };
            eprintln!("rpatch: error: {error}");
            if !report.target.log.is_empty() {
                // The end of the target's output; the report has up to 64 KiB of it.
                let lines: Vec<&str> = report.target.log.lines().collect();
                let shown = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "rpatch: the target's output (last {} of {} lines):",
                    shown.len(),
                    lines.len()
                );
                for l in shown {
                    eprintln!("  | {l}");
                }
            }
            if json {
                println!("{}", serde_json::to_string(report)?);
            } else {
                print!("{}", text::rehearsal(report));
            }
            if let Some(signal) = interrupted
                && let Ok(signal) = nix::sys::signal::Signal::try_from(*signal)
            {
                // Ended by the signal, as a shell or CI runner expects, after the report (the
                // rehearsal put back the signal's disposition: normally, to terminate).
                use std::io::Write;
                std::io::stdout().flush()?;
                let _ = nix::sys::signal::raise(signal);
            }
            Ok(error.exit_code())
        }
    }
}

/// Exits with clap's usage error (code 2).
fn usage(message: String) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// The JSON of a failure: `{"schema_version": 1, "error": {"code", "kind", "message"}}`
/// (docs/schemas/error.schema.json).
#[derive(serde::Serialize)]
struct ErrorOutput<'a> {
    schema_version: u32,
    error: &'a ErrorSummary,
}

/// The version of the error output's JSON layout.
const ERROR_SCHEMA_VERSION: u32 = 1;

fn report_error(error: &Error, json: bool) -> anyhow::Result<()> {
    eprintln!("rpatch: error: {error}");
    if json {
        let output = ErrorOutput {
            schema_version: ERROR_SCHEMA_VERSION,
            error: &ErrorSummary::of(error),
        };
        println!("{}", serde_json::to_string(&output)?);
    }
    Ok(())
}

enum Output {
    Attach(Box<AttachReport>),
    Rollback(RollbackReport),
    Status(StatusReport),
    StatusAll(Box<StatusAllReport>),
    Resolve(Box<ResolveReport>),
    Fleet(Box<FleetReport>),
}

impl Output {
    fn json(&self) -> serde_json::Result<String> {
        match self {
            Output::Attach(r) => serde_json::to_string(r),
            Output::Rollback(r) => serde_json::to_string(r),
            Output::Status(r) => serde_json::to_string(r),
            Output::StatusAll(r) => serde_json::to_string(r),
            Output::Resolve(r) => serde_json::to_string(r),
            Output::Fleet(r) => serde_json::to_string(r),
        }
    }

    fn text(&self) -> String {
        match self {
            Output::Attach(r) => text::attach(r),
            Output::Rollback(r) => text::rollback(r),
            Output::Status(r) => text::status(r),
            Output::StatusAll(r) => text::status_all(r),
            Output::Resolve(r) => text::resolve(r),
            Output::Fleet(r) => text::fleet(r),
        }
    }
}
