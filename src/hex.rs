//! Hex renderings shared by messages, reports and the journal file. A leaf module: it imports
//! nothing of rpatch, so every layer can use it without depending on the layers above.

/// Bytes as lowercase hex, two digits each (`e9aabbccdd`).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An address as reports show it: `0x` and lowercase hex.
pub(crate) fn address(addr: u64) -> String {
    format!("{addr:#x}")
}

/// Serialises an address as a `"0x..."` string (JSON numbers lose precision above 2^53).
pub(crate) fn serialize_address<S: serde::Serializer>(addr: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&address(*addr))
}

/// Serialises an optional address as a `"0x..."` string or null.
pub(crate) fn serialize_opt_address<S: serde::Serializer>(
    addr: &Option<u64>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(a) => s.serialize_str(&address(*a)),
        None => s.serialize_none(),
    }
}

/// Serialises bytes as a hex string.
pub(crate) fn serialize_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_bytes_and_addresses() {
        assert_eq!(super::hex(&[0xe9, 0x00, 0x1f]), "e9001f");
        assert_eq!(super::address(0x5555_0000_1000), "0x555500001000");
    }
}
