//! The unwind tables of one module as the stack inspector uses them: its `.eh_frame` (and
//! `.eh_frame_hdr`) read from the file, and the check, with gimli on the same bytes, that
//! framehop can take a step out of an address with CFI rather than falling back to frame
//! pointers.

use super::stack::Doubt;
use crate::symbols::LoadSegment;
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection, ObjectSegment};
use std::ops::Range;
use std::sync::Arc;

/// Unwind section bytes shared between framehop's module and the inspector's own FDE checks.
/// The bytes read stay in their buffer (an `Arc<[u8]>` would be a copy of it: libc's tables
/// are some 180 KiB, copied and faulted in twice per operation).
#[derive(Clone, Default)]
pub(super) struct Bytes(Arc<Vec<u8>>);

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Arc::new(bytes))
    }
}

impl From<&[u8]> for Bytes {
    fn from(bytes: &[u8]) -> Self {
        Self(Arc::new(bytes.to_vec()))
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// The CFI sections of one module, as stated in its file (SVMAs).
pub(super) struct Cfi {
    pub eh_frame: Bytes,
    pub eh_frame_svma: u64,
    pub eh_frame_hdr: Option<(Bytes, u64)>,
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
}

impl Cfi {
    fn bases(&self) -> BaseAddresses {
        let mut bases = BaseAddresses::default().set_eh_frame(self.eh_frame_svma);
        if let Some((_, svma)) = &self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(*svma);
        }
        if let Some(text) = &self.text_svma {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &self.got_svma {
            bases = bases.set_got(got.start);
        }
        bases
    }

    /// Whether framehop can take a step out of `svma` with this CFI.
    pub fn check(&self, svma: u64, ctx: &mut UnwindContext<usize>) -> Result<(), Gap> {
        let Some((hdr, _)) = &self.eh_frame_hdr else {
            // framehop indexes a bare .eh_frame itself; trust it (linkers always emit the hdr).
            return Ok(());
        };
        let bases = self.bases();
        let eh_frame = EhFrame::new(&self.eh_frame[..], LittleEndian);
        let parsed = EhFrameHdr::new(&hdr[..], LittleEndian)
            .parse(&bases, 8)
            .map_err(|_| Gap::NoFde)?;
        // gimli's `fde_for_address`, step by step: it subtracts the table's `.eh_frame` pointer
        // from the FDE pointer unchecked, which a hostile `.eh_frame_hdr` makes overflow (found
        // by fuzzing). An FDE before `.eh_frame` is no FDE; framehop then never looks it up.
        // framehop looks addresses up 32 bits relative to the module: one beyond is not its.
        if svma > u64::from(u32::MAX) {
            return Err(Gap::NoFde);
        }
        let table = parsed.table().ok_or(Gap::NoFde)?;
        let fde_ptr = table.lookup(svma, &bases).map_err(|_| Gap::NoFde)?;
        let (Ok(fde_at), Ok(eh_frame_at)) = (fde_ptr.direct(), parsed.eh_frame_ptr().direct())
        else {
            return Err(Gap::NoFde);
        };
        if fde_at < eh_frame_at {
            return Err(Gap::NoFde);
        }
        let offset = table.pointer_to_offset(fde_ptr).map_err(|_| Gap::NoFde)?;
        let fde = eh_frame
            .fde_from_offset(&bases, offset, EhFrame::cie_from_offset)
            .map_err(|_| Gap::NoFde)?;
        if !fde.contains(svma) {
            return Err(Gap::NoFde);
        }
        if fde.is_signal_trampoline() {
            return Err(Gap::SignalFrame);
        }
        let row = fde
            .unwind_info_for_address(&eh_frame, &bases, ctx, svma)
            .map_err(|_| Gap::Unsupported)?;
        match row.cfa() {
            CfaRule::RegisterAndOffset { register, .. }
                if crate::isa::stack::CFA_REGISTERS.contains(register) =>
            {
                Ok(())
            }
            _ => Err(Gap::Unsupported),
        }
    }
}

/// What a module's CFI lacks for one address (becomes a [`Doubt`] with the module's name).
pub(super) enum Gap {
    NoFde,
    SignalFrame,
    Unsupported,
}

impl Gap {
    pub fn doubt(self, module: String, address: u64) -> Doubt {
        match self {
            Gap::NoFde => Doubt::NoFde { module, address },
            Gap::SignalFrame => Doubt::SignalFrame { module, address },
            Gap::Unsupported => Doubt::Unsupported { module, address },
        }
    }
}

/// Number of bytes in a module's CFI sections.
pub(super) fn cfi_len(cfi: &Cfi) -> usize {
    cfi.eh_frame.len() + cfi.eh_frame_hdr.as_ref().map_or(0, |(b, _)| b.len())
}

/// Where a module's CFI sections are in its file: byte ranges (offset, length) and addresses.
/// Derived once per file and remembered with it (`symbols::Knowledge`); the bytes are read from
/// the file itself at these offsets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct CfiPlace {
    /// `.eh_frame`: (file offset, length, address).
    pub eh_frame: (u64, u64, u64),
    /// `.eh_frame_hdr`: (file offset, length, address).
    pub eh_frame_hdr: Option<(u64, u64, u64)>,
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
}

/// The place of the CFI sections of an ELF image (`None`: it has no `.eh_frame`). An image
/// without a section table (the loadable copy of a patch library rpatch hands a target, a
/// file stripped of it) is read through its program headers: `PT_GNU_EH_FRAME` locates
/// `.eh_frame_hdr`, which points at `.eh_frame`.
pub(super) fn locate_cfi(data: &[u8]) -> Result<Option<CfiPlace>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    if file.sections().next().is_none() {
        return Ok(locate_cfi_by_segments(data));
    }
    // As in `read_cfi`: a section whose address range would wrap counts as missing.
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        let (offset, len) = s.file_range()?;
        s.address().checked_add(len)?;
        (len > 0).then_some((offset, len, s.address()))
    };
    let svma_range = |name: &str| {
        let s = file.section_by_name(name)?;
        Some(s.address()..s.address().checked_add(s.size())?)
    };
    Ok(section(".eh_frame").map(|eh_frame| CfiPlace {
        eh_frame,
        eh_frame_hdr: section(".eh_frame_hdr"),
        text_svma: svma_range(".text"),
        got_svma: svma_range(".got"),
    }))
}

