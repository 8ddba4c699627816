//! The PKCS#7 `SignedData` of an Authenticode signature, built as sbsign builds it, and read back
//! for `kiln inspect`.
//!
//! sbsign (sbsigntools' `sbsign.c` and `idc.c`) has OpenSSL build the structure; kiln builds the
//! same one with RustCrypto's `cms` types, field for field:
//!
//! - `ContentInfo { id-signedData, SignedData }`, SignedData version 1, digest algorithms
//!   `{ sha256 (NULL parameters) }`;
//! - the content: type `SPC_INDIRECT_DATA_OBJID`, value the `SpcIndirectDataContent` itself
//!   (PKCS#7's `[0] EXPLICIT ANY`, not an OCTET STRING as CMS would write it);
//! - the certificates: the signer's certificate only; no CRLs;
//! - one SignerInfo, version 1, identified by issuer and serial number, digest sha256 (NULL
//!   parameters), the signature algorithm as OpenSSL records it (rsaEncryption with NULL
//!   parameters, or ecdsa-with-SHA256), no unsigned attributes;
//! - the signed attributes OpenSSL's `PKCS7_sign_add_signer` and `PKCS7_dataFinal` add:
//!   contentType (`SPC_INDIRECT_DATA_OBJID`), signingTime, messageDigest (the SHA-256 of the
//!   `SpcIndirectDataContent`'s contents, without its tag and length, as PKCS#7 digests
//!   content) and SMIMECapabilities (OpenSSL's default list of ciphers, meaningless for
//!   Authenticode but part of what sbsign signs), sorted as DER sorts a SET OF.
//!
//! sbsign's signingTime is the time it runs; kiln's is `SOURCE_DATE_EPOCH` when the recipe
//! sets one, and absent otherwise (firmware, sbverify and osslsigncode do not need it), so that
//! the same inputs give the same bytes. With the same key, image and signing time, an RSA
//! signature is byte for byte sbsign's (PKCS#1 v1.5 is deterministic); an ECDSA one differs in
//! its random nonce only (kiln uses RFC 6979's deterministic one).

