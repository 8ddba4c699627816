//! What signing will do, decided and checked when the build is planned, before anything runs:
//! the key and certificate exist, the key is private to its owner, it belongs to the
//! certificate, the certificate is valid today, and the tool that signs is installed.
//!
//! mkosi's rules: `SecureBoot=yes` needs `SecureBootKey=` and `SecureBootCertificate=` (the
//! default files `mkosi.key` and `mkosi.crt` set them; `mkosi genkey` writes them). A key file
//! that others may access (`mode & 0o007`) is refused, as mkosi's `parse_path(secret=True)`
//! refuses it; a key readable by its group is accepted, as in mkosi. mkosi does not compare
//! the key with the certificate nor look at the certificate's dates (firmware ignores them);
//! kiln does, because a signature made with a mismatched pair or an expired certificate fails
//! only on the machine that boots it, long after the build.
//!
//! `SecureBootSignTool=`: `auto` signs in kiln when the key and the certificate are files, and
//! otherwise uses systemd-sbsign, or sbsign, whichever is installed (mkosi's order); `sbsign`
//! and `systemd-sbsign` always use that tool, which must be installed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kiln_recipe::{CertificateSource, KeySource, Recipe, SecureBootSignTool};
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;

use super::error::{SignError, SigningSetting};
use super::keys::{self, PrivateKey};
use crate::host::find_tool;

/// Where systemd installs systemd-sbsign when it is not on the `PATH`.
const SYSTEMD_SBSIGN_LIBEXEC: &str = "/usr/lib/systemd/systemd-sbsign";

/// Which program signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningMethod {
    /// kiln, with the key file.
    Kiln,
    /// sbsign (sbsigntools), found at this path.
    Sbsign(PathBuf),
    /// systemd-sbsign, found at this path.
    SystemdSbsign(PathBuf),
}

impl SigningMethod {
    /// Its name, as the stage key and messages show it.
    pub fn name(&self) -> &'static str {
        match self {
            SigningMethod::Kiln => "kiln",
            SigningMethod::Sbsign(_) => "sbsign",
            SigningMethod::SystemdSbsign(_) => "systemd-sbsign",
        }
    }
}

/// Everything the sign stage needs to know, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPlan {
    /// `SecureBootKey=` as the recipe has it: a path relative to the project (or absolute), or a
    /// reference an engine or provider understands.
    pub key: PathBuf,
    pub key_source: KeySource,
    /// `SecureBootCertificate=` as the recipe has it.
    pub certificate: PathBuf,
    pub certificate_source: CertificateSource,
    pub method: SigningMethod,
    /// What stands for the key in the stage key and the build index: `sha256:` and the digest
    /// of its public key (read from the key, or, when only a signing tool can read the key,
    /// from the certificate), or, for a key an engine or provider holds and a certificate kiln
    /// cannot read, `reference sha256:` and the digest of the reference (which may hold a PIN).
    pub key_identity: String,
    /// The certificate's subject, when kiln read the certificate.
    pub subject: Option<String>,
}

impl SigningPlan {
    /// Whether the key is a file kiln reads (rather than a reference a tool resolves).
    pub fn key_is_file(&self) -> bool {
        self.key_source == KeySource::File
    }

    /// Whether the certificate is a file (an input of the stage).
    pub fn certificate_is_file(&self) -> bool {
        self.certificate_source == CertificateSource::File
    }
}

/// Checks the recipe's signing settings (see the module documentation); `Ok` when
/// `SecureBoot=` is off. Call it when planning, so a bad key stops the build before it starts.
///
/// ```no_run
/// # let recipe = kiln_recipe::Recipe::default();
/// if let Err(error) = kiln_stages::sign::check_signing(&recipe, "project".as_ref()) {
///     // `error.setting()` names the setting to point the report at.
///     eprintln!("{error} ({:?})", error.setting());
/// }
/// ```
pub fn check_signing(recipe: &Recipe, project_dir: &Path) -> Result<(), SignError> {
    plan_signing(recipe, project_dir).map(|_| ())
}

/// The signing plan of `recipe`, checked; `None` when `SecureBoot=` is off.
pub fn plan_signing(recipe: &Recipe, project_dir: &Path) -> Result<Option<SigningPlan>, SignError> {
    plan_signing_at(recipe, project_dir, SystemTime::now())
}

