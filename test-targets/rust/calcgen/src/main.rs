//! calcgen: a Rust test target for rpatch's DWARF checks (generic instances, inlining).
//!
//! Prints `ready <pid>`, then answers line commands on stdin, one line each:
//!   `u32 N`   -> `gen32 N R`  R = `calc::widen::<u32>(N)` = N+10 (N*1000 with calcgen-fix)
//!   `u64 N`   -> `gen64 N R`  R = `calc::widen::<u64>(N)` = N+10
//!   `left N`  -> `left N R`   R = `calc::left(N)`  = bonus(N) + 1, bonus inlined
//!   `right N` -> `right N R`  R = `calc::right(N)` = bonus(N) * 3, bonus inlined
//!   (bonus(N) = N.rotate_left(13) ^ 0x55)
//!   exits 0 on EOF or `quit`.

use std::hint::black_box;
use std::io::{self, BufRead, Write};

mod calc {
    /// One function, two instances: `calcgen::calc::widen::<u32>` and `...::<u64>`.
    #[inline(never)]
    pub fn widen<T: Into<u64>>(x: T) -> u64 {
        x.into() + 10
    }

    /// Inlined into `left` and `right`; no out-of-line copy.
    #[inline(always)]
    fn bonus(x: u64) -> u64 {
        x.rotate_left(13) ^ 0x55
    }

    /// Holds an inlined copy of `bonus`.
    #[inline(never)]
    pub fn left(x: u64) -> u64 {
        bonus(x) + 1
    }

    /// Holds another inlined copy of `bonus`.
    #[inline(never)]
    pub fn right(x: u64) -> u64 {
        bonus(x).wrapping_mul(3)
    }
}

fn main() {
    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", std::process::id()).unwrap();
    out.flush().unwrap();
    for line in io::stdin().lock().lines() {
        let line = line.unwrap();
        let line = line.trim_end();
        if line == "quit" {
            break;
        }
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match (cmd, arg.parse::<u64>()) {
            ("u32", Ok(n)) => format!("gen32 {n} {}", calc::widen::<u32>(black_box(n as u32))),
            ("u64", Ok(n)) => format!("gen64 {n} {}", calc::widen::<u64>(black_box(n))),
            ("left", Ok(n)) => format!("left {n} {}", calc::left(black_box(n))),
            ("right", Ok(n)) => format!("right {n} {}", calc::right(black_box(n))),
            _ => format!("error unknown command: {line}"),
        };
        writeln!(out, "{reply}").unwrap();
        out.flush().unwrap();
    }
}
