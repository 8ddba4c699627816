//! `graph explain`: why each stage of a build ran, read from what the index recorded.
//!
//! Nothing is re-derived or guessed: for every stage that ran, the inputs recorded for that run
//! are compared with those recorded for the same stage's previous run of the same recipe. A value
//! shows old -> new, a file its old and new digest, a tree the paths that were added, removed or
//! changed (and what about them), and an upstream stage that it changed, so the chain of reasons
//! leads to the root cause.

use std::collections::BTreeMap;

use kiln_cache::{
    BuildId, Entry, EntryKind, RecordedInput, RunStatus, StageRun, Store, StoreError,
};
use serde::Serialize;

use crate::inputs::kind;

/// One reason a stage ran: an input and its recorded value before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The input's name; for a path inside a tree input, `name:path`.
    pub input: String,
    /// `None` for a first build, or an input that did not exist before.
    pub before: Option<String>,
    /// `None` for an input (or a path) that no longer exists.
    pub after: Option<String>,
    /// The upstream stage this reason comes from, for a reason about a stage input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// A sentence for people ("changed etc/hostname: content").
    pub summary: String,
}

/// One stage of the explained build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageExplanation {
    pub name: String,
    pub status: &'static str,
    pub output_changed: bool,
    /// The id of its output (a tree or a blob in the store).
    pub output: String,
    pub reasons: Vec<Reason>,
    /// What the stage noted about how it resolved its inputs or what its run did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The explanation of one build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    #[serde(serialize_with = "build_number")]
    pub build: BuildId,
    pub stages: Vec<StageExplanation>,
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExplainError {
    #[error("No build of `{recipe}` is recorded in this store")]
    #[diagnostic(help("Run `kiln build` first"))]
    NoBuild { recipe: String },
    #[error("The last build of `{recipe}` has no stage `{stage}`")]
    #[diagnostic(help("Stages of that build: {known}"))]
    NoStage {
        recipe: String,
        stage: String,
        known: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn build_number<S: serde::Serializer>(build: &BuildId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_i64(build.0)
}

/// What a stage kind can add to the explanation of one of its runs, from the two recorded runs
/// and their outputs (the modules stage counts the modules a rule change added or removed).
/// Implementations live with the stage kinds; explain calls the one of the run's kind.
pub trait KindExplainer {
    /// Extra sentences for `current`, a run of a stage of `kind` that ran, compared with
    /// `previous`, the stage's run before it.
    fn explain(
        &self,
        store: &Store,
        kind: &str,
        previous: &StageRun,
        current: &StageRun,
    ) -> Vec<String>;
}

/// Adds nothing.
pub struct NoKindExplainer;

impl KindExplainer for NoKindExplainer {
    fn explain(&self, _: &Store, _: &str, _: &StageRun, _: &StageRun) -> Vec<String> {
        Vec::new()
    }
}

/// Explain the last build of `recipe`, or only its stage `only`.
pub fn explain(
    store: &Store,
    recipe: &str,
    only: Option<&str>,
) -> Result<Explanation, ExplainError> {
    explain_with(store, recipe, only, &NoKindExplainer)
}

/// [`explain`], with what stage kinds add about their own runs.
pub fn explain_with(
    store: &Store,
    recipe: &str,
    only: Option<&str>,
    kinds: &dyn KindExplainer,
) -> Result<Explanation, ExplainError> {
    let index = store.index()?;
    let build = index
        .last_build(recipe)?
        .ok_or_else(|| ExplainError::NoBuild {
            recipe: recipe.to_string(),
        })?;
    let runs = index.runs(build)?;
    if let Some(only) = only
        && !runs.iter().any(|run| run.stage == only)
    {
        return Err(ExplainError::NoStage {
            recipe: recipe.to_string(),
            stage: only.to_string(),
            known: runs
                .iter()
                .map(|run| run.stage.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let first_build = index.previous_build(recipe, build)?.is_none();
    let stage_names: Vec<&str> = runs.iter().map(|run| run.stage.as_str()).collect();
    let mut stages = Vec::new();
    for run in runs
        .iter()
        .filter(|run| only.is_none_or(|only| run.stage == only))
    {
        let ran = run.status == RunStatus::Ran;
        let reasons = if ran {
            let previous = index.last_run_of_stage(recipe, &run.stage, build)?;
            let context = Context {
                store,
                first_build,
                stages: &stage_names,
            };
            let mut reasons = reasons(&context, run, previous.as_ref());
            if let Some(previous) = &previous {
                reasons.extend(
                    kinds
                        .explain(store, &run.kind, previous, run)
                        .into_iter()
                        .map(|summary| Reason {
                            input: format!("({})", run.kind),
                            before: None,
                            after: None,
                            upstream: None,
                            summary,
                        }),
                );
            }
            reasons
        } else {
            Vec::new()
        };
        stages.push(StageExplanation {
            name: run.stage.clone(),
            // `remote`: its notes say where it came from and what the build that made it noted.
            status: run.status.as_str(),
            output_changed: run.output_changed,
            output: run.output.output.to_string(),
            reasons,
            notes: run.notes.clone(),
        });
    }
    Ok(Explanation { build, stages })
}

/// What reasons are judged against.
struct Context<'a> {
    store: &'a Store,
    /// The explained build is the recipe's first.
    first_build: bool,
    /// The stages of the explained build.
    stages: &'a [&'a str],
}

fn reasons(context: &Context<'_>, run: &StageRun, previous: Option<&StageRun>) -> Vec<Reason> {
    let Some(previous) = previous else {
        // Not a stage of any earlier build: the recipe's first build, or a stage that a change
        // of the recipe added to the graph.
        let why = if context.first_build {
            "first build"
        } else {
            "new stage"
        };
        let mut reasons = vec![Reason {
            input: "(stage)".to_string(),
            before: None,
            after: Some(run.stage.clone()),
            upstream: None,
            summary: why.to_string(),
        }];
        reasons.extend(run.inputs.iter().map(|input| Reason {
            input: input.name.clone(),
            before: None,
            after: Some(shown(input)),
            upstream: (input.kind == kind::STAGE).then(|| upstream_name(input)),
            summary: format!("{}: {why} ({})", input.name, shown(input)),
        }));
        return reasons;
    };
    let before: BTreeMap<&str, &RecordedInput> = previous
        .inputs
        .iter()
        .map(|input| (input.name.as_str(), input))
        .collect();
    let after: BTreeMap<&str, &RecordedInput> = run
        .inputs
        .iter()
        .map(|input| (input.name.as_str(), input))
        .collect();
    let mut reasons = Vec::new();
    for (name, new) in &after {
        match before.get(name) {
            None => reasons.push(Reason {
                input: name.to_string(),
                before: None,
                after: Some(shown(new)),
                upstream: (new.kind == kind::STAGE).then(|| upstream_name(new)),
                summary: format!("{name}: new input ({})", shown(new)),
            }),
            Some(old) if old.digest != new.digest || old.kind != new.kind => {
                reasons.extend(changed(context, name, old, new));
            }
            Some(_) => {}
        }
    }
    for (name, old) in &before {
        if !after.contains_key(name) {
            reasons.push(Reason {
                input: name.to_string(),
                before: Some(shown(old)),
                after: None,
                upstream: (old.kind == kind::STAGE).then(|| upstream_name(old)),
                summary: format!("{name}: input removed (was {})", shown(old)),
            });
        }
    }
    if reasons.is_empty() {
        let why = if previous.kind != run.kind {
            format!("stage kind changed: {} -> {}", previous.kind, run.kind)
        } else if previous.key != run.key {
            "the stage's version changed".to_string()
        } else {
            "no cached result for the same inputs (forced with -ff, or removed from the cache)"
                .to_string()
        };
        reasons.push(Reason {
            input: "(key)".to_string(),
            before: Some(previous.key.to_string()),
            after: Some(run.key.to_string()),
            upstream: None,
            summary: why,
        });
    }
    reasons
}

/// How an input is shown: a value as itself, anything else by its digest.
fn shown(input: &RecordedInput) -> String {
    if input.kind == kind::VALUE {
        input.value.clone().unwrap_or_default()
    } else {
        input.digest.to_string()
    }
}

/// The stage a stage input reads.
fn upstream_name(input: &RecordedInput) -> String {
    input.value.clone().unwrap_or_else(|| input.name.clone())
}

fn changed(
    context: &Context<'_>,
    name: &str,
    old: &RecordedInput,
    new: &RecordedInput,
) -> Vec<Reason> {
    if old.kind == kind::STAGE && new.kind == kind::STAGE {
        let (was, now) = (upstream_name(old), upstream_name(new));
        let summary = if was == now {
            format!("upstream stage `{now}` changed its output")
        } else if !context.stages.contains(&was.as_str()) {
            format!("upstream stage `{was}` removed: now reads `{now}`")
        } else {
            format!("upstream stage changed: `{was}` -> `{now}`")
        };
        return vec![Reason {
            input: name.to_string(),
            before: Some(old.digest.to_string()),
            after: Some(new.digest.to_string()),
            upstream: Some(now),
            summary,
        }];
    }
    match new.kind.as_str() {
        kind::VALUE if is_listing(old) || is_listing(new) => listing_changes(name, old, new),
        kind::VALUE => vec![Reason {
            input: name.to_string(),
            before: Some(shown(old)),
            after: Some(shown(new)),
            upstream: None,
            summary: format!("{name} {} -> {}", shown(old), shown(new)),
        }],
        kind::TREE => tree_changes(context.store, name, old, new),
        _ => {
            let path = new.value.clone().unwrap_or_else(|| name.to_string());
            vec![Reason {
                input: name.to_string(),
                before: Some(old.digest.to_string()),
                after: Some(new.digest.to_string()),
                upstream: None,
                summary: format!(
                    "{path} changed: {} -> {}",
                    short(&old.digest.to_string()),
                    short(&new.digest.to_string())
                ),
            }]
        }
    }
}

/// A value of several lines, each `NAME REST` (a resolved package set: `systemd 252.39 amd64`).
fn is_listing(input: &RecordedInput) -> bool {
    input
        .value
        .as_deref()
        .is_some_and(|value| value.contains('\n'))
}

/// Line by line changes of two listings, keyed by each line's first word.
fn listing_changes(name: &str, old: &RecordedInput, new: &RecordedInput) -> Vec<Reason> {
    let parse = |input: &RecordedInput| -> BTreeMap<String, String> {
        input
            .value
            .as_deref()
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| match line.trim().split_once(char::is_whitespace) {
                Some((key, rest)) => (key.to_string(), rest.trim().to_string()),
                None => (line.trim().to_string(), String::new()),
            })
            .collect()
    };
    let (before, after) = (parse(old), parse(new));
    let mut reasons = Vec::new();
    for (key, value) in &after {
        match before.get(key) {
            None => reasons.push(Reason {
                input: format!("{name}:{key}"),
                before: None,
                after: Some(value.clone()),
                upstream: None,
                summary: format!("{} added", join_words(key, value)),
            }),
            Some(old_value) if old_value != value => reasons.push(Reason {
                input: format!("{name}:{key}"),
                before: Some(old_value.clone()),
                after: Some(value.clone()),
                upstream: None,
                summary: format!("{key} {old_value} -> {value}"),
            }),
            Some(_) => {}
        }
    }
    for (key, value) in &before {
        if !after.contains_key(key) {
            reasons.push(Reason {
                input: format!("{name}:{key}"),
                before: Some(value.clone()),
                after: None,
                upstream: None,
                summary: format!("{} removed", join_words(key, value)),
            });
        }
    }
    reasons
}

/// `key value`, or `key` alone when there is no value.
fn join_words(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} {value}")
    }
}

fn tree_changes(
    store: &Store,
    name: &str,
    old: &RecordedInput,
    new: &RecordedInput,
) -> Vec<Reason> {
    let (Ok(before), Ok(after)) = (store.manifest(&old.digest), store.manifest(&new.digest)) else {
        return vec![Reason {
            input: name.to_string(),
            before: Some(old.digest.to_string()),
            after: Some(new.digest.to_string()),
            upstream: None,
            summary: format!("{name} changed (its old manifest is no longer in the store)"),
        }];
    };
    let root = new.value.clone().unwrap_or_else(|| name.to_string());
    before
        .diff(&after)
        .into_iter()
        .map(|change| Reason {
            input: format!("{name}:{}", change.path),
            before: before.get(&change.path).map(describe_entry),
            after: after.get(&change.path).map(describe_entry),
            upstream: None,
            summary: format!("{root}: {change}"),
        })
        .collect()
}

/// An entry as explain shows it: kind, mode, owner and content.
pub fn describe_entry(entry: &Entry) -> String {
    let what = match &entry.kind {
        EntryKind::Dir => "directory".to_string(),
        EntryKind::File { blob, size } => {
            format!("file {} ({size} bytes)", short(&blob.to_string()))
        }
        EntryKind::Symlink { target } => format!("symlink -> {target}"),
        EntryKind::CharDev { rdev } => format!("character device {rdev:#x}"),
        EntryKind::BlockDev { rdev } => format!("block device {rdev:#x}"),
        EntryKind::Fifo => "fifo".to_string(),
        EntryKind::Socket => "socket".to_string(),
    };
    format!(
        "{what} {:04o} {}:{}",
        entry.mode & 0o7777,
        entry.uid,
        entry.gid
    )
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Render an explanation for people. Names from trees and recipes are shown [`printable`].
pub fn render_text(explanation: &Explanation) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "build {}", explanation.build);
    for stage in &explanation.stages {
        let status = match (stage.status, stage.output_changed) {
            ("ran", false) => "ran, output unchanged",
            (status, _) => status,
        };
        let _ = writeln!(out, "{}: {status}", printable(&stage.name));
        for reason in &stage.reasons {
            let _ = writeln!(out, "  {}", printable(&reason.summary));
        }
        for note in &stage.notes {
            let _ = writeln!(out, "  note: {}", printable(note));
        }
    }
    out
}

/// `text` with its control characters escaped (`\u{1b}`, `\n`), as `ls` shows file names: a file
/// name in an image cannot move the terminal's cursor, change its colours or start a new line.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
