//! The text renderings of the reports: what a person reads on stdout (scripts read `--json`,
//! the same facts as the library's report types serialise them). Enum values appear as the same
//! snake_case words as in JSON.

use rpatch::fleet::{EventSource, Outcome, ProcessEvent, WatchEvent};
use rpatch::rehearse::{Step, StepStatus};
use rpatch::{
    AttachReport, ErrorKind, FleetReport, NewManifestReport, PatchView, RehearseReport,
    ResolveReport, RollbackReport, StatusAllReport, StatusReport,
};

/// `attach`: each patch and the frozen time, or with `--dry-run` the plan.
pub fn attach(r: &AttachReport) -> String {
    let mut out = String::new();
    if r.dry_run {
        out += &format!("dry run: would patch PID {}:\n", r.pid);
        for p in &r.patches {
            out += &format!(
                "  {} at {:#x} ({} bytes{}, {}) -> {} in {}\n",
                p.function,
                p.address,
                p.size,
                p.location
                    .as_deref()
                    .map(|l| format!(", {l}"))
                    .unwrap_or_default(),
                p.module.display(),
                p.replacement_name,
                p.library.display()
            );
            if let Some(sig) = &p.signature {
                out += &format!("    target       {}\n", sig.render());
            }
            if let Some(sig) = &p.replacement_signature {
                out += &format!("    replacement  {}\n", sig.render());
            }
        }
        for b in &r.bindings {
            out += &format!(
                "  binds {} to {} at {:#x} in {}\n",
                b.name,
                b.symbol,
                b.address,
                b.module.display()
            );
        }
        return out;
    }
    for p in &r.patches {
        out += &format!(
            "patch {}: {} at {:#x} -> {} at {} ({}{})\n",
            p.id,
            p.function,
            p.address,
            p.replacement_name,
            p.replacement.map(|a| format!("{a:#x}")).unwrap_or_default(),
            p.method.map(|m| m.name()).unwrap_or_default(),
            p.island.map(|i| format!(" via {i:#x}")).unwrap_or_default()
        );
    }
    out += &format!(
        "PID {} patched in {:.1} ms (threads stopped for {} us)\n",
        r.pid, r.total_ms, r.frozen_us
    );
    out
}

/// `rollback`: the ids undone and the frozen time.
pub fn rollback(r: &RollbackReport) -> String {
    let ids: Vec<String> = r.rolled_back.iter().map(|i| i.to_string()).collect();
    format!(
        "rolled back patch {} in PID {} ({:.1} ms, threads stopped for {} us)\n",
        ids.join(", "),
        r.pid,
        r.total_ms,
        r.frozen_us
    )
}

