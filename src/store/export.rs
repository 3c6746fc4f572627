//! The state export file (`ghlflow state export` and `import`): its format, a streaming
//! writer over any `StateStore`, and a streaming reader that checks a file whole before an
//! import writes any of it.
//!
//! The file is JSON Lines. Line 1 is a header naming the format's version, when and from
//! which backend it was written and by which ghlflow; each following line is one
//! `StateRecord`; the last line is a trailer with the number of records, so a file cut
//! short (a full disk, an interrupted copy) is told from a complete one. A file written by
//! a newer format is refused rather than half-read. This module owns the format only: it
//! does not open stores or files (the CLI does) and it never holds the whole file, since a
//! long history can outgrow memory.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::{RunId, StateRecord, StateStore, StoreError};

/// The format this ghlflow writes, and the newest it reads.
pub const VERSION: u32 = 1;

/// Runs read from the journal per `runs_after` call while writing.
const RUN_PAGE: usize = 500;

/// Records handed to `import_state` per call (each call is one atomic write).
pub const IMPORT_BATCH: usize = 1000;

/// The backend a file was exported from (informative: any backend imports any file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sled,
    Postgres,
}

impl Backend {
    /// The backend `state:` names.
    pub fn of(location: &crate::config::StateLocation) -> Backend {
        match location {
            crate::config::StateLocation::Folder(_) => Backend::Sled,
            crate::config::StateLocation::Postgres(_) => Backend::Postgres,
        }
    }
}

/// Line 1 of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub ghlflow_state_export: u32,
    /// RFC 3339.
    pub exported_at: String,
    pub from: Backend,
    /// The version of the ghlflow that wrote it.
    pub ghlflow: String,
}

/// The last line of an export: `{"end": {"records": N}}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Trailer {
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    records: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{file}: not a ghlflow state export (line 1 is not its header: {reason})")]
    NotAnExport { file: String, reason: String },
    #[error(
        "{file}: written by a newer ghlflow (state export format {found}; this one reads up to {VERSION}): \
         import it with that ghlflow or a later one"
    )]
    Newer { file: String, found: u64 },
    #[error("{file}:{line}:{column}: {reason}")]
    Malformed { file: String, line: u64, column: usize, reason: String },
    #[error("{file}: the file is truncated: {reason}; export the state again")]
    Truncated { file: String, reason: String },
}

/// How many records of each kind an export or import held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(BTreeMap<&'static str, u64>);

/// Each kind's name in the file (its `kind` tag) and in a summary (one, several), in
/// summary order.
const KINDS: [(&str, &str, &str); 9] = [
    ("tokens", "connection's tokens", "connections' tokens"),
    ("trigger", "trigger state", "trigger states"),
    ("seen", "seen mark", "seen marks"),
    ("present", "present item", "present items"),
    ("id", "remembered id", "remembered ids"),
    ("paused", "paused recipe", "paused recipes"),
    ("subscriptions", "subscription list", "subscription lists"),
    ("delivery", "delivery id", "delivery ids"),
    ("run", "run", "runs"),
];

/// A record's `kind` tag.
pub fn kind_of(record: &StateRecord) -> &'static str {
    match record {
        StateRecord::Tokens { .. } => "tokens",
        StateRecord::Trigger { .. } => "trigger",
        StateRecord::Seen { .. } => "seen",
        StateRecord::Present { .. } => "present",
        StateRecord::Id { .. } => "id",
        StateRecord::Paused { .. } => "paused",
        StateRecord::Subscriptions { .. } => "subscriptions",
        StateRecord::Delivery { .. } => "delivery",
        StateRecord::Run { .. } => "run",
    }
}

impl Counts {
    pub fn add(&mut self, record: &StateRecord) {
        *self.0.entry(kind_of(record)).or_default() += 1;
    }

