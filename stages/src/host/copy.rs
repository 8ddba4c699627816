//! A full copy of a tree that keeps everything an image cares about: mode (with setuid and
//! sticky bits), owner, xattrs (file capabilities included), symlinks, hardlinks, device nodes,
//! fifos and timestamps. It is the fallback when overlayfs is unavailable: the stage then works on
//! the copy and the whole tree is re-ingested.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};

use super::error::HostError;
use super::xattr;

/// Copies the tree at `src` to `dst`, which must not exist or be an empty directory.
///
/// Symlinks are copied as links, never followed; files linked together in `src` are linked
/// together in `dst`. Ownership is set before mode and xattrs, because `chown` clears setuid bits
/// and file capabilities. On error, `dst` may hold a partial copy: remove it.
pub fn copy_tree_preserving(src: &Path, dst: &Path) -> Result<(), HostError> {
    prepare_destination(src, dst)?;

    // Directories get their metadata last, deepest first, so a read-only directory can still
    // be filled and its mtime is not disturbed by its children.
    let mut dirs: Vec<(PathBuf, PathBuf, fs::Metadata)> = Vec::new();
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();

    for entry in walkdir::WalkDir::new(src)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(src).to_owned();
            HostError::io("read", path, io::Error::from(e))
        })?;
        let from = entry.path();
        let rel = from.strip_prefix(src).map_err(|_| {
            HostError::io(
                "copy",
                from,
                io::Error::other("entry outside the source tree"),
            )
        })?;
        let to = if rel.as_os_str().is_empty() {
            dst.to_owned()
        } else {
            dst.join(rel)
        };
        let meta = fs::symlink_metadata(from).map_err(|e| HostError::io("inspect", from, e))?;
        let ft = meta.file_type();

        if ft.is_dir() {
            if entry.depth() > 0 {
                fs::create_dir(&to).map_err(|e| HostError::io("create", &to, e))?;
            }
            dirs.push((from.to_owned(), to, meta));
            continue;
        }

        if meta.nlink() > 1 {
            if let Some(first) = linked.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &to)
                    .map_err(|e| HostError::io("create a hardlink at", &to, e))?;
                continue;
            }
            linked.insert((meta.dev(), meta.ino()), to.clone());
        }

        copy_content(from, &to, &meta)?;
        apply_metadata(from, &to, &meta)?;
    }

    for (from, to, meta) in dirs.iter().rev() {
        apply_metadata(from, to, meta)?;
    }
    Ok(())
}

/// Checks that `src` is a directory and that `dst` is an empty directory, creating it when it
/// does not exist.
fn prepare_destination(src: &Path, dst: &Path) -> Result<(), HostError> {
    let root_meta = fs::symlink_metadata(src).map_err(|e| HostError::io("inspect", src, e))?;
    if !root_meta.is_dir() {
        return Err(HostError::io(
            "copy",
            src,
            io::Error::from(io::ErrorKind::NotADirectory),
        ));
    }
    match fs::symlink_metadata(dst) {
        Ok(meta) => {
            let empty = meta.is_dir()
                && fs::read_dir(dst)
                    .map_err(|e| HostError::io("read", dst, e))?
                    .next()
                    .is_none();
            if !empty {
                return Err(HostError::DestinationNotEmpty {
                    path: dst.to_owned(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(dst).map_err(|e| HostError::io("create", dst, e))?;
        }
        Err(e) => return Err(HostError::io("inspect", dst, e)),
    }
    Ok(())
}

/// Creates `to` as a copy of the non-directory `from`: a file's bytes, a symlink's target, a
/// special file's type, mode and device number.
fn copy_content(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), HostError> {
    let ft = meta.file_type();
    if ft.is_file() {
        fs::copy(from, to).map_err(|e| HostError::io("copy", from, e))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(from).map_err(|e| HostError::io("read the symlink", from, e))?;
        std::os::unix::fs::symlink(&target, to)
            .map_err(|e| HostError::io("create the symlink", to, e))?;
    } else {
        let kind = if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else if ft.is_fifo() {
            FileType::Fifo
        } else if ft.is_socket() {
            FileType::Socket
        } else {
            return Err(HostError::UnsupportedFileType {
                path: from.to_owned(),
            });
        };
        rustix::fs::mknodat(
            CWD,
            to,
            kind,
            Mode::from_raw_mode(meta.mode() & 0o7777),
            meta.rdev(),
        )
        .map_err(|e| HostError::io("create the special file", to, e.into()))?;
    }
    Ok(())
}

/// Owner, then mode, then xattrs, then timestamps of `to`, taken from `from`.
fn apply_metadata(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<(), HostError> {
    let is_symlink = meta.file_type().is_symlink();
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| HostError::io("set the owner of", to, e))?;
    if !is_symlink {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| HostError::io("set the mode of", to, e))?;
    }
    let names = xattr::list(from).map_err(|e| HostError::io("list xattrs of", from, e))?;
    for name in names {
        if let Some(value) =
            xattr::get(from, &name).map_err(|e| HostError::io("read xattrs of", from, e))?
        {
            xattr::set(to, &name, &value).map_err(|e| HostError::io("set xattrs on", to, e))?;
        }
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| HostError::io("set the timestamps of", to, e.into()))?;
    Ok(())
}
