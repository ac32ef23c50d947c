//! DWARF index: every subprogram that has machine code, with its qualified source name.
//!
//! Built by a streaming pass over `.debug_info` with gimli's raw entry reader: only
//! namespace-like DIEs (for the scope path), subprograms and (for the inline scan) inlined
//! subroutines have their attributes decoded, everything else is skipped. During the pass names
//! are only *located* (a string offset), not read: most named DIEs are types that hold no code,
//! and finding the end of a string is the costly part. Strings are allocated only for
//! code-bearing subprograms. File and line are kept as indices and turned into `file:line` text
//! only for the functions a caller actually asks about, because that needs the unit's
//! line-program header.
//!
//! Units are independent, so the full pass splits them across the available cores
//! (`std::thread::scope`), and a single unit can be read on its own: resolving a name the
//! symbol table knows reads only the unit whose address ranges hold it (`UnitTable`).

use std::convert::Infallible;
use std::path::PathBuf;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, Section, SectionId};

use super::elf::{ElfInfo, SectionSource};
use super::hash::FxHashMap;

pub(super) type Reader<'a> = EndianSlice<'a, RunTimeEndian>;
pub(super) type Dwarf<'a> = gimli::Dwarf<Reader<'a>>;
pub(super) type Unit<'a> = gimli::Unit<Reader<'a>>;

/// A subprogram with code, as DWARF describes it.
#[derive(Debug, Clone)]
pub(super) struct Subprogram {
    /// Entry address (`DW_AT_low_pc`, or start of the range holding the entry).
    pub low: u64,
    /// End of the entry range (exclusive).
    pub high: u64,
    /// Qualified name: enclosing namespaces/types joined with `::`, e.g. `app::pricing::calc`.
    pub name: Option<Box<str>>,
    /// For Rust generic instances, the same name in expression syntax: `app::f::<u32>` for the
    /// DWARF name `app::f<u32>`, which is how v0 demangling and people write it.
    pub generic_name: Option<Box<str>>,
    /// `DW_AT_linkage_name` (or the MIPS spelling), following specification/origin links.
    pub linkage: Option<Box<str>>,
    /// `.debug_info` offset of the unit that holds the code DIE.
    pub unit: u64,
    /// `.debug_info` offset of the unit that holds the DIE naming the function, at the end of
    /// its specification/origin links: the code DIE's own unit, except where link-time
    /// optimisation put the code in a unit of its own that refers to the function's original
    /// unit. A file-local function is that unit's (another unit's `static` of the same name is
    /// another function), and so are its inlined copies, wherever they sit.
    pub home_unit: u64,
    /// `.debug_info` offset of the code DIE itself.
    pub die: u64,
    /// Declared file: (unit whose file table the index refers to, file index).
    decl_file: Option<(u64, u64)>,
    /// Declared line.
    decl_line: Option<u64>,
    /// The unit is Rust (`DW_LANG_Rust`).
    pub rust: bool,
}

/// Decompressed copies of compressed debug sections (empty for uncompressed files), made once
/// per file and borrowed by every gimli view of it.
#[derive(Default)]
pub(super) struct Sections {
    inflated: Vec<(SectionId, Vec<u8>)>,
}

impl Sections {
    /// Inflates the compressed DWARF sections of the file (`SHF_COMPRESSED` or `.zdebug_*`).
    pub(super) fn inflate(data: &[u8], info: &ElfInfo) -> Self {
        let mut inflated = Vec::new();
        for (id, source) in &info.dwarf_sections {
            if let SectionSource::Compressed(range) = source
                && let Ok(bytes) = range.data(data).and_then(|c| c.decompress())
            {
                inflated.push((*id, bytes.into_owned()));
            }
        }
        Sections { inflated }
    }
}

/// File byte range of one uncompressed DWARF section.
pub(super) fn plain_range(info: &ElfInfo, id: SectionId) -> Option<std::ops::Range<usize>> {
    info.dwarf_sections.iter().find_map(|(i, s)| match s {
        SectionSource::Plain(r) if *i == id => Some(r.clone()),
        _ => None,
    })
}

/// File byte ranges of the uncompressed DWARF sections, except `.debug_info` unless listed
/// in `with` (for giving pages back).
pub(super) fn plain_ranges(info: &ElfInfo, with: &[SectionId]) -> Vec<std::ops::Range<usize>> {
    info.dwarf_sections
        .iter()
        .filter(|(id, _)| *id != SectionId::DebugInfo || with.contains(id))
        .filter_map(|(_, s)| match s {
            SectionSource::Plain(r) => Some(r.clone()),
            SectionSource::Compressed(_) => None,
        })
        .collect()
}

/// A gimli view of the file's DWARF, borrowing the file bytes and the inflated sections.
/// Cheap to build (no parsing), so it is rebuilt whenever needed instead of being stored,
/// which would make `SymbolIndex` self-referential.
pub(super) fn load<'a>(data: &'a [u8], info: &'a ElfInfo, sections: &'a Sections) -> Dwarf<'a> {
    let endian = if info.little_endian {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let section = |id: SectionId| -> Result<Reader<'a>, Infallible> {
        let bytes = sections
            .inflated
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.as_slice())
            .or_else(|| {
                info.dwarf_sections.iter().find_map(|(i, s)| match s {
                    SectionSource::Plain(r) if *i == id => data.get(r.clone()),
                    _ => None,
                })
            })
            .unwrap_or(&[]);
        Ok(EndianSlice::new(bytes, endian))
    };
    match gimli::Dwarf::load(section) {
        Ok(dwarf) => dwarf,
        Err(never) => match never {},
    }
}

