//! Export: the output stage's result written to the output directory under mkosi's names.
//!
//! `<Output>` (mkosi's default: `<ImageId>_<ImageVersion>`, or `<ImageId>` without a version)
//! plus the format's suffix, and, when the name carries a version, a symlink from the
//! unversioned name. The new output is prepared beside the old one and renamed into place, so a
//! failed or killed build leaves the previous output intact. An output already holding the same
//! result (recorded in a `user.kiln.output` xattr) is left alone unless forced; a directory output
//! holding an older result is cloned with hard links and updated by the difference, so that
//! unchanged files keep their inodes and a small change costs little. Hand edits made inside an
//! output are carried over by that update; `-f` reads the output back (checking each file's
//! type, size, mode, owner and mtime against the image, and reading only files that differ)
//! and undoes them, again by the difference. A file output is copied afresh with `-f`.
//!
//! Every blob whose bytes are copied into the output is hashed again first
//! ([`Store::verify_blob`]): a damaged object fails the export, naming its file, instead of
//! reaching the image. A directory output replaces the old one with one atomic exchange
//! (`renameat2(RENAME_EXCHANGE)`), so at every instant the output's name holds a whole output,
//! the old or the new; what a killed build left staged beside it is removed by the next export.

use std::path::{Path, PathBuf};

use kiln_cache::{CheckoutMode, CheckoutOptions, Digest, Store};

use crate::error::OutputError;

const MARKER: &str = "user.kiln.output";

/// What to write and where.
#[derive(Debug, Clone)]
pub struct Export {
    pub output_dir: PathBuf,
    /// The output's file name (`archlinux-rescue_20240128.efi`).
    pub name: String,
    /// The unversioned name to link from, when it differs from `name`.
    pub link: Option<String>,
    /// A tree written as a directory, or a blob written as a file.
    pub directory: bool,
    pub digest: Digest,
    pub source_date_epoch: u64,
}

/// What export did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub path: PathBuf,
    /// False when the output already held this result.
    pub written: bool,
}

/// Write the output (or leave it, when it is current and `force` is false).
pub(crate) fn export(store: &Store, export: &Export, force: bool) -> Result<Exported, OutputError> {
    let file_name = export.name.clone();
    for name in std::iter::once(&file_name).chain(&export.link) {
        if !kiln_recipe::paths::is_file_name(name) {
            return Err(OutputError::Name { name: name.clone() });
        }
    }
    let path = export.output_dir.join(&file_name);
    std::fs::create_dir_all(&export.output_dir).map_err(write_error(&export.output_dir))?;
    // What killed builds left staged beside the output goes first, whether or not it is written.
    remove_leftovers(&export.output_dir, &file_name);
    if let Some(link) = &export.link {
        remove_leftovers(&export.output_dir, link);
    }
    let marker = marker_value(&export.digest, export.source_date_epoch);
    let previous = read_marker(&path);
    if previous.as_deref() == Some(marker.as_str()) && !force {
        link(export, &file_name)?;
        return Ok(Exported {
            path,
            written: false,
        });
    }
    let pid = std::process::id();
    let staging = export
        .output_dir
        .join(format!(".{file_name}.kiln-new-{pid}"));
    let retired = export
        .output_dir
        .join(format!(".{file_name}.kiln-old-{pid}"));
    remove_any(&staging);
    match export.directory {
        true => {
            let staged =
                stage_directory(store, export, force, &path, previous.as_deref(), &staging)?;
            if staged == Staged::AlreadyCurrent {
                // Nothing differs: the output is the image already.
                write_marker(&path, &marker);
                link(export, &file_name)?;
                return Ok(Exported {
                    path,
                    written: false,
                });
            }
        }
        false => stage_file(store, export, &staging)?,
    }
    write_marker(&staging, &marker);
    kiln_cache::testpoint::pause_at("output-rename");
    replace(export, &file_name, &staging, &retired, path)
}

/// What preparing a directory output found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Staged {
    /// The new output stands under the staging name.
    Ready,
    /// Read back with `-f`, the output already is the image: nothing was staged.
    AlreadyCurrent,
}

