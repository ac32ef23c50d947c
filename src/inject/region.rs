//! Finding room in the target for the stub: slack bytes to bootstrap from, an address for a new
//! stub region, or a region a previous rpatch left that can be used again.
//!
//! Everything here reads (maps, ELF program headers, memory) and decides; the thread is driven by
//! `InjectedThread`.

use crate::isa::CODE_ALIGN;
use crate::isa::remote_call::{BOOTSTRAP_LEN, Done, MAGIC_VALUE, STACK_SIZE, StubRegion, data};
use crate::process::{Mapping, Memory, ModuleMap, Runtime, gaps};
use std::path::PathBuf;

/// Bytes after the end of an executable segment up to the end of its last page: mapped with the
/// segment's permissions but part of no section, so nothing ever executes or reads them. The
/// bootstrap code borrows them for a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slack {
    /// First byte.
    pub addr: u64,
    /// What the file holds there (zeros past its end): written back afterwards, so a later check
    /// of the module against its file finds nothing changed.
    pub original: Vec<u8>,
    /// The module, for messages.
    pub module: PathBuf,
    /// The slack already holds the bootstrap code, left by an rpatch that was killed (or gave
    /// up) before it could restore it: a thread of that run may still be inside it or have a
    /// frame returning into it, so it is used as is and restored only with every thread
    /// stopped and checked.
    pub leftover: bool,
}

/// The end of the executable segments of `module_names` (tried in that order, then every other
/// module) with at least `BOOTSTRAP_LEN` bytes of slack up to the end of its page (of `page`
/// bytes), confirmed executable in `maps`.
pub fn find_slack(
    modules: &mut ModuleMap,
    maps: &[Mapping],
    mem: &dyn Memory,
    page: u64,
) -> Option<Slack> {
    let mut order: Vec<_> = modules.modules.clone();
    // libc first (its symbols are already parsed for the loader functions), then the executable.
    let rank = |m: &crate::process::LoadedModule| {
        if m.runtime().is_some_and(Runtime::is_c_library) {
            0
        } else if Some(m.path.as_path()) == modules.main_executable().map(|e| e.path.as_path()) {
            1
        } else {
            2
        }
    };
    order.sort_by_key(|m| rank(m));
    let code = crate::isa::bootstrap_code();
    for module in order {
        let Ok(index) = modules.symbols(&module) else {
            continue;
        };
        let bias = module.bias(index.load_segments());
        for seg in index.load_segments() {
            if !seg.executable || seg.memsz != seg.filesz {
                continue;
            }
            // The code starts at an instruction boundary (arm64: 4-byte aligned).
            let skip =
                (seg.vaddr + seg.filesz).next_multiple_of(CODE_ALIGN) - (seg.vaddr + seg.filesz);
            let Some(addr) = bias.checked_add(seg.vaddr + seg.filesz + skip) else {
                continue;
            };
            let end = addr.next_multiple_of(page);
            if end - addr < BOOTSTRAP_LEN as u64 {
                continue;
            }
            let mapped = maps
                .iter()
                .any(|m| m.start <= addr && end <= m.end && m.executable() && m.is_file());
            if !mapped {
                continue;
            }
            let len = BOOTSTRAP_LEN;
            // Read from the mapped file itself (zeros past its end, as the kernel maps them).
            let Some(original) = index.read_at(seg.offset + seg.filesz + skip, len) else {
                continue;
            };
            // Memory must hold the file's bytes, or our own code a killed rpatch left there;
            // anything else means someone else uses these bytes.
            let Ok(found) = mem.read_vec(addr, len) else {
                continue;
            };
            if found != original && found != code {
                continue;
            }
            return Some(Slack {
                addr,
                leftover: found != original,
                original,
                module: module.path.clone(),
            });
        }
    }
    None
}

/// Lowest address proposed for a region.
const MIN_ADDR: u64 = 0x10000;

/// Highest address proposed (the user address space of a 4-level page table).
const MAX_ADDR: u64 = 0x7fff_ffff_0000;

