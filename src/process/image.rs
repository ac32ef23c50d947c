//! The exec image: the program a process runs since its last `execve`, told apart from every
//! other image the same process ran or will run.
//!
//! PID, start time and boot id identify a process for life, but `execve` keeps all three while it
//! replaces the whole address space: a patch recorded before an exec must never be taken for the
//! new image's. Two facts change at every exec and survive every fork: the executable file
//! (device and inode of `/proc/PID/exe`) and the 16 random bytes the kernel puts on the new
//! stack for the C library (`AT_RANDOM` in the auxiliary vector), which a forked child holds at
//! the same address because it holds a copy of the whole address space. Together they name one
//! image: a child forked from a process runs the same image until it execs.

use super::{ProcessError, proc_dir};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

/// `AT_RANDOM` in the auxiliary vector: the address of 16 random bytes (`<elf.h>`).
const AT_RANDOM: u64 = 25;
/// `AT_NULL`: the end of the auxiliary vector.
const AT_NULL: u64 = 0;

/// One exec image of a process (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecImage {
    /// Device of the executable (`st_dev` of `/proc/PID/exe`).
    pub exe_dev: u64,
    /// Inode of the executable.
    pub exe_inode: u64,
    /// The 16 bytes at `AT_RANDOM` (hex in the journal).
    #[serde(
        serialize_with = "serialize_random",
        deserialize_with = "deserialize_random"
    )]
    pub at_random: [u8; 16],
}

impl ExecImage {
    /// A short name for file names and messages: the first 8 random bytes in hex.
    pub fn short(&self) -> String {
        crate::hex::hex(&self.at_random[..8])
    }
}

fn serialize_random<S: Serializer>(bytes: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    crate::hex::serialize_bytes(bytes, s)
}

fn deserialize_random<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
    let text = String::deserialize(d)?;
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        return Err(serde::de::Error::custom("at_random must be 32 hex digits"));
    }
    let digit = |b: u8| {
        (b as char)
            .to_digit(16)
            .ok_or_else(|| serde::de::Error::custom("not a hex digit"))
    };
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Ok(out)
}

/// Whether process `pid` runs exec image `image`: [`runs_executable`] first (one `stat`), and
/// only when it does are its auxiliary vector and `AT_RANDOM` bytes read.
pub fn runs_image(pid: i32, image: &ExecImage) -> bool {
    runs_executable(pid, image.exe_dev, image.exe_inode)
        && read_image(pid).ok().as_ref() == Some(image)
}

/// The exec image `pid` runs now. Reading it needs the same access as tracing the process
/// (`/proc/PID/auxv` and `/proc/PID/mem`).
pub fn read_image(pid: i32) -> Result<ExecImage, ProcessError> {
    let dir = proc_dir(pid);
    let io = |what: &str| {
        let what = format!("/proc/{pid}/{what}");
        move |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => ProcessError::NoSuchProcess { pid },
            std::io::ErrorKind::PermissionDenied => {
                super::permission_denied(pid, format!("reading {what}"))
            }
            _ => ProcessError::Io { pid, what, source },
        }
    };
    // A process in the middle of an execve has its new address space before its auxiliary
    // vector: wait a moment for the exec to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    let address = loop {
        let auxv = super::read_proc_bytes(dir.join("auxv")).map_err(io("auxv"))?;
        if let Some(address) = auxv_value(&auxv, AT_RANDOM) {
            break address;
        }
        if std::time::Instant::now() >= deadline {
            return Err(ProcessError::Io {
                pid,
                what: format!("/proc/{pid}/auxv"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no AT_RANDOM entry"),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let exe = fs::metadata(dir.join("exe")).map_err(io("exe"))?;
    let mem = fs::File::open(dir.join("mem")).map_err(io("mem"))?;
    let mut at_random = [0u8; 16];
    mem.read_exact_at(&mut at_random, address)
        .map_err(io("mem"))?;
    Ok(ExecImage {
        exe_dev: exe.dev(),
        exe_inode: exe.ino(),
        at_random,
    })
}

/// The value of entry `key` of an auxiliary vector (pairs of native-endian words).
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    auxv.chunks_exact(16)
        .map(|pair| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("8 bytes"));
            (word(&pair[..8]), word(&pair[8..]))
        })
        .take_while(|&(k, _)| k != AT_NULL)
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// Whether `pid` runs the executable `(dev, inode)` — the cheap first test before reading its
/// image (processes rpatch may not inspect answer no).
pub fn runs_executable(pid: i32, dev: u64, inode: u64) -> bool {
    fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| m.dev() == dev && m.ino() == inode)
}

