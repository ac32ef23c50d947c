//! Which thread runs the injected `dlopen`.
//!
//! The borrowed thread must not hold a lock that `dlopen` takes: not the loader's, not the
//! allocator's. A thread blocked in a syscall is ideal (it holds nothing dlopen needs and is not
//! running anyway). A thread whose PC is inside the dynamic loader or the allocator is never
//! chosen. Return addresses near the top of the stack that point into those (a cheap scan of the
//! stack) rank a thread last, as does stdio (harmless to dlopen itself, but a constructor that
//! prints would wait for it). A thread waiting on a futex ranks after threads blocked in other
//! calls: it waits for a lock and may hold another (stripped libraries hide which).
//!
//! The thread's signal mask and dispositions do not matter: the call stub sets its own mask for
//! the call (synchronous faults unblocked) and nothing relies on a fault reaching rpatch.

use super::ThreadRefusal;
use crate::process::{Memory, ModuleMap, ProcMem, blocked_syscall};
use crate::safety::StackWalk;

/// A thread considered for the injected call, best first after `rank_threads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCandidate {
    /// Thread id.
    pub tid: i32,
    /// 0 = best. Candidates with a hard hazard are not returned.
    pub tier: u8,
    /// Why it got this tier (for `-v`).
    pub why: String,
}

/// Allocator and stdio functions exported by glibc: a PC in them means a lock may be held.
const ALLOCATOR: &[&str] = &[
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "memalign",
    "posix_memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
    "malloc_trim",
    "mallopt",
    "__libc_malloc",
    "__libc_free",
    "__libc_calloc",
    "__libc_realloc",
    "cfree",
];

/// The allocator's entry points, and its internals when the symbol table names them
/// (`_int_malloc`, `malloc_consolidate`, `sysmalloc`, arena and tcache helpers).
fn is_allocator(name: &str) -> bool {
    ALLOCATOR.contains(&name)
        || name.starts_with("_int_")
        || name.contains("malloc")
        || name.contains("arena")
        || name.starts_with("tcache")
}

fn is_stdio(name: &str) -> bool {
    name.starts_with("_IO_")
        || name.starts_with("__vfprintf")
        || name.starts_with("__printf")
        || matches!(
            name,
            "fgets"
                | "fputs"
                | "puts"
                | "printf"
                | "fprintf"
                | "getline"
                | "getdelim"
                | "fread"
                | "fwrite"
                | "fflush"
                | "getc"
                | "fgetc"
                | "putc"
                | "fputc"
                | "getchar"
                | "putchar"
                | "scanf"
                | "fscanf"
                | "vfprintf"
                | "vprintf"
        )
}

/// Where an address is, as far as the choice is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Harmless,
    Stdio,
    Allocator,
    Loader,
}

fn classify(modules: &mut ModuleMap, addr: u64) -> Place {
    let Some(module) = modules.module_at(addr).cloned() else {
        return Place::Harmless;
    };
    match module.runtime() {
        // musl's C library is its loader too: any address in it counts as the loader's.
        Some(r) if r.is_loader() => return Place::Loader,
        Some(_) => {}
        None => return Place::Harmless,
    }
    let Ok(known) = modules.symbols(&module) else {
        return Place::Harmless;
    };
    let bias = module.bias(known.load_segments());
    // Symbol tables only (the debug file's when installed, with the allocator's internals):
    // this runs for every word of several stacks, where DWARF would cost tens of milliseconds.
    // The table of places is derived once per file and remembered with it.
    let Some(places) = known.remember_shared("thread-choice-places", "v2", places_of) else {
        return Place::Harmless;
    };
    place_at(&places.0, addr.wrapping_sub(bias))
}

/// The ranges of a runtime module (link-time addresses) where a place other than Harmless
/// decides: disjoint, by start, as [`place_at`] looks addresses up in them. Remembered with the
/// module's knowledge as one string of `start-end:P` items (hex): every operation reads that
/// entry, and a string is scanned far faster than the array of arrays it replaces.
#[derive(Debug, PartialEq)]
struct Places(Vec<(u64, u64, Place)>);

impl Place {
    fn letter(self) -> char {
        match self {
            Place::Harmless => 'H',
            Place::Stdio => 'S',
            Place::Allocator => 'A',
            Place::Loader => 'L',
        }
    }

    fn from_letter(c: &str) -> Option<Self> {
        Some(match c {
            "H" => Place::Harmless,
            "S" => Place::Stdio,
            "A" => Place::Allocator,
            "L" => Place::Loader,
            _ => return None,
        })
    }
}

