//! Reads a verb's arguments by key and position, with typed values and defaults.
//!
//! The reader never stops at the first problem: every accessor returns a placeholder on
//! error and records the error, and [`ArgReader::finish`] reports the most useful one (a
//! misspelt or duplicate key or a stray argument first, then a bad value, then a missing
//! argument; the leftmost within a class), so a typo in a key is not reported as the
//! required key being missing.

use std::collections::BTreeMap;

use super::lexer::Token;
use super::op::{Handle, HandleKind, UserAddr};
use super::value::{self, Table};

/// The names bound so far, with the kind of handle each holds.
pub(crate) type Names = BTreeMap<String, HandleKind>;

/// An error at a column of the current line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub column: usize,
    pub message: String,
}

impl Located {
    pub fn new(column: usize, message: impl Into<String>) -> Located {
        Located { column, message: message.into() }
    }
}

/// One argument: `key=value` or a bare positional value.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawArg<'a> {
    pub key: Option<Token<'a>>,
    pub value: Token<'a>,
}

/// How bad an error is for reporting: lower classes are reported first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ErrorClass {
    Structure,
    Value,
    Missing,
}

#[derive(Debug)]
struct KeyedArg<'a> {
    key: Token<'a>,
    value: Token<'a>,
    used: bool,
}

/// The arguments of one verb, consumed by the typed accessors.
#[derive(Debug)]
pub(crate) struct ArgReader<'a, 'n> {
    verb: Token<'a>,
    positional: Vec<Token<'a>>,
    next_positional: usize,
    keyed: Vec<KeyedArg<'a>>,
    names: &'n Names,
    errors: Vec<(ErrorClass, Located)>,
}

