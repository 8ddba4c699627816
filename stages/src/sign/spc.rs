//! `SpcIndirectDataContent`: what an Authenticode signature signs, the image digest wrapped in
//! Microsoft's structures (Authenticode specification, "Authenticode-Specific Structures").
//!
//! ```text
//! SpcIndirectDataContent ::= SEQUENCE {
//!     data                    SpcAttributeTypeAndOptionalValue,
//!     messageDigest           DigestInfo }
//! SpcAttributeTypeAndOptionalValue ::= SEQUENCE {
//!     type                    ObjectID,           -- SPC_PE_IMAGE_DATAOBJ
//!     value                   [0] EXPLICIT ANY OPTIONAL }
//! SpcPeImageData ::= SEQUENCE {
//!     flags                   SpcPeImageFlags DEFAULT { includeResources },
//!     file                    [0] EXPLICIT SpcLink OPTIONAL }
//! SpcLink ::= CHOICE { url [0] IMPLICIT IA5STRING, moniker [1] IMPLICIT SpcSerializedObject,
//!                      file [2] EXPLICIT SpcString }
//! SpcString ::= CHOICE { unicode [0] IMPLICIT BMPSTRING, ascii [1] IMPLICIT IA5STRING }
//! ```
//!
//! (The specification's `value` carries no tag in practice: every signer, sbsign and signtool
//! included, writes the `SpcPeImageData` sequence directly.) kiln encodes it exactly as sbsign
//! does: empty flags (`03 01 00`), the file link `[2]` holding the BMPString
//! `<<<Obsolete>>>`, and the digest as `DigestInfo { sha256 with NULL parameters, digest }`.
//! The structure is encoded with `der`'s types; nothing here is hand-counted.

use der::asn1::{Any, BitString, BmpString, ContextSpecific, Null, ObjectIdentifier, OctetString};
use der::{Decode, Encode, Sequence, TagMode, TagNumber};
use spki::AlgorithmIdentifierOwned;

/// `SPC_INDIRECT_DATA_OBJID`: the content type of an Authenticode signature.
pub(super) const SPC_INDIRECT_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");

/// `SPC_PE_IMAGE_DATAOBJ`: the data is a PE image.
pub(super) const SPC_PE_IMAGE_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");

/// id-sha256.
pub(super) const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");

/// What signers have written as the file link since the field stopped meaning anything.
const OBSOLETE: &str = "<<<Obsolete>>>";

#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: ObjectIdentifier,
    #[asn1(optional = "true")]
    value: Option<Any>,
}

#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
struct DigestInfo {
    digest_algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

/// `SpcPeImageData` with its file link (`[0] { [2] { [0] IMPLICIT BMPString } }`).
#[derive(Debug, Clone, PartialEq, Eq, Sequence)]
struct SpcPeImageData {
    flags: BitString,
    file: ContextSpecific<ContextSpecific<ContextSpecific<BmpString>>>,
}

/// The algorithm identifier of SHA-256 as Authenticode signers write it: with NULL parameters.
pub(super) fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: SHA256,
        parameters: Some(Any::from(Null)),
    }
}

fn explicit<T>(number: u8, value: T) -> ContextSpecific<T> {
    ContextSpecific {
        tag_number: TagNumber::new(number),
        tag_mode: TagMode::Explicit,
        value,
    }
}

/// The DER `SpcIndirectDataContent` for an image whose Authenticode SHA-256 digest is `digest`.
pub(super) fn encode_indirect_data(digest: &[u8; 32]) -> der::Result<Vec<u8>> {
    let link = SpcPeImageData {
        flags: BitString::new(0, Vec::new())?,
        file: explicit(
            0,
            explicit(
                2,
                ContextSpecific {
                    tag_number: TagNumber::new(0),
                    tag_mode: TagMode::Implicit,
                    value: BmpString::from_utf8(OBSOLETE)?,
                },
            ),
        ),
    };
    SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            value_type: SPC_PE_IMAGE_DATA,
            value: Some(Any::from_der(&link.to_der()?)?),
        },
        message_digest: DigestInfo {
            digest_algorithm: sha256_algorithm(),
            digest: OctetString::new(digest.to_vec())?,
        },
    }
    .to_der()
}

/// The digest an `SpcIndirectDataContent` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IndirectData {
    /// What the data is (`SPC_PE_IMAGE_DATA` for a PE image).
    pub data_type: ObjectIdentifier,
    pub digest_algorithm: ObjectIdentifier,
    pub digest: Vec<u8>,
}

/// Reads an `SpcIndirectDataContent` (its DER, tag and length included).
pub(super) fn decode_indirect_data(der: &[u8]) -> der::Result<IndirectData> {
    let content = SpcIndirectDataContent::from_der(der)?;
    Ok(IndirectData {
        data_type: content.data.value_type,
        digest_algorithm: content.message_digest.digest_algorithm.oid,
        digest: content.message_digest.digest.as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indirect_data_is_encoded_as_sbsign_encodes_it() {
        let digest = [0x11; 32];
        let der = encode_indirect_data(&digest).unwrap();
        let mut expected = vec![
            0x30, 0x68, // SpcIndirectDataContent
            0x30, 0x33, // SpcAttributeTypeAndOptionalValue
            0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x0f, 0x30,
            0x25, // SpcPeImageData
            0x03, 0x01, 0x00, // flags
            0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, // [0] { [2] { [0] IMPLICIT BMPString
        ];
        for c in OBSOLETE.encode_utf16() {
            expected.extend_from_slice(&c.to_be_bytes());
        }
        expected.extend_from_slice(&[
            0x30, 0x31, // DigestInfo
            0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
            0x00, 0x04, 0x20,
        ]);
        expected.extend_from_slice(&digest);
        assert_eq!(der, expected);

        let decoded = decode_indirect_data(&der).unwrap();
        assert_eq!(decoded.data_type, SPC_PE_IMAGE_DATA);
        assert_eq!(decoded.digest_algorithm, SHA256);
        assert_eq!(decoded.digest, digest);
    }
}
