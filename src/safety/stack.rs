//! Unwinding the stacks of frozen threads with the CFI (`.eh_frame`) of every mapped module, to
//! find return addresses into the functions about to be patched (kpatch's consistency model).
//!
//! Everything slow happens in [`StackInspector::new`], before the freeze: reading the maps,
//! opening every module and copying its unwind sections, preallocating the stack buffer. While
//! the world is frozen a thread costs one `/proc/PID/mem` read of its stack and a walk served
//! from that copy by `framehop`.
//!
//! framehop silently falls back to frame pointers when it has no usable CFI for an address. A
//! frame-pointer step can skip frames, so before each step the inspector checks (`cfi`: gimli on
//! the same sections) that the address has an FDE framehop can evaluate; when not, the walk is
//! *incomplete* and the caller scans the rest of the stack conservatively (see `scan`).

use super::cfi::{Bytes, Cfi, cfi_len, locate_cfi, read_cfi};
use super::scan;
use crate::isa::stack::{self as isa_stack, Cache, RED_ZONE};
use crate::log::Log;
#[cfg(test)]
use crate::process;
use crate::process::{LoadedModule, Mapping, Memory, ModuleMap, ProcMem, ProcessError, Regs};
use crate::symbols::Knowledge;
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};
use gimli::UnwindContext;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
#[cfg(test)]
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How much of a stack is copied in the one read per thread: enough for the live part of almost
/// every stack, small enough to copy in tens of microseconds.
pub const STACK_CHUNK: u64 = 256 * 1024;
/// How much of the copy buffer is touched when the inspector is made, before any freeze. The
/// live part of a stack is mostly a few KiB; each fresh page touched costs a fault and zeroing
/// (about 2 us a page on a virtual machine), so a deeper stack faults in the rest of its copy
/// while frozen, rather than every operation paying for all of [`STACK_CHUNK`] beforehand.
const PREFAULT: usize = 64 * 1024;
/// A walk longer than this is treated as a loop (and therefore as incomplete).
const MAX_FRAMES: usize = 4096;
/// How far the conservative scan reads past the first chunk when a stack mapping is larger.
const MAX_SCAN: u64 = 8 * 1024 * 1024;

/// Why a walk stopped before the outermost frame: what the conservative scan makes up for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Doubt {
    /// The address is in no known ELF module (anonymous code: a JIT, a jump island).
    NoModule {
        /// The code address.
        address: u64,
    },
    /// The module has no `.eh_frame` (or it could not be read).
    NoCfi {
        /// The module.
        module: String,
        /// The code address.
        address: u64,
    },
    /// The module has CFI, but no FDE covers the address (hand-written code without directives).
    NoFde {
        /// The module.
        module: String,
        /// The code address.
        address: u64,
    },
    /// A signal frame (glibc's `__restore_rt`): framehop cannot evaluate its CFI, which reads the
    /// interrupted registers from the `ucontext` on the stack.
    SignalFrame {
        /// The module.
        module: String,
        /// The code address.
        address: u64,
    },
    /// The CFI rule for the address is one framehop cannot evaluate (a CFA expression, as in
    /// functions that realign the stack) and it would fall back to frame pointers.
    Unsupported {
        /// The module.
        module: String,
        /// The code address.
        address: u64,
    },
    /// framehop failed to take the step (unreadable stack memory, a return address of 0...).
    Unwind {
        /// The code address of the frame being stepped out of.
        address: u64,
        /// framehop's error.
        error: String,
    },
    /// More than `MAX_FRAMES` frames: a loop.
    TooDeep,
}

impl fmt::Display for Doubt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Doubt::NoModule { address } => write!(f, "{address:#x} is in no ELF module"),
            Doubt::NoCfi { module, address } => {
                write!(f, "{module} has no usable .eh_frame (at {address:#x})")
            }
            Doubt::NoFde { module, address } => {
                write!(f, "no CFI covers {address:#x} in {module}")
            }
            Doubt::SignalFrame { module, address } => {
                write!(f, "signal frame at {address:#x} in {module}")
            }
            Doubt::Unsupported { module, address } => {
                write!(f, "unsupported CFI rule at {address:#x} in {module}")
            }
            Doubt::Unwind { address, error } => {
                write!(f, "unwinding from {address:#x} failed: {error}")
            }
            Doubt::TooDeep => write!(f, "more than {MAX_FRAMES} frames"),
        }
    }
}

