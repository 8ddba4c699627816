//! What is costly to make and the same for every test of a run (a cold build of a recipe from
//! the Debian mirror): made once, by whichever test asks first, and shared by every test and
//! every test binary after it.
//!
//! A fixture lives in `<target>/kiln-test-fixtures/<name>-<digest>/`, where the digest is taken
//! over what it is made from (the kiln binary, the recipe), so a change to either makes it again
//! and a run that changed neither reuses it. `<name>.lock` beside it orders the makers: a test
//! holds it exclusively while it makes the fixture (any other waits, then reuses what it made)
//! and shared while it uses it, so that no fixture is replaced under a test that reads it.
//!
//! A fixture is read, never written: a test copies what it will change (real copies, never hard
//! links into the fixture). Each fixture records the size, mode and
//! mtime of every entry when it is made, and each test that takes it checks them, so a test that
//! wrote into it anyway fails in the next one that takes it, by name, instead of corrupting it
//! silently.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// The file, in a made fixture, that holds its entries as they were made.
const MADE: &str = ".made";

/// A fixture that is made and that this test holds (a shared lock, released when dropped).
#[derive(Debug)]
pub struct SharedFixture {
    dir: PathBuf,
    _lock: File,
}

impl SharedFixture {
    /// The fixture `name` made from `inputs` (files or directories whose paths and contents
    /// count), made by `make` into the empty directory it is given when no earlier test made
    /// it. `make` may panic: nothing is kept then, and the next test makes it again.
    pub fn get(name: &str, inputs: &[&Path], make: impl FnOnce(&Path)) -> SharedFixture {
        let root = fixtures_dir();
        std::fs::create_dir_all(&root)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
        let dir = root.join(format!("{name}-{}", digest(inputs)));
        let lock_path = root.join(format!("{name}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
        let take = |operation| {
            flock(&lock, operation)
                .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()))
        };
        take(FlockOperation::LockShared);
        if !dir.join(MADE).exists() {
            take(FlockOperation::Unlock);
            take(FlockOperation::LockExclusive);
            if !dir.join(MADE).exists() {
                make_fixture(&root, name, &dir, make);
            }
            take(FlockOperation::LockShared);
        }
        let fixture = SharedFixture { dir, _lock: lock };
        fixture.check_unchanged();
        fixture
    }

    /// Where the fixture is: to be read only.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A file of the fixture, as text.
    pub fn read(&self, relative: &str) -> String {
        let path = self.dir.join(relative);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Panics, naming what changed, unless every entry is as it was made.
    fn check_unchanged(&self) {
        let now = entries(&self.dir);
        let made = self.read(MADE);
        if now != made {
            let changed: Vec<&str> = now
                .lines()
                .filter(|line| !made.lines().any(|m| m == *line))
                .chain(made.lines().filter(|line| !now.lines().any(|n| n == *line)))
                .take(10)
                .collect();
            panic!(
                "the shared fixture {} was written to after it was made (a test must copy what \
                 it changes): {changed:#?}; remove the directory to make it again",
                self.dir.display()
            );
        }
    }
}

/// Makes `dir` under an exclusive lock: removes the fixtures of `name` made from other inputs
/// (and a partial one left by a test that failed), makes it beside, then moves it in place.
fn make_fixture(root: &Path, name: &str, dir: &Path, make: impl FnOnce(&Path)) {
    let prefix = format!("{name}-");
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir && file_name.starts_with(&prefix) {
            std::fs::remove_dir_all(entry.path())
                .unwrap_or_else(|e| panic!("cannot remove {}: {e}", entry.path().display()));
        }
    }
    let partial = root.join(format!(
        "{name}-partial.{}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&partial).unwrap();
    make(&partial);
    std::fs::write(partial.join(MADE), entries(&partial)).unwrap();
    std::fs::rename(&partial, dir)
        .unwrap_or_else(|e| panic!("cannot move {} in place: {e}", partial.display()));
}

/// One line per entry but [`MADE`]: path, mode, size and mtime (nanoseconds).
fn entries(dir: &Path) -> String {
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(dir).unwrap();
        if relative == Path::new(MADE) {
            continue;
        }
        let meta = entry.path().symlink_metadata().unwrap();
        let size = if meta.is_dir() { 0 } else { meta.size() };
        lines.push(format!(
            "{} {:o} {size} {}.{}",
            relative.display(),
            meta.mode(),
            meta.mtime(),
            meta.mtime_nsec()
        ));
    }
    lines.join("\n")
}

/// blake3 over each input's entries: relative path, type, permissions and content or target.
fn digest(inputs: &[&Path]) -> String {
    let mut hasher = blake3::Hasher::new();
    for input in inputs {
        hasher.update(input.as_os_str().as_encoded_bytes());
        hasher.update(&[0]);
        for entry in walkdir::WalkDir::new(input).sort_by_file_name() {
            let entry = entry.unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
            let path = entry.path();
            let meta = path.symlink_metadata().unwrap();
            hasher.update(
                path.strip_prefix(input)
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
            hasher.update(&meta.mode().to_le_bytes());
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else if meta.is_file() {
                std::fs::read(path).unwrap()
            } else {
                Vec::new()
            };
            hasher.update(&(content.len() as u64).to_le_bytes());
            hasher.update(&content);
        }
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// `<target>/kiln-test-fixtures`: the target directory is the one holding the running test
/// binary (`<target>/<profile>/deps/<test>`), found by cargo's `CACHEDIR.TAG`.
fn fixtures_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join("kiln-test-fixtures")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_fixture_is_made_once_for_its_inputs_and_again_when_they_change() {
        let inputs = tempfile::tempdir().unwrap();
        std::fs::write(inputs.path().join("recipe"), "one").unwrap();
        let name = format!("selftest-{}", std::process::id());
        let made = AtomicUsize::new(0);
        let make = |dir: &Path| {
            made.fetch_add(1, Ordering::SeqCst);
            std::fs::write(dir.join("out"), "made").unwrap();
        };
        let paths: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let fixture = SharedFixture::get(&name, &[inputs.path()], make);
                        assert_eq!(fixture.read("out"), "made");
                        fixture.path().to_path_buf()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert!(paths.iter().all(|path| *path == paths[0]));

        // Other inputs: made again, and the old one removed.
        std::fs::write(inputs.path().join("recipe"), "two").unwrap();
        let other = SharedFixture::get(&name, &[inputs.path()], make);
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert_ne!(other.path(), paths[0]);
        assert!(!paths[0].exists());

        // A write into the fixture is found by the next test that takes it.
        std::fs::write(other.path().join("out"), "written through").unwrap();
        let taken = std::panic::catch_unwind(|| SharedFixture::get(&name, &[inputs.path()], make));
        assert!(taken.is_err());
        std::fs::remove_dir_all(other.path()).unwrap();
        std::fs::remove_file(fixtures_dir().join(format!("{name}.lock"))).unwrap();
    }
}
