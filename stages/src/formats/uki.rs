//! `Format=uki`: a Unified Kernel Image whose initrd is the whole finished tree, as mkosi builds
//! it: the kernel and systemd-stub come from the tree as it was before packages were removed and
//! RemoveFiles= and the finalize scripts ran (mkosi saves them then), `.osrel` from the finished
//! tree. Besides `<Output>.efi`, mkosi's default `SplitArtifacts=` also writes the kernel
//! (`<Output>.vmlinuz`) and the initrd (`<Output>.initrd`).

use crate::initrd::{DEFAULT_LEVEL, InitrdStage};
use crate::uki::{KernelStage, UkiStage};

use super::{Artifact, Format, FormatContext, FormatStages};

/// `Format=uki`.
pub(super) struct Uki;

impl Format for Uki {
    fn name(&self) -> &'static str {
        "uki"
    }

    fn runs_as_initrd(&self) -> bool {
        true
    }

    fn signed_stage(&self) -> Option<&'static str> {
        Some("uki")
    }

    fn boot_suffix(&self) -> Option<&'static str> {
        Some(".efi")
    }

    fn stages(&self, ctx: &FormatContext<'_>) -> FormatStages {
        let recipe = ctx.recipe;
        let mut uki = UkiStage::new(
            ctx.tree.clone(),
            "initrd",
            recipe.distribution.architecture.clone(),
            recipe.content.kernel_command_line.clone(),
        );
        uki.esp = Some(ctx.esp_tree.clone());
        FormatStages {
            stages: vec![
                Box::new(InitrdStage {
                    name: "initrd".to_string(),
                    base: ctx.tree.clone(),
                    source_date_epoch: ctx.source_date_epoch,
                    level: ctx.compress_level.unwrap_or(DEFAULT_LEVEL),
                }),
                Box::new(KernelStage {
                    name: "kernel".to_string(),
                    tree: ctx.esp_tree.clone(),
                    architecture: recipe.distribution.architecture.clone(),
                }),
                Box::new(uki),
            ],
            artifacts: vec![
                Artifact::file("uki", ".efi"),
                Artifact::file("kernel", ".vmlinuz"),
                Artifact::file("initrd", ".initrd"),
            ],
        }
    }
}
