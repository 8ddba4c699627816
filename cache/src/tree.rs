//! Storing manifests: `v1/trees/ab/...` holds each tree's canonical encoding.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use crate::digest::{BlobId, Digest, TreeId};
use crate::error::{DecodeError, Result, StoreError};
use crate::manifest::Manifest;
use crate::store::{ObjectDir, Store};

impl Store {
    /// Stores a manifest and returns its tree id.
    ///
    /// The manifest is validated first. Its blobs must already be in the
    /// store: a stored tree never refers to a missing blob.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<TreeId> {
        manifest
            .validate()
            .map_err(|source| StoreError::InvalidManifest {
                path: self.object_dir(ObjectDir::Trees),
                source,
            })?;
        let bytes = manifest.encode_canonical();
        let id = Digest::of_bytes(&bytes);
        self.write_object(ObjectDir::Trees, &id, &bytes)?;
        Ok(id)
    }

    /// The id [`Store::put_manifest`] would give `manifest`, without storing it.
    pub fn manifest_id(&self, manifest: &Manifest) -> Result<TreeId> {
        manifest
            .validate()
            .map_err(|source| StoreError::InvalidManifest {
                path: self.object_dir(ObjectDir::Trees),
                source,
            })?;
        Ok(Digest::of_bytes(&manifest.encode_canonical()))
    }

    /// Loads a stored manifest, checking its digest.
    pub fn manifest(&self, id: &TreeId) -> Result<Manifest> {
        let path = self.tree_path(id);
        let bytes = fs::read(&path).map_err(|source| {
            if source.kind() == ErrorKind::NotFound {
                self.note_damaged(id);
                StoreError::MissingTree {
                    id: *id,
                    path: path.clone(),
                }
            } else {
                StoreError::Read {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let decoded = if Digest::of_bytes(&bytes) != *id {
            Err(DecodeError {
                offset: 0,
                reason: "content does not match its digest".to_owned(),
            })
        } else {
            Manifest::decode_canonical(&bytes)
        };
        decoded.map_err(|source| self.corrupt_tree(id, source))
    }

    /// Removes the damaged manifest of tree `id` and says why: it is never read again, and
    /// its stage is rebuilt, which stores it anew.
    fn corrupt_tree(&self, id: &TreeId, source: DecodeError) -> StoreError {
        let path = self.tree_path(id);
        let _ = fs::remove_file(&path);
        self.note_damaged(id);
        self.note_repair(format!(
            "removed the corrupt tree manifest `{}` ({source})",
            path.display()
        ));
        StoreError::CorruptTree {
            id: *id,
            path,
            source,
        }
    }

    /// The error for tree `id`, whose file `blob` claims `claimed` bytes where its blob holds
    /// `actual`: a tree that lies about a length is damaged, so it is removed and noted as a
    /// corrupt manifest is, and the stage that made it runs again.
    pub(crate) fn tree_lies(
        &self,
        id: &TreeId,
        blob: &BlobId,
        claimed: u64,
        actual: u64,
    ) -> StoreError {
        let source = DecodeError {
            offset: 0,
            reason: format!(
                "a file of blob {} claims {claimed} bytes, the blob holds {actual}",
                blob.short()
            ),
        };
        self.corrupt_tree(id, source)
    }

    /// Whether the tree's manifest is in the store.
    pub fn has_tree(&self, id: &TreeId) -> bool {
        self.tree_path(id).is_file()
    }

    /// The path of a tree's manifest file (whether or not it exists).
    pub fn tree_path(&self, id: &TreeId) -> PathBuf {
        self.object_path(ObjectDir::Trees, id)
    }
}
