//! A script's header: the `# KEY: VALUE` lines of its leading comment block that say what it was
//! written for (`# profile: v6.18`, `# host: intel`). To the parser they are comments; the
//! command line reads them (`gmem-sim examples` runs each file under its profile and on its host,
//! `gmem-sim script` checks `--host` against the host a file declares).

/// One header line: its 1-based number and its value, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLine {
    /// The 1-based line number.
    pub number: usize,
    /// The text after `KEY:`, trimmed.
    pub value: String,
}

/// The header lines of a script.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// `# profile: PROFILE`: the kernel profile the expectations are written for.
    pub profile: Option<HeaderLine>,
    /// `# host: amd|intel`: the simulated host the script needs.
    pub host: Option<HeaderLine>,
}

/// A header line that cannot be used, displayed as `line N: message` (the command line prefixes
/// the file: `FILE:N: message`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for HeaderError {}

/// The header of `source`: the `# profile:` and `# host:` lines among the comment lines it starts
/// with (the block ends at the first line that is not a comment). An error names the line: a key
/// given twice, or given without a value.
pub fn header(source: &str) -> Result<Header, HeaderError> {
    let mut header = Header::default();
    for (index, line) in source.lines().enumerate() {
        let Some(comment) = line.trim_start().strip_prefix('#') else { break };
        let Some((key, value)) = comment.split_once(':') else { continue };
        let slot = match key.trim() {
            "profile" => &mut header.profile,
            "host" => &mut header.host,
            _ => continue,
        };
        let number = index + 1;
        let key = key.trim();
        if let Some(first) = slot {
            let message = format!("a second `# {key}:` line (the first is line {})", first.number);
            return Err(HeaderError { line: number, message });
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(HeaderError { line: number, message: format!("`# {key}:` without a value") });
        }
        *slot = Some(HeaderLine { number, value: value.to_string() });
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(number: usize, value: &str) -> Option<HeaderLine> {
        Some(HeaderLine { number, value: value.to_string() })
    }

    #[test]
    fn the_leading_comment_block_holds_the_header() {
        let source =
            "# profile: v6.18+F15\n# host:  intel \n# A TD launch: what it shows\n\n# host: amd\nvm = create_vm\n";
        assert_eq!(header(source), Ok(Header { profile: line(1, "v6.18+F15"), host: line(2, "intel") }));
        // After the first line that is not a comment, `# host:` is an ordinary comment.
        assert_eq!(header("vm = create_vm\n# host: intel\n"), Ok(Header::default()));
        assert_eq!(header(""), Ok(Header::default()));
        // Other `# KEY: VALUE` comments are not header lines.
        assert_eq!(header("# profile: v6.14\n# why: a bug\n").unwrap().host, None);
    }

    #[test]
    fn a_key_twice_or_without_a_value_is_an_error() {
        let error = |source: &str| header(source).unwrap_err().to_string();
        assert_eq!(error("# host: intel\n# host: amd\n"), "line 2: a second `# host:` line (the first is line 1)");
        assert_eq!(error("# profile: v6.18\n# host:\n"), "line 2: `# host:` without a value");
    }
}
