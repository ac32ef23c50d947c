//! The ELF objects mapped in a process: where each is loaded (its bias) and which file to read for
//! its symbols — the one actually mapped, even if the path on disk was replaced since.

use super::{Mapping, Runtime};
use crate::cache::Cache;
use crate::files::{self, Root};
use crate::hex::hex;
use crate::symbols::{Knowledge, LoadSegment, Lookup, SymbolError};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One ELF object mapped in the target.
#[derive(Debug, Clone, Default)]
pub struct LoadedModule {
    /// Path as shown in /proc/PID/maps.
    pub path: PathBuf,
    /// The `/proc/PID/map_files` entry of its first mapping, which names it in messages; open
    /// it with [`ModuleMap::open`], which checks what it gets.
    pub open_path: PathBuf,
    /// Device of the mapped file (`st_dev` encoding), from /proc/PID/maps.
    pub dev: u64,
    /// Inode of the mapped file, from /proc/PID/maps.
    pub inode: u64,
    /// Whether `path` may be looked up in the target's file system (see
    /// [`Mapping::has_file_name`]): false for a memfd or a deleted file.
    pub named: bool,
    /// Lowest mapped address.
    pub start: u64,
    /// End of the highest mapping.
    pub end: u64,
    /// Offset of the first mapping (0 for a normal ELF load).
    pub first_offset: u64,
}

impl LoadedModule {
    /// Runtime address minus link-time address, from the first mapping and the file's PT_LOADs.
    pub fn bias(&self, segments: &[LoadSegment]) -> u64 {
        const PAGE: u64 = 4096;
        let seg = segments
            .iter()
            .find(|s| s.offset & !(PAGE - 1) == self.first_offset)
            .or_else(|| segments.first());
        match seg {
            Some(seg) => self.start.wrapping_sub(seg.vaddr & !(PAGE - 1)),
            None => 0,
        }
    }

    /// Whether `addr` falls inside the module's mapped span.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// File name of the module.
    pub fn file_name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }

    /// What the module is in the C runtime, if it is part of it (see [`Runtime`]).
    pub fn runtime(&self) -> Option<Runtime> {
        Runtime::of(self.file_name())
    }
}

/// The mapped modules of a process and what is known about each (its symbols, opened once;
/// remembered across runs when a program-knowledge cache is given, see [`Self::with_cache`]).
///
/// Module files are the target's: they are opened through `/proc/PID/map_files` (the very inode
/// mapped), or, where that is not permitted (it needs CAP_SYS_ADMIN), by name inside the
/// target's root ([`Root`]); either way the file must be a regular file with the device and
/// inode the maps line names, and it is read as a size-capped copy.
pub struct ModuleMap {
    pid: i32,
    /// Modules in address order; the first executable-file mapping's module is not necessarily
    /// the main executable, see `main_executable`.
    pub modules: Vec<LoadedModule>,
    exe: PathBuf,
    known: HashMap<PathBuf, Rc<Knowledge>>,
    cache: Rc<Cache>,
    /// Start time of the process when the map was made: the root is only opened for it.
    start_time: Option<u64>,
    root: OnceCell<Option<Root>>,
}

impl ModuleMap {
    /// Builds the module list from the maps of `pid`; `exe` is /proc/PID/exe's target.
    pub fn new(pid: i32, maps: &[Mapping], exe: &Path) -> Self {
        let mut modules: Vec<LoadedModule> = Vec::new();
        // Looked up once for all modules (see `proc_dir`).
        let mut proc_dir: Option<PathBuf> = None;
        for m in maps.iter().filter(|m| m.is_file()) {
            let path = m.file_path();
            // One module per mapped file: two copies of a library (two memfds of one content
            // have one name) are two modules.
            if let Some(existing) = modules
                .iter_mut()
                .find(|x| x.path == path && x.dev == m.dev && x.inode == m.inode)
            {
                existing.start = existing.start.min(m.start);
                existing.end = existing.end.max(m.end);
                if m.start == existing.start {
                    existing.first_offset = m.offset;
                }
                continue;
            }
            modules.push(LoadedModule {
                path,
                open_path: proc_dir
                    .get_or_insert_with(|| super::proc_dir(pid))
                    .join("map_files")
                    .join(format!("{:x}-{:x}", m.start, m.end)),
                start: m.start,
                end: m.end,
                first_offset: m.offset,
                dev: m.dev,
                inode: m.inode,
                named: m.has_file_name(),
            });
        }
        // Only ELF objects with executable code matter.
        modules.retain(|module| {
            maps.iter()
                .any(|m| m.executable() && module.contains(m.start))
        });
        Self {
            pid,
            modules,
            exe: exe.to_path_buf(),
            known: HashMap::new(),
            cache: Rc::new(Cache::disabled()),
            start_time: super::read_stat(pid, pid).ok().map(|(_, start, _)| start),
            root: OnceCell::new(),
        }
    }

    /// Uses `cache` to remember what is learnt about the modules (and to find what earlier runs
    /// learnt about the same files).
    pub fn with_cache(mut self, cache: Rc<Cache>) -> Self {
        self.cache = cache;
        self
    }

    /// The target's root directory, opened once (`None` when it cannot be).
    pub fn root(&self) -> Option<&Root> {
        self.root
            .get_or_init(|| Root::of_process(self.pid, self.start_time).ok())
            .as_ref()
    }