impl serde::Serialize for Places {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(self.0.len() * 16);
        for (start, end, place) in &self.0 {
            if !text.is_empty() {
                text.push(' ');
            }
            let _ = write!(text, "{start:x}-{end:x}:{}", place.letter());
        }
        serializer.serialize_str(&text)
    }
}

impl<'de> serde::Deserialize<'de> for Places {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let item = |item: &str| {
            let (range, place) = item.split_once(':')?;
            let (start, end) = range.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                Place::from_letter(place)?,
            ))
        };
        text.split_ascii_whitespace()
            .map(item)
            .collect::<Option<Vec<_>>>()
            .map(Places)
            .ok_or_else(|| serde::de::Error::custom("not a table of places"))
    }
}

/// The [`Places`] of a module: where the allocator's, the loader's and stdio's functions are,
/// and where a harmless function nests inside one of theirs (where functions nest or overlap,
/// the one starting closest below an address decides, as `SymbolIndex::symbol_name_containing`
/// picks); the rest of the module is Harmless.
fn places_of(index: &crate::symbols::SymbolIndex) -> Places {
    disjoint_places(&all_places(index))
}

/// `all` (every function with a size, by start) as disjoint ranges that give the same
/// [`place_at`] answer for every address.
fn disjoint_places(all: &[(u64, u64, Place)]) -> Places {
    let mut bounds: Vec<u64> = all
        .iter()
        .flat_map(|&(start, end, _)| [start, end])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<(u64, u64, Place)> = Vec::new();
    for pair in bounds.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        let place = place_at(all, start);
        if place == Place::Harmless {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == start && last.2 == place => last.1 = end,
            _ => out.push((start, end, place)),
        }
    }
    Places(out)
}

/// Every function of a module with a size, as (start, end, place), by start.
fn all_places(index: &crate::symbols::SymbolIndex) -> Vec<(u64, u64, Place)> {
    index
        .functions()
        .map(|(name, start, end)| {
            let place = if is_allocator(name) {
                Place::Allocator
            } else if name.starts_with("_dl_") || name.starts_with("dl") {
                Place::Loader
            } else if is_stdio(name) {
                Place::Stdio
            } else {
                Place::Harmless
            };
            (start, end, place)
        })
        .collect()
}

/// The place of the function holding `vaddr`: the one starting closest below it whose range
/// holds it (as `SymbolIndex::symbol_name_containing` picks), Harmless when none does.
fn place_at(places: &[(u64, u64, Place)], vaddr: u64) -> Place {
    let end = places.partition_point(|p| p.0 <= vaddr);
    places[..end]
        .iter()
        .rev()
        .take(64)
        .find(|p| vaddr < p.1)
        .map_or(Place::Harmless, |p| p.2)
}

/// Bytes of stack scanned for return addresses.
const STACK_SCAN: usize = 1024;

/// The worst place among the PC and the code addresses found near the top of the stack.
fn stack_hazard(modules: &mut ModuleMap, mem: &ProcMem, sp: u64) -> Place {
    let mut stack = vec![0u8; STACK_SCAN];
    if mem.read_at(sp, &mut stack).is_err() {
        return Place::Harmless;
    }
    stack
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .map(|word| {
            if modules.module_at(word).is_some() {
                classify(modules, word)
            } else {
                Place::Harmless
            }
        })
        .max()
        .unwrap_or(Place::Harmless)
}

/// What [`rank_threads`] found in the threads it examined.
#[derive(Debug, Default)]
pub struct Ranking {
    /// The threads that qualify, best first.
    pub candidates: Vec<ThreadCandidate>,
    /// Why the others do not.
    pub refused: Vec<ThreadRefusal>,
    /// How many of the TIDs given were examined.
    pub examined: usize,
}

