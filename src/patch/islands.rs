//! Jump islands: pages mapped near a function that hold absolute jumps to far replacements.
//!
//! A PIE executable sits tens of TiB below the libraries dlopen maps, out of reach of a near jump
//! (x86_64 `jmp rel32`: ±2 GiB; arm64 `b`: ±128 MiB), and an absolute jump in place (14 bytes on
//! x86_64, 16 on arm64) does not fit a small function. A page mapped within the near jump's reach
//! holds 16-byte slots, each an absolute jump; the function gets a near jump to its slot (5 bytes
//! on x86_64, 4 on arm64; `isa::jump` has the encodings). Pages are recorded in the journal and
//! reused across patches.

use crate::isa;
use crate::journal::Island;
use crate::process::Mapping;

/// Size of an island page on x86_64 (on arm64, whose kernels use 4, 16 or 64 KiB pages, an
/// island is one page of the target's size: `island_size`).
pub const ISLAND_SIZE: u64 = 4096;

/// Size of an island page in a target whose page size is `page`.
pub fn island_size(page: u64) -> u64 {
    ISLAND_SIZE.max(page)
}

/// Lowest address ever proposed (typical `vm.mmap_min_addr` is 64 KiB).
const MIN_ADDR: u64 = 0x10000;

/// The mapping an island page shows in /proc/PID/maps once mapped.
pub fn mapping_of(island: &Island) -> Mapping {
    Mapping {
        start: island.address,
        end: island.address + island.size,
        perms: "r-xp".parse().expect("valid permissions"),
        offset: 0,
        dev: 0,
        inode: 0,
        path: String::new(),
    }
}

/// A free slot in one of `islands` reachable by a near jump at `from`, not in `used`.
pub fn free_slot(islands: &[Island], used: &[u64], from: u64) -> Option<u64> {
    islands.iter().find_map(|island| {
        (0..island.size / isa::ISLAND_SLOT_LEN as u64)
            .map(|i| island.address + i * isa::ISLAND_SLOT_LEN as u64)
            .find(|slot| !used.contains(slot) && isa::jump::reaches(from, *slot))
    })
}

/// Addresses where a new island page could go for a jump at `from`, best (closest) first.
///
/// Every candidate is a page in a gap between mappings, inside the rel32 reach. At the gap edge
/// nearest the function — except directly above `[heap]`, whose growth it would block, where the
/// top of the gap is used.
pub fn candidate_addresses(maps: &[Mapping], from: u64, size: u64) -> Vec<u64> {
    let reach = isa::jump::NEAR_REACH - 2 * size;
    let window_lo = from
        .saturating_sub(reach)
        .max(MIN_ADDR)
        .next_multiple_of(size);
    let window_hi = from.saturating_add(reach) & !(size - 1);
    let mut sorted: Vec<&Mapping> = maps.iter().collect();
    sorted.sort_by_key(|m| m.start);
    let mut candidates = Vec::new();
    let mut prev: Option<&Mapping> = None;
    let mut consider = |lo: u64, hi: u64, below: Option<&Mapping>| {
        let lo = lo.max(window_lo);
        let hi = hi.min(window_hi);
        if hi < lo + size {
            return;
        }
        let above_heap = below.is_some_and(|m| m.path == "[heap]");
        let addr = if hi <= from || above_heap {
            hi - size
        } else {
            lo
        };
        candidates.push(addr);
    };
    for m in &sorted {
        let gap_lo = prev.map_or(0, |p| p.end);
        consider(gap_lo, m.start, prev);
        prev = Some(m);
    }
    if let Some(last) = prev {
        consider(last.end, u64::MAX, Some(last));
    }
    candidates.sort_by_key(|a| a.abs_diff(from));
    candidates.truncate(8);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::parse_maps;

    #[test]
    fn island_goes_below_a_pie_and_not_above_the_heap() {
        let maps = parse_maps(
            "555555554000-555555556000 r-xp 0 0:0 1 /bin/app\n\
             555555556000-555555560000 rw-p 0 0:0 0 [heap]\n\
             7ffff7000000-7ffff7100000 r-xp 0 0:0 2 /lib/libz.so.1\n",
        );
        let from = 0x555555555000;
        let c = candidate_addresses(&maps, from, ISLAND_SIZE);
        assert_eq!(c[0], 0x555555553000);
        for addr in &c {
            assert!(isa::jump::reaches(from, *addr));
            assert_ne!(*addr, 0x555555560000, "right above the heap");
        }
    }

    #[test]
    fn slots_are_reused_when_free_and_reachable() {
        let islands = [Island {
            address: 0x1000_0000,
            size: ISLAND_SIZE,
        }];
        assert_eq!(free_slot(&islands, &[], 0x1000_5000), Some(0x1000_0000));
        assert_eq!(
            free_slot(&islands, &[0x1000_0000], 0x1000_5000),
            Some(0x1000_0010)
        );
        assert_eq!(free_slot(&islands, &[], 0x7000_0000_0000), None);
    }
}
