//! The file steps the package managers take in their states, caches and scratch folders, each
//! failing with the path it failed on: creating folders, writing and removing files, and
//! hard-linking files (copying across file systems).

use std::fs;
use std::io;
use std::path::Path;

use super::error::PackagesError;

/// Create a directory and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<(), PackagesError> {
    fs::create_dir_all(path).map_err(|source| PackagesError::io("create", path, source))
}

/// Write a file whole.
pub(crate) fn write_file(path: &Path, content: &[u8]) -> Result<(), PackagesError> {
    fs::write(path, content).map_err(|source| PackagesError::io("write", path, source))
}

/// Remove a file that may not exist.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<(), PackagesError> {
    match fs::remove_file(path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            Err(PackagesError::io("remove", path, source))
        }
        _ => Ok(()),
    }
}

/// Hard-link (or, across file systems, copy) every regular file of `from` into `to`, except
/// those named in `skip`.
pub(crate) fn link_files(from: &Path, to: &Path, skip: &[&str]) -> Result<usize, PackagesError> {
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
pub(crate) fn link_or_copy(from: &Path, to: &Path) -> Result<(), PackagesError> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EXDEV) => fs::copy(from, to)
            .map(|_| ())
            .map_err(|source| PackagesError::io("copy", from, source)),
        Err(source) => Err(PackagesError::io("link", from, source)),
    }
}
