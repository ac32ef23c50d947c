//! The rollback journal: a durable record of every change rpatch makes to a target.
//!
//! One JSON file per target PID in the state directory, guarded by an exclusive lock so two rpatch
//! runs on one target never interleave. The file records the target's start time and boot id, so a
//! journal left behind by a process that has since died is never applied to a new process that
//! happens to reuse its PID. An *intent* record is made durable before the target is frozen (no
//! disk wait while threads are stopped) and completed afterwards; `status` reconciles an intent left
//! behind by a crash with what memory actually holds.

mod inherit;
mod settle;
mod store;

pub use inherit::{Inconsistent, Origin, inherit};
pub use settle::{Observed, now_secs, observe, reconcile, settle_slack};
pub use store::{Journal, PendingSave, Stale, StateDir, TargetLock};

pub use crate::process::ExecImage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Format version of the journal file; bumped on incompatible changes.
pub const JOURNAL_VERSION: u32 = 1;

/// Errors of the journal layer.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state directory or a journal file cannot be used.
    #[error("state directory {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The journal file exists but cannot be parsed.
    #[error("journal {path} is corrupt ({reason}); move it aside to continue")]
    Corrupt {
        /// Journal file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// The journal for this PID was written for another process (PID reused, or another boot).
    #[error(
        "journal {path} belongs to another process with PID {pid} (recorded start {recorded_start}, boot {recorded_boot}; \
         this process started at {actual_start}); its patches died with that process: remove the file and retry"
    )]
    OtherProcess {
        /// Journal file.
        path: PathBuf,
        /// The PID.
        pid: i32,
        /// Start time recorded in the journal (clock ticks since boot).
        recorded_start: u64,
        /// Boot id recorded in the journal.
        recorded_boot: String,
        /// Start time of the live process.
        actual_start: u64,
    },
    /// As root, the state directory (or a directory above it) could be written by someone else,
    /// who could then write the journals that decide what rpatch writes into processes.
    #[error(
        "state directory {path} {reason}: root's journals must be writable by root only; fix the owner and mode (chown root, chmod go-w) or set RPATCH_STATE_DIR to a safe directory"
    )]
    UnsafeStateDir {
        /// The directory found unsafe.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Who a journal belongs to: enough to tell a reused PID apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetIdentity {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    /// /proc/sys/kernel/random/boot_id at the time of recording.
    pub boot_id: String,
    /// Executable path as the kernel reports it.
    #[serde(default)]
    pub exe: PathBuf,
    /// The exec image (executable and `AT_RANDOM` bytes): `execve` keeps PID and start time,
    /// so this is what tells the image the journal describes from a later one. `None` in
    /// journals written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ExecImage>,
}

impl TargetIdentity {
    /// Whether `self` and `other` are one process: the same PID, start time and boot (a PID
    /// and a start time repeat from one boot to the next).
    pub fn same_process(&self, other: &TargetIdentity) -> bool {
        self.pid == other.pid
            && self.start_time == other.start_time
            && self.boot_id == other.boot_id
    }

    /// Whether a journal recorded for `self` describes the image `live` runs (same process
    /// assumed): the same exec image, or, for a journal that recorded none, the same
    /// executable path.
    pub fn same_image(&self, live: &TargetIdentity) -> bool {
        match (&self.image, &live.image) {
            (Some(a), Some(b)) => a == b,
            _ => {
                let path = |p: &Path| {
                    let s = p.to_string_lossy();
                    s.strip_suffix(" (deleted)").unwrap_or(&s).to_string()
                };
                self.exe.as_os_str().is_empty() || path(&self.exe) == path(&live.exe)
            }
        }
    }
}

/// Whether some live process of this boot runs the exec image a journal recorded (its own
/// process, or a child forked from it that has not exec'd since): the processes that may hold
/// that journal's patches. A journal of another boot, or that recorded no image, has none.
pub fn image_still_run(recorded: &TargetIdentity) -> bool {
    ImagesRun::of([recorded]).still_run(recorded)
}

/// [`image_still_run`] for many journals at once: the images live processes run are read in
/// one pass over `/proc` for all of them (`process::images_run`).
pub struct ImagesRun {
    boot_id: Option<String>,
    run: std::collections::HashSet<crate::process::ExecImage>,
}