use std::time::Duration;

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Any, GeneralizedTime, ObjectIdentifier, OctetString, SetOfVec, UtcTime};
use der::{Decode, Encode, SliceReader};
use sha2::{Digest as _, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::time::Time;

use super::keys::{self, PrivateKey, PublicKey};
use super::spc::{self, SPC_INDIRECT_DATA, sha256_algorithm};

/// id-signedData.
pub(super) const ID_SIGNED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// PKCS#9 contentType.
pub(super) const ID_CONTENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// PKCS#9 messageDigest.
pub(super) const ID_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// PKCS#9 signingTime.
pub(super) const ID_SIGNING_TIME: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
/// PKCS#9 sMIMECapabilities.
pub(super) const ID_SMIME_CAPABILITIES: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.15");

/// OpenSSL's default S/MIME capabilities, in its order: the cipher and, for RC2, its key size.
const SMIME_CAPABILITIES: [(&str, Option<u8>); 8] = [
    ("2.16.840.1.101.3.4.1.42", None), // aes-256-cbc
    ("2.16.840.1.101.3.4.1.22", None), // aes-192-cbc
    ("2.16.840.1.101.3.4.1.2", None),  // aes-128-cbc
    ("1.2.840.113549.3.7", None),      // des-ede3-cbc
    ("1.2.840.113549.3.2", Some(128)), // rc2-cbc, 128 bits
    ("1.2.840.113549.3.2", Some(64)),  // rc2-cbc, 64 bits
    ("1.3.14.3.2.7", None),            // des-cbc
    ("1.2.840.113549.3.2", Some(40)),  // rc2-cbc, 40 bits
];

/// Why a signature could not be built. Never carries key material.
#[derive(Debug)]
pub(super) enum BuildError {
    Encoding(&'static str, der::Error),
    Signing,
}

fn encoding(what: &'static str) -> impl FnOnce(der::Error) -> BuildError {
    move |error| BuildError::Encoding(what, error)
}

fn attribute(oid: ObjectIdentifier, value: Any) -> der::Result<Attribute> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

fn smime_capabilities() -> der::Result<Any> {
    let capabilities = SMIME_CAPABILITIES
        .iter()
        .map(|(oid, bits)| {
            Ok(AlgorithmIdentifierOwned {
                oid: ObjectIdentifier::new_unwrap(oid),
                parameters: match bits {
                    Some(bits) => Some(Any::encode_from(bits)?),
                    None => None,
                },
            })
        })
        .collect::<der::Result<Vec<_>>>()?;
    Any::encode_from(&capabilities)
}

/// PKCS#9's signingTime: UTCTime from 1950 to 2049, GeneralizedTime otherwise.
fn signing_time_value(seconds: u64) -> der::Result<Time> {
    let since_epoch = Duration::from_secs(seconds);
    match UtcTime::from_unix_duration(since_epoch) {
        Ok(time) => Ok(Time::UtcTime(time)),
        Err(_) => Ok(Time::GeneralTime(GeneralizedTime::from_unix_duration(
            since_epoch,
        )?)),
    }
}

/// The DER `ContentInfo` signing the image whose Authenticode SHA-256 digest is `digest`, with
/// `key` and its `certificate`, at `signing_time` (seconds since 1970; `None`: no signingTime).
pub(super) fn authenticode_signature(
    digest: &[u8; 32],
    key: &PrivateKey,
    certificate: &Certificate,
    signing_time: Option<u64>,
) -> Result<Vec<u8>, BuildError> {
    let indirect_data =
        spc::encode_indirect_data(digest).map_err(encoding("SpcIndirectDataContent"))?;
    let content = Any::from_der(&indirect_data).map_err(encoding("SpcIndirectDataContent"))?;
    let content_digest = Sha256::digest(content.value());

    let mut attributes = vec![
        attribute(
            ID_CONTENT_TYPE,
            Any::encode_from(&SPC_INDIRECT_DATA).map_err(encoding("content type"))?,
        )
        .map_err(encoding("content type"))?,
        attribute(
            ID_MESSAGE_DIGEST,
            Any::encode_from(
                &OctetString::new(content_digest.to_vec()).map_err(encoding("message digest"))?,
            )
            .map_err(encoding("message digest"))?,
        )
        .map_err(encoding("message digest"))?,
        attribute(
            ID_SMIME_CAPABILITIES,
            smime_capabilities().map_err(encoding("S/MIME capabilities"))?,
        )
        .map_err(encoding("S/MIME capabilities"))?,
    ];
    if let Some(seconds) = signing_time {
        let time = signing_time_value(seconds).map_err(encoding("signing time"))?;
        attributes.push(
            attribute(
                ID_SIGNING_TIME,
                Any::encode_from(&time).map_err(encoding("signing time"))?,
            )
            .map_err(encoding("signing time"))?,
        );
    }
    // A SET OF is sorted by its elements' encodings, as DER wants and OpenSSL writes it.
    let signed_attributes = SetOfVec::try_from(attributes).map_err(encoding("attributes"))?;
    let to_sign = signed_attributes.to_der().map_err(encoding("attributes"))?;
    let (signature_algorithm, signature) = key.sign(&to_sign).ok_or(BuildError::Signing)?;

    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: certificate.tbs_certificate.issuer.clone(),
            serial_number: certificate.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: sha256_algorithm(),
        signed_attrs: Some(signed_attributes),
        signature_algorithm,
        signature: OctetString::new(signature).map_err(encoding("signature"))?,
        unsigned_attrs: None,
    };
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()])
            .map_err(encoding("digest algorithms"))?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: SPC_INDIRECT_DATA,
            econtent: Some(content),
        },
        certificates: Some(
            CertificateSet::try_from(vec![CertificateChoices::Certificate(certificate.clone())])
                .map_err(encoding("certificates"))?,
        ),
        crls: None,
        signer_infos: SignerInfos::try_from(vec![signer]).map_err(encoding("signer"))?,
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data).map_err(encoding("SignedData"))?,
    }
    .to_der()
    .map_err(encoding("ContentInfo"))
}