/// `status`: one line per recorded patch, and any bootstrap code left in slack bytes.
pub fn status(r: &StatusReport) -> String {
    let mut out = String::new();
    if let Some(shared) = &r.shared_mm {
        let others: Vec<String> = shared
            .processes
            .iter()
            .filter(|&&p| p != r.pid)
            .map(|p| p.to_string())
            .collect();
        if shared.owner == r.pid {
            out += &format!(
                "PID {}: shares its address space with PID {} (not its threads): they run these patches too, and are frozen with it while rpatch writes\n",
                r.pid,
                others.join(", ")
            );
        } else {
            out += &format!(
                "PID {}: shares the address space of PID {} (vfork, posix_spawn before its exec, or clone(CLONE_VM)): its patches are PID {}'s, see rpatch status {}\n",
                r.pid, shared.owner, shared.owner, shared.owner
            );
            return out;
        }
    }
    if let Some(i) = &r.inconsistent {
        out += &format!(
            "PID {}: forked while rpatch was loading a library into PID {}: its loader state is half updated, so nothing is ever loaded into it (restart it to patch it; rollback works)\n",
            r.pid, i.pid
        );
    }
    if r.patches.is_empty() {
        out += &format!("PID {}: no patches recorded\n", r.pid);
    }
    for p in &r.patches {
        let mut notes = String::new();
        if p.state == PatchView::Applied && !p.active {
            notes += "  [superseded]";
        }
        if p.module_replaced {
            notes += "  [module replaced: another build is mapped now]";
        }
        if p.file_changed_on_disk {
            notes += "  [file on disk changed since it was mapped]";
        }
        if let Some(origin) = &p.inherited {
            notes += &format!(
                "  [inherited from PID {} (patch {})]",
                origin.pid, origin.patch_id
            );
        }
        if let Some(m) = &p.manifest {
            notes += &format!("  [manifest {m}]");
        }
        out += &format!(
            "{:>3}  {:<11} {} at {:#x} -> {} ({}, {}){notes}\n",
            p.id,
            p.state.name(),
            p.function,
            p.address,
            p.replacement_name,
            p.library.display(),
            p.method,
        );
    }
    if !r.unrecorded_libraries.is_empty() {
        let names: Vec<String> = r
            .unrecorded_libraries
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out += &format!(
            "PID {} maps patch libraries loaded by an rpatch whose journal is not here ({}): it was patched from another mount namespace (the host, or another container) or with another RPATCH_STATE_DIR; run `rpatch status {}` there\n",
            r.pid,
            names.join(", "),
            r.pid
        );
    }
    for left in &r.slack_left {
        out += &format!(
            "bootstrap code left at {:#x} in the slack of {} by an interrupted run: harmless, restored by the next attach or rollback\n",
            left.address,
            left.module.display()
        );
    }
    out
}

/// `status --all`: each patched process, then its patches as `status` shows them.
pub fn status_all(r: &StatusAllReport) -> String {
    if r.processes.is_empty() {
        return "no process has patches recorded\n".into();
    }
    let mut out = String::new();
    for p in &r.processes {
        let manifests = if p.manifest_names.is_empty() {
            String::new()
        } else {
            format!(" [manifest {}]", p.manifest_names.join(", "))
        };
        out += &format!("PID {} {}{manifests}\n", p.pid, p.exe.display());
        for patch in &p.patches {
            out += &format!(
                "  {:>3}  {:<11} {} -> {} ({}){}\n",
                patch.id,
                patch.state.name(),
                patch.function,
                patch.replacement_name,
                patch.library.display(),
                patch
                    .manifest
                    .as_deref()
                    .map(|m| format!("  manifest {m}"))
                    .unwrap_or_default(),
            );
            if let Some(o) = &patch.inherited {
                out += &format!(
                    "       inherited from PID {} (patch {})\n",
                    o.pid, o.patch_id
                );
            }
        }
        if let Some(shared) = p.shared_mm.as_ref().filter(|s| s.owner != p.pid) {
            out += &format!(
                "  shares PID {}'s address space: its patches are PID {}'s\n",
                shared.owner, shared.owner
            );
        }
        if let Some(i) = &p.inconsistent {
            out += &format!(
                "  inconsistent: forked while a library loaded into PID {}; never patched (restart it to run a fix)\n",
                i.pid
            );
        }
    }
    out
}

/// `attach/rollback --manifest`: one line per process, then the counts.
pub fn fleet(r: &FleetReport) -> String {
    let mut out = String::new();
    for p in &r.processes {
        let ids = if p.patch_ids.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = p.patch_ids.iter().map(u64::to_string).collect();
            format!(" (patch {})", ids.join(", "))
        };
        let reason = p
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        out += &format!(
            "PID {} {}: {}{ids}{reason}\n",
            p.pid,
            p.exe.display(),
            p.result
        );
    }
    let counts: Vec<String> = r
        .counts
        .iter()
        .map(|(outcome, n)| format!("{n} {outcome}"))
        .collect();
    out += &format!(
        "{}manifest {}: {} ({:.1} ms)\n",
        if r.dry_run { "dry run: " } else { "" },
        r.manifest.name,
        counts.join(", "),
        r.total_ms
    );
    out
}

