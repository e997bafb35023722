//! Problems found in a cluster file, each with its position and a hint, printed the way
//! compilers print them: `file:line:column: error: message`.

use std::fmt;
use std::ops::Range;

/// One problem in a cluster file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    span: Range<usize>,
    message: String,
    hint: Option<String>,
}

impl Diagnostic {
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            span,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Every problem found in one pass over a file.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Diagnostic>,
}

impl Problems {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.list.push(diagnostic);
    }

    pub fn error(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(Diagnostic::new(span, message).hint(hint));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.list
    }
}

/// A cluster file that could not be accepted, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub struct InvalidClusterFile {
    pub path: String,
    pub text: String,
    pub problems: Vec<Diagnostic>,
}

impl InvalidClusterFile {
    /// `(line, column)`, both counted from 1, of a byte offset; columns count characters.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        line_column(&self.text, offset)
    }
}

impl fmt::Display for InvalidClusterFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            let (line, column) = self.position(problem.span.start);
            write!(
                f,
                "{}:{line}:{column}: error: {}",
                self.path, problem.message
            )?;
            if let Some(hint) = &problem.hint {
                write!(f, "\n  hint: {hint}")?;
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

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
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
