//! Image configuration after the packages, as mkosi does it: autologin drop-ins, the
//! os-release lines, the `/init` link of a UKI or cpio image, systemd presets, the first-boot
//! settings, the hostname, the root password, `/etc/machine-id`, and the package managers'
//! metadata cleaned away.
//!
//! Each is a stage of its own with its own key, so changing the hostname re-runs only the
//! hostname stage and the stages after it. All but presets are a [`TreeEdit`] of the manifest (a
//! blob read, changed and stored again, an entry replaced), each the stage of an [`EditStage`]:
//! fast, exact, and without touching the disk. Presets need `systemctl preset-all`, which runs
//! against an overlay of the tree.

mod autologin;
mod clean_metadata;
pub mod crypt;
mod edit;
mod error;
mod firstboot;
mod hostname;
mod init;
mod machine_id;
mod os_release;
mod presets;
mod root_password;

use std::path::Path;

use kiln_cache::{Entry, EntryKind, Manifest, Store};
use kiln_engine::StageError;

pub use autologin::Autologin;
pub use clean_metadata::CleanMetadata;
pub use edit::{EditStage, TreeEdit};
pub use error::ConfigError;
pub use firstboot::Firstboot;
pub use hostname::Hostname;
pub use init::Init;
pub use machine_id::MachineId;
pub use os_release::OsRelease;
pub use presets::PresetsStage;
pub use root_password::RootPasswordHash;

use crate::trees::{lay_over, resolve_in_tree};

/// Put `content` at `path` (relative to the image root) as a regular file owned by root, in
/// place of whatever is there. Missing parent directories are created (0755, root).
pub fn put_file(
    store: &Store,
    tree: &mut Manifest,
    path: &str,
    content: &[u8],
    mode: u32,
) -> Result<(), StageError> {
    let blob = store.put_bytes(content)?;
    let kind = EntryKind::File {
        blob,
        size: content.len() as u64,
    };
    place(tree, Entry::new(path, kind, mode))
}

/// Put a symlink at `path` pointing to `target`, in place of whatever is there.
pub fn put_symlink(tree: &mut Manifest, path: &str, target: &str) -> Result<(), StageError> {
    let kind = EntryKind::Symlink {
        target: target.to_string(),
    };
    place(tree, Entry::new(path, kind, 0o777))
}

/// Lay `entry` over the tree. Its parent directory is found through the image's symlinks (and
/// created, 0755 root, where missing), as a copy into the image would find it.
fn place(tree: &mut Manifest, mut entry: Entry) -> Result<(), StageError> {
    let failed =
        |error: kiln_cache::ManifestError| StageError::failed(crate::error::TreeError::from(error));
    let (parent, leaf) = match entry.path.rsplit_once('/') {
        Some((parent, leaf)) => (parent.to_string(), leaf.to_string()),
        None => (String::new(), entry.path.clone()),
    };
    entry.path = leaf;
    let mut overlay = Manifest::new();
    overlay
        .insert_or_replace(Entry::new("", EntryKind::Dir, 0o755))
        .map_err(failed)?;
    overlay.insert_or_replace(entry).map_err(failed)?;
    lay_over(tree, &overlay, &Path::new("/").join(parent)).map_err(StageError::failed)
}

/// The entry at `path`, following symlinks of the image.
pub fn lookup<'a>(tree: &'a Manifest, path: &str) -> Option<&'a Entry> {
    let resolved = resolve_in_tree(tree, path).ok()?;
    tree.get(&resolved)
}

/// The content of the regular file at `path`.
pub fn read_file(
    store: &Store,
    tree: &Manifest,
    path: &str,
) -> Result<Option<(Entry, Vec<u8>)>, StageError> {
    let Some(entry) = lookup(tree, path) else {
        return Ok(None);
    };
    let Some(blob) = entry.blob() else {
        return Ok(None);
    };
    let content = store.read_blob(blob)?;
    Ok(Some((entry.clone(), content)))
}
