//! The error type of the public API, and the stable exit code of each failure.

use crate::inject::InjectError;
use crate::journal::JournalError;
use crate::patch::DeliveryError;
use crate::process::ProcessError;
use crate::rehearse::RehearseReport;
use crate::symbols::SymbolError;
use std::path::PathBuf;

/// Everything an rpatch operation can fail with. Every variant leaves the target as it was.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Process access, ptrace or /proc failure.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// Remote call failure (dlopen, mmap).
    #[error(transparent)]
    Inject(#[from] InjectError),
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
    #[error("cannot read patch library {path}: {reason}: check the path and its permissions")]
    LibraryMissing {
        /// Path given.
        path: PathBuf,
        /// OS error text.
        reason: String,
    },
    /// The patch library is not a shared object for this machine.
    #[error("patch library {path} is unusable: {reason}")]
    LibraryInvalid {
        /// Path given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No function of that name in the target.
    #[error("function {name} not found in PID {pid}{hint}")]
    FunctionNotFound {
        /// Name given.
        name: String,
        /// The PID.
        pid: i32,
        /// ": did you mean a, b?" or a note on where it was searched.
        hint: String,
    },
    /// Several functions match the name.
    #[error("function name {name} is ambiguous in PID {pid}: {candidates}; name one exactly")]
    Ambiguous {
        /// Name given.
        name: String,
        /// The PID.
        pid: i32,
        /// Candidates with addresses and locations.
        candidates: String,
    },
    /// No function matches a `resolve` pattern.
    #[error("no function matches {pattern} in {place}{hint}")]
    NoMatch {
        /// Pattern given.
        pattern: String,
        /// Where it was searched (PID or file).
        place: String,
        /// ": did you mean a, b?" or a note.
        hint: String,
    },
    /// The replacement's DWARF signature differs from the function's.
    #[error(
        "the signature of {function} differs from its replacement's ({differences}):\n  target       {target}\n  replacement  {replacement}\ncalls would pass or return the wrong values; fix the replacement, or pass --force to patch anyway"
    )]
    SignatureMismatch {
        /// Function.
        function: String,
        /// Its signature (types with sizes).
        target: String,
        /// The replacement's signature.
        replacement: String,
        /// What differs.
        differences: String,
    },
    /// `--strict`: the function was inlined into callers that would keep the old code.
    #[error(
        "{function} was inlined into {count} place(s) that keep the old code after the patch: {callers}; patch those callers too, or drop --strict to patch the out-of-line copy only"
    )]
    InlinedCopies {
        /// Function.
        function: String,
        /// How many inlined copies.
        count: usize,
        /// The callers holding them, with call sites.
        callers: String,
    },
    /// The function cannot take an entry jump.
    #[error("cannot patch {function}: {reason}")]
    Unpatchable {
        /// Function.
        function: String,
        /// Why.
        reason: String,
    },
    /// The replacement is not in the library.
    #[error("replacement {name} not found in {library}{hint}")]
    ReplacementMissing {
        /// Replacement name.
        name: String,
        /// Library path.
        library: PathBuf,
        /// Suggestions.
        hint: String,
    },
    /// Rollback found nothing to undo.
    #[error("nothing to roll back in PID {pid}: {detail}")]
    NothingToRollBack {
        /// The PID.
        pid: i32,
        /// What was looked for.
        detail: String,
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
        "{function} stayed busy for {timeout_ms} ms: {detail}; retry later, raise --timeout, or patch a function it calls instead if this one never returns"
    )]
    Busy {
        /// Function.
        function: String,
        /// Thread id.
        tid: i32,
        /// Thread name.
        thread: String,
        /// The PC, or the return address found on the stack.
        pc: u64,
        /// Where the thread is: PC or stack frame (depth, how it was found).
        detail: String,
        /// Time waited.
        timeout_ms: u64,
    },
    /// A safety policy refuses the operation; a flag overrides it.
    #[error("{reason}; pass {flag} to proceed anyway")]
    Refused {
        /// What is risky.
        reason: String,
        /// The overriding flag.
        flag: &'static str,
    },
    /// rpatch cannot patch this target at all.
    #[error("{reason}")]
    Unsupported {
        /// Why.
        reason: String,
    },
    /// The module holding a patched function is no longer the build that was patched.
    #[error(
        "{function}: {module} mapped in PID {pid} is build {found}, not build {recorded} that was patched; its code is not what the journal describes, nothing was written"
    )]
    ModuleChanged {
        /// Function.
        function: String,
        /// Module path.
        module: std::path::PathBuf,
        /// The PID.
        pid: i32,
        /// Build-id recorded at attach.
        recorded: String,
        /// Build-id mapped now ("none" when the module is no longer mapped).
        found: String,
    },
    /// Memory does not hold what rpatch expects there.
    #[error(
        "{function} at {address:#x} holds {found} where {expected} was expected (changed by something else, or the file on disk differs from the one mapped); nothing was written"
    )]
    UnexpectedBytes {
        /// Function.
        function: String,
        /// Address.
        address: u64,
        /// Expected bytes (hex).
        expected: String,
        /// Found bytes (hex).
        found: String,
    },
    /// `rehearse`: a step did not pass (a probe, an expectation, the load, the target died or
    /// was not ready), or an attach or rollback inside the rehearsal failed.
    #[error("rehearsal failed at step '{step}': {message}")]
    RehearsalFailed {
        /// The step that failed (`ready`, `cycle 2: probe patched`, `load`...).
        step: String,
        /// What was wrong.
        message: String,
        /// The attach or rollback error that failed the step: the rehearsal exits with its code
        /// and kind.
        cause: Option<Box<Error>>,
        /// The signal (SIGTERM, SIGINT, SIGHUP) that interrupted the rehearsal, if one did.
        interrupted: Option<i32>,
        /// The full report (also in the JUnit file); None when the rehearsal could not start.
        report: Option<Box<RehearseReport>>,
    },
}