/// Addresses for a new region of `len` bytes, best first: where the kernel's own top-down
/// `mmap` would put it, i.e. the top of the highest free gaps below the main stack, one page
/// below the mapping above; never the gap right below `[stack]` (the main stack grows into it),
/// nor the bottom gigabyte of the gap above `[heap]` (brk grows into it). Nothing near the
/// executable, where jump islands must go. `page` is the target's page size.
pub fn region_addresses(maps: &[Mapping], len: u64, page: u64) -> Vec<u64> {
    let stack = maps.iter().find(|m| m.path == "[stack]").map(|m| m.start);
    let heap_end = maps.iter().find(|m| m.path == "[heap]").map(|m| m.end);
    let mut free: Vec<(u64, u64)> = gaps(maps, MIN_ADDR, MAX_ADDR)
        .into_iter()
        .filter(|&(lo, hi)| hi - lo >= len + 2 * page)
        .filter(|&(_, hi)| stack.is_none_or(|s| hi < s))
        .collect();
    free.sort_by_key(|&(_, hi)| std::cmp::Reverse(hi));
    free.into_iter()
        .filter_map(|(lo, hi)| {
            let base = (hi - page - len) & !(page - 1);
            let clear_of_heap = heap_end.is_none_or(|h| lo != h || base >= lo + (1 << 30));
            (base >= lo && clear_of_heap).then_some(base)
        })
        .take(3)
        .collect()
}

/// Whether `maps` shows exactly the region's two mappings: the code page `r-x` and the stack +
/// data `rw-`, both anonymous, with these bounds (a mapping someone else made there would not
/// have both).
pub fn region_mapped(maps: &[Mapping], region: &StubRegion) -> (bool, bool) {
    let anon = |m: &&Mapping| m.inode == 0 && m.path.is_empty();
    let code = maps.iter().filter(anon).any(|m| {
        m.start == region.code() && m.end == region.rw_start() && m.perms.read_exec_only()
    });
    let rw = maps.iter().filter(anon).any(|m| {
        m.start == region.rw_start()
            && m.end == region.rw_start() + region.rw_len()
            && m.perms.read_write_only()
    });
    (code, rw)
}

/// A region a previous rpatch mapped in this target and that is idle (`DONE` = settled: its
/// tracer saw the last call's thread back in its own code, so no thread runs in it or has a frame
/// returning into it), with a data block big enough for the region `region_at(base)` this
/// rpatch would map. It is recognised by its data block's magic and by `holds_stub` (its code
/// page holds the stub this rpatch would write). `page` is the target's page size.
pub fn find_idle_region(
    maps: &[Mapping],
    mem: &dyn Memory,
    page: u64,
    region_at: impl Fn(u64) -> StubRegion,
    holds_stub: impl Fn(&StubRegion) -> bool,
) -> Option<StubRegion> {
    maps.iter()
        .filter(|m| m.inode == 0 && m.path.is_empty() && m.perms.read_exec_only())
        .find_map(|m| {
            let region = region_at(m.end.checked_sub(page)?);
            let rw = maps.iter().find(|n| n.start == m.end)?;
            if !(rw.inode == 0 && rw.perms.read_write_only()) {
                return None;
            }
            let data_at = region.data();
            let magic = mem.read_u64(data_at + data::MAGIC).ok()?;
            let data_len = mem.read_u64(data_at + data::DATA_LEN).ok()?;
            let done = mem.read_u64(data_at + data::DONE).ok()?;
            let fits = data_len >= region.data_len() && rw.end >= data_at + region.data_len();
            if magic != MAGIC_VALUE
                || done != Done::Settled as u64
                || !fits
                || rw.start > region.rw_start()
            {
                return None;
            }
            holds_stub(&region).then_some(region)
        })
}

