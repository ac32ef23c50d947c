//! Inlined copies: every `DW_TAG_inlined_subroutine` whose abstract origin is a given function
//! (or a function matching a pattern), with the function whose machine code holds the copy
//! (the caller that keeps the old code after a patch) and the call site's file:line.
//!
//! One streaming pass over all units, split across the cores; each unit is matched as soon as
//! it is read and only the matches are kept, so memory stays proportional to one unit per core
//! (plus the pages of `.debug_info` in flight, which the caller gives back after each unit).
//! An origin is compared by its unqualified name first (a few bytes, no string allocated); only
//! a name that matches is qualified and compared by linkage name or qualified path. Units are
//! matched by name, not by DIE offset: rustc and C++ compilers emit a copy of the abstract
//! subprogram in every unit that inlines the function.

use std::ops::Range;

use gimli::{Section, SectionId};

use super::FunctionSymbol;
use super::dwarf::{self, Dwarf, Foreign, Name, Subprogram, UnitScan};
use super::elf::ElfInfo;
use super::hash::{FxHashMap, FxHashSet};
use super::names::{base_name, last_segment};
use super::pattern::{NameFilter, Pattern};

/// One place where a function's code was copied into another function.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InlineSite {
    /// The function holding the copy (its DWARF name): it keeps running the old code after
    /// the inlined function is patched.
    pub caller: String,
    /// Link-time entry address of that function.
    pub caller_address: Option<u64>,
    /// `file:line` of the call that was inlined.
    pub location: Option<String>,
    /// Link-time address where the copy starts, when recorded.
    pub address: Option<u64>,
}

/// Inline sites joined for a message: `caller_a (call at file.c:12), caller_b`.
pub struct InlineSites<'a>(pub &'a [InlineSite]);

impl std::fmt::Display for InlineSites<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match &s.location {
                Some(l) => write!(f, "{} (call at {l})", s.caller)?,
                None => f.write_str(&s.caller)?,
            }
        }
        Ok(())
    }
}

/// A function that exists only as inlined copies (no out-of-line code to patch).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InlinedOnly {
    /// Its DWARF name.
    pub name: String,
    /// Where it was inlined.
    pub sites: Vec<InlineSite>,
}

/// How to recognise a function's abstract DIE in any unit.
#[derive(Debug, Clone)]
pub(super) struct TargetKey {
    /// `DW_AT_name` as the DIE spells it (`calc`, `gen<u32>`, `method`): the cheap first test.
    base: Vec<u8>,
    /// Linkage names (symbol table and DWARF): compared when the DIE has one.
    linkages: Vec<String>,
    /// Qualified DWARF name: compared when the DIE has no linkage name (C).
    qualified: Option<String>,
    /// File-local C functions are matched in their own unit only (another unit's `static`
    /// function of the same name is another function): the unit of the DIE naming them, which
    /// with link-time optimisation is not the unit holding their code.
    unit: Option<u64>,
}

impl TargetKey {
    pub(super) fn new(f: &FunctionSymbol, subs: &[Subprogram], info: &ElfInfo) -> Self {
        let sub = subs.first();
        let qualified = sub.and_then(|s| s.name.as_deref()).map(str::to_string);
        let base = match &qualified {
            Some(q) => last_segment(q).to_string(),
            None => base_name(last_segment(&f.name)).to_string(),
        };
        let mut linkages: Vec<String> = f.linkage_name.iter().cloned().collect();
        for s in subs {
            if let Some(l) = &s.linkage
                && !linkages.iter().any(|x| **x == **l)
            {
                linkages.push(l.to_string());
            }
        }
        let local = f.linkage_name.as_deref().is_some_and(|l| {
            info.symbols
                .iter()
                .filter(|s| *s.name == *l && s.address == f.address)
                .all(|s| !s.global)
        });
        let unit = match sub {
            Some(s) if local && !s.rust => Some(s.home_unit),
            _ => None,
        };
        TargetKey {
            base: base.into_bytes(),
            linkages,
            qualified,
            unit,
        }
    }
}

/// What a thread found.
#[derive(Default)]
struct Found {
    targets: Vec<(usize, InlineSite)>,
    pattern: Vec<(String, InlineSite)>,
}

