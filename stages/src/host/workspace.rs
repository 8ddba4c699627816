//! The writable tree a mutable stage works on, and what it changed once finished: an overlay
//! over the read-only input tree when the kernel allows it, else a full copy of it.

use std::path::{Path, PathBuf};

use super::copy::copy_tree_preserving;
use super::error::HostError;
use super::overlay::{Overlay, UpperChange, read_upper};

/// A writable view of an input tree inside a scratch directory.
#[derive(Debug)]
pub struct MutableTree {
    inner: Inner,
    fallback_reason: Option<String>,
}

#[derive(Debug)]
enum Inner {
    Overlay(Overlay),
    Copy { root: PathBuf },
}

/// What a finished [`MutableTree`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeChanges {
    /// Only what changed: the upper layer and its classified entries. The result is the lower
    /// tree with these applied.
    Upper {
        upper: PathBuf,
        changes: Vec<UpperChange>,
    },
    /// The whole resulting tree, to be ingested in full (overlayfs was unavailable).
    Whole { root: PathBuf },
}

impl MutableTree {
    /// An overlay of `lower` in `scratch` (`upper/`, `work/`, `merged/`).
    pub fn overlay(lower: &Path, scratch: &Path) -> Result<MutableTree, HostError> {
        Ok(MutableTree {
            inner: Inner::Overlay(Overlay::mount(lower, scratch)?),
            fallback_reason: None,
        })
    }

    /// A full copy of `lower` at `scratch/tree`.
    pub fn copy(lower: &Path, scratch: &Path) -> Result<MutableTree, HostError> {
        let root = scratch.join("tree");
        std::fs::create_dir_all(scratch)
            .map_err(|e| HostError::io("create the scratch directory", scratch, e))?;
        copy_tree_preserving(lower, &root)?;
        Ok(MutableTree {
            inner: Inner::Copy { root },
            fallback_reason: None,
        })
    }

    /// An overlay when overlayfs is available, else a copy; [`MutableTree::fallback_reason`]
    /// then says why, for a warning.
    pub fn overlay_or_copy(lower: &Path, scratch: &Path) -> Result<MutableTree, HostError> {
        match MutableTree::overlay(lower, scratch) {
            Err(err @ HostError::OverlayUnavailable { .. }) => {
                let mut tree = MutableTree::copy(lower, scratch)?;
                tree.fallback_reason = Some(err.to_string());
                Ok(tree)
            }
            other => other,
        }
    }

    /// Where the stage reads and writes the tree.
    pub fn root(&self) -> &Path {
        match &self.inner {
            Inner::Overlay(overlay) => overlay.merged(),
            Inner::Copy { root } => root,
        }
    }

    /// Whether only changes will be reported ([`TreeChanges::Upper`]).
    pub fn is_overlay(&self) -> bool {
        matches!(self.inner, Inner::Overlay(_))
    }

    /// Why overlayfs was not used, when [`MutableTree::overlay_or_copy`] fell back to a copy.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Ends the stage's writes: unmounts the overlay and reads its upper layer, or hands over
    /// the copied tree. The scratch directory still holds the files; the caller removes it once
    /// they are ingested.
    pub fn finish(self) -> Result<TreeChanges, HostError> {
        match self.inner {
            Inner::Overlay(overlay) => {
                let upper = overlay.upper().to_owned();
                overlay.unmount()?;
                let changes = read_upper(&upper)?;
                Ok(TreeChanges::Upper { upper, changes })
            }
            Inner::Copy { root } => Ok(TreeChanges::Whole { root }),
        }
    }
}
