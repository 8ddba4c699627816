//! Assembling a UKI the way ukify does: the systemd-stub with sections appended.
//!
//! The stub's headers are patched in place (with `object`'s PE structures, whose writer cannot
//! re-emit an existing image such as Debian's stub) and the new sections' data are streamed
//! after the stub's own data, so a 150 MB initrd is copied file to file, never held in memory.
//! ukify's rules (systemd's `src/ukify/ukify.py`, `pe_add_sections`):
//!
//! - The stub's sections stay where they are. A COFF symbol table (with its string table) that
//!   ends the stub is dropped: PointerToSymbolTable and NumberOfSymbols become 0 and
//!   IMAGE_FILE_LOCAL_SYMS_STRIPPED is set.
//! - SizeOfHeaders is rounded up to FileAlignment; the new section headers must fit below it
//!   and below the first section's data, else the stub is refused.
//! - Each new section's data starts at the end of the file rounded up to FileAlignment and
//!   takes its size rounded up to FileAlignment; its VirtualAddress follows the previous
//!   section's end rounded up to SectionAlignment; its VirtualSize is the data's size or the
//!   one given (for `.linux`, the kernel's SizeOfImage). `.linux` is marked code and readable,
//!   every other section initialized data and readable. SizeOfInitializedData grows by each new
//!   section's VirtualSize.
//! - A new section named like a read-only data section of the stub (`.sbat`) replaces that
//!   section's content in place when it fits in the section's raw size. kiln also requires it
//!   to fit below the next section's VirtualAddress (ukify does not check, and Debian's stub,
//!   aligned to 512 bytes, would then overlap `.sdmagic` in memory); when it does not fit, the
//!   stub's section header is removed and the section is appended like a new one; the stub's
//!   data after the removed section moves down so the file keeps no gap (signing tools hash
//!   gaps differently), unless a debug directory (which holds file offsets) forbids it.
//! - SizeOfImage is the end of the last section rounded up to SectionAlignment; CheckSum is 0
//!   (firmware does not check it, and a signature covers the file anyway).
//!
//! The output depends only on the stub and the sections' bytes: assembling twice gives the
//! same file.

use std::fs::{self, File};
use std::io::{self, Cursor, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use object::LittleEndian as LE;
use object::U32;
use object::pe::{
    IMAGE_DIRECTORY_ENTRY_DEBUG, IMAGE_FILE_LOCAL_SYMS_STRIPPED, IMAGE_SCN_CNT_CODE,
    IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE,
    ImageFileHeader, ImageOptionalHeader32, ImageOptionalHeader64, ImageSectionHeader,
    SectionFlags,
};
use object::pod;

use super::error::UkiError;
use crate::pe::{MAX_SECTIONS, PeFormat, PeHeaders, SECTION_HEADER_SIZE, align_up};

/// The largest stub kiln reads into memory (a systemd-stub is about 100 KiB).
pub(super) const MAX_STUB_SIZE: u64 = 64 << 20;

/// The largest FileAlignment the PE specification allows (64 KiB).
const MAX_FILE_ALIGNMENT: u64 = 0x1_0000;

/// Size of one COFF symbol table record.
const COFF_SYMBOL_SIZE: u64 = 18;

/// Where a section's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionContent {
    /// A file, streamed into the UKI.
    File(PathBuf),
    /// Bytes in memory (a command line, a kernel version).
    Bytes(Vec<u8>),
}

/// One section to add to the stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiSection {
    /// `.osrel`, `.linux`...: printable ASCII, at most 8 bytes.
    pub name: String,
    pub content: SectionContent,
    /// The VirtualSize to record instead of the content's size (`.linux`: the kernel's
    /// SizeOfImage, so the stub can run it in place).
    pub virtual_size: Option<u32>,
}

impl UkiSection {
    pub fn file(name: impl Into<String>, path: impl Into<PathBuf>) -> UkiSection {
        UkiSection {
            name: name.into(),
            content: SectionContent::File(path.into()),
            virtual_size: None,
        }
    }

