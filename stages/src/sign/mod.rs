//! Secure Boot: Authenticode signatures on UKIs, made by kiln itself and checked as firmware,
//! `sbverify` and `osslsigncode verify` check them.
//!
//! - [`digest`]: the Authenticode image digest (SHA-256 over the image less its CheckSum, its
//!   certificate table entry and its certificate table) and the PE checksum, streamed;
//! - [`spc`]: `SpcIndirectDataContent`, the digest in Microsoft's wrapping, as sbsign encodes it;
//! - [`pkcs7`]: the PKCS#7 `SignedData` around it, as sbsign builds it, and reading one back;
//! - [`image`]: signing a file: one pass over it, the signature appended as a `WIN_CERTIFICATE`,
//!   the certificate table entry and the CheckSum patched;
//! - [`keys`]: keys and certificates as mkosi projects hold them (PEM RSA or P-256 keys);
//! - [`check`]: the recipe's signing settings checked when the build is planned;
//! - [`stage`]: the sign stage (kind `sign`), after the uki stage;
//! - [`verify`]: the signature read back, for `kiln inspect`;
//! - [`genkey`]: `kiln genkey`, a key and certificate as `mkosi genkey` writes them.
//!
//! The private key's rule: it enters a stage key only as the digest of its *public* key; its
//! bytes are read from the project when the sign stage runs and never reach the store, the
//! build index, a log or an error message. RustCrypto's crates (`cms`, `x509-cert`, `der`,
//! `rsa`, `p256`) encode and sign; the structures are theirs, the choices of fields follow
//! sbsign, so that a signature made by kiln is byte for byte sbsign's for the same key, image
//! and signing time.
//!
//! ```no_run
//! use kiln_stages::sign::image::{Signer, sign_image};
//! use kiln_stages::sign::keys::{PrivateKey, read_certificate};
//! let signer = Signer {
//!     key: PrivateKey::read("mkosi.key".as_ref(), "mkosi.key".as_ref())?,
//!     certificate: read_certificate("mkosi.crt".as_ref(), "mkosi.crt".as_ref())?,
//!     key_name: "mkosi.key".into(),
//! };
//! let signed = sign_image("image.efi".as_ref(), "image.signed.efi".as_ref(), &signer, Some(0))?;
//! println!("certificate table at {:?}", signed.certificate_table);
//! # Ok::<(), kiln_stages::sign::SignError>(())
//! ```

mod check;
pub(crate) mod digest;
mod error;
pub mod genkey;
pub mod image;
pub mod keys;
mod pkcs7;
mod spc;
mod stage;
pub(crate) mod verify;

pub use check::{SigningMethod, SigningPlan, check_signing, plan_signing};
pub use error::{KeyProblem, SignError, SigningSetting};
pub use stage::SignStage;
pub use verify::SignatureReport;
