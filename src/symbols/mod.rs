//! ELF symbol tables and DWARF: turn a name a person types into an address range in a file.
//!
//! Owned by the symbols layer; see `SymbolIndex` for the contract the rest of rpatch relies on.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

mod dwarf;
mod elf;
mod hash;
mod names;
#[cfg(test)]
mod tests;

/// A function found in an ELF file, with addresses as linked (add the load bias for runtime).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Symbol index of one ELF file (executable or shared object).
///
/// Owns the file's bytes, so it can outlive the caller's buffers and be handed between phases.
/// The symbol tables, segments and header facts are read when the file is opened; DWARF and the
/// name index are built on first use (`resolve`, `function_containing`), because most files
/// rpatch opens (libc, the loader) are only asked for a few exported addresses.
pub struct SymbolIndex {
    path: PathBuf,
    data: Vec<u8>,
    info: elf::ElfInfo,
    dwarf: OnceCell<dwarf::DwarfIndex>,
    names: OnceCell<names::NameIndex>,
}

impl std::fmt::Debug for SymbolIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolIndex")
            .field("path", &self.path)
            .field("architecture", &self.info.architecture)
            .field("position_independent", &self.info.position_independent)
            .field("symbols", &self.info.symbols.len())
            .field("dwarf_loaded", &self.dwarf.get().is_some())
            .finish_non_exhaustive()
    }
}

impl SymbolIndex {
    /// Opens and indexes `path` (executable or shared object).
    ///
    /// Reads the whole file into memory rather than mapping it: a mapped file truncated or
    /// rewritten in place (a redeploy) would fault or change under rpatch, while a private copy
    /// keeps every later read (`file_bytes`, DWARF) consistent with what was indexed.
    pub fn open(path: &Path) -> Result<Self, SymbolError> {
        let data = std::fs::read(path).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let info = elf::parse(path, &data)?;
        Ok(SymbolIndex {
            path: path.to_path_buf(),
            data,
            info,
            dwarf: OnceCell::new(),
            names: OnceCell::new(),
        })
    }

    /// The path the index was opened from, for messages and for matching /proc/PID/maps.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Resolves a human-typed function name.
    ///
    /// Accepted spellings: raw linkage names, demangled names (Rust without hash; C++ with or
    /// without parameter list), DWARF qualified names (`app::pricing::calc` even for a
    /// `#[no_mangle]` function), Rust generic instances written `app::f::<u32>`, and
    /// `crate::path` for any crate. Aliases at one address are one function. The first call
    /// parses DWARF and demangles every symbol; later calls are hash lookups.
    pub fn resolve(&self, query: &str) -> Resolution {
        let query = query.trim();
        let names = self.names();
        let hits = names.lookup(query);
        let mut found: Vec<FunctionSymbol> = hits
            .into_iter()
            .map(|(f, name)| {
                let func = &names.funcs[f as usize];
                FunctionSymbol {
                    name,
                    linkage_name: func.linkage.as_deref().map(str::to_string),
                    address: func.address,
                    size: func.size,
                    location: func.dwarf.and_then(|d| self.location_of(d)),
                }
            })
            .collect();
        match found.len() {
            0 => Resolution::NotFound {
                suggestions: names.suggest(query),
            },
            1 => Resolution::Found(found.remove(0)),
            _ => {
                found.sort_by_key(|f| f.address);
                Resolution::Ambiguous(found)
            }
        }
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

    /// The function whose `[address, address+size)` contains the link-time address `vaddr`,
    /// for naming where a thread is ("blocked in read", "inside malloc").
    ///
    /// Uses the symbol tables, then DWARF for code without a symbol. The first call on a file
    /// with DWARF parses it: call `resolve` beforehand (outside any freeze) to pay that early.
    pub fn function_containing(&self, vaddr: u64) -> Option<FunctionSymbol> {
        let info = &self.info;
        let dwarf = self.dwarf();
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
            None => dwarf.subprograms[dwarf.containing(vaddr)?].low,
        };
        let start = by_address.partition_point(|&i| info.symbols[i as usize].address < address);
        let end = by_address.partition_point(|&i| info.symbols[i as usize].address <= address);
        let subs: Vec<u32> = dwarf.at(address).map(|i| i as u32).collect();
        let described = names::describe(info, &by_address[start..end], dwarf, &subs);
        Some(FunctionSymbol {
            name: described.display,
            linkage_name: described.linkage,
            address,
            size: described.size,
            location: described.dwarf.and_then(|d| self.location_of(d)),
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

    fn dwarf(&self) -> &dwarf::DwarfIndex {
        self.dwarf
            .get_or_init(|| dwarf::DwarfIndex::build(&self.data, &self.info))
    }

    fn names(&self) -> &names::NameIndex {
        self.names
            .get_or_init(|| names::NameIndex::build(&self.info, self.dwarf()))
    }

    fn location_of(&self, subprogram: u32) -> Option<String> {
        let dwarf = self.dwarf();
        let sub = dwarf.subprograms.get(subprogram as usize)?;
        dwarf.location(&self.data, &self.info, sub)
    }
}
