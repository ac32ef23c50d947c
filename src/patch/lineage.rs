//! A process among its relatives: the ancestors it was forked from, whose patches it holds
//! without a journal of its own, and which it adopts on the first operation rpatch runs on it.

use crate::Error;
use crate::error::Unsupported;
use crate::journal::{
    Inconsistent, Journal, JournalData, Stale, StateDir, TargetIdentity, TargetLock, inherit,
    now_secs,
};
use crate::log::Log;
use crate::process::{self, ProcMem, ProcessInfo};

/// Refuses to patch or roll back a process that shares its address space with an older one
/// without being its thread: that memory's journal is the older process's (see
/// `process::shared_address_space`), and every write through it freezes them all.
pub(super) fn refuse_shared_address_space(pid: i32) -> Result<(), Error> {
    match process::shared_address_space(pid) {
        Some((owner, _)) if owner != pid => Err(Error::Unsupported {
            reason: Unsupported::SharedAddressSpace { pid, owner },
        }),
        _ => Ok(()),
    }
}

/// [`refuse_shared_address_space`], scanning only what was created since the scan an earlier
/// operation kept in `journal` (a full scan compares every process on the host), and keeping
/// this one there for the next.
pub(super) fn refuse_shared_address_space_since(
    pid: i32,
    journal: &mut Journal,
) -> Result<(), Error> {
    if let Some(scan) = journal.data.sharer_scan.take() {
        process::remember_sharer_scan(scan);
    }
    let refused = refuse_shared_address_space(pid);
    journal.data.sharer_scan = process::last_sharer_scan(pid);
    refused
}

/// Opens the journal of the identified target (its lock taken). A target rpatch has no journal
/// for may be a forked child running its ancestor's patches: its new journal first adopts the
/// records whose bytes it holds (see `journal::inherit`), from the nearest ancestor whose
/// journal gives it any — the live ones it was forked from (its parent, its parent's parent...,
/// while they run the same exec image), then the journals of dead processes of that image.
///
/// Locks are always taken ancestor first, then child: the child's lock is let go while the
/// ancestor's is taken, and the child's journal is opened again afterwards (another run may have
/// adopted meanwhile: adoption happens once).
pub(super) fn open_journal(
    state: &StateDir,
    lock: TargetLock,
    info: &ProcessInfo,
    identity: &TargetIdentity,
    stale: Stale,
    log: &Log,
) -> Result<Journal, Error> {
    let journal = Journal::open_locked(lock, state, identity, stale)?;
    if journal.existed() {
        return Ok(journal);
    }
    // Who it may inherit from (read without taking any other lock).
    let chain = forked_from(info);
    let dead = dead_journals(state, info, &chain);
    if chain.is_empty() && dead.is_empty() {
        // No one: the journal just opened, its lock held throughout, is the one.
        return Ok(journal);
    }
    drop(journal);
    for &(pid, start) in &chain {
        let source = Source::Live { pid, start };
        if let Some(journal) = adopt_from(state, &source, info, identity, stale, log)? {
            return Ok(journal);
        }
    }
    for source in dead {
        if let Some(journal) = adopt_from(state, &source, info, identity, stale, log)? {
            return Ok(journal);
        }
    }
    Ok(Journal::open_locked(
        state.lock(info.pid)?,
        state,
        identity,
        stale,
    )?)
}

/// Where an ancestor's records are read from.
enum Source {
    /// The current journal of a live ancestor (`PID.json`).
    Live { pid: i32, start: u64 },
    /// The journal file `name` of a dead process (or of an image its process left by exec).
    Dead { name: String, pid: i32, start: u64 },
}

/// Adopts what the target holds of `source`'s records, under the ancestor's lock then the
/// target's. `None` when it holds nothing of them (both locks let go).
fn adopt_from(
    state: &StateDir,
    source: &Source,
    info: &ProcessInfo,
    identity: &TargetIdentity,
    stale: Stale,
    log: &Log,
) -> Result<Option<Journal>, Error> {
    let (pid, start) = match source {
        Source::Live { pid, start } | Source::Dead { pid, start, .. } => (*pid, *start),
    };
    let ancestor_lock = state.lock(pid)?;
    let data = match source {
        Source::Live { .. } => state.peek(pid),
        Source::Dead { name, .. } => state.journal_named(name),
    };
    let Some(data) = data.filter(|d| describes(d, pid, start, info)) else {
        return Ok(None);
    };
    let mut journal = Journal::open_locked(state.lock(info.pid)?, state, identity, stale)?;
    if journal.existed() {
        return Ok(Some(journal));
    }
    let maps = process::read_maps(info.pid)?;
    let born = process::start_unix_secs(info.start_time);
    let inheritance = inherit(&data, &ProcMem::open(info.pid)?, &maps, born);
    if inheritance.is_empty() {
        return Ok(None);
    }
    log.step(
        "journal",
        format!(
            "PID {} was forked from PID {pid} (start {start}): adopting {} of its patches{}",
            info.pid,
            inheritance.patches.len(),
            if inheritance.inconsistent.is_some() {
                ", and its inconsistent loader state"
            } else {
                ""
            }
        ),
    );
    journal.data.adopt(inheritance);
    journal.save()?;
    drop(ancestor_lock);
    Ok(Some(journal))
}

