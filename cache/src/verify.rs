//! `verify`: rehash every object, drop corrupt ones and the cache entries
//! that can no longer be served.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::blob::{OBJECT_MODE, hash_reader};
use crate::digest::{BlobId, Digest, TreeId};
use crate::error::{Result, StoreError};
use crate::freeze::{is_regular, remove_any};
use crate::index::OutputKind;
use crate::maintenance::{ObjectName, StoredObject};
use crate::manifest::Manifest;
use crate::store::{ObjectDir, Store, remove_file};
use crate::variant::FileMeta;
use crate::xattr;

/// What [`Store::verify`] checked and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blob objects rehashed.
    pub blobs_checked: usize,
    /// Variants rehashed.
    pub variants_checked: usize,
    /// Tree manifests rehashed and decoded.
    pub trees_checked: usize,
    /// Corrupt or misnamed objects removed.
    pub removed: Vec<PathBuf>,
    /// Plain blobs whose mode had been changed and was set back to `0644`.
    pub repaired: Vec<PathBuf>,
    /// Trees that refer to a missing blob (kept: the next build that makes
    /// the same tree stores the blob again).
    pub incomplete_trees: Vec<TreeId>,
    /// Action cache entries dropped because their output is gone or incomplete.
    pub actions_removed: Vec<Digest>,
    /// Stale temp files removed.
    pub temp_removed: Vec<PathBuf>,
    /// Stat cache rows dropped because their blob is gone: removed as
    /// corrupt, or by hand.
    pub stat_rows_removed: usize,
}

impl VerifyReport {
    /// Whether nothing was wrong (stale temp files do not count).
    pub fn is_clean(&self) -> bool {
        self.removed.is_empty()
            && self.repaired.is_empty()
            && self.incomplete_trees.is_empty()
            && self.actions_removed.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "checked {} blobs, {} variants, {} trees",
            self.blobs_checked, self.variants_checked, self.trees_checked
        )?;
        for path in &self.removed {
            writeln!(f, "removed corrupt `{}`", path.display())?;
        }
        for path in &self.repaired {
            writeln!(f, "reset the mode of `{}`", path.display())?;
        }
        for tree in &self.incomplete_trees {
            writeln!(f, "tree {} refers to missing blobs", tree.short())?;
        }
        for key in &self.actions_removed {
            writeln!(f, "dropped cache entry {}", key.short())?;
        }
        if self.stat_rows_removed > 0 {
            writeln!(
                f,
                "dropped {} stat cache rows of missing blobs",
                self.stat_rows_removed
            )?;
        }
        write!(f, "removed {} stale temp files", self.temp_removed.len())?;
        if self.is_clean() {
            write!(f, "\nthe store is consistent")?;
        }
        Ok(())
    }
}

/// The verdict on one object file.
enum Check {
    /// Its content hashes to its name; a blob's content is this many bytes long.
    Good(u64),
    Corrupt,
    /// Good, once its mode was set back.
    Repaired(u64),
}

