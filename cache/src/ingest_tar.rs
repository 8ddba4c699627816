//! Ingesting a tar archive: read it entry by entry, store every file's
//! content, return the manifest [`Store::ingest_dir`] would have recorded for
//! the same tree extracted by root.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use tar::EntryType;

use crate::error::{Result, StoreError};
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::store::Store;
use crate::xattr;

/// The PAX records GNU tar and libarchive write for extended attributes.
const PAX_XATTR: &str = "SCHILY.xattr.";

impl Store {
    /// Reads the tar archive at `tar` (ustar, GNU or PAX, as GNU tar or
    /// mmdebstrap write it) and stores every regular file's content. Returns
    /// the manifest, root included, exactly as [`Store::ingest_dir`] records
    /// the same tree extracted as root: numeric owners from the headers,
    /// `mode & 0o7777`, symlink targets as written, hard links as hard link
    /// groups, devices with their numbers, and the `SCHILY.xattr.*` PAX
    /// records as extended attributes (except `trusted.overlay.*`). The
    /// manifest is not stored: call [`Store::put_manifest`].
    ///
    /// Names lose a leading `./` or `/`. The root directory takes the
    /// metadata of the archive's `./` entry, or is `0755` and owned by root
    /// when there is none. A later entry for a path replaces an earlier one,
    /// as extraction would. Every directory must be in the archive before
    /// or after what it holds; a name with `..`, or one below a symlink or a
    /// file, is refused.
    pub fn ingest_tar(&self, tar: &Path) -> Result<Manifest> {
        let file = File::open(tar).map_err(read_err(tar))?;
        let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        // Hard link groups are numbered as they appear; the manifest
        // renumbers them canonically.
        let mut groups = 0u32;
        for item in archive.entries().map_err(read_err(tar))? {
            let mut item = item.map_err(read_err(tar))?;
            let raw = item.path_bytes().into_owned();
            let name = String::from_utf8(raw).map_err(|_| StoreError::NonUtf8 {
                path: tar.to_owned(),
            })?;
            let path = archive_path(&name).ok_or_else(|| {
                invalid(
                    tar,
                    format!("The archive names `{name}`, which leaves its root"),
                )
            })?;
            let meta = read_meta(&mut item, tar, &name, &path)?;
            let kind = match meta.entry_type {
                EntryType::Directory => EntryKind::Dir,
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    let size = item.size();
                    let (blob, stored) = self.put_reader(&mut item, size, tar)?;
                    EntryKind::File { blob, size: stored }
                }
                EntryType::Symlink => EntryKind::Symlink {
                    target: meta.link.unwrap_or_default(),
                },
                EntryType::Char => EntryKind::CharDev { rdev: meta.rdev },
                EntryType::Block => EntryKind::BlockDev { rdev: meta.rdev },
                EntryType::Fifo => EntryKind::Fifo,
                EntryType::Link => {
                    let target = meta.link.unwrap_or_default();
                    add_hard_link(&mut entries, &mut groups, tar, &name, path, &target)?;
                    continue;
                }
                // Extended headers are consumed by the reader; nothing else
                // describes a file.
                EntryType::XGlobalHeader | EntryType::XHeader => continue,
                EntryType::GNULongName | EntryType::GNULongLink => continue,
                other => {
                    return Err(invalid(
                        tar,
                        format!(
                            "`{name}` is a tar entry of type {other:?}, which kiln cannot store"
                        ),
                    ));
                }
            };
            let entry = Entry {
                path: path.clone(),
                kind,
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                xattrs: meta.xattrs,
                hardlink: None,
            };
            // A path named again is replaced (and leaves its hard link group).
            entries.insert(path, entry);
        }
        entries
            .entry(String::new())
            .or_insert_with(|| Entry::new("", EntryKind::Dir, 0o755));
        Manifest::from_entries(entries.into_values()).map_err(|source| {
            StoreError::InvalidManifest {
                path: tar.to_owned(),
                source,
            }
        })
    }
}

/// What a tar entry says about itself, apart from its content.
struct EntryMeta {
    entry_type: EntryType,
    uid: u32,
    gid: u32,
    mode: u32,
    rdev: u64,
    link: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

/// A read error of the archive at `tar`.
fn read_err(tar: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |source| StoreError::Read {
        path: tar.to_owned(),
        source,
    }
}

/// The archive at `tar` holds something kiln refuses, as `message` says.
fn invalid(tar: &Path, message: String) -> StoreError {
    StoreError::Read {
        path: tar.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidData, message),
    }
}

