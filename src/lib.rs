//! rpatch: replace functions in running, unmodified Linux processes, check them, and undo them.
//!
//! The library exposes the operations as a typed API — [`attach`], [`rollback`], [`status`] —
//! each a pipeline of named phases (see `patch`). The `rpatch` binary is a thin front end.

mod error;
pub mod inject;
pub mod journal;
pub mod log;
pub mod patch;
pub mod process;
pub mod safety;
pub mod symbols;

pub use error::Error;
pub use patch::{
    AttachOptions, AttachReport, FunctionRequest, RollbackOptions, RollbackReport,
    RollbackSelection, StatusReport, attach, rollback, status,
};
