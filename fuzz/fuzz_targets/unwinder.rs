//! The stack unwinder over a module whose CFI (.eh_frame, .eh_frame_hdr) and a stack whose
//! content a target controls: every walk ends, and the conservative scan stays in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpatch::safety::StackInspector;
use std::os::unix::fs::FileExt;

const MODULE: u64 = 0x5555_0000_0000;
const STACK: u64 = 0x7ffd_0000_0000;

fuzz_target!(|data: &[u8]| {
    // [rip offset u32][rsp offset u16][rbp offset u16][image len u32][image][stack]
    if data.len() < 12 {
        return;
    }
    let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
    let rip = MODULE + u64::from(u32_at(0) % 0x10_0000);
    let rsp = STACK + u64::from(u16::from_le_bytes([data[4], data[5]]));
    let rbp = STACK + u64::from(u16::from_le_bytes([data[6], data[7]]));
    let image_len = (u32_at(8) as usize).min(data.len() - 12);
    let (image, stack) = data[12..].split_at(image_len);
    // The process memory: the stack bytes at their address in a sparse memfd.
    let Ok(mem) = memfd() else { return };
    if mem.write_all_at(stack, STACK).is_err() {
        return;
    }
    let images = [("fuzz.so".to_string(), MODULE, image)];
    let stack_end = STACK + stack.len().max(8) as u64;
    let mut inspector = StackInspector::from_images(mem, &images, vec![STACK..stack_end]);
    let regs = libc::user_regs_struct {
        rip,
        rsp,
        rbp,
        ..unsafe { std::mem::zeroed() }
    };
    let walk = inspector.walk(&regs);
    assert!(!walk.frames.is_empty());
});

fn memfd() -> std::io::Result<std::fs::File> {
    let fd = unsafe { libc::memfd_create(c"fuzz-stack".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}
