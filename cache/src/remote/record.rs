//! Action records: what the shared cache holds at `ac/{key}`, and how they are signed.
//!
//! A record says that a stage key produced an output, and with which inputs (as the index
//! records them for `graph explain`) and notes. It travels as JSON:
//!
//! ```json
//! { "format": "kiln-action/2", "key": "…", "stage": "postinst", "kind": "scripts",
//!   "output": "…", "output_kind": "tree", "output_size": 18342,
//!   "inputs": [{ "name": "base", "kind": "stage", "digest": "…" }], "notes": [],
//!   "signatures": [{ "key": "ci-1", "signature": "BASE64" }] }
//! ```
//!
//! A signature covers [`ActionRecord::signing_bytes`], a canonical encoding of every field but
//! the signatures (a domain string, then length-prefixed fields in a fixed order), not the JSON
//! text: whitespace or field order cannot break a signature, and no field can change without
//! breaking it. A record may carry several signatures, as a Nix binary cache's may; a client
//! accepts it when one of them is valid for one of its trusted keys. A test pins the encoding.
//!
//! # Formats
//!
//! `kiln-action/2` records the output's size (a blob's length, a tree manifest's encoded
//! length), under the signature, so a download stops at that size whatever the server sends.
//! `kiln-action/1` records, written before, carry no size: they are still read and their
//! signatures checked (with the encoding of that format), and the reader decides what they
//! may still be used for (see [`crate::remote::Remote::accept`]). Any other format is
//! [`RecordError::UnknownFormat`].

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::index::{ActionResult, OutputKind, RecordedInput};
use crate::remote::keys::{PublicKey, SecretKey};

/// The `format` of the records this kiln writes.
pub const RECORD_FORMAT: &str = "kiln-action/2";

/// The format of records written before outputs had a size in them; still read.
const RECORD_FORMAT_V1: &str = "kiln-action/1";

/// Separates kiln's signed messages from anything else a key might sign (records of
/// format 1, without an output size).
const SIGNING_DOMAIN_V1: &[u8] = b"kiln action record v1\0";

/// The same for records of format 2: a record cannot pass for one of the other format.
const SIGNING_DOMAIN: &[u8] = b"kiln action record v2\0";

/// What a stage key produced, as the shared cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// The stage key.
    pub key: Digest,
    /// The stage's name in the recipe that produced it (for people: keys do not include it).
    pub stage: String,
    /// The stage kind.
    pub kind: String,
    /// The output.
    pub output: ActionResult,
    /// The output's size in bytes: a blob's length, or a tree manifest's encoded length.
    /// `None` in records of format 1, which did not carry it.
    pub output_size: Option<u64>,
    /// The inputs that made the key, as recorded for `graph explain`.
    pub inputs: Vec<RecordedInput>,
    /// What the stage noted about its run.
    pub notes: Vec<String>,
}

/// A record and its signatures, as read from or written to `ac/{key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRecord {
    /// The record.
    pub record: ActionRecord,
    /// `(key name, signature)` pairs.
    pub signatures: Vec<(String, [u8; 64])>,
}

/// Whether a signed record can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A trusted key signed it.
    Trusted {
        /// The name of that key.
        signer: String,
    },
    /// Signed, but by no key the client trusts.
    Untrusted {
        /// The names of the keys that signed it.
        signers: Vec<String>,
    },
    /// A trusted key's name is on it, but the signature does not match: the record was changed
    /// after it was signed, or signed by another key of that name.
    BadSignature {
        /// The name of that key.
        signer: String,
    },
    /// It carries no signature.
    Unsigned,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Trusted { signer } => write!(f, "signed by `{signer}`"),
            Verdict::Untrusted { signers } => write!(
                f,
                "signed by {}, not a trusted key",
                signers
                    .iter()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Verdict::BadSignature { signer } => write!(
                f,
                "its signature by `{signer}` does not match: it was changed after it was signed"
            ),
            Verdict::Unsigned => write!(f, "it is not signed"),
        }
    }
}

