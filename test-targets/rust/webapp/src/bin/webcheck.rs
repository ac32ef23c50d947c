//! webcheck: a second HTTP client for load rehearsals, which checks what wrk does not read.
//!
//! `webcheck URL --seconds S [--until FILE] --expect BODY [--expect BODY...] [--connections C]`:
//! C keep-alive connections (default 2) to URL (`http://127.0.0.1:PORT/PATH`), one request after
//! another, for S seconds or until FILE exists (`rpatch rehearse` names the file that appears
//! when its last rollback is done in `RPATCH_CYCLES_DONE`), whichever comes first. Every response must be 200 with a body equal to one of the BODY values
//! (trailing whitespace ignored). Prints `webcheck: N responses, <count per BODY>, U unexpected,
//! E errors` and exits 1 when there was any unexpected response or socket error, or none at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Tally {
    per_body: Vec<AtomicU64>,
    unexpected: AtomicU64,
    errors: AtomicU64,
    first_problem: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn problem(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_problem.lock().unwrap();
        if first.is_none() {
            *first = Some(what);
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: webcheck http://127.0.0.1:PORT/PATH --seconds S [--until FILE] --expect BODY [--expect BODY...] [--connections C]"
    );
    std::process::exit(2);
}

/// One response: status code and body.
fn exchange(
    reader: &mut BufReader<TcpStream>,
    host: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    reader.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length: Option<usize> = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in headers",
            ));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok();
        }
    }
    let length = length.ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn main() {
    let mut url: Option<String> = None;
    let mut seconds: Option<f64> = None;
    let mut expected: Vec<String> = Vec::new();
    let mut connections = 2usize;
    let mut until: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()),
            "--until" => until = args.next().map(Into::into),
            "--expect" => expected.push(
                args.next()
                    .unwrap_or_else(|| usage())
                    .trim_end()
                    .to_string(),
            ),
            "--connections" => {
                connections = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ if url.is_none() && arg.starts_with("http://") => url = Some(arg),
            _ => usage(),
        }
    }
    let (Some(url), Some(seconds)) = (url, seconds) else {
        usage()
    };
    if expected.is_empty() {
        usage();
    }
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage());
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let tally = Arc::new(Tally {
        per_body: expected.iter().map(|_| AtomicU64::new(0)).collect(),
        unexpected: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_problem: std::sync::Mutex::new(None),
    });
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let expected = Arc::new(expected);
    let until = Arc::new(until);
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (tally, expected, host, path, until) = (
                tally.clone(),
                expected.clone(),
                host.clone(),
                path.clone(),
                until.clone(),
            );
            std::thread::spawn(move || {
                let mut conn: Option<BufReader<TcpStream>> = None;
                let done = || until.as_deref().is_some_and(|f| f.exists());
                while Instant::now() < deadline && !done() {
                    let reader = match &mut conn {
                        Some(r) => r,
                        None => match TcpStream::connect(&host) {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                                conn.insert(BufReader::new(s))
                            }
                            Err(e) => {
                                tally.problem(&tally.errors, format!("connect {host}: {e}"));
                                break;
                            }
                        },
                    };
                    match exchange(reader, &host, &path) {
                        Ok((200, body)) => {
                            match expected.iter().position(|b| *b == body.trim_end()) {
                                Some(i) => {
                                    tally.per_body[i].fetch_add(1, Ordering::Relaxed);
                                }
                                None => tally.problem(
                                    &tally.unexpected,
                                    format!("unexpected body {body:?}"),
                                ),
                            }
                        }
                        Ok((status, body)) => tally
                            .problem(&tally.unexpected, format!("status {status}, body {body:?}")),
                        Err(e) => {
                            tally.problem(&tally.errors, format!("socket error: {e}"));
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("webcheck worker");
    }
    let counts: Vec<u64> = tally
        .per_body
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let total: u64 = counts.iter().sum();
    let unexpected = tally.unexpected.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let per_body: Vec<String> = expected
        .iter()
        .zip(&counts)
        .map(|(b, n)| format!("{n} x {b:?}"))
        .collect();
    println!(
        "webcheck: {} responses, {}, {unexpected} unexpected, {errors} errors",
        total + unexpected,
        per_body.join(", ")
    );
    if let Some(p) = tally.first_problem.lock().unwrap().as_ref() {
        println!("webcheck: first problem: {p}");
    }
    if unexpected > 0 || errors > 0 || total == 0 {
        std::process::exit(1);
    }
}
