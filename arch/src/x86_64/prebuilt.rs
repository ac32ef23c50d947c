//! The remote-call code of [`super::remote_call`], as `build.rs` assembled it.
//!
//! The bootstrap and the call stub never change between targets (the stub reaches its data block
//! relative to its own address), so they are assembled once, when rpatch is built, by the same
//! functions the unit tests decode. Assembling them during an attach cost more than the rest of
//! the attach's own computing: iced-x86 builds tables of every instruction form on first use.

use super::remote_call::{BOOTSTRAP_LEN, CallStub, FpSave, PAGE};

/// One assembled stub: its whole code page and the offsets of its entry points.
struct Assembled {
    page: &'static [u8],
    entry: u64,
    restore: u64,
    tail: u64,
}

include!(concat!(env!("OUT_DIR"), "/x86_64_remote_code.rs"));

const _: () = assert!(BOOTSTRAP.len() == BOOTSTRAP_LEN);
const _: () = assert!(STUB_XSAVE.page.len() == PAGE as usize);
const _: () = assert!(STUB_FXSAVE.page.len() == PAGE as usize);

/// The bootstrap code (see [`super::remote_call::assemble_bootstrap`]).
pub fn bootstrap_code() -> &'static [u8; BOOTSTRAP_LEN] {
    &BOOTSTRAP
}

/// The call stub for FP state saved as `fp` (see [`super::remote_call::assemble_call_stub`]);
/// the same bytes at every address.
pub fn call_stub(fp: FpSave) -> CallStub {
    let stub = match fp {
        FpSave::Xsave { .. } => &STUB_XSAVE,
        FpSave::Fxsave => &STUB_FXSAVE,
    };
    CallStub {
        code: stub.page.to_vec(),
        entry: stub.entry,
        restore: stub.restore,
        tail: stub.tail,
    }
}

#[cfg(test)]
mod tests {
    use super::super::remote_call::{StubRegion, assemble_bootstrap, assemble_call_stub};
    use super::*;

    /// What the build assembled is what the assemblers produce now, for regions anywhere and
    /// any XSAVE feature set.
    #[test]
    fn the_prebuilt_code_is_what_the_assemblers_produce() {
        assert_eq!(bootstrap_code().as_slice(), assemble_bootstrap().as_slice());
        let xsave = FpSave::Xsave {
            features: 0x2e7,
            size: 2696,
        };
        for fp in [xsave, FpSave::Fxsave] {
            for base in [0x1000, 0x5555_5555_0000, 0x7fff_f000_0000] {
                let region = StubRegion {
                    base,
                    xsave_len: fp.area_len(),
                };
                assert_eq!(call_stub(fp), assemble_call_stub(&region, fp).unwrap());
            }
        }
    }
}
