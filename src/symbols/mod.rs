//! ELF symbol tables and DWARF: turn a name a person types into an address range in a file, and
//! tell what DWARF knows about it (signature, generic instance, inlined copies).
//!
//! Owned by the symbols layer; see `SymbolIndex` for the contract the rest of rpatch relies on.

use std::cell::{OnceCell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

mod debuginfo;
mod details;
mod dwarf;
mod elf;
mod hash;
mod inline;
mod knowledge;
mod names;
mod pattern;
#[cfg(test)]
mod tests;

pub use debuginfo::{DebugInfoSource, Location};
pub use details::{FunctionDetails, Parameter, Signature, TypeInfo};
pub(crate) use elf::read_build_id;
pub use inline::{InlineSite, InlineSites, InlinedOnly};
pub use knowledge::{Knowledge, Lookup};
pub use pattern::Pattern;

use hash::FxHashMap;

/// A function found in an ELF file, with addresses as linked (add the load bias for runtime).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FunctionSymbol {
    /// Human name: demangled, without Rust hash, e.g. `app::pricing::calc` or `ns::Cls::m(int)`.
    pub name: String,
    /// Raw linkage (symbol table) name when one exists, e.g. `_ZN3app7pricing4calc17h..E` or `calc`.
    pub linkage_name: Option<String>,
    /// Link-time virtual address of the entry.
    pub address: u64,
    /// Size in bytes (from the symbol table or DWARF high_pc).
    pub size: u64,
    /// `file:line` of the definition, from DWARF, when known.
    pub location: Option<String>,
}

/// Outcome of looking a name up: expected misses are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Resolution {
    /// Exactly one function (possibly reached through several aliases at one address).
    Found(FunctionSymbol),
    /// Several functions at distinct addresses match.
    Ambiguous(Vec<FunctionSymbol>),
    /// Nothing matches; the closest names, best first (at most 5).
    NotFound {
        /// Closest existing names.
        suggestions: Vec<String>,
    },
}

/// One PT_LOAD segment, used to compute the load bias and to read original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoadSegment {
    /// p_vaddr
    pub vaddr: u64,
    /// p_memsz
    pub memsz: u64,
    /// p_offset
    pub offset: u64,
    /// p_filesz
    pub filesz: u64,
    /// p_flags contains PF_X
    pub executable: bool,
}

/// A compiler clone of a function (`f.constprop.0`, `f.isra.0`, `f.part.0`) or its split-off
/// cold part (`f.cold`): separate code that callers may enter instead of the function itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CloneSymbol {
    /// The clone's symbol, e.g. `scale_by.constprop.0`.
    pub symbol: String,
    /// `constprop`, `isra`, `part`, `cold`, ...
    pub kind: String,
    /// Link-time address.
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
}

impl CloneSymbol {
    /// Whether callers enter this clone instead of the function (all kinds but `.cold`, which
    /// is only jumped to from inside the function's own code).
    pub fn is_entry_point(&self) -> bool {
        self.kind != "cold"
    }
}

/// Errors opening or parsing an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not an ELF object rpatch can parse.
    #[error("{path} is not a valid ELF file: {reason}")]
    NotElf {
        /// File path.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
}

/// The bytes of a file: mapped read-only (zero-copy, pages read on demand and given back after a
/// streaming pass), or owned for files that cannot be mapped (empty ones).
pub(crate) enum FileData {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileData::Mapped(m) => m,
            FileData::Owned(v) => v,
        }
    }
}

