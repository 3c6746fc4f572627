//! Reading the user's files (ghlflow.yaml, recipes, operations, `--input @file`) safely.
//!
//! Only regular files are read, and at most `limits::MAX_FILE_BYTES` of them: a recipe that
//! is a link to /dev/zero, a FIFO named `*.yaml` or a directory named `*.yaml` is refused
//! with a message instead of filling memory or blocking forever. Text must be UTF-8; the
//! first bad byte is placed at its line and column. This module knows nothing of YAML.

use std::io::Read as _;
use std::path::Path;

use crate::diagnostic::Position;
use crate::limits::MAX_FILE_BYTES;

/// Why a file could not be read, and where (line 0: the whole file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub position: Position,
    pub message: String,
}

impl FileError {
    fn whole(message: impl Into<String>) -> Self {
        FileError { position: Position { line: 0, col: 0 }, message: message.into() }
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads `path` as UTF-8 text, refusing anything that is not a regular file of a sane size.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    let meta = std::fs::metadata(path).map_err(|e| FileError::whole(io_reason(&e)))?;
    check_kind(&meta)?;
    let file = std::fs::File::open(path).map_err(|e| FileError::whole(io_reason(&e)))?;
    // Checked again on the open file: the path may have been swapped since.
    let meta = file.metadata().map_err(|e| FileError::whole(io_reason(&e)))?;
    check_kind(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_FILE_BYTES) as usize);
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| FileError::whole(io_reason(&e)))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    text_from_bytes(bytes)
}

/// UTF-8 text from bytes, or the line and column of the first byte that is not.
pub fn text_from_bytes(bytes: Vec<u8>) -> Result<String, FileError> {
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let col = 1 + String::from_utf8_lossy(&good[line_start..]).chars().count();
        let byte = e.as_bytes().get(good.len()).copied().unwrap_or_default();
        FileError {
            position: Position { line, col },
            message: format!("the file is not UTF-8 text: byte 0x{byte:02x} at line {line}, column {col}"),
        }
    })
}

fn check_kind(meta: &std::fs::Metadata) -> Result<(), FileError> {
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(FileError::whole("is a directory, not a file"));
    }
    if !ft.is_file() {
        return Err(FileError::whole("is not a regular file (a device, FIFO or socket); only regular files are read"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(())
}

fn too_large() -> FileError {
    FileError::whole(format!("the file is larger than {} MiB; ghlflow reads no file that large", MAX_FILE_BYTES >> 20))
}

/// An IO error in words, naming symlink loops (which the OS calls "too many levels").
fn io_reason(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(40) && cfg!(target_os = "linux") {
        return "cannot read: a symbolic link loop (ELOOP)".to_owned();
    }
    format!("cannot read: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_placed_at_its_byte() {
        let err = text_from_bytes(b"a: 1\nbb: \xff\n".to_vec()).unwrap_err();
        assert_eq!(err.position, Position { line: 2, col: 5 });
        assert!(err.message.contains("byte 0xff at line 2, column 5"), "{}", err.message);
        // Columns count characters: the bad byte after `é: ` is column 4.
        let err = text_from_bytes(b"\xc3\xa9: \xc3".to_vec()).unwrap_err();
        assert_eq!(err.position, Position { line: 1, col: 4 });
    }

    #[cfg(unix)]
    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("dir.yaml");
        std::fs::create_dir(&d).unwrap();
        assert!(read_text(&d).unwrap_err().message.contains("directory"));
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_text(&zero).unwrap_err().message.contains("not a regular file"));
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(read_text(&a).unwrap_err().message.contains("symbolic link loop"), "{}", read_text(&a).unwrap_err());
        let fifo = dir.path().join("fifo.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
        if made {
            assert!(read_text(&fifo).unwrap_err().message.contains("not a regular file"));
        }
        let big = dir.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(read_text(&big).unwrap_err().message.contains("larger than 10 MiB"));
        let ok = dir.path().join("ok.yaml");
        std::fs::write(&ok, "a: 1\n").unwrap();
        assert_eq!(read_text(&ok).unwrap(), "a: 1\n");
    }
}
