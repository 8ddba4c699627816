//! From a recipe to its stage graph, in mkosi's build order.
//!
//! base trees -> skeleton trees -> packages -> prepare scripts -> extra trees -> postinst scripts
//! -> autologin -> /init -> hostname -> root password -> presets -> machine-id -> RemoveFiles ->
//! finalize scripts -> output. A step with nothing to do is left out of the graph, except the
//! base (the root every image starts from) and the output; presets and machine-id belong to
//! images installed from packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_engine::recipe::{OutputFormat, Recipe, TreeSource};
use kiln_engine::{Graph, Stage};
use miette::Diagnostic;
use thiserror::Error;

use crate::config::{
    AutologinStage, HostnameStage, InitStage, MachineIdStage, PresetsStage, RootPasswordStage,
};
use crate::export::Export;
use crate::host::Host;
use crate::output::{ArtifactFormat, OutputStage};
use crate::packages::{Installer, LOCK_FILE, LockFile, Locked, PackagesError, PackagesStage};
use crate::remove_files::RemoveFilesStage;
use crate::scripts::{ScriptPhase, ScriptsStage};
use crate::trees::{TreeLayer, TreesStage};

/// A recipe's stages, and where its output goes.
pub struct Pipeline {
    pub graph: Graph,
    /// The stage whose output is exported.
    pub final_stage: String,
    /// Where and how the result is written (its digest is filled in after the build).
    pub export: ExportPlan,
}

/// The export of a pipeline, before the digest is known.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub output_dir: PathBuf,
    pub name: String,
    pub link: Option<String>,
    pub format: ArtifactFormat,
    pub source_date_epoch: u64,
}

impl ExportPlan {
    pub fn with_digest(&self, digest: kiln_cache::Digest) -> Export {
        Export {
            output_dir: self.output_dir.clone(),
            name: self.name.clone(),
            link: self.link.clone(),
            format: self.format,
            digest,
            source_date_epoch: self.source_date_epoch,
        }
    }
}

/// Why a recipe cannot be built (yet).
#[derive(Debug, Error, Diagnostic)]
pub enum PipelineError {
    #[error("`Format={format}` is not supported by `kiln build` yet")]
    #[diagnostic(help("Supported today: Format=directory and Format=tar"))]
    UnsupportedFormat { format: String },

    #[error(
        "Installing packages for `Distribution={distribution}` is not supported by `kiln build` yet"
    )]
    #[diagnostic(help(
        "Supported today: Distribution=debian, ubuntu and arch, and custom with BaseTrees= for an image built from trees"
    ))]
    UnsupportedDistribution { distribution: String },

    #[error("`Packages=` needs a package manager, which `Distribution=custom` does not have")]
    #[diagnostic(help("Remove Packages=, or choose a distribution"))]
    PackagesWithoutDistribution,

    #[error("`--locked` needs `{}`, which does not exist", path.display())]
    #[diagnostic(help("Run `kiln lock` to write it"))]
    NoLockFile { path: PathBuf },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Packages(#[from] PackagesError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Graph(#[from] kiln_engine::GraphError),
}

/// How a pipeline is planned beyond what the recipe says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineOptions {
    /// `--locked`: each packages stage must resolve to its set in `kiln.lock`.
    pub locked: bool,
}

/// The value of mkosi's `SOURCE_DATE_EPOCH` for a recipe: the setting, or 0 so that every build
/// is reproducible.
pub fn source_date_epoch(recipe: &Recipe) -> u64 {
    recipe.content.source_date_epoch.unwrap_or(0)
}

/// Plan the stages of `recipe`, read from `project_dir`.
pub fn pipeline(
    recipe: &Recipe,
    project_dir: &Path,
    host: Arc<dyn Host>,
) -> Result<Pipeline, PipelineError> {
    pipeline_with(recipe, project_dir, host, PipelineOptions::default())
}

