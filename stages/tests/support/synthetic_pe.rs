//! Small PE32+ images built byte by byte, for tests that need a stub with a given layout or a
//! malformed file: DOS header, PE signature at 0x80, COFF header, optional header with 16 data
//! directories, section table, sections' data, optional trailing COFF symbol table.

#![allow(dead_code)]

/// Offset of the PE signature.
pub(crate) const NT_OFFSET: usize = 0x80;
/// Offset of the COFF file header.
pub(crate) const FILE_HEADER: usize = NT_OFFSET + 4;
/// Offset of the optional header.
pub(crate) const OPTIONAL_HEADER: usize = FILE_HEADER + 20;
/// Size of the optional header (PE32+ with 16 data directories).
pub(crate) const OPTIONAL_SIZE: usize = 112 + 16 * 8;
/// Offset of the section table.
pub(crate) const SECTION_TABLE: usize = OPTIONAL_HEADER + OPTIONAL_SIZE;

pub(crate) const SCN_CODE: u32 = 0x20;
pub(crate) const SCN_DATA: u32 = 0x40;
pub(crate) const SCN_READ: u32 = 0x4000_0000;
pub(crate) const SCN_WRITE: u32 = 0x8000_0000;
pub(crate) const SCN_EXECUTE: u32 = 0x2000_0000;

#[derive(Clone)]
pub(crate) struct SyntheticSection {
    pub name: &'static str,
    pub data: Vec<u8>,
    pub virtual_size: u32,
    pub characteristics: u32,
}

/// A PE32+ image to build.
#[derive(Clone)]
pub(crate) struct SyntheticPe {
    pub sections: Vec<SyntheticSection>,
    pub file_alignment: u32,
    pub section_alignment: u32,
    pub size_of_headers: u32,
    /// A COFF symbol table with this many 18-byte records and a 4-byte string table, at the end.
    pub symbols: Option<u32>,
    /// The certificate table data directory (offset, size).
    pub certificate_table: Option<(u32, u32)>,
}

impl SyntheticPe {
    /// A stub-like image: `.text` (code), `.data` (writable), `.sbat` (read-only data).
    pub(crate) fn stub_like() -> SyntheticPe {
        SyntheticPe {
            sections: vec![
                SyntheticSection {
                    name: ".text",
                    data: vec![0xc3; 0x300],
                    virtual_size: 0x300,
                    characteristics: SCN_CODE | SCN_READ | SCN_EXECUTE,
                },
                SyntheticSection {
                    name: ".data",
                    data: vec![1; 0x80],
                    virtual_size: 0x80,
                    characteristics: SCN_DATA | SCN_READ | SCN_WRITE,
                },
                SyntheticSection {
                    name: ".sbat",
                    data: b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\n\0".to_vec(),
                    virtual_size: 0,
                    characteristics: SCN_DATA | SCN_READ,
                },
            ],
            file_alignment: 0x200,
            section_alignment: 0x1000,
            size_of_headers: 0x400,
            symbols: Some(3),
            certificate_table: None,
        }
    }

    /// The image's bytes.
    pub(crate) fn build(&self) -> Vec<u8> {
        let align = |value: u32, to: u32| value.div_ceil(to) * to;
        let mut image = vec![0u8; self.size_of_headers as usize];
        image[0..2].copy_from_slice(b"MZ");
        put32(&mut image, 0x3c, NT_OFFSET as u32);
        image[NT_OFFSET..NT_OFFSET + 4].copy_from_slice(b"PE\0\0");
        put16(&mut image, FILE_HEADER, 0x8664);
        put16(&mut image, FILE_HEADER + 2, self.sections.len() as u16);
        put16(&mut image, FILE_HEADER + 16, OPTIONAL_SIZE as u16);
        put16(&mut image, FILE_HEADER + 18, 0x0206);
        put16(&mut image, OPTIONAL_HEADER, 0x20b);
        put32(&mut image, OPTIONAL_HEADER + 32, self.section_alignment);
        put32(&mut image, OPTIONAL_HEADER + 36, self.file_alignment);
        put32(&mut image, OPTIONAL_HEADER + 60, self.size_of_headers);
        put32(&mut image, OPTIONAL_HEADER + 64, 0x1234);
        put16(&mut image, OPTIONAL_HEADER + 68, 10);
        put32(&mut image, OPTIONAL_HEADER + 108, 16);
        if let Some((offset, size)) = self.certificate_table {
            put32(&mut image, OPTIONAL_HEADER + 112 + 4 * 8, offset);
            put32(&mut image, OPTIONAL_HEADER + 112 + 4 * 8 + 4, size);
        }
        let mut virtual_address = self.section_alignment;
        let mut initialized = 0;
        for (index, section) in self.sections.iter().enumerate() {
            let raw_offset = image.len() as u32;
            let raw_size = align(section.data.len() as u32, self.file_alignment);
            let virtual_size = if section.virtual_size == 0 {
                section.data.len() as u32
            } else {
                section.virtual_size
            };
            let at = SECTION_TABLE + index * 40;
            image[at..at + section.name.len()].copy_from_slice(section.name.as_bytes());
            put32(&mut image, at + 8, virtual_size);
            put32(&mut image, at + 12, virtual_address);
            put32(&mut image, at + 16, raw_size);
            put32(&mut image, at + 20, raw_offset);
            put32(&mut image, at + 36, section.characteristics);
            image.extend_from_slice(&section.data);
            image.resize((raw_offset + raw_size) as usize, 0);
            if section.characteristics & SCN_DATA != 0 {
                initialized += virtual_size;
            }
            virtual_address = align(virtual_address + virtual_size, self.section_alignment);
        }
        put32(&mut image, OPTIONAL_HEADER + 8, initialized);
        put32(&mut image, OPTIONAL_HEADER + 56, virtual_address);
        if let Some(count) = self.symbols {
            let at = image.len() as u32;
            put32(&mut image, FILE_HEADER + 8, at);
            put32(&mut image, FILE_HEADER + 12, count);
            image.extend(std::iter::repeat_n(7u8, count as usize * 18));
            image.extend_from_slice(&4u32.to_le_bytes());
        }
        image
    }
}

