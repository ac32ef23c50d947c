//! The one place where the target's code is compared with what rpatch expects and changed:
//! every write of a patch or a rollback is preceded by [`expect_bytes`] and done by
//! [`write_verified`], so "memory did not hold what the journal says" is found and reported the
//! same way everywhere ([`Error::UnexpectedBytes`]).

use crate::Error;
use crate::process::{Memory, ProcessError};

/// What is being read or written, for messages: the function (or what else owns the bytes) and
/// the address.
#[derive(Debug, Clone, Copy)]
pub(super) struct Site<'a> {
    /// The process.
    pub pid: i32,
    /// What the bytes belong to (a function's name).
    pub owner: &'a str,
    /// The first byte.
    pub address: u64,
}

impl Site<'_> {
    /// A failed read or write of these bytes.
    pub fn io(&self, source: std::io::Error) -> Error {
        self.io_at(self.address, source)
    }

    /// A failed read or write of bytes of the same owner at another address (an island slot).
    pub fn io_at(&self, address: u64, source: std::io::Error) -> Error {
        Error::Process(ProcessError::Memory {
            pid: self.pid,
            owner: self.owner.to_string(),
            address,
            source,
        })
    }
}

impl crate::journal::PatchRecord {
    /// The bytes this patch writes, in `pid`.
    pub(super) fn site(&self, pid: i32) -> Site<'_> {
        Site {
            pid,
            owner: &self.function,
            address: self.address,
        }
    }
}

/// Fails unless memory holds `expected` at the site (reading it fails too, naming the site).
pub(super) fn expect_bytes(mem: &dyn Memory, site: Site, expected: &[u8]) -> Result<(), Error> {
    let found = mem
        .read_vec(site.address, expected.len())
        .map_err(|e| site.io(e))?;
    if found != expected {
        return Err(Error::UnexpectedBytes {
            function: site.owner.to_string(),
            address: site.address,
            expected: expected.to_vec(),
            found,
        });
    }
    Ok(())
}

/// Writes `bytes` at the site and reads them back: a write the kernel accepted but that did not
/// land is reported like any unexpected bytes.
pub(super) fn write_verified(mem: &dyn Memory, site: Site, bytes: &[u8]) -> Result<(), Error> {
    mem.write_at(site.address, bytes).map_err(|e| site.io(e))?;
    expect_bytes(mem, site, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::FakeMemory;

    #[test]
    fn bytes_are_checked_written_and_read_back() {
        let mem = FakeMemory::default();
        mem.map(0x1000, vec![0x55, 0x48, 0x89, 0xe5, 0x90]);
        let site = Site {
            pid: 1,
            owner: "f",
            address: 0x1000,
        };
        expect_bytes(&mem, site, &[0x55, 0x48]).unwrap();
        let err = expect_bytes(&mem, site, &[0xe9]).unwrap_err();
        assert!(
            matches!(&err, Error::UnexpectedBytes { found, .. } if found == &[0x55]),
            "{err}"
        );
        write_verified(&mem, site, &[0xe9, 1, 2, 3, 4]).unwrap();
        assert_eq!(mem.read_vec(0x1000, 5).unwrap(), [0xe9, 1, 2, 3, 4]);
        let outside = Site {
            address: 0x9000,
            ..site
        };
        assert!(matches!(
            write_verified(&mem, outside, &[1]),
            Err(Error::Process(ProcessError::Memory { pid: 1, .. }))
        ));
    }
}
