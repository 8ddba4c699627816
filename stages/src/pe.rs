//! Reading and checking the headers of a PE/COFF image: the DOS header, the PE signature, the
//! COFF file header, the optional header (PE32 or PE32+) with its data directories, and the
//! section table.
//!
//! The structures are `object`'s (`object::pe`), read with `object::pod` from bytes read at
//! known offsets, so a 150 MB UKI is never read whole: only its headers are. `object`'s own
//! `PeFile` is not used because it needs the whole file as one slice and reports every problem
//! as one untyped error; kiln needs to say precisely what is wrong with a file (truncated where,
//! which sections overlap) and to refuse absurd values before allocating anything from them.
//!
//! Every check a later step relies on happens here, once: the section table lies inside the
//! file, every section's raw data lies inside the file, after the headers, and no two sections'
//! raw data overlap; the certificate table, when there is one, lies inside the file.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use miette::Diagnostic;
use object::LittleEndian as LE;
use object::pe::{
    IMAGE_DIRECTORY_ENTRY_SECURITY, IMAGE_DOS_SIGNATURE, IMAGE_NT_OPTIONAL_HDR32_MAGIC,
    IMAGE_NT_OPTIONAL_HDR64_MAGIC, IMAGE_NT_SIGNATURE, IMAGE_NUMBEROF_DIRECTORY_ENTRIES,
    ImageDataDirectory, ImageDosHeader, ImageFileHeader, ImageOptionalHeader32,
    ImageOptionalHeader64, ImageSectionHeader,
};
use object::pod;
use object::read::pe::ImageOptionalHeader;
use thiserror::Error;

/// The most sections kiln accepts, the limit of the Windows loader and of the PE specification
/// for images.
pub(crate) const MAX_SECTIONS: u16 = 96;

/// Size of one section header.
pub(crate) const SECTION_HEADER_SIZE: u64 = size_of::<ImageSectionHeader>() as u64;

/// Size of the COFF file header.
const FILE_HEADER_SIZE: u64 = size_of::<ImageFileHeader>() as u64;

/// Size of one data directory entry.
const DATA_DIRECTORY_SIZE: u64 = size_of::<ImageDataDirectory>() as u64;

/// Why a file is not a PE image kiln can read.
#[derive(Debug, Error, Diagnostic)]
pub enum PeError {
    #[error("Cannot read the file")]
    #[diagnostic(help("Check that the file is readable"))]
    Io(#[from] io::Error),

    #[error("The file is not a PE file: it does not start with `MZ`")]
    #[diagnostic(help(
        "Pass a PE/EFI image, such as a UKI (`.efi`), a systemd-stub or an EFI kernel"
    ))]
    NotPe,

    #[error(
        "The file is truncated: its {what} needs bytes {start}..{end}, but the file has {len} bytes"
    )]
    #[diagnostic(help("The file was cut short; copy or download it again"))]
    Truncated {
        what: &'static str,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error("The file has a DOS header but no PE signature at offset {offset:#x}")]
    #[diagnostic(help("This is an MS-DOS program or a damaged PE file, not a PE/EFI image"))]
    NoPeSignature { offset: u64 },

    #[error("The optional header's magic is {magic:#06x}, neither PE32 (0x10b) nor PE32+ (0x20b)")]
    #[diagnostic(help("Only PE images (executables) have sections kiln can read"))]
    UnknownOptionalHeader { magic: u16 },

    #[error("The optional header is {size} bytes long, too short for its {what} ({needed} bytes)")]
    #[diagnostic(help("The COFF header's SizeOfOptionalHeader is damaged"))]
    OptionalHeaderTooSmall {
        what: &'static str,
        size: u16,
        needed: u64,
    },

    #[error("The file claims {count} sections; a PE image has at most {max}")]
    #[diagnostic(help("The COFF header's NumberOfSections is damaged"))]
    TooManySections { count: u16, max: u16 },

    #[error(
        "Section `{name}` claims bytes {start:#x}..{end:#x}, beyond the end of the file ({len:#x} bytes)"
    )]
    #[diagnostic(help("The file was cut short, or the section table is damaged"))]
    SectionBeyondFile {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error(
        "Section `{name}` starts at {start:#x}, inside the headers (which end at {headers_end:#x})"
    )]
    #[diagnostic(help("The section table is damaged"))]
    SectionOverlapsHeaders {
        name: String,
        start: u64,
        headers_end: u64,
    },

    #[error(
        "Sections `{first}` ({first_range}) and `{second}` ({second_range}) overlap in the file"
    )]
    #[diagnostic(help("The section table is damaged: two sections claim the same bytes"))]
    SectionsOverlap {
        first: String,
        first_range: String,
        second: String,
        second_range: String,
    },

    #[error(
        "The certificate table claims bytes {start:#x}..{end:#x}, beyond the end of the file ({len:#x} bytes)"
    )]
    #[diagnostic(help("The file was cut short after it was signed, or its signature is damaged"))]
    CertificateTableBeyondFile { start: u64, end: u64, len: u64 },
}

