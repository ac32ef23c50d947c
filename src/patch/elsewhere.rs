//! Patches another rpatch made: patch libraries mapped in the process that this state
//! directory's journal has no record of.
//!
//! Journals live in a state directory of the mount namespace rpatch runs in. An rpatch in a
//! container that shares the host's PID namespace sees the host's processes, but not the host's
//! journals (and the host does not see the container's): a process patched from the other side
//! looks unpatched to it, except for the copies of patch libraries it maps. Those carry the names
//! `delivery` gives them — `/memfd:rpatch:<sha256 prefix>`, or a file in a fresh `.rpatch-*`
//! directory — and each journal record names the copy it loaded by device and inode, so a copy
//! no record names was loaded by an rpatch with another state directory (or by a run whose
//! journal was removed).

use crate::journal::{JournalData, PatchRecord};
use crate::process::Mapping;
use std::path::PathBuf;

/// Whether a mapping is a copy of a patch library some rpatch loaded (see the module comment).
fn is_rpatch_copy(m: &Mapping) -> bool {
    m.is_file()
        && (m.path.starts_with("/memfd:rpatch:")
            || m.file_path()
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with(".rpatch-")))
}

/// The patch library copies `maps` shows that no record of `journal` loaded (one name per
/// copy), not counting the records `ignore` names (an attach that just failed, having reused
/// another rpatch's copy).
pub fn unrecorded_libraries(
    maps: &[Mapping],
    journal: &JournalData,
    ignore: impl Fn(&PatchRecord) -> bool,
) -> Vec<PathBuf> {
    let recorded = |m: &Mapping| {
        journal
            .patches
            .iter()
            .filter(|r| !ignore(r))
            .filter_map(|r| r.loaded)
            .any(|l| l.dev == m.dev && l.inode == m.inode)
    };
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut names = Vec::new();
    for m in maps.iter().filter(|m| is_rpatch_copy(m) && !recorded(m)) {
        if !seen.contains(&(m.dev, m.inode)) {
            seen.push((m.dev, m.inode));
            names.push(m.file_path());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::TargetIdentity;

    #[test]
    fn copies_no_record_loaded_are_unrecorded() {
        let maps = crate::process::parse_maps(
            "7f0000000000-7f0000001000 r--p 00000000 00:01 11 /memfd:rpatch:ab (deleted)\n\
             7f0000001000-7f0000002000 r-xp 00001000 00:01 11 /memfd:rpatch:ab (deleted)\n\
             7f1000000000-7f1000001000 r-xp 00000000 00:05 12 /run/.rpatch-0a1b/fix.so (deleted)\n\
             7f2000000000-7f2000001000 r-xp 00000000 00:05 13 /usr/lib/libc.so.6\n\
             7f3000000000-7f3000001000 r-xp 00000000 00:01 14 /memfd:other (deleted)\n",
        );
        let journal = JournalData::new(TargetIdentity {
            pid: 1,
            start_time: 1,
            boot_id: "b".into(),
            exe: "/x".into(),
            image: None,
        });
        assert_eq!(
            unrecorded_libraries(&maps, &journal, |_| false),
            vec![
                PathBuf::from("/memfd:rpatch:ab"),
                PathBuf::from("/run/.rpatch-0a1b/fix.so")
            ]
        );
    }
}