/// Prepares a directory output under `staging`: by updating a hard-linked clone of the previous
/// output when it can be, by a fresh checkout otherwise.
fn stage_directory(
    store: &Store,
    export: &Export,
    force: bool,
    path: &Path,
    previous: Option<&str>,
    staging: &Path,
) -> Result<Staged, OutputError> {
    let checkout_error = |source| OutputError::Checkout {
        path: staging.to_path_buf(),
        source,
    };
    let manifest = store.manifest(&export.digest).map_err(checkout_error)?;
    let options = CheckoutOptions {
        mode: CheckoutMode::Copy,
        mtime: Some(export.source_date_epoch as i64),
        ..CheckoutOptions::default()
    };
    let updatable = updatable_manifest(store, export, force, path, previous, &manifest);
    if force && updatable.as_ref() == Some(&manifest) {
        return Ok(Staged::AlreadyCurrent);
    }
    // What the checkout copies is read from the store: hash it first. Updating the
    // previous output copies only the blobs it did not hold.
    let copied: Vec<(&Digest, u64)> = match &updatable {
        Some(old) => {
            let held: std::collections::HashSet<&Digest> =
                old.blobs().map(|(blob, _)| blob).collect();
            manifest
                .blobs()
                .filter(|(blob, _)| !held.contains(blob))
                .collect()
        }
        None => manifest.blobs().collect(),
    };
    store
        .verify_tree_blobs(&export.digest, copied)
        .map_err(checkout_error)?;
    let updated = updatable.is_some_and(|old| {
        let done = kiln_cache::clone_hardlinked(path, staging).is_ok()
            && store
                .update_checkout(&old, &manifest, staging, options)
                .is_ok();
        if !done {
            remove_any(staging);
        }
        done
    });
    if !updated {
        store
            .checkout(&manifest, staging, options)
            .map_err(checkout_error)?;
    }
    Ok(Staged::Ready)
}

/// The manifest of what the directory output at `path` holds, when it can be brought up to date
/// rather than written afresh.
///
/// The previous output, when it was written with the same SOURCE_DATE_EPOCH and its tree is still
/// in the store, is cloned with hard links and brought up to date: the cost follows the change,
/// not the image. With -f, what the output holds is read from the disk instead (each file checked
/// against the image by type, size, mode, owner and mtime; a file that differs is read), so hand
/// edits are undone, still by the difference only.
fn updatable_manifest(
    store: &Store,
    export: &Export,
    force: bool,
    path: &Path,
    previous: Option<&str>,
    manifest: &kiln_cache::Manifest,
) -> Option<kiln_cache::Manifest> {
    let is_dir = path.is_dir() && !path.is_symlink();
    if force {
        is_dir
            .then(|| {
                store.scan_against(
                    path,
                    manifest,
                    export.source_date_epoch as i64 * 1_000_000_000,
                )
            })
            .and_then(Result::ok)
            .map(|(actual, _)| without_marker(actual))
    } else {
        previous
            .and_then(parse_marker)
            .filter(|(_, epoch)| *epoch == export.source_date_epoch)
            .and_then(|(digest, _)| store.manifest(&digest).ok())
            .filter(|_| is_dir)
    }
}

/// Prepares a file output under `staging`: the verified blob, copied.
fn stage_file(store: &Store, export: &Export, staging: &Path) -> Result<(), OutputError> {
    let checkout_error = |source| OutputError::Checkout {
        path: staging.to_path_buf(),
        source,
    };
    store.verify_blob(&export.digest).map_err(checkout_error)?;
    let blob = store.blob_path(&export.digest).map_err(checkout_error)?;
    std::fs::copy(blob, staging).map_err(write_error(staging))?;
    // The store's objects are read-only; an output is the user's file.
    std::fs::set_permissions(staging, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(write_error(staging))?;
    set_mtime(staging, export.source_date_epoch);
    Ok(())
}

/// Puts the staged output in the place of `path`, keeping the previous output when that fails,
/// then links the unversioned name to it.
fn replace(
    export: &Export,
    file_name: &str,
    staging: &Path,
    retired: &Path,
    path: PathBuf,
) -> Result<Exported, OutputError> {
    // A directory cannot be renamed over another, nor over a symlink (the unversioned link a
    // versioned build left under this name): the two are exchanged in one step, and the old
    // one, now under the staging name, removed. A file is replaced by the rename itself.
    let staged_dir = staging.is_dir() && !staging.is_symlink();
    let replaces_dir = path.is_dir() && !path.is_symlink();
    if replaces_dir || (staged_dir && path.is_symlink()) {
        match exchange(staging, &path) {
            Ok(()) => {
                remove_any(staging);
                link(export, file_name)?;
                return Ok(Exported {
                    path,
                    written: true,
                });
            }
            // A filesystem without RENAME_EXCHANGE: the old output moves aside first.
            Err(_) => std::fs::rename(&path, retired).map_err(write_error(&path))?,
        }
    }
    if let Err(source) = std::fs::rename(staging, &path) {
        // Put the previous output back: a failed export leaves it as it was.
        let _ = std::fs::rename(retired, &path);
        remove_any(staging);
        return Err(OutputError::Write { path, source });
    }
    remove_any(retired);
    link(export, file_name)?;
    Ok(Exported {
        path,
        written: true,
    })
}

/// The error of a failed write to `path`, for `map_err`.
fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |source| OutputError::Write { path, source }
}

