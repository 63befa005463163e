//! The users file's format: a JSON list of entries (`path`, `dst` and the limits), read entry
//! by entry with each field checked, and written whole and atomically.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::{Limits, Row, User, check};
use crate::{Error, Result};

/// A user as the users file keeps it: its limits beside `path` and `dst`.
#[derive(Serialize)]
struct Saved<'a> {
    path: &'a str,
    dst: String,
    #[serde(flatten)]
    limits: &'a Limits,
}

/// Reads a user entry of the users file: `path`, `dst` and its limits, each checked.
pub(super) fn read_entry(entry: &serde_json::Map<String, serde_json::Value>) -> Result<Row> {
    let text = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::usage(format!("an entry of the list has no \"{k}\" string")))
    };
    let (path, dst) = (text("path")?, text("dst")?);
    let hp = check(path, dst)?;
    let limits = Limits::from_entry(entry, &["path", "dst"])
        .map_err(|e| Error::usage(format!("path '{path}': {}", e.report())))?;
    Ok((path.to_string(), hp, limits))
}

/// Writes the table to `file` atomically (`sys::replace_file`), with mode 0600 or the old
/// file's mode. The file holds every user's path, which is that user's credential.
pub(super) fn save(file: &Path, users: &HashMap<String, Arc<User>>) -> Result<()> {
    let ctx = || format!("-users-file {}", file.display());
    let mut list: Vec<Saved> = users
        .values()
        .map(|u| Saved {
            path: &u.path,
            dst: u.dst.to_string(),
            limits: &u.limits,
        })
        .collect();
    list.sort_by(|a, b| a.path.cmp(b.path));
    let json = serde_json::to_vec_pretty(&list).map_err(|e| Error::failed(ctx(), e))?;
    // The mode the operator gave the file itself (without set-id or sticky bits); a symbolic
    // link's target says nothing about who may read what is written here (the link is
    // replaced by the file), so then, as for a new file, 0600.
    let mode = match std::fs::symlink_metadata(file) {
        Ok(m) if m.file_type().is_file() => crate::sys::mode_of(&m).unwrap_or(0o600),
        _ => 0o600,
    };
    crate::sys::replace_file(file, &json, mode).map_err(|e| Error::io(ctx(), e))
}
