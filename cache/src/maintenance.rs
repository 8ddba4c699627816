//! Store statistics and the helpers verify and gc share: listing objects on
//! disk and removing temp files left by killed processes.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::freeze::frozen_stem;
use crate::index::Table;
use crate::store::{ObjectDir, Store, remove_file};
use crate::variant::parse_variant_name;

/// A temp file of this process older than this is stale; another live
/// process's files are never taken for stale.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Counts and sizes of what the store holds.
///
/// Byte counts are apparent sizes (`st_size`) of everything under the store's
/// root, each inode counted once, as `du -sb` counts: a shared checkout's
/// links to objects count as objects, a package file linked into a temp
/// folder counts under packages. [`Stats::total_bytes`] is what `du -sb`
/// says of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blob objects.
    pub blobs: u64,
    /// Blobs kept compressed (see `gc`): a read thaws them.
    pub frozen_blobs: u64,
    /// Their compressed size in bytes (part of `blob_bytes`).
    pub frozen_bytes: u64,
    /// Their total size in bytes.
    pub blob_bytes: u64,
    /// Metadata variants.
    pub variants: u64,
    /// Their total size in bytes (free on filesystems with reflinks).
    pub variant_bytes: u64,
    /// Tree manifests.
    pub trees: u64,
    /// Their total size in bytes.
    pub tree_bytes: u64,
    /// `v1/packages/`: package managers' state and downloaded packages.
    pub package_bytes: u64,
    /// The index database with its WAL files.
    pub index_bytes: u64,
    /// Shared checkouts: their directories, symlinks and any file that is
    /// not a link to an object.
    pub checkout_bytes: u64,
    /// `v1/tmp/`: writes in progress or leftovers.
    pub temp_bytes: u64,
    /// Everything else: the object folders' directories, the lock file,
    /// `CACHEDIR.TAG`, anything the store does not know.
    pub other_bytes: u64,
    /// Builds recorded in the index.
    pub builds: u64,
    /// Stage runs recorded in the index.
    pub runs: u64,
    /// Action cache entries.
    pub actions: u64,
    /// Files in `v1/tmp/`: writes in progress or leftovers.
    pub temp_files: u64,
    /// Rows of the stat cache of ingested files.
    pub stat_cache_rows: u64,
}

impl Stats {
    /// Bytes of everything in the store (what `du -sb` says of it).
    pub fn total_bytes(&self) -> u64 {
        self.blob_bytes
            + self.variant_bytes
            + self.tree_bytes
            + self.package_bytes
            + self.index_bytes
            + self.checkout_bytes
            + self.temp_bytes
            + self.other_bytes
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counted = [
            ("blobs", self.blobs, self.blob_bytes),
            ("  frozen", self.frozen_blobs, self.frozen_bytes),
            ("variants", self.variants, self.variant_bytes),
            ("trees", self.trees, self.tree_bytes),
        ];
        for (name, count, bytes) in counted {
            writeln!(f, "{name:<11} {count:>8}  {}", human_bytes(bytes))?;
        }
        let sized = [
            ("packages", self.package_bytes),
            ("index", self.index_bytes),
            ("checkouts", self.checkout_bytes),
            ("temp", self.temp_bytes),
            ("other", self.other_bytes),
        ];
        for (name, bytes) in sized {
            writeln!(f, "{name:<11} {:>8}  {}", "", human_bytes(bytes))?;
        }
        writeln!(f, "builds      {:>8}", self.builds)?;
        writeln!(f, "stage runs  {:>8}", self.runs)?;
        writeln!(f, "actions     {:>8}", self.actions)?;
        writeln!(f, "stat cache  {:>8}", self.stat_cache_rows)?;
        writeln!(f, "temp files  {:>8}", self.temp_files)?;
        write!(
            f,
            "total                 {} ({} bytes)",
            human_bytes(self.total_bytes()),
            self.total_bytes()
        )
    }
}

/// Where bytes of the store are counted in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Blobs,
    Variants,
    Trees,
    Packages,
    Index,
    Checkouts,
    Temp,
    Other,
}

/// Apparent sizes of a walk over the store, each inode counted once.
#[derive(Debug, Default)]
pub(crate) struct DiskUsage {
    seen: HashSet<(u64, u64)>,
    /// Bytes per [`Part`], indexed by its discriminant.
    bytes: [u64; 8],
}

impl DiskUsage {
    fn get(&self, part: Part) -> u64 {
        self.bytes[part as usize]
    }

