//! Checkout: materialising a manifest as a directory tree.
//!
//! A checkout never writes outside its destination: the destination must be
//! missing or empty, every manifest path is validated (relative, no `.` or
//! `..`, no empty component) and every entry's parent is a directory entry
//! that the checkout itself created with `mkdir`, which fails rather than
//! follow anything already there. Symlinks are created, never followed.
//!
//! The work runs in phases: directories (sequentially, parents first), then
//! files, symlinks and nodes (in parallel), then the extra paths of hard link
//! groups, and last the directories' own metadata, children before parents, so
//! a read-only directory gets its mode after its content is written and
//! directory times are not disturbed afterwards.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::error::{Result, StoreError};
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::store::Store;
use crate::variant::{FileMeta, apply_file_meta};
use crate::xattr;

/// How file contents reach the checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckoutMode {
    /// Hard-link store objects (a plain blob or a metadata variant): fast and
    /// free, but the files are the store's own. Treat the checkout as
    /// read-only, e.g. as an overlayfs lower layer. Files of a hard link
    /// group are copied once and linked to each other instead. Falls back to
    /// copying across filesystems or when an object has too many links.
    #[default]
    Hardlink,
    /// Copy contents (a reflink where the filesystem supports it): the files
    /// are private to the checkout and may be modified.
    Copy,
}

/// Options of [`Store::checkout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckoutOptions {
    /// Hard-link or copy file contents.
    pub mode: CheckoutMode,
    /// Set the modification (and access) time of every entry, symlinks
    /// included, to this many seconds since the epoch (SOURCE_DATE_EPOCH for
    /// final outputs). In hardlink mode this changes the time of the shared
    /// store objects, which is harmless: no manifest records times.
    pub mtime: Option<i64>,
    /// Without root, owners cannot be set: with this flag every entry is
    /// created with the current user's uid and gid instead of failing. As root
    /// the flag changes nothing and every owner is set as recorded.
    pub ignore_owner: bool,
}

/// A checkout in progress.
struct Job<'a> {
    store: &'a Store,
    dest: &'a Path,
    opts: CheckoutOptions,
    /// Every owner is replaced by this one (`ignore_owner` without root).
    owner_override: Option<(u32, u32)>,
    /// Set once a hard link crossed filesystems: copy from then on.
    copy_only: AtomicBool,
}

impl Store {
    /// Materialises `manifest` at `dest`, which must be missing or an empty
    /// directory; the root entry's metadata is applied to `dest` itself.
    ///
    /// Hard link groups become hard links. Running as root, every owner,
    /// device node and extended attribute is reproduced exactly; otherwise
    /// see [`CheckoutOptions::ignore_owner`]. On error `dest` is left partly
    /// written: remove it.
    pub fn checkout(&self, manifest: &Manifest, dest: &Path, opts: CheckoutOptions) -> Result<()> {
        manifest
            .validate()
            .map_err(|source| StoreError::InvalidManifest {
                path: dest.to_owned(),
                source,
            })?;
        prepare_dest(dest)?;
        let owner_override = (opts.ignore_owner && self.owner().0 != 0).then(|| self.owner());
        let job = Job {
            store: self,
            dest,
            opts,
            owner_override,
            copy_only: AtomicBool::new(opts.mode == CheckoutMode::Copy),
        };

        let dirs: Vec<&Entry> = manifest.entries().filter(|e| e.kind.is_dir()).collect();
        for dir in dirs.iter().filter(|d| !d.path.is_empty()) {
            let path = job.path_of(dir);
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|source| StoreError::CreateDir { path, source })?;
        }

        // First path of each hard link group, in manifest order.
        let mut leaders = std::collections::HashMap::new();
        let mut followers = Vec::new();
        let mut primaries = Vec::new();
        for entry in manifest.entries().filter(|e| !e.kind.is_dir()) {
            match entry.hardlink {
                Some(group) => match leaders.get(&group) {
                    Some(leader) => followers.push((entry, *leader)),
                    None => {
                        leaders.insert(group, entry);
                        primaries.push(entry);
                    }
                },
                None => primaries.push(entry),
            }
        }
        primaries
            .par_iter()
            .try_for_each(|entry| job.materialise(entry))?;
        followers.par_iter().try_for_each(|(entry, leader)| {
            let path = job.path_of(entry);
            let target = job.path_of(leader);
            fs::hard_link(&target, &path).map_err(|source| StoreError::Link {
                path,
                target,
                source,
            })
        })?;
        for dir in dirs.iter().rev() {
            job.finish_dir(dir)?;
        }
        Ok(())
    }
}

/// Creates `dest` or checks that it is an empty directory.
pub(crate) fn prepare_dest(dest: &Path) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let mut listing = fs::read_dir(dest).map_err(|source| StoreError::Read {
                path: dest.to_owned(),
                source,
            })?;
            if listing.next().is_some() {
                return Err(StoreError::DestinationNotEmpty {
                    path: dest.to_owned(),
                });
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::NotADirectory {
            path: dest.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(|source| StoreError::CreateDir {
                path: dest.to_owned(),
                source,
            })
        }
        Err(source) => Err(StoreError::Read {
            path: dest.to_owned(),
            source,
        }),
    }
}

