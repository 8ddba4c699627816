//! Shared checkouts: one read-only hardlink checkout per tree, reused by every build.
//!
//! A mutable stage mounts an overlay on a checkout of its input tree. Checking out a tree of
//! 30,000 files costs as many hard links; when the same tree is the input again (a rebuild after
//! editing mkosi.finalize re-runs finalize on the tree it had before), the checkout made the
//! first time is used again. `checkouts/<tree id>` appears by an atomic rename once complete,
//! so a reader sees a whole checkout or none. Nothing may write into one: they are overlay lower
//! layers, and their files are the store's own objects. gc removes them all (under its exclusive
//! lock); verify removes them all when it found a damaged object, since a checkout shares its
//! inodes. Because it shares them, a write to an object reaches every checkout linking it:
//! each use of a checkout first checks its files against their blobs (see `linked`).
//!
//! Manifests record no times, so a checkout has to choose them, and what runs on a shared
//! checkout sees them: `mandb` writes each manual page's mtime into its `index.db`, `fc-cache`
//! each directory's, Python each source's into the `.pyc` it rewrites. Every entry of a shared
//! checkout, and so every store object it links, is dated [`SHARED_CHECKOUT_MTIME`], whatever
//! build made the checkout and whenever the object was written: the same tree gives the same
//! times in every store. One constant rather than the recipe's `SOURCE_DATE_EPOCH`, because an
//! object has one inode, linked from the checkouts of every build that holds it (ostree dates
//! its objects 0 for the same reason); 0 is also kiln's default `SOURCE_DATE_EPOCH`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::checkout::{CheckoutMode, CheckoutOptions};
use crate::digest::TreeId;
use crate::error::{Result, StoreError};
use crate::linked::Linked;
use crate::maintenance::read_dir_paths;
use crate::manifest::Manifest;
use crate::store::Store;

/// The modification (and access) time, in seconds since the epoch, of every entry of a shared
/// checkout and of every store object a hardlink checkout links.
pub const SHARED_CHECKOUT_MTIME: i64 = 0;

impl Store {
    /// `v1/checkouts/`.
    fn checkouts_dir(&self) -> PathBuf {
        self.tmp_dir().with_file_name("checkouts")
    }

    /// A read-only hardlink checkout of `tree`, made on first use and shared afterwards, every
    /// entry dated [`SHARED_CHECKOUT_MTIME`]. Treat it as immutable: mount it as an overlay's
    /// lower layer, or read it.
    ///
    /// Every file of it is checked to hold its blob before it is handed out (see `linked`): a
    /// store object changed in place fails the call with [`StoreError::CorruptBlob`], after
    /// removing it, so the build rebuilds it instead of reading it.
    pub fn shared_checkout(&self, tree: &TreeId) -> Result<PathBuf> {
        let manifest = self.manifest(tree)?;
        let mut attempts = 0;
        loop {
            let path = self
                .make_shared_checkout(tree, &manifest)
                .map_err(|error| match error {
                    StoreError::WrongLength {
                        blob,
                        claimed,
                        actual,
                        ..
                    } => self.tree_lies(tree, &blob, claimed, actual),
                    error => error,
                })?;
            match self.check_linked(&manifest, &path)? {
                Linked::Sound { .. } => return Ok(path),
                // Something changed the checkout itself: made again, once.
                Linked::Changed if attempts == 0 => {
                    attempts += 1;
                    self.note_repair(format!(
                        "made the shared checkout `{}` again: a file in it was replaced",
                        path.display()
                    ));
                    self.remove_shared_checkout(&path)?;
                }
                Linked::Changed => {
                    return Err(StoreError::NotADirectory { path });
                }
            }
        }
    }