impl Store {
    /// Rehashes every blob, variant and tree; removes corrupt ones (and
    /// anything but a regular file among them, and trees that claim another
    /// length for a file than its blob's), drops action cache entries whose
    /// output is missing or refers to a missing blob, or whose recorded inputs
    /// are a removed object or a tree that lacks a blob, and stat cache rows
    /// whose blob is missing, and removes stale temp files.
    ///
    /// Runs under the shared lock, alongside builds.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            temp_removed: self.clean_temp(false)?,
            ..VerifyReport::default()
        };
        let mut removed: HashSet<Digest> = HashSet::new();
        let present = self.check_blobs(&mut report, &mut removed)?;

        report.stat_rows_removed =
            self.prune_stat_cache(|blob| present.contains_key(blob) || self.has_blob(blob))?;

        self.check_variants(&mut report)?;
        let tree_complete = self.check_trees(&mut report, &present, &mut removed)?;
        self.drop_damaged_actions(&mut report, &present, &removed, &tree_complete)?;
        // Shared checkouts are hard links to the objects: one that shares a damaged inode
        // must not be used again.
        if !report.removed.is_empty() || !report.repaired.is_empty() {
            self.remove_shared_checkouts()?;
        }
        Ok(report)
    }

    /// Checks every blob, recording what it removed and repaired in `report`
    /// and the digests of removed blobs in `removed`. Returns every blob
    /// present, with its length: a tree that claims another length for it
    /// lies.
    fn check_blobs(
        &self,
        report: &mut VerifyReport,
        removed: &mut HashSet<Digest>,
    ) -> Result<HashMap<BlobId, u64>> {
        let blobs = self.list_objects(ObjectDir::Objects)?;
        report.blobs_checked = blobs.len();
        let mut present: HashMap<BlobId, u64> = HashMap::new();
        let checks = self.check_all(&blobs, |object| match object.frozen {
            true => self.check_frozen(object),
            false => check_blob(object),
        })?;
        for (object, check) in blobs.iter().zip(checks) {
            match (check, object.name) {
                (Check::Corrupt, name) => {
                    report.removed.push(object.path.clone());
                    if let ObjectName::Digest(id) = name {
                        removed.insert(id);
                    }
                }
                (Check::Good(size), ObjectName::Digest(id)) => {
                    present.insert(id, size);
                }
                (Check::Repaired(size), ObjectName::Digest(id)) => {
                    report.repaired.push(object.path.clone());
                    present.insert(id, size);
                }
                _ => {}
            }
        }
        Ok(present)
    }

    /// Checks every variant, recording the removed ones in `report`.
    fn check_variants(&self, report: &mut VerifyReport) -> Result<()> {
        let variants = self.list_objects(ObjectDir::Variants)?;
        report.variants_checked = variants.len();
        for (object, check) in variants
            .iter()
            .zip(self.check_all(&variants, check_variant)?)
        {
            if matches!(check, Check::Corrupt) {
                report.removed.push(object.path.clone());
            }
        }
        Ok(())
    }

    /// Checks every tree against the blobs `present`, recording removed and
    /// incomplete trees in `report` and the digests of removed ones in
    /// `removed`. Returns whether each tree kept is complete.
    fn check_trees(
        &self,
        report: &mut VerifyReport,
        present: &HashMap<BlobId, u64>,
        removed: &mut HashSet<Digest>,
    ) -> Result<HashMap<TreeId, bool>> {
        let trees = self.list_objects(ObjectDir::Trees)?;
        report.trees_checked = trees.len();
        let complete: Vec<Option<bool>> = trees
            .par_iter()
            .map(|object| self.check_tree(object, present))
            .collect::<Result<_>>()?;
        let mut tree_complete: HashMap<TreeId, bool> = HashMap::new();
        for (object, complete) in trees.iter().zip(complete) {
            match (complete, object.name) {
                (None, name) => {
                    report.removed.push(object.path.clone());
                    if let ObjectName::Digest(id) = name {
                        removed.insert(id);
                    }
                }
                (Some(complete), ObjectName::Digest(id)) => {
                    if !complete {
                        report.incomplete_trees.push(id);
                    }
                    tree_complete.insert(id, complete);
                }
                _ => {}
            }
        }
        Ok(tree_complete)
    }

    /// Drops the action cache entries whose output cannot be served, or that
    /// were made from an object `removed` or an incomplete tree, and records
    /// them in `report`.
    fn drop_damaged_actions(
        &self,
        report: &mut VerifyReport,
        present: &HashMap<BlobId, u64>,
        removed: &HashSet<Digest>,
        tree_complete: &HashMap<TreeId, bool>,
    ) -> Result<()> {
        // What a stage made from an object removed here, or from a tree that lacks one, may
        // carry the damage on in objects of its own: its cache entry goes too.
        let tainted = |digest: &Digest| {
            removed.contains(digest) || tree_complete.get(digest).is_some_and(|c| !*c)
        };
        let index = self.index()?;
        let inputs = index.action_inputs()?;
        for (key, result) in index.actions()? {
            let servable = match result.kind {
                OutputKind::Blob => {
                    present.contains_key(&result.output) || self.has_blob(&result.output)
                }
                OutputKind::Tree => match tree_complete.get(&result.output) {
                    Some(complete) => *complete,
                    // Stored after we listed: check it now.
                    None => self.tree_is_complete(&result.output),
                },
            };
            let made_from_damage = inputs
                .get(&key)
                .is_some_and(|digests| digests.iter().any(tainted));
            if !servable || made_from_damage {
                report.actions_removed.push(key);
            }
        }
        index.delete_actions(&report.actions_removed)
    }

    /// Runs `check` on every object in parallel, removing the corrupt ones.
    fn check_all(
        &self,
        objects: &[StoredObject],
        check: impl Fn(&StoredObject) -> Result<Check> + Sync,
    ) -> Result<Vec<Check>> {
        objects
            .par_iter()
            .map(|object| {
                let verdict = check(object)?;
                if matches!(verdict, Check::Corrupt) {
                    remove_any(&object.path)?;
                }
                Ok(verdict)
            })
            .collect()
    }

    /// `None` if the tree file is corrupt (and removed), else whether every
    /// blob it refers to is present. A tree is corrupt when it does not hash
    /// to its name, does not decode, is not a regular file, or claims a length
    /// for a file that its blob does not have.
    fn check_tree(
        &self,
        object: &StoredObject,
        present: &HashMap<BlobId, u64>,
    ) -> Result<Option<bool>> {
        let (ObjectName::Digest(id), true) = (object.name, is_regular(&object.path)) else {
            remove_any(&object.path)?;
            return Ok(None);
        };
        let bytes = fs::read(&object.path).map_err(|source| StoreError::Read {
            path: object.path.clone(),
            source,
        })?;
        let manifest = match Manifest::decode_canonical(&bytes) {
            Ok(manifest) if Digest::of_bytes(&bytes) == id => manifest,
            _ => {
                remove_file(&object.path)?;
                return Ok(None);
            }
        };
        if manifest
            .blobs()
            .any(|(blob, size)| present.get(blob).is_some_and(|actual| *actual != size))
        {
            remove_file(&object.path)?;
            return Ok(None);
        }
        Ok(Some(manifest.blobs().all(|(blob, _)| {
            present.contains_key(blob) || self.has_blob(blob)
        })))
    }

    /// A frozen blob is good if it decodes to content that hashes to its name.
    fn check_frozen(&self, object: &StoredObject) -> Result<Check> {
        let (ObjectName::Digest(id), true) = (object.name, is_regular(&object.path)) else {
            return Ok(Check::Corrupt);
        };
        Ok(match self.frozen_digest(&object.path)? {
            Some((digest, size)) if digest == id => Check::Good(size),
            _ => Check::Corrupt,
        })
    }

    fn tree_is_complete(&self, id: &TreeId) -> bool {
        self.manifest(id)
            .is_ok_and(|m| m.blobs().all(|(blob, _)| self.has_blob(blob)))
    }
}