/// Scans every unit for copies of `keys` and of functions matching `pattern`.
/// `release` is called with each unit's byte range in `.debug_info` once it is done.
pub(super) fn scan(
    dwarf: &Dwarf<'_>,
    keys: &[TargetKey],
    pattern: Option<&Pattern>,
    release: &(dyn Fn(SectionId, Range<usize>) + Sync),
) -> (Vec<Vec<InlineSite>>, Vec<super::InlinedOnly>) {
    let headers = dwarf::unit_headers(dwarf);
    let threads = dwarf::threads_for(dwarf.debug_info.reader().len());
    let chunks = dwarf::split_units(&headers, threads);
    let pattern = pattern.map(|p| (p, p.name_filter()));
    let pattern = pattern.as_ref();
    let strings = StrIndex::build(dwarf, keys, pattern.map(|(_, f)| f), release);
    let strings = &strings;
    let work = |chunk: &[gimli::UnitHeader<dwarf::Reader<'_>>]| {
        let mut worker = Worker::new();
        for header in chunk {
            let start = dwarf::unit_offset(header);
            let end = start + header.length_including_self() as u64;
            if let Ok(unit) = worker.abbrevs.open(dwarf, *header) {
                worker.unit(dwarf, unit, (start, end), keys, pattern, strings);
            }
            release(SectionId::DebugInfo, start as usize..end as usize);
        }
        worker.found
    };
    let results: Vec<Found> = if chunks.len() <= 1 {
        vec![work(&headers)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunks.iter().map(|c| s.spawn(|| work(c))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };

    let mut per_target: Vec<Vec<InlineSite>> = vec![Vec::new(); keys.len()];
    let mut by_name: FxHashMap<String, Vec<InlineSite>> = FxHashMap::default();
    for found in results {
        for (i, site) in found.targets {
            per_target[i].push(site);
        }
        for (name, site) in found.pattern {
            by_name.entry(name).or_default().push(site);
        }
    }
    let sort = |sites: &mut Vec<InlineSite>| {
        sites.sort_by(|a, b| {
            (&a.caller, &a.location, a.address).cmp(&(&b.caller, &b.location, b.address))
        });
        sites.dedup();
    };
    per_target.iter_mut().for_each(sort);
    let mut only: Vec<InlinedOnly> = by_name
        .into_iter()
        .map(|(name, mut sites)| {
            sort(&mut sites);
            InlinedOnly { name, sites }
        })
        .collect();
    only.sort_by(|a, b| a.name.cmp(&b.name));
    (per_target, only)
}

/// What an abstract origin turned out to be.
#[derive(Clone, Default)]
struct Verdict {
    targets: Vec<usize>,
    pattern_name: Option<String>,
}

impl Verdict {
    fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.pattern_name.is_none()
    }
}

/// A thread's state across the units it scans.
struct Worker<'a> {
    scan: UnitScan<'a>,
    foreign: Foreign<'a>,
    /// Verdicts on origins in other units (the same few are reached from many units).
    foreign_verdicts: FxHashMap<u64, Verdict>,
    /// Verdicts on origins in the unit being read (kept for its allocation).
    verdicts: FxHashMap<u64, Verdict>,
    abbrevs: dwarf::Abbrevs,
    found: Found,
}

impl<'a> Worker<'a> {
    fn new() -> Self {
        Worker {
            scan: UnitScan::new(),
            foreign: Foreign::new(),
            foreign_verdicts: FxHashMap::default(),
            verdicts: FxHashMap::default(),
            abbrevs: dwarf::Abbrevs::default(),
            found: Found::default(),
        }
    }

    fn unit(
        &mut self,
        dwarf: &Dwarf<'a>,
        unit: dwarf::Unit<'a>,
        range: (u64, u64),
        keys: &[TargetKey],
        pattern: Option<&(&Pattern, NameFilter)>,
        strings: &StrIndex,
    ) {
        let scan = &mut self.scan;
        scan.reset(range.0, range.1);
        let _ = dwarf::scan_unit(dwarf, &unit, scan, true);
        if scan.inlines.is_empty() {
            return;
        }
        let scan = &self.scan;
        let verdicts = &mut self.verdicts;
        verdicts.clear();
        let mut scope_paths: FxHashMap<u32, String> = FxHashMap::default();
        let mut lines: Option<Option<dwarf::Unit<'a>>> = None;
        let mut callers: FxHashMap<u32, (String, Option<u64>)> = FxHashMap::default();
        if self.foreign_verdicts.len() > 1 << 20 {
            self.foreign_verdicts.clear();
        }
        for inl in &scan.inlines {
            // Each origin is judged once: the same few are copied all over a unit, so the
            // verdict is looked up by the origin's offset before anything about it is read.
            let verdict = match (scan.unit..scan.unit_end).contains(&inl.origin) {
                true => verdicts.entry(inl.origin).or_insert_with(|| {
                    match scan.rec_at(inl.origin) {
                        Some(i) => classify(
                            dwarf,
                            scan,
                            i,
                            Some(&mut self.foreign),
                            keys,
                            pattern,
                            strings,
                            &mut scope_paths,
                        ),
                        // Not a subprogram DIE.
                        None => Verdict::default(),
                    }
                }),
                false => {
                    let foreign = &mut self.foreign;
                    self.foreign_verdicts.entry(inl.origin).or_insert_with(|| {
                        match foreign.lookup(dwarf, inl.origin) {
                            Some((other, i)) => classify(
                                dwarf,
                                other,
                                i,
                                None,
                                keys,
                                pattern,
                                strings,
                                &mut FxHashMap::default(),
                            ),
                            None => Verdict::default(),
                        }
                    })
                }
            };
            if verdict.is_empty() {
                continue;
            }
            let (caller, caller_address) = match inl.top {
                Some(top) => callers
                    .entry(top)
                    .or_insert_with(|| {
                        let rec = &scan.recs[top as usize];
                        let id = dwarf::identity(
                            dwarf,
                            scan,
                            top as usize,
                            Some(&mut self.foreign),
                            &mut scope_paths,
                        );
                        let address = rec.code.map(|c| c.0);
                        let name = id.generic.or(id.qualified).unwrap_or_else(|| {
                            format!("<function at {:#x}>", address.unwrap_or(0))
                        });
                        (name, address)
                    })
                    .clone(),
                None => ("<unknown>".to_string(), None),
            };
            let location = inl.call_file.and_then(|file| {
                let unit = lines
                    .get_or_insert_with(|| dwarf::full_unit(dwarf, scan.unit))
                    .as_ref()?;
                let path = dwarf::file_name(dwarf, unit, file)?;
                Some(format!("{path}:{}", inl.call_line))
            });
            let site = InlineSite {
                caller,
                caller_address,
                location,
                address: inl.address,
            };
            for &t in &verdict.targets {
                self.found.targets.push((t, site.clone()));
            }
            if let Some(name) = &verdict.pattern_name {
                self.found.pattern.push((name.clone(), site));
            }
        }
    }
}

