//! Human output of remote commands: aligned tables, `key  value` blocks, ages, and text made
//! safe for a terminal (names, labels and log lines come from the orchestrator and from jobs,
//! so they never get to move the cursor, retitle the window or write to the clipboard).

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// Columns separated by two spaces, each as wide as its widest cell; the last one unpadded.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    indent: usize,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
            indent: 0,
        }
    }

    /// Indents every line by `n` spaces.
    pub fn indent(mut self, n: usize) -> Self {
        self.indent = n;
        self
    }

    /// Adds a row; each cell is made one printable line. Missing cells are empty.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rows
            .push(cells.into_iter().map(|c| cell(c.as_ref())).collect());
    }

    /// The table as text, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0; columns];
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = " ".repeat(self.indent);
            for (i, width) in widths.iter().enumerate() {
                let c = row.get(i).map(String::as_str).unwrap_or("");
                line.push_str(c);
                if i + 1 < columns {
                    line.push_str(&" ".repeat(width - c.chars().count() + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the values aligned; values are made one printable line.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let line = format!("{key:<width$}  {}", cell(value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One printable line: line breaks and tabs become spaces, other control characters are
/// escaped.
pub fn cell(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    printable(&flat).into_owned()
}

/// The text with control characters (escape sequences included) shown as `\u{1b}` and the
/// like; tabs are kept.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `a, b, c`, or `-` for none.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A span of milliseconds in at most two units: `850ms`, `42s`, `3m12s`, `2h5m`, `3d4h`.
pub fn span(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 10_000 {
        // Tenths up to ten seconds (a stage's 1.2s), without a trailing `.0`.
        let text = format!("{:.1}", ms as f64 / 1000.0);
        return format!("{}s", text.trim_end_matches(".0"));
    }
    if ms < 60_000 {
        return format!("{}s", ms / 1000);
    }
    let s = ms / 1000;
    let (big, small, units) = if s < 3600 {
        (s / 60, s % 60, ("m", "s"))
    } else if s < 86_400 {
        (s / 3600, s % 3600 / 60, ("h", "m"))
    } else {
        (s / 86_400, s % 86_400 / 3600, ("d", "h"))
    };
    if small == 0 {
        format!("{big}{}", units.0)
    } else {
        format!("{big}{}{small}{}", units.0, units.1)
    }
}

/// How long ago `then_ms` was: `12s ago`, `just now` (clocks may disagree a little).
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let d = now_ms - then_ms;
    if d < 1000 {
        "just now".into()
    } else {
        format!("{} ago", span(d))
    }
}

/// How long something between two optional instants took, or `-`.
pub fn took(from_ms: Option<i64>, to_ms: Option<i64>) -> String {
    match (from_ms, to_ms) {
        (Some(a), Some(b)) => span(b - a),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["NAME", "VERSION", "UPDATED"]);
        t.row(["build-and-test", "12", "3m ago"]);
        t.row(["a", "1", ""]);
        assert_eq!(
            t.render(),
            "NAME            VERSION  UPDATED\n\
             build-and-test  12       3m ago\n\
             a               1\n"
        );
    }

    #[test]
    fn cells_are_single_printable_lines_measured_in_characters() {
        let mut t = Table::new(&["S", "NAME"]).indent(2);
        t.row(["✓", "checkout"]);
        t.row(["✗", "evil\u{1b}]0;title\u{7}\nname"]);
        assert_eq!(
            t.render(),
            "  S  NAME\n  \
               ✓  checkout\n  \
               ✗  evil\\u{1b}]0;title\\u{7} name\n"
        );
    }

    #[test]
    fn rows_longer_than_the_header_still_align() {
        let mut t = Table::new(&["A"]);
        t.row(["x", "y"]);
        t.row(["long", "z"]);
        assert_eq!(t.render(), "A\nx     y\nlong  z\n");
    }

    #[test]
    fn key_value_blocks_align_their_values() {
        let text = fields(&[
            ("job", "42".into()),
            ("pipeline", "hello (version 2)".into()),
            ("runner", String::new()),
        ]);
        assert_eq!(text, "job       42\npipeline  hello (version 2)\nrunner\n");
    }

    #[test]
    fn log_lines_keep_tabs_but_not_escape_sequences() {
        assert_eq!(printable("a\tb"), "a\tb");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
    }

    #[test]
    fn spans_use_two_units_at_most() {
        assert_eq!(span(850), "850ms");
        assert_eq!(span(1_200), "1.2s");
        assert_eq!(span(4_960), "5s");
        assert_eq!(span(59_999), "59s");
        assert_eq!(span(42_000), "42s");
        assert_eq!(span(192_000), "3m12s");
        assert_eq!(span(180_000), "3m");
        assert_eq!(span(7_500_000), "2h5m");
        assert_eq!(span(3 * 86_400_000 + 4 * 3_600_000 + 59_000), "3d4h");
        assert_eq!(ago(10_000, 9_500), "just now");
        assert_eq!(ago(100_000, 58_000), "42s ago");
        assert_eq!(took(Some(1_000), None), "-");
        assert_eq!(took(Some(1_000), Some(3_500)), "2.5s");
        assert_eq!(list::<&str>(&[]), "-");
        assert_eq!(list(&["a", "b"]), "a, b");
    }
}