/// Whether `data` is the journal of process `pid` started at `start`, of the image `info` runs.
fn describes(data: &JournalData, pid: i32, start: u64, info: &ProcessInfo) -> bool {
    let id = &data.identity;
    id.pid == pid
        && id.start_time == start
        && id.boot_id == info.boot_id
        && id.image.is_none_or(|i| i == info.image)
}

/// The live processes `info` was forked from, nearest first (PID, start time): its parent, that
/// one's parent..., as long as each runs the same exec image (an exec, or a parent that died and
/// left the child to init or a subreaper, ends the chain).
fn forked_from(info: &ProcessInfo) -> Vec<(i32, u64)> {
    let mut chain = Vec::new();
    let mut pid = info.pid;
    while let Some(parent) = process::parent(pid) {
        if parent <= 1 || chain.len() >= 64 || !process::runs_image(parent, &info.image) {
            break;
        }
        let Ok((_, start, _)) = process::read_stat(parent, parent) else {
            break;
        };
        chain.push((parent, start));
        pid = parent;
    }
    chain
}

/// Journals of the image `info` runs whose process is gone (it exited, or exec'd another
/// program) and which started before `info`, newest first: a dead ancestor's records stay
/// usable by the children it forked. Journals of `chain` were tried already.
fn dead_journals(state: &StateDir, info: &ProcessInfo, chain: &[(i32, u64)]) -> Vec<Source> {
    let mut found: Vec<Source> = state
        .journals_of_image(&info.image)
        .into_iter()
        .filter(|(_, d)| {
            let id = &d.identity;
            let alive = process::read_stat(id.pid, id.pid).is_ok_and(|(state, start, _)| {
                start == id.start_time && !matches!(state, 'Z' | 'X' | 'x')
            });
            let execed = alive && !process::runs_image(id.pid, &info.image);
            id.image == Some(info.image)
                && id.boot_id == info.boot_id
                && id.start_time <= info.start_time
                && (id.pid, id.start_time) != (info.pid, info.start_time)
                && !chain.contains(&(id.pid, id.start_time))
                && (!alive || execed)
        })
        .map(|(name, d)| Source::Dead {
            name,
            pid: d.identity.pid,
            start: d.identity.start_time,
        })
        .collect();
    found.sort_by_key(|s| match s {
        Source::Dead { start, .. } | Source::Live { start, .. } => std::cmp::Reverse(*start),
    });
    found
}

/// The children forked from the target while its loader ran a `dlopen` (`ticks`, clock ticks
/// after boot, see `load::LoaderWindow`), that still run its image (not exec'd since) in their
/// own address space: their copy of the loader's state is half updated (another thread was
/// inside `dlopen`; the C library resets the loader's lock in a forked child). Each gets a
/// journal marked inconsistent, holding what it inherited from `parent` (the target's journal);
/// attach refuses them from then on. A child started within the same clock tick as the load's
/// start or end counts (the side of caution). With `last_pid` (the last PID allocated before the
/// loader first ran, `process::last_pid`), only children with a PID allocated since are looked
/// at: one forked earlier holds a loader no `dlopen` of this attach had touched. Returns their
/// PIDs.
pub(super) fn mark_born_during_load(
    state: &StateDir,
    parent: &JournalData,
    info: &ProcessInfo,
    ticks: std::ops::RangeInclusive<u64>,
    last_pid: Option<i32>,
    log: &Log,
) -> Vec<i32> {
    let mut marked = Vec::new();
    for (child, start) in process::children_since(info.pid, last_pid) {
        let copy = ticks.contains(&start)
            && process::runs_image(child, &info.image)
            && !process::shares_address_space(info.pid, child);
        if !copy {
            continue;
        }
        match mark_inconsistent(state, parent, info, child, start) {
            Ok(()) => {
                log.step(
                    "load",
                    format!(
                        "PID {child} was forked while the library loaded: marked inconsistent, it will never be patched"
                    ),
                );
                marked.push(child);
            }
            Err(e) => log.step(
                "load",
                format!("PID {child} was forked while the library loaded; marking it failed: {e}"),
            ),
        }
    }
    marked
}

/// Records `child` (started at `start`) as forked mid-load from the target, in its journal,
/// under its lock (taken after the target's, which the caller holds).
fn mark_inconsistent(
    state: &StateDir,
    parent: &JournalData,
    info: &ProcessInfo,
    child: i32,
    start: u64,
) -> Result<(), Error> {
    let identity = TargetIdentity {
        pid: child,
        start_time: start,
        boot_id: info.boot_id.clone(),
        exe: std::fs::read_link(format!("/proc/{child}/exe")).unwrap_or_default(),
        image: Some(info.image),
    };
    let mut journal = Journal::open_locked(state.lock(child)?, state, &identity, Stale::SetAside)?;
    if !journal.existed() {
        let maps = process::read_maps(child)?;
        let born = process::start_unix_secs(start);
        journal
            .data
            .adopt(inherit(parent, &ProcMem::open(child)?, &maps, born));
    }
    journal.data.inconsistent = Some(Inconsistent {
        pid: info.pid,
        start_time: info.start_time,
        detected: now_secs(),
    });
    journal.save()?;
    Ok(())
}
