//! The stable classes of failure and their exit codes. A leaf: every layer's error can name its
//! kind without depending on the layers above it (see `error`, which gathers the errors).

use serde::Serialize;
use std::fmt;

/// The stable classes of failure. Their snake_case names are the `kind` values of `--json`
/// output; each has one documented exit code ([`ErrorKind::exit_code`]). New kinds may be added
/// (the enum is non-exhaustive); existing names and codes never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// A ptrace, /proc or I/O failure not listed below (exit 1).
    Internal,
    /// No process with that PID (exit 3).
    NoSuchProcess,
    /// Not permitted to trace the process (exit 4).
    PermissionDenied,
    /// Another tracer holds the process (exit 5).
    AlreadyTraced,
    /// The patch library is missing, unreadable or not a file (exit 6).
    LibraryMissing,
    /// The patch library is not a shared object for this machine (exit 7).
    LibraryInvalid,
    /// Loading failed in the target, faulted or timed out (exit 8).
    LoadFailed,
    /// No function of that name (exit 9).
    FunctionNotFound,
    /// Several functions match the name (exit 10).
    AmbiguousFunction,
    /// The function cannot take an entry jump (exit 11).
    Unpatchable,
    /// The replacement is not in the library (exit 12).
    ReplacementMissing,
    /// Nothing to roll back (exit 13).
    NothingToRollBack,
    /// The journal for this PID belongs to another process (exit 14).
    JournalOfOtherProcess,
    /// A thread stayed in the way until the timeout (exit 15).
    Busy,
    /// Memory does not hold the expected bytes, or the module is another build (exit 16).
    UnexpectedBytes,
    /// The target exited during the operation (exit 17).
    TargetExited,
    /// A later patch on the same function is still applied (exit 18).
    StackedPatch,
    /// The target is of a kind rpatch cannot patch (exit 19).
    TargetUnsupported,
    /// A safety policy refused; a flag overrides it (exit 20).
    Refused,
    /// The replacement's signature differs (exit 21).
    SignatureMismatch,
    /// `--strict`: the function has inlined copies (exit 22).
    InlinedCopies,
    /// No thread could run the loader safely until the timeout: retry shortly (exit 23).
    NoSafeThread,
    /// `rehearse`: a check failed (exit 24).
    RehearsalFailed,
    /// A multi-process operation failed for some of its processes (exit 25).
    SomeProcessesFailed,
    /// A multi-process operation matched no process (exit 26).
    NoProcessMatched,
    /// A patch manifest cannot be read or does not describe a patch (exit 27).
    ManifestInvalid,
}

impl ErrorKind {
    /// Every kind, in exit-code order.
    pub const ALL: [ErrorKind; 26] = [
        ErrorKind::Internal,
        ErrorKind::NoSuchProcess,
        ErrorKind::PermissionDenied,
        ErrorKind::AlreadyTraced,
        ErrorKind::LibraryMissing,
        ErrorKind::LibraryInvalid,
        ErrorKind::LoadFailed,
        ErrorKind::FunctionNotFound,
        ErrorKind::AmbiguousFunction,
        ErrorKind::Unpatchable,
        ErrorKind::ReplacementMissing,
        ErrorKind::NothingToRollBack,
        ErrorKind::JournalOfOtherProcess,
        ErrorKind::Busy,
        ErrorKind::UnexpectedBytes,
        ErrorKind::TargetExited,
        ErrorKind::StackedPatch,
        ErrorKind::TargetUnsupported,
        ErrorKind::Refused,
        ErrorKind::SignatureMismatch,
        ErrorKind::InlinedCopies,
        ErrorKind::NoSafeThread,
        ErrorKind::RehearsalFailed,
        ErrorKind::SomeProcessesFailed,
        ErrorKind::NoProcessMatched,
        ErrorKind::ManifestInvalid,
    ];

    /// The documented exit code of this kind (see README, "Exit codes"). 2 (usage) belongs to
    /// the command line alone.
    pub const fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::NoSuchProcess => 3,
            ErrorKind::PermissionDenied => 4,
            ErrorKind::AlreadyTraced => 5,
            ErrorKind::LibraryMissing => 6,
            ErrorKind::LibraryInvalid => 7,
            ErrorKind::LoadFailed => 8,
            ErrorKind::FunctionNotFound => 9,
            ErrorKind::AmbiguousFunction => 10,
            ErrorKind::Unpatchable => 11,
            ErrorKind::ReplacementMissing => 12,
            ErrorKind::NothingToRollBack => 13,
            ErrorKind::JournalOfOtherProcess => 14,
            ErrorKind::Busy => 15,
            ErrorKind::UnexpectedBytes => 16,
            ErrorKind::TargetExited => 17,
            ErrorKind::StackedPatch => 18,
            ErrorKind::TargetUnsupported => 19,
            ErrorKind::Refused => 20,
            ErrorKind::SignatureMismatch => 21,
            ErrorKind::InlinedCopies => 22,
            ErrorKind::NoSafeThread => 23,
            ErrorKind::RehearsalFailed => 24,
            ErrorKind::SomeProcessesFailed => 25,
            ErrorKind::NoProcessMatched => 26,
            ErrorKind::ManifestInvalid => 27,
        }
    }

    /// The stable snake_case name (the `kind` of `--json` output).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Internal => "internal",
            ErrorKind::NoSuchProcess => "no_such_process",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::AlreadyTraced => "already_traced",
            ErrorKind::LibraryMissing => "library_missing",
            ErrorKind::LibraryInvalid => "library_invalid",
            ErrorKind::LoadFailed => "load_failed",
            ErrorKind::FunctionNotFound => "function_not_found",
            ErrorKind::AmbiguousFunction => "ambiguous_function",
            ErrorKind::Unpatchable => "unpatchable",
            ErrorKind::ReplacementMissing => "replacement_missing",
            ErrorKind::NothingToRollBack => "nothing_to_roll_back",
            ErrorKind::JournalOfOtherProcess => "journal_of_other_process",
            ErrorKind::Busy => "busy",
            ErrorKind::UnexpectedBytes => "unexpected_bytes",
            ErrorKind::TargetExited => "target_exited",
            ErrorKind::StackedPatch => "stacked_patch",
            ErrorKind::TargetUnsupported => "target_unsupported",
            ErrorKind::Refused => "refused",
            ErrorKind::SignatureMismatch => "signature_mismatch",
            ErrorKind::InlinedCopies => "inlined_copies",
            ErrorKind::NoSafeThread => "no_safe_thread",
            ErrorKind::RehearsalFailed => "rehearsal_failed",
            ErrorKind::SomeProcessesFailed => "some_processes_failed",
            ErrorKind::NoProcessMatched => "no_process_matched",
            ErrorKind::ManifestInvalid => "manifest_invalid",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
