//! A spanned TOML reader: typed access to a parsed cluster file that remembers where every
//! value stands, reports every problem (not just the first) with its position, and flags
//! keys nobody asked for as unknown.

use std::collections::BTreeSet;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostic::{Diagnostic, Problems};

/// A value together with the byte range it came from.
pub(crate) type At<T> = Spanned<T>;

/// Reads the keys of one TOML table, checking types as it goes.
///
/// Every key a caller asks for, present or not, counts as known; [`Table::finish`] reports
/// the rest as unknown keys, with the nearest known key as a hint.
pub(crate) struct Table<'a, 'i> {
    entries: &'a DeTable<'i>,
    span: Range<usize>,
    path: String,
    known: BTreeSet<&'static str>,
}

impl<'a, 'i> Table<'a, 'i> {
    /// The document's top-level table.
    pub(crate) fn root(document: &'a Spanned<DeTable<'i>>) -> Self {
        Table {
            entries: document.get_ref(),
            span: 0..0,
            path: String::new(),
            known: BTreeSet::new(),
        }
    }

    /// The dotted path of a key in this table, as the user would write it.
    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Where this table starts (the file's start for the root table).
    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// Whether the key is present, whatever its type.
    pub(crate) fn has_key(&self, key: &str) -> bool {
        self.entries.get(key).is_some()
    }

    fn entry(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.known.insert(key);
        self.entries.get(key)
    }

    fn wrong_type(
        &self,
        key: &str,
        value: &Spanned<DeValue<'_>>,
        expected: &str,
        p: &mut Problems,
    ) {
        let hint = match expected {
            "an integer" => "write a number without quotes, e.g. `count = 2`",
            "a string" => "put the value in double quotes, e.g. `flavor = \"m3.small\"`",
            "true or false" => "write true or false, without quotes",
            "a table" => "write it as a [section] with keys below it, or as { key = value }",
            "a table of strings" => "write it as { \"key\" = \"value\", ... }",
            "an array of strings" => "write it as [\"first\", \"second\"]",
            _ => "write each [[section]] header once per entry",
        };
        p.push(
            Diagnostic::new(
                value.span(),
                format!(
                    "`{}` must be {expected}, not {}",
                    self.key_path(key),
                    type_name(value.get_ref())
                ),
            )
            .hint(hint),
        );
    }

    /// Reports a required key that is absent (a present value of the wrong type has been
    /// reported already, by the accessor that read it).
    pub(crate) fn missing(&self, key: &str, hint: &str, p: &mut Problems) {
        if self.has_key(key) {
            return;
        }
        p.push(
            Diagnostic::new(
                self.span(),
                format!("missing required key `{}`", self.key_path(key)),
            )
            .hint(hint),
        );
    }

    /// A string value, if present and a string.
    pub(crate) fn string(&mut self, key: &'static str, p: &mut Problems) -> Option<At<String>> {
        let value = self.entry(key)?;
        match value.get_ref().as_str() {
            Some(s) => Some(Spanned::new(value.span(), s.to_string())),
            None => {
                self.wrong_type(key, value, "a string", p);
                None
            }
        }
    }

    /// An integer value, if present and an integer.
    pub(crate) fn integer(&mut self, key: &'static str, p: &mut Problems) -> Option<At<i64>> {
        let value = self.entry(key)?;
        let parsed = value
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match parsed {
            Some(n) => Some(Spanned::new(value.span(), n)),
            None => {
                self.wrong_type(key, value, "an integer", p);
                None
            }
        }
    }

    /// A boolean value, if present and a boolean.
    pub(crate) fn boolean(&mut self, key: &'static str, p: &mut Problems) -> Option<At<bool>> {
        let value = self.entry(key)?;
        match value.get_ref().as_bool() {
            Some(b) => Some(Spanned::new(value.span(), b)),
            None => {
                self.wrong_type(key, value, "true or false", p);
                None
            }
        }
    }

    /// An array of strings, if present; elements of another type are reported and skipped.
    pub(crate) fn strings(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Option<Vec<At<String>>> {
        let value = self.entry(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, value, "an array of strings", p);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push(Spanned::new(item.span(), s.to_string())),
                None => self.wrong_type(key, item, "an array of strings", p),
            }
        }
        Some(out)
    }

    /// A sub-table (`[a.b]` or `b = { ... }`), if present and a table.
    pub(crate) fn table(&mut self, key: &'static str, p: &mut Problems) -> Option<Table<'a, 'i>> {
        let value = self.entry(key)?;
        match value.get_ref() {
            DeValue::Table(entries) => Some(self.child(key, entries, value.span())),
            _ => {
                self.wrong_type(key, value, "a table", p);
                None
            }
        }
    }

    /// An array of tables (`[[key]]`), empty when absent.
    pub(crate) fn tables(&mut self, key: &'static str, p: &mut Problems) -> Vec<Table<'a, 'i>> {
        let Some(value) = self.entry(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, value, "an array of tables (`[[...]]`)", p);
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::Table(entries) => {
                    let mut child = self.child(key, entries, item.span());
                    child.path = format!("{}[{index}]", self.key_path(key));
                    out.push(child);
                }
                _ => self.wrong_type(key, item, "an array of tables (`[[...]]`)", p),
            }
        }
        out
    }

    /// A table of string values with free-form keys (labels, for example).
    pub(crate) fn string_map(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Option<Vec<(At<String>, At<String>)>> {
        let value = self.entry(key)?;
        let DeValue::Table(entries) = value.get_ref() else {
            self.wrong_type(key, value, "a table of strings", p);
            return None;
        };
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries.iter() {
            match v.get_ref().as_str() {
                Some(s) => out.push((
                    Spanned::new(k.span(), k.get_ref().to_string()),
                    Spanned::new(v.span(), s.to_string()),
                )),
                None => self.wrong_type(&format!("{key}.{}", k.get_ref()), v, "a string", p),
            }
        }
        Some(out)
    }

    fn child(&self, key: &str, entries: &'a DeTable<'i>, span: Range<usize>) -> Table<'a, 'i> {
        Table {
            entries,
            span,
            path: self.key_path(key),
            known: BTreeSet::new(),
        }
    }

    /// Reports every key of this table that no caller asked for.
    pub(crate) fn finish(self, p: &mut Problems) {
        for (key, _) in self.entries.iter() {
            let name = key.get_ref().as_ref();
            if self.known.contains(name) {
                continue;
            }
            let mut diagnostic =
                Diagnostic::new(key.span(), format!("unknown key `{}`", self.key_path(name)));
            diagnostic = match closest(name, &self.known) {
                Some(near) => diagnostic.hint(format!("did you mean `{near}`?")),
                None => diagnostic.hint(format!(
                    "known keys here: {}",
                    self.known.iter().copied().collect::<Vec<_>>().join(", ")
                )),
            };
            p.push(diagnostic);
        }
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The known key nearest to `name` by edit distance, if it is close enough to be a typo.
fn closest<'k>(name: &str, known: &BTreeSet<&'k str>) -> Option<&'k str> {
    let within = |k: &str| 2.max(k.len() / 4);
    known
        .iter()
        // The distance is at least the difference in length: most keys need no computing.
        .filter(|k| name.chars().count().abs_diff(k.len()) <= within(k))
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= within(k))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("flavour", "flavor"), 1);
        assert_eq!(edit_distance("count", "count"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn closest_suggests_only_near_keys() {
        let known: BTreeSet<&str> = ["flavor", "count", "boot_volume_gb"].into();
        assert_eq!(closest("flavour", &known), Some("flavor"));
        assert_eq!(closest("zzzzzzzz", &known), None);
    }
}
