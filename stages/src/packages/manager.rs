//! What apt and pacman have in common, written once: the [`PackageManager`] trait each
//! implements, the resolution flow over it ([`resolve`]: a saved resolution when the mode or
//! the mirror's unchanged index allows, else a refresh of the private state and a new
//! resolution, saved for next time), and the checks every installation ends with.

use std::path::{Path, PathBuf};

use kiln_cache::{Manifest, Store};
use kiln_engine::ResolveMode;

use super::error::PackagesError;
use super::freshness::{self, IndexFile};
use super::listing::{PackageSet, describe_changes};
use super::private_state::StateLock;
use super::resolution::SavedResolution;
use super::snapshot::Snapshot;
use super::{Installation, Resolved};
use crate::host::Host;

/// A package manager kiln resolves and installs with.
pub(crate) trait PackageManager {
    /// The folder of the private state this setup resolves in.
    fn state(&self, store: &Store) -> PathBuf;

    /// Where in the state `dir` the index resolution reads lies (apt's lists, pacman's sync
    /// databases).
    fn index_dir(&self, state: &Path) -> PathBuf;

    /// The label of the index's snapshot, and the files of the index folder it leaves out.
    fn snapshot_label(&self) -> (&'static str, &'static [&'static str]);

    /// What resolution depends on besides the mirror's index: the request's digest.
    fn request(&self) -> String;

    /// The signed index files, on the mirror and in the index folder `index`.
    fn index_files(&self, index: &Path) -> Vec<IndexFile>;

    /// Check the host tools and keyring.
    fn check_host(&self, host: &dyn Host) -> Result<(), PackagesError>;

    /// Refresh the index of the state `dir` (locked) from the mirror and resolve the package set
    /// against it.
    fn refresh_and_resolve(&self, host: &dyn Host, dir: &Path)
    -> Result<PackageSet, PackagesError>;

    /// Install the job's set, reading the index in the job. Returns the stored tree when the
    /// package manager stored it itself, `None` when the caller ingests the job's target.
    fn install(
        &self,
        host: &dyn Host,
        job: &Installation<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Option<Manifest>, PackagesError>;
}

/// Resolve the package set against the mirror's index, as `mode` allows: online, the last
/// resolution is taken again when the mirror's index files have not changed since it read
/// them; offline, it is taken as it is; read-only, it is taken if there is one and nothing is
/// written. The snapshot (not read-only) holds the index resolution read, for installation.
pub(crate) fn resolve(
    manager: &dyn PackageManager,
    host: &dyn Host,
    store: &Store,
    mode: ResolveMode,
) -> Result<Option<Resolved>, PackagesError> {
    let dir = manager.state(store);
    let request = manager.request();
    let index_dir = manager.index_dir(&dir);
    let (label, skip) = manager.snapshot_label();
    let snapshot = || Snapshot::of(store, label, &index_dir, skip);
    match mode {
        ResolveMode::ReadOnly => {
            return SavedResolution::load(&dir, &request)
                .map(|saved| {
                    Ok(Resolved {
                        set: saved.set()?,
                        snapshot: None,
                        note: None,
                    })
                })
                .transpose();
        }
        ResolveMode::Offline => {
            let saved = SavedResolution::load(&dir, &request).ok_or(PackagesError::NoResolution)?;
            let _lock = StateLock::acquire(&dir)?;
            return Ok(Some(Resolved {
                set: saved.set()?,
                snapshot: Some(snapshot()?),
                note: Some(saved.offline_note()),
            }));
        }
        ResolveMode::Online => {}
    }
    manager.check_host(host)?;
    let _lock = StateLock::acquire(&dir)?;
    let index = manager.index_files(&index_dir);
    if let Some(saved) = SavedResolution::load(&dir, &request)
        && saved.read_index_in(&index_dir)
        && freshness::unchanged(&index)?
    {
        return Ok(Some(Resolved {
            set: saved.set()?,
            snapshot: Some(snapshot()?),
            note: None,
        }));
    }
    let set = manager.refresh_and_resolve(host, &dir)?;
    let names: Vec<String> = index
        .iter()
        .filter_map(|file| Some(file.local.file_name()?.to_str()?.to_string()))
        .collect();
    SavedResolution::new(&request, &set, &index_dir, &names).save(&dir)?;
    Ok(Some(Resolved {
        set,
        snapshot: Some(snapshot()?),
        note: None,
    }))
}

/// `requested` (`Packages=`) with each package the set holds pinned to its resolved version.
pub(crate) fn pins(requested: &[String], set: &PackageSet) -> Vec<String> {
    requested
        .iter()
        .map(|name| match set.get(name) {
            Some(package) => format!("{}={}", package.name, package.version),
            None => name.clone(),
        })
        .collect()
}

/// The installed set must be the resolved one.
pub(crate) fn check_installed(
    resolved: &PackageSet,
    installed: &PackageSet,
) -> Result<(), PackagesError> {
    let changes = resolved.changes(installed);
    if changes.is_empty() {
        Ok(())
    } else {
        Err(PackagesError::InstalledDiffers {
            changes: describe_changes(&changes),
        })
    }
}
