//! ELF container parsing: header facts, PT_LOAD segments, symbol tables and where the DWARF
//! sections live.
//!
//! Everything here is read eagerly when a file is opened because it is cheap (a few passes over
//! fixed-size tables) and every user of a `SymbolIndex` needs it. DWARF itself is only *located*
//! here; `dwarf.rs` parses it on demand.

use std::ops::Range;
use std::path::Path;

use object::read::elf::{ElfFile, FileHeader, ProgramHeader, SectionHeader, Sym};
use object::{Endianness, FileKind, Object, ObjectSection, elf};

use super::{LoadSegment, SymbolError};

/// What kind of thing a symbol names, reduced to what rpatch cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum SymKind {
    /// STT_FUNC: code that can be resolved, patched and called.
    Func,
    /// STT_OBJECT or STT_NOTYPE: data (or hand-written assembly labels) whose address can be used.
    Data,
    /// Anything whose st_value is not a plain address to use (IFUNC resolver, TLS offset, ...).
    Other,
}

/// One defined symbol from `.dynsym` or `.symtab`, with the version suffix split off.
#[derive(Debug, Clone)]
pub(super) struct ElfSym {
    /// Linkage name without any `@VERSION` / `@@VERSION` suffix.
    pub name: Box<str>,
    /// Symbol version, when the file records one (from `.gnu.version` or a `@` suffix).
    pub version: Option<Box<str>>,
    /// st_value: the link-time address.
    pub address: u64,
    /// st_size.
    pub size: u64,
    /// Reduced st_type.
    pub kind: SymKind,
    /// Binding is not STB_LOCAL: such a symbol is the one the dynamic linker would pick.
    pub global: bool,
    /// Version preference: 2 for a default (`@@`) or unversioned symbol, 1 for a hidden
    /// (non-default, `@`) version. Non-default versions exist for old binaries only.
    pub version_rank: u8,
    /// Read from `.dynsym`: the dynamic linker can bind references to it (when global).
    pub dynamic: bool,
}

/// Where the bytes of one DWARF section are in the file.
#[derive(Debug, Clone)]
pub(super) enum SectionSource {
    /// Stored as is at this byte range of the file.
    Plain(Range<usize>),
    /// Stored compressed (SHF_COMPRESSED or `.zdebug_*`); inflated when DWARF is first needed.
    Compressed(object::CompressedFileRange),
}

/// Everything learnt from the ELF container when the file is opened.
pub(super) struct ElfInfo {
    pub architecture: object::Architecture,
    pub position_independent: bool,
    pub little_endian: bool,
    pub build_id: Option<Vec<u8>>,
    pub segments: Vec<LoadSegment>,
    /// All defined symbols of both tables, deduplicated on (name, version, address).
    pub symbols: Vec<ElfSym>,
    /// Indices into `symbols` of functions with a nonzero size, sorted by address.
    pub functions_by_address: Vec<u32>,
    /// DWARF sections present in the file, by gimli section id.
    pub dwarf_sections: Vec<(gimli::SectionId, SectionSource)>,
    /// The file has a `.symtab` (not stripped): local functions are named.
    pub has_symtab: bool,
    /// `.gnu_debuglink`: the separate debug file's name and the CRC-32 of its content.
    pub debuglink: Option<(String, u32)>,
    /// `.comment` strings: the compilers and linkers that built the file
    /// (`rustc version 1.95.0 (...)`, `GCC: (Debian 12.2.0-14) 12.2.0`).
    pub comments: Vec<String>,
}

/// The gimli sections rpatch reads. Others (frames, locations, macros) are not needed to name
/// functions, so they are not even located.
const DWARF_SECTIONS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugAranges,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugRanges,
    gimli::SectionId::DebugRngLists,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
];

/// Parses an in-memory ELF image (32- or 64-bit, either endianness).
pub(super) fn parse(path: &Path, data: &[u8]) -> Result<ElfInfo, SymbolError> {
    let not_elf = |reason: String| SymbolError::NotElf {
        path: path.to_path_buf(),
        reason,
    };
    match FileKind::parse(data) {
        Ok(FileKind::Elf32) => parse_elf::<elf::FileHeader32<Endianness>>(data).map_err(not_elf),
        Ok(FileKind::Elf64) => parse_elf::<elf::FileHeader64<Endianness>>(data).map_err(not_elf),
        Ok(other) => Err(not_elf(format!(
            "it is {}, not ELF",
            match other {
                FileKind::Archive => "an archive",
                FileKind::Coff | FileKind::CoffBig | FileKind::CoffImport => "a COFF object",
                FileKind::MachO32
                | FileKind::MachO64
                | FileKind::MachOFat32
                | FileKind::MachOFat64 => "a Mach-O file",
                FileKind::Pe32 | FileKind::Pe64 => "a PE file",
                FileKind::Xcoff32 | FileKind::Xcoff64 => "an XCOFF file",
                _ => "another object format",
            }
        ))),
        Err(e) => Err(not_elf(e.to_string())),
    }
}

