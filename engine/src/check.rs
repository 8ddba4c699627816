//! `kiln build --check`: every stage of a build run again from the inputs its cached result was
//! made of, and its new output compared with the cached one (as `nix build --check` does). A
//! stage whose output differs is not reproducible: the check names it and what differs. Nothing
//! is recorded: the action cache and the build index are left as they were.

use std::time::Instant;

use kiln_cache::{Digest, OutputKind, Store};

use crate::execute::{BuildError, BuildOptions, StageRunner};
use crate::graph::Graph;
use crate::plan::{Plan, PlannedState};
use crate::reporter::{Outcome, Reporter};

/// A stage whose run gave another output than the one cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub stage: String,
    pub cached: Digest,
    pub rerun: Digest,
    pub kind: OutputKind,
    /// The first path of the tree that differs (for a tree output).
    pub first_path: Option<String>,
}

/// Why a check cannot be made.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CheckError {
    #[error("Stage `{stage}` has no cached result to check")]
    #[diagnostic(help(
        "Build first (`kiln build`), then check the build with `kiln build --check`"
    ))]
    NotBuilt { stage: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Build(#[from] BuildError),
}

/// Run every stage of `plan` again, one at a time in graph order, each on the inputs its cached
/// result was keyed on; returns the stages whose output differs.
pub fn check(
    graph: &Graph,
    plan: &Plan,
    store: &Store,
    options: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<Vec<Mismatch>, CheckError> {
    let runner = StageRunner {
        graph,
        store,
        options,
        reporter,
        remote: None,
    };
    let mut mismatches = Vec::new();
    for &index in graph.order() {
        let planned = plan
            .stage(index)
            .expect("the plan covers every stage of its graph");
        let PlannedState::Cached { output: cached } = planned.state else {
            return Err(CheckError::NotBuilt {
                stage: planned.name.clone(),
            });
        };
        let stage = graph.stage(index);
        reporter.stage_started(stage.name());
        let started = Instant::now();
        let (result, _notes) = runner.run_stage(index, &planned.inputs);
        let rerun = result?;
        reporter.stage_finished(
            stage.name(),
            Outcome::Ran {
                output_changed: rerun != cached,
            },
            &rerun,
            started.elapsed(),
        );
        if rerun != cached {
            let first_path = match stage.output_kind() {
                OutputKind::Tree => match (store.manifest(&cached), store.manifest(&rerun)) {
                    (Ok(before), Ok(after)) => {
                        before.diff(&after).first().map(|change| change.to_string())
                    }
                    _ => None,
                },
                OutputKind::Blob => None,
            };
            mismatches.push(Mismatch {
                stage: stage.name().to_string(),
                cached,
                rerun,
                kind: stage.output_kind(),
                first_path,
            });
        }
    }
    Ok(mismatches)
}
