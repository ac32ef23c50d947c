//! webapp: a real HTTP server as an rpatch test target (tokio multi-threaded runtime + hyper).
//!
//! `webapp [--port PORT] [--threads N]`: listens on 127.0.0.1:PORT (default 0: any free port)
//! with N runtime worker threads (default 4), then prints `ready <pid> <port>`. Stdin is not read.
//!
//! * `GET /quote/N` -> 200 `quote N R\n`, R = `pricing::quote(N)` = N+10 (N*1000 with
//!   webapp-fix). The handler is an `async fn`; the body's value comes from the plain
//!   `#[inline(never)]` function `webapp::pricing::quote`, which is what a patch replaces.
//! * `GET /health` -> 200 `ok\n`; anything else -> 404.
//!
//! It also holds what must *not* be patched in place of a plain function: the `async fn`
//! `webapp::handle` (its body is the state machine `webapp::handle::{{closure}}`) and the closure
//! `webapp::format_with::{{closure}}`, for the tests of attach's refusal.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::hint::black_box;
use std::io::Write;

pub mod pricing {
    /// The function the tests patch: `webapp::pricing::quote`.
    #[inline(never)]
    pub fn quote(x: u64) -> u64 {
        x + 10
    }
}

/// Formats a reply line through a closure kept out of line (`webapp::format_with::{{closure}}`).
#[inline(never)]
fn format_with(n: u64) -> String {
    let render: &dyn Fn(u64) -> String =
        black_box(&|n: u64| format!("quote {n} {}\n", pricing::quote(n)));
    render(n)
}

/// The request handler: an `async fn` (kept out of line, so its symbols exist).
#[inline(never)]
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    let (status, body) = if let Some(n) = path.strip_prefix("/quote/") {
        match n.parse::<u64>() {
            Ok(n) => (StatusCode::OK, format_with(black_box(n))),
            Err(_) => (StatusCode::BAD_REQUEST, format!("bad number: {n}\n")),
        }
    } else if path == "/health" {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (StatusCode::NOT_FOUND, format!("no such path: {path}\n"))
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

fn usage() -> ! {
    eprintln!("usage: webapp [--port PORT] [--threads N]");
    std::process::exit(2);
}

fn main() {
    let mut port: u16 = 0;
    let mut threads: usize = 4;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--port" => port = value.parse().unwrap_or_else(|_| usage()),
            "--threads" => threads = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
        eprintln!("webapp: cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1);
    });
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let port = listener.local_addr().expect("local address").port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_io()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "ready {} {port}", std::process::id()).unwrap();
            out.flush().unwrap();
        }
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("webapp: accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                if let Err(e) = http1::Builder::new()
                    .serve_connection(io, service_fn(handle))
                    .await
                    && !e.is_incomplete_message()
                {
                    eprintln!("webapp: connection: {e}");
                }
            });
        }
    });
}
