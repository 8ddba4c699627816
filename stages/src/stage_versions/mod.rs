//! The guard of stage versions: a stage's version is part of its cache key, so a change to
//! what a stage produces must come with a bump of `Stage::version`, or old cached outputs are
//! served for new code. This module checks that nobody forgot.
//!
//! `stages/stage-versions.txt` records, for every stage kind, its version and the blake3 of
//! each source file that implements it ([`kinds::stage_kinds`] says which: the stage's own
//! module file or directory; shared helpers such as `host/`, `config/mod.rs`, `error.rs`, the
//! planning in `pipeline.rs` and `formats/{cpio,uki}.rs` are not counted). The test
//! `stage_versions::tests::table_matches_sources` fails when
//!
//! - a kind's sources changed but its version in the table did not (bump the version if the
//!   output can differ, then update the table),
//! - a kind's version in the code is not the table's (the table is stale),
//! - a kind is missing from the table, or the table lists a kind no stage has,
//! - a type implements `Stage` or `TreeEdit` in this crate but [`kinds::stage_kinds`] does not
//!   list it, or lists it with sources that do not hold its implementation.
//!
//! `KILN_UPDATE_STAGE_VERSIONS=1 cargo test -p kiln-stages --lib stage_versions` rewrites the
//! table from the code and the files on disk. Files are hashed as their whitespace-separated
//! words, so re-indenting and re-wrapping (most of what `cargo fmt` does) change nothing;
//! changes of comments, trailing commas, import order or whitespace inside a string literal
//! do count, and need the table updated (without a bump when the output cannot differ).

mod kinds;
mod table;

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use kinds::StageKind;
use table::{Entry, Table, TableError};

/// The environment variable that makes the test rewrite the table.
const UPDATE_VARIABLE: &str = "KILN_UPDATE_STAGE_VERSIONS";

/// The command that rewrites the table.
const UPDATE_COMMAND: &str =
    "KILN_UPDATE_STAGE_VERSIONS=1 cargo test -p kiln-stages --lib stage_versions";

/// How one source file of a kind differs from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileChange {
    Changed(String),
    Added(String),
    Removed(String),
}

impl fmt::Display for FileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileChange::Changed(path) => write!(f, "{path}"),
            FileChange::Added(path) => write!(f, "{path} (new)"),
            FileChange::Removed(path) => write!(f, "{path} (gone)"),
        }
    }
}

/// Where the code and the table disagree.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum Drift {
    #[error(
        "`{kind}` changed ({}) but its version is still {version}: if its output can differ, bump `{type_name}::version()`; then update the table with `{UPDATE_COMMAND}`",
        list(files)
    )]
    Changed {
        kind: String,
        type_name: String,
        version: u32,
        files: Vec<FileChange>,
    },

    #[error(
        "`{kind}` is version {code} in the code (`{type_name}::version()`) but {table} in stages/stage-versions.txt: update the table with `{UPDATE_COMMAND}`"
    )]
    Stale {
        kind: String,
        type_name: String,
        code: u32,
        table: u32,
    },

    #[error(
        "`{kind}` (`{type_name}`) is not in stages/stage-versions.txt: add it with `{UPDATE_COMMAND}`"
    )]
    Unlisted { kind: String, type_name: String },

    #[error(
        "stages/stage-versions.txt lists `{kind}`, which no stage kind has: drop it with `{UPDATE_COMMAND}`"
    )]
    Gone { kind: String },

    #[error(
        "`{type_name}` implements `{trait_name}` in {file} but `stage_kinds()` (stages/src/stage_versions/kinds.rs) does not list it: add it with its sources, then run `{UPDATE_COMMAND}`"
    )]
    Unregistered {
        type_name: String,
        trait_name: String,
        file: String,
    },

    #[error(
        "`{type_name}` is implemented in {file}, which is not among the sources of `{kind}` in `stage_kinds()` (stages/src/stage_versions/kinds.rs): add it, then run `{UPDATE_COMMAND}`"
    )]
    Uncovered {
        kind: String,
        type_name: String,
        file: String,
    },
}

impl Drift {
    /// Whether rewriting the table settles it.
    fn fixed_by_update(&self) -> bool {
        !matches!(self, Drift::Unregistered { .. } | Drift::Uncovered { .. })
    }
}

