//! Updating a checkout in place: turning a checkout of one manifest into a
//! checkout of another by applying only their difference. This is the
//! store's one materialisation path: a checkout is an update from the empty
//! tree (see `checkout`), so entries are created, linked to store objects,
//! copied and given their metadata here and nowhere else.
//!
//! Made for outputs that are replaced atomically: clone the previous output
//! with [`crate::clone_hardlinked`] (new directories, every file shared with
//! the previous output), update the clone, rename it into place. An update
//! therefore never writes through an existing inode: an entry whose content,
//! type, metadata or hard links change is unlinked and created anew; only
//! directories, which the clone made fresh, are changed in place.
//!
//! The path rules of a checkout hold: manifests are validated, and every
//! directory is opened from the destination's own descriptor without
//! following any symlink (see [`crate::at`]); entries are then created,
//! changed and removed through that descriptor by their bare name. Nothing
//! is written outside the destination or under a symlink.
//!
//! The work runs in phases: removals; new directories, parents first; new
//! files, symlinks and nodes, in parallel per directory; the extra paths of
//! hard link groups; last the owner, mode, xattrs and time of every
//! directory that was created, whose metadata changed or whose content
//! changed, children before parents.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, OFlags, Uid};
use rustix::io::Errno;

use crate::at;
use crate::checkout::{CheckoutMode, CheckoutOptions, set_file_time, timestamps};
use crate::diff::ChangeKind;
use crate::error::{Result, StoreError};
use crate::manifest::{Entry, EntryKind, Manifest, compare_paths};
use crate::store::Store;
use crate::variant::{FileMeta, apply_file_meta};
use crate::xattr;

/// What [`Store::update_checkout`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Entries of the old tree that are gone; a removed directory counts
    /// with everything under it.
    pub removed: usize,
    /// Entries of the new tree where the old tree had nothing.
    pub added: usize,
    /// Entries unlinked and created anew: changed content, type, metadata or
    /// hard links, or another member of a changed hard link group.
    pub replaced: usize,
    /// Existing directories whose metadata and time were set again: those
    /// whose metadata or content changed, and the root.
    pub dirs_updated: usize,
}

/// The work of an update, computed from the two manifests alone.
#[derive(Debug, Default)]
struct Plan<'a> {
    /// Old entries to remove, in manifest order; none is inside another.
    remove: Vec<&'a Entry>,
    /// New directories to create, in manifest order.
    mkdirs: Vec<&'a Entry>,
    /// New files, symlinks and nodes to create, each group's leader included.
    create: Vec<&'a Entry>,
    /// Other members of hard link groups, with their group's leader.
    link: Vec<(&'a Entry, &'a Entry)>,
    /// Directories to finish, in manifest order, each with its old entry
    /// when extended attributes it no longer has must be removed.
    finish: Vec<(&'a Entry, Option<&'a Entry>)>,
    report: UpdateReport,
}

impl<'a> Plan<'a> {
    fn new(old: &'a Manifest, new: &'a Manifest) -> Plan<'a> {
        let mut plan = Plan::default();
        let (mut fresh, changed_dirs) = plan.add_changes(old, new);

