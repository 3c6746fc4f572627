//! Problems found in a user's files, placed at `file:line:col`.
//!
//! This module owns two things: `Diagnostic`/`Diagnostics`, the one way the catalog and the
//! recipe compiler report what is wrong (every problem at once, then a count), and
//! `PositionIndex`, which remembers where each node of a YAML document starts so that a
//! problem found after deserialization can still point at its line. It knows nothing of
//! operations or recipes.

use std::collections::{HashMap, HashSet};
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A line and column, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: String,
    pub position: Position,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Position { line, col } = self.position;
        if line == 0 {
            // About the whole file (unreadable, a directory): no place to point at.
            return write!(f, "{}: {}", self.file, self.message);
        }
        write!(f, "{}:{line}:{col}: {}", self.file, self.message)
    }
}

/// Every problem found in one pass, in file and line order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, file: &str, position: Position, message: impl Into<String>) {
        self.0.push(Diagnostic { file: file.to_owned(), position, message: message.into() });
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Sorted by file, line and column, so output is stable whatever the checking order.
    pub fn sorted(mut self) -> Self {
        self.0.sort();
        self.0.dedup();
        self
    }

    /// `Ok(())` when nothing was found.
    pub fn into_result(self) -> Result<(), Diagnostics> {
        if self.0.is_empty() { Ok(()) } else { Err(self.sorted()) }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(f, "{n} problem{}", if n == 1 { "" } else { "s" })
    }
}

impl std::error::Error for Diagnostics {}

/// A step in a path through a YAML document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Renders a path as users write it: `operations[3].inputs[0].type`.
pub fn path_to_string(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Where every node of one YAML document starts. Mapping entries are placed at their key,
/// so an error about a field points at the field's name.
#[derive(Debug, Default)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
    /// Keys that appear twice in one mapping, with the position of the second.
    pub duplicate_keys: Vec<(String, Position)>,
}

impl PositionIndex {
    /// Indexes `source`. A YAML syntax error comes back with its position.
    pub fn build(source: &str) -> Result<Self, (Position, String)> {
        check_characters(source)?;
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(source);
        parser.load(&mut builder, true).map_err(|e| {
            let m = e.marker();
            (marker_position(m), e.info().to_owned())
        })?;
        if let Some(second) = builder.documents.get(1) {
            return Err((*second, "a second YAML document (after `---`); each file holds exactly one".to_owned()));
        }
        Ok(builder.index)
    }

    /// The position of the node at `path`, or of its nearest indexed ancestor.
    pub fn locate(&self, path: &[Segment]) -> Position {
        for len in (0..=path.len()).rev() {
            if let Some(p) = self.positions.get(&path_to_string(&path[..len])) {
                return *p;
            }
        }
        Position { line: 1, col: 1 }
    }

    /// Like `locate`, from a path already rendered as text (`operations[2].inputs[0]`).
    pub fn locate_str(&self, path: &str) -> Position {
        self.locate(&parse_path(path))
    }
}

/// Parses `a.b[2].c` (as `path_to_string` writes it) back into segments.
pub fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            let key = &rest[..open];
            if !key.is_empty() {
                out.push(Segment::Key(key.to_owned()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Segment::Key(rest.to_owned()));
        }
    }
    out
}

