//! DWARF index: every subprogram that has machine code, with its qualified source name.
//!
//! Built once, lazily, by a single streaming pass over `.debug_info` with gimli's raw entry
//! reader: only namespace-like DIEs (for the scope path) and subprograms have their attributes
//! decoded, everything else is skipped. During the pass names are only *located* (a string
//! offset), not read: most named DIEs are types that hold no code, and finding the end of a
//! string is the costly part. Strings are allocated only for code-bearing subprograms. File and
//! line are kept as indices and turned into `file:line` text only for the functions a caller
//! actually asks about, because that needs the unit's line-program header.

use std::convert::Infallible;
use std::path::PathBuf;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, SectionId};

use super::elf::{ElfInfo, SectionSource};
use super::hash::FxHashMap;

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

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
    /// Index of the unit that holds the code DIE (for the line-table fallback).
    unit: u32,
    /// Declared file: (unit whose file table the index refers to, file index).
    decl_file: Option<(u32, u64)>,
    /// Declared line.
    decl_line: Option<u64>,
}

/// All code-bearing subprograms of one file, plus the inflated bytes of compressed sections.
pub(super) struct DwarfIndex {
    /// Decompressed copies of compressed debug sections (empty for uncompressed files).
    inflated: Vec<(SectionId, Vec<u8>)>,
    /// `.debug_info` offsets of unit headers, indexed by the `unit` fields above.
    units: Vec<usize>,
    /// Sorted by `low`.
    pub subprograms: Vec<Subprogram>,
}

/// A DIE name not yet looked up (see the module comment).
#[derive(Debug, Clone, Copy)]
enum Name<'a> {
    /// `DW_FORM_string`: inline in `.debug_info`.
    Inline(&'a [u8]),
    /// Offset in `.debug_str` (`DW_FORM_strp`, or `strx` already mapped through the unit's
    /// string offsets table).
    Str(usize),
    /// Offset in `.debug_line_str`.
    LineStr(usize),
}

/// One namespace-like scope met during the pass: a parent link and its name.
struct Scope<'a> {
    parent: u32,
    name: Name<'a>,
}

/// One subprogram DIE met during the pass (with or without code).
struct Rec<'a> {
    /// Global `.debug_info` offset of the DIE; records are pushed in increasing order, so
    /// specification/origin targets are found by binary search.
    offset: u64,
    name: Option<Name<'a>>,
    linkage: Option<Name<'a>>,
    scope: u32,
    refers: Option<u64>,
    decl_file: Option<(u32, u64)>,
    decl_line: Option<u64>,
    code: Option<(u64, u64)>,
    unit: u32,
    rust: bool,
}

/// Mutable state of the pass over all units.
#[derive(Default)]
struct Scan<'a> {
    /// Index 0 is the root (global) scope.
    scopes: Vec<Scope<'a>>,
    recs: Vec<Rec<'a>>,
    units: Vec<usize>,
}

/// `DW_AT_high_pc` is either an address or (DWARF 4+) a length from `DW_AT_low_pc`.
enum HighPc {
    Addr(u64),
    Len(u64),
}

impl DwarfIndex {
    /// An index for a file without DWARF.
    pub(super) fn empty() -> Self {
        DwarfIndex {
            inflated: Vec::new(),
            units: Vec::new(),
            subprograms: Vec::new(),
        }
    }