        // A hard link group with any new member is created whole: its
        // unchanged members share an inode with the old tree.
        let groups = new.canonical_groups();
        let group_of = |e: &Entry| e.hardlink.and_then(|g| groups.get(&g).copied());
        if !groups.is_empty() {
            plan.add_dirty_groups(old, new, &mut fresh, &group_of);
        }
        plan.sort_fresh(fresh, &group_of);
        plan.add_finish(new, &changed_dirs);
        plan
    }

    /// Walks the diff of `old` and `new`: counts it, lists what to remove,
    /// and returns the new entries to create and the directories whose
    /// metadata changed in place, with their old entry when the xattrs
    /// changed.
    fn add_changes(
        &mut self,
        old: &'a Manifest,
        new: &'a Manifest,
    ) -> (Vec<&'a Entry>, HashMap<&'a str, Option<&'a Entry>>) {
        let mut fresh: Vec<&Entry> = Vec::new();
        let mut changed_dirs: HashMap<&str, Option<&Entry>> = HashMap::new();
        let mut removed_dir: Option<&str> = None;
        for change in old.diff(new) {
            let path = change.path.as_str();
            match change.what {
                ChangeKind::Removed => {
                    self.report.removed += 1;
                    // The root stays; its entries are listed one by one.
                    if path.is_empty() || removed_dir.is_some_and(|d| in_subtree(path, d)) {
                        continue;
                    }
                    if let Some(entry) = old.get(path) {
                        if entry.kind.is_dir() {
                            removed_dir = Some(&entry.path);
                        }
                        self.remove.push(entry);
                    }
                }
                ChangeKind::Added => {
                    self.report.added += 1;
                    if let Some(entry) = new.get(path).filter(|_| !path.is_empty()) {
                        fresh.push(entry);
                    }
                }
                ChangeKind::Modified(m) => {
                    let (Some(before), Some(after)) = (old.get(path), new.get(path)) else {
                        continue;
                    };
                    if before.kind.is_dir() && after.kind.is_dir() {
                        changed_dirs.insert(&after.path, m.xattrs.then_some(before));
                        continue;
                    }
                    self.report.replaced += 1;
                    if before.kind.is_dir() {
                        removed_dir = Some(&before.path);
                    }
                    self.remove.push(before);
                    fresh.push(after);
                }
            }
        }
        (fresh, changed_dirs)
    }

    /// Adds to `fresh` (and replaces) the unchanged members of every hard
    /// link group that has a member in `fresh`, then sorts `fresh` and the
    /// removals back into manifest order.
    fn add_dirty_groups(
        &mut self,
        old: &'a Manifest,
        new: &'a Manifest,
        fresh: &mut Vec<&'a Entry>,
        group_of: &impl Fn(&Entry) -> Option<u32>,
    ) {
        let fresh_paths: HashSet<&str> = fresh.iter().map(|e| e.path.as_str()).collect();
        let dirty: HashSet<u32> = fresh.iter().filter_map(|e| group_of(e)).collect();
        for entry in new.entries() {
            if group_of(entry).is_some_and(|g| dirty.contains(&g))
                && !fresh_paths.contains(entry.path.as_str())
            {
                self.report.replaced += 1;
                if let Some(before) = old.get(&entry.path) {
                    self.remove.push(before);
                }
                fresh.push(entry);
            }
        }
        self.remove.sort_by(|a, b| compare_paths(&a.path, &b.path));
        fresh.sort_by(|a, b| compare_paths(&a.path, &b.path));
    }

    /// Sorts the new entries into directories to make, entries to create
    /// (the first member of each hard link group) and links to its leader.
    fn sort_fresh(&mut self, fresh: Vec<&'a Entry>, group_of: &impl Fn(&Entry) -> Option<u32>) {
        let mut leaders: HashMap<u32, &Entry> = HashMap::new();
        for entry in fresh {
            if entry.kind.is_dir() {
                self.mkdirs.push(entry);
                continue;
            }
            match group_of(entry) {
                Some(g) => match leaders.get(&g) {
                    Some(leader) => self.link.push((entry, leader)),
                    None => {
                        leaders.insert(g, entry);
                        self.create.push(entry);
                    }
                },
                None => self.create.push(entry),
            }
        }
    }

    /// Lists the directories to finish: every directory whose listing
    /// changes gets its time back, and those created or changed in place
    /// their metadata.
    fn add_finish(&mut self, new: &'a Manifest, changed_dirs: &HashMap<&str, Option<&'a Entry>>) {
        let created: HashSet<&str> = self.mkdirs.iter().map(|e| e.path.as_str()).collect();
        let mut parents: HashSet<&str> = HashSet::from([""]);
        let touched = self.remove.iter().chain(&self.mkdirs).chain(&self.create);
        for entry in touched.chain(self.link.iter().map(|(e, _)| e)) {
            if let Some(parent) = entry.parent() {
                parents.insert(parent);
            }
        }
        let mut finish: Vec<(&Entry, Option<&Entry>)> = Vec::new();
        for path in parents
            .into_iter()
            .chain(changed_dirs.keys().copied())
            .chain(created.iter().copied())
            .collect::<HashSet<&str>>()
        {
            if let Some(dir) = new.get(path).filter(|e| e.kind.is_dir()) {
                finish.push((dir, changed_dirs.get(path).copied().flatten()));
            }
        }
        finish.sort_by(|a, b| compare_paths(&a.0.path, &b.0.path));
        self.report.dirs_updated = finish
            .iter()
            .filter(|(dir, _)| !created.contains(dir.path.as_str()))
            .count();
        self.finish = finish;
    }
}

