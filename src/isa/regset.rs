//! PTRACE_GETREGSET / PTRACE_SETREGSET of one ELF note type, as bytes.

use nix::errno::Errno;

/// Reads the regset `note` of a ptrace-stopped thread (at most `max` bytes).
///
/// The buffer is not zeroed first: `max` is a generous bound (64 KiB for an XSAVE area that is
/// ~3 KiB), and zeroing it faulted in 16 fresh pages per read; the kernel writes the `iov_len`
/// bytes it reports and only those are kept.
pub(crate) fn get(tid: i32, note: usize, max: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = Vec::<u8>::with_capacity(max);
    let mut iov = libc::iovec {
        iov_base: buf.spare_capacity_mut().as_mut_ptr().cast(),
        iov_len: max,
    };
    // SAFETY: PTRACE_GETREGSET writes at most iov_len bytes into the buffer iov points at (the
    // vector's `max` bytes of spare capacity), which lives for the duration of the call, and
    // updates iov_len to the number written.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, note, &mut iov) };
    if rc < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel initialised the first iov_len (<= max = capacity) bytes.
    unsafe { buf.set_len(iov.iov_len.min(max)) };
    Ok(buf)
}

/// Writes the regset `note` of a ptrace-stopped thread.
pub(crate) fn set(tid: i32, note: usize, state: &[u8]) -> Result<(), Errno> {
    let mut iov = libc::iovec {
        // `iovec` has one pointer type for both directions; nothing writes through this one.
        iov_base: state.as_ptr().cast_mut().cast(),
        iov_len: state.len(),
    };
    // SAFETY: PTRACE_SETREGSET only reads iov_len bytes from `state`, which lives for the call.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, note, &mut iov) };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
