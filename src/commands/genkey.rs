//! `kiln genkey`: a Secure Boot key and self-signed certificate, `mkosi.key` (mode 0600) and
//! `mkosi.crt`, written into the project directory as `mkosi genkey` writes them (RSA 2048,
//! `CN=mkosi of <user>`, valid for 730 days). Existing files are kept unless `-f` is given.

use std::time::{Duration, SystemTime};

use kiln_stages::sign::genkey::{
    KEY_BITS, default_common_name, generate_key_pair, refuse_existing, utc_date, write_key_pair,
};

use crate::cli::GenkeyArgs;
use crate::report::CliError;
use crate::settings::Settings;

pub(crate) fn run(settings: &Settings, args: &GenkeyArgs) -> Result<(), CliError> {
    let force = settings.force >= 1;
    refuse_existing(&settings.project_dir, force)?;
    let common_name = args.common_name.clone().unwrap_or_else(default_common_name);
    eprintln!("Generating keys rsa:{KEY_BITS} for CN '{common_name}'.");
    let now = SystemTime::now();
    let pair = generate_key_pair(&common_name, now, args.valid_days)?;
    let written = write_key_pair(&settings.project_dir, &pair, force)?;
    eprintln!(
        "The keys will expire in {} days ({}). Remember to roll them over to new ones before then.",
        args.valid_days,
        utc_date(now + Duration::from_secs(u64::from(args.valid_days) * 86_400))
    );
    eprintln!(
        "wrote {} and {}",
        written.key.display(),
        written.certificate.display()
    );
    Ok(())
}