/// An Authenticode signature as read from a certificate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature {
    /// The image digest the signature covers.
    pub signed_digest: Vec<u8>,
    /// Its algorithm (kiln understands SHA-256 only).
    pub digest_algorithm: ObjectIdentifier,
    /// The signing time, if the signer recorded one.
    pub signing_time: Option<Time>,
    /// The signer's certificate, if the signature carries it.
    pub signer: Option<Certificate>,
    /// Every certificate the signature carries (the signer's and intermediates).
    pub certificates: Vec<Certificate>,
    /// `Ok` when the signed attributes hold the content's digest and the signer's key signed
    /// them; else why not.
    pub integrity: Result<(), String>,
}

/// Reads the DER `ContentInfo` at the start of `der` (anything after it, such as padding, is
/// ignored).
pub(super) fn parse_signature(der: &[u8]) -> Result<ParsedSignature, String> {
    let mut reader = SliceReader::new(der).map_err(|e| e.to_string())?;
    let content_info: ContentInfo =
        der::Decode::decode(&mut reader).map_err(|e| format!("not PKCS#7: {e}"))?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(format!(
            "content type {} is not signedData",
            content_info.content_type
        ));
    }
    let signed_data: SignedData = content_info
        .content
        .decode_as()
        .map_err(|e| format!("damaged SignedData: {e}"))?;
    if signed_data.encap_content_info.econtent_type != SPC_INDIRECT_DATA {
        return Err(format!(
            "content type {} is not Authenticode's SpcIndirectDataContent",
            signed_data.encap_content_info.econtent_type
        ));
    }
    let content = signed_data
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or("the signed content is missing")?;
    let content_der = content.to_der().map_err(|e| e.to_string())?;
    let indirect = spc::decode_indirect_data(&content_der)
        .map_err(|e| format!("damaged SpcIndirectDataContent: {e}"))?;
    let certificates: Vec<Certificate> = signed_data
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .filter_map(|choice| match choice {
            CertificateChoices::Certificate(certificate) => Some(certificate.clone()),
            CertificateChoices::Other(_) => None,
        })
        .collect();
    let signer_info = signed_data
        .signer_infos
        .0
        .iter()
        .next()
        .ok_or("the signature has no signer")?;
    let signer = match &signer_info.sid {
        SignerIdentifier::IssuerAndSerialNumber(id) => certificates
            .iter()
            .find(|certificate| {
                certificate.tbs_certificate.issuer == id.issuer
                    && certificate.tbs_certificate.serial_number == id.serial_number
            })
            .cloned(),
        SignerIdentifier::SubjectKeyIdentifier(_) => None,
    };
    let attribute = |oid: ObjectIdentifier| {
        signer_info
            .signed_attrs
            .iter()
            .flat_map(|attributes| attributes.iter())
            .find(|attribute| attribute.oid == oid)
            .and_then(|attribute| attribute.values.iter().next())
    };
    let signing_time = attribute(ID_SIGNING_TIME)
        .and_then(|value| value.to_der().ok())
        .and_then(|der| Time::from_der(&der).ok());
    let integrity = check_integrity(signer_info, signer.as_ref(), content, &attribute);
    Ok(ParsedSignature {
        signed_digest: indirect.digest,
        digest_algorithm: indirect.digest_algorithm,
        signing_time,
        signer,
        certificates,
        integrity,
    })
}

fn check_integrity<'a>(
    signer_info: &SignerInfo,
    signer: Option<&Certificate>,
    content: &Any,
    attribute: &dyn Fn(ObjectIdentifier) -> Option<&'a Any>,
) -> Result<(), String> {
    if signer_info.digest_alg.oid != spc::SHA256 {
        return Err(format!(
            "the signer's digest algorithm {} is not SHA-256",
            signer_info.digest_alg.oid
        ));
    }
    let attributes = signer_info
        .signed_attrs
        .as_ref()
        .ok_or("the signer signed no attributes")?;
    let content_type = attribute(ID_CONTENT_TYPE).and_then(|v| v.decode_as().ok());
    if content_type != Some(SPC_INDIRECT_DATA) {
        return Err("the signed content type is not SpcIndirectDataContent".to_string());
    }
    let message_digest: Option<OctetString> =
        attribute(ID_MESSAGE_DIGEST).and_then(|v| v.decode_as().ok());
    let expected = Sha256::digest(content.value());
    if message_digest.as_ref().map(OctetString::as_bytes) != Some(expected.as_slice()) {
        return Err("the signed message digest does not match the signed content".to_string());
    }
    let signer = signer.ok_or("the signer's certificate is not in the signature")?;
    let key =
        PublicKey::of_certificate(signer).ok_or("the signer's key is neither RSA nor P-256")?;
    let signed = attributes.to_der().map_err(|e| e.to_string())?;
    if !key.verify(
        &signer_info.signature_algorithm.oid,
        &signed,
        signer_info.signature.as_bytes(),
    ) {
        return Err("the signer's signature does not hold".to_string());
    }
    Ok(())
}

