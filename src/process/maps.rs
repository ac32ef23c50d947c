//! `/proc/PID/maps`: which file is mapped where, to compute load biases and find gaps for islands.

use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions.
    pub perms: Perms,
    /// File offset of `start`.
    pub offset: u64,
    /// Device of the backing file, as `st_dev` encodes it (`makedev(major, minor)`).
    pub dev: u64,
    /// Inode of the backing file (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`), empty for anonymous memory.
    pub path: String,
}

/// The permissions of a mapping (`rwxp` in /proc/PID/maps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    /// `r`
    pub read: bool,
    /// `w`
    pub write: bool,
    /// `x`
    pub execute: bool,
    /// `s` (shared) rather than `p` (private, copy-on-write).
    pub shared: bool,
}

impl Perms {
    /// Readable and writable (data, stacks).
    pub fn read_write(self) -> bool {
        self.read && self.write
    }

    /// Exactly `r-x`.
    pub fn read_exec_only(self) -> bool {
        self.read && !self.write && self.execute
    }

    /// Exactly `rw-`.
    pub fn read_write_only(self) -> bool {
        self.read && self.write && !self.execute
    }
}

impl std::str::FromStr for Perms {
    type Err = ();

    /// Parses the four letters of a maps line (`r-xp`).
    fn from_str(s: &str) -> Result<Self, ()> {
        let b = s.as_bytes();
        if b.len() != 4 {
            return Err(());
        }
        let flag = |i: usize, c: u8| match b[i] {
            x if x == c => Ok(true),
            b'-' => Ok(false),
            _ => Err(()),
        };
        Ok(Perms {
            read: flag(0, b'r')?,
            write: flag(1, b'w')?,
            execute: flag(2, b'x')?,
            shared: match b[3] {
                b's' => true,
                b'p' => false,
                _ => return Err(()),
            },
        })
    }
}

impl std::fmt::Display for Perms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = |on: bool, l: char| if on { l } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.execute, 'x'),
            if self.shared { 's' } else { 'p' }
        )
    }
}

impl Mapping {
    /// Whether the mapping is executable.
    pub fn executable(&self) -> bool {
        self.perms.execute
    }

    /// Whether the mapping is backed by a regular file (not anonymous, not `[vdso]` and the like).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// Whether the backing file's name can be looked up in the process's file system: not a
    /// memfd (`/memfd:NAME`, which names no file), not a file deleted since it was mapped (the
    /// name may now be another file's), not System V shared memory.
    pub fn has_file_name(&self) -> bool {
        self.is_file()
            && !self.path.ends_with(" (deleted)")
            && !self.path.starts_with("/memfd:")
            && !self.path.starts_with("/SYSV")
    }

    /// The backing file path with a ` (deleted)` suffix removed.
    pub fn file_path(&self) -> PathBuf {
        PathBuf::from(self.path.strip_suffix(" (deleted)").unwrap_or(&self.path))
    }
}

/// Parses the text of a maps file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?.parse().ok()?;
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = libc::makedev(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// `line` when it may start a mapping in a smaps text (its first field is an address range):
/// the other ~25 lines of each mapping (`Rss:`, `VmFlags:`...) are not parsed as one.
fn mapping_header(line: &str) -> Option<&str> {
    line.split(' ').next()?.contains('-').then_some(line)
}

/// How `fork` treats a mapping other than by copying it, from the `VmFlags` line of
/// `/proc/PID/smaps`: `MADV_DONTFORK` (`dc`: the child does not have it) or `MADV_WIPEONFORK`
/// (`wf`: the child has it zeroed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkFlag {
    /// `dc`: not copied into a forked child.
    DontFork,
    /// `wf`: zero-filled in a forked child.
    WipeOnFork,
}

impl ForkFlag {
    /// The madvise advice that set it, for messages.
    pub const fn advice(self) -> &'static str {
        match self {
            ForkFlag::DontFork => "MADV_DONTFORK (VmFlags dc)",
            ForkFlag::WipeOnFork => "MADV_WIPEONFORK (VmFlags wf)",
        }
    }
}

/// The mappings of a smaps text that a fork does not copy as they are, with the flag.
pub fn parse_fork_flags(smaps: &str) -> Vec<(std::ops::Range<u64>, ForkFlag)> {
    let mut out = Vec::new();
    // Almost no process has such a mapping: a search for the two words (which may also match
    // elsewhere, in a path) spares going through the text line by line.
    if !smaps.contains(" dc") && !smaps.contains(" wf") {
        return out;
    }
    // Only the header of a flagged mapping is parsed.
    let mut header = None;
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let Some(header) = header.take() else {
                continue;
            };
            let has = |flag: &str| flags.split_ascii_whitespace().any(|w| w == flag);
            let flag = if has("dc") {
                ForkFlag::DontFork
            } else if has("wf") {
                ForkFlag::WipeOnFork
            } else {
                continue;
            };
            if let Some(m) = parse_line(header) {
                out.push((m.start..m.end, flag));
            }
        } else if let Some(line) = mapping_header(line) {
            header = Some(line);
        }
    }
    out
}

