//! Signs a PE file as the sign stage does (kiln's own Authenticode signer); used by
//! `benches/sign.sh`.
//!
//!     sign_uki KEY CERTIFICATE IN OUT [SOURCE_DATE_EPOCH]

use std::process::ExitCode;

use kiln_stages::sign::SignError;
use kiln_stages::sign::image::{Signer, sign_image};
use kiln_stages::sign::keys::{PrivateKey, read_certificate};

fn sign(
    key: &str,
    certificate: &str,
    input: &str,
    output: &str,
    epoch: Option<u64>,
) -> Result<(), SignError> {
    let signer = Signer {
        key: PrivateKey::read(key.as_ref(), key.as_ref())?,
        certificate: read_certificate(certificate.as_ref(), certificate.as_ref())?,
        key_name: key.into(),
    };
    sign_image(input.as_ref(), output.as_ref(), &signer, epoch)?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (key, certificate, input, output, epoch) = match args.as_slice() {
        [key, certificate, input, output] => (key, certificate, input, output, None),
        [key, certificate, input, output, epoch] => match epoch.parse() {
            Ok(epoch) => (key, certificate, input, output, Some(epoch)),
            Err(_) => {
                eprintln!("SOURCE_DATE_EPOCH must be seconds since 1970");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: sign_uki KEY CERTIFICATE IN OUT [SOURCE_DATE_EPOCH]");
            return ExitCode::from(2);
        }
    };
    match sign(key, certificate, input, output, epoch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{:?}", miette::Report::new(error));
            ExitCode::FAILURE
        }
    }
}
