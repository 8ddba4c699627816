//! One module per verb; each takes resolved [`Settings`](crate::settings::Settings).

pub mod build;
pub mod cache;
pub mod genkey;
pub mod graph_explain;
pub mod graph_show;
pub mod inspect;
pub mod lock;
pub mod qemu;
pub mod recipe_show;

use kiln_recipe::{Loaded, load_project};
use kiln_stages::host::reader::RealReaderHost;

use crate::report::{CliError, Renderer};
use crate::settings::Settings;

/// Read the project's recipe and print its warnings.
pub fn load_recipe(settings: &Settings, renderer: &Renderer) -> Result<Loaded, CliError> {
    let loaded = load_project(&settings.project_dir, &settings.load, &RealReaderHost)?;
    for warning in &loaded.warnings {
        renderer.eprint(warning);
    }
    Ok(loaded)
}
