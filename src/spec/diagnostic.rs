//! Problems found in a cluster file, each with its position and a hint, printed the way
//! compilers print them: `file:line:column: error: message`.

use std::fmt;
use std::ops::Range;

/// One problem in a cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diagnostic {
    span: Range<usize>,
    message: String,
    hint: Option<String>,
}

impl Diagnostic {
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            span,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Every problem found in one pass over a file.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    list: Vec<Diagnostic>,
}

impl Problems {
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        self.list.push(diagnostic);
    }

    pub(crate) fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Diagnostic::new(span, message).hint(hint));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn into_vec(self) -> Vec<Diagnostic> {
        self.list
    }
}

/// A cluster file that could not be accepted, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub struct InvalidClusterFile {
    pub(crate) path: String,
    pub(crate) text: String,
    pub(crate) problems: Vec<Diagnostic>,
}

impl InvalidClusterFile {}

/// Where each line of a text starts: made once, so placing every problem of a file with
/// thousands of them stays linear.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn of(text: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    fn position(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

/// Longest message shown whole: a file can hold a key or value of any length.
const MAX_MESSAGE_CHARS: usize = 300;

/// `message`, cut to [`MAX_MESSAGE_CHARS`] with what was left out counted.
fn shortened(message: &str) -> std::borrow::Cow<'_, str> {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message.into(),
        Some((cut, _)) => format!(
            "{}… ({} more characters)",
            &message[..cut],
            message[cut..].chars().count()
        )
        .into(),
    }
}

impl fmt::Display for InvalidClusterFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = LineIndex::of(&self.text);
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            let (line, column) = lines.position(&self.text, problem.span.start);
            write!(
                f,
                "{}:{line}:{column}: error: {}",
                self.path,
                shortened(&problem.message)
            )?;
            if let Some(hint) = &problem.hint {
                write!(f, "\n  hint: {}", shortened(hint))?;
            }
        }
        let count = self.problems.len();
        write!(
            f,
            "\n{} problem{} in {}; nothing was changed",
            count,
            if count == 1 { "" } else { "s" },
            self.path
        )
    }
}

#[cfg(test)]
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::of(text).position(text, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 8), (2, 3));
        assert_eq!(line_column(text, 999), (3, 1));
        // Columns count characters, and an offset inside one counts from its start.
        assert_eq!(line_column("é = 1", 2), (1, 2));
        assert_eq!(line_column("é = 1", 1), (1, 1));
    }

    #[test]
    fn long_messages_are_cut_with_what_was_left_out() {
        let key = "k".repeat(10_000);
        let shown = shortened(&format!("unknown key `{key}`")).into_owned();
        assert!(shown.len() < 400, "{}", shown.len());
        assert!(shown.ends_with("(9714 more characters)"), "{shown}");
        assert_eq!(shortened("short"), "short");
    }

    #[test]
    fn display_lists_each_problem_with_its_hint() {
        let error = InvalidClusterFile {
            path: "c.toml".into(),
            text: "name = 1\n".into(),
            problems: vec![Diagnostic::new(7..8, "`name` must be a string").hint("quote it")],
        };
        let shown = error.to_string();
        assert!(shown.starts_with("c.toml:1:8: error: `name` must be a string\n  hint: quote it"));
        assert!(shown.ends_with("1 problem in c.toml; nothing was changed"));
    }
}
