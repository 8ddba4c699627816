//! Ingesting a directory: walk it, store every file's content (or take it
//! from the stat cache), return its manifest.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::at;
use crate::blob::PutMode;
use crate::error::{Result, StoreError};
use crate::manifest::{Entry, EntryKind, Manifest};
use crate::statcache::{Row, StatCache, StatKey, canonical_root, now_ns};
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

/// What [`Store::ingest_dir_report`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Entries walked, the root included.
    pub entries: usize,
    /// Regular files stored; a hard link group counts once.
    pub files: usize,
    /// Files whose content was read and hashed.
    pub hashed: usize,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
    /// Files whose blob came from the stat cache, unread.
    pub reused: usize,
}

/// What ingest needs of an entry's `lstat`.
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// `st_mode`: type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    dev: u64,
    ino: u64,
    nlink: u64,
    rdev: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Meta {
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &rustix::fs::Stat) -> Meta {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Meta {
            mode: st.st_mode as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        }
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    fn stat_key(&self) -> StatKey {
        StatKey {
            dev: self.dev,
            ino: self.ino,
            size: self.size,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
        }
    }
}

/// A walked entry waiting to be turned into an [`Entry`].
struct Found {
    rel: String,
    abs: PathBuf,
    meta: Meta,
}

/// How a walked entry's content was obtained.
enum Content {
    /// Not a regular file: there is no content.
    None,
    /// The stat cache knew the blob.
    Reused,
    /// Read and hashed. `row` is what the stat cache should remember;
    /// `had_row` says whether it held a row for the path.
    Hashed {
        bytes: u64,
        row: Option<Row>,
        had_row: bool,
    },
}

/// The stat cache of one ingest.
struct Cache {
    rows: StatCache,
    /// When the ingest started: rows it writes are trusted only for files
    /// older than this (see `statcache`).
    started: i64,
}

impl Cache {
    /// The recorded blob of a regular file, if its row can be trusted. The
    /// blob is in the store: whatever removes a blob drops its rows.
    fn known(&self, rel: &str, stat: &StatKey) -> Option<&Row> {
        let row = self.rows.rows.get(rel)?;
        (row.stat == *stat && row.is_settled()).then_some(row)
    }
}

/// A tree a directory was written from, trusted for files whose metadata
/// still says so (see [`Store::scan_against`]).
struct Reference<'a> {
    manifest: &'a Manifest,
    mtime_ns: i64,
}

impl Reference<'_> {
    /// The reference's blob for a regular file whose type, size, mode,
    /// owner and mtime are those the reference wrote it with.
    fn known(&self, rel: &str, meta: &Meta) -> Option<crate::digest::BlobId> {
        let entry = self.manifest.get(rel)?;
        let EntryKind::File { blob, size } = &entry.kind else {
            return None;
        };
        (*size == meta.size
            && entry.mode == meta.mode & 0o7777
            && entry.uid == meta.uid
            && entry.gid == meta.gid
            && meta.mtime_ns == self.mtime_ns)
            .then_some(*blob)
    }
}