/// Appends `bytes` with its length in front.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl ActionRecord {
    /// The canonical bytes a signature covers: those of format 2 when the record has an
    /// output size, else those of format 1.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let domain = match self.output_size {
            Some(_) => SIGNING_DOMAIN,
            None => SIGNING_DOMAIN_V1,
        };
        let mut out = domain.to_vec();
        put(&mut out, self.key.as_bytes());
        put(&mut out, self.stage.as_bytes());
        put(&mut out, self.kind.as_bytes());
        put(&mut out, self.output.output.as_bytes());
        put(&mut out, self.output.kind.as_str().as_bytes());
        if let Some(size) = self.output_size {
            out.extend_from_slice(&size.to_le_bytes());
        }
        out.extend_from_slice(&(self.inputs.len() as u64).to_le_bytes());
        for input in &self.inputs {
            put(&mut out, input.name.as_bytes());
            put(&mut out, input.kind.as_bytes());
            put(&mut out, input.digest.as_bytes());
            match &input.value {
                None => out.push(0),
                Some(value) => {
                    out.push(1);
                    put(&mut out, value.as_bytes());
                }
            }
        }
        out.extend_from_slice(&(self.notes.len() as u64).to_le_bytes());
        for note in &self.notes {
            put(&mut out, note.as_bytes());
        }
        out
    }
}

impl SignedRecord {
    /// A record with no signature yet.
    pub fn unsigned(record: ActionRecord) -> SignedRecord {
        SignedRecord {
            record,
            signatures: Vec::new(),
        }
    }

    /// Adds `key`'s signature, replacing an earlier one of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let signature = key.sign(&self.record.signing_bytes());
        self.signatures.retain(|(name, _)| name != key.name());
        self.signatures.push((key.name().to_owned(), signature));
    }

    /// Whether one of `trusted` signed the record as it is.
    pub fn verify(&self, trusted: &[PublicKey]) -> Verdict {
        if self.signatures.is_empty() {
            return Verdict::Unsigned;
        }
        let message = self.record.signing_bytes();
        let mut bad = None;
        for (name, signature) in &self.signatures {
            for key in trusted.iter().filter(|key| key.name() == name) {
                if key.verify(&message, signature) {
                    return Verdict::Trusted {
                        signer: name.clone(),
                    };
                }
                bad.get_or_insert_with(|| name.clone());
            }
        }
        match bad {
            Some(signer) => Verdict::BadSignature { signer },
            None => Verdict::Untrusted {
                signers: self
                    .signatures
                    .iter()
                    .map(|(name, _)| name.clone())
                    .collect(),
            },
        }
    }

    /// Whether `key` signed the record as it is.
    pub fn signed_by(&self, key: &PublicKey) -> bool {
        self.verify(std::slice::from_ref(key))
            == Verdict::Trusted {
                signer: key.name().to_owned(),
            }
    }

    /// The JSON text stored at `ac/{key}`.
    pub fn to_json(&self) -> String {
        let record = &self.record;
        let format = match record.output_size {
            Some(_) => RECORD_FORMAT,
            None => RECORD_FORMAT_V1,
        };
        let wire = WireRecord {
            format: format.to_owned(),
            key: record.key,
            stage: record.stage.clone(),
            kind: record.kind.clone(),
            output: record.output.output,
            output_kind: record.output.kind.as_str().to_owned(),
            output_size: record.output_size,
            inputs: record
                .inputs
                .iter()
                .map(|input| WireInput {
                    name: input.name.clone(),
                    kind: input.kind.clone(),
                    digest: input.digest,
                    value: input.value.clone(),
                })
                .collect(),
            notes: record.notes.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|(key, signature)| WireSignature {
                    key: key.clone(),
                    signature: BASE64.encode(signature),
                })
                .collect(),
        };
        // Serialising plain strings and digests cannot fail.
        let mut text = serde_json::to_string_pretty(&wire).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads the JSON text of `ac/{key}`.
    pub fn parse(text: &str) -> Result<SignedRecord, RecordError> {
        let format: WireFormat =
            serde_json::from_str(text).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let sized = match format.format.as_str() {
            RECORD_FORMAT => true,
            RECORD_FORMAT_V1 => false,
            _ => return Err(RecordError::UnknownFormat(format.format)),
        };
        let wire: WireRecord =
            serde_json::from_str(text).map_err(|e| RecordError::Malformed(e.to_string()))?;
        match (sized, wire.output_size) {
            (true, None) => {
                return Err(RecordError::Malformed(
                    "it has no `output_size`, which its format requires".to_owned(),
                ));
            }
            (false, Some(_)) => {
                return Err(RecordError::Malformed(
                    "it has an `output_size`, which its format does not know".to_owned(),
                ));
            }
            _ => {}
        }
        let kind: OutputKind = wire
            .output_kind
            .parse()
            .map_err(|kind| RecordError::Malformed(format!("unknown output kind `{kind}`")))?;
        let signatures = wire
            .signatures
            .into_iter()
            .map(|signature| {
                let bytes = BASE64
                    .decode(&signature.signature)
                    .ok()
                    .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
                    .ok_or_else(|| {
                        RecordError::Malformed(format!(
                            "the signature by `{}` is not 64 bytes of base64",
                            signature.key
                        ))
                    })?;
                Ok((signature.key, bytes))
            })
            .collect::<Result<_, RecordError>>()?;
        Ok(SignedRecord {
            record: ActionRecord {
                key: wire.key,
                stage: wire.stage,
                kind: wire.kind,
                output: ActionResult {
                    output: wire.output,
                    kind,
                },
                output_size: wire.output_size,
                inputs: wire
                    .inputs
                    .into_iter()
                    .map(|input| RecordedInput {
                        name: input.name,
                        kind: input.kind,
                        digest: input.digest,
                        value: input.value,
                    })
                    .collect(),
                notes: wire.notes,
            },
            signatures,
        })
    }
}

