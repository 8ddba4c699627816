//! `kiln inspect FILE`: the sections of a PE file, like `ukify inspect`.
//!
//! Reads any PE image (a UKI, a systemd-stub, an EFI kernel) with `kiln_stages::uki::inspect`
//! and prints each section's name, size and sha256, the text of `.osrel`, `.cmdline`, `.uname`
//! and `.sbat`, and whether the file carries an Authenticode signature; `--json` prints the
//! same as JSON.

use crate::cli::InspectArgs;
use crate::report::CliError;
use crate::stdout::{out, outln};

pub fn run(args: &InspectArgs) -> Result<(), CliError> {
    let inspection = kiln_stages::uki::inspect_file(&args.file)?;
    if args.json {
        outln!("{}", inspection.to_json());
    } else {
        out!("{}", inspection.to_text());
    }
    Ok(())
}
