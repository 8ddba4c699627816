//! The [`Store`] handle: opening the on-disk layout, object paths and temp files.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::lock::StoreLock;

/// The layout version, the name of the top-level folder holding everything.
pub(crate) const LAYOUT: &str = "v1";

/// How long [`Store::open`] waits for a running gc to finish.
const OPEN_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// The `CACHEDIR.TAG` written at the store root (<https://bford.info/cachedir/>).
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by kiln.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";

/// Sequence number of temp files, unique within the process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The object kinds stored as files, each in its own folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObjectDir {
    /// `objects/`: blob contents.
    Objects,
    /// `trees/`: canonical manifest encodings.
    Trees,
    /// `variants/`: blob copies carrying a mode, owner and xattrs.
    Variants,
}

impl ObjectDir {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ObjectDir::Objects => "objects",
            ObjectDir::Trees => "trees",
            ObjectDir::Variants => "variants",
        }
    }
}

/// A handle on a content-addressed store.
///
/// Cheap to clone: clones share one open lock file and therefore one shared
/// lock, held until the last clone is dropped. See the crate documentation
/// for the layout and the locking rules.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    base: PathBuf,
    lock: StoreLock,
    /// Serialises [`Store::gc`] between clones of one handle.
    gc_running: Mutex<()>,
    /// Effective uid and gid of this process: the owner of plain objects.
    owner: (u32, u32),
    /// Objects written or relied on since the last [`Store::make_durable`].
    unsynced: Mutex<Unsynced>,
    /// Test seam: lose the unsynced objects before every record.
    lose_before_record: AtomicBool,
    /// What the store found damaged and repaired on its own, for the binary to show.
    repairs: Mutex<Vec<String>>,
    /// Objects found damaged or missing when read, for the build to forget and rebuild.
    damaged: Mutex<Vec<Digest>>,
}

