//! `Format=tar`: the finished tree as a deterministic archive written from the manifest: entries
//! in path order, numeric owners, every mtime set to SOURCE_DATE_EPOCH, hardlinks as links to
//! their first path, xattrs as PAX records.
//!
//! mkosi compresses a tar output with `CompressOutput=` (zstd by default, `.tar.zst`); kiln
//! writes it uncompressed (`.tar`) for now.

use std::fs::File;
use std::io::{BufWriter, Write};

use kiln_cache::{Digest, EntryKind, Manifest, OutputKind, PutMode, Store};
use kiln_engine::{Input, Stage, StageContext, StageError};
use tar::{EntryType, Header};

use super::{Artifact, Format, FormatContext, FormatStages};

/// `Format=tar`.
pub struct Tar;

impl Format for Tar {
    fn name(&self) -> &'static str {
        "tar"
    }

    fn keeps_package_metadata(&self) -> bool {
        true
    }

    fn stages(&self, ctx: &FormatContext<'_>) -> FormatStages {
        FormatStages {
            stages: vec![Box::new(TarStage {
                name: "output".to_string(),
                base: ctx.tree.clone(),
                source_date_epoch: ctx.source_date_epoch,
            })],
            artifacts: vec![Artifact::file("output", ".tar")],
        }
    }
}

/// Writes the tree of `base` as a tar archive.
pub struct TarStage {
    pub name: String,
    pub base: String,
    pub source_date_epoch: u64,
}

impl Stage for TarStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "tar"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("tree", &self.base),
            Input::value("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string()),
        ]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Blob
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let tree = ctx.input("tree")?;
        let manifest = ctx.store.manifest(&tree)?;
        // Every file's bytes go into the archive, as many as its header says: a damaged object,
        // or a tree claiming another length than its blob's, fails the stage instead.
        ctx.store.verify_tree_blobs(&tree, manifest.blobs())?;
        let path = ctx.scratch.join("image.tar");
        write_tar(ctx.store, &manifest, self.source_date_epoch, &path).map_err(|source| {
            StageError::failed(crate::error::OutputError::Write {
                path: path.clone(),
                source,
            })
        })?;
        Ok(ctx.store.put_file(&path, PutMode::Move)?)
    }
}

/// Write `manifest` as a tar archive at `path`.
pub fn write_tar(
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::Entry;

    struct Quiet;
    impl kiln_engine::StageLog for Quiet {
        fn line(&self, _: &str) {}
    }

    /// Runs the tar stage on a tree of one file of `content` that claims `claimed` bytes.
    fn tar_of(claimed: u64) -> (Result<Digest, StageError>, Store, Digest, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let content = b"thirty-three bytes of file data!\n";
        let blob = store.put_bytes(content).unwrap();
        let manifest = Manifest::from_entries(vec![
            Entry::new("", EntryKind::Dir, 0o755),
            Entry::new("etc", EntryKind::Dir, 0o755),
            Entry::new(
                "etc/os-release",
                EntryKind::File {
                    blob,
                    size: claimed,
                },
                0o644,
            ),
        ])
        .unwrap();
        let tree = store.put_manifest(&manifest).unwrap();
        let stage = TarStage {
            name: "output".into(),
            base: "finalize".into(),
            source_date_epoch: 0,
        };
        let inputs = [("tree".to_owned(), tree)].into_iter().collect();
        let values = Default::default();
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let ctx = StageContext {
            store: &store,
            project_dir: dir.path(),
            scratch: &scratch,
            inputs: &inputs,
            values: &values,
            log: &Quiet,
        };
        let result = stage.run(&ctx);
        (result, store, tree, dir)
    }

    #[test]
    fn a_tree_claiming_more_than_its_blob_holds_is_not_archived() {
        let (result, store, tree, _dir) = tar_of(1 << 40);
        let error = result.unwrap_err();
        assert!(error.to_string().contains("corrupt"), "{error}");
        assert!(!store.has_tree(&tree), "the lying tree is kept");
        assert_eq!(store.take_damaged(), vec![tree]);

        let (result, store, _, _dir) = tar_of(33);
        let archive = store.read_blob(&result.unwrap()).unwrap();
        let mut entries = tar::Archive::new(archive.as_slice());
        let sizes: Vec<u64> = entries
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().header().size().unwrap())
            .collect();
        assert!(sizes.contains(&33), "{sizes:?}");
    }
}