/// Free address ranges between mappings (and below the first), at or above `min_addr`.
pub fn gaps(maps: &[Mapping], min_addr: u64, max_addr: u64) -> Vec<(u64, u64)> {
    let mut sorted: Vec<&Mapping> = maps.iter().collect();
    sorted.sort_by_key(|m| m.start);
    let mut out = Vec::new();
    let mut cursor = min_addr;
    for m in sorted {
        if m.start > cursor {
            out.push((cursor, m.start.min(max_addr)));
        }
        cursor = cursor.max(m.end);
    }
    if cursor < max_addr {
        out.push((cursor, max_addr));
    }
    out.retain(|(a, b)| a < b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_anonymous_lines() {
        let text = "55d0c0000000-55d0c0001000 r--p 00000000 08:01 1234  /usr/bin/cat\n\
                    55d0c0001000-55d0c0005000 r-xp 00001000 08:01 1234  /usr/bin/cat (deleted)\n\
                    7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0   [stack]\n\
                    7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert!(maps[1].executable());
        assert_eq!(maps[1].offset, 0x1000);
        assert_eq!(maps[1].file_path(), PathBuf::from("/usr/bin/cat"));
        assert!(maps[0].is_file());
        assert!(!maps[2].is_file());
        assert_eq!(maps[3].path, "");
        assert_eq!(maps[0].dev, libc::makedev(8, 1));
        assert_eq!(maps[0].inode, 1234);
        assert!(maps[0].has_file_name());
        assert!(!maps[1].has_file_name());
    }

    #[test]
    fn memfd_and_deleted_mappings_have_no_file_name() {
        let maps = parse_maps(
            "7f00-7f01 r-xp 00000000 00:01 77 /memfd:rpatch:ab (deleted)\n\
             7f01-7f02 r-xp 00000000 00:01 78 /memfd:x\n\
             7f02-7f03 rw-s 00000000 00:01 79 /SYSV00000000 (deleted)\n\
             7f03-7f04 r-xp 00000000 fd:1a 80 /usr/lib/x.so (deleted)\n",
        );
        assert_eq!(maps.len(), 4);
        assert!(maps.iter().all(|m| m.is_file() && !m.has_file_name()));
        assert_eq!(maps[3].dev, libc::makedev(0xfd, 0x1a));
    }

    #[test]
    fn permissions_parse_and_print_back() {
        for text in ["r-xp", "rw-p", "---p", "rwxs", "r--s"] {
            let perms: Perms = text.parse().unwrap();
            assert_eq!(perms.to_string(), text);
        }
        let rx: Perms = "r-xp".parse().unwrap();
        assert!(rx.read_exec_only() && !rx.read_write());
        assert!("rw-p".parse::<Perms>().unwrap().read_write_only());
        assert!("rwx".parse::<Perms>().is_err() && "rwxq".parse::<Perms>().is_err());
    }

    #[test]
    fn fork_flags_come_from_each_mappings_vmflags() {
        let smaps = "1000-2000 r-xp 00000000 00:00 0 \n\
                     Size:                  4 kB\n\
                     VmFlags: rd ex mr mw me dc \n\
                     2000-3000 rw-p 00000000 00:00 0 \n\
                     Rss:                   4 kB\n\
                     VmFlags: rd wr mr mw me ac wf\n\
                     3000-4000 r-xp 00000000 08:01 12 /bin/x\n\
                     VmFlags: rd ex mr mw me dw\n";
        assert_eq!(
            parse_fork_flags(smaps),
            vec![
                (0x1000..0x2000, ForkFlag::DontFork),
                (0x2000..0x3000, ForkFlag::WipeOnFork)
            ]
        );
        // The words elsewhere (a path) flag nothing.
        let named = "3000-4000 r-xp 00000000 08:01 12 /srv/a dc wf\nVmFlags: rd ex mr mw me\n";
        assert_eq!(parse_fork_flags(named), vec![]);
    }

    #[test]
    fn gaps_lie_between_mappings() {
        let maps = parse_maps("1000-2000 r-xp 0 0:0 1 /a\n3000-4000 r-xp 0 0:0 1 /a\n");
        assert_eq!(
            gaps(&maps, 0x100, 0x5000),
            vec![(0x100, 0x1000), (0x2000, 0x3000), (0x4000, 0x5000)]
        );
    }
}
