//! Mapping the stub region: the bootstrap code runs from slack bytes after a module's code,
//! makes the two `mmap` calls and returns to the thread's own code through a frame on its stack;
//! the slack bytes are recorded in the ledger before they are written and restored once the
//! thread is seen back in its own code.

use super::region;
use super::state::set_sigmask;
use super::*;
use crate::fault::FaultPoint;
use crate::isa::call::{self, SYS_MMAP};
use crate::isa::remote_call::{self as stub, BOOTSTRAP_LEN, Syscall};
use crate::log::Log;
use crate::process::{self, Memory, ModuleMap};
use std::time::Duration;

impl InjectedThread<'_> {
    /// Maps the stub region with the bootstrap code in some slack bytes, and writes the stub.
    /// A bootstrap cut short by a signal is run again at the same address (its system calls
    /// fail harmlessly for what is already mapped). Each attempt starts from the mappings last
    /// read (see [`Self::mappings`]: the caller's, then those read after the attempt before);
    /// what the bootstrap mapped is checked against a read made after it ran.
    pub(super) fn bootstrap(
        &mut self,
        modules: &mut ModuleMap,
        ledger: &mut dyn SlackLedger,
        log: &Log,
    ) -> Result<(), InjectError> {
        let pid = self.pid();
        let refused = |reason: String| InjectError::NoStubRegion { pid, reason };
        let mut tried = Vec::new();
        let mut again = None;
        for _ in 0..BOOTSTRAP_ATTEMPTS {
            let maps = self.mappings()?;
            let page = self.layout.page();
            let slack = region::find_slack(modules, &maps, self.tracer.mem(), page).ok_or_else(|| {
                refused(format!(
                    "no executable segment of a mapped file has {BOOTSTRAP_LEN} unused bytes at its end to bootstrap from"
                ))
            })?;
            let base = match again.take() {
                Some(base) => base,
                None => {
                    let base = region::region_addresses(&maps, self.region.len(), page)
                        .into_iter()
                        .find(|b| !tried.contains(b))
                        .ok_or_else(|| refused("no free address range for it".into()))?;
                    tried.push(base);
                    base
                }
            };
            self.region.base = base;
            self.mappings = None;
            self.run_bootstrap(&slack, &maps, ledger)?;
            let maps = self.mappings()?;
            match region::region_mapped(&maps, &self.region) {
                (true, true) => {
                    self.stub = self
                        .layout
                        .stub(&self.region)
                        .map_err(|e| refused(format!("encoding the stub: {e}")))?;
                    self.write_text(self.region.code(), &self.stub.code, "stub code")?;
                    let header = stub::idle_header(self.region.data_len());
                    self.tracer
                        .mem()
                        .write_at(self.region.data(), &header)
                        .map_err(|e| self.io("stub data", e))?;
                    self.scratch = self.region.data() + self.region.scratch_offset();
                    log.step(
                        "load",
                        format!(
                            "call stub mapped at {base:#x} ({} bytes, {} KiB stack), bootstrapped from {} bytes of slack at {:#x} in {}{}",
                            self.region.len(),
                            region::REGION_STACK_KIB,
                            BOOTSTRAP_LEN,
                            slack.addr,
                            slack.module.display(),
                            match std::mem::take(&mut self.signals_moved) {
                                0 => String::new(),
                                n => format!("; {n} signal(s) arriving in it delivered at the thread's own code"),
                            }
                        ),
                    );
                    return Ok(());
                }
                mapped if std::mem::take(&mut self.bootstrap_cut_short) => {
                    log.step(
                        "load",
                        format!(
                            "a signal interrupted the bootstrap ({} mapped at {base:#x}); delivered at the thread's own code, running it again",
                            mapped_parts(mapped)
                        ),
                    );
                    again = Some(base);
                }
                mapped => log.step(
                    "load",
                    format!(
                        "mapping the call stub at {base:#x} was refused ({} mapped); trying elsewhere",
                        mapped_parts(mapped)
                    ),
                ),
            }
        }
        Err(refused(format!(
            "the kernel refused every address tried ({}), or signals kept interrupting the bootstrap",
            tried
                .iter()
                .map(|b| format!("{b:#x}"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// One run of the bootstrap code from `slack`: mmap the code page and the stack + data of
    /// `self.region`, then back to the thread's own code, which rpatch waits for before putting
    /// the slack bytes back. The bytes are recorded in `ledger` before they are written; when the
    /// thread cannot be seen back in its own code they stay, recorded, for a later run.
    fn run_bootstrap(
        &mut self,
        slack: &Slack,
        maps: &[process::Mapping],
        ledger: &mut dyn SlackLedger,
    ) -> Result<(), InjectError> {
        let pid = self.pid();
        let region = self.region;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let code_page = Syscall {
            nr: SYS_MMAP,
            args: [
                region.code(),
                region.rw_start() - region.code(),
                rx,
                flags,
                u64::MAX,
                0,
            ],
        };
        let stack_and_data = Syscall {
            nr: SYS_MMAP,
            args: [region.rw_start(), region.rw_len(), rw, flags, u64::MAX, 0],
        };
        let (frame_at, frame, needs) = call::bootstrap_frame(
            &self.at_rest,
            &stack_and_data,
            self.at_rest_mask,
            self.tracer.mem(),
        );
        let room = maps
            .iter()
            .any(|m| m.start <= needs.start && needs.end <= m.end && m.perms.read_write());
        if !room {
            return Err(InjectError::NoStubRegion {
                pid,
                reason: format!(
                    "thread {} has no room for {} bytes below its stack pointer {:#x}",
                    self.tid,
                    needs.end - needs.start,
                    self.at_rest.sp()
                ),
            });
        }
        self.tracer
            .mem()
            .write_at(frame_at, &frame)
            .map_err(|e| self.io("bootstrap frame on the thread's stack", e))?;
        ledger.will_write(slack)?;
        if !slack.leftover {
            self.write_text(slack.addr, &crate::isa::bootstrap_code(), "slack bytes")?;
        }
        let regs = call::bootstrap_regs(&self.at_rest, slack.addr, frame_at, &code_page);
        let code = OwnCode::Bootstrap(slack.addr..slack.addr + BOOTSTRAP_LEN as u64);
        self.tracer.set_regs(self.tid, regs)?;
        // Asynchronous signals wait until the bootstrap's last system call restores the
        // thread's own mask (from the frame, so also when rpatch dies meanwhile): signals
        // pending now would otherwise cut every run short on a thread under a signal storm.
        set_sigmask(self.tid, CALL_BLOCK_MASK | self.at_rest_mask)?;
        self.running_in = code.clone();
        self.cont(0)?;
        crate::fault::point(FaultPoint::Bootstrap);
        std::thread::sleep(Duration::from_micros(20));
        let settled = self.settle("mmap", &code);
        // Back in its own code (or put back after a fault) with no frame returning into the
        // slack: it gets the file's bytes back — unless a killed run left our code there, which
        // some other thread may still be running; that is restored only with every thread
        // stopped and checked (see `patch`).
        let out = matches!(self.place, Where::AtRest | Where::Broken);
        if out && !slack.leftover {
            self.write_text(slack.addr, &slack.original, "slack bytes")?;
            ledger.restored(slack);
        }
        settled
    }
}

/// Which parts of a stub region `region::region_mapped` found, in words.
fn mapped_parts((code, rw): (bool, bool)) -> &'static str {
    match (code, rw) {
        (true, true) => "all",
        (true, false) => "the code page only",
        (false, true) => "the stack and data only",
        (false, false) => "nothing",
    }
}
