//! The journal's state machine, in one place: which transitions a patch record takes, and how a
//! record an interrupted run left unsettled is settled from what memory holds.
//!
//! ```text
//!   attach:    (none) ──intent──▶ intent ──written──▶ applied
//!                                  └──failed before writing──▶ abandoned
//!   rollback:  applied ──intent──▶ rolling_back ──restored──▶ rolled_back
//!                                  └──failed before restoring──▶ applied
//!   slack:     (none) ──will_write──▶ recorded ──restored (memory holds the file's bytes)──▶ (none)
//! ```
//!
//! `intent` and `rolling_back` are made durable before any thread is stopped; a run killed
//! between that and its final save leaves them, and every later `status`, `attach` and
//! `rollback` settles them with [`reconcile`] before doing anything else.

use super::{Journal, JournalData, JournalError, PatchRecord, PatchState, SlackRecord};
use crate::isa;
use crate::process::Memory;

/// Unix time in seconds, for journal records.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JournalData {
    /// Moves the records `ids` to `state` (a rolled-back record gets its time).
    pub fn mark(&mut self, ids: &[u64], state: PatchState) {
        let now = now_secs();
        for r in self.patches.iter_mut().filter(|r| ids.contains(&r.id)) {
            r.state = state;
            if state == PatchState::RolledBack {
                r.rolled_back = Some(now);
            }
        }
    }
}

/// What memory holds for a live record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The patch's jump (and island slot).
    Applied,
    /// The original code.
    Missing,
    /// Neither.
    Tampered,
}

/// What memory holds for the live record `r` of `journal`.
pub fn observe(mem: &dyn Memory, journal: &JournalData, r: &PatchRecord) -> Observed {
    let top = journal
        .top_of_stack(r.address)
        .map(|t| t.id)
        .unwrap_or(r.id);
    if top != r.id {
        // A later patch sits on top: this one is intact if its island slot still jumps right.
        return if slot_intact(mem, r) {
            Observed::Applied
        } else {
            Observed::Tampered
        };
    }
    match mem.read_vec(r.address, r.new.len()) {
        Ok(bytes) if bytes == r.new && slot_intact(mem, r) => Observed::Applied,
        Ok(bytes) if bytes == r.original => Observed::Missing,
        _ => Observed::Tampered,
    }
}

fn slot_intact(mem: &dyn Memory, r: &PatchRecord) -> bool {
    match r.island_slot {
        Some(slot) => mem
            .read_vec(slot, isa::ISLAND_SLOT_LEN)
            .is_ok_and(|b| b == isa::island_slot(r.replacement)),
        None => true,
    }
}

/// Settles records left unsettled by an interrupted attach or rollback, from what memory holds:
/// an attach intent is applied if memory holds its new bytes, abandoned if it holds the original;
/// a rollback intent is rolled back if memory holds the original, applied if it still holds the
/// new bytes. Patches stacked at one address are settled newest first (the order a rollback
/// restores them in). Slack records whose bytes memory holds again are dropped. Saves the journal
/// when anything changed.
pub fn reconcile(journal: &mut Journal, mem: &dyn Memory) -> Result<(), JournalError> {
    let mut unsettled: Vec<PatchRecord> = journal
        .data
        .patches
        .iter()
        .filter(|r| matches!(r.state, PatchState::Intent | PatchState::RollingBack))
        .cloned()
        .collect();
    unsettled.sort_by_key(|r| std::cmp::Reverse(r.id));
    let mut changed = false;
    for r in unsettled {
        // A rollback restores newest first: under a patch still applied, nothing was restored.
        let covered = journal
            .data
            .patches
            .iter()
            .any(|x| x.address == r.address && x.id > r.id && x.state == PatchState::Applied);
        if covered && r.state == PatchState::RollingBack {
            journal.data.mark(&[r.id], PatchState::Applied);
            changed = true;
            continue;
        }
        let Ok(bytes) = mem.read_vec(r.address, r.new.len().max(r.original.len())) else {
            continue;
        };
        let holds = |b: &[u8]| bytes.starts_with(b);
        let settled = match r.state {
            PatchState::Intent if holds(&r.new) => PatchState::Applied,
            PatchState::Intent if holds(&r.original) => PatchState::Abandoned,
            PatchState::RollingBack if holds(&r.new) => PatchState::Applied,
            PatchState::RollingBack if holds(&r.original) => PatchState::RolledBack,
            _ => continue,
        };
        journal.data.mark(&[r.id], settled);
        changed = true;
    }
    let slack_before = journal.data.slack.len();
    settle_slack(journal, mem);
    if changed || journal.data.slack.len() != slack_before {
        journal.save_settled()?;
    }
    Ok(())
}

/// Drops the slack records whose bytes memory already holds again (a run that restored them died
/// before saving) or that no longer describe memory (the module was unmapped). Returns the
/// records still holding rpatch's code.
pub fn settle_slack(journal: &mut Journal, mem: &dyn Memory) -> Vec<SlackRecord> {
    journal.data.slack.retain(|r| {
        mem.read_vec(r.address, r.code.len())
            .is_ok_and(|found| found == r.code)
    });
    journal.data.slack.clone()
}
