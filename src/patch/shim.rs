//! A generator of *binding shims*: minimal ELF64 shared objects of rpatch's own machine whose only content is a
//! dynamic symbol table of absolute (`SHN_ABS`) symbols.
//!
//! Loaded with `RTLD_GLOBAL` before a patch library, such a shim makes the loader bind the patch's
//! undefined references (`extern int counter;`) to fixed runtime addresses — the target's own,
//! private objects — instead of failing or binding to a copy. glibc ≥ 2.28 leaves the value of an
//! absolute symbol alone; older versions added the shim's load bias (BZ 19818), which is why the
//! caller checks the version first (see `binding`).
//!
//! The file is written with `object`'s ELF writer (two phases: every range reserved, then
//! written), laid out as
//!
//! ```text
//! ELF header | program headers (PT_LOAD, PT_DYNAMIC, PT_GNU_STACK) | .hash | .dynsym | .dynstr
//! | .dynamic | .shstrtab | section headers
//! ```
//!
//! One read-write PT_LOAD maps the file up to the end of `.dynamic` at link address 0, so every
//! address equals its file offset (the loader may write adjusted pointers into `.dynamic`).
//! PT_GNU_STACK says the stack stays non-executable (without it glibc would assume an executable
//! stack is wanted). Section headers are not needed by the loader but make the file readable by
//! `readelf`, `nm` and `object`.

use object::Endianness;
use object::elf;
use object::write::elf::{FileHeader, ProgramHeader, Sym, Writer};

/// One symbol the shim defines: `name` is absolute at `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteSymbol {
    /// The name exactly as the patch library references it (its undefined symbol).
    pub name: String,
    /// The runtime address in the target the reference must bind to.
    pub value: u64,
    /// st_size of the target's symbol (copy relocations and debuggers use it).
    pub size: u64,
    /// STT_FUNC rather than STT_OBJECT: a call through the PLT then resolves to it like to any
    /// function.
    pub function: bool,
}

/// Entries of `.dynamic`: SONAME, HASH, STRTAB, SYMTAB, STRSZ, SYMENT, NULL.
const DYNAMIC_ENTRIES: usize = 7;

