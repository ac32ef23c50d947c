//! What an operation tells a person while it runs, on stderr: progress lines for `-v` (each
//! phase, with the time since it started), and — when the caller asks for it, on a terminal —
//! one live status line while rpatch waits (a busy thread, a slow load, another rpatch).

use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, Instant};

/// Writes timestamped progress lines to stderr when verbose, and the live status line when
/// enabled.
#[derive(Debug, Clone)]
pub struct Log {
    verbose: bool,
    start: Instant,
    live: bool,
    /// When the status line was last drawn (None: not shown now).
    drawn: Cell<Option<Instant>>,
}

/// How often the status line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

/// How long a wait lasts before the status line shows it.
const SHOW_AFTER: Duration = Duration::from_millis(250);

impl Log {
    /// A log that prints only when `verbose`.
    pub fn new(verbose: bool) -> Self {
        Self {
            verbose,
            start: Instant::now(),
            live: false,
            drawn: Cell::new(None),
        }
    }

    /// A log that never prints.
    pub fn quiet() -> Self {
        Self::new(false)
    }

    /// Also shows what the operation waits for on one line that is redrawn in place (`\r`):
    /// meant for a terminal on stderr. The caller decides (not for `--json`, not off a TTY).
    pub fn with_status_line(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// A log for an operation run on another thread beside others (`attach --manifest
    /// --jobs N`): the same `-v` lines and clock, never the status line (several threads would
    /// draw over each other).
    pub fn for_worker(&self) -> Log {
        Self {
            live: false,
            drawn: Cell::new(None),
            ..self.clone()
        }
    }

    /// Prints one progress line (`[  1.234 ms] phase: message`).
    pub fn step(&self, phase: &str, message: impl AsRef<str>) {
        if self.verbose {
            self.clear_status();
            let ms = self.start.elapsed().as_secs_f64() * 1000.0;
            // Formatted first, written once: stderr is unbuffered, and `eprintln!` would make
            // one write(2) per piece (a dozen per line, inside the timings it reports).
            let line = format!("[{ms:9.3} ms] {phase}: {}\n", message.as_ref());
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    /// Shows, on the status line, that the operation waits for `what` since `since`, at most
    /// until `limit` after it (`rpatch: waiting 1.2 s of 5.0 s: thread 12 (worker) is inside
    /// calc`). Redrawn at most ten times a second; a no-op unless enabled.
    pub fn waiting(&self, what: &dyn std::fmt::Display, since: Instant, limit: Duration) {
        if !self.live {
            return;
        }
        let now = Instant::now();
        // A wait of a moment is not worth a line; then redraw a few times a second.
        if now - since < SHOW_AFTER || self.drawn.get().is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.drawn.set(Some(now));
        let mut line = format!(
            "rpatch: waiting {:.1} s of {:.1} s: {what}",
            (now - since).as_secs_f64(),
            limit.as_secs_f64()
        );
        // One terminal line: the end of a long reason is cut rather than wrapped.
        if let Some((cut, _)) = line.char_indices().nth(STATUS_WIDTH) {
            line.truncate(cut);
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{line}");
        let _ = err.flush();
    }

    /// Removes the status line, if one is shown (before other output, and at the end).
    pub fn clear_status(&self) {
        if self.drawn.take().is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }

    /// Milliseconds since the log was created.
    pub fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

/// Characters of the status line at most (an 80-column terminal's line, less a margin).
const STATUS_WIDTH: usize = 78;

/// Times the phases of one operation: a phase lasts from its [`PhaseClock::enter`] to the next
/// phase's (or to [`PhaseClock::finish`]), so the phases add up to the operation's time. With
/// `-v` the end of each phase prints one line with its time (`[ 3.104 ms] load: 1.702 ms`),
/// which is what to read first when an operation is slower than expected; the reports carry
/// the same figures (`phases_us`).
pub struct PhaseClock<'l> {
    log: &'l Log,
    current: Option<(&'static str, Instant)>,
    done: Vec<(&'static str, Duration)>,
}

impl<'l> PhaseClock<'l> {
    /// A clock whose first phase, `first`, starts now.
    pub fn start(log: &'l Log, first: &'static str) -> Self {
        Self {
            log,
            current: Some((first, Instant::now())),
            done: Vec::new(),
        }
    }

    /// Ends the current phase and starts `phase` (time spent in a phase entered twice adds up).
    pub fn enter(&mut self, phase: &'static str) {
        self.stop();
        self.current = Some((phase, Instant::now()));
    }

    fn stop(&mut self) {
        let Some((name, since)) = self.current.take() else {
            return;
        };
        let spent = since.elapsed();
        self.log
            .step(name, format!("{:.3} ms", spent.as_secs_f64() * 1000.0));
        match self.done.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += spent,
            None => self.done.push((name, spent)),
        }
    }

    /// Ends the current phase; the time of each phase, in the order they ran.
    pub fn finish(mut self) -> Phases {
        self.stop();
        Phases(
            self.done
                .iter()
                .map(|(name, d)| ((*name).to_string(), d.as_micros() as u64))
                .collect(),
        )
    }
}

/// Microseconds spent in each phase of an operation, in the order they ran; in JSON an object
/// `{"identify": 412, "plan": 1530, ...}` (`phases_us`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phases(pub Vec<(String, u64)>);

impl Phases {
    /// Microseconds spent in `phase` (0 when it did not run).
    pub fn us(&self, phase: &str) -> u64 {
        self.0
            .iter()
            .find(|(name, _)| name == phase)
            .map_or(0, |(_, us)| *us)
    }
}

impl serde::Serialize for Phases {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, us) in &self.0 {
            map.serialize_entry(name, us)?;
        }
        map.end()
    }
}