/// Opens a unit without parsing its line-program header (`gimli::Unit::new` always does, and
/// that header, a file table of hundreds of entries in a Rust unit, costs more than skipping
/// the unit's DIEs). `lines` parses it too.
pub(super) fn open_unit<'a>(
    dwarf: &Dwarf<'a>,
    header: gimli::UnitHeader<Reader<'a>>,
    lines: bool,
) -> gimli::Result<Unit<'a>> {
    if lines {
        return dwarf.unit(header);
    }
    let abbreviations = dwarf.abbreviations(&header)?;
    open_unit_with(dwarf, header, abbreviations)
}

/// `open_unit` with the abbreviations given.
fn open_unit_with<'a>(
    dwarf: &Dwarf<'a>,
    header: gimli::UnitHeader<Reader<'a>>,
    abbreviations: std::sync::Arc<gimli::Abbreviations>,
) -> gimli::Result<Unit<'a>> {
    let mut unit = gimli::Unit {
        abbreviations,
        name: None,
        comp_dir: None,
        low_pc: 0,
        str_offsets_base: gimli::DebugStrOffsetsBase::default_for_encoding_and_file(
            header.encoding(),
            dwarf.file_type,
        ),
        addr_base: gimli::DebugAddrBase(0),
        loclists_base: gimli::DebugLocListsBase::default_for_encoding_and_file(
            header.encoding(),
            dwarf.file_type,
        ),
        rnglists_base: gimli::DebugRngListsBase::default_for_encoding_and_file(
            header.encoding(),
            dwarf.file_type,
        ),
        line_program: None,
        dwo_id: None,
        header,
    };
    let (mut low_pc, mut comp_dir) = (None, None);
    {
        let mut entries = unit.header.entries_raw(&unit.abbreviations, None)?;
        let Some(abbrev) = entries.read_abbreviation()? else {
            return Err(gimli::Error::MissingUnitDie);
        };
        for spec in abbrev.attributes() {
            let attr = entries.read_attribute(*spec)?;
            match (attr.name(), attr.value()) {
                (gimli::DW_AT_low_pc, value) => low_pc = Some(value),
                (gimli::DW_AT_comp_dir, value) => comp_dir = Some(value),
                (gimli::DW_AT_str_offsets_base, AttributeValue::DebugStrOffsetsBase(b)) => {
                    unit.str_offsets_base = b;
                }
                (
                    gimli::DW_AT_addr_base | gimli::DW_AT_GNU_addr_base,
                    AttributeValue::DebugAddrBase(b),
                ) => unit.addr_base = b,
                (
                    gimli::DW_AT_rnglists_base | gimli::DW_AT_GNU_ranges_base,
                    AttributeValue::DebugRngListsBase(b),
                ) => unit.rnglists_base = b,
                (gimli::DW_AT_loclists_base, AttributeValue::DebugLocListsBase(b)) => {
                    unit.loclists_base = b;
                }
                _ => {}
            }
        }
    }
    unit.comp_dir = comp_dir.and_then(|v| dwarf.attr_string(&unit, v).ok());
    if let Some(value) = low_pc
        && let Ok(Some(address)) = dwarf.attr_address(&unit, value)
    {
        unit.low_pc = address;
    }
    Ok(unit)
}

/// A DIE name not yet looked up (see the module comment).
#[derive(Debug, Clone, Copy)]
pub(super) enum Name<'a> {
    /// `DW_FORM_string`: inline in `.debug_info`.
    Inline(&'a [u8]),
    /// Offset in `.debug_str` (`DW_FORM_strp`, or `strx` already mapped through the unit's
    /// string offsets table).
    Str(usize),
    /// Offset in `.debug_line_str`.
    LineStr(usize),
}

impl<'a> Name<'a> {
    /// The name's bytes (without the terminating NUL).
    pub(super) fn bytes(self, dwarf: &Dwarf<'a>) -> Option<&'a [u8]> {
        Some(match self {
            Name::Inline(b) => b,
            Name::Str(o) => dwarf
                .debug_str
                .get_str(gimli::DebugStrOffset(o))
                .ok()?
                .slice(),
            Name::LineStr(o) => dwarf
                .debug_line_str
                .get_str(gimli::DebugLineStrOffset(o))
                .ok()?
                .slice(),
        })
    }

    /// The name as text.
    pub(super) fn text(self, dwarf: &Dwarf<'a>) -> Option<String> {
        self.bytes(dwarf)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Whether the name is exactly `want`, reading no further than `want.len() + 1` bytes
    /// (cheaper than finding the end of every string).
    pub(super) fn is(self, dwarf: &Dwarf<'a>, want: &[u8]) -> bool {
        let (section, offset): (&[u8], usize) = match self {
            Name::Inline(b) => return b == want,
            Name::Str(o) => (dwarf.debug_str.reader().slice(), o),
            Name::LineStr(o) => (dwarf.debug_line_str.reader().slice(), o),
        };
        section
            .get(offset..offset + want.len() + 1)
            .is_some_and(|s| &s[..want.len()] == want && s[want.len()] == 0)
    }
}

/// One namespace-like scope met during the pass: a parent link and its name.
pub(super) struct Scope<'a> {
    pub parent: u32,
    pub name: Name<'a>,
}

/// One subprogram DIE met during the pass (with or without code).
pub(super) struct Rec<'a> {
    /// Global `.debug_info` offset of the DIE; records are pushed in increasing order, so
    /// specification/origin targets are found by binary search.
    pub offset: u64,
    pub name: Option<Name<'a>>,
    pub linkage: Option<Name<'a>>,
    pub scope: u32,
    pub refers: Option<u64>,
    pub decl_file: Option<u64>,
    pub decl_line: Option<u64>,
    pub code: Option<(u64, u64)>,
}