impl Job<'_> {
    fn path_of(&self, entry: &Entry) -> PathBuf {
        if entry.path.is_empty() {
            self.dest.to_owned()
        } else {
            self.dest.join(&entry.path)
        }
    }

    fn owner_of(&self, entry: &Entry) -> (u32, u32) {
        self.owner_override.unwrap_or((entry.uid, entry.gid))
    }

    fn materialise(&self, entry: &Entry) -> Result<()> {
        let path = self.path_of(entry);
        let create_err = |e: Errno| StoreError::Create {
            path: path.clone(),
            source: e.into(),
        };
        match &entry.kind {
            // Directories are created beforehand, parents first.
            EntryKind::Dir => Ok(()),
            EntryKind::File { blob, .. } => {
                let (uid, gid) = self.owner_of(entry);
                let meta = FileMeta {
                    mode: entry.mode,
                    uid,
                    gid,
                    xattrs: &entry.xattrs,
                };
                // A hard link group gets an inode of its own, so that its
                // links stay distinguishable from files that merely share a
                // store object.
                let linkable = entry.hardlink.is_none() && !self.copy_only.load(Ordering::Relaxed);
                if linkable && self.link_file(blob, &meta, &path)? {
                    return self.set_time(&path);
                }
                let mut src = self.store.open_blob(blob)?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|source| StoreError::Create {
                        path: path.clone(),
                        source,
                    })?;
                io::copy(&mut src, &mut out).map_err(|source| StoreError::Write {
                    path: path.clone(),
                    source,
                })?;
                apply_file_meta(&out, &path, &meta)?;
                set_file_time(&out, &path, self.opts.mtime)
            }
            EntryKind::Symlink { target } => {
                rustix::fs::symlinkat(target.as_str(), CWD, &path).map_err(create_err)?;
                self.set_owner(entry, &path)?;
                xattr::set_path(&path, &entry.xattrs)?;
                self.set_time(&path)
            }
            EntryKind::CharDev { rdev } | EntryKind::BlockDev { rdev } => {
                let ft = if matches!(entry.kind, EntryKind::CharDev { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                rustix::fs::mknodat(CWD, &path, ft, Mode::from_raw_mode(0o600), *rdev)
                    .map_err(create_err)?;
                self.finish_node(entry, &path)
            }
            EntryKind::Fifo => {
                rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                    .map_err(create_err)?;
                self.finish_node(entry, &path)
            }
            EntryKind::Socket => {
                rustix::fs::mknodat(CWD, &path, FileType::Socket, Mode::from_raw_mode(0o600), 0)
                    .map_err(create_err)?;
                self.finish_node(entry, &path)
            }
        }
    }

    /// Hard-links a store file with the right content and metadata to
    /// `path`. `false` when linking is impossible here and a copy is needed.
    fn link_file(&self, blob: &crate::BlobId, meta: &FileMeta<'_>, path: &Path) -> Result<bool> {
        let source = self.store.linkable(blob, meta)?;
        match fs::hard_link(&source, path) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                self.copy_only.store(true, Ordering::Relaxed);
                Ok(false)
            }
            // The object reached the filesystem's link limit.
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound && !source.exists() => {
                Err(StoreError::MissingBlob {
                    id: *blob,
                    path: source,
                })
            }
            Err(e) => Err(StoreError::Link {
                path: path.to_owned(),
                target: source,
                source: e,
            }),
        }
    }

    /// Owner, mode, xattrs and time of a device node, fifo or socket.
    fn finish_node(&self, entry: &Entry, path: &Path) -> Result<()> {
        self.set_owner(entry, path)?;
        rustix::fs::chmodat(
            CWD,
            path,
            Mode::from_raw_mode(entry.mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| StoreError::SetMetadata {
            path: path.to_owned(),
            what: "mode",
            source: e.into(),
        })?;
        xattr::set_path(path, &entry.xattrs)?;
        self.set_time(path)
    }

    /// Owner, mode, xattrs and time of a directory, once its content is there.
    fn finish_dir(&self, entry: &Entry) -> Result<()> {
        let path = self.path_of(entry);
        self.set_owner(entry, &path)?;
        rustix::fs::chmodat(
            CWD,
            &path,
            Mode::from_raw_mode(entry.mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| StoreError::SetMetadata {
            path: path.clone(),
            what: "mode",
            source: e.into(),
        })?;
        xattr::set_path(&path, &entry.xattrs)?;
        self.set_time(&path)
    }

    fn set_owner(&self, entry: &Entry, path: &Path) -> Result<()> {
        let (uid, gid) = self.owner_of(entry);
        rustix::fs::chownat(
            CWD,
            path,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| StoreError::SetMetadata {
            path: path.to_owned(),
            what: "owner",
            source: e.into(),
        })
    }

    fn set_time(&self, path: &Path) -> Result<()> {
        let Some(seconds) = self.opts.mtime else {
            return Ok(());
        };
        rustix::fs::utimensat(CWD, path, &timestamps(seconds), AtFlags::SYMLINK_NOFOLLOW).map_err(
            |e| StoreError::SetMetadata {
                path: path.to_owned(),
                what: "modification time",
                source: e.into(),
            },
        )
    }
}

pub(crate) fn timestamps(seconds: i64) -> Timestamps {
    let at = Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

pub(crate) fn set_file_time(file: &File, path: &Path, mtime: Option<i64>) -> Result<()> {
    let Some(seconds) = mtime else { return Ok(()) };
    rustix::fs::futimens(file, &timestamps(seconds)).map_err(|e| StoreError::SetMetadata {
        path: path.to_owned(),
        what: "modification time",
        source: e.into(),
    })
}