impl ParsedSignature {
    /// Whether `trusted` vouches for the signer: it is the signer's certificate, or issued it
    /// directly or through certificates the signature carries.
    pub fn chains_to(&self, trusted: &Certificate) -> Result<(), String> {
        let mut current = self
            .signer
            .clone()
            .ok_or("the signer's certificate is not in the signature")?;
        for _ in 0..8 {
            if current == *trusted || keys::issued_by(&current, trusted) {
                return Ok(());
            }
            let Some(issuer) = self
                .certificates
                .iter()
                .find(|candidate| **candidate != current && keys::issued_by(&current, candidate))
            else {
                break;
            };
            current = issuer.clone();
        }
        Err(format!(
            "the signer `{}` is not `{}` and was not issued by it",
            self.signer.as_ref().map(keys::subject).unwrap_or_default(),
            keys::subject(trusted)
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use p256::ecdsa::{DerSignature, SigningKey};
    use x509_cert::builder::{Builder, CertificateBuilder, Profile};
    use x509_cert::name::Name;
    use x509_cert::serial_number::SerialNumber;
    use x509_cert::spki::SubjectPublicKeyInfoOwned;
    use x509_cert::time::Validity;

    use super::*;

    /// A P-256 key from fixed bytes and a certificate made from fixed values: everything
    /// below is deterministic (ECDSA with RFC 6979 nonces).
    fn fixed_signer() -> (PrivateKey, Certificate) {
        let key = SigningKey::from_slice(&[7; 32]).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_key(*key.verifying_key()).unwrap();
        let validity = Validity {
            not_before: Time::UtcTime(
                UtcTime::from_unix_duration(Duration::from_secs(1_700_000_000)).unwrap(),
            ),
            not_after: Time::UtcTime(
                UtcTime::from_unix_duration(Duration::from_secs(1_900_000_000)).unwrap(),
            ),
        };
        let certificate = CertificateBuilder::new(
            Profile::Root,
            SerialNumber::from(42u32),
            validity,
            Name::from_str("CN=kiln test").unwrap(),
            spki,
            &key,
        )
        .unwrap()
        .build::<DerSignature>()
        .unwrap();
        (PrivateKey::P256(key), certificate)
    }

    #[test]
    fn a_signature_reads_back_and_its_bytes_are_pinned() {
        let (key, certificate) = fixed_signer();
        let digest = [0x42; 32];
        let der = authenticode_signature(&digest, &key, &certificate, Some(1_798_859_045)).unwrap();
        let parsed = parse_signature(&der).unwrap();
        assert_eq!(parsed.signed_digest, digest);
        assert_eq!(parsed.integrity, Ok(()));
        assert_eq!(parsed.signer.as_ref(), Some(&certificate));
        assert_eq!(
            parsed
                .signing_time
                .map(|time| time.to_unix_duration().as_secs()),
            Some(1_798_859_045)
        );
        assert_eq!(parsed.chains_to(&certificate), Ok(()));
        // A change in what kiln signs, or how, must not slip in unnoticed.
        assert_eq!(
            format!("{:x}", Sha256::digest(&der)),
            "7f3c36bf219af214c18ff16423fb31228ea72d4798e225de31632305aae294d7"
        );
    }

    #[test]
    fn a_signature_over_another_digest_or_by_another_key_does_not_hold() {
        let (key, certificate) = fixed_signer();
        let mut der = authenticode_signature(&[1; 32], &key, &certificate, None).unwrap();
        // The last bytes are the signature's: damage one.
        let last = der.len() - 3;
        der[last] ^= 1;
        let parsed = parse_signature(&der).unwrap();
        assert!(parsed.integrity.is_err(), "{:?}", parsed.integrity);
    }
}
