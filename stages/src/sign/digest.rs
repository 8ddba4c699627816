//! The Authenticode image digest and the PE checksum.
//!
//! The digest is SHA-256 over the bytes the Authenticode specification ("Windows Authenticode
//! Portable Executable Signature Format", "Calculating the PE Image Hash") lists, in its order:
//!
//! 1. the headers up to SizeOfHeaders, without the optional header's CheckSum (4 bytes) and
//!    without the certificate table's data directory entry (8 bytes);
//! 2. each section's raw data (SizeOfRawData bytes at PointerToRawData), sections with raw data
//!    sorted by PointerToRawData;
//! 3. the data after them: from SizeOfHeaders plus the sum of the sections' raw sizes up to the
//!    end of the file less the certificate table's size.
//!
//! EDK2's `DxeImageVerificationLib` (what firmware runs), sbsign and osslsigncode compute the
//! same. A file about to be signed is padded with zeros to a multiple of 8 bytes (the
//! certificate table must start 8-byte aligned), and the padding belongs to step 3.
//!
//! The PE checksum (the optional header's CheckSum) is the one's complement sum of the file's
//! little-endian 16-bit words, with the CheckSum field read as zero, folded to 16 bits, plus the
//! file's length. Firmware does not check it; kiln keeps it right because Windows tools do.
//!
//! Both are computed while streaming: [`SequentialHasher`] takes the file in order, chunk by
//! chunk, and [`hash_ranges`] reads the ranges with seeks when they are not in file order.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use miette::Diagnostic;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::pe::PeHeaders;

/// Size of a buffer used to stream a file.
pub(crate) const CHUNK: usize = 1 << 20;

/// Why the Authenticode digest of an image cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error, Diagnostic)]
pub enum LayoutError {
    #[error("Its optional header has no certificate table entry (it has {count} data directories)")]
    #[diagnostic(help(
        "Only PE images with at least 5 data directories can carry an Authenticode signature"
    ))]
    NoCertificateDirectory { count: usize },

    #[error("Its PE header starts at the odd offset {offset:#x}")]
    #[diagnostic(help("The DOS header's e_lfanew is damaged"))]
    UnalignedHeaders { offset: u64 },

    #[error("Its SizeOfHeaders ({size_of_headers:#x}) ends inside the headers, before {needed:#x}")]
    #[diagnostic(help("The optional header's SizeOfHeaders is damaged"))]
    HeadersTooSmall { size_of_headers: u64, needed: u64 },

    #[error("Its SizeOfHeaders ({size_of_headers:#x}) lies beyond the end of the file ({len:#x})")]
    #[diagnostic(help("The file was cut short, or its optional header is damaged"))]
    HeadersBeyondFile { size_of_headers: u64, len: u64 },
}

/// What Authenticode hashes in one image, and the fields it skips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthenticodeLayout {
    /// The optional header's CheckSum field (4 bytes).
    pub check_sum_offset: u64,
    /// The certificate table's data directory entry (8 bytes).
    pub certificate_entry_offset: u64,
    /// The ranges hashed, in the order they are hashed.
    pub hashed: Vec<Range<u64>>,
}

impl AuthenticodeLayout {
    /// The layout of an image whose signed data ends at `data_end`: the file's length less the
    /// certificate table's size for a signed image, the length padded to 8 bytes for one about
    /// to be signed.
    pub(crate) fn new(
        headers: &PeHeaders,
        data_end: u64,
    ) -> Result<AuthenticodeLayout, LayoutError> {
        let certificate_entry_offset =
            headers
                .certificate_entry_offset()
                .ok_or(LayoutError::NoCertificateDirectory {
                    count: headers.data_directories.len(),
                })?;
        if !headers.nt_offset.is_multiple_of(2) {
            return Err(LayoutError::UnalignedHeaders {
                offset: headers.nt_offset,
            });
        }
        let check_sum_offset = headers.check_sum_offset();
        let size_of_headers = u64::from(headers.optional.size_of_headers);
        let needed = certificate_entry_offset + 8;
        if size_of_headers < needed {
            return Err(LayoutError::HeadersTooSmall {
                size_of_headers,
                needed,
            });
        }
        let readable = data_end.max(headers.file_len);
        if size_of_headers > readable {
            return Err(LayoutError::HeadersBeyondFile {
                size_of_headers,
                len: headers.file_len,
            });
        }

        let mut hashed = vec![
            0..check_sum_offset,
            check_sum_offset + 4..certificate_entry_offset,
            certificate_entry_offset + 8..size_of_headers,
        ];
        let mut sections: Vec<Range<u64>> = headers
            .sections
            .iter()
            .filter(|section| section.raw_size() != 0)
            .map(|section| section.raw_range())
            .collect();
        sections.sort_by_key(|range| (range.start, range.end));
        let mut sum_of_bytes_hashed = size_of_headers;
        for range in sections {
            sum_of_bytes_hashed += range.end - range.start;
            hashed.push(range);
        }
        if data_end > sum_of_bytes_hashed {
            hashed.push(sum_of_bytes_hashed..data_end);
        }
        hashed.retain(|range| range.start < range.end);
        Ok(AuthenticodeLayout {
            check_sum_offset,
            certificate_entry_offset,
            hashed,
        })
    }

    /// The layout of an image as it is: signed data ends where the certificate table's size
    /// before the end of the file says.
    pub(crate) fn of_image(headers: &PeHeaders) -> Result<AuthenticodeLayout, LayoutError> {
        let table = headers
            .certificate_table()
            .map_or(0, |range| range.end - range.start);
        AuthenticodeLayout::new(headers, headers.file_len.saturating_sub(table))
    }

