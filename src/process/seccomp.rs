//! What a thread's seccomp filters do with a system call, read with
//! `PTRACE_SECCOMP_GET_FILTER` and evaluated here, so rpatch can refuse a target that would be
//! killed by a call it is about to make on the target's behalf (`memfd_create`, say) instead of
//! finding out by killing it.
//!
//! The filters are classic BPF programs over `struct seccomp_data`; the kernel runs every filter
//! attached to the thread and takes the most restrictive action. Arguments rpatch does not know
//! in advance (pointers, file descriptors) are evaluated as zero.

use nix::errno::Errno;

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// `AUDIT_ARCH_*` of rpatch's own architecture: what `seccomp_data.arch` holds for the calls a
/// load makes.
pub const AUDIT_ARCH: u32 = crate::isa::AUDIT_ARCH;
/// A filter longer than this (BPF_MAXINSNS) is not a valid filter.
const MAX_INSNS: usize = 4096;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

/// The input of a filter (`struct seccomp_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompData {
    /// System call number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the calling convention.
    pub arch: u32,
    /// Address of the system call instruction.
    pub instruction_pointer: u64,
    /// Arguments.
    pub args: [u64; 6],
}

impl SeccompData {
    /// A call of `nr` with `args` in rpatch's own architecture.
    pub fn native(nr: i64, args: [u64; 6]) -> Self {
        Self {
            nr: nr as i32,
            arch: AUDIT_ARCH,
            instruction_pointer: 0,
            args,
        }
    }

    /// The 32-bit word at byte offset `k` (what `BPF_LD | BPF_W | BPF_ABS` loads).
    fn word(&self, k: u32) -> Option<u32> {
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&self.nr.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.arch.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.instruction_pointer.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            bytes[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let k = k as usize;
        if !k.is_multiple_of(4) || k + 4 > bytes.len() {
            return None;
        }
        Some(u32::from_le_bytes(bytes[k..k + 4].try_into().ok()?))
    }
}

/// What a filter decides for a call, most restrictive first (the kernel's precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// `SECCOMP_RET_KILL_PROCESS`.
    KillProcess,
    /// `SECCOMP_RET_KILL_THREAD`.
    KillThread,
    /// `SECCOMP_RET_TRAP`: SIGSYS, which kills a process that does not handle it.
    Trap,
    /// `SECCOMP_RET_ERRNO`: the call fails with this errno.
    Errno(u16),
    /// `SECCOMP_RET_USER_NOTIF`: a supervisor decides.
    UserNotif,
    /// `SECCOMP_RET_TRACE`: a tracer decides (without one, ENOSYS).
    Trace,
    /// `SECCOMP_RET_LOG`: allowed and logged.
    Log,
    /// `SECCOMP_RET_ALLOW`.
    Allow,
}

impl Action {
    /// The action a filter's return value stands for (unknown actions kill, as in the kernel).
    pub fn from_ret(ret: u32) -> Self {
        match ret & libc::SECCOMP_RET_ACTION_FULL {
            libc::SECCOMP_RET_KILL_PROCESS => Action::KillProcess,
            libc::SECCOMP_RET_KILL_THREAD => Action::KillThread,
            libc::SECCOMP_RET_TRAP => Action::Trap,
            libc::SECCOMP_RET_ERRNO => Action::Errno((ret & libc::SECCOMP_RET_DATA) as u16),
            libc::SECCOMP_RET_USER_NOTIF => Action::UserNotif,
            libc::SECCOMP_RET_TRACE => Action::Trace,
            libc::SECCOMP_RET_LOG => Action::Log,
            libc::SECCOMP_RET_ALLOW => Action::Allow,
            _ => Action::KillProcess,
        }
    }

    /// Whether the call kills the thread or process (a trap too: SIGSYS is fatal unless the
    /// target handles it, and a handler meeting rpatch's call would not expect it).
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            Action::KillProcess | Action::KillThread | Action::Trap
        )
    }

    /// The action as the kernel names it, for messages.
    pub fn name(self) -> String {
        match self {
            Action::KillProcess => "SECCOMP_RET_KILL_PROCESS".into(),
            Action::KillThread => "SECCOMP_RET_KILL_THREAD".into(),
            Action::Trap => "SECCOMP_RET_TRAP".into(),
            Action::Errno(e) => format!("SECCOMP_RET_ERRNO ({})", Errno::from_raw(e.into())),
            Action::UserNotif => "SECCOMP_RET_USER_NOTIF".into(),
            Action::Trace => "SECCOMP_RET_TRACE".into(),
            Action::Log => "SECCOMP_RET_LOG".into(),
            Action::Allow => "SECCOMP_RET_ALLOW".into(),
        }
    }
}

