//! `kiln build`: plan the recipe, run the stages that are not cached, write the output.

use std::time::Instant;

use kiln_engine::check::{CheckError, Mismatch};
use kiln_engine::{BuildOptions, PlanOptions, execute, plan};
use kiln_stages::export::export;

use crate::progress::{TerminalReporter, format_duration};
use crate::project::Project;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;

pub fn run(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let started = Instant::now();
    let mut timings = Timings::new(settings.verbose);
    let project = Project::load(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let store = project.open_store()?;
    // What killed builds left behind goes now, not only with `cache verify` or `gc`.
    let reclaimed = store.reclaim_scratch();
    if settings.verbose && reclaimed > 0 {
        eprintln!("reclaimed {reclaimed} scratch folders of killed builds");
    }
    timings.lap("read the recipe and open the store");
    let force_rerun = settings.force >= 2;
    let plan = plan(
        &pipeline.graph,
        Some(&store),
        &project.loaded.dir,
        PlanOptions::build(force_rerun, settings.offline),
    )
    .map_err(|error| project.locate(error.into()))?;
    let options = BuildOptions {
        recipe: project.recipe_key.clone(),
        project_dir: project.loaded.dir.clone(),
        force_rerun,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    timings.lap("plan (inputs read, packages resolved)");
    let reporter = TerminalReporter::new(settings.verbose);
    let report = execute(&pipeline.graph, &plan, &store, &options, &reporter)?;
    timings.lap("stages");
    let mut exported = Vec::new();
    for artifact in &pipeline.export.artifacts {
        let output = report
            .stage(&artifact.stage)
            .map(|stage| stage.output)
            .expect("every build runs the stages of its artifacts");
        exported.push(export(
            &store,
            &pipeline.export.with_digest(artifact, output),
            settings.force >= 1,
        )?);
    }
    let main = exported.first().expect("every format has a main artifact");
    timings.lap("export");
    timings.print();
    let verb = if exported.iter().any(|artifact| artifact.written) {
        "wrote"
    } else {
        "up to date:"
    };
    eprintln!(
        "{verb} {} (build {}, {} of {} stages ran, {})",
        main.path.display(),
        report.build,
        report.ran().len(),
        report.stages.len(),
        format_duration(started.elapsed())
    );
    Ok(())
}

/// With `-v`, where a build's time went, phase by phase.
struct Timings {
    enabled: bool,
    last: Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl Timings {
    fn new(enabled: bool) -> Timings {
        Timings {
            enabled,
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    fn print(&self) {
        if !self.enabled {
            return;
        }
        let laps: Vec<String> = self
            .laps
            .iter()
            .map(|(what, time)| format!("{what} {}", format_duration(*time)))
            .collect();
        eprintln!("time: {}", laps.join(", "));
    }
}

/// `kiln build --check`: every stage of the last build run again from its cached inputs; the
/// first stage whose output differs is the error.
pub fn check(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let started = Instant::now();
    let project = Project::load(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let store = project.open_store()?;
    let plan = plan(
        &pipeline.graph,
        Some(&store),
        &project.loaded.dir,
        PlanOptions::build(false, settings.offline),
    )
    .map_err(|error| project.locate(error.into()))?;
    let options = BuildOptions {
        recipe: project.recipe_key.clone(),
        project_dir: project.loaded.dir.clone(),
        force_rerun: true,
        jobs: 1,
    };
    let reporter = TerminalReporter::new(settings.verbose);
    let mismatches = kiln_engine::check::check(&pipeline.graph, &plan, &store, &options, &reporter)
        .map_err(|error| match error {
            CheckError::Build(error) => CliError::Build(error),
            other => CliError::Check(other),
        })?;
    if let Some(Mismatch {
        stage,
        first_path,
        cached,
        rerun,
        ..
    }) = mismatches.into_iter().next()
    {
        return Err(CliError::NotReproducible {
            stage,
            what: match first_path {
                Some(path) => format!("first difference: {path}"),
                None => format!("its output was {cached}, now {rerun}"),
            },
        });
    }
    eprintln!(
        "reproducible: every stage gave its cached output again ({})",
        format_duration(started.elapsed())
    );
    Ok(())
}
