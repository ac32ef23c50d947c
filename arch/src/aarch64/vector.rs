//! SVE and SME state of a thread: from the headers of its NT_ARM_SVE, NT_ARM_SSVE and NT_ARM_ZA
//! register sets, whether the thread may be borrowed for a remote call; and the layout of the
//! NT_ARM_SVE payload ([`SveHeader`], [`SveLayout`]), which is how the tracer saves and puts
//! back a thread's whole SVE state.
//!
//! NT_PRFPREG (V0–V31, FPSR, FPCR) is the whole FP state of a thread unless it uses the
//! scalable extensions:
//!
//! * **SVE** (Z0–Z31 wider than 128 bits, P0–P15, FFR, at the thread's vector length): a
//!   system call zeroes everything but the V part (the syscall ABI,
//!   `Documentation/arch/arm64/sve.rst`), so the state is *live* — NT_ARM_SVE's header says
//!   `SVE_PT_REGS_SVE` — only in a thread stopped outside one. The tracer saves the whole
//!   payload of such a thread (header and register data) and writes it back unchanged when it
//!   moves the thread back (`arch/arm64/kernel/ptrace.c`, `sve_set_common()`: same vector
//!   length, the VL_INHERIT flag as read); a thread in FPSIMD format keeps using NT_PRFPREG.
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
/// `SVE_PT_REGS_MASK` of the header's flags: which format the register data is in.
pub const SVE_PT_REGS_MASK: u16 = 1;
/// The register data is a `user_fpsimd_state` (NT_PRFPREG's layout): no live SVE state.
pub const SVE_PT_REGS_FPSIMD: u16 = 0;
/// The register data is in SVE format (Z, P, FFR at the vector length, FPSR, FPCR): live.
pub const SVE_PT_REGS_SVE: u16 = SVE_PT_REGS_MASK;
/// `PR_SVE_VL_INHERIT >> 16`: the vector length is kept across `execve`.
pub const SVE_PT_VL_INHERIT: u16 = 2;
/// `PR_SVE_SET_VL_ONEXEC >> 16`: a written vector length applies from the next `execve` only.
pub const SVE_PT_VL_ONEXEC: u16 = 4;
/// Bytes of a quadword (`__SVE_VQ_BYTES`): vector lengths are multiples of it.
pub const VQ_BYTES: usize = 16;
/// The largest vector length in quadwords the ABI allows (`__SVE_VQ_MAX`).
pub const VQ_MAX: usize = 512;
/// `sizeof(struct user_fpsimd_state)`: NT_PRFPREG's payload.
pub const FPSIMD_LEN: usize = 528;

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

    /// Whether a thread in this state may be borrowed: not in streaming mode, not with ZA
    /// on. Live SVE state is no obstacle: the tracer saves and restores it whole (see the
    /// module's documentation).
    pub fn may_borrow(&self) -> Result<(), VectorRefusal> {
        if self.streaming {
            Err(VectorRefusal::Streaming)
        } else if self.za_active {
            Err(VectorRefusal::ZaActive)
        } else {
            Ok(())
        }
    }
}

/// `struct user_sve_header`, the first 16 bytes of NT_ARM_SVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SveHeader {
    /// Bytes of the whole payload, header included ([`SveLayout::size`] for `flags`).
    pub size: u32,
    /// The largest payload this kernel can report (at the largest vector length).
    pub max_size: u32,
    /// The thread's vector length in bytes.
    pub vl: u16,
    /// The largest vector length the CPU offers.
    pub max_vl: u16,
    /// `SVE_PT_REGS_*` and `SVE_PT_VL_*` bits.
    pub flags: u16,
}

