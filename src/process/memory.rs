//! Reading and writing the target's memory behind a narrow trait, so the logic that decides what to
//! write is unit-tested against an in-memory fake.

use super::ProcessError;
use nix::sys::ptrace;
use nix::unistd::Pid;
use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

/// Byte access to a process's address space.
pub trait Memory {
    /// Fills `buf` from address `addr`; fails unless every byte could be read.
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `addr` (text pages included); fails unless every byte was written.
    fn write_at(&self, addr: u64, data: &[u8]) -> io::Result<()>;

    /// Reads `len` bytes at `addr` into a new vector.
    fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        self.read_at(addr, &mut buf)?;
        Ok(buf)
    }

    /// Fills as much of `buf` as is readable from `addr` on (a read may run into an unmapped
    /// page) and returns how many bytes that is.
    fn read_partial(&self, addr: u64, buf: &mut [u8]) -> usize {
        if self.read_at(addr, buf).is_ok() {
            return buf.len();
        }
        // Page by page up to the first that cannot be read.
        let mut got = 0;
        while got < buf.len() {
            let at = addr + got as u64;
            let page_end = ((at | 0xfff) + 1).min(addr + buf.len() as u64);
            let n = (page_end - at) as usize;
            if self.read_at(at, &mut buf[got..got + n]).is_err() {
                break;
            }
            got += n;
        }
        got
    }

    /// Reads a little-endian u64.
    fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read_at(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a NUL-terminated string of at most `max` bytes.
    fn read_c_string(&self, addr: u64, max: usize) -> io::Result<String> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 64];
        while out.len() < max {
            // A chunk may cross into an unmapped page: fall back to single bytes there.
            let n = if self.read_at(addr + out.len() as u64, &mut chunk).is_ok() {
                chunk.len()
            } else {
                self.read_at(addr + out.len() as u64, &mut chunk[..1])?;
                1
            };
            if let Some(nul) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// How a write reached memory: reported by `-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// pwrite on /proc/PID/mem (one syscall per buffer).
    ProcMem,
    /// PTRACE_POKEDATA word by word, used when the kernel refuses forced writes through
    /// /proc/PID/mem (`proc_mem.force_override=never`).
    PokeData,
}

impl std::fmt::Display for WritePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WritePath::ProcMem => "/proc/PID/mem",
            WritePath::PokeData => "PTRACE_POKEDATA",
        })
    }
}

/// The live process's memory through `/proc/PID/mem`: one `pread`/`pwrite` per buffer, text
/// pages included. Writing a page the target cannot write needs a stopped thread for the
/// POKEDATA fallback: see [`CodeMemory`].
#[derive(Debug)]
pub struct ProcMem {
    pid: i32,
    file: File,
}

impl ProcMem {
    /// Opens `pid`'s memory (read-write) — the one place rpatch opens `/proc/PID/mem`. The
    /// kernel checks the same access as for PTRACE_ATTACH, so this is also how rpatch learns,
    /// with the error a user needs, whether it may trace the process at all.
    pub fn open(pid: i32) -> Result<Self, ProcessError> {
        let path = super::proc_dir(pid).join("mem");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => ProcessError::NoSuchProcess { pid },
                io::ErrorKind::PermissionDenied => {
                    super::permission_denied(pid, "opening /proc/PID/mem".into())
                }
                _ => ProcessError::Io {
                    pid,
                    what: "/proc/PID/mem".into(),
                    source: e,
                },
            })?;
        Ok(Self { pid, file })
    }

    /// Memory backed by a file at the addresses as offsets (a sparse memfd standing for a
    /// process, in the fuzz targets).
    pub(crate) fn from_file(file: File) -> Self {
        Self { pid: 0, file }
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Memory for ProcMem {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    fn write_at(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, addr)
    }

    fn read_partial(&self, addr: u64, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], addr + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        got
    }
}

/// The memory of a process with a ptrace-stopped thread `tid`: writes go through
/// `/proc/PID/mem`, and where the kernel refuses a forced write to a page the target cannot
/// write (`proc_mem.force_override=never`), through PTRACE_POKEDATA by that thread. Only made by
/// what holds a thread stopped (a frozen world, a borrowed thread), so the fallback always has
/// the stopped thread it needs.
#[derive(Debug)]
pub struct CodeMemory<'a> {
    mem: &'a ProcMem,
    stopped: Pid,
    last_path: Cell<Option<WritePath>>,
}

