//! The error type of the public API, its stable kinds, and the exit code of each kind.
//!
//! Every variant carries facts (PIDs, paths, addresses, candidates, the policy that refused), not
//! pre-formatted text: a program matches on the variant and reads its fields; the message a
//! person reads is the `Display` rendering of those facts. [`Error::kind`] classifies an error
//! into an [`ErrorKind`], whose snake_case name is the stable `kind` of the `--json` output and
//! from which the exit code is derived (never the reverse).
//!
//! The errors of the layers below (process, injection, journal, symbols, delivery) are
//! re-exported here: they are the facts inside [`Error`]'s variants.

pub use crate::inject::{InjectError, ThreadRefusal};
pub use crate::journal::JournalError;
pub use crate::patch::{DeliveryError, Generated, GeneratedCode};
pub use crate::process::{ForkFlag, ProcessError};
pub use crate::safety::{Blocker, Doubt, FrameSource};
pub use crate::symbols::SymbolError;

mod facts;

pub use facts::{
    AmbiguityScope, Candidate, Exposure, LibraryAccess, LibraryProblem, NothingToUndo, PatchMemory,
    Policy, ReplacementMiss, SearchPlace, UnpatchableReason, Unsupported,
};

pub use crate::kind::ErrorKind;
use facts::{Candidates, NotFoundHint};

use crate::hex::hex;
use crate::rehearse::RehearseReport;
use crate::symbols::{InlineSite, InlineSites, Signature};
use serde::Serialize;
use std::path::PathBuf;

