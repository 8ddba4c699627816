//! `Format=tar`: the finished tree as a deterministic archive written from the manifest: entries
//! in path order, numeric owners, every mtime set to SOURCE_DATE_EPOCH, hardlinks as links to
//! their first path, xattrs as PAX records.
//!
//! mkosi compresses a tar output with `CompressOutput=` (zstd by default, `.tar.zst`); kiln
//! writes it uncompressed (`.tar`) for now.

use kiln_cache::{Digest, OutputKind, PutMode};
use kiln_engine::{Input, Stage, StageContext, StageError};

use super::{Artifact, Format, FormatContext, FormatStages};
use crate::tarball::write_tar;

/// `Format=tar`.
pub(crate) struct Tar;

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
pub(crate) struct TarStage {
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

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::{Entry, EntryKind, Manifest, Store};

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
