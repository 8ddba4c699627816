//! Why a UKI could not be assembled, with what the user can do about it.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use crate::pe::PeError;

#[derive(Debug, Error, Diagnostic)]
pub enum UkiError {
    #[error("`{}` is not a systemd-stub kiln can use", path.display())]
    #[diagnostic(help(
        "The stub comes from the image (`usr/lib/systemd/boot/efi/linux<arch>.efi.stub`); reinstall the package that provides it"
    ))]
    Stub {
        path: PathBuf,
        #[source]
        #[diagnostic_source]
        source: PeError,
    },

    #[error("The systemd-stub `{}` is {size} bytes; kiln reads stubs up to {max} bytes", path.display())]
    #[diagnostic(help("A systemd-stub is about 100 KiB; check that the file is really the stub"))]
    StubTooLarge { path: PathBuf, size: u64, max: u64 },

    #[error("The systemd-stub `{}` is signed", path.display())]
    #[diagnostic(help(
        "Adding sections would break its signature: use the unsigned stub (`linux<arch>.efi.stub`) and sign the UKI instead"
    ))]
    StubSigned { path: PathBuf },

    #[error(
        "The systemd-stub `{}` has FileAlignment {file_alignment:#x} and SectionAlignment {section_alignment:#x}: both must be powers of two, FileAlignment at most 64 KiB",
        path.display()
    )]
    #[diagnostic(help(
        "The stub's optional header is damaged; reinstall the package that provides it"
    ))]
    BadAlignment {
        path: PathBuf,
        file_alignment: u32,
        section_alignment: u32,
    },

    #[error(
        "The systemd-stub `{}` has no room for {count} more section headers: they need bytes up to {needed:#x}, its headers end at {available:#x}",
        path.display()
    )]
    #[diagnostic(help(
        "The stub was linked without spare header space; use a stub from systemd 252 or later"
    ))]
    NoHeaderRoom {
        path: PathBuf,
        count: usize,
        needed: u64,
        available: u64,
    },

    #[error("The UKI would have {count} sections; a PE image has at most {max}")]
    #[diagnostic(help("The stub has too many sections of its own; use systemd's stub"))]
    TooManySections { count: usize, max: u16 },

    #[error("`{name}` is not a valid UKI section name")]
    #[diagnostic(help("Section names are printable ASCII, at most 8 bytes, such as `.osrel`"))]
    BadSectionName { name: String },

    #[error("The section `{name}` is empty")]
    #[diagnostic(help("A UKI section holds at least one byte; leave the section out instead"))]
    EmptySection { name: String },

    #[error("The section `{name}` is given twice")]
    #[diagnostic(help("Each section of a UKI appears once"))]
    DuplicateSection { name: String },

    #[error("The systemd-stub already has a section `{name}` that holds code or writable data")]
    #[diagnostic(help(
        "Only read-only data sections of the stub (such as `.sbat`) can be replaced"
    ))]
    StubSectionClash { name: String },

    #[error("The section `{name}` is {size} bytes; a PE image holds at most 4 GiB")]
    #[diagnostic(help("Check the size of the kernel and the initrd"))]
    SectionTooLarge { name: String, size: u64 },

    #[error("The UKI would exceed the 4 GiB a PE image can address")]
    #[diagnostic(help("Make the initrd smaller (fewer packages, stronger compression)"))]
    ImageTooLarge,

    #[error("Cannot read `{}`", path.display())]
    #[diagnostic(help("Check that the file exists and is readable"))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("Cannot write `{}`", path.display())]
    #[diagnostic(help("Check that the directory is writable and that the disk has room"))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{}` changed while it was copied into the UKI: {expected} bytes expected, {found} read", path.display())]
    #[diagnostic(help("Something else is writing the file; run the build again"))]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    #[error("The image has no systemd-stub at `/{path}`")]
    #[diagnostic(help(
        "A UKI is built around the image's systemd-stub: add {package} to Packages="
    ))]
    MissingStub { path: String, package: String },

    #[error("The image has no kernel: neither `/{modules_path}` nor `/{boot_path}` exists")]
    #[diagnostic(help("A UKI needs the image's kernel: add {package} to Packages="))]
    MissingKernel {
        modules_path: String,
        boot_path: String,
        package: String,
    },

    #[error(
        "The image has no os-release: neither `/usr/lib/os-release` nor `/etc/os-release` exists"
    )]
    #[diagnostic(help(
        "The UKI's `.osrel` section is the image's os-release; the distribution's base package provides it"
    ))]
    MissingOsRelease,

    #[error("`/{path}` in the image is a {kind}, not a regular file")]
    #[diagnostic(help("Check what the packages, trees or scripts put at that path"))]
    NotAFile { path: String, kind: &'static str },

    #[error("Architecture `{architecture}` has no UEFI, so no UKI can boot on it")]
    #[diagnostic(help("UKIs exist for x86, x86-64, arm, arm64, riscv32, riscv64 and loongarch64"))]
    NoUefi { architecture: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Tree(#[from] crate::error::TreeError),

    #[error(transparent)]
    Store(#[from] kiln_cache::StoreError),
}
