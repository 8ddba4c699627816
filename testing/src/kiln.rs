//! Running the kiln binary from a test.

use std::ffi::OsStr;
use std::process::Command;

/// A command for the kiln binary at `binary`, with `NO_COLOR=1` so that its reports are plain
/// text; not started. Tests of the root package pass `env!("CARGO_BIN_EXE_kiln")`.
pub fn kiln(binary: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(binary);
    command.env("NO_COLOR", "1");
    command
}
