//! What a forked child inherited: the records of its ancestor's journal whose bytes it holds.
//!
//! `fork` copies the whole address space, patched code, island pages, the loaded patch
//! library and rpatch's stub region included, at the same addresses (except `MADV_DONTFORK`
//! ranges, absent in the child, and `MADV_WIPEONFORK` ones, zeroed: attach refuses those for
//! what it maps). So a child runs its ancestor's patches without a journal of its own. On the
//! first operation on the child, its new journal adopts every ancestor record whose bytes the
//! child's memory holds — jump, island slot and library mapping — whatever the ancestor's
//! journal says of it now (the ancestor may have rolled back since, or stacked another patch on
//! top); each adopted record names its origin. From then on the child's journal decides.

use super::{Island, JournalData, PatchRecord, PatchState, SlackRecord, TargetIdentity};
use crate::isa;
use crate::process::{Mapping, Memory};
use serde::{Deserialize, Serialize};

/// Where an adopted record came from: the ancestor (PID, start time and boot id identify it
/// for life) and the record's id in its journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The ancestor's PID.
    pub pid: i32,
    /// Its start time (clock ticks after boot).
    pub start_time: u64,
    /// The boot it ran in.
    pub boot_id: String,
    /// The record's id in the ancestor's journal.
    pub patch_id: u64,
}

/// A process forked while rpatch was loading a library into its parent: its copy of the
/// dynamic loader's state is half updated (the C library resets the loader's lock in a forked
/// child), so nothing is ever loaded into it. Inherited from ancestor to child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inconsistent {
    /// The process the library was being loaded into.
    pub pid: i32,
    /// Its start time (clock ticks after boot).
    pub start_time: u64,
    /// Unix time (seconds) the fork was found.
    pub detected: u64,
}

/// What a child adopts from one ancestor's journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inheritance {
    /// The records whose bytes the child holds, applied, each with its origin.
    pub patches: Vec<PatchRecord>,
    /// The ancestor's island pages mapped in the child.
    pub islands: Vec<Island>,
    /// Bootstrap code the ancestor left in slack bytes that the child holds too.
    pub slack: Vec<SlackRecord>,
    /// The ancestor (or one of its own ancestors) was forked mid-load.
    pub inconsistent: Option<Inconsistent>,
}

impl Inheritance {
    /// Whether there is nothing to adopt.
    pub fn is_empty(&self) -> bool {
        self.patches.is_empty() && self.slack.is_empty() && self.inconsistent.is_none()
    }
}

/// What a child whose memory is `mem` (mappings `maps`), born at Unix time `born`, inherited from
/// `ancestor`'s journal. Per patched address, the chain of records memory holds is followed down
/// from the jump found there: the newest record whose jump memory holds (with its island slot
/// and its library mapped), then the record whose jump that one replaced, and so on. Where
/// records have the same bytes (the same library reused at the same place after a rollback),
/// those made before the child was born are preferred: a record made later cannot be in it.
pub fn inherit(
    ancestor: &JournalData,
    mem: &dyn Memory,
    maps: &[Mapping],
    born: u64,
) -> Inheritance {
    let candidates: Vec<&PatchRecord> = ancestor
        .patches
        .iter()
        .filter(|r| r.state != PatchState::Abandoned)
        .collect();
    let mut addresses: Vec<u64> = candidates.iter().map(|r| r.address).collect();
    addresses.sort_unstable();
    addresses.dedup();
    let mut patches = Vec::new();
    for address in addresses {
        let mut here: Vec<&PatchRecord> = candidates
            .iter()
            .copied()
            .filter(|r| r.address == address)
            .collect();
        // Clock granularity: a record made in the child's birth second may be in it.
        here.sort_by_key(|r| std::cmp::Reverse((r.created <= born + 1, r.id)));
        let len = here
            .iter()
            .map(|r| r.new.len().max(r.original.len()))
            .max()
            .unwrap_or(0);
        let Ok(mut expect) = mem.read_vec(address, len) else {
            continue;
        };
        let mut below = u64::MAX;
        while let Some(r) = here.iter().find(|r| {
            let n = expect.len().min(r.new.len());
            r.id < below
                && expect[..n] == r.new[..n]
                && slot_holds(mem, r)
                && library_mapped(maps, r)
        }) {
            patches.push(adopted(&ancestor.identity, r));
            expect = r.original.clone();
            below = r.id;
        }
    }
    patches.sort_by_key(|r| r.id);
    Inheritance {
        patches,
        islands: ancestor
            .islands
            .iter()
            .filter(|i| {
                maps.iter()
                    .any(|m| m.start <= i.address && i.address + i.size <= m.end)
            })
            .copied()
            .collect(),
        slack: ancestor
            .slack
            .iter()
            .filter(|s| {
                mem.read_vec(s.address, s.code.len())
                    .is_ok_and(|b| b == s.code)
            })
            .cloned()
            .collect(),
        inconsistent: ancestor.inconsistent.clone(),
    }
}

