//! The ELF objects mapped in a process: where each is loaded (its bias) and which file to read for
//! its symbols — the one actually mapped, even if the path on disk was replaced since.

use super::Mapping;
use crate::error::hex;
use crate::symbols::{LoadSegment, SymbolError, SymbolIndex};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One ELF object mapped in the target.
#[derive(Debug, Clone)]
pub struct LoadedModule {
    /// Path as shown in /proc/PID/maps.
    pub path: PathBuf,
    /// A path rpatch can open to read the mapped file (map_files entry or the path seen through
    /// /proc/PID/root, which also resolves other mount namespaces).
    pub open_path: PathBuf,
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

    /// File name of the module (for matching libc, ld.so).
    pub fn file_name(&self) -> &str {
        self.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    }
}

/// The mapped modules of a process and a cache of their symbol indexes.
pub struct ModuleMap {
    pid: i32,
    /// Modules in address order; the first executable-file mapping's module is not necessarily
    /// the main executable, see `main_executable`.
    pub modules: Vec<LoadedModule>,
    exe: PathBuf,
    cache: HashMap<PathBuf, Rc<SymbolIndex>>,
}

impl ModuleMap {
    /// Builds the module list from the maps of `pid`; `exe` is /proc/PID/exe's target.
    pub fn new(pid: i32, maps: &[Mapping], exe: &Path) -> Self {
        let mut modules: Vec<LoadedModule> = Vec::new();
        for m in maps.iter().filter(|m| m.is_file()) {
            let path = m.file_path();
            if let Some(existing) = modules.iter_mut().find(|x| x.path == path) {
                existing.start = existing.start.min(m.start);
                existing.end = existing.end.max(m.end);
                if m.start == existing.start {
                    existing.first_offset = m.offset;
                }
                continue;
            }
            let map_file =
                PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
            let open_path = if std::fs::File::open(&map_file).is_ok() {
                map_file
            } else {
                super::proc_dir(pid)
                    .join("root")
                    .join(path.strip_prefix("/").unwrap_or(&path))
            };
            modules.push(LoadedModule {
                path,
                open_path,
                start: m.start,
                end: m.end,
                first_offset: m.offset,
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
            cache: HashMap::new(),
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

    /// The first module whose file name starts with `prefix` (e.g. `libc.so`, `ld-linux`).
    pub fn find_by_name(&self, prefix: &str) -> Option<&LoadedModule> {
        self.modules
            .iter()
            .find(|m| m.file_name().starts_with(prefix))
    }

    /// Build-id (hex) of the module mapped from `path`, read from the mapped file itself (which
    /// may differ from the file now at that path). `None` when it is not mapped or has none.
    pub fn mapped_build_id(&mut self, path: &Path) -> Option<String> {
        let module = self.modules.iter().find(|m| m.path == path)?.clone();
        self.symbols(&module).ok()?.build_id().map(hex)
    }

    /// Build-id (hex) of the file at `path` on disk now, as the target sees its file system.
    pub fn disk_build_id(&self, path: &Path) -> Option<String> {
        let on_disk = super::proc_dir(self.pid)
            .join("root")
            .join(path.strip_prefix("/").unwrap_or(path));
        SymbolIndex::open(&on_disk).ok()?.build_id().map(hex)
    }

    /// The symbol index of a module, opened once.
    pub fn symbols(&mut self, module: &LoadedModule) -> Result<Rc<SymbolIndex>, SymbolError> {
        if let Some(index) = self.cache.get(&module.path) {
            return Ok(index.clone());
        }
        let index = Rc::new(SymbolIndex::open(&module.open_path)?);
        self.cache.insert(module.path.clone(), index.clone());
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