fn list(files: &[FileChange]) -> String {
    files
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The kinds' entries as the code and the files on disk have them.
fn current(kinds: &[StageKind]) -> Result<Table, TableError> {
    kinds
        .iter()
        .map(|kind| Ok((kind.kind.to_string(), table::entry_of(kind)?)))
        .collect()
}

/// Compare the table with the code.
fn compare(kinds: &[StageKind], current: &Table, recorded: &Table) -> Vec<Drift> {
    let mut drifts = Vec::new();
    for kind in kinds {
        let now = &current[kind.kind];
        let Some(before) = recorded.get(kind.kind) else {
            drifts.push(Drift::Unlisted {
                kind: kind.kind.to_string(),
                type_name: kind.type_name.to_string(),
            });
            continue;
        };
        if now.version != before.version {
            drifts.push(Drift::Stale {
                kind: kind.kind.to_string(),
                type_name: kind.type_name.to_string(),
                code: now.version,
                table: before.version,
            });
            continue;
        }
        let files = file_changes(before, now);
        if !files.is_empty() {
            drifts.push(Drift::Changed {
                kind: kind.kind.to_string(),
                type_name: kind.type_name.to_string(),
                version: now.version,
                files,
            });
        }
    }
    for kind in recorded.keys() {
        if !current.contains_key(kind) {
            drifts.push(Drift::Gone { kind: kind.clone() });
        }
    }
    drifts
}

fn file_changes(before: &Entry, now: &Entry) -> Vec<FileChange> {
    let mut changes = Vec::new();
    for (path, digest) in &now.files {
        match before.files.get(path) {
            None => changes.push(FileChange::Added(path.clone())),
            Some(old) if old != digest => changes.push(FileChange::Changed(path.clone())),
            Some(_) => {}
        }
    }
    for path in before.files.keys() {
        if !now.files.contains_key(path) {
            changes.push(FileChange::Removed(path.clone()));
        }
    }
    changes
}

/// Every `impl Stage for T` and `impl TreeEdit for T` of the crate's sources: type -> (trait,
/// file). Generic implementations (`EditStage<E>`) are left out: their kinds are the
/// `TreeEdit`s'.
fn implementations() -> Result<BTreeMap<String, (String, String)>, TableError> {
    let workspace = table::workspace();
    let mut found = BTreeMap::new();
    let source = workspace.join("stages/src");
    for entry in walkdir::WalkDir::new(&source).sort_by_file_name() {
        let entry = entry.map_err(|error| TableError::Read {
            path: source.clone(),
            source: error.into(),
        })?;
        if !entry.file_type().is_file() || entry.path().extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).map_err(|error| TableError::Read {
            path: entry.path().to_path_buf(),
            source: error,
        })?;
        let file = entry
            .path()
            .strip_prefix(&workspace)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .into_owned();
        for (type_name, trait_name) in implementations_in(&text) {
            found.insert(type_name, (trait_name, file.clone()));
        }
    }
    Ok(found)
}

/// The (type, trait) of each top-level, non-generic `impl Stage for T` or `impl TreeEdit for T`
/// of `text`.
fn implementations_in(text: &str) -> Vec<(String, String)> {
    let pattern = regex::Regex::new(r"(?m)^impl\s+(?:\w+::)*(Stage|TreeEdit)\s+for\s+(\w+)")
        .expect("the pattern is valid");
    pattern
        .captures_iter(text)
        .map(|captures| (captures[2].to_string(), captures[1].to_string()))
        .collect()
}