    pub fn bytes(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> UkiSection {
        UkiSection {
            name: name.into(),
            content: SectionContent::Bytes(bytes.into()),
            virtual_size: None,
        }
    }

    pub fn with_virtual_size(mut self, virtual_size: Option<u32>) -> UkiSection {
        self.virtual_size = virtual_size;
        self
    }

    /// The content's size in bytes.
    fn len(&self) -> Result<u64, UkiError> {
        match &self.content {
            SectionContent::Bytes(bytes) => Ok(bytes.len() as u64),
            SectionContent::File(path) => {
                fs::metadata(path)
                    .map(|meta| meta.len())
                    .map_err(|source| UkiError::Read {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// Reads the whole content (only for sections that replace a small stub section).
    fn read_all(&self) -> Result<Vec<u8>, UkiError> {
        match &self.content {
            SectionContent::Bytes(bytes) => Ok(bytes.clone()),
            SectionContent::File(path) => fs::read(path).map_err(|source| UkiError::Read {
                path: path.clone(),
                source,
            }),
        }
    }
}

/// How a section ended up in the UKI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Added after the stub's sections.
    Appended,
    /// Written over the stub's section of the same name.
    Replaced,
}

/// Where one of the new sections was put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSection {
    pub name: String,
    pub placement: Placement,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
}

/// What [`assemble_uki`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiLayout {
    /// The new sections, in the order given.
    pub sections: Vec<PlacedSection>,
    pub size_of_image: u32,
    pub file_len: u64,
    /// Whether the stub's trailing COFF symbol table was dropped.
    pub symbol_table_dropped: bool,
}

/// One row of the section table being built.
struct Row {
    header: ImageSectionHeader,
    from_stub: bool,
    /// The index of the new section whose content replaces this stub section's.
    replaced_by: Option<usize>,
}

/// Writes to `out` a UKI made of the systemd-stub at `stub` and `sections`, in order (ukify's
/// order is `.osrel`, `.cmdline`, `.uname`, `.initrd`, `.linux`, `.sbat`).
///
/// ```no_run
/// use kiln_stages::uki::{assemble_uki, UkiSection};
/// let layout = assemble_uki(
///     "linuxx64.efi.stub".as_ref(),
///     &[
///         UkiSection::file(".osrel", "os-release"),
///         UkiSection::bytes(".uname", "6.1.0-57-amd64"),
///         UkiSection::file(".initrd", "initrd.cpio.zst"),
///         UkiSection::file(".linux", "vmlinuz"),
///     ],
///     "image.efi".as_ref(),
/// )?;
/// println!("{} bytes", layout.file_len);
/// # Ok::<(), kiln_stages::uki::UkiError>(())
/// ```
pub fn assemble_uki(
    stub: &Path,
    sections: &[UkiSection],
    out: &Path,
) -> Result<UkiLayout, UkiError> {
    let mut image = read_stub(stub)?;
    let headers = PeHeaders::read(&mut Cursor::new(&image)).map_err(|source| UkiError::Stub {
        path: stub.to_path_buf(),
        source,
    })?;
    let alignment = check_stub(stub, &headers)?;
    let symbol_table = trailing_symbol_table(&headers, &image);
    if let Some(start) = symbol_table {
        image.truncate(start as usize);
    }
    let lengths = check_sections(sections)?;

    let mut table = Table::of_stub(&headers);
    let to_append = table.replace(&mut image, sections, &lengths, alignment.file)?;
    table.append(
        sections,
        &lengths,
        &to_append,
        image.len() as u64,
        alignment,
    )?;
    let placed = table.placed(sections);

    let size_of_headers = header_room(stub, &headers, table.rows.len(), alignment, &image)?;
    let size_of_image = align_up(virtual_end(&table.rows), alignment.section)
        .and_then(|end| u32::try_from(end).ok())
        .ok_or(UkiError::ImageTooLarge)?;
    let [size_of_headers, initialized_data] = to_u32([size_of_headers, table.initialized_data])?;
    patch_headers(
        &mut image,
        &headers,
        &table.rows,
        HeaderFields {
            symbol_table: match symbol_table {
                Some(_) => SymbolTable::Dropped,
                None => SymbolTable::At(table.symbol_table_pointer as u32),
            },
            size_of_headers,
            size_of_image,
            initialized_data,
        },
    );
    write_replaced(&mut image, &table.rows, sections, &lengths)?;

    let file_len = write_image(out, &image, sections, &lengths, &table.appended)?;
    Ok(UkiLayout {
        sections: placed,
        size_of_image,
        file_len,
        symbol_table_dropped: symbol_table.is_some(),
    })
}

/// The stub's FileAlignment and SectionAlignment.
#[derive(Debug, Clone, Copy)]
struct Alignment {
    file: u64,
    section: u64,
}

/// Refuses a stub that is signed already or whose alignments are not powers of two (or a
/// FileAlignment beyond the specification's); returns the alignments.
fn check_stub(stub: &Path, headers: &PeHeaders) -> Result<Alignment, UkiError> {
    if headers.certificate_table().is_some() {
        return Err(UkiError::StubSigned {
            path: stub.to_path_buf(),
        });
    }
    let optional = headers.optional;
    let alignment = Alignment {
        file: u64::from(optional.file_alignment),
        section: u64::from(optional.section_alignment),
    };
    if !alignment.file.is_power_of_two()
        || !alignment.section.is_power_of_two()
        || alignment.file > MAX_FILE_ALIGNMENT
    {
        return Err(UkiError::BadAlignment {
            path: stub.to_path_buf(),
            file_alignment: optional.file_alignment,
            section_alignment: optional.section_alignment,
        });
    }
    Ok(alignment)
}

/// The section table being built, row by row: the stub's, then the new ones; and what the
/// headers will say of it.
struct Table {
    rows: Vec<Row>,
    /// The appended sections (by index in the sections given) and where their data goes.
    appended: Vec<(usize, Range32)>,
    /// Where each appended section went, by index in the sections given.
    placed_appended: Vec<(usize, PlacedSection)>,
    /// SizeOfInitializedData.
    initialized_data: u64,
    /// PointerToSymbolTable, moved down with the data after a removed section.
    symbol_table_pointer: u64,
    /// A debug directory holds file offsets: no data may move.
    has_debug_directory: bool,
}

impl Table {
    fn of_stub(headers: &PeHeaders) -> Table {
        Table {
            rows: headers
                .sections
                .iter()
                .map(|section| Row {
                    header: section.header,
                    from_stub: true,
                    replaced_by: None,
                })
                .collect(),
            appended: Vec::new(),
            placed_appended: Vec::new(),
            initialized_data: u64::from(headers.optional.size_of_initialized_data),
            symbol_table_pointer: u64::from(headers.file_header.pointer_to_symbol_table.get(LE)),
            has_debug_directory: headers
                .data_directories
                .get(IMAGE_DIRECTORY_ENTRY_DEBUG)
                .is_some_and(|directory| directory.size.get(LE) != 0),
        }
    }

    /// Puts each section named like one of the stub's in its place when it fits, else removes
    /// the stub's section (and its data from `image`). Returns the indexes of the sections to
    /// append, in order.
    fn replace(
        &mut self,
        image: &mut Vec<u8>,
        sections: &[UkiSection],
        lengths: &[u64],
        file_alignment: u64,
    ) -> Result<Vec<usize>, UkiError> {
        let mut to_append: Vec<usize> = Vec::with_capacity(sections.len());
        for (index, (section, &len)) in sections.iter().zip(lengths).enumerate() {
            let Some(row) = self
                .rows
                .iter()
                .position(|row| row.from_stub && name_of(&row.header) == section.name.as_bytes())
            else {
                to_append.push(index);
                continue;
            };
            let header = self.rows[row].header;
            if !replaceable(&header) {
                return Err(UkiError::StubSectionClash {
                    name: section.name.clone(),
                });
            }
            let raw_room = u64::from(header.size_of_raw_data.get(LE));
            if len <= raw_room && len <= virtual_room(&self.rows, row) {
                self.rows[row].header.virtual_size.set(LE, len as u32);
                self.rows[row].replaced_by = Some(index);
                continue;
            }
            self.rows.remove(row);
            let removed = remove_raw_data(
                image,
                &mut self.rows,
                &header,
                file_alignment,
                !self.has_debug_directory,
            );
            if let Some(removed) = removed
                && self.symbol_table_pointer >= removed.end
            {
                self.symbol_table_pointer -= removed.end - removed.start;
            }
            to_append.push(index);
        }
        Ok(to_append)
    }

    /// Appends the sections of `to_append` after the stub's data, which ends at `file_end`.
    fn append(
        &mut self,
        sections: &[UkiSection],
        lengths: &[u64],
        to_append: &[usize],
        mut file_end: u64,
        alignment: Alignment,
    ) -> Result<(), UkiError> {
        for &index in to_append {
            let placed = self.append_one(&sections[index], lengths[index], file_end, alignment)?;
            file_end = u64::from(placed.raw_offset) + u64::from(placed.raw_size);
            let range = Range32 {
                offset: placed.raw_offset,
                size: placed.raw_size,
            };
            self.appended.push((index, range));
            self.placed_appended.push((index, placed));
        }
        Ok(())
    }

    /// Adds the row of `section`, `len` bytes long, with its data at the end of the file
    /// (`file_end`) and its address after the highest section.
    fn append_one(
        &mut self,
        section: &UkiSection,
        len: u64,
        file_end: u64,
        alignment: Alignment,
    ) -> Result<PlacedSection, UkiError> {
        let too_large = || UkiError::SectionTooLarge {
            name: section.name.clone(),
            size: len,
        };
        let raw_size = align_up(len, alignment.file).ok_or_else(too_large)?;
        let raw_offset = align_up(file_end, alignment.file).ok_or(UkiError::ImageTooLarge)?;
        let virtual_address =
            align_up(virtual_end(&self.rows), alignment.section).ok_or(UkiError::ImageTooLarge)?;
        let virtual_size = section.virtual_size.map_or(len, u64::from);
        let [raw_size, raw_offset, virtual_address, virtual_size] =
            to_u32([raw_size, raw_offset, virtual_address, virtual_size])?;
        if virtual_address.checked_add(virtual_size).is_none()
            || raw_offset.checked_add(raw_size).is_none()
        {
            return Err(UkiError::ImageTooLarge);
        }

        let kind = if section.name == ".linux" {
            IMAGE_SCN_CNT_CODE
        } else {
            IMAGE_SCN_CNT_INITIALIZED_DATA
        };
        let header = ImageSectionHeader {
            name: section_name(&section.name),
            virtual_size: U32::new(LE, virtual_size),
            virtual_address: U32::new(LE, virtual_address),
            size_of_raw_data: U32::new(LE, raw_size),
            pointer_to_raw_data: U32::new(LE, raw_offset),
            characteristics: U32::new(LE, SectionFlags(IMAGE_SCN_MEM_READ.0 | kind.0)),
            ..ImageSectionHeader::default()
        };
        self.rows.push(Row {
            header,
            from_stub: false,
            replaced_by: None,
        });
        self.initialized_data += u64::from(virtual_size);
        Ok(PlacedSection {
            name: section.name.clone(),
            placement: Placement::Appended,
            virtual_address,
            virtual_size,
            raw_offset,
            raw_size,
        })
    }

    /// Where every new section ended up, in the order given (the data after a removed section
    /// may have moved a replaced one).
    fn placed(&self, sections: &[UkiSection]) -> Vec<PlacedSection> {
        let mut placed = self.placed_appended.clone();
        for row in &self.rows {
            if let Some(index) = row.replaced_by {
                placed.push((
                    index,
                    PlacedSection {
                        name: sections[index].name.clone(),
                        placement: Placement::Replaced,
                        virtual_address: row.header.virtual_address.get(LE),
                        virtual_size: row.header.virtual_size.get(LE),
                        raw_offset: row.header.pointer_to_raw_data.get(LE),
                        raw_size: row.header.size_of_raw_data.get(LE),
                    },
                ));
            }
        }
        placed.sort_by_key(|(index, _)| *index);
        placed.into_iter().map(|(_, section)| section).collect()
    }
}

/// Checks that a section table of `rows` rows fits in the stub's header space, below its first
/// section's data; returns SizeOfHeaders rounded up to FileAlignment.
fn header_room(
    stub: &Path,
    headers: &PeHeaders,
    rows: usize,
    alignment: Alignment,
    image: &[u8],
) -> Result<u64, UkiError> {
    if rows > usize::from(MAX_SECTIONS) {
        return Err(UkiError::TooManySections {
            count: rows,
            max: MAX_SECTIONS,
        });
    }
    let size_of_headers = align_up(u64::from(headers.optional.size_of_headers), alignment.file)
        .ok_or(UkiError::ImageTooLarge)?;
    let first_data = headers
        .sections
        .iter()
        .filter(|section| section.raw_size() != 0)
        .map(|section| u64::from(section.raw_offset()))
        .min()
        .unwrap_or(u64::MAX);
    let available = size_of_headers.min(first_data).min(image.len() as u64);
    let needed = headers.section_table_offset + rows as u64 * SECTION_HEADER_SIZE;
    if needed > available {
        return Err(UkiError::NoHeaderRoom {
            path: stub.to_path_buf(),
            count: rows.saturating_sub(headers.sections.len()),
            needed,
            available,
        });
    }
    Ok(size_of_headers)
}

/// Writes the content of each section that replaces one of the stub's over that section's
/// data, padded with zeros.
fn write_replaced(
    image: &mut [u8],
    rows: &[Row],
    sections: &[UkiSection],
    lengths: &[u64],
) -> Result<(), UkiError> {
    for row in rows {
        let Some(index) = row.replaced_by else {
            continue;
        };
        let data = sections[index].read_all()?;
        check_length(&sections[index], lengths[index], data.len() as u64)?;
        let start = row.header.pointer_to_raw_data.get(LE) as usize;
        let end = start + row.header.size_of_raw_data.get(LE) as usize;
        let target = &mut image[start..end];
        target.fill(0);
        target[..data.len()].copy_from_slice(&data);
    }
    Ok(())
}

/// A section's place in the file.
#[derive(Debug, Clone, Copy)]
struct Range32 {
    offset: u32,
    size: u32,
}

/// What becomes of the stub's COFF symbol table pointer.
enum SymbolTable {
    Dropped,
    At(u32),
}

/// The optional and file header values [`patch_headers`] writes.
struct HeaderFields {
    symbol_table: SymbolTable,
    size_of_headers: u32,
    size_of_image: u32,
    initialized_data: u32,
}

fn read_stub(stub: &Path) -> Result<Vec<u8>, UkiError> {
    let read_error = |source| UkiError::Read {
        path: stub.to_path_buf(),
        source,
    };
    let size = fs::metadata(stub).map_err(read_error)?.len();
    if size > MAX_STUB_SIZE {
        return Err(UkiError::StubTooLarge {
            path: stub.to_path_buf(),
            size,
            max: MAX_STUB_SIZE,
        });
    }
    fs::read(stub).map_err(read_error)
}

/// Checks names and sizes; returns each section's length.
fn check_sections(sections: &[UkiSection]) -> Result<Vec<u64>, UkiError> {
    let mut lengths = Vec::with_capacity(sections.len());
    for (index, section) in sections.iter().enumerate() {
        let name = &section.name;
        let printable = name.bytes().all(|b| (0x20..0x7f).contains(&b));
        if name.is_empty() || name.len() > 8 || !printable {
            return Err(UkiError::BadSectionName { name: name.clone() });
        }
        if sections[..index].iter().any(|other| &other.name == name) {
            return Err(UkiError::DuplicateSection { name: name.clone() });
        }
        let len = section.len()?;
        if len == 0 {
            return Err(UkiError::EmptySection { name: name.clone() });
        }
        if len > u64::from(u32::MAX) {
            return Err(UkiError::SectionTooLarge {
                name: name.clone(),
                size: len,
            });
        }
        lengths.push(len);
    }
    Ok(lengths)
}

/// Where a COFF symbol table (and its string table) that ends the stub starts, if it does:
/// ukify drops it only when nothing follows it, and never when it would cut into the headers
/// or a section.
fn trailing_symbol_table(headers: &PeHeaders, image: &[u8]) -> Option<u64> {
    let start = u64::from(headers.file_header.pointer_to_symbol_table.get(LE));
    if start == 0 {
        return None;
    }
    let symbols = u64::from(headers.file_header.number_of_symbols.get(LE)) * COFF_SYMBOL_SIZE;
    let strings_at = start.checked_add(symbols)?;
    let strings = image
        .get(strings_at as usize..)
        .and_then(|rest| rest.get(..4))
        .map_or(0, |bytes| {
            u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        });
    let end = strings_at.checked_add(strings)?;
    let sections_end = headers
        .sections
        .iter()
        .map(|section| section.raw_range().end)
        .chain([headers.headers_end()])
        .max()
        .unwrap_or(0);
    (end == image.len() as u64 && start >= sections_end).then_some(start)
}

/// The section's name bytes without NUL padding.
fn name_of(header: &ImageSectionHeader) -> &[u8] {
    let end = header
        .name
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    &header.name[..end]
}

/// A checked name (at most 8 bytes) padded with NULs.
fn section_name(name: &str) -> [u8; 8] {
    let mut bytes = [0; 8];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    bytes
}

/// Whether a stub section may be replaced: read-only initialized data.
fn replaceable(header: &ImageSectionHeader) -> bool {
    let flags = header.characteristics.get(LE).0;
    let forbidden = IMAGE_SCN_CNT_CODE.0 | IMAGE_SCN_MEM_EXECUTE.0 | IMAGE_SCN_MEM_WRITE.0;
    flags & IMAGE_SCN_CNT_INITIALIZED_DATA.0 != 0 && flags & forbidden == 0
}

/// Takes a removed stub section's data out of the file. When the span from its start to the
/// next section's data is a multiple of FileAlignment (and `compact`: no debug directory holds
/// file offsets), the data after it moves down and the sections' PointerToRawData follow, so
/// the file has no gap: Authenticode tools disagree on how to hash gaps (sbverify and pesign
/// warn about them). Otherwise the bytes are zeroed where they are. Returns the removed span,
/// if data moved.
fn remove_raw_data(
    image: &mut Vec<u8>,
    rows: &mut [Row],
    removed: &ImageSectionHeader,
    file_alignment: u64,
    compact: bool,
) -> Option<Range<u64>> {
    let start = u64::from(removed.pointer_to_raw_data.get(LE));
    let end = start + u64::from(removed.size_of_raw_data.get(LE));
    if start == end {
        return None;
    }
    let next = rows
        .iter()
        .map(|row| {
            (
                u64::from(row.header.pointer_to_raw_data.get(LE)),
                row.header.size_of_raw_data.get(LE),
            )
        })
        .filter(|&(offset, size)| size != 0 && offset >= end)
        .map(|(offset, _)| offset)
        .min()
        .unwrap_or(image.len() as u64);
    if !compact || (next - start) % file_alignment != 0 || next > image.len() as u64 {
        if let Some(bytes) = image.get_mut(start as usize..end as usize) {
            bytes.fill(0);
        }
        return None;
    }
    image.drain(start as usize..next as usize);
    for row in rows.iter_mut() {
        let offset = u64::from(row.header.pointer_to_raw_data.get(LE));
        if row.header.size_of_raw_data.get(LE) != 0 && offset >= next {
            row.header
                .pointer_to_raw_data
                .set(LE, (offset - (next - start)) as u32);
        }
    }
    Some(start..next)
}

/// How many bytes the row's section may grow to in memory before it reaches the next section.
fn virtual_room(rows: &[Row], row: usize) -> u64 {
    let start = rows[row].header.virtual_address.get(LE);
    rows.iter()
        .enumerate()
        .filter(|&(other, _)| other != row)
        .map(|(_, other)| other.header.virtual_address.get(LE))
        .filter(|&address| address > start)
        .min()
        .map_or(u64::MAX, |next| u64::from(next - start))
}

/// The end of the highest section in memory.
fn virtual_end(rows: &[Row]) -> u64 {
    rows.iter()
        .map(|row| {
            u64::from(row.header.virtual_address.get(LE))
                + u64::from(row.header.virtual_size.get(LE))
        })
        .max()
        .unwrap_or(0)
}

fn to_u32<const N: usize>(values: [u64; N]) -> Result<[u32; N], UkiError> {
    let mut out = [0; N];
    for (slot, value) in out.iter_mut().zip(values) {
        *slot = u32::try_from(value).map_err(|_| UkiError::ImageTooLarge)?;
    }
    Ok(out)
}

/// Writes the new header values and section table into the stub's bytes.
fn patch_headers(image: &mut [u8], headers: &PeHeaders, rows: &[Row], fields: HeaderFields) {
    let file_header_at = (headers.nt_offset + 4) as usize;
    if let Ok((file_header, _)) =
        pod::from_bytes_mut::<ImageFileHeader>(&mut image[file_header_at..])
    {
        file_header.number_of_sections.set(LE, rows.len() as u16);
        match fields.symbol_table {
            SymbolTable::Dropped => {
                file_header.pointer_to_symbol_table.set(LE, 0);
                file_header.number_of_symbols.set(LE, 0);
                let flags = file_header.characteristics.get(LE);
                file_header
                    .characteristics
                    .set(LE, flags | IMAGE_FILE_LOCAL_SYMS_STRIPPED);
            }
            SymbolTable::At(pointer) => file_header.pointer_to_symbol_table.set(LE, pointer),
        }
    }

    let optional_at = headers.optional_offset as usize;
    match headers.optional.format {
        PeFormat::Pe32Plus => {
            if let Ok((optional, _)) =
                pod::from_bytes_mut::<ImageOptionalHeader64>(&mut image[optional_at..])
            {
                optional.size_of_headers.set(LE, fields.size_of_headers);
                optional.size_of_image.set(LE, fields.size_of_image);
                optional.check_sum.set(LE, 0);
                optional
                    .size_of_initialized_data
                    .set(LE, fields.initialized_data);
            }
        }
        PeFormat::Pe32 => {
            if let Ok((optional, _)) =
                pod::from_bytes_mut::<ImageOptionalHeader32>(&mut image[optional_at..])
            {
                optional.size_of_headers.set(LE, fields.size_of_headers);
                optional.size_of_image.set(LE, fields.size_of_image);
                optional.check_sum.set(LE, 0);
                optional
                    .size_of_initialized_data
                    .set(LE, fields.initialized_data);
            }
        }
    }

    let table_at = headers.section_table_offset as usize;
    let old_end = headers.headers_end() as usize;
    let new_end = table_at + rows.len() * SECTION_HEADER_SIZE as usize;
    image[table_at..old_end.max(new_end)].fill(0);
    for (slot, row) in image[table_at..new_end]
        .chunks_exact_mut(SECTION_HEADER_SIZE as usize)
        .zip(rows)
    {
        slot.copy_from_slice(pod::bytes_of(&row.header));
    }
}

fn check_length(section: &UkiSection, expected: u64, found: u64) -> Result<(), UkiError> {
    if expected == found {
        return Ok(());
    }
    let path = match &section.content {
        SectionContent::File(path) => path.clone(),
        SectionContent::Bytes(_) => PathBuf::from(&section.name),
    };
    Err(UkiError::SourceChanged {
        path,
        expected,
        found,
    })
}

/// Writes the patched stub, then each appended section at its offset, padded with zeros.
fn write_image(
    out: &Path,
    image: &[u8],
    sections: &[UkiSection],
    lengths: &[u64],
    appended: &[(usize, Range32)],
) -> Result<u64, UkiError> {
    let write_error = |source| UkiError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut file = File::create(out).map_err(write_error)?;
    file.write_all(image).map_err(write_error)?;
    let mut position = image.len() as u64;
    for &(index, range) in appended {
        let section = &sections[index];
        let (offset, size) = (u64::from(range.offset), u64::from(range.size));
        write_zeros(&mut file, offset.saturating_sub(position)).map_err(write_error)?;
        let copied = match &section.content {
            SectionContent::Bytes(bytes) => {
                file.write_all(bytes).map_err(write_error)?;
                bytes.len() as u64
            }
            SectionContent::File(path) => {
                let source = File::open(path).map_err(|source| UkiError::Read {
                    path: path.clone(),
                    source,
                })?;
                // File to file: the kernel copies (copy_file_range), nothing passes through here.
                io::copy(&mut source.take(lengths[index]), &mut file).map_err(write_error)?
            }
        };
        check_length(section, lengths[index], copied)?;
        write_zeros(&mut file, size.saturating_sub(copied)).map_err(write_error)?;
        position = offset + size;
    }
    file.flush().map_err(write_error)?;
    Ok(position)
}

fn write_zeros(file: &mut File, mut count: u64) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while count > 0 {
        let chunk = count.min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..chunk])?;
        count -= chunk as u64;
    }
    Ok(())
}
