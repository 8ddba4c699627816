//! Differences between two manifests, for `graph explain` and for people.

use std::collections::HashMap;
use std::fmt;

use crate::manifest::{Entry, EntryKind, Manifest, compare_paths, display_path};

/// One path that differs between two manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The manifest path (`""` for the root).
    pub path: String,
    /// How it differs.
    pub what: ChangeKind,
}

/// How a path differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Only in the newer manifest.
    Added,
    /// Only in the older manifest.
    Removed,
    /// In both, with differences.
    Modified(Modification),
}

/// What differs about an entry present in both manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modification {
    /// The type changed (e.g. file to symlink); the other fields then only
    /// report metadata.
    pub kind: bool,
    /// Both are files with different contents.
    pub content: bool,
    /// Both are symlinks with different targets.
    pub target: bool,
    /// Both are device nodes with different device numbers.
    pub rdev: Option<(u64, u64)>,
    /// Permission bits, old and new.
    pub mode: Option<(u32, u32)>,
    /// `(uid, gid)`, old and new.
    pub owner: Option<((u32, u32), (u32, u32))>,
    /// Extended attributes differ.
    pub xattrs: bool,
    /// The entry joined, left or changed its hard link group.
    pub links: bool,
}

impl Modification {
    fn is_empty(&self) -> bool {
        *self == Modification::default()
    }
}

impl Manifest {
    /// The changes that turn `self` into `newer`, in manifest order. A
    /// removed or added directory lists its whole subtree too.
    pub fn diff(&self, newer: &Manifest) -> Vec<Change> {
        let old_links = link_leaders(self);
        let new_links = link_leaders(newer);
        let mut changes = Vec::new();
        let mut old = self.entries().peekable();
        let mut new = newer.entries().peekable();
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(a), Some(b)) => compare_paths(&a.path, &b.path),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some(a) = old.next() {
                        changes.push(Change {
                            path: a.path.clone(),
                            what: ChangeKind::Removed,
                        });
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some(b) = new.next() {
                        changes.push(Change {
                            path: b.path.clone(),
                            what: ChangeKind::Added,
                        });
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some(a), Some(b)) = (old.next(), new.next()) {
                        let m = compare(
                            a,
                            b,
                            old_links.get(a.path.as_str()),
                            new_links.get(b.path.as_str()),
                        );
                        if !m.is_empty() {
                            changes.push(Change {
                                path: a.path.clone(),
                                what: ChangeKind::Modified(m),
                            });
                        }
                    }
                }
            }
        }
        changes
    }
}

/// For each hard-linked entry, the path of its group's first member.
fn link_leaders(manifest: &Manifest) -> HashMap<&str, &str> {
    let groups = manifest.canonical_groups();
    let mut first: HashMap<u32, &str> = HashMap::new();
    let mut leaders = HashMap::new();
    for entry in manifest.entries() {
        if let Some(group) = entry.hardlink.filter(|g| groups.contains_key(g)) {
            let leader = *first.entry(group).or_insert(entry.path.as_str());
            leaders.insert(entry.path.as_str(), leader);
        }
    }
    leaders
}

fn compare(a: &Entry, b: &Entry, a_link: Option<&&str>, b_link: Option<&&str>) -> Modification {
    let mut m = Modification::default();
    match (&a.kind, &b.kind) {
        (EntryKind::File { blob: x, .. }, EntryKind::File { blob: y, .. }) => m.content = x != y,
        (EntryKind::Symlink { target: x }, EntryKind::Symlink { target: y }) => m.target = x != y,
        (EntryKind::CharDev { rdev: x }, EntryKind::CharDev { rdev: y })
        | (EntryKind::BlockDev { rdev: x }, EntryKind::BlockDev { rdev: y }) => {
            m.rdev = (x != y).then_some((*x, *y));
        }
        (x, y) => m.kind = std::mem::discriminant(x) != std::mem::discriminant(y),
    }
    m.mode = (a.mode != b.mode).then_some((a.mode, b.mode));
    m.owner = ((a.uid, a.gid) != (b.uid, b.gid)).then_some(((a.uid, a.gid), (b.uid, b.gid)));
    m.xattrs = a.xattrs != b.xattrs;
    m.links = a_link != b_link;
    m
}

impl fmt::Display for Change {
    /// `added /etc/foo`, `removed /etc/foo`, or
    /// `changed /etc/foo: content, mode 0644 -> 0755`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = display_path(&self.path);
        match &self.what {
            ChangeKind::Added => write!(f, "added {path}"),
            ChangeKind::Removed => write!(f, "removed {path}"),
            ChangeKind::Modified(m) => write!(f, "changed {path}: {m}"),
        }
    }
}