impl Error {
    /// The documented, stable exit code of this error (see README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Process(e) | Error::Inject(InjectError::Process(e)) => match e {
                ProcessError::NoSuchProcess { .. } => 3,
                ProcessError::PermissionDenied { .. } => 4,
                ProcessError::AlreadyTraced { .. } => 5,
                ProcessError::Exited { .. } => 17,
                ProcessError::WrongArchitecture { .. } => 19,
                _ => 1,
            },
            Error::LibraryMissing { .. } => 6,
            Error::LibraryInvalid { .. } => 7,
            Error::Inject(
                InjectError::DlopenFailed { .. }
                | InjectError::CallFaulted { .. }
                | InjectError::CallTimeout { .. }
                | InjectError::CallAborted { .. }
                | InjectError::InSignalHandler { .. },
            ) => 8,
            Error::Inject(InjectError::Journal(_)) => 1,
            Error::Inject(_) => 19,
            Error::Delivery(DeliveryError::SeccompKills { .. }) => 19,
            Error::Delivery(_) => 8,
            Error::FunctionNotFound { .. } | Error::NoMatch { .. } => 9,
            Error::Ambiguous { .. } => 10,
            Error::Unpatchable { .. } => 11,
            Error::ReplacementMissing { .. } => 12,
            Error::NothingToRollBack { .. } => 13,
            Error::Journal(JournalError::OtherProcess { .. }) => 14,
            Error::Journal(_) => 1,
            Error::Busy { .. } => 15,
            Error::UnexpectedBytes { .. } | Error::ModuleChanged { .. } => 16,
            Error::StackedAbove { .. } => 18,
            Error::Unsupported { .. } => 19,
            Error::Refused { .. } => 20,
            Error::Symbols(_) => 1,
            Error::SignatureMismatch { .. } => 21,
            Error::InlinedCopies { .. } => 22,
            Error::RehearsalFailed { cause: Some(c), .. } => c.exit_code(),
            Error::RehearsalFailed { .. } => 24,
        }
    }

    /// A stable snake_case name of the failure, for `--json` consumers.
    pub fn kind(&self) -> &'static str {
        match self.exit_code() {
            3 => "no_such_process",
            4 => "permission_denied",
            5 => "already_traced",
            6 => "library_missing",
            7 => "library_invalid",
            8 => "load_failed",
            9 => "function_not_found",
            10 => "ambiguous_function",
            11 => "unpatchable",
            12 => "replacement_missing",
            13 => "nothing_to_roll_back",
            14 => "journal_of_other_process",
            15 => "busy",
            16 => "unexpected_bytes",
            17 => "target_exited",
            18 => "stacked_patch",
            19 => "target_unsupported",
            20 => "refused",
            21 => "signature_mismatch",
            22 => "inlined_copies",
            24 => "rehearsal_failed",
            _ => "internal",
        }
    }
}

/// Formats bytes as hex for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
