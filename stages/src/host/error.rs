//! The error of the filesystem side of host effects: overlay mounts, reading an upper layer and
//! copying trees. Script failures have their own type in [`super::script`].

use std::io;
use std::path::PathBuf;

/// Why a host filesystem effect failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum HostError {
    /// The kernel refused an overlay mount in a way that means overlayfs cannot be used here at
    /// all (not permitted, not built in, or the scratch filesystem cannot hold an upper layer).
    /// The caller copies the tree instead and re-ingests all of it.
    #[error("Overlayfs is not available for `{merged}`: {reason}")]
    #[diagnostic(help(
        "Run kiln as root on a kernel with overlayfs and keep its cache on a filesystem that \
         supports `trusted.*` extended attributes (ext4, xfs, btrfs); kiln falls back to copying \
         the tree, which is slower"
    ))]
    OverlayUnavailable {
        merged: PathBuf,
        reason: String,
        #[source]
        source: io::Error,
    },

    /// A path cannot be passed to overlayfs as a mount option.
    #[error("Path `{path}` cannot be used as an overlay layer: {reason}")]
    #[diagnostic(help(
        "Move the kiln cache or scratch directory to a shorter path without control characters"
    ))]
    OverlayPath { path: PathBuf, reason: &'static str },

    /// Mounting failed for a reason other than overlayfs being unavailable.
    #[error("Failed to mount overlay on `{merged}`")]
    Mount {
        merged: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Unmounting failed; the mount is detached lazily instead.
    #[error("Failed to unmount overlay at `{merged}`")]
    #[diagnostic(help(
        "A process may still be using the image tree; check with `fuser -vm` on the image tree"
    ))]
    Unmount {
        merged: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A filesystem operation on a path failed.
    #[error("Failed to {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The destination of a tree copy already holds something.
    #[error("Cannot copy a tree into `{path}`: it already exists and is not an empty directory")]
    #[diagnostic(help("Remove it or pass a fresh scratch directory"))]
    DestinationNotEmpty { path: PathBuf },

    /// A host tool could not be started.
    #[error("Cannot run `{}`", program.display())]
    #[diagnostic(help("Check that the program is installed and executable"))]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A tree holds a file type that cannot be recreated (for example a door or an unknown type).
    #[error("Cannot copy `{path}`: unsupported file type")]
    UnsupportedFileType { path: PathBuf },
}

impl HostError {
    /// Whether the caller should fall back to copying the tree.
    pub fn is_overlay_unavailable(&self) -> bool {
        matches!(self, HostError::OverlayUnavailable { .. })
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        HostError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