/// One `DW_TAG_inlined_subroutine`: a copy of `origin`'s code inside another function.
pub(super) struct Inl {
    /// Global offset of the abstract subprogram DIE it copies.
    pub origin: u64,
    /// `DW_AT_call_file` (an index in the unit's line-program file table).
    pub call_file: Option<u64>,
    /// `DW_AT_call_line`.
    pub call_line: u64,
    /// Index in `recs` of the outermost enclosing subprogram with code: the function whose
    /// machine code holds the copy.
    pub top: Option<u32>,
    /// Address of the copy (`DW_AT_entry_pc` or `DW_AT_low_pc`) when recorded.
    pub address: Option<u64>,
}

/// What one pass over one unit met.
pub(super) struct UnitScan<'a> {
    /// `.debug_info` offset of the unit.
    pub unit: u64,
    /// End of the unit in `.debug_info` (references beyond it are cross-unit).
    pub unit_end: u64,
    /// The unit is Rust.
    pub rust: bool,
    /// Index 0 is the root (global) scope.
    pub scopes: Vec<Scope<'a>>,
    pub recs: Vec<Rec<'a>>,
    /// Filled only when inlined subroutines are collected.
    pub inlines: Vec<Inl>,
}

impl<'a> UnitScan<'a> {
    pub(super) fn new() -> Self {
        UnitScan {
            unit: 0,
            unit_end: 0,
            rust: false,
            scopes: Vec::new(),
            recs: Vec::new(),
            inlines: Vec::new(),
        }
    }

    /// Empties the scan for the unit at `unit` (keeping the allocations).
    pub(super) fn reset(&mut self, unit: u64, unit_end: u64) {
        self.unit = unit;
        self.unit_end = unit_end;
        self.rust = false;
        self.scopes.clear();
        self.scopes.push(Scope {
            parent: 0,
            name: Name::Inline(b""),
        });
        self.recs.clear();
        self.inlines.clear();
    }

    /// The record of the subprogram DIE at global offset `offset`, if it is in this unit.
    pub(super) fn rec_at(&self, offset: u64) -> Option<usize> {
        let i = self.recs.partition_point(|r| r.offset < offset);
        self.recs.get(i).filter(|r| r.offset == offset).map(|_| i)
    }

    /// Name, linkage name, declaration and scope of record `index`, inherited along its
    /// specification/origin links (a definition restates only what differs from its
    /// declaration; the declaration's scope is the one that counts: C++ out-of-line members
    /// and Rust inherent methods are defined at unit level but declared inside their type).
    pub(super) fn resolved(&self, index: usize) -> Resolved<'a> {
        let rec = &self.recs[index];
        let mut out = Resolved {
            name: rec.name,
            linkage: rec.linkage,
            scope: rec.scope,
            decl_file: rec.decl_file,
            decl_line: rec.decl_line,
            foreign: None,
        };
        let mut next = rec.refers;
        for _ in 0..8 {
            let Some(target) = next else { break };
            let Some(i) = self.rec_at(target) else {
                if target < self.unit || target >= self.unit_end {
                    out.foreign = Some(target);
                }
                break;
            };
            let t = &self.recs[i];
            out.name = out.name.or(t.name);
            out.linkage = out.linkage.or(t.linkage);
            out.decl_file = out.decl_file.or(t.decl_file);
            out.decl_line = out.decl_line.or(t.decl_line);
            out.scope = t.scope;
            next = t.refers;
        }
        out
    }

    /// `a::b` for a scope id, walking parent links up to the root.
    pub(super) fn scope_path(&self, dwarf: &Dwarf<'a>, mut id: u32) -> String {
        let mut parts = Vec::new();
        while id != 0 {
            let scope = &self.scopes[id as usize];
            parts.push(scope.name.text(dwarf).unwrap_or_default());
            id = scope.parent;
        }
        parts.reverse();
        parts.join("::")
    }
}

/// A record's identity after following its links.
pub(super) struct Resolved<'a> {
    pub name: Option<Name<'a>>,
    pub linkage: Option<Name<'a>>,
    pub scope: u32,
    pub decl_file: Option<u64>,
    pub decl_line: Option<u64>,
    /// A link into another unit (LTO, DWZ) that could not be followed here.
    pub foreign: Option<u64>,
}

/// `DW_AT_high_pc` is either an address or (DWARF 4+) a length from `DW_AT_low_pc`.
enum HighPc {
    Addr(u64),
    Len(u64),
}

/// Parsed abbreviation tables by offset. Units of one object file share a table (rustc's
/// ThinLTO puts many units in one object), so each is parsed once per pass, not once per unit.
#[derive(Default)]
pub(super) struct Abbrevs {
    tables: FxHashMap<usize, std::sync::Arc<gimli::Abbreviations>>,
}

impl Abbrevs {
    /// Opens a unit (without its line-program header) with a cached abbreviation table.
    pub(super) fn open<'a>(
        &mut self,
        dwarf: &Dwarf<'a>,
        header: gimli::UnitHeader<Reader<'a>>,
    ) -> gimli::Result<Unit<'a>> {
        let offset = header.debug_abbrev_offset();
        let table = match self.tables.get(&offset.0) {
            Some(t) => t.clone(),
            None => {
                let t = std::sync::Arc::new(dwarf.debug_abbrev.abbreviations(offset)?);
                // Units using one table are neighbours: a small cache keeps memory flat.
                if self.tables.len() >= 64 {
                    self.tables.clear();
                }
                self.tables.insert(offset.0, t.clone());
                t
            }
        };
        open_unit_with(dwarf, header, table)
    }
}

