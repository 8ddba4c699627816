//! Signing keys for action records: ed25519 key pairs with a name, written as Nix binary
//! caches write theirs.
//!
//! A public key is `NAME:BASE64` of its 32 bytes (`ci-1:5a1c…=`), the text users put in their
//! list of trusted keys; a secret key is `NAME:BASE64` of 64 bytes (the seed, then the public
//! key). The name travels with each signature so a client picks the trusted key to check it
//! with; it is what `graph explain` shows as the signer. A secret key never appears in a `Debug`
//! or `Display` form: only [`SecretKey::to_file_text`] writes it, for `kiln cache keygen`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// A key's text is not `NAME:BASE64` of the right length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {what}: {reason}")]
pub struct KeyError {
    /// `public key` or `secret key`.
    pub what: &'static str,
    /// What is wrong with it (never the key material itself).
    pub reason: String,
}

/// A trusted public key: a name and an ed25519 verifying key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

/// A key that signs action records. Its text form is private: see the module documentation.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

fn check_name(name: &str, what: &'static str) -> Result<(), KeyError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(KeyError {
            what,
            reason: format!(
                "the name `{name}` must be 1 to 64 letters, digits, `.`, `-` or `_` (as in `ci-1`)"
            ),
        })
    }
}

/// Splits `NAME:BASE64` and decodes the base64 part into exactly `N` bytes.
fn split<const N: usize>(text: &str, what: &'static str) -> Result<(String, [u8; N]), KeyError> {
    let text = text.trim();
    let Some((name, encoded)) = text.split_once(':') else {
        return Err(KeyError {
            what,
            reason: "expected `NAME:BASE64`".to_owned(),
        });
    };
    check_name(name, what)?;
    let bytes = BASE64.decode(encoded).map_err(|_| KeyError {
        what,
        reason: format!("the part after `{name}:` is not base64"),
    })?;
    let bytes: [u8; N] = bytes.try_into().map_err(|bytes: Vec<u8>| KeyError {
        what,
        reason: format!("expected {N} bytes after `{name}:`, found {}", bytes.len()),
    })?;
    Ok((name.to_owned(), bytes))
}

impl PublicKey {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<PublicKey, KeyError> {
        let what = "public key";
        let (name, bytes) = split::<32>(text, what)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError {
            what,
            reason: format!("the bytes after `{name}:` are not an ed25519 public key"),
        })?;
        Ok(PublicKey { name, key })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl SecretKey {
    /// A new key pair named `name`, from the system's random source.
    pub fn generate(name: &str) -> Result<SecretKey, KeyError> {
        check_name(name, "secret key")?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| KeyError {
            what: "secret key",
            reason: format!("the system's random source failed: {error}"),
        })?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads the text of a secret key file.
    pub fn parse(text: &str) -> Result<SecretKey, KeyError> {
        let what = "secret key";
        let (name, bytes) = split::<64>(text, what)?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| KeyError {
            what,
            reason: format!("the key after `{name}:` does not match its public half"),
        })?;
        Ok(SecretKey { name, key })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, to give to those who should trust this key.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// This key's signature of `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The text of a secret key file: `NAME:BASE64`, then a newline. Write it to a file only
    /// the owner reads.
    pub fn to_file_text(&self) -> String {
        format!(
            "{}:{}\n",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<secret>)", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_and_its_public_half_verifies() {
        let secret = SecretKey::generate("ci-1").unwrap();
        let public = secret.public();
        assert_eq!(public.name(), "ci-1");
        let signature = secret.sign(b"message");
        assert!(public.verify(b"message", &signature));
        assert!(!public.verify(b"massage", &signature));
        let other = SecretKey::generate("ci-1").unwrap().public();
        assert!(!other.verify(b"message", &signature));
    }

    #[test]
    fn keys_roundtrip_through_their_text() {
        let secret = SecretKey::generate("dev.laptop_2").unwrap();
        let again = SecretKey::parse(&secret.to_file_text()).unwrap();
        assert_eq!(again.public(), secret.public());
        let public: PublicKey = secret.public().to_string().parse().unwrap();
        assert_eq!(public, secret.public());
        assert!(public.to_string().starts_with("dev.laptop_2:"));
    }

    #[test]
    fn debug_forms_hide_the_secret() {
        let secret = SecretKey::generate("ci-1").unwrap();
        let text = secret.to_file_text();
        let encoded = text.trim().split_once(':').unwrap().1;
        let debug = format!("{secret:?}");
        assert_eq!(debug, "SecretKey(ci-1:<secret>)");
        assert!(!debug.contains(encoded));
    }

    #[test]
    fn malformed_keys_are_refused_without_echoing_them() {
        for (text, reason) in [
            ("ci-1", "expected `NAME:BASE64`"),
            (":AAAA", "must be 1 to 64"),
            ("ci 1:AAAA", "must be 1 to 64"),
            ("ci-1:!!!", "is not base64"),
            ("ci-1:AAAA", "expected 32 bytes"),
        ] {
            let error = text.parse::<PublicKey>().unwrap_err();
            assert!(error.reason.contains(reason), "{text}: {error}");
        }
        let secret = SecretKey::generate("ci-1").unwrap();
        let public_text = secret.public().to_string();
        let error = SecretKey::parse(&public_text).unwrap_err();
        assert!(error.reason.contains("expected 64 bytes"), "{error}");
        // A secret whose public half was swapped is refused.
        let mut bytes = BASE64
            .decode(secret.to_file_text().trim().split_once(':').unwrap().1)
            .unwrap();
        bytes[40] ^= 1;
        let tampered = format!("ci-1:{}", BASE64.encode(&bytes));
        let error = SecretKey::parse(&tampered).unwrap_err();
        assert!(!error.to_string().contains(&BASE64.encode(&bytes)));
    }
}
