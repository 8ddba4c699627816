//! Metadata variants: copies of a blob that carry a mode, owner and xattrs.
//!
//! A hard link shares its inode's metadata, so a hardlink checkout can link
//! the plain blob (`0644`, the store's owner, no xattrs: what most files of a
//! root filesystem carry) only where the manifest wants exactly that. Any
//! other combination gets a variant, made
//! once and then linked by every checkout that needs it, as OSTree's bare
//! repositories keep one object per distinct content and metadata:
//!
//! ```text
//! v1/variants/ab/<62 more hex digits of the blob id>.<64 hex digits of the metadata digest>
//! ```
//!
//! The name holds the blob id, so `verify` can rehash the content, recompute
//! the metadata digest from the file itself, and `gc` can tell which blob a
//! variant belongs to. On btrfs and XFS the copy is a reflink and costs no space.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Gid, Mode, Uid};

use crate::blob::OBJECT_MODE;
use crate::digest::{BlobId, Digest};
use crate::error::{Result, StoreError};
use crate::store::{ObjectDir, Store};
use crate::xattr;

/// The metadata a file inode carries besides its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileMeta<'a> {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) xattrs: &'a BTreeMap<String, Vec<u8>>,
}

impl FileMeta<'_> {
    /// The digest naming this metadata in a variant's file name.
    pub(crate) fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"kiln-variant\x01");
        h.update(&(self.mode & 0o7777).to_le_bytes());
        h.update(&self.uid.to_le_bytes());
        h.update(&self.gid.to_le_bytes());
        h.update(&(self.xattrs.len() as u32).to_le_bytes());
        for (name, value) in self.xattrs {
            h.update(&(name.len() as u32).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(value.len() as u32).to_le_bytes());
            h.update(value);
        }
        Digest::from(h.finalize())
    }
}

/// Splits a variant's prefix folder and file name into blob id and metadata digest.
pub(crate) fn parse_variant_name(prefix: &str, name: &str) -> Option<(BlobId, Digest)> {
    let (rest, meta) = name.split_once('.')?;
    let blob = format!("{prefix}{rest}").parse().ok()?;
    Some((blob, meta.parse().ok()?))
}

impl Store {
    /// The path of the variant of `blob` with metadata digest `meta`.
    pub(crate) fn variant_path(&self, blob: &BlobId, meta: &Digest) -> PathBuf {
        let mut path = self.object_path(ObjectDir::Variants, blob);
        path.as_mut_os_string().push(format!(".{meta}"));
        path
    }

    /// Whether a plain object already has exactly this metadata.
    pub(crate) fn is_plain(&self, meta: &FileMeta<'_>) -> bool {
        meta.mode == OBJECT_MODE && (meta.uid, meta.gid) == self.owner() && meta.xattrs.is_empty()
    }

    /// A store file with `blob`'s content and `meta`'s metadata, ready to be
    /// hard-linked: the plain blob if it fits, else a variant (made if missing).
    pub(crate) fn linkable(&self, blob: &BlobId, meta: &FileMeta<'_>) -> Result<PathBuf> {
        if self.is_plain(meta) {
            return self.blob_path(blob);
        }
        let path = self.variant_path(blob, &meta.digest());
        match fs::symlink_metadata(&path) {
            Ok(found) if found.file_type().is_file() => return Ok(path),
            // Not written by the store: a variant is made from its blob, so make it again.
            Ok(found) => {
                crate::freeze::remove_any(&path)?;
                self.note_repair(format!(
                    "removed `{}`: a {} where the store keeps a file",
                    path.display(),
                    crate::freeze::file_type_name(&found.file_type())
                ));
            }
            Err(_) => {}
        }
        let mut src = self.open_blob(blob)?;
        let (mut out, temp) = self.create_temp()?;
        let made = io::copy(&mut src, &mut out)
            .map_err(|source| StoreError::Write {
                path: temp.clone(),
                source,
            })
            .and_then(|_| apply_file_meta(&out, &temp, meta));
        drop(out);
        if let Err(e) = made {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        self.install(&temp, &path)?;
        Ok(path)
    }
}

/// Sets owner, then mode (a chown clears setuid), then xattrs of an open file.
pub(crate) fn apply_file_meta(file: &File, path: &Path, meta: &FileMeta<'_>) -> Result<()> {
    rustix::fs::fchown(
        file,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| StoreError::SetMetadata {
        path: path.to_owned(),
        what: "owner",
        source: e.into(),
    })?;
    rustix::fs::fchmod(file, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(|e| {
        StoreError::SetMetadata {
            path: path.to_owned(),
            what: "mode",
            source: e.into(),
        }
    })?;
    xattr::set_fd(file.as_fd(), path, meta.xattrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = Digest::of_bytes(b"content");
        let xattrs = BTreeMap::new();
        let meta = FileMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            xattrs: &xattrs,
        };
        let path = store.variant_path(&blob, &meta.digest());
        let prefix = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            parse_variant_name(prefix, name),
            Some((blob, meta.digest()))
        );
        assert_eq!(parse_variant_name(prefix, "nonsense"), None);
        let other = FileMeta {
            mode: 0o644,
            ..meta
        };
        assert_ne!(meta.digest(), other.digest());
    }
}
