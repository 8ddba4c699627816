//! Reading what a kernel module says about itself: the `.modinfo` section of its ELF file
//! (`depends=`, `softdep=`, `firmware=`), from `.ko`, `.ko.xz`, `.ko.zst` and `.ko.gz`, and
//! the same records of built-in modules from `modules.builtin.modinfo`.
//!
//! The compression is told by the content's magic bytes, as kmod does, not by the name. Of an
//! uncompressed module only the ELF header, section headers, section names and `.modinfo` are
//! read (four positioned reads), never the whole file; a compressed one is decompressed whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, ReadRef, elf};

/// What one module declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`, comma-separated module names.
    pub depends: Vec<String>,
    /// The modules of every `softdep=` (`pre:` and `post:` dropped).
    pub softdeps: Vec<String>,
    /// Every `firmware=`, a path below `/usr/lib/firmware`, possibly with wildcards.
    pub firmware: Vec<String>,
}

impl ModInfo {
    /// Parses `.modinfo`'s NUL-separated `key=value` strings.
    pub fn parse(section: &[u8]) -> ModInfo {
        let mut info = ModInfo::default();
        for record in section.split(|&byte| byte == 0) {
            if let Some((key, value)) = split_record(record) {
                info.add(key, &value);
            }
        }
        info
    }

    fn add(&mut self, key: &str, value: &str) {
        let value = value.trim();
        match key {
            "depends" => self.depends.extend(
                value
                    .split(',')
                    .filter(|name| !name.is_empty())
                    .map(str::to_string),
            ),
            "softdep" => self.softdeps.extend(
                value
                    .split_whitespace()
                    .filter(|word| !word.ends_with(':'))
                    .map(str::to_string),
            ),
            "firmware" => self.firmware.push(value.to_string()),
            _ => {}
        }
    }

    /// Every module this one needs: `depends=` then the soft dependencies.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        self.depends
            .iter()
            .chain(&self.softdeps)
            .map(String::as_str)
    }
}

fn split_record(record: &[u8]) -> Option<(&str, String)> {
    let eq = record.iter().position(|&byte| byte == b'=')?;
    let key = std::str::from_utf8(&record[..eq]).ok()?;
    Some((key, String::from_utf8_lossy(&record[eq + 1..]).into_owned()))
}

/// Parses `modules.builtin.modinfo` (`name.key=value` records separated by NUL) into each
/// built-in module's [`ModInfo`], by module name as written there.
pub fn parse_builtin_modinfo(bytes: &[u8]) -> BTreeMap<String, ModInfo> {
    let mut modules: BTreeMap<String, ModInfo> = BTreeMap::new();
    for record in bytes.split(|&byte| byte == 0) {
        let Some((dotted, value)) = split_record(record) else {
            continue;
        };
        let Some((module, key)) = dotted.split_once('.') else {
            continue;
        };
        modules
            .entry(module.to_string())
            .or_default()
            .add(key, &value);
    }
    modules
}

/// Why a module could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModInfoError {
    #[error("cannot read it")]
    Io(#[from] io::Error),
    #[error("it is not an ELF file ({0})")]
    NotElf(&'static str),
    #[error("its ELF headers are damaged: {0}")]
    Elf(#[from] object::read::Error),
}

/// How a module file is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd,
    Xz,
    Gzip,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }
}