/// Which of `images` some process on the host runs now, in one pass over /proc (a process is
/// only read further when its executable is one of theirs): those a journal of that image may
/// still describe (forked children hold its patches). Processes rpatch may not inspect are not
/// counted.
pub fn images_run(images: &HashSet<ExecImage>) -> HashSet<ExecImage> {
    let executables: HashSet<(u64, u64)> =
        images.iter().map(|i| (i.exe_dev, i.exe_inode)).collect();
    let mut run = HashSet::new();
    if images.is_empty() {
        return run;
    }
    for pid in all_pids() {
        let runs_one = fs::metadata(format!("/proc/{pid}/exe"))
            .is_ok_and(|m| executables.contains(&(m.dev(), m.ino())));
        if let Some(image) = runs_one.then(|| read_image(pid).ok()).flatten()
            && images.contains(&image)
        {
            run.insert(image);
        }
    }
    run
}

/// The PIDs of /proc (thread group leaders), in no particular order.
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auxv_entries_are_found_until_the_end_marker() {
        let mut auxv = Vec::new();
        for (k, v) in [
            (6u64, 4096u64),
            (AT_RANDOM, 0x7ffd_1234),
            (AT_NULL, 0),
            (AT_RANDOM, 9),
        ] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_RANDOM), Some(0x7ffd_1234));
        assert_eq!(auxv_value(&auxv, 6), Some(4096));
        assert_eq!(auxv_value(&auxv, 7), None);
        assert_eq!(auxv_value(&auxv[..20], 6), Some(4096), "a torn vector");
    }

    /// Our own image reads back the same twice, names our executable, and round-trips through
    /// the journal's JSON.
    #[test]
    fn own_image_is_stable_and_serialises_as_hex() {
        let me = std::process::id() as i32;
        let a = read_image(me).unwrap();
        assert_eq!(a, read_image(me).unwrap());
        assert_ne!(a.at_random, [0u8; 16]);
        let exe = fs::metadata("/proc/self/exe").unwrap();
        assert_eq!((a.exe_dev, a.exe_inode), (exe.dev(), exe.ino()));
        let json = serde_json::to_string(&a).unwrap();
        assert!(json.contains(&crate::hex::hex(&a.at_random)), "{json}");
        assert_eq!(serde_json::from_str::<ExecImage>(&json).unwrap(), a);
        assert!(images_run(&HashSet::from([a])).contains(&a));
    }

    /// Of several images, one pass finds those run: ours, not one with other random bytes (no
    /// process has it) or another executable's.
    #[test]
    fn images_run_finds_ours_only() {
        let mine = read_image(std::process::id() as i32).unwrap();
        let nobody = ExecImage {
            at_random: [0xee; 16],
            ..mine
        };
        let elsewhere = ExecImage {
            exe_inode: mine.exe_inode ^ 1,
            ..mine
        };
        let run = images_run(&HashSet::from([mine, nobody, elsewhere]));
        assert_eq!(run, HashSet::from([mine]));
        assert!(images_run(&HashSet::new()).is_empty());
    }

    /// A forked child runs the same image as its parent (fork copies the random bytes along
    /// with everything else); the image of `execve`'s new program differs.
    #[test]
    fn fork_keeps_the_image_and_exec_replaces_it() {
        use std::process::{Command, Stdio};
        let me = std::process::id() as i32;
        let mine = read_image(me).unwrap();
        // SAFETY: the child only blocks in pause() until it is killed (async-signal-safe).
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: pause(2) has no preconditions.
                unsafe { libc::pause() };
            }
        }
        assert!(child > 0);
        let forked = read_image(child);
        // SAFETY: kill and waitpid on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        assert_eq!(forked.unwrap(), mine);
        let mut other = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let execed = read_image(other.id() as i32);
        let _ = other.kill();
        let _ = other.wait();
        assert_ne!(execed.unwrap().at_random, mine.at_random);
    }
}
