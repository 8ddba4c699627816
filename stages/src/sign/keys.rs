//! Private keys, public keys and certificates: reading them as mkosi projects hold them, telling
//! whether a key belongs to a certificate, and signing and verifying with RSA (PKCS#1 v1.5) or
//! ECDSA on P-256, both over SHA-256.
//!
//! The rule for private keys: their bytes stay in memory only while signing (in buffers zeroed
//! when dropped) and never reach the store, the build index, a log or an error message. What
//! stands for a key anywhere else is the SHA-256 of its *public* key ([`PrivateKey::identity`]).
//! A key that cannot be read is reported with a fixed [`KeyProblem`], never a parser's message.

use std::path::Path;

use der::asn1::{Any, Null, ObjectIdentifier};
use der::{Decode, Encode};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{EncodePublicKey, PrivateKeyInfo};
use sha2::{Digest as _, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoRef};
use x509_cert::Certificate;
use zeroize::Zeroizing;

use super::error::{KeyProblem, SignError};

/// rsaEncryption: the key algorithm, and the signature algorithm OpenSSL's PKCS#7 writes.
pub const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// sha256WithRSAEncryption.
pub const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// id-ecPublicKey.
pub const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// prime256v1 (secp256r1).
pub const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// ecdsa-with-SHA256.
pub const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// A private key kiln signs with.
pub enum PrivateKey {
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "PrivateKey({})", self.identity())
    }
}

impl PrivateKey {
    /// Reads the key file at `path`; `shown` is how messages name it.
    pub fn read(path: &Path, shown: &Path) -> Result<PrivateKey, SignError> {
        let bytes =
            Zeroizing::new(
                std::fs::read(path).map_err(|source| SignError::KeyUnreadable {
                    path: shown.to_path_buf(),
                    source,
                })?,
            );
        PrivateKey::parse(&bytes).map_err(|problem| SignError::KeyInvalid {
            path: shown.to_path_buf(),
            problem,
        })
    }

    /// Reads a key from a file's bytes: PEM (PKCS#8, PKCS#1 RSA or SEC1 EC) or DER PKCS#8.
    pub fn parse(bytes: &[u8]) -> Result<PrivateKey, KeyProblem> {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return PrivateKey::from_pkcs8_der(bytes);
        };
        if !text.contains("-----BEGIN ") {
            return PrivateKey::from_pkcs8_der(bytes);
        }
        if pem_block(text, "ENCRYPTED PRIVATE KEY").is_some() {
            return Err(KeyProblem::Encrypted);
        }
        if let Some(block) = pem_block(text, "PRIVATE KEY") {
            let (_, der) =
                der::pem::decode_vec(block.as_bytes()).map_err(|_| KeyProblem::Damaged)?;
            return PrivateKey::from_pkcs8_der(&Zeroizing::new(der));
        }
        if let Some(block) = pem_block(text, "RSA PRIVATE KEY") {
            if block.contains("Proc-Type:") {
                return Err(KeyProblem::Encrypted);
            }
            let key = rsa::RsaPrivateKey::from_pkcs1_pem(block).map_err(|_| KeyProblem::Damaged)?;
            return Ok(PrivateKey::Rsa(Box::new(key)));
        }
        if let Some(block) = pem_block(text, "EC PRIVATE KEY") {
            if block.contains("Proc-Type:") {
                return Err(KeyProblem::Encrypted);
            }
            let (_, der) =
                der::pem::decode_vec(block.as_bytes()).map_err(|_| KeyProblem::Damaged)?;
            let der = Zeroizing::new(der);
            let key = sec1::EcPrivateKey::from_der(&der).map_err(|_| KeyProblem::Damaged)?;
            if key
                .parameters
                .and_then(|parameters| parameters.named_curve())
                .is_some_and(|curve| curve != PRIME256V1)
            {
                return Err(KeyProblem::UnsupportedAlgorithm);
            }
            let secret = p256::SecretKey::from_sec1_der(&der).map_err(|_| KeyProblem::Damaged)?;
            return Ok(PrivateKey::P256(secret.into()));
        }
        Err(KeyProblem::NotAKey)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<PrivateKey, KeyProblem> {
        let info = PrivateKeyInfo::from_der(der).map_err(|_| KeyProblem::NotAKey)?;
        match info.algorithm.oid {
            RSA_ENCRYPTION => rsa::RsaPrivateKey::try_from(info)
                .map(|key| PrivateKey::Rsa(Box::new(key)))
                .map_err(|_| KeyProblem::Damaged),
            EC_PUBLIC_KEY => {
                let curve = info
                    .algorithm
                    .parameters
                    .and_then(|parameters| parameters.decode_as::<ObjectIdentifier>().ok());
                if curve != Some(PRIME256V1) {
                    return Err(KeyProblem::UnsupportedAlgorithm);
                }
                p256::SecretKey::try_from(info)
                    .map(|secret| PrivateKey::P256(secret.into()))
                    .map_err(|_| KeyProblem::Damaged)
            }
            _ => Err(KeyProblem::UnsupportedAlgorithm),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::Rsa(key) => PublicKey::Rsa(key.to_public_key()),
            PrivateKey::P256(key) => PublicKey::P256(*key.verifying_key()),
        }
    }

