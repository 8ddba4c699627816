//! Tree manifests: the sorted list of entries that describes a filesystem tree.
//!
//! A manifest always satisfies these rules, checked whenever it is built,
//! edited or decoded:
//!
//! - Paths are relative, `/`-separated, with no empty, `.` or `..` component
//!   and no NUL byte. The root directory itself is the entry with the empty
//!   path `""`; it is present in every non-empty manifest and is a directory.
//! - Entries are ordered by path, comparing byte by byte with `/` ordered
//!   before every other byte; a directory is thus followed directly by its
//!   whole subtree, and a parent always comes before its children.
//! - Every entry but the root has its parent in the manifest, and that parent
//!   is a directory: no entry lives under a symlink.
//!
//! Hard link groups are numbered in path order of their first member
//! ("canonical numbering"); a group of one is no group. Editing may leave
//! numbers non-canonical; the canonical encoding and [`PartialEq`] ignore the
//! numbering and only see which entries share an inode.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::HashMap;

use crate::digest::BlobId;
use crate::error::ManifestError;

/// What an entry is, with the data that depends on its type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file whose content is a blob.
    File {
        /// The content.
        blob: BlobId,
        /// The content's length in bytes.
        size: u64,
    },
    /// A symbolic link; the target is stored as written, never resolved.
    Symlink {
        /// The link's target.
        target: String,
    },
    /// A character device.
    CharDev {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A block device.
    BlockDev {
        /// Device number (`st_rdev`).
        rdev: u64,
    },
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
}

impl EntryKind {
    /// A short name of the type: `directory`, `file`, `symlink`...
    pub fn type_name(&self) -> &'static str {
        match self {
            EntryKind::Dir => "directory",
            EntryKind::File { .. } => "file",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::CharDev { .. } => "character device",
            EntryKind::BlockDev { .. } => "block device",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, EntryKind::Dir)
    }
}

/// One file, directory, link or node of a tree. There are no timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative `/`-separated path; `""` is the root directory.
    pub path: String,
    /// The type and its data.
    pub kind: EntryKind,
    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Extended attributes, except overlayfs bookkeeping (`trusted.overlay.*`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Hard link group: entries with the same number are one inode.
    pub hardlink: Option<u32>,
}

impl Entry {
    /// An entry owned by root with no xattrs and no hard link.
    pub fn new(path: impl Into<String>, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
            hardlink: None,
        }
    }

    /// The path as users see it: `/` for the root, `/etc/hostname` otherwise.
    pub fn display_path(&self) -> String {
        display_path(&self.path)
    }

    /// The parent's path (`""` for top-level entries), `None` for the root.
    pub fn parent(&self) -> Option<&str> {
        parent_of(&self.path)
    }

    /// The blob of a regular file.
    pub fn blob(&self) -> Option<&BlobId> {
        match &self.kind {
            EntryKind::File { blob, .. } => Some(blob),
            _ => None,
        }
    }

    /// Whether `self` and `other` could be the same inode: everything but
    /// path and group number agrees. `None` if so, else what differs.
    pub(crate) fn inode_difference(&self, other: &Entry) -> Option<&'static str> {
        if self.kind != other.kind {
            Some("content or type")
        } else if self.mode != other.mode {
            Some("mode")
        } else if (self.uid, self.gid) != (other.uid, other.gid) {
            Some("owner")
        } else if self.xattrs != other.xattrs {
            Some("extended attributes")
        } else {
            None
        }
    }
}

/// `/` for the root, `/a/b` for `a/b`.
pub(crate) fn display_path(path: &str) -> String {
    format!("/{path}")
}

/// The parent of a manifest path: `""` for a top-level entry, `None` for the root.
pub(crate) fn parent_of(path: &str) -> Option<&str> {
    if path.is_empty() {
        None
    } else {
        Some(path.rsplit_once('/').map_or("", |(parent, _)| parent))
    }
}

/// Compares paths in manifest order: byte order with `/` before every byte.
pub fn compare_paths(a: &str, b: &str) -> Ordering {
    let rank = |byte: u8| if byte == b'/' { 0 } else { byte };
    a.bytes().map(rank).cmp(b.bytes().map(rank))
}