/// Why a fleet run ends with `kind` (25 or 26), for stderr.
pub fn fleet_failure(r: &FleetReport, kind: ErrorKind) -> String {
    if kind == ErrorKind::SomeProcessesFailed {
        let n = r.count(Outcome::Failed);
        let mut text = format!(
            "manifest {}: {n} of {} process(es) failed (each was left as it was)",
            r.manifest.name,
            r.processes.len()
        );
        let inconsistent = r.not_done() - n;
        if inconsistent > 0 {
            text += &format!(
                "; {inconsistent} inconsistent (forked while a library loaded: never patched, restart it)"
            );
        }
        text
    } else if r.processes.is_empty() {
        format!(
            "manifest {}: no process maps a module build it is for",
            r.manifest.name
        )
    } else {
        format!(
            "manifest {}: no process matched (all skipped)",
            r.manifest.name
        )
    }
}

/// One line of `watch`'s log.
pub fn watch_event(e: &WatchEvent, signal: Option<nix::sys::signal::Signal>) -> String {
    let ids = |ids: &[u64]| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        ids.join(", ")
    };
    match e {
        WatchEvent::Started { manifests, source } => format!(
            "watching {} manifest(s){}; new processes: {}",
            manifests.len(),
            if manifests.is_empty() {
                String::new()
            } else {
                format!(" ({})", manifests.join(", "))
            },
            match source {
                EventSource::ProcConnector => "proc connector".to_string(),
                EventSource::Polling(why) => format!("scanning /proc every 100 ms ({why})"),
            }
        ),
        WatchEvent::ManifestLoaded { name, path } => {
            format!("manifest {name} loaded from {}", path.display())
        }
        WatchEvent::ManifestRefused { path, reason } => {
            format!("manifest {} refused: {reason}", path.display())
        }
        WatchEvent::ManifestRemoved { name, path } => format!(
            "manifest {name} ({}) removed or changed: rolling its patch back",
            path.display()
        ),
        WatchEvent::Process {
            pid,
            exe,
            manifest,
            what,
        } => {
            let head = format!("PID {pid} {}: {manifest}", exe.display());
            match what {
                ProcessEvent::Applied {
                    patch_ids,
                    after_start_ms,
                    after_exec,
                } => format!(
                    "{head}: applied (patch {}){}",
                    ids(patch_ids),
                    after_start_ms
                        .map(|ms| if *after_exec {
                            format!(", {ms} ms after its exec was seen")
                        } else {
                            format!(", {ms} ms after the process started")
                        })
                        .unwrap_or_default()
                ),
                ProcessEvent::AlreadyApplied(p) => {
                    format!("{head}: already applied (patch {})", ids(p))
                }
                ProcessEvent::KeptRolledBack(p) => format!(
                    "{head}: rolled back by hand (patch {}), not applied again",
                    ids(p)
                ),
                ProcessEvent::Skipped(reason) => format!("{head}: skipped: {reason}"),
                ProcessEvent::NotReady(why) => {
                    format!("{head}: not patched: its loader was not done in time ({why})")
                }
                ProcessEvent::Failed(f) => format!("{head}: failed ({}): {}", f.kind, f.message),
                ProcessEvent::RolledBack(p) => format!("{head}: rolled back (patch {})", ids(p)),
                ProcessEvent::SharedMm(reason) => format!("{head}: shared_mm: {reason}"),
                ProcessEvent::Inconsistent(reason) => format!("{head}: inconsistent: {reason}"),
            }
        }
        WatchEvent::EventsLost => "events were lost: looking at every process again".into(),
        WatchEvent::Polling(why) => format!("{why}: scanning /proc every 100 ms from now on"),
        WatchEvent::Stopped => format!(
            "stopped{}; patches stay applied",
            signal.map(|s| format!(" by {s}")).unwrap_or_default()
        ),
    }
}

