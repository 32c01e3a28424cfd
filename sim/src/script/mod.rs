//! The `.gms` scenario-script language (`docs/script-format.md`): lexer, parser and the typed
//! program it produces.
//!
//! [`parse`] turns a script into a [`Program`]: one [`Line`] per executed line, each holding
//! an [`Op`] (one variant per verb, defaults applied), the name it binds and its expectation.
//! Everything the spec calls a parse error (unknown verb or key, missing or duplicate key,
//! bad value, unbound name, a non-mapping where a mapping is needed) is a [`ParseError`]
//! located at the offending token.
//!
//! Modules: `lexer` (a line into tokens, expectation and comment), `value` (integers, flag
//! sets, constants, byte strings, names and the constant tables), `args` (typed access to a
//! verb's arguments), `parser` (line structure and the schema of every verb), [`op`] (the
//! typed program), `header` (the `# profile:` and `# host:` lines a script starts with:
//! [`header()`]).

mod args;
mod header;
mod lexer;
pub mod op;
mod parser;
pub(crate) mod value;

#[cfg(test)]
mod tests;

use std::fmt;

pub use header::{header, Header, HeaderError, HeaderLine};
pub use op::{CpuidEntry, Handle, HandleKind, LaunchSource, Op, UserAddr, VERBS};

/// A parsed script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The file name as given (used in messages and multi-file output).
    pub file: String,
    /// The executed lines, in order (blank and comment-only lines are left out).
    pub lines: Vec<Line>,
}

/// One executed line of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The 1-based line number in the file.
    pub number: usize,
    /// The name this line binds (`NAME = VERB ...`), for a verb that returns a handle.
    pub binding: Option<String>,
    /// The verb and its arguments.
    pub op: Op,
    /// The text after `=>`, trimmed, if any.
    pub expected: Option<String>,
}

/// A parse error, displayed as `FILE:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The file name as given.
    pub file: String,
    /// The 1-based line number.
    pub line: usize,
    /// The 1-based column (in characters) of the offending token.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ParseError { file, line, column, message } = self;
        write!(f, "{file}:{line}:{column}: {message}")
    }
}

impl std::error::Error for ParseError {}

/// Parses the script `source`; `file` names it in errors. Stops at the first error.
pub fn parse(file: &str, source: &str) -> Result<Program, ParseError> {
    parser::parse_program(file, source)
}
