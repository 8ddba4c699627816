//! From a recipe to its stage graph, in mkosi's build order (mkosi's `build_image`).
//!
//! base trees -> skeleton trees -> packages -> prepare scripts -> extra trees -> postinst scripts
//! -> autologin -> os-release -> /init -> presets -> kernel modules -> first-boot settings ->
//! hostname -> root password -> machine-id -> (the kernel and stub are taken here) -> package
//! metadata -> RemoveFiles -> finalize scripts -> the format's stages (a directory, a tar
//! archive, a cpio archive, or initrd + UKI). A step with nothing to do is left out of the
//! graph, except the base (the root every image starts from); presets and machine-id belong to
//! images installed from packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_engine::{Graph, Stage};
use kiln_recipe::{Recipe, TreeSource};
use miette::Diagnostic;
use thiserror::Error;

use crate::config::{
    AutologinStage, CleanMetadata, EditStage, Firstboot, HostnameStage, InitStage, MachineIdStage,
    OsRelease, PresetsStage, RootPasswordStage,
};
use crate::export::Export;
use crate::formats::{Artifact, FormatContext, for_format};
use crate::host::Host;
use crate::modules::{ModuleRules, ModulesStage};
use crate::packages::{Installer, LOCK_FILE, LockFile, Locked, PackagesError, PackagesStage};
use crate::remove_files::RemoveFilesStage;
use crate::scripts::{ScriptPhase, ScriptsStage};
use crate::trees::{TreeLayer, TreesStage};

/// A recipe's stages, and where its outputs go.
pub struct Pipeline {
    pub graph: Graph,
    /// Where and how the results are written (the digests are filled in after the build).
    pub export: ExportPlan,
}

/// The export of a pipeline, before the digests are known.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub output_dir: PathBuf,
    /// The output name (`<ImageId>_<ImageVersion>`).
    pub name: String,
    /// The unversioned name to link from, when it differs from `name`.
    pub link: Option<String>,
    /// What is written: the main artifact first.
    pub artifacts: Vec<Artifact>,
    pub source_date_epoch: u64,
}

impl ExportPlan {
    /// The export of `artifact`, whose stage produced `digest`.
    pub fn with_digest(&self, artifact: &Artifact, digest: kiln_cache::Digest) -> Export {
        Export {
            output_dir: self.output_dir.clone(),
            name: format!("{}{}", self.name, artifact.suffix),
            link: self
                .link
                .as_ref()
                .map(|link| format!("{link}{}", artifact.suffix)),
            directory: artifact.directory,
            digest,
            source_date_epoch: self.source_date_epoch,
        }
    }

    /// The main artifact's path.
    pub fn main_path(&self) -> PathBuf {
        let suffix = self
            .artifacts
            .first()
            .map(|artifact| artifact.suffix.as_str())
            .unwrap_or_default();
        self.output_dir.join(format!("{}{suffix}", self.name))
    }
}

/// Why a recipe cannot be built (yet).
#[derive(Debug, Error, Diagnostic)]
pub enum PipelineError {
    #[error("`Format={format}` is not supported by `kiln build` yet")]
    #[diagnostic(help("Supported today: Format=uki, cpio, directory and tar"))]
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

