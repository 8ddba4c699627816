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
//! The JSON form holds the same fields. ukify's JSON is an object keyed by section name, which
//! loses a section whose name repeats (as in UKIs with several profiles); kiln's is a list of
//! objects with a `name`, plus `signed`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::pe::{PeError, PeHeaders};

/// The sections ukify shows as text.
pub const TEXT_SECTIONS: [&str; 7] = [
    ".cmdline", ".osrel", ".uname", ".pcrpkey", ".pcrsig", ".sbat", ".profile",
];

/// Text longer than this is not shown (its size and digest still are).
pub const MAX_TEXT: u64 = 1 << 20;

/// What ukify shows for text that is not UTF-8.
pub const NOT_UTF8: &str = "(not valid UTF-8)";

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
    /// Whether the certificate table data directory is non-empty.
    pub signed: bool,
    /// The certificate table's size in bytes (0 when unsigned).
    pub signature_size: u64,
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
}

impl Diagnostic for InspectError {
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        match self {
            InspectError::Open { .. } => {
                Some(Box::new("Check that the file exists and is readable"))
            }
            InspectError::Malformed { problem, .. } => problem.help(),
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

/// Inspects the PE image `reader` holds; reads its headers, then each section once.
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
    let certificate_table = headers.certificate_table();
    Ok(Inspection {
        sections,
        signed: certificate_table.is_some(),
        signature_size: certificate_table.map_or(0, |range| range.end - range.start),
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
        if self.signed {
            out.push_str(&format!(
                "Authenticode signature: present ({} bytes)\n",
                self.signature_size
            ));
        } else {
            out.push_str("Authenticode signature: none\n");
        }
        out
    }

    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
