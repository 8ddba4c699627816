//! Filesystem calls relative to directory descriptors, for changing a tree
//! in place without ever following a symlink out of it.
//!
//! A directory of the tree is opened from the tree's root descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or one component at a
//! time with `O_NOFOLLOW` on kernels without `openat2`; entries are then
//! created, changed and removed through that descriptor by their bare name.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Flags of every directory opened here: read-only, never a symlink.
pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Cleared once `openat2` turns out to be missing (or filtered).
static HAVE_OPENAT2: AtomicBool = AtomicBool::new(true);

/// Opens the directory at `path`, which must not be a symlink itself.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(io::Error::from)
}

/// Opens the directory at the manifest path `rel` (`""` for `root` itself)
/// below `root`, following no symlink on the way.
pub(crate) fn open_beneath(root: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    let target = if rel.is_empty() { "." } else { rel };
    if HAVE_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        match rustix::fs::openat2(root, target, DIR_FLAGS, Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            // Missing, or refused by a seccomp filter.
            Err(Errno::NOSYS | Errno::PERM) => HAVE_OPENAT2.store(false, Ordering::Relaxed),
            // A concurrent rename somewhere: the walk below copes.
            Err(Errno::AGAIN | Errno::XDEV) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut dir = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty())?;
    for component in rel.split('/').filter(|c| !c.is_empty()) {
        dir = rustix::fs::openat(&dir, component, DIR_FLAGS, Mode::empty())?;
    }
    Ok(dir)
}

/// A manifest path's parent and last component: `("a/b", "c")` for `a/b/c`,
/// `("", "c")` for `c`.
pub(crate) fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// A path naming the entry `name` of the open directory `dir` that
/// path-only calls (`lsetxattr`) can use without resolving the directory's
/// path again: `/proc/self/fd/<fd>/<name>` where procfs is mounted, else
/// `fallback`.
pub(crate) fn entry_path(dir: BorrowedFd<'_>, name: &str, fallback: &Path) -> PathBuf {
    static PROC: OnceLock<bool> = OnceLock::new();
    if *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
    } else {
        fallback.to_owned()
    }
}

/// The names and types of a directory's entries, without `.` and `..`.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, FileType)>> {
    let mut entries = Vec::new();
    for item in rustix::fs::Dir::read_from(dir)? {
        let item = item?;
        let name = item.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        entries.push((name.to_owned(), item.file_type()));
    }
    Ok(entries)
}

/// Whether an entry listed with type `ty` is a directory (asking the
/// filesystem when the listing does not say).
pub(crate) fn is_dir(dir: BorrowedFd<'_>, name: &CStr, ty: FileType) -> io::Result<bool> {
    Ok(match ty {
        FileType::Directory => true,
        FileType::Unknown => {
            let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        }
        _ => false,
    })
}

/// `name` as a path component, for messages.
pub(crate) fn os(name: &CStr) -> &OsStr {
    OsStr::from_bytes(name.to_bytes())
}

/// Gives the owner write and search permission on a directory that lacks
/// them, so that entries can be added and removed without root; the caller
/// sets the final mode afterwards.
pub(crate) fn make_writable(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mode = rustix::fs::fstat(dir)?.st_mode;
    if mode & 0o300 != 0o300 {
        rustix::fs::fchmod(dir, Mode::from_raw_mode((mode | 0o700) & 0o7777))?;
    }
    Ok(())
}

/// Removes the entry `name` of `parent`, with everything under it if it is a
/// directory, never following a symlink. A missing entry is not an error.
/// With `writable`, directories without owner write permission are made
/// writable first (needed without root).
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &CStr, writable: bool) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        // Linux says EISDIR for a directory, POSIX allows EPERM.
        Err(Errno::ISDIR | Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(dir) => dir,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if writable {
        make_writable(dir.as_fd())?;
    }
    for (child, ty) in list(dir.as_fd())? {
        if is_dir(dir.as_fd(), &child, ty)? {
            remove_tree(dir.as_fd(), &child, writable)?;
        } else {
            match rustix::fs::unlinkat(&dir, child.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    drop(dir);
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_beneath_refuses_symlinks_anywhere_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        symlink("a", root.join("link")).unwrap();
        symlink("/", root.join("a/up")).unwrap();
        let fd = open_dir(&root).unwrap();
        open_beneath(fd.as_fd(), "").unwrap();
        open_beneath(fd.as_fd(), "a/b").unwrap();
        for bad in ["link", "link/b", "a/up", "a/up/tmp"] {
            assert!(open_beneath(fd.as_fd(), bad).is_err(), "{bad}");
        }
        assert!(open_dir(&root.join("link")).is_err());
        // The walk used without openat2 refuses them too.
        HAVE_OPENAT2.store(false, Ordering::Relaxed);
        let walked = ["link", "a/up"].map(|bad| open_beneath(fd.as_fd(), bad).is_err());
        HAVE_OPENAT2.store(true, Ordering::Relaxed);
        assert_eq!(walked, [true, true]);
    }

    #[test]
    fn remove_tree_removes_read_only_directories_and_not_link_targets() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("doomed/ro/deep")).unwrap();
        fs::write(root.join("doomed/ro/deep/f"), "x").unwrap();
        symlink(&outside, root.join("doomed/ro/to-outside")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("doomed/ro"), fs::Permissions::from_mode(0o555)).unwrap();
        let fd = open_dir(&root).unwrap();
        remove_tree(fd.as_fd(), c"doomed", true).unwrap();
        assert!(!root.join("doomed").exists());
        assert!(outside.join("keep").exists());
        // Missing entries are fine.
        remove_tree(fd.as_fd(), c"doomed", true).unwrap();
    }
}
