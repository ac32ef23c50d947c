//! counterapp: a Rust test target for rpatch whose state is a private static.
//!
//! Prints `ready <pid>`, then answers line commands on stdin, one line each:
//!   `tick N` -> `tick N C`: `state::tick(N)` adds N to `state::COUNTER` (N*100 with
//!   counterapp-fix, which adds to this very static) and returns the new value C;
//!   `show` -> `counter C`, read by the target's own code;
//!   exits 0 on EOF or `quit`.

use std::hint::black_box;
use std::io::{self, BufRead, Write};

mod state {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The target's state: a private static (in `.symtab` only, as
    /// `_ZN10counterapp5state7COUNTER17h<hash>E`), which the patch reaches by its path.
    pub static COUNTER: AtomicU64 = AtomicU64::new(0);

    /// The function the tests patch: `counterapp::state::tick`.
    #[inline(never)]
    pub fn tick(by: u64) -> u64 {
        COUNTER.fetch_add(by, Ordering::Relaxed) + by
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
        let reply = if line == "show" {
            format!(
                "counter {}",
                state::COUNTER.load(std::sync::atomic::Ordering::Relaxed)
            )
        } else {
            match line.strip_prefix("tick ").map(str::parse::<u64>) {
                Some(Ok(n)) => format!("tick {n} {}", state::tick(black_box(n))),
                _ => format!("error unknown command: {line}"),
            }
        };
        writeln!(out, "{reply}").unwrap();
        out.flush().unwrap();
    }
}