/// `r` as the child's record: applied (its bytes are in the child), naming its origin.
fn adopted(ancestor: &TargetIdentity, r: &PatchRecord) -> PatchRecord {
    PatchRecord {
        state: PatchState::Applied,
        rolled_back: None,
        inherited: Some(Origin {
            pid: ancestor.pid,
            start_time: ancestor.start_time,
            boot_id: ancestor.boot_id.clone(),
            patch_id: r.id,
        }),
        ..r.clone()
    }
}

/// The record's island slot, if it has one, still jumps to its replacement.
fn slot_holds(mem: &dyn Memory, r: &PatchRecord) -> bool {
    r.island_slot.is_none_or(|slot| {
        mem.read_vec(slot, isa::ISLAND_SLOT_LEN)
            .is_ok_and(|b| b == isa::island_slot(r.replacement))
    })
}

/// The replacement lies in a mapping of the library copy the record loaded (its device and
/// inode; any executable mapping for records that did not note the copy).
fn library_mapped(maps: &[Mapping], r: &PatchRecord) -> bool {
    maps.iter().any(|m| {
        let holds = (m.start..m.end).contains(&r.replacement);
        match r.loaded {
            Some(o) => holds && m.dev == o.dev && m.inode == o.inode,
            None => holds && m.perms.execute,
        }
    })
}

