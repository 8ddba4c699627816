//! Reading an image's Authenticode signature back, for `kiln inspect`: who signed it, which
//! digest the signature covers and whether that is the image's, whether the signature holds,
//! and whether a given certificate vouches for the signer (as `sbverify --cert` checks).
//!
//! Nothing here fails on a damaged signature: what is wrong is reported as a `problem`.

use std::io::{self, Read, Seek, SeekFrom};

use serde::Serialize;
use x509_cert::Certificate;

use super::image::{WIN_CERT_REVISION_2_0, WIN_CERT_TYPE_PKCS_SIGNED_DATA};
use super::keys;
use super::pkcs7::{self, ParsedSignature};
use super::spc;
use crate::pe::PeHeaders;

/// The first signature of an image, as `kiln inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureReport {
    /// The signer's certificate's subject (`CN=mkosi of root`).
    pub signer: Option<String>,
    /// The image digest the signature covers, in hex.
    pub signed_digest: Option<String>,
    /// Whether that is the image's Authenticode digest.
    pub digest_matches: bool,
    /// When the signer says it signed (RFC 3339), if it says.
    pub signing_time: Option<String>,
    /// Whether the signature holds: the signer's key signed the digest, and the digest is the
    /// image's.
    pub valid: bool,
    /// What is wrong, when it does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The signature, for checks against a certificate.
    #[serde(skip)]
    pub parsed: Option<ParsedSignature>,
}

/// The image's first signature, or `None` when it has no certificate table. `image_digest` is
/// the image's Authenticode digest, if it could be computed.
pub(crate) fn read_signature<R: Read + Seek>(
    reader: &mut R,
    headers: &PeHeaders,
    image_digest: Option<&[u8; 32]>,
) -> io::Result<Option<SignatureReport>> {
    let Some(table) = headers.certificate_table() else {
        return Ok(None);
    };
    // PeHeaders checked that the table lies inside the file.
    let mut bytes = vec![0; (table.end - table.start) as usize];
    reader.seek(SeekFrom::Start(table.start))?;
    reader.read_exact(&mut bytes)?;
    Ok(Some(report(&bytes, image_digest)))
}

fn failed(problem: String) -> SignatureReport {
    SignatureReport {
        signer: None,
        signed_digest: None,
        digest_matches: false,
        signing_time: None,
        valid: false,
        problem: Some(problem),
        parsed: None,
    }
}

fn report(table: &[u8], image_digest: Option<&[u8; 32]>) -> SignatureReport {
    let signature = match first_signed_data(table) {
        Ok(signature) => signature,
        Err(problem) => return failed(problem),
    };
    let parsed = match pkcs7::parse_signature(signature) {
        Ok(parsed) => parsed,
        Err(problem) => return failed(problem),
    };
    let digest_matches = parsed.digest_algorithm == spc::SHA256
        && image_digest.is_some_and(|digest| parsed.signed_digest == digest);
    let problem = match (&parsed.integrity, digest_matches) {
        (Err(problem), _) => Some(problem.clone()),
        (Ok(()), false) if parsed.digest_algorithm != spc::SHA256 => Some(format!(
            "the digest algorithm {} is not SHA-256",
            parsed.digest_algorithm
        )),
        (Ok(()), false) => Some("the signed digest is not the image's".to_string()),
        (Ok(()), true) => None,
    };
    SignatureReport {
        signer: parsed.signer.as_ref().map(keys::subject),
        signed_digest: Some(hex(&parsed.signed_digest)),
        digest_matches,
        signing_time: parsed
            .signing_time
            .map(|time| time.to_date_time().to_string()),
        valid: problem.is_none(),
        problem,
        parsed: Some(parsed),
    }
}

/// The PKCS#7 bytes of the first `WIN_CERTIFICATE` of a certificate table.
fn first_signed_data(table: &[u8]) -> Result<&[u8], String> {
    if table.len() < 8 {
        return Err(format!(
            "the certificate table is {} bytes, too short for a WIN_CERTIFICATE",
            table.len()
        ));
    }
    let length = u32::from_le_bytes([table[0], table[1], table[2], table[3]]) as usize;
    let revision = u16::from_le_bytes([table[4], table[5]]);
    let kind = u16::from_le_bytes([table[6], table[7]]);
    if length < 8 || length > table.len() {
        return Err(format!(
            "the WIN_CERTIFICATE claims {length} bytes in a table of {}",
            table.len()
        ));
    }
    if revision != WIN_CERT_REVISION_2_0 || kind != WIN_CERT_TYPE_PKCS_SIGNED_DATA {
        return Err(format!(
            "the WIN_CERTIFICATE is revision {revision:#06x}, type {kind:#06x}, not a PKCS#7 signature"
        ));
    }
    Ok(&table[8..length])
}

impl SignatureReport {
    /// Whether the signature holds and `trusted` vouches for its signer (it is the signer's
    /// certificate or issued it); else why not.
    pub fn verify_with(&self, trusted: &Certificate) -> Result<(), String> {
        if let Some(problem) = &self.problem {
            return Err(problem.clone());
        }
        let parsed = self.parsed.as_ref().ok_or("the signature cannot be read")?;
        parsed.chains_to(trusted)
    }
}

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