    #[error("Script `{}` is not executable", script.display())]
    #[diagnostic(help(
        "Make it executable (`chmod +x {}`), or set `MakeScriptsExecutable=yes`",
        script.display()
    ))]
    ScriptNotExecutable {
        script: PathBuf,
        setting: &'static str,
    },

    #[error("Script `{}` does not exist", script.display())]
    #[diagnostic(help("Create it, or remove it from `{setting}=`"))]
    ScriptMissing {
        script: PathBuf,
        setting: &'static str,
    },

    #[error("The output's name `{name}` is not a file name")]
    #[diagnostic(help(
        "The output is written inside the output directory: set `Output=` (or `ImageId=` and `ImageVersion=`) to a name without `/` that is not `.` or `..`"
    ))]
    OutputName { name: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Sign(#[from] crate::sign::SignError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Packages(#[from] PackagesError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Modules(#[from] crate::modules::RuleError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Graph(#[from] kiln_engine::GraphError),
}

impl PipelineError {
    /// The setting whose line the error points at, when one caused it.
    pub fn setting(&self) -> Option<&str> {
        Some(match self {
            PipelineError::UnsupportedFormat { .. } => "Format",
            PipelineError::UnsupportedDistribution { .. } => "Distribution",
            PipelineError::PackagesWithoutDistribution => "Packages",
            PipelineError::Modules(error) => error.setting(),
            PipelineError::ScriptNotExecutable { setting, .. }
            | PipelineError::ScriptMissing { setting, .. } => setting,
            PipelineError::Sign(error) => return error.setting().map(|setting| setting.name()),
            _ => return None,
        })
    }
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

/// The stages being laid out, each reading the tree of the one before.
struct Chain {
    stages: Vec<Box<dyn Stage>>,
    last: String,
}

impl Chain {
    /// Add the stage `make` builds over the current tree.
    fn then(&mut self, make: impl FnOnce(String) -> Box<dyn Stage>) {
        let stage = make(self.last.clone());
        self.last = stage.name().to_string();
        self.stages.push(stage);
    }

    fn trees(&mut self, name: &str, trees: &[TreeSource]) {
        if trees.is_empty() {
            return;
        }
        let layers = trees
            .iter()
            .map(|tree| TreeLayer {
                source: tree.source.clone(),
                target: tree.target.clone(),
                owned_by_root: true,
            })
            .collect();
        self.then(|base| {
            Box::new(TreesStage {
                name: name.to_string(),
                base: Some(base),
                layers,
            })
        });
    }
}

/// [`pipeline`] with options.
pub fn pipeline_with(
    recipe: &Recipe,
    project_dir: &Path,
    host: Arc<dyn Host>,
    options: PipelineOptions,
) -> Result<Pipeline, PipelineError> {
    let format =
        for_format(recipe.output.format).ok_or_else(|| PipelineError::UnsupportedFormat {
            format: serde_name(&recipe.output.format),
        })?;
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
    let content = &recipe.content;
    let module_rules = ModuleRules {
        kernel_modules_include: content.kernel_modules_include.clone(),
        kernel_modules_exclude: content.kernel_modules_exclude.clone(),
        kernel_modules_include_host: content.kernel_modules_include_host,
        kernel_modules: content.kernel_modules.clone(),
        firmware_include: content.firmware_include.clone(),
        firmware_exclude: content.firmware_exclude.clone(),
        firmware_files: content.firmware_files.clone(),
        architecture: recipe.distribution.architecture.clone(),
    };
    // A rule that cannot compile is the recipe's error, found before anything runs.
    module_rules.compile(&[])?;
    check_scripts(recipe, project_dir)?;
    let epoch = source_date_epoch(recipe);
    let variables = script_variables(recipe, epoch);
    let scripts = |phase: ScriptPhase, scripts: &[PathBuf], chain: &mut Chain| {
        if scripts.is_empty() {
            return;
        }
        let stage = ScriptsStage {
            phase,
            base: chain.last.clone(),
            scripts: scripts.to_vec(),
            variables: variables.clone(),
            project_dir: project_dir.to_path_buf(),
            host: Arc::clone(&host),
        };
        chain.then(|_| Box::new(stage));
    };

    let mut chain = Chain {
        stages: vec![Box::new(TreesStage {
            name: "base-trees".to_string(),
            base: None,
            layers: content
                .base_trees
                .iter()
                .map(|source| TreeLayer {
                    source: source.clone(),
                    target: None,
                    owned_by_root: false,
                })
                .collect(),
        })],
        last: "base-trees".to_string(),
    };
    chain.trees("skeleton-trees", &content.skeleton_trees);
    if let Some(installer) = installer.clone() {
        let host = Arc::clone(&host);
        chain.then(|base| Box::new(PackagesStage::new(base, installer, locked, host)));
    }
    scripts(ScriptPhase::Prepare, &recipe.scripts.prepare, &mut chain);
    chain.trees("extra-trees", &content.extra_trees);
    scripts(ScriptPhase::Postinst, &recipe.scripts.postinst, &mut chain);
    if content.autologin {
        chain.then(|base| Box::new(AutologinStage { base }));
    }
    let os_release = OsRelease {
        image_id: recipe.output.image_id.clone(),
        image_version: recipe.output.image_version.clone(),
        hostname: content.hostname.clone(),
    };
    if !os_release.is_empty() {
        chain.then(|base| {
            Box::new(EditStage {
                base,
                edit: os_release,
            })
        });
    }
    if format.runs_as_initrd() {
        chain.then(|base| Box::new(InitStage { base }));
    }
    if installer.is_some() {
        let host = Arc::clone(&host);
        chain.then(|base| Box::new(PresetsStage { base, host }));
    }
    if !module_rules.is_empty() {
        let host = Arc::clone(&host);
        chain.then(|base| Box::new(ModulesStage::new(base, module_rules, host)));
    }
    let firstboot = Firstboot {
        locale: content.locale.clone(),
        locale_messages: content.locale_messages.clone(),
        keymap: content.keymap.clone(),
        timezone: content.timezone.clone(),
        root_shell: content.root_shell.clone(),
    };
    if !firstboot.is_empty() {
        chain.then(|base| {
            Box::new(EditStage {
                base,
                edit: firstboot,
            })
        });
    }
    if let Some(hostname) = &content.hostname {
        let hostname = hostname.clone();
        chain.then(|base| Box::new(HostnameStage { base, hostname }));
    }
    if let Some(password) = &content.root_password {
        let image = recipe.image_name();
        chain.then(|base| Box::new(RootPasswordStage::new(base, password, &image)));
    }
    if installer.is_some() {
        chain.then(|base| Box::new(MachineIdStage { base }));
    }
    // mkosi takes the kernel and the EFI stub here, before anything is removed.
    let esp_tree = chain.last.clone();
    let clean = CleanMetadata {
        setting: content.clean_package_metadata,
        keeps_by_default: format.keeps_package_metadata(),
    };
    if !clean.is_noop() {
        chain.then(|base| Box::new(EditStage { base, edit: clean }));
    }
    if !content.remove_files.is_empty() {
        let globs = content.remove_files.clone();
        chain.then(|base| {
            Box::new(RemoveFilesStage {
                name: "remove-files".to_string(),
                base,
                globs,
            })
        });
    }
    scripts(ScriptPhase::Finalize, &recipe.scripts.finalize, &mut chain);

    let formatted = format.stages(&FormatContext {
        recipe,
        tree: chain.last.clone(),
        esp_tree,
        source_date_epoch: epoch,
        compress_level: None,
    });
    let mut stages = chain.stages;
    stages.extend(formatted.stages);
    let mut artifacts = formatted.artifacts;
    // SecureBoot=yes: the EFI binary is signed, and the signed one is the output.
    if let Some(signed) = format.signed_stage()
        && let Some(sign) =
            crate::sign::SignStage::for_recipe(recipe, project_dir, signed, Arc::clone(&host))?
    {
        for artifact in artifacts
            .iter_mut()
            .filter(|artifact| artifact.stage == signed)
        {
            artifact.stage = sign.name().to_string();
        }
        stages.push(Box::new(sign));
    }

    let output_dir = recipe.output_dir(project_dir);
    let name = recipe.output_name();
    let unversioned = recipe.image_name();
    for name in [&name, &unversioned] {
        if !kiln_recipe::paths::is_file_name(name) {
            return Err(PipelineError::OutputName { name: name.clone() });
        }
    }
    Ok(Pipeline {
        graph: Graph::new(stages)?,
        export: ExportPlan {
            output_dir,
            link: (unversioned != name).then_some(unversioned),
            name,
            artifacts,
            source_date_epoch: epoch,
        },
    })
}

/// Every script exists and is executable (mkosi refuses one that is not, unless
/// `MakeScriptsExecutable=yes`: then it runs anyway).
fn check_scripts(recipe: &Recipe, project_dir: &Path) -> Result<(), PipelineError> {
    use std::os::unix::fs::PermissionsExt;
    let phases = [
        ("PrepareScripts", &recipe.scripts.prepare),
        ("PostInstallationScripts", &recipe.scripts.postinst),
        ("FinalizeScripts", &recipe.scripts.finalize),
    ];
    for (setting, scripts) in phases {
        for script in scripts {
            let path = project_dir.join(script);
            let Ok(meta) = std::fs::metadata(&path) else {
                return Err(PipelineError::ScriptMissing {
                    script: path,
                    setting,
                });
            };
            if meta.permissions().mode() & 0o111 == 0 && !recipe.scripts.make_executable {
                return Err(PipelineError::ScriptNotExecutable {
                    script: path,
                    setting,
                });
            }
        }
    }
    Ok(())
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