/// Every unit header of `.debug_info`, with the unit's size in bytes.
pub(super) fn unit_headers<'a>(dwarf: &Dwarf<'a>) -> Vec<gimli::UnitHeader<Reader<'a>>> {
    let mut out = Vec::new();
    let mut headers = dwarf.units();
    while let Ok(Some(header)) = headers.next() {
        if header.debug_info_offset().is_some() {
            out.push(header);
        }
    }
    out
}

/// `.debug_info` offset of a unit.
pub(super) fn unit_offset(header: &gimli::UnitHeader<Reader<'_>>) -> u64 {
    header.debug_info_offset().map_or(0, |o| o.0 as u64)
}

/// How many threads a pass over `bytes` of `.debug_info` should use: every core for a large
/// file, one for a small one (spawning would cost more than it saves).
pub(super) fn threads_for(bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.min(bytes / (2 << 20)).clamp(1, 16)
}

/// Splits `headers` into at most `n` contiguous runs of about equal byte size.
pub(super) fn split_units<'h, 'a>(
    headers: &'h [gimli::UnitHeader<Reader<'a>>],
    n: usize,
) -> Vec<&'h [gimli::UnitHeader<Reader<'a>>]> {
    let total: u64 = headers
        .iter()
        .map(|h| h.length_including_self() as u64)
        .sum();
    let per = total / n.max(1) as u64 + 1;
    let mut out = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, h) in headers.iter().enumerate() {
        acc += h.length_including_self() as u64;
        if acc >= per && out.len() + 1 < n {
            out.push(&headers[start..=i]);
            start = i + 1;
            acc = 0;
        }
    }
    if start < headers.len() {
        out.push(&headers[start..]);
    }
    out
}

/// All code-bearing subprograms of one file.
pub(super) struct DwarfIndex {
    /// Sorted by `low`.
    pub subprograms: Vec<Subprogram>,
}

impl DwarfIndex {
    /// An index for a file without DWARF.
    pub(super) fn empty() -> Self {
        DwarfIndex {
            subprograms: Vec::new(),
        }
    }

    /// Parses all units, on every core. Never fails: a malformed unit ends that unit's
    /// contribution only, so a damaged debug section degrades names and locations instead of
    /// making the file unusable.
    pub(super) fn build(dwarf: &Dwarf<'_>) -> Self {
        let headers = unit_headers(dwarf);
        let threads = threads_for(dwarf.debug_info.reader().len());
        let chunks = split_units(&headers, threads);
        let mut subprograms: Vec<Subprogram> = if chunks.len() <= 1 {
            scan_headers(dwarf, &headers)
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .iter()
                    .map(|chunk| s.spawn(move || scan_headers(dwarf, chunk)))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        };
        subprograms.sort_by_key(|s| s.low);
        DwarfIndex { subprograms }
    }

    /// Indices of the subprograms whose entry is exactly `address`.
    pub(super) fn at(&self, address: u64) -> std::ops::Range<usize> {
        let start = self.subprograms.partition_point(|s| s.low < address);
        let end = self.subprograms.partition_point(|s| s.low <= address);
        start..end
    }

    /// The subprogram whose entry range contains `vaddr` (the innermost start wins).
    pub(super) fn containing(&self, vaddr: u64) -> Option<usize> {
        let end = self.subprograms.partition_point(|s| s.low <= vaddr);
        (0..end)
            .rev()
            .take(64)
            .find(|&i| vaddr < self.subprograms[i].high)
    }
}

/// The code-bearing subprograms of the units at these `.debug_info` offsets.
pub(super) fn scan_units(dwarf: &Dwarf<'_>, offsets: &[u64]) -> Vec<Subprogram> {
    let headers: Vec<_> = offsets
        .iter()
        .filter_map(|&o| dwarf.unit_header(gimli::DebugInfoOffset(o as usize)).ok())
        .collect();
    let mut out = scan_headers(dwarf, &headers);
    out.sort_by_key(|s| s.low);
    out
}

fn scan_headers<'a>(
    dwarf: &Dwarf<'a>,
    headers: &[gimli::UnitHeader<Reader<'a>>],
) -> Vec<Subprogram> {
    let mut out = Vec::new();
    let mut scan = UnitScan::new();
    let mut foreign = Foreign::new();
    let mut abbrevs = Abbrevs::default();
    for header in headers {
        let offset = unit_offset(header);
        let end = offset + header.length_including_self() as u64;
        let Ok(unit) = abbrevs.open(dwarf, *header) else {
            continue;
        };
        scan.reset(offset, end);
        // An error inside a unit keeps what was read before it.
        let _ = scan_unit(dwarf, &unit, &mut scan, false);
        finish_unit(dwarf, &scan, &mut foreign, &mut out);
    }
    out
}

