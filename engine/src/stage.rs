//! What a stage is to the engine: a kind, a version, named inputs, one output, and `run`.
//!
//! Everything a stage's result depends on must be a named [`Input`]: the files and trees it reads
//! from the project, the values it uses (a hostname, `IMAGE_VERSION`), and the outputs of the
//! stages before it. The engine turns the inputs into digests, the digests into the stage's key,
//! and records each input so `graph explain` can say which one changed. A stage whose result
//! depends on something no key can see (the clock, a mirror's state) must make that an input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, OutputKind, Store};

use crate::reporter::StageLog;

/// Where a named input's digest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// The output of another stage of the same graph (its *output id*, for early cutoff).
    Stage(String),
    /// A file of the project: its content and whether it is executable.
    File(PathBuf),
    /// A directory of the project, ingested into the store as a tree.
    Tree {
        path: PathBuf,
        /// Record every entry as owned by root:root (mkosi's rule for trees copied from a
        /// directory) instead of the owner on disk.
        owned_by_root: bool,
    },
    /// A plain value (a setting, a variable), recorded as text so explain can show old -> new.
    Value(String),
}

/// One named input of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub name: String,
    pub source: InputSource,
}

impl Input {
    pub fn stage(name: impl Into<String>, stage: impl Into<String>) -> Input {
        Input {
            name: name.into(),
            source: InputSource::Stage(stage.into()),
        }
    }

    pub fn file(name: impl Into<String>, path: impl Into<PathBuf>) -> Input {
        Input {
            name: name.into(),
            source: InputSource::File(path.into()),
        }
    }

    pub fn tree(name: impl Into<String>, path: impl Into<PathBuf>, owned_by_root: bool) -> Input {
        Input {
            name: name.into(),
            source: InputSource::Tree {
                path: path.into(),
                owned_by_root,
            },
        }
    }

    pub fn value(name: impl Into<String>, value: impl Into<String>) -> Input {
        Input {
            name: name.into(),
            source: InputSource::Value(value.into()),
        }
    }
}

/// A stage kind. Implementations live in `kiln-stages`, one module per kind.
pub trait Stage: Send + Sync {
    /// The node's name, unique in its graph ("extra-trees", "postinst").
    fn name(&self) -> &str;
    /// The kind ("trees", "script", ...), part of the key.
    fn kind(&self) -> &'static str;
    /// Bumped when the kind's behaviour changes, part of the key.
    fn version(&self) -> u32;
    /// Every input the result depends on.
    fn inputs(&self) -> Vec<Input>;
    /// Whether the output is a tree or a single file.
    fn output_kind(&self) -> OutputKind;
    /// Inputs known only by asking the outside world, once per build, before anything runs:
    /// for example the exact package set a mirror resolves a package list to. They are
    /// recorded and keyed like the inputs of [`Stage::inputs`]; a stage reads their values
    /// back with [`StageContext::value`]. How far the stage may go to find them is
    /// [`ResolveContext::mode`].
    fn resolve(&self, _ctx: &ResolveContext<'_>) -> Result<Resolution, StageError> {
        Ok(Resolution::none())
    }
    /// Compute the output and put it in the store; return its id. Must not write anywhere but
    /// the store and `ctx.scratch`.
    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError>;
}

/// How far a stage may go to resolve its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveMode {
    /// Ask the outside world (a mirror), cheaply when it has not changed.
    Online,
    /// `--offline`: use the last resolution; without one, fail.
    Offline,
    /// Only read (`graph show`): use the last resolution if there is one, write nothing.
    ReadOnly,
}

/// What a stage may use to resolve its inputs.
pub struct ResolveContext<'a> {
    /// `None` when only reading and no store exists yet.
    pub store: Option<&'a Store>,
    pub project_dir: &'a Path,
    pub mode: ResolveMode,
}

/// The inputs [`Stage::resolve`] found, and how.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    /// `None` when they could not be known without asking the outside world, which the mode
    /// forbids: the stage shows as `will resolve`.
    pub inputs: Option<Vec<Input>>,
    /// How they were found, for `graph explain` ("resolved offline from the mirror's index of
    /// 3 hours ago").
    pub notes: Vec<String>,
}

impl Resolution {
    /// Nothing to resolve.
    pub fn none() -> Resolution {
        Resolution {
            inputs: Some(Vec::new()),
            notes: Vec::new(),
        }
    }

    /// These inputs.
    pub fn inputs(inputs: Vec<Input>) -> Resolution {
        Resolution {
            inputs: Some(inputs),
            notes: Vec::new(),
        }
    }

    /// Unknown without the outside world.
    pub fn unknown() -> Resolution {
        Resolution {
            inputs: None,
            notes: Vec::new(),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Resolution {
        self.notes.push(note.into());
        self
    }
}

/// What a running stage may see.
pub struct StageContext<'a> {
    pub store: &'a Store,
    /// The project directory the recipe was read from.
    pub project_dir: &'a Path,
    /// A private, empty directory for this run, removed afterwards.
    pub scratch: &'a Path,
    /// Each input's resolved digest, by input name.
    pub inputs: &'a BTreeMap<String, Digest>,
    /// The text of each value input, by input name.
    pub values: &'a BTreeMap<String, String>,
    /// Where the stage's output (script output, tool logs) goes.
    pub log: &'a dyn StageLog,
}

impl StageContext<'_> {
    /// The text of a value input (declared or resolved).
    pub fn value(&self, name: &str) -> Result<&str, StageError> {
        self.values
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| StageError::UndeclaredInput {
                input: name.to_string(),
            })
    }

    /// The digest of a named input; a stage asking for one it did not declare is a bug.
    pub fn input(&self, name: &str) -> Result<Digest, StageError> {
        self.inputs
            .get(name)
            .copied()
            .ok_or_else(|| StageError::UndeclaredInput {
                input: name.to_string(),
            })
    }
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StageError {
    #[error("The stage asked for `{input}`, which it does not declare as an input")]
    UndeclaredInput { input: String },

    #[error(transparent)]
    Store(#[from] kiln_cache::StoreError),

    /// A failure a stage kind describes itself (a script's exit code, a tool's message).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Failed(Box<dyn miette::Diagnostic + Send + Sync>),
}

impl StageError {
    pub fn failed(error: impl miette::Diagnostic + Send + Sync + 'static) -> StageError {
        StageError::Failed(Box::new(error))
    }
}