/// PE32 or PE32+, from the optional header's magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeFormat {
    /// 32-bit images (ia32, arm).
    Pe32,
    /// 64-bit images (x64, aa64, riscv64...).
    Pe32Plus,
}

impl PeFormat {
    /// Size of the optional header without its data directories.
    pub fn fixed_optional_header_size(self) -> u64 {
        match self {
            PeFormat::Pe32 => size_of::<ImageOptionalHeader32>() as u64,
            PeFormat::Pe32Plus => size_of::<ImageOptionalHeader64>() as u64,
        }
    }

    /// `PE32` or `PE32+`.
    pub fn name(self) -> &'static str {
        match self {
            PeFormat::Pe32 => "PE32",
            PeFormat::Pe32Plus => "PE32+",
        }
    }
}

/// The optional header's fields kiln reads, the same for PE32 and PE32+.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalHeader {
    pub format: PeFormat,
    pub size_of_initialized_data: u32,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub check_sum: u32,
    /// The count the header claims; at most [`IMAGE_NUMBEROF_DIRECTORY_ENTRIES`] are read.
    pub number_of_rva_and_sizes: u32,
}

/// One entry of the section table.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    pub header: ImageSectionHeader,
}

impl Section {
    /// The name's bytes without the NUL padding.
    pub fn name_bytes(&self) -> &[u8] {
        let name = &self.header.name;
        let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        &name[..end]
    }

    /// The name as text (bytes that are not UTF-8 shown as U+FFFD).
    pub fn name(&self) -> String {
        String::from_utf8_lossy(self.name_bytes()).into_owned()
    }

    pub fn virtual_size(&self) -> u32 {
        self.header.virtual_size.get(LE)
    }

    pub fn virtual_address(&self) -> u32 {
        self.header.virtual_address.get(LE)
    }

    pub fn raw_size(&self) -> u32 {
        self.header.size_of_raw_data.get(LE)
    }

    pub fn raw_offset(&self) -> u32 {
        self.header.pointer_to_raw_data.get(LE)
    }

    pub fn characteristics(&self) -> u32 {
        self.header.characteristics.get(LE).0
    }

    /// The bytes of the file the section occupies.
    pub fn raw_range(&self) -> Range<u64> {
        let start = u64::from(self.raw_offset());
        start..start + u64::from(self.raw_size())
    }

    /// How many bytes of the section's content the file holds: its virtual size, cut at its
    /// raw size (the rest is zeros in memory). This is what `ukify inspect` hashes.
    pub fn content_len(&self) -> u64 {
        u64::from(self.virtual_size().min(self.raw_size()))
    }
}

/// The checked headers of a PE image.
#[derive(Debug, Clone)]
pub struct PeHeaders {
    /// The file's length in bytes.
    pub file_len: u64,
    /// Where the PE signature is (`e_lfanew`).
    pub nt_offset: u64,
    pub file_header: ImageFileHeader,
    /// Where the optional header starts.
    pub optional_offset: u64,
    pub optional: OptionalHeader,
    /// The data directories the header has room for (at most 16).
    pub data_directories: Vec<ImageDataDirectory>,
    /// Where the section table starts.
    pub section_table_offset: u64,
    pub sections: Vec<Section>,
}

