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
    Good,
    Corrupt,
    Repaired,
}

impl Store {
    /// Rehashes every blob, variant and tree; removes corrupt ones, drops
    /// action cache entries whose output is missing or refers to a missing
    /// blob and stat cache rows whose blob is missing, and removes stale
    /// temp files.
    ///
    /// Runs under the shared lock, alongside builds.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            temp_removed: self.clean_temp(false)?,
            ..VerifyReport::default()
        };

        let blobs = self.list_objects(ObjectDir::Objects)?;
        report.blobs_checked = blobs.len();
        let mut present: HashSet<BlobId> = HashSet::new();
        let checks = self.check_all(&blobs, |object| match object.frozen {
            true => self.check_frozen(object),
            false => check_blob(object),
        })?;
        for (object, check) in blobs.iter().zip(checks) {
            match (check, object.name) {
                (Check::Corrupt, _) => report.removed.push(object.path.clone()),
                (check, ObjectName::Digest(id)) => {
                    if matches!(check, Check::Repaired) {
                        report.repaired.push(object.path.clone());
                    }
                    present.insert(id);
                }
                _ => {}
            }
        }

        report.stat_rows_removed =
            self.prune_stat_cache(|blob| present.contains(blob) || self.has_blob(blob))?;

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

        let trees = self.list_objects(ObjectDir::Trees)?;
        report.trees_checked = trees.len();
        let complete: Vec<Option<bool>> = trees
            .par_iter()
            .map(|object| self.check_tree(object, &present))
            .collect::<Result<_>>()?;
        let mut tree_complete: HashMap<TreeId, bool> = HashMap::new();
        for (object, complete) in trees.iter().zip(complete) {
            match (complete, object.name) {
                (None, _) => report.removed.push(object.path.clone()),
                (Some(complete), ObjectName::Digest(id)) => {
                    if !complete {
                        report.incomplete_trees.push(id);
                    }
                    tree_complete.insert(id, complete);
                }
                _ => {}
            }
        }

        let index = self.index()?;
        for (key, result) in index.actions()? {
            let servable = match result.kind {
                OutputKind::Blob => {
                    present.contains(&result.output) || self.has_blob(&result.output)
                }
                OutputKind::Tree => match tree_complete.get(&result.output) {
                    Some(complete) => *complete,
                    // Stored after we listed: check it now.
                    None => self.tree_is_complete(&result.output),
                },
            };
            if !servable {
                report.actions_removed.push(key);
            }
        }
        index.delete_actions(&report.actions_removed)?;
        // Shared checkouts are hard links to the objects: one that shares a damaged inode
        // must not be used again.
        if !report.removed.is_empty() || !report.repaired.is_empty() {
            self.remove_shared_checkouts()?;
        }
        Ok(report)
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
                    remove_file(&object.path)?;
                }
                Ok(verdict)
            })
            .collect()
    }

    /// `None` if the tree file is corrupt (and removed), else whether every
    /// blob it refers to is present.
    fn check_tree(&self, object: &StoredObject, present: &HashSet<BlobId>) -> Result<Option<bool>> {
        let ObjectName::Digest(id) = object.name else {
            remove_file(&object.path)?;
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
        Ok(Some(manifest.blobs().all(|(blob, _)| {
            present.contains(blob) || self.has_blob(blob)
        })))
    }

    /// A frozen blob is good if it decodes to content that hashes to its name.
    fn check_frozen(&self, object: &StoredObject) -> Result<Check> {
        let ObjectName::Digest(id) = object.name else {
            return Ok(Check::Corrupt);
        };
        Ok(match self.frozen_digest(&object.path)? {
            Some(digest) if digest == id => Check::Good,
            _ => Check::Corrupt,
        })
    }

    fn tree_is_complete(&self, id: &TreeId) -> bool {
        self.manifest(id)
            .is_ok_and(|m| m.blobs().all(|(blob, _)| self.has_blob(blob)))
    }
}

fn check_blob(object: &StoredObject) -> Result<Check> {
    let ObjectName::Digest(id) = object.name else {
        return Ok(Check::Corrupt);
    };
    if rehash(&object.path)? != id {
        return Ok(Check::Corrupt);
    }
    let meta = fs::symlink_metadata(&object.path).map_err(|source| StoreError::Read {
        path: object.path.clone(),
        source,
    })?;
    if meta.mode() & 0o7777 == OBJECT_MODE {
        return Ok(Check::Good);
    }
    fs::set_permissions(&object.path, fs::Permissions::from_mode(OBJECT_MODE)).map_err(
        |source| StoreError::SetMetadata {
            path: object.path.clone(),
            what: "mode",
            source,
        },
    )?;
    Ok(Check::Repaired)
}

fn check_variant(object: &StoredObject) -> Result<Check> {
    let ObjectName::Variant(blob, meta_digest) = object.name else {
        return Ok(Check::Corrupt);
    };
    if rehash(&object.path)? != blob {
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
        return Ok(Check::Good);
    }
    // A security module may label every new file on its own.
    Ok(
        if xattrs.remove("security.selinux").is_some() && matches(&xattrs) {
            Check::Good
        } else {
            Check::Corrupt
        },
    )
}

fn rehash(path: &Path) -> Result<Digest> {
    let mut file = File::open(path).map_err(|source| StoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    hash_reader(&mut file, path).map(|(id, _)| id)
}
