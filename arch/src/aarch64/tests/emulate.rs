//! A small A64 interpreter over capstone's disassembly, for the instructions the bootstrap and
//! the stub use: it runs them against a model of memory, system calls and callees, so the tests
//! can check what the code *does* (which registers come back, which system calls it makes)
//! rather than only how it is encoded. Decoding goes through capstone, not rpatch's encoders.

use std::collections::{BTreeMap, HashMap};

/// One system call the code made: x8 and x0..x5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sys {
    pub nr: u64,
    pub args: [u64; 6],
}

/// The machine: registers, flags, FP/SIMD registers, sparse byte memory.
pub struct Cpu {
    pub x: [u64; 31],
    pub sp: u64,
    pub pc: u64,
    pub nzcv: u64,
    pub q: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
    pub mem: HashMap<u64, u8>,
    /// Executable bytes by address (the code under test).
    pub code: BTreeMap<u64, Vec<u8>>,
    pub syscalls: Vec<Sys>,
    /// Functions `blr` may call: address -> (result, calls seen with x0..x5).
    pub functions: HashMap<u64, (u64, Vec<[u64; 6]>)>,
    /// What each system call returns, in order (default 0).
    pub sys_results: Vec<i64>,
    /// The signal mask `rt_sigprocmask` keeps.
    pub mask: u64,
}

fn reg_index(name: &str) -> Option<usize> {
    let n = name.strip_prefix('x').or_else(|| name.strip_prefix('w'))?;
    n.parse().ok()
}

fn imm(text: &str) -> u64 {
    let t = text.trim().trim_start_matches('#');
    if let Some(h) = t.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else if let Some(h) = t.strip_prefix("-0x") {
        (u64::from_str_radix(h, 16).unwrap() as i64).wrapping_neg() as u64
    } else {
        t.parse::<i64>().unwrap() as u64
    }
}

