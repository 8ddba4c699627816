//! Turning a stage's declared inputs into digests, and recording them for `explain`.
//!
//! Files and trees of the project are put into the store as they are resolved, so a stage reads
//! exactly the content its key was computed from, even if the project changes while it runs.

use std::path::{Path, PathBuf};

use kiln_cache::{Digest, IngestOptions, PutMode, RecordedInput, Store, StoreError};

use crate::key::value_digest;
use crate::stage::{Input, InputSource};

/// The kind of an input as the index records it.
pub mod kind {
    pub const STAGE: &str = "stage";
    pub const FILE: &str = "file";
    pub const TREE: &str = "tree";
    pub const VALUE: &str = "value";
}

/// Why an input could not be read.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum InputError {
    #[error("Input `{input}` of stage `{stage}`: `{}` does not exist", path.display())]
    #[diagnostic(help("Create it, or remove the setting that names it from the recipe"))]
    Missing {
        stage: String,
        input: String,
        path: PathBuf,
    },
    #[error("Input `{input}` of stage `{stage}`: cannot read `{}`", path.display())]
    Unreadable {
        stage: String,
        input: String,
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    /// The input was read but the store could not take it (its file system is full).
    #[error("Input `{input}` of stage `{stage}`: cannot store `{}`", path.display())]
    NotStored {
        stage: String,
        input: String,
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
        #[help]
        help: Option<String>,
    },
}

/// Resolve an input that does not depend on another stage. Returns `None` for stage inputs,
/// whose digest is known only once the upstream stage has its output.
///
/// With [`PutMode::HashOnly`] nothing is stored: the digests are computed only.
pub fn resolve_static(
    stage: &str,
    input: &Input,
    project_dir: &Path,
    store: &Store,
    put: PutMode,
) -> Result<Option<RecordedInput>, InputError> {
    let unreadable = |path: &Path, source: StoreError| {
        if source.is_disk_full() {
            return InputError::NotStored {
                stage: stage.to_string(),
                input: input.name.clone(),
                path: path.to_path_buf(),
                help: source.help(),
                source: Box::new(source),
            };
        }
        InputError::Unreadable {
            stage: stage.to_string(),
            input: input.name.clone(),
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    };
    let existing = |path: &PathBuf| {
        let full = project_dir.join(path);
        if full.symlink_metadata().is_err() {
            return Err(InputError::Missing {
                stage: stage.to_string(),
                input: input.name.clone(),
                path: path.clone(),
            });
        }
        Ok(full)
    };
    let recorded = match &input.source {
        InputSource::Stage(_) => return Ok(None),
        InputSource::Value(value) => RecordedInput {
            name: input.name.clone(),
            kind: kind::VALUE.to_string(),
            digest: value_digest(value),
            value: Some(value.clone()),
        },
        InputSource::File(path) => {
            let full = existing(path)?;
            let digest = store
                .put_file(&full, put)
                .map_err(|source| unreadable(path, source))?;
            RecordedInput {
                name: input.name.clone(),
                kind: kind::FILE.to_string(),
                digest,
                value: Some(path.display().to_string()),
            }
        }
        InputSource::Tree {
            path,
            owned_by_root,
        } => {
            let full = existing(path)?;
            let options = IngestOptions {
                mode: put,
                owner: owned_by_root.then_some((0, 0)),
            };
            let manifest = store
                .ingest_dir_cached(&full, options)
                .map_err(|source| unreadable(path, source))?;
            let digest = match put {
                PutMode::HashOnly => store.manifest_id(&manifest),
                _ => store.put_manifest(&manifest),
            }
            .map_err(|source| unreadable(path, source))?;
            RecordedInput {
                name: input.name.clone(),
                kind: kind::TREE.to_string(),
                digest,
                value: Some(path.display().to_string()),
            }
        }
    };
    Ok(Some(recorded))
}

/// The record of a stage input once the upstream stage has an output.
pub fn stage_input(input: &Input, upstream: &str, output: Digest) -> RecordedInput {
    RecordedInput {
        name: input.name.clone(),
        kind: kind::STAGE.to_string(),
        digest: output,
        value: Some(upstream.to_string()),
    }
}
