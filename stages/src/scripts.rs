//! Script stages: mkosi.prepare, mkosi.postinst and mkosi.finalize (and their `.chroot` forms).
//!
//! The input tree is checked out read-only from the store (hard links, shared by every build
//! that runs on the same tree), an overlay is mounted
//! over it, the scripts run against the merged tree, and only the overlay's upper layer, exactly
//! what the scripts changed, is turned into the output manifest (whiteouts become removals).
//! Without overlayfs the tree is copied and ingested whole.
//!
//! Every entry of the input tree is dated [`kiln_cache::SHARED_CHECKOUT_MTIME`] (1970-01-01,
//! kiln's default `SOURCE_DATE_EPOCH`): manifests record no times, and what a script writes
//! from the times it reads (`mandb` stores each manual page's mtime in `index.db`) is then the
//! same in every store.
//!
//! A variable such as `IMAGE_VERSION` is an input of the stage only when a script's text names
//! it (BitBake's rule for shell variables): a date-stamped `--image-version` does not re-run a
//! postinst that never reads it. A script sees exactly the variables that are its inputs, so
//! nothing its key cannot see reaches it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cache::{Digest, EntryKind, IngestOptions, Manifest, OutputKind, PutMode, Store};
use kiln_engine::{Input, Stage, StageContext, StageError};

use crate::host::{Host, HostError, ScriptError, ScriptInvocation, TreeChanges, UpperChange};
use crate::log::in_image_terms;

/// How an input records a variable the script names but the build leaves unset.
pub(crate) const UNSET: &str = "(unset)";

/// Which of mkosi's script hooks a stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptPhase {
    Prepare,
    Postinst,
    Finalize,
}

impl ScriptPhase {
    pub(crate) fn stage_name(self) -> &'static str {
        match self {
            ScriptPhase::Prepare => "prepare",
            ScriptPhase::Postinst => "postinst",
            ScriptPhase::Finalize => "finalize",
        }
    }

    /// The arguments mkosi passes to the scripts of this hook.
    fn args(self) -> Vec<String> {
        match self {
            ScriptPhase::Prepare | ScriptPhase::Postinst => vec!["final".to_string()],
            ScriptPhase::Finalize => Vec::new(),
        }
    }
}

pub(crate) struct ScriptsStage {
    pub phase: ScriptPhase,
    /// The stage whose output the scripts modify.
    pub base: String,
    /// The scripts, relative to the project directory (or absolute), in order.
    pub scripts: Vec<PathBuf>,
    /// Every variable mkosi knows, `None` where it leaves it unset; only those a script names
    /// become inputs.
    pub variables: BTreeMap<String, Option<String>>,
    pub project_dir: PathBuf,
    pub host: Arc<dyn Host>,
}

impl ScriptsStage {
    /// The variables named by any of the scripts' texts, `None` for those mkosi would leave
    /// unset. A script that cannot be read names nothing here; reading it as an input reports
    /// the problem.
    fn named_variables(&self) -> BTreeMap<String, Option<String>> {
        let texts: Vec<String> = self
            .scripts
            .iter()
            .filter_map(|script| std::fs::read(self.project_dir.join(script)).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect();
        self.variables
            .iter()
            .filter(|(name, _)| texts.iter().any(|text| names_variable(text, name)))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

/// Whether `text` mentions the variable `name` as a whole word.
pub(crate) fn names_variable(text: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_word) && !after.is_some_and(is_word)
    })
}

impl Stage for ScriptsStage {
    fn name(&self) -> &str {
        self.phase.stage_name()
    }

    fn kind(&self) -> &'static str {
        "scripts"
    }

    fn version(&self) -> u32 {
        // 2: the input tree's entries are dated `SHARED_CHECKOUT_MTIME`, not when the store
        // wrote them. 3: a script's `user.overlay.*` xattrs are the image's, not whiteouts or
        // opaque directories.
        3
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = vec![Input::stage("base", &self.base)];
        for script in &self.scripts {
            inputs.push(Input::file(script.display().to_string(), script));
            // Whether it may run at all depends on its executable bit (see the pipeline).
            let executable = std::fs::metadata(self.project_dir.join(script)).is_ok_and(|meta| {
                std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
            });
            inputs.push(Input::value(
                format!("{} executable", script.display()),
                if executable { "yes" } else { "no" },
            ));
        }
        for (name, value) in self.named_variables() {
            inputs.push(Input::value(
                name,
                value.unwrap_or_else(|| UNSET.to_string()),
            ));
        }
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let started = std::time::Instant::now();
        let base_id = ctx.input("base")?;
        let base = ctx.store.manifest(&base_id)?;
        // The input tree as a read-only checkout shared with every build of the same tree.
        let lower = ctx.store.shared_checkout(&base_id)?;
        let checked_out = started.elapsed();
        let scripts = self.stage_scripts(ctx)?;
        let outputdir = ctx.scratch.join("output");
        std::fs::create_dir_all(&outputdir).map_err(|source| {
            StageError::failed(HostError::Io {
                action: "create",
                path: outputdir.clone(),
                source,
            })
        })?;
        let tree = self
            .host
            .mutable_tree(&lower, &ctx.scratch.join("work"))
            .map_err(StageError::failed)?;
        // Exactly the variables the key recorded, read back from the inputs: the scripts'
        // texts are not read again, so what runs is what was keyed.
        let variables: BTreeMap<String, String> = self
            .variables
            .keys()
            .filter_map(|name| {
                let value = ctx.values.get(name)?;
                (value != UNSET).then(|| (name.clone(), value.clone()))
            })
            .collect();
        for (script, original) in scripts.iter().zip(&self.scripts) {
            let mut invocation = ScriptInvocation::new(
                script,
                self.phase.stage_name(),
                tree.root(),
                &self.project_dir,
                &outputdir,
            );
            invocation.env = variables.clone();
            invocation.args = self.phase.args();
            let root = tree.root().to_path_buf();
            let mut sink = |line: &str| ctx.log.line(&in_image_terms(line, &root));
            self.host
                .run_script(&invocation, &mut sink)
                .map_err(|error| {
                    StageError::failed(in_project_terms(error, original, &self.project_dir, &root))
                })?;
        }
        let ran = started.elapsed();
        let changes = tree.finish().map_err(StageError::failed)?;
        let manifest = apply_changes(ctx.store, base, changes)?;
        let tree = ctx.store.put_manifest(&manifest)?;
        ctx.log.line(&format!(
            "time: input checkout {} ms, scripts {} ms, changes stored {} ms",
            checked_out.as_millis(),
            (ran - checked_out).as_millis(),
            (started.elapsed() - ran).as_millis()
        ));
        Ok(tree)
    }
}