impl PeHeaders {
    /// Reads and checks the headers of the PE image `reader` holds.
    pub fn read<R: Read + Seek>(reader: &mut R) -> Result<PeHeaders, PeError> {
        let file_len = reader.seek(SeekFrom::End(0))?;
        let mut file = Bounded {
            reader,
            len: file_len,
        };
        let nt_offset = read_nt_offset(&mut file)?;
        let file_header = read_file_header(&mut file, nt_offset)?;
        let section_count = file_header.number_of_sections.get(LE);
        let optional_offset = nt_offset + 4 + FILE_HEADER_SIZE;
        let optional_size = file_header.size_of_optional_header.get(LE);
        let (optional, data_directories) =
            read_optional_header(&mut file, optional_offset, optional_size)?;

        let section_table_offset = optional_offset + u64::from(optional_size);
        let mut table = vec![0; usize::from(section_count) * SECTION_HEADER_SIZE as usize];
        file.read_at(section_table_offset, &mut table, "section table")?;
        let sections: Vec<Section> = table
            .chunks_exact(SECTION_HEADER_SIZE as usize)
            .map(|bytes| Section {
                header: read_pod(bytes),
            })
            .collect();

        let headers = PeHeaders {
            file_len,
            nt_offset,
            file_header,
            optional_offset,
            optional,
            data_directories,
            section_table_offset,
            sections,
        };
        headers.check_sections()?;
        headers.check_certificate_table()?;
        Ok(headers)
    }

    /// Where the headers end: the end of the section table.
    pub fn headers_end(&self) -> u64 {
        self.section_table_offset + self.sections.len() as u64 * SECTION_HEADER_SIZE
    }

    /// The first section with this name.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|section| section.name_bytes() == name.as_bytes())
    }

    /// The certificate table (Authenticode signatures) as a file range, if the image has one.
    pub fn certificate_table(&self) -> Option<Range<u64>> {
        let directory = self.data_directories.get(IMAGE_DIRECTORY_ENTRY_SECURITY)?;
        let start = u64::from(directory.virtual_address.get(LE));
        let size = u64::from(directory.size.get(LE));
        (start != 0 && size != 0).then_some(start..start + size)
    }

    /// Where the optional header's CheckSum field is in the file (the same place in PE32 and
    /// PE32+).
    pub fn check_sum_offset(&self) -> u64 {
        const _: () = assert!(
            std::mem::offset_of!(ImageOptionalHeader32, check_sum)
                == std::mem::offset_of!(ImageOptionalHeader64, check_sum)
        );
        self.optional_offset + std::mem::offset_of!(ImageOptionalHeader64, check_sum) as u64
    }

    /// Where the data directory entry `index` (such as [`IMAGE_DIRECTORY_ENTRY_SECURITY`], the
    /// certificate table) is in the file, if the optional header has room for it.
    pub fn data_directory_offset(&self, index: usize) -> Option<u64> {
        (index < self.data_directories.len()).then(|| {
            self.optional_offset
                + self.optional.format.fixed_optional_header_size()
                + index as u64 * DATA_DIRECTORY_SIZE
        })
    }

    /// Where the certificate table's data directory entry is in the file, if there is room
    /// for one.
    pub fn certificate_entry_offset(&self) -> Option<u64> {
        self.data_directory_offset(IMAGE_DIRECTORY_ENTRY_SECURITY)
    }

    /// Reads the first `max` bytes of a section's content (see [`Section::content_len`]).
    pub fn read_section<R: Read + Seek>(
        &self,
        reader: &mut R,
        section: &Section,
        max: u64,
    ) -> Result<Vec<u8>, PeError> {
        let len = section.content_len().min(max);
        let mut data = vec![0; len as usize];
        reader.seek(SeekFrom::Start(u64::from(section.raw_offset())))?;
        reader.read_exact(&mut data)?;
        Ok(data)
    }

    fn check_sections(&self) -> Result<(), PeError> {
        let headers_end = self.headers_end();
        let mut occupied: Vec<(&Section, Range<u64>)> = Vec::new();
        for section in &self.sections {
            if section.raw_size() == 0 {
                continue;
            }
            let range = section.raw_range();
            if range.end > self.file_len {
                return Err(PeError::SectionBeyondFile {
                    name: section.name(),
                    start: range.start,
                    end: range.end,
                    len: self.file_len,
                });
            }
            if range.start < headers_end {
                return Err(PeError::SectionOverlapsHeaders {
                    name: section.name(),
                    start: range.start,
                    headers_end,
                });
            }
            occupied.push((section, range));
        }
        occupied.sort_by_key(|(_, range)| (range.start, range.end));
        for pair in occupied.windows(2) {
            let ((first, first_range), (second, second_range)) = (&pair[0], &pair[1]);
            if second_range.start < first_range.end {
                return Err(PeError::SectionsOverlap {
                    first: first.name(),
                    first_range: format!("{:#x}..{:#x}", first_range.start, first_range.end),
                    second: second.name(),
                    second_range: format!("{:#x}..{:#x}", second_range.start, second_range.end),
                });
            }
        }
        Ok(())
    }

    fn check_certificate_table(&self) -> Result<(), PeError> {
        match self.certificate_table() {
            Some(range) if range.end > self.file_len => Err(PeError::CertificateTableBeyondFile {
                start: range.start,
                end: range.end,
                len: self.file_len,
            }),
            _ => Ok(()),
        }
    }
}

