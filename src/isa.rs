//! The instruction set rpatch patches (its own: a target runs rpatch's architecture, see
//! `process::identify`), chosen in this one place. The rest of the crate names `isa::jmp_rel32`,
//! `isa::remote_call::...`; a port to another ISA adds its `cfg` arm here, with the same names in
//! its module of `rpatch-arch` (ARCHITECTURE.md, "Where a new ISA plugs in").

#[cfg(target_arch = "x86_64")]
pub(crate) use rpatch_arch::x86_64::*;
