//! Runs parsed scripts on backends and prints their results (`docs/script-format.md`,
//! "Results").
//!
//! [`run`] executes every program on a fresh backend from a factory (dropping it at the end
//! of its file), writes one `LINE: RESULT` line per executed line (`FILE:LINE: RESULT` when
//! several programs run), and returns a [`Report`] with the same information in structured
//! form. With [`RunOptions::check`], lines whose result differs from their `=> EXPECTED`
//! print `LINE: RESULT (expected EXPECTED)` and make [`Report::exit_status`] 1.

mod exec;
mod format;

use std::fmt;
use std::io::{self, Write};

use crate::backend::{Backend, Failure};
use crate::script::{Line, Program};
use exec::Executor;
use format::{collapse_spaces, format_outcome};

/// How to run scripts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Compare results with expectations and mark mismatches (`--check`).
    pub check: bool,
    /// Count a `skip` result as matching any expectation (for conformance suites that run
    /// scripts on backends lacking some verbs). The command line never sets it.
    pub skip_is_pass: bool,
}

/// The result of one executed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineReport {
    /// The script's file name as given.
    pub file: String,
    /// The 1-based line number.
    pub line: usize,
    /// The result text (`ok 3`, `EINVAL`, ...), without line number.
    pub result: String,
    /// Lines printed under the result (dump output, invariant details), without indent.
    pub details: Vec<String>,
    /// The line's `=> EXPECTED`, if any.
    pub expected: Option<String>,
    /// Whether the result matched the expectation; `None` without an expectation.
    pub matched: Option<bool>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Whether expectations were checked (`--check`).
    pub check: bool,
    /// Every executed line of every file, in order.
    pub lines: Vec<LineReport>,
}

impl Report {
    /// The number of lines that carry an expectation.
    pub fn checked(&self) -> usize {
        self.lines.iter().filter(|l| l.matched.is_some()).count()
    }

    /// The number of lines whose result differed from their expectation.
    pub fn failed(&self) -> usize {
        self.lines.iter().filter(|l| l.matched == Some(false)).count()
    }

    /// `N expectations checked, M failed`.
    pub fn summary(&self) -> String {
        format!("{} expectations checked, {} failed", self.checked(), self.failed())
    }

    /// The process exit status: 1 if checking and an expectation failed, else 0.
    pub fn exit_status(&self) -> u8 {
        u8::from(self.check && self.failed() > 0)
    }
}

/// Why a run stopped before its end.
#[derive(Debug)]
pub enum RunError {
    /// The factory could not create a backend for this file.
    Backend {
        /// The file that was about to run.
        file: String,
        /// The factory's message.
        message: String,
    },
    /// Writing the output failed.
    Output(io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Backend { file, message } => write!(f, "{file}: {message}"),
            RunError::Output(error) => write!(f, "cannot write the output: {error}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<io::Error> for RunError {
    fn from(error: io::Error) -> Self {
        RunError::Output(error)
    }
}

/// Creates a fresh backend for each file.
pub type BackendFactory<'f> = dyn FnMut() -> Result<Box<dyn Backend>, String> + 'f;

/// Creates a fresh backend for the file it is given (which may decide the backend: its host).
pub type ProgramBackendFactory<'f> = dyn FnMut(&Program) -> Result<Box<dyn Backend>, String> + 'f;

/// Runs `programs` in order, each on a fresh backend from `factory`, writing results to `out`.
///
/// Result lines carry a `FILE:` prefix when there are several programs.
pub fn run(
    programs: &[Program],
    factory: &mut BackendFactory<'_>,
    options: RunOptions,
    out: &mut dyn Write,
) -> Result<Report, RunError> {
    run_with(programs, &mut |_| factory(), options, out)
}

/// [`run`], with a factory that is told which program the backend is for.
pub fn run_with(
    programs: &[Program],
    factory: &mut ProgramBackendFactory<'_>,
    options: RunOptions,
    out: &mut dyn Write,
) -> Result<Report, RunError> {
    let prefix_files = programs.len() > 1;
    let mut report = Report { check: options.check, lines: Vec::new() };
    for program in programs {
        let mut backend =
            factory(program).map_err(|message| RunError::Backend { file: program.file.clone(), message })?;
        let lines = run_program(program, backend.as_mut(), options, prefix_files, out)?;
        drop(backend);
        report.lines.extend(lines);
    }
    Ok(report)
}

/// Runs one program on `backend`, writing its results to `out` (with a `FILE:` prefix if
/// `prefix_file`).
pub fn run_program(
    program: &Program,
    backend: &mut dyn Backend,
    options: RunOptions,
    prefix_file: bool,
    out: &mut dyn Write,
) -> io::Result<Vec<LineReport>> {
    let mut executor = Executor::new(backend);
    let mut reports = Vec::with_capacity(program.lines.len());
    for line in &program.lines {
        let outcome = executor.run_line(line);
        let skipped = matches!(outcome, Err(Failure::Skip(_)));
        let formatted = format_outcome(&outcome);
        let report = LineReport {
            file: program.file.clone(),
            line: line.number,
            matched: expectation_met(line, &formatted.result, skipped && options.skip_is_pass),
            result: formatted.result,
            details: formatted.details,
            expected: line.expected.clone(),
        };
        write_line(out, &report, options.check, prefix_file)?;
        reports.push(report);
    }
    out.flush()?;
    Ok(reports)
}

/// Whether `result` matches the line's expectation (`None` without one).
fn expectation_met(line: &Line, result: &str, always: bool) -> Option<bool> {
    let expected = line.expected.as_deref()?;
    Some(always || collapse_spaces(expected) == collapse_spaces(result))
}

/// Prints a line's result, its mismatch note under `--check`, and its detail lines.
fn write_line(out: &mut dyn Write, report: &LineReport, check: bool, prefix_file: bool) -> io::Result<()> {
    if prefix_file {
        write!(out, "{}:", report.file)?;
    }
    write!(out, "{}: {}", report.line, report.result)?;
    if let (true, Some(false), Some(expected)) = (check, report.matched, &report.expected) {
        write!(out, " (expected {expected})")?;
    }
    writeln!(out)?;
    for detail in &report.details {
        writeln!(out, "  {detail}")?;
    }
    Ok(())
}