/// Stack size reported in messages.
pub const REGION_STACK_KIB: u64 = STACK_SIZE / 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::call;

    /// A page size for the pure functions' tests.
    const PAGE: u64 = 4096;

    /// The region this rpatch would map at `base`.
    fn region_at(base: u64) -> StubRegion {
        call::layout(std::process::id() as i32).region(base)
    }
    use crate::isa::remote_call::idle_header;
    use crate::process::{FakeMemory, parse_maps};

    #[test]
    fn region_goes_at_the_top_of_the_big_gap_below_the_libraries() {
        let maps = parse_maps(
            "555555554000-555555556000 r-xp 0 0:0 1 /bin/app\n\
             555555556000-555555577000 rw-p 0 0:0 0 [heap]\n\
             7ffff7d00000-7ffff7f00000 r-xp 0 0:0 2 /lib/libz.so.1\n\
             7ffffffde000-7ffffffff000 rw-p 0 0:0 0 [stack]\n",
        );
        let len = 0x44000;
        let bases = region_addresses(&maps, len, PAGE);
        assert_eq!(bases[0], 0x7ffff7d00000 - PAGE - len);
        for b in &bases {
            assert!(
                *b + len <= 0x7ffffffde000 - PAGE || *b >= 0x7ffffffff000,
                "{b:#x}"
            );
            assert!(
                !(0x555555577000..0x555555577000 + (1 << 30)).contains(b),
                "{b:#x} right above the heap"
            );
        }
    }

    #[test]
    fn region_bounds_must_match_exactly() {
        let region = region_at(0x7000_0000_0000);
        let page = region.rw_start() - region.code();
        let text = format!(
            "{:x}-{:x} r-xp 0 0:0 0 \n{:x}-{:x} rw-p 0 0:0 0 \n",
            region.code(),
            region.code() + page,
            region.rw_start(),
            region.rw_start() + region.rw_len()
        );
        assert_eq!(region_mapped(&parse_maps(&text), &region), (true, true));
        let merged = format!(
            "{:x}-{:x} r-xp 0 0:0 0 \n",
            region.code() - page,
            region.code() + page
        );
        assert_eq!(region_mapped(&parse_maps(&merged), &region), (false, false));
    }

    #[test]
    fn an_idle_region_with_our_code_is_found_and_a_busy_one_is_not() {
        let region = region_at(0x7000_0000_0000);
        let page = region.rw_start() - region.code();
        let maps_with_rw = |rw_len: u64| {
            parse_maps(&format!(
                "{:x}-{:x} r-xp 0 0:0 0 \n{:x}-{:x} rw-p 0 0:0 0 \n",
                region.code(),
                region.code() + page,
                region.rw_start(),
                region.rw_start() + rw_len
            ))
        };
        let maps = maps_with_rw(region.rw_len());
        let code = vec![0x90u8; 64];
        let mem = FakeMemory::default();
        mem.map(region.code(), code.clone());
        mem.map(region.data(), vec![0; region.data_len() as usize]);
        mem.write_at(region.data(), &idle_header(region.data_len()))
            .unwrap();
        let stub = |r: &StubRegion| mem.read_vec(r.code(), 64).is_ok_and(|c| c == code);
        assert_eq!(
            find_idle_region(&maps, &mem, page, region_at, stub),
            Some(region),
            "idle region with our code"
        );
        assert_eq!(
            find_idle_region(&maps, &mem, page, region_at, |_| false),
            None,
            "other code"
        );
        assert_eq!(
            find_idle_region(
                &maps_with_rw(region.rw_len() - page),
                &mem,
                page,
                region_at,
                stub
            ),
            None,
            "data block too small for this rpatch's"
        );
        mem.write_at(region.data() + data::DONE, &0u64.to_le_bytes())
            .unwrap();
        assert_eq!(
            find_idle_region(&maps, &mem, page, region_at, stub),
            None,
            "a call runs in it"
        );
        mem.write_at(region.data() + data::DONE, &1u64.to_le_bytes())
            .unwrap();
        assert_eq!(
            find_idle_region(&maps, &mem, page, region_at, stub),
            None,
            "a thread is about to return from it, unseen by a tracer"
        );
    }
}