    /// Parses all units. Never fails: a malformed unit ends that unit's contribution only, so a
    /// damaged debug section degrades names and locations instead of making the file unusable.
    pub(super) fn build(data: &[u8], info: &ElfInfo) -> Self {
        if !info
            .dwarf_sections
            .iter()
            .any(|(id, _)| *id == SectionId::DebugInfo)
        {
            return Self::empty();
        }
        let mut inflated = Vec::new();
        for (id, source) in &info.dwarf_sections {
            if let SectionSource::Compressed(range) = source
                && let Ok(bytes) = range.data(data).and_then(|c| c.decompress())
            {
                inflated.push((*id, bytes.into_owned()));
            }
        }
        let (units, subprograms) = {
            let dwarf = load_dwarf(data, info, &inflated);
            let mut scan = Scan::default();
            scan.scopes.push(Scope {
                parent: 0,
                name: Name::Inline(b""),
            });
            let mut headers = dwarf.units();
            while let Ok(Some(header)) = headers.next() {
                let Some(base) = header.debug_info_offset() else {
                    continue;
                };
                let Ok(unit) = dwarf.unit(header) else {
                    continue;
                };
                let unit_index = scan.units.len() as u32;
                scan.units.push(base.0);
                // An error inside a unit keeps what was read before it.
                let _ = scan_unit(&dwarf, &unit, base.0 as u64, unit_index, &mut scan);
            }
            let subprograms = finish(&dwarf, &scan);
            (scan.units, subprograms)
        };
        DwarfIndex {
            inflated,
            units,
            subprograms,
        }
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

    /// `file:line` of a subprogram: its declaration if recorded, else the first line-table row
    /// inside its entry range. Parses one unit header and, for the fallback, one line program.
    pub(super) fn location(&self, data: &[u8], info: &ElfInfo, sub: &Subprogram) -> Option<String> {
        let dwarf = load_dwarf(data, info, &self.inflated);
        if let (Some((unit_index, file_index)), Some(line)) = (sub.decl_file, sub.decl_line)
            && let Some(unit) = self.unit(&dwarf, unit_index)
            && let Some(program) = &unit.line_program
            && let Some(file) = program.header().file(file_index)
            && let Some(path) = file_path(&dwarf, &unit, program.header(), file)
        {
            return Some(format!("{path}:{line}"));
        }
        let unit = self.unit(&dwarf, sub.unit)?;
        let program = unit.line_program.clone()?;
        let mut rows = program.rows();
        while let Ok(Some((header, row))) = rows.next_row() {
            if row.end_sequence() || row.address() < sub.low || row.address() >= sub.high {
                continue;
            }
            let (Some(line), Some(file)) = (row.line(), row.file(header)) else {
                continue;
            };
            let path = file_path(&dwarf, &unit, header, file)?;
            return Some(format!("{path}:{line}"));
        }
        None
    }

    fn unit<'a>(
        &self,
        dwarf: &gimli::Dwarf<Reader<'a>>,
        index: u32,
    ) -> Option<gimli::Unit<Reader<'a>>> {
        let offset = *self.units.get(index as usize)?;
        let header = dwarf.unit_header(gimli::DebugInfoOffset(offset)).ok()?;
        dwarf.unit(header).ok()
    }
}