fn parse_elf<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<ElfInfo, String> {
    let file = ElfFile::<Elf>::parse(data).map_err(|e| e.to_string())?;
    let endian = file.endian();
    let header = file.elf_header();

    let segments = file
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .map(|ph| LoadSegment {
            vaddr: ph.p_vaddr(endian).into(),
            memsz: ph.p_memsz(endian).into(),
            offset: ph.p_offset(endian).into(),
            filesz: ph.p_filesz(endian).into(),
            executable: ph.p_flags(endian).contains(elf::PF_X),
        })
        .collect();

    let mut symbols = Vec::new();
    read_symbols(&file, elf::SHT_DYNSYM, &mut symbols)?;
    read_symbols(&file, elf::SHT_SYMTAB, &mut symbols)?;
    dedup_symbols(&mut symbols);
    let functions_by_address = functions_by_address(&symbols);
    let has_symtab = file
        .elf_section_table()
        .iter()
        .any(|s| s.sh_type(endian) == elf::SHT_SYMTAB);

    let mut dwarf_sections = Vec::new();
    for &id in DWARF_SECTIONS {
        // `section_by_name` also finds the GNU `.zdebug_*` spelling.
        let Some(section) = file.section_by_name(id.name()) else {
            continue;
        };
        if section.elf_section_header().sh_type(endian) == elf::SHT_NOBITS {
            // A separate-debug-file placeholder: the content lives elsewhere.
            continue;
        }
        let Ok(range) = section.compressed_file_range() else {
            continue;
        };
        let source = if range.format == object::CompressionFormat::None {
            let start = range.offset as usize;
            let end = start.saturating_add(range.uncompressed_size as usize);
            if end > data.len() {
                continue;
            }
            SectionSource::Plain(start..end)
        } else {
            SectionSource::Compressed(range)
        };
        dwarf_sections.push((id, source));
    }

    let debuglink = file
        .gnu_debuglink()
        .ok()
        .flatten()
        .map(|(name, crc)| (String::from_utf8_lossy(name).into_owned(), crc));
    let comments = file
        .section_by_name(".comment")
        .and_then(|s| s.data().ok())
        .map(|d| {
            d.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).trim().to_string())
                .collect()
        })
        .unwrap_or_default();

    Ok(ElfInfo {
        architecture: file.architecture(),
        position_independent: header.e_type(endian) == elf::ET_DYN,
        little_endian: file.is_little_endian(),
        build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
        segments,
        symbols,
        functions_by_address,
        dwarf_sections,
        has_symtab,
        debuglink,
        comments,
    })
}

/// Indices into `symbols` of functions with a nonzero size, sorted by address.
pub(super) fn functions_by_address(symbols: &[ElfSym]) -> Vec<u32> {
    let mut out: Vec<u32> = symbols
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == SymKind::Func && s.size > 0)
        .map(|(i, _)| i as u32)
        .collect();
    out.sort_by_key(|&i| symbols[i as usize].address);
    out
}

impl ElfInfo {
    /// Whether the file carries its own `.debug_info`.
    pub(super) fn has_dwarf(&self) -> bool {
        self.dwarf_sections
            .iter()
            .any(|(id, _)| *id == gimli::SectionId::DebugInfo)
    }

    /// Adds the `.symtab` of a separate debug file (same addresses) to a stripped file's symbols.
    pub(super) fn merge_symbols(&mut self, other: &ElfInfo) {
        self.symbols.extend(other.symbols.iter().cloned());
        dedup_symbols(&mut self.symbols);
        self.functions_by_address = functions_by_address(&self.symbols);
    }
}