/// Builds the shared object named `soname` defining `symbols`, ready to be handed to the target
/// and `dlopen`ed. Names must not contain NUL bytes (ELF names cannot).
pub fn build(soname: &str, symbols: &[AbsoluteSymbol]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut writer = Writer::new(Endianness::Little, true, &mut bytes);

    // Phase one: reserve every range, in file order.
    writer.reserve_file_header();
    writer.reserve_program_headers(3);
    let soname_id = writer.add_dynamic_string(soname.as_bytes());
    let names: Vec<_> = symbols
        .iter()
        .map(|s| writer.add_dynamic_string(s.name.as_bytes()))
        .collect();
    writer.reserve_null_dynamic_symbol_index();
    for _ in symbols {
        writer.reserve_dynamic_symbol_index();
    }
    // One bucket per symbol (and the null symbol): chains stay short whatever the names.
    let count = symbols.len() as u32 + 1;
    let hash_at = writer.reserve_hash(count, count);
    let dynsym_at = writer.reserve_dynsym();
    let dynstr_at = writer
        .reserve_dynstr()
        .expect("a string table of symbol names fits its 32-bit offsets");
    let dynamic_at = writer.reserve_dynamic(DYNAMIC_ENTRIES);
    let loaded = writer.reserved_len();
    writer.reserve_null_section_index();
    writer.reserve_hash_section_index();
    writer.reserve_dynsym_section_index();
    writer.reserve_dynstr_section_index();
    writer.reserve_dynamic_section_index();
    writer.reserve_shstrtab_section_index();
    writer
        .reserve_shstrtab()
        .expect("five section names fit a string table");
    writer.reserve_section_headers();

    // Phase two: write them. Every address is the file offset (loaded at link address 0).
    writer
        .write_file_header(&FileHeader {
            os_abi: elf::ELFOSABI_SYSV,
            abi_version: 0,
            e_type: elf::ET_DYN,
            e_machine: object::elf::Machine(crate::isa::ELF_MACHINE),
            e_entry: 0,
            e_flags: elf::FileFlags(0),
        })
        .expect("the headers of a small file fit");
    writer.write_align_program_headers();
    let rw = elf::PF_R | elf::PF_W;
    let dynamic_size = (DYNAMIC_ENTRIES * 16) as u64;
    for (p_type, offset, size, align) in [
        (elf::PT_LOAD, 0, loaded, 0x1000),
        (elf::PT_DYNAMIC, dynamic_at, dynamic_size, 8),
        (elf::PT_GNU_STACK, 0, 0, 16),
    ] {
        writer.write_program_header(&ProgramHeader {
            p_type,
            p_flags: rw,
            p_offset: offset,
            p_vaddr: offset,
            p_paddr: offset,
            p_filesz: size,
            p_memsz: size,
            p_align: align,
        });
    }
    writer.write_hash(count, count, |i| {
        let symbol = symbols.get(i.checked_sub(1)? as usize)?;
        Some(elf::hash(symbol.name.as_bytes()))
    });
    writer.write_null_dynamic_symbol();
    for (s, &name) in symbols.iter().zip(&names) {
        let kind = if s.function {
            elf::STT_FUNC
        } else {
            elf::STT_OBJECT
        };
        writer.write_dynamic_symbol(&Sym {
            section: None,
            st_name: writer.dynamic_string_offset(Some(name)),
            st_info: elf::SymbolInfo::new(elf::STB_GLOBAL, kind),
            st_other: elf::STV_DEFAULT.into(),
            st_shndx: elf::SHN_ABS,
            st_value: s.value,
            st_size: s.size,
        });
    }
    writer.write_dynstr();
    writer.write_align_dynamic();
    let dynstr_len = u64::from(writer.dynstr_len());
    for (tag, value) in [
        (elf::DT_HASH, hash_at),
        (elf::DT_STRTAB, dynstr_at),
        (elf::DT_SYMTAB, dynsym_at),
        (elf::DT_STRSZ, dynstr_len),
        (elf::DT_SYMENT, 24),
    ] {
        writer
            .write_dynamic(tag, value)
            .expect("a dynamic entry fits");
    }
    writer
        .write_dynamic_string(elf::DT_SONAME, soname_id)
        .expect("the soname is in the string table");
    writer
        .write_dynamic(elf::DT_NULL, 0)
        .expect("a dynamic entry fits");
    writer.write_shstrtab();
    writer.write_null_section_header();
    writer.write_hash_section_header(hash_at);
    writer.write_dynsym_section_header(dynsym_at, 1);
    writer.write_dynstr_section_header(dynstr_at);
    writer.write_dynamic_section_header(dynamic_at);
    writer.write_shstrtab_section_header();
    debug_assert_eq!(writer.reserved_len(), writer.len());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSymbol, SymbolKind, SymbolSection};

    fn sample() -> Vec<AbsoluteSymbol> {
        vec![
            AbsoluteSymbol {
                name: "counter".into(),
                value: 0x5555_1234_5678,
                size: 4,
                function: false,
            },
            AbsoluteSymbol {
                name: "calcapp::state::COUNTER".into(),
                value: 0x7fff_0000_1000,
                size: 8,
                function: false,
            },
            AbsoluteSymbol {
                name: "helper".into(),
                value: 0x5555_0000_2000,
                size: 22,
                function: true,
            },
        ]
    }

    /// Every symbol is found through the `.hash` table as the loader looks it up.
    #[test]
    fn every_symbol_is_found_through_the_hash_table() {
        use object::read::elf::{ElfFile64, FileHeader as _, Sym as _, VersionTable};
        let bytes = build("rpatch-bind-test.so", &sample());
        let file = ElfFile64::<Endianness>::parse(&*bytes).expect("parses");
        let endian = file.endian();
        let sections = file.elf_header().sections(endian, &*bytes).unwrap();
        let (hash, link) = sections.hash(endian, &*bytes).unwrap().expect(".hash");
        let symbols = sections
            .symbol_table_by_index(endian, &*bytes, link)
            .unwrap();
        let versions = VersionTable::default();
        for want in sample() {
            let name = want.name.as_bytes();
            let (_, sym) = hash
                .find(endian, name, elf::hash(name), None, &symbols, &versions)
                .unwrap_or_else(|| panic!("{} not found through .hash", want.name));
            assert_eq!(sym.st_value(endian), want.value);
        }
    }

    #[test]
    fn object_reads_back_every_absolute_symbol() {
        let bytes = build("rpatch-bind-test.so", &sample());
        let file = object::File::parse(&*bytes).expect("parses");
        assert_eq!(file.architecture(), object::Architecture::X86_64);
        assert_eq!(file.kind(), object::ObjectKind::Dynamic);
        let syms: Vec<_> = file.dynamic_symbols().collect();
        assert_eq!(syms.len(), 3);
        for (sym, want) in syms.iter().zip(sample()) {
            assert_eq!(sym.name().unwrap(), want.name);
            assert_eq!(sym.address(), want.value);
            assert_eq!(sym.size(), want.size);
            assert_eq!(sym.section(), SymbolSection::Absolute);
            assert!(sym.is_global());
            let kind = if want.function {
                SymbolKind::Text
            } else {
                SymbolKind::Data
            };
            assert_eq!(sym.kind(), kind);
        }
    }

    /// `readelf` is the reference for what a loader will think of the file; it is part of
    /// binutils, which the test targets need anyway. Skipped where it is missing.
    #[test]
    fn readelf_accepts_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.so");
        std::fs::write(&path, build("rpatch-bind-test.so", &sample())).unwrap();
        let Ok(out) = std::process::Command::new("readelf")
            .args(["-a", "-W"])
            .arg(&path)
            .output()
        else {
            eprintln!("readelf not installed: skipped");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.trim().is_empty(), "readelf complained: {err}\n{text}");
        assert!(text.contains("DYN (Shared object file)"), "{text}");
        assert!(
            text.contains("Library soname: [rpatch-bind-test.so]"),
            "{text}"
        );
        assert!(text.contains("GNU_STACK"), "{text}");
        let counter = text
            .lines()
            .find(|l| l.ends_with(" counter"))
            .unwrap_or_else(|| panic!("no counter symbol: {text}"));
        assert!(
            counter.contains("0000555512345678")
                && counter.contains("OBJECT")
                && counter.contains("GLOBAL")
                && counter.contains("ABS"),
            "{counter}"
        );
    }

    /// The property everything rests on: this process's own loader (glibc ≥ 2.28) resolves the
    /// symbols to the exact values written, not moved by the shim's load address.
    #[test]
    fn dlopen_resolves_the_absolute_values_unrelocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rpatch-bind-dlopen-test.so");
        let name = format!("rpatch-bind-{}.so", std::process::id());
        std::fs::write(&path, build(&name, &sample())).unwrap();
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: dlopen of a file with no constructors and no relocations: loading it runs no
        // code of the file; the handle stays open (loaded objects must not be unloaded while
        // other tests may look symbols up).
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a C string owned by libc or NULL, read at once.
            let why = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) };
            panic!("dlopen failed: {why:?}");
        }
        for want in sample() {
            let c_name = std::ffi::CString::new(want.name.clone()).unwrap();
            // SAFETY: a valid handle and a NUL-terminated name; the result is only compared.
            let got = unsafe { libc::dlsym(handle, c_name.as_ptr()) };
            assert_eq!(got as u64, want.value, "{}", want.name);
        }
    }
}
