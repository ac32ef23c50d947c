//! "Every thread stopped" as a value: a [`Frozen`] exists only while the tracer holds every
//! thread of the process stopped, and dropping it lets them all go (also on `?` and on panic).
//! Code that needs a stopped world takes a `&Frozen` — the activeness check, the writes of a
//! patch — and its memory handle writes text pages with the fallback a stopped thread allows.

use super::{CodeMemory, ProcessError, Survey, ThreadState, Tracer};
use std::time::Instant;

/// The process with every thread stopped by its tracer. Dropping it thaws: each thread is let
/// go, with any signal that arrived meanwhile.
pub struct Frozen<'t> {
    tracer: &'t mut Tracer,
}

impl Tracer {
    /// Phase 4, *Freeze*: seizes and stops every thread, from a [`Survey`] made just before
    /// (see [`Tracer::freeze_all`]). On an error every thread stopped so far is let go again
    /// before it is returned.
    pub fn freeze(
        &mut self,
        survey: Survey,
        deadline: Instant,
    ) -> Result<Frozen<'_>, ProcessError> {
        match self.freeze_checked(survey, deadline, &mut |_| true)? {
            Some(frozen) => Ok(frozen),
            None => unreachable!("a visit that never refuses"),
        }
    }

    /// [`Tracer::freeze`], calling `visit` with every thread as soon as it is stopped (while
    /// the others are still stopping: the check of a thread already stopped overlaps the wait
    /// for the others). When a visit returns `false` the freeze ends: every thread is let go
    /// again and `Ok(None)` returned.
    pub fn freeze_checked(
        &mut self,
        survey: Survey,
        deadline: Instant,
        visit: &mut dyn FnMut(&ThreadState) -> bool,
    ) -> Result<Option<Frozen<'_>>, ProcessError> {
        match self.freeze_all(survey, deadline, visit) {
            Ok(true) => Ok(Some(Frozen { tracer: self })),
            Ok(false) => {
                self.release_all();
                Ok(None)
            }
            Err(e) => {
                self.release_all();
                Err(e)
            }
        }
    }
}

impl Frozen<'_> {
    /// The process id.
    #[cfg(test)]
    pub fn pid(&self) -> i32 {
        self.tracer.pid()
    }

    /// Every thread, stopped, with its registers.
    pub fn threads(&self) -> impl Iterator<Item = &ThreadState> {
        self.tracer.threads()
    }

    /// The process's memory for writing code: through `/proc/PID/mem`, else PTRACE_POKEDATA by
    /// one of the stopped threads.
    pub fn memory(&self) -> CodeMemory<'_> {
        let stopped = self
            .tracer
            .threads()
            .next()
            .map_or(self.tracer.pid(), |t| t.tid);
        CodeMemory::new(self.tracer.mem(), stopped)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        // Phase 7, *Thaw*.
        self.tracer.release_all();
    }
}
