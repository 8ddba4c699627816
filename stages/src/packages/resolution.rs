//! The last resolution of a package list, kept in the package manager's private state.
//!
//! A resolution is the exact package set (`NAME VERSION ARCH` lines) that a package list
//! resolved to against a mirror's index. It is saved with the digest of what was asked (sources,
//! architecture, the list, the solver's options) and the digest of each signed index file it
//! read (apt's `InRelease`, pacman's sync databases), so that:
//!
//! - a build whose mirror index has not changed takes it again without running the solver
//!   ([`super::freshness`] tells whether the index changed);
//! - an `--offline` build, and `graph show`, which only reads, take it without the network.
//!
//! Files are written to a temporary name and renamed, so readers never see half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::PackagesError;
use super::listing::PackageSet;

/// One saved resolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedResolution {
    /// The digest of what was resolved.
    pub request: String,
    /// The blake3 of each index file resolution read, by file name.
    pub index: BTreeMap<String, String>,
    /// The resolved set, as [`PackageSet::listing`] writes it.
    pub listing: String,
    /// When it was resolved, in seconds since the epoch.
    pub resolved_at: u64,
}

impl SavedResolution {
    /// A resolution made now from the index files `names` of `index_dir`.
    pub(super) fn new(
        request: &str,
        set: &PackageSet,
        index_dir: &Path,
        names: &[String],
    ) -> SavedResolution {
        SavedResolution {
            request: request.to_string(),
            index: digest_files(index_dir, names),
            listing: set.listing(),
            resolved_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |age| age.as_secs()),
        }
    }

    fn path(state: &Path, request: &str) -> PathBuf {
        state.join(format!(
            "resolution-{}.json",
            &request[..request.len().min(32)]
        ))
    }

    /// The resolution of `request` saved in `state`, if any.
    pub(super) fn load(state: &Path, request: &str) -> Option<SavedResolution> {
        let text = std::fs::read(SavedResolution::path(state, request)).ok()?;
        let saved: SavedResolution = serde_json::from_slice(&text).ok()?;
        (saved.request == request).then_some(saved)
    }

    /// Save it in `state`, replacing the earlier one of the same request.
    pub(super) fn save(&self, state: &Path) -> Result<(), PackagesError> {
        let path = SavedResolution::path(state, &self.request);
        let temp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&temp, text).map_err(|source| PackagesError::io("write", &temp, source))?;
        std::fs::rename(&temp, &path).map_err(|source| PackagesError::io("write", &path, source))
    }

    /// Whether the index files in `index_dir` are still those it read.
    pub(super) fn read_index_in(&self, index_dir: &Path) -> bool {
        let names: Vec<String> = self.index.keys().cloned().collect();
        !names.is_empty() && digest_files(index_dir, &names) == self.index
    }

    /// The resolved set.
    pub(super) fn set(&self) -> Result<PackageSet, PackagesError> {
        PackageSet::parse(&self.listing).map_err(PackagesError::from)
    }

    /// "resolved offline: the mirror's index as of Tue, 01 Dec 2026 10:00:00 GMT (3 h ago)".
    pub(super) fn offline_note(&self) -> String {
        let when = UNIX_EPOCH + Duration::from_secs(self.resolved_at);
        let age = SystemTime::now().duration_since(when).unwrap_or_default();
        format!(
            "resolved offline: the package set as resolved against the mirror at {} ({} ago)",
            httpdate::fmt_http_date(when),
            human_age(age)
        )
    }
}

/// The blake3 of each of `names` in `dir` (a missing file is left out).
fn digest_files(dir: &Path, names: &[String]) -> BTreeMap<String, String> {
    names
        .iter()
        .filter_map(|name| {
            let bytes = std::fs::read(dir.join(name)).ok()?;
            Some((name.clone(), blake3::hash(&bytes).to_hex().to_string()))
        })
        .collect()
}

/// "3 h", "2 days", "40 s".
pub(super) fn human_age(age: Duration) -> String {
    let seconds = age.as_secs();
    match seconds {
        0..120 => format!("{seconds} s"),
        120..7200 => format!("{} min", seconds / 60),
        7200..172_800 => format!("{} h", seconds / 3600),
        _ => format!("{} days", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolution_round_trips_and_knows_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let lists = dir.path().join("lists");
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("InRelease"), "signed 1").unwrap();
        let set = PackageSet::parse("base 1.0 amd64\n").unwrap();
        let names = vec!["InRelease".to_string()];
        let saved = SavedResolution::new("abc", &set, &lists, &names);
        saved.save(dir.path()).unwrap();
        let loaded = SavedResolution::load(dir.path(), "abc").unwrap();
        assert_eq!(loaded, saved);
        assert!(loaded.read_index_in(&lists));
        std::fs::write(lists.join("InRelease"), "signed 2").unwrap();
        assert!(!loaded.read_index_in(&lists));
        assert!(SavedResolution::load(dir.path(), "abd").is_none());
        assert_eq!(loaded.set().unwrap(), set);
        assert_eq!(human_age(Duration::from_secs(3 * 3600)), "3 h");
    }
}