/// Runs one classic BPF program on `data` and returns its return value. A malformed program
/// (which the kernel would not have accepted) returns `SECCOMP_RET_KILL_PROCESS`.
pub fn run(program: &[Insn], data: &SeccompData) -> u32 {
    const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    // Every jump goes forward, so the program ends within `program.len()` steps.
    while let Some(insn) = program.get(pc) {
        pc += 1;
        let k = insn.k;
        let class = insn.code & 0x07;
        let size_or_op = insn.code & 0xf0;
        let mode = insn.code & 0xe0;
        let src_x = insn.code & 0x08 != 0;
        match class {
            // BPF_LD
            0x00 => {
                a = match (mode, insn.code & 0x18) {
                    (0x20, 0x00) => match data.word(k) {
                        Some(w) => w,
                        None => return KILL,
                    },
                    (0x00, _) => k,
                    (0x80, _) => 64,
                    (0x60, _) => match mem.get(k as usize) {
                        Some(v) => *v,
                        None => return KILL,
                    },
                    _ => return KILL,
                }
            }
            // BPF_LDX
            0x01 => {
                x = match mode {
                    0x00 => k,
                    0x80 => 64,
                    0x60 => match mem.get(k as usize) {
                        Some(v) => *v,
                        None => return KILL,
                    },
                    _ => return KILL,
                }
            }
            // BPF_ST, BPF_STX
            0x02 | 0x03 => match mem.get_mut(k as usize) {
                Some(slot) => *slot = if class == 0x02 { a } else { x },
                None => return KILL,
            },
            // BPF_ALU
            0x04 => {
                let operand = if src_x { x } else { k };
                a = match size_or_op {
                    0x00 => a.wrapping_add(operand),
                    0x10 => a.wrapping_sub(operand),
                    0x20 => a.wrapping_mul(operand),
                    0x30 if operand == 0 => return 0,
                    0x30 => a / operand,
                    0x40 => a | operand,
                    0x50 => a & operand,
                    0x60 => a.checked_shl(operand).unwrap_or(0),
                    0x70 => a.checked_shr(operand).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 if operand == 0 => return 0,
                    0x90 => a % operand,
                    0xa0 => a ^ operand,
                    _ => return KILL,
                }
            }
            // BPF_JMP
            0x05 => {
                let operand = if src_x { x } else { k };
                let taken = match size_or_op {
                    0x00 => {
                        pc = match pc.checked_add(k as usize) {
                            Some(p) => p,
                            None => return KILL,
                        };
                        continue;
                    }
                    0x10 => a == operand,
                    0x20 => a > operand,
                    0x30 => a >= operand,
                    0x40 => a & operand != 0,
                    _ => return KILL,
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            // BPF_RET
            0x06 => {
                return match insn.code & 0x18 {
                    0x00 => k,
                    0x10 => a,
                    _ => KILL,
                };
            }
            // BPF_MISC
            _ => match insn.code & 0xf8 {
                0x00 => x = a,
                0x80 => a = x,
                _ => return KILL,
            },
        }
    }
    KILL
}

/// The seccomp filters of a ptrace-stopped thread, most recently installed first.
///
/// Needs CAP_SYS_ADMIN and a kernel with `CONFIG_CHECKPOINT_RESTORE`; otherwise the error says
/// why (EACCES, EINVAL).
pub fn filters(tid: i32) -> Result<Vec<Vec<Insn>>, Errno> {
    let mut out = Vec::new();
    for index in 0.. {
        // SAFETY: with a null buffer the request only returns the number of instructions.
        let count = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as libc::c_long,
                std::ptr::null_mut::<libc::sock_filter>(),
            )
        };
        if count < 0 {
            match Errno::last() {
                Errno::ENOENT if index > 0 => break,
                e => return Err(e),
            }
        }
        let count = count as usize;
        if count == 0 || count > MAX_INSNS {
            return Err(Errno::EINVAL);
        }
        let mut raw = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0,
            };
            count
        ];
        // SAFETY: the buffer holds `count` instructions, the number the kernel just reported;
        // it writes at most that many (filters cannot change once attached).
        let got = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as libc::c_long,
                raw.as_mut_ptr(),
            )
        };
        if got < 0 {
            return Err(Errno::last());
        }
        raw.truncate(got as usize);
        out.push(
            raw.iter()
                .map(|i| Insn {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect(),
        );
    }
    Ok(out)
}