    /// The records of one kind (by its `kind` tag).
    pub fn of(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    /// Leaves a kind out; returns how many it had.
    pub fn remove(&mut self, kind: &str) -> u64 {
        self.0.remove(kind).unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// `12 runs, 3 trigger states, ...` (kinds with none left out), or `nothing`.
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = KINDS
            .iter()
            .filter(|(kind, _, _)| self.of(kind) > 0)
            .map(|(kind, one, many)| match self.of(kind) {
                1 => format!("1 {one}"),
                n => format!("{n} {many}"),
            })
            .collect();
        if parts.is_empty() { f.write_str("nothing") } else { f.write_str(&parts.join(", ")) }
    }
}

/// Writes `store`'s whole state to `out` (named `file` in errors): the header, every record
/// of `export_state`, the journal's runs page by page, and the trailer. Returns the counts.
pub async fn write<S: StateStore>(
    store: &S,
    from: Backend,
    file: &str,
    out: &mut impl Write,
) -> Result<Counts, ExportError> {
    let io = |source| ExportError::Io { file: file.to_owned(), source };
    let header = Header {
        ghlflow_state_export: VERSION,
        exported_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        from,
        ghlflow: env!("CARGO_PKG_VERSION").to_owned(),
    };
    write_line(out, &header).map_err(io)?;
    let mut counts = Counts::default();
    for record in store.export_state().await? {
        write_line(out, &record).map_err(io)?;
        counts.add(&record);
    }
    let mut after: Option<RunId> = None;
    loop {
        let page = store.runs_after(after.as_ref(), RUN_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for run in page {
            let record = StateRecord::Run { run };
            write_line(out, &record).map_err(io)?;
            counts.add(&record);
        }
    }
    write_line(out, &Trailer { end: End { records: counts.total() } }).map_err(io)?;
    out.flush().map_err(io)?;
    Ok(counts)
}

fn write_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Reads an export line by line: the header first (`open`), then records in batches
/// (`next_batch`), checking the trailer at the end.
pub struct Reader<R> {
    input: R,
    file: String,
    header: Header,
    /// The number of the last line read.
    line: u64,
    records: u64,
    counts: Counts,
    ended: bool,
    buf: Vec<u8>,
}

/// One line as read: its text, and whether a newline ended it (the last line of a file cut
/// mid-write has none).
enum Line {
    Text { text: String, complete: bool },
    Eof,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn open(input: R, file: &str) -> Result<Reader<R>, ExportError> {
        let mut reader = Reader {
            input,
            file: file.to_owned(),
            header: Header {
                ghlflow_state_export: 0,
                exported_at: String::new(),
                from: Backend::Sled,
                ghlflow: String::new(),
            },
            line: 0,
            records: 0,
            counts: Counts::default(),
            ended: false,
            buf: Vec::new(),
        };
        let not_export = |reason: String| ExportError::NotAnExport { file: file.to_owned(), reason };
        let text = match reader.read_line()? {
            Line::Eof => return Err(not_export("the file is empty".into())),
            Line::Text { text, .. } => text,
        };
        // The version first, alone: a newer format may change anything else in the header.
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| not_export(e.to_string()))?;
        let Some(version) = value.get("ghlflow_state_export") else {
            return Err(not_export("it has no `ghlflow_state_export`".into()));
        };
        match version.as_u64() {
            Some(v) if v > u64::from(VERSION) => return Err(ExportError::Newer { file: file.to_owned(), found: v }),
            Some(v) if v >= 1 => {}
            _ => return Err(not_export(format!("`ghlflow_state_export` is {version}, not a format version"))),
        }
        reader.header = serde_json::from_value(value).map_err(|e| ExportError::Malformed {
            file: file.to_owned(),
            line: 1,
            column: 1,
            reason: format!("header: {e}"),
        })?;
        Ok(reader)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The records read so far, per kind.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Up to `max` records; `None` once the trailer was read and checked. Every error names
    /// the line.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Vec<StateRecord>>, ExportError> {
        if self.ended {
            return Ok(None);
        }
        let mut batch = Vec::new();
        while batch.len() < max.max(1) {
            let (text, complete) = match self.read_line()? {
                Line::Text { text, complete } => (text, complete),
                Line::Eof => {
                    return Err(self.truncated(format!(
                        "it ends after line {} without the `end` line ({} records read)",
                        self.line, self.records
                    )));
                }
            };
            match serde_json::from_str::<StateRecord>(&text) {
                Ok(record) => {
                    self.records += 1;
                    self.counts.add(&record);
                    batch.push(record);
                }
                Err(record_error) => match serde_json::from_str::<Trailer>(&text) {
                    Ok(trailer) => {
                        self.finish(trailer)?;
                        break;
                    }
                    // A last line cut mid-write.
                    Err(_) if !complete && record_error.is_eof() => {
                        return Err(self.truncated(format!("line {} stops mid-record", self.line)));
                    }
                    Err(_) => return Err(self.malformed(&record_error)),
                },
            }
        }
        if batch.is_empty() && self.ended { Ok(None) } else { Ok(Some(batch)) }
    }

    /// Reads the whole rest of the file, checking it, without keeping it: the counts.
    pub fn check_all(mut self) -> Result<Counts, ExportError> {
        while self.next_batch(IMPORT_BATCH)?.is_some() {}
        Ok(self.counts)
    }

    fn finish(&mut self, trailer: Trailer) -> Result<(), ExportError> {
        if trailer.end.records != self.records {
            return Err(self.truncated(format!(
                "its `end` line (line {}) counts {} records, but {} precede it",
                self.line, trailer.end.records, self.records
            )));
        }
        // Nothing may follow the trailer (a file appended to, or two exports joined).
        match self.read_line()? {
            Line::Eof => {
                self.ended = true;
                Ok(())
            }
            Line::Text { .. } => Err(ExportError::Malformed {
                file: self.file.clone(),
                line: self.line,
                column: 1,
                reason: "a line after the `end` line".into(),
            }),
        }
    }

    fn read_line(&mut self) -> Result<Line, ExportError> {
        self.buf.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| ExportError::Io { file: self.file.clone(), source })?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        self.line += 1;
        let complete = self.buf.last() == Some(&b'\n');
        if complete {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        }
        let text = String::from_utf8(std::mem::take(&mut self.buf)).map_err(|e| ExportError::Malformed {
            file: self.file.clone(),
            line: self.line,
            column: e.utf8_error().valid_up_to() + 1,
            reason: "not UTF-8 text".into(),
        })?;
        Ok(Line::Text { text, complete })
    }

