//! Shell completions and man pages come from the command-line definition: every shell's script
//! is produced and names the commands and their options, bash accepts its script, and the man
//! pages name every command, on stdout or as one file per page.

mod common;

use common::*;
use std::process::Command;

/// `rpatch completions bash|zsh|fish` print a script naming the commands and their flags; bash
/// parses its own (`bash -n`); an unknown shell is a usage error.
#[test]
fn completions_for_every_shell() {
    let state = state_dir();
    for shell in ["bash", "zsh", "fish"] {
        let run = rpatch(state.path(), &["completions", shell]);
        run.expect_ok();
        for word in [
            "attach",
            "rollback",
            "status",
            "resolve",
            "rehearse",
            "allow-active",
        ] {
            assert!(
                run.stdout.contains(word),
                "{shell}: no {word} in\n{}",
                run.stdout
            );
        }
        if shell == "bash" {
            let script = state.path().join("rpatch.bash");
            std::fs::write(&script, &run.stdout).unwrap();
            let check = Command::new("bash")
                .arg("-n")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "bash rejects the script: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    rpatch(state.path(), &["completions", "tcsh"]).expect_code(exit::USAGE);
}

/// `rpatch man` prints roff pages for rpatch and each command; `--out-dir` writes them as
/// `rpatch.1`, `rpatch-attach.1`...; `man` renders one when it is installed.
#[test]
fn man_pages_for_rpatch_and_each_command() {
    let state = state_dir();
    let run = rpatch(state.path(), &["man"]);
    run.expect_ok();
    assert!(
        run.stdout.starts_with(".ie \\n(.g") || run.stdout.contains(".TH rpatch"),
        "{}",
        &run.stdout[..200.min(run.stdout.len())]
    );
    for page in [
        "rpatch",
        "rpatch-attach",
        "rpatch-rollback",
        "rpatch-status",
        "rpatch-resolve",
        "rpatch-rehearse",
    ] {
        assert!(
            run.stdout.contains(&format!(".TH {page} ")),
            "no page {page}"
        );
    }
    assert!(
        run.stdout.contains("allow\\-active"),
        "attach's options are documented"
    );

    let dir = state.path().join("man1");
    std::fs::create_dir(&dir).unwrap();
    rpatch(state.path(), &["man", "--out-dir", dir.to_str().unwrap()]).expect_ok();
    let attach_page = dir.join("rpatch-attach.1");
    assert!(dir.join("rpatch.1").is_file() && attach_page.is_file());
    match Command::new("man")
        .arg("-l")
        .arg(&attach_page)
        .env("MANPAGER", "cat")
        .env("COLUMNS", "100")
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("--timeout"), "{text}");
        }
        _ => eprintln!("man is not installed: rendering not checked"),
    }
}
