//! `kiln lock`: resolve the recipe's packages against the mirror and write the exact set to
//! `kiln.lock`, which `--locked` builds are then held to.

use std::sync::Arc;

use kiln_engine::StageError;
use kiln_engine::plan::PlanError;
use kiln_stages::host::RealHost;
use kiln_stages::packages::{Installer, LockFile, PackagesStage, STAGE_NAME};
use kiln_stages::pipeline::PipelineError;

use crate::project::Project;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;

pub(crate) fn run(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let project = Project::load(settings, renderer)?;
    let store = project.open_store()?;
    let installer = Installer::for_recipe(&project.loaded.recipe)
        .map_err(|error| CliError::Pipeline(PipelineError::Packages(error)))?;
    let Some(installer) = installer else {
        eprintln!("nothing to lock: `Distribution=custom` installs no packages");
        return Ok(());
    };
    let stage = PackagesStage::new("", installer, None, Arc::new(RealHost::new()));
    let set = stage.resolve_set(&store).map_err(|error| {
        CliError::Plan(PlanError::Resolve {
            stage: STAGE_NAME.to_string(),
            source: StageError::failed(error),
        })
    })?;
    let previous = LockFile::read(&project.loaded.dir)
        .ok()
        .flatten()
        .and_then(|lock| lock.stages.get(STAGE_NAME).cloned());
    let mut lock = LockFile::default();
    lock.stages.insert(STAGE_NAME.to_string(), set.clone());
    let path = lock
        .write(&project.loaded.dir)
        .map_err(|error| CliError::Pipeline(PipelineError::Packages(error)))?;
    match previous {
        Some(previous) => {
            let changes = previous.changes(&set);
            for change in &changes {
                eprintln!("  {change}");
            }
            eprintln!(
                "wrote {} ({} packages, {} changed)",
                path.display(),
                set.len(),
                changes.len()
            );
        }
        None => eprintln!("wrote {} ({} packages)", path.display(), set.len()),
    }
    Ok(())
}
