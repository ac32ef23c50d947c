//! Progress lines for `-v`: each phase of an operation, with the time since it started.

use std::time::Instant;

/// Writes timestamped progress lines to stderr when verbose.
#[derive(Debug, Clone)]
pub struct Log {
    verbose: bool,
    start: Instant,
}

impl Log {
    /// A log that prints only when `verbose`.
    pub fn new(verbose: bool) -> Self {
        Self {
            verbose,
            start: Instant::now(),
        }
    }

    /// A log that never prints.
    pub fn quiet() -> Self {
        Self::new(false)
    }

    /// Prints one progress line (`[  1.234 ms] phase: message`).
    pub fn step(&self, phase: &str, message: impl AsRef<str>) {
        if self.verbose {
            let ms = self.start.elapsed().as_secs_f64() * 1000.0;
            eprintln!("[{ms:9.3} ms] {phase}: {}", message.as_ref());
        }
    }

    /// Milliseconds since the log was created.
    pub fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}