/// A plain blob is good if it is a regular file whose content hashes to its name.
fn check_blob(object: &StoredObject) -> Result<Check> {
    let (ObjectName::Digest(id), true) = (object.name, is_regular(&object.path)) else {
        return Ok(Check::Corrupt);
    };
    let (digest, size) = rehash(&object.path)?;
    if digest != id {
        return Ok(Check::Corrupt);
    }
    let meta = fs::symlink_metadata(&object.path).map_err(|source| StoreError::Read {
        path: object.path.clone(),
        source,
    })?;
    if meta.mode() & 0o7777 == OBJECT_MODE {
        return Ok(Check::Good(size));
    }
    fs::set_permissions(&object.path, fs::Permissions::from_mode(OBJECT_MODE)).map_err(
        |source| StoreError::SetMetadata {
            path: object.path.clone(),
            what: "mode",
            source,
        },
    )?;
    Ok(Check::Repaired(size))
}

fn check_variant(object: &StoredObject) -> Result<Check> {
    let ObjectName::Variant(blob, meta_digest) = object.name else {
        return Ok(Check::Corrupt);
    };
    let (digest, size) = match is_regular(&object.path) {
        true => rehash(&object.path)?,
        false => return Ok(Check::Corrupt),
    };
    if digest != blob {
        return Ok(Check::Corrupt);
    }
    let meta = fs::symlink_metadata(&object.path).map_err(|source| StoreError::Read {
        path: object.path.clone(),
        source,
    })?;
    let mut xattrs = xattr::read(&object.path)?;
    let matches = |xattrs: &std::collections::BTreeMap<String, Vec<u8>>| {
        let actual = FileMeta {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            xattrs,
        };
        actual.digest() == meta_digest
    };
    if matches(&xattrs) {
        return Ok(Check::Good(size));
    }
    // A security module may label every new file on its own.
    Ok(
        if xattrs.remove("security.selinux").is_some() && matches(&xattrs) {
            Check::Good(size)
        } else {
            Check::Corrupt
        },
    )
}

/// The digest and length of a file's content.
fn rehash(path: &Path) -> Result<(Digest, u64)> {
    let mut file = File::open(path).map_err(|source| StoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    hash_reader(&mut file, path)
}