/// Everything an rpatch operation can fail with. Every variant leaves the target as it was.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Process access, ptrace or /proc failure (also when it happened inside a remote call: the
    /// process layer's errors are reported here only).
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Remote call failure (dlopen, mmap).
    #[error(transparent)]
    Inject(InjectError),
    /// Journal or state directory failure.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A module of the target could not be parsed.
    #[error(transparent)]
    Symbols(#[from] SymbolError),
    /// The library could not be handed to the target safely, or the loader returned another
    /// object than the copy prepared.
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    /// The patch library cannot be read.
    #[error("{}", problem.message(path))]
    LibraryMissing {
        /// Path given.
        path: PathBuf,
        /// What is wrong.
        problem: LibraryAccess,
    },
    /// The patch library is not a shared object for this machine.
    #[error("patch library {} is unusable: {problem}", path.display())]
    LibraryInvalid {
        /// Path given.
        path: PathBuf,
        /// What is wrong with it.
        problem: LibraryProblem,
    },
    /// No function of that name in the target.
    #[error("function {name} not found in PID {pid}{}", NotFoundHint(suggestions))]
    FunctionNotFound {
        /// Name given.
        name: String,
        /// The PID.
        pid: i32,
        /// The closest existing names, best first (at most 5).
        suggestions: Vec<String>,
    },
    /// Several functions match the name.
    #[error(
        "function name {name} is ambiguous in PID {pid}: {}{}; name one exactly",
        Candidates(candidates),
        scope.advice()
    )]
    Ambiguous {
        /// Name given.
        name: String,
        /// The PID.
        pid: i32,
        /// The matching functions, with runtime addresses.
        candidates: Vec<Candidate>,
        /// Whether they are in one module (and instances of one generic) or in several modules.
        scope: AmbiguityScope,
    },
    /// No function matches a `resolve` pattern.
    #[error("no function matches {pattern} in {place}{}", place.hint(suggestions))]
    NoMatch {
        /// Pattern given.
        pattern: String,
        /// Where it was searched.
        place: SearchPlace,
        /// The closest existing names, best first (at most 5).
        suggestions: Vec<String>,
    },
    /// The replacement's DWARF signature differs from the function's.
    #[error(
        "the signature of {function} differs from its replacement's ({}):\n  target       {function}{}\n  replacement  {replacement_name}{}\ncalls would pass or return the wrong values; fix the replacement, or pass --force to patch anyway",
        target.mismatch(replacement).unwrap_or_default(),
        target.render(),
        replacement.render()
    )]
    SignatureMismatch {
        /// Function.
        function: String,
        /// Its signature.
        target: Box<Signature>,
        /// The replacement's name in the library.
        replacement_name: String,
        /// The replacement's signature.
        replacement: Box<Signature>,
    },
    /// `--strict`: the function was inlined into callers that would keep the old code.
    #[error(
        "{function} was inlined into {} place(s) that keep the old code after the patch: {}; patch those callers too, or drop --strict to patch the out-of-line copy only",
        sites.len(),
        InlineSites(sites)
    )]
    InlinedCopies {
        /// Function.
        function: String,
        /// The callers holding the copies, with call sites.
        sites: Vec<InlineSite>,
    },
    /// The function cannot take an entry jump.
    #[error("cannot patch {function}: {reason}")]
    Unpatchable {
        /// Function.
        function: String,
        /// Why.
        reason: UnpatchableReason,
    },
    /// The replacement is not in the library.
    #[error("replacement {name} not found in {}{miss}", library.display())]
    ReplacementMissing {
        /// Replacement name.
        name: String,
        /// Library path.
        library: PathBuf,
        /// Why it was not found.
        miss: ReplacementMiss,
    },
    /// Rollback found nothing to undo.
    #[error("nothing to roll back in PID {pid}: {why}")]
    NothingToRollBack {
        /// The PID.
        pid: i32,
        /// What was looked for.
        why: NothingToUndo,
    },
    /// A later patch sits on top of the one to undo.
    #[error(
        "patch {id} ({function}) has patch {later} applied on top of it: roll back {later} first, or use --cascade"
    )]
    StackedAbove {
        /// Patch asked for.
        id: u64,
        /// Its function.
        function: String,
        /// The later patch.
        later: u64,
    },
    /// A thread stayed inside a function until the timeout.
    #[error(
        "{} stayed busy for {timeout_ms} ms: {}; retry later, raise --timeout, or patch a function it calls instead if this one never returns",
        blocker.function,
        blocker.describe()
    )]
    Busy {
        /// The thread in the way, where it is, and the function.
        blocker: Box<Blocker>,
        /// Time waited.
        timeout_ms: u64,
    },
    /// A safety policy refuses the operation; a flag overrides it.
    #[error("{policy}; pass {} to proceed anyway", policy.flag())]
    Refused {
        /// The policy and what it found.
        policy: Policy,
    },
    /// rpatch cannot patch this target at all.
    #[error("{reason}")]
    Unsupported {
        /// Why.
        reason: Unsupported,
    },
    /// The module holding a patched function is no longer the build that was patched.
    #[error(
        "{function}: {} mapped in PID {pid} is build {}, not build {recorded} that was patched; its code is not what the journal describes, nothing was written",
        module.display(),
        found.as_deref().unwrap_or("none")
    )]
    ModuleChanged {
        /// Function.
        function: String,
        /// Module path.
        module: PathBuf,
        /// The PID.
        pid: i32,
        /// Build-id recorded at attach (hex).
        recorded: String,
        /// Build-id mapped now (hex); `None` when the module is no longer mapped or has none.
        found: Option<String>,
    },
    /// Memory does not hold what rpatch expects there.
    #[error(
        "{function} at {address:#x} holds {} where {} was expected (changed by something else, or the file on disk differs from the one mapped); nothing was written",
        hex(found),
        hex(expected)
    )]
    UnexpectedBytes {
        /// Function.
        function: String,
        /// Address.
        address: u64,
        /// Expected bytes.
        expected: Vec<u8>,
        /// Found bytes.
        found: Vec<u8>,
    },
    /// Memory or the journal is not what this rpatch expects, and the process maps patch
    /// libraries no record of this state directory loaded: another rpatch, with another state
    /// directory (the host's seen from a container, or another container's), patched it. Keeps
    /// the kind (and exit code) of `cause`.
    #[error(
        "{cause}; PID {pid} maps patch libraries loaded by an rpatch whose journal is not in {}: {}: it was patched from another mount namespace (the host, or another container) or with another RPATCH_STATE_DIR; run rpatch status/rollback there",
        state_dir.display(),
        Paths(libraries)
    )]
    PatchedElsewhere {
        /// The process.
        pid: i32,
        /// The copies of patch libraries no record here loaded (`/memfd:rpatch:...`).
        libraries: Vec<PathBuf>,
        /// This rpatch's state directory.
        state_dir: PathBuf,
        /// The error this explains.
        cause: Box<Error>,
    },
    /// `--manifest`: a function resolved in a module that is not of a build the manifest names
    /// (the executable defines the name too, and is searched first).
    #[error(
        "{function} resolves to {} ({}), not to a module of a build manifest {manifest} names; nothing was done",
        module.display(),
        build_id.as_deref().map_or("no build-id".to_string(), |id| format!("build-id {id}"))
    )]
    OutsideManifest {
        /// The function.
        function: String,
        /// The module it resolved in.
        module: PathBuf,
        /// That module's build-id, read from memory.
        build_id: Option<String>,
        /// The manifest's name.
        manifest: String,
    },
    /// A patch manifest cannot be read, or does not describe a patch.
    #[error("manifest {}: {problem}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        problem: crate::fleet::ManifestProblem,
    },
    /// `rehearse`: a step did not pass (a probe, an expectation, the load, the target died or
    /// was not ready), or an attach or rollback inside the rehearsal failed.
    #[error("rehearsal failed at step '{step}': {message}")]
    RehearsalFailed {
        /// The step that failed (`ready`, `cycle 2: probe patched`, `load`...).
        step: String,
        /// What was wrong.
        message: String,
        /// The attach or rollback error that failed the step: the rehearsal reports its kind
        /// (and so its exit code).
        cause: Option<Box<Error>>,
        /// The signal (SIGTERM, SIGINT, SIGHUP) that interrupted the rehearsal, if one did.
        interrupted: Option<i32>,
        /// The full report (also in the JUnit file); None when the rehearsal could not start.
        report: Option<Box<RehearseReport>>,
    },
}

