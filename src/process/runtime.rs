//! The one place rpatch recognises the C runtime of a process by file name: the C library, the
//! dynamic loader, and musl's single object that is both. Every module that must find one
//! (the loader functions, the slack to bootstrap from, the choice of a thread, the unwinder's
//! "thread start" frames, the glibc version check) asks here.

/// What a module of the C runtime is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// glibc's C library (`libc.so.6`, or `libc-2.31.so` on older systems).
    CLibrary,
    /// glibc's dynamic loader (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`, `ld64.so.2`,
    /// `ld.so.1`): holds `_r_debug`.
    Loader,
    /// musl's C library, which is also its dynamic loader (`ld-musl-x86_64.so.1`, also reached
    /// as `libc.musl-*.so.1`).
    Musl,
}

impl Runtime {
    /// What a module file named `file_name` (no directory) is, if it is part of the C runtime.
    pub fn of(file_name: &str) -> Option<Runtime> {
        if file_name.starts_with("ld-musl") || file_name.starts_with("libc.musl") {
            Some(Runtime::Musl)
        } else if file_name.starts_with("libc.so") || file_name.starts_with("libc-") {
            Some(Runtime::CLibrary)
        } else if file_name.starts_with("ld-linux")
            || file_name.starts_with("ld64")
            || file_name.starts_with("ld.so")
        {
            Some(Runtime::Loader)
        } else {
            None
        }
    }

    /// Holds the C library's functions (`dlopen` from glibc 2.34, `mmap`, `malloc`...).
    pub fn is_c_library(self) -> bool {
        matches!(self, Runtime::CLibrary | Runtime::Musl)
    }

    /// Holds the dynamic loader's code (and its lock).
    pub fn is_loader(self) -> bool {
        matches!(self, Runtime::Loader | Runtime::Musl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_modules_are_recognised_by_file_name() {
        assert_eq!(Runtime::of("libc.so.6"), Some(Runtime::CLibrary));
        assert_eq!(Runtime::of("libc-2.31.so"), Some(Runtime::CLibrary));
        assert_eq!(Runtime::of("ld-linux-x86-64.so.2"), Some(Runtime::Loader));
        assert_eq!(Runtime::of("ld-linux-aarch64.so.1"), Some(Runtime::Loader));
        assert_eq!(Runtime::of("ld64.so.2"), Some(Runtime::Loader));
        assert_eq!(Runtime::of("ld-musl-x86_64.so.1"), Some(Runtime::Musl));
        assert_eq!(Runtime::of("libc.musl-x86_64.so.1"), Some(Runtime::Musl));
        for other in [
            "libcrypto.so.3",
            "libc++.so.1",
            "libcalcapp.so",
            "ldconfig",
            "app",
        ] {
            assert_eq!(Runtime::of(other), None, "{other}");
        }
        assert!(Runtime::Musl.is_c_library() && Runtime::Musl.is_loader());
        assert!(!Runtime::CLibrary.is_loader() && !Runtime::Loader.is_c_library());
    }
}
