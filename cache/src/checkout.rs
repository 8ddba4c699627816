//! Checkout: materialising a manifest as a directory tree.
//!
//! A checkout is an update from the empty tree: [`Store::checkout`] checks
//! that the destination is missing or empty and hands the work to
//! [`Store::update_checkout`], the one place where entries are created,
//! linked to store objects, copied and given their metadata (see `update`).
//! Its path rules hold here too: every manifest path is validated, every
//! directory is opened from the destination's own descriptor without
//! following a symlink, and entries are created by their bare name through
//! it. Nothing is written outside the destination.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::Path;

use rustix::fs::{Timespec, Timestamps};

use crate::error::{Result, StoreError};
use crate::manifest::Manifest;
use crate::store::Store;

/// How file contents reach the checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckoutMode {
    /// Hard-link store objects (a plain blob or a metadata variant): fast and
    /// free, but the files are the store's own. Treat the checkout as
    /// read-only, e.g. as an overlayfs lower layer. Files of a hard link
    /// group are copied once and linked to each other instead. Falls back to
    /// copying across filesystems or when an object has too many links.
    #[default]
    Hardlink,
    /// Copy contents (a reflink where the filesystem supports it): the files
    /// are private to the checkout and may be modified.
    Copy,
}

/// Options of [`Store::checkout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckoutOptions {
    /// Hard-link or copy file contents.
    pub mode: CheckoutMode,
    /// Set the modification (and access) time of every entry, symlinks
    /// included, to this many seconds since the epoch (SOURCE_DATE_EPOCH for
    /// final outputs). In hardlink mode this changes the time of the shared
    /// store objects, which shared checkouts date
    /// [`SHARED_CHECKOUT_MTIME`](crate::SHARED_CHECKOUT_MTIME): a hardlink
    /// checkout takes that value or `None`, never another.
    pub mtime: Option<i64>,
    /// Without root, owners cannot be set: with this flag every entry is
    /// created with the current user's uid and gid instead of failing. As root
    /// the flag changes nothing and every owner is set as recorded.
    pub ignore_owner: bool,
}

impl Store {
    /// Materialises `manifest` at `dest`, which must be missing or an empty
    /// directory; the root entry's metadata is applied to `dest` itself.
    ///
    /// Hard link groups become hard links. Running as root, every owner,
    /// device node and extended attribute is reproduced exactly; otherwise
    /// see [`CheckoutOptions::ignore_owner`]. On error `dest` is left partly
    /// written: remove it.
    pub fn checkout(&self, manifest: &Manifest, dest: &Path, opts: CheckoutOptions) -> Result<()> {
        manifest
            .validate()
            .map_err(|source| StoreError::InvalidManifest {
                path: dest.to_owned(),
                source,
            })?;
        prepare_dest(dest)?;
        self.apply_update(&Manifest::new(), manifest, dest, opts)
            .map(|_| ())
    }
}

/// Creates `dest` or checks that it is an empty directory.
pub(crate) fn prepare_dest(dest: &Path) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let mut listing = fs::read_dir(dest).map_err(|source| StoreError::Read {
                path: dest.to_owned(),
                source,
            })?;
            if listing.next().is_some() {
                return Err(StoreError::DestinationNotEmpty {
                    path: dest.to_owned(),
                });
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::NotADirectory {
            path: dest.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(dest).map_err(|source| StoreError::CreateDir {
                path: dest.to_owned(),
                source,
            })
        }
        Err(source) => Err(StoreError::Read {
            path: dest.to_owned(),
            source,
        }),
    }
}

pub(crate) fn timestamps(seconds: i64) -> Timestamps {
    let at = Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: at,
        last_modification: at,
    }
}

pub(crate) fn set_file_time(file: &File, path: &Path, mtime: Option<i64>) -> Result<()> {
    let Some(seconds) = mtime else { return Ok(()) };
    rustix::fs::futimens(file, &timestamps(seconds)).map_err(|e| StoreError::SetMetadata {
        path: path.to_owned(),
        what: "modification time",
        source: e.into(),
    })
}
