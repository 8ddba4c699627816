//! `kiln qemu`: boot the built image under OVMF.

use crate::report::CliError;
use crate::settings::Settings;

pub fn run(_settings: &Settings) -> Result<(), CliError> {
    Err(CliError::NotImplemented { verb: "qemu" })
}