/// YAML allows no control characters but tab, line feed and carriage return. The parser
/// would report one by its byte offset; this names it and gives its line and column.
fn check_characters(source: &str) -> Result<(), (Position, String)> {
    let (mut line, mut col) = (1, 1);
    for c in source.chars() {
        if (c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{85}')) || matches!(c, '\u{fffe}' | '\u{ffff}') {
            let name = if c == '\0' { " (NUL)".to_owned() } else { String::new() };
            return Err((
                Position { line, col },
                format!("control character U+{:04X}{name} is not allowed in a YAML file", c as u32),
            ));
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    Ok(())
}

/// Where serde_yaml places an error; one it cannot place (a stream it reads as several
/// documents, say) is put at the file's start rather than at a line 0 that does not exist.
pub fn serde_yaml_position(e: &serde_yaml::Error) -> Position {
    e.location().map(|l| Position { line: l.line(), col: l.column() }).unwrap_or(Position { line: 1, col: 1 })
}

fn marker_position(m: &Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position { line: m.line(), col: m.col() + 1 }
}

/// What the builder is inside of: a mapping (waiting for a key or a value) or a sequence.
#[derive(Debug)]
enum Frame {
    /// `keys` is a set: a mapping of 100,000 keys must not take 100,000² comparisons.
    Mapping {
        keys: HashSet<String>,
        pending_key: Option<String>,
    },
    Sequence {
        next: usize,
    },
}

#[derive(Debug, Default)]
struct IndexBuilder {
    index: PositionIndex,
    /// Where each document starts.
    documents: Vec<Position>,
    stack: Vec<Frame>,
    path: Vec<Segment>,
    /// Paths placed at their mapping key.
    keyed: HashSet<String>,
}

impl IndexBuilder {
    /// Called at the start of every node (scalar, mapping, sequence): works out the node's
    /// path and records it. Returns whether the node was a mapping key.
    fn enter_node(&mut self, mark: Marker, scalar: Option<&str>) -> bool {
        let pos = marker_position(&mark);
        match self.stack.last_mut() {
            Some(Frame::Mapping { keys, pending_key }) => match pending_key.take() {
                None => {
                    // This node is a key. A block mapping's own start marker lands after
                    // its first key, so the mapping is placed at that first key instead.
                    // A mapping that is a key's value stays at its key, where a person
                    // looks for the name an error gives.
                    if keys.is_empty() && !self.keyed.contains(&path_to_string(&self.path)) {
                        self.index.positions.insert(path_to_string(&self.path), pos);
                    }
                    let key = scalar.unwrap_or("<complex key>").to_owned();
                    if keys.contains(&key) {
                        let mut p = self.path.clone();
                        p.push(Segment::Key(key.clone()));
                        self.index.duplicate_keys.push((path_to_string(&p), pos));
                    } else {
                        keys.insert(key.clone());
                        let mut p = self.path.clone();
                        p.push(Segment::Key(key.clone()));
                        self.index.positions.entry(path_to_string(&p)).or_insert(pos);
                        self.keyed.insert(path_to_string(&p));
                    }
                    if let Some(Frame::Mapping { pending_key, .. }) = self.stack.last_mut() {
                        *pending_key = Some(key);
                    }
                    return true;
                }
                Some(key) => {
                    self.path.push(Segment::Key(key));
                }
            },
            Some(Frame::Sequence { next }) => {
                let i = *next;
                *next += 1;
                self.path.push(Segment::Index(i));
                self.index.positions.entry(path_to_string(&self.path)).or_insert(pos);
            }
            None => {
                self.index.positions.entry(String::new()).or_insert(pos);
            }
        }
        false
    }

    /// Called when a value node (not a key) is complete.
    fn leave_node(&mut self) {
        if !self.stack.is_empty() || !self.path.is_empty() {
            self.path.pop();
        }
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) if !self.enter_node(mark, Some(&value)) && !self.stack.is_empty() => {
                self.leave_node();
            }
            Event::Alias(_) if !self.enter_node(mark, None) && !self.stack.is_empty() => {
                self.leave_node();
            }
            Event::MappingStart(..) => {
                self.enter_node(mark, None);
                self.stack.push(Frame::Mapping { keys: HashSet::new(), pending_key: None });
            }
            Event::SequenceStart(..) => {
                self.enter_node(mark, None);
                self.stack.push(Frame::Sequence { next: 0 });
            }
            Event::DocumentStart => self.documents.push(marker_position(&mark)),
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                if !self.stack.is_empty() {
                    self.leave_node();
                }
            }
            _ => {}
        }
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)`, or nothing.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
spec: x.json
operations:
  - key: a
    inputs:
      - name: id
        type: string
  - key: b
    key: c
";

    #[test]
    fn places_nested_keys_and_items() {
        let index = PositionIndex::build(DOC).unwrap();
        assert_eq!(index.locate_str("spec"), Position { line: 1, col: 1 });
        assert_eq!(index.locate_str("operations[0]"), Position { line: 3, col: 5 });
        assert_eq!(index.locate_str("operations[0].inputs[0].type"), Position { line: 6, col: 9 });
        assert_eq!(index.locate_str("operations[1].key"), Position { line: 7, col: 5 });
        // An unknown child falls back to its parent.
        assert_eq!(index.locate_str("operations[0].inputs[0].nope"), Position { line: 5, col: 9 });
    }

    #[test]
    fn reports_duplicate_keys() {
        let index = PositionIndex::build(DOC).unwrap();
        assert_eq!(index.duplicate_keys, vec![("operations[1].key".to_owned(), Position { line: 8, col: 5 })]);
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let (pos, msg) = PositionIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(pos.line >= 1, "{msg}");
    }

    #[test]
    fn suggests_close_words() {
        assert_eq!(did_you_mean("emial", ["email", "phone"]), Some("email"));
        assert_eq!(did_you_mean("zzz", ["email", "phone"]), None);
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    #[test]
    fn control_characters_and_second_documents_are_placed() {
        let (pos, msg) = PositionIndex::build("a: 1\nb: x\0y\n").unwrap_err();
        assert_eq!(pos, Position { line: 2, col: 5 });
        assert!(msg.contains("U+0000 (NUL)"), "{msg}");
        let (pos, msg) = PositionIndex::build("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!(pos.line, 2, "{msg}");
        assert!(msg.contains("second YAML document"), "{msg}");
        assert!(PositionIndex::build("---\na: 1\n").is_ok(), "one explicit document is fine");
    }

    #[test]
    fn a_wide_mapping_is_indexed_whole() {
        // 200,000 keys (quadratic duplicate detection made this take minutes; the speed
        // figure is in `cargo bench --bench validate`).
        let doc: String = (0..200_000).map(|i| format!("k{i}: v\n")).collect();
        let index = PositionIndex::build(&doc).unwrap();
        assert!(index.duplicate_keys.is_empty());
        assert_eq!(index.locate_str("k199999"), Position { line: 200_000, col: 1 });
    }
}
