//! `kiln inspect FILE [--cert CERT]`: the sections of a PE file, like `ukify inspect`, and its
//! Authenticode signature.
//!
//! Reads any PE image (a UKI, a systemd-stub, an EFI kernel) with `kiln_stages::uki::inspect`
//! and prints each section's name, size and sha256, the text of `.osrel`, `.cmdline`, `.uname`
//! and `.sbat`, the image's Authenticode digest, and, when signed, the signer and whether the
//! signature holds; with `--cert`, whether that certificate vouches for the signer (exit code 1
//! when it does not, after the report). `--json` prints the same as JSON.

use kiln_stages::uki::{InspectError, inspect_file, inspect_file_with_certificate};

use crate::cli::InspectArgs;
use crate::report::CliError;
use crate::stdout::{out, outln};

pub(crate) fn run(args: &InspectArgs) -> Result<(), CliError> {
    let inspection = match &args.cert {
        Some(certificate) => inspect_file_with_certificate(&args.file, certificate)?,
        None => inspect_file(&args.file)?,
    };
    if args.json {
        outln!("{}", inspection.to_json());
    } else {
        out!("{}", inspection.to_text());
    }
    if let (Some(certificate), Some(check)) = (&args.cert, &inspection.certificate_check)
        && !check.verified
    {
        return Err(InspectError::NotVerified {
            path: args.file.clone(),
            certificate: certificate.clone(),
            problem: check.problem.clone().unwrap_or_default(),
        }
        .into());
    }
    Ok(())
}
