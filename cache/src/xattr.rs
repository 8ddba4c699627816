//! Extended attributes: reading them into a manifest, setting and clearing them, and the one
//! answer to which of them belong to overlayfs rather than to the file.
//!
//! All path-based calls use the `l*` variants, so a symlink's own attributes
//! are read and written, never those of its target. A filesystem without
//! xattr support reads as having none.
//!
//! Besides the store, stages use [`list`], [`get`] and [`set`] (copying a
//! tree, marking an export) and [`is_overlay_xattr`] (reading an overlay's
//! upper layer).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use crate::error::{Result, StoreError};

/// The prefix of the attributes overlayfs keeps for itself in its upper layer
/// (`trusted.overlay.origin`, `.opaque`, `.impure`...). kiln mounts its
/// overlays as root without `userxattr`, so overlayfs writes these and never
/// `user.overlay.*`: an attribute of that name belongs to the image (a
/// rootless container store inside it, for one) and is kept like any other.
pub const OVERLAY_PREFIX: &str = "trusted.overlay.";

/// Whether the attribute `name` is overlayfs bookkeeping ([`OVERLAY_PREFIX`]):
/// it describes the overlay, not the file, and is never recorded.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(OVERLAY_PREFIX.as_bytes())
}

/// The calls that read a file's xattrs: by path (never following a symlink) or through an
/// open descriptor.
trait XattrSource {
    fn list(&self, names: &mut [u8]) -> rustix::io::Result<usize>;
    fn list_len(&self) -> rustix::io::Result<usize>;
    fn get(&self, name: &OsStr, value: &mut [u8]) -> rustix::io::Result<usize>;
    fn get_len(&self, name: &OsStr) -> rustix::io::Result<usize>;
}

struct ByPath<'a>(&'a Path);

impl XattrSource for ByPath<'_> {
    fn list(&self, names: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::llistxattr(self.0, names)
    }
    fn list_len(&self) -> rustix::io::Result<usize> {
        rustix::fs::llistxattr_query(self.0)
    }
    fn get(&self, name: &OsStr, value: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::lgetxattr(self.0, name, value)
    }
    fn get_len(&self, name: &OsStr) -> rustix::io::Result<usize> {
        rustix::fs::lgetxattr_query(self.0, name)
    }
}

struct ByFd<'a>(BorrowedFd<'a>);

impl XattrSource for ByFd<'_> {
    fn list(&self, names: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::flistxattr(self.0, names)
    }
    fn list_len(&self) -> rustix::io::Result<usize> {
        rustix::fs::flistxattr_query(self.0)
    }
    fn get(&self, name: &OsStr, value: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::fgetxattr(self.0, name, value)
    }
    fn get_len(&self, name: &OsStr) -> rustix::io::Result<usize> {
        rustix::fs::fgetxattr_query(self.0, name)
    }
}

