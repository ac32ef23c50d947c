//! The facts inside [`Error`](super::Error)'s variants that are not another layer's error: what
//! was wrong with a library, which functions a name matched, which policy refused, and so on.
//! Each renders the words of its message.

use crate::journal::PatchState;
use crate::process::ForkFlag;
use crate::symbols::{InlineSite, InlineSites, SymbolError};
use std::fmt;
use std::path::PathBuf;

/// Why the patch library cannot be read.
#[derive(Debug)]
pub enum LibraryAccess {
    /// Opening or reading it failed.
    Io(std::io::Error),
    /// The path names something other than a regular file: `a directory`, `a FIFO`...
    NotAFile(&'static str),
}

impl LibraryAccess {
    /// The problem of a path whose metadata shows `file_type`, when it is not a regular file.
    pub fn not_a_file(file_type: std::fs::FileType) -> Option<Self> {
        use std::os::unix::fs::FileTypeExt;
        let what = if file_type.is_file() {
            return None;
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else {
            "something other than a regular file"
        };
        Some(LibraryAccess::NotAFile(what))
    }

    pub(super) fn message(&self, path: &std::path::Path) -> String {
        match self {
            LibraryAccess::Io(source) => format!(
                "cannot read patch library {}: {source}: check the path and its permissions",
                path.display()
            ),
            LibraryAccess::NotAFile(what) => format!(
                "patch library {} is {what}, not a shared object file: give the path of the .so to load",
                path.display()
            ),
        }
    }
}

/// Why the patch library cannot be used.
#[derive(Debug)]
pub enum LibraryProblem {
    /// It is not an ELF file rpatch can parse.
    NotElf(SymbolError),
    /// It is built for another architecture.
    WrongArchitecture {
        /// Its architecture.
        found: object::Architecture,
        /// The target's (and rpatch's).
        ours: object::Architecture,
    },
    /// It is an executable, not a shared object.
    Executable,
    /// Its undefined references cannot be read.
    Unreadable(String),
    /// Its content is not what the manifest that names it says (the file was changed, or the
    /// manifest was made for another build of the library).
    HashMismatch {
        /// The SHA-256 (hex) the manifest gives.
        expected: String,
        /// The SHA-256 (hex) of the file's content.
        found: String,
    },
    /// It references a name that several different private symbols of one module carry.
    AmbiguousPrivateSymbol {
        /// The name referenced.
        name: String,
        /// The module holding them.
        module: PathBuf,
        /// Each symbol and its runtime address.
        symbols: Vec<(String, u64)>,
    },
}

/// A readable name of an architecture.
pub(crate) fn architecture_name(arch: object::Architecture) -> String {
    match arch {
        object::Architecture::X86_64 => "x86_64".into(),
        object::Architecture::Aarch64 => "aarch64".into(),
        object::Architecture::I386 => "i386".into(),
        object::Architecture::Arm => "arm".into(),
        object::Architecture::Riscv64 => "riscv64".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl fmt::Display for LibraryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LibraryProblem::NotElf(e) => write!(
                f,
                "{e}: build it as a shared object (-shared -fPIC, or a Rust cdylib)"
            ),
            LibraryProblem::WrongArchitecture { found, ours } => write!(
                f,
                "it is built for {}, the target runs {}: build it for the target's architecture",
                architecture_name(*found),
                architecture_name(*ours)
            ),
            LibraryProblem::Executable => {
                f.write_str("it is an executable, not a shared object: link it with -shared")
            }
            LibraryProblem::Unreadable(reason) => f.write_str(reason),
            LibraryProblem::HashMismatch { expected, found } => write!(
                f,
                "its SHA-256 is {found}, the manifest says {expected}: nothing was touched; rebuild the manifest (rpatch manifest new) or restore the library it was made for"
            ),
            LibraryProblem::AmbiguousPrivateSymbol {
                name,
                module,
                symbols,
            } => {
                let mut addresses: Vec<u64> = symbols.iter().map(|s| s.1).collect();
                addresses.sort_unstable();
                addresses.dedup();
                let listed: Vec<String> = symbols
                    .iter()
                    .map(|(n, a)| format!("{n} at {a:#x}"))
                    .collect();
                write!(
                    f,
                    "it references {name}, which names {} different private symbols of {} ({}): rpatch cannot tell which one the patch means",
                    addresses.len(),
                    module.display(),
                    listed.join(", ")
                )
            }
        }
    }
}

/// One function a name matches, as an ambiguity lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its name.
    pub name: String,
    /// Runtime entry address.
    pub address: u64,
    /// The module holding it.
    pub module: PathBuf,
    /// `file:line` of its definition, when known.
    pub location: Option<String>,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let module = self
            .module
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        write!(f, "{} at {:#x} in {module}", self.name, self.address)?;
        if let Some(location) = &self.location {
            write!(f, " ({location})")?;
        }
        Ok(())
    }
}