fn link(export: &Export, file_name: &str) -> Result<(), OutputError> {
    let Some(link) = &export.link else {
        return Ok(());
    };
    let link_path = export.output_dir.join(link);
    if link_path == export.output_dir.join(file_name) {
        return Ok(());
    }
    if std::fs::read_link(&link_path).is_ok_and(|target| target == Path::new(file_name)) {
        return Ok(());
    }
    // An earlier unversioned build left its output under the link's name: it is replaced by
    // the link, as it would have been by the next unversioned build.
    if read_marker(&link_path).is_some() && !link_path.is_symlink() {
        remove_any(&link_path);
    }
    let staging = export
        .output_dir
        .join(format!(".{link}.kiln-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(file_name, &staging).map_err(|source| OutputError::Write {
        path: staging.clone(),
        source,
    })?;
    std::fs::rename(&staging, &link_path).map_err(|source| OutputError::Write {
        path: link_path.clone(),
        source,
    })
}

/// Swaps two paths in one step (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(std::io::Error::from)
}

/// Removes what killed exports of `file_name` left beside it: `.NAME.kiln-new-PID`,
/// `.NAME.kiln-old-PID` and `.NAME.kiln-link-PID` of processes that are gone.
fn remove_leftovers(output_dir: &Path, file_name: &str) {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return;
    };
    let prefix = format!(".{file_name}.kiln-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|name| name.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = ["new-", "old-", "link-"]
            .iter()
            .find_map(|kind| rest.strip_prefix(kind))
            .and_then(|pid| pid.parse::<i32>().ok());
        let gone = pid.is_some_and(|pid| {
            pid as u32 != std::process::id()
                && rustix::process::Pid::from_raw(pid).is_none_or(|pid| {
                    matches!(
                        rustix::process::test_kill_process(pid),
                        Err(rustix::io::Errno::SRCH)
                    )
                })
        });
        if gone {
            remove_any(&entry.path());
        }
    }
}

fn remove_any(path: &Path) {
    match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

fn set_mtime(path: &Path, epoch: u64) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
    if let Ok(file) = std::fs::File::options().write(true).open(path) {
        let _ = file.set_modified(time);
    }
}

/// A scanned output's manifest without the marker kiln put on its root.
fn without_marker(mut manifest: kiln_cache::Manifest) -> kiln_cache::Manifest {
    if let Some(root) = manifest.get("")
        && root.xattrs.contains_key(MARKER)
    {
        let mut root = root.clone();
        root.xattrs.remove(MARKER);
        let _ = manifest.insert_or_replace(root);
    }
    manifest
}

fn read_marker(path: &Path) -> Option<String> {
    let value = crate::host::xattr::get(path, MARKER.as_bytes())
        .ok()
        .flatten()?;
    String::from_utf8(value).ok()
}

fn write_marker(path: &Path, marker: &str) {
    // Without xattr support the output is simply rewritten on every build.
    let _ = crate::host::xattr::set(path, MARKER.as_bytes(), marker.as_bytes());
}

/// What the marker records: the result's digest and the SOURCE_DATE_EPOCH of its mtimes.
fn marker_value(digest: &Digest, source_date_epoch: u64) -> String {
    format!("{digest} {source_date_epoch}")
}

fn parse_marker(value: &str) -> Option<(Digest, u64)> {
    let (digest, epoch) = value.split_once(' ')?;
    Some((digest.parse().ok()?, epoch.parse().ok()?))
}