/// [`plan_signing`] with the certificate's dates checked against `now`.
pub(super) fn plan_signing_at(
    recipe: &Recipe,
    project_dir: &Path,
    now: SystemTime,
) -> Result<Option<SigningPlan>, SignError> {
    let validation = &recipe.validation;
    if !validation.secure_boot {
        return Ok(None);
    }
    let key = validation.secure_boot_key.clone().ok_or(SignError::NoKey)?;
    let certificate = validation
        .secure_boot_certificate
        .clone()
        .ok_or(SignError::NoCertificate)?;
    let key_source = validation.secure_boot_key_source.clone();
    let certificate_source = validation.secure_boot_certificate_source.clone();
    let method = signing_method(
        validation.secure_boot_sign_tool,
        &key_source,
        &certificate_source,
    )?;

    let key_path = project_dir.join(&key);
    let certificate_path = project_dir.join(&certificate);
    let key_is_file = key_source == KeySource::File;
    let certificate_is_file = certificate_source == CertificateSource::File;
    if key_is_file && !key_path.is_file() {
        return Err(SignError::KeyMissing { path: key });
    }
    if certificate_is_file && !certificate_path.is_file() {
        return Err(SignError::CertificateMissing { path: certificate });
    }
    let private_key = if key_is_file {
        check_permissions(&key_path, &key)?;
        match PrivateKey::read(&key_path, &key) {
            Ok(private_key) => Some(private_key),
            // A tool may read keys kiln cannot (other algorithms, other formats).
            Err(SignError::KeyInvalid { .. }) if method != SigningMethod::Kiln => None,
            Err(error) => return Err(error),
        }
    } else {
        None
    };
    let parsed_certificate = if certificate_is_file {
        let parsed = keys::read_certificate(&certificate_path, &certificate)?;
        check_dates(&parsed, &certificate, now)?;
        Some(parsed)
    } else {
        None
    };
    if let (Some(private_key), Some(parsed)) = (&private_key, &parsed_certificate)
        && !keys::key_matches(private_key, parsed)
    {
        return Err(SignError::KeyMismatch {
            key,
            certificate,
            subject: keys::subject(parsed),
        });
    }
    let key_identity = match (&private_key, &parsed_certificate) {
        (Some(private_key), _) => private_key.identity(),
        // The certificate holds the key's public half.
        (None, Some(certificate)) => keys::certificate_key_identity(certificate),
        (None, None) => format!(
            "reference sha256:{:x}",
            Sha256::digest(key.as_os_str().as_encoded_bytes())
        ),
    };
    Ok(Some(SigningPlan {
        key,
        key_source,
        certificate,
        certificate_source,
        method,
        key_identity,
        subject: parsed_certificate.as_ref().map(keys::subject),
    }))
}

/// A key file others may access is refused (mkosi's rule).
fn check_permissions(path: &Path, shown: &Path) -> Result<(), SignError> {
    let metadata = std::fs::metadata(path).map_err(|source| SignError::KeyUnreadable {
        path: shown.to_path_buf(),
        source,
    })?;
    let mode = metadata.mode() & 0o7777;
    if mode & 0o007 != 0 {
        return Err(SignError::KeyPermissions {
            path: shown.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// The certificate must be valid at `now`.
fn check_dates(certificate: &Certificate, shown: &Path, now: SystemTime) -> Result<(), SignError> {
    let validity = &certificate.tbs_certificate.validity;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    if now < validity.not_before.to_unix_duration() {
        return Err(SignError::CertificateNotYetValid {
            path: shown.to_path_buf(),
            subject: keys::subject(certificate),
            not_before: keys::readable_time(&validity.not_before),
        });
    }
    if now > validity.not_after.to_unix_duration() {
        return Err(SignError::CertificateExpired {
            path: shown.to_path_buf(),
            subject: keys::subject(certificate),
            not_after: keys::readable_time(&validity.not_after),
        });
    }
    Ok(())
}

/// Which program signs, for `SecureBootSignTool=` and where the key and certificate come from.
pub(super) fn signing_method(
    tool: SecureBootSignTool,
    key_source: &KeySource,
    certificate_source: &CertificateSource,
) -> Result<SigningMethod, SignError> {
    let systemd_sbsign = || {
        find_tool("systemd-sbsign").or_else(|| {
            let libexec = Path::new(SYSTEMD_SBSIGN_LIBEXEC);
            libexec.is_file().then(|| libexec.to_path_buf())
        })
    };
    let sbsign_can_use_sources = || -> Result<(), SignError> {
        if let KeySource::Provider(_) = key_source {
            return Err(SignError::ToolCannotUseSource {
                tool: "sbsign",
                what: "a key",
                setting: SigningSetting::SecureBootKeySource.name(),
                value: key_source.to_mkosi(),
            });
        }
        if *certificate_source != CertificateSource::File {
            return Err(SignError::ToolCannotUseSource {
                tool: "sbsign",
                what: "a certificate",
                setting: SigningSetting::SecureBootCertificateSource.name(),
                value: certificate_source.to_mkosi(),
            });
        }
        Ok(())
    };
    match tool {
        SecureBootSignTool::Sbsign => {
            sbsign_can_use_sources()?;
            find_tool("sbsign")
                .map(SigningMethod::Sbsign)
                .ok_or(SignError::ToolMissing {
                    tool: "sbsign",
                    program: "sbsign",
                })
        }
        SecureBootSignTool::SystemdSbsign => systemd_sbsign()
            .map(SigningMethod::SystemdSbsign)
            .ok_or(SignError::ToolMissing {
                tool: "systemd-sbsign",
                program: "systemd-sbsign",
            }),
        SecureBootSignTool::Auto => {
            if *key_source == KeySource::File && *certificate_source == CertificateSource::File {
                return Ok(SigningMethod::Kiln);
            }
            if let Some(program) = systemd_sbsign() {
                return Ok(SigningMethod::SystemdSbsign(program));
            }
            let (setting, value) = if *key_source != KeySource::File {
                (SigningSetting::SecureBootKeySource, key_source.to_mkosi())
            } else {
                (
                    SigningSetting::SecureBootCertificateSource,
                    certificate_source.to_mkosi(),
                )
            };
            match find_tool("sbsign") {
                Some(program) => {
                    sbsign_can_use_sources()?;
                    Ok(SigningMethod::Sbsign(program))
                }
                None => Err(SignError::NoToolForSource {
                    setting: setting.name(),
                    value,
                }),
            }
        }
    }
}