impl SveHeader {
    /// From the first [`HEADER_LEN`] bytes of an NT_ARM_SVE read; `None` when short or when
    /// the vector length is not one the ABI allows.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HEADER_LEN)?;
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let header = Self {
            size: u32_at(0),
            max_size: u32_at(4),
            vl: u16_at(8),
            max_vl: u16_at(10),
            flags: u16_at(12),
        };
        header.layout().map(|_| header)
    }

    /// The header's bytes (the reserved field zero).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.size.to_le_bytes());
        out[4..8].copy_from_slice(&self.max_size.to_le_bytes());
        out[8..10].copy_from_slice(&self.vl.to_le_bytes());
        out[10..12].copy_from_slice(&self.max_vl.to_le_bytes());
        out[12..14].copy_from_slice(&self.flags.to_le_bytes());
        out
    }

    /// Whether the register data is in SVE format (the thread's SVE state is live).
    pub fn is_live(&self) -> bool {
        self.flags & SVE_PT_REGS_MASK == SVE_PT_REGS_SVE
    }

    /// The payload's layout at this header's vector length (`None`: not a valid one).
    pub fn layout(&self) -> Option<SveLayout> {
        SveLayout::for_vl(usize::from(self.vl))
    }

    /// Whether `payload` is a whole NT_ARM_SVE payload in SVE format that starts with this
    /// header: what may be written back as it is.
    pub fn describes(&self, payload: &[u8]) -> bool {
        self.is_live()
            && self.layout().is_some_and(|l| {
                l.size(self.flags) == self.size as usize && payload.len() == self.size as usize
            })
            && SveHeader::parse(payload) == Some(*self)
    }
}

/// Offsets of the registers in an NT_ARM_SVE payload at one vector length, from the start of the
/// header (the `SVE_PT_*` macros of `arch/arm64/include/uapi/asm/ptrace.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SveLayout {
    /// The vector length in quadwords (`vq`).
    pub vq: usize,
}

impl SveLayout {
    /// For a vector length in bytes; `None` unless a multiple of 16 from 16 to 8192.
    pub fn for_vl(vl: usize) -> Option<Self> {
        let vq = vl / VQ_BYTES;
        (vl.is_multiple_of(VQ_BYTES) && (1..=VQ_MAX).contains(&vq)).then_some(Self { vq })
    }

    /// The vector length in bytes.
    pub fn vl(&self) -> usize {
        self.vq * VQ_BYTES
    }

    /// Bytes of one Z register (`SVE_PT_SVE_ZREG_SIZE`).
    pub fn zreg_len(&self) -> usize {
        self.vq * VQ_BYTES
    }

    /// Bytes of one P register, and of FFR (`SVE_PT_SVE_PREG_SIZE`).
    pub fn preg_len(&self) -> usize {
        self.vq * VQ_BYTES / 8
    }

    /// Where Z`n` starts (`SVE_PT_SVE_ZREG_OFFSET`).
    pub fn zreg(&self, n: usize) -> usize {
        HEADER_LEN + self.zreg_len() * n
    }

    /// Where P`n` starts (`SVE_PT_SVE_PREG_OFFSET`).
    pub fn preg(&self, n: usize) -> usize {
        self.zreg(32) + self.preg_len() * n
    }

    /// Where FFR starts (`SVE_PT_SVE_FFR_OFFSET`).
    pub fn ffr(&self) -> usize {
        self.preg(16)
    }

    /// Where FPSR is (`SVE_PT_SVE_FPSR_OFFSET`: after FFR, rounded up to a quadword); FPCR
    /// follows it.
    pub fn fpsr(&self) -> usize {
        (self.ffr() + self.preg_len()).next_multiple_of(VQ_BYTES)
    }

    /// Where FPCR is (`SVE_PT_SVE_FPCR_OFFSET`).
    pub fn fpcr(&self) -> usize {
        self.fpsr() + 4
    }