impl<'a> CodeMemory<'a> {
    /// Writes to `mem` with `stopped` (a thread in a ptrace-stop) for the fallback.
    pub(crate) fn new(mem: &'a ProcMem, stopped: i32) -> Self {
        Self {
            mem,
            stopped: Pid::from_raw(stopped),
            last_path: Cell::new(None),
        }
    }

    /// Which path the last successful write used.
    pub fn write_path(&self) -> Option<WritePath> {
        self.last_path.get()
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.mem.pid()
    }

    fn poke(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let tid = self.stopped;
        let mut offset = 0usize;
        while offset < data.len() {
            let word_addr = addr + offset as u64;
            let n = (data.len() - offset).min(8);
            let mut word = if n < 8 {
                // Partial word: keep the bytes beyond the write.
                (ptrace::read(tid, word_addr as ptrace::AddressType).map_err(io::Error::from)?
                    as u64)
                    .to_le_bytes()
            } else {
                [0u8; 8]
            };
            word[..n].copy_from_slice(&data[offset..offset + n]);
            ptrace::write(
                tid,
                word_addr as ptrace::AddressType,
                i64::from_le_bytes(word) as _,
            )
            .map_err(io::Error::from)?;
            offset += n;
        }
        Ok(())
    }
}

impl Memory for CodeMemory<'_> {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read_at(addr, buf)
    }

    fn write_at(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        match self.mem.write_at(addr, data) {
            Ok(()) => {
                self.last_path.set(Some(WritePath::ProcMem));
                Ok(())
            }
            Err(_) => {
                self.poke(addr, data)?;
                self.last_path.set(Some(WritePath::PokeData));
                Ok(())
            }
        }
    }
}

/// An in-memory address space for unit tests of code that reads and writes targets.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeMemory {
    regions: std::cell::RefCell<Vec<(u64, Vec<u8>)>>,
}

#[cfg(test)]
impl FakeMemory {
    /// Adds a region starting at `addr`.
    pub fn map(&self, addr: u64, bytes: Vec<u8>) {
        self.regions.borrow_mut().push((addr, bytes));
    }

    fn with_region<R>(
        &self,
        addr: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> io::Result<R> {
        let mut regions = self.regions.borrow_mut();
        for (start, bytes) in regions.iter_mut() {
            let end = *start + bytes.len() as u64;
            if addr >= *start && addr + len as u64 <= end {
                let off = (addr - *start) as usize;
                return Ok(f(&mut bytes[off..off + len]));
            }
        }
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
}

#[cfg(test)]
impl Memory for FakeMemory {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with_region(addr, buf.len(), |m| buf.copy_from_slice(m))
    }

    fn write_at(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        self.with_region(addr, data.len(), |m| m.copy_from_slice(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_memory_reads_strings_and_refuses_unmapped() {
        let mem = FakeMemory::default();
        mem.map(0x1000, b"hello\0world".to_vec());
        assert_eq!(mem.read_c_string(0x1000, 100).unwrap(), "hello");
        assert!(mem.read_vec(0x0fff, 2).is_err());
        mem.write_at(0x1006, b"W").unwrap();
        assert_eq!(mem.read_vec(0x1006, 5).unwrap(), b"World");
    }

    /// A read that runs into an unmapped page returns what came before it.
    #[test]
    fn partial_reads_stop_at_the_first_unreadable_page() {
        let mem = FakeMemory::default();
        mem.map(0x1000, vec![7; 0x1000]);
        let mut buf = [0u8; 0x1800];
        assert_eq!(mem.read_partial(0x1800, &mut buf), 0x800);
        assert_eq!(mem.read_partial(0x3000, &mut buf), 0);
    }

    #[test]
    fn proc_mem_reads_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcMem::open(std::process::id() as i32).unwrap();
        assert_eq!(mem.read_u64(&value as *const u64 as u64).unwrap(), value);
        assert!(matches!(
            ProcMem::open(i32::MAX),
            Err(ProcessError::NoSuchProcess { .. })
        ));
    }
}