/// Whether record `index` of `scan` (an inlined copy's abstract origin) is one of the targets
/// or matches the pattern.
#[allow(clippy::too_many_arguments)]
fn classify<'a>(
    dwarf: &Dwarf<'a>,
    scan: &UnitScan<'a>,
    index: usize,
    foreign: Option<&mut Foreign<'a>>,
    keys: &[TargetKey],
    pattern: Option<&(&Pattern, NameFilter)>,
    strings: &StrIndex,
    scope_paths: &mut FxHashMap<u32, String>,
) -> Verdict {
    let mut verdict = Verdict::default();
    let r = scan.resolved(index);
    let in_unit = |k: &TargetKey| k.unit.is_none_or(|u| u == scan.unit);
    // The cheap test first, on the unqualified name: by its string offset when it has one
    // (no string read), else by its bytes.
    let candidates: Vec<usize> = match r.name {
        Some(Name::Str(o)) => strings
            .keys
            .get(&o)
            .map(|ks| {
                ks.iter()
                    .map(|&k| k as usize)
                    .filter(|&k| in_unit(&keys[k]))
                    .collect()
            })
            .unwrap_or_default(),
        Some(name) => keys
            .iter()
            .enumerate()
            .filter(|(_, k)| in_unit(k) && name.is(dwarf, &k.base))
            .map(|(t, _)| t)
            .collect(),
        // Named through a link into another unit: decided on the full identity.
        None => (0..keys.len()).collect(),
    };
    // The pattern's own cheap test on the unqualified name.
    let pattern = pattern.filter(|(_, filter)| match (r.name, filter) {
        (_, NameFilter::Any) | (None, _) => true,
        (Some(Name::Str(o)), NameFilter::Base(_) | NameFilter::Prefix(_)) => {
            strings.pattern.contains(&o)
        }
        (Some(name), NameFilter::Contains(_)) => {
            let mut scope = r.scope;
            let mut hit = strings.contains(dwarf, name, filter);
            while !hit && scope != 0 {
                let s = &scan.scopes[scope as usize];
                hit = strings.contains(dwarf, s.name, filter);
                scope = s.parent;
            }
            hit
        }
        (Some(name), filter) => name.bytes(dwarf).is_some_and(|b| filter.accepts(b)),
    });
    if candidates.is_empty() && pattern.is_none() {
        return verdict;
    }
    let id = dwarf::identity(dwarf, scan, index, foreign, scope_paths);
    for t in candidates {
        let key = &keys[t];
        let hit = match (&id.linkage, key.linkages.is_empty()) {
            (Some(l), false) => key.linkages.iter().any(|k| k == l),
            _ => {
                id.qualified.is_some()
                    && (key.qualified.is_none() || key.qualified == id.qualified)
                    && id
                        .qualified
                        .as_deref()
                        .is_some_and(|q| last_segment(q).as_bytes() == key.base)
            }
        };
        if hit {
            verdict.targets.push(t);
        }
    }
    if let Some((pattern, _)) = pattern {
        let hit = id.qualified.as_deref().is_some_and(|n| pattern.matches(n))
            || id.generic.as_deref().is_some_and(|n| pattern.matches(n));
        if hit {
            verdict.pattern_name = id.generic.or(id.qualified);
        }
    }
    verdict
}

