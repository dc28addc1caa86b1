//! Diagnostics: the data type every validation step produces, and how it is printed.
//!
//! This module owns the `Diagnostic` shape (file, line:col or field path, severity, message, help),
//! the collector, sorting and rendering. It does not decide what is wrong: `spec` and `plan` do.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Blocks running.
    Error,
    /// Worth fixing; fails only with `--deny-warnings`.
    Warning,
}

/// One problem found in a file, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub span: Option<(usize, usize)>,
    /// Dotted path of the offending field (`actions.create_contact.body.email`), when known.
    pub path: String,
    /// Error or warning.
    pub severity: Severity,
    /// One sentence saying what is wrong.
    pub message: String,
    /// One sentence saying how to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A new error diagnostic without location; use [`Diagnostic::at`] to place it.
    pub fn error(file: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            span: None,
            path: String::new(),
            severity: Severity::Error,
            message: message.into(),
            help: None,
        }
    }

    /// Places the diagnostic at a field path, looking its position up in `index`.
    pub fn at(mut self, index: &LocationIndex, path: &str) -> Diagnostic {
        self.span = index.find(path);
        self.path = path.to_string();
        self
    }

    /// Adds a `help:` line.
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// Whether it is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Marks it a warning.
    pub fn warning(mut self) -> Diagnostic {
        self.severity = Severity::Warning;
        self
    }
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: error: message` (or `file: path: error: message` when no position is
    /// known), then `  help: …` on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        match self.span {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {sev}: ", self.file.display())?,
            None if !self.path.is_empty() => {
                write!(f, "{}: {}: {sev}: ", self.file.display(), self.path)?
            }
            None => write!(f, "{}: {sev}: ", self.file.display())?,
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Sorts diagnostics by file, then position, so output is stable.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (
            &a.file,
            a.span.unwrap_or((usize::MAX, 0)),
            &a.path,
            &a.message,
        )
            .cmp(&(
                &b.file,
                b.span.unwrap_or((usize::MAX, 0)),
                &b.path,
                &b.message,
            ))
    });
}

/// Maps dotted field paths of a YAML document to the line and column where they appear.
///
/// serde gives no positions for values, so this walks the document's parse events and records
/// the position of every mapping key (`a.b.c`) and sequence item (`a.b.0`). The walk happens
/// on the first lookup: a file without problems (every file `sluice run` loads, normally)
/// never pays for it; it was a fifth of the start-up time of a run.
#[derive(Debug, Default, Clone)]
pub struct LocationIndex {
    text: String,
    walk: std::sync::OnceLock<Walk>,
}

/// What one walk over a document's parse events found.
#[derive(Debug, Default, Clone)]
struct Walk {
    spans: std::collections::HashMap<String, (usize, usize)>,
    /// Keys seen a second time in one mapping: path and position of the repeat.
    duplicates: Vec<(String, (usize, usize))>,
    /// Where each document of the stream starts.
    documents: Vec<(usize, usize)>,
}

impl LocationIndex {
    /// The index for `text`. A document that does not parse yields what was read so far.
    pub fn build(text: &str) -> LocationIndex {
        LocationIndex {
            text: text.to_string(),
            walk: std::sync::OnceLock::new(),
        }
    }

    fn walk(&self) -> &Walk {
        self.walk.get_or_init(|| {
            let mut recv = IndexBuilder::default();
            let mut parser = yaml_rust2::parser::Parser::new_from_str(&self.text);
            // A syntax error is reported separately by serde_yaml with its own position.
            let _ = parser.load(&mut recv, true);
            recv.walk
        })
    }

    /// The position of `path`, or of its nearest ancestor that has one; the start of the
    /// file (1:1) when the document has nothing at all (an empty or comment-only file).
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let spans = &self.walk().spans;
        let mut p = path;
        loop {
            if let Some(span) = spans.get(p) {
                return Some(*span);
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return Some(spans.get("").copied().unwrap_or((1, 1))),
            }
        }
    }

    /// The first key repeated within one mapping: its dotted path and where the repeat is.
    pub fn first_duplicate(&self) -> Option<(&str, (usize, usize))> {
        self.walk()
            .duplicates
            .first()
            .map(|(p, span)| (p.as_str(), *span))
    }

    /// Where the second document of the stream starts (after a `---`), if there is one.
    pub fn second_document(&self) -> Option<(usize, usize)> {
        self.walk().documents.get(1).copied()
    }
}

enum Frame {
    Map { key: Option<String> },
    Seq { next: usize },
}

#[derive(Default)]
struct IndexBuilder {
    stack: Vec<Frame>,
    path: Vec<String>,
    walk: Walk,
}

impl IndexBuilder {
    /// Called when a value (scalar or collection start) begins: names it within its parent.
    fn enter_value(&mut self, line: usize, col: usize) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => match key.take() {
                Some(k) => {
                    self.path.push(k);
                    true
                }
                None => false,
            },
            Some(Frame::Seq { next }) => {
                let i = *next;
                *next += 1;
                self.path.push(i.to_string());
                if self.walk.documents.len() <= 1 {
                    self.walk.spans.insert(self.path.join("."), (line, col));
                }
                true
            }
            None => {
                // Only the first document counts; later ones are refused anyway.
                if self.walk.documents.len() <= 1 {
                    self.walk.spans.insert(String::new(), (line, col));
                }
                false
            }
        }
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, ev: yaml_rust2::Event, mark: yaml_rust2::scanner::Marker) {
        use yaml_rust2::Event;
        let (line, col) = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key }) = self.stack.last_mut() {
                    if key.is_none() {
                        // This scalar is a key: remember where it stands.
                        let mut p = self.path.join(".");
                        if !p.is_empty() {
                            p.push('.');
                        }
                        p.push_str(&value);
                        if self.walk.documents.len() <= 1 {
                            match self.walk.spans.entry(p) {
                                std::collections::hash_map::Entry::Occupied(e) => {
                                    self.walk.duplicates.push((e.key().clone(), (line, col)));
                                }
                                std::collections::hash_map::Entry::Vacant(e) => {
                                    e.insert((line, col));
                                }
                            }
                        }
                        *key = Some(value);
                        return;
                    }
                }
                if self.enter_value(line, col) {
                    self.path.pop();
                }
            }
            Event::Alias(_) if self.enter_value(line, col) => {
                self.path.pop();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let pushed = self.enter_value(line, col);
                if !pushed && !self.stack.is_empty() {
                    // A collection used as a mapping key: give it a placeholder name.
                    self.path.push("?".into());
                }
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { next: 0 }
                });
            }
            Event::DocumentStart => self.walk.documents.push((line, col)),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                if !self.stack.is_empty() {
                    self.path.pop();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_finds_keys_and_items() {
        let text =
            "id: x\nactions:\n  create:\n    method: POST\n    list:\n      - a\n      - b: 1\n";
        let idx = LocationIndex::build(text);
        assert_eq!(idx.find("id"), Some((1, 1)));
        assert_eq!(idx.find("actions.create.method"), Some((4, 5)));
        assert_eq!(idx.find("actions.create.list.1.b"), Some((7, 9)));
        assert_eq!(idx.find("actions.create.list.1").map(|s| s.0), Some(7));
        // Unknown child falls back to the nearest ancestor.
        assert_eq!(idx.find("actions.create.nope"), Some((3, 3)));
    }

    #[test]
    fn display_has_file_line_col_and_help() {
        let idx = LocationIndex::build("a:\n  b: 1\n");
        let d = Diagnostic::error(Path::new("x.yaml"), "bad b")
            .at(&idx, "a.b")
            .help("fix it");
        assert_eq!(d.to_string(), "x.yaml:2:3: error: bad b\n  help: fix it");
    }
}