/// Whether `path` lies strictly under the directory `dir`.
fn in_subtree(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// An update in progress.
struct Update<'a> {
    store: &'a Store,
    dest: &'a Path,
    root: OwnedFd,
    opts: CheckoutOptions,
    /// Every owner is replaced by this one (`ignore_owner` without root).
    owner_override: Option<(u32, u32)>,
    /// Without root, read-only directories must be opened up to be changed.
    unprivileged: bool,
    /// Set once a hard link crossed filesystems: copy from then on.
    copy_only: AtomicBool,
}

impl Store {
    /// Turns `dest`, a checkout of `old` made with the same `opts`, into a
    /// checkout of `new`, touching only what differs (see [`Manifest::diff`]):
    /// entries `new` lacks are removed, new ones created, and entries whose
    /// content, type, symlink target, device number, metadata or hard link
    /// group changed are unlinked and created anew. Existing files are never
    /// written or chmod-ed in place, so `dest` may be a
    /// [`crate::clone_hardlinked`] copy of another checkout, which is left
    /// untouched. Every created entry, every directory whose content or
    /// metadata changed and the root get `opts.mtime`.
    ///
    /// The cost is one diff of the manifests plus work proportional to the
    /// difference. Whatever else `dest` holds (a file the manifests do not
    /// name) is left alone, unless it is inside a removed directory. On
    /// error `dest` is left partly updated: discard it.
    pub fn update_checkout(
        &self,
        old: &Manifest,
        new: &Manifest,
        dest: &Path,
        opts: CheckoutOptions,
    ) -> Result<UpdateReport> {
        new.validate()
            .map_err(|source| StoreError::InvalidManifest {
                path: dest.to_owned(),
                source,
            })?;
        self.apply_update(old, new, dest, opts)
    }

    /// [`Store::update_checkout`] once `new` is validated: the one path by
    /// which entries reach a checkout, whether `old` is the previous tree or
    /// the empty one ([`Store::checkout`]).
    pub(crate) fn apply_update(
        &self,
        old: &Manifest,
        new: &Manifest,
        dest: &Path,
        opts: CheckoutOptions,
    ) -> Result<UpdateReport> {
        let root = at::open_dir(dest).map_err(|source| match Errno::from_io_error(&source) {
            Some(Errno::NOTDIR | Errno::LOOP) => StoreError::NotADirectory {
                path: dest.to_owned(),
            },
            _ => StoreError::Read {
                path: dest.to_owned(),
                source,
            },
        })?;
        let plan = Plan::new(old, new);
        let owner_override = (opts.ignore_owner && self.owner().0 != 0).then(|| self.owner());
        let job = Update {
            store: self,
            dest,
            root,
            opts,
            owner_override,
            unprivileged: self.owner().0 != 0,
            copy_only: AtomicBool::new(opts.mode == CheckoutMode::Copy),
        };

        // Removals and new directories go one by one, in manifest order;
        // consecutive entries of one directory share its descriptor.
        let mut parent: Option<(&str, OwnedFd)> = None;
        for entry in &plan.remove {
            let (dir, name) = at::split(&entry.path);
            if parent.as_ref().is_none_or(|(open, _)| *open != dir) {
                parent = Some((dir, job.open_dir(dir, true)?));
            }
            if let Some((_, fd)) = &parent {
                job.remove(fd.as_fd(), name, entry)?;
            }
        }
        for entry in &plan.mkdirs {
            let (dir, name) = at::split(&entry.path);
            if parent.as_ref().is_none_or(|(open, _)| *open != dir) {
                parent = Some((dir, job.open_dir(dir, true)?));
            }
            if let Some((_, fd)) = &parent {
                rustix::fs::mkdirat(fd, name, Mode::from_raw_mode(0o700)).map_err(|e| {
                    StoreError::CreateDir {
                        path: job.path_of(&entry.path),
                        source: e.into(),
                    }
                })?;
            }
        }
        drop(parent);

        let mut by_dir: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for entry in &plan.create {
            by_dir
                .entry(at::split(&entry.path).0)
                .or_default()
                .push(entry);
        }
        by_dir.into_par_iter().try_for_each(|(dir, entries)| {
            let fd = job.open_dir(dir, true)?;
            entries
                .iter()
                .try_for_each(|entry| job.materialise(fd.as_fd(), entry))
        })?;
        for (entry, leader) in &plan.link {
            let (dir, name) = at::split(&entry.path);
            let (leader_dir, leader_name) = at::split(&leader.path);
            let fd = job.open_dir(dir, true)?;
            let leader_fd = job.open_dir(leader_dir, false)?;
            rustix::fs::linkat(&leader_fd, leader_name, &fd, name, AtFlags::empty()).map_err(
                |e| StoreError::Link {
                    path: job.path_of(&entry.path),
                    target: job.path_of(&leader.path),
                    source: e.into(),
                },
            )?;
        }
        for (dir, old_dir) in plan.finish.iter().rev() {
            job.finish_dir(dir, *old_dir)?;
        }
        Ok(plan.report)
    }
}

