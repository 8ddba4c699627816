//! Reading what a kernel module says about itself: the `.modinfo` section of its ELF file
//! (`depends=`, `softdep=`, `firmware=`), from `.ko`, `.ko.xz`, `.ko.zst` and `.ko.gz`, and
//! the same records of built-in modules from `modules.builtin.modinfo`.
//!
//! The compression is told by the content's magic bytes, as kmod does, not by the name. Of an
//! uncompressed module only the ELF header, section headers, section names and `.modinfo` are
//! read (through `object`'s [`ReadCache`]), never the whole file, and each read is checked
//! against the file's length before anything is allocated for it, so a damaged module is an
//! error, never a huge allocation; a compressed one is decompressed whole.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, ReadCache, ReadRef, elf};

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
        Compression::None => modinfo_of_elf(&ReadCache::new(file)),
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

    /// A 64-bit little-endian relocatable ELF file with the sections `.shstrtab` and
    /// `.modinfo` holding `modinfo`, whose section header claims `claimed` bytes when given.
    fn module(modinfo: &[u8], claimed: Option<u64>) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let names_at = 64u64;
        let modinfo_at = names_at + names.len() as u64;
        let table_at = (modinfo_at + modinfo.len() as u64).next_multiple_of(8);
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01");
        elf.resize(16, 0);
        elf.extend_from_slice(&1u16.to_le_bytes()); // e_type: ET_REL
        elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: x86-64
        elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_entry
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
        elf.extend_from_slice(&table_at.to_le_bytes()); // e_shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 0, 0, 64, 3, 1] {
            // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(names);
        elf.extend_from_slice(modinfo);
        elf.resize(table_at as usize, 0);
        let section = |elf: &mut Vec<u8>, name: u32, kind: u32, offset: u64, size: u64| {
            elf.extend_from_slice(&name.to_le_bytes());
            elf.extend_from_slice(&kind.to_le_bytes());
            elf.extend_from_slice(&[0; 16]); // sh_flags, sh_addr
            elf.extend_from_slice(&offset.to_le_bytes());
            elf.extend_from_slice(&size.to_le_bytes());
            elf.extend_from_slice(&[0; 24]); // sh_link, sh_info, sh_addralign, sh_entsize
        };
        section(&mut elf, 0, elf::SHT_NULL.0, 0, 0);
        section(&mut elf, 1, elf::SHT_STRTAB.0, names_at, names.len() as u64);
        let size = claimed.unwrap_or(modinfo.len() as u64);
        section(&mut elf, 11, elf::SHT_PROGBITS.0, modinfo_at, size);
        elf
    }

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_module_file_is_read_plain_or_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let elf = module(b"depends=jbd2,mbcache\0firmware=a.bin\0", None);
        let want = ModInfo {
            depends: vec!["jbd2".into(), "mbcache".into()],
            softdeps: Vec::new(),
            firmware: vec!["a.bin".into()],
        };
        let plain = write(&dir, "ext4.ko", &elf);
        assert_eq!(read_module_file(&plain).unwrap(), want);
        let zstd = write(&dir, "ext4.ko.zst", &zstd::encode_all(&elf[..], 3).unwrap());
        assert_eq!(read_module_file(&zstd).unwrap(), want);
    }

    #[test]
    fn a_damaged_module_is_an_error_not_a_huge_allocation() {
        let dir = tempfile::tempdir().unwrap();
        // `.modinfo` claims a terabyte of a 300-byte file.
        let huge = write(&dir, "huge.ko", &module(b"depends=x\0", Some(1 << 40)));
        assert!(matches!(read_module_file(&huge), Err(ModInfoError::Elf(_))));
        // Cut in the middle of the section table.
        let elf = module(b"depends=x\0", None);
        let cut = write(&dir, "cut.ko", &elf[..elf.len() - 100]);
        assert!(matches!(read_module_file(&cut), Err(ModInfoError::Elf(_))));
        // Only the ELF identification.
        let short = write(&dir, "short.ko", &elf[..20]);
        assert!(read_module_file(&short).is_err());
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(matches!(
            modinfo_of_elf(&b"not an elf file at all"[..]),
            Err(ModInfoError::NotElf(_))
        ));
    }
}
