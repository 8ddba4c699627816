//! Building a recipe's pipeline, the one call every front end makes: plan (inputs read, packages
//! resolved, the shared cache asked), run the stages that are not cached, write the outputs, and
//! when the store finds a damaged or missing object on the way, forget it with what it made
//! unservable and build again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kiln_cache::{Digest, Store, StoreError};
use kiln_engine::plan::PlanError;
use kiln_engine::{
    BuildOptions, BuildReport, PlanOptions, RemoteSession, Reporter, execute_with_remote,
    plan_with_remote,
};
use miette::Diagnostic;
use thiserror::Error;

use crate::error::OutputError;
use crate::export::{Exported, export};
use crate::pipeline::Pipeline;

/// How many times one build forgets damaged objects and runs again before it gives up.
const MAX_REPAIRS: usize = 3;

/// What to build, and how.
pub struct BuildRequest<'a> {
    pub pipeline: &'a Pipeline,
    pub store: &'a Store,
    /// The project directory relative paths of the recipe are read from.
    pub project_dir: &'a Path,
    /// The recipe's name in the build index (its image name and directory).
    pub recipe_key: String,
    /// Write the outputs even when they already hold this build's result (`-f`).
    pub overwrite: bool,
    /// Run every stage again, cached or not (`-ff`).
    pub rerun: bool,
    /// Ask nothing of the network.
    pub offline: bool,
    /// The shared cache to ask for what the local store misses.
    pub remote: Option<&'a RemoteSession<'a>>,
    pub reporter: &'a dyn Reporter,
    /// How many stages may run at once.
    pub jobs: usize,
}

/// A finished build.
#[derive(Debug)]
pub struct Built {
    pub report: BuildReport,
    /// The outputs written (or found current), the format's main artifact first.
    pub exported: Vec<Exported>,
    /// Where the time went, phase by phase (the last attempt's, when the build ran again).
    pub phases: Vec<(&'static str, Duration)>,
}

/// Something a build does on its own that the user should hear of.
#[derive(Debug)]
pub enum BuildEvent<'a> {
    /// The store found an object damaged and repaired it.
    Repaired(&'a str),
    /// An attempt failed on a damaged or missing object: it was forgotten with the cache entries
    /// that used it, and the build runs again.
    Forgot {
        error: &'a BuildError,
        object: &'a Digest,
        entries: usize,
    },
}

/// Why a build failed.
#[derive(Debug, Error, Diagnostic)]
pub enum BuildError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Run(#[from] kiln_engine::BuildError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Export(#[from] OutputError),

    #[error("Cannot forget a damaged object of the store at `{}`", path.display())]
    #[diagnostic(help("Run `kiln cache verify` to check and repair the store, then build again"))]
    Forget {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// Build `request`'s pipeline, telling `events` what the store repaired on the way.
pub fn build(
    request: &BuildRequest<'_>,
    events: &mut dyn FnMut(BuildEvent<'_>),
) -> Result<Built, BuildError> {
    let options = BuildOptions {
        started: SystemTime::now(),
        recipe: request.recipe_key.clone(),
        project_dir: request.project_dir.to_path_buf(),
        force_rerun: request.rerun,
        jobs: request.jobs,
    };
    let mut repairs = 0;
    loop {
        let attempt = attempt(request, &options);
        report_repairs(request.store, events);
        let error = match attempt {
            Ok(built) => return Ok(built),
            Err(error) => error,
        };
        let damaged = request.store.take_damaged();
        if damaged.is_empty() || repairs == MAX_REPAIRS {
            return Err(error);
        }
        repairs += 1;
        for object in &damaged {
            let forgotten =
                request
                    .store
                    .forget_damaged(object)
                    .map_err(|source| BuildError::Forget {
                        path: request.store.root().to_path_buf(),
                        source,
                    })?;
            events(BuildEvent::Forgot {
                error: &error,
                object,
                entries: forgotten.actions.len(),
            });
        }
        report_repairs(request.store, events);
    }
}

/// One attempt: plan, run, export.
fn attempt(request: &BuildRequest<'_>, options: &BuildOptions) -> Result<Built, BuildError> {
    let mut phases = Vec::new();
    let mut last = Instant::now();
    let mut lap = |what: &'static str| {
        let now = Instant::now();
        phases.push((what, now - last));
        last = now;
    };
    let pipeline = request.pipeline;
    let plan = plan_with_remote(
        &pipeline.graph,
        Some(request.store),
        request.project_dir,
        PlanOptions::build(request.rerun, request.offline),
        request.remote,
    )?;
    lap("plan (inputs read, packages resolved)");
    let report = execute_with_remote(
        &pipeline.graph,
        &plan,
        request.store,
        options,
        request.reporter,
        request.remote,
    )?;
    lap("stages");
    let mut exported = Vec::new();
    for artifact in &pipeline.export.artifacts {
        let output = report
            .stage(&artifact.stage)
            .map(|stage| stage.output)
            .expect("every build runs the stages of its artifacts");
        exported.push(export(
            request.store,
            &pipeline.export.with_digest(artifact, output),
            request.overwrite,
        )?);
    }
    lap("export");
    Ok(Built {
        report,
        exported,
        phases,
    })
}

fn report_repairs(store: &Store, events: &mut dyn FnMut(BuildEvent<'_>)) {
    for repair in store.take_repairs() {
        events(BuildEvent::Repaired(&repair));
    }
}
