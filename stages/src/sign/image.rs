//! Signing a PE file: the signed copy written in one pass over the input, the signature appended
//! as a `WIN_CERTIFICATE`, the certificate table entry and the CheckSum patched in place.
//!
//! The input is read once, in 1 MiB chunks: each chunk is written to the output, fed to the
//! Authenticode hasher and to the PE checksum, so a 150 MB UKI is never held in memory. (When
//! the hashed ranges are not in file order, as in images with gaps or overlapping sections,
//! they are hashed again with seeks.) Then, as sbsign does:
//!
//! - the file is padded with zeros to a multiple of 8 bytes (the padding is hashed);
//! - `WIN_CERTIFICATE { dwLength = 8 + the signature's length, wRevision = 0x0200,
//!   wCertificateType = 0x0002 (PKCS#7 SignedData), the signature }` is appended, padded with
//!   zeros to 8 bytes;
//! - the certificate table entry points at it (its file offset, the padded size);
//! - the CheckSum covers the whole signed file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use x509_cert::Certificate;

use super::digest::{AuthenticodeLayout, CHUNK, PeChecksum, SequentialHasher, hash_ranges};
use super::error::SignError;
use super::keys::PrivateKey;
use super::pkcs7::{self, BuildError};
use crate::pe::{PeHeaders, align_up};

/// `WIN_CERT_REVISION_2_0`.
pub const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
pub const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

/// A key and its certificate, ready to sign.
#[derive(Debug)]
pub struct Signer {
    pub key: PrivateKey,
    pub certificate: Certificate,
    /// How messages name the key (its path in the recipe).
    pub key_name: std::path::PathBuf,
}

/// What [`sign_image`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedImage {
    /// The Authenticode SHA-256 digest the signature covers.
    pub digest: [u8; 32],
    /// Where the certificate table is in the signed file.
    pub certificate_table: Range<u64>,
    /// The signed file's CheckSum.
    pub check_sum: u32,
}

/// `signature` wrapped in a `WIN_CERTIFICATE`, padded to 8 bytes.
pub fn win_certificate(signature: &[u8]) -> Option<Vec<u8>> {
    let length = u32::try_from(8 + signature.len()).ok()?;
    let mut out = Vec::with_capacity(signature.len() + 16);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(signature);
    out.resize(align_up(out.len() as u64, 8)? as usize, 0);
    Some(out)
}

/// Writes `output`, the image `input` signed by `signer` at `signing_time` (seconds since
/// 1970; `None`: the signature records no time).
pub fn sign_image(
    input: &Path,
    output: &Path,
    signer: &Signer,
    signing_time: Option<u64>,
) -> Result<SignedImage, SignError> {
    let write_error = |source| SignError::Write {
        path: output.to_path_buf(),
        source,
    };
    let (mut source, headers) = open_unsigned(input)?;
    let len = headers.file_len;
    let padded = align_up(len, 8).ok_or(SignError::TooLarge {
        path: input.to_path_buf(),
    })?;
    let layout = AuthenticodeLayout::new(&headers, padded).map_err(|source| SignError::Layout {
        path: input.to_path_buf(),
        source,
    })?;
    let mut out = File::create(output).map_err(write_error)?;
    let (digest, mut checksum) =
        copy_and_hash(&mut source, &mut out, &layout, len, padded, input, output)?;

    let signature =
        pkcs7::authenticode_signature(&digest, &signer.key, &signer.certificate, signing_time)
            .map_err(|error| match error {
                BuildError::Encoding(what, source) => SignError::Encoding { what, source },
                BuildError::Signing => SignError::SigningFailed {
                    path: signer.key_name.clone(),
                },
            })?;
    let table = win_certificate(&signature).ok_or(SignError::TooLarge {
        path: input.to_path_buf(),
    })?;
    let table_end = padded + table.len() as u64;
    let (Ok(table_offset), Ok(table_size)) = (u32::try_from(padded), u32::try_from(table.len()))
    else {
        return Err(SignError::TooLarge {
            path: input.to_path_buf(),
        });
    };
    if u32::try_from(table_end).is_err() {
        return Err(SignError::TooLarge {
            path: input.to_path_buf(),
        });
    }
    out.write_all(&table).map_err(write_error)?;
    checksum.feed(&table);

    let mut entry = [0u8; 8];
    entry[..4].copy_from_slice(&table_offset.to_le_bytes());
    entry[4..].copy_from_slice(&table_size.to_le_bytes());
    checksum.add_at_even_offset(&entry);
    let check_sum = checksum.finish(table_end);
    out.write_all_at(&entry, layout.certificate_entry_offset)
        .map_err(write_error)?;
    out.write_all_at(&check_sum.to_le_bytes(), layout.check_sum_offset)
        .map_err(write_error)?;
    Ok(SignedImage {
        digest,
        certificate_table: padded..table_end,
        check_sum,
    })
}

