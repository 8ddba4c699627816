//! The stage-version table (`stages/stage-versions.txt`): its text format, reading and writing
//! it, and the digest of a source file as the table records it.
//!
//! The format, one block per kind, kinds and files sorted:
//!
//! ```text
//! uki 1
//!     stages/src/uki/assemble.rs 5f0c…(64 hex digits)
//! ```
//!
//! Lines starting with `#` and blank lines are ignored. Paths are relative to the workspace.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::kinds::StageKind;

/// The table's header, written above the entries.
const HEADER: &str = "\
# Every stage kind's version and the blake3 of the source files that implement it, checked by
# the `stage_versions` test of kiln-stages (stages/src/stage_versions/). Do not edit by hand:
# when a stage's source changes, bump its version if its output can differ, then run
#     KILN_UPDATE_STAGE_VERSIONS=1 cargo test -p kiln-stages --lib stage_versions
# Files are hashed as their whitespace-separated words: re-indenting and re-wrapping do not
# count, any other change (a comment too) does.
";

/// What the table records of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) version: u32,
    /// Workspace-relative path -> digest (hex).
    pub(crate) files: BTreeMap<String, String>,
}

/// The whole table: kind -> entry.
pub(crate) type Table = BTreeMap<String, Entry>;

/// Why the table or a source file cannot be read.
#[derive(Debug, Error)]
pub(crate) enum TableError {
    #[error("Cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("Line {line} of `{}` is not `KIND VERSION` or an indented `PATH DIGEST`: `{text}`", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },

    #[error("Source `{}` of stage kind `{kind}` does not exist", path.display())]
    MissingSource { kind: String, path: PathBuf },
}

/// The workspace directory (the parent of `stages/`).
pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the stages crate lives in the workspace")
        .to_path_buf()
}

/// The table's path.
pub(crate) fn table_path() -> PathBuf {
    workspace().join("stages/stage-versions.txt")
}

/// Read the table at `path`; a missing file is an empty table.
pub(crate) fn read(path: &Path) -> Result<Table, TableError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Table::new()),
        Err(source) => {
            return Err(TableError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut table = Table::new();
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let syntax = || TableError::Syntax {
            path: path.to_path_buf(),
            line: index + 1,
            text: line.to_string(),
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(first), Some(second), None) = (words.next(), words.next(), words.next()) else {
            return Err(syntax());
        };
        if line.starts_with(char::is_whitespace) {
            let kind = current.as_ref().ok_or_else(syntax)?;
            let entry = table.get_mut(kind).ok_or_else(syntax)?;
            entry.files.insert(first.to_string(), second.to_string());
        } else {
            let version = second.parse().map_err(|_| syntax())?;
            let entry = Entry {
                version,
                files: BTreeMap::new(),
            };
            table.insert(first.to_string(), entry);
            current = Some(first.to_string());
        }
    }
    Ok(table)
}

/// The table as text.
pub(crate) fn render(table: &Table) -> String {
    let mut text = HEADER.to_string();
    for (kind, entry) in table {
        let _ = write!(text, "\n{kind} {}\n", entry.version);
        for (path, digest) in &entry.files {
            let _ = writeln!(text, "    {path} {digest}");
        }
    }
    text
}

/// What the table should say of `kind`, from the files on disk.
pub(crate) fn entry_of(kind: &StageKind) -> Result<Entry, TableError> {
    let workspace = workspace();
    let mut files = BTreeMap::new();
    for path in source_files(kind)? {
        let text =
            std::fs::read_to_string(workspace.join(&path)).map_err(|source| TableError::Read {
                path: path.clone(),
                source,
            })?;
        let name = path.to_string_lossy().into_owned();
        files.insert(name, digest(&text));
    }
    Ok(Entry {
        version: kind.version,
        files,
    })
}

/// A source as the table names it: relative to `stages/src`, or, for code of another crate
/// that a stage's output depends on (`../../recipe/src/fnmatch.rs`), to the workspace.
fn workspace_relative(source: &str) -> PathBuf {
    match source.strip_prefix("../../") {
        Some(outside) => PathBuf::from(outside),
        None => Path::new("stages/src").join(source),
    }
}

/// The workspace-relative paths of `kind`'s sources: its files, and the `.rs` files below its
/// directories.
fn source_files(kind: &StageKind) -> Result<Vec<PathBuf>, TableError> {
    let workspace = workspace();
    let mut paths = Vec::new();
    for source in kind.sources {
        let relative = workspace_relative(source);
        let absolute = workspace.join(&relative);
        if !absolute.exists() {
            return Err(TableError::MissingSource {
                kind: kind.kind.to_string(),
                path: relative,
            });
        }
        if source.ends_with('/') {
            for entry in walkdir::WalkDir::new(&absolute).sort_by_file_name() {
                let entry = entry.map_err(|error| TableError::Read {
                    path: relative.clone(),
                    source: error.into(),
                })?;
                let path = entry.path();
                if entry.file_type().is_file() && path.extension().is_some_and(|ext| ext == "rs") {
                    let path = path.strip_prefix(&workspace).unwrap_or(path);
                    paths.push(path.to_path_buf());
                }
            }
        } else {
            paths.push(relative);
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The blake3 (hex) of `text`'s whitespace-separated words, each followed by one space: the
/// same for two texts that differ only in whitespace between words (indentation, wrapping,
/// line endings).
pub(crate) fn digest(text: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for word in text.split_whitespace() {
        hasher.update(word.as_bytes());
        hasher.update(b" ");
    }
    hasher.finalize().to_hex().to_string()
}
