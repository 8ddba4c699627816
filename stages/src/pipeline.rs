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
    Autologin, CleanMetadata, EditStage, Firstboot, Hostname, Init, MachineId, OsRelease,
    PresetsStage, RootPasswordHash, TreeEdit,
};
use crate::export::Export;
use crate::formats::{Artifact, Format, FormatContext, FormatStages, for_format};
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
    /// The chain's first stage: the base trees (none for most images), the root every image
    /// starts from.
    fn base(base_trees: &[PathBuf]) -> Chain {
        let layers = base_trees
            .iter()
            .map(|source| TreeLayer {
                source: source.clone(),
                target: None,
                owned_by_root: false,
            })
            .collect();
        Chain {
            stages: vec![Box::new(TreesStage {
                name: "base-trees".to_string(),
                base: None,
                layers,
            })],
            last: "base-trees".to_string(),
        }
    }

    /// Add the stage `make` builds over the current tree.
    fn then(&mut self, make: impl FnOnce(String) -> Box<dyn Stage>) {
        let stage = make(self.last.clone());
        self.last = stage.name().to_string();
        self.stages.push(stage);
    }

    /// Add the stage of `edit` over the current tree.
    fn edit(&mut self, edit: impl TreeEdit + 'static) {
        self.then(|base| Box::new(EditStage { base, edit }));
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
    let installer = installer_for(recipe)?;
    let locked = match installer {
        Some(_) if options.locked => Some(locked_set(project_dir)?),
        _ => None,
    };
    let module_rules = module_rules(recipe);
    // A rule that cannot compile is the recipe's error, found before anything runs.
    module_rules.compile(&[])?;
    check_scripts(recipe, project_dir)?;
    let epoch = source_date_epoch(recipe);
    let layout = Layout {
        recipe,
        project_dir,
        host,
        format,
        installer,
        epoch,
        variables: script_variables(recipe, epoch),
    };

    let mut chain = Chain::base(&recipe.content.base_trees);
    layout.install(&mut chain, locked);
    layout.configure(&mut chain, module_rules);
    // mkosi takes the kernel and the EFI stub here, before anything is removed.
    let esp_tree = chain.last.clone();
    layout.finish(&mut chain);
    let output = layout.output_stages(chain, esp_tree)?;
    let export = layout.export_plan(output.artifacts)?;
    Ok(Pipeline {
        graph: Graph::new(output.stages)?,
        export,
    })
}

/// The package manager of the recipe's distribution: `None` for `Distribution=custom`, which
/// installs nothing.
fn installer_for(recipe: &Recipe) -> Result<Option<Installer>, PipelineError> {
    if !Installer::supports(recipe.distribution.distribution) {
        return Err(PipelineError::UnsupportedDistribution {
            distribution: serde_name(&recipe.distribution.distribution),
        });
    }
    let installer = Installer::for_recipe(recipe)?;
    if installer.is_none() && !recipe.content.packages.is_empty() {
        return Err(PipelineError::PackagesWithoutDistribution);
    }
    Ok(installer)
}

/// `--locked`: the package set `kiln.lock` holds for the packages stage.
fn locked_set(project_dir: &Path) -> Result<Locked, PipelineError> {
    let lock = LockFile::read(project_dir)?.ok_or_else(|| PipelineError::NoLockFile {
        path: project_dir.join(LOCK_FILE),
    })?;
    Ok(match lock.stages.get(crate::packages::STAGE_NAME) {
        Some(set) => Locked::Set(set.clone()),
        None => Locked::Missing,
    })
}

/// The recipe's kernel module and firmware settings.
fn module_rules(recipe: &Recipe) -> ModuleRules {
    let content = &recipe.content;
    ModuleRules {
        kernel_modules_include: content.kernel_modules_include.clone(),
        kernel_modules_exclude: content.kernel_modules_exclude.clone(),
        kernel_modules_include_host: content.kernel_modules_include_host,
        kernel_modules: content.kernel_modules.clone(),
        firmware_include: content.firmware_include.clone(),
        firmware_exclude: content.firmware_exclude.clone(),
        firmware_files: content.firmware_files.clone(),
        architecture: recipe.distribution.architecture.clone(),
    }
}

/// What every part of the layout reads.
struct Layout<'a> {
    recipe: &'a Recipe,
    project_dir: &'a Path,
    host: Arc<dyn Host>,
    format: Box<dyn Format>,
    installer: Option<Installer>,
    epoch: u64,
    /// The variables scripts see.
    variables: BTreeMap<String, Option<String>>,
}