/// The names of `source`'s attributes, NUL-separated as the kernel lists them; empty where
/// the filesystem has no xattrs.
fn names_of(source: &impl XattrSource) -> rustix::io::Result<Vec<u8>> {
    let mut names = vec![0u8; 256];
    loop {
        match source.list(&mut names[..]) {
            Ok(len) => {
                names.truncate(len);
                return Ok(names);
            }
            // The list grew since it was measured: measure again.
            Err(Errno::RANGE) => {
                let needed = source.list_len()?;
                names.resize(needed.max(names.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
}

/// Each non-empty name of a NUL-separated list.
fn split_names(names: &[u8]) -> impl Iterator<Item = &[u8]> {
    names.split(|&b| b == 0).filter(|n| !n.is_empty())
}

/// The value of `source`'s attribute `name`, `None` when it has none of that name.
fn value_of(source: &impl XattrSource, name: &OsStr) -> rustix::io::Result<Option<Vec<u8>>> {
    let mut value = vec![0u8; 64];
    loop {
        match source.get(name, &mut value[..]) {
            Ok(n) => {
                value.truncate(n);
                return Ok(Some(value));
            }
            Err(Errno::RANGE) => {
                let needed = source.get_len(name)?;
                value.resize(needed.max(value.len() * 2), 0);
            }
            // Removed since it was listed, or never there.
            Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// The names of the extended attributes of `path` (not following a symlink), sorted; overlayfs
/// bookkeeping included.
pub fn list(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let names = names_of(&ByPath(path))?;
    let mut names: Vec<Vec<u8>> = split_names(&names).map(<[u8]>::to_vec).collect();
    names.sort();
    Ok(names)
}

/// The value of the extended attribute `name` of `path` (not following a symlink), `None` when
/// unset.
pub fn get(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    Ok(value_of(&ByPath(path), OsStr::from_bytes(name))?)
}

/// Sets the extended attribute `name` of `path` (not following a symlink) to `value`.
pub fn set(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    rustix::fs::lsetxattr(path, OsStr::from_bytes(name), value, XattrFlags::empty())?;
    Ok(())
}

/// Reads all extended attributes of `path` (not following a symlink), except
/// overlayfs bookkeeping.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    read_from(&ByPath(path), path)
}

/// Reads all extended attributes of an open file or directory, except
/// overlayfs bookkeeping; `path` names it in errors.
pub(crate) fn read_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    read_from(&ByFd(fd), path)
}

fn read_from(source: &impl XattrSource, path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let err = |e: Errno| StoreError::ReadXattr {
        path: path.to_owned(),
        source: io::Error::from(e),
    };
    let names = names_of(source).map_err(err)?;
    let mut xattrs = BTreeMap::new();
    for raw in split_names(&names) {
        let name = std::str::from_utf8(raw).map_err(|_| StoreError::NonUtf8 {
            path: path.join(String::from_utf8_lossy(raw).as_ref()),
        })?;
        if is_overlay_xattr(raw) {
            continue;
        }
        if let Some(value) = value_of(source, OsStr::new(name)).map_err(err)? {
            xattrs.insert(name.to_owned(), value);
        }
    }
    Ok(xattrs)
}

/// Removes the attribute `name` of an open file or directory, if it is there.
pub(crate) fn remove_fd(fd: BorrowedFd<'_>, path: &Path, name: &str) -> Result<()> {
    match rustix::fs::fremovexattr(fd, name) {
        Ok(()) | Err(Errno::NODATA) => Ok(()),
        Err(e) => Err(StoreError::SetXattr {
            path: path.to_owned(),
            name: name.to_owned(),
            source: e.into(),
        }),
    }
}

/// Sets every attribute of `xattrs` on `path` (not following a symlink).
pub(crate) fn set_path(path: &Path, xattrs: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    for (name, value) in xattrs {
        rustix::fs::lsetxattr(path, name.as_str(), value, XattrFlags::empty()).map_err(|e| {
            StoreError::SetXattr {
                path: path.to_owned(),
                name: name.clone(),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// Sets every attribute of `xattrs` on an open file; `path` names it in errors.
pub(crate) fn set_fd(
    fd: BorrowedFd<'_>,
    path: &Path,
    xattrs: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    for (name, value) in xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()).map_err(|e| {
            StoreError::SetXattr {
                path: path.to_owned(),
                name: name.clone(),
                source: e.into(),
            }
        })?;
    }
    Ok(())
}

/// Removes the attributes of an open file, except a security label the
/// system may refuse to drop.
pub(crate) fn clear_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let names = names_of(&ByFd(fd)).map_err(|e| StoreError::ReadXattr {
        path: path.to_owned(),
        source: e.into(),
    })?;
    for raw in split_names(&names) {
        if raw == b"security.selinux" {
            continue;
        }
        match rustix::fs::fremovexattr(fd, raw) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => {
                return Err(StoreError::SetXattr {
                    path: path.to_owned(),
                    name: String::from_utf8_lossy(raw).into_owned(),
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// Whether the filesystem holding `path` accepts `user.*` attributes.
#[cfg(test)]
pub(crate) fn user_xattrs_supported(path: &Path) -> bool {
    let probe = rustix::fs::lsetxattr(path, "user.kiln.probe", b"1", XattrFlags::empty());
    let _ = rustix::fs::lremovexattr(path, "user.kiln.probe");
    probe.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn read_set_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let unsupported = (!user_xattrs_supported(&path))
            .then(|| "the filesystem of the temp dir has no user xattrs".to_owned());
        if !kiln_test_support::skip_unless(unsupported) {
            return;
        }
        let mut want = BTreeMap::new();
        want.insert("user.a".to_owned(), b"1".to_vec());
        want.insert("user.big".to_owned(), vec![7u8; 1000]);
        // overlayfs never writes `user.overlay.*` on kiln's mounts: it is the file's own.
        want.insert("user.overlay.opaque".to_owned(), b"y".to_vec());
        set_path(&path, &want).unwrap();
        let mut overlay = BTreeMap::new();
        overlay.insert("trusted.overlay.origin".to_owned(), b"o".to_vec());
        // Root only; the skip below is checked by the assertion after it.
        let has_trusted = set_path(&path, &overlay).is_ok();
        let got = read(&path).unwrap();
        assert_eq!(
            got, want,
            "trusted.overlay.* must be skipped (set: {has_trusted})"
        );
        let file = File::open(&path).unwrap();
        clear_fd(file.as_fd(), &path).unwrap();
        assert!(read(&path).unwrap().is_empty());
    }

    #[test]
    fn only_trusted_overlay_names_are_overlayfs_bookkeeping() {
        assert!(is_overlay_xattr(b"trusted.overlay.origin"));
        assert!(is_overlay_xattr(b"trusted.overlay.opaque"));
        assert!(!is_overlay_xattr(b"user.overlay.opaque"));
        assert!(!is_overlay_xattr(b"trusted.overlayish"));
        assert!(!is_overlay_xattr(b"security.capability"));
    }

    #[test]
    fn list_get_and_set_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let unsupported = (!user_xattrs_supported(&path))
            .then(|| "the filesystem of the temp dir has no user xattrs".to_owned());
        if !kiln_test_support::skip_unless(unsupported) {
            return;
        }
        assert_eq!(list(&path).unwrap(), Vec::<Vec<u8>>::new());
        set(&path, b"user.z", b"").unwrap();
        set(&path, b"user.a", &[9u8; 300]).unwrap();
        set(&path, b"user.overlay.whiteout", b"").unwrap();
        assert_eq!(
            list(&path).unwrap(),
            [&b"user.a"[..], b"user.overlay.whiteout", b"user.z"]
        );
        assert_eq!(get(&path, b"user.a").unwrap(), Some(vec![9u8; 300]));
        assert_eq!(get(&path, b"user.z").unwrap(), Some(Vec::new()));
        assert_eq!(get(&path, b"user.none").unwrap(), None);
    }
}
