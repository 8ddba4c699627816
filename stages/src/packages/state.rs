//! What the packages stages keep in the store besides objects, and how they run their tools.
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
//! │   └── gnupg/               the keyring signatures are checked with
//! ├── debs/                    downloaded .deb files, shared by every build
//! └── pkgs/                    downloaded .pkg.tar.* files, shared by every build
//! ```
//!
//! Each entry of these folders (a state folder, a package file) is a unit `kiln cache gc` may
//! remove: using one sets its modification time ([`mark_used`]), and gc removes those no kept
//! build used (see the cache's gc).
//!
//! Package files are written to a stage's scratch directory first and hard-linked into the cache
//! under their final name (a link never replaces an existing file), so two builds sharing the
//! cache need no lock for it. The index a resolution read is hard-linked into a temporary folder
//! of the store (`v1/tmp/<pid>-…`) and installation reads that copy: a concurrent build that
//! updates the same state cannot change what this one installs.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_cache::{Digest, Store};

use super::error::PackagesError;
use crate::host::{clean_command, find_tool, process};

/// The folder of one private package manager state, named by the digest of what defines it.
pub fn state_dir(store: &Store, manager: &str, identity: &str) -> PathBuf {
    let digest = Digest::of_bytes(identity.as_bytes()).to_hex();
    store.packages_dir().join(manager).join(&digest[..32])
}

/// Record that a build uses `path` (a state folder or a package file): its modification time
/// becomes now, which keeps it from `kiln cache gc` while a build that used it is kept. Best
/// effort: a unit whose time cannot be set is at worst downloaded again after a gc.
pub fn mark_used(path: &Path) {
    if let Ok(file) = File::open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Create a directory and its parents.
pub fn create_dir(path: &Path) -> Result<(), PackagesError> {
    fs::create_dir_all(path).map_err(|source| PackagesError::io("create", path, source))
}

/// Write a file whole.
pub fn write_file(path: &Path, content: &[u8]) -> Result<(), PackagesError> {
    fs::write(path, content).map_err(|source| PackagesError::io("write", path, source))
}

/// Remove a file that may not exist.
pub fn remove_file_if_exists(path: &Path) -> Result<(), PackagesError> {
    match fs::remove_file(path) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            Err(PackagesError::io("remove", path, source))
        }
        _ => Ok(()),
    }
}

