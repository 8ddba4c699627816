//! `kiln recipe show`: the resolved recipe of a mkosi or RON project, printed as RON.

use kiln_recipe::to_ron;

use crate::report::{CliError, Renderer};
use crate::settings::Settings;
use crate::stdout::out;

pub(crate) fn run(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let loaded = super::load_recipe(settings, renderer)?;
    out!("{}", to_ron(&loaded.recipe));
    Ok(())
}