    /// Counts `path` and everything below it not counted yet: files (and
    /// symlinks, nodes) to `part`, directories to `dirs`. Never follows a
    /// symlink; entries removed meanwhile are skipped.
    fn walk(&mut self, path: &Path, part: Part, dirs: Part) -> Result<()> {
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        if !self.seen.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
        let is_dir = meta.is_dir();
        self.bytes[if is_dir { dirs } else { part } as usize] += meta.len();
        if is_dir {
            for child in read_dir_paths(path)? {
                self.walk(&child, part, dirs)?;
            }
        }
        Ok(())
    }

    /// The bytes of everything under `path`, each inode once.
    pub(crate) fn of(path: &Path) -> Result<u64> {
        let mut usage = DiskUsage::default();
        usage.walk(path, Part::Other, Part::Other)?;
        Ok(usage.get(Part::Other))
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What an object file's name says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ObjectName {
    /// A blob or tree named by its digest.
    Digest(Digest),
    /// A variant: blob id and metadata digest.
    Variant(Digest, Digest),
    /// Not a name the store writes.
    Invalid,
}

/// An object file found on disk.
#[derive(Debug, Clone)]
pub(crate) struct StoredObject {
    pub(crate) path: PathBuf,
    pub(crate) name: ObjectName,
    pub(crate) size: u64,
    /// A blob's compressed form (see `freeze`).
    pub(crate) frozen: bool,
}

impl Store {
    /// Counts what the store holds.
    pub fn stats(&self) -> Result<Stats> {
        let blob_files = self.list_objects(ObjectDir::Objects)?;
        let frozen_blobs = blob_files.iter().filter(|o| o.frozen).count() as u64;
        let frozen_bytes = blob_files.iter().filter(|o| o.frozen).map(|o| o.size).sum();
        let blobs = blob_files
            .iter()
            .map(|o| o.name)
            .collect::<HashSet<_>>()
            .len() as u64;
        let variants = self.list_objects(ObjectDir::Variants)?.len() as u64;
        let trees = self.list_objects(ObjectDir::Trees)?.len() as u64;
        let usage = self.disk_usage()?;
        let index = self.index()?;
        Ok(Stats {
            blobs,
            frozen_blobs,
            frozen_bytes,
            blob_bytes: usage.get(Part::Blobs),
            variants,
            variant_bytes: usage.get(Part::Variants),
            trees,
            tree_bytes: usage.get(Part::Trees),
            package_bytes: usage.get(Part::Packages),
            index_bytes: usage.get(Part::Index),
            checkout_bytes: usage.get(Part::Checkouts),
            temp_bytes: usage.get(Part::Temp),
            other_bytes: usage.get(Part::Other),
            builds: index.count(Table::Builds)?,
            runs: index.count(Table::Runs)?,
            actions: index.count(Table::Actions)?,
            temp_files: read_dir_paths(&self.tmp_dir())?.len() as u64,
            stat_cache_rows: self.stat_cache_rows()?,
        })
    }

    /// Walks the whole store, objects first so that a file linked from a
    /// checkout or a temp folder counts as the object it is.
    fn disk_usage(&self) -> Result<DiskUsage> {
        let base = self.tmp_dir().with_file_name("");
        let mut usage = DiskUsage::default();
        let parts = [
            (ObjectDir::Objects.name(), Part::Blobs, Part::Other),
            (ObjectDir::Variants.name(), Part::Variants, Part::Other),
            (ObjectDir::Trees.name(), Part::Trees, Part::Other),
            ("packages", Part::Packages, Part::Packages),
            ("index.sqlite", Part::Index, Part::Index),
            ("index.sqlite-wal", Part::Index, Part::Index),
            ("index.sqlite-shm", Part::Index, Part::Index),
            ("checkouts", Part::Checkouts, Part::Checkouts),
            ("tmp", Part::Temp, Part::Temp),
        ];
        for (name, part, dirs) in parts {
            usage.walk(&base.join(name), part, dirs)?;
        }
        usage.walk(self.root(), Part::Other, Part::Other)?;
        Ok(usage)
    }

