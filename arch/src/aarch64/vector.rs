//! SVE and SME state of a thread, from the headers of its NT_ARM_SVE, NT_ARM_SSVE and NT_ARM_ZA
//! register sets: whether the thread may be borrowed for a remote call.
//!
//! The stub saves and restores V0–V31, FPSR and FPCR (NT_PRFPREG), which is the whole FP state
//! of a thread unless it uses the scalable extensions:
//!
//! * **SVE** (Z0–Z31 wider than 128 bits, P0–P15, FFR): a system call zeroes everything but the
//!   V part (the syscall ABI, `Documentation/arch/arm64/sve.rst`), so a thread that resumes on
//!   the `svc` of a system call loses nothing it would have kept. A thread with live SVE state
//!   anywhere else is not borrowed.
//! * **SME streaming mode** (PSTATE.SM): most Advanced SIMD instructions, the stub's included,
//!   fault in streaming mode, and a function call must not be made in it: never borrowed.
//! * **SME ZA storage** (PSTATE.ZA): the procedure-call standard has callees assume ZA is off or
//!   saved lazily by its owner; calling `dlopen` over it could lose it: never borrowed.
//!
//! A register set the kernel does not have (no SVE or SME on this CPU) reads as absent.

/// `NT_ARM_SVE`: SVE registers outside streaming mode.
pub const NT_ARM_SVE: u32 = 0x405;
/// `NT_ARM_SSVE`: SVE registers in streaming mode.
pub const NT_ARM_SSVE: u32 = 0x40b;
/// `NT_ARM_ZA`: the ZA storage.
pub const NT_ARM_ZA: u32 = 0x40c;
/// `sizeof(struct user_sve_header)` (and of `user_za_header`): what a header read needs.
pub const HEADER_LEN: usize = 16;
/// `SVE_PT_REGS_SVE` in the header's flags: the register data is in SVE format, i.e. live.
const SVE_PT_REGS_SVE: u16 = 1;

/// What the headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VectorState {
    /// SVE registers hold state beyond V0–V31 (outside streaming mode).
    pub sve_live: bool,
    /// The thread is in SME streaming mode.
    pub streaming: bool,
    /// The SME ZA storage is enabled.
    pub za_active: bool,
}

/// Why a thread's vector state keeps it from being borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VectorRefusal {
    /// SME streaming mode.
    #[error("it is in SME streaming mode")]
    Streaming,
    /// SME ZA storage enabled.
    #[error("its SME ZA storage is in use")]
    ZaActive,
    /// Live SVE state outside a system call.
    #[error("it holds live SVE state outside a system call")]
    SveLive,
}

/// `(size, flags)` of a `user_sve_header` / `user_za_header`.
fn header(bytes: &[u8]) -> Option<(u32, u16)> {
    let bytes = bytes.get(..HEADER_LEN)?;
    let size = u32::from_le_bytes(bytes[..4].try_into().ok()?);
    let flags = u16::from_le_bytes(bytes[12..14].try_into().ok()?);
    Some((size, flags))
}

impl VectorState {
    /// From the first bytes of each register set, `None` where the kernel has none.
    pub fn from_headers(sve: Option<&[u8]>, ssve: Option<&[u8]>, za: Option<&[u8]>) -> Self {
        let live = |h: Option<&[u8]>| {
            h.and_then(header)
                .is_some_and(|(_, flags)| flags & SVE_PT_REGS_SVE != 0)
        };
        Self {
            sve_live: live(sve),
            streaming: live(ssve),
            // ZA off: the register set is the header alone.
            za_active: za
                .and_then(header)
                .is_some_and(|(size, _)| size as usize > HEADER_LEN),
        }
    }

    /// Whether a thread in this state, whose resume PC is (`on_svc`) or is not on the `svc` of
    /// a system call it re-issues, may be borrowed.
    pub fn may_borrow(&self, on_svc: bool) -> Result<(), VectorRefusal> {
        if self.streaming {
            Err(VectorRefusal::Streaming)
        } else if self.za_active {
            Err(VectorRefusal::ZaActive)
        } else if self.sve_live && !on_svc {
            Err(VectorRefusal::SveLive)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_bytes(size: u32, vl: u16, flags: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&vl.to_le_bytes());
        h.extend_from_slice(&vl.to_le_bytes());
        h.extend_from_slice(&flags.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h
    }

    #[test]
    fn headers_decide_what_may_be_borrowed() {
        // A CPU without SVE or SME: nothing to refuse.
        let none = VectorState::from_headers(None, None, None);
        assert_eq!(none, VectorState::default());
        assert_eq!(none.may_borrow(false), Ok(()));
        // SVE present, registers in FPSIMD format (after a system call): fine.
        let fpsimd = header_bytes(16 + 528, 32, 0);
        let idle_za = header_bytes(16, 32, 0);
        let s = VectorState::from_headers(Some(&fpsimd), Some(&fpsimd), Some(&idle_za));
        assert_eq!(s.may_borrow(false), Ok(()));
        // Live SVE: only on the svc of a call it re-issues.
        let live = header_bytes(16 + 8192, 32, SVE_PT_REGS_SVE);
        let s = VectorState::from_headers(Some(&live), Some(&fpsimd), Some(&idle_za));
        assert_eq!(s.may_borrow(false), Err(VectorRefusal::SveLive));
        assert_eq!(s.may_borrow(true), Ok(()));
        // Streaming mode, or ZA in use: never.
        let s = VectorState::from_headers(Some(&fpsimd), Some(&live), Some(&idle_za));
        assert_eq!(s.may_borrow(true), Err(VectorRefusal::Streaming));
        let za = header_bytes(16 + 32 * 32, 32, 0);
        let s = VectorState::from_headers(Some(&fpsimd), Some(&fpsimd), Some(&za));
        assert_eq!(s.may_borrow(true), Err(VectorRefusal::ZaActive));
        // A short read is no information.
        assert_eq!(
            VectorState::from_headers(Some(&live[..8]), None, None),
            VectorState::default()
        );
    }
}
