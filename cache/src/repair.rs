//! Damage found while building: verifying what goes into an output, and forgetting what a
//! damaged object made unservable so that the next build rebuilds it.
//!
//! Objects are named by their blake3 digest, so a bit flipped on the disk is found by hashing
//! again. Hashing everything on every read would cost a rebuild more than it saves; instead the
//! reads whose bytes end up in an output (a file output, the files a directory output copies,
//! what the initrd and UKI stages read) go through [`Store::verify_blob`] first, and tree
//! manifests are checked on every load (see [`Store::manifest`]). A damaged object is removed on
//! the spot and the read fails with [`StoreError::CorruptBlob`] or
//! [`StoreError::CorruptTree`], naming the file.
//!
//! [`Store::forget_damaged`] then drops every action cache entry whose output is, or refers to,
//! that object (and the stat cache rows naming it), so the next scheduling of the build runs the
//! stage that made it again, which stores the object anew; stages after it are cached again if
//! it produced the same output. Everything the store repaired on its own is kept as a note for
//! the binary to show ([`Store::take_repairs`]).

use std::collections::HashMap;
use std::fs::File;

use rayon::prelude::*;

use crate::blob::hash_reader;
use crate::digest::{BlobId, Digest, TreeId};
use crate::error::{Result, StoreError};
use crate::freeze::frozen_path;
use crate::index::OutputKind;
use crate::store::{Store, remove_file};

/// What [`Store::forget_damaged`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Action cache entries whose output was the object or referred to it.
    pub actions: Vec<Digest>,
    /// Object files removed (a damaged blob or manifest still on the disk).
    pub removed: Vec<std::path::PathBuf>,
}

impl Store {
    /// Rehashes a blob before its bytes go into an output. A blob whose content does not match
    /// its name is removed, and the error names its file.
    pub fn verify_blob(&self, id: &BlobId) -> Result<()> {
        self.verified_size(id).map(|_| ())
    }

    /// [`Store::verify_blob`], returning the blob's length.
    pub(crate) fn verified_size(&self, id: &BlobId) -> Result<u64> {
        let path = self.blob_path(id)?;
        let mut file =
            File::open(&path).map_err(|source| self.blob_read_error(id, path.clone(), source))?;
        let (actual, size) = hash_reader(&mut file, &path)?;
        if actual == *id {
            return Ok(size);
        }
        remove_file(&path)?;
        self.note_damaged(id);
        self.note_repair(format!(
            "removed the corrupt blob `{}` (its content hashes to {})",
            path.display(),
            actual.short()
        ));
        Err(StoreError::CorruptBlob { id: *id, path })
    }

    /// [`Store::verify_blob`] for the files of tree `tree` given as (blob, length) pairs, as
    /// [`Manifest::blobs`](crate::Manifest::blobs) yields them, in parallel: a blob must also
    /// hold as many bytes as the tree says. A tree that claims another length than its blob's
    /// is damaged: it is removed and the error is [`StoreError::CorruptTree`], naming it.
    pub fn verify_tree_blobs<'a>(
        &self,
        tree: &TreeId,
        blobs: impl IntoIterator<Item = (&'a BlobId, u64)>,
    ) -> Result<()> {
        let mut blobs: Vec<(&BlobId, u64)> = blobs.into_iter().collect();
        blobs.sort();
        blobs.dedup();
        blobs.par_iter().try_for_each(|(id, claimed)| {
            let actual = self.verified_size(id)?;
            match actual == *claimed {
                true => Ok(()),
                false => Err(self.tree_lies(tree, id, *claimed, actual)),
            }
        })
    }

