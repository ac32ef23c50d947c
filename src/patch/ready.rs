//! Whether a process that has just started is past its dynamic loader, so that a patch may be
//! loaded into it (`rpatch watch` patches new processes only then).
//!
//! A new process runs the dynamic loader first (mapping and relocating its libraries), then
//! `_start` calls libc's `__libc_start_main`, which runs the constructors and then, from glibc
//! 2.34 on, calls the libc-internal `__libc_start_call_main`, which calls `main` (before 2.34,
//! `__libc_start_main` called `main` itself, the constructors through the executable's
//! `__libc_csu_init`). Neither `r_debug.r_state` (RT_CONSISTENT also before loading starts) nor
//! the kernel's `kstkeip` (0 on current kernels) tells the difference, so every thread is stopped
//! and unwound: the process is ready when no frame is in the loader and the main thread's stack
//! shows `main`'s caller inside `__libc_start_main`: a libc function (2.34+: constructors are
//! called from `__libc_start_main` itself, their frames are in their own modules) or, before
//! 2.34, a frame outside `__libc_csu_init`.

use crate::Error;
use crate::log::Log;
use crate::process::{self, ModuleMap, Tracer};
use crate::safety::StackInspector;
use crate::symbols::Resolution;
use std::ops::Range;
use std::time::Instant;

/// Whether a process is past its dynamic loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// `main` (or what libc calls instead) runs; no thread is in the loader.
    Ready,
    /// Not yet, and why (for `-v`).
    NotYet(String),
}

/// Stops every thread of `pid` for the time of one unwind each and tells whether the process is
/// past its dynamic loader (see the module comment). Leaves the process as it was.
pub fn loader_done(pid: i32, log: &Log) -> Result<Readiness, Error> {
    let info = process::identify(pid)?;
    let maps = process::read_maps(pid)?;
    let mut modules = ModuleMap::new(pid, &maps, &info.exe);
    let not_yet = |why: &str| Ok(Readiness::NotYet(why.to_string()));
    let Some(libc) = modules.c_library().cloned() else {
        return not_yet("the C library is not mapped yet");
    };
    let index = modules.symbols(&libc)?;
    let bias = libc.bias(index.load_segments());
    let runtime = |f: &crate::symbols::FunctionSymbol| {
        f.address.wrapping_add(bias)..f.address.wrapping_add(bias) + f.size.max(1)
    };
    let Resolution::Found(start_main) = index.resolve("__libc_start_main") else {
        return not_yet("the C library has no __libc_start_main");
    };
    let start_main = runtime(&start_main);
    // glibc 2.34 moved dlopen into libc, and main's call into __libc_start_call_main.
    let call_main_in_libc = index.symbol_address("dlopen").is_some();
    let libc_range = libc.start..libc.end;
    let loader = modules.glibc_loader().map(|m| m.start..m.end);
    let csu_init = modules.main_executable().cloned().and_then(|exe| {
        let index = modules.symbols(&exe).ok()?;
        let bias = exe.bias(index.load_segments());
        match index.resolve("__libc_csu_init") {
            Resolution::Found(f) => Some(f.address + bias..f.address + bias + f.size.max(1)),
            _ => None,
        }
    });
    let mut stacks = StackInspector::new(&mut modules, &maps, log)?;
    let mut tracer = Tracer::new(pid)?;
    let (in_loader, main_frames) = {
        let survey = tracer.survey()?;
        let frozen = tracer.freeze(survey, Instant::now() + process::STOP_GRACE)?;
        let mut in_loader = None;
        let mut main_frames = None;
        for t in frozen.threads() {
            let walk = stacks.walk(&t.regs);
            if let Some(loader) = &loader
                && walk.frames.iter().any(|&a| loader.contains(&a))
            {
                in_loader = Some(t.tid);
            }
            if t.tid == pid {
                main_frames = Some(walk.frames);
            }
        }
        (in_loader, main_frames)
    };
    drop(tracer);
    if let Some(tid) = in_loader {
        return Ok(Readiness::NotYet(format!(
            "thread {tid} is in the dynamic loader"
        )));
    }
    // The main thread has exited while others run: the process started long ago.
    let Some(frames) = main_frames else {
        return Ok(Readiness::Ready);
    };
    Ok(decide(
        &frames,
        &start_main,
        call_main_in_libc,
        &libc_range,
        csu_init.as_ref(),
    ))
}

/// The decision on the main thread's frames (PC first, then return addresses).
fn decide(
    frames: &[u64],
    start_main: &Range<u64>,
    call_main_in_libc: bool,
    libc: &Range<u64>,
    csu_init: Option<&Range<u64>>,
) -> Readiness {
    // A return address points after the call: look up the byte before it.
    let Some(at) = frames
        .iter()
        .enumerate()
        .skip(1)
        .rposition(|(_, &a)| start_main.contains(&a.saturating_sub(1)))
        .map(|i| i + 1)
    else {
        return Readiness::NotYet("__libc_start_main is not on the main thread's stack".into());
    };
    let callee = frames[at - 1];
    let ready = if call_main_in_libc {
        libc.contains(&callee) && !start_main.contains(&callee)
    } else {
        !libc.contains(&callee) && !csu_init.is_some_and(|r| r.contains(&callee))
    };
    if ready {
        Readiness::Ready
    } else {
        Readiness::NotYet("__libc_start_main has not called main yet (constructors run)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBC: Range<u64> = 0x7f00_0000_0000..0x7f00_0020_0000;
    const START_MAIN: Range<u64> = 0x7f00_0002_7280..0x7f00_0002_7400;
    const CALL_MAIN: u64 = 0x7f00_0002_71d0;
    const EXE: u64 = 0x5555_0000_1000;

    #[test]
    fn ready_once_main_runs_from_libc_start_call_main() {
        // main <- __libc_start_call_main <- __libc_start_main <- _start
        let running = [
            EXE + 0x40,
            CALL_MAIN + 0x7a,
            START_MAIN.start + 0x85,
            EXE + 0x25,
        ];
        assert_eq!(
            decide(&running, &START_MAIN, true, &LIBC, None),
            Readiness::Ready
        );
        // A constructor called by __libc_start_main itself.
        let ctor = [EXE + 0x90, START_MAIN.start + 0x5c, EXE + 0x25];
        assert!(matches!(
            decide(&ctor, &START_MAIN, true, &LIBC, None),
            Readiness::NotYet(_)
        ));
        // Still in the loader: no __libc_start_main frame.
        let loading = [0x7f10_0000_1234, 0x7f10_0000_2000];
        assert!(matches!(
            decide(&loading, &START_MAIN, true, &LIBC, None),
            Readiness::NotYet(_)
        ));
    }

    #[test]
    fn before_glibc_2_34_main_is_called_by_libc_start_main() {
        let csu = EXE + 0x200..EXE + 0x260;
        let main = [EXE + 0x40, START_MAIN.start + 0x85, EXE + 0x25];
        assert_eq!(
            decide(&main, &START_MAIN, false, &LIBC, Some(&csu)),
            Readiness::Ready
        );
        let ctor = [EXE + 0x90, EXE + 0x220, START_MAIN.start + 0x5c, EXE + 0x25];
        assert!(matches!(
            decide(&ctor, &START_MAIN, false, &LIBC, Some(&csu)),
            Readiness::NotYet(_)
        ));
    }
}