    /// Lists every file of one object folder with what its name says.
    pub(crate) fn list_objects(&self, kind: ObjectDir) -> Result<Vec<StoredObject>> {
        let mut objects = Vec::new();
        for prefix_dir in read_dir_paths(&self.object_dir(kind))? {
            let prefix = file_name(&prefix_dir);
            let valid_prefix = prefix.len() == 2 && prefix.bytes().all(|b| b.is_ascii_hexdigit());
            match fs::symlink_metadata(&prefix_dir) {
                Ok(meta) if meta.is_dir() => {}
                // A prefix folder the store never made: its objects would live elsewhere.
                Ok(meta) if meta.file_type().is_symlink() => {
                    objects.push(StoredObject {
                        name: ObjectName::Invalid,
                        size: 0,
                        frozen: false,
                        path: prefix_dir,
                    });
                    continue;
                }
                _ => continue,
            }
            for path in read_dir_paths(&prefix_dir)? {
                let whole_name = file_name(&path);
                let frozen_name = frozen_stem(&whole_name).filter(|_| kind == ObjectDir::Objects);
                let name = frozen_name.unwrap_or(&whole_name);
                let parsed = match kind {
                    _ if !valid_prefix => ObjectName::Invalid,
                    ObjectDir::Variants => match parse_variant_name(&prefix, name) {
                        Some((blob, meta)) => ObjectName::Variant(blob, meta),
                        None => ObjectName::Invalid,
                    },
                    ObjectDir::Objects | ObjectDir::Trees => format!("{prefix}{name}")
                        .parse()
                        .map_or(ObjectName::Invalid, ObjectName::Digest),
                };
                let size = match fs::symlink_metadata(&path) {
                    Ok(meta) => meta.len(),
                    // Removed meanwhile (a concurrent verify).
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(source) => return Err(StoreError::Read { path, source }),
                };
                objects.push(StoredObject {
                    name: parsed,
                    size,
                    frozen: frozen_name.is_some(),
                    path,
                });
            }
        }
        Ok(objects)
    }

    /// Removes what killed processes left in `v1/tmp` (a build does this as it starts, so a
    /// killed build's scratch does not wait for `verify` or `gc`); returns how many went. A
    /// leftover that cannot be removed is left for `gc`.
    pub fn reclaim_scratch(&self) -> usize {
        let Ok(paths) = read_dir_paths(&self.tmp_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for path in paths {
            let Some(pid) = temp_owner(&file_name(&path)) else {
                continue;
            };
            if pid == std::process::id() || process_alive(pid) {
                continue;
            }
            let gone = if path.is_dir() {
                make_writable(&path);
                fs::remove_dir_all(&path).is_ok()
            } else {
                fs::remove_file(&path).is_ok()
            };
            removed += usize::from(gone);
        }
        removed
    }

    /// Removes temp files of processes that are gone; a live process's files
    /// stay however old they are, since a stage may run for hours (a reused
    /// pid keeps a dead build's leftovers until gc). With `exclusive`, every
    /// other process's temp files go: nobody else can be writing while we hold
    /// the store exclusively.
    pub(crate) fn clean_temp(&self, exclusive: bool) -> Result<Vec<PathBuf>> {
        let own = std::process::id();
        let mut removed = Vec::new();
        for path in read_dir_paths(&self.tmp_dir())? {
            let pid = temp_owner(&file_name(&path));
            let stale = match pid {
                Some(pid) if pid == own => is_old(&path),
                Some(_) if exclusive => true,
                // A live process may run one stage for hours: its scratch stays.
                Some(pid) => !process_alive(pid),
                None => exclusive || is_old(&path),
            };
            if stale {
                if path.is_dir() {
                    fs::remove_dir_all(&path).map_err(|source| StoreError::Remove {
                        path: path.clone(),
                        source,
                    })?;
                } else {
                    remove_file(&path)?;
                }
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

/// The pid in a temp file name `<pid>-<seq>.tmp`.
fn temp_owner(name: &str) -> Option<u32> {
    name.strip_suffix(".tmp")?.split_once('-')?.0.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

fn is_old(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_TEMP_AGE)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The entries of a directory, sorted; a missing directory has none.
pub(crate) fn read_dir_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let read_err = |source| StoreError::Read {
        path: dir.to_owned(),
        source,
    };
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(read_err(source)),
    };
    let mut paths = listing
        .map(|item| item.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    paths.sort();
    Ok(paths)
}

/// Removes the directory `path` with everything in it, read-only folders included.
pub(crate) fn remove_dir_tree(path: &Path) -> Result<()> {
    make_writable(path);
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Gives every directory below `path` its owner's write and search permission, so a tree a
/// stage left read-only can be removed.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o700 != 0o700 {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o700));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(600 << 20), "600.0 MiB");
    }

    #[test]
    fn temp_names_carry_the_pid() {
        assert_eq!(temp_owner("123-4.tmp"), Some(123));
        assert_eq!(temp_owner("x-4.tmp"), None);
        assert_eq!(temp_owner("123-4"), None);
    }

    #[test]
    fn stale_temp_files_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A child that has exited: its pid is gone (and not yet reused).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_file = store.tmp_dir().join(format!("{dead}-0.tmp"));
        let live_file = store
            .tmp_dir()
            .join(format!("{}-999999.tmp", std::process::id()));
        fs::write(&dead_file, b"partial").unwrap();
        fs::write(&live_file, b"in progress").unwrap();
        let removed = store.clean_temp(false).unwrap();
        assert_eq!(removed, vec![dead_file.clone()]);
        assert!(live_file.exists());
        assert_eq!(store.stats().unwrap().temp_files, 1);
    }
}