/// Appends the defined symbols of the table of type `table_type` (`.dynsym` or `.symtab`).
fn read_symbols<Elf: FileHeader<Endian = Endianness>>(
    file: &ElfFile<'_, Elf>,
    table_type: elf::SectionType,
    out: &mut Vec<ElfSym>,
) -> Result<(), String> {
    let endian = file.endian();
    let sections = file.elf_section_table();
    let table = match sections.symbols(endian, file.data(), table_type) {
        Ok(table) => table,
        Err(e) => return Err(e.to_string()),
    };
    if table.is_empty() {
        return Ok(());
    }
    // `.gnu.version` only annotates `.dynsym`.
    let versions = if table_type == elf::SHT_DYNSYM {
        sections.versions(endian, file.data()).ok().flatten()
    } else {
        None
    };
    let strings = table.strings();
    for (index, sym) in table.enumerate().skip(1) {
        let shndx = sym.st_shndx(endian);
        // Undefined, absolute (version-name markers, linker constants) and common symbols carry
        // no address in this file.
        if shndx == elf::SHN_UNDEF || shndx == elf::SHN_ABS || shndx == elf::SHN_COMMON {
            continue;
        }
        let kind = match sym.st_type() {
            elf::STT_FUNC => SymKind::Func,
            elf::STT_OBJECT | elf::STT_NOTYPE => SymKind::Data,
            elf::STT_GNU_IFUNC | elf::STT_TLS => SymKind::Other,
            _ => continue,
        };
        let Ok(raw_name) = sym.name(endian, strings) else {
            continue;
        };
        if raw_name.is_empty() {
            continue;
        }
        let raw_name = String::from_utf8_lossy(raw_name);
        // `.symtab` spells versions into the name: `dlopen@@GLIBC_2.34`, `dlopen@GLIBC_2.2.5`.
        let (name, mut version, mut version_rank) = match raw_name.split_once('@') {
            Some((base, rest)) => match rest.strip_prefix('@') {
                Some(ver) => (base, Some(ver), 2),
                None => (base, Some(rest), 1),
            },
            None => (&*raw_name, None, 2),
        };
        let mut dyn_version = None;
        if let Some(versions) = &versions {
            let versym = versions.version_index(endian, index);
            if versym.is_hidden() {
                version_rank = 1;
            }
            if let Ok(Some(v)) = versions.version(versym.index()) {
                dyn_version = Some(String::from_utf8_lossy(v.name()).into_owned());
            }
        }
        if version.is_none() {
            version = dyn_version.as_deref();
        }
        out.push(ElfSym {
            name: name.into(),
            version: version.map(Into::into),
            address: sym.st_value(endian).into(),
            size: sym.st_size(endian).into(),
            kind,
            global: !sym.is_local(),
            version_rank,
            dynamic: table_type == elf::SHT_DYNSYM,
        });
    }
    Ok(())
}

/// `.symtab` repeats every `.dynsym` entry; keep one of each (the first, from `.dynsym`).
pub(super) fn dedup_symbols(symbols: &mut Vec<ElfSym>) {
    // Keys borrow the names: no string is copied (this runs over every symbol of the file).
    let keep: Vec<bool> = {
        let mut seen = super::hash::FxHashSet::default();
        seen.reserve(symbols.len());
        symbols
            .iter()
            .map(|s| seen.insert((&*s.name, s.version.as_deref(), s.address, s.kind)))
            .collect()
    };
    let mut keep = keep.into_iter();
    symbols.retain(|_| keep.next().unwrap_or(true));
}

/// The largest program-header table or note segment [`read_build_id`] reads.
const MAX_NOTES: u64 = 64 << 10;

/// The build-id of the ELF file `file`, read from its notes alone: the file header, the program
/// headers and the PT_NOTE segments, a few small reads wherever the file is large (what a cache
/// key needs before anything is parsed). `None` for a file without one, or not ELF.
pub(crate) fn read_build_id(file: &std::fs::File) -> Option<Vec<u8>> {
    let head = read_range(file, 0, 64)?;
    match FileKind::parse(&*head).ok()? {
        FileKind::Elf64 => build_id_from_notes::<elf::FileHeader64<Endianness>>(file, &head),
        FileKind::Elf32 => build_id_from_notes::<elf::FileHeader32<Endianness>>(file, &head),
        _ => None,
    }
}

fn build_id_from_notes<Elf: FileHeader<Endian = Endianness>>(
    file: &std::fs::File,
    head: &[u8],
) -> Option<Vec<u8>> {
    let header = Elf::parse(head).ok()?;
    let endian = header.endian().ok()?;
    let phoff: u64 = header.e_phoff(endian).into();
    let count = u64::from(header.e_phnum(endian));
    let entry = u64::from(header.e_phentsize(endian));
    if entry != std::mem::size_of::<Elf::ProgramHeader>() as u64 || count * entry > MAX_NOTES {
        return None;
    }
    let table = read_range(file, phoff, (count * entry) as usize)?;
    let (headers, _) =
        object::pod::slice_from_bytes::<Elf::ProgramHeader>(&table, count as usize).ok()?;
    for ph in headers {
        if ph.p_type(endian) != elf::PT_NOTE {
            continue;
        }
        let (offset, size): (u64, u64) = (ph.p_offset(endian).into(), ph.p_filesz(endian).into());
        if size > MAX_NOTES {
            continue;
        }
        let notes = read_range(file, offset, size as usize)?;
        let Ok(mut iter) =
            object::read::elf::NoteIterator::<Elf>::new(endian, ph.p_align(endian), &notes)
        else {
            continue;
        };
        while let Ok(Some(note)) = iter.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(note.desc().to_vec());
            }
        }
    }
    None
}

/// Exactly `len` bytes of `file` at `offset`, or `None`.
fn read_range(file: &std::fs::File, offset: u64, len: usize) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}