/// Checks the DOS header and the PE signature; returns where the NT headers start
/// (`e_lfanew`).
fn read_nt_offset<R: Read + Seek>(file: &mut Bounded<'_, R>) -> Result<u64, PeError> {
    if file.len < 2 {
        return Err(PeError::NotPe);
    }
    let mut magic = [0; 2];
    file.read_at(0, &mut magic, "DOS header")?;
    if u16::from_le_bytes(magic) != IMAGE_DOS_SIGNATURE {
        return Err(PeError::NotPe);
    }
    let mut dos_bytes = [0; size_of::<ImageDosHeader>()];
    file.read_at(0, &mut dos_bytes, "DOS header")?;
    let dos: ImageDosHeader = read_pod(&dos_bytes);
    let nt_offset = u64::from(dos.e_lfanew.get(LE));

    let mut signature = [0; 4];
    file.read_at(nt_offset, &mut signature, "PE signature")?;
    if u32::from_le_bytes(signature) != IMAGE_NT_SIGNATURE {
        return Err(PeError::NoPeSignature { offset: nt_offset });
    }
    Ok(nt_offset)
}

/// The COFF file header after the PE signature, its section count checked.
fn read_file_header<R: Read + Seek>(
    file: &mut Bounded<'_, R>,
    nt_offset: u64,
) -> Result<ImageFileHeader, PeError> {
    let mut file_header_bytes = [0; size_of::<ImageFileHeader>()];
    file.read_at(nt_offset + 4, &mut file_header_bytes, "COFF file header")?;
    let file_header: ImageFileHeader = read_pod(&file_header_bytes);
    let section_count = file_header.number_of_sections.get(LE);
    if section_count > MAX_SECTIONS {
        return Err(PeError::TooManySections {
            count: section_count,
            max: MAX_SECTIONS,
        });
    }
    Ok(file_header)
}