/// Reads one unit's DIEs, recording scopes and subprograms (and, with `inlines`, inlined
/// subroutines with the function holding each).
pub(super) fn scan_unit<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    scan: &mut UnitScan<'a>,
    inlines: bool,
) -> gimli::Result<()> {
    let base = scan.unit;
    let mut entries = unit.entries_raw(None)?;
    // (depth of the scope DIE, scope id) for the scopes enclosing the current DIE.
    let mut stack: Vec<(isize, u32)> = Vec::new();
    // (depth, rec index) of the outermost enclosing subprogram with code.
    let mut top: Option<(isize, u32)> = None;
    while !entries.is_empty() {
        let depth = entries.next_depth();
        let offset = entries.next_offset();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        while stack.last().is_some_and(|&(d, _)| d >= depth) {
            stack.pop();
        }
        if top.is_some_and(|(d, _)| d >= depth) {
            top = None;
        }
        let parent = stack.last().map_or(0, |&(_, s)| s);
        match abbrev.tag() {
            gimli::DW_TAG_compile_unit | gimli::DW_TAG_partial_unit => {
                for spec in abbrev.attributes() {
                    let attr = entries.read_attribute(*spec)?;
                    if attr.name() == gimli::DW_AT_language
                        && let AttributeValue::Language(lang) = attr.value()
                    {
                        scan.rust = lang == gimli::DW_LANG_Rust;
                    }
                }
            }
            gimli::DW_TAG_namespace
            | gimli::DW_TAG_structure_type
            | gimli::DW_TAG_class_type
            | gimli::DW_TAG_union_type
            | gimli::DW_TAG_enumeration_type
            | gimli::DW_TAG_interface_type => {
                if !abbrev.has_children() {
                    // Opens no scope, so its name is never needed.
                    entries.skip_attributes(abbrev.attributes())?;
                    continue;
                }
                let id = match read_scope_name(dwarf, unit, &mut entries, abbrev)? {
                    Some(name) => {
                        scan.scopes.push(Scope { parent, name });
                        (scan.scopes.len() - 1) as u32
                    }
                    // An anonymous struct adds no segment.
                    None => parent,
                };
                stack.push((depth, id));
            }
            gimli::DW_TAG_subprogram => {
                let rec = read_subprogram(dwarf, unit, &mut entries, abbrev, base, offset, parent)?;
                if rec.code.is_some() && top.is_none() {
                    top = Some((depth, scan.recs.len() as u32));
                }
                scan.recs.push(rec);
            }
            gimli::DW_TAG_inlined_subroutine if inlines => {
                let top = top.map(|(_, r)| r);
                if let Some(inl) = read_inlined(dwarf, unit, &mut entries, abbrev, base, top)? {
                    scan.inlines.push(inl);
                }
            }
            _ => entries.skip_attributes(abbrev.attributes())?,
        }
    }
    Ok(())
}

/// The DIEs of one unit, read attribute by attribute.
type Entries<'u, 'a> = gimli::EntriesRaw<'u, Reader<'a>>;

/// The name of a scope DIE (namespace, struct, class, union, enum); an anonymous namespace is
/// named as C++ demanglers print it; another anonymous scope has none.
fn read_scope_name<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    entries: &mut Entries<'_, 'a>,
    abbrev: &gimli::Abbreviation,
) -> gimli::Result<Option<Name<'a>>> {
    let mut name = None;
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        if attr.name() == gimli::DW_AT_name {
            name = lazy_name(dwarf, unit, attr.value());
        }
    }
    if name.is_none() && abbrev.tag() == gimli::DW_TAG_namespace {
        // What C++ demanglers print for `_GLOBAL__N_1`.
        name = Some(Name::Inline(b"(anonymous namespace)"));
    }
    Ok(name)
}

/// A subprogram DIE at `offset` of the unit at `base`, in scope `parent`: its names, what it
/// refers to, where it is declared, and its code range (none for a declaration, or for a
/// function the linker discarded).
fn read_subprogram<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    entries: &mut Entries<'_, 'a>,
    abbrev: &gimli::Abbreviation,
    base: u64,
    offset: gimli::UnitOffset,
    parent: u32,
) -> gimli::Result<Rec<'a>> {
    let mut rec = Rec {
        offset: base + offset.0 as u64,
        name: None,
        linkage: None,
        scope: parent,
        refers: None,
        decl_file: None,
        decl_line: None,
        code: None,
    };
    let (mut low, mut high, mut ranges, mut entry_pc) = (None, None, None, None);
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        match attr.name() {
            gimli::DW_AT_name => {
                rec.name = lazy_name(dwarf, unit, attr.value());
            }
            gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                rec.linkage = lazy_name(dwarf, unit, attr.value());
            }
            gimli::DW_AT_low_pc => {
                low = dwarf.attr_address(unit, attr.value()).ok().flatten();
            }
            gimli::DW_AT_high_pc => {
                high = match attr.value() {
                    AttributeValue::Udata(len) => Some(HighPc::Len(len)),
                    value => dwarf
                        .attr_address(unit, value)
                        .ok()
                        .flatten()
                        .map(HighPc::Addr),
                };
            }
            gimli::DW_AT_ranges => ranges = Some(attr.value()),
            gimli::DW_AT_entry_pc => {
                entry_pc = dwarf.attr_address(unit, attr.value()).ok().flatten();
            }
            gimli::DW_AT_specification | gimli::DW_AT_abstract_origin => {
                rec.refers = die_ref(base, attr.value());
            }
            gimli::DW_AT_decl_file => {
                rec.decl_file = match attr.value() {
                    AttributeValue::FileIndex(i) => Some(i),
                    other => other.udata_value(),
                };
            }
            gimli::DW_AT_decl_line => rec.decl_line = attr.udata_value(),
            _ => {}
        }
    }
    rec.code = match (low, high) {
        (Some(low), Some(HighPc::Addr(high))) => Some((low, high)),
        (Some(low), Some(HighPc::Len(len))) => Some((low, low.wrapping_add(len))),
        _ => ranges.and_then(|r| entry_range(dwarf, unit, r, entry_pc.or(low))),
    };
    // Functions discarded by the linker keep their DWARF with address 0 or a tombstone; address
    // 0 never holds code in an executable or shared object.
    rec.code = rec
        .code
        .filter(|&(l, h)| l != 0 && h > l && !unit.header.is_tombstone_address(l));
    Ok(rec)
}

