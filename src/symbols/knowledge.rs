//! What rpatch knows about one ELF file, remembered across runs.
//!
//! A [`Knowledge`] answers the questions an operation asks of a target's module or of a patch
//! library — a name's resolution, a function's signature, inlined copies, clones and aliases,
//! symbol addresses, and facts other layers derive from the file and ask it to keep (where the
//! unwind tables are, which functions belong to the allocator) — from what an earlier run
//! derived from the same file. What it does not know yet it derives with a [`SymbolIndex`],
//! which is opened (the file read and parsed) only then. Its answers go to the program-knowledge
//! cache (`crate::cache`) when it is dropped.
//!
//! An entry is keyed by the identity of the file as opened (for a module, the mapped inode
//! itself), its build-id, its path (where a debug file *beside* it is looked for) and the debug
//! search configuration; and it is used only while every candidate the debug-file search visited
//! still holds what it held ([`debuginfo::unchanged`]): a debug file installed, removed or
//! changed since makes the entry stale. Addresses are link-time (file-relative), the same for
//! every process that maps the file.

use super::debuginfo::{self, DebugInfoSource, Location, Visited};
use super::{
    CloneSymbol, DefinedSymbol, FunctionDetails, FunctionSymbol, InlineSite, InlinedOnly,
    LoadSegment, Pattern, Resolution, SymbolError, SymbolIndex,
};
use crate::cache::{Cache, FileIdentity, Key};
use crate::files::Root;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// What is remembered of a file; its name and version are part of every key.
const KIND: &str = "symbols-v1";

/// Where a file's separate debug file is looked for beside it (an owned [`Location`]).
pub enum Lookup {
    /// A file on rpatch's own side (the patch library).
    Host(PathBuf),
    /// A target's module at `path` in the target's file system (inside `root`).
    InRoot {
        /// The target's root.
        root: Root,
        /// The module's path as the target sees it.
        path: PathBuf,
    },
    /// Nowhere (a memfd, a deleted file): no debug file beside it.
    Nowhere,
}

impl Lookup {
    fn location(&self) -> Location<'_> {
        match self {
            Lookup::Host(path) => Location::Host(path),
            Lookup::InRoot { root, path } => Location::InRoot { root, path },
            Lookup::Nowhere => Location::Nowhere,
        }
    }

    fn root(&self) -> Option<&Root> {
        match self {
            Lookup::InRoot { root, .. } => Some(root),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Lookup::Host(path) => format!("host:{}", path.display()),
            Lookup::InRoot { path, .. } => format!("root:{}", path.display()),
            Lookup::Nowhere => "nowhere".into(),
        }
    }
}

/// The facts every user of a file needs, known as soon as it is opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Facts {
    build_id: Option<Vec<u8>>,
    segments: Vec<LoadSegment>,
    position_independent: bool,
    /// `object::Architecture` by its name (`X86_64`).
    architecture: String,
    debug_source: DebugInfoSource,
    compilers: Vec<String>,
    /// What the search for a separate debug file saw.
    debug_visited: Vec<Visited>,
}

impl Facts {
    fn of(index: &SymbolIndex) -> Self {
        Facts {
            build_id: index.build_id().map(<[u8]>::to_vec),
            segments: index.load_segments().to_vec(),
            position_independent: index.is_position_independent(),
            architecture: format!("{:?}", index.architecture()),
            debug_source: index.debug_info().clone(),
            compilers: index.compilers().to_vec(),
            debug_visited: index.debug_candidates().to_vec(),
        }
    }
}

/// A cache entry. Each answer stays JSON text until it is asked for: an operation decodes
/// only what it needs of an entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    facts: Facts,
    /// `table\u{1f}key` -> answer.
    answers: BTreeMap<String, Box<RawValue>>,
}

/// How a lazily opened index is made.
struct Opener {
    file: File,
    name: PathBuf,
    lookup: Lookup,
}

/// Where the answers go when dropped.
struct Keeping {
    cache: Rc<Cache>,
    key: Key,
    identity: FileIdentity,
}

