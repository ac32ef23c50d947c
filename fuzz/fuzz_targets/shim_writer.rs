//! The binding-shim writer: any set of names (as a patch library's undefined references may
//! spell them) and addresses gives an ELF file that parses back with exactly those symbols.
#![no_main]

use libfuzzer_sys::fuzz_target;
use object::{Object, ObjectSymbol};
use rpatch::patch::shim::{AbsoluteSymbol, build};

fuzz_target!(|data: &[u8]| {
    // Records separated by 0xff: 8 bytes value, 8 bytes size, 1 byte kind, then the name.
    let mut symbols = Vec::new();
    for record in data.split(|&b| b == 0xff).take(256) {
        if record.len() < 18 {
            continue;
        }
        let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap());
        let name: String = String::from_utf8_lossy(&record[17..])
            .chars()
            .filter(|&c| c != '\0')
            .collect();
        if name.is_empty() || symbols.iter().any(|s: &AbsoluteSymbol| s.name == name) {
            continue;
        }
        symbols.push(AbsoluteSymbol {
            name,
            value: word(0),
            size: word(8),
            function: record[16] & 1 == 1,
        });
    }
    let bytes = build("rpatch-bind-fuzz.so", &symbols);
    let file = object::File::parse(&*bytes).expect("the shim parses");
    for s in &symbols {
        let found = file
            .dynamic_symbols()
            .find(|d| d.name_bytes().ok() == Some(s.name.as_bytes()))
            .expect("every symbol is defined");
        assert_eq!(found.address(), s.value);
    }
});
