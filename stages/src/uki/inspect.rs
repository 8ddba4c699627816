//! `kiln inspect`: what a PE file (a UKI, a stub, an EFI kernel) holds, in the shape of
//! `ukify inspect --all`.
//!
//! For each section, in table order: its name, its size (the VirtualSize, as ukify shows it),
//! the sha256 of its content (the VirtualSize's first bytes the file holds, as ukify hashes
//! them) and, for the sections ukify shows as text (`.osrel`, `.cmdline`, `.uname`, `.sbat`,
//! `.pcrpkey`, `.pcrsig`, `.profile`), the text. Then whether the file carries an Authenticode
//! signature: a non-empty certificate table data directory.
//!
//! The text form follows ukify's, with the signature as a last line:
//!
//! ```text
//! .osrel:
//!   size: 267 bytes
//!   sha256: 6f2c…
//!   text:
//!     PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
//! Authenticode signature: none
//! ```
//!
//! Before it, the image's Authenticode SHA-256 digest (what a signature covers, as `pesign -h`
//! and `osslsigncode` compute it). For a signed file, the lines after the signature's give its
//! signer, the digest it covers and whether that is the image's, its signing time, whether it
//! holds, and, with `--cert FILE`, whether that certificate vouches for the signer (as
//! `sbverify --cert FILE` checks):
//!
//! ```text
//! Authenticode sha256: 11c7d1e6…
//! Authenticode signature: present (1464 bytes)
//!   signer: CN=mkosi of root
//!   signed digest: 11c7d1e6… (the image's)
//!   signing time: 2027-01-02T03:04:05Z
//!   signature: valid
//!   verified with mkosi.crt: yes
//! ```
//!
//! The JSON form holds the same fields. ukify's JSON is an object keyed by section name, which
//! loses a section whose name repeats (as in UKIs with several profiles); kiln's is a list of
//! objects with a `name`, plus `authenticode_sha256`, `signed`, `signature_size`, `signature`
//! (signer, signed_digest, digest_matches, signing_time, valid, problem) and, with `--cert`,
//! `certificate_check` (certificate, verified, problem).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use x509_cert::Certificate;

use crate::pe::{PeError, PeHeaders};
use crate::sign::SignatureReport;
use crate::sign::digest::{AuthenticodeLayout, hash_ranges};
use crate::sign::verify::{hex, read_signature};

/// The sections ukify shows as text.
pub(super) const TEXT_SECTIONS: [&str; 7] = [
    ".cmdline", ".osrel", ".uname", ".pcrpkey", ".pcrsig", ".sbat", ".profile",
];

/// Text longer than this is not shown (its size and digest still are).
pub(super) const MAX_TEXT: u64 = 1 << 20;

/// What ukify shows for text that is not UTF-8.
pub(super) const NOT_UTF8: &str = "(not valid UTF-8)";

/// One section as `kiln inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InspectedSection {
    pub name: String,
    /// The VirtualSize.
    pub size: u64,
    /// sha256 of the content the file holds, in hex.
    pub sha256: String,
    /// The content as text, for text sections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What `kiln inspect` shows of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    pub sections: Vec<InspectedSection>,
    /// The Authenticode SHA-256 digest of the image, in hex; `None` when the image cannot carry
    /// a signature (no certificate table entry, damaged headers).
    pub authenticode_sha256: Option<String>,
    /// Whether the certificate table data directory is non-empty.
    pub signed: bool,
    /// The certificate table's size in bytes (0 when unsigned).
    pub signature_size: u64,
    /// The first signature, when signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureReport>,
    /// Whether a given certificate vouches for the signature (`--cert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_check: Option<CertificateCheck>,
}

/// Whether a certificate vouches for an image's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateCheck {
    /// The certificate, as named on the command line.
    pub certificate: String,
    /// The signature holds, covers this image, and the certificate is the signer's or issued
    /// it.
    pub verified: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Why a file could not be inspected.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("Cannot open `{}`: {problem}", path.display())]
    Open {
        path: PathBuf,
        problem: std::io::Error,
    },

    #[error("`{}`: {problem}", path.display())]
    Malformed { path: PathBuf, problem: PeError },

    #[error("Cannot use the certificate `{}`: {problem}", path.display())]
    Certificate { path: PathBuf, problem: String },

    #[error("The signature of `{}` does not verify with `{}`: {problem}", path.display(), certificate.display())]
    NotVerified {
        path: PathBuf,
        certificate: PathBuf,
        problem: String,
    },
}

impl Diagnostic for InspectError {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        match self {
            InspectError::Open { .. } => {
                Some(Box::new("Check that the file exists and is readable"))
            }
            InspectError::Malformed { problem, .. } => problem.help(),
            InspectError::Certificate { .. } => Some(Box::new(
                "Pass a PEM or DER X.509 certificate, such as the project's `mkosi.crt`",
            )),
            InspectError::NotVerified { .. } => Some(Box::new(
                "Pass the certificate of the key that signed the image (or of the authority that issued it); an image changed after signing must be signed again",
            )),
        }
    }
}

