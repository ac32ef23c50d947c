//! A generator of *binding shims*: minimal ELF64 x86_64 shared objects whose only content is a
//! dynamic symbol table of absolute (`SHN_ABS`) symbols.
//!
//! Loaded with `RTLD_GLOBAL` before a patch library, such a shim makes the loader bind the patch's
//! undefined references (`extern int counter;`) to fixed runtime addresses — the target's own,
//! private objects — instead of failing or binding to a copy. glibc ≥ 2.28 leaves the value of an
//! absolute symbol alone; older versions added the shim's load bias (BZ 19818), which is why the
//! caller checks the version first (see `binding`).
//!
//! The `object` crate writes relocatable objects only, so the file is laid out here by hand:
//!
//! ```text
//! ELF header | program headers (PT_LOAD, PT_DYNAMIC, PT_GNU_STACK) | .hash | .dynsym | .dynstr
//! | .dynamic | .shstrtab | section headers
//! ```
//!
//! One read-write PT_LOAD maps the whole file at link address 0 (the loader may write adjusted
//! pointers into `.dynamic`). PT_GNU_STACK says the stack stays non-executable (without it glibc
//! would assume an executable stack is wanted). Section headers are not needed by the loader but
//! make the file readable by `readelf`, `nm` and `object`.

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

// Sizes of the ELF64 structures.
const EHDR: usize = 64;
const PHDR: usize = 56;
const SHDR: usize = 64;
const SYM: usize = 24;
const DYN: usize = 16;
const PAGE: u64 = 0x1000;

// The few ELF constants used (values from the gABI and the x86_64 psABI).
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const SHT_STRTAB: u32 = 3;
const SHT_HASH: u32 = 5;
const SHT_DYNAMIC: u32 = 6;
const SHT_DYNSYM: u32 = 11;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const STB_GLOBAL: u8 = 1;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const SHN_ABS: u16 = 0xfff1;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_SONAME: u64 = 14;

/// The classic SysV ELF hash (`DT_HASH`), which every glibc understands.
pub fn sysv_hash(name: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &b in name {
        h = (h << 4).wrapping_add(u32::from(b));
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
        }
        h &= !g;
    }
    h
}

/// Little-endian appends, so each structure below reads field by field like its C definition.
trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn align(&mut self, to: usize);
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn align(&mut self, to: usize) {
        self.resize(self.len().next_multiple_of(to), 0);
    }
}

/// A string table under construction: offset 0 is the empty string.
struct Strings(Vec<u8>);

impl Strings {
    fn new() -> Self {
        Strings(vec![0])
    }

    fn add(&mut self, s: &str) -> u32 {
        let at = self.0.len() as u32;
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        at
    }
}

/// An Elf64_Shdr's fields, in order.
struct Section {
    name: u32,
    kind: u32,
    flags: u64,
    offset: usize,
    size: usize,
    link: u32,
    info: u32,
    align: u64,
    entsize: usize,
}

/// An Elf64_Phdr's fields that vary here (vaddr = paddr = offset, memsz = filesz).
struct Segment {
    kind: u32,
    flags: u32,
    offset: u64,
    size: u64,
    align: u64,
}