impl FileData {
    /// Maps the file at `path`, a path on rpatch's own side (the patch library, `resolve --exe`,
    /// a debug file under a debug root), read-only.
    ///
    /// A mapping, unlike a copy, costs no time or memory for the parts never read (most of a
    /// large file's DWARF). Files of a target are never mapped (see [`Self::read`]).
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        Self::map(&crate::files::open_host(path)?)
    }

    /// Maps an open file on rpatch's own side (see [`Self::open`]).
    pub(crate) fn map(file: &std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(FileData::Owned(Vec::new()));
        }
        // SAFETY: the mapping is read-only and private to this process, of a file on rpatch's
        // own side: a redeploy replaces such files (new inode) rather than rewriting them in
        // place.
        match unsafe { memmap2::Mmap::map(file) } {
            Ok(map) => Ok(FileData::Mapped(map)),
            Err(_) => {
                crate::files::read_capped(file, crate::files::max_file_size()).map(FileData::Owned)
            }
        }
    }

    /// A size-capped copy of an open file of a target (a mapped module, a debug file in its
    /// root): its owner may truncate it at any moment, which would kill a process that has it
    /// mapped with SIGBUS.
    pub(crate) fn read(file: &std::fs::File) -> std::io::Result<Self> {
        crate::files::read_capped(file, crate::files::max_file_size()).map(FileData::Owned)
    }

    /// Advice on the whole mapping.
    fn advise(&self, advice: memmap2::Advice) {
        if let FileData::Mapped(map) = self {
            let _ = map.advise(advice);
        }
    }

    /// Advice on part of the mapping.
    fn advise_range(&self, advice: memmap2::Advice, range: std::ops::Range<usize>) {
        if let FileData::Mapped(map) = self {
            let (start, len) = page_span(range, map.len());
            let _ = map.advise_range(advice, start, len);
        }
    }

    /// Hints that `range` will be read from start to end soon (read-ahead).
    pub(crate) fn will_need(&self, range: std::ops::Range<usize>) {
        if let FileData::Mapped(map) = self {
            let (start, len) = page_span(range, map.len());
            let _ = map.advise_range(memmap2::Advice::WillNeed, start, len);
        }
    }

    /// Gives the pages of `range` back (they stay in the page cache): a streaming pass over a
    /// large section keeps the process's resident memory small. Later reads fault them in again.
    pub(crate) fn release(&self, range: std::ops::Range<usize>) {
        if let FileData::Mapped(map) = self {
            // Only whole pages inside the range: the neighbours may still be in use.
            let start = range.start.next_multiple_of(PAGE);
            let end = (range.end / PAGE) * PAGE;
            if end > start && end <= map.len() {
                // SAFETY: the mapping is read-only and file-backed: MADV_DONTNEED only drops the
                // page-table entries, and a later read faults the same file content back in, so
                // no reference into the mapping (held by any thread) observes a change.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }
}

const PAGE: usize = 4096;

fn page_span(range: std::ops::Range<usize>, len: usize) -> (usize, usize) {
    let start = (range.start / PAGE) * PAGE;
    let end = range.end.min(len);
    (start, end.saturating_sub(start))
}

/// A defined symbol found by [`SymbolIndex::defined_symbols`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DefinedSymbol {
    /// Raw linkage name in the file.
    pub name: String,
    /// Link-time address (st_value).
    pub address: u64,
    /// st_size.
    pub size: u64,
    /// STT_FUNC (else data: STT_OBJECT or STT_NOTYPE).
    pub function: bool,
    /// Global and in `.dynsym`: the dynamic linker binds references to it by itself.
    pub exported: bool,
    /// st_value is the object's address; false for an IFUNC (a resolver's address) and TLS
    /// (an offset in the thread's block), which cannot be bound to one fixed address.
    pub plain_address: bool,
}

/// Symbol index of one ELF file (executable or shared object).
///
/// Holds a read-only mapping of the file (and of its separate debug file, when the DWARF lives
/// there), so it can outlive the caller's buffers and be handed between phases. The symbol
/// tables, segments and header facts are read when the file is opened. DWARF is read lazily:
/// resolving a name the symbol tables know reads only the one unit describing it; the full name
/// index (all of DWARF) is built on the first lookup that needs it (a DWARF-only name, a generic
/// instance, a pattern); the scan for inlined copies streams through all units on every core.
pub struct SymbolIndex {
    path: PathBuf,
    data: FileData,
    info: elf::ElfInfo,
    /// Separate debug file holding the DWARF, when the file itself has none.
    debug: Option<debuginfo::DebugFile>,
    debug_source: DebugInfoSource,
    /// Every candidate the search for a separate debug file looked at, and what was there.
    debug_visited: Vec<debuginfo::Visited>,
    sections: OnceCell<dwarf::Sections>,
    dwarf: OnceCell<dwarf::DwarfIndex>,
    units: OnceCell<dwarf::UnitTable>,
    unit_cache: RefCell<FxHashMap<u64, Rc<Vec<dwarf::Subprogram>>>>,
    names: OnceCell<names::NameIndex>,
}

impl std::fmt::Debug for SymbolIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolIndex")
            .field("path", &self.path)
            .field("architecture", &self.info.architecture)
            .field("position_independent", &self.info.position_independent)
            .field("symbols", &self.info.symbols.len())
            .field("debug_info", &self.debug_source)
            .field("dwarf_loaded", &self.dwarf.get().is_some())
            .finish_non_exhaustive()
    }
}

