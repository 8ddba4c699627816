//! `Format=directory`: the finished tree itself, exported as a directory.

use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

use super::{Artifact, Format, FormatContext, FormatStages};

/// `Format=directory`.
pub(crate) struct Directory;

impl Format for Directory {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn keeps_package_metadata(&self) -> bool {
        true
    }

    fn stages(&self, ctx: &FormatContext<'_>) -> FormatStages {
        FormatStages {
            stages: vec![Box::new(DirectoryStage {
                name: "output".to_string(),
                base: ctx.tree.clone(),
            })],
            artifacts: vec![Artifact::directory("output")],
        }
    }
}

/// The tree of `base`, unchanged: the node the export reads.
pub(crate) struct DirectoryStage {
    pub name: String,
    pub base: String,
}

impl Stage for DirectoryStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "directory"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("tree", &self.base)]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        ctx.input("tree")
    }
}
