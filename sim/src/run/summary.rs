//! The result of a run: the figures `gmem-sim run` prints as a table or, with `--json`, as one
//! JSON object, and the failures, replay command and diagnosis printed beside them.

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// `(key, value)` in output order; values are already formatted (`n/a` where the model
    /// has no such counter).
    pub fields: Vec<(&'static str, String)>,
    /// Integrity errors and unexpected VMM errors (at most 20 kept), then warnings, then
    /// invariant violations, as printable lines.
    pub failures: Vec<String>,
    /// No warning, violation, integrity error or VMM error.
    pub ok: bool,
    /// The replay command.
    pub reproduce: String,
    /// When the watchdog ended the run or a thread panicked (why is in `failures`): who waited
    /// on what, what each thread was doing, the MMU invalidation and SRCU state, and the state
    /// dump.
    pub diagnosis: Option<String>,
}

impl Summary {
    /// One JSON object with every field.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let numeric = value.parse::<f64>().is_ok() || value == "true" || value == "false";
            if numeric {
                out.push_str(&format!("\"{key}\":{value}"));
            } else {
                out.push_str(&format!("\"{key}\":\"{}\"", json_escape(value)));
            }
        }
        out.push('}');
        out
    }

    /// The table.
    pub fn table(&self) -> String {
        let width = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        self.fields.iter().map(|(k, v)| format!("{k:<width$}  {v}\n")).collect()
    }
}

fn json_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}
