//! Extended attributes: reading them into a manifest, setting and clearing them.
//!
//! All path-based calls use the `l*` variants, so a symlink's own attributes
//! are read and written, never those of its target.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use crate::error::{Result, StoreError};

/// Attributes overlayfs keeps for itself in its upper layer; they describe
/// the overlay, not the file, and are never recorded.
const OVERLAY_PREFIX: &str = "trusted.overlay.";

/// The calls that read a file's xattrs: by path (never following a symlink) or through an
/// open descriptor.
trait XattrSource {
    fn list(&self, names: &mut [u8]) -> rustix::io::Result<usize>;
    fn list_len(&self) -> rustix::io::Result<usize>;
    fn get(&self, name: &str, value: &mut [u8]) -> rustix::io::Result<usize>;
    fn get_len(&self, name: &str) -> rustix::io::Result<usize>;
}

struct ByPath<'a>(&'a Path);

impl XattrSource for ByPath<'_> {
    fn list(&self, names: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::llistxattr(self.0, names)
    }
    fn list_len(&self) -> rustix::io::Result<usize> {
        rustix::fs::llistxattr_query(self.0)
    }
    fn get(&self, name: &str, value: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::lgetxattr(self.0, name, value)
    }
    fn get_len(&self, name: &str) -> rustix::io::Result<usize> {
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
    fn get(&self, name: &str, value: &mut [u8]) -> rustix::io::Result<usize> {
        rustix::fs::fgetxattr(self.0, name, value)
    }
    fn get_len(&self, name: &str) -> rustix::io::Result<usize> {
        rustix::fs::fgetxattr_query(self.0, name)
    }
}

/// Reads all extended attributes of `path` (not following a symlink), except
/// overlayfs bookkeeping. A filesystem without xattr support yields none.
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
    let mut names = vec![0u8; 256];
    let len = loop {
        match source.list(&mut names[..]) {
            Ok(len) => break len,
            Err(Errno::RANGE) => {
                let needed = source.list_len().map_err(err)?;
                names.resize(needed.max(names.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(BTreeMap::new()),
            Err(e) => return Err(err(e)),
        }
    };
    let mut xattrs = BTreeMap::new();
    for raw in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(raw).map_err(|_| StoreError::NonUtf8 {
            path: path.join(String::from_utf8_lossy(raw).as_ref()),
        })?;
        if name.starts_with(OVERLAY_PREFIX) {
            continue;
        }
        let mut value = vec![0u8; 64];
        loop {
            match source.get(name, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    xattrs.insert(name.to_owned(), value);
                    break;
                }
                Err(Errno::RANGE) => {
                    let needed = source.get_len(name).map_err(err)?;
                    value.resize(needed.max(value.len() * 2), 0);
                }
                // Removed since we listed it.
                Err(Errno::NODATA) => break,
                Err(e) => return Err(err(e)),
            }
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
    let mut names = vec![0u8; 256];
    let len = loop {
        match rustix::fs::flistxattr(fd, &mut names[..]) {
            Ok(len) => break len,
            Err(Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok(()),
            Err(e) => {
                return Err(StoreError::ReadXattr {
                    path: path.to_owned(),
                    source: e.into(),
                });
            }
        }
    };
    for raw in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
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
}