impl JournalData {
    /// Takes what a child inherited into its new journal (see [`inherit`]).
    pub fn adopt(&mut self, inheritance: Inheritance) {
        self.patches.extend(inheritance.patches);
        self.patches.sort_by_key(|r| r.id);
        for island in inheritance.islands {
            if !self.islands.contains(&island) {
                self.islands.push(island);
            }
        }
        self.slack.extend(inheritance.slack);
        if self.inconsistent.is_none() {
            self.inconsistent = inheritance.inconsistent;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{JumpMethod, LoadedObject};
    use crate::process::FakeMemory;

    const SITE: u64 = 0x5000;
    const LIB: LoadedObject = LoadedObject {
        dev: 8,
        inode: 99,
        l_addr: 0x7000_0000,
    };

    fn record(id: u64, original: &[u8], new: &[u8], state: PatchState) -> PatchRecord {
        PatchRecord {
            id,
            group: id,
            function: "compute".into(),
            module: "/bin/app".into(),
            module_build_id: None,
            function_address: SITE,
            address: SITE,
            original: original.to_vec(),
            new: new.to_vec(),
            replacement_name: "compute".into(),
            replacement: LIB.l_addr + 0x1100 + id,
            replacement_size: 16,
            library: "/fix.so".into(),
            loaded_from: "/proc/self/fd/5".into(),
            library_sha256: "00".into(),
            method: JumpMethod::Direct,
            island_slot: None,
            state,
            created: 100,
            rolled_back: None,
            loaded: Some(LIB),
            inherited: None,
            manifest: None,
        }
    }

    fn ancestor(patches: Vec<PatchRecord>) -> JournalData {
        let mut j = JournalData::new(TargetIdentity {
            pid: 10,
            start_time: 500,
            boot_id: "b".into(),
            exe: "/bin/app".into(),
            image: None,
        });
        j.patches = patches;
        j
    }

    fn library_maps() -> Vec<Mapping> {
        vec![Mapping {
            start: LIB.l_addr + 0x1000,
            end: LIB.l_addr + 0x2000,
            perms: "r-xp".parse().unwrap(),
            offset: 0x1000,
            dev: LIB.dev,
            inode: LIB.inode,
            path: "/memfd:rpatch (deleted)".into(),
        }]
    }

    const FILE: &[u8] = &[0x55, 0x48, 0x89, 0xe5, 0x90];
    const JMP1: &[u8] = &[0xe9, 1, 1, 1, 1];
    const JMP2: &[u8] = &[0xe9, 2, 2, 2, 2];

    /// Two stacked patches whose top jump the child holds: both adopted, as applied, with their
    /// origin, even though the ancestor rolled the top one back since the fork.
    #[test]
    fn the_chain_memory_holds_is_adopted_whatever_the_ancestor_did_since() {
        let a = ancestor(vec![
            record(1, FILE, JMP1, PatchState::Applied),
            record(2, JMP1, JMP2, PatchState::RolledBack),
        ]);
        let mem = FakeMemory::default();
        mem.map(SITE, JMP2.to_vec());
        let got = inherit(&a, &mem, &library_maps(), 200);
        let ids: Vec<(u64, PatchState)> = got.patches.iter().map(|r| (r.id, r.state)).collect();
        assert_eq!(
            ids,
            vec![(1, PatchState::Applied), (2, PatchState::Applied)]
        );
        let origin = got.patches[1].inherited.as_ref().unwrap();
        assert_eq!(
            (origin.pid, origin.start_time, origin.patch_id),
            (10, 500, 2)
        );
    }

    /// Memory holding the file's code (forked before the patch, or the ancestor rolled back
    /// before the fork), or a library that is not mapped: nothing is adopted.
    #[test]
    fn records_the_child_does_not_hold_are_not_adopted() {
        let a = ancestor(vec![record(1, FILE, JMP1, PatchState::Applied)]);
        let original = FakeMemory::default();
        original.map(SITE, FILE.to_vec());
        assert!(inherit(&a, &original, &library_maps(), 200).is_empty());
        let patched = FakeMemory::default();
        patched.map(SITE, JMP1.to_vec());
        assert!(inherit(&a, &patched, &[], 200).is_empty(), "no library");
        assert_eq!(inherit(&a, &patched, &library_maps(), 200).patches.len(), 1);
    }

    /// The same jump recorded twice (a library reused at the same place after a rollback):
    /// the record made before the child was born is the one it holds.
    #[test]
    fn identical_jumps_prefer_the_record_older_than_the_child() {
        let mut later = record(2, FILE, JMP1, PatchState::Applied);
        later.created = 900;
        later.replacement = record(1, FILE, JMP1, PatchState::Applied).replacement;
        let a = ancestor(vec![record(1, FILE, JMP1, PatchState::RolledBack), later]);
        let mem = FakeMemory::default();
        mem.map(SITE, JMP1.to_vec());
        let got = inherit(&a, &mem, &library_maps(), 200);
        let ids: Vec<u64> = got.patches.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1]);
    }

    /// An island patch needs its slot to still jump to the replacement (a zeroed
    /// MADV_WIPEONFORK page does not).
    #[test]
    fn island_patches_need_their_slot() {
        let mut r = record(1, FILE, JMP1, PatchState::Applied);
        r.method = JumpMethod::Island;
        r.island_slot = Some(0x9000);
        let mut a = ancestor(vec![r.clone()]);
        a.islands.push(Island {
            address: 0x9000,
            size: 4096,
        });
        let mem = FakeMemory::default();
        mem.map(SITE, JMP1.to_vec());
        mem.map(0x9000, vec![0; 16]);
        let mut maps = library_maps();
        maps.push(Mapping {
            start: 0x9000,
            end: 0xa000,
            perms: "r-xp".parse().unwrap(),
            offset: 0,
            dev: 0,
            inode: 0,
            path: String::new(),
        });
        let wiped = inherit(&a, &mem, &maps, 200);
        assert!(wiped.patches.is_empty());
        assert_eq!(wiped.islands.len(), 1, "the page itself is there");
        mem.write_at(0x9000, &isa::island_slot(r.replacement))
            .unwrap();
        assert_eq!(inherit(&a, &mem, &maps, 200).patches.len(), 1);
    }
}