impl SymbolIndex {
    /// Opens and indexes `path` (executable or shared object) on rpatch's own side, and finds
    /// its separate debug file when it has no DWARF of its own (see [`DebugInfoSource`]).
    pub fn open(path: &Path) -> Result<Self, SymbolError> {
        let data = FileData::open(path).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::index(path, data, &Location::Host(path))
    }

    /// Opens and indexes `file`, opened by the caller at `path` on rpatch's own side (mapped, as
    /// [`Self::open`] does).
    pub fn open_mapped(file: &std::fs::File, path: &Path) -> Result<Self, SymbolError> {
        let data = FileData::map(file).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::index(path, data, &Location::Host(path))
    }

    /// Indexes a target's module from `file` (opened by the caller, e.g. through
    /// `/proc/PID/map_files`), read as a size-capped copy; `name` is used in messages, and
    /// `location` says where to look for a debug file beside it.
    pub fn open_file(
        file: &std::fs::File,
        name: &Path,
        location: &Location<'_>,
    ) -> Result<Self, SymbolError> {
        let data = FileData::read(file).map_err(|source| SymbolError::Io {
            path: name.to_path_buf(),
            source,
        })?;
        Self::index(name, data, location)
    }

    /// Indexes an ELF image held in memory (no separate debug file is looked for): what the
    /// fuzz targets feed hostile bytes to.
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Self, SymbolError> {
        Self::index(name, FileData::Owned(bytes), &Location::Nowhere)
    }

    fn index(path: &Path, data: FileData, location: &Location<'_>) -> Result<Self, SymbolError> {
        let mut info = elf::parse(path, &data)?;
        let mut debug_visited = Vec::new();
        let (debug, debug_source) = if info.has_dwarf() {
            (None, DebugInfoSource::Embedded)
        } else {
            match debuginfo::find(location, &info, &mut debug_visited) {
                Ok(file) => {
                    let source = DebugInfoSource::Separate {
                        path: file.path.clone(),
                        found_by: file.found_by.to_string(),
                    };
                    if !info.has_symtab && file.info.has_symtab {
                        info.merge_symbols(&file.info);
                    }
                    (Some(file), source)
                }
                Err(searched) => (None, DebugInfoSource::Missing { searched }),
            }
        };
        Ok(SymbolIndex {
            path: path.to_path_buf(),
            data,
            info,
            debug,
            debug_source,
            debug_visited,
            sections: OnceCell::new(),
            dwarf: OnceCell::new(),
            units: OnceCell::new(),
            unit_cache: RefCell::new(FxHashMap::default()),
            names: OnceCell::new(),
        })
    }

    /// Every candidate the search for a separate debug file looked at, and what was there.
    pub(crate) fn debug_candidates(&self) -> &[debuginfo::Visited] {
        &self.debug_visited
    }

    /// The file's bytes (as read or mapped when it was opened).
    pub(crate) fn file_data(&self) -> &[u8] {
        &self.data
    }

    /// `object::Architecture` of the file, so rpatch can refuse a library of another arch.
    pub fn architecture(&self) -> object::Architecture {
        self.info.architecture
    }