/// An exclusive `flock` on a state's `lock` file, released when dropped.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Wait for and take the lock of the state folder `dir`.
    pub fn acquire(dir: &Path) -> Result<StateLock, PackagesError> {
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

/// A temporary folder of the store, removed when dropped (and by `kiln cache gc` or `verify` if
/// kiln is killed: its name carries kiln's pid).
#[derive(Debug)]
pub struct Snapshot {
    dir: tempfile::TempDir,
}

impl Snapshot {
    pub fn create(store: &Store, label: &str) -> Result<Snapshot, PackagesError> {
        let dir = store
            .scratch_dir(label)
            .map_err(|source| PackagesError::io("create a folder in", store.tmp_dir(), source))?;
        Ok(Snapshot { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A short path to a folder whose own path may be long: gpg puts its agent's socket in its home
/// folder, and a Unix socket's path holds at most 107 bytes, which a store deep in a project
/// exceeds. The short path is a symlink in a private folder of `/tmp`; when dropped, the gpg
/// agent started for that home is stopped and the folder removed.
#[derive(Debug)]
pub struct GpgHome {
    dir: tempfile::TempDir,
    link: PathBuf,
}

impl GpgHome {
    /// A short path to the gpg home `target`.
    pub fn for_dir(target: &Path) -> Result<GpgHome, PackagesError> {
        create_dir(target)?;
        let _ = fs::set_permissions(target, fs::Permissions::from_mode(0o700));
        let tmp = Path::new("/tmp");
        let dir = tempfile::Builder::new()
            .prefix("kiln-gpg-")
            .tempdir_in(tmp)
            .map_err(|source| PackagesError::io("create a folder in", tmp, source))?;
        let link = dir.path().join("home");
        std::os::unix::fs::symlink(target, &link)
            .map_err(|source| PackagesError::io("link", &link, source))?;
        Ok(GpgHome { dir, link })
    }

    pub fn path(&self) -> &Path {
        &self.link
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        if find_tool("gpgconf").is_some() {
            let mut command = clean_command("gpgconf");
            command
                .arg("--homedir")
                .arg(&self.link)
                .args(["--kill", "gpg-agent"]);
            let _ = process::run(command, &mut |_| {});
        }
        let _ = fs::remove_file(&self.link);
        let _ = &self.dir;
    }
}

/// Hard-link (or, across file systems, copy) every regular file of `from` into `to`, except
/// those named in `skip`.
pub fn link_files(from: &Path, to: &Path, skip: &[&str]) -> Result<usize, PackagesError> {
    create_dir(to)?;
    let mut count = 0;
    let entries = fs::read_dir(from).map_err(|source| PackagesError::io("read", from, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| PackagesError::io("read", from, source))?;
        let name = entry.file_name();
        if skip.iter().any(|skipped| name == *skipped) {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|source| PackagesError::io("read", entry.path(), source))?;
        if !kind.is_file() {
            continue;
        }
        link_or_copy(&entry.path(), &to.join(&name))?;
        count += 1;
    }
    Ok(count)
}

/// Hard-link `from` to `to`, copying when they are on different file systems. An existing `to`
/// is left as it is.
pub fn link_or_copy(from: &Path, to: &Path) -> Result<(), PackagesError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => fs::copy(from, to)
            .map(|_| ())
            .map_err(|source| PackagesError::io("copy", from, source)),
        Err(source) => Err(PackagesError::io("link", from, source)),
    }
}

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
}

/// The host tools a package manager needs, and the Debian package of each.
pub fn require_tools(tools: &[(&str, &str)]) -> Result<(), PackagesError> {
    for (tool, package) in tools {
        if find_tool(tool).is_none() {
            return Err(PackagesError::ToolMissing {
                tool: tool.to_string(),
                package: package.to_string(),
            });
        }
    }
    Ok(())
}

/// What a finished tool printed.
#[derive(Debug)]
pub struct ToolOutput {
    pub code: i32,
    pub lines: Vec<String>,
}

impl ToolOutput {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The last `count` lines, one string.
    pub fn tail(&self, count: usize) -> String {
        let start = self.lines.len().saturating_sub(count);
        self.lines[start..].join("\n")
    }
}

/// Run `command` to completion; every line of its merged output goes to `sink` and is kept.
pub fn run_tool(
    command: Command,
    tool: &str,
    sink: &mut dyn FnMut(&str),
) -> Result<ToolOutput, PackagesError> {
    let mut lines = Vec::new();
    let finished = process::run(command, &mut |line| {
        sink(line);
        lines.push(line.to_string());
    })
    .map_err(|source| PackagesError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    Ok(ToolOutput {
        code: process::exit_code(&finished.status),
        lines,
    })
}

/// Quote `text` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Whether kiln runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_the_debian_package_that_provides_it() {
        assert!(require_tools(&[("sh", "dash")]).is_ok());
        match require_tools(&[("sh", "dash"), ("kiln-no-such-tool", "kiln-tools")]) {
            Err(PackagesError::ToolMissing { tool, package }) => {
                assert_eq!(
                    (tool.as_str(), package.as_str()),
                    ("kiln-no-such-tool", "kiln-tools")
                );
            }
            other => panic!("{other:?}"),
        }
        let message = PackagesError::ToolMissing {
            tool: "mmdebstrap".to_string(),
            package: "mmdebstrap".to_string(),
        };
        let help = miette::Diagnostic::help(&message).map(|help| help.to_string());
        assert_eq!(
            help.as_deref(),
            Some("Install the Debian package that provides it: `apt-get install mmdebstrap`")
        );
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

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