/// A gimli view of the file's DWARF, borrowing the file bytes and the inflated sections.
/// Cheap to build (no parsing), so it is rebuilt whenever needed instead of being stored,
/// which would make `SymbolIndex` self-referential.
fn load_dwarf<'a>(
    data: &'a [u8],
    info: &'a ElfInfo,
    inflated: &'a [(SectionId, Vec<u8>)],
) -> gimli::Dwarf<Reader<'a>> {
    let endian = if info.little_endian {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let section = |id: SectionId| -> Result<Reader<'a>, Infallible> {
        let bytes = inflated
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

/// Reads one unit's DIEs, recording scopes and subprograms.
fn scan_unit<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    unit: &gimli::Unit<Reader<'a>>,
    base: u64,
    unit_index: u32,
    scan: &mut Scan<'a>,
) -> gimli::Result<()> {
    let mut entries = unit.entries_raw(None)?;
    // (depth of the scope DIE, scope id) for the scopes enclosing the current DIE.
    let mut stack: Vec<(isize, u32)> = Vec::new();
    let mut rust = false;
    while !entries.is_empty() {
        let depth = entries.next_depth();
        let offset = entries.next_offset();
        let Some(abbrev) = entries.read_abbreviation()? else {
            continue;
        };
        while stack.last().is_some_and(|&(d, _)| d >= depth) {
            stack.pop();
        }
        let parent = stack.last().map_or(0, |&(_, s)| s);
        match abbrev.tag() {
            gimli::DW_TAG_compile_unit | gimli::DW_TAG_partial_unit => {
                for spec in abbrev.attributes() {
                    let attr = entries.read_attribute(*spec)?;
                    if attr.name() == gimli::DW_AT_language
                        && let AttributeValue::Language(lang) = attr.value()
                    {
                        rust = lang == gimli::DW_LANG_Rust;
                    }
                }
            }
            tag @ (gimli::DW_TAG_namespace
            | gimli::DW_TAG_structure_type
            | gimli::DW_TAG_class_type
            | gimli::DW_TAG_union_type
            | gimli::DW_TAG_enumeration_type
            | gimli::DW_TAG_interface_type) => {
                if !abbrev.has_children() {
                    // Opens no scope, so its name is never needed.
                    entries.skip_attributes(abbrev.attributes())?;
                    continue;
                }
                let mut name = None;
                for spec in abbrev.attributes() {
                    let attr = entries.read_attribute(*spec)?;
                    if attr.name() == gimli::DW_AT_name {
                        name = lazy_name(dwarf, unit, attr.value());
                    }
                }
                if name.is_none() && tag == gimli::DW_TAG_namespace {
                    // What C++ demanglers print for `_GLOBAL__N_1`.
                    name = Some(Name::Inline(b"(anonymous namespace)"));
                }
                let id = match name {
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
                let mut rec = Rec {
                    offset: base + offset.0 as u64,
                    name: None,
                    linkage: None,
                    scope: parent,
                    refers: None,
                    decl_file: None,
                    decl_line: None,
                    code: None,
                    unit: unit_index,
                    rust,
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
                            rec.refers = match attr.value() {
                                AttributeValue::UnitRef(o) => Some(base + o.0 as u64),
                                AttributeValue::DebugInfoRef(o) => Some(o.0 as u64),
                                _ => None,
                            };
                        }
                        gimli::DW_AT_decl_file => {
                            rec.decl_file = match attr.value() {
                                AttributeValue::FileIndex(i) => Some(i),
                                other => other.udata_value(),
                            }
                            .map(|i| (unit_index, i));
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
                // Functions discarded by the linker keep their DWARF with address 0 or a
                // tombstone; address 0 never holds code in an executable or shared object.
                rec.code = rec
                    .code
                    .filter(|&(l, h)| l != 0 && h > l && !unit.header.is_tombstone_address(l));
                scan.recs.push(rec);
            }
            _ => entries.skip_attributes(abbrev.attributes())?,
        }
    }
    Ok(())
}

/// For a subprogram described by `DW_AT_ranges` (hot/cold split functions): the range holding
/// the entry point, or the first range when the entry is not recorded (GCC lists it first).
fn entry_range(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
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

/// Turns the code-bearing records into `Subprogram`s, following specification/origin links
/// for the name, linkage name, declaration and scope (the declaration's scope is the one
/// that counts: C++ out-of-line members and Rust inherent methods are defined at unit level
/// but declared inside their class or struct).
fn finish<'a>(dwarf: &gimli::Dwarf<Reader<'a>>, scan: &Scan<'a>) -> Vec<Subprogram> {
    let text = |name: Name<'a>| -> Option<String> {
        let bytes = match name {
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
        };
        Some(String::from_utf8_lossy(bytes).into_owned())
    };
    let mut scope_paths: FxHashMap<u32, String> = FxHashMap::default();
    let mut out = Vec::new();
    for rec in &scan.recs {
        let Some((low, high)) = rec.code else {
            continue;
        };
        let (mut name, mut linkage, mut scope) = (rec.name, rec.linkage, rec.scope);
        // A definition inherits what it does not restate from its declaration: GCC gives an
        // out-of-line C++ member only its own `DW_AT_decl_line` when the file is the same.
        let (mut decl_file, mut decl_line) = (rec.decl_file, rec.decl_line);
        let mut next = rec.refers;
        for _ in 0..8 {
            let Some(target) = next.and_then(|o| {
                let i = scan.recs.partition_point(|r| r.offset < o);
                scan.recs.get(i).filter(|r| r.offset == o)
            }) else {
                break;
            };
            name = name.or(target.name);
            linkage = linkage.or(target.linkage);
            decl_file = decl_file.or(target.decl_file);
            decl_line = decl_line.or(target.decl_line);
            scope = target.scope;
            next = target.refers;
        }
        let name = name.and_then(text);
        let prefix = scope_paths
            .entry(scope)
            .or_insert_with(|| scope_path(&scan.scopes, scope, &text));
        let qualified = name.as_ref().map(|n| {
            if prefix.is_empty() {
                n.clone()
            } else {
                format!("{prefix}::{n}")
            }
        });
        let generic_name = match (rec.rust, &name) {
            (true, Some(n)) => rust_generic_form(prefix, n),
            _ => None,
        };
        out.push(Subprogram {
            low,
            high,
            name: qualified.map(Into::into),
            generic_name: generic_name.map(Into::into),
            linkage: linkage.and_then(text).map(Into::into),
            unit: rec.unit,
            decl_file,
            decl_line,
        });
    }
    out.sort_by_key(|s| s.low);
    out
}

/// `a::b` for a scope id, walking parent links up to the root.
fn scope_path<'a>(
    scopes: &[Scope<'a>],
    mut id: u32,
    text: &impl Fn(Name<'a>) -> Option<String>,
) -> String {
    let mut parts = Vec::new();
    while id != 0 {
        let scope = &scopes[id as usize];
        parts.push(text(scope.name).unwrap_or_default());
        id = scope.parent;
    }
    parts.reverse();
    parts.join("::")
}

/// Records where a DIE name is without reading it (see `Name`).
fn lazy_name<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    unit: &gimli::Unit<Reader<'a>>,
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
fn rust_generic_form(prefix: &str, name: &str) -> Option<String> {
    let lt = name.find('<').filter(|&i| i > 0 && name.ends_with('>'))?;
    let (base, args) = name.split_at(lt);
    Some(if prefix.is_empty() {
        format!("{base}::{args}")
    } else {
        format!("{prefix}::{base}::{args}")
    })
}

/// The path of a line-table file entry: absolute as recorded, else joined with its directory
/// and, when that is still relative, with the unit's `DW_AT_comp_dir`.
fn file_path<'a>(
    dwarf: &gimli::Dwarf<Reader<'a>>,
    unit: &gimli::Unit<Reader<'a>>,
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