    /// [`Store::verify_blob`] for many blobs, in parallel; the first damaged one is the error.
    pub fn verify_blobs<'a>(&self, ids: impl IntoIterator<Item = &'a BlobId>) -> Result<()> {
        let mut ids: Vec<&BlobId> = ids.into_iter().collect();
        ids.sort();
        ids.dedup();
        ids.par_iter().try_for_each(|id| self.verify_blob(id))
    }

    /// Forgets a damaged or missing object: removes its file if one is left, drops the action
    /// cache entries whose output is the object or a tree referring to it, or whose recorded
    /// inputs are or hold it (their outputs may carry what a stage read of it), and the stat cache
    /// rows naming it. Shared checkouts share the damaged inode: they are removed too. The next
    /// build runs the stages that made the object again.
    pub fn forget_damaged(&self, object: &Digest) -> Result<Forgotten> {
        let mut forgotten = Forgotten::default();
        // Both remove a damaged file themselves.
        let plain = self.plain_blob_path(object);
        let files: Vec<_> = [frozen_path(&plain), plain]
            .into_iter()
            .filter(|path| path.exists())
            .collect();
        if !files.is_empty() && self.verify_blob(object).is_err() {
            forgotten
                .removed
                .extend(files.into_iter().filter(|path| !path.exists()));
        }
        let tree = self.tree_path(object);
        if tree.exists() && self.manifest(object).is_err() {
            forgotten.removed.push(tree);
        }
        let index = self.index()?;
        // Whether a tree refers to the object, once per tree.
        let mut trees: HashMap<Digest, bool> = HashMap::new();
        let mut holds = |digest: &Digest, must_be_tree: bool| -> bool {
            if digest == object {
                return true;
            }
            if !must_be_tree && !self.has_tree(digest) {
                return false;
            }
            *trees
                .entry(*digest)
                .or_insert_with(|| match self.manifest(digest) {
                    Ok(manifest) => manifest.blobs().any(|(blob, _)| blob == object),
                    // A tree that cannot be read cannot be served either.
                    Err(_) => true,
                })
        };
        let inputs = index.action_inputs()?;
        for (key, result) in index.actions()? {
            // The output holds the object, or was made from something that held it: what a
            // stage read from a damaged object may be in an output of its own.
            let refers = match result.kind {
                OutputKind::Tree => holds(&result.output, true),
                OutputKind::Blob => result.output == *object,
            } || inputs
                .get(&key)
                .is_some_and(|digests| digests.iter().any(|digest| holds(digest, false)));
            if refers {
                forgotten.actions.push(key);
            }
        }
        index.delete_actions(&forgotten.actions)?;
        self.prune_stat_cache(|blob| blob != object)?;
        self.remove_shared_checkouts()?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::index::{ActionResult, OutputKind};
    use crate::{Digest, IngestOptions, Store, StoreError};

    /// Flips one bit of a stored object in place.
    fn damage(path: &std::path::Path) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut bytes = std::fs::read(path).unwrap();
        bytes[0] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_flipped_bit_is_found_on_read_named_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.put_bytes(b"the kernel").unwrap();
        store.verify_blob(&id).unwrap();
        let path = store.blob_path(&id).unwrap();
        damage(&path);
        let error = store.verify_blob(&id).unwrap_err();
        assert!(
            matches!(&error, StoreError::CorruptBlob { path: named, .. } if *named == path),
            "{error:?}"
        );
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(error.help().unwrap().contains("build again"));
        assert!(!path.exists(), "the damaged blob is still there");
        assert_eq!(store.take_damaged(), vec![id]);
        assert_eq!(store.take_repairs().len(), 1);
        // Storing the same bytes again repairs it.
        store.put_bytes(b"the kernel").unwrap();
        store.verify_blob(&id).unwrap();
    }

    #[test]
    fn forgetting_a_damaged_blob_drops_the_actions_that_refer_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(source.join("etc")).unwrap();
        std::fs::write(source.join("etc/hostname"), "rescue\n").unwrap();
        std::fs::write(source.join("etc/motd"), "hello\n").unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let owner = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let options = IngestOptions {
            owner: Some(owner),
            ..IngestOptions::default()
        };
        let manifest = store.ingest_dir_cached(&source, options).unwrap();
        let tree = store.put_manifest(&manifest).unwrap();
        let hostname = *manifest.get("etc/hostname").unwrap().blob().unwrap();
        let other = store.put_bytes(b"unrelated").unwrap();
        let index = store.index().unwrap();
        let (tree_key, blob_key, other_key) = (
            Digest::of_bytes(b"tree stage"),
            Digest::of_bytes(b"blob stage"),
            Digest::of_bytes(b"other stage"),
        );
        let tree_result = ActionResult {
            output: tree,
            kind: OutputKind::Tree,
        };
        index.record_action(&tree_key, tree_result).unwrap();
        let blob_result = ActionResult {
            output: hostname,
            kind: OutputKind::Blob,
        };
        index.record_action(&blob_key, blob_result).unwrap();
        let other_result = ActionResult {
            output: other,
            kind: OutputKind::Blob,
        };
        index.record_action(&other_key, other_result).unwrap();

        damage(&store.blob_path(&hostname).unwrap());
        let forgotten = store.forget_damaged(&hostname).unwrap();
        assert_eq!(forgotten.removed, vec![store.plain_blob_path(&hostname)]);
        let mut dropped = forgotten.actions.clone();
        dropped.sort();
        let mut expected = vec![tree_key, blob_key];
        expected.sort();
        assert_eq!(dropped, expected);
        assert_eq!(index.lookup_action(&tree_key).unwrap(), None);
        assert_eq!(index.lookup_action(&other_key).unwrap(), Some(other_result));
        // The stat cache no longer names it: ingesting again stores it again.
        let again = store.ingest_dir_cached(&source, options).unwrap();
        assert_eq!(store.put_manifest(&again).unwrap(), tree);
        store.verify_blob(&hostname).unwrap();
    }

    #[test]
    fn a_damaged_manifest_is_removed_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir_all(&source).unwrap();
        std::fs::write(source.join("file"), "content").unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let owner = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let manifest = store
            .ingest_dir(
                &source,
                IngestOptions {
                    owner: Some(owner),
                    ..IngestOptions::default()
                },
            )
            .unwrap();
        let tree = store.put_manifest(&manifest).unwrap();
        let path = store.tree_path(&tree);
        damage(&path);
        let error = store.manifest(&tree).unwrap_err();
        assert!(
            matches!(&error, StoreError::CorruptTree { id, .. } if *id == tree),
            "{error:?}"
        );
        assert_eq!(error.damaged_object(), Some(tree));
        assert!(!path.exists());
        assert_eq!(store.take_damaged(), vec![tree]);
    }

    #[test]
    fn a_damaged_index_is_moved_aside_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = store.index().unwrap();
        let build = index
            .begin_build("tiny", dir.path(), std::time::SystemTime::now())
            .unwrap();
        index.finish_build(build, true).unwrap();
        drop(index);
        drop(store);
        let path = dir.path().join("v1/index.sqlite");
        let mut bytes = std::fs::read(&path).unwrap();
        // The page size is at offset 16; the second page holds a table's b-tree.
        let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
        for byte in &mut bytes[page..page + 8] {
            *byte ^= 0xa5;
        }
        std::fs::write(&path, bytes).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repairs = store.take_repairs();
        assert_eq!(repairs.len(), 1, "{repairs:?}");
        assert!(repairs[0].contains(&path.display().to_string()));
        assert!(store.index().unwrap().builds(None).unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path().join("v1"))
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("index.sqlite.damaged-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn an_unreadable_action_row_is_a_miss_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = Digest::of_bytes(b"stage");
        let conn = rusqlite::Connection::open(dir.path().join("v1/index.sqlite")).unwrap();
        conn.execute(
            "INSERT INTO actions (key, output, output_kind, created_ms, last_used_ms)
             VALUES (?1, 'not a digest', 'blob', 0, 0)",
            [key.to_string()],
        )
        .unwrap();
        let index = store.index().unwrap();
        assert_eq!(index.lookup_action(&key).unwrap(), None);
        assert_eq!(store.take_repairs().len(), 1);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM actions", [], |row| row.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}
