//! The YAML front-end of the three compilers (the catalog, recipes, the configuration).
//!
//! A file's text becomes a `Document`: the parsed value and an index from paths to
//! positions. Every failure on the way is a diagnostic at the file's line and column: YAML
//! syntax, a duplicate key, a key the schema does not know, a field of the wrong type. What
//! each compiler checks after that is its own.

use serde::de::DeserializeOwned;

use crate::diagnostic::{Diagnostics, PositionIndex, Segment, parse_path, path_to_string, serde_yaml_position};

/// One parsed YAML file.
#[derive(Debug)]
pub struct Document {
    /// The file as messages name it.
    pub file: String,
    pub index: PositionIndex,
    pub value: serde_yaml::Value,
}

/// Parses `text`, read from `file`. A syntax error or a duplicate key is reported (every
/// duplicate at once) and nothing is returned.
pub fn parse(file: &str, text: &str) -> Result<Document, Diagnostics> {
    let mut diags = Diagnostics::default();
    let index = match PositionIndex::build(text) {
        Ok(index) => index,
        Err((pos, msg)) => {
            let line = text.lines().nth(pos.line.saturating_sub(1)).unwrap_or_default();
            // The one syntax slip users make most: `{ token: ${VAR} }` in a flow mapping.
            let hint = if line.contains("${") && line.contains('{') {
                "; inside `{ ... }` a `${VAR}` value must be quoted: `token: '${GHL_TOKEN}'`"
            } else {
                ""
            };
            diags.push(file, pos, format!("invalid YAML: {msg}{hint}"));
            return Err(diags);
        }
    };
    for (path, pos) in &index.duplicate_keys {
        diags.push(file, *pos, format!("{path}: duplicate key"));
    }
    diags.into_result()?;
    match serde_yaml::from_str(text) {
        Ok(value) => Ok(Document { file: file.to_owned(), index, value }),
        Err(e) => {
            let mut diags = Diagnostics::default();
            diags.push(file, serde_yaml_position(&e), format!("invalid YAML: {e}"));
            Err(diags)
        }
    }
}

/// Reports every key `schema` (a schemars JSON Schema) does not allow in `value` and sets
/// it aside, so the rest of the file is still checked.
pub fn strip_unknown(
    value: &mut serde_yaml::Value,
    schema: &serde_json::Value,
    file: &str,
    index: &PositionIndex,
    diags: &mut Diagnostics,
) {
    for u in crate::unknown_keys::strip_unknown(value, schema) {
        diags.push(file, index.locate_str(&u.path), format!("{}: {}", u.path, u.message));
    }
}

/// Deserializes `value`, found at `prefix` in the file `index` describes. A failure is
/// reported at the field it is about, named by its whole path.
pub fn deserialize<T: DeserializeOwned>(
    value: serde_yaml::Value,
    file: &str,
    index: &PositionIndex,
    prefix: &[Segment],
    diags: &mut Diagnostics,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let rel = e.path().to_string();
            let mut full = prefix.to_vec();
            if rel != "." {
                full.extend(parse_path(&rel));
            }
            let shown = path_to_string(&full);
            let message = e.into_inner().to_string();
            let message = if shown.is_empty() { message } else { format!("{shown}: {message}") };
            diags.push(file, index.locate(&full), message);
            None
        }
    }
}