/// The optional header of `optional_size` bytes at `optional_offset` and the data directories it
/// has room for, its size checked against its format's fixed fields and directory count.
fn read_optional_header<R: Read + Seek>(
    file: &mut Bounded<'_, R>,
    optional_offset: u64,
    optional_size: u16,
) -> Result<(OptionalHeader, Vec<ImageDataDirectory>), PeError> {
    if optional_size < 2 {
        return Err(PeError::OptionalHeaderTooSmall {
            what: "magic",
            size: optional_size,
            needed: 2,
        });
    }
    // At most 64 KiB: SizeOfOptionalHeader is a u16.
    let mut optional_bytes = vec![0; usize::from(optional_size)];
    file.read_at(optional_offset, &mut optional_bytes, "optional header")?;
    let magic = u16::from_le_bytes([optional_bytes[0], optional_bytes[1]]);
    let format = match magic {
        IMAGE_NT_OPTIONAL_HDR64_MAGIC => PeFormat::Pe32Plus,
        IMAGE_NT_OPTIONAL_HDR32_MAGIC => PeFormat::Pe32,
        _ => return Err(PeError::UnknownOptionalHeader { magic }),
    };
    let fixed = format.fixed_optional_header_size();
    if u64::from(optional_size) < fixed {
        return Err(PeError::OptionalHeaderTooSmall {
            what: "fields",
            size: optional_size,
            needed: fixed,
        });
    }
    let optional = parse_optional_header(format, &optional_bytes);
    let directory_count = optional
        .number_of_rva_and_sizes
        .min(IMAGE_NUMBEROF_DIRECTORY_ENTRIES as u32);
    let directories_end = fixed + u64::from(directory_count) * DATA_DIRECTORY_SIZE;
    if u64::from(optional_size) < directories_end {
        return Err(PeError::OptionalHeaderTooSmall {
            what: "data directories",
            size: optional_size,
            needed: directories_end,
        });
    }
    let data_directories = pod::slice_from_bytes::<ImageDataDirectory>(
        &optional_bytes[fixed as usize..],
        directory_count as usize,
    )
    .map(|(directories, _)| directories.to_vec())
    .unwrap_or_default();
    Ok((optional, data_directories))
}

/// The fields kiln uses, from an optional header's bytes (at least the fixed part).
fn parse_optional_header(format: PeFormat, bytes: &[u8]) -> OptionalHeader {
    match format {
        PeFormat::Pe32Plus => optional_fields(format, &read_pod::<ImageOptionalHeader64>(bytes)),
        PeFormat::Pe32 => optional_fields(format, &read_pod::<ImageOptionalHeader32>(bytes)),
    }
}

/// The fields kiln uses, from either layout of the optional header.
fn optional_fields<H: ImageOptionalHeader>(format: PeFormat, header: &H) -> OptionalHeader {
    OptionalHeader {
        format,
        size_of_initialized_data: header.size_of_initialized_data(),
        section_alignment: header.section_alignment(),
        file_alignment: header.file_alignment(),
        size_of_image: header.size_of_image(),
        size_of_headers: header.size_of_headers(),
        check_sum: header.check_sum(),
        number_of_rva_and_sizes: header.number_of_rva_and_sizes(),
    }
}

/// A copy of the structure at the start of `bytes`. Callers pass at least `size_of::<T>()`
/// bytes; `object`'s endian types have alignment 1, so any offset works.
fn read_pod<T: pod::Pod + Copy>(bytes: &[u8]) -> T {
    match pod::from_bytes::<T>(bytes) {
        Ok((value, _)) => *value,
        Err(()) => unreachable!("callers pass enough bytes for the structure"),
    }
}

/// A reader that knows the file's length and reports reads past it as truncation.
struct Bounded<'a, R> {
    reader: &'a mut R,
    len: u64,
}

impl<R: Read + Seek> Bounded<'_, R> {
    fn read_at(&mut self, offset: u64, buf: &mut [u8], what: &'static str) -> Result<(), PeError> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.len {
            return Err(PeError::Truncated {
                what,
                start: offset,
                end,
                len: self.len,
            });
        }
        self.reader.seek(SeekFrom::Start(offset))?;
        self.reader.read_exact(buf)?;
        Ok(())
    }
}

/// Rounds `value` up to a multiple of `alignment` (a power of two), `None` on overflow.
pub(crate) fn align_up(value: u64, alignment: u64) -> Option<u64> {
    debug_assert!(alignment.is_power_of_two());
    Some(value.checked_add(alignment - 1)? & !(alignment - 1))
}