    /// Bytes of the whole payload, header included, for the register format of `flags`
    /// (`SVE_PT_SIZE`).
    pub fn size(&self, flags: u16) -> usize {
        if flags & SVE_PT_REGS_MASK == SVE_PT_REGS_SVE {
            HEADER_LEN + (self.fpcr() + 4 - HEADER_LEN).next_multiple_of(VQ_BYTES)
        } else {
            HEADER_LEN + FPSIMD_LEN
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
        assert_eq!(none.may_borrow(), Ok(()));
        // SVE present, registers in FPSIMD format (after a system call).
        let fpsimd = header_bytes(16 + 528, 32, 0);
        let idle_za = header_bytes(16, 32, 0);
        let s = VectorState::from_headers(Some(&fpsimd), Some(&fpsimd), Some(&idle_za));
        assert!(!s.sve_live);
        assert_eq!(s.may_borrow(), Ok(()));
        // Live SVE: seen, and borrowed (the tracer saves it whole).
        let live = header_bytes(1136, 32, SVE_PT_REGS_SVE);
        let s = VectorState::from_headers(Some(&live), Some(&fpsimd), Some(&idle_za));
        assert!(s.sve_live);
        assert_eq!(s.may_borrow(), Ok(()));
        // Streaming mode, or ZA in use: never.
        let s = VectorState::from_headers(Some(&fpsimd), Some(&live), Some(&idle_za));
        assert_eq!(s.may_borrow(), Err(VectorRefusal::Streaming));
        let za = header_bytes(16 + 32 * 32, 32, 0);
        let s = VectorState::from_headers(Some(&fpsimd), Some(&fpsimd), Some(&za));
        assert_eq!(s.may_borrow(), Err(VectorRefusal::ZaActive));
        // A short read is no information.
        assert_eq!(
            VectorState::from_headers(Some(&live[..8]), None, None),
            VectorState::default()
        );
    }

    /// The payload layout against `SVE_PT_*` of the kernel's uapi `asm/ptrace.h`, evaluated
    /// by the arm64 C compiler for these vector lengths: (vl, FFR, FPSR, whole SVE payload).
    #[test]
    fn layout_matches_the_kernel_macros() {
        for (vl, ffr, fpsr, size) in [
            (16, 560, 576, 592),
            (32, 16 + 544 * 2, 1120, 1136),
            (64, 16 + 544 * 4, 2208, 2224),
            (256, 16 + 544 * 16, 8752, 8768),
        ] {
            let l = SveLayout::for_vl(vl).expect("a valid vector length");
            let vq = vl / 16;
            assert_eq!((l.vq, l.vl()), (vq, vl));
            assert_eq!((l.zreg_len(), l.preg_len()), (vl, vl / 8));
            assert_eq!(l.zreg(0), 16, "Z0 right after the header");
            assert_eq!(l.zreg(31), 16 + 31 * vl);
            assert_eq!(
                l.preg(0),
                16 + 32 * vl,
                "P0 after Z31 (SVE_PT_SVE_PREGS_OFFSET)"
            );
            assert_eq!(l.preg(15), 16 + 32 * vl + 15 * vl / 8);
            assert_eq!(l.ffr(), ffr);
            assert_eq!((l.fpsr(), l.fpcr()), (fpsr, fpsr + 4));
            assert_eq!(l.size(SVE_PT_REGS_SVE), size);
            assert_eq!(l.size(SVE_PT_REGS_SVE | SVE_PT_VL_INHERIT), size);
            assert_eq!(
                l.size(SVE_PT_REGS_FPSIMD),
                544,
                "header + user_fpsimd_state"
            );
            assert!(l.size(SVE_PT_REGS_SVE).is_multiple_of(16));
        }
        assert_eq!(
            SveLayout::for_vl(8192).map(|l| l.size(SVE_PT_REGS_SVE)),
            Some(279_584)
        );
        for bad in [0, 8, 24, 8208] {
            assert_eq!(SveLayout::for_vl(bad), None, "vl {bad}");
        }
    }

    #[test]
    fn headers_round_trip_and_describe_their_payload() {
        for vl in [16u16, 32, 64, 256] {
            let size = SveLayout::for_vl(vl.into()).unwrap().size(SVE_PT_REGS_SVE) as u32;
            let flags = SVE_PT_REGS_SVE | SVE_PT_VL_INHERIT;
            let bytes = header_bytes(size, vl, flags);
            let h = SveHeader::parse(&bytes).expect("valid");
            assert_eq!((h.size, h.vl, h.flags), (size, vl, flags));
            assert!(h.is_live());
            assert_eq!(h.to_bytes().as_slice(), bytes.as_slice());
            let mut payload = bytes.clone();
            payload.resize(size as usize, 0xa5);
            assert!(h.describes(&payload));
            assert!(!h.describes(&payload[..payload.len() - 16]), "short");
            // FPSIMD format is not written back as an SVE payload.
            let fp = SveHeader::parse(&header_bytes(544, vl, 0)).unwrap();
            assert!(!fp.is_live());
            assert!(!fp.describes(&payload));
            // A size that does not match the vector length is not a payload of it.
            let wrong = SveHeader::parse(&header_bytes(size + 16, vl, SVE_PT_REGS_SVE)).unwrap();
            payload.resize(size as usize + 16, 0);
            assert!(!wrong.describes(&payload));
        }
        assert_eq!(
            SveHeader::parse(&header_bytes(592, 24, 1)),
            None,
            "vl not a multiple of 16"
        );
        assert_eq!(SveHeader::parse(&[0; 15]), None);
    }
}