/// Opens `input` and reads its PE headers, refusing an image that is signed already.
fn open_unsigned(input: &Path) -> Result<(File, PeHeaders), SignError> {
    let mut source = File::open(input).map_err(|source| SignError::Read {
        path: input.to_path_buf(),
        source,
    })?;
    let headers = PeHeaders::read(&mut source).map_err(|source| SignError::Image {
        path: input.to_path_buf(),
        source,
    })?;
    if headers.certificate_table().is_some() {
        return Err(SignError::AlreadySigned {
            path: input.to_path_buf(),
        });
    }
    Ok((source, headers))
}

/// Copies the `len` bytes of `source` to `out`, padded with zeros to `padded`, in one pass that
/// also feeds the Authenticode hasher and the PE checksum. Returns the Authenticode digest and
/// the checksum so far (the certificate table is still to come).
fn copy_and_hash(
    source: &mut File,
    out: &mut File,
    layout: &AuthenticodeLayout,
    len: u64,
    padded: u64,
    input: &Path,
    output: &Path,
) -> Result<([u8; 32], PeChecksum), SignError> {
    let read_error = |source| SignError::Read {
        path: input.to_path_buf(),
        source,
    };
    let write_error = |source| SignError::Write {
        path: output.to_path_buf(),
        source,
    };
    // Read as zero in the checksum: the CheckSum itself and the entry written afterwards.
    let zeroed = [
        layout.check_sum_offset..layout.check_sum_offset + 4,
        layout.certificate_entry_offset..layout.certificate_entry_offset + 8,
    ];
    let mut hasher = layout
        .is_sequential()
        .then(|| SequentialHasher::new(layout));
    let mut checksum = PeChecksum::new();
    let mut buffer = vec![0; CHUNK];
    let mut offset = 0u64;
    source.seek(SeekFrom::Start(0)).map_err(read_error)?;
    while offset < len {
        let want = (len - offset).min(CHUNK as u64) as usize;
        source.read_exact(&mut buffer[..want]).map_err(read_error)?;
        let chunk = &mut buffer[..want];
        out.write_all(chunk).map_err(write_error)?;
        if let Some(hasher) = &mut hasher {
            hasher.feed(offset, chunk);
        }
        zero_ranges(chunk, offset, &zeroed);
        checksum.feed(chunk);
        offset += want as u64;
    }
    let padding = vec![0; (padded - len) as usize];
    out.write_all(&padding).map_err(write_error)?;
    checksum.feed(&padding);
    let digest = match hasher {
        Some(mut hasher) => {
            hasher.feed(len, &padding);
            hasher.finish()
        }
        None => hash_ranges(source, &layout.hashed, len).map_err(read_error)?,
    };
    Ok((digest, checksum))
}

/// Zeroes the bytes of `chunk` (which starts at `offset` in the file) that lie in `ranges`.
fn zero_ranges(chunk: &mut [u8], offset: u64, ranges: &[Range<u64>]) {
    let end = offset + chunk.len() as u64;
    for range in ranges {
        let start = range.start.max(offset);
        let stop = range.end.min(end);
        if start < stop {
            chunk[(start - offset) as usize..(stop - offset) as usize].fill(0);
        }
    }
}