/// Candidates joined for a message.
pub(super) struct Candidates<'a>(pub(super) &'a [Candidate]);

impl fmt::Display for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Where the functions of an ambiguous name are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmbiguityScope {
    /// All in one module; `generic` when they are instances of one generic function (each can
    /// be named with its type arguments).
    OneModule {
        /// Instances of one generic function.
        generic: bool,
    },
    /// In several modules (the executable does not define it, several libraries do).
    SeveralModules,
}

impl AmbiguityScope {
    pub(super) fn advice(self) -> &'static str {
        match self {
            AmbiguityScope::OneModule { generic: true } => {
                "; these are instances of one generic function: name one with its type arguments (app::f::<u32>), or pass --all-matches to patch each"
            }
            AmbiguityScope::OneModule { generic: false } => "; or pass --all-matches to patch each",
            AmbiguityScope::SeveralModules => "",
        }
    }
}

/// The end of a not-found message: the suggestions, or where the name was looked for.
pub(super) struct NotFoundHint<'a>(pub(super) &'a [String]);

impl fmt::Display for NotFoundHint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(" (searched the executable and every mapped library)")
        } else {
            write!(f, ": did you mean {}?", self.0.join(", "))
        }
    }
}

/// Where `resolve` searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchPlace {
    /// The modules mapped by a process.
    Process(i32),
    /// One file.
    File(PathBuf),
    /// Nowhere: neither a PID nor a file was given.
    Nothing,
}

impl SearchPlace {
    pub(super) fn hint(&self, suggestions: &[String]) -> String {
        match self {
            SearchPlace::Nothing => ": give a PID or --exe PATH".into(),
            _ if suggestions.is_empty() => " (as exact name and as substring)".into(),
            _ => format!(": did you mean {}?", suggestions.join(", ")),
        }
    }
}

impl fmt::Display for SearchPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SearchPlace::Process(pid) => write!(f, "PID {pid}"),
            SearchPlace::File(path) => write!(f, "{}", path.display()),
            SearchPlace::Nothing => f.write_str("nothing"),
        }
    }
}

/// Why a function cannot take an entry jump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpatchableReason {
    /// What the ISA layer found (too small, a branch into the bytes a jump overwrites).
    Code(rpatch_arch::Unpatchable),
    /// Its code is not backed by the module's file.
    NotInFile,
    /// The same function was named twice in one attach.
    NamedTwice,
    /// It exists only inlined: there is no out-of-line copy to redirect.
    OnlyInlined {
        /// The module searched (file name).
        module: String,
        /// Where it was inlined.
        sites: Vec<InlineSite>,
    },
    /// No island page could be mapped within reach and the absolute jump does not fit.
    NoRoom {
        /// Bytes available for a jump.
        room: u64,
        /// Bytes of the absolute jump.
        needed: u64,
    },
}

impl fmt::Display for UnpatchableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnpatchableReason::Code(e) => write!(f, "{e}"),
            UnpatchableReason::NotInFile => f.write_str("its code is not backed by the file"),
            UnpatchableReason::NamedTwice => f.write_str("named twice in one attach"),
            UnpatchableReason::OnlyInlined { module, sites } => write!(
                f,
                "it exists only inlined, with no out-of-line copy to redirect (in {module}): patch the functions it was inlined into instead: {}",
                InlineSites(sites)
            ),
            UnpatchableReason::NoRoom { room, needed } => write!(
                f,
                "no island page could be mapped within 2 GiB of it and its {room} bytes cannot hold a {needed}-byte absolute jump"
            ),
        }
    }
}