impl Layout<'_> {
    /// The scripts of `phase`, as one stage, when there are any.
    fn scripts(&self, chain: &mut Chain, phase: ScriptPhase, scripts: &[PathBuf]) {
        if scripts.is_empty() {
            return;
        }
        chain.then(|base| {
            Box::new(ScriptsStage {
                phase,
                base,
                scripts: scripts.to_vec(),
                variables: self.variables.clone(),
                project_dir: self.project_dir.to_path_buf(),
                host: Arc::clone(&self.host),
            })
        });
    }

    /// The image's content: skeleton trees, packages, prepare scripts, extra trees, postinst
    /// scripts.
    fn install(&self, chain: &mut Chain, locked: Option<Locked>) {
        let (recipe, content) = (self.recipe, &self.recipe.content);
        chain.trees("skeleton-trees", &content.skeleton_trees);
        if let Some(installer) = self.installer.clone() {
            let host = Arc::clone(&self.host);
            chain.then(|base| Box::new(PackagesStage::new(base, installer, locked, host)));
        }
        self.scripts(chain, ScriptPhase::Prepare, &recipe.scripts.prepare);
        chain.trees("extra-trees", &content.extra_trees);
        self.scripts(chain, ScriptPhase::Postinst, &recipe.scripts.postinst);
    }

    /// The image's configuration, up to where mkosi takes the kernel and the EFI stub:
    /// autologin, os-release, `/init`, presets, kernel modules, first-boot settings, hostname,
    /// root password, machine ID.
    fn configure(&self, chain: &mut Chain, module_rules: ModuleRules) {
        let (recipe, content) = (self.recipe, &self.recipe.content);
        if content.autologin {
            chain.edit(Autologin);
        }
        let os_release = OsRelease {
            image_id: recipe.output.image_id.clone(),
            image_version: recipe.output.image_version.clone(),
            hostname: content.hostname.clone(),
        };
        if !os_release.is_empty() {
            chain.edit(os_release);
        }
        if self.format.runs_as_initrd() {
            chain.edit(Init);
        }
        if self.installer.is_some() {
            let host = Arc::clone(&self.host);
            chain.then(|base| Box::new(PresetsStage { base, host }));
        }
        if !module_rules.is_empty() {
            let host = Arc::clone(&self.host);
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
            chain.edit(firstboot);
        }
        if let Some(hostname) = &content.hostname {
            chain.edit(Hostname {
                hostname: hostname.clone(),
            });
        }
        if let Some(password) = &content.root_password {
            chain.edit(RootPasswordHash::new(password, &recipe.image_name()));
        }
        if self.installer.is_some() {
            chain.edit(MachineId);
        }
    }

    /// What goes after the kernel is taken: package metadata cleaned, RemoveFiles=, finalize
    /// scripts.
    fn finish(&self, chain: &mut Chain) {
        let content = &self.recipe.content;
        let clean = CleanMetadata {
            setting: content.clean_package_metadata,
            keeps_by_default: self.format.keeps_package_metadata(),
        };
        if !clean.is_noop() {
            chain.edit(clean);
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
        self.scripts(chain, ScriptPhase::Finalize, &self.recipe.scripts.finalize);
    }

    /// Every stage with the format's after the finished tree `chain`, and the artifacts; with
    /// `SecureBoot=yes` the format's EFI binary is signed and the signed one is the output.
    fn output_stages(&self, chain: Chain, esp_tree: String) -> Result<FormatStages, PipelineError> {
        let formatted = self.format.stages(&FormatContext {
            recipe: self.recipe,
            tree: chain.last.clone(),
            esp_tree,
            source_date_epoch: self.epoch,
            compress_level: None,
        });
        let mut stages = chain.stages;
        stages.extend(formatted.stages);
        let mut artifacts = formatted.artifacts;
        if let Some(signed) = self.format.signed_stage()
            && let Some(sign) = crate::sign::SignStage::for_recipe(
                self.recipe,
                self.project_dir,
                signed,
                Arc::clone(&self.host),
            )?
        {
            for artifact in artifacts
                .iter_mut()
                .filter(|artifact| artifact.stage == signed)
            {
                artifact.stage = sign.name().to_string();
            }
            stages.push(Box::new(sign));
        }
        Ok(FormatStages { stages, artifacts })
    }

    /// Where and under which names `artifacts` are written.
    fn export_plan(&self, artifacts: Vec<Artifact>) -> Result<ExportPlan, PipelineError> {
        let recipe = self.recipe;
        let name = recipe.output_name();
        let unversioned = recipe.image_name();
        for name in [&name, &unversioned] {
            if !kiln_recipe::paths::is_file_name(name) {
                return Err(PipelineError::OutputName { name: name.clone() });
            }
        }
        Ok(ExportPlan {
            output_dir: recipe.output_dir(self.project_dir),
            link: (unversioned != name).then_some(unversioned),
            name,
            artifacts,
            source_date_epoch: self.epoch,
        })
    }
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