/// Where an ingest may take a file's blob from without reading it.
#[derive(Clone, Copy)]
enum Known<'a> {
    Nothing,
    StatCache(&'a Cache),
    Reference(&'a Reference<'a>),
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
        self.ingest_dir_report(dir, opts, false)
            .map(|(manifest, _)| manifest)
    }

    /// [`Store::ingest_dir`] with the stat cache: a file whose `lstat` is the
    /// one recorded when it was last ingested (and old enough then, see
    /// [`crate::RACY_MARGIN_NS`]) is not read again; its recorded blob is
    /// taken. Extended attributes are still read from every entry. Use it
    /// for directories ingested again and again, such as a recipe's trees.
    ///
    /// With [`PutMode::Move`] the cache is not used: every file is consumed.
    pub fn ingest_dir_cached(&self, dir: &Path, opts: IngestOptions) -> Result<Manifest> {
        self.ingest_dir_report(dir, opts, true)
            .map(|(manifest, _)| manifest)
    }

    /// [`Store::ingest_dir`], or [`Store::ingest_dir_cached`] when
    /// `stat_cache` is set, also saying how many files were read.
    pub fn ingest_dir_report(
        &self,
        dir: &Path,
        opts: IngestOptions,
        stat_cache: bool,
    ) -> Result<(Manifest, IngestReport)> {
        self.ingest_with(dir, opts, stat_cache, Known::Nothing)
    }

    /// The manifest of `dir`, a directory written from `reference` with
    /// every mtime set to `mtime_ns` (an output): a regular file whose type,
    /// size, mode, owner and mtime are still those of the reference is taken
    /// to hold the reference's content, unread (as rsync's quick check);
    /// any other file is hashed. Nothing is stored. Diffing the result with
    /// `reference` says what a hand edit changed in the directory.
    pub fn scan_against(
        &self,
        dir: &Path,
        reference: &Manifest,
        mtime_ns: i64,
    ) -> Result<(Manifest, IngestReport)> {
        let reference = Reference {
            manifest: reference,
            mtime_ns,
        };
        let opts = IngestOptions {
            mode: PutMode::HashOnly,
            owner: None,
        };
        self.ingest_with(dir, opts, false, Known::Reference(&reference))
    }

    fn ingest_with(
        &self,
        dir: &Path,
        opts: IngestOptions,
        stat_cache: bool,
        known: Known<'_>,
    ) -> Result<(Manifest, IngestReport)> {
        // Before looking at any file (see `statcache`).
        let started = now_ns();
        let use_cache = stat_cache && opts.mode != PutMode::Move;
        let (found, cache) = self.walk_loading_cache(dir, use_cache, started)?;

        let leader = hardlink_leaders(&found);

        // Every path but the followers of a hard link group is read, in
        // parallel; a follower is its leader's inode under another name.
        let read = found
            .par_iter()
            .enumerate()
            .map(|(i, f)| match leader[i] {
                Some(l) if l != i => Ok(None),
                group => self
                    .ingest_entry(f, opts, cache.as_ref().map_or(known, Known::StatCache))
                    .map(|(mut entry, content)| {
                        entry.hardlink = group.map(|l| l as u32);
                        Some((entry, content))
                    }),
            })
            .collect::<Result<Vec<Option<(Entry, Content)>>>>()?;

        let (report, upserts, rows_seen) = tally(&read, &found);
        let gone = gone_rows(cache.as_ref(), &read, &found, rows_seen);
        let followers = followers(&found, &leader, &read);
        // Every blob named by a new row is stored by now (a hash-only ingest
        // stored nothing, and records nothing).
        // They are flushed first: a row must not outlive its blob, a power
        // loss included.
        if let Some(cache) = &cache
            && opts.mode != PutMode::HashOnly
        {
            self.make_durable()?;
            cache.rows.write(&upserts, &gone)?;
        }
        drop(upserts);
        let entries = read
            .into_iter()
            .flatten()
            .map(|(entry, _)| entry)
            .chain(followers);
        let manifest =
            Manifest::from_entries(entries).map_err(|source| StoreError::InvalidManifest {
                path: dir.to_owned(),
                source,
            })?;
        Ok((manifest, report))
    }

    /// Walks `dir` and, when `use_cache`, loads its stat cache meanwhile.
    fn walk_loading_cache(
        &self,
        dir: &Path,
        use_cache: bool,
        started: i64,
    ) -> Result<(Vec<Found>, Option<Cache>)> {
        let (found, cache) = std::thread::scope(|scope| {
            let loader = use_cache.then(|| scope.spawn(|| self.load_cache(dir, started)));
            let found = walk(dir);
            let cache = loader
                .map(|loader| {
                    loader
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
                .transpose();
            (found, cache)
        });
        Ok((found?, cache?))
    }

    fn load_cache(&self, dir: &Path, started: i64) -> Result<Cache> {
        let rows = StatCache::load(self, &canonical_root(dir)?)?;
        Ok(Cache { rows, started })
    }

    fn ingest_entry(
        &self,
        f: &Found,
        opts: IngestOptions,
        known: Known<'_>,
    ) -> Result<(Entry, Content)> {
        let cache = match known {
            Known::StatCache(cache) => Some(cache),
            _ => None,
        };
        let is_file = f.meta.file_type() == FileType::RegularFile;
        // A stat cache row is only ever written for a file without xattrs, and setting one
        // changes the ctime: a file that matches its row has none, and is not asked. A file
        // known from a reference tree still has its xattrs read, to be compared.
        let (known_blob, read_xattrs) = match known {
            Known::StatCache(cache) if is_file => match cache.known(&f.rel, &f.meta.stat_key()) {
                Some(row) => (Some(row.blob), false),
                None => (None, true),
            },
            Known::Reference(reference) if is_file => (reference.known(&f.rel, &f.meta), true),
            _ => (None, true),
        };
        // Read before the content: a move takes the file away.
        let xattrs = if read_xattrs {
            xattr::read(&f.abs)?
        } else {
            Default::default()
        };
        let mut content = Content::None;
        let kind = match f.meta.file_type() {
            FileType::Directory => EntryKind::Dir,
            FileType::RegularFile => {
                let stat = f.meta.stat_key();
                match known_blob {
                    Some(blob) => {
                        content = Content::Reused;
                        EntryKind::File {
                            blob,
                            size: stat.size,
                        }
                    }
                    None => {
                        let (blob, size) = self.put_file_sized(&f.abs, opts.mode)?;
                        let row = cache.and_then(|cache| {
                            let row = Row {
                                stat,
                                blob,
                                recorded_ns: cache.started,
                            };
                            // A file that changed while it was read, or too
                            // recently to tell, is not remembered.
                            // Nor is one with xattrs: a hit does not read them.
                            (size == stat.size && row.is_settled() && xattrs.is_empty())
                                .then_some(row)
                        });
                        let had_row =
                            cache.is_some_and(|cache| cache.rows.rows.contains_key(&f.rel));
                        content = Content::Hashed {
                            bytes: size,
                            row,
                            had_row,
                        };
                        EntryKind::File { blob, size }
                    }
                }
            }
            FileType::Symlink => {
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
            }
            FileType::CharacterDevice => EntryKind::CharDev { rdev: f.meta.rdev },
            FileType::BlockDevice => EntryKind::BlockDev { rdev: f.meta.rdev },
            FileType::Fifo => EntryKind::Fifo,
            _ => EntryKind::Socket,
        };
        let (uid, gid) = opts.owner.unwrap_or((f.meta.uid, f.meta.gid));
        let entry = Entry {
            path: f.rel.clone(),
            kind,
            mode: f.meta.mode & 0o7777,
            uid,
            gid,
            xattrs,
            hardlink: None,
        };
        Ok((entry, content))
    }
}

/// Counts what an ingest read into its report, and collects the stat cache
/// rows to write and how many rows the cache held for the files read.
fn tally<'a>(
    read: &[Option<(Entry, Content)>],
    found: &'a [Found],
) -> (IngestReport, Vec<(&'a str, Row)>, usize) {
    let mut report = IngestReport {
        entries: found.len(),
        ..IngestReport::default()
    };
    let mut upserts = Vec::new();
    let mut rows_seen = 0;
    for ((_, content), f) in read
        .iter()
        .zip(found)
        .filter_map(|(r, f)| Some((r.as_ref()?, f)))
    {
        match content {
            Content::None => continue,
            Content::Reused => {
                report.reused += 1;
                rows_seen += 1;
            }
            Content::Hashed {
                bytes,
                row,
                had_row,
            } => {
                report.hashed += 1;
                report.bytes_hashed += bytes;
                rows_seen += usize::from(*had_row);
                if let Some(row) = row {
                    upserts.push((f.rel.as_str(), *row));
                }
            }
        }
        report.files += 1;
    }
    (report, upserts, rows_seen)
}

/// Rows of files that are no longer regular files of the tree.
fn gone_rows<'a>(
    cache: Option<&'a Cache>,
    read: &[Option<(Entry, Content)>],
    found: &[Found],
    rows_seen: usize,
) -> Vec<&'a str> {
    match cache {
        Some(cache) if cache.rows.rows.len() > rows_seen => {
            let kept: HashSet<&str> = read
                .iter()
                .zip(found)
                .filter(|(r, _)| matches!(r, Some((_, Content::Reused | Content::Hashed { .. }))))
                .map(|(_, f)| f.rel.as_str())
                .collect();
            cache
                .rows
                .rows
                .keys()
                .map(String::as_str)
                .filter(|rel| !kept.contains(rel))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// The entries of the followers of hard link groups: their leader's entry
/// under their own path.
fn followers(
    found: &[Found],
    leader: &[Option<usize>],
    read: &[Option<(Entry, Content)>],
) -> Vec<Entry> {
    found
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let l = leader[i].filter(|&l| l != i)?;
            read[l].as_ref().map(|(leader, _)| Entry {
                path: f.rel.clone(),
                ..leader.clone()
            })
        })
        .collect()
}