/// [`locate_cfi`] for a 64-bit little-endian image without sections: `.eh_frame_hdr` from
/// `PT_GNU_EH_FRAME`, `.eh_frame` from the pointer it starts with (to the end of the segment
/// holding it: the tables are reached through the header's search table, never by their end),
/// `.text` as the executable segment. `None` when any of it is missing or inconsistent.
fn locate_cfi_by_segments(data: &[u8]) -> Option<CfiPlace> {
    use object::LittleEndian as LE;
    use object::elf::{FileHeader64, PF_X, PT_GNU_EH_FRAME, PT_LOAD};
    use object::read::elf::{FileHeader, ProgramHeader};
    let header = FileHeader64::<LE>::parse(data).ok()?;
    let phdrs = header.program_headers(LE, data).ok()?;
    let loads: Vec<_> = phdrs.iter().filter(|p| p.p_type(LE) == PT_LOAD).collect();
    let hdr = phdrs.iter().find(|p| p.p_type(LE) == PT_GNU_EH_FRAME)?;
    let (hdr_off, hdr_len, hdr_svma) = (hdr.p_offset(LE), hdr.p_filesz(LE), hdr.p_vaddr(LE));
    let bytes = data.get(usize::try_from(hdr_off).ok()?..)?;
    // version 1, eh_frame_ptr encoded DW_EH_PE_pcrel | DW_EH_PE_sdata4 (what linkers write).
    if bytes.len() < 8 || bytes[0] != 1 || bytes[1] != 0x1b {
        return None;
    }
    let rel = i32::from_le_bytes(bytes[4..8].try_into().ok()?);
    let eh_svma = hdr_svma
        .checked_add(4)?
        .checked_add_signed(i64::from(rel))?;
    let segment = loads.iter().find(|p| {
        let start = p.p_vaddr(LE);
        (start..start.saturating_add(p.p_filesz(LE))).contains(&eh_svma)
    })?;
    let eh_off = segment.p_offset(LE) + (eh_svma - segment.p_vaddr(LE));
    let eh_len = segment.p_vaddr(LE) + segment.p_filesz(LE) - eh_svma;
    if eh_off.checked_add(eh_len)? > data.len() as u64 {
        return None;
    }
    let text = loads
        .iter()
        .find(|p| p.p_flags(LE).contains(PF_X))
        .map(|p| {
            let start = p.p_vaddr(LE);
            start..start.saturating_add(p.p_memsz(LE))
        });
    Some(CfiPlace {
        eh_frame: (eh_off, eh_len, eh_svma),
        eh_frame_hdr: Some((hdr_off, hdr_len, hdr_svma)),
        text_svma: text,
        got_svma: None,
    })
}

