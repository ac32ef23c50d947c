//! `watch --json`: each event as one JSON object on one line
//! (docs/schemas/watch.schema.json), for a log collector or a supervisor to read.

use rpatch::fleet::{EventSource, ProcessEvent, WatchEvent};
use serde_json::{Value, json};

/// The version of the events' JSON layout (`schema_version`).
const SCHEMA_VERSION: u32 = 1;

/// The JSON object of one event, stamped with the time it is printed (`unix_ms`); `signal`: the
/// signal that stopped watch, for `stopped`.
pub fn event(e: &WatchEvent, signal: Option<nix::sys::signal::Signal>) -> Value {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut object = match e {
        WatchEvent::Started { manifests, source } => {
            let (source, reason) = match source {
                EventSource::ProcConnector => ("proc_connector", None),
                EventSource::Polling(why) => ("polling", Some(why)),
            };
            json!({"event": "started", "manifests": manifests, "source": source, "reason": reason})
        }
        WatchEvent::ManifestLoaded { name, path } => {
            json!({"event": "manifest_loaded", "name": name, "path": path})
        }
        WatchEvent::ManifestRefused { path, reason } => {
            json!({"event": "manifest_refused", "path": path, "reason": reason})
        }
        WatchEvent::ManifestRemoved { name, path } => {
            json!({"event": "manifest_removed", "name": name, "path": path})
        }
        WatchEvent::Process {
            pid,
            exe,
            manifest,
            what,
        } => {
            let mut o = process(what);
            o["event"] = json!("process");
            o["pid"] = json!(pid);
            o["exe"] = json!(exe);
            o["manifest"] = json!(manifest);
            o
        }
        WatchEvent::EventsLost => json!({"event": "events_lost"}),
        WatchEvent::Polling(why) => json!({"event": "polling", "reason": why}),
        WatchEvent::Stopped => {
            json!({"event": "stopped", "signal": signal.map(|s| s.as_str())})
        }
    };
    object["schema_version"] = json!(SCHEMA_VERSION);
    object["unix_ms"] = json!(unix_ms);
    object
}

/// The fields of what happened to one process: `result`, `patch_ids`, `after_start_ms`,
/// `reason`, `error` (each always present, null when it does not apply).
fn process(what: &ProcessEvent) -> Value {
    let none: &[u64] = &[];
    let (result, ids, after, reason, error) = match what {
        ProcessEvent::Applied {
            patch_ids,
            after_start_ms,
            ..
        } => ("applied", patch_ids.as_slice(), *after_start_ms, None, None),
        ProcessEvent::AlreadyApplied(ids) => ("already_applied", ids.as_slice(), None, None, None),
        ProcessEvent::KeptRolledBack(ids) => ("kept_rolled_back", ids.as_slice(), None, None, None),
        ProcessEvent::RolledBack(ids) => ("rolled_back", ids.as_slice(), None, None, None),
        ProcessEvent::Skipped(why) => ("skipped", none, None, Some(why.clone()), None),
        ProcessEvent::NotReady(why) => ("not_ready", none, None, Some(why.clone()), None),
        ProcessEvent::SharedMm(why) => ("shared_mm", none, None, Some(why.clone()), None),
        ProcessEvent::Inconsistent(why) => ("inconsistent", none, None, Some(why.clone()), None),
        ProcessEvent::Failed(f) => (
            "failed",
            none,
            None,
            Some(f.message.lines().next().unwrap_or_default().to_string()),
            Some(f),
        ),
    };
    json!({
        "result": result,
        "patch_ids": ids,
        "after_start_ms": after,
        "reason": reason,
        "error": error,
    })
}