/// For each walked entry that is one path of a hard link group, the index of
/// the group's first path (its leader, which is its own leader).
fn hardlink_leaders(found: &[Found]) -> Vec<Option<usize>> {
    let mut inodes: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, f) in found.iter().enumerate() {
        if !f.meta.is_dir() && f.meta.nlink > 1 {
            inodes.entry((f.meta.dev, f.meta.ino)).or_default().push(i);
        }
    }
    let mut leader = vec![None; found.len()];
    for paths in inodes.into_values() {
        let nlink = found[paths[0]].meta.nlink;
        if paths.len() > 1 && paths.len() as u64 == nlink {
            for &i in &paths {
                leader[i] = Some(paths[0]);
            }
        }
    }
    leader
}

/// Lists `dir` and everything under it, root first, never following a
/// symlink below `dir`. Directories are listed in parallel, each with
/// `statat` relative to its own descriptor.
fn walk(dir: &Path) -> Result<Vec<Found>> {
    let read_err = |path: &Path, e: Errno| StoreError::Read {
        path: path.to_owned(),
        source: e.into(),
    };
    let root = match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(root) => root,
        Err(Errno::NOTDIR) => {
            return Err(StoreError::NotADirectory {
                path: dir.to_owned(),
            });
        }
        Err(e) => return Err(read_err(dir, e)),
    };
    let meta = Meta::of(&rustix::fs::fstat(&root).map_err(|e| read_err(dir, e))?);
    let mut found = vec![Found {
        rel: String::new(),
        abs: dir.to_owned(),
        meta,
    }];
    found.extend(walk_children(root.as_fd(), dir, "")?);
    Ok(found)
}

