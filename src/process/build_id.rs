//! A module's build-id as the process has it mapped: read from the ELF header, program headers
//! and note segment in the target's memory, never from a file.
//!
//! A path names whatever is at that name now (the file at `/proc/PID/root/PATH` may be a newer
//! build), the dev/inode of a maps line differ from `stat` on overlayfs, and
//! `/proc/PID/map_files` needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) in the initial user
//! namespace. The loader maps the ELF header, the program headers and `PT_NOTE` with the first
//! read-only segment, so the bytes the process runs with carry their own build-id: this reads
//! it there, and reports nothing rather than fall back to a path.

use super::{LoadedModule, Memory};

/// `PT_LOAD`.
const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
const PT_NOTE: u32 = 4;
/// `NT_GNU_BUILD_ID`.
const NT_GNU_BUILD_ID: u32 = 3;
/// Program headers read at most (real objects have about a dozen).
const MAX_PHDRS: usize = 256;
/// Bytes of one note segment read at most.
const MAX_NOTES: u64 = 64 << 10;
/// Page size assumed for the first segment's alignment.
const PAGE: u64 = 4096;

/// The build-id (raw bytes) of the ELF object mapped at `module.start`, read from memory. `None`
/// when the mapping does not start with a 64-bit little-endian ELF header, the headers are not
/// mapped, or it has no GNU build-id note.
pub fn build_id_in_memory(mem: &dyn Memory, module: &LoadedModule) -> Option<Vec<u8>> {
    if module.first_offset != 0 {
        return None;
    }
    let base = module.start;
    let mut ehdr = [0u8; 64];
    mem.read_at(base, &mut ehdr).ok()?;
    // ELFCLASS64, ELFDATA2LSB.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().ok()?);
    let phentsize = u16::from_le_bytes(ehdr[54..56].try_into().ok()?) as usize;
    let phnum = u16::from_le_bytes(ehdr[56..58].try_into().ok()?) as usize;
    if phentsize < 56 || phnum == 0 || phnum > MAX_PHDRS {
        return None;
    }
    // The program headers are in the first page(s) of the file, mapped at `base` + offset.
    let table = mem
        .read_vec(base.checked_add(phoff)?, phentsize * phnum)
        .ok()?;
    let headers: Vec<ProgramHeader> = table
        .chunks_exact(phentsize)
        .map(ProgramHeader::parse)
        .collect();
    // The bias: the segment mapped from offset 0 is at `base`.
    let first = headers
        .iter()
        .find(|h| h.kind == PT_LOAD && h.offset == 0)?;
    let bias = base.wrapping_sub(first.vaddr & !(PAGE - 1));
    headers
        .iter()
        .filter(|h| h.kind == PT_NOTE && h.filesz > 0)
        .find_map(|h| {
            let at = bias.checked_add(h.vaddr)?;
            let notes = mem.read_vec(at, h.filesz.min(MAX_NOTES) as usize).ok()?;
            gnu_build_id(&notes, h.align)
        })
}

/// The fields of one `Elf64_Phdr` this needs.
struct ProgramHeader {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    align: u64,
}

impl ProgramHeader {
    fn parse(b: &[u8]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Self {
            kind: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
            offset: u64_at(8),
            vaddr: u64_at(16),
            filesz: u64_at(32),
            align: u64_at(48),
        }
    }
}

/// The descriptor of the first `NT_GNU_BUILD_ID` note named `GNU` in a note segment whose
/// entries are aligned to `align` (4, or 8 for some linkers' segments).
fn gnu_build_id(notes: &[u8], align: u64) -> Option<Vec<u8>> {
    let align = if align == 8 { 8 } else { 4 };
    let round = |n: usize| n.checked_add(align - 1).map(|n| n & !(align - 1));
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let word = |i: usize| u32::from_le_bytes(notes[at + i..at + i + 4].try_into().unwrap());
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_at = at + 12;
        let desc_at = name_at.checked_add(round(namesz)?)?;
        let end = desc_at.checked_add(round(descsz)?)?;
        if desc_at.checked_add(descsz)? > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && notes[name_at..name_at + namesz] == *b"GNU\0" && descsz > 0 {
            return Some(notes[desc_at..desc_at + descsz].to_vec());
        }
        at = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::FakeMemory;

    /// An ELF image as the loader maps its first segment: header, program headers (a PT_LOAD
    /// from offset 0 at `vaddr`, a PT_NOTE), and the note segment holding `notes`.
    fn image(vaddr: u64, notes: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let phdr = |b: &mut Vec<u8>, at: usize, kind: u32, off: u64, va: u64, sz: u64| {
            b[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            b[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            b[at + 16..at + 24].copy_from_slice(&va.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&sz.to_le_bytes());
            b[at + 48..at + 56].copy_from_slice(&4u64.to_le_bytes());
        };
        phdr(&mut b, 64, PT_LOAD, 0, vaddr, 0x400);
        phdr(
            &mut b,
            120,
            PT_NOTE,
            0x300,
            vaddr + 0x300,
            notes.len() as u64,
        );
        b[0x300..0x300 + notes.len()].copy_from_slice(notes);
        b
    }

    fn note(kind: u32, name: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(kind.to_le_bytes());
        n.extend(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    fn module(start: u64) -> LoadedModule {
        LoadedModule {
            path: "/m".into(),
            start,
            end: start + 0x1000,
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_build_id_after_other_notes_for_pie_and_fixed_objects() {
        let mut notes = note(1, b"GNU\0", &[0; 16]); // NT_GNU_ABI_TAG first
        notes.extend(note(
            NT_GNU_BUILD_ID,
            b"GNU\0",
            &[0xab, 0xcd, 0xef, 0x01, 0x23],
        ));
        for (start, vaddr) in [(0x5555_0000_0000, 0), (0x40_0000, 0x40_0000)] {
            let mem = FakeMemory::default();
            mem.map(start, image(vaddr, &notes));
            assert_eq!(
                build_id_in_memory(&mem, &module(start)),
                Some(vec![0xab, 0xcd, 0xef, 0x01, 0x23])
            );
        }
    }

    #[test]
    fn nothing_without_a_note_an_elf_header_or_readable_memory() {
        let mem = FakeMemory::default();
        mem.map(0x1000, image(0, &note(1, b"GNU\0", &[1; 16])));
        assert_eq!(build_id_in_memory(&mem, &module(0x1000)), None);
        let mem = FakeMemory::default();
        mem.map(0x1000, vec![0; 0x400]);
        assert_eq!(build_id_in_memory(&mem, &module(0x1000)), None);
        assert_eq!(build_id_in_memory(&mem, &module(0x9000)), None);
        // A note whose sizes run past the segment is not read beyond it.
        let mut bad = note(NT_GNU_BUILD_ID, b"GNU\0", &[1; 8]);
        bad[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        let mem = FakeMemory::default();
        mem.map(0x1000, image(0, &bad));
        assert_eq!(build_id_in_memory(&mem, &module(0x1000)), None);
    }
}