/// The result of unwinding one thread.
#[derive(Debug, Clone)]
pub struct StackWalk {
    /// Frame addresses: `[0]` is the PC, the others return addresses, innermost first — except
    /// the indices in `interrupted`.
    pub frames: Vec<u64>,
    /// Indices into `frames` holding the PC of a context interrupted by a signal (read from the
    /// signal frame's ucontext): an instruction address, not a return address.
    pub interrupted: Vec<usize>,
    /// Why the walk stopped early (`None`: it reached the outermost frame).
    pub doubt: Option<Doubt>,
    /// Stack pointer of the last frame reached: the conservative scan starts here.
    pub last_sp: u64,
    /// Address of the first byte of the stack copy.
    pub copy_start: u64,
    /// Bytes of stack copied in the one read.
    pub copied: usize,
    /// Stack reads that fell outside the copy and went to the process directly.
    pub direct_reads: u32,
    /// Time taken.
    pub elapsed: Duration,
}

/// A return address into a guarded function, found on one thread's stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StackHit {
    /// Index of the guarded range.
    pub range: usize,
    /// Frame depth (1 = the innermost return address).
    pub depth: usize,
    /// The return address.
    pub address: u64,
    /// Whether the conservative scan (rather than the unwind) found it.
    pub scanned: bool,
    /// Whether only the C library's thread start lies below the frame (a complete unwind whose
    /// deeper frames are all in libc or the dynamic loader): the function is the thread's main
    /// loop and may never return.
    pub outermost: bool,
    /// The word is not a return address but lies inside bytes about to be written (the scan
    /// found a word a context interrupted by a signal may resume at).
    pub interrupted: bool,
}

/// A library rpatch just loaded, whose unwind tables [`StackInspector::refresh`] takes from the
/// bytes loaded (`bytes`, what `known` was derived from) rather than reading its copy again.
pub struct LoadedCopy<'a> {
    /// Device of the copy the target mapped.
    pub dev: u64,
    /// Inode of that copy.
    pub inode: u64,
    /// What is known about the library.
    pub known: &'a crate::symbols::Knowledge,
    /// The bytes loaded.
    pub bytes: &'a [u8],
}

/// One mapped module as the inspector knows it.
struct KnownModule {
    name: String,
    /// Part of the C runtime (libc, the dynamic loader): where threads and processes start.
    runtime: bool,
    avma: Range<u64>,
    bias: u64,
    cfi: Option<Cfi>,
    /// What is known about the module's file, where the addresses below are remembered.
    known: Option<Rc<Knowledge>>,
    /// Link-time addresses framehop was found able to step out of with CFI, by earlier runs:
    /// checked again only when they are not known (the check parses FDEs with gimli, tens of
    /// microseconds inside the frozen window).
    trusted: HashSet<u64>,
    /// Addresses found so in this run, to remember.
    learnt: Vec<u64>,
}

/// How many checked addresses are remembered per module at most.
const TRUSTED_KEPT: usize = 4096;

/// Unwinds frozen threads' stacks. Built before the freeze (all file reading happens here);
/// while frozen it only reads the target's stacks.
pub struct StackInspector {
    mem: Box<dyn Memory>,
    unwinder: isa_stack::Unwinder<Bytes>,
    cache: Cache,
    /// Modules in address order.
    modules: Vec<KnownModule>,
    /// Readable and writable mappings in address order: where a stack pointer may be.
    data: Vec<Range<u64>>,
    /// Whether each lookup address may be stepped out of, remembered across threads and rounds.
    trust: HashMap<u64, Result<(), Doubt>>,
    ctx: Box<UnwindContext<usize>>,
    /// The copy of the current thread's stack, allocated once.
    buf: Vec<u8>,
}

impl StackInspector {
    /// Reads the target's maps and builds an inspector for all its modules (see [`Self::new`]).
    #[cfg(test)]
    pub fn for_process(pid: i32, exe: &Path, log: &Log) -> Result<Self, ProcessError> {
        let maps = process::read_maps(pid)?;
        let mut modules = ModuleMap::new(pid, &maps, exe);
        Self::new(&mut modules, &maps, log)
    }