/// Object files not known to be on disk yet, with the directories whose
/// entries for them must be flushed too.
#[derive(Debug, Default)]
struct Unsynced {
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

impl Store {
    /// Opens the store at `root`, creating its layout if missing, and takes
    /// the shared store lock for the lifetime of the handle.
    ///
    /// Waits up to a minute for a running `gc` to release the store, then
    /// fails with [`StoreError::InUse`].
    pub fn open(root: &Path) -> Result<Store> {
        let base = root.join(LAYOUT);
        for dir in [
            base.clone(),
            base.join(ObjectDir::Objects.name()),
            base.join(ObjectDir::Trees.name()),
            base.join(ObjectDir::Variants.name()),
            base.join("tmp"),
        ] {
            fs::create_dir_all(&dir)
                .map_err(|source| StoreError::CreateDir { path: dir, source })?;
        }
        write_cachedir_tag(root)?;
        // Tools get paths inside the store (a tree's root, a hook's folder): they must be
        // absolute and free of `..`, whatever path the store was opened with.
        let root = &root
            .canonicalize()
            .map_err(|source| StoreError::CreateDir {
                path: root.to_owned(),
                source,
            })?;
        let base = root.join(LAYOUT);
        let lock = StoreLock::shared(&base.join("lock"), root, OPEN_LOCK_TIMEOUT)?;
        let owner = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let store = Store {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                base,
                lock,
                gc_running: Mutex::new(()),
                owner,
                unsynced: Mutex::default(),
                lose_before_record: AtomicBool::new(false),
                repairs: Mutex::new(Vec::new()),
                damaged: Mutex::new(Vec::new()),
            }),
        };
        if let Some(moved) = crate::index::recover_damaged(&store.index_path())? {
            store.note_repair(format!(
                "the build index `{}` was damaged: moved it to `{}` and started a new one, \
                 so every stage runs again",
                store.index_path().display(),
                moved.display()
            ));
        }
        // A first open can meet another process creating the same index: SQLite answers
        // "database is locked" to switching a new database to WAL without waiting, so wait here.
        let started = std::time::Instant::now();
        loop {
            match crate::index::migrate(&store) {
                Err(error) if error.is_busy() && started.elapsed() < crate::index::BUSY_TIMEOUT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => break result?,
            }
        }
        Ok(store)
    }

    /// Opens the store at `root` for reading only: nothing is created or
    /// written. `None` when there is no store there yet, or when its index
    /// has another schema version than this kiln's (so reading it would
    /// need a migration, which writes).
    pub fn open_existing(root: &Path) -> Result<Option<Store>> {
        let Ok(root) = root.canonicalize() else {
            return Ok(None);
        };
        let base = root.join(LAYOUT);
        let index = base.join("index.sqlite");
        let lock_path = base.join("lock");
        if !index.is_file() || !lock_path.is_file() {
            return Ok(None);
        }
        if crate::index::schema_version(&index)? != crate::index::SCHEMA_VERSION {
            return Ok(None);
        }
        let lock = StoreLock::shared(&lock_path, &root, OPEN_LOCK_TIMEOUT)?;
        let owner = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        Ok(Some(Store {
            inner: Arc::new(Inner {
                root,
                base,
                lock,
                gc_running: Mutex::new(()),
                owner,
                unsynced: Mutex::default(),
                lose_before_record: AtomicBool::new(false),
                repairs: Mutex::new(Vec::new()),
                damaged: Mutex::new(Vec::new()),
            }),
        }))
    }

    /// The directory the store was opened at.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Flushes everything written to the store's filesystem to disk.
    ///
    /// Writes are atomic for other processes without it; call it before
    /// recording results that must survive a power loss.
    pub fn sync(&self) -> Result<()> {
        let dir = File::open(&self.inner.base).map_err(|source| StoreError::Read {
            path: self.inner.base.clone(),
            source,
        })?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Write {
            path: self.inner.base.clone(),
            source: e.into(),
        })
    }

    /// Flushes to disk every object this handle (or a clone) wrote, or found
    /// already written, since the last call, with the directories holding
    /// them: files first, in parallel so the filesystem can commit them
    /// together, then each directory once. The engine calls it once per stage,
    /// before the stage's action is recorded, so that after a power loss no
    /// record names an object that never reached the disk. Returns how many
    /// files were flushed.
    pub fn make_durable(&self) -> Result<usize> {
        use rayon::prelude::*;
        let batch = std::mem::take(&mut *self.unsynced());
        let sync = |path: &PathBuf| {
            let flushed = File::open(path).and_then(|file| file.sync_all());
            flushed.map_err(|source| StoreError::Sync {
                path: path.clone(),
                source,
            })
        };
        let result = batch
            .files
            .par_iter()
            .try_for_each(sync)
            .and_then(|()| batch.dirs.par_iter().try_for_each(sync));
        if result.is_err() {
            // Whatever is left unflushed stays to flush.
            let mut unsynced = self.unsynced();
            unsynced.files.extend(batch.files.iter().cloned());
            unsynced.dirs.extend(batch.dirs.iter().cloned());
        }
        result.map(|()| batch.files.len())
    }

    /// Remembers that `object` must be flushed before a record names it;
    /// `new_dir` when its prefix folder was just created.
    fn unsynced_object(&self, object: &Path, new_dir: bool) {
        let mut unsynced = self.unsynced();
        unsynced.files.insert(object.to_owned());
        if let Some(dir) = object.parent() {
            unsynced.dirs.insert(dir.to_owned());
            if let Some(parent) = dir.parent().filter(|_| new_dir) {
                unsynced.dirs.insert(parent.to_owned());
            }
        }
    }

    fn unsynced(&self) -> std::sync::MutexGuard<'_, Unsynced> {
        self.inner
            .unsynced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Test seam: removes every object file written since the last
    /// [`Store::make_durable`], as a power loss may (the page cache never
    /// reached the disk); returns how many went.
    #[doc(hidden)]
    pub fn lose_unsynced_objects(&self) -> usize {
        let batch = std::mem::take(&mut *self.unsynced());
        batch
            .files
            .iter()
            .filter(|path| fs::remove_file(path).is_ok())
            .count()
    }

    /// Benchmark seam: forgets the objects to flush without flushing them,
    /// so a benchmark can time a record without [`Store::make_durable`]'s
    /// work; returns how many there were.
    #[doc(hidden)]
    pub fn forget_unsynced_objects(&self) -> usize {
        std::mem::take(&mut *self.unsynced()).files.len()
    }

    /// Test seam: with `lose`, every action or run recorded in the index is
    /// preceded by [`Store::lose_unsynced_objects`], so a record made before
    /// its objects are durable points at missing ones.
    #[doc(hidden)]
    pub fn lose_unsynced_before_records(&self, lose: bool) {
        self.inner.lose_before_record.store(lose, Ordering::SeqCst);
    }

    /// Called by the index before it records an action or a run.
    pub(crate) fn before_record(&self) {
        if self.inner.lose_before_record.load(Ordering::SeqCst) {
            self.lose_unsynced_objects();
        }
    }

    /// Keeps a note of something the store found damaged and repaired.
    pub(crate) fn note_repair(&self, note: String) {
        self.inner
            .repairs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(note);
    }

    /// What the store found damaged and repaired since the last call, one sentence each (the
    /// binary shows them as warnings).
    pub fn take_repairs(&self) -> Vec<String> {
        std::mem::take(
            &mut self
                .inner
                .repairs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Keeps the id of an object a read found damaged or missing.
    pub(crate) fn note_damaged(&self, id: &Digest) {
        let mut damaged = self
            .inner
            .damaged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !damaged.contains(id) {
            damaged.push(*id);
        }
    }

    /// The objects reads found damaged (and removed) or missing since the last call. A build
    /// that failed on one of them forgets each ([`Store::forget_damaged`]) and runs again, so
    /// the stages that made them run again.
    pub fn take_damaged(&self) -> Vec<Digest> {
        std::mem::take(
            &mut self
                .inner
                .damaged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// `v1/index.sqlite`.
    pub(crate) fn index_path(&self) -> PathBuf {
        self.inner.base.join("index.sqlite")
    }

    /// `v1/tmp/`.
    pub fn tmp_dir(&self) -> PathBuf {
        self.inner.base.join("tmp")
    }

    /// `v1/packages/`: the package managers' private states and downloads, in areas the packages
    /// stage names; `kiln cache gc` collects their units.
    pub fn packages_dir(&self) -> PathBuf {
        self.inner.base.join("packages")
    }

    /// A new scratch folder `v1/tmp/<pid>-<label>-<random>.tmp`, removed when dropped. Its pid
    /// lets the next build, `gc` and `verify` remove it when kiln was killed (see
    /// [`Store::clean_temp`]); the label says what it was for.
    pub fn scratch_dir(&self, label: &str) -> std::io::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("{}-{label}-", std::process::id()))
            .suffix(".tmp")
            .tempdir_in(self.tmp_dir())
    }

    /// The folder of one object kind, e.g. `v1/objects/`.
    pub(crate) fn object_dir(&self, kind: ObjectDir) -> PathBuf {
        self.inner.base.join(kind.name())
    }

    /// The path of an object named by `id`: `<dir>/ab/<62 more hex digits>`.
    pub(crate) fn object_path(&self, kind: ObjectDir, id: &Digest) -> PathBuf {
        let hex = id.to_hex();
        let mut path = self.object_dir(kind);
        path.push(&hex[..2]);
        path.push(&hex[2..]);
        path
    }

    /// The effective uid and gid plain objects are owned by.
    pub(crate) fn owner(&self) -> (u32, u32) {
        self.inner.owner
    }

    pub(crate) fn lock(&self) -> &StoreLock {
        &self.inner.lock
    }

    pub(crate) fn gc_mutex(&self) -> &Mutex<()> {
        &self.inner.gc_running
    }

    /// Creates a new, empty, writable temp file `v1/tmp/<pid>-<seq>.tmp`.
    ///
    /// The pid in the name lets maintenance tell a live writer's file from
    /// the leftovers of a killed process.
    pub(crate) fn create_temp(&self) -> Result<(File, PathBuf)> {
        let pid = std::process::id();
        loop {
            let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let path = self.tmp_dir().join(format!("{pid}-{seq}.tmp"));
            match OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok((file, path)),
                // Left by an earlier process that had our pid.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(StoreError::Create { path, source }),
            }
        }
    }

    /// A fresh temp path (no file created) for renaming something into.
    pub(crate) fn temp_path(&self) -> PathBuf {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{}-{seq}.tmp", std::process::id()))
    }

    /// Renames a finished temp file to its final object path, creating the
    /// two-digit prefix folder on first use. An existing object of that name
    /// has the same content and is left in place (never replaced: another
    /// process may be linking it); the temp file is then removed. Anything
    /// but a regular file there is not the store's and is replaced.
    ///
    /// Either way the object is remembered for [`Store::make_durable`]: one
    /// found in place may be another process's, not flushed yet.
    pub(crate) fn install(&self, temp: &Path, dest: &Path) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Ok(meta) if meta.file_type().is_file() => {
                self.unsynced_object(dest, false);
                return remove_file(temp);
            }
            // Not an object the store wrote (a symlink, a directory): replaced.
            Ok(meta) => {
                crate::freeze::remove_any(dest)?;
                self.note_repair(format!(
                    "replaced `{}`: a {} where the store keeps an object",
                    dest.display(),
                    crate::freeze::file_type_name(&meta.file_type())
                ));
            }
            Err(_) => {}
        }
        crate::testpoint::pause_at("store-commit");
        match rename_noreplace(temp, dest) {
            Err(e) if e.kind() == ErrorKind::NotFound && temp.exists() => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                self.finish_install(temp, dest, rename_noreplace(temp, dest))?;
                self.unsynced_object(dest, true);
                Ok(())
            }
            result => {
                self.finish_install(temp, dest, result)?;
                self.unsynced_object(dest, false);
                Ok(())
            }
        }
    }

    /// Remembers an object found already in place (not rewritten) for
    /// [`Store::make_durable`].
    pub(crate) fn found_object(&self, path: &Path) {
        self.unsynced_object(path, false);
    }

    fn finish_install(&self, temp: &Path, dest: &Path, result: io::Result<()>) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            // Another writer got there first with the same content.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => remove_file(temp),
            Err(source) => Err(StoreError::Rename {
                from: temp.to_owned(),
                to: dest.to_owned(),
                source,
            }),
        }
    }
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`, where
/// the filesystem supports it.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_cachedir_tag(root: &Path) -> Result<()> {
    let path = root.join("CACHEDIR.TAG");
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut file) => io::Write::write_all(&mut file, CACHEDIR_TAG.as_bytes())
            .map_err(|source| StoreError::Write { path, source }),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Create { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let store = Store::open(&root).unwrap();
        for sub in [
            "v1/objects",
            "v1/trees",
            "v1/variants",
            "v1/tmp",
            "v1/lock",
            "v1/index.sqlite",
        ] {
            assert!(root.join(sub).exists(), "{sub} missing");
        }
        let tag = fs::read_to_string(root.join("CACHEDIR.TAG")).unwrap();
        assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));
        assert_eq!(store.root(), root);
        // Opening again (another user) works and keeps the layout.
        drop(Store::open(&root).unwrap());
        store.sync().unwrap();
    }

    #[test]
    fn handles_are_shareable_across_threads() {
        fn shareable<T: Clone + Send + Sync>() {}
        shareable::<Store>();
    }

    #[test]
    fn object_paths_split_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = Digest::of_bytes(b"x");
        let hex = id.to_string();
        let path = store.object_path(ObjectDir::Objects, &id);
        assert_eq!(
            path,
            dir.path()
                .join("v1/objects")
                .join(&hex[..2])
                .join(&hex[2..])
        );
    }
}
