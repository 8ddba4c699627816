//! `kiln inspect FILE`: the sections of a PE file, like `ukify inspect`.

use crate::cli::InspectArgs;
use crate::report::CliError;

pub fn run(_args: &InspectArgs) -> Result<(), CliError> {
    Err(CliError::NotImplemented { verb: "inspect" })
}
