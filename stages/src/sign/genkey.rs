//! `kiln genkey`: a Secure Boot key and its self-signed certificate, as `mkosi genkey` writes
//! them.
//!
//! mkosi runs `openssl req -new -x509 -newkey rsa:2048 -nodes -days 730 -subj "/CN=mkosi of
//! $USER/"` and writes `mkosi.key` and `mkosi.crt` into the project directory, refusing to
//! replace either unless forced. kiln writes the same with RustCrypto: an RSA key of 2048 bits
//! (PKCS#8 PEM, `BEGIN PRIVATE KEY`, mode 0600 as OpenSSL creates it), and an X.509 v3
//! certificate signed with it (sha256WithRSAEncryption; a random positive 159-bit serial; valid
//! from now for 730 days; subject and issuer `CN=mkosi of <user>`, as a UTF8String; the
//! extensions OpenSSL 3 gives `req -x509`: subject and authority key identifiers and
//! `basicConstraints` critical `CA:TRUE`). Keys are random: the output is not reproducible.
//!
//! Both files are written to a temporary file in the directory and renamed into place, so the
//! key never exists with a wider mode, even when `-f` replaces a key that had one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use der::asn1::{Any, SetOfVec, Utf8StringRef};
use der::referenced::OwnedToRef;
use der::{EncodePem, pem::LineEnding};
use miette::Diagnostic;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use rsa::rand_core::{OsRng, RngCore};
use sha2::Sha256;
use spki::SubjectPublicKeyInfoOwned;
use thiserror::Error;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, SubjectKeyIdentifier};
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use zeroize::Zeroizing;

/// The key's file name in the project, as mkosi names it.
pub const KEY_FILE: &str = "mkosi.key";
/// The certificate's file name in the project, as mkosi names it.
pub const CERTIFICATE_FILE: &str = "mkosi.crt";
/// mkosi's key size.
pub const KEY_BITS: usize = 2048;
/// mkosi's `--genkey-valid-days` default.
pub const DEFAULT_VALID_DAYS: u32 = 730;

/// commonName.
const COMMON_NAME: der::asn1::ObjectIdentifier = der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");

#[derive(Debug, Error, Diagnostic)]
pub enum GenkeyError {
    #[error("`{}` already exists", path.display())]
    #[diagnostic(help(
        "To generate new keys, first remove `mkosi.key` and `mkosi.crt`, or pass `-f` to replace them"
    ))]
    Exists { path: PathBuf },

    #[error("Cannot write `{}`", path.display())]
    #[diagnostic(help("Check that the project directory is writable"))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{name}` is not a name a certificate can hold")]
    #[diagnostic(help("Pass a common name of printable text with --genkey-common-name"))]
    BadCommonName { name: String },

    #[error("{valid_days} days of validity lie beyond what a certificate can express")]
    #[diagnostic(help("Pass fewer days with --genkey-valid-days"))]
    BadValidity { valid_days: u32 },

    #[error("Generating the key or its certificate failed: {reason}")]
    #[diagnostic(help("This is a bug in kiln; please report it"))]
    Generate { reason: String },
}

/// A new key and its certificate, as PEM text.
pub struct KeyPair {
    /// PKCS#8 (`BEGIN PRIVATE KEY`); zeroed when dropped.
    pub key_pem: Zeroizing<String>,
    /// `BEGIN CERTIFICATE`.
    pub certificate_pem: String,
}

/// The common name `mkosi genkey` uses: `mkosi of <user>` (the user as Python's
/// `getpass.getuser()` finds it: `LOGNAME`, `USER`, `LNAME`, `USERNAME`, else the password
/// database).
pub fn default_common_name() -> String {
    let from_environment = ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty());
    let user = from_environment
        .or_else(user_name_of_uid)
        .unwrap_or_else(|| "root".to_string());
    format!("mkosi of {user}")
}