impl Cfi {
    /// The CFI at `place`, its bytes read with `read(offset, length)`.
    pub(super) fn read(
        place: &CfiPlace,
        read: impl Fn(u64, usize) -> Option<Vec<u8>>,
    ) -> Option<Self> {
        let (offset, len, svma) = place.eh_frame;
        let eh_frame = Bytes::from(read(offset, usize::try_from(len).ok()?)?);
        let eh_frame_hdr = match place.eh_frame_hdr {
            Some((offset, len, svma)) => {
                Some((Bytes::from(read(offset, usize::try_from(len).ok()?)?), svma))
            }
            None => None,
        };
        Some(Cfi {
            eh_frame,
            eh_frame_svma: svma,
            eh_frame_hdr,
            text_svma: place.text_svma.clone(),
            got_svma: place.got_svma.clone(),
        })
    }
}

/// The PT_LOAD segments (for the load bias) and the CFI sections of an ELF image.
pub(super) fn read_cfi<'data, R: object::ReadRef<'data>>(
    data: R,
) -> Result<(Vec<LoadSegment>, Option<Cfi>), String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let segments = file
        .segments()
        .map(|s| {
            let (offset, filesz) = s.file_range();
            LoadSegment {
                vaddr: s.address(),
                memsz: s.size(),
                offset,
                filesz,
                executable: matches!(
                    s.flags(),
                    object::SegmentFlags::Elf { p_flags, .. } if p_flags.contains(object::elf::PF_X)
                ),
            }
        })
        .collect();
    // Sections whose address range would wrap (a hostile header; found by fuzzing) count as
    // missing.
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        let data = s.data().ok()?;
        s.address().checked_add(data.len() as u64)?;
        (!data.is_empty()).then(|| (Bytes::from(data), s.address()))
    };
    let svma_range = |name: &str| {
        let s = file.section_by_name(name)?;
        Some(s.address()..s.address().checked_add(s.size())?)
    };
    let cfi = section(".eh_frame").map(|(eh_frame, eh_frame_svma)| Cfi {
        eh_frame,
        eh_frame_svma,
        eh_frame_hdr: section(".eh_frame_hdr"),
        text_svma: svma_range(".text"),
        got_svma: svma_range(".got"),
    });
    Ok((segments, cfi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image without a section table (the loadable copy rpatch hands a target) has its CFI
    /// found through its program headers, where the section table puts it.
    #[test]
    fn cfi_is_found_without_a_section_table() {
        let whole = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let by_sections = locate_cfi(&whole)
            .unwrap()
            .expect("this executable has CFI");
        let mut image = whole.clone();
        // No section table any more: as `patch::delivery::loadable_image` leaves a library.
        image[0x28..0x30].fill(0);
        image[0x3c..0x40].fill(0);
        let by_segments = locate_cfi(&image)
            .unwrap()
            .expect("found through PT_GNU_EH_FRAME");
        assert_eq!(by_segments.eh_frame_hdr, by_sections.eh_frame_hdr);
        assert_eq!(by_segments.eh_frame.0, by_sections.eh_frame.0);
        assert_eq!(by_segments.eh_frame.2, by_sections.eh_frame.2);
        assert!(by_segments.eh_frame.1 >= by_sections.eh_frame.1);
        let text = by_sections.text_svma.unwrap();
        let exec = by_segments.text_svma.unwrap();
        assert!(exec.start <= text.start && text.end <= exec.end);
    }
}
