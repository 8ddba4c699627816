//! `kiln build`: plan the recipe, run the stages that are not cached, write the output.

use std::time::Instant;

use kiln_engine::{BuildOptions, execute, plan};
use kiln_stages::export::export;

use crate::progress::{TerminalReporter, format_duration};
use crate::project::Project;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;

pub fn run(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let started = Instant::now();
    let project = Project::open(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let force_rerun = settings.force >= 2;
    let plan = plan(
        &pipeline.graph,
        &project.store,
        &project.loaded.dir,
        force_rerun,
    )?;
    let options = BuildOptions {
        recipe: project.recipe_key.clone(),
        project_dir: project.loaded.dir.clone(),
        force_rerun,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let reporter = TerminalReporter::new();
    let report = execute(&pipeline.graph, &plan, &project.store, &options, &reporter)?;
    let output = report
        .stage(&pipeline.final_stage)
        .map(|stage| stage.output)
        .expect("every build runs its output stage");
    let exported = export(
        &project.store,
        &pipeline.export.with_digest(output),
        settings.force >= 1,
    )?;
    let verb = if exported.written {
        "wrote"
    } else {
        "up to date:"
    };
    eprintln!(
        "{verb} {} (build {}, {} of {} stages ran, {})",
        exported.path.display(),
        report.build,
        report.ran().len(),
        report.stages.len(),
        format_duration(started.elapsed())
    );
    Ok(())
}
