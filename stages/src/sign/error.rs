//! Why an image cannot be signed, with the recipe setting each problem is about and what the
//! user can do next.
//!
//! No variant carries a private key's bytes or text, nor an error of a parser that read them:
//! a key that cannot be read is described by its path and a fixed reason only.

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

use super::digest::LayoutError;
use crate::pe::PeError;

/// The recipe settings signing reads, so a report can point at the line that set one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningSetting {
    SecureBoot,
    SecureBootKey,
    SecureBootKeySource,
    SecureBootCertificate,
    SecureBootCertificateSource,
    SecureBootSignTool,
}

impl SigningSetting {
    /// The setting's name as mkosi spells it.
    pub fn name(self) -> &'static str {
        match self {
            SigningSetting::SecureBoot => "SecureBoot",
            SigningSetting::SecureBootKey => "SecureBootKey",
            SigningSetting::SecureBootKeySource => "SecureBootKeySource",
            SigningSetting::SecureBootCertificate => "SecureBootCertificate",
            SigningSetting::SecureBootCertificateSource => "SecureBootCertificateSource",
            SigningSetting::SecureBootSignTool => "SecureBootSignTool",
        }
    }
}

/// Why a key file is not a key kiln can sign with (a fixed text: never the parser's message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Neither PEM nor a DER PKCS#8 key.
    NotAKey,
    /// A PEM block kiln cannot read (a damaged or truncated key).
    Damaged,
    /// Protected by a passphrase (`BEGIN ENCRYPTED PRIVATE KEY`).
    Encrypted,
    /// Neither RSA nor ECDSA on P-256.
    UnsupportedAlgorithm,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyProblem::NotAKey => "it holds no PEM private key",
            KeyProblem::Damaged => "its private key is damaged",
            KeyProblem::Encrypted => "it is encrypted with a passphrase",
            KeyProblem::UnsupportedAlgorithm => "it is neither an RSA nor a P-256 key",
        })
    }
}