impl ScriptsStage {
    /// Copy each script's content, exactly as keyed, to the scratch directory under its own
    /// file name, executable.
    fn stage_scripts(&self, ctx: &StageContext<'_>) -> Result<Vec<PathBuf>, StageError> {
        let dir = ctx.scratch.join("scripts");
        let mut staged = Vec::new();
        for (position, script) in self.scripts.iter().enumerate() {
            let blob = ctx.input(&script.display().to_string())?;
            let name = script
                .file_name()
                .map_or_else(|| format!("script-{position}").into(), PathBuf::from);
            let target = dir.join(position.to_string()).join(name);
            let parent = target.parent().unwrap_or(&dir).to_path_buf();
            std::fs::create_dir_all(&parent).map_err(|source| {
                StageError::failed(HostError::Io {
                    action: "create",
                    path: parent.clone(),
                    source,
                })
            })?;
            ctx.store.copy_blob(&blob, &target, 0o755)?;
            staged.push(target);
        }
        Ok(staged)
    }
}

/// The tree after a mutable stage: the base with the upper layer applied, or the whole tree
/// ingested when there was no overlay.
pub(crate) fn apply_changes(
    store: &Store,
    mut base: Manifest,
    changes: TreeChanges,
) -> Result<Manifest, StageError> {
    match changes {
        TreeChanges::Whole { root } => Ok(store.ingest_dir(
            &root,
            IngestOptions {
                mode: PutMode::Move,
                owner: None,
            },
        )?),
        TreeChanges::Upper { upper, changes } => {
            let upper_tree = store.ingest_dir(
                &upper,
                IngestOptions {
                    mode: PutMode::Move,
                    owner: None,
                },
            )?;
            // Hardlink groups of the upper layer are numbered on their own: move them past the
            // base's numbers so the two never mix.
            let offset = base
                .entries()
                .filter_map(|entry| entry.hardlink)
                .max()
                .map_or(0, |max| max + 1);
            for change in changes {
                let path = relative(change.path());
                match change {
                    UpperChange::Whiteout(_) => {
                        base.remove_path_recursive(&path);
                    }
                    UpperChange::OpaqueDir(_) | UpperChange::Entry(_) => {
                        let Some(entry) = upper_tree.get(&path) else {
                            continue;
                        };
                        let mut entry = entry.clone();
                        entry.hardlink = entry.hardlink.map(|group| group + offset);
                        let replaces_dir = matches!(change, UpperChange::OpaqueDir(_))
                            || !matches!(entry.kind, EntryKind::Dir);
                        if replaces_dir {
                            base.remove_path_recursive(&path);
                        }
                        base.insert_or_replace(entry).map_err(|error| {
                            StageError::failed(crate::error::TreeError::from(error))
                        })?;
                    }
                }
            }
            base.canonicalize_hardlinks();
            Ok(base)
        }
    }
}

/// A script's error as the user knows the script: by its path in the project, and with the
/// image's paths in its output.
fn in_project_terms(
    error: ScriptError,
    original: &Path,
    project_dir: &Path,
    root: &Path,
) -> ScriptError {
    match error {
        ScriptError::Failed {
            name,
            stage,
            exit_code,
            output_tail,
            ..
        } => ScriptError::Failed {
            script: project_dir.join(original),
            name,
            stage,
            exit_code,
            output_tail: output_tail
                .iter()
                .map(|line| in_image_terms(line, root).into_owned())
                .collect(),
        },
        other => other,
    }
}

fn relative(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::names_variable;

    #[test]
    fn variables_are_named_as_whole_words() {
        assert!(names_variable(
            "echo ${IMAGE_VERSION:-n/a}",
            "IMAGE_VERSION"
        ));
        assert!(names_variable("echo $IMAGE_VERSION", "IMAGE_VERSION"));
        assert!(!names_variable("echo $IMAGE_VERSIONS", "IMAGE_VERSION"));
        assert!(!names_variable("echo $MY_IMAGE_VERSION", "IMAGE_VERSION"));
        assert!(!names_variable("echo hello", "IMAGE_ID"));
    }
}
