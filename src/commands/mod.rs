//! One module per verb; each takes resolved [`Settings`](crate::settings::Settings).

pub(crate) mod build;
pub(crate) mod cache;
pub(crate) mod genkey;
pub(crate) mod graph_explain;
pub(crate) mod graph_show;
pub(crate) mod inspect;
pub(crate) mod lock;
pub(crate) mod qemu;
pub(crate) mod recipe_show;

use kiln_recipe::{Loaded, load_project};
use kiln_stages::host::reader::RealReaderHost;

use crate::report::{CliError, Renderer};
use crate::settings::Settings;

/// Read the project's recipe and print its warnings.
pub(crate) fn load_recipe(settings: &Settings, renderer: &Renderer) -> Result<Loaded, CliError> {
    let loaded = load_project(&settings.project_dir, &settings.load, &RealReaderHost)?;
    for warning in &loaded.warnings {
        renderer.eprint(warning);
    }
    Ok(loaded)
}