/// [`pipeline`] with options.
pub fn pipeline_with(
    recipe: &Recipe,
    project_dir: &Path,
    host: Arc<dyn Host>,
    options: PipelineOptions,
) -> Result<Pipeline, PipelineError> {
    let format = match recipe.output.format {
        OutputFormat::Directory => ArtifactFormat::Directory,
        OutputFormat::Tar => ArtifactFormat::Tar,
        other => {
            return Err(PipelineError::UnsupportedFormat {
                format: serde_name(&other),
            });
        }
    };
    if !Installer::supports(recipe.distribution.distribution) {
        return Err(PipelineError::UnsupportedDistribution {
            distribution: serde_name(&recipe.distribution.distribution),
        });
    }
    let installer = Installer::for_recipe(recipe)?;
    if installer.is_none() && !recipe.content.packages.is_empty() {
        return Err(PipelineError::PackagesWithoutDistribution);
    }
    let locked = if options.locked && installer.is_some() {
        let lock = LockFile::read(project_dir)?.ok_or_else(|| PipelineError::NoLockFile {
            path: project_dir.join(LOCK_FILE),
        })?;
        Some(match lock.stages.get(crate::packages::STAGE_NAME) {
            Some(set) => Locked::Set(set.clone()),
            None => Locked::Missing,
        })
    } else {
        None
    };
    let epoch = source_date_epoch(recipe);
    let variables = script_variables(recipe, epoch);
    let mut stages: Vec<Box<dyn Stage>> = Vec::new();
    let mut last = "base-trees".to_string();
    stages.push(Box::new(TreesStage {
        name: last.clone(),
        base: None,
        layers: recipe
            .content
            .base_trees
            .iter()
            .map(|source| TreeLayer {
                source: source.clone(),
                target: None,
                owned_by_root: false,
            })
            .collect(),
    }));
    let add_trees =
        |stages: &mut Vec<Box<dyn Stage>>, last: &mut String, name: &str, trees: &[TreeSource]| {
            if trees.is_empty() {
                return;
            }
            stages.push(Box::new(TreesStage {
                name: name.to_string(),
                base: Some(last.clone()),
                layers: trees
                    .iter()
                    .map(|tree| TreeLayer {
                        source: tree.source.clone(),
                        target: tree.target.clone(),
                        owned_by_root: true,
                    })
                    .collect(),
            }));
            *last = name.to_string();
        };
    let add_scripts = |stages: &mut Vec<Box<dyn Stage>>,
                       last: &mut String,
                       phase: ScriptPhase,
                       scripts: &[PathBuf]| {
        if scripts.is_empty() {
            return;
        }
        stages.push(Box::new(ScriptsStage {
            phase,
            base: last.clone(),
            scripts: scripts.to_vec(),
            variables: variables.clone(),
            project_dir: project_dir.to_path_buf(),
            host: Arc::clone(&host),
        }));
        *last = phase.stage_name().to_string();
    };
    add_trees(
        &mut stages,
        &mut last,
        "skeleton-trees",
        &recipe.content.skeleton_trees,
    );
    if let Some(installer) = installer.clone() {
        let stage = PackagesStage::new(last.clone(), installer, locked);
        last = stage.name().to_string();
        stages.push(Box::new(stage));
    }
    add_scripts(
        &mut stages,
        &mut last,
        ScriptPhase::Prepare,
        &recipe.scripts.prepare,
    );
    add_trees(
        &mut stages,
        &mut last,
        "extra-trees",
        &recipe.content.extra_trees,
    );
    add_scripts(
        &mut stages,
        &mut last,
        ScriptPhase::Postinst,
        &recipe.scripts.postinst,
    );
    // Each configuration stage works on the tree of the stage before it.
    let mut then = |stage: &dyn Fn(String) -> Box<dyn Stage>| {
        let next = stage(last.clone());
        last = next.name().to_string();
        stages.push(next);
    };
    if recipe.content.autologin {
        then(&|base| Box::new(AutologinStage { base }));
    }
    if matches!(recipe.output.format, OutputFormat::Uki | OutputFormat::Cpio) {
        then(&|base| Box::new(InitStage { base }));
    }
    if let Some(hostname) = &recipe.content.hostname {
        then(&|base| {
            Box::new(HostnameStage {
                base,
                hostname: hostname.clone(),
            })
        });
    }
    if let Some(password) = &recipe.content.root_password {
        let image = recipe.image_name();
        then(&|base| Box::new(RootPasswordStage::new(base, password, &image)));
    }
    if installer.is_some() {
        then(&|base| {
            Box::new(PresetsStage {
                base,
                host: Arc::clone(&host),
            })
        });
        then(&|base| Box::new(MachineIdStage { base }));
    }
    if !recipe.content.remove_files.is_empty() {
        stages.push(Box::new(RemoveFilesStage {
            name: "remove-files".to_string(),
            base: last.clone(),
            globs: recipe.content.remove_files.clone(),
        }));
        last = "remove-files".to_string();
    }
    add_scripts(
        &mut stages,
        &mut last,
        ScriptPhase::Finalize,
        &recipe.scripts.finalize,
    );
    let final_stage = "output".to_string();
    stages.push(Box::new(OutputStage {
        name: final_stage.clone(),
        base: last,
        format,
        source_date_epoch: epoch,
    }));

    let output_dir = kiln_engine::paths::absolute(
        project_dir,
        &recipe
            .output
            .output_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from("mkosi.output")),
    );
    let name = recipe.output_name();
    let unversioned = recipe.image_name();
    Ok(Pipeline {
        graph: Graph::new(stages)?,
        final_stage,
        export: ExportPlan {
            output_dir,
            link: (unversioned != name).then_some(unversioned),
            name,
            format,
            source_date_epoch: epoch,
        },
    })
}

/// The variables mkosi gives scripts, by name. A script's key includes only those its text names.
pub fn script_variables(recipe: &Recipe, epoch: u64) -> BTreeMap<String, Option<String>> {
    let mut variables: BTreeMap<String, Option<String>> = BTreeMap::new();
    variables.insert(
        "DISTRIBUTION".to_string(),
        Some(serde_name(&recipe.distribution.distribution)),
    );
    variables.insert("RELEASE".to_string(), recipe.distribution.release.clone());
    variables.insert(
        "ARCHITECTURE".to_string(),
        Some(recipe.distribution.architecture.clone()),
    );
    variables.insert("IMAGE_ID".to_string(), recipe.output.image_id.clone());
    variables.insert(
        "IMAGE_VERSION".to_string(),
        recipe.output.image_version.clone(),
    );
    variables.insert("SOURCE_DATE_EPOCH".to_string(), Some(epoch.to_string()));
    variables.insert(
        "WITH_DOCS".to_string(),
        Some(if recipe.content.with_docs { "1" } else { "0" }.to_string()),
    );
    for (key, value) in &recipe.config.environment {
        variables.insert(key.clone(), Some(value.clone()));
    }
    variables
}

/// The name serde gives a unit variant (mkosi's spelling).
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}
