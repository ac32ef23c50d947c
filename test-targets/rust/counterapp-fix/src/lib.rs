//! counterapp-fix: the patch library for counterapp (`libcounterapp.so`).

/// Replacement code for counterapp's state module.
pub mod state {
    use std::sync::atomic::{AtomicU64, Ordering};

    unsafe extern "Rust" {
        /// The target's `counterapp::state::COUNTER`, named by its path without hash: rpatch
        /// binds this undefined symbol to the live static when it loads the library.
        #[link_name = "counterapp::state::COUNTER"]
        safe static COUNTER: AtomicU64;
    }

    /// Replaces `counterapp::state::tick`: adds by*100 to the target's own counter.
    #[unsafe(no_mangle)]
    pub fn tick(by: u64) -> u64 {
        COUNTER.fetch_add(by * 100, Ordering::Relaxed) + by * 100
    }
}
