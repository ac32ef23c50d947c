//! calcapp: a Rust test target for rpatch.
//!
//! `calcapp`: prints `ready <pid>`, then answers line commands on stdin, one line each:
//!   `call N` -> `calc N R` with R = `pricing::calc(N)` = N+10 (N*1000 with calcapp-fix);
//!   exits 0 on EOF or `quit`.
//! `calcapp --interval-ms MS`: prints `ready <pid>`, then `calc(<i>) = <value>` every MS
//! milliseconds forever, for i = 1, 2, ... (the demo); stdin is ignored.

use std::hint::black_box;
use std::io::{self, BufRead, Write};
use std::time::Duration;

mod pricing {
    /// The function the tests patch: `calcapp::pricing::calc`.
    #[inline(never)]
    pub fn calc(x: u64) -> u64 {
        x + 10
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", std::process::id()).unwrap();
    out.flush().unwrap();

    if args.len() == 3 && args[1] == "--interval-ms" {
        let ms: u64 = args[2].parse().expect("--interval-ms takes a number");
        let mut i: u64 = 1;
        loop {
            let value = pricing::calc(black_box(i));
            writeln!(out, "calc({i}) = {value}").unwrap();
            out.flush().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            i += 1;
        }
    } else if args.len() != 1 {
        eprintln!("usage: calcapp [--interval-ms MS]");
        std::process::exit(2);
    }

    for line in io::stdin().lock().lines() {
        let line = line.unwrap();
        let line = line.trim_end();
        if line == "quit" {
            break;
        }
        let reply = match line.strip_prefix("call ").map(str::parse::<u64>) {
            Some(Ok(n)) => format!("calc {n} {}", pricing::calc(black_box(n))),
            _ => format!("error unknown command: {line}"),
        };
        writeln!(out, "{reply}").unwrap();
        out.flush().unwrap();
    }
}