/// Why the replacement was not found in the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplacementMiss {
    /// Several functions of the library have that name (their symbols).
    Ambiguous(Vec<String>),
    /// None has it; the closest names, best first.
    NotFound(Vec<String>),
}

impl fmt::Display for ReplacementMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplacementMiss::Ambiguous(symbols) => write!(
                f,
                ": the name is ambiguous there ({}); name one exactly with --func OLD=NEW",
                symbols.join(", ")
            ),
            ReplacementMiss::NotFound(suggestions) if suggestions.is_empty() => f.write_str(
                ": define it in the library (Rust: #[no_mangle]; C++: same namespace and signature), or name it with --func OLD=NEW",
            ),
            ReplacementMiss::NotFound(suggestions) => write!(
                f,
                ": did you mean {}? (name it with --func OLD=NEW)",
                suggestions.join(", ")
            ),
        }
    }
}

/// What a rollback looked for and did not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NothingToUndo {
    /// No patch is applied.
    NoneApplied,
    /// No patch has this id.
    NoSuchPatch(u64),
    /// The patch is in another state.
    NotApplied {
        /// The patch.
        id: u64,
        /// Its state.
        state: PatchState,
    },
    /// No patch of this manifest (name and library) is applied.
    ManifestNotApplied(String),
}

impl fmt::Display for NothingToUndo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NothingToUndo::NoneApplied => f.write_str("no patch is applied"),
            NothingToUndo::NoSuchPatch(id) => write!(f, "there is no patch {id}"),
            NothingToUndo::NotApplied { id, state } => {
                write!(f, "patch {id} is {}, not applied", state.name())
            }
            NothingToUndo::ManifestNotApplied(name) => {
                write!(f, "no patch of manifest {name} is applied")
            }
        }
    }
}

/// A list of thread ids for messages: `12, 13, 14`.
pub(crate) struct Tids<'a>(pub &'a [i32]);

impl fmt::Display for Tids<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, tid) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{tid}")?;
        }
        Ok(())
    }
}

/// A safety policy that refused, with what it found; each has a flag that overrides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// The process is stopped (SIGSTOP, job control): `--allow-stopped`.
    Stopped {
        /// The PID.
        pid: i32,
    },
    /// Threads run under a seccomp filter: `--allow-seccomp`.
    Seccomp {
        /// The PID.
        pid: i32,
        /// The filtered threads.
        threads: Vec<i32>,
    },
    /// The library could have been written by someone other than root or the target's user:
    /// `--allow-insecure-lib`.
    InsecureLibrary {
        /// The library.
        path: PathBuf,
        /// The PID.
        pid: i32,
        /// Who could have written it.
        exposure: Exposure,
    },
    /// The function is generated code (a closure or async body) or returns such a type:
    /// `--force`.
    GeneratedCode(crate::patch::GeneratedCode),
}

/// Who, besides root and the target's user, could have written a library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Mode o+w.
    WritableByEveryone,
    /// Mode g+w.
    WritableByGroup,
    /// Owned by another non-root user.
    ForeignOwner {
        /// The owner.
        uid: u32,
        /// The target's user.
        target_uid: u32,
    },
}

impl Policy {
    /// The flag that overrides this policy.
    pub fn flag(&self) -> &'static str {
        match self {
            Policy::Stopped { .. } => "--allow-stopped",
            Policy::Seccomp { .. } => "--allow-seccomp",
            Policy::InsecureLibrary { .. } => "--allow-insecure-lib",
            Policy::GeneratedCode(_) => "--force",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Stopped { pid } => write!(
                f,
                "PID {pid} is stopped (SIGSTOP or job control): no other thread can run while the library loads, so a stopped thread holding the loader lock would deadlock it; resume it with kill -CONT {pid}"
            ),
            Policy::Seccomp { pid, threads } => write!(
                f,
                "PID {pid} runs under a seccomp filter (threads {}): the syscalls dlopen and mmap make on its behalf may be forbidden and kill it",
                Tids(threads)
            ),
            Policy::InsecureLibrary {
                path,
                pid,
                exposure,
            } => {
                let what = match exposure {
                    Exposure::WritableByEveryone => "is writable by everyone".to_string(),
                    Exposure::WritableByGroup => "is writable by its group".to_string(),
                    Exposure::ForeignOwner { uid, target_uid } => format!(
                        "is owned by uid {uid}, neither root nor the target's user (uid {target_uid})"
                    ),
                };
                write!(
                    f,
                    "patch library {} {what}: it would run inside PID {pid} with that process's privileges; fix its owner and mode (chmod go-w)",
                    path.display()
                )
            }
            Policy::GeneratedCode(g) => write!(f, "{g}"),
        }
    }
}