    /// The shared checkout of `tree` (whose manifest is `manifest`), made if missing.
    fn make_shared_checkout(&self, tree: &TreeId, manifest: &Manifest) -> Result<PathBuf> {
        let dir = self.checkouts_dir();
        let path = dir.join(tree.to_hex());
        if path.is_dir() {
            return Ok(path);
        }
        fs::create_dir_all(&dir).map_err(|source| StoreError::Create {
            path: dir.clone(),
            source,
        })?;
        let staging = self.temp_path();
        let options = CheckoutOptions {
            mode: CheckoutMode::Hardlink,
            mtime: Some(SHARED_CHECKOUT_MTIME),
            ..CheckoutOptions::default()
        };
        if let Err(error) = self.checkout(manifest, &staging, options) {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
        match fs::rename(&staging, &path) {
            Ok(()) => Ok(path),
            // Another build made the same checkout meanwhile: use theirs.
            Err(_) if path.is_dir() => {
                let _ = fs::remove_dir_all(&staging);
                Ok(path)
            }
            Err(source) => {
                let _ = fs::remove_dir_all(&staging);
                Err(StoreError::Create { path, source })
            }
        }
    }

    /// Remove every shared checkout; returns how many there were. Only with no build running:
    /// gc holds the exclusive lock, verify calls it after finding damage.
    pub(crate) fn remove_shared_checkouts(&self) -> Result<usize> {
        let removed = self.remove_shared_checkout_files()?;
        self.forget_stat_rows_under(&self.checkouts_dir())?;
        Ok(removed)
    }

    /// [`Store::remove_shared_checkouts`] leaving the stat cache alone, for the index
    /// migrations, which hold its write lock (rows of a removed checkout never match again: a
    /// new checkout links or copies anew, which changes every ctime).
    pub(crate) fn remove_shared_checkout_files(&self) -> Result<usize> {
        let dir = self.checkouts_dir();
        if !dir.exists() {
            return Ok(0);
        }
        let paths = read_dir_paths(&dir)?;
        for path in &paths {
            remove_checkout_dir(path)?;
        }
        Ok(paths.len())
    }

    /// Removes one shared checkout, with the stat cache rows of its files.
    fn remove_shared_checkout(&self, path: &Path) -> Result<()> {
        remove_checkout_dir(path)?;
        self.forget_stat_rows_under(path)
    }
}

/// Removes a checkout's folder; "already gone" is success.
fn remove_checkout_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use crate::{IngestOptions, Store};

    /// The current user, so the test also runs without root.
    fn store_owner() -> (u32, u32) {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    }

    /// The tree of `source` (made by `make`) in a new store beside it, owned as objects are.
    fn stored_tree(
        dir: &std::path::Path,
        make: impl FnOnce(&std::path::Path),
    ) -> (Store, crate::TreeId) {
        let source = dir.join("source");
        make(&source);
        let store = Store::open(&dir.join("store")).unwrap();
        let options = IngestOptions {
            owner: Some(store_owner()),
            ..IngestOptions::default()
        };
        let manifest = store.ingest_dir(&source, options).unwrap();
        let tree = store.put_manifest(&manifest).unwrap();
        (store, tree)
    }

    #[test]
    fn a_shared_checkout_is_made_once_and_removed_by_gc() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tree) = stored_tree(dir.path(), |source| {
            std::fs::create_dir_all(source.join("etc")).unwrap();
            std::fs::write(source.join("etc/hostname"), "tiny\n").unwrap();
        });
        let first = store.shared_checkout(&tree).unwrap();
        assert_eq!(
            std::fs::read_to_string(first.join("etc/hostname")).unwrap(),
            "tiny\n"
        );
        let inode = |path: &std::path::Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).unwrap().ino()
        };
        let before = inode(&first.join("etc/hostname"));
        let second = store.shared_checkout(&tree).unwrap();
        assert_eq!(first, second);
        assert_eq!(inode(&second.join("etc/hostname")), before, "made again");
        assert_eq!(store.remove_shared_checkouts().unwrap(), 1);
        assert!(!first.exists());
    }

    #[test]
    fn every_entry_of_a_shared_checkout_and_its_objects_are_dated_the_same() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, tree) = stored_tree(dir.path(), |source| {
            let man1 = source.join("usr/share/man/man1");
            std::fs::create_dir_all(&man1).unwrap();
            std::fs::write(man1.join("ls.1.gz"), "ls\n").unwrap();
            std::os::unix::fs::symlink("ls.1.gz", man1.join("dir.1.gz")).unwrap();
        });
        let checkout = store.shared_checkout(&tree).unwrap();
        for path in [
            "",
            "usr",
            "usr/share/man/man1",
            "usr/share/man/man1/ls.1.gz",
            "usr/share/man/man1/dir.1.gz",
        ] {
            let meta = std::fs::symlink_metadata(checkout.join(path)).unwrap();
            assert_eq!(
                (meta.mtime(), meta.mtime_nsec()),
                (super::SHARED_CHECKOUT_MTIME, 0),
                "{path}"
            );
        }
        // The file is the store's object itself: its time is the object's.
        let file = std::fs::metadata(checkout.join("usr/share/man/man1/ls.1.gz")).unwrap();
        assert!(file.nlink() > 1);
    }
}