/// Why a record's text cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, or fields missing or of the wrong type.
    #[error("{0}")]
    Malformed(String),
    /// Written in a format this kiln does not know (a newer kiln wrote it).
    #[error("unknown record format `{0}`")]
    UnknownFormat(String),
}

#[derive(Deserialize)]
struct WireFormat {
    format: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRecord {
    format: String,
    key: Digest,
    stage: String,
    kind: String,
    output: Digest,
    output_kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output_size: Option<u64>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    notes: Vec<String>,
    #[serde(default)]
    signatures: Vec<WireSignature>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireInput {
    name: String,
    kind: String,
    digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    key: String,
    signature: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record() -> ActionRecord {
        ActionRecord {
            key: Digest::of_bytes(b"key"),
            stage: "postinst".to_owned(),
            kind: "scripts".to_owned(),
            output: ActionResult {
                output: Digest::of_bytes(b"tree"),
                kind: OutputKind::Tree,
            },
            output_size: None,
            inputs: vec![
                RecordedInput {
                    name: "base".to_owned(),
                    kind: "stage".to_owned(),
                    digest: Digest::of_bytes(b"base"),
                    value: None,
                },
                RecordedInput {
                    name: "IMAGE_VERSION".to_owned(),
                    kind: "value".to_owned(),
                    digest: Digest::of_bytes(b"2"),
                    value: Some("2".to_owned()),
                },
            ],
            notes: vec!["56 of 57 segments reused".to_owned()],
        }
    }

    #[test]
    fn signing_bytes_are_pinned() {
        // Part of the shared cache's format: if this changes, every signature breaks. Bump
        // RECORD_FORMAT and SIGNING_DOMAIN deliberately.
        assert_eq!(
            Digest::of_bytes(&record().signing_bytes()).to_string(),
            "60e60e43edf22c77b6394357958781f497a3b88a2c613d7647c35b884247879e"
        );
    }

    #[test]
    fn a_signed_record_roundtrips_and_verifies() {
        let key = SecretKey::generate("ci-1").unwrap();
        let mut signed = SignedRecord::unsigned(record());
        assert_eq!(signed.verify(&[key.public()]), Verdict::Unsigned);
        signed.sign(&key);
        let text = signed.to_json();
        let again = SignedRecord::parse(&text).unwrap();
        assert_eq!(again, signed);
        assert_eq!(
            again.verify(&[key.public()]),
            Verdict::Trusted {
                signer: "ci-1".to_owned()
            }
        );
        assert!(again.signed_by(&key.public()));
    }

    #[test]
    fn an_untrusted_or_altered_record_is_not_trusted() {
        let key = SecretKey::generate("ci-1").unwrap();
        let stranger = SecretKey::generate("stranger").unwrap();
        let mut signed = SignedRecord::unsigned(record());
        signed.sign(&stranger);
        assert_eq!(
            signed.verify(&[key.public()]),
            Verdict::Untrusted {
                signers: vec!["stranger".to_owned()]
            }
        );
        signed.sign(&key);
        // Every field is covered: change any one and the signature breaks.
        let changes: [fn(&mut ActionRecord); 9] = [
            |r| r.output.output = Digest::of_bytes(b"evil"),
            |r| r.output.kind = OutputKind::Blob,
            |r| r.key = Digest::of_bytes(b"other key"),
            |r| r.stage.push('x'),
            |r| r.kind.push('x'),
            |r| r.inputs[1].value = Some("3".to_owned()),
            |r| r.inputs[0].digest = Digest::of_bytes(b"x"),
            |r| drop(r.inputs.pop()),
            |r| r.notes.clear(),
        ];
        for change in changes {
            let mut altered = signed.clone();
            change(&mut altered.record);
            assert_eq!(
                altered.verify(&[key.public()]),
                Verdict::BadSignature {
                    signer: "ci-1".to_owned()
                }
            );
        }
        // Another key that calls itself `ci-1` cannot sign for it.
        let impostor = SecretKey::generate("ci-1").unwrap();
        let mut forged = SignedRecord::unsigned(record());
        forged.sign(&impostor);
        assert!(matches!(
            forged.verify(&[key.public()]),
            Verdict::BadSignature { .. }
        ));
    }

    #[test]
    fn malformed_and_future_records_are_told_apart() {
        assert!(matches!(
            SignedRecord::parse("not json"),
            Err(RecordError::Malformed(_))
        ));
        assert_eq!(
            SignedRecord::parse(r#"{"format": "kiln-action/9", "whatever": 1}"#),
            Err(RecordError::UnknownFormat("kiln-action/9".to_owned()))
        );
        let text = SignedRecord::unsigned(record())
            .to_json()
            .replace("\"tree\"", "\"forest\"");
        assert!(matches!(
            SignedRecord::parse(&text),
            Err(RecordError::Malformed(reason)) if reason.contains("forest")
        ));
    }

    /// The test record in format 2, with an output size.
    fn sized() -> ActionRecord {
        ActionRecord {
            output_size: Some(18342),
            ..record()
        }
    }

    #[test]
    fn signing_bytes_of_format_2_are_pinned_and_cover_the_size() {
        // Part of the shared cache's format, as format 1's are.
        assert_eq!(
            Digest::of_bytes(&sized().signing_bytes()).to_string(),
            "8fd0f983dfa9e53bab102f55fec485da6808f94c2ae7294a85695f56983dea56"
        );
        let key = SecretKey::generate("ci-1").unwrap();
        let mut signed = SignedRecord::unsigned(sized());
        signed.sign(&key);
        let text = signed.to_json();
        assert!(text.contains("\"format\": \"kiln-action/2\""), "{text}");
        assert!(text.contains("\"output_size\": 18342"), "{text}");
        assert_eq!(SignedRecord::parse(&text).unwrap(), signed);
        // A larger size, or none (passing for a record of format 1), breaks the signature.
        for size in [Some(1 << 40), None] {
            let mut altered = signed.clone();
            altered.record.output_size = size;
            assert_eq!(
                altered.verify(&[key.public()]),
                Verdict::BadSignature {
                    signer: "ci-1".to_owned()
                }
            );
        }
    }

    #[test]
    fn a_format_and_its_size_go_together() {
        let v2 = SignedRecord::unsigned(sized()).to_json();
        let v1 = SignedRecord::unsigned(record()).to_json();
        assert!(v1.contains("\"format\": \"kiln-action/1\""), "{v1}");
        assert!(!v1.contains("output_size"), "{v1}");
        assert_eq!(SignedRecord::parse(&v1).unwrap().record, record());
        let sizeless = v2.replace("  \"output_size\": 18342,\n", "");
        assert!(matches!(
            SignedRecord::parse(&sizeless),
            Err(RecordError::Malformed(reason)) if reason.contains("output_size")
        ));
        let sized_v1 = v2.replace("kiln-action/2", "kiln-action/1");
        assert!(matches!(
            SignedRecord::parse(&sized_v1),
            Err(RecordError::Malformed(reason)) if reason.contains("output_size")
        ));
    }

    proptest::proptest! {
        /// Any record of either format survives its JSON text, and its signature covers its
        /// output size: no other size verifies.
        #[test]
        fn records_roundtrip_and_their_size_is_signed(
            stage in "[a-z-]{1,12}",
            notes in proptest::collection::vec(".{0,20}", 0..3),
            size in proptest::option::of(proptest::num::u64::ANY),
            other in proptest::num::u64::ANY,
            blob in proptest::bool::ANY,
        ) {
            let key = SecretKey::generate("ci-1").unwrap();
            let mut record = record();
            record.stage = stage;
            record.notes = notes;
            record.output_size = size;
            if blob {
                record.output.kind = OutputKind::Blob;
            }
            let mut signed = SignedRecord::unsigned(record);
            signed.sign(&key);
            let again = SignedRecord::parse(&signed.to_json()).unwrap();
            proptest::prop_assert_eq!(&again, &signed);
            proptest::prop_assert!(again.signed_by(&key.public()));
            let mut altered = again;
            altered.record.output_size = Some(other);
            proptest::prop_assert_eq!(altered.signed_by(&key.public()), size == Some(other));
        }
    }
}