impl Update<'_> {
    fn path_of(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.dest.to_owned()
        } else {
            self.dest.join(rel)
        }
    }

    /// Opens the directory `rel` of the destination; with `writable`, makes
    /// sure entries can be added and removed in it.
    fn open_dir(&self, rel: &str, writable: bool) -> Result<OwnedFd> {
        let path = || self.path_of(rel);
        let fd = at::open_beneath(self.root.as_fd(), rel).map_err(|source| {
            match Errno::from_io_error(&source) {
                // A symlink or a non-directory where the old tree had a directory.
                Some(Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => {
                    StoreError::NotADirectory { path: path() }
                }
                _ => StoreError::Read {
                    path: path(),
                    source,
                },
            }
        })?;
        if writable && self.unprivileged {
            at::make_writable(fd.as_fd()).map_err(|source| StoreError::SetMetadata {
                path: path(),
                what: "mode",
                source,
            })?;
        }
        Ok(fd)
    }

    fn owner_of(&self, entry: &Entry) -> (u32, u32) {
        self.owner_override.unwrap_or((entry.uid, entry.gid))
    }

    fn remove(&self, dir: BorrowedFd<'_>, name: &str, entry: &Entry) -> Result<()> {
        let path = self.path_of(&entry.path);
        let removed = if entry.kind.is_dir() {
            let name = std::ffi::CString::new(name)
                .map_err(|_| StoreError::NonUtf8 { path: path.clone() })?;
            at::remove_tree(dir, &name, self.unprivileged)
        } else {
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        };
        removed.map_err(|source| StoreError::Remove { path, source })
    }

    /// Creates a file, symlink or node named by `entry` in `dir`.
    fn materialise(&self, dir: BorrowedFd<'_>, entry: &Entry) -> Result<()> {
        let name = at::split(&entry.path).1;
        let path = self.path_of(&entry.path);
        let create_err = |e: Errno| StoreError::Create {
            path: path.clone(),
            source: e.into(),
        };
        match &entry.kind {
            EntryKind::Dir => Ok(()),
            EntryKind::File { blob, size } => {
                let (uid, gid) = self.owner_of(entry);
                let meta = FileMeta {
                    mode: entry.mode,
                    uid,
                    gid,
                    xattrs: &entry.xattrs,
                };
                let linkable = entry.hardlink.is_none() && !self.copy_only.load(Ordering::Relaxed);
                if linkable && self.link_object(dir, name, blob, *size, &meta, &path)? {
                    return self.set_time(dir, name, &path);
                }
                let mut src = self.store.open_blob(blob)?;
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
                    .map_err(create_err)?;
                let mut out = File::from(fd);
                let copied = io::copy(&mut src, &mut out).map_err(|source| StoreError::Write {
                    path: path.clone(),
                    source,
                })?;
                if copied != *size {
                    drop(out);
                    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                    return Err(self.wrong_length(blob, *size, &path));
                }
                apply_file_meta(&out, &path, &meta)?;
                set_file_time(&out, &path, self.opts.mtime)
            }
            EntryKind::Symlink { target } => {
                rustix::fs::symlinkat(target.as_str(), dir, name).map_err(create_err)?;
                self.finish_node(dir, name, entry, &path, false)
            }
            EntryKind::CharDev { rdev } | EntryKind::BlockDev { rdev } => {
                let ft = if matches!(entry.kind, EntryKind::CharDev { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), *rdev)
                    .map_err(create_err)?;
                self.finish_node(dir, name, entry, &path, true)
            }
            EntryKind::Fifo | EntryKind::Socket => {
                let ft = if matches!(entry.kind, EntryKind::Fifo) {
                    FileType::Fifo
                } else {
                    FileType::Socket
                };
                rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(0o600), 0)
                    .map_err(create_err)?;
                self.finish_node(dir, name, entry, &path, true)
            }
        }
    }

    /// Hard-links the store file with `blob`'s content and `meta` (hardlink
    /// checkouts). `false` when a copy is needed instead. What was linked is
    /// checked, without following it, to be a regular file of `size` bytes.
    fn link_object(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        blob: &crate::BlobId,
        size: u64,
        meta: &FileMeta<'_>,
        path: &Path,
    ) -> Result<bool> {
        let source = self.store.linkable(blob, meta)?;
        match rustix::fs::linkat(CWD, &source, dir, name, AtFlags::empty()) {
            Ok(()) => {
                let linked =
                    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
                        StoreError::Read {
                            path: path.to_owned(),
                            source: e.into(),
                        }
                    })?;
                let regular = FileType::from_raw_mode(linked.st_mode) == FileType::RegularFile;
                if regular && linked.st_size as u64 == size {
                    return Ok(true);
                }
                let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
                if !regular {
                    // Replaced since `linkable` looked: removed and reported as damage.
                    self.store.regular_object(blob, &source)?;
                }
                Err(self.wrong_length(blob, size, path))
            }
            Err(Errno::XDEV) => {
                self.copy_only.store(true, Ordering::Relaxed);
                Ok(false)
            }
            Err(Errno::MLINK) => Ok(false),
            Err(Errno::NOENT) if !source.exists() => Err(StoreError::MissingBlob {
                id: *blob,
                path: source,
            }),
            Err(e) => Err(StoreError::Link {
                path: path.to_owned(),
                target: source,
                source: e.into(),
            }),
        }
    }

    /// The error for a file of `blob` whose object did not hold the `claimed` bytes: the blob
    /// changed (then it is removed and named as corrupt) or the tree claims another length
    /// than the blob's ([`StoreError::WrongLength`]).
    fn wrong_length(&self, blob: &crate::BlobId, claimed: u64, path: &Path) -> StoreError {
        match self.store.verified_size(blob) {
            Err(error) => error,
            Ok(actual) => StoreError::WrongLength {
                path: path.to_owned(),
                blob: *blob,
                claimed,
                actual,
            },
        }
    }

    /// Owner, mode (not for symlinks), xattrs and time of a new symlink or node.
    fn finish_node(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        entry: &Entry,
        path: &Path,
        chmod: bool,
    ) -> Result<()> {
        let (uid, gid) = self.owner_of(entry);
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| StoreError::SetMetadata {
            path: path.to_owned(),
            what: "owner",
            source: e.into(),
        })?;
        if chmod {
            rustix::fs::chmodat(
                dir,
                name,
                Mode::from_raw_mode(entry.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| StoreError::SetMetadata {
                path: path.to_owned(),
                what: "mode",
                source: e.into(),
            })?;
        }
        if !entry.xattrs.is_empty() {
            xattr::set_path(&at::entry_path(dir, name, path), &entry.xattrs)?;
        }
        self.set_time(dir, name, path)
    }

    fn set_time(&self, dir: BorrowedFd<'_>, name: &str, path: &Path) -> Result<()> {
        let Some(seconds) = self.opts.mtime else {
            return Ok(());
        };
        rustix::fs::utimensat(dir, name, &timestamps(seconds), AtFlags::SYMLINK_NOFOLLOW).map_err(
            |e| StoreError::SetMetadata {
                path: path.to_owned(),
                what: "modification time",
                source: e.into(),
            },
        )
    }

    /// Owner, mode, xattrs and time of a directory, once its content is
    /// there. `old` is its previous entry when xattrs must be dropped.
    fn finish_dir(&self, entry: &Entry, old: Option<&Entry>) -> Result<()> {
        let path = self.path_of(&entry.path);
        let fd = self.open_dir(&entry.path, false)?;
        let meta_err = |what: &'static str| {
            let path = path.clone();
            move |e: Errno| StoreError::SetMetadata {
                path,
                what,
                source: e.into(),
            }
        };
        let (uid, gid) = self.owner_of(entry);
        rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(meta_err("owner"))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(entry.mode & 0o7777))
            .map_err(meta_err("mode"))?;
        if let Some(old) = old {
            for name in old.xattrs.keys().filter(|n| !entry.xattrs.contains_key(*n)) {
                xattr::remove_fd(fd.as_fd(), &path, name)?;
            }
        }
        xattr::set_fd(fd.as_fd(), &path, &entry.xattrs)?;
        if let Some(seconds) = self.opts.mtime {
            rustix::fs::futimens(&fd, &timestamps(seconds))
                .map_err(meta_err("modification time"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn file(path: &str, content: &str) -> Entry {
        let kind = EntryKind::File {
            blob: Digest::of_bytes(content.as_bytes()),
            size: content.len() as u64,
        };
        Entry::new(path, kind, 0o644)
    }

    fn big_tree() -> Manifest {
        let mut entries = vec![Entry::new("", EntryKind::Dir, 0o755)];
        for d in 0..100 {
            entries.push(Entry::new(format!("d{d}"), EntryKind::Dir, 0o755));
            for f in 0..100 {
                entries.push(file(&format!("d{d}/f{f}"), &format!("{d}/{f}")));
            }
        }
        Manifest::from_entries(entries).unwrap()
    }

    fn paths<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<&'a str> {
        entries.into_iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn one_changed_file_plans_one_replacement() {
        let old = big_tree();
        let mut new = old.clone();
        new.insert_or_replace(file("d42/f7", "changed")).unwrap();
        let plan = Plan::new(&old, &new);
        assert_eq!(paths(plan.remove.iter().copied()), ["d42/f7"]);
        assert_eq!(paths(plan.create.iter().copied()), ["d42/f7"]);
        assert!(plan.mkdirs.is_empty() && plan.link.is_empty());
        let finish: Vec<&str> = plan.finish.iter().map(|(e, _)| e.path.as_str()).collect();
        assert_eq!(finish, ["", "d42"]);
        assert_eq!(
            plan.report,
            UpdateReport {
                replaced: 1,
                dirs_updated: 2,
                ..UpdateReport::default()
            }
        );
    }

    #[test]
    fn a_removed_directory_is_removed_once_with_its_subtree() {
        let old = big_tree();
        let mut new = old.clone();
        new.remove_path_recursive("d7");
        new.insert_or_replace(file("d7", "now a file")).unwrap();
        new.remove_path_recursive("d8");
        let plan = Plan::new(&old, &new);
        assert_eq!(paths(plan.remove.iter().copied()), ["d7", "d8"]);
        assert_eq!(paths(plan.create.iter().copied()), ["d7"]);
        // d7's 100 files, d8 and its 100 files.
        assert_eq!(plan.report.removed, 201);
        assert_eq!(plan.report.replaced, 1);
    }
}
