//! The gpg home pacman checks signatures with, under a short path: gpg puts its agent's socket
//! in its home folder, and a Unix socket's path holds at most 107 bytes, which a store deep in a
//! project exceeds. The short path is a symlink in a private folder of `/tmp`; when dropped, the
//! gpg agent started for that home is stopped (`gpgconf`, through the [`Host`]) and the folder
//! removed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::PackagesError;
use super::files::create_dir;
use crate::host::{Host, ToolInvocation};

/// A short path to a gpg home whose own path may be long.
pub struct GpgHome<'a> {
    dir: tempfile::TempDir,
    link: PathBuf,
    host: &'a dyn Host,
}

impl std::fmt::Debug for GpgHome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpgHome")
            .field("dir", &self.dir)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl<'a> GpgHome<'a> {
    /// A short path to the gpg home `target`, whose agent `host` stops when it is dropped.
    pub fn for_dir(target: &Path, host: &'a dyn Host) -> Result<GpgHome<'a>, PackagesError> {
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
        Ok(GpgHome { dir, link, host })
    }

    pub fn path(&self) -> &Path {
        &self.link
    }
}

impl Drop for GpgHome<'_> {
    fn drop(&mut self) {
        if self.host.find_tool("gpgconf").is_some() {
            let invocation = ToolInvocation::new("gpgconf")
                .arg("--homedir")
                .arg_path(&self.link)
                .args(["--kill", "gpg-agent"]);
            let _ = self.host.run_tool(&invocation, &mut |_| {});
        }
        let _ = fs::remove_file(&self.link);
        let _ = &self.dir;
    }
}