impl ImagesRun {
    /// Reads which of the images `recorded` (journals' identities) live processes run now.
    pub fn of<'a>(recorded: impl IntoIterator<Item = &'a TargetIdentity>) -> Self {
        let boot_id = crate::process::boot_id();
        let images = recorded
            .into_iter()
            .filter(|r| Some(&r.boot_id) == boot_id.as_ref())
            .filter_map(|r| r.image)
            .collect();
        let run = crate::process::images_run(&images);
        Self { boot_id, run }
    }

    /// Whether a live process of this boot ran `recorded`'s image when [`ImagesRun::of`] read
    /// them (one not run then never runs again; one run then may have stopped since).
    pub fn still_run(&self, recorded: &TargetIdentity) -> bool {
        Some(&recorded.boot_id) == self.boot_id.as_ref()
            && recorded.image.is_some_and(|i| self.run.contains(&i))
    }
}

/// Life cycle of one patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchState {
    /// Recorded before the write; memory may or may not hold it (a crash in between).
    Intent,
    /// Written and verified.
    Applied,
    /// A rollback is about to restore the original bytes (recorded before the freeze); memory
    /// may hold either (a crash in between).
    RollingBack,
    /// Undone; memory holds `original` again.
    RolledBack,
    /// The attach that recorded this intent failed before writing.
    Abandoned,
}

impl PatchState {
    /// The snake_case name (as in the journal file and reports).
    pub const fn name(self) -> &'static str {
        match self {
            PatchState::Intent => "intent",
            PatchState::Applied => "applied",
            PatchState::RollingBack => "rolling_back",
            PatchState::RolledBack => "rolled_back",
            PatchState::Abandoned => "abandoned",
        }
    }
}

/// How the entry jump reaches the replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JumpMethod {
    /// `jmp rel32` straight to the replacement.
    Direct,
    /// `jmp rel32` to an island slot holding an absolute jump.
    Island,
    /// 14-byte absolute jump written in place.
    Absolute,
}

impl JumpMethod {
    /// The snake_case name (as in the journal file and reports).
    pub const fn name(self) -> &'static str {
        match self {
            JumpMethod::Direct => "direct",
            JumpMethod::Island => "island",
            JumpMethod::Absolute => "absolute",
        }
    }
}

impl std::fmt::Display for JumpMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A page rpatch mapped in the target to hold island slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Island {
    /// Start address.
    pub address: u64,
    /// Length in bytes.
    pub size: u64,
}

/// One change to the target's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRecord {
    /// Id, unique per target, starting at 1.
    pub id: u64,
    /// Patches made by one `attach` share a group (they were applied together).
    pub group: u64,
    /// Function as the user named it, resolved (display name).
    pub function: String,
    /// Module (file) that holds the function.
    pub module: PathBuf,
    /// Build-id (hex) of the module as mapped when patched: rollback and status check the code
    /// at `address` still belongs to that build.
    #[serde(default)]
    pub module_build_id: Option<String>,
    /// Runtime entry address of the function.
    pub function_address: u64,
    /// Runtime address of the first byte written (after a kept `endbr64`).
    pub address: u64,
    /// Bytes memory held before this patch.
    #[serde(with = "hex_bytes")]
    pub original: Vec<u8>,
    /// Bytes this patch wrote.
    #[serde(with = "hex_bytes")]
    pub new: Vec<u8>,
    /// Name of the replacement in the library.
    pub replacement_name: String,
    /// Runtime address of the replacement.
    pub replacement: u64,
    /// Size of the replacement in bytes (0 in journals written before it was recorded): a
    /// rollback waits while a thread has the replacement on its stack.
    #[serde(default)]
    pub replacement_size: u64,
    /// Library path the user gave.
    pub library: PathBuf,
    /// The name the target's `dlopen` was given: `/proc/self/fd/N` of a sealed memfd, or a file
    /// in a fresh directory rpatch made and removed again. Only for people: nothing opens it.
    pub loaded_from: PathBuf,
    /// SHA-256 of the library content.
    pub library_sha256: String,
    /// How the jump reaches the replacement.
    pub method: JumpMethod,
    /// Island slot address when `method` is `Island`.
    pub island_slot: Option<u64>,
    /// Current state.
    pub state: PatchState,
    /// Unix time (seconds) of the attach.
    pub created: u64,
    /// Unix time (seconds) of the rollback.
    pub rolled_back: Option<u64>,
    /// The loaded copy of the library (none in journals written before it was recorded): a
    /// later attach of the same content reuses it if it is still mapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loaded: Option<LoadedObject>,
    /// Adopted from an ancestor's journal by a forked child that holds its bytes (see
    /// [`inherit`]): where it came from. `None` for a patch made in this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited: Option<Origin>,
    /// The name of the manifest this patch was applied from (`attach --manifest`), if any: with
    /// `library_sha256`, what makes a later run of that manifest find it applied (none in
    /// journals written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// The identity of a library copy loaded in the target, as its mappings show it (its name,
