//! `/init` for images the kernel starts from an initramfs (`Format=uki`, `Format=cpio`): a link to
//! systemd, made when the image has systemd and no `/init` of its own, as mkosi does.

use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

/// Where the link points.
pub const SYSTEMD: &str = "/usr/lib/systemd/systemd";

pub struct InitStage {
    pub base: String,
}

impl Stage for InitStage {
    fn name(&self) -> &str {
        "init"
    }

    fn kind(&self) -> &'static str {
        "init"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("base", &self.base)]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let base = ctx.input("base")?;
        let mut tree = ctx.store.manifest(&base)?;
        let has_systemd = super::lookup(&tree, SYSTEMD.trim_start_matches('/'))
            .is_some_and(|entry| entry.blob().is_some());
        if tree.get("init").is_some() || !has_systemd {
            return Ok(base);
        }
        super::put_symlink(&mut tree, "init", SYSTEMD)?;
        Ok(ctx.store.put_manifest(&tree)?)
    }
}
