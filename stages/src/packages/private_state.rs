//! The private package-manager states in the store: one folder per sources list (apt) or
//! pacman.conf (pacman), named by the digest of what defines it, and the lock that serialises
//! updating and reading one.
//!
//! ```text
//! <store>/v1/packages/
//! ├── apt/<hash>/              one private apt state per sources list and architecture:
//! │   ├── lock                 flock, held while the state is updated or read
//! │   ├── apt.conf             APT_CONFIG for the state's fake root
//! │   └── root/                etc/apt/sources.list, var/lib/apt/lists, an empty dpkg status
//! ├── pacman/<hash>/           one private pacman state per pacman.conf:
//! │   ├── lock, pacman.conf
//! │   ├── db/sync/*.db         the sync databases resolution reads
//! │   └── gnupg/               the keyring signatures are checked with (see [`super::gpg_home`])
//! ├── debs/                    downloaded .deb files, shared by every build (see
//! └── pkgs/                    downloaded .pkg.tar.* files, shared    [`super::package_cache`])
//! ```
//!
//! Each entry of these folders (a state folder, a package file) is a unit `kiln cache gc` may
//! remove: using one sets its modification time ([`mark_used`]), and gc removes those no kept
//! build used (see the cache's gc).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, Store};

use super::error::PackagesError;
use super::files::create_dir;

/// The folder of one private package manager state, named by the digest of what defines it.
pub(crate) fn state_dir(store: &Store, manager: &str, identity: &str) -> PathBuf {
    let digest = Digest::of_bytes(identity.as_bytes()).to_hex();
    store.packages_dir().join(manager).join(&digest[..32])
}

/// Record that a build uses `path` (a state folder or a package file): its modification time
/// becomes now, which keeps it from `kiln cache gc` while a build that used it is kept. Best
/// effort: a unit whose time cannot be set is at worst downloaded again after a gc.
pub(crate) fn mark_used(path: &Path) {
    if let Ok(file) = File::open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// An exclusive `flock` on a state's `lock` file, released when dropped.
pub(crate) struct StateLock {
    _file: File,
}

impl StateLock {
    /// Wait for and take the lock of the state folder `dir`.
    pub(crate) fn acquire(dir: &Path) -> Result<StateLock, PackagesError> {
        create_dir(dir)?;
        let path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| PackagesError::io("open", &path, source))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|error| PackagesError::io("lock", &path, error.into()))?;
        mark_used(dir);
        Ok(StateLock { _file: file })
    }
}
