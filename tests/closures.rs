//! attach refuses, unless `--force`, to redirect an `async fn`, an async block's or a closure's
//! body, whose callers share a layout with it that a replacement cannot reproduce; the message
//! says what to patch instead. The target is the real tokio + hyper server `webapp`.

mod common;

use common::{attach, build_targets, exit, state_dir};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// webapp running on an ephemeral port; killed and reaped on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let t = build_targets();
        let mut child = Command::new(t.rust.join("webapp"))
            .args(["--port", "0", "--threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start webapp");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read webapp's ready line");
        // `ready <pid> <port>`
        let port = line
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("webapp said {line:?}, not `ready <pid> <port>`"));
        Server { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET /quote/7 over a fresh connection: the response body.
    fn quote(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.write_all(b"GET /quote/7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read reply");
        reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim_end().to_string())
            .unwrap_or_else(|| panic!("no body in {reply:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The async fn `webapp::handle` (DWARF: returns `{async_fn_env#0}`) is refused (exit 20) with
/// a message naming the future and saying to patch a plain function it calls instead; nothing is
/// changed and the server answers as before.
#[test]
fn async_fn_is_refused_with_what_to_patch_instead() {
    let t = build_targets();
    let server = Server::start();
    let state = state_dir();
    let lib = t.rust.join("libwebapp.so");
    let run = attach(
        state.path(),
        server.pid(),
        &lib,
        &["webapp::handle=webapp::pricing::quote"],
        &["--json"],
    );
    let message = run.expect_error(exit::REFUSED);
    for needle in [
        "webapp::handle returns {async_fn_env#0}",
        "async fn",
        "patch a plain function it calls instead",
        "#[inline(never)]",
        "--force",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    common::assert_nothing_applied(state.path(), server.pid());
    common::assert_untraced(server.pid());
    assert_eq!(server.quote(), "quote 7 17");
}

/// A closure body (`webapp::format_with::{{closure}}`) and an async block's body
/// (`webapp::main::{{closure}}::{{closure}}`, the spawned connection task) are refused too, each
/// named for what it is.
#[test]
fn closure_and_async_block_bodies_are_refused() {
    let t = build_targets();
    let server = Server::start();
    let state = state_dir();
    let lib = t.rust.join("libwebapp.so");
    for (function, what) in [
        ("webapp::format_with::{{closure}}", "is a closure body"),
        (
            "webapp::main::{{closure}}::{{closure}}",
            "is the body of an async fn or block",
        ),
    ] {
        let run = attach(
            state.path(),
            server.pid(),
            &lib,
            &[&format!("{function}=webapp::pricing::quote")],
            &[],
        );
        let message = run.expect_error(exit::REFUSED);
        assert!(
            message.contains(&format!("{function} {what}")),
            "{function}: {message}"
        );
        assert!(message.contains("--force"), "{message}");
    }
    common::assert_untraced(server.pid());
    assert_eq!(server.quote(), "quote 7 17");
}

/// `--force` overrides the refusal (shown here with `--dry-run`: the plan is made, the refusal
/// becomes a warning), and the plain function the handler calls patches and rolls back normally.
#[test]
fn force_overrides_and_the_plain_function_patches() {
    let t = build_targets();
    let server = Server::start();
    let state = state_dir();
    let lib = t.rust.join("libwebapp.so");
    let run = attach(
        state.path(),
        server.pid(),
        &lib,
        &["webapp::handle=webapp::pricing::quote"],
        &["--force", "--dry-run", "--json"],
    );
    run.expect_ok();
    let warnings = run.json()["warnings"].to_string();
    assert!(
        warnings.contains("returns {async_fn_env#0}") && warnings.contains("--force"),
        "{warnings}"
    );
    common::attach_ok(
        state.path(),
        server.pid(),
        &lib,
        &["webapp::pricing::quote"],
    );
    assert_eq!(server.quote(), "quote 7 7000");
    common::rollback_ok(state.path(), server.pid(), &[]);
    assert_eq!(server.quote(), "quote 7 17");
    common::assert_untraced(server.pid());
}