#[derive(Debug, Error, Diagnostic)]
pub enum SignError {
    #[error("`SecureBoot=yes`, but no Secure Boot key is configured")]
    #[diagnostic(help(
        "Run `kiln genkey` to write `mkosi.key` and `mkosi.crt` into the project, or set `SecureBootKey=`"
    ))]
    NoKey,

    #[error("`SecureBoot=yes`, but no Secure Boot certificate is configured")]
    #[diagnostic(help(
        "Run `kiln genkey` to write `mkosi.key` and `mkosi.crt` into the project, or set `SecureBootCertificate=`"
    ))]
    NoCertificate,

    #[error("The Secure Boot key `{}` does not exist", path.display())]
    #[diagnostic(help(
        "Run `kiln genkey` to write a new `mkosi.key` and `mkosi.crt`; a key held by a token needs `SecureBootKeySource=engine:NAME` or `provider:NAME`"
    ))]
    KeyMissing { path: PathBuf },

    #[error("The Secure Boot key `{}` is accessible by others (mode {mode:04o})", path.display())]
    #[diagnostic(help(
        "It is a secret: restrict it to its owner with `chmod 600 {}` (mkosi refuses it too)",
        path.display()
    ))]
    KeyPermissions { path: PathBuf, mode: u32 },

    #[error("Cannot read the Secure Boot key `{}`", path.display())]
    #[diagnostic(help("Check that the file is readable by the user running kiln"))]
    KeyUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("The Secure Boot key `{}` cannot be used: {problem}", path.display())]
    #[diagnostic(help(
        "kiln signs with unencrypted PEM keys: PKCS#8 (`BEGIN PRIVATE KEY`, as `kiln genkey` and `mkosi genkey` write), PKCS#1 RSA or SEC1 P-256; for other keys set `SecureBootSignTool=sbsign`"
    ))]
    KeyInvalid { path: PathBuf, problem: KeyProblem },

    #[error(
        "The Secure Boot key `{}` does not belong to the certificate `{}` ({subject})",
        key.display(),
        certificate.display()
    )]
    #[diagnostic(help(
        "Point `SecureBootKey=` and `SecureBootCertificate=` at a key and its certificate, or write a new pair with `kiln genkey -f`"
    ))]
    KeyMismatch {
        key: PathBuf,
        certificate: PathBuf,
        subject: String,
    },

    #[error("The Secure Boot certificate `{}` does not exist", path.display())]
    #[diagnostic(help(
        "Run `kiln genkey` to write a new `mkosi.key` and `mkosi.crt`, or point `SecureBootCertificate=` at the key's certificate"
    ))]
    CertificateMissing { path: PathBuf },

    #[error("Cannot read the Secure Boot certificate `{}`", path.display())]
    #[diagnostic(help("Check that the file is readable by the user running kiln"))]
    CertificateUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("The Secure Boot certificate `{}` is not an X.509 certificate: {reason}", path.display())]
    #[diagnostic(help(
        "`SecureBootCertificate=` names a PEM (`BEGIN CERTIFICATE`) or DER X.509 certificate, such as the `mkosi.crt` that `kiln genkey` writes"
    ))]
    CertificateInvalid { path: PathBuf, reason: String },

    #[error("The Secure Boot certificate `{}` ({subject}) expired on {not_after}", path.display())]
    #[diagnostic(help(
        "Write a new key and certificate with `kiln genkey -f`, and enroll the new certificate where the old one is trusted"
    ))]
    CertificateExpired {
        path: PathBuf,
        subject: String,
        not_after: String,
    },

    #[error(
        "The Secure Boot certificate `{}` ({subject}) is not valid before {not_before}",
        path.display()
    )]
    #[diagnostic(help(
        "Check this machine's clock, or write a certificate that is valid now with `kiln genkey -f`"
    ))]
    CertificateNotYetValid {
        path: PathBuf,
        subject: String,
        not_before: String,
    },

    #[error("`SecureBootSignTool={tool}` needs `{program}`, which is not installed")]
    #[diagnostic(help(
        "Install it, or set `SecureBootSignTool=auto` to let kiln sign a key held in a file itself"
    ))]
    ToolMissing {
        tool: &'static str,
        program: &'static str,
    },

    #[error("`{setting}={value}` needs systemd-sbsign or sbsign, and neither is installed")]
    #[diagnostic(help(
        "Install systemd-sbsign (systemd 257 or later) or sbsign (Debian: sbsigntool); kiln itself signs only with keys and certificates held in files"
    ))]
    NoToolForSource {
        setting: &'static str,
        value: String,
    },

    #[error("`SecureBootSignTool={tool}` cannot use {what} from `{setting}={value}`")]
    #[diagnostic(help(
        "sbsign reads the certificate from a file and the key from a file or an OpenSSL engine; use `SecureBootSignTool=systemd-sbsign` for OpenSSL providers"
    ))]
    ToolCannotUseSource {
        tool: &'static str,
        what: &'static str,
        setting: &'static str,
        value: String,
    },

    #[error("`{}` is not a PE image kiln can sign", path.display())]
    Image {
        path: PathBuf,
        #[source]
        #[diagnostic_source]
        source: PeError,
    },

    #[error("`{}` cannot be signed", path.display())]
    Layout {
        path: PathBuf,
        #[source]
        #[diagnostic_source]
        source: LayoutError,
    },

    #[error("`{}` is signed already", path.display())]
    #[diagnostic(help("kiln signs the UKI it assembles, which carries no signature"))]
    AlreadySigned { path: PathBuf },

    #[error("`{}` would exceed the 4 GiB a PE image's certificate table can address", path.display())]
    #[diagnostic(help("Make the initrd smaller (fewer packages, stronger compression)"))]
    TooLarge { path: PathBuf },

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

    #[error("Cannot encode the {what} of the signature")]
    #[diagnostic(help("This is a bug in kiln; please report it with the certificate used"))]
    Encoding {
        what: &'static str,
        #[source]
        source: der::Error,
    },

    #[error("The Secure Boot key `{}` could not sign", path.display())]
    #[diagnostic(help(
        "Check that the key is intact; writing a new pair with `kiln genkey -f` helps"
    ))]
    SigningFailed { path: PathBuf },

    #[error("The Secure Boot key `{}` changed after the build was planned", path.display())]
    #[diagnostic(help("Run the build again"))]
    KeyChanged { path: PathBuf },

    #[error("`{command}` failed with exit code {code}")]
    #[diagnostic(help("Its output ends with:\n{}", output.join("\n")))]
    ToolFailed {
        command: String,
        code: i32,
        output: Vec<String>,
    },

    #[error("`{command}` wrote no signed image")]
    #[diagnostic(help("Check the signing tool's output with `kiln build -v`"))]
    ToolWroteNoSignature { command: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Host(#[from] crate::host::HostError),

    #[error(transparent)]
    Store(#[from] kiln_cache::StoreError),
}

impl SignError {
    /// The recipe setting the problem is about, so a report can point at the line that set
    /// it; `None` for problems of the image or the host.
    pub fn setting(&self) -> Option<SigningSetting> {
        use SigningSetting::*;
        Some(match self {
            SignError::NoKey
            | SignError::KeyMissing { .. }
            | SignError::KeyPermissions { .. }
            | SignError::KeyUnreadable { .. }
            | SignError::KeyInvalid { .. }
            | SignError::KeyMismatch { .. }
            | SignError::KeyChanged { .. }
            | SignError::SigningFailed { .. } => SecureBootKey,
            SignError::NoCertificate
            | SignError::CertificateMissing { .. }
            | SignError::CertificateUnreadable { .. }
            | SignError::CertificateInvalid { .. }
            | SignError::CertificateExpired { .. }
            | SignError::CertificateNotYetValid { .. } => SecureBootCertificate,
            SignError::ToolMissing { .. }
            | SignError::ToolCannotUseSource { .. }
            | SignError::ToolFailed { .. }
            | SignError::ToolWroteNoSignature { .. } => SecureBootSignTool,
            SignError::NoToolForSource { setting, .. } => {
                if *setting == SecureBootCertificateSource.name() {
                    SecureBootCertificateSource
                } else {
                    SecureBootKeySource
                }
            }
            SignError::Image { .. }
            | SignError::Layout { .. }
            | SignError::AlreadySigned { .. }
            | SignError::TooLarge { .. }
            | SignError::Read { .. }
            | SignError::Write { .. }
            | SignError::Encoding { .. }
            | SignError::Host(_)
            | SignError::Store(_) => return None,
        })
    }
}