impl fmt::Display for Modification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.kind {
            parts.push("type".to_owned());
        }
        if self.content {
            parts.push("content".to_owned());
        }
        if self.target {
            parts.push("symlink target".to_owned());
        }
        if let Some((old, new)) = self.rdev {
            parts.push(format!(
                "device {}:{} -> {}:{}",
                rustix::fs::major(old),
                rustix::fs::minor(old),
                rustix::fs::major(new),
                rustix::fs::minor(new)
            ));
        }
        if let Some((old, new)) = self.mode {
            parts.push(format!("mode {old:04o} -> {new:04o}"));
        }
        if let Some(((ou, og), (nu, ng))) = self.owner {
            parts.push(format!("owner {ou}:{og} -> {nu}:{ng}"));
        }
        if self.xattrs {
            parts.push("extended attributes".to_owned());
        }
        if self.links {
            parts.push("hard links".to_owned());
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn file(path: &str, content: &[u8], mode: u32) -> Entry {
        Entry::new(
            path,
            EntryKind::File {
                blob: Digest::of_bytes(content),
                size: content.len() as u64,
            },
            mode,
        )
    }

    fn tree(entries: Vec<Entry>) -> Manifest {
        let mut all = vec![
            Entry::new("", EntryKind::Dir, 0o755),
            Entry::new("etc", EntryKind::Dir, 0o755),
        ];
        all.extend(entries);
        Manifest::from_entries(all).unwrap()
    }

    #[test]
    fn diff_lists_each_change_readably() {
        let mut owned = file("etc/owned", b"o", 0o644);
        owned.uid = 0;
        let mut owned_new = owned.clone();
        owned_new.uid = 1000;
        owned_new.gid = 100;
        let mut attr = file("etc/attr", b"a", 0o644);
        attr.xattrs.insert("user.x".to_owned(), b"1".to_vec());
        let old = tree(vec![
            file("etc/foo", b"one", 0o644),
            file("etc/gone", b"g", 0o644),
            file("etc/same", b"s", 0o644),
            owned,
            file("etc/attr", b"a", 0o644),
            Entry::new("etc/link", EntryKind::Symlink { target: "a".into() }, 0o777),
            Entry::new(
                "etc/tty",
                EntryKind::CharDev {
                    rdev: rustix::fs::makedev(4, 0),
                },
                0o620,
            ),
            file("etc/type", b"t", 0o644),
        ]);
        let new = tree(vec![
            file("etc/foo", b"two", 0o755),
            file("etc/new", b"n", 0o644),
            file("etc/same", b"s", 0o644),
            owned_new,
            attr,
            Entry::new("etc/link", EntryKind::Symlink { target: "b".into() }, 0o777),
            Entry::new(
                "etc/tty",
                EntryKind::CharDev {
                    rdev: rustix::fs::makedev(4, 1),
                },
                0o620,
            ),
            Entry::new("etc/type", EntryKind::Dir, 0o755),
        ]);
        let lines: Vec<String> = old.diff(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "changed /etc/attr: extended attributes",
                "changed /etc/foo: content, mode 0644 -> 0755",
                "removed /etc/gone",
                "changed /etc/link: symlink target",
                "added /etc/new",
                "changed /etc/owned: owner 0:0 -> 1000:100",
                "changed /etc/tty: device 4:0 -> 4:1",
                "changed /etc/type: type, mode 0644 -> 0755",
            ]
        );
        assert!(new.diff(&new).is_empty());
        let back: Vec<String> = new.diff(&old).iter().map(ToString::to_string).collect();
        assert!(back.contains(&"added /etc/gone".to_owned()), "{back:?}");
    }

    #[test]
    fn diff_sees_hard_links_change() {
        let linked = |path: &str| {
            let mut e = file(path, b"x", 0o644);
            e.hardlink = Some(1);
            e
        };
        let old = tree(vec![linked("etc/a"), linked("etc/b")]);
        let new = tree(vec![file("etc/a", b"x", 0o644), file("etc/b", b"x", 0o644)]);
        let lines: Vec<String> = old.diff(&new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            ["changed /etc/a: hard links", "changed /etc/b: hard links"]
        );
    }

    #[test]
    fn removed_directory_lists_its_subtree() {
        let old = tree(vec![
            Entry::new("etc/d", EntryKind::Dir, 0o755),
            file("etc/d/x", b"x", 0o644),
        ]);
        let new = tree(vec![]);
        let changes = old.diff(&new);
        assert_eq!(changes.len(), 2);
        assert!(changes.iter().all(|c| c.what == ChangeKind::Removed));
        assert_eq!(changes[0].to_string(), "removed /etc/d");
    }
}