/// Reads the `.modinfo` of the module file at `path` (compressed or not). A module without a
/// `.modinfo` section declares nothing.
pub fn read_module_file(path: &Path) -> Result<ModInfo, ModInfoError> {
    let mut file = File::open(path)?;
    let mut head = [0u8; 6];
    let got = read_up_to(&mut file, &mut head)?;
    let compression = Compression::detect(&head[..got]);
    file.seek(SeekFrom::Start(0))?;
    match compression {
        Compression::None => match modinfo_by_pread(&file)? {
            Some(info) => Ok(info),
            None => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)?;
                modinfo_of_elf(bytes.as_slice())
            }
        },
        Compression::Zstd => {
            let mut bytes = Vec::new();
            zstd::stream::read::Decoder::new(file)?.read_to_end(&mut bytes)?;
            modinfo_of_elf(bytes.as_slice())
        }
        Compression::Xz => {
            let mut bytes = Vec::new();
            liblzma::read::XzDecoder::new_multi_decoder(file).read_to_end(&mut bytes)?;
            modinfo_of_elf(bytes.as_slice())
        }
        Compression::Gzip => {
            let mut bytes = Vec::new();
            flate2::read::MultiGzDecoder::new(&mut file).read_to_end(&mut bytes)?;
            modinfo_of_elf(bytes.as_slice())
        }
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The `.modinfo` of an uncompressed 64-bit ELF file, reading only its header, section
/// headers, section names and `.modinfo` (four reads). `None` when the file is anything else
/// (32-bit, an extended section count, damaged): the caller then reads it whole.
fn modinfo_by_pread(file: &File) -> io::Result<Option<ModInfo>> {
    use std::os::unix::fs::FileExt;
    type Header = elf::FileHeader64<Endianness>;
    type Section = elf::SectionHeader64<Endianness>;
    let read_at = |offset: u64, len: usize| -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; len];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(Some(buf)),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(err) => Err(err),
        }
    };
    let Some(head) = read_at(0, std::mem::size_of::<Header>())? else {
        return Ok(None);
    };
    if head[4] != 2 {
        return Ok(None);
    }
    let Ok(header) = Header::parse(head.as_slice()) else {
        return Ok(None);
    };
    let Ok(endian) = header.endian() else {
        return Ok(None);
    };
    let count = usize::from(header.e_shnum.get(endian));
    let Some(names_index) = header.e_shstrndx.get(endian).index() else {
        return Ok(None);
    };
    let names_index = usize::from(names_index);
    let entry_size = usize::from(header.e_shentsize.get(endian));
    if count == 0 || names_index >= count || entry_size != std::mem::size_of::<Section>() {
        return Ok(None);
    }
    let Some(table) = read_at(header.e_shoff.get(endian), count * entry_size)? else {
        return Ok(None);
    };
    let Ok(sections) = table.as_slice().read_slice_at::<Section>(0, count) else {
        return Ok(None);
    };
    let names = &sections[names_index];
    let Some(names) = read_at(names.sh_offset(endian), names.sh_size(endian) as usize)? else {
        return Ok(None);
    };
    let wanted = b".modinfo\0";
    let found = sections.iter().find(|section| {
        let start = section.sh_name(endian) as usize;
        names
            .get(start..start + wanted.len())
            .is_some_and(|name| name == wanted)
    });
    let Some(section) = found else {
        return Ok(Some(ModInfo::default()));
    };
    if section.sh_type(endian) == elf::SHT_NOBITS {
        return Ok(Some(ModInfo::default()));
    }
    match read_at(section.sh_offset(endian), section.sh_size(endian) as usize)? {
        Some(bytes) => Ok(Some(ModInfo::parse(&bytes))),
        None => Ok(None),
    }
}

/// The `.modinfo` of an uncompressed ELF module.
pub fn modinfo_of_elf<'data, R: ReadRef<'data>>(data: R) -> Result<ModInfo, ModInfoError> {
    let ident = data
        .read_bytes_at(0, 16)
        .map_err(|()| ModInfoError::NotElf("it is too short"))?;
    if !ident.starts_with(&elf::ELFMAG) {
        return Err(ModInfoError::NotElf("no ELF magic"));
    }
    // The class byte of `e_ident`: 1 for 32-bit, 2 for 64-bit.
    match ident[4] {
        2 => section_of::<elf::FileHeader64<Endianness>, R>(data),
        1 => section_of::<elf::FileHeader32<Endianness>, R>(data),
        _ => Err(ModInfoError::NotElf("unknown ELF class")),
    }
}

fn section_of<'data, Elf: FileHeader<Endian = Endianness>, R: ReadRef<'data>>(
    data: R,
) -> Result<ModInfo, ModInfoError> {
    let header = Elf::parse(data)?;
    let endian = header.endian()?;
    let sections = header.sections(endian, data)?;
    match sections.section_by_name(endian, b".modinfo") {
        Some((_, section)) => {
            let bytes = section.data(endian, data)?;
            Ok(ModInfo::parse(bytes))
        }
        None => Ok(ModInfo::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_records_are_split_like_modinfo_does() {
        let section = b"license=GPL\0softdep=pre: crc32c post: foo_bar\0depends=jbd2,mbcache,\0\
                        firmware=rtl_nic/rtl8168h-2.fw\0\0\0firmware=iwlwifi-*.ucode\0name=ext4\0";
        let info = ModInfo::parse(section);
        assert_eq!(info.depends, vec!["jbd2", "mbcache"]);
        assert_eq!(info.softdeps, vec!["crc32c", "foo_bar"]);
        assert_eq!(
            info.firmware,
            vec!["rtl_nic/rtl8168h-2.fw", "iwlwifi-*.ucode"]
        );
    }

    #[test]
    fn builtin_records_are_grouped_by_module() {
        let bytes = b"crypto_algapi.softdep=pre: cryptomgr\0crypto_algapi.license=GPL\0\
                      ext4.firmware=x.bin\0";
        let builtin = parse_builtin_modinfo(bytes);
        assert_eq!(builtin["crypto_algapi"].softdeps, vec!["cryptomgr"]);
        assert_eq!(builtin["ext4"].firmware, vec!["x.bin"]);
    }

    #[test]
    fn compression_is_told_by_magic() {
        assert_eq!(Compression::detect(b"\x7fELF\x02\x01"), Compression::None);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"\xfd7zXZ\0"), Compression::Xz);
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8, 0, 0, 0]),
            Compression::Gzip
        );
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(matches!(
            modinfo_of_elf(&b"not an elf file at all"[..]),
            Err(ModInfoError::NotElf(_))
        ));
    }
}
