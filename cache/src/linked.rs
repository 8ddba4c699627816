//! Checking what a shared checkout links before a stage reads it.
//!
//! The files of a shared checkout are the store's objects themselves, hard-linked: a write to
//! an object, or to a checkout file (the same inode), would reach every stage that mounts the
//! checkout, and from there the image, without anyone hashing it. So before
//! [`Store::shared_checkout`] hands a checkout out, every file in it is checked against its
//! blob, with the stat cache's rule (see `statcache`): a file whose `lstat` (inode, size,
//! times, mode, owner) equals the row recorded when its content last hashed to its blob, and
//! whose row is settled, is taken as it is; any other file is hashed again. A write in place
//! changes the inode's ctime, which no call sets back, so a changed file never matches its row.
//!
//! A file whose content is not its blob's is damage: the object it shares (the plain blob or
//! a metadata variant) is removed, the blob is noted as damaged ([`Store::take_damaged`]) and
//! the checkout is removed, so the build forgets what the blob made and runs its stage again.
//! A file that is not a regular file, or is missing, means the checkout itself was changed:
//! it is made again.
//!
//! Rows are keyed by the checkout file's path. Hard-linking an object into a new checkout
//! changes its ctime, so a new checkout is hashed whole, and once more the next time it is
//! used (its rows were too recent to be trusted); from then on it costs one `lstat` per file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use rayon::prelude::*;

use crate::blob::hash_reader;
use crate::digest::BlobId;
use crate::error::{Result, StoreError};
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::statcache::{Row, StatCache, StatKey, now_ns};
use crate::store::{Store, remove_file};
use crate::variant::FileMeta;

/// What checking a checkout found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linked {
    /// Every file holds its blob.
    Sound {
        /// Files whose content was hashed (the others matched their rows).
        hashed: usize,
    },
    /// A file is missing or not a regular file: the checkout must be made again.
    Changed,
}

/// One file's verdict.
enum FileCheck {
    /// Matched its row.
    Trusted,
    /// Hashed to its blob; the row to record, if settled.
    Hashed(Option<Row>),
    /// Missing or not a regular file.
    Changed,
}

impl Store {
    /// Checks that every file of `manifest` in the checkout at `dir` (canonical) holds its blob
    /// (see the module documentation). A file that does not is damage: the object it shares is
    /// removed, the checkout too, and the error names the object.
    pub(crate) fn check_linked(&self, manifest: &Manifest, dir: &Path) -> Result<Linked> {
        let cache = StatCache::load(self, dir)?;
        let started = now_ns();
        let files: Vec<(&Entry, &BlobId, u64)> = manifest
            .entries()
            .filter_map(|entry| match &entry.kind {
                EntryKind::File { blob, size } => Some((entry, blob, *size)),
                _ => None,
            })
            .collect();
        let checks: Vec<FileCheck> = files
            .par_iter()
            .map(|(entry, blob, size)| self.check_file(&cache, dir, entry, blob, *size, started))
            .collect::<Result<_>>()?;
        if checks
            .iter()
            .any(|check| matches!(check, FileCheck::Changed))
        {
            return Ok(Linked::Changed);
        }
        let hashed = checks
            .iter()
            .filter(|check| matches!(check, FileCheck::Hashed(_)))
            .count();
        let rows: Vec<(&str, Row)> = files
            .iter()
            .zip(&checks)
            .filter_map(|((entry, _, _), check)| match check {
                FileCheck::Hashed(Some(row)) => Some((entry.path.as_str(), *row)),
                _ => None,
            })
            .collect();
        cache.write(&rows, &[])?;
        Ok(Linked::Sound { hashed })
    }

