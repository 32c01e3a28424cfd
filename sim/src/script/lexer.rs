//! Splits one script line into tokens, its expectation and its comment.
//!
//! A line is `CODE [=> EXPECTED] [# COMMENT]`. CODE is split into words (runs of characters
//! other than white space and `=`) and `=` signs, each with its 1-based column (in
//! characters), so the parser can tell `key=value` (no spaces) from `NAME = VERB`.
//!
//! A `#` starts the comment, except inside EXPECTED where it is directly followed by an
//! uppercase letter: that is an exception vector of a result (`guest #VC gpa=...`).

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A run of characters other than white space and `=`.
    Word,
    /// A single `=`.
    Equals,
}

/// One token of a line's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub kind: TokenKind,
    pub text: &'a str,
    /// 1-based column of the first character.
    pub column: usize,
}

impl Token<'_> {
    /// The column just after the token.
    pub fn end_column(&self) -> usize {
        self.column + self.text.chars().count()
    }

    /// Whether `next` starts right where this token ends.
    pub fn touches(&self, next: &Token<'_>) -> bool {
        self.end_column() == next.column
    }
}

/// The `=> EXPECTED` part of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expectation<'a> {
    /// The text after `=>`, trimmed.
    pub text: &'a str,
    /// The column of the `=>`.
    pub column: usize,
}

/// A line split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexedLine<'a> {
    pub tokens: Vec<Token<'a>>,
    pub expected: Option<Expectation<'a>>,
}

/// Splits `line` (without its line terminator).
pub(crate) fn lex_line(line: &str) -> LexedLine<'_> {
    let code = comment_start(line).map_or(line, |hash| &line[..hash]);
    match code.find("=>") {
        Some(arrow) => LexedLine {
            tokens: tokenize(&code[..arrow]),
            expected: Some(Expectation { text: code[arrow + 2..].trim(), column: column_of(code, arrow) }),
        },
        None => LexedLine { tokens: tokenize(code), expected: None },
    }
}

/// The byte offset of the `#` that starts the comment: the first `#`, but after `=>` not one
/// directly followed by an uppercase letter (an exception vector such as `#VC`, which results
/// print).
fn comment_start(line: &str) -> Option<usize> {
    let mut in_expectation = false;
    for (byte, c) in line.char_indices() {
        let rest = &line[byte..];
        if c == '#' {
            let vector = rest[1..].starts_with(|next: char| next.is_ascii_uppercase());
            if !(in_expectation && vector) {
                return Some(byte);
            }
        } else if rest.starts_with("=>") {
            in_expectation = true;
        }
    }
    None
}

/// The 1-based character column of byte offset `byte` in `text`.
fn column_of(text: &str, byte: usize) -> usize {
    text[..byte].chars().count() + 1
}

fn tokenize(code: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut word: Option<(usize, usize)> = None; // (byte, column) where the current word began
    for (index, (byte, c)) in code.char_indices().enumerate() {
        let column = index + 1;
        if c.is_whitespace() || c == '=' {
            end_word(code, word.take(), byte, &mut tokens);
        }
        if c == '=' {
            let text = &code[byte..byte + 1];
            tokens.push(Token { kind: TokenKind::Equals, text, column });
        } else if !c.is_whitespace() && word.is_none() {
            word = Some((byte, column));
        }
    }
    end_word(code, word, code.len(), &mut tokens);
    tokens
}

/// Pushes the word that began at `word` and ends at byte `end`, if there is one.
fn end_word<'a>(code: &'a str, word: Option<(usize, usize)>, end: usize, tokens: &mut Vec<Token<'a>>) {
    if let Some((start, column)) = word {
        let text = &code[start..end];
        tokens.push(Token { kind: TokenKind::Word, text, column });
    }
}
