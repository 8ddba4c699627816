//! systemd presets: `systemctl --root=<tree> preset-all`, and `--global preset-all` for user
//! units, as mkosi applies them once the image's packages and trees are in place. The recipe's
//! own preset files (from `mkosi.extra/`, copied before) take part like any other, so they win
//! where their names sort first. An image without systemctl is left as it is.
//!
//! The host's systemctl does the work against an overlay of the tree; the stage records what it
//! changed (the enablement symlinks).

use std::sync::Arc;

use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

use super::error::ConfigError;
use crate::host::{Host, HostError, ToolInvocation};
use crate::log::in_image_terms;
use crate::scripts::apply_changes;

pub struct PresetsStage {
    pub base: String,
    pub host: Arc<dyn Host>,
}

impl Stage for PresetsStage {
    fn name(&self) -> &str {
        "presets"
    }

    fn kind(&self) -> &'static str {
        "presets"
    }

    fn version(&self) -> u32 {
        // 2: `user.overlay.*` xattrs in the tree are the image's, not whiteouts or opaque
        // directories.
        2
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("base", &self.base)]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let base_id = ctx.input("base")?;
        let base = ctx.store.manifest(&base_id)?;
        if super::lookup(&base, "usr/bin/systemctl").is_none() {
            return Ok(base_id);
        }
        let systemctl = self.host.find_tool("systemctl").ok_or_else(|| {
            StageError::failed(ConfigError::ToolMissing {
                tool: "systemctl".to_string(),
                package: "systemd".to_string(),
                purpose: "apply systemd presets".to_string(),
            })
        })?;
        let lower = ctx.store.shared_checkout(&base_id)?;
        let tree = self
            .host
            .mutable_tree(&lower, &ctx.scratch.join("work"))
            .map_err(StageError::failed)?;
        for global in [false, true] {
            let mut invocation =
                ToolInvocation::new(&systemctl).arg(format!("--root={}", tree.root().display()));
            if global {
                invocation = invocation.arg("--global");
            }
            let invocation = invocation.arg("preset-all");
            let shown = format!(
                "systemctl{} preset-all",
                if global { " --global" } else { "" }
            );
            let root = tree.root().to_path_buf();
            let mut sink = |line: &str| ctx.log.line(&in_image_terms(line, &root));
            let outcome = self
                .host
                .run_tool(&invocation, &mut sink)
                .map_err(|error| {
                    StageError::failed(match error {
                        HostError::Spawn { source, .. } => ConfigError::Spawn {
                            command: shown.clone(),
                            source,
                        },
                        other => ConfigError::Spawn {
                            command: shown.clone(),
                            source: std::io::Error::other(other.to_string()),
                        },
                    })
                })?;
            if !outcome.success() {
                return Err(StageError::failed(ConfigError::CommandFailed {
                    command: shown,
                    code: outcome.code,
                    output: outcome
                        .output_tail
                        .iter()
                        .map(|line| in_image_terms(line, &root))
                        .collect::<Vec<_>>()
                        .join("\n"),
                }));
            }
        }
        let changes = tree.finish().map_err(StageError::failed)?;
        let manifest = apply_changes(ctx.store, base, changes)?;
        Ok(ctx.store.put_manifest(&manifest)?)
    }
}