/// What rpatch knows about one ELF file (see the module documentation).
pub struct Knowledge {
    name: PathBuf,
    facts: Facts,
    index: OnceCell<Option<Rc<SymbolIndex>>>,
    opener: RefCell<Option<Opener>>,
    /// The file, for reads of its bytes at known offsets.
    file: Option<File>,
    answers: RefCell<BTreeMap<String, Box<RawValue>>>,
    /// Answers asked for many times, kept decoded (see [`Knowledge::remember_shared`]).
    decoded: RefCell<BTreeMap<String, Rc<dyn std::any::Any>>>,
    changed: Cell<bool>,
    keeping: Option<Keeping>,
}

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knowledge")
            .field("name", &self.name)
            .field("opened", &self.index.get().is_some())
            .field("answers", &self.answers.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Knowledge {
    /// What is known about `file` (named `name` in messages): the cache's entry when it has a
    /// current one, else a freshly opened index (an error when the file is not an ELF file
    /// rpatch can read). `lookup` says where its separate debug file may be beside it.
    pub fn open(
        file: File,
        name: &Path,
        lookup: Lookup,
        cache: &Rc<Cache>,
    ) -> Result<Self, SymbolError> {
        let io = |source| SymbolError::Io {
            path: name.to_path_buf(),
            source,
        };
        let identity = FileIdentity::of(&file).map_err(io)?;
        let keeping = cache.enabled().then(|| Keeping {
            cache: cache.clone(),
            key: Key::new(KIND, &identity, super::elf::read_build_id(&file).as_deref())
                .with("lookup", lookup.describe())
                .with("debug", debuginfo::search_config())
                .with("max-file-size", crate::files::max_file_size()),
            identity,
        });
        let stored = keeping
            .as_ref()
            .and_then(|k| k.cache.load::<Stored>(&k.key))
            .filter(|s| debuginfo::unchanged(&s.facts.debug_visited, lookup.root()));
        if let Some(stored) = stored {
            return Ok(Self {
                name: name.to_path_buf(),
                facts: stored.facts,
                index: OnceCell::new(),
                file: file.try_clone().ok(),
                opener: RefCell::new(Some(Opener {
                    file,
                    name: name.to_path_buf(),
                    lookup,
                })),
                answers: RefCell::new(stored.answers),
                decoded: RefCell::default(),
                changed: Cell::new(false),
                keeping,
            });
        }
        let index = open_index(&file, name, &lookup)?;
        Ok(Self {
            name: name.to_path_buf(),
            facts: Facts::of(&index),
            index: OnceCell::from(Some(Rc::new(index))),
            opener: RefCell::new(None),
            file: Some(file),
            answers: RefCell::new(BTreeMap::new()),
            decoded: RefCell::default(),
            changed: Cell::new(true),
            keeping,
        })
    }

    /// What is known about a file on rpatch's own side (the patch library), by path.
    pub fn open_host(path: &Path, cache: &Rc<Cache>) -> Result<Self, SymbolError> {
        let file = crate::files::open_host(path).map_err(|source| SymbolError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::open(file, path, Lookup::Host(path.to_path_buf()), cache)
    }

    /// The index, opened now if it was not (`None` when the file can no longer be read).
    pub fn index(&self) -> Option<Rc<SymbolIndex>> {
        self.index
            .get_or_init(|| {
                let opener = self.opener.borrow_mut().take()?;
                open_index(&opener.file, &opener.name, &opener.lookup)
                    .ok()
                    .map(Rc::new)
            })
            .clone()
    }

    /// Whether the file had to be read and parsed (nothing remembered answered everything).
    pub fn opened(&self) -> bool {
        self.index.get().is_some_and(Option::is_some)
    }

    /// The answer to question `key` of kind `table`: remembered, or derived now by `derive`
    /// from the index (and remembered). `None` only when the index is needed and cannot be
    /// opened any more. Other layers keep what they derive from the file here too (under their
    /// own table names).
    pub fn remember<T: Serialize + DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        derive: impl FnOnce(&SymbolIndex) -> T,
    ) -> Option<T> {
        if self.keeping.is_none() {
            return self.index().map(|index| derive(&index));
        }
        let slot = format!("{table}\u{1f}{key}");
        if let Some(value) = self.answers.borrow().get(&slot)
            && let Ok(known) = serde_json::from_str::<T>(value.get())
        {
            return Some(known);
        }
        let index = self.index()?;
        let answer = derive(&index);
        if let Ok(value) = serde_json::value::to_raw_value(&answer) {
            self.answers.borrow_mut().insert(slot, value);
            self.changed.set(true);
        }
        Some(answer)
    }

    /// What is remembered under `key` of `table`, if anything (nothing is derived).
    pub fn recall<T: DeserializeOwned>(&self, table: &str, key: &str) -> Option<T> {
        let slot = format!("{table}\u{1f}{key}");
        serde_json::from_str(self.answers.borrow().get(&slot)?.get()).ok()
    }

    /// Remembers `value` under `key` of `table`, replacing what was there: for facts learnt a
    /// little at a time (the addresses whose unwind rules were checked), kept only while the
    /// file is remembered at all.
    pub fn learn<T: Serialize>(&self, table: &str, key: &str, value: &T) {
        if self.keeping.is_none() {
            return;
        }
        if let Ok(value) = serde_json::value::to_raw_value(value) {
            let slot = format!("{table}\u{1f}{key}");
            self.answers.borrow_mut().insert(slot, value);
            self.changed.set(true);
        }
    }

    /// [`Self::remember`] for an answer asked for many times in one run (a table looked up for
    /// every word of several stacks): decoded once and shared.
    pub fn remember_shared<T: Serialize + DeserializeOwned + 'static>(
        &self,
        table: &str,
        key: &str,
        derive: impl FnOnce(&SymbolIndex) -> T,
    ) -> Option<Rc<T>> {
        let slot = format!("{table}\u{1f}{key}");
        if let Some(known) = self.decoded.borrow().get(&slot)
            && let Ok(known) = Rc::clone(known).downcast::<T>()
        {
            return Some(known);
        }
        let answer = Rc::new(self.remember(table, key, derive)?);
        self.decoded
            .borrow_mut()
            .insert(slot, answer.clone() as Rc<dyn std::any::Any>);
        Some(answer)
    }

    /// `len` bytes of the file at byte `offset` (zeros past its end, as the kernel maps a
    /// file), read from the file itself.
    pub fn read_at(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        if let Some(file) = &self.file {
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return None,
                }
            }
            return Some(buf);
        }
        let index = self.index()?;
        let data = index.file_data();
        let start = usize::try_from(offset).ok()?;
        let mut buf = vec![0u8; len];
        if let Some(have) = data.get(start..) {
            let n = have.len().min(len);
            buf[..n].copy_from_slice(&have[..n]);
        }
        Some(buf)
    }

    /// The first `len` bytes of the file as it is now (all of it when it is shorter), read
    /// through the descriptor opened, with the SHA-256 (hex) of the whole file: remembered while
    /// the file keeps the identity it had when opened (checked after the read: then only the
    /// bytes asked for are read), computed from all its bytes otherwise. What a patch library is
    /// loaded and journaled from. The flag says whether the bytes are those everything known
    /// here was derived from (the file kept its identity).
    pub fn contents(&self, len: u64) -> std::io::Result<(Vec<u8>, String, bool)> {
        let Some(file) = &self.file else {
            return Err(std::io::Error::other("no file behind this index"));
        };
        let cap = crate::files::max_file_size();
        let same = || {
            self.keeping
                .as_ref()
                .is_some_and(|k| FileIdentity::of(file).ok() == Some(k.identity))
        };
        if self.keeping.is_some() {
            let slot = "contents\u{1f}sha256";
            let known = self
                .answers
                .borrow()
                .get(slot)
                .and_then(|v| serde_json::from_str::<String>(v.get()).ok());
            if let Some(sha256) = known {
                let prefix = read_prefix(file, len, cap)?;
                if same() {
                    return Ok((prefix, sha256, true));
                }
            }
        }
        let mut bytes = crate::files::read_capped(file, cap)?;
        let sha256 = crate::hex::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let unchanged = same();
        if unchanged && self.keeping.is_some() {
            self.remember("contents", "sha256", |_| sha256.clone());
        }
        bytes.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        Ok((bytes, sha256, unchanged))
    }

    /// The name used in messages.
    pub fn path(&self) -> &Path {
        &self.name
    }

    /// The file's architecture (see [`SymbolIndex::architecture`]).
    pub fn architecture(&self) -> object::Architecture {
        architecture_named(&self.facts.architecture)
    }

    /// See [`SymbolIndex::is_position_independent`].
    pub fn is_position_independent(&self) -> bool {
        self.facts.position_independent
    }

    /// See [`SymbolIndex::build_id`].
    pub fn build_id(&self) -> Option<&[u8]> {
        self.facts.build_id.as_deref()
    }

    /// See [`SymbolIndex::load_segments`].
    pub fn load_segments(&self) -> &[LoadSegment] {
        &self.facts.segments
    }

    /// See [`SymbolIndex::debug_info`].
    pub fn debug_info(&self) -> &DebugInfoSource {
        &self.facts.debug_source
    }

    /// See [`SymbolIndex::has_dwarf`].
    pub fn has_dwarf(&self) -> bool {
        !matches!(self.facts.debug_source, DebugInfoSource::Missing { .. })
    }

    /// See [`SymbolIndex::rustc_version`].
    pub fn rustc_version(&self) -> Option<&str> {
        self.facts
            .compilers
            .iter()
            .find(|c| c.starts_with("rustc version"))
            .map(String::as_str)
    }

    /// See [`SymbolIndex::resolve`].
    pub fn resolve(&self, query: &str) -> Resolution {
        self.remember("resolve", query.trim(), |index| index.resolve(query))
            .unwrap_or(Resolution::NotFound {
                suggestions: Vec::new(),
            })
    }

    /// See [`SymbolIndex::search`].
    pub fn search(&self, pattern: &Pattern) -> Vec<FunctionSymbol> {
        self.remember("search", &format!("{pattern:?}"), |index| {
            index.search(pattern)
        })
        .unwrap_or_default()
    }

    /// See [`SymbolIndex::details`].
    pub fn details(&self, f: &FunctionSymbol) -> FunctionDetails {
        self.remember("details", &format!("{:#x}", f.address), |index| {
            index.details(f)
        })
        .unwrap_or_default()
    }

    /// See [`SymbolIndex::aliases`].
    pub fn aliases(&self, f: &FunctionSymbol) -> Vec<String> {
        self.remember("aliases", &function_key(f), |index| index.aliases(f))
            .unwrap_or_default()
    }

    /// See [`SymbolIndex::clones`].
    pub fn clones(&self, f: &FunctionSymbol) -> Vec<CloneSymbol> {
        let key = f.linkage_name.as_deref().unwrap_or_default();
        self.remember("clones", key, |index| index.clones(f))
            .unwrap_or_default()
    }

    /// See [`SymbolIndex::inline_scan`]. The copies of each target function are remembered;
    /// one scan finds those of every target not known yet. A scan with a pattern is not
    /// remembered.
    pub fn inline_scan(
        &self,
        targets: &[FunctionSymbol],
        pattern: Option<&Pattern>,
    ) -> (Vec<Vec<InlineSite>>, Vec<InlinedOnly>) {
        if pattern.is_some() || self.keeping.is_none() {
            return self
                .index()
                .map(|index| index.inline_scan(targets, pattern))
                .unwrap_or_else(|| (vec![Vec::new(); targets.len()], Vec::new()));
        }
        let slot = |f: &FunctionSymbol| format!("inlined\u{1f}{}", function_key(f));
        let mut sites: Vec<Option<Vec<InlineSite>>> = targets
            .iter()
            .map(|f| {
                let answers = self.answers.borrow();
                answers
                    .get(&slot(f))
                    .and_then(|v| serde_json::from_str::<Vec<InlineSite>>(v.get()).ok())
            })
            .collect();
        let missing: Vec<usize> = (0..targets.len()).filter(|&i| sites[i].is_none()).collect();
        if !missing.is_empty() {
            let wanted: Vec<FunctionSymbol> = missing.iter().map(|&i| targets[i].clone()).collect();
            let found = match self.index() {
                Some(index) => index.inline_scan(&wanted, None).0,
                None => vec![Vec::new(); wanted.len()],
            };
            for (&i, s) in missing.iter().zip(found) {
                if self.opened()
                    && let Ok(value) = serde_json::value::to_raw_value(&s)
                {
                    self.answers.borrow_mut().insert(slot(&targets[i]), value);
                    self.changed.set(true);
                }
                sites[i] = Some(s);
            }
        }
        (
            sites.into_iter().map(Option::unwrap_or_default).collect(),
            Vec::new(),
        )
    }

    /// See [`SymbolIndex::file_bytes`]: read from the file through its segments.
    pub fn file_bytes(&self, vaddr: u64, len: usize) -> Option<Vec<u8>> {
        let end = vaddr.checked_add(len as u64)?;
        let seg = self.facts.segments.iter().find(|seg| {
            seg.vaddr
                .checked_add(seg.filesz)
                .is_some_and(|seg_end| vaddr >= seg.vaddr && end <= seg_end)
        })?;
        let bytes = self.read_at(seg.offset + (vaddr - seg.vaddr), len)?;
        // Within the segment's file bytes, so never past the file's end unless it shrank.
        Some(bytes)
    }

    /// See [`SymbolIndex::symbol_address`].
    pub fn symbol_address(&self, linkage_name: &str) -> Option<u64> {
        self.remember("address", linkage_name, |index| {
            index.symbol_address(linkage_name)
        })
        .flatten()
    }

    /// See [`SymbolIndex::defined_symbols`].
    pub fn defined_symbols(&self, name: &str) -> Vec<DefinedSymbol> {
        self.remember("defined", name, |index| index.defined_symbols(name))
            .unwrap_or_default()
    }

    /// See [`SymbolIndex::symbol_versions`].
    pub fn symbol_versions(&self) -> BTreeSet<String> {
        self.remember("versions", "", |index| {
            index
                .symbol_versions()
                .into_iter()
                .map(str::to_string)
                .collect::<BTreeSet<String>>()
        })
        .unwrap_or_default()
    }

    /// See [`SymbolIndex::undefined_references`].
    pub fn undefined_references(&self) -> Result<Vec<String>, String> {
        self.remember("undefined", "", SymbolIndex::undefined_references)
            .unwrap_or_else(|| Err(format!("{} can no longer be read", self.name.display())))
    }
}

