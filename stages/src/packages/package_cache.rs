//! The shared package-file cache of the store: downloaded `.deb` files (`v1/packages/debs/`)
//! and `.pkg.tar.*` files (`v1/packages/pkgs/`), shared by every build.
//!
//! Package files are written to a stage's scratch directory first and hard-linked into the cache
//! under their final name (a link never replaces an existing file), so two builds sharing the
//! cache need no lock for it. Each file is a unit `kiln cache gc` may remove once no kept build
//! used it ([`super::private_state::mark_used`]).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_cache::Store;

use super::error::PackagesError;
use super::files::{create_dir, link_or_copy};
use super::private_state::mark_used;

/// Downloaded package files, shared by every build of the store.
pub struct PackageCache {
    dir: PathBuf,
}

impl PackageCache {
    /// `<store>/v1/packages/<name>`.
    pub fn open(store: &Store, name: &str) -> Result<PackageCache, PackagesError> {
        let dir = store.packages_dir().join(name);
        create_dir(&dir)?;
        Ok(PackageCache { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Link each of `files` that the cache holds into `dest`; returns how many it held.
    pub fn provide<'a>(
        &self,
        files: impl IntoIterator<Item = &'a str>,
        dest: &Path,
    ) -> Result<usize, PackagesError> {
        create_dir(dest)?;
        let mut count = 0;
        for file in files {
            let cached = self.dir.join(file);
            if cached.is_file() {
                link_or_copy(&cached, &dest.join(file))?;
                mark_used(&cached);
                count += 1;
            }
        }
        Ok(count)
    }

    /// Add every file of `dir` whose name ends in one of `suffixes` and that the cache does not
    /// hold yet; returns how many were added.
    pub fn adopt(&self, dir: &Path, suffixes: &[&str]) -> Result<usize, PackagesError> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(0);
        };
        let mut count = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(text) = name.to_str() else { continue };
            if !suffixes.iter().any(|suffix| text.ends_with(suffix)) || !entry.path().is_file() {
                continue;
            }
            let target = self.dir.join(&name);
            if target.exists() {
                mark_used(&target);
                continue;
            }
            // Written under a temporary name, then linked to the final one, which never replaces
            // a file another build linked first.
            let temp = self
                .dir
                .join(format!(".{}-{text}.part", std::process::id()));
            let _ = fs::remove_file(&temp);
            link_or_copy(&entry.path(), &temp)?;
            let _ = fs::set_permissions(&temp, fs::Permissions::from_mode(0o444));
            let linked = fs::hard_link(&temp, &target);
            let _ = fs::remove_file(&temp);
            // A downloaded file may carry the server's time: it is used now.
            mark_used(&target);
            match linked {
                Ok(()) => count += 1,
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(PackagesError::io("link", &target, source)),
            }
        }
        Ok(count)
    }

    /// Adopt the package files a package manager downloaded into `downloads` (see
    /// [`PackageCache::adopt`]), and say how many in `log` when there were any.
    pub(crate) fn adopt_downloads(
        &self,
        downloads: &Path,
        suffixes: &[&str],
        log: &mut dyn FnMut(&str),
    ) -> Result<(), PackagesError> {
        let adopted = self.adopt(downloads, suffixes)?;
        if adopted > 0 {
            log(&format!(
                "{adopted} downloaded packages added to the package cache"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_adopts_new_files_once_and_provides_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let cache = PackageCache::open(&store, "debs").unwrap();
        let downloads = dir.path().join("downloads");
        fs::create_dir_all(&downloads).unwrap();
        fs::write(downloads.join("a_1_all.deb"), "a").unwrap();
        fs::write(downloads.join("lock"), "").unwrap();
        assert_eq!(cache.adopt(&downloads, &[".deb"]).unwrap(), 1);
        assert_eq!(cache.adopt(&downloads, &[".deb"]).unwrap(), 0);
        let dest = dir.path().join("dest");
        assert_eq!(
            cache
                .provide(["a_1_all.deb", "b_1_all.deb"], &dest)
                .unwrap(),
            1
        );
        assert_eq!(fs::read_to_string(dest.join("a_1_all.deb")).unwrap(), "a");
        assert!(
            cache
                .path()
                .starts_with(dir.path().join("store/v1/packages"))
        );
    }
}