/// The injection layer's errors arrive here with the process and journal errors they carry taken
/// out, so each of those is reachable one way only ([`Error::Process`], [`Error::Journal`]).
impl From<InjectError> for Error {
    fn from(e: InjectError) -> Self {
        match e {
            InjectError::Process(p) => Error::Process(p),
            InjectError::Journal(j) => Error::Journal(j),
            e => Error::Inject(e),
        }
    }
}

impl Error {
    /// The stable class of this error (its `--json` `kind`, and its exit code).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Process(e) => e.kind(),
            Error::Inject(e) => e.kind(),
            Error::Journal(JournalError::OtherProcess { .. }) => ErrorKind::JournalOfOtherProcess,
            Error::Journal(_) | Error::Symbols(_) => ErrorKind::Internal,
            Error::Delivery(DeliveryError::SeccompKills { .. }) => ErrorKind::TargetUnsupported,
            Error::Delivery(_) => ErrorKind::LoadFailed,
            Error::LibraryMissing { .. } => ErrorKind::LibraryMissing,
            Error::LibraryInvalid { .. } => ErrorKind::LibraryInvalid,
            Error::FunctionNotFound { .. } | Error::NoMatch { .. } => ErrorKind::FunctionNotFound,
            Error::Ambiguous { .. } => ErrorKind::AmbiguousFunction,
            Error::Unpatchable { .. } => ErrorKind::Unpatchable,
            Error::ReplacementMissing { .. } => ErrorKind::ReplacementMissing,
            Error::NothingToRollBack { .. } => ErrorKind::NothingToRollBack,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::UnexpectedBytes { .. } | Error::ModuleChanged { .. } => {
                ErrorKind::UnexpectedBytes
            }
            Error::StackedAbove { .. } => ErrorKind::StackedPatch,
            Error::Unsupported { .. } => ErrorKind::TargetUnsupported,
            Error::Refused { .. } => ErrorKind::Refused,
            Error::SignatureMismatch { .. } => ErrorKind::SignatureMismatch,
            Error::InlinedCopies { .. } => ErrorKind::InlinedCopies,
            Error::Manifest { .. } => ErrorKind::ManifestInvalid,
            Error::OutsideManifest { .. } => ErrorKind::FunctionNotFound,
            Error::PatchedElsewhere { cause, .. } => cause.kind(),
            // An attach or rollback that failed inside a rehearsal keeps its own kind.
            Error::RehearsalFailed { cause: Some(c), .. } => c.kind(),
            Error::RehearsalFailed { .. } => ErrorKind::RehearsalFailed,
        }
    }

    /// The documented exit code of this error: that of its kind.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.kind().exit_code())
    }
}