    /// What stands for the key in stage keys and the build index: `sha256:` and the digest of
    /// its public key (SubjectPublicKeyInfo, DER).
    pub fn identity(&self) -> String {
        self.public_key().identity()
    }

    /// Signs `message` (hashed with SHA-256 here); returns the signature algorithm as OpenSSL's
    /// PKCS#7 records it (rsaEncryption with NULL parameters, or ecdsa-with-SHA256) and the
    /// signature (PKCS#1 v1.5, or a DER ECDSA-Sig-Value).
    pub fn sign(&self, message: &[u8]) -> Option<(AlgorithmIdentifierOwned, Vec<u8>)> {
        match self {
            PrivateKey::Rsa(key) => {
                let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(key.as_ref().clone());
                let signature: rsa::pkcs1v15::Signature = signer.try_sign(message).ok()?;
                Some((
                    AlgorithmIdentifierOwned {
                        oid: RSA_ENCRYPTION,
                        parameters: Some(Any::from(Null)),
                    },
                    Box::<[u8]>::from(signature).into_vec(),
                ))
            }
            PrivateKey::P256(key) => {
                let signature: p256::ecdsa::Signature = key.try_sign(message).ok()?;
                Some((
                    AlgorithmIdentifierOwned {
                        oid: ECDSA_WITH_SHA256,
                        parameters: None,
                    },
                    signature.to_der().as_bytes().to_vec(),
                ))
            }
        }
    }
}

/// The PEM block labelled `label` in `text`, from its BEGIN line to its END line.
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = text[start..].find(&end)? + start + end.len();
    Some(&text[start..stop])
}

/// A public key kiln verifies with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// The key of a certificate, if it is RSA or P-256.
    pub fn of_certificate(certificate: &Certificate) -> Option<PublicKey> {
        let spki = &certificate.tbs_certificate.subject_public_key_info;
        let der = spki.to_der().ok()?;
        let spki = SubjectPublicKeyInfoRef::from_der(&der).ok()?;
        match spki.algorithm.oid {
            RSA_ENCRYPTION => rsa::RsaPublicKey::try_from(spki).ok().map(PublicKey::Rsa),
            EC_PUBLIC_KEY => p256::ecdsa::VerifyingKey::try_from(spki)
                .ok()
                .map(PublicKey::P256),
            _ => None,
        }
    }

    /// `sha256:` and the digest of the SubjectPublicKeyInfo (DER) kiln encodes for the key.
    pub fn identity(&self) -> String {
        let der = match self {
            PublicKey::Rsa(key) => key.to_public_key_der(),
            PublicKey::P256(key) => key.to_public_key_der(),
        };
        match der {
            Ok(der) => format!("sha256:{:x}", Sha256::digest(der.as_bytes())),
            Err(_) => "sha256:unknown".to_string(),
        }
    }

    /// Whether `signature` over `message` (SHA-256) by `algorithm` holds.
    pub fn verify(&self, algorithm: &ObjectIdentifier, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa(key) => {
                if *algorithm != RSA_ENCRYPTION && *algorithm != SHA256_WITH_RSA {
                    return false;
                }
                let Ok(signature) = rsa::pkcs1v15::Signature::try_from(signature) else {
                    return false;
                };
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
                    .verify(message, &signature)
                    .is_ok()
            }
            PublicKey::P256(key) => {
                if *algorithm != ECDSA_WITH_SHA256 {
                    return false;
                }
                let Ok(signature) = p256::ecdsa::DerSignature::try_from(signature) else {
                    return false;
                };
                key.verify(message, &signature).is_ok()
            }
        }
    }
}

