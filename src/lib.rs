//! rpatch: replace functions in running, unmodified Linux processes, check them, and undo them.
//!
//! The library exposes the operations (`attach`, `rollback`, `status`, `resolve`) as a typed API;
//! the `rpatch` binary is a thin front end over it.

pub mod symbols;