pub(crate) fn put16(image: &mut [u8], at: usize, value: u16) {
    image[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put32(image: &mut [u8], at: usize, value: u32) {
    image[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn get16(image: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([image[at], image[at + 1]])
}

pub(crate) fn get32(image: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(image[at..at + 4].try_into().unwrap())
}

/// `(name, file offset, size)` of each section header of any PE32/PE32+ image.
pub(crate) fn section_table(image: &[u8]) -> (usize, Vec<usize>) {
    let nt = get32(image, 0x3c) as usize;
    let count = get16(image, nt + 6) as usize;
    let optional_size = get16(image, nt + 20) as usize;
    let table = nt + 24 + optional_size;
    (table, (0..count).map(|i| table + i * 40).collect())
}

/// Malformed variants of a valid PE image, each with what it breaks.
pub(crate) fn malformed_variants(valid: &[u8]) -> Vec<(String, Vec<u8>)> {
    let nt = get32(valid, 0x3c) as usize;
    let (table, headers) = section_table(valid);
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, bytes: Vec<u8>| variants.push((what.to_string(), bytes));

    add("empty file", Vec::new());
    add("one byte", vec![b'M']);
    add("truncated in the DOS header", valid[..40].to_vec());
    add(
        "truncated before the PE signature",
        valid[..nt + 2].to_vec(),
    );
    add("truncated in the COFF header", valid[..nt + 12].to_vec());
    add(
        "truncated in the optional header",
        valid[..nt + 24 + 50].to_vec(),
    );
    add(
        "truncated in the section table",
        valid[..table + 20].to_vec(),
    );
    let last = *headers.last().unwrap();
    let last_end = (get32(valid, last + 20) + get32(valid, last + 16)) as usize;
    add(
        "truncated in the last section",
        valid[..last_end - 1].to_vec(),
    );

    let mut bytes = valid.to_vec();
    bytes[0] = b'Z';
    add("bad DOS magic", bytes);
    let mut bytes = valid.to_vec();
    bytes[nt..nt + 4].copy_from_slice(b"NE\0\0");
    add("bad PE signature", bytes);
    let mut bytes = valid.to_vec();
    put32(&mut bytes, 0x3c, 0xffff_fff0);
    add("e_lfanew beyond the file", bytes);
    let mut bytes = valid.to_vec();
    put16(&mut bytes, nt + 24, 0x107);
    add("ROM optional header magic", bytes);
    let mut bytes = valid.to_vec();
    put16(&mut bytes, nt + 20, 16);
    add("optional header too small", bytes);
    let mut bytes = valid.to_vec();
    put16(&mut bytes, nt + 6, 0xffff);
    add("65535 sections", bytes);
    let mut bytes = valid.to_vec();
    put16(&mut bytes, nt + 6, 97);
    add("97 sections", bytes);
    let mut bytes = valid.to_vec();
    let second = headers[1];
    put32(
        &mut bytes,
        second + 20,
        get32(valid, headers[0] + 20) + 0x10,
    );
    add("overlapping sections", bytes);
    let mut bytes = valid.to_vec();
    put32(&mut bytes, headers[0] + 20, table as u32);
    add("section inside the headers", bytes);
    let mut bytes = valid.to_vec();
    put32(&mut bytes, last + 16, 0xffff_fe00);
    add("section size beyond the file", bytes);
    let mut bytes = valid.to_vec();
    put32(&mut bytes, last + 20, 0xffff_ff00);
    add("section offset beyond the file", bytes);
    let mut bytes = valid.to_vec();
    let optional_size = get16(valid, nt + 20) as usize;
    let magic = get16(valid, nt + 24);
    let directories = nt + 24 + if magic == 0x20b { 112 } else { 96 };
    if optional_size >= directories - (nt + 24) + 5 * 8 {
        put32(&mut bytes, directories + 4 * 8, valid.len() as u32 - 8);
        put32(&mut bytes, directories + 4 * 8 + 4, 0x1000);
        add("certificate table beyond the file", bytes);
    }
    let mut bytes = valid.to_vec();
    put32(
        &mut bytes,
        nt + 24 + if magic == 0x20b { 108 } else { 92 },
        0xffff_ffff,
    );
    put16(&mut bytes, nt + 20, if magic == 0x20b { 120 } else { 104 });
    add("absurd NumberOfRvaAndSizes", bytes);
    add("text, not PE", b"#!/bin/sh\necho hello\n".to_vec());
    variants
}
