//! The newc ("070701", SVR4 without checksums) cpio format: one header per entry and the
//! `TRAILER!!!` entry that ends an archive.
//!
//! An entry is a 110-byte header of the magic and 13 fields of 8 hexadecimal digits (inode, mode,
//! uid, gid, nlink, mtime, file size, device major and minor, rdev major and minor, name size
//! including its NUL, check = 0), the name and its NUL padded to a multiple of 4 bytes, then the
//! data padded to a multiple of 4 bytes. Linux's `init/initramfs.c` reads exactly this (and
//! rejects the old binary and odc formats); GNU cpio writes and reads it with `-H newc`.
//!
//! Written by hand rather than with the `cpio` crate: the segment cache keys a segment on the
//! exact header bytes of its entries before any file is read, so headers must exist as values,
//! while the crate's builder only writes a header together with the entry's data through its
//! writer (and silently leaves an entry unpadded when fewer bytes than announced are written).
//! The format is 13 fixed-width fields; owning it keeps every byte visible.

use std::io::{self, Write};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";

/// Length of a header without its name.
pub const HEADER_LEN: usize = 110;

/// The name of the entry that ends an archive.
pub const TRAILER_NAME: &str = "TRAILER!!!";

/// An archive is padded with zeros to a multiple of this after its trailer, as GNU cpio and the
/// kernel's `gen_init_cpio` do; the kernel skips zeros between archives.
pub const ARCHIVE_ALIGN: u64 = 512;

/// File type bits of `st_mode`.
pub mod file_type {
    pub const FIFO: u32 = 0o010000;
    pub const CHAR: u32 = 0o020000;
    pub const DIR: u32 = 0o040000;
    pub const BLOCK: u32 = 0o060000;
    pub const REGULAR: u32 = 0o100000;
    pub const SYMLINK: u32 = 0o120000;
}

/// The fields of one newc header. Every field is 32 bits wide in the format.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub ino: u32,
    /// File type bits and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    /// Length of the data that follows the name.
    pub file_size: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

impl Header {
    /// Appends the header, `name`, its NUL and the padding that aligns the data to 4 bytes.
    pub fn encode(&self, name: &str, out: &mut Vec<u8>) {
        let name_size = name.len() + 1;
        out.reserve(HEADER_LEN + name_size + 3);
        out.extend_from_slice(MAGIC);
        for field in [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.file_size,
            self.dev_major,
            self.dev_minor,
            self.rdev_major,
            self.rdev_minor,
            // Names longer than 4 GiB cannot occur: paths are bounded far below that.
            name_size as u32,
            0, // check: only the "070702" format fills it
        ] {
            push_hex8(field, out);
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len() + padding(HEADER_LEN + name_size), 0);
    }
}

/// Writes `value` as 8 uppercase hexadecimal digits (as GNU cpio and `gen_init_cpio` do).
fn push_hex8(value: u32, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for shift in (0..8).rev() {
        out.push(DIGITS[((value >> (shift * 4)) & 0xF) as usize]);
    }
}

/// The zeros that bring `len` bytes to a multiple of 4.
pub fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Appends the trailer entry (inode 0, mode 0, nlink 1, as GNU cpio writes it).
pub fn encode_trailer(out: &mut Vec<u8>) {
    Header {
        nlink: 1,
        ..Header::default()
    }
    .encode(TRAILER_NAME, out);
}

/// Zeros that follow the trailer of an archive of `len` bytes so that it ends on
/// [`ARCHIVE_ALIGN`].
pub fn archive_padding(len: u64) -> u64 {
    (ARCHIVE_ALIGN - len % ARCHIVE_ALIGN) % ARCHIVE_ALIGN
}

/// Writes `count` zero bytes.
pub fn write_zeros(out: &mut impl Write, count: u64) -> io::Result<()> {
    const ZEROS: [u8; 512] = [0; 512];
    let mut left = count;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_110_bytes_of_uppercase_hex_then_the_padded_name() {
        let mut out = Vec::new();
        Header {
            ino: 0x2a,
            mode: file_type::DIR | 0o755,
            nlink: 2,
            mtime: 0x6553_f100,
            ..Header::default()
        }
        .encode("usr", &mut out);
        let text = String::from_utf8(out[..HEADER_LEN].to_vec()).unwrap();
        let fields = [
            "0000002A", "000041ED", "00000000", "00000000", "00000002", "6553F100", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000004", "00000000",
        ];
        assert_eq!(text, format!("070701{}", fields.concat()));
        // 110 + "usr\0" = 114, padded to 116.
        assert_eq!(&out[HEADER_LEN..], b"usr\0\0\0");
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn names_are_padded_so_data_starts_on_4_bytes() {
        for name in ["a", "ab", "abc", "abcd", "abcde"] {
            let mut out = Vec::new();
            Header::default().encode(name, &mut out);
            assert_eq!(out.len() % 4, 0, "{name}");
            assert!(out.len() > HEADER_LEN + name.len());
            assert!(out.len() < HEADER_LEN + name.len() + 1 + 4);
        }
    }

    #[test]
    fn the_trailer_is_what_gnu_cpio_writes() {
        let mut out = Vec::new();
        encode_trailer(&mut out);
        assert_eq!(&out[..6], MAGIC);
        // nlink 1, name size 11.
        assert_eq!(&out[38..46], b"00000001");
        assert_eq!(&out[94..102], b"0000000B");
        assert_eq!(&out[HEADER_LEN..], b"TRAILER!!!\0\0\0\0");
        assert_eq!(out.len(), 124);
        assert_eq!(archive_padding(out.len() as u64), 388);
        assert_eq!(archive_padding(1024), 0);
    }

    #[test]
    fn zeros_are_written_in_any_count() {
        let mut out = Vec::new();
        write_zeros(&mut out, 1300).unwrap();
        assert_eq!(out.len(), 1300);
        assert!(out.iter().all(|&b| b == 0));
    }
}
