//! ELF symbol tables and DWARF: turn a name a person types into an address range in a file.
//!
//! Owned by the symbols layer; see `SymbolIndex` for the contract the rest of rpatch relies on.

use std::path::{Path, PathBuf};

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
pub struct SymbolIndex {
    _private: (),
}

impl SymbolIndex {
    /// Opens and indexes `path`.
    pub fn open(_path: &Path) -> Result<Self, SymbolError> {
        todo!()
    }
}
