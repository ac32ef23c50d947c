//! calcapp: a Rust test target for rpatch.
//!
//! `calcapp`: prints `ready <pid>`, then answers line commands on stdin, one line each:
//!   `call N` -> `calc N R` with R = `pricing::calc(N)` = N+10 (N*1000 with calcapp-fix);
//!   exits 0 on EOF or `quit`.
//! `calcapp --interval-ms MS`: prints `ready <pid>`, then `calc(<i>) = <value>` every MS
//! milliseconds forever, for i = 1, 2, ... (the demo); stdin is ignored.
//! `calcapp --http PORT`: listens on 127.0.0.1:PORT, prints `ready <pid>`, then answers
//! `GET /calc/N` with `calc N R` (one request per connection) forever; stdin is ignored. This is
//! what the rehearsal examples probe with curl.

use std::hint::black_box;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

mod pricing {
    /// The function the tests patch: `calcapp::pricing::calc`.
    #[inline(never)]
    pub fn calc(x: u64) -> u64 {
        x + 10
    }
}

/// Answers one HTTP request on `stream`: `GET /calc/N` -> `calc N R`, anything else 404.
fn answer(stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request)? == 0 {
        return Ok(()); // a connection without a request (a readiness check)
    }
    // The headers are read and ignored up to the blank line.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path.strip_prefix("/calc/").map(str::parse::<u64>) {
        Some(Ok(n)) => (
            "200 OK",
            format!("calc {n} {}\n", pricing::calc(black_box(n))),
        ),
        _ => ("404 Not Found", format!("no such path: {path}\n")),
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut out = io::stdout().lock();
    if args.len() == 3 && args[1] == "--http" {
        let port: u16 = args[2].parse().expect("--http takes a port number");
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
            eprintln!("calcapp: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        });
        writeln!(out, "ready {}", std::process::id()).unwrap();
        out.flush().unwrap();
        for stream in listener.incoming() {
            if let Err(e) = stream.and_then(answer) {
                eprintln!("calcapp: {e}");
            }
        }
        return;
    }
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
        eprintln!("usage: calcapp [--interval-ms MS | --http PORT]");
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
