//! `Hostname=`: `/etc/hostname` holding the name and a newline, as mkosi writes it.

use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

pub struct HostnameStage {
    pub base: String,
    pub hostname: String,
}

impl Stage for HostnameStage {
    fn name(&self) -> &str {
        "hostname"
    }

    fn kind(&self) -> &'static str {
        "hostname"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("base", &self.base),
            Input::value("Hostname", &self.hostname),
        ]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = ctx.store.manifest(&ctx.input("base")?)?;
        let content = format!("{}\n", self.hostname);
        super::put_file(
            ctx.store,
            &mut tree,
            "etc/hostname",
            content.as_bytes(),
            0o644,
        )?;
        Ok(ctx.store.put_manifest(&tree)?)
    }
}