/// What all `filters` together do with `data`: the most restrictive of their actions.
pub fn action(filters: &[Vec<Insn>], data: &SeccompData) -> Action {
    filters
        .iter()
        .map(|f| Action::from_ret(run(f, data)))
        .min()
        .unwrap_or(Action::Allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }

    /// The usual shape: check the arch, kill on one syscall number, allow the rest.
    fn kill_on(nr: u32) -> Vec<Insn> {
        vec![
            stmt(0x20, 4),                              // ld [arch]
            jump(0x15, AUDIT_ARCH, 1, 0),               // jeq our arch
            stmt(0x06, libc::SECCOMP_RET_KILL_PROCESS), // ret kill
            stmt(0x20, 0),                              // ld [nr]
            jump(0x15, nr, 0, 1),                       // jeq nr
            stmt(0x06, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(0x06, libc::SECCOMP_RET_ALLOW),
        ]
    }

    #[test]
    fn a_filter_killing_one_call_is_evaluated_per_call() {
        let f = vec![kill_on(libc::SYS_memfd_create as u32)];
        let memfd = SeccompData::native(libc::SYS_memfd_create, [0x1000, 1, 0, 0, 0, 0]);
        let write = SeccompData::native(libc::SYS_write, [1, 0, 0, 0, 0, 0]);
        assert_eq!(action(&f, &memfd), Action::KillProcess);
        assert!(action(&f, &memfd).is_fatal());
        assert_eq!(action(&f, &write), Action::Allow);
        let mut other_arch = write;
        other_arch.arch = 0x4000_0003;
        assert_eq!(action(&f, &other_arch), Action::KillProcess);
    }

    #[test]
    fn the_most_restrictive_filter_wins() {
        let errno = vec![stmt(0x06, libc::SECCOMP_RET_ERRNO | 38)];
        let allow = vec![stmt(0x06, libc::SECCOMP_RET_ALLOW)];
        let data = SeccompData::native(libc::SYS_memfd_create, [0; 6]);
        assert_eq!(
            action(&[allow.clone(), errno.clone()], &data),
            Action::Errno(38)
        );
        assert_eq!(action(&[allow], &data), Action::Allow);
        assert_eq!(action(&[], &data), Action::Allow);
    }

    #[test]
    fn arguments_alu_and_scratch_memory() {
        // Kill when (flags & 8) != 0 (args[1] low word at offset 24), through A, X and M[3].
        let prog = vec![
            stmt(0x20, 24),      // ld [args[1].lo]
            stmt(0x02, 3),       // st M[3]
            stmt(0x61, 3),       // ldx M[3]
            stmt(0x87, 0),       // txa
            stmt(0x54, 8),       // and #8
            jump(0x15, 0, 1, 0), // jeq #0
            stmt(0x06, libc::SECCOMP_RET_TRAP),
            stmt(0x06, libc::SECCOMP_RET_ALLOW),
        ];
        let with = SeccompData::native(libc::SYS_memfd_create, [0, 8 | 1, 0, 0, 0, 0]);
        let without = SeccompData::native(libc::SYS_memfd_create, [0, 2 | 1, 0, 0, 0, 0]);
        assert_eq!(Action::from_ret(run(&prog, &with)), Action::Trap);
        assert_eq!(Action::from_ret(run(&prog, &without)), Action::Allow);
    }

    #[test]
    fn malformed_programs_kill_and_never_loop() {
        let data = SeccompData::native(0, [0; 6]);
        assert_eq!(run(&[], &data), libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(run(&[stmt(0x20, 3)], &data), libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(
            run(&[stmt(0x20, 64)], &data),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(
            run(&[jump(0x05, u32::MAX, 0, 0)], &data),
            libc::SECCOMP_RET_KILL_PROCESS
        );
    }
}
