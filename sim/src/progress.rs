//! The progress bar every long command draws (`gmem-sim run`, `gmem-sim diff`), so they all
//! look the same: `gmem-sim run [######>.......................]  21% 63000 operations`.
//! (`gmem-sim examples` finishes in well under a second and prints a line per file: it has
//! none.)
//!
//! It is drawn on standard error, and only when standard error is a terminal: a CI log, a pipe
//! or a redirected run gets nothing, so what commands print stays clean to parse. Library calls
//! (tests, tools) pass [`Progress::hidden`], which costs one branch per update. Updates are
//! throttled here ([`REDRAW_EVERY`]), so a caller may report progress from a hot loop.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The least time between two redraws.
pub const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// The bar's look: the command, a 30-cell bar, the percentage, then the command's own counts.
const TEMPLATE: &str = "{prefix} [{bar:30}] {percent:>3}% {msg}";

/// A command's progress bar, or nothing (see [the module docs](self)).
#[derive(Debug)]
pub struct Progress {
    shown: Option<Shown>,
}

#[derive(Debug)]
struct Shown {
    bar: ProgressBar,
    started: Instant,
    /// When the bar was last updated, in nanoseconds since `started` (`u64::MAX`: never).
    last_update: AtomicU64,
}

impl Progress {
    /// No bar: every update is a no-op.
    pub fn hidden() -> Progress {
        Progress { shown: None }
    }

    /// The bar of `command` (`gmem-sim run`, ...), drawn on standard error if it is a terminal,
    /// else hidden. Its length is set by [`Progress::start`].
    pub fn on_terminal(command: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let style = ProgressStyle::with_template(TEMPLATE).expect("the template parses").progress_chars("#>.");
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
        bar.set_prefix(command.to_string());
        Progress { shown: Some(Shown { bar, started: Instant::now(), last_update: AtomicU64::new(u64::MAX) }) }
    }

    /// Whether anything is drawn (to skip work that only feeds the bar).
    pub fn is_shown(&self) -> bool {
        self.shown.is_some()
    }

    /// The work has `steps` steps (operations, sequences, files, or milliseconds of a timed run).
    pub fn start(&self, steps: u64) {
        if let Some(shown) = &self.shown {
            shown.bar.set_length(steps);
            shown.bar.set_position(0);
        }
    }

    /// `done` steps are done; `message` (the command's counts) is built only when the bar is
    /// redrawn, at most every [`REDRAW_EVERY`].
    pub fn update(&self, done: u64, message: impl FnOnce() -> String) {
        let Some(shown) = &self.shown else { return };
        let now = shown.started.elapsed().as_nanos() as u64;
        let last = shown.last_update.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < REDRAW_EVERY.as_nanos() as u64 {
            return;
        }
        shown.last_update.store(now, Ordering::Relaxed);
        // The message first: the position's redraw then shows both.
        shown.bar.set_message(message());
        shown.bar.set_position(done);
    }

    /// The work is over: the bar is drawn a last time, full, with `message`, and left on the
    /// terminal.
    pub fn finish(&self, message: impl FnOnce() -> String) {
        if let Some(shown) = &self.shown {
            shown.bar.set_position(shown.bar.length().unwrap_or(0));
            shown.bar.finish_with_message(message());
            // The bar stays; what the command prints next starts on a line of its own.
            eprintln!();
        }
    }

    /// Runs `print` with the bar cleared (and redraws it after), so lines printed while the
    /// bar is up do not land in the middle of it.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &self.shown {
            Some(shown) => shown.bar.suspend(print),
            None => print(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn a_hidden_bar_never_builds_its_message() {
        let progress = Progress::hidden();
        progress.start(10);
        progress.update(5, || unreachable!("nothing is drawn"));
        progress.finish(|| unreachable!("nothing is drawn"));
        assert_eq!(progress.suspend(|| 7), 7);
        assert!(!progress.is_shown());
    }
}
