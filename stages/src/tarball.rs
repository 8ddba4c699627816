//! A stored tree written as a deterministic tar archive: entries in path order, numeric owners,
//! one mtime for all, hardlinks as links to their first path, xattrs as PAX records. The tar
//! format writes its output with it, and mmdebstrap reads a base tree in this form.

use std::fs::File;
use std::io::{BufWriter, Write};

use kiln_cache::{EntryKind, Manifest, Store};
use tar::{EntryType, Header};

/// Write `manifest` as a tar archive at `path`.
pub(crate) fn write_tar(
    store: &Store,
    manifest: &Manifest,
    mtime: u64,
    path: &std::path::Path,
) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let mut builder = tar::Builder::new(file);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut first_of_group: std::collections::BTreeMap<u32, String> = Default::default();
    for entry in manifest.entries() {
        if entry.path.is_empty() {
            continue;
        }
        if !entry.xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = entry
                .xattrs
                .iter()
                .map(|(name, value)| (format!("SCHILY.xattr.{name}"), value.as_slice()))
                .collect();
            builder
                .append_pax_extensions(records.iter().map(|(key, value)| (key.as_str(), *value)))?;
        }
        let mut header = Header::new_gnu();
        header.set_mode(entry.mode & 0o7777);
        header.set_uid(u64::from(entry.uid));
        header.set_gid(u64::from(entry.gid));
        header.set_mtime(mtime);
        header.set_size(0);
        if let Some(group) = entry.hardlink
            && let Some(first) = first_of_group.get(&group)
        {
            header.set_entry_type(EntryType::Link);
            builder.append_link(&mut header, &entry.path, first)?;
            continue;
        }
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(EntryType::Directory);
                builder.append_data(&mut header, format!("{}/", entry.path), std::io::empty())?;
            }
            EntryKind::File { blob, size } => {
                header.set_entry_type(EntryType::Regular);
                header.set_size(*size);
                let content = store.open_blob(blob).map_err(std::io::Error::other)?;
                builder.append_data(&mut header, &entry.path, content)?;
                if let Some(group) = entry.hardlink {
                    first_of_group.insert(group, entry.path.clone());
                }
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                builder.append_link(&mut header, &entry.path, target)?;
            }
            EntryKind::CharDev { rdev } | EntryKind::BlockDev { rdev } => {
                let kind = if matches!(entry.kind, EntryKind::CharDev { .. }) {
                    EntryType::Char
                } else {
                    EntryType::Block
                };
                header.set_entry_type(kind);
                header.set_device_major(libc::major(*rdev))?;
                header.set_device_minor(libc::minor(*rdev))?;
                builder.append_data(&mut header, &entry.path, std::io::empty())?;
            }
            EntryKind::Fifo => {
                header.set_entry_type(EntryType::Fifo);
                builder.append_data(&mut header, &entry.path, std::io::empty())?;
            }
            // Sockets cannot be archived; tar skips them too.
            EntryKind::Socket => {}
        }
    }
    let mut file = builder.into_inner()?;
    file.flush()
}
