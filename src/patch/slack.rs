//! Bootstrap code in slack bytes (see `inject`): recorded in the journal before it is written,
//! settled from memory by every run, and — when a run left it in place — restored by a later one
//! only with every thread stopped and none running it or returning into it.

use super::code::Site;
use super::frozen_write;
use crate::Error;
use crate::fault::{FaultPoint, FrozenPoints};
use crate::inject::{InjectError, Slack, SlackLedger};
use crate::journal::{Journal, SlackRecord, settle_slack};
use crate::log::Log;
use crate::process::{Memory, Tracer};
use crate::safety::{GuardedRange, StackInspector};
use std::time::Duration;

/// The journal as the injection's [`SlackLedger`]: a record is saved before the bytes are
/// written (atomically, without waiting for the disk: it must outlive rpatch, whose death leaves
/// the page cache, and the bytes are harmless where they are should a crash of the machine lose
/// it, which ends the process anyway); its removal once they are restored is saved with the
/// journal's next save (a record whose bytes are already restored is dropped by [`settle`]).
pub(super) struct JournalLedger<'j> {
    journal: &'j mut Journal,
}

impl<'j> JournalLedger<'j> {
    /// A ledger writing to `journal`.
    pub fn new(journal: &'j mut Journal) -> Self {
        Self { journal }
    }
}

impl SlackLedger for JournalLedger<'_> {
    fn will_write(&mut self, slack: &Slack) -> Result<(), InjectError> {
        let records = &mut self.journal.data.slack;
        if records.iter().any(|r| r.address == slack.addr) {
            return Ok(());
        }
        records.push(SlackRecord {
            address: slack.addr,
            original: slack.original.clone(),
            code: crate::isa::bootstrap_code().to_vec(),
            module: slack.module.clone(),
        });
        self.journal.save_settled()?;
        Ok(())
    }

    fn restored(&mut self, slack: &Slack) {
        self.journal.data.slack.retain(|r| r.address != slack.addr);
    }
}

/// Restores bootstrap code a run left in place, if no thread is executing it or has a frame
/// (a signal frame included) that returns into it: one attempt with every thread stopped,
/// within `timeout`. Best effort: when a thread is in the way the record stays for a later run.
pub(super) fn repair(
    journal: &mut Journal,
    tracer: &mut Tracer,
    stacks: &mut StackInspector,
    timeout: Duration,
    log: &Log,
) -> Result<(), Error> {
    let left = settle_slack(journal, tracer.mem());
    if left.is_empty() {
        return Ok(());
    }
    let ranges: Vec<GuardedRange> = left
        .iter()
        .map(|r| {
            let bytes = r.address..r.address + r.code.len() as u64;
            GuardedRange {
                bytes: bytes.clone(),
                entry_ok: false,
                function: format!(
                    "rpatch's bootstrap code left in the slack of {}",
                    r.module.display()
                ),
                stack_range: Some(bytes),
            }
        })
        .collect();
    let result = frozen_write(
        FrozenPoints {
            frozen: FaultPoint::SlackFrozen,
            written: FaultPoint::SlackWritten,
            thawed: FaultPoint::SlackThawed,
        },
        tracer,
        &ranges,
        Some(stacks),
        timeout,
        log,
        |mem| {
            for r in &left {
                let owner = format!("the slack of {}", r.module.display());
                let site = Site {
                    pid: mem.pid(),
                    owner: &owner,
                    address: r.address,
                };
                mem.write_at(r.address, &r.original)
                    .map_err(|e| site.io(e))?;
            }
            Ok(())
        },
    );
    match result {
        Ok(_) => {
            log.step(
                "slack",
                format!(
                    "restored {} bootstrap left in slack by an earlier run",
                    left.len()
                ),
            );
            settle_slack(journal, tracer.mem());
            journal.save_settled()?;
            Ok(())
        }
        Err(Error::Busy { blocker, .. }) => {
            log.step(
                "slack",
                format!("left in place for a later run: {}", blocker.describe()),
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}
