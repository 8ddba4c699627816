//! The index a resolution read (apt's lists, pacman's sync databases), hard-linked into a
//! temporary folder of the store (`v1/tmp/<pid>-…`) that installation reads: a concurrent build
//! that updates the same state cannot change what this one installs.

use std::path::Path;

use kiln_cache::Store;

use super::error::PackagesError;
use super::files::link_files;

/// A temporary folder of the store, removed when dropped (and by `kiln cache gc` or `verify` if
/// kiln is killed: its name carries kiln's pid).
#[derive(Debug)]
pub struct Snapshot {
    dir: tempfile::TempDir,
}

impl Snapshot {
    /// An empty folder labelled `label`.
    pub fn create(store: &Store, label: &str) -> Result<Snapshot, PackagesError> {
        let dir = store
            .scratch_dir(label)
            .map_err(|source| PackagesError::io("create a folder in", store.tmp_dir(), source))?;
        Ok(Snapshot { dir })
    }

    /// The regular files of `index`, except those named in `skip`, in a folder labelled `label`.
    pub(crate) fn of(
        store: &Store,
        label: &str,
        index: &Path,
        skip: &[&str],
    ) -> Result<Snapshot, PackagesError> {
        let snapshot = Snapshot::create(store, label)?;
        link_files(index, snapshot.path(), skip)?;
        Ok(snapshot)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