impl Cpu {
    pub fn new() -> Self {
        Self {
            x: [0; 31],
            sp: 0,
            pc: 0,
            nzcv: 0,
            q: [0; 32],
            fpsr: 0,
            fpcr: 0,
            mem: HashMap::new(),
            code: BTreeMap::new(),
            syscalls: Vec::new(),
            functions: HashMap::new(),
            sys_results: Vec::new(),
            mask: 0,
        }
    }

    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.mem.insert(addr + i as u64, *b);
        }
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                *self
                    .mem
                    .get(&(addr + i))
                    .unwrap_or_else(|| panic!("read of unwritten memory at {:#x}", addr + i))
            })
            .collect()
    }

    pub fn read_u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read(addr, 8).try_into().unwrap())
    }

    fn get(&self, name: &str) -> u64 {
        match name {
            "sp" => self.sp,
            "xzr" | "wzr" => 0,
            _ => {
                let v = self.x[reg_index(name).unwrap_or_else(|| panic!("register {name}"))];
                if name.starts_with('w') {
                    v & 0xffff_ffff
                } else {
                    v
                }
            }
        }
    }

    fn set(&mut self, name: &str, value: u64) {
        match name {
            "sp" => self.sp = value,
            "xzr" | "wzr" => {}
            _ => {
                let v = if name.starts_with('w') {
                    value & 0xffff_ffff
                } else {
                    value
                };
                self.x[reg_index(name).unwrap()] = v;
            }
        }
    }

    /// `[xN, #off]` or `[xN]` -> address.
    fn address(&self, operand: &str) -> u64 {
        let inner = operand.trim().trim_start_matches('[').trim_end_matches(']');
        let mut parts = inner.split(',');
        let base = self.get(parts.next().unwrap().trim());
        base.wrapping_add(parts.next().map(imm).unwrap_or(0))
    }

    fn instruction(&self) -> (String, String) {
        let (start, bytes) = self
            .code
            .range(..=self.pc)
            .next_back()
            .filter(|(s, b)| self.pc < **s + b.len() as u64)
            .unwrap_or_else(|| panic!("pc {:#x} is outside the code", self.pc));
        let off = (self.pc - start) as usize;
        let cs = super::cs();
        let insns = cs.disasm_count(&bytes[off..off + 4], self.pc, 1).unwrap();
        let i = insns.iter().next().expect("capstone decodes the word");
        (
            i.mnemonic().unwrap().to_string(),
            i.op_str().unwrap_or("").to_string(),
        )
    }

    /// Runs until the PC reaches `stop` (or panics on anything unexpected, or after `limit`
    /// instructions).
    pub fn run_until(&mut self, stop: u64, limit: usize) {
        for _ in 0..limit {
            if self.pc == stop {
                return;
            }
            self.step();
        }
        panic!(
            "no stop at {stop:#x} within {limit} instructions (pc {:#x})",
            self.pc
        );
    }

    fn step(&mut self) {
        let (m, ops) = self.instruction();
        let o: Vec<&str> = split_operands(&ops);
        let next = self.pc + 4;
        match m.as_str() {
            "svc" => {
                let mut args = [0u64; 6];
                args.copy_from_slice(&self.x[..6]);
                let sys = Sys {
                    nr: self.x[8],
                    args,
                };
                if sys.nr == 135 {
                    // rt_sigprocmask(how, set, old, size)
                    assert_eq!((args[0], args[3]), (2, 8), "SIG_SETMASK of 8 bytes");
                    if args[2] != 0 {
                        let mask = self.mask;
                        self.write(args[2], &mask.to_le_bytes());
                    }
                    if args[1] != 0 {
                        self.mask = self.read_u64(args[1]);
                    }
                }
                self.syscalls.push(sys);
                let result = if self.sys_results.is_empty() {
                    0
                } else {
                    self.sys_results.remove(0)
                };
                self.x[0] = result as u64;
            }
            "mov" if o[1].starts_with('#') => {
                let v = imm(o[1]);
                self.set(o[0], v)
            }
            "mov" => {
                let v = self.get(o[1]);
                self.set(o[0], v)
            }
            "add" => {
                let v = self.get(o[1]).wrapping_add(imm(o[2]));
                self.set(o[0], v)
            }
            "adr" => self.set(o[0], imm(o[1])),
            "cmn" => {
                let r = self.get(o[0]).wrapping_add(imm(o[1]));
                // Only Z matters to the code under test.
                self.nzcv = if r == 0 { 1 << 30 } else { 0 };
            }
            "b.eq" => {
                if self.nzcv & (1 << 30) != 0 {
                    self.pc = imm(o[0]);
                    return;
                }
            }
            "b" => {
                self.pc = imm(o[0]);
                return;
            }
            "cbz" | "cbnz" => {
                if (self.get(o[0]) == 0) == (m == "cbz") {
                    self.pc = imm(o[1]);
                    return;
                }
            }
            "ret" => {
                self.pc = self.get(o.first().copied().unwrap_or("x30"));
                return;
            }
            "blr" => {
                let to = self.get(o[0]);
                let mut args = [0u64; 6];
                args.copy_from_slice(&self.x[..6]);
                let (result, seen) = self
                    .functions
                    .get_mut(&to)
                    .unwrap_or_else(|| panic!("call of unknown function {to:#x}"));
                seen.push(args);
                let result = *result;
                // A callee may clobber every caller-saved register, FP/SIMD included.
                for r in 0..=18 {
                    self.x[r] = 0xdead_0000 + r as u64;
                }
                for q in self.q.iter_mut() {
                    *q = 0xdead;
                }
                (self.fpsr, self.fpcr) = (0xdead, 0xdead);
                self.x[0] = result;
                self.x[30] = next;
            }
            "ldr" if o[1].starts_with('#') => {
                // A literal: from the code bytes.
                let at = imm(o[1]);
                let (start, bytes) = self.code.range(..=at).next_back().unwrap();
                let off = (at - start) as usize;
                let v = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
                self.set(o[0], v);
            }
            "ldr" if o[0].starts_with('x') || o[0].starts_with('w') => {
                let len = if o[0].starts_with('w') { 4 } else { 8 };
                let a = self.address(o[1]);
                let mut b = self.read(a, len);
                b.resize(8, 0);
                self.set(o[0], u64::from_le_bytes(b.try_into().unwrap()));
            }
            "str" => {
                let len = if o[0].starts_with('w') { 4 } else { 8 };
                let a = self.address(o[1]);
                let v = self.get(o[0]).to_le_bytes();
                self.write(a, &v[..len]);
            }
            "ldp" if o[0].starts_with('q') => {
                let a = self.address(o[2]);
                for (k, name) in o[..2].iter().enumerate() {
                    let b = self.read(a + 16 * k as u64, 16);
                    self.q[name[1..].parse::<usize>().unwrap()] =
                        u128::from_le_bytes(b.try_into().unwrap());
                }
            }
            "stp" if o[0].starts_with('q') => {
                let a = self.address(o[2]);
                for (k, name) in o[..2].iter().enumerate() {
                    let v = self.q[name[1..].parse::<usize>().unwrap()].to_le_bytes();
                    self.write(a + 16 * k as u64, &v);
                }
            }
            "ldp" => {
                let a = self.address(o[2]);
                let first = self.read_u64(a);
                let second = self.read_u64(a + 8);
                self.set(o[0], first);
                self.set(o[1], second);
            }
            "mrs" => {
                let v = match o[1] {
                    "fpsr" => self.fpsr,
                    "fpcr" => self.fpcr,
                    other => panic!("mrs {other}"),
                };
                self.set(o[0], v);
            }
            "msr" => {
                let v = self.get(o[1]);
                match o[0] {
                    "fpsr" => self.fpsr = v,
                    "fpcr" => self.fpcr = v,
                    "nzcv" => self.nzcv = v & 0xf000_0000,
                    other => panic!("msr {other}"),
                }
            }
            other => panic!("the interpreter does not know `{other} {ops}`"),
        }
        self.pc = next;
    }
}

/// Operands split at top-level commas (`[x19, #0x10]` stays one).
fn split_operands(ops: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in ops.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ops[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !ops.trim().is_empty() {
        out.push(ops[start..].trim());
    }
    out
}