/// The entries under the open directory `fd` (at `abs`, manifest path `rel`).
fn walk_children(fd: BorrowedFd<'_>, abs: &Path, rel: &str) -> Result<Vec<Found>> {
    let read_err = |path: &Path, e: Errno| StoreError::Read {
        path: path.to_owned(),
        source: e.into(),
    };
    let names = at::list(fd).map_err(|source| StoreError::Read {
        path: abs.to_owned(),
        source,
    })?;
    let mut here = Vec::with_capacity(names.len());
    let mut dirs = Vec::new();
    for (name, _) in &names {
        let path = abs.join(at::os(name));
        let Ok(name) = name.to_str() else {
            return Err(StoreError::NonUtf8 { path });
        };
        let st = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| read_err(&path, e))?;
        let meta = Meta::of(&st);
        if meta.is_dir() {
            dirs.push(here.len());
        }
        here.push(Found {
            rel: if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            },
            abs: path,
            meta,
        });
    }
    let nested = dirs
        .par_iter()
        .map(|&i| {
            let f = &here[i];
            let name = at::split(&f.rel).1;
            let sub = rustix::fs::openat(fd, name, at::DIR_FLAGS, Mode::empty())
                .map_err(|e| read_err(&f.abs, e))?;
            walk_children(sub.as_fd(), &f.abs, &f.rel)
        })
        .collect::<Result<Vec<Vec<Found>>>>()?;
    here.extend(nested.into_iter().flatten());
    Ok(here)
}