/// `/memfd:... (deleted)`, says nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedObject {
    /// Device of the loaded file (`st_dev` encoding).
    pub dev: u64,
    /// Inode of the loaded file.
    pub inode: u64,
    /// Load bias (`l_addr` of its link map).
    pub l_addr: u64,
}

/// Bootstrap code rpatch wrote into slack bytes after a module's code (see `inject`), recorded
/// before it is written and removed once memory holds the file's bytes again. A record that
/// stays means a run died, or could not prove that no thread would come back into the code,
/// before restoring it: a later run restores it with every thread stopped and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackRecord {
    /// First byte.
    pub address: u64,
    /// The file's bytes there.
    #[serde(with = "hex_bytes")]
    pub original: Vec<u8>,
    /// The bootstrap code written over them.
    #[serde(with = "hex_bytes")]
    pub code: Vec<u8>,
    /// The module, for messages.
    pub module: PathBuf,
}

/// The whole journal file of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalData {
    /// Format version.
    pub version: u32,
    /// The process this journal belongs to.
    pub identity: TargetIdentity,
    /// Island pages mapped in the target (reused across patches).
    #[serde(default)]
    pub islands: Vec<Island>,
    /// Every patch ever made to this process, oldest first.
    #[serde(default)]
    pub patches: Vec<PatchRecord>,
    /// Bootstrap code in slack bytes not yet seen restored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slack: Vec<SlackRecord>,
    /// The process was forked while rpatch loaded a library into its parent (or descends from
    /// one that was): nothing is ever loaded into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconsistent: Option<Inconsistent>,
    /// The last scan for processes sharing this one's address space: the next operation
    /// compares only those found and the processes created since (see
    /// `process::address_space_sharers`), not every process on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharer_scan: Option<crate::process::SharerScan>,
}

impl JournalData {
    /// An empty journal for `identity`.
    pub fn new(identity: TargetIdentity) -> Self {
        Self {
            version: JOURNAL_VERSION,
            identity,
            islands: Vec::new(),
            patches: Vec::new(),
            slack: Vec::new(),
            inconsistent: None,
            sharer_scan: None,
        }
    }

    /// Next free patch id.
    pub fn next_id(&self) -> u64 {
        self.patches.iter().map(|p| p.id).max().unwrap_or(0) + 1
    }

    /// Next free attach group.
    pub fn next_group(&self) -> u64 {
        self.patches.iter().map(|p| p.group).max().unwrap_or(0) + 1
    }

    /// Patches whose bytes are (or may be) in memory: applied, intent or rolling back, oldest
    /// first.
    pub fn live(&self) -> impl Iterator<Item = &PatchRecord> {
        self.patches.iter().filter(|p| {
            matches!(
                p.state,
                PatchState::Applied | PatchState::Intent | PatchState::RollingBack
            )
        })
    }

    /// The newest live patch at the same write address as `record`, other than itself: the bytes a
    /// new patch there must find in memory, and what blocks an out-of-order rollback.
    pub fn top_of_stack(&self, address: u64) -> Option<&PatchRecord> {
        self.live()
            .filter(|p| p.address == address)
            .max_by_key(|p| p.id)
    }

    /// Island slots in use by live patches.
    pub fn slots_in_use(&self) -> Vec<u64> {
        self.live().filter_map(|p| p.island_slot).collect()
    }
}

/// Serialises byte strings as lowercase hex, readable in the file.
mod hex_bytes {
    use serde::{Deserialize, Deserializer};

    pub(crate) use crate::hex::serialize_bytes as serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd-length hex string"));
        }
        // By bytes: a non-ASCII character must be an error, not a slice inside it (found by
        // fuzzing).
        let digit = |b: u8| {
            (b as char)
                .to_digit(16)
                .ok_or_else(|| serde::de::Error::custom("not a hex digit"))
        };
        text.as_bytes()
            .chunks_exact(2)
            .map(|pair| Ok((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
            .collect()
    }
}
