//! Ingesting a directory: walk it, store every file's content, return its manifest.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use walkdir::WalkDir;

use crate::blob::PutMode;
use crate::error::{Result, StoreError};
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::store::Store;
use crate::xattr;

/// How [`Store::ingest_dir`] reads a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestOptions {
    /// Copy file contents, or move them into the store (see [`PutMode`]).
    /// With [`PutMode::Move`] the directory is consumed: regular files are
    /// gone afterwards, and the caller removes what is left.
    pub mode: PutMode,
    /// Record every entry with this `(uid, gid)` instead of its own, e.g.
    /// `(0, 0)` for a tree copied from a user's directory.
    pub owner: Option<(u32, u32)>,
}

/// A walked entry waiting to be turned into an [`Entry`].
struct Found {
    rel: String,
    abs: PathBuf,
    meta: Metadata,
}

impl Store {
    /// Walks `dir` (without following symlinks) and stores every regular
    /// file's content, hashing files in parallel. Returns the manifest, root
    /// included; it is not stored: call [`Store::put_manifest`].
    ///
    /// Hard links are found by device and inode. An inode becomes a hard link
    /// group when two or more of its paths, and all of them, are inside
    /// `dir`: files that share an inode with something outside (the store
    /// objects behind a hardlink checkout) are independent files. All extended
    /// attributes are recorded except overlayfs's own `trusted.overlay.*`.
    /// Every name and symlink target must be UTF-8.
    pub fn ingest_dir(&self, dir: &Path, opts: IngestOptions) -> Result<Manifest> {
        let found = walk(dir)?;

        let leader = hardlink_leaders(&found);

        // Every path but the followers of a hard link group is read, in
        // parallel; a follower is its leader's inode under another name.
        let read = found
            .par_iter()
            .enumerate()
            .map(|(i, f)| match leader[i] {
                Some(l) if l != i => Ok(None),
                group => self.ingest_entry(f, opts).map(|mut entry| {
                    entry.hardlink = group.map(|l| l as u32);
                    Some(entry)
                }),
            })
            .collect::<Result<Vec<Option<Entry>>>>()?;
        let entries = read
            .iter()
            .zip(&found)
            .enumerate()
            .filter_map(|(i, (entry, f))| match (entry, leader[i]) {
                (Some(entry), _) => Some(entry.clone()),
                (None, Some(l)) => read[l].as_ref().map(|leader| Entry {
                    path: f.rel.clone(),
                    ..leader.clone()
                }),
                (None, None) => None,
            });
        Manifest::from_entries(entries).map_err(|source| StoreError::InvalidManifest {
            path: dir.to_owned(),
            source,
        })
    }

    fn ingest_entry(&self, f: &Found, opts: IngestOptions) -> Result<Entry> {
        // Read before the content: a move takes the file away.
        let xattrs = xattr::read(&f.abs)?;
        let ft = f.meta.file_type();
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            let (blob, size) = self.put_file_sized(&f.abs, opts.mode)?;
            EntryKind::File { blob, size }
        } else if ft.is_symlink() {
            let target = fs::read_link(&f.abs).map_err(|source| StoreError::Read {
                path: f.abs.clone(),
                source,
            })?;
            let target =
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| StoreError::NonUtf8 {
                        path: f.abs.clone(),
                    })?;
            EntryKind::Symlink { target }
        } else {
            use std::os::unix::fs::FileTypeExt;
            let rdev = f.meta.rdev();
            if ft.is_char_device() {
                EntryKind::CharDev { rdev }
            } else if ft.is_block_device() {
                EntryKind::BlockDev { rdev }
            } else if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                EntryKind::Socket
            }
        };
        let (uid, gid) = opts.owner.unwrap_or((f.meta.uid(), f.meta.gid()));
        Ok(Entry {
            path: f.rel.clone(),
            kind,
            mode: f.meta.mode() & 0o7777,
            uid,
            gid,
            xattrs,
            hardlink: None,
        })
    }
}

/// For each walked entry that is one path of a hard link group, the index of
/// the group's first path (its leader, which is its own leader).
fn hardlink_leaders(found: &[Found]) -> Vec<Option<usize>> {
    let mut inodes: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        if !f.meta.is_dir() && f.meta.nlink() > 1 {
            inodes
                .entry((f.meta.dev(), f.meta.ino()))
                .or_default()
                .push(i);
        }
    }
    let mut leader = vec![None; found.len()];
    for (paths, nlink) in inodes.into_values().map(|paths| {
        let nlink = found[paths[0]].meta.nlink();
        (paths, nlink)
    }) {
        if paths.len() > 1 && paths.len() as u64 == nlink {
            for &i in &paths {
                leader[i] = Some(paths[0]);
            }
        }
    }
    leader
}

/// Lists `dir` and everything under it, root first, never following symlinks.
fn walk(dir: &Path) -> Result<Vec<Found>> {
    let root_meta = fs::metadata(dir).map_err(|source| StoreError::Read {
        path: dir.to_owned(),
        source,
    })?;
    if !root_meta.is_dir() {
        return Err(StoreError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mut found = Vec::new();
    for item in WalkDir::new(dir).follow_links(false) {
        let item = item.map_err(|e| walk_error(dir, e))?;
        let rel = item
            .path()
            .strip_prefix(dir)
            .unwrap_or(item.path())
            .to_str()
            .ok_or_else(|| StoreError::NonUtf8 {
                path: item.path().to_owned(),
            })?
            .to_owned();
        let meta = item.metadata().map_err(|e| walk_error(dir, e))?;
        found.push(Found {
            rel,
            abs: item.into_path(),
            meta,
        });
    }
    Ok(found)
}

fn walk_error(dir: &Path, err: walkdir::Error) -> StoreError {
    let path = err.path().unwrap_or(dir).to_owned();
    let source = err
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("filesystem loop"));
    StoreError::Read { path, source }
}