    /// Checks one file of a checkout.
    fn check_file(
        &self,
        cache: &StatCache,
        dir: &Path,
        entry: &Entry,
        blob: &BlobId,
        size: u64,
        started: i64,
    ) -> Result<FileCheck> {
        let path = dir.join(&entry.path);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(FileCheck::Changed);
        };
        if !meta.file_type().is_file() {
            return Ok(FileCheck::Changed);
        }
        let stat = StatKey::of(&meta);
        if let Some(row) = cache.rows.get(&entry.path)
            && row.stat == stat
            && row.blob == *blob
            && row.is_settled()
        {
            return Ok(FileCheck::Trusted);
        }
        let read_err = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(read_err)?;
        let before = file.metadata().map_err(read_err)?;
        let (digest, length) = hash_reader(&mut file, &path)?;
        if digest == *blob && length == size {
            let row = Row {
                stat: StatKey::of(&before),
                blob: *blob,
                recorded_ns: started,
            };
            return Ok(FileCheck::Hashed(row.is_settled().then_some(row)));
        }
        Err(self.damaged_link(dir, entry, blob, &file, &path))
    }

    /// The error for a checkout file whose content is not its blob's: removes the store object
    /// that shares its inode (the plain blob, else the variant) and the checkout, and notes the
    /// blob as damaged.
    fn damaged_link(
        &self,
        dir: &Path,
        entry: &Entry,
        blob: &BlobId,
        file: &File,
        path: &Path,
    ) -> StoreError {
        let inode = file.metadata().map(|meta| meta.ino()).ok();
        let plain = self.plain_blob_path(blob);
        let meta = FileMeta {
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            xattrs: &entry.xattrs,
        };
        let variant = self.variant_path(blob, &meta.digest());
        let shared = [plain, variant].into_iter().find(|object| {
            std::fs::symlink_metadata(object).is_ok_and(|meta| Some(meta.ino()) == inode)
        });
        let named = match shared {
            Some(object) => {
                let _ = remove_file(&object);
                object
            }
            None => path.to_owned(),
        };
        let _ = std::fs::remove_dir_all(dir);
        let _ = self.forget_stat_rows_under(dir);
        self.note_damaged(blob);
        self.note_repair(format!(
            "removed the corrupt blob `{}` (changed in place, found through the checkout file `{}`)",
            named.display(),
            path.display()
        ));
        StoreError::CorruptBlob {
            id: *blob,
            path: named,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Linked;
    use crate::{Entry, EntryKind, Manifest, Store, StoreError};

    #[test]
    fn a_settled_checkout_costs_a_stat_per_file_and_a_write_still_shows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let content = b"NAME=tiny\n";
        let blob = store.put_bytes(content).unwrap();
        let (uid, gid) = store.owner();
        let owned = |path: &str, kind, mode| Entry {
            uid,
            gid,
            ..Entry::new(path, kind, mode)
        };
        let size = content.len() as u64;
        let manifest = Manifest::from_entries(vec![
            owned("", EntryKind::Dir, 0o755),
            owned("f", EntryKind::File { blob, size }, 0o644),
        ])
        .unwrap();
        let tree = store.put_manifest(&manifest).unwrap();
        let checkout = store.shared_checkout(&tree).unwrap();
        // Linking changed the object's ctime just now: too recent to trust, hashed again.
        assert_eq!(
            store.check_linked(&manifest, &checkout).unwrap(),
            Linked::Sound { hashed: 1 }
        );
        std::thread::sleep(std::time::Duration::from_millis(
            (crate::RACY_MARGIN_NS / 1_000_000 + 100) as u64,
        ));
        assert_eq!(
            store.check_linked(&manifest, &checkout).unwrap(),
            Linked::Sound { hashed: 1 }
        );
        // Settled: one stat, no read.
        assert_eq!(
            store.check_linked(&manifest, &checkout).unwrap(),
            Linked::Sound { hashed: 0 }
        );

        // Same length, same mtime: the ctime alone tells.
        let object = store.blob_path(&blob).unwrap();
        std::fs::write(&object, b"NAME=CANA\n").unwrap();
        let epoch = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &object,
            &epoch,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let error = store.check_linked(&manifest, &checkout).unwrap_err();
        assert!(
            matches!(&error, StoreError::CorruptBlob { id, .. } if *id == blob),
            "{error:?}"
        );
        assert!(!object.exists() && !checkout.exists());
    }
}
