//! Listing a tree for comparisons: one line of facts per path, so that two listings are equal
//! exactly when the facts a test cares about are.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Which facts of each entry a [`tree_listing`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facts {
    /// Its type only (`dir`, `file`, `symlink`, `other`): which paths exist.
    Kinds,
    /// What a bit-identical copy shares: type and mode, owner, mtime, and a file's blake3 or a
    /// symlink's target.
    Copy,
    /// Whether a file was written anew, without reading it: type and mode, owner, a file's
    /// size and inode number, a symlink's target.
    Inodes,
    /// Everything observable but the link count and ctime: inode, type and mode, owner, size,
    /// mtime to the nanosecond, content or target, and extended attributes. Two equal listings
    /// mean nothing was written through.
    Everything,
}

/// Each path of a tree, relative to its root (the root itself is the empty path), with its facts.
pub type Listing = BTreeMap<PathBuf, String>;

/// Every path under `root` with its `facts`.
pub fn tree_listing(root: &Path, facts: Facts) -> Listing {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()));
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            (relative, describe(path, facts))
        })
        .collect()
}

/// Panics unless the two listings are equal, naming the first entries each has that the other
/// has not (a whole listing of an image is too long to read in a failure).
#[track_caller]
pub fn assert_same_tree(actual: &Listing, expected: &Listing) {
    if actual == expected {
        return;
    }
    let only = |one: &Listing, other: &Listing| -> Vec<String> {
        one.iter()
            .filter(|(path, facts)| other.get(*path) != Some(facts))
            .take(10)
            .map(|(path, facts)| format!("{} {facts}", path.display()))
            .collect()
    };
    panic!(
        "the trees differ:\n  only in the output: {:#?}\n  only in the expected tree: {:#?}",
        only(actual, expected),
        only(expected, actual)
    );
}

fn describe(path: &Path, facts: Facts) -> String {
    let meta = path
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    let kind = meta.file_type();
    let content = || {
        if kind.is_symlink() {
            format!("-> {}", std::fs::read_link(path).unwrap().display())
        } else if kind.is_file() {
            blake3::hash(&std::fs::read(path).unwrap())
                .to_hex()
                .to_string()
        } else {
            String::new()
        }
    };
    let owner = format!("{:o} {}:{}", meta.mode(), meta.uid(), meta.gid());
    match facts {
        Facts::Kinds => if kind.is_dir() {
            "dir"
        } else if kind.is_file() {
            "file"
        } else if kind.is_symlink() {
            "symlink"
        } else {
            "other"
        }
        .to_string(),
        Facts::Copy => format!("{owner} {} {}", meta.mtime(), content()),
        Facts::Inodes => {
            let place = if kind.is_symlink() {
                content()
            } else if kind.is_file() {
                format!("{} {}", meta.len(), meta.ino())
            } else {
                String::new()
            };
            format!("{owner} {place}")
        }
        Facts::Everything => format!(
            "ino {} {owner} size {} mtime {}.{} {} {:?}",
            meta.ino(),
            if kind.is_dir() { 0 } else { meta.size() },
            meta.mtime(),
            meta.mtime_nsec(),
            content(),
            xattrs(path)
        ),
    }
}

/// The extended attributes of `path` (not following a symlink); none where the filesystem has
/// none.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(len) => len,
        Err(rustix::io::Errno::NOTSUP) => return BTreeMap::new(),
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    names[..len]
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|raw| {
            let name = String::from_utf8(raw.to_vec()).unwrap();
            let mut value = vec![0u8; 4096];
            let n = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap();
            value.truncate(n);
            (name, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_sees_contents_kinds_and_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "one").unwrap();
        std::os::unix::fs::symlink("d/f", root.join("l")).unwrap();
        let kinds = tree_listing(root, Facts::Kinds);
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [("", "dir"), ("d", "dir"), ("d/f", "file"), ("l", "symlink")]
                .map(|(path, kind)| (PathBuf::from(path), kind.to_string()))
        );
        let copy = tree_listing(root, Facts::Copy);
        let inodes = tree_listing(root, Facts::Inodes);
        let everything = tree_listing(root, Facts::Everything);
        assert!(copy[Path::new("l")].ends_with(" -> d/f"));
        // Written anew with the same bytes and mtime: only the inode tells.
        let mtime = std::fs::metadata(root.join("d/f"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(root.join("d/g"), "one").unwrap();
        let file = std::fs::File::options()
            .write(true)
            .open(root.join("d/g"))
            .unwrap();
        file.set_modified(mtime).unwrap();
        std::fs::rename(root.join("d/g"), root.join("d/f")).unwrap();
        assert_eq!(
            tree_listing(root, Facts::Copy)[Path::new("d/f")],
            copy[Path::new("d/f")]
        );
        assert_ne!(tree_listing(root, Facts::Inodes), inodes);
        assert_ne!(tree_listing(root, Facts::Everything), everything);
    }
}
