//! `kiln graph explain`: why each stage of the last build ran, read from the build index.

use kiln_engine::explain::{ExplainError, explain_with, render_text};

use crate::project::Project;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;
use crate::stdout::{out, outln};

pub(crate) fn run(
    settings: &Settings,
    renderer: &Renderer,
    stage: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let project = Project::load(settings, renderer)?;
    let Some(store) = project.existing_store()? else {
        return Err(CliError::Explain(ExplainError::NoBuild {
            recipe: project.recipe_key.clone(),
        }));
    };
    let explanation = explain_with(
        &store,
        &project.recipe_key,
        stage,
        &kiln_stages::modules::ModulesExplainer,
    )?;
    if json {
        let text = serde_json::to_string_pretty(&explanation).map_err(|source| CliError::Io {
            what: "Cannot print the explanation as JSON".to_string(),
            source: source.into(),
        })?;
        outln!("{text}");
    } else {
        out!("{}", render_text(&explanation));
    }
    Ok(())
}