/// Reads a certificate file (PEM or DER); `shown` is how messages name it.
pub fn read_certificate(path: &Path, shown: &Path) -> Result<Certificate, SignError> {
    let bytes = std::fs::read(path).map_err(|source| SignError::CertificateUnreadable {
        path: shown.to_path_buf(),
        source,
    })?;
    parse_certificate(&bytes).map_err(|reason| SignError::CertificateInvalid {
        path: shown.to_path_buf(),
        reason,
    })
}

/// Reads a certificate from a file's bytes: the first PEM `CERTIFICATE` block, or DER.
pub fn parse_certificate(bytes: &[u8]) -> Result<Certificate, String> {
    let text = std::str::from_utf8(bytes).ok();
    match text.and_then(|text| pem_block(text, "CERTIFICATE")) {
        Some(block) => {
            let (_, der) = der::pem::decode_vec(block.as_bytes()).map_err(|e| e.to_string())?;
            Certificate::from_der(&der).map_err(|e| e.to_string())
        }
        None if text.is_some_and(|text| text.contains("-----BEGIN ")) => {
            Err("it holds no PEM `CERTIFICATE` block".to_string())
        }
        None => Certificate::from_der(bytes).map_err(|e| e.to_string()),
    }
}

/// A certificate's time as people read it: `2028-11-30 15:28:28 UTC`.
pub fn readable_time(time: &x509_cert::time::Time) -> String {
    let date = time.to_date_time();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        date.year(),
        date.month(),
        date.day(),
        date.hour(),
        date.minutes(),
        date.seconds()
    )
}

/// The certificate's subject as RFC 4514 text (`CN=mkosi of root`).
pub fn subject(certificate: &Certificate) -> String {
    certificate.tbs_certificate.subject.to_string()
}

/// What stands for the key of a certificate (see [`PrivateKey::identity`]); for a key kiln
/// cannot use, the digest of the SubjectPublicKeyInfo as the certificate encodes it.
pub fn certificate_key_identity(certificate: &Certificate) -> String {
    match PublicKey::of_certificate(certificate) {
        Some(public_key) => public_key.identity(),
        None => match certificate.tbs_certificate.subject_public_key_info.to_der() {
            Ok(der) => format!("sha256:{:x}", Sha256::digest(der)),
            Err(_) => "sha256:unknown".to_string(),
        },
    }
}

/// Whether `key` is the private half of the certificate's public key.
pub fn key_matches(key: &PrivateKey, certificate: &Certificate) -> bool {
    PublicKey::of_certificate(certificate).is_some_and(|public| public == key.public_key())
}

/// Whether `issuer` signed `certificate` (SHA-256 with RSA or ECDSA).
pub fn issued_by(certificate: &Certificate, issuer: &Certificate) -> bool {
    if certificate.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return false;
    }
    let (Some(key), Ok(tbs)) = (
        PublicKey::of_certificate(issuer),
        certificate.tbs_certificate.to_der(),
    ) else {
        return false;
    };
    let Some(signature) = certificate.signature.as_bytes() else {
        return false;
    };
    key.verify(&certificate.signature_algorithm.oid, &tbs, signature)
}
