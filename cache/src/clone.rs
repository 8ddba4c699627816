//! Hard-linked clones of a directory tree: new directories, shared inodes.
//!
//! The first half of replacing an output cheaply: clone the previous output,
//! apply the new tree's difference to the clone with
//! [`Store::update_checkout`](crate::Store::update_checkout) (which never
//! writes through a shared inode), then rename the clone into place.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rayon::prelude::*;
use rustix::fs::{AtFlags, Gid, Mode, Stat, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::at::{self, DIR_FLAGS};
use crate::checkout::prepare_dest;
use crate::error::{Result, StoreError};
use crate::xattr;

/// Makes `dst` a copy of the tree at `src` in which every entry but the
/// directories is a hard link to the same inode in `src`: files, symlinks,
/// device nodes, fifos and sockets alike (symlinks are linked, never
/// followed). Directories are created anew with the mode, owner, extended
/// attributes and times of their source, times set once they are filled.
///
/// `dst` must be missing or an empty directory on the same filesystem as
/// `src`. Directories are cloned in parallel. Without root, every directory
/// of `src` must belong to the current user (its owner cannot be given
/// away). Until one of the two trees is removed, a file written in place in
/// either tree changes in both: change the clone only by unlinking and
/// creating entries, as [`Store::update_checkout`](crate::Store::update_checkout) does.
/// On error `dst` is left partly written: remove it.
pub fn clone_hardlinked(src: &Path, dst: &Path) -> Result<()> {
    let src_dir = at::open_dir(src).map_err(|source| open_error(src, source))?;
    let stat = rustix::fs::fstat(&src_dir).map_err(|e| read_error(src, e.into()))?;
    prepare_dest(dst)?;
    let dst_dir = at::open_dir(dst).map_err(|source| open_error(dst, source))?;
    clone_children(src_dir.as_fd(), dst_dir.as_fd(), src, dst)?;
    copy_dir_metadata(src_dir.as_fd(), dst_dir.as_fd(), &stat, src, dst)
}

/// Links or clones every entry of `src` into the empty directory `dst`.
fn clone_children(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    src_path: &Path,
    dst_path: &Path,
) -> Result<()> {
    let entries = at::list(src).map_err(|e| read_error(src_path, e))?;
    let mut dirs = Vec::new();
    for (name, ty) in entries {
        let is_dir =
            at::is_dir(src, &name, ty).map_err(|e| read_error(&src_path.join(at::os(&name)), e))?;
        if is_dir {
            dirs.push(name);
            continue;
        }
        rustix::fs::linkat(src, name.as_c_str(), dst, name.as_c_str(), AtFlags::empty()).map_err(
            |e| StoreError::Link {
                path: dst_path.join(at::os(&name)),
                target: src_path.join(at::os(&name)),
                source: e.into(),
            },
        )?;
    }
    dirs.par_iter().try_for_each(|name| {
        let (from, to) = (src_path.join(at::os(name)), dst_path.join(at::os(name)));
        let sub_src = rustix::fs::openat(src, name.as_c_str(), DIR_FLAGS, Mode::empty())
            .map_err(|e| read_error(&from, e.into()))?;
        let stat = rustix::fs::fstat(&sub_src).map_err(|e| read_error(&from, e.into()))?;
        rustix::fs::mkdirat(dst, name.as_c_str(), Mode::from_raw_mode(0o700)).map_err(|e| {
            StoreError::CreateDir {
                path: to.clone(),
                source: e.into(),
            }
        })?;
        let sub_dst = rustix::fs::openat(dst, name.as_c_str(), DIR_FLAGS, Mode::empty())
            .map_err(|e| read_error(&to, e.into()))?;
        clone_children(sub_src.as_fd(), sub_dst.as_fd(), &from, &to)?;
        copy_dir_metadata(sub_src.as_fd(), sub_dst.as_fd(), &stat, &from, &to)
    })
}

/// Owner, then mode (a chown may clear setgid), xattrs and times of a
/// cloned directory, once its content is in place.
fn copy_dir_metadata(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    stat: &Stat,
    src_path: &Path,
    dst_path: &Path,
) -> Result<()> {
    let meta_error = |what: &'static str| {
        move |e: Errno| StoreError::SetMetadata {
            path: dst_path.to_owned(),
            what,
            source: e.into(),
        }
    };
    rustix::fs::fchown(
        dst,
        Some(Uid::from_raw(stat.st_uid)),
        Some(Gid::from_raw(stat.st_gid)),
    )
    .map_err(meta_error("owner"))?;
    rustix::fs::fchmod(dst, Mode::from_raw_mode(stat.st_mode & 0o7777))
        .map_err(meta_error("mode"))?;
    let xattrs = xattr::read_fd(src, src_path)?;
    xattr::set_fd(dst, dst_path, &xattrs)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(dst, &times).map_err(meta_error("modification time"))
}

fn read_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Read {
        path: path.to_owned(),
        source,
    }
}

/// A directory that cannot be opened: not a directory (or a symlink), or unreadable.
fn open_error(path: &Path, source: io::Error) -> StoreError {
    let not_dir = matches!(
        Errno::from_io_error(&source),
        Some(Errno::NOTDIR | Errno::LOOP)
    );
    if not_dir || (source.kind() == ErrorKind::NotFound && fs::symlink_metadata(path).is_ok()) {
        StoreError::NotADirectory {
            path: path.to_owned(),
        }
    } else {
        read_error(path, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    #[test]
    fn clone_links_everything_but_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "f").unwrap();
        fs::write(src.join("top"), "t").unwrap();
        symlink("/nowhere", src.join("a/dangling")).unwrap();
        symlink("b", src.join("a/to-dir")).unwrap();
        fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o2750)).unwrap();
        fs::set_permissions(src.join("a"), fs::Permissions::from_mode(0o555)).unwrap();
        let old = filetime(&src.join("a"));
        clone_hardlinked(&src, &dst).unwrap();

        for rel in ["a/b/f", "top", "a/dangling", "a/to-dir"] {
            let (s, d) = (
                fs::symlink_metadata(src.join(rel)).unwrap(),
                fs::symlink_metadata(dst.join(rel)).unwrap(),
            );
            assert_eq!(s.ino(), d.ino(), "{rel}");
        }
        assert_eq!(fs::read_link(dst.join("a/to-dir")).unwrap(), Path::new("b"));
        for rel in ["", "a", "a/b"] {
            let (s, d) = (
                fs::symlink_metadata(src.join(rel)).unwrap(),
                fs::symlink_metadata(dst.join(rel)).unwrap(),
            );
            assert_ne!(s.ino(), d.ino(), "{rel}");
            assert_eq!(s.mode(), d.mode(), "{rel}");
            assert_eq!(
                (s.mtime(), s.mtime_nsec()),
                (d.mtime(), d.mtime_nsec()),
                "{rel}"
            );
        }
        assert_eq!(filetime(&dst.join("a")), old);

        // A destination that holds something is refused.
        let err = clone_hardlinked(&src, &dst).unwrap_err();
        assert!(
            matches!(err, StoreError::DestinationNotEmpty { .. }),
            "{err}"
        );
        let err = clone_hardlinked(&src.join("top"), &dir.path().join("x")).unwrap_err();
        assert!(matches!(err, StoreError::NotADirectory { .. }), "{err}");
        for root in [&src, &dst] {
            fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    fn filetime(path: &Path) -> (i64, i64) {
        let m = fs::symlink_metadata(path).unwrap();
        (m.mtime(), m.mtime_nsec())
    }
}