/// Types that implement a stage but are not listed, or are listed with the wrong sources.
fn unregistered(kinds: &[StageKind], current: &Table) -> Result<Vec<Drift>, TableError> {
    let mut drifts = Vec::new();
    for (type_name, (trait_name, file)) in implementations()? {
        let listed: Vec<&StageKind> = kinds
            .iter()
            .filter(|kind| kind.type_name == type_name)
            .collect();
        if listed.is_empty() {
            drifts.push(Drift::Unregistered {
                type_name,
                trait_name,
                file,
            });
            continue;
        }
        for kind in listed {
            if !current[kind.kind].files.contains_key(&file) {
                drifts.push(Drift::Uncovered {
                    kind: kind.kind.to_string(),
                    type_name: type_name.clone(),
                    file: file.clone(),
                });
            }
        }
    }
    Ok(drifts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_sources() {
        let kinds = kinds::stage_kinds();
        let mut names: Vec<&str> = kinds.iter().map(|kind| kind.kind).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            kinds.len(),
            "two entries of `stage_kinds()` share a kind"
        );

        let path = table::table_path();
        let current = current(&kinds).unwrap_or_else(|error| panic!("{error}"));
        let recorded = table::read(&path).unwrap_or_else(|error| panic!("{error}"));
        let mut drifts = unregistered(&kinds, &current).unwrap_or_else(|error| panic!("{error}"));
        let stale = compare(&kinds, &current, &recorded);
        if std::env::var_os(UPDATE_VARIABLE).is_some_and(|value| value == "1") {
            if !stale.is_empty() {
                std::fs::write(&path, table::render(&current))
                    .unwrap_or_else(|error| panic!("Cannot write `{}`: {error}", path.display()));
                for drift in &stale {
                    eprintln!("updated: {drift}");
                }
            }
            drifts.retain(|drift| !drift.fixed_by_update());
        } else {
            drifts.extend(stale);
        }
        let messages: Vec<String> = drifts.iter().map(ToString::to_string).collect();
        assert!(
            messages.is_empty(),
            "stage versions disagree with stages/stage-versions.txt:\n- {}\n",
            messages.join("\n- ")
        );
    }

    #[test]
    fn a_change_without_a_bump_is_named_with_its_files() {
        let kinds = kinds::stage_kinds();
        let current = current(&kinds).unwrap();
        let mut recorded = current.clone();
        let uki = recorded.get_mut("uki").unwrap();
        let (path, digest) = uki.files.iter_mut().next().unwrap();
        let path = path.clone();
        *digest = "0".repeat(64);
        let drifts = compare(&kinds, &current, &recorded);
        assert_eq!(
            drifts,
            [Drift::Changed {
                kind: "uki".to_string(),
                type_name: "UkiStage".to_string(),
                version: current["uki"].version,
                files: vec![FileChange::Changed(path)],
            }]
        );
        let message = drifts[0].to_string();
        assert!(message.contains("bump `UkiStage::version()`"), "{message}");
        assert!(message.contains(UPDATE_COMMAND), "{message}");
    }

    #[test]
    fn a_bump_without_an_update_is_stale() {
        let kinds = kinds::stage_kinds();
        let current = current(&kinds).unwrap();
        let mut recorded = current.clone();
        recorded.get_mut("trees").unwrap().version += 1;
        recorded.insert("retired".to_string(), recorded["trees"].clone());
        recorded.remove("tar");
        let drifts = compare(&kinds, &current, &recorded);
        assert!(matches!(&drifts[0], Drift::Stale { kind, .. } if kind == "trees"));
        assert!(matches!(&drifts[1], Drift::Unlisted { kind, .. } if kind == "tar"));
        assert!(matches!(&drifts[2], Drift::Gone { kind } if kind == "retired"));
    }

    #[test]
    fn whitespace_between_words_does_not_count() {
        let formatted = "fn f() {\n    g(a, b)\n}\n";
        assert_eq!(
            table::digest(formatted),
            table::digest("fn f() {\r\n  g(a,\n    b)\r\n}")
        );
        assert_ne!(
            table::digest(formatted),
            table::digest("fn f() {\n    g(a,b)\n}\n")
        );
    }

    #[test]
    fn stage_implementations_are_found_in_the_source() {
        let text = "impl Stage for TarStage {\n}\nimpl kiln_engine::Stage for NewStage {}\n\
                    impl TreeEdit for OsRelease {}\nimpl<E: TreeEdit> Stage for EditStage<E> {}\n\
                    impl Format for Tar {}\n";
        let found = implementations_in(text);
        let expected = [
            ("TarStage", "Stage"),
            ("NewStage", "Stage"),
            ("OsRelease", "TreeEdit"),
        ]
        .map(|(type_name, trait_name)| (type_name.to_string(), trait_name.to_string()));
        assert_eq!(found, expected);
    }

    #[test]
    fn the_table_reads_back_what_it_writes() {
        let kinds = kinds::stage_kinds();
        let current = current(&kinds).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage-versions.txt");
        std::fs::write(&path, table::render(&current)).unwrap();
        assert_eq!(table::read(&path).unwrap(), current);
    }
}