impl Drop for Knowledge {
    /// Stores what was learnt, unless the file changed meanwhile (its identity now differs) or
    /// too recently to be told apart from an earlier content (see `cache::SETTLE`).
    fn drop(&mut self) {
        let Some(keeping) = &self.keeping else {
            return;
        };
        if !self.changed.get() {
            return;
        }
        let same = self
            .file
            .as_ref()
            .and_then(|f| FileIdentity::of(f).ok())
            .is_some_and(|now| now == keeping.identity);
        let settled = keeping.identity.settled()
            && self
                .facts
                .debug_visited
                .iter()
                .all(|v| v.identity.is_none_or(|id| id.settled()));
        if !same || !settled {
            return;
        }
        let stored = Stored {
            facts: self.facts.clone(),
            answers: std::mem::take(&mut *self.answers.borrow_mut()),
        };
        keeping.cache.store(&keeping.key, &stored);
    }
}

/// The first `len` bytes of `file` (fewer when it is shorter), at most `cap`.
fn read_prefix(file: &File, len: u64, cap: u64) -> std::io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    if size > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{size} bytes, over the {cap}-byte cap"),
        ));
    }
    let mut buf = vec![0u8; size.min(len) as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// Opens the index of `file`: a file on rpatch's side is mapped, a target's is read as a copy
/// (see `FileData`).
fn open_index(file: &File, name: &Path, lookup: &Lookup) -> Result<SymbolIndex, SymbolError> {
    match lookup {
        Lookup::Host(path) => SymbolIndex::open_mapped(file, path),
        _ => SymbolIndex::open_file(file, name, &lookup.location()),
    }
}

/// The key of a question about one function: its address and names.
fn function_key(f: &FunctionSymbol) -> String {
    format!(
        "{:#x} {} {}",
        f.address,
        f.linkage_name.as_deref().unwrap_or_default(),
        f.name
    )
}

/// `object::Architecture` from its name as `{:?}` prints it (the architectures rpatch may meet
/// in a target or a library; others read back as `Unknown`).
fn architecture_named(name: &str) -> object::Architecture {
    use object::Architecture as A;
    [
        A::Aarch64,
        A::Aarch64_Ilp32,
        A::Arm,
        A::I386,
        A::X86_64,
        A::X86_64_X32,
        A::Mips,
        A::Mips64,
        A::PowerPc,
        A::PowerPc64,
        A::Riscv32,
        A::Riscv64,
        A::S390x,
        A::Sparc64,
        A::LoongArch64,
    ]
    .into_iter()
    .find(|a| format!("{a:?}") == name)
    .unwrap_or(A::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every architecture named by `{:?}` reads back as itself.
    #[test]
    fn architectures_read_back_by_name() {
        for a in [object::Architecture::X86_64, object::Architecture::Aarch64] {
            assert_eq!(architecture_named(&format!("{a:?}")), a);
        }
        assert_eq!(architecture_named("Vax"), object::Architecture::Unknown);
    }
}
