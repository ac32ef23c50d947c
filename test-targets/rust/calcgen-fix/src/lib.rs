//! calcgen-fix: the patch library for calcgen (`libcalcgen.so`).

/// Replacement code for calcgen's `calc` module.
pub mod calc {
    /// Replaces both instances of `calcgen::calc::widen`: x*1000 instead of x+10.
    #[inline(never)]
    pub fn widen<T: Into<u64>>(x: T) -> u64 {
        x.into() * 1000
    }
}

/// Instantiates `calc::widen` for u32 and u64, so the library has both instances (a cdylib
/// keeps only what an exported function reaches).
#[unsafe(no_mangle)]
pub extern "C" fn calcgen_fix_instances(x: u64) -> u64 {
    calc::widen::<u32>(x as u32) + calc::widen::<u64>(x)
}
