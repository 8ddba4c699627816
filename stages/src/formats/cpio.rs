//! `Format=cpio`: the finished tree as a zstd-compressed newc archive, the initrd stage's output
//! (`<Output>.cpio.zst`, as mkosi names a compressed cpio output).

use crate::initrd::{DEFAULT_LEVEL, InitrdStage};

use super::{Artifact, Format, FormatContext, FormatStages};

/// `Format=cpio`.
pub(super) struct Cpio;

impl Format for Cpio {
    fn name(&self) -> &'static str {
        "cpio"
    }

    fn runs_as_initrd(&self) -> bool {
        true
    }

    fn stages(&self, ctx: &FormatContext<'_>) -> FormatStages {
        FormatStages {
            stages: vec![Box::new(InitrdStage {
                name: "initrd".to_string(),
                base: ctx.tree.clone(),
                source_date_epoch: ctx.source_date_epoch,
                level: ctx.compress_level.unwrap_or(DEFAULT_LEVEL),
            })],
            artifacts: vec![Artifact::file("initrd", ".cpio.zst")],
        }
    }
}