    /// Opens the file mapped as `module` for reading: its map_files entry, else its name inside
    /// the target's root (never for a memfd or a deleted file). Either way it must be a regular
    /// file with the device and inode of the maps line, so nothing the target put at a name
    /// (a symlink, a FIFO, another file) is read instead.
    pub fn open(&self, module: &LoadedModule) -> io::Result<File> {
        let checked = |file: io::Result<File>| {
            let (file, meta) = files::regular_with_metadata(file?)?;
            files::is_inode(&meta, module.dev, module.inode)?;
            Ok(file)
        };
        let by_map_files = checked(
            nix::fcntl::open(
                &module.open_path,
                files::READ_FLAGS,
                nix::sys::stat::Mode::empty(),
            )
            .map(File::from)
            .map_err(io::Error::from),
        );
        match by_map_files {
            Ok(file) => Ok(file),
            Err(e) if !module.named => Err(e),
            Err(_) => {
                let root = self.root().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("cannot open /proc/{}/root", self.pid),
                    )
                })?;
                checked(root.open(&module.path))
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The main executable's module.
    pub fn main_executable(&self) -> Option<&LoadedModule> {
        let exe = self.exe.to_string_lossy();
        let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
        self.modules.iter().find(|m| m.path == Path::new(exe))
    }

    /// The module mapped at `addr`.
    pub fn module_at(&self, addr: u64) -> Option<&LoadedModule> {
        self.modules.iter().find(|m| m.contains(addr))
    }

    /// The C library: glibc's, or musl's (which is also its loader).
    pub fn c_library(&self) -> Option<&LoadedModule> {
        self.modules
            .iter()
            .find(|m| m.runtime().is_some_and(Runtime::is_c_library))
    }

    /// glibc's dynamic loader (musl's is its C library, see [`Self::c_library`]).
    pub fn glibc_loader(&self) -> Option<&LoadedModule> {
        self.modules
            .iter()
            .find(|m| m.runtime() == Some(Runtime::Loader))
    }

    /// Build-id (hex) of the module mapped from `path`, read from the mapped file itself (which
    /// may differ from the file now at that path). `None` when it is not mapped or has none.
    pub fn mapped_build_id(&mut self, path: &Path) -> Option<String> {
        let module = self.modules.iter().find(|m| m.path == path)?.clone();
        self.symbols(&module).ok()?.build_id().map(hex)
    }

    /// Build-id (hex) of the file at `path` on disk now, as the target sees its file system
    /// (resolved inside its root; never a memfd or deleted name).
    pub fn disk_build_id(&self, path: &Path) -> Option<String> {
        let named = self
            .modules
            .iter()
            .find(|m| m.path == path)
            .is_none_or(|m| m.named);
        if !named || path.to_string_lossy().starts_with("/memfd:") {
            return None;
        }
        let file = self.root()?.open(path).ok()?;
        crate::symbols::read_build_id(&file).map(|id| hex(&id))
    }

    /// What is known about a module's symbols (see [`Knowledge`]), opened once.
    pub fn symbols(&mut self, module: &LoadedModule) -> Result<Rc<Knowledge>, SymbolError> {
        if let Some(known) = self.known.get(&module.path) {
            return Ok(known.clone());
        }
        let file = self.open(module).map_err(|source| SymbolError::Io {
            path: module.open_path.clone(),
            source,
        })?;
        let lookup = match self.root().map(Root::try_clone) {
            Some(Ok(root)) if module.named => Lookup::InRoot {
                root,
                path: module.path.clone(),
            },
            _ => Lookup::Nowhere,
        };
        // A memfd (a patch library's copy) belongs to this process alone: nothing to remember.
        let cache = if module.path.to_string_lossy().starts_with("/memfd:") {
            Rc::new(Cache::disabled())
        } else {
            self.cache.clone()
        };
        let known = Rc::new(Knowledge::open(file, &module.open_path, lookup, &cache)?);
        self.known.insert(module.path.clone(), known.clone());
        Ok(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_copies_under_one_name_are_two_modules() {
        let maps = crate::process::parse_maps(
            "7f0000000000-7f0000001000 r--p 00000000 00:01 11 /memfd:rpatch:ab (deleted)\n\
             7f0000001000-7f0000002000 r-xp 00001000 00:01 11 /memfd:rpatch:ab (deleted)\n\
             7f1000000000-7f1000001000 r--p 00000000 00:01 12 /memfd:rpatch:ab (deleted)\n\
             7f1000001000-7f1000002000 r-xp 00001000 00:01 12 /memfd:rpatch:ab (deleted)\n",
        );
        let me = std::process::id() as i32;
        let map = ModuleMap::new(me, &maps, Path::new("/nonexistent"));
        assert_eq!(map.modules.len(), 2);
        assert_eq!(map.modules[0].end, 0x7f00_0000_2000);
        assert!(map.modules.iter().all(|m| !m.named));
        // A memfd is never looked up by name: without its map_files entry it cannot be opened.
        assert!(map.open(&map.modules[0]).is_err());
    }

    #[test]
    fn bias_of_pie_and_fixed_executables() {
        let seg = |vaddr, offset| LoadSegment {
            vaddr,
            memsz: 0x1000,
            offset,
            filesz: 0x1000,
            executable: false,
        };
        let pie = LoadedModule {
            path: "/a".into(),
            open_path: "/a".into(),
            start: 0x5555_0000_0000,
            end: 0x5555_0000_5000,
            first_offset: 0,
            ..Default::default()
        };
        assert_eq!(
            pie.bias(&[seg(0, 0), seg(0x1000, 0x1000)]),
            0x5555_0000_0000
        );
        let fixed = LoadedModule {
            start: 0x400000,
            end: 0x405000,
            ..pie
        };
        assert_eq!(fixed.bias(&[seg(0x400000, 0)]), 0);
    }
}
