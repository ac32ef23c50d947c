//! The report as JUnit XML, the format CI systems (GitHub Actions reporters, GitLab, Jenkins)
//! show as test cases: one `<testsuite>` for the rehearsal, one `<testcase>` per step.

use super::report::{RehearseReport, StepStatus};
use std::fmt::Write;

/// Renders `report` as a JUnit document: a `<testsuites>` root holding one `<testsuite>`, a
/// `<testcase>` per step with `<failure>`, `<error>` or `<skipped>`, and the target's output in
/// the suite's `<system-out>`.
pub fn render(report: &RehearseReport, timestamp: &str) -> String {
    let c = &report.counts;
    let seconds = |ms: f64| format!("{:.3}", ms / 1000.0);
    let target = report
        .target
        .command
        .first()
        .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
        .unwrap_or_default();
    let classname = format!("rpatch.rehearse.{}", target.replace('.', "_"));
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"rpatch rehearse\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
        c.tests,
        c.failures,
        c.errors,
        c.skipped,
        seconds(report.total_ms)
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\" timestamp=\"{}\">",
        attr(&format!("rehearse {target}")),
        c.tests,
        c.failures,
        c.errors,
        c.skipped,
        seconds(report.total_ms),
        attr(timestamp)
    );
    x += "    <properties>\n";
    let properties = [
        ("target", report.target.command.join(" ")),
        ("library", report.library.display().to_string()),
        ("functions", report.functions.join(" ")),
        ("cycles", report.cycles.to_string()),
        (
            "patched_pid",
            report
                .target
                .patched_pid
                .map(|p| p.to_string())
                .unwrap_or_default(),
        ),
    ];
    for (name, value) in properties {
        let _ = writeln!(
            x,
            "      <property name=\"{name}\" value=\"{}\"/>",
            attr(&value)
        );
    }
    x += "    </properties>\n";
    for step in &report.steps {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
            attr(&step.name),
            attr(&classname),
            seconds(step.time_ms)
        );
        let message = step.message.clone().unwrap_or_default();
        let mut body = message.clone();
        if let Some(e) = &step.error {
            let _ = write!(body, "\n(exit code {}, {})", e.code, e.kind);
        }
        if let Some(output) = &step.output {
            let _ = write!(body, "\n--- output\n{output}");
        }
        match step.status {
            StepStatus::Passed => {
                if step.output.as_deref().is_some_and(|o| !o.is_empty()) {
                    let _ = writeln!(
                        x,
                        ">\n      <system-out>{}</system-out>\n    </testcase>",
                        text(step.output.as_deref().unwrap_or_default())
                    );
                } else {
                    x += "/>\n";
                }
            }
            StepStatus::Failed | StepStatus::Error => {
                let tag = if step.status == StepStatus::Failed {
                    "failure"
                } else {
                    "error"
                };
                let _ = writeln!(
                    x,
                    ">\n      <{tag} message=\"{}\" type=\"{}\">{}</{tag}>\n    </testcase>",
                    attr(first_line(&message)),
                    step.error
                        .as_ref()
                        .map_or_else(|| "rehearsal_failed".to_string(), |e| e.kind.to_string()),
                    text(&body)
                );
            }
            StepStatus::Skipped => {
                let _ = writeln!(
                    x,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    attr(if message.is_empty() {
                        "not run: an earlier step failed"
                    } else {
                        &message
                    })
                );
            }
        }
    }
    let _ = writeln!(
        x,
        "    <system-out>{}</system-out>",
        text(&report.target.log)
    );
    x += "  </testsuite>\n</testsuites>\n";
    x
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Characters XML 1.0 does not allow anywhere (most C0 controls, U+FFFE, U+FFFF) are removed.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Escapes text content.
fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| allowed(c)) {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            c => out.push(c),
        }
    }
    out
}

/// Escapes an attribute value (quotes and line breaks too, which attribute normalisation would
/// otherwise turn into spaces).
fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| allowed(c)) {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&apos;",
            '\n' => out += "&#10;",
            '\r' => out += "&#13;",
            '\t' => out += "&#9;",
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_characters_are_removed_and_markup_escaped() {
        assert_eq!(
            text("a\u{1b}[31mb\u{0}c<d>&\u{FFFF}"),
            "a[31mbc&lt;d&gt;&amp;"
        );
        assert_eq!(text("tab\tnew\nline"), "tab\tnew\nline");
        assert_eq!(
            attr("say \"hi\"\n'x'"),
            "say &quot;hi&quot;&#10;&apos;x&apos;"
        );
    }
}