/// Inspects the PE file at `path`.
pub fn inspect_file(path: &Path) -> Result<Inspection, InspectError> {
    let mut file = File::open(path).map_err(|problem| InspectError::Open {
        path: path.to_path_buf(),
        problem,
    })?;
    if file.metadata().is_ok_and(|meta| meta.is_dir()) {
        return Err(InspectError::Open {
            path: path.to_path_buf(),
            problem: std::io::Error::from(std::io::ErrorKind::IsADirectory),
        });
    }
    inspect(&mut file).map_err(|problem| InspectError::Malformed {
        path: path.to_path_buf(),
        problem,
    })
}

/// Inspects the PE file at `path`, and checks its signature with the certificate at
/// `certificate` (see [`Inspection::check_certificate`]).
pub fn inspect_file_with_certificate(
    path: &Path,
    certificate: &Path,
) -> Result<Inspection, InspectError> {
    let trusted = std::fs::read(certificate)
        .map_err(|error| error.to_string())
        .and_then(|bytes| crate::sign::keys::parse_certificate(&bytes))
        .map_err(|problem| InspectError::Certificate {
            path: certificate.to_path_buf(),
            problem,
        })?;
    let mut inspection = inspect_file(path)?;
    inspection.check_certificate(certificate.display().to_string(), &trusted);
    Ok(inspection)
}

/// Inspects the PE image `reader` holds; reads its headers, then each section once, then the
/// Authenticode ranges once.
pub fn inspect<R: Read + Seek>(reader: &mut R) -> Result<Inspection, PeError> {
    let headers = PeHeaders::read(reader)?;
    let mut sections = Vec::with_capacity(headers.sections.len());
    for section in &headers.sections {
        let name = section.name();
        let len = section.content_len();
        let show_text = TEXT_SECTIONS.contains(&name.as_str()) && len <= MAX_TEXT;
        reader.seek(SeekFrom::Start(u64::from(section.raw_offset())))?;
        let mut content = reader.by_ref().take(len);
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut buffer = vec![0; 1 << 16];
        loop {
            let read = content.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            if show_text {
                kept.extend_from_slice(&buffer[..read]);
            }
        }
        let text =
            show_text.then(|| String::from_utf8(kept).unwrap_or_else(|_| NOT_UTF8.to_string()));
        sections.push(InspectedSection {
            name,
            size: u64::from(section.virtual_size()),
            sha256: format!("{:x}", hasher.finalize()),
            text,
        });
    }
    let authenticode = match AuthenticodeLayout::of_image(&headers) {
        Ok(layout) => Some(hash_ranges(reader, &layout.hashed, headers.file_len)?),
        Err(_) => None,
    };
    let signature = read_signature(reader, &headers, authenticode.as_ref())?;
    let certificate_table = headers.certificate_table();
    Ok(Inspection {
        sections,
        authenticode_sha256: authenticode.as_ref().map(|digest| hex(digest)),
        signed: certificate_table.is_some(),
        signature_size: certificate_table.map_or(0, |range| range.end - range.start),
        signature,
        certificate_check: None,
    })
}

impl Inspection {
    /// The text form (see the module documentation).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for section in &self.sections {
            out.push_str(&format!(
                "{}:\n  size: {} bytes\n  sha256: {}\n",
                section.name, section.size, section.sha256
            ));
            if let Some(text) = &section.text {
                out.push_str("  text:\n");
                let trimmed = text.trim_end_matches(|c: char| c.is_whitespace() || c == '\0');
                for line in trimmed.lines() {
                    if line.is_empty() {
                        out.push('\n');
                    } else {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
        }
        if let Some(digest) = &self.authenticode_sha256 {
            out.push_str(&format!("Authenticode sha256: {digest}\n"));
        }
        if !self.signed {
            out.push_str("Authenticode signature: none\n");
            return out;
        }
        out.push_str(&format!(
            "Authenticode signature: present ({} bytes)\n",
            self.signature_size
        ));
        if let Some(signature) = &self.signature {
            if let Some(signer) = &signature.signer {
                out.push_str(&format!("  signer: {signer}\n"));
            }
            if let Some(digest) = &signature.signed_digest {
                let whose = if signature.digest_matches {
                    "the image's"
                } else {
                    "not the image's"
                };
                out.push_str(&format!("  signed digest: {digest} ({whose})\n"));
            }
            if let Some(time) = &signature.signing_time {
                out.push_str(&format!("  signing time: {time}\n"));
            }
            match &signature.problem {
                None => out.push_str("  signature: valid\n"),
                Some(problem) => out.push_str(&format!("  signature: invalid: {problem}\n")),
            }
        }
        if let Some(check) = &self.certificate_check {
            match &check.problem {
                None => out.push_str(&format!("  verified with {}: yes\n", check.certificate)),
                Some(problem) => out.push_str(&format!(
                    "  verified with {}: no: {problem}\n",
                    check.certificate
                )),
            }
        }
        out
    }

    /// Checks the signature with `certificate` (named `name` in the output): it verifies when
    /// it holds, covers this image, and the certificate is the signer's or issued it.
    pub fn check_certificate(&mut self, name: String, certificate: &Certificate) {
        let result = match &self.signature {
            None => Err("the image is not signed".to_string()),
            Some(signature) => signature.verify_with(certificate),
        };
        self.certificate_check = Some(CertificateCheck {
            certificate: name,
            verified: result.is_ok(),
            problem: result.err(),
        });
    }

    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