    fn malformed(&self, e: &serde_json::Error) -> ExportError {
        // serde_json ends its message with the position; the file's line is given instead.
        let text = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let reason = text.strip_suffix(&suffix).unwrap_or(&text).to_owned();
        ExportError::Malformed {
            file: self.file.clone(),
            line: self.line,
            column: e.column(),
            reason: format!("not a state record: {reason}"),
        }
    }

    fn truncated(&self, reason: String) -> ExportError {
        ExportError::Truncated { file: self.file.clone(), reason }
    }
}

/// Imports the records `reader` has left into `store`, `IMPORT_BATCH` per atomic write.
/// Check the file first (`check_all` over another reader): a bad line found here stops the
/// import with the batches before it written.
pub async fn import<S: StateStore, R: BufRead>(store: &S, mut reader: Reader<R>) -> Result<Counts, ExportError> {
    while let Some(batch) = reader.next_batch(IMPORT_BATCH)? {
        if !batch.is_empty() {
            store.import_state(&batch).await?;
        }
    }
    store.flush_async().await?;
    Ok(reader.counts)
}

/// What a store already holds that an import would mix with: every record but the journal,
/// and whether it has at least one run.
pub async fn held<S: StateStore>(store: &S) -> Result<Counts, ExportError> {
    let mut counts = Counts::default();
    for record in store.export_state().await? {
        counts.add(&record);
    }
    if let Some(run) = store.runs_after(None, 1).await?.pop() {
        counts.add(&StateRecord::Run { run });
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Counts, ExportError> {
        Reader::open(text.as_bytes(), "state.jsonl")?.check_all()
    }

    const HEADER: &str =
        r#"{"ghlflow_state_export":1,"exported_at":"2026-11-30T10:00:00.000Z","from":"sled","ghlflow":"0.1.0"}"#;

    #[test]
    fn a_complete_file_reads_and_counts() {
        let text = format!(
            "{HEADER}\n{}\n{}\n{}\n",
            r#"{"kind":"id","key":"party:1","id":"c1"}"#,
            r#"{"kind":"paused","recipe":"r","since":"2026-11-30T10:00:00Z"}"#,
            r#"{"end":{"records":2}}"#
        );
        let counts = read(&text).unwrap();
        assert_eq!((counts.of("id"), counts.of("paused"), counts.total()), (1, 1, 2));
        assert_eq!(counts.to_string(), "1 remembered id, 1 paused recipe");
    }

    #[test]
    fn hostile_files_are_refused_with_their_line() {
        let id = r#"{"kind":"id","key":"party:1","id":"c1"}"#;
        let cases = [
            (String::new(), "not a ghlflow state export"),
            ("{\"hello\":1}\n".to_owned(), "no `ghlflow_state_export`"),
            (
                r#"{"ghlflow_state_export":2,"future":true}"#.to_owned() + "\n",
                "written by a newer ghlflow (state export format 2",
            ),
            (format!("{HEADER}\n{id}\n"), "truncated: it ends after line 2 without the `end` line"),
            (format!("{HEADER}\n{id}\n{{\"kind\":\"id\",\"ke"), "truncated: line 3 stops mid-record"),
            (format!("{HEADER}\n{id}\n{{\"end\":{{\"records\":5}}}}\n"), "counts 5 records, but 1 precede it"),
            (
                format!("{HEADER}\n{id}\nnot json\n{{\"end\":{{\"records\":2}}}}\n"),
                "state.jsonl:3:2: not a state record",
            ),
            (format!("{HEADER}\n{{\"kind\":\"bogus\"}}\n{{\"end\":{{\"records\":1}}}}\n"), "state.jsonl:2:"),
            (
                format!("{HEADER}\n{{\"end\":{{\"records\":0}}}}\n{id}\n"),
                "state.jsonl:3:1: a line after the `end` line",
            ),
        ];
        for (text, want) in cases {
            let err = read(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}\ngave: {err}\nwanted: {want}");
        }
        let err = read(&format!("{HEADER}\n{{\"kind\":\"bogus\"}}\n")).unwrap_err().to_string();
        assert!(err.contains("unknown variant `bogus`"), "{err}");
    }

    #[tokio::test]
    async fn the_writer_pages_through_runs_and_the_reader_reads_them_back() {
        let store = crate::store::SledStore::temporary().unwrap();
        let runs: Vec<_> = (0..1203u32)
            .map(|i| {
                crate::store::RunRecord::new(
                    RunId::new(1_764_000_000_000, i),
                    "r",
                    crate::store::RunStatus::Succeeded,
                    &format!("item-{i}"),
                    serde_json::json!({"i": i}),
                    "2026-11-30T10:00:00.000Z".into(),
                )
            })
            .collect();
        store.create_runs(&runs).await.unwrap();
        let mut out = Vec::new();
        let counts = write(&store, Backend::Sled, "-", &mut out).await.unwrap();
        assert_eq!(counts.of("run"), 1203);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1 + 1203 + 1);
        let mut reader = Reader::open(text.as_bytes(), "-").unwrap();
        assert_eq!(reader.header().from, Backend::Sled);
        let mut read = Vec::new();
        while let Some(batch) = reader.next_batch(IMPORT_BATCH).unwrap() {
            assert!(batch.len() <= IMPORT_BATCH);
            for record in batch {
                if let StateRecord::Run { run } = record {
                    read.push(run);
                }
            }
        }
        assert_eq!(read, runs, "every run, in id order");
    }
}