/// Builds the shared object named `soname` defining `symbols`, ready to be written to a file and
/// `dlopen`ed. Names must not contain NUL bytes (ELF names cannot).
pub fn build(soname: &str, symbols: &[AbsoluteSymbol]) -> Vec<u8> {
    let nsyms = symbols.len() + 1; // entry 0 is the null symbol

    // String tables first: every other table refers to their offsets.
    let mut dynstr = Strings::new();
    let soname_at = dynstr.add(soname);
    let name_at: Vec<u32> = symbols.iter().map(|s| dynstr.add(&s.name)).collect();
    let mut shstr = Strings::new();
    let sh_names = [".hash", ".dynsym", ".dynstr", ".dynamic", ".shstrtab"].map(|n| shstr.add(n));

    // .hash: nbucket, nchain, buckets, chains. Chain i links symbols of the same bucket.
    let nbucket = nsyms as u32;
    let mut buckets = vec![0u32; nsyms];
    let mut chains = vec![0u32; nsyms];
    for (i, s) in symbols.iter().enumerate() {
        let index = i as u32 + 1;
        let b = (sysv_hash(s.name.as_bytes()) % nbucket) as usize;
        chains[index as usize] = buckets[b];
        buckets[b] = index;
    }

    // Headers are filled in last, once every offset is known.
    let mut out = vec![0u8; EHDR + 3 * PHDR];
    let hash_off = out.len();
    for &word in [nbucket, nsyms as u32]
        .iter()
        .chain(&buckets)
        .chain(&chains)
    {
        out.u32(word);
    }
    out.align(8);

    let dynsym_off = out.len();
    out.extend_from_slice(&[0u8; SYM]);
    for (s, &name) in symbols.iter().zip(&name_at) {
        let kind = if s.function { STT_FUNC } else { STT_OBJECT };
        out.u32(name); // st_name
        out.u8((STB_GLOBAL << 4) | kind); // st_info
        out.u8(0); // st_other: STV_DEFAULT
        out.u16(SHN_ABS); // st_shndx
        out.u64(s.value); // st_value
        out.u64(s.size); // st_size
    }

    let dynstr_off = out.len();
    out.extend_from_slice(&dynstr.0);
    out.align(8);

    let dynamic_off = out.len();
    let entries = [
        (DT_SONAME, u64::from(soname_at)),
        (DT_HASH, hash_off as u64),
        (DT_STRTAB, dynstr_off as u64),
        (DT_SYMTAB, dynsym_off as u64),
        (DT_STRSZ, dynstr.0.len() as u64),
        (DT_SYMENT, SYM as u64),
        (DT_NULL, 0),
    ];
    for (tag, value) in entries {
        out.u64(tag);
        out.u64(value);
    }
    let dynamic_size = entries.len() * DYN;
    let loaded_size = out.len() as u64; // everything up to here is mapped

    let shstr_off = out.len();
    out.extend_from_slice(&shstr.0);
    out.align(8);

    let shdr_off = out.len();
    let sections = [
        Section {
            name: 0,
            kind: 0,
            flags: 0,
            offset: 0,
            size: 0,
            link: 0,
            info: 0,
            align: 0,
            entsize: 0,
        },
        Section {
            name: sh_names[0],
            kind: SHT_HASH,
            flags: SHF_ALLOC,
            offset: hash_off,
            size: (2 + 2 * nsyms) * 4,
            link: 2, // .dynsym
            info: 0,
            align: 8,
            entsize: 4,
        },
        Section {
            name: sh_names[1],
            kind: SHT_DYNSYM,
            flags: SHF_ALLOC,
            offset: dynsym_off,
            size: nsyms * SYM,
            link: 3, // .dynstr
            info: 1, // index of the first global symbol
            align: 8,
            entsize: SYM,
        },
        Section {
            name: sh_names[2],
            kind: SHT_STRTAB,
            flags: SHF_ALLOC,
            offset: dynstr_off,
            size: dynstr.0.len(),
            link: 0,
            info: 0,
            align: 1,
            entsize: 0,
        },
        Section {
            name: sh_names[3],
            kind: SHT_DYNAMIC,
            flags: SHF_ALLOC | SHF_WRITE,
            offset: dynamic_off,
            size: dynamic_size,
            link: 3, // .dynstr
            info: 0,
            align: 8,
            entsize: DYN,
        },
        Section {
            name: sh_names[4],
            kind: SHT_STRTAB,
            flags: 0,
            offset: shstr_off,
            size: shstr.0.len(),
            link: 0,
            info: 0,
            align: 1,
            entsize: 0,
        },
    ];
    for s in &sections {
        let addr = if s.flags & SHF_ALLOC != 0 {
            s.offset
        } else {
            0
        };
        out.u32(s.name);
        out.u32(s.kind);
        out.u64(s.flags);
        out.u64(addr as u64); // sh_addr: loaded at link address = file offset
        out.u64(s.offset as u64);
        out.u64(s.size as u64);
        out.u32(s.link);
        out.u32(s.info);
        out.u64(s.align);
        out.u64(s.entsize as u64);
    }

    let rw = PF_R | PF_W;
    let segments = [
        Segment {
            kind: PT_LOAD,
            flags: rw,
            offset: 0,
            size: loaded_size,
            align: PAGE,
        },
        Segment {
            kind: PT_DYNAMIC,
            flags: rw,
            offset: dynamic_off as u64,
            size: dynamic_size as u64,
            align: 8,
        },
        Segment {
            kind: PT_GNU_STACK,
            flags: rw,
            offset: 0,
            size: 0,
            align: 16,
        },
    ];
    let mut head = Vec::with_capacity(EHDR + segments.len() * PHDR);
    head.extend_from_slice(b"\x7fELF");
    head.u8(2); // EI_CLASS: ELFCLASS64
    head.u8(1); // EI_DATA: ELFDATA2LSB
    head.u8(1); // EI_VERSION: EV_CURRENT
    head.u8(0); // EI_OSABI: System V
    head.resize(16, 0); // EI_ABIVERSION and padding
    head.u16(ET_DYN);
    head.u16(EM_X86_64);
    head.u32(1); // e_version
    head.u64(0); // e_entry
    head.u64(EHDR as u64); // e_phoff
    head.u64(shdr_off as u64); // e_shoff
    head.u32(0); // e_flags
    head.u16(EHDR as u16);
    head.u16(PHDR as u16);
    head.u16(segments.len() as u16);
    head.u16(SHDR as u16);
    head.u16(sections.len() as u16);
    head.u16(sections.len() as u16 - 1); // e_shstrndx: .shstrtab is last
    for p in &segments {
        head.u32(p.kind);
        head.u32(p.flags);
        head.u64(p.offset);
        head.u64(p.offset); // p_vaddr
        head.u64(p.offset); // p_paddr
        head.u64(p.size); // p_filesz
        head.u64(p.size); // p_memsz
        head.u64(p.align);
    }
    out[..head.len()].copy_from_slice(&head);
    out
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

    #[test]
    fn sysv_hash_matches_the_reference_values() {
        assert_eq!(sysv_hash(b""), 0);
        assert_eq!(sysv_hash(b"printf"), 0x077905a6);
        assert_eq!(sysv_hash(b"exit"), 0x0006cf04);
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