/// Paths for messages: `a, b`.
struct Paths<'a>(&'a [PathBuf]);

impl std::fmt::Display for Paths<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", p.display())?;
        }
        Ok(())
    }
}

/// An error as reports and `--json` show it: its kind, the kind's exit code, and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorSummary {
    /// The exit code of the kind.
    pub code: i32,
    /// The stable kind.
    pub kind: ErrorKind,
    /// The message, as on stderr.
    pub message: String,
}

impl ErrorSummary {
    /// The summary of `error`.
    pub fn of(error: &Error) -> Self {
        Self::new(error.kind(), error.to_string())
    }

    /// A summary of a failure of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: String) -> Self {
        Self {
            code: i32::from(kind.exit_code()),
            kind,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::PatchState;

    /// Kinds and exit codes are one-to-one, names are snake_case, and the codes are those the
    /// README documents (1, 3 to 27).
    #[test]
    fn kinds_have_distinct_codes_and_snake_case_names() {
        let mut codes: Vec<u8> = ErrorKind::ALL.iter().map(|k| k.exit_code()).collect();
        codes.sort_unstable();
        let expected: Vec<u8> = std::iter::once(1).chain(3..=27).collect();
        assert_eq!(codes, expected);
        for kind in ErrorKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.name(), "serde and name() agree");
            assert!(
                kind.name()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_'),
                "{kind}"
            );
        }
    }

    /// A process error raised inside a remote call is reported as the process error itself, so
    /// the exit code of a vanished target is the same whichever layer noticed.
    #[test]
    fn process_errors_from_the_injection_layer_are_process_errors() {
        let e: Error = InjectError::Process(ProcessError::Exited { pid: 7 }).into();
        assert!(matches!(e, Error::Process(ProcessError::Exited { pid: 7 })));
        assert_eq!(e.kind(), ErrorKind::TargetExited);
        let busy: Error = InjectError::NoSafeThread {
            pid: 7,
            reasons: vec![],
        }
        .into();
        assert_eq!(busy.kind(), ErrorKind::NoSafeThread);
        assert_eq!(busy.exit_code(), 23);
    }

    /// Messages render the facts the variants hold, the way they always read.
    #[test]
    fn messages_render_the_facts() {
        let not_found = Error::FunctionNotFound {
            name: "calc".into(),
            pid: 12,
            suggestions: vec!["calc2".into(), "calcx".into()],
        };
        assert_eq!(
            not_found.to_string(),
            "function calc not found in PID 12: did you mean calc2, calcx?"
        );
        let bytes = Error::UnexpectedBytes {
            function: "f".into(),
            address: 0x1000,
            expected: vec![0xe9, 1],
            found: vec![0x55, 0x48],
        };
        assert!(
            bytes
                .to_string()
                .starts_with("f at 0x1000 holds 5548 where e901 was expected"),
            "{bytes}"
        );
        let nothing = Error::NothingToRollBack {
            pid: 3,
            why: NothingToUndo::NotApplied {
                id: 2,
                state: PatchState::RolledBack,
            },
        };
        assert_eq!(
            nothing.to_string(),
            "nothing to roll back in PID 3: patch 2 is rolled_back, not applied"
        );
        let refused = Error::Refused {
            policy: Policy::Seccomp {
                pid: 9,
                threads: vec![9, 10],
            },
        };
        assert!(
            refused.to_string().contains("(threads 9, 10)")
                && refused
                    .to_string()
                    .ends_with("; pass --allow-seccomp to proceed anyway"),
            "{refused}"
        );
    }
}