/// An inlined-subroutine DIE: the function it is a copy of, the call's file and line, where the
/// copy starts, and `top`, the subprogram holding it. None without an abstract origin.
fn read_inlined<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    entries: &mut Entries<'_, 'a>,
    abbrev: &gimli::Abbreviation,
    base: u64,
    top: Option<u32>,
) -> gimli::Result<Option<Inl>> {
    let mut inl = Inl {
        origin: u64::MAX,
        call_file: None,
        call_line: 0,
        top,
        address: None,
    };
    let (mut low, mut entry_pc) = (None, None);
    for spec in abbrev.attributes() {
        let attr = entries.read_attribute(*spec)?;
        match attr.name() {
            gimli::DW_AT_abstract_origin => {
                inl.origin = die_ref(base, attr.value()).unwrap_or(u64::MAX);
            }
            gimli::DW_AT_call_file => {
                inl.call_file = match attr.value() {
                    AttributeValue::FileIndex(i) => Some(i),
                    other => other.udata_value(),
                };
            }
            gimli::DW_AT_call_line => inl.call_line = attr.udata_value().unwrap_or(0),
            gimli::DW_AT_low_pc => low = Some(attr.value()),
            gimli::DW_AT_entry_pc => entry_pc = Some(attr.value()),
            _ => {}
        }
    }
    if inl.origin == u64::MAX {
        return Ok(None);
    }
    inl.address = entry_pc
        .or(low)
        .and_then(|v| dwarf.attr_address(unit, v).ok().flatten());
    Ok(Some(inl))
}

/// A reference attribute as a global `.debug_info` offset.
fn die_ref(base: u64, value: AttributeValue<Reader<'_>>) -> Option<u64> {
    match value {
        AttributeValue::UnitRef(o) => Some(base + o.0 as u64),
        AttributeValue::DebugInfoRef(o) => Some(o.0 as u64),
        _ => None,
    }
}

/// For a subprogram described by `DW_AT_ranges` (hot/cold split functions): the range holding
/// the entry point, or the first range when the entry is not recorded (GCC lists it first).
fn entry_range(
    dwarf: &Dwarf<'_>,
    unit: &Unit<'_>,
    value: AttributeValue<Reader<'_>>,
    entry: Option<u64>,
) -> Option<(u64, u64)> {
    let mut iter = dwarf.attr_ranges(unit, value).ok()??;
    let mut first = None;
    while let Ok(Some(range)) = iter.next() {
        if range.begin >= range.end {
            continue;
        }
        match entry {
            Some(e) if range.begin <= e && e < range.end => return Some((range.begin, range.end)),
            _ => {}
        }
        first.get_or_insert((range.begin, range.end));
    }
    first
}

/// Subprogram DIEs of other units, for links that cross units (`DW_FORM_ref_addr`): rustc's
/// ThinLTO across a crate's codegen units makes a function's out-of-line copy and its inlined
/// copies refer to the abstract DIE in the unit that defined it. The units such links reach are
/// scanned once (subprograms and scopes only) and kept while the pass needs them.
pub(super) struct Foreign<'a> {
    /// (start, end) of every unit, sorted; read on the first cross-unit link.
    units: Option<Vec<(u64, u64)>>,
    scans: FxHashMap<u64, UnitScan<'a>>,
    /// Most recently scanned last, for eviction.
    order: std::collections::VecDeque<u64>,
    /// An evicted scan, whose buffers the next one reuses.
    spare: Option<UnitScan<'a>>,
    abbrevs: Abbrevs,
}

/// How many foreign units a pass keeps scanned.
const FOREIGN_UNITS: usize = 8;

impl<'a> Foreign<'a> {
    pub(super) fn new() -> Self {
        Foreign {
            units: None,
            scans: FxHashMap::default(),
            order: std::collections::VecDeque::new(),
            spare: None,
            abbrevs: Abbrevs::default(),
        }
    }

    /// The scan of the unit holding the DIE at global offset `offset`, and the record of that
    /// DIE in it (None when it is not a subprogram DIE).
    pub(super) fn lookup(
        &mut self,
        dwarf: &Dwarf<'a>,
        offset: u64,
    ) -> Option<(&UnitScan<'a>, usize)> {
        let units = self.units.get_or_insert_with(|| {
            unit_headers(dwarf)
                .iter()
                .map(|h| {
                    let start = unit_offset(h);
                    (start, start + h.length_including_self() as u64)
                })
                .collect()
        });
        let i = units.partition_point(|u| u.0 <= offset).checked_sub(1)?;
        let (start, end) = units[i];
        if offset >= end {
            return None;
        }
        if !self.scans.contains_key(&start) {
            if self.order.len() >= FOREIGN_UNITS
                && let Some(old) = self.order.pop_front()
            {
                self.spare = self.scans.remove(&old);
            }
            let header = dwarf
                .unit_header(gimli::DebugInfoOffset(start as usize))
                .ok()?;
            let unit = self.abbrevs.open(dwarf, header).ok()?;
            let mut scan = self.spare.take().unwrap_or_else(UnitScan::new);
            scan.reset(start, end);
            let _ = scan_unit(dwarf, &unit, &mut scan, false);
            self.scans.insert(start, scan);
            self.order.push_back(start);
        }
        let scan = self.scans.get(&start)?;
        let index = scan.rec_at(offset)?;
        Some((scan, index))
    }
}