impl<'a, 'n> ArgReader<'a, 'n> {
    pub fn new(verb: Token<'a>, args: &[RawArg<'a>], names: &'n Names) -> Self {
        let mut reader = ArgReader {
            verb,
            positional: Vec::new(),
            next_positional: 0,
            keyed: Vec::new(),
            names,
            errors: Vec::new(),
        };
        for arg in args {
            match arg.key {
                Some(key) => reader.add_keyed(key, arg.value),
                None => reader.positional.push(arg.value),
            }
        }
        reader
    }

    fn add_keyed(&mut self, key: Token<'a>, value: Token<'a>) {
        let duplicate = self.keyed.iter().any(|k| k.key.text == key.text);
        if duplicate {
            let message = format!("duplicate key `{}`", key.text);
            self.fail(ErrorClass::Structure, key.column, message);
        }
        self.keyed.push(KeyedArg { key, value, used: duplicate });
    }

    fn fail(&mut self, class: ErrorClass, column: usize, message: String) {
        self.errors.push((class, Located::new(column, message)));
    }

    fn missing(&mut self, what: String) {
        let message = format!("{} needs {what}", self.verb.text);
        self.fail(ErrorClass::Missing, self.verb.column, message);
    }

    /// Records a bad value at `token`, or passes the good one on.
    fn check<T>(&mut self, token: Token<'_>, parsed: Result<T, String>) -> Option<T> {
        parsed.map_err(|message| self.fail(ErrorClass::Value, token.column, message)).ok()
    }

    /// The number of positional arguments given.
    pub fn positional_count(&self) -> usize {
        self.positional.len()
    }

    fn take_positional(&mut self) -> Option<Token<'a>> {
        let token = self.positional.get(self.next_positional).copied();
        self.next_positional += usize::from(token.is_some());
        token
    }

    fn take_key(&mut self, key: &str) -> Option<Token<'a>> {
        let arg = self.keyed.iter_mut().find(|k| !k.used && k.key.text == key)?;
        arg.used = true;
        Some(arg.value)
    }

    /// An optional `key=value`, parsed by `parse`.
    fn optional<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let token = self.take_key(key)?;
        self.check(token, parse(token.text))
    }

    /// A required `key=value`, parsed by `parse`; a placeholder if missing or bad.
    fn required<T: Default>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        let Some(token) = self.take_key(key) else {
            self.missing(format!("`{key}=`"));
            return T::default();
        };
        self.check(token, parse(token.text)).unwrap_or_default()
    }

    /// An optional `key=value` parsed by `parse`, with its default.
    pub fn parsed_or<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>, default: T) -> T {
        self.optional(key, parse).unwrap_or(default)
    }

    /// An optional `key=value` parsed by `parse`.
    pub fn optional_parsed<T>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        self.optional(key, parse)
    }

    /// A required `key=value` parsed by `parse`.
    pub fn parsed<T: Default>(&mut self, key: &str, parse: impl Fn(&str) -> Result<T, String>) -> T {
        self.required(key, parse)
    }

    /// An optional `key=NAME|N`.
    pub fn handle_key_opt(&mut self, key: &str) -> Option<Handle> {
        let token = self.take_key(key)?;
        Some(self.handle_value(token))
    }

    /// Records an error if both `first=` and `second=` are given (at the later of the two).
    pub fn reject_together(&mut self, first: &str, second: &str) {
        let present = |key: &str| self.keyed.iter().find(|k| k.key.text == key).map(|k| k.key.column);
        if let (Some(a), Some(b)) = (present(first), present(second)) {
            let column = a.max(b);
            let message = format!("`{first}=` and `{second}=` cannot be given together");
            self.fail(ErrorClass::Structure, column, message);
        }
    }

    /// Records a missing argument unless `first=` or `second=` is given (one of two ways to give
    /// a value; [`ArgReader::reject_together`] refuses both).
    pub fn need_one_of(&mut self, first: &str, second: &str) {
        let present = |key: &str| self.keyed.iter().any(|k| k.key.text == key);
        if !present(first) && !present(second) {
            self.missing(format!("`{first}=` or `{second}=`"));
        }
    }

    /// A required integer.
    pub fn int(&mut self, key: &str) -> u64 {
        self.required(key, value::parse_int)
    }

    /// An optional integer with its default.
    pub fn int_or(&mut self, key: &str, default: u64) -> u64 {
        self.optional(key, value::parse_int).unwrap_or(default)
    }

    /// A required flag set of `table`.
    pub fn flags(&mut self, key: &str, table: &Table) -> u64 {
        self.required(key, |text| value::parse_flags(text, table))
    }

    /// An optional flag set of `table` with its default.
    pub fn flags_or(&mut self, key: &str, table: &Table, default: u64) -> u64 {
        self.optional(key, |text| value::parse_flags(text, table)).unwrap_or(default)
    }

    /// A required constant of `table`.
    pub fn constant(&mut self, key: &str, table: &Table) -> u64 {
        self.required(key, |text| value::parse_constant(text, table))
    }

    /// An optional constant of `table` with its default.
    pub fn constant_or(&mut self, key: &str, table: &Table, default: u64) -> u64 {
        self.optional(key, |text| value::parse_constant(text, table)).unwrap_or(default)
    }

    /// A required byte string.
    pub fn bytes(&mut self, key: &str) -> Vec<u8> {
        self.required(key, value::parse_bytes)
    }

    /// An optional byte string.
    pub fn bytes_opt(&mut self, key: &str) -> Option<Vec<u8>> {
        self.optional(key, value::parse_bytes)
    }

    /// An optional `0`/`1`.
    pub fn bool_opt(&mut self, key: &str) -> Option<bool> {
        self.optional(key, value::parse_bool)
    }

    /// `key=NAME|N` with its default.
    pub fn handle_or(&mut self, key: &str, default: Handle) -> Handle {
        match self.take_key(key) {
            Some(token) => self.handle_value(token),
            None => default,
        }
    }

    /// `uaddr=auto|NAME|N`, default `auto`.
    pub fn uaddr(&mut self) -> UserAddr {
        match self.take_key("uaddr") {
            None => UserAddr::Auto,
            Some(token) if token.text == "auto" => UserAddr::Auto,
            Some(token) => UserAddr::Given(self.handle_value(token)),
        }
    }

    /// A required positional handle (`what` names it in messages: `VM`, `FD`).
    pub fn handle(&mut self, what: &str) -> Handle {
        match self.take_positional() {
            Some(token) => self.handle_value(token),
            None => {
                self.missing(format!("a {what} argument"));
                Handle::Number(0)
            }
        }
    }

    /// An optional positional handle.
    pub fn handle_opt(&mut self) -> Option<Handle> {
        let token = self.take_positional()?;
        Some(self.handle_value(token))
    }

    /// A required positional word taken as text (`inject FAULT`).
    pub fn word(&mut self, what: &str) -> String {
        match self.take_positional() {
            Some(token) => token.text.to_string(),
            None => {
                self.missing(format!("a {what} argument"));
                String::new()
            }
        }
    }

    /// A required positional constant of `table` (`check_extension CAP`).
    pub fn positional_constant(&mut self, what: &str, table: &Table) -> u64 {
        match self.take_positional() {
            Some(token) => {
                let parsed = value::parse_constant(token.text, table);
                self.check(token, parsed).unwrap_or_default()
            }
            None => {
                self.missing(format!("a {what} argument"));
                0
            }
        }
    }

    /// A required positional name bound by `mmap`.
    pub fn mapping(&mut self) -> String {
        let Some(token) = self.take_positional() else {
            self.missing("a MAP argument (a name bound by mmap)".into());
            return String::new();
        };
        let checked = self.mapping_name(token.text);
        self.check(token, checked).unwrap_or_default()
    }

    fn mapping_name(&self, text: &str) -> Result<String, String> {
        match self.names.get(text) {
            Some(HandleKind::Mapping) => Ok(text.to_string()),
            Some(kind) => Err(format!("`{text}` is not a mapping (it was bound by {})", kind.verb())),
            None if value::is_name(text) => Err(format!("unbound name `{text}`")),
            None => Err(format!("expected a name bound by mmap, found `{text}`")),
        }
    }

    /// A handle value: a bound name or an integer.
    fn handle_value(&mut self, token: Token<'_>) -> Handle {
        let parsed = self.parse_handle(token.text);
        self.check(token, parsed).unwrap_or(Handle::Number(0))
    }

    fn parse_handle(&self, text: &str) -> Result<Handle, String> {
        if value::is_name(text) {
            match self.names.contains_key(text) {
                true => Ok(Handle::Name(text.to_string())),
                false => Err(format!("unbound name `{text}`")),
            }
        } else if value::looks_numeric(text) {
            value::parse_int(text).map(Handle::Number)
        } else {
            Err(format!("expected a name or an integer, found `{text}`"))
        }
    }

    /// Reports leftover arguments and the most useful recorded error.
    pub fn finish(mut self) -> Result<(), Located> {
        self.report_leftovers();
        let best = self.errors.into_iter().min_by_key(|(class, e)| (*class, e.column));
        best.map_or(Ok(()), |(_, error)| Err(error))
    }

    fn report_leftovers(&mut self) {
        let verb = self.verb.text;
        let unknown: Vec<Located> = self
            .keyed
            .iter()
            .filter(|k| !k.used)
            .map(|k| Located::new(k.key.column, format!("unknown key `{}` for {verb}", k.key.text)))
            .collect();
        let extra: Vec<Located> = self.positional[self.next_positional..]
            .iter()
            .map(|t| Located::new(t.column, format!("unexpected argument `{}` for {verb}", t.text)))
            .collect();
        let leftovers = unknown.into_iter().chain(extra);
        self.errors.extend(leftovers.map(|e| (ErrorClass::Structure, e)));
    }
}
