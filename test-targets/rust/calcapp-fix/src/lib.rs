//! calcapp-fix: the patch library for calcapp (`libcalcapp.so`).

/// Replacement code for calcapp's pricing module.
pub mod pricing {
    /// Replaces `calcapp::pricing::calc`: x*1000 instead of x+10.
    #[unsafe(no_mangle)]
    pub fn calc(x: u64) -> u64 {
        x * 1000
    }
}