/// A subprogram's identity after following its links, within its unit and (once) into another.
pub(super) struct Identity {
    /// `scope::name`.
    pub qualified: Option<String>,
    /// Rust generic instances in turbofish form (`app::widen::<u32>`).
    pub generic: Option<String>,
    pub linkage: Option<String>,
    pub decl_file: Option<(u64, u64)>,
    pub decl_line: Option<u64>,
    /// The unit holding the DIE that names it (see [`Subprogram::home_unit`]).
    pub home_unit: u64,
}

/// The identity of record `index` of `scan` (names are read here: callers filter with
/// `Name::is` first where they can).
pub(super) fn identity<'a>(
    dwarf: &Dwarf<'a>,
    scan: &UnitScan<'a>,
    index: usize,
    foreign: Option<&mut Foreign<'a>>,
    scope_paths: &mut FxHashMap<u32, String>,
) -> Identity {
    let r = scan.resolved(index);
    let (mut name, mut linkage) = (r.name, r.linkage);
    let mut decl_file = r.decl_file.map(|f| (scan.unit, f));
    let mut decl_line = r.decl_line;
    let mut prefix = None;
    let mut home_unit = scan.unit;
    if let (Some(target), Some(foreign)) = (r.foreign, foreign)
        && let Some((other, i)) = foreign.lookup(dwarf, target)
    {
        home_unit = other.unit;
        let o = other.resolved(i);
        name = name.or(o.name);
        linkage = linkage.or(o.linkage);
        if decl_file.is_none() {
            decl_file = o.decl_file.map(|f| (other.unit, f));
        }
        decl_line = decl_line.or(o.decl_line);
        prefix = Some(other.scope_path(dwarf, o.scope));
    }
    let prefix = match prefix {
        Some(p) => p,
        None => scope_paths
            .entry(r.scope)
            .or_insert_with(|| scan.scope_path(dwarf, r.scope))
            .clone(),
    };
    let name = name.and_then(|n| n.text(dwarf));
    let qualified = name.as_ref().map(|n| {
        if prefix.is_empty() {
            n.clone()
        } else {
            format!("{prefix}::{n}")
        }
    });
    let generic = match (scan.rust, &name) {
        (true, Some(n)) => rust_generic_form(&prefix, n),
        _ => None,
    };
    Identity {
        qualified,
        generic,
        linkage: linkage.and_then(|n| n.text(dwarf)),
        decl_file,
        decl_line,
        home_unit,
    }
}

/// Turns the code-bearing records of one unit into `Subprogram`s.
fn finish_unit<'a>(
    dwarf: &Dwarf<'a>,
    scan: &UnitScan<'a>,
    foreign: &mut Foreign<'a>,
    out: &mut Vec<Subprogram>,
) {
    let mut scope_paths: FxHashMap<u32, String> = FxHashMap::default();
    for (index, rec) in scan.recs.iter().enumerate() {
        let Some((low, high)) = rec.code else {
            continue;
        };
        let id = identity(dwarf, scan, index, Some(&mut *foreign), &mut scope_paths);
        out.push(Subprogram {
            low,
            high,
            name: id.qualified.map(Into::into),
            generic_name: id.generic.map(Into::into),
            linkage: id.linkage.map(Into::into),
            unit: scan.unit,
            home_unit: id.home_unit,
            die: rec.offset,
            decl_file: id.decl_file,
            decl_line: id.decl_line,
            rust: scan.rust,
        });
    }
}

/// Records where a DIE name is without reading it (see `Name`).
pub(super) fn lazy_name<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    value: AttributeValue<Reader<'a>>,
) -> Option<Name<'a>> {
    match value {
        AttributeValue::String(s) => Some(Name::Inline(s.slice())),
        AttributeValue::DebugStrRef(o) => Some(Name::Str(o.0)),
        AttributeValue::DebugStrOffsetsIndex(i) => dwarf
            .debug_str_offsets
            .get_str_offset(unit.format(), unit.str_offsets_base, i)
            .ok()
            .map(|o| Name::Str(o.0)),
        AttributeValue::DebugLineStrRef(o) => Some(Name::LineStr(o.0)),
        _ => None,
    }
}

/// rustc names a generic instance `gen<u32>` in DWARF; Rust source and v0 symbols write
/// `gen::<u32>`. Returns the qualified turbofish form, or None for a non-generic name.
pub(super) fn rust_generic_form(prefix: &str, name: &str) -> Option<String> {
    let lt = name.find('<').filter(|&i| i > 0 && name.ends_with('>'))?;
    let (base, args) = name.split_at(lt);
    Some(if prefix.is_empty() {
        format!("{base}::{args}")
    } else {
        format!("{prefix}::{base}::{args}")
    })
}

/// Address ranges of every unit, to read only the unit describing an address.
#[derive(Default)]
pub(super) struct UnitTable {
    /// (low, high, unit offset), sorted by low; adjacent ranges of one unit merged.
    ranges: Vec<(u64, u64, u64)>,
}