/// Reads the header of the entry `name` (manifest path `path`): its type,
/// owners (PAX records override the header), mode, device numbers, link
/// target and extended attributes.
fn read_meta<R: Read>(
    item: &mut tar::Entry<'_, R>,
    tar: &Path,
    name: &str,
    path: &str,
) -> Result<EntryMeta> {
    let header = item.header();
    let entry_type = header.entry_type();
    let mut uid = header.uid().map_err(read_err(tar))?;
    let mut gid = header.gid().map_err(read_err(tar))?;
    let mode = header.mode().map_err(read_err(tar))? & 0o7777;
    // Only devices fill in the device numbers.
    let rdev = if matches!(entry_type, EntryType::Char | EntryType::Block) {
        let major = header.device_major().map_err(read_err(tar))?;
        let minor = header.device_minor().map_err(read_err(tar))?;
        libc::makedev(major.unwrap_or(0), minor.unwrap_or(0)) as u64
    } else {
        0
    };
    let link = match item.link_name_bytes() {
        Some(bytes) => {
            Some(
                String::from_utf8(bytes.into_owned()).map_err(|_| StoreError::NonUtf8 {
                    path: tar.join(path),
                })?,
            )
        }
        None => None,
    };
    let xattrs = read_pax(item, tar, name, &mut uid, &mut gid)?;
    let owner = |id: u64| {
        u32::try_from(id).map_err(|_| invalid(tar, format!("`{name}` has the owner id {id}")))
    };
    let (uid, gid) = (owner(uid)?, owner(gid)?);
    Ok(EntryMeta {
        entry_type,
        uid,
        gid,
        mode,
        rdev,
        link,
        xattrs,
    })
}

/// Reads the PAX records of the entry `name`: returns its extended
/// attributes (without `trusted.overlay.*`) and applies `uid` and `gid`
/// records to `uid` and `gid`.
fn read_pax<R: Read>(
    item: &mut tar::Entry<'_, R>,
    tar: &Path,
    name: &str,
    uid: &mut u64,
    gid: &mut u64,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut xattrs = BTreeMap::new();
    let Some(pax) = item.pax_extensions().map_err(read_err(tar))? else {
        return Ok(xattrs);
    };
    for record in pax {
        let record = record.map_err(read_err(tar))?;
        let Ok(key) = record.key() else { continue };
        if let Some(name) = key.strip_prefix(PAX_XATTR) {
            if !xattr::is_overlay_xattr(name.as_bytes()) {
                xattrs.insert(name.to_string(), record.value_bytes().to_vec());
            }
        } else if key == "uid" || key == "gid" {
            let value = record
                .value()
                .ok()
                .and_then(|value| value.parse::<u64>().ok())
                .ok_or_else(|| {
                    invalid(
                        tar,
                        format!("The PAX record `{key}` of `{name}` is no number"),
                    )
                })?;
            if key == "uid" {
                *uid = value;
            } else {
                *gid = value;
            }
        }
    }
    Ok(xattrs)
}

/// Records `path`, the entry `name`, as a hard link to the archive name
/// `target`: a copy of the entry it names, in that entry's hard link group,
/// which gets the next number from `groups` if it has none yet.
fn add_hard_link(
    entries: &mut BTreeMap<String, Entry>,
    groups: &mut u32,
    tar: &Path,
    name: &str,
    path: String,
    target: &str,
) -> Result<()> {
    let target = archive_path(target).ok_or_else(|| {
        invalid(
            tar,
            format!("`{name}` is a hard link to `{target}`, outside the archive"),
        )
    })?;
    let Some(leader) = entries.get(&target) else {
        return Err(invalid(
            tar,
            format!(
                "`{name}` is a hard link to `{target}`, which the archive has not \
                 named before"
            ),
        ));
    };
    if leader.kind.is_dir() {
        return Err(invalid(
            tar,
            format!("`{name}` is a hard link to the directory `{target}`"),
        ));
    }
    let mut linked = leader.clone();
    let group = match leader.hardlink {
        Some(group) => group,
        None => {
            *groups += 1;
            if let Some(leader) = entries.get_mut(&target) {
                leader.hardlink = Some(*groups);
            }
            *groups
        }
    };
    linked.path = path.clone();
    linked.hardlink = Some(group);
    entries.insert(path, linked);
    Ok(())
}

/// The manifest path of an archive name: without `./` and `/` at the start
/// or a `/` at the end, `.` components dropped; `None` when it uses `..`.
fn archive_path(name: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::archive_path;

    #[test]
    fn archive_names_become_manifest_paths() {
        assert_eq!(archive_path("./").as_deref(), Some(""));
        assert_eq!(archive_path(".").as_deref(), Some(""));
        assert_eq!(archive_path("./etc/").as_deref(), Some("etc"));
        assert_eq!(archive_path("/usr/bin/sh").as_deref(), Some("usr/bin/sh"));
        assert_eq!(archive_path("usr/./lib").as_deref(), Some("usr/lib"));
        assert_eq!(archive_path("./etc/../../x"), None);
    }
}