/// `manifest new`: what the manifest says.
pub fn new_manifest(r: &NewManifestReport) -> String {
    let m = &r.manifest;
    let mut out = format!(
        "wrote {}: patch {}, library {} (sha256 {})\n",
        r.path.display(),
        m.name,
        m.library.display(),
        m.library_sha256
    );
    for t in &m.targets {
        let functions: Vec<String> = t
            .functions
            .iter()
            .map(|f| match &f.replacement {
                Some(r) => format!("{}={r}", f.name),
                None => f.name.clone(),
            })
            .collect();
        out += &format!(
            "  {} build-id {}: {}\n",
            t.module,
            t.build_id,
            functions.join(", ")
        );
    }
    out
}

/// `resolve`: each match with what is known about it.
pub fn resolve(r: &ResolveReport) -> String {
    let mut out = String::new();
    for f in &r.matches {
        out += &format!(
            "{}{}\n",
            f.name,
            if f.generic {
                "  [generic instance]"
            } else {
                ""
            }
        );
        if let Some(s) = &f.symbol
            && *s != f.name
        {
            out += &format!("  symbol     {s}\n");
        }
        out += &format!("  address    {:#x} ({} bytes", f.address, f.size);
        if f.address != f.file_address {
            out += &format!(", file address {:#x}", f.file_address);
        }
        out += ")\n";
        if let Some(l) = &f.location {
            out += &format!("  location   {l}\n");
        }
        out += &format!("  module     {}\n", f.module.display());
        if let Some(s) = &f.signature_text {
            out += &format!("  signature  {s}\n");
        }
        if !f.aliases.is_empty() {
            out += &format!("  aliases    {}\n", f.aliases.join(", "));
        }
        for c in &f.clones {
            out += &format!(
                "  clone      {} ({}) at {:#x}, {} bytes\n",
                c.symbol, c.kind, c.address, c.size
            );
        }
        match &f.inlined {
            None => {}
            Some(sites) if sites.is_empty() => out += "  inlined    nowhere\n",
            Some(sites) => {
                for (i, s) in sites.iter().enumerate() {
                    out += &format!(
                        "  {}  into {}{}\n",
                        if i == 0 { "inlined  " } else { "         " },
                        s.caller,
                        s.location
                            .as_deref()
                            .map(|l| format!(" at {l}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    for f in &r.inlined_only {
        out += &format!("{}  [only inlined: no out-of-line copy]\n", f.name);
        out += &format!("  module     {}\n", f.module.display());
        for (i, s) in f.inlined.iter().enumerate() {
            out += &format!(
                "  {}  into {}{}\n",
                if i == 0 { "inlined  " } else { "         " },
                s.caller,
                s.location
                    .as_deref()
                    .map(|l| format!(" at {l}"))
                    .unwrap_or_default()
            );
        }
    }
    for n in &r.notes {
        out += &format!("note: {n}\n");
    }
    out
}

/// The verdict of a rehearsal in one line: `rehearsal passed: 17 steps, 17 passed, ... in 3.9 s`.
pub fn rehearsal(r: &RehearseReport) -> String {
    let c = &r.counts;
    format!(
        "rehearsal {}: {} steps, {} passed, {} failed, {} errors, {} skipped in {:.1} s\n",
        if r.passed { "passed" } else { "FAILED" },
        c.tests,
        c.passed,
        c.failures,
        c.errors,
        c.skipped,
        r.total_ms / 1000.0
    )
}

/// `[pass] cycle 1: attach (12.3 ms): patch 1 applied, threads stopped for 850 us`.
pub fn step_line(s: &Step) -> String {
    let tag = match s.status {
        StepStatus::Passed => "pass",
        StepStatus::Failed => "FAIL",
        StepStatus::Error => "ERROR",
        StepStatus::Skipped => "skip",
    };
    let mut line = format!("[{tag}] {}", s.name);
    if s.status != StepStatus::Skipped {
        line += &format!(" ({:.1} ms)", s.time_ms);
    }
    if let Some(m) = &s.message {
        line += &format!(": {m}");
    }
    line
}
