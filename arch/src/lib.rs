//! Per-ISA knowledge for rpatch.