fn user_name_of_uid() -> Option<String> {
    // SAFETY: getuid has no preconditions; getpwuid_r writes only into the buffers given.
    unsafe {
        let uid = libc::getuid();
        let mut entry: libc::passwd = std::mem::zeroed();
        let mut buffer = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let code = libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        );
        if code != 0 || result.is_null() || entry.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(entry.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

fn generate_error(error: impl std::fmt::Display) -> GenkeyError {
    GenkeyError::Generate {
        reason: error.to_string(),
    }
}

/// A new RSA key and a self-signed certificate for `common_name`, valid from `not_before` for
/// `valid_days` days.
pub fn generate_key_pair(
    common_name: &str,
    not_before: SystemTime,
    valid_days: u32,
) -> Result<KeyPair, GenkeyError> {
    let key = rsa::RsaPrivateKey::new(&mut OsRng, KEY_BITS).map_err(generate_error)?;
    let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.clone());

    let bad_name = || GenkeyError::BadCommonName {
        name: common_name.to_string(),
    };
    let value = Utf8StringRef::new(common_name).map_err(|_| bad_name())?;
    let common_name_attribute = AttributeTypeAndValue {
        oid: COMMON_NAME,
        value: Any::encode_from(&value).map_err(|_| bad_name())?,
    };
    let subject: Name = RdnSequence(vec![RelativeDistinguishedName(
        SetOfVec::try_from(vec![common_name_attribute]).map_err(|_| bad_name())?,
    )]);

    // Whole seconds, as certificates hold them.
    let since_epoch = not_before
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(generate_error)?;
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs());
    let not_after = not_before + Duration::from_secs(u64::from(valid_days) * 86_400);
    let bad_validity = |_| GenkeyError::BadValidity { valid_days };
    let validity = Validity {
        not_before: Time::try_from(not_before).map_err(bad_validity)?,
        not_after: Time::try_from(not_after).map_err(bad_validity)?,
    };

    // A positive serial of 159 random bits, as OpenSSL draws them.
    let mut serial = [0u8; 20];
    OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let serial = SerialNumber::new(&serial).map_err(generate_error)?;

    let public_key = key.to_public_key();
    let spki_der = public_key.to_public_key_der().map_err(generate_error)?;
    let spki = SubjectPublicKeyInfoOwned::try_from(spki_der.as_bytes()).map_err(generate_error)?;
    let mut builder = CertificateBuilder::new(
        Profile::Manual { issuer: None },
        serial,
        validity,
        subject,
        spki.clone(),
        &signer,
    )
    .map_err(generate_error)?;
    let spki_ref = spki.owned_to_ref();
    builder
        .add_extension(&SubjectKeyIdentifier::try_from(spki_ref.clone()).map_err(generate_error)?)
        .map_err(generate_error)?;
    builder
        .add_extension(&AuthorityKeyIdentifier::try_from(spki_ref).map_err(generate_error)?)
        .map_err(generate_error)?;
    builder
        .add_extension(&BasicConstraints {
            ca: true,
            path_len_constraint: None,
        })
        .map_err(generate_error)?;
    let certificate = builder
        .build::<rsa::pkcs1v15::Signature>()
        .map_err(generate_error)?;

    let key_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(generate_error)?;
    let certificate_pem = certificate.to_pem(LineEnding::LF).map_err(generate_error)?;
    Ok(KeyPair {
        key_pem: Zeroizing::new(key_pem.to_string()),
        certificate_pem,
    })
}

/// Where [`write_key_pair`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub key: PathBuf,
    pub certificate: PathBuf,
}

/// `time` as a UTC date, `YYYY-MM-DD` (`?` when out of range).
pub fn utc_date(time: SystemTime) -> String {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|since| der::DateTime::from_unix_duration(since).ok())
        .map(|date| format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day()))
        .unwrap_or_else(|| "?".to_string())
}

/// Fails when `dir` holds `mkosi.key` or `mkosi.crt` already, unless `force`.
pub fn refuse_existing(dir: &Path, force: bool) -> Result<(), GenkeyError> {
    if force {
        return Ok(());
    }
    for name in [KEY_FILE, CERTIFICATE_FILE] {
        let path = dir.join(name);
        if path.symlink_metadata().is_ok() {
            return Err(GenkeyError::Exists { path });
        }
    }
    Ok(())
}

/// Writes `mkosi.key` (mode 0600) and `mkosi.crt` (0644) into `dir`; refuses to replace
/// either unless `force`.
pub fn write_key_pair(dir: &Path, pair: &KeyPair, force: bool) -> Result<Written, GenkeyError> {
    refuse_existing(dir, force)?;
    let key = dir.join(KEY_FILE);
    let certificate = dir.join(CERTIFICATE_FILE);
    write_atomically(&key, pair.key_pem.as_bytes(), 0o600)?;
    write_atomically(&certificate, pair.certificate_pem.as_bytes(), 0o644)?;
    Ok(Written { key, certificate })
}

fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), GenkeyError> {
    let error = |source| GenkeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    let written = file
        .write_all(content)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error(source));
    }
    Ok(())
}
