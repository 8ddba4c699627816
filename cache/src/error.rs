//! Errors of the store: every variant names the file, object or index it is about.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::digest::Digest;

/// Shorthand for results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An operation on the store, a checkout or the index failed.
///
/// Every variant carries the path it is about, so the binary can render it
/// without extra context. [`StoreError::help`] gives a hint on what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A directory could not be created.
    #[error("Cannot create directory `{path}`")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A file, directory or node could not be created.
    #[error("Cannot create `{path}`")]
    Create {
        /// The new file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A file, directory listing or metadata could not be read.
    #[error("Cannot read `{path}`")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("Cannot write `{path}`")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// An object or its directory could not be flushed to disk.
    #[error("Cannot flush `{path}` to disk")]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A file could not be renamed.
    #[error("Cannot move `{from}` to `{to}`")]
    Rename {
        /// The old name.
        from: PathBuf,
        /// The new name.
        to: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A hard link could not be made.
    #[error("Cannot link `{path}` to `{target}`")]
    Link {
        /// The new link.
        path: PathBuf,
        /// The existing file it should point to.
        target: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be removed.
    #[error("Cannot remove `{path}`")]
    Remove {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Mode, owner or times of a file could not be set.
    #[error("Cannot set the {what} of `{path}`")]
    SetMetadata {
        /// The file.
        path: PathBuf,
        /// `mode`, `owner` or `modification time`.
        what: &'static str,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Extended attributes could not be listed or read.
    #[error("Cannot read the extended attributes of `{path}`")]
    ReadXattr {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// An extended attribute could not be set or removed.
    #[error("Cannot set the extended attribute `{name}` of `{path}`")]
    SetXattr {
        /// The file.
        path: PathBuf,
        /// The attribute.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The store lock could not be taken.
    #[error("Cannot lock the store at `{path}`")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// Another process holds the store lock in a conflicting mode.
    #[error("The store `{path}` is in use by another kiln process (waited {}s)", waited.as_secs())]
    InUse {
        /// The store root.
        path: PathBuf,
        /// How long we waited for the lock.
        waited: Duration,
    },
    /// A blob that should be in the store is not.
    #[error("Blob `{id}` is missing from the store (expected at `{path}`)")]
    MissingBlob {
        /// The blob.
        id: Digest,
        /// Where it should be.
        path: PathBuf,
    },
    /// A tree manifest that should be in the store is not.
    #[error("Tree `{id}` is missing from the store (expected at `{path}`)")]
    MissingTree {
        /// The tree.
        id: Digest,
        /// Where it should be.
        path: PathBuf,
    },
    /// A stored tree manifest does not decode, does not hash to its name, or claims a length for
    /// a file that its blob does not have. kiln removed it.
    #[error("Tree manifest `{path}` is corrupt")]
    CorruptTree {
        /// The tree.
        id: Digest,
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: DecodeError,
    },
    /// A blob's content does not hash to its name: the disk changed it. kiln removed it.
    #[error("Blob `{path}` is corrupt: its content does not match its digest")]
    CorruptBlob {
        /// The blob.
        id: Digest,
        /// Its object file.
        path: PathBuf,
    },
    /// Something other than a regular file sits where the store keeps a blob: the store never
    /// writes one. kiln removed it.
    #[error("`{path}` is a {found}, not a blob the store wrote")]
    NotABlob {
        /// The blob.
        id: Digest,
        /// What was found at its object path.
        path: PathBuf,
        /// What it was: `symlink`, `directory`, …
        found: &'static str,
    },
    /// A tree claims another length for a file than its blob holds: the tree is damaged.
    #[error("`{}` would hold {actual} bytes of blob `{blob}`, but its tree claims {claimed}", path.display())]
    WrongLength {
        /// The file being written.
        path: PathBuf,
        /// Its blob.
        blob: Digest,
        /// The length the tree claims.
        claimed: u64,
        /// The blob's length.
        actual: u64,
    },
    /// A path or symlink target in a directory being ingested is not UTF-8.
    #[error("`{}` is not valid UTF-8", path.display())]
    NonUtf8 {
        /// The offending path.
        path: PathBuf,
    },
    /// A manifest is not valid for the operation.
    #[error("Invalid tree for `{path}`")]
    InvalidManifest {
        /// The directory being checked out or ingested.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A checkout destination exists and holds something.
    #[error("Checkout destination `{path}` is not an empty directory")]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// A path that must be a directory is not.
    #[error("`{path}` is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The SQLite index failed.
    #[error("Cannot use the build index `{path}`")]
    Index {
        /// The index database.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The index was written by a newer kiln.
    #[error(
        "The build index `{path}` has schema version {found}, newer than the {supported} this kiln knows"
    )]
    IndexTooNew {
        /// The index database.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// The index holds a value this kiln cannot read.
    #[error("The build index `{path}` holds an invalid {what} `{value}`")]
    IndexValue {
        /// The index database.
        path: PathBuf,
        /// Which column.
        what: &'static str,
        /// The value found.
        value: String,
    },
}

impl StoreError {
    /// A hint saying what the user can do about the error, if there is one.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            StoreError::InUse { .. } => {
                "Wait for the other kiln process (a build or `kiln cache gc`) to finish, then retry"
                    .to_owned()
            }
            StoreError::WrongLength { .. } => {
                "The tree holding this file is damaged: run `kiln cache verify`, which removes \
                 it and the cache entries that use it, then build again"
                    .to_owned()
            }
            StoreError::MissingBlob { .. } | StoreError::MissingTree { .. } => {
                "Run `kiln cache verify` to drop cache entries that refer to missing objects"
                    .to_owned()
            }
            StoreError::CorruptTree { .. }
            | StoreError::CorruptBlob { .. }
            | StoreError::NotABlob { .. } => {
                "kiln removed the damaged object; build again to rebuild the stage that made it, \
                 and run `kiln cache verify` to check the rest of the store"
                    .to_owned()
            }
            _ if self.is_disk_full() => format!(
                "The filesystem holding `{}` is full. Free some space (`kiln cache gc` removes \
                 what no recent build used) or point `--cache-dir` at a larger filesystem, then \
                 build again: nothing half-written is kept",
                self.path().display()
            ),
            StoreError::IndexTooNew { .. } => {
                "Use a newer kiln, or point this one at another cache directory".to_owned()
            }
            StoreError::IndexValue { .. } => {
                "Run `kiln cache verify`, or remove the store directory to start afresh".to_owned()
            }
            StoreError::Sync { .. } => {
                "Check the disk holding the store (space, errors in `dmesg`), then build again"
                    .to_owned()
            }
            StoreError::DestinationNotEmpty { .. } => {
                "Remove the directory or choose another destination".to_owned()
            }
            StoreError::NonUtf8 { .. } => "Rename the file so its name is valid UTF-8".to_owned(),
            StoreError::SetMetadata { what: "owner", .. } => {
                "Run as root, or check out with `ignore_owner` to keep your own user".to_owned()
            }
            _ => return None,
        })
    }
}

impl StoreError {
    /// The file or folder the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            StoreError::CreateDir { path, .. }
            | StoreError::Create { path, .. }
            | StoreError::Read { path, .. }
            | StoreError::Write { path, .. }
            | StoreError::Remove { path, .. }
            | StoreError::Sync { path, .. }
            | StoreError::SetMetadata { path, .. }
            | StoreError::ReadXattr { path, .. }
            | StoreError::SetXattr { path, .. }
            | StoreError::Lock { path, .. }
            | StoreError::InUse { path, .. }
            | StoreError::MissingBlob { path, .. }
            | StoreError::MissingTree { path, .. }
            | StoreError::CorruptTree { path, .. }
            | StoreError::CorruptBlob { path, .. }
            | StoreError::NotABlob { path, .. }
            | StoreError::WrongLength { path, .. }
            | StoreError::NonUtf8 { path }
            | StoreError::InvalidManifest { path, .. }
            | StoreError::DestinationNotEmpty { path }
            | StoreError::NotADirectory { path }
            | StoreError::Index { path, .. }
            | StoreError::IndexTooNew { path, .. }
            | StoreError::IndexValue { path, .. } => path,
            StoreError::Rename { to, .. } => to,
            StoreError::Link { path, .. } => path,
        }
    }

    /// Whether the error is SQLite's "database is locked": another process holds the index.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Index { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy))
    }

    /// Whether the error is a full filesystem (`ENOSPC`, `EDQUOT`, or SQLite's "database or
    /// disk is full").
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Index { source, .. } => {
                source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            StoreError::CreateDir { source, .. }
            | StoreError::Create { source, .. }
            | StoreError::Write { source, .. }
            | StoreError::Rename { source, .. }
            | StoreError::Link { source, .. }
            | StoreError::Sync { source, .. }
            | StoreError::SetXattr { source, .. }
            | StoreError::SetMetadata { source, .. } => is_disk_full(source),
            _ => false,
        }
    }

    /// The object a damaged or missing-object error is about: building again after
    /// [`crate::Store::forget_damaged`] rebuilds the stage that made it.
    pub fn damaged_object(&self) -> Option<Digest> {
        match self {
            StoreError::CorruptBlob { id, .. }
            | StoreError::NotABlob { id, .. }
            | StoreError::CorruptTree { id, .. }
            | StoreError::MissingBlob { id, .. }
            | StoreError::MissingTree { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Whether an I/O error says the filesystem is full.
pub fn is_disk_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
        || matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// A manifest breaks one of the rules every tree follows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A path is absolute, empty in a component, or uses `.` or `..`.
    #[error("Invalid path `{path}` in tree: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// An entry's parent directory is not in the tree.
    #[error("Entry `{path}` has no parent directory `{parent}` in the tree")]
    MissingParent {
        /// The entry.
        path: String,
        /// Its missing parent.
        parent: String,
    },
    /// An entry's parent is a symlink, file or node, not a directory.
    #[error("Entry `{path}` is inside `{parent}`, which is not a directory")]
    ParentNotDir {
        /// The entry.
        path: String,
        /// Its parent.
        parent: String,
    },
    /// Two entries have the same path.
    #[error("Duplicate entry `{path}` in tree")]
    Duplicate {
        /// The path.
        path: String,
    },
    /// Entries are not in canonical order.
    #[error("Entry `{path}` is out of order in tree")]
    OutOfOrder {
        /// The first entry out of place.
        path: String,
    },
    /// The root entry is not a directory.
    #[error("The root of a tree must be a directory")]
    RootNotDir,
    /// A directory is part of a hard link group.
    #[error("Directory `{path}` cannot be a hard link")]
    HardlinkedDir {
        /// The directory.
        path: String,
    },
    /// Two members of a hard link group differ, so they cannot be one inode.
    #[error("Hard-linked entries `{first}` and `{path}` differ in {what}")]
    HardlinkMismatch {
        /// The first member of the group.
        first: String,
        /// The member that differs.
        path: String,
        /// What differs.
        what: &'static str,
    },
}

/// A canonical manifest encoding is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Malformed tree manifest at byte {offset}: {reason}")]
pub struct DecodeError {
    /// Byte offset where decoding failed.
    pub offset: usize,
    /// What was wrong there.
    pub reason: String,
}

/// A string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid digest `{input}`: expected 64 lowercase hexadecimal digits")]
pub struct ParseDigestError {
    /// The rejected text.
    pub input: String,
}