/// Ranks threads of `pid` for the injected call, examining `tids` (ascending) in order and
/// stopping after the first of tier 0 — the best a thread can be: the full ranking, sorted by
/// tier then TID, starts with it, and each thread examined costs reads of its `syscall` file
/// and stack (tens of microseconds; 256 threads took milliseconds). Rank the rest (from
/// `examined` on) only when none of these can be borrowed.
pub fn rank_threads(modules: &mut ModuleMap, mem: &ProcMem, tids: &[i32]) -> Ranking {
    let pid = modules.pid();
    let mut ranking = Ranking::default();
    for &tid in tids {
        ranking.examined += 1;
        let candidate = match blocked_syscall(pid, tid) {
            Some(b) if b.in_vfork_or_clone() => Err(ThreadRefusal::InVforkOrClone(tid)),
            Some(b) => assess(modules, mem, tid, b.pc, b.sp, b.nr >= 0).map(|mut c| {
                // Waiting for a lock, it may hold another that dlopen needs (glibc's arena list
                // lock while it waits for an arena, the loader's lock): other blocked threads
                // first. A dlopen in such a thread was seen waiting on a futex forever.
                if c.tier == 0 && b.nr == crate::isa::sys::FUTEX {
                    c.tier = 1;
                    c.why = "waiting on a futex (a lock)".into();
                }
                c
            }),
            None => Ok(ThreadCandidate {
                tid,
                tier: 2,
                why: "running".into(),
            }),
        };
        match candidate {
            Ok(c) => {
                let best = c.tier == 0;
                ranking.candidates.push(c);
                if best {
                    break;
                }
            }
            Err(why) => ranking.refused.push(why),
        }
    }
    ranking.candidates.sort_by_key(|c| (c.tier, c.tid));
    ranking
}

/// Judges a stopped thread from its unwound stack (exact, unlike the scan): refuses one inside
/// a signal handler (the interrupted code may hold any lock, and the handler runs on its stack)
/// or with a frame in the dynamic loader or the allocator.
pub fn assess_stack(
    modules: &mut ModuleMap,
    walk: &StackWalk,
    tid: i32,
) -> Result<(), ThreadRefusal> {
    if !walk.interrupted.is_empty() {
        return Err(ThreadRefusal::InSignalHandler(tid));
    }
    for (depth, &addr) in walk.frames.iter().enumerate() {
        // A return address belongs to the call before it.
        let code = if depth == 0 {
            addr
        } else {
            addr.wrapping_sub(1)
        };
        match classify(modules, code) {
            Place::Loader => return Err(ThreadRefusal::LoaderOnStack(tid)),
            Place::Allocator => return Err(ThreadRefusal::AllocatorOnStack(tid)),
            _ => {}
        }
    }
    Ok(())
}

/// Judges a thread from its PC and stack pointer (after it was stopped, with exact registers).
pub fn assess(
    modules: &mut ModuleMap,
    mem: &ProcMem,
    tid: i32,
    pc: u64,
    sp: u64,
    in_syscall: bool,
) -> Result<ThreadCandidate, ThreadRefusal> {
    match classify(modules, pc) {
        Place::Loader => return Err(ThreadRefusal::InLoader(tid)),
        Place::Allocator => return Err(ThreadRefusal::InAllocator(tid)),
        _ => {}
    }
    let (tier, why) = match (stack_hazard(modules, mem, sp), in_syscall) {
        (Place::Harmless, true) => (0, "blocked in a syscall"),
        (Place::Harmless, false) => (1, "stopped in user code"),
        (Place::Stdio, _) => (3, "stdio on its stack"),
        (Place::Allocator | Place::Loader, _) => (4, "allocator or loader address on its stack"),
    };
    Ok(ThreadCandidate {
        tid,
        tier,
        why: why.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nested and overlapping functions give, once made disjoint, the same place at every
    /// address, and the table reads back as written.
    #[test]
    fn disjoint_places_answer_as_the_functions_do() {
        use Place::*;
        let all = [
            (0x100, 0x200, Stdio),
            (0x100, 0x200, Harmless),
            (0x140, 0x160, Harmless),
            (0x180, 0x1a0, Allocator),
            (0x200, 0x240, Stdio),
            (0x300, 0x340, Harmless),
            (0x340, 0x400, Loader),
            (0x3f0, 0x420, Allocator),
        ];
        let places = disjoint_places(&all);
        assert!(places.0.windows(2).all(|w| w[0].1 <= w[1].0));
        assert!(places.0.iter().all(|p| p.2 != Harmless));
        for addr in 0xf0..0x430 {
            assert_eq!(place_at(&places.0, addr), place_at(&all, addr), "{addr:#x}");
        }
        let text = serde_json::to_string(&places).unwrap();
        assert_eq!(text, "\"180-1a0:A 200-240:S 340-3f0:L 3f0-420:A\"");
        assert_eq!(serde_json::from_str::<Places>(&text).unwrap(), places);
        assert!(serde_json::from_str::<Places>("\"100-zz:S\"").is_err());
    }
}
