//! The store lock: `v1/lock`, held shared by every user and exclusively by gc.
//!
//! Locks are `flock(2)` locks on one open file description per [`crate::Store`]
//! (clones share it), so they vanish with the process that held them: a killed
//! build never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};

use crate::error::{Result, StoreError};

/// How often a waiting process retries the lock.
const POLL: Duration = Duration::from_millis(25);

/// A shared lock on the store, released when dropped.
#[derive(Debug)]
pub(crate) struct StoreLock {
    file: File,
    path: PathBuf,
    store_root: PathBuf,
}

impl StoreLock {
    /// Opens (creating it if needed) the lock file at `path` and takes a shared
    /// lock, waiting up to `timeout` for an exclusive holder (a gc) to finish.
    pub(crate) fn shared(path: &Path, store_root: &Path, timeout: Duration) -> Result<StoreLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| StoreError::Lock {
                path: path.to_owned(),
                source,
            })?;
        let lock = StoreLock {
            file,
            path: path.to_owned(),
            store_root: store_root.to_owned(),
        };
        lock.acquire(FlockOperation::NonBlockingLockShared, timeout)?;
        Ok(lock)
    }

    /// Upgrades to an exclusive lock, waiting up to `timeout` for every other
    /// user to go away. The guard turns the lock back into a shared one.
    ///
    /// On timeout the shared lock is taken again and [`StoreError::InUse`] is
    /// returned.
    pub(crate) fn exclusive(&self, timeout: Duration) -> Result<ExclusiveGuard<'_>> {
        match self.acquire(FlockOperation::NonBlockingLockExclusive, timeout) {
            Ok(()) => Ok(ExclusiveGuard { lock: self }),
            Err(err) => {
                // Linux drops the shared lock when an upgrade fails: take it back.
                flock(&self.file, FlockOperation::LockShared).map_err(|e| StoreError::Lock {
                    path: self.path.clone(),
                    source: e.into(),
                })?;
                Err(err)
            }
        }
    }

    fn acquire(&self, op: FlockOperation, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            match flock(&self.file, op) {
                Ok(()) => return Ok(()),
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                    if start.elapsed() >= timeout {
                        return Err(StoreError::InUse {
                            path: self.store_root.clone(),
                            waited: start.elapsed(),
                        });
                    }
                    thread::sleep(POLL);
                }
                Err(e) => {
                    return Err(StoreError::Lock {
                        path: self.path.clone(),
                        source: io::Error::from(e),
                    });
                }
            }
        }
    }
}

/// Proof that this process holds the store exclusively; downgrades on drop.
#[derive(Debug)]
pub(crate) struct ExclusiveGuard<'a> {
    lock: &'a StoreLock,
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        // A failure here leaves us without a lock at all, which only weakens
        // protection of this process; nothing to report from a destructor.
        let _ = flock(&self.lock.file, FlockOperation::LockShared);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_waits_for_other_shared_holders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = StoreLock::shared(&path, dir.path(), Duration::ZERO).unwrap();
        let b = StoreLock::shared(&path, dir.path(), Duration::ZERO).unwrap();
        let err = a.exclusive(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        // `a` got its shared lock back, so `b` still cannot go exclusive.
        assert!(b.exclusive(Duration::ZERO).is_err());
        drop(b);
        {
            let _guard = a.exclusive(Duration::from_secs(1)).unwrap();
            // While exclusive, nobody can open the store.
            let err = StoreLock::shared(&path, dir.path(), Duration::from_millis(50)).unwrap_err();
            assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        }
        // Downgraded: others may share again.
        StoreLock::shared(&path, dir.path(), Duration::ZERO).unwrap();
    }
}
