//! Extended attributes of a path without following symlinks: list, read and write, with the
//! filesystems that have none treated as having an empty set.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::XattrFlags;

fn is_unsupported(err: rustix::io::Errno) -> bool {
    err == rustix::io::Errno::NOTSUP || err == rustix::io::Errno::OPNOTSUPP
}

/// The names of the extended attributes of `path` (not following a symlink), sorted.
pub fn list(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(size) => size,
            Err(err) if is_unsupported(err) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                let mut names: Vec<Vec<u8>> = buf
                    .split(|b| *b == 0)
                    .filter(|name| !name.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                names.sort();
                return Ok(names);
            }
            // The list grew between the two calls: ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// The value of extended attribute `name` of `path` (not following a symlink), `None` when unset.
pub fn get(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = OsStr::from_bytes(name);
    loop {
        let size = match rustix::fs::lgetxattr_query(path, name) {
            Ok(size) => size,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(err) if is_unsupported(err) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        if size == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(rustix::io::Errno::NODATA) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Sets extended attribute `name` of `path` (not following a symlink) to `value`.
pub fn set(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    rustix::fs::lsetxattr(path, OsStr::from_bytes(name), value, XattrFlags::empty())?;
    Ok(())
}