/// Checks a path against the manifest path rules.
pub fn validate_path(path: &str) -> Result<(), ManifestError> {
    let invalid = |reason| {
        Err(ManifestError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return Ok(());
    }
    if path.starts_with('/') {
        return invalid("it is absolute");
    }
    if path.contains('\0') {
        return invalid("it contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return invalid("it has an empty component"),
            "." | ".." => return invalid("it has a `.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

/// A path in manifest order, the key of [`Manifest`]'s map.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathKey(String);

impl Ord for PathKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_paths(&self.0, &other.0)
    }
}

impl PartialOrd for PathKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A tree: entries in manifest order (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    entries: BTreeMap<PathKey, Entry>,
}

impl PartialEq for Manifest {
    /// Equal when the canonical encodings are: same entries, same hard link
    /// structure, whatever the group numbers.
    fn eq(&self, other: &Manifest) -> bool {
        self.len() == other.len() && self.encode_canonical() == other.encode_canonical()
    }
}

impl Eq for Manifest {}

impl Manifest {
    /// An empty manifest (not even a root directory).
    pub fn new() -> Manifest {
        Manifest::default()
    }

    /// Builds a manifest from entries in any order, checking every rule and
    /// numbering hard link groups canonically.
    pub fn from_entries(
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Manifest, ManifestError> {
        let mut entries: Vec<Entry> = entries.into_iter().collect();
        for entry in &entries {
            validate_path(&entry.path)?;
        }
        // Sorting first lets the map be built in one pass.
        entries.sort_unstable_by(|a, b| compare_paths(&a.path, &b.path));
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].path == pair[1].path) {
            return Err(ManifestError::Duplicate {
                path: pair[0].path.clone(),
            });
        }
        let map = entries
            .into_iter()
            .map(|e| (PathKey(e.path.clone()), e))
            .collect();
        Manifest::from_map(map)
    }

    fn from_map(entries: BTreeMap<PathKey, Entry>) -> Result<Manifest, ManifestError> {
        let mut manifest = Manifest { entries };
        manifest.check_structure()?;
        manifest.canonicalize_hardlinks();
        manifest.check_hardlinks()?;
        Ok(manifest)
    }

    /// Builds a manifest from entries that must already be in manifest order
    /// with unique paths; used by the decoder, which rejects anything else.
    pub(crate) fn from_sorted(entries: Vec<Entry>) -> Result<Manifest, ManifestError> {
        for pair in entries.windows(2) {
            match compare_paths(&pair[0].path, &pair[1].path) {
                Ordering::Less => {}
                Ordering::Equal => {
                    return Err(ManifestError::Duplicate {
                        path: pair[1].path.clone(),
                    });
                }
                Ordering::Greater => {
                    return Err(ManifestError::OutOfOrder {
                        path: pair[1].path.clone(),
                    });
                }
            }
        }
        for entry in &entries {
            validate_path(&entry.path)?;
        }
        let map = entries
            .into_iter()
            .map(|e| (PathKey(e.path.clone()), e))
            .collect();
        Manifest::from_map(map)
    }

    /// Number of entries, the root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in manifest order.
    pub fn entries(
        &self,
    ) -> impl ExactSizeIterator<Item = &Entry> + DoubleEndedIterator + Clone + '_ {
        self.entries.values()
    }

    /// The entry at `path` (`""` for the root).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&PathKey(path.to_owned()))
    }

    /// The root directory's entry.
    pub fn root(&self) -> Option<&Entry> {
        self.get("")
    }

    /// The entry at `path` followed by its whole subtree, in manifest order.
    pub fn subtree<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .range(PathKey(path.to_owned())..)
            .map(|(_, entry)| entry)
            .take_while(move |entry| is_in_subtree(&entry.path, path))
    }

    /// The distinct blobs of the tree's files with their sizes.
    pub fn blobs(&self) -> impl Iterator<Item = (&BlobId, u64)> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .values()
            .filter_map(move |entry| match &entry.kind {
                EntryKind::File { blob, size } if seen.insert(blob) => Some((blob, *size)),
                _ => None,
            })
    }

    /// Inserts `entry`, replacing any entry at its path, and returns the old one.
    ///
    /// The parent must be a directory of the manifest (the root needs none
    /// and must be a directory). Replacing a directory by anything else drops
    /// the directory's subtree. Hard link group numbers are taken as given:
    /// to join an existing group use the number its members carry.
    pub fn insert_or_replace(&mut self, entry: Entry) -> Result<Option<Entry>, ManifestError> {
        validate_path(&entry.path)?;
        match parent_of(&entry.path) {
            None if !entry.kind.is_dir() => return Err(ManifestError::RootNotDir),
            None => {}
            Some(parent) => self.check_parent(&entry.path, parent)?,
        }
        if entry.kind.is_dir() && entry.hardlink.is_some() {
            return Err(ManifestError::HardlinkedDir { path: entry.path });
        }
        let key = PathKey(entry.path.clone());
        let was_dir = self.entries.get(&key).is_some_and(|old| old.kind.is_dir());
        if was_dir && !entry.kind.is_dir() {
            self.remove_path_recursive(&entry.path);
        }
        Ok(self.entries.insert(key, entry))
    }

    /// Removes the entry at `path` and everything under it; returns how many
    /// entries were removed. Removing the root empties the manifest.
    pub fn remove_path_recursive(&mut self, path: &str) -> usize {
        if path.is_empty() {
            let n = self.entries.len();
            self.entries.clear();
            return n;
        }
        let doomed: Vec<PathKey> = self
            .entries
            .range(PathKey(path.to_owned())..)
            .map(|(key, _)| key)
            .take_while(|key| is_in_subtree(&key.0, path))
            .cloned()
            .collect();
        for key in &doomed {
            self.entries.remove(key);
        }
        doomed.len()
    }

    /// Keeps only the entries for which `keep` is true, in one pass: an entry
    /// that is not kept goes with everything under it (its subtree is not
    /// shown to `keep`). Returns how many entries were removed. Removing many
    /// paths this way costs one walk instead of one lookup per path.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) -> usize {
        let mut removed = 0;
        let mut removed_dir: Option<String> = None;
        self.entries.retain(|key, entry| {
            if let Some(dir) = &removed_dir {
                if is_in_subtree(&key.0, dir) {
                    removed += 1;
                    return false;
                }
                removed_dir = None;
            }
            if keep(entry) {
                return true;
            }
            if entry.kind.is_dir() {
                removed_dir = Some(key.0.clone());
            }
            removed += 1;
            false
        });
        removed
    }

    /// Renumbers hard link groups canonically: in path order of their first
    /// member, from 0, dropping groups of one member.
    pub fn canonicalize_hardlinks(&mut self) {
        let numbers = self.canonical_groups();
        for entry in self.entries.values_mut() {
            entry.hardlink = entry.hardlink.and_then(|g| numbers.get(&g).copied());
        }
    }

    /// Maps each group number with two or more members to its canonical number.
    pub(crate) fn canonical_groups(&self) -> HashMap<u32, u32> {
        let mut counts: HashMap<u32, usize> = HashMap::new();
        for group in self.entries.values().filter_map(|e| e.hardlink) {
            *counts.entry(group).or_default() += 1;
        }
        let mut numbers = HashMap::new();
        for group in self.entries.values().filter_map(|e| e.hardlink) {
            if counts[&group] > 1 && !numbers.contains_key(&group) {
                let next = numbers.len() as u32;
                numbers.insert(group, next);
            }
        }
        numbers
    }

    /// Checks every rule, including that hard-linked entries agree on
    /// everything an inode holds. Editing keeps the structural rules; hard
    /// link agreement is checked here and whenever a manifest is stored or
    /// checked out.
    pub fn validate(&self) -> Result<(), ManifestError> {
        self.check_structure()?;
        self.check_hardlinks()
    }

    fn check_structure(&self) -> Result<(), ManifestError> {
        // One key buffer for every parent lookup.
        let mut probe = PathKey(String::new());
        for entry in self.entries.values() {
            validate_path(&entry.path)?;
            match parent_of(&entry.path) {
                None if !entry.kind.is_dir() => return Err(ManifestError::RootNotDir),
                None => {}
                Some(parent) => {
                    probe.0.clear();
                    probe.0.push_str(parent);
                    parent_check(&entry.path, parent, self.entries.get(&probe))?;
                }
            }
            if entry.kind.is_dir() && entry.hardlink.is_some() {
                return Err(ManifestError::HardlinkedDir {
                    path: entry.path.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_parent(&self, path: &str, parent: &str) -> Result<(), ManifestError> {
        parent_check(path, parent, self.get(parent))
    }

    fn check_hardlinks(&self) -> Result<(), ManifestError> {
        let mut first: HashMap<u32, &Entry> = HashMap::new();
        for entry in self.entries.values() {
            let Some(group) = entry.hardlink else {
                continue;
            };
            match first.get(&group) {
                None => {
                    first.insert(group, entry);
                }
                Some(leader) => {
                    if let Some(what) = leader.inode_difference(entry) {
                        return Err(ManifestError::HardlinkMismatch {
                            first: leader.display_path(),
                            path: entry.display_path(),
                            what,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Checks that the entry at `path` has its parent `parent`, found as `found`,
/// and that it is a directory.
fn parent_check(path: &str, parent: &str, found: Option<&Entry>) -> Result<(), ManifestError> {
    match found {
        None => Err(ManifestError::MissingParent {
            path: path.to_owned(),
            parent: display_path(parent),
        }),
        Some(p) if !p.kind.is_dir() => Err(ManifestError::ParentNotDir {
            path: path.to_owned(),
            parent: display_path(parent),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether `path` is `root` or lies under it.
fn is_in_subtree(path: &str, root: &str) -> bool {
    root.is_empty()
        || path == root
        || (path.len() > root.len()
            && path.starts_with(root)
            && path.as_bytes()[root.len()] == b'/')
}

#[cfg(test)]
mod tests {
    #[test]
    fn retain_drops_an_entry_with_its_subtree_in_one_pass() {
        use crate::digest::Digest;
        let file = |path: &str| {
            Entry::new(
                path,
                EntryKind::File {
                    blob: Digest::of_bytes(path.as_bytes()),
                    size: 1,
                },
                0o644,
            )
        };
        let mut m = Manifest::from_entries([
            Entry::new("", EntryKind::Dir, 0o755),
            Entry::new("a", EntryKind::Dir, 0o755),
            Entry::new("a/b", EntryKind::Dir, 0o755),
            file("a/b/c"),
            file("a/d"),
            Entry::new("a-z", EntryKind::Dir, 0o755),
            file("a-z/e"),
        ])
        .unwrap();
        let removed = m.retain(|entry| entry.path != "a/b" && entry.path != "a-z/e");
        assert_eq!(removed, 3);
        let left: Vec<&str> = m.entries().map(|e| e.path.as_str()).collect();
        assert_eq!(left, vec!["", "a", "a/d", "a-z"]);
        m.validate().unwrap();
    }

    use super::*;
    use crate::digest::Digest;

    fn file(path: &str, content: &[u8]) -> Entry {
        Entry::new(
            path,
            EntryKind::File {
                blob: Digest::of_bytes(content),
                size: content.len() as u64,
            },
            0o644,
        )
    }

    fn dir(path: &str) -> Entry {
        Entry::new(path, EntryKind::Dir, 0o755)
    }

    fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(
            path,
            EntryKind::Symlink {
                target: target.to_owned(),
            },
            0o777,
        )
    }

    fn paths(m: &Manifest) -> Vec<&str> {
        m.entries().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn order_puts_a_directory_right_before_its_subtree() {
        let m = Manifest::from_entries(vec![
            file("a-c", b"1"),
            file("a/b", b"2"),
            dir("a"),
            file("ab", b"3"),
            dir(""),
        ])
        .unwrap();
        assert_eq!(paths(&m), ["", "a", "a/b", "a-c", "ab"]);
        let sub: Vec<&str> = m.subtree("a").map(|e| e.path.as_str()).collect();
        assert_eq!(sub, ["a", "a/b"]);
        assert_eq!(m.subtree("").count(), 5);
    }

    #[test]
    fn invalid_paths_are_rejected() {
        for bad in ["/etc", "../x", "a/../b", "a//b", "a/", "./a", "a/.", "a\0b"] {
            let err = Manifest::from_entries(vec![dir(""), file(bad, b"x")]).unwrap_err();
            assert!(
                matches!(err, ManifestError::InvalidPath { .. }),
                "{bad}: {err}"
            );
        }
        let mut m = Manifest::from_entries(vec![dir("")]).unwrap();
        assert!(m.insert_or_replace(file("../escape", b"x")).is_err());
    }

    #[test]
    fn entries_under_a_symlink_or_without_parent_are_rejected() {
        let err = Manifest::from_entries(vec![
            dir(""),
            symlink("etc", "/tmp"),
            file("etc/passwd", b"x"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            ManifestError::ParentNotDir {
                path: "etc/passwd".to_owned(),
                parent: "/etc".to_owned()
            }
        );
        let err = Manifest::from_entries(vec![dir(""), file("usr/bin/sh", b"x")]).unwrap_err();
        assert!(matches!(err, ManifestError::MissingParent { .. }), "{err}");
        let err = Manifest::from_entries(vec![file("", b"x")]).unwrap_err();
        assert_eq!(err, ManifestError::RootNotDir);
        let err = Manifest::from_entries(vec![dir(""), dir("a"), dir("a")]).unwrap_err();
        assert!(matches!(err, ManifestError::Duplicate { .. }), "{err}");

        let mut m = Manifest::from_entries(vec![dir(""), symlink("lib", "usr/lib")]).unwrap();
        let err = m.insert_or_replace(file("lib/libc.so", b"x")).unwrap_err();
        assert!(matches!(err, ManifestError::ParentNotDir { .. }), "{err}");
    }

    #[test]
    fn editing_keeps_the_rules() {
        let mut m = Manifest::from_entries(vec![
            dir(""),
            dir("etc"),
            file("etc/a", b"a"),
            dir("etc/d"),
            file("etc/d/x", b"x"),
            file("etc-b", b"b"),
        ])
        .unwrap();
        // Replacing a file returns the old entry.
        let old = m.insert_or_replace(file("etc/a", b"new")).unwrap().unwrap();
        assert_eq!(old.blob(), Some(&Digest::of_bytes(b"a")));
        assert_eq!(
            m.get("etc/a").unwrap().blob(),
            Some(&Digest::of_bytes(b"new"))
        );
        // Replacing a directory by a file drops its subtree.
        m.insert_or_replace(file("etc/d", b"now a file")).unwrap();
        assert!(m.get("etc/d/x").is_none());
        // Removing recursively leaves siblings that share a prefix.
        assert_eq!(m.remove_path_recursive("etc"), 3);
        assert_eq!(paths(&m), ["", "etc-b"]);
        assert_eq!(m.remove_path_recursive("nothing"), 0);
        m.validate().unwrap();
        assert_eq!(m.remove_path_recursive(""), 2);
        assert!(m.is_empty());
    }

    #[test]
    fn hardlink_groups_are_renumbered_and_checked() {
        let mut a = file("b", b"same");
        a.hardlink = Some(7);
        let mut b = file("a", b"same");
        b.hardlink = Some(7);
        let mut lonely = file("c", b"c");
        lonely.hardlink = Some(3);
        let m = Manifest::from_entries(vec![dir(""), a.clone(), b, lonely]).unwrap();
        let groups: Vec<Option<u32>> = m.entries().map(|e| e.hardlink).collect();
        assert_eq!(groups, [None, Some(0), Some(0), None]);

        let mut mismatch = file("d", b"other");
        mismatch.hardlink = Some(7);
        let err = Manifest::from_entries(vec![dir(""), a, mismatch]).unwrap_err();
        assert!(
            matches!(err, ManifestError::HardlinkMismatch { .. }),
            "{err}"
        );

        let mut linked_dir = dir("x");
        linked_dir.hardlink = Some(1);
        assert!(Manifest::from_entries(vec![dir(""), linked_dir]).is_err());
    }

    #[test]
    fn equality_ignores_group_numbering() {
        let mut x = Manifest::from_entries(vec![dir("")]).unwrap();
        let mut y = x.clone();
        for (m, group) in [(&mut x, 5), (&mut y, 9)] {
            for path in ["p", "q"] {
                let mut e = file(path, b"linked");
                e.hardlink = Some(group);
                m.insert_or_replace(e).unwrap();
            }
        }
        assert_eq!(x, y);
        x.canonicalize_hardlinks();
        assert_eq!(x.get("q").unwrap().hardlink, Some(0));
        assert_eq!(x, y);
    }

    proptest::proptest! {
        /// Manifest order is component-wise order: a subtree is contiguous.
        #[test]
        fn order_is_component_wise(a in "[a-c./-]{0,6}", b in "[a-c./-]{0,6}") {
            let components = |p: &str| p.split('/').map(str::to_owned).collect::<Vec<_>>();
            proptest::prop_assert_eq!(compare_paths(&a, &b), components(&a).cmp(&components(&b)));
        }
    }

    #[test]
    fn blobs_are_listed_once() {
        let m = Manifest::from_entries(vec![
            dir(""),
            file("a", b"x"),
            file("b", b"x"),
            file("c", b"y"),
        ])
        .unwrap();
        assert_eq!(m.blobs().count(), 2);
    }
}