    /// Reads the unwind sections (`.eh_frame`, `.eh_frame_hdr`) of every module in `modules` and
    /// of the vDSO, and remembers the data mappings of `maps` (to bound each stack copy). Call it
    /// before freezing: it reads files. A module that cannot be read is kept without CFI (a walk
    /// reaching it is incomplete and falls back to the conservative scan).
    pub fn new(modules: &mut ModuleMap, maps: &[Mapping], log: &Log) -> Result<Self, ProcessError> {
        let started = Instant::now();
        let pid = modules.pid();
        let mem = Box::new(ProcMem::open(pid)?);
        let mut inspector = Self {
            mem,
            unwinder: isa_stack::Unwinder::new(),
            cache: Cache::new(),
            modules: Vec::new(),
            data: maps
                .iter()
                .filter(|m| m.perms.read_write())
                .map(|m| m.start..m.end)
                .collect(),
            trust: HashMap::with_capacity(1024),
            ctx: Box::new(UnwindContext::new()),
            buf: {
                // A large zeroed allocation is fresh mapped memory: only what is written now
                // is faulted in (non-zero, so the pages are really touched).
                let mut buf = vec![0; (STACK_CHUNK + RED_ZONE) as usize];
                buf[..PREFAULT].fill(0xcc);
                buf
            },
        };
        inspector.data.sort_by_key(|r| r.start);
        let mut failed = Vec::new();
        let mut cfi_bytes = 0usize;
        for module in modules.modules.clone() {
            cfi_bytes += inspector.read_module(modules, &module, &mut failed);
        }
        if let Some(vdso) = maps.iter().find(|m| m.path == "[vdso]") {
            let module = LoadedModule {
                path: "[vdso]".into(),
                open_path: "".into(),
                start: vdso.start,
                end: vdso.end,
                first_offset: 0,
                ..Default::default()
            };
            let image = {
                let mut image = vec![0; (vdso.end - vdso.start) as usize];
                inspector
                    .mem
                    .read_at(vdso.start, &mut image)
                    .map(|()| image)
            };
            match image
                .map_err(|e| e.to_string())
                .and_then(|i| read_cfi(&i[..]))
            {
                Ok((segments, cfi)) => inspector.add(&module, module.bias(&segments), cfi, None),
                Err(why) => failed.push(format!("[vdso]: {why}")),
            }
        }
        let with_cfi = inspector.modules.iter().filter(|m| m.cfi.is_some()).count();
        log.step(
            "check",
            format!(
                "unwind tables of {} modules read ({with_cfi} with CFI, {} KiB) in {:.2} ms",
                inspector.modules.len(),
                cfi_bytes / 1024,
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
        for f in failed {
            log.step("check", format!("no CFI for {f}"));
        }
        Ok(inspector)
    }

    /// An inspector over modules given as ELF images, each mapped at a start address (bias:
    /// start minus its first segment's page), with `mem` standing for the process's memory (read
    /// at the address as offset) and `data` its stack-holding mappings. What the fuzz target for
    /// the unwinder drives with hostile CFI and stacks; nothing is read from any process.
    #[doc(hidden)]
    pub fn from_images(
        mem: Box<dyn Memory>,
        images: &[(String, u64, &[u8])],
        data: Vec<Range<u64>>,
    ) -> Self {
        let mut inspector = Self {
            mem,
            unwinder: isa_stack::Unwinder::new(),
            cache: Cache::new(),
            modules: Vec::new(),
            data,
            trust: HashMap::new(),
            ctx: Box::new(UnwindContext::new()),
            buf: vec![0; (STACK_CHUNK + RED_ZONE) as usize],
        };
        inspector.data.sort_by_key(|r| r.start);
        for (name, start, image) in images {
            let Ok((segments, cfi)) = read_cfi(*image) else {
                continue;
            };
            let span = segments
                .iter()
                .map(|s| s.vaddr.saturating_add(s.memsz))
                .max()
                .unwrap_or(0x1000);
            let module = LoadedModule {
                path: name.into(),
                start: *start,
                end: start.saturating_add(span.min(1 << 32)),
                ..Default::default()
            };
            inspector.add(&module, module.bias(&segments), cfi, None);
        }
        inspector
    }

    /// Brings the inspector up to date with the target's maps now: reads the unwind tables of
    /// modules mapped since it was built (the patch library a load just mapped), forgets those
    /// unmapped meanwhile, and takes the data mappings anew (the stub region's stack, new thread
    /// stacks). Call it before freezing: it reads files.
    pub fn refresh(
        &mut self,
        modules: &mut ModuleMap,
        maps: &[Mapping],
        copy: Option<LoadedCopy<'_>>,
        log: &Log,
    ) -> Result<(), ProcessError> {
        let started = Instant::now();
        let current = |m: &KnownModule| {
            m.name == "[vdso]"
                || modules.modules.iter().any(|x| {
                    x.start == m.avma.start
                        && x.end == m.avma.end
                        && x.path.display().to_string() == m.name
                })
        };
        let gone: Vec<u64> = self
            .modules
            .iter()
            .filter(|m| !current(m))
            .map(|m| m.avma.start)
            .collect();
        for start in &gone {
            self.unwinder.remove_module(*start);
        }
        self.modules.retain(|m| !gone.contains(&m.avma.start));
        self.trust.clear();
        self.cache = Cache::new();
        let mut failed = Vec::new();
        let mut added = 0;
        for module in modules.modules.clone() {
            let known = self
                .modules
                .iter()
                .any(|m| m.avma.start == module.start && m.avma.end == module.end);
            if known {
                continue;
            }
            added += 1;
            match &copy {
                Some(c) if c.dev == module.dev && c.inode == module.inode => {
                    let read = c
                        .known
                        .remember("cfi-place", "v1", |index| locate_cfi(index.file_data()))
                        .and_then(Result::ok)
                        .map(|place| {
                            place.and_then(|place| {
                                Cfi::read(&place, |offset, len| {
                                    let start = usize::try_from(offset).ok()?;
                                    c.bytes
                                        .get(start..start.checked_add(len)?)
                                        .map(<[u8]>::to_vec)
                                })
                            })
                        });
                    match read {
                        Some(cfi) => {
                            self.add(&module, module.bias(c.known.load_segments()), cfi, None)
                        }
                        None => {
                            self.read_module(modules, &module, &mut failed);
                        }
                    }
                }
                _ => {
                    self.read_module(modules, &module, &mut failed);
                }
            }
        }
        self.data = maps
            .iter()
            .filter(|m| m.perms.read_write())
            .map(|m| m.start..m.end)
            .collect();
        self.data.sort_by_key(|r| r.start);
        log.step(
            "check",
            format!(
                "unwind tables: {added} module(s) added, {} gone, in {:.2} ms",
                gone.len(),
                started.elapsed().as_secs_f64() * 1000.0
            ),
        );
        for f in failed {
            log.step("check", format!("no CFI for {f}"));
        }
        Ok(())
    }

    /// Reads one module's unwind tables from its file (checked to be the mapped inode, read
    /// where the remembered place of its CFI says, never mapped: its owner may truncate it) and
    /// adds it; a module that cannot be read is kept without CFI (a walk reaching it is
    /// incomplete). Returns the CFI bytes read.
    fn read_module(
        &mut self,
        modules: &mut ModuleMap,
        module: &LoadedModule,
        failed: &mut Vec<String>,
    ) -> usize {
        let read = modules
            .symbols(module)
            .map_err(|e| e.to_string())
            .and_then(|known| {
                let place = known
                    .remember("cfi-place", "v1", |index| locate_cfi(index.file_data()))
                    .ok_or("the file can no longer be read")??;
                let cfi = match place {
                    Some(place) => Some(
                        Cfi::read(&place, |offset, len| known.read_at(offset, len))
                            .ok_or("its unwind sections cannot be read")?,
                    ),
                    None => None,
                };
                Ok((module.bias(known.load_segments()), cfi, known))
            });
        match read {
            Ok((bias, cfi, known)) => {
                let bytes = cfi.as_ref().map_or(0, cfi_len);
                self.add(module, bias, cfi, Some(known));
                bytes
            }
            Err(why) => {
                failed.push(format!("{}: {why}", module.path.display()));
                self.add(module, module.start, None, None);
                0
            }
        }
    }

    fn add(
        &mut self,
        module: &LoadedModule,
        bias: u64,
        cfi: Option<Cfi>,
        known: Option<Rc<Knowledge>>,
    ) {
        let trusted = known
            .as_ref()
            .filter(|_| cfi.is_some())
            .and_then(|k| k.recall::<Vec<u64>>("cfi-trusted", "v1"))
            .unwrap_or_default()
            .into_iter()
            .collect();
        let name = module.path.display().to_string();
        if let Some(cfi) = &cfi {
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: cfi.text_svma.clone(),
                got_svma: cfi.got_svma.clone(),
                eh_frame_svma: Some(
                    cfi.eh_frame_svma..cfi.eh_frame_svma + cfi.eh_frame.len() as u64,
                ),
                eh_frame: Some(cfi.eh_frame.clone()),
                eh_frame_hdr_svma: cfi
                    .eh_frame_hdr
                    .as_ref()
                    .map(|(b, svma)| *svma..*svma + b.len() as u64),
                eh_frame_hdr: cfi.eh_frame_hdr.as_ref().map(|(b, _)| b.clone()),
                ..Default::default()
            };
            self.unwinder.add_module(Module::new(
                name.clone(),
                module.start..module.end,
                bias,
                info,
            ));
        }
        let at = self
            .modules
            .partition_point(|m| m.avma.start < module.start);
        self.modules.insert(
            at,
            KnownModule {
                runtime: module.runtime().is_some(),
                name,
                avma: module.start..module.end,
                bias,
                cfi,
                known,
                trusted,
                learnt: Vec::new(),
            },
        );
    }

    /// Whether `addr` is code of the C library or the dynamic loader (thread and process start).
    fn in_c_runtime(&self, addr: u64) -> bool {
        let i = self.modules.partition_point(|m| m.avma.start <= addr);
        i.checked_sub(1)
            .map(|i| &self.modules[i])
            .is_some_and(|m| m.avma.contains(&addr) && m.runtime)
    }

    /// Whether framehop can step out of the frame at code address `lookup` using CFI.
    fn trusted(&mut self, lookup: u64) -> Result<(), Doubt> {
        if let Some(known) = self.trust.get(&lookup) {
            return known.clone();
        }
        let i = self.modules.partition_point(|m| m.avma.start <= lookup);
        let verdict = match i.checked_sub(1).map(|i| &mut self.modules[i]) {
            Some(m) if m.avma.contains(&lookup) => {
                let svma = lookup.wrapping_sub(m.bias);
                match &m.cfi {
                    None => Err(Doubt::NoCfi {
                        module: m.name.clone(),
                        address: lookup,
                    }),
                    Some(_) if m.trusted.contains(&svma) => Ok(()),
                    Some(cfi) => {
                        let verdict = cfi
                            .check(svma, &mut self.ctx)
                            .map_err(|gap| gap.doubt(m.name.clone(), lookup));
                        if verdict.is_ok() {
                            m.learnt.push(svma);
                        }
                        verdict
                    }
                }
            }
            _ => Err(Doubt::NoModule { address: lookup }),
        };
        self.trust.insert(lookup, verdict.clone());
        verdict
    }

    /// Remembers, with each module's file, the addresses this run found framehop able to step
    /// out of (see `KnownModule::trusted`): a later run does not check them again while frozen.
    pub fn remember(&mut self) {
        for m in &mut self.modules {
            let Some(known) = &m.known else { continue };
            if m.learnt.is_empty() || m.trusted.len() >= TRUSTED_KEPT {
                continue;
            }
            let mut all: Vec<u64> = m
                .trusted
                .iter()
                .copied()
                .chain(m.learnt.drain(..))
                .collect();
            all.sort_unstable();
            all.dedup();
            all.truncate(TRUSTED_KEPT);
            known.learn("cfi-trusted", "v1", &all);
        }
    }

    /// The readable-writable mapping holding `sp`, as listed before the freeze.
    fn data_mapping(&self, sp: u64) -> Option<Range<u64>> {
        let i = self.data.partition_point(|r| r.start <= sp);
        let r = self.data.get(i.checked_sub(1)?)?;
        r.contains(&sp).then(|| r.clone())
    }

    /// Copies the stack of a thread whose stack pointer is `sp` into `buf`: from just below `sp`
    /// (the red zone) up to [`STACK_CHUNK`] bytes or the end of its mapping, in one read.
    /// Returns the address of the first byte copied and the length.
    fn copy_stack(&mut self, sp: u64) -> (u64, usize) {
        let mapping = self.data_mapping(sp);
        let mut base = sp.saturating_sub(RED_ZONE);
        let mut end = sp.saturating_add(STACK_CHUNK);
        if let Some(m) = &mapping {
            base = base.max(m.start);
            end = end.min(m.end);
        }
        let mut len = self
            .mem
            .read_partial(base, &mut self.buf[..(end - base) as usize]);
        if len == 0 && base < sp {
            // The red zone may lie in an unlisted guard page: start at sp itself.
            let skip = (sp - base) as usize;
            len = self
                .mem
                .read_partial(sp, &mut self.buf[skip..(end - base) as usize]);
            self.buf.copy_within(skip..skip + len, 0);
            base = sp;
        }
        (base, len)
    }

    /// A saved return address without its pointer-authentication code (as is where there is
    /// none).
    pub fn strip_pac(&self, addr: u64) -> u64 {
        isa_stack::strip(addr, crate::isa::pac_mask())
    }

    /// Unwinds a frozen thread with registers `regs`: frames from the PC outwards, using the
    /// modules' CFI, until the outermost frame or until a step cannot be trusted.
    pub fn walk(&mut self, regs: &Regs) -> StackWalk {
        let started = Instant::now();
        let (base, len) = self.copy_stack(regs.sp());
        let mut frames = vec![regs.pc()];
        let mut uregs = isa_stack::unwind_regs(regs, crate::isa::pac_mask());
        let mut address = FrameAddress::from_instruction_pointer(regs.pc());
        let mut direct_reads = 0u32;
        let mut interrupted = Vec::new();
        let doubt = loop {
            if frames.len() > MAX_FRAMES {
                break Some(Doubt::TooDeep);
            }
            let lookup = address.address_for_lookup();
            if let Err(doubt) = self.trusted(lookup) {
                // A signal frame: the handler returns to the sigreturn trampoline, and the
                // interrupted context is saved in the ucontext on the stack. Continue from there
                // (framehop cannot evaluate the trampoline's CFI expression; arm64's has none).
                if (matches!(doubt, Doubt::SignalFrame { .. }) || self.at_sigreturn(address))
                    && let Some((pc, context)) = self.signal_context(uregs.sp(), base, len)
                {
                    frames.push(pc);
                    interrupted.push(frames.len() - 1);
                    uregs = context;
                    address = FrameAddress::from_instruction_pointer(pc);
                    continue;
                }
                break Some(doubt);
            }
            let (buf, mem) = (&self.buf[..len], &self.mem);
            let mut read_stack = |addr: u64| -> Result<u64, ()> {
                let word = addr
                    .checked_sub(base)
                    .and_then(|off| buf.get(off as usize..off as usize + 8));
                match word {
                    Some(w) => Ok(u64::from_le_bytes(w.try_into().expect("8 bytes"))),
                    None => {
                        direct_reads += 1;
                        let mut w = [0u8; 8];
                        mem.read_at(addr, &mut w).map_err(|_| ())?;
                        Ok(u64::from_le_bytes(w))
                    }
                }
            };
            match self
                .unwinder
                .unwind_frame(address, &mut uregs, &mut self.cache, &mut read_stack)
            {
                Ok(Some(ret)) => {
                    frames.push(ret);
                    match FrameAddress::from_return_address(ret) {
                        Some(next) => address = next,
                        None => break None,
                    }
                }
                Ok(None) => break None,
                Err(e) => {
                    break Some(Doubt::Unwind {
                        address: lookup,
                        error: e.to_string(),
                    });
                }
            }
        };
        StackWalk {
            frames,
            interrupted,
            doubt,
            last_sp: uregs.sp(),
            copy_start: base,
            copied: len,
            direct_reads,
            elapsed: started.elapsed(),
        }
    }

    /// Walks the stacks of threads not stopped yet, from `points` (PC, stack pointer: one walk
    /// per distinct PC), for what the walks learn, not for their frames: the verdict on each code
    /// address's CFI (`trusted`) and framehop's cache are facts about the modules, not about a
    /// thread, and filling them here takes the first-touch cost out of the frozen window (where
    /// a thread's walk then costs a few microseconds, not tens). The stacks may change while
    /// they are read; nothing read here is used for a decision.
    pub fn prewarm(&mut self, points: &[(u64, u64)]) {
        let mut seen = HashSet::new();
        for &(pc, sp) in points {
            if seen.insert(pc) {
                self.walk(&Regs::for_unwind(pc, sp, 0));
            }
        }
    }

    /// Walks a thread and looks for a return address into one of `functions`: first among the
    /// unwound frames, then, when the walk is incomplete, by scanning the rest of the stack for
    /// words that return into a function right after a call instruction.
    pub(crate) fn find_in_stack(
        &mut self,
        regs: &Regs,
        functions: &[(usize, Range<u64>)],
        resumes: &[(usize, Range<u64>)],
    ) -> (StackWalk, Option<StackHit>) {
        let walk = self.walk(regs);
        let unwound = walk
            .frames
            .iter()
            .enumerate()
            .skip(1)
            .find_map(|(depth, &ret)| {
                // An interrupted PC resumes where it is: only the PC check applies to it.
                if walk.interrupted.contains(&depth) {
                    return None;
                }
                let (range, _) = functions.iter().find(|(_, f)| scan::returns_into(f, ret))?;
                let outermost = walk.doubt.is_none()
                    && walk.frames[depth + 1..]
                        .iter()
                        .all(|&a| self.in_c_runtime(a));
                Some(StackHit {
                    range: *range,
                    depth,
                    address: ret,
                    scanned: false,
                    outermost,
                    interrupted: false,
                })
            });
        if unwound.is_some() || walk.doubt.is_none() {
            return (walk, unwound);
        }
        let hit = self.scan(&walk, regs.sp(), functions, resumes);
        (walk, hit)
    }

    /// The conservative scan of an incomplete walk (whose stack copy is still in `buf`): the
    /// first stack word above the last frame reached that returns into a function just after a
    /// call counts as a frame, at least one deeper than the last frame unwound; so does a word
    /// inside `resumes` (bytes about to be written), which a signal frame beyond the walk may
    /// hold as the PC its context resumes at.
    fn scan(
        &self,
        walk: &StackWalk,
        sp: u64,
        functions: &[(usize, Range<u64>)],
        resumes: &[(usize, Range<u64>)],
    ) -> Option<StackHit> {
        let ranges: Vec<Range<u64>> = functions.iter().map(|(_, f)| f.clone()).collect();
        let end = self
            .data_mapping(sp)
            .map_or(sp.saturating_add(STACK_CHUNK), |m| m.end)
            .min(sp.saturating_add(MAX_SCAN));
        let copy = walk.copy_start..walk.copy_start + walk.copied as u64;
        let mut at = walk.last_sp.max(sp);
        let mut extra = Vec::new();
        while at < end {
            // The copy made for the walk first, then further reads for a stack larger than it.
            let piece: &[u8] = if copy.contains(&at) {
                &self.buf[(at - copy.start) as usize..walk.copied]
            } else {
                extra.resize((end - at).min(STACK_CHUNK) as usize, 0);
                let got = self.mem.read_partial(at, &mut extra);
                &extra[..got]
            };
            if piece.is_empty() {
                break;
            }
            let returns = scan::candidates(piece, at, &ranges, crate::isa::pac_mask())
                .find(|c| self.call_before(c.value))
                .map(|c| (c.slot, functions[c.function].0, c.value, false));
            let resumed = scan::words_in(piece, at, resumes)
                .map(|(slot, range, value)| (slot, range, value, true));
            let first = match (returns, resumed) {
                (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
                (a, b) => a.or(b),
            };
            if let Some((_, range, address, interrupted)) = first {
                return Some(StackHit {
                    range,
                    depth: walk.frames.len(),
                    address,
                    scanned: true,
                    outermost: false,
                    interrupted,
                });
            }
            at += piece.len() as u64;
        }
        None
    }

    /// Whether `address` is a return address to the sigreturn trampoline, known by its code
    /// (`isa::stack::SIGRETURN_CODE`, on ISAs whose trampoline has no CFI saying so).
    fn at_sigreturn(&self, address: FrameAddress) -> bool {
        let (Some(code), FrameAddress::ReturnAddress(ret)) = (isa_stack::SIGRETURN_CODE, address)
        else {
            return false;
        };
        let mut found = [0u8; 8];
        self.mem.read_at(ret.get(), &mut found).is_ok() && found == code
    }

    /// The interrupted PC and unwind registers saved in the signal frame found at `sp` (the
    /// stack pointer on entry to the sigreturn trampoline), from the stack copy (`base`, `len`)
    /// or the process.
    fn signal_context(
        &self,
        sp: u64,
        base: u64,
        len: usize,
    ) -> Option<(u64, isa_stack::UnwindRegs)> {
        let word = |addr: u64| -> Option<u64> {
            let mut w = [0u8; 8];
            match addr.checked_sub(base) {
                Some(o) if o + 8 <= len as u64 => {
                    w.copy_from_slice(&self.buf[o as usize..o as usize + 8])
                }
                _ => self.mem.read_at(addr, &mut w).ok()?,
            }
            Some(u64::from_le_bytes(w))
        };
        isa_stack::signal_context(sp, word, crate::isa::pac_mask())
    }

    /// Whether the code bytes just before `ret` in the target end with a call instruction.
    fn call_before(&self, ret: u64) -> bool {
        let page_start = ret.saturating_sub(1) & !0xfff;
        let mut bytes = [0u8; isa_stack::MAX_CALL_LEN];
        let len = isa_stack::MAX_CALL_LEN as u64;
        if self.mem.read_at(ret - len, &mut bytes).is_ok() {
            return isa_stack::preceded_by_call(&bytes);
        }
        // The bytes before may start on an unreadable page: take those on ret's own page.
        let n = (ret - page_start).min(len) as usize;
        let tail = &mut bytes[..n];
        self.mem.read_at(ret - n as u64, tail).is_ok() && isa_stack::preceded_by_call(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Frozen, Tracer};
    use crate::safety::{FrameSource, GuardedRange, find_blocker};
    use std::process::{Child, Command};

    /// A `sleep` process, killed and reaped on drop.
    struct Sleeper(Child);

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts `sleep` and waits until it is blocked in its (clock_)nanosleep.
    fn sleeping() -> Sleeper {
        let child = Sleeper(
            Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let syscall =
                std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            if matches!(syscall.split(' ').next(), Some("35" | "230")) {
                return child;
            }
            assert!(
                Instant::now() < deadline,
                "sleep never blocked: {syscall:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Freezes `pid` and returns the registers of its main thread.
    fn frozen(tracer: &mut Tracer) -> (Frozen<'_>, Regs) {
        let pid = tracer.pid();
        let frozen = tracer
            .freeze(
                tracer.survey().unwrap(),
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
        let regs = frozen
            .threads()
            .find(|t| t.tid == pid)
            .expect("main thread held")
            .regs;
        (frozen, regs)
    }

    /// A process blocked in a system call unwinds through libc and its executable to the
    /// outermost frame (`_start`), and every return address is found again by `find_in_stack`.
    #[test]
    fn unwinds_a_sleeping_process_to_its_outermost_frame() {
        let child = sleeping();
        let pid = child.0.id() as i32;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let mut inspector = StackInspector::for_process(pid, &exe, &Log::quiet()).unwrap();
        let mut tracer = Tracer::new(pid).unwrap();
        let (frozen, regs) = frozen(&mut tracer);
        let walk = inspector.walk(&regs);
        assert_eq!(walk.doubt, None, "frames {:x?}", walk.frames);
        assert!(walk.frames.len() >= 4, "frames {:x?}", walk.frames);
        assert_eq!(walk.frames[0], regs.pc());
        assert!(walk.copied > 0 && walk.copy_start <= regs.sp());
        for (depth, &ret) in walk.frames.iter().enumerate().skip(1) {
            let functions = [(7, ret - 1..ret)];
            let (_, hit) = inspector.find_in_stack(&regs, &functions, &[]);
            assert_eq!(
                hit.map(|h| (h.range, h.depth, h.address, h.scanned)),
                Some((7, depth, ret, false))
            );
        }
        // The PC's own function is not "on the stack", nor is any other address.
        let (_, hit) = inspector.find_in_stack(&regs, &[(0, regs.pc() - 1..regs.pc() + 1)], &[]);
        assert_eq!(hit, None);
        drop(frozen);
    }

    /// When the walk cannot start (the PC is in no module), the stack is scanned: a real return
    /// address (it follows a call) is found, marked as scanned.
    #[test]
    fn an_unknown_pc_falls_back_to_the_conservative_scan() {
        let child = sleeping();
        let pid = child.0.id() as i32;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let mut inspector = StackInspector::for_process(pid, &exe, &Log::quiet()).unwrap();
        let mut tracer = Tracer::new(pid).unwrap();
        let (frozen, regs) = frozen(&mut tracer);
        let outer = *inspector.walk(&regs).frames.last().unwrap();
        let mut lost = regs;
        lost.set_pc(0x1000);
        let walk = inspector.walk(&lost);
        assert_eq!(walk.doubt, Some(Doubt::NoModule { address: 0x1000 }));
        assert_eq!(walk.frames, vec![0x1000]);
        let (_, hit) = inspector.find_in_stack(&lost, &[(3, outer - 1..outer)], &[]);
        let hit = hit.expect("the scan finds the outermost return address");
        assert!(hit.scanned && hit.address == outer && hit.range == 3 && hit.depth == 1);
        drop(frozen);
    }

    /// `find_blocker` reports a function whose return address is on a frozen thread's stack as
    /// an unwound frame at the right depth, skipping ranges that have no stack range, and does
    /// not block on functions that are nowhere on the stack.
    #[test]
    fn find_blocker_names_the_function_on_the_stack() {
        let child = sleeping();
        let pid = child.0.id() as i32;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        let mut inspector = StackInspector::for_process(pid, &exe, &Log::quiet()).unwrap();
        let mut tracer = Tracer::new(pid).unwrap();
        let (frozen, regs) = frozen(&mut tracer);
        let frames = inspector.walk(&regs).frames;
        let ret = frames[2];
        let ranges = [
            GuardedRange {
                bytes: 0x10..0x15,
                entry_ok: false,
                function: "slot".into(),
                stack_range: None,
            },
            GuardedRange {
                bytes: ret - 3..ret + 2,
                entry_ok: true,
                function: "caller".into(),
                stack_range: Some(ret - 3..ret + 40),
            },
        ];
        let blocker = find_blocker(&frozen, &ranges, Some(&mut inspector), &Log::quiet())
            .expect("the caller's frame is on the stack");
        assert_eq!(blocker.tid, pid);
        assert_eq!(blocker.function, "caller");
        assert_eq!(blocker.source, FrameSource::Unwound);
        assert_eq!(
            (blocker.depth, blocker.address, blocker.pc),
            (2, ret, regs.pc())
        );
        assert!(
            blocker.describe().contains("frame #2"),
            "{}",
            blocker.describe()
        );
        // Without the inspector only PCs count; a range nowhere on the stack never blocks.
        assert_eq!(find_blocker(&frozen, &ranges, None, &Log::quiet()), None);
        let elsewhere = [GuardedRange {
            stack_range: Some(0x1000..0x2000),
            ..ranges[1].clone()
        }];
        let none = find_blocker(&frozen, &elsewhere, Some(&mut inspector), &Log::quiet());
        assert_eq!(none, None);
        drop(frozen);
    }
}
