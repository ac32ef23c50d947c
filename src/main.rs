//! The `rpatch` command-line tool.
fn main() {}