impl UnitTable {
    /// From `.debug_aranges` for the units it lists (GCC writes it; rustc does not), and from
    /// each other unit's root DIE (`DW_AT_low_pc`/`high_pc`/`ranges`), on every core.
    /// `release` is called every few hundred units, to give back the pages read so far.
    pub(super) fn build(dwarf: &Dwarf<'_>, release: &(dyn Fn() + Sync)) -> Self {
        let mut ranges = Vec::new();
        let mut listed = super::hash::FxHashSet::default();
        let mut aranges = dwarf.debug_aranges.headers();
        while let Ok(Some(header)) = aranges.next() {
            let unit = header.debug_info_offset().0 as u64;
            let mut entries = header.entries();
            while let Ok(Some(entry)) = entries.next() {
                let r = entry.range();
                if r.begin != 0 && r.end > r.begin {
                    ranges.push((r.begin, r.end, unit));
                    listed.insert(unit);
                }
            }
        }
        let headers: Vec<_> = unit_headers(dwarf)
            .into_iter()
            .filter(|h| !listed.contains(&unit_offset(h)))
            .collect();
        let threads = threads_for(
            headers
                .iter()
                .map(|h| h.length_including_self())
                .sum::<usize>(),
        );
        let read = |chunk: &[gimli::UnitHeader<Reader<'_>>]| {
            let mut out = Vec::new();
            let mut abbrevs = Abbrevs::default();
            for (n, header) in chunk.iter().enumerate() {
                if n % 512 == 511 {
                    release();
                }
                let offset = unit_offset(header);
                let Ok(unit) = abbrevs.open(dwarf, *header) else {
                    continue;
                };
                let Ok(mut iter) = dwarf.unit_ranges(&unit) else {
                    continue;
                };
                while let Ok(Some(r)) = iter.next() {
                    if r.begin != 0 && r.end > r.begin && !unit.header.is_tombstone_address(r.begin)
                    {
                        out.push((r.begin, r.end, offset));
                    }
                }
            }
            out
        };
        let chunks = split_units(&headers, threads);
        if chunks.len() <= 1 {
            ranges.extend(read(&headers));
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunks.iter().map(|c| s.spawn(|| read(c))).collect();
                for h in handles {
                    ranges.extend(h.join().unwrap_or_default());
                }
            });
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64, u64)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if last.2 == r.2 && last.1 >= r.0 => last.1 = last.1.max(r.1),
                _ => merged.push(r),
            }
        }
        UnitTable { ranges: merged }
    }

    /// The units whose ranges contain `address` (normally one).
    pub(super) fn units_containing(&self, address: u64) -> Vec<u64> {
        let end = self.ranges.partition_point(|r| r.0 <= address);
        let mut out: Vec<u64> = self.ranges[..end]
            .iter()
            .rev()
            .take(64)
            .filter(|r| address < r.1)
            .map(|r| r.2)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// `file:line` of a subprogram: its declaration if recorded, else the first line-table row
/// inside its entry range. Parses one unit header and, for the fallback, one line program.
pub(super) fn location(dwarf: &Dwarf<'_>, sub: &Subprogram) -> Option<String> {
    if let (Some((unit_offset, file_index)), Some(line)) = (sub.decl_file, sub.decl_line)
        && let Some(unit) = full_unit(dwarf, unit_offset)
        && let Some(path) = file_name(dwarf, &unit, file_index)
    {
        return Some(format!("{path}:{line}"));
    }
    let unit = full_unit(dwarf, sub.unit)?;
    let program = unit.line_program.clone()?;
    let mut rows = program.rows();
    while let Ok(Some((header, row))) = rows.next_row() {
        if row.end_sequence() || row.address() < sub.low || row.address() >= sub.high {
            continue;
        }
        let (Some(line), Some(file)) = (row.line(), row.file(header)) else {
            continue;
        };
        let path = file_path(dwarf, &unit, header, file)?;
        return Some(format!("{path}:{line}"));
    }
    None
}

/// The unit at `.debug_info` offset `offset`, with its line-program header.
pub(super) fn full_unit<'a>(dwarf: &Dwarf<'a>, offset: u64) -> Option<Unit<'a>> {
    let header = dwarf
        .unit_header(gimli::DebugInfoOffset(offset as usize))
        .ok()?;
    dwarf.unit(header).ok()
}

/// The path of file `index` of a unit's line-program file table.
pub(super) fn file_name(dwarf: &Dwarf<'_>, unit: &Unit<'_>, index: u64) -> Option<String> {
    let program = unit.line_program.as_ref()?;
    let file = program.header().file(index)?;
    file_path(dwarf, unit, program.header(), file)
}

/// The path of a line-table file entry: absolute as recorded, else joined with its directory
/// and, when that is still relative, with the unit's `DW_AT_comp_dir`.
fn file_path<'a>(
    dwarf: &Dwarf<'a>,
    unit: &Unit<'a>,
    header: &gimli::LineProgramHeader<Reader<'a>>,
    file: &gimli::FileEntry<Reader<'a>>,
) -> Option<String> {
    let string = |value| {
        dwarf
            .attr_string(unit, value)
            .ok()
            .map(|s| String::from_utf8_lossy(s.slice()).into_owned())
    };
    let name = string(file.path_name())?;
    let mut path = PathBuf::new();
    if let Some(dir) = file.directory(header).and_then(string) {
        path.push(dir);
    }
    if path.is_relative()
        && let Some(comp_dir) = &unit.comp_dir
    {
        path = PathBuf::from(String::from_utf8_lossy(comp_dir.slice()).into_owned()).join(path);
    }
    path.push(name);
    Some(path.to_string_lossy().into_owned())
}
