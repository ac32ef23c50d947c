//! Reading and writing the target's memory behind a narrow trait, so the logic that decides what to
//! write is unit-tested against an in-memory fake.

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

/// How the last write reached memory: reported by `-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// pwrite on /proc/PID/mem (one syscall per buffer).
    ProcMem,
    /// PTRACE_POKEDATA word by word, used when the kernel refuses forced writes through
    /// /proc/PID/mem (`proc_mem.force_override=never`).
    PokeData,
}

/// The live process's memory through `/proc/PID/mem`, with a PTRACE_POKEDATA fallback for writes.
#[derive(Debug)]
pub struct ProcMem {
    file: File,
    /// A thread currently in a ptrace-stop, required for the POKEDATA fallback.
    poke_tid: Cell<Option<Pid>>,
    last_path: Cell<Option<WritePath>>,
}

impl ProcMem {
    /// Opens `/proc/PID/mem` read-write.
    pub fn open(pid: i32) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(super::proc_dir(pid).join("mem"))?;
        Ok(Self {
            file,
            poke_tid: Cell::new(None),
            last_path: Cell::new(None),
        })
    }

    /// Names a ptrace-stopped thread to use for the POKEDATA fallback (None when none is stopped).
    pub fn set_poke_thread(&self, tid: Option<Pid>) {
        self.poke_tid.set(tid);
    }

    /// Which path the last successful write used.
    pub fn last_write_path(&self) -> Option<WritePath> {
        self.last_path.get()
    }

    fn poke(&self, tid: Pid, addr: u64, data: &[u8]) -> io::Result<()> {
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

impl Memory for ProcMem {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    fn write_at(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        match self.file.write_all_at(data, addr) {
            Ok(()) => {
                self.last_path.set(Some(WritePath::ProcMem));
                Ok(())
            }
            Err(e) => match self.poke_tid.get() {
                Some(tid) => {
                    self.poke(tid, addr, data)?;
                    self.last_path.set(Some(WritePath::PokeData));
                    Ok(())
                }
                None => Err(e),
            },
        }
    }
}

/// An in-memory address space for unit tests of code that reads and writes targets.
#[derive(Debug, Default)]
pub struct FakeMemory {
    regions: std::cell::RefCell<Vec<(u64, Vec<u8>)>>,
}

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

    #[test]
    fn proc_mem_reads_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcMem::open(std::process::id() as i32).unwrap();
        assert_eq!(mem.read_u64(&value as *const u64 as u64).unwrap(), value);
    }
}
