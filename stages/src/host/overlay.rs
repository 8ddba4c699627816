//! An overlayfs mount over a read-only lower tree, and reading back what its upper layer holds.
//!
//! A mutable stage mounts its input tree (checked out read-only from the store) as the lower
//! layer; everything the stage writes lands in the upper layer, so the stage's output is the
//! input plus exactly what [`read_upper`] reports. The mount is made simple to read back:
//!
//! - `redirect_dir=off`: renaming a lower directory fails with `EXDEV`, so tools copy it instead;
//!   the upper layer then holds the new directory whole and a whiteout for the old name, never a
//!   redirect xattr pointing somewhere else.
//! - `metacopy=off`: a `chmod` or `chown` copies the whole file up, so every upper file holds
//!   its full content.
//! - `index=off`: no inode index in the work directory, hardlinks are broken on copy-up.
//!
//! The mount is made with the `mount(2)` system call, so kiln needs `CAP_SYS_ADMIN`. When the
//! kernel refuses ([`HostError::OverlayUnavailable`]), the caller copies the tree with
//! [`super::copy_tree_preserving`] and re-ingests all of it.
//!
//! Files that overlayfs copied up may carry its private xattrs (`trusted.overlay.origin`,
//! `trusted.overlay.impure`...): [`xattr::is_overlay_xattr`] tells them apart from the image's
//! own. The mount has no `userxattr`, so overlayfs marks whiteouts and opaque directories with
//! `trusted.overlay.*` too, never `user.overlay.*`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::error::HostError;
use super::xattr;

/// The longest option string `mount(2)` accepts: one page, including the final NUL.
const MAX_MOUNT_DATA: usize = 4095;

