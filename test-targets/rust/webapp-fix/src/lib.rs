//! webapp-fix: the patch library for webapp (`libwebapp.so`).

/// Replacement code for webapp's pricing module.
pub mod pricing {
    /// Replaces `webapp::pricing::quote`: x*1000 instead of x+10.
    #[unsafe(no_mangle)]
    pub fn quote(x: u64) -> u64 {
        x * 1000
    }
}