/// Where the wanted names are in `.debug_str`: a name stored there is then recognised by its
/// offset (the linker merges identical strings, and tail-merged ones end the same way), without
/// reading it, so the scan does not fault in the string section page by page.
#[derive(Default)]
pub(super) struct StrIndex {
    /// Offset -> indices of the keys whose unqualified name starts there.
    keys: FxHashMap<usize, Vec<u32>>,
    /// Offsets where the pattern's base name starts (alone or with generic arguments), or
    /// where a string starting with the pattern's prefix starts.
    pattern: FxHashSet<usize>,
    /// For a `Contains` filter: (first, last) offsets from which a string holds the text,
    /// sorted (an offset may point into the middle of a string the linker shared).
    containing: Vec<(usize, usize)>,
}

impl StrIndex {
    /// One pass over `.debug_str`, a few MiB at a time, giving each part's pages back.
    fn build(
        dwarf: &Dwarf<'_>,
        keys: &[TargetKey],
        filter: Option<&NameFilter>,
        release: &(dyn Fn(SectionId, Range<usize>) + Sync),
    ) -> Self {
        let section = dwarf.debug_str.reader().slice();
        let mut index = StrIndex::default();
        // Complete strings wanted: each key's name, the pattern's base name.
        let mut exact: FxHashMap<&[u8], Vec<u32>> = FxHashMap::default();
        for (i, k) in keys.iter().enumerate() {
            exact.entry(&k.base).or_default().push(i as u32);
        }
        let pattern_base = match filter {
            Some(NameFilter::Base(b)) => Some(b.as_slice()),
            _ => None,
        };
        if let Some(b) = pattern_base {
            exact.entry(b).or_default().push(u32::MAX);
        }
        let (prefix, contains) = match filter {
            Some(NameFilter::Prefix(p)) => (Some(p.as_slice()), None),
            Some(NameFilter::Contains(c)) => (None, Some(c.as_slice())),
            _ => (None, None),
        };
        if (exact.is_empty() && prefix.is_none() && contains.is_none()) || section.is_empty() {
            return index;
        }
        let prefix_finder = prefix.map(memchr::memmem::Finder::new);
        let contains_finder = contains.map(memchr::memmem::Finder::new);
        let mut lengths: Vec<usize> = exact.keys().map(|k| k.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let generic_start = pattern_base.map(|b| {
            let mut n = b.to_vec();
            n.push(b'<');
            n
        });
        let generic_finder = generic_start.as_deref().map(memchr::memmem::Finder::new);
        const PART: usize = 4 << 20;
        let mut start = 0;
        while start < section.len() {
            // Parts end at a string's end, so no string is split.
            let end = match memchr::memchr(0, &section[(start + PART).min(section.len())..]) {
                Some(z) => (start + PART).min(section.len()) + z + 1,
                None => section.len(),
            };
            let part = &section[start..end];
            let mut from = 0;
            for z in memchr::memchr_iter(0, part) {
                let string = &part[from..z];
                for &len in lengths.iter().take_while(|&&l| l <= string.len()) {
                    if let Some(ks) = exact.get(&string[string.len() - len..]) {
                        let offset = start + z - len;
                        for &k in ks {
                            if k == u32::MAX {
                                index.pattern.insert(offset);
                            } else {
                                index.keys.entry(offset).or_default().push(k);
                            }
                        }
                    }
                }
                from = z + 1;
            }
            if let Some(finder) = &generic_finder {
                index
                    .pattern
                    .extend(finder.find_iter(part).map(|p| start + p));
            }
            if let Some(finder) = &prefix_finder {
                index
                    .pattern
                    .extend(finder.find_iter(part).map(|p| start + p));
            }
            if let Some(finder) = &contains_finder {
                for p in finder.find_iter(part) {
                    let first = memchr::memrchr(0, &part[..p]).map_or(0, |z| z + 1);
                    match index.containing.last_mut() {
                        Some(last) if last.0 == start + first => last.1 = start + p,
                        _ => index.containing.push((start + first, start + p)),
                    }
                }
            }
            release(SectionId::DebugStr, start..end);
            start = end;
        }
        index
    }

    /// Whether `name` holds the text of a `Contains` filter.
    fn contains(&self, dwarf: &Dwarf<'_>, name: Name<'_>, filter: &NameFilter) -> bool {
        match name {
            Name::Str(o) => {
                let i = self.containing.partition_point(|r| r.0 <= o);
                i > 0 && o <= self.containing[i - 1].1
            }
            other => other.bytes(dwarf).is_some_and(|b| filter.accepts(b)),
        }
    }
}