/// A mounted overlay: `merged/` shows `lower` with the changes held in `upper/`.
///
/// The three directories live inside the scratch directory given to [`Overlay::mount`]. Dropping
/// an overlay that was not unmounted detaches it lazily (`MNT_DETACH`), so an error on the way
/// never leaves a mount behind.
#[derive(Debug)]
pub struct Overlay {
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    /// Mounts an overlay of `lower` with `upper/`, `work/` and `merged/` created in `scratch`
    /// (created if missing; the three must not exist yet).
    ///
    /// The upper directory takes the mode and owner of `lower`'s root, because overlayfs shows
    /// the upper root's attributes on the merged root.
    pub fn mount(lower: &Path, scratch: &Path) -> Result<Overlay, HostError> {
        let lower = absolute(lower)?;
        let lower_meta = fs::metadata(&lower)
            .map_err(|e| HostError::io("read the lower directory", &lower, e))?;
        if !lower_meta.is_dir() {
            return Err(HostError::io(
                "use as the lower directory",
                &lower,
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        let scratch = absolute(scratch)?;
        fs::create_dir_all(&scratch)
            .map_err(|e| HostError::io("create the scratch directory", &scratch, e))?;

        let mut overlay = Overlay {
            lower,
            upper: scratch.join("upper"),
            work: scratch.join("work"),
            merged: scratch.join("merged"),
            mounted: false,
        };
        let mut created = Vec::new();
        match overlay.prepare_and_mount(&lower_meta, &mut created) {
            Ok(()) => {
                overlay.mounted = true;
                Ok(overlay)
            }
            Err(err) => {
                // Only what this call created, so a scratch directory in use stays intact.
                for dir in created.iter().rev() {
                    let _ = fs::remove_dir_all(dir);
                }
                Err(err)
            }
        }
    }

    fn prepare_and_mount(
        &self,
        lower_meta: &fs::Metadata,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), HostError> {
        for dir in [&self.upper, &self.work, &self.merged] {
            fs::create_dir(dir).map_err(|e| HostError::io("create", dir, e))?;
            created.push(dir.clone());
        }
        std::os::unix::fs::lchown(&self.upper, Some(lower_meta.uid()), Some(lower_meta.gid()))
            .map_err(|e| HostError::io("set the owner of", &self.upper, e))?;
        fs::set_permissions(
            &self.upper,
            fs::Permissions::from_mode(lower_meta.mode() & 0o7777),
        )
        .map_err(|e| HostError::io("set the mode of", &self.upper, e))?;

        let data = self.options()?;
        match rustix::mount::mount(
            "overlay",
            &self.merged,
            "overlay",
            MountFlags::empty(),
            data.as_c_str(),
        ) {
            Ok(()) => Ok(()),
            Err(errno) => {
                let reason = match errno {
                    Errno::PERM | Errno::ACCESS => {
                        Some("mounting needs `CAP_SYS_ADMIN` (run kiln as root)")
                    }
                    Errno::NODEV => Some("the kernel has no overlay filesystem"),
                    Errno::INVAL | Errno::NOTSUP => Some(
                        "the kernel refused the options or the scratch filesystem cannot hold an \
                         upper layer",
                    ),
                    _ => None,
                };
                let source = io::Error::from(errno);
                Err(match reason {
                    Some(reason) => HostError::OverlayUnavailable {
                        merged: self.merged.clone(),
                        reason: reason.to_owned(),
                        source,
                    },
                    None => HostError::Mount {
                        merged: self.merged.clone(),
                        source,
                    },
                })
            }
        }
    }

    /// The `mount(2)` option string, with each path escaped for overlayfs.
    fn options(&self) -> Result<CString, HostError> {
        let mut data = Vec::new();
        data.extend_from_slice(b"lowerdir=");
        data.extend(escape_layer_path(&self.lower)?);
        data.extend_from_slice(b",upperdir=");
        data.extend(escape_layer_path(&self.upper)?);
        data.extend_from_slice(b",workdir=");
        data.extend(escape_layer_path(&self.work)?);
        data.extend_from_slice(b",redirect_dir=off,metacopy=off,index=off");
        if data.len() > MAX_MOUNT_DATA {
            return Err(HostError::OverlayPath {
                path: self.lower.clone(),
                reason: "the overlay mount options exceed 4095 bytes",
            });
        }
        CString::new(data).map_err(|_| HostError::OverlayPath {
            path: self.lower.clone(),
            reason: "it contains a NUL byte",
        })
    }

    /// The read-only lower directory.
    pub fn lower(&self) -> &Path {
        &self.lower
    }

    /// The merged view, where the stage reads and writes the tree.
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// The upper layer, holding what changed; read it with [`read_upper`] after unmounting.
    pub fn upper(&self) -> &Path {
        &self.upper
    }

    /// Unmounts the overlay. The upper directory stays in place for [`read_upper`].
    ///
    /// When the plain unmount fails (a process still holds the tree), the mount is detached
    /// lazily and the error returned, since the upper layer may still change.
    pub fn unmount(mut self) -> Result<(), HostError> {
        match rustix::mount::unmount(&self.merged, UnmountFlags::empty()) {
            Ok(()) => {
                self.mounted = false;
                Ok(())
            }
            // Dropping `self` detaches it.
            Err(errno) => Err(HostError::Unmount {
                merged: self.merged.clone(),
                source: io::Error::from(errno),
            }),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let _ = rustix::mount::unmount(&self.merged, UnmountFlags::DETACH);
            self.mounted = false;
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, HostError> {
    std::path::absolute(path).map_err(|e| HostError::io("resolve", path, e))
}

/// Escapes a path for an overlayfs option value: `\`, `,` and `:` get a backslash in front
/// (overlayfs splits options on `,` and lower layers on `:`, and unescapes both).
fn escape_layer_path(path: &Path) -> Result<Vec<u8>, HostError> {
    let bytes = path.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            0 => {
                return Err(HostError::OverlayPath {
                    path: path.to_owned(),
                    reason: "it contains a NUL byte",
                });
            }
            b'\\' | b',' | b':' => {
                out.push(b'\\');
                out.push(b);
            }
            _ => out.push(b),
        }
    }
    Ok(out)
}

/// One entry of an overlay's upper layer, by its path relative to the tree root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpperChange {
    /// The path was deleted: it exists in the lower layer and not in the result.
    Whiteout(PathBuf),
    /// A directory that replaces the lower one whole: nothing of the lower directory's contents
    /// shows through, only the upper entries below it. The directory itself is an entry of the
    /// result too.
    OpaqueDir(PathBuf),
    /// A new or replaced file, directory, symlink or device. A directory that only exists in the
    /// upper layer because something below it changed is also an entry: compare its metadata
    /// with the lower directory to tell whether it changed itself.
    Entry(PathBuf),
}

impl UpperChange {
    /// The path relative to the tree root.
    pub fn path(&self) -> &Path {
        match self {
            UpperChange::Whiteout(p) | UpperChange::OpaqueDir(p) | UpperChange::Entry(p) => p,
        }
    }
}

/// Walks an upper layer (without following symlinks) and classifies each entry.
///
/// Paths are relative to `upper`, `/`-separated and sorted component by component (a directory
/// comes before everything inside it). The root itself is never reported: overlayfs shows the
/// upper root's attributes on the merged root, so compare them with the lower root if needed.
pub fn read_upper(upper: &Path) -> Result<Vec<UpperChange>, HostError> {
    let mut changes = Vec::new();
    let walker = walkdir::WalkDir::new(upper)
        .follow_links(false)
        .sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(upper).to_owned();
            HostError::io("read the upper layer at", path, io::Error::from(e))
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let path = entry.path();
        let rel = path
            .strip_prefix(upper)
            .map_err(|_| {
                HostError::io(
                    "read the upper layer at",
                    path,
                    io::Error::other("entry outside the upper directory"),
                )
            })?
            .to_owned();
        let meta = fs::symlink_metadata(path).map_err(|e| HostError::io("inspect", path, e))?;
        let ft = meta.file_type();
        let whiteout = (ft.is_char_device() && meta.rdev() == 0)
            || (ft.is_file() && meta.len() == 0 && has_overlay_flag(path, b"whiteout", None)?);
        let change = if whiteout {
            UpperChange::Whiteout(rel)
        } else if ft.is_dir() && has_overlay_flag(path, b"opaque", Some(b"y"))? {
            UpperChange::OpaqueDir(rel)
        } else {
            UpperChange::Entry(rel)
        };
        changes.push(change);
    }
    changes.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(changes)
}

/// Whether `path` has the overlay xattr `trusted.overlay.<flag>` (with value `want` if given).
fn has_overlay_flag(path: &Path, flag: &[u8], want: Option<&[u8]>) -> Result<bool, HostError> {
    let mut name = xattr::OVERLAY_PREFIX.as_bytes().to_vec();
    name.extend_from_slice(flag);
    let value = xattr::get(path, &name).map_err(|e| HostError::io("read xattrs of", path, e))?;
    Ok(value.is_some_and(|value| want.is_none_or(|want| value == want)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_paths_escape_separators() {
        let escaped = escape_layer_path(Path::new("/a,b:c\\d")).unwrap();
        assert_eq!(escaped, b"/a\\,b\\:c\\\\d".to_vec());
    }

    #[test]
    fn read_upper_classifies_plain_entries_and_sorts_by_component() {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path();
        fs::create_dir(upper.join("a")).unwrap();
        fs::write(upper.join("a/b"), "x").unwrap();
        fs::write(upper.join("a.b"), "").unwrap();
        std::os::unix::fs::symlink("/nowhere", upper.join("link")).unwrap();
        let changes = read_upper(upper).unwrap();
        assert_eq!(
            changes,
            vec![
                UpperChange::Entry("a".into()),
                UpperChange::Entry("a/b".into()),
                UpperChange::Entry("a.b".into()),
                UpperChange::Entry("link".into()),
            ]
        );
    }

    #[test]
    fn xattr_whiteouts_and_opaque_dirs_are_recognised() {
        use kiln_test_support::{Need, require};
        // Setting `trusted.*` xattrs needs root.
        if !require(
            "xattr_whiteouts_and_opaque_dirs_are_recognised",
            &[Need::Root],
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path();
        fs::write(upper.join("gone"), "").unwrap();
        xattr::set(&upper.join("gone"), b"trusted.overlay.whiteout", b"").unwrap();
        fs::write(upper.join("kept"), "").unwrap();
        fs::create_dir(upper.join("opaque")).unwrap();
        xattr::set(&upper.join("opaque"), b"trusted.overlay.opaque", b"y").unwrap();
        fs::write(upper.join("opaque/inner"), "i").unwrap();
        // `x` marks a directory holding xattr whiteouts, not an opaque one.
        fs::create_dir(upper.join("plain")).unwrap();
        xattr::set(&upper.join("plain"), b"trusted.overlay.opaque", b"x").unwrap();
        // kiln's mounts have no `userxattr`: `user.overlay.*` is the image's own.
        fs::write(upper.join("user-file"), "").unwrap();
        fs::create_dir(upper.join("user-dir")).unwrap();
        let user = xattr::set(&upper.join("user-file"), b"user.overlay.whiteout", b"")
            .and_then(|()| xattr::set(&upper.join("user-dir"), b"user.overlay.opaque", b"y"));
        if let Err(error) = user {
            // A filesystem without user xattrs (tmpfs before Linux 6.6) cannot hold them.
            assert_eq!(error.raw_os_error(), Some(libc::EOPNOTSUPP), "{error}");
        }
        assert_eq!(
            read_upper(upper).unwrap(),
            vec![
                UpperChange::Whiteout("gone".into()),
                UpperChange::Entry("kept".into()),
                UpperChange::OpaqueDir("opaque".into()),
                UpperChange::Entry("opaque/inner".into()),
                UpperChange::Entry("plain".into()),
                UpperChange::Entry("user-dir".into()),
                UpperChange::Entry("user-file".into()),
            ]
        );
    }
}
