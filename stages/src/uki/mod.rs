//! Unified Kernel Images: assembling a UKI from a systemd-stub as ukify does ([`assemble`]), the
//! uki stage that takes its parts from the image tree ([`stage`], [`lookup`]), and `kiln
//! inspect` ([`inspect`]), which shows a signature with [`crate::sign`]'s help. The PE headers
//! are read by [`crate::pe`], below both this module and [`crate::sign`].
//!
//! ```no_run
//! use kiln_stages::uki::{assemble_uki, inspect_file, UkiSection};
//! assemble_uki(
//!     "linuxx64.efi.stub".as_ref(),
//!     &[
//!         UkiSection::file(".osrel", "os-release"),
//!         UkiSection::bytes(".uname", "6.1.0-57-amd64"),
//!         UkiSection::file(".initrd", "initrd.cpio.zst"),
//!         UkiSection::file(".linux", "vmlinuz"),
//!     ],
//!     "image.efi".as_ref(),
//! )?;
//! print!("{}", inspect_file("image.efi".as_ref())?.to_text());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod assemble;
mod error;
mod inspect;
pub mod lookup;
pub mod sbat;
mod stage;

pub use crate::pe::{PeError, PeHeaders};
pub use assemble::{PlacedSection, Placement, SectionContent, UkiLayout, UkiSection, assemble_uki};
pub use error::UkiError;
pub use inspect::{
    CertificateCheck, InspectError, InspectedSection, Inspection, inspect, inspect_file,
    inspect_file_with_certificate,
};
pub use stage::{KernelStage, UkiInputs, UkiStage, ukify_sections};