    /// `e_type == ET_DYN` (PIE or shared object): such a file is loaded at a bias that must be
    /// computed from /proc/PID/maps; an ET_EXEC file runs at its link-time addresses.
    pub fn is_position_independent(&self) -> bool {
        self.info.position_independent
    }

    /// NT_GNU_BUILD_ID note bytes, if any: identifies the exact build a process runs.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.info.build_id.as_deref()
    }

    /// PT_LOAD segments in file order, to compute the load bias and map addresses to file bytes.
    pub fn load_segments(&self) -> &[LoadSegment] {
        &self.info.segments
    }

    /// Where the DWARF comes from: the file itself, a separate debug file, or nowhere.
    pub fn debug_info(&self) -> &DebugInfoSource {
        &self.debug_source
    }

    /// Whether DWARF is available (embedded or separate): signatures, locations and inlined
    /// copies can be known.
    pub fn has_dwarf(&self) -> bool {
        !matches!(self.debug_source, DebugInfoSource::Missing { .. })
    }

    /// Bytes of (uncompressed) `.debug_info`, in the file or its debug file.
    pub fn debug_info_size(&self) -> u64 {
        let (_, info) = self.dwarf_file();
        info.dwarf_sections
            .iter()
            .find(|(id, _)| *id == gimli::SectionId::DebugInfo)
            .map_or(0, |(_, s)| match s {
                elf::SectionSource::Plain(r) => r.len() as u64,
                elf::SectionSource::Compressed(c) => c.uncompressed_size,
            })
    }

    /// The `.comment` strings: which compilers and linker built the file.
    pub fn compilers(&self) -> &[String] {
        &self.info.comments
    }

    /// The rustc that built the file, e.g. `rustc version 1.95.0 (59807616e 2026-04-14)`.
    pub fn rustc_version(&self) -> Option<&str> {
        self.info
            .comments
            .iter()
            .find(|c| c.starts_with("rustc version"))
            .map(String::as_str)
    }

    /// Resolves a human-typed function name.
    ///
    /// Accepted spellings: raw linkage names, demangled names (Rust without hash; C++ with or
    /// without parameter list), DWARF qualified names (`app::pricing::calc` even for a
    /// `#[no_mangle]` function), Rust generic instances written `app::f::<u32>`, and
    /// `crate::path` for any crate. Aliases at one address are one function.
    ///
    /// A name the symbol tables identify by themselves is answered from them and the one DWARF
    /// unit describing the function; any other name builds the full name index on first use
    /// (all of DWARF; later lookups are hash lookups).
    pub fn resolve(&self, query: &str) -> Resolution {
        let query = query.trim();
        if self.names.get().is_none()
            && let Some(found) = self.resolve_from_symbols(query)
        {
            return Resolution::Found(found);
        }
        let mut found = self.lookup_all(query);
        match found.len() {
            0 => Resolution::NotFound {
                suggestions: self.suggest(query),
            },
            1 => Resolution::Found(found.remove(0)),
            _ => Resolution::Ambiguous(found),
        }
    }

    /// Every function `query` names, as `resolve` reads it, sorted by address; a miss is an
    /// empty list (no suggestions are computed: they cost a pass over every name).
    pub fn lookup(&self, query: &str) -> Vec<FunctionSymbol> {
        let query = query.trim();
        if self.names.get().is_none()
            && let Some(found) = self.resolve_from_symbols(query)
        {
            return vec![found];
        }
        self.lookup_all(query)
    }

    fn lookup_all(&self, query: &str) -> Vec<FunctionSymbol> {
        let names = self.names();
        let mut found: Vec<FunctionSymbol> = names
            .lookup(query)
            .into_iter()
            .map(|(f, name)| self.symbol_of(&names.funcs[f as usize], name))
            .collect();
        found.sort_by_key(|f| f.address);
        found
    }

    /// Up to five existing names close to `query`, best first.
    pub fn suggest(&self, query: &str) -> Vec<String> {
        self.names().suggest(query.trim())
    }

    /// Every function with a name matching `pattern`, sorted by address (see [`Pattern`]).
    /// Builds the full name index.
    pub fn search(&self, pattern: &Pattern) -> Vec<FunctionSymbol> {
        let names = self.names();
        names
            .search(pattern)
            .into_iter()
            .map(|(f, name)| self.symbol_of(&names.funcs[f as usize], name))
            .collect()
    }

    fn symbol_of(&self, func: &names::Func, name: String) -> FunctionSymbol {
        FunctionSymbol {
            name,
            linkage_name: func.linkage.as_deref().map(str::to_string),
            address: func.address,
            size: func.size,
            location: func
                .dwarf
                .and_then(|d| self.location_of(&self.dwarf().subprograms[d as usize])),
        }
    }

    /// The fast path of `resolve`: only symbols whose raw name contains the query's function
    /// name are demangled, and only the DWARF unit holding the one match is read. None when the
    /// symbol tables do not name exactly one function (the full index then decides).
    fn resolve_from_symbols(&self, query: &str) -> Option<FunctionSymbol> {
        let (address, shown) = names::match_symbols(&self.info, query)?;
        let subs = self.subprograms_at(address);
        let info = &self.info;
        let by_address = &info.functions_by_address;
        let start = by_address.partition_point(|&i| info.symbols[i as usize].address < address);
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= address);
        let described = names::describe(info, &by_address[start..end], &subs);
        Some(FunctionSymbol {
            name: shown.unwrap_or(described.display),
            linkage_name: described.linkage,
            address,
            size: described.size,
            location: subs.first().and_then(|s| self.location_of(s)),
        })
    }

    /// Exact lookup of a defined symbol by its raw linkage name in `.dynsym` or `.symtab`
    /// (functions and data objects), returning its link-time address.
    ///
    /// Used to find `dlopen`, `__libc_dlopen_mode`, `dlerror`, `mmap`, `__errno_location` in libc.
    /// Versions do not matter (`dlopen` finds `dlopen@@GLIBC_2.34`); when several versions exist
    /// the default one wins, as it does for `dlsym`. `name@VERSION` selects a version
    /// explicitly. Global symbols win over local ones. IFUNC and TLS symbols are not returned:
    /// their st_value is a resolver or a TLS offset, not something to call or read.
    pub fn symbol_address(&self, linkage_name: &str) -> Option<u64> {
        let (name, version) = match linkage_name.split_once('@') {
            Some((name, version)) => (name, Some(version.trim_start_matches('@'))),
            None => (linkage_name, None),
        };
        self.info
            .symbols
            .iter()
            .filter(|s| *s.name == *name && s.kind != elf::SymKind::Other)
            .filter(|s| version.is_none() || s.version.as_deref() == version)
            .max_by_key(|s| (s.global, s.version_rank, std::cmp::Reverse(s.address)))
            .map(|s| s.address)
    }

    /// Every defined function or data symbol whose raw linkage name is `name`, or, when `name`
    /// is a Rust path (`crate::module::STATIC`), whose demangled name without hash is that path.
    ///
    /// Unlike [`Self::symbol_address`] this keeps local symbols apart and says which ones the
    /// dynamic linker could bind to: binding a patch library's undefined references to the
    /// target's private objects must know both (see `patch::binding`). The hash-free Rust path
    /// lets a patch name a static without the crate hash, which changes with every build.
    pub fn defined_symbols(&self, name: &str) -> Vec<DefinedSymbol> {
        // Both manglings spell the last path segment verbatim: only those names are demangled.
        let last_segment = name.rsplit_once("::").map(|(_, last)| last);
        self.info
            .symbols
            .iter()
            .filter(|s| {
                *s.name == *name
                    || last_segment.is_some_and(|last| s.name.contains(last))
                        && rustc_demangle::try_demangle(&s.name)
                            .is_ok_and(|d| format!("{d:#}") == name)
            })
            .map(|s| DefinedSymbol {
                name: s.name.to_string(),
                address: s.address,
                size: s.size,
                function: s.kind == elf::SymKind::Func,
                exported: s.dynamic && s.global,
                plain_address: s.kind != elf::SymKind::Other,
            })
            .collect()
    }

    /// The non-weak undefined dynamic symbols: what the file expects another loaded object to
    /// define. Reads `.dynsym` only.
    pub fn undefined_references(&self) -> Result<Vec<String>, String> {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(&*self.data).map_err(|e| e.to_string())?;
        Ok(file
            .dynamic_symbols()
            .filter(|s| s.is_undefined() && !s.is_weak())
            .filter_map(|s| s.name().ok().filter(|n| !n.is_empty()).map(str::to_string))
            .collect())
    }

    /// The version names the file's defined dynamic symbols carry (`GLIBC_2.34`, ...): a
    /// library's versions tell which release of it this is without running code in it.
    pub fn symbol_versions(&self) -> std::collections::BTreeSet<&str> {
        self.info
            .symbols
            .iter()
            .filter_map(|s| s.version.as_deref())
            .collect()
    }

    /// The function whose `[address, address+size)` contains the link-time address `vaddr`,
    /// for naming where a thread is ("blocked in read", "inside malloc").
    ///
    /// Uses the symbol tables, then DWARF for code without a symbol (reading only the units
    /// whose address ranges hold `vaddr`).
    pub fn function_containing(&self, vaddr: u64) -> Option<FunctionSymbol> {
        let info = &self.info;
        let by_address = &info.functions_by_address;
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= vaddr);
        let symbol_hit = by_address[..end]
            .iter()
            .rev()
            .take(64)
            .map(|&i| &info.symbols[i as usize])
            .find(|s| vaddr < s.address.saturating_add(s.size));
        let address = match symbol_hit {
            Some(sym) => sym.address,
            None => self.subprogram_containing(vaddr)?.low,
        };
        let start = by_address.partition_point(|&i| info.symbols[i as usize].address < address);
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= address);
        let subs = self.subprograms_at(address);
        let described = names::describe(info, &by_address[start..end], &subs);
        Some(FunctionSymbol {
            name: described.display,
            linkage_name: described.linkage,
            address,
            size: described.size,
            location: subs.first().and_then(|s| self.location_of(s)),
        })
    }

    /// The raw symbol-table name of the function whose [address, address+size) holds `vaddr`,
    /// from the symbol tables alone (no DWARF, no demangling): cheap enough to classify many
    /// stack words, as choosing a thread to borrow does.
    pub fn symbol_name_containing(&self, vaddr: u64) -> Option<&str> {
        let info = &self.info;
        let by_address = &info.functions_by_address;
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= vaddr);
        by_address[..end]
            .iter()
            .rev()
            .take(64)
            .map(|&i| &info.symbols[i as usize])
            .find(|s| vaddr < s.address.saturating_add(s.size))
            .map(|s| &*s.name)
    }

    /// Every function symbol with a size (name, link-time start, end), by address.
    pub fn functions(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.info.functions_by_address.iter().map(|&i| {
            let s = &self.info.symbols[i as usize];
            (&*s.name, s.address, s.address.saturating_add(s.size))
        })
    }

    /// `len` bytes as stored in the file at link-time address `vaddr`, read through the PT_LOAD
    /// segment's file bytes; None unless the whole range is backed by file content (not .bss).
    /// Lets rpatch check that memory still holds the original code before writing over it.
    pub fn file_bytes(&self, vaddr: u64, len: usize) -> Option<Vec<u8>> {
        let end = vaddr.checked_add(len as u64)?;
        self.info.segments.iter().find_map(|seg| {
            let seg_end = seg.vaddr.checked_add(seg.filesz)?;
            if vaddr < seg.vaddr || end > seg_end {
                return None;
            }
            let start = usize::try_from(seg.offset + (vaddr - seg.vaddr)).ok()?;
            self.data
                .get(start..start.checked_add(len)?)
                .map(<[u8]>::to_vec)
        })
    }

    /// What DWARF says about the function at `f.address`: its signature (parameter and return
    /// types with sizes), whether it is a generic instance, its DWARF name. Reads one unit.
    pub fn details(&self, f: &FunctionSymbol) -> FunctionDetails {
        let subs = self.subprograms_at(f.address);
        let Some(sub) = subs.first() else {
            return FunctionDetails::default();
        };
        let (data, info) = self.dwarf_file();
        let dwarf = dwarf::load(data, info, self.sections());
        details::of(&dwarf, sub)
    }

    /// Other names of the code at `f.address` (aliases: identical-code folding, C++ C1/C2 and
    /// D0/D1/D2 variants, `#[no_mangle]` beside the mangled name), as people write them.
    pub fn aliases(&self, f: &FunctionSymbol) -> Vec<String> {
        let info = &self.info;
        let by_address = &info.functions_by_address;
        let start = by_address.partition_point(|&i| info.symbols[i as usize].address < f.address);
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= f.address);
        names::aliases(info, &by_address[start..end], f)
    }

    /// Compiler clones of `f` (`.constprop.N`, `.isra.N`, `.part.N`, `.cold`), from the symbol
    /// table: code that callers may enter instead of `f`, which an entry jump in `f` does not
    /// redirect.
    pub fn clones(&self, f: &FunctionSymbol) -> Vec<CloneSymbol> {
        let Some(linkage) = f.linkage_name.as_deref() else {
            return Vec::new();
        };
        names::clones(&self.info, linkage)
    }

    /// Every place where each of `targets` was inlined (DW_TAG_inlined_subroutine), and the
    /// functions matching `pattern` that exist only inlined (no out-of-line code). One
    /// streaming pass over all of `.debug_info`, split across the available cores.
    pub fn inline_scan(
        &self,
        targets: &[FunctionSymbol],
        pattern: Option<&Pattern>,
    ) -> (Vec<Vec<InlineSite>>, Vec<InlinedOnly>) {
        if !self.has_dwarf() {
            return (vec![Vec::new(); targets.len()], Vec::new());
        }
        let keys: Vec<inline::TargetKey> = targets
            .iter()
            .map(|f| {
                let subs = self.subprograms_at(f.address);
                inline::TargetKey::new(f, &subs, &self.info)
            })
            .collect();
        let (data, info) = self.dwarf_file();
        let sections = self.sections();
        let dwarf = dwarf::load(data, info, sections);
        let file = self.dwarf_data();
        let others = dwarf::plain_ranges(info, &[]);
        let everything = dwarf::plain_ranges(info, &[gimli::SectionId::DebugInfo]);
        let section_base = |id: gimli::SectionId| dwarf::plain_range(info, id).map(|r| r.start);
        let (info_base, str_base) = (
            section_base(gimli::SectionId::DebugInfo),
            section_base(gimli::SectionId::DebugStr),
        );
        let done = std::sync::atomic::AtomicUsize::new(0);
        // Each unit's pages are given back once it is read, and every 16 MiB all the pages
        // faulted in meanwhile (units reached through cross-unit links, line tables, ranges):
        // resident memory stays a small fraction of the file. Everything stays in the page
        // cache, so a page read again costs a minor fault.
        let release = |id: gimli::SectionId, range: std::ops::Range<usize>| {
            let base = match id {
                gimli::SectionId::DebugInfo => info_base,
                gimli::SectionId::DebugStr => str_base,
                _ => section_base(id),
            };
            if let Some(base) = base {
                file.release(base + range.start..base + range.end);
            }
            if id != gimli::SectionId::DebugInfo {
                return;
            }
            const EVERY: usize = 16 << 20;
            let before = done.fetch_add(range.len(), std::sync::atomic::Ordering::Relaxed);
            if (before + range.len()) / EVERY != before / EVERY {
                // Units read through cross-unit links included.
                for r in &everything {
                    file.release(r.clone());
                }
            }
        };
        if let Some(base) = info_base {
            let len = gimli::Section::reader(&dwarf.debug_info).len();
            file.will_need(base..base + len);
        }
        // Names and line tables are read here and there: map only the pages read.
        for r in &others {
            file.advise_range(memmap2::Advice::Random, r.clone());
        }
        let result = inline::scan(&dwarf, &keys, pattern, &release);
        for r in &others {
            file.advise_range(memmap2::Advice::Normal, r.clone());
        }
        for r in dwarf::plain_ranges(info, &[gimli::SectionId::DebugInfo]) {
            file.release(r);
        }
        result
    }

    /// The file holding the DWARF (the separate debug file when there is one) and its ELF facts.
    fn dwarf_file(&self) -> (&[u8], &elf::ElfInfo) {
        match &self.debug {
            Some(d) => (&d.data, &d.info),
            None => (&self.data, &self.info),
        }
    }

    fn dwarf_data(&self) -> &FileData {
        match &self.debug {
            Some(d) => &d.data,
            None => &self.data,
        }
    }

    fn sections(&self) -> &dwarf::Sections {
        self.sections.get_or_init(|| {
            let (data, info) = self.dwarf_file();
            dwarf::Sections::inflate(data, info)
        })
    }

    fn dwarf(&self) -> &dwarf::DwarfIndex {
        self.dwarf.get_or_init(|| {
            let (data, info) = self.dwarf_file();
            if !info.has_dwarf() {
                return dwarf::DwarfIndex::empty();
            }
            dwarf::DwarfIndex::build(&dwarf::load(data, info, self.sections()))
        })
    }

    fn units(&self) -> &dwarf::UnitTable {
        self.units.get_or_init(|| {
            let (data, info) = self.dwarf_file();
            if !info.has_dwarf() {
                return dwarf::UnitTable::default();
            }
            // One small read per unit, all over the file: fault in only the page read, not the
            // neighbours the kernel would map around it.
            let file = self.dwarf_data();
            file.advise(memmap2::Advice::Random);
            let all = dwarf::plain_ranges(info, &[gimli::SectionId::DebugInfo]);
            let release = || all.iter().for_each(|r| file.release(r.clone()));
            let table =
                dwarf::UnitTable::build(&dwarf::load(data, info, self.sections()), &release);
            file.advise(memmap2::Advice::Normal);
            release();
            table
        })
    }

    fn names(&self) -> &names::NameIndex {
        self.names
            .get_or_init(|| names::NameIndex::build(&self.info, self.dwarf()))
    }

    /// The code-bearing subprograms of the units covering `address` (from the full index when
    /// it is built, else by scanning just those units, cached).
    fn unit_subprograms(&self, address: u64) -> Vec<Rc<Vec<dwarf::Subprogram>>> {
        let (data, info) = self.dwarf_file();
        if !info.has_dwarf() {
            return Vec::new();
        }
        let offsets = self.units().units_containing(address);
        let mut out = Vec::new();
        for offset in offsets {
            if let Some(subs) = self.unit_cache.borrow().get(&offset) {
                out.push(subs.clone());
                continue;
            }
            let dwarf = dwarf::load(data, info, self.sections());
            let subs = Rc::new(dwarf::scan_units(&dwarf, &[offset]));
            self.unit_cache.borrow_mut().insert(offset, subs.clone());
            out.push(subs);
        }
        out
    }

    /// DWARF subprograms whose entry is exactly `address`.
    fn subprograms_at(&self, address: u64) -> Vec<dwarf::Subprogram> {
        if let Some(index) = self.dwarf.get() {
            return index.subprograms[index.at(address)].to_vec();
        }
        self.unit_subprograms(address)
            .iter()
            .flat_map(|subs| subs.iter().filter(|s| s.low == address).cloned())
            .collect()
    }

    /// The DWARF subprogram whose entry range contains `vaddr`.
    fn subprogram_containing(&self, vaddr: u64) -> Option<dwarf::Subprogram> {
        if let Some(index) = self.dwarf.get() {
            return index
                .containing(vaddr)
                .map(|i| index.subprograms[i].clone());
        }
        self.unit_subprograms(vaddr)
            .iter()
            .flat_map(|subs| subs.iter())
            .filter(|s| s.low <= vaddr && vaddr < s.high)
            .max_by_key(|s| s.low)
            .cloned()
    }

    fn location_of(&self, sub: &dwarf::Subprogram) -> Option<String> {
        let (data, info) = self.dwarf_file();
        dwarf::location(&dwarf::load(data, info, self.sections()), sub)
    }
}
