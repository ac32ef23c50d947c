//! The C library functions rpatch calls in the target, found once per attach.

use super::InjectError;
use crate::process::ModuleMap;

/// Runtime addresses of the libc functions rpatch calls in the target.
#[derive(Debug, Clone, Copy)]
pub struct LoaderFunctions {
    /// `dlopen`, or glibc < 2.34's `__libc_dlopen_mode`.
    pub dlopen: u64,
    /// Whether `dlopen` is `__libc_dlopen_mode` (needs the `__RTLD_DLOPEN` flag).
    pub legacy_dlopen: bool,
    /// `dlerror`, when the target has it in libc.
    pub dlerror: Option<u64>,
    /// `mmap`.
    pub mmap: u64,
    /// `__errno_location`, to save and restore the borrowed thread's errno.
    pub errno_location: Option<u64>,
}

/// `__RTLD_DLOPEN`: the internal flag old glibc's `__libc_dlopen_mode` callers pass with the mode.
const RTLD_DLOPEN_INTERNAL: u64 = 0x8000_0000;

impl LoaderFunctions {
    /// Finds the functions in the target's libc (glibc, or musl's combined libc/loader).
    pub fn find(modules: &mut ModuleMap) -> Result<Self, InjectError> {
        let pid = modules.pid();
        let libc = modules
            .c_library()
            .cloned()
            .ok_or(InjectError::NoDlopen { pid })?;
        let index = modules
            .symbols(&libc)
            .map_err(|_| InjectError::NoDlopen { pid })?;
        let bias = libc.bias(index.load_segments());
        let at = |name: &str| index.symbol_address(name).map(|a| a.wrapping_add(bias));
        let (dlopen, legacy_dlopen) = match at("dlopen") {
            Some(a) => (a, false),
            None => (
                at("__libc_dlopen_mode").ok_or(InjectError::NoDlopen { pid })?,
                true,
            ),
        };
        let mmap = at("mmap").ok_or_else(|| InjectError::MissingFunction {
            pid,
            function: "mmap",
            module: libc.path.display().to_string(),
        })?;
        Ok(Self {
            dlopen,
            legacy_dlopen,
            dlerror: if legacy_dlopen { None } else { at("dlerror") },
            mmap,
            errno_location: at("__errno_location"),
        })
    }

    /// The `mode` argument for a `RTLD_NOW` load with the entry point found.
    pub fn dlopen_mode(&self) -> u64 {
        let now = libc::RTLD_NOW as u64;
        if self.legacy_dlopen {
            now | RTLD_DLOPEN_INTERNAL
        } else {
            now
        }
    }
}