/// Why rpatch cannot patch a target at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// Threads use x86 shadow stacks: the stub's return would fault.
    ShadowStack {
        /// The PID.
        pid: i32,
        /// The threads with a shadow stack.
        threads: Vec<i32>,
    },
    /// The library references private symbols, and the target's C library would relocate the
    /// absolute symbols they are bound with.
    AbsoluteSymbolsRelocated {
        /// The PID.
        pid: i32,
        /// The C library mapped, if one was found.
        libc: Option<PathBuf>,
        /// Its glibc version, if it is a glibc.
        glibc: Option<(u32, u32)>,
    },
    /// Memory a patch depends on would not reach a child the target forks as it is: the child
    /// would jump into memory it does not have, or into zeros.
    NotCopiedOnFork {
        /// The PID.
        pid: i32,
        /// What that memory is.
        part: PatchMemory,
        /// The first address of the mapping.
        address: u64,
        /// How fork treats it.
        flag: ForkFlag,
    },
    /// The process shares its address space with another process without being one of its
    /// threads (vfork or posix_spawn before the exec, `clone(CLONE_VM)`): its code is that
    /// process's, patched and recorded through it.
    SharedAddressSpace {
        /// The PID given.
        pid: i32,
        /// The process whose journal describes the shared address space (the oldest of them).
        owner: i32,
    },
    /// The process was forked while rpatch loaded a library into `parent` (or descends from
    /// such a child): its copy of the loader's state is half updated.
    Inconsistent {
        /// The PID.
        pid: i32,
        /// The process the library was being loaded into.
        parent: i32,
    },
}

/// rpatch's own memory in a target, named in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchMemory {
    /// A page of jump islands.
    IslandPage,
    /// The region of rpatch's call stub (its code, stack and data block).
    CallStub,
    /// The loaded patch library.
    PatchLibrary,
}

impl fmt::Display for PatchMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatchMemory::IslandPage => "the jump island page",
            PatchMemory::CallStub => "rpatch's call stub region",
            PatchMemory::PatchLibrary => "the patch library's mapping",
        })
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsupported::ShadowStack { pid, threads } => write!(
                f,
                "PID {pid} uses x86 shadow stacks (threads {}): an injected call cannot return on them; rpatch cannot patch it",
                Tids(threads)
            ),
            Unsupported::AbsoluteSymbolsRelocated { pid, libc, glibc } => {
                let found = match (libc, glibc) {
                    (Some(m), Some((a, b))) => format!("{}, glibc {a}.{b}", m.display()),
                    (Some(m), None) => format!("{}, not a glibc", m.display()),
                    (None, _) => "not found".to_string(),
                };
                write!(
                    f,
                    "the patch library references private symbols of PID {pid}, which rpatch binds with absolute symbols; its C library ({found}) does not keep absolute symbols unrelocated (glibc >= 2.28 does, BZ 19818): export those symbols from the target instead, or avoid referencing them"
                )
            }
            Unsupported::NotCopiedOnFork {
                pid,
                part,
                address,
                flag,
            } => write!(
                f,
                "{part} at {address:#x} in PID {pid} is marked {}: a child it forks would inherit jumps into memory it does not have as it is; rpatch cannot patch this process (nothing was written; the library stays loaded)",
                flag.advice()
            ),
            Unsupported::SharedAddressSpace { pid, owner } => write!(
                f,
                "PID {pid} shares its address space with PID {owner} without being one of its threads (vfork, posix_spawn before its exec, or clone(CLONE_VM)): its code is PID {owner}'s; patch, roll back and inspect it through PID {owner}"
            ),
            Unsupported::Inconsistent { pid, parent } => write!(
                f,
                "PID {pid} was forked while rpatch was loading a library into PID {parent}: its copy of the dynamic loader's state is half updated, so nothing is ever loaded into it; restart it to patch it (rollback works)"
            ),
        }
    }
}