    /// Whether the hashed ranges follow each other in file order without overlapping, so the
    /// file can be hashed in one sequential pass.
    pub(crate) fn is_sequential(&self) -> bool {
        self.hashed
            .windows(2)
            .all(|pair| pair[0].end <= pair[1].start)
    }
}

/// Hashes the ranges of `layout` in file order, fed the file chunk by chunk from its start.
/// Only for layouts that are [`AuthenticodeLayout::is_sequential`].
pub(crate) struct SequentialHasher<'a> {
    ranges: &'a [Range<u64>],
    next: usize,
    hasher: Sha256,
}

impl<'a> SequentialHasher<'a> {
    pub(crate) fn new(layout: &'a AuthenticodeLayout) -> SequentialHasher<'a> {
        debug_assert!(layout.is_sequential());
        SequentialHasher {
            ranges: &layout.hashed,
            next: 0,
            hasher: Sha256::new(),
        }
    }

    /// Feeds the bytes at `offset`; chunks come in file order.
    pub(crate) fn feed(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        while let Some(range) = self.ranges.get(self.next) {
            let start = range.start.max(offset);
            let stop = range.end.min(end);
            if start < stop {
                self.hasher
                    .update(&bytes[(start - offset) as usize..(stop - offset) as usize]);
            }
            if range.end <= end {
                self.next += 1;
            } else {
                break;
            }
        }
    }

    pub(crate) fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

/// Hashes `ranges` of the file `reader` holds, in the order given, seeking to each. Bytes past
/// `len` (the end of the file) read as zeros: the padding of a file about to be signed.
pub(crate) fn hash_ranges<R: Read + Seek>(
    reader: &mut R,
    ranges: &[Range<u64>],
    len: u64,
) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; CHUNK];
    for range in ranges {
        let in_file = range.start.min(len)..range.end.min(len);
        if in_file.start < in_file.end {
            reader.seek(SeekFrom::Start(in_file.start))?;
            let mut remaining = in_file.end - in_file.start;
            while remaining > 0 {
                let want = remaining.min(CHUNK as u64) as usize;
                reader.read_exact(&mut buffer[..want])?;
                hasher.update(&buffer[..want]);
                remaining -= want as u64;
            }
        }
        let mut zeros = (range.end - range.start) - in_file.end.saturating_sub(in_file.start);
        if zeros > 0 {
            buffer.fill(0);
        }
        while zeros > 0 {
            let want = zeros.min(CHUNK as u64) as usize;
            hasher.update(&buffer[..want]);
            zeros -= want as u64;
        }
    }
    Ok(hasher.finalize().into())
}

/// The PE checksum of a file fed in order from its start, with the bytes the caller zeroes
/// (the CheckSum field) read as zero.
#[derive(Debug, Default, Clone)]
pub(crate) struct PeChecksum {
    sum: u64,
    /// A byte left over from a chunk of odd length: the low half of the next word.
    pending: Option<u8>,
}

impl PeChecksum {
    pub(crate) fn new() -> PeChecksum {
        PeChecksum::default()
    }

    /// Adds the next bytes of the file.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        if let Some(low) = self.pending.take() {
            let Some((&high, rest)) = bytes.split_first() else {
                self.pending = Some(low);
                return;
            };
            self.sum += u64::from(u16::from_le_bytes([low, high]));
            bytes = rest;
        }
        let mut words = bytes.chunks_exact(2);
        for word in &mut words {
            self.sum += u64::from(u16::from_le_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            self.pending = Some(*last);
        }
    }

    /// Adds bytes that lie at an even offset somewhere in the file (a field written later, such
    /// as the certificate table entry), independently of the stream.
    pub(crate) fn add_at_even_offset(&mut self, bytes: &[u8]) {
        for word in bytes.chunks(2) {
            let high = word.get(1).copied().unwrap_or(0);
            self.sum += u64::from(u16::from_le_bytes([word[0], high]));
        }
    }

    /// The checksum of a file of `len` bytes.
    pub(crate) fn finish(mut self, len: u64) -> u32 {
        if let Some(low) = self.pending.take() {
            self.sum += u64::from(low);
        }
        let mut sum = self.sum;
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        (sum as u32).wrapping_add(len as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_does_not_depend_on_how_the_file_is_cut() {
        let data: Vec<u8> = (0..10_001u32).map(|i| (i * 31 % 253) as u8).collect();
        let mut whole = PeChecksum::new();
        whole.feed(&data);
        let mut pieces = PeChecksum::new();
        for piece in data.chunks(7) {
            pieces.feed(piece);
        }
        assert_eq!(
            whole.finish(data.len() as u64),
            pieces.finish(data.len() as u64)
        );
    }

    #[test]
    fn the_checksum_folds_carries_like_the_pe_specification() {
        let mut checksum = PeChecksum::new();
        checksum.feed(&[0xff, 0xff, 0x02, 0x00]);
        // 0xffff + 0x0002 = 0x10001, folded: 0x0002; plus the length.
        assert_eq!(checksum.finish(4), 0x0002 + 4);
    }

    #[test]
    fn zeros_past_the_end_hash_like_padding() {
        let data = b"0123456789".to_vec();
        let mut padded = data.clone();
        padded.resize(16, 0);
        let mut cursor = std::io::Cursor::new(data);
        let ranges = [0..1, 2..16];
        let digest = hash_ranges(&mut cursor, &ranges[1..], 10).unwrap();
        let expected: [u8; 32] = Sha256::digest(&padded[2..16]).into();
        assert_eq!(digest, expected);
    }
}
