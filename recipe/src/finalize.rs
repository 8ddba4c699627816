//! From what the files set to a [`Recipe`]: each setting's final value (command line over files
//! over defaults, mkosi's `finalize_value`), mkosi's defaults, subimages with what they inherit,
//! the order images are built in, and paths made relative to the project directory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use miette::Severity;

use super::LoadOptions;
use super::diagnostics::ConfigIssue;
use super::host::native_architecture;
use super::load::{Context, Input, Layer, Shared, Val};
use super::model::{
    Bootloader, CertificateSource, ConfigSettings, ContentSettings, Distribution,
    DistributionSettings, Feature, KeySource, OutputFormat, OutputSettings, Recipe, Scripts,
    SecureBootSignTool, Subimage, TreeSource, ValidationSettings,
};
use super::settings::{self, Kind, Scope, Setting};

impl Context<'_, '_> {
    /// The value `setting` has now: the command line's, else the files', else its default.
    /// Collections given both on the command line and in files are joined.
    pub(crate) fn finalize_value(&mut self, setting: &'static Setting) -> Option<Val> {
        let name = setting.name;
        if let Some(Some(cli)) = self.cli.get(name) {
            return match self.config.get(name) {
                Some(Some(config)) if !self.cli_emptied.contains(name) => {
                    Some(Val::merged(config, cli))
                }
                _ => Some(cli.clone()),
            };
        }
        if !self.cli.contains_key(name)
            && let Some(Some(config)) = self.config.get(name)
        {
            return Some(config.clone());
        }
        let explicit = self.cli.contains_key(name) || self.config.contains_key(name);
        if explicit && setting.kind.empty_when_reset() {
            return None;
        }
        if let Some(default) = self.defaults.get(name) {
            return default.clone();
        }
        let default = self.default_value(setting);
        self.defaults.insert(name, default.clone());
        default
    }

    /// mkosi's default for `setting`.
    fn default_value(&mut self, setting: &'static Setting) -> Option<Val> {
        match setting.name {
            "Distribution" => Some(Val::Text(
                self.env().default_distribution().as_str().to_string(),
            )),
            "Release" => {
                let distribution = self.distribution();
                self.env().default_release(distribution).map(Val::Text)
            }
            "Architecture" => Some(Val::Text(native_architecture().to_string())),
            "Format" => Some(Val::Text(OutputFormat::Disk.as_str().to_string())),
            "Bootloader" => Some(Val::Text(Bootloader::SystemdBoot.as_str().to_string())),
            "Bootable" => Some(Val::Feature(Feature::Auto)),
            "WithDocs" => Some(Val::Bool(true)),
            "Output" => {
                let mut output = if self.is_main() {
                    match self.finalize_value(settings::by_name("ImageId")) {
                        Some(Val::Text(id)) => id,
                        _ => "image".to_string(),
                    }
                } else {
                    self.image.clone()
                };
                if let Some(Val::Text(version)) =
                    self.finalize_value(settings::by_name("ImageVersion"))
                {
                    output = format!("{output}_{version}");
                }
                Some(Val::Text(output))
            }
            "SourceDateEpoch" => {
                let from_settings = match self.finalize_value(settings::by_name("Environment")) {
                    Some(Val::Map(map)) => map.get("SOURCE_DATE_EPOCH").cloned(),
                    _ => None,
                };
                let text = from_settings
                    .or_else(|| self.env().get("SOURCE_DATE_EPOCH").map(str::to_string))?;
                if text.is_empty() {
                    return None;
                }
                let input = Input::command_line(&text);
                let input = Input {
                    origin: "$SOURCE_DATE_EPOCH".to_string(),
                    ..input
                };
                self.parse_value(setting, &input, None).flatten()
            }
            _ => match setting.kind {
                Kind::Bool => Some(Val::Bool(false)),
                _ => None,
            },
        }
    }

    /// The current `Distribution=`.
    pub(crate) fn distribution(&mut self) -> Distribution {
        match self.finalize_value(settings::by_name("Distribution")) {
            Some(Val::Text(d)) => Distribution::from_mkosi(&d).unwrap_or(Distribution::Custom),
            _ => Distribution::Custom,
        }
    }

    /// The final value of every setting kiln implements.
    pub(crate) fn finalize(&mut self) -> BTreeMap<&'static str, Option<Val>> {
        settings::SETTINGS
            .iter()
            .filter(|s| s.implemented())
            .map(|s| (s.name, self.finalize_value(s)))
            .collect()
    }
}

/// Final values of one image.
pub(crate) type Finalized = BTreeMap<&'static str, Option<Val>>;

/// Applies the command line's overrides.
fn command_line(context: &mut Context<'_, '_>, opts: &LoadOptions) {
    if let Some(version) = &opts.image_version {
        if version.is_empty() {
            context.cli.insert("ImageVersion", None);
            context.cli_emptied.insert("ImageVersion");
        } else {
            let input = Input {
                origin: "`--image-version`".to_string(),
                ..Input::command_line(version)
            };
            if let Some(value) =
                context.parse_value(settings::by_name("ImageVersion"), &input, None)
            {
                context.cli.insert("ImageVersion", value);
            }
        }
    }
    if let Some(autologin) = opts.autologin {
        context.cli.insert("Autologin", Some(Val::Bool(autologin)));
    }
    if !opts.profiles.is_empty() {
        let mut valid = Vec::new();
        for profile in &opts.profiles {
            if super::values::is_valid_filename(profile) {
                valid.push(profile.clone());
            } else {
                context.issue(
                    ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::invalid_value",
                        format!("`{profile}` is not a valid profile"),
                    )
                    .with_help("Profiles are names with no path components")
                    .in_file("the command line"),
                );
            }
        }
        context.cli.insert("Profiles", Some(Val::List(valid)));
    }
}

/// Reads a mkosi project: the main image and its subimages, in build order.
pub(crate) fn load_mkosi(shared: &mut Shared<'_>, configdir: &Path, opts: &LoadOptions) -> Recipe {
    let mut main = Context::new(shared, "main", configdir.to_path_buf());
    command_line(&mut main, opts);
    main.parse_config_one(configdir, true, true);
    let main_final = main.finalize();
    let explicit_dependencies =
        main.cli.contains_key("Dependencies") || main.config.contains_key("Dependencies");
    drop(main);

    let passed = PassedDown::from_main(&main_final);
    let images = load_subimages(shared, configdir, &passed);
    let default_dependencies: Vec<String> = images.iter().map(|(name, _)| name.clone()).collect();

    let mut main_final = main_final;
    if !explicit_dependencies {
        main_final.insert("Dependencies", Some(Val::List(default_dependencies)));
    }
    let dependencies = list(&main_final, "Dependencies");
    let order = resolve_dependencies(shared, &images, &dependencies);

    let mut recipe = to_recipe(shared, &main_final);
    if !order.is_empty() {
        warn_subimages_not_built(shared, &order);
    }
    for name in order {
        if let Some((_, finalized)) = images.iter().find(|(n, _)| *n == name) {
            recipe.subimages.push(Subimage {
                name: name.clone(),
                recipe: to_recipe(shared, finalized),
            });
        }
    }
    recipe
}

/// What subimages get from the main image: universal settings fixed (as if from the command
/// line), inherited ones as overridable defaults, `Environment=` only through
/// `PassEnvironment=`.
struct PassedDown {
    cli: Layer,
    inherited: Layer,
    environment: BTreeMap<String, String>,
}

impl PassedDown {
    fn from_main(main_final: &Finalized) -> Self {
        let mut cli = Layer::new();
        let mut inherited = Layer::new();
        for setting in settings::SETTINGS.iter().filter(|s| s.implemented()) {
            let value = main_final.get(setting.name).cloned().flatten();
            if setting.scope.passed_down_fixed() {
                cli.insert(setting.name, value);
            } else if setting.scope == Scope::Inherit {
                inherited.insert(setting.name, value);
            }
        }
        let environment: BTreeMap<String, String> = match (
            main_final.get("Environment").cloned().flatten(),
            main_final.get("PassEnvironment").cloned().flatten(),
        ) {
            (Some(Val::Map(env)), Some(Val::List(names))) => names
                .iter()
                .filter_map(|n| env.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
            _ => BTreeMap::new(),
        };
        PassedDown {
            cli,
            inherited,
            environment,
        }
    }
}

/// The subimages of `mkosi.images/` that read without error, by name in the order listed.
fn load_subimages(
    shared: &mut Shared<'_>,
    configdir: &Path,
    passed: &PassedDown,
) -> Vec<(String, Finalized)> {
    let mut images: Vec<(String, Finalized)> = Vec::new();
    let images_dir = configdir.join("mkosi.images");
    if images_dir.exists() {
        let entries = {
            let mut lister = Context::new(shared, "main", configdir.to_path_buf());
            lister.sorted_entries(&images_dir)
        };
        for entry in entries {
            if let Some(image) = load_subimage(shared, configdir, &entry, passed) {
                images.push(image);
            }
        }
    }
    images
}

/// One entry of `mkosi.images/` read as a subimage, or `None` when it is not one (reported) or
/// its conditions do not hold.
fn load_subimage(
    shared: &mut Shared<'_>,
    configdir: &Path,
    entry: &Path,
    passed: &PassedDown,
) -> Option<(String, Finalized)> {
    let is_dir = entry.is_dir();
    let file_name = entry
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !is_dir && !file_name.ends_with(".conf") {
        let mut lister = Context::new(shared, "main", configdir.to_path_buf());
        lister.ignored_entry(entry, "mkosi.images/");
        return None;
    }
    let name = file_name
        .strip_suffix(".conf")
        .unwrap_or(&file_name)
        .to_string();
    if name.is_empty() {
        let shown = shared.display(entry);
        shared.push(
            ConfigIssue::new(
                Severity::Error,
                "kiln::config::invalid_image",
                format!("`{shown}` is not a valid image name"),
            )
            .with_help("Name subimages `mkosi.images/NAME.conf` or `mkosi.images/NAME/`")
            .in_file(shown),
        );
        return None;
    }
    let cwd = if is_dir {
        entry.to_path_buf()
    } else {
        configdir.to_path_buf()
    };
    let mut sub = Context::new(shared, &name, cwd);
    sub.cli = passed.cli.clone();
    sub.config = passed.inherited.clone();
    sub.config.insert(
        "Environment",
        (!passed.environment.is_empty()).then(|| Val::Map(passed.environment.clone())),
    );
    if !sub.parse_config_one(entry, is_dir, true) {
        return None;
    }
    let finalized = sub.finalize();
    Some((name, finalized))
}

/// Warns that the subimages in `order` are read but not built.
fn warn_subimages_not_built(shared: &mut Shared<'_>, order: &[String]) {
    let names: Vec<String> = order.iter().map(|name| format!("`{name}`")).collect();
    shared.push(
        ConfigIssue::new(
            Severity::Warning,
            "kiln::config::not_built",
            format!(
                "The subimages {} of `mkosi.images/` are read, but kiln builds only the main image",
                names.join(", ")
            ),
        )
        .with_help("Build the subimages with mkosi, or make each one a project of its own for kiln")
        .in_file("mkosi.images"),
    );
}

/// Each image's name and the names of the images it depends on.
type DependencyGraph = Vec<(String, Vec<String>)>;

/// The subimages the main image needs, dependencies first (mkosi's `resolve_deps`, which orders
/// like Python's `graphlib.TopologicalSorter.static_order`).
fn resolve_dependencies(
    shared: &mut Shared<'_>,
    images: &[(String, Finalized)],
    wanted: &[String],
) -> Vec<String> {
    let graph: DependencyGraph = images
        .iter()
        .map(|(name, f)| (name.clone(), list(f, "Dependencies")))
        .collect();
    if !dependencies_known(shared, &graph, wanted) {
        return Vec::new();
    }
    let needed = needed_images(&graph, wanted);
    let graph: DependencyGraph = graph
        .into_iter()
        .filter(|(n, _)| needed.contains(n))
        .collect();

    let (nodes, order) = static_order(&graph);
    if order.len() < nodes.len() {
        let cycle: Vec<String> = nodes
            .iter()
            .filter(|n| !order.contains(n))
            .map(|n| format!("`{n}`"))
            .collect();
        shared.push(
            ConfigIssue::new(
                Severity::Error,
                "kiln::config::dependency_cycle",
                format!("Image dependency cycle between {}", cycle.join(", ")),
            )
            .with_help(
                "Images cannot depend on each other in a circle: remove one of the `Dependencies=`",
            )
            .in_file("mkosi.images"),
        );
        return Vec::new();
    }
    let mut images_in_order: Vec<String> = graph.iter().map(|(n, _)| n.clone()).collect();
    images_in_order.sort_by_key(|n| order.iter().position(|o| o == n));
    images_in_order
}

/// Whether every dependency, of the main image (`wanted`) and of each subimage, names an image;
/// when one does not, the last such is reported.
fn dependencies_known(shared: &mut Shared<'_>, graph: &DependencyGraph, wanted: &[String]) -> bool {
    let known: BTreeSet<&str> = graph.iter().map(|(n, _)| n.as_str()).collect();
    let mut problem = None;
    for name in wanted {
        if !known.contains(name.as_str()) {
            problem = Some(format!(
                "`Dependencies=` names `{name}`, but no image has that name"
            ));
        }
    }
    for (image, deps) in graph {
        for dep in deps {
            if !known.contains(dep.as_str()) {
                problem = Some(format!(
                    "`Dependencies=` of image `{image}` names `{dep}`, but no image has that name"
                ));
            }
        }
    }
    let Some(message) = problem else {
        return true;
    };
    let names: Vec<String> = known.iter().map(|n| format!("`{n}`")).collect();
    let help = if names.is_empty() {
        "The project has no subimages: add `mkosi.images/NAME.conf` or remove the dependency"
            .to_string()
    } else {
        format!("The subimages in `mkosi.images/` are {}", names.join(", "))
    };
    shared.push(
        ConfigIssue::new(Severity::Error, "kiln::config::unknown_dependency", message)
            .with_help(help)
            .in_file("mkosi.images"),
    );
    false
}

/// The images the `wanted` ones need, transitively (themselves included).
fn needed_images(graph: &DependencyGraph, wanted: &[String]) -> BTreeSet<String> {
    let mut needed: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = wanted.to_vec();
    while let Some(image) = queue.first().cloned() {
        queue.remove(0);
        if needed.insert(image.clone())
            && let Some((_, deps)) = graph.iter().find(|(n, _)| *n == image)
        {
            queue.extend(deps.iter().cloned());
        }
    }
    needed
}

/// graphlib's `static_order`: every node of `graph` (in the order first seen: an image, then its
/// dependencies) and the order they can be built in, which leaves out the nodes on a cycle.
fn static_order(graph: &DependencyGraph) -> (Vec<String>, Vec<String>) {
    let mut nodes: Vec<String> = Vec::new();
    for (name, deps) in graph {
        for node in std::iter::once(name).chain(deps) {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
    }
    let mut waiting: BTreeMap<String, usize> = nodes.iter().map(|n| (n.clone(), 0)).collect();
    let mut successors: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, deps) in graph {
        for dep in deps {
            *waiting.entry(name.clone()).or_default() += 1;
            successors
                .entry(dep.clone())
                .or_default()
                .push(name.clone());
        }
    }
    let mut order = Vec::new();
    let mut ready: Vec<String> = nodes.iter().filter(|n| waiting[*n] == 0).cloned().collect();
    while !ready.is_empty() {
        let batch = std::mem::take(&mut ready);
        for node in &batch {
            order.push(node.clone());
        }
        for node in &batch {
            for next in successors.get(node).cloned().unwrap_or_default() {
                if let Some(count) = waiting.get_mut(&next) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(next);
                    }
                }
            }
        }
    }
    (nodes, order)
}

fn text(f: &Finalized, name: &str) -> Option<String> {
    match f.get(name) {
        Some(Some(Val::Text(t))) => Some(t.clone()),
        _ => None,
    }
}

fn flag(f: &Finalized, name: &str) -> bool {
    matches!(f.get(name), Some(Some(Val::Bool(true))))
}

fn list(f: &Finalized, name: &str) -> Vec<String> {
    match f.get(name) {
        Some(Some(Val::List(l))) => l.clone(),
        _ => Vec::new(),
    }
}

/// Paths inside the project are kept relative to it, others absolute.
fn relative(shared: &mut Shared<'_>, path: &Path) -> PathBuf {
    let shown = match path.strip_prefix(&shared.project) {
        Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
        Ok(rel) => rel.to_path_buf(),
        Err(_) => path.to_path_buf(),
    };
    if shown.to_str().is_none() {
        shared.push(
            ConfigIssue::new(
                Severity::Error,
                "kiln::config::not_utf8",
                format!("The path `{}` is not valid UTF-8", shown.display()),
            )
            .with_help("kiln keeps recipe paths as text: rename the file or directory"),
        );
    }
    shown
}

fn paths(shared: &mut Shared<'_>, f: &Finalized, name: &str) -> Vec<PathBuf> {
    match f.get(name) {
        Some(Some(Val::Paths(p))) => p.iter().map(|p| relative(shared, p)).collect(),
        _ => Vec::new(),
    }
}

fn path(shared: &mut Shared<'_>, f: &Finalized, name: &str) -> Option<PathBuf> {
    match f.get(name) {
        Some(Some(Val::Path(p))) if p.is_absolute() => Some(relative(shared, p)),
        Some(Some(Val::Path(p))) => Some(p.clone()),
        _ => None,
    }
}

fn trees(shared: &mut Shared<'_>, f: &Finalized, name: &str) -> Vec<TreeSource> {
    match f.get(name) {
        Some(Some(Val::Trees(t))) => t
            .iter()
            .map(|(source, target)| TreeSource {
                source: relative(shared, source),
                target: target.clone(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn to_recipe(shared: &mut Shared<'_>, f: &Finalized) -> Recipe {
    let distribution = text(f, "Distribution")
        .and_then(|d| Distribution::from_mkosi(&d))
        .unwrap_or(Distribution::Custom);
    Recipe {
        config: ConfigSettings {
            profiles: list(f, "Profiles"),
            dependencies: list(f, "Dependencies"),
            environment: match f.get("Environment") {
                Some(Some(Val::Map(map))) => map.clone(),
                _ => BTreeMap::new(),
            },
            pass_environment: list(f, "PassEnvironment"),
        },
        distribution: DistributionSettings {
            distribution,
            release: text(f, "Release"),
            mirror: text(f, "Mirror"),
            repositories: list(f, "Repositories"),
            architecture: text(f, "Architecture")
                .unwrap_or_else(|| native_architecture().to_string()),
        },
        output: OutputSettings {
            image_id: text(f, "ImageId"),
            image_version: text(f, "ImageVersion"),
            format: text(f, "Format")
                .and_then(|v| OutputFormat::from_mkosi(&v))
                .unwrap_or_default(),
            output: text(f, "Output"),
            output_directory: path(shared, f, "OutputDirectory"),
            cache_directory: path(shared, f, "CacheDirectory"),
        },
        content: ContentSettings {
            packages: list(f, "Packages"),
            remove_packages: list(f, "RemovePackages"),
            remove_files: list(f, "RemoveFiles"),
            hostname: text(f, "Hostname"),
            bootable: match f.get("Bootable") {
                Some(Some(Val::Feature(feature))) => *feature,
                _ => Feature::Auto,
            },
            bootloader: text(f, "Bootloader")
                .and_then(|b| Bootloader::from_mkosi(&b))
                .unwrap_or_default(),
            kernel_command_line: list(f, "KernelCommandLine"),
            kernel_modules_include: list(f, "KernelModulesInclude"),
            kernel_modules_exclude: list(f, "KernelModulesExclude"),
            kernel_modules_include_host: flag(f, "KernelModulesIncludeHost"),
            kernel_modules: list(f, "KernelModules"),
            firmware_files: list(f, "FirmwareFiles"),
            firmware_include: list(f, "FirmwareInclude"),
            firmware_exclude: list(f, "FirmwareExclude"),
            root_password: match f.get("RootPassword") {
                Some(Some(Val::Password(p))) => Some(p.clone()),
                _ => None,
            },
            autologin: flag(f, "Autologin"),
            skeleton_trees: trees(shared, f, "SkeletonTrees"),
            extra_trees: trees(shared, f, "ExtraTrees"),
            base_trees: paths(shared, f, "BaseTrees"),
            source_date_epoch: match f.get("SourceDateEpoch") {
                Some(Some(Val::Int(epoch))) => Some(*epoch),
                _ => None,
            },
            with_docs: flag(f, "WithDocs"),
            clean_package_metadata: match f.get("CleanPackageMetadata") {
                Some(Some(Val::Feature(feature))) => *feature,
                _ => Feature::Auto,
            },
            locale: text(f, "Locale"),
            locale_messages: text(f, "LocaleMessages"),
            keymap: text(f, "Keymap"),
            timezone: text(f, "Timezone"),
            root_shell: text(f, "RootShell"),
        },
        validation: ValidationSettings {
            secure_boot: flag(f, "SecureBoot"),
            secure_boot_key: path(shared, f, "SecureBootKey"),
            secure_boot_key_source: text(f, "SecureBootKeySource")
                .and_then(|source| KeySource::from_mkosi(&source))
                .unwrap_or_default(),
            secure_boot_certificate: path(shared, f, "SecureBootCertificate"),
            secure_boot_certificate_source: text(f, "SecureBootCertificateSource")
                .and_then(|source| CertificateSource::from_mkosi(&source))
                .unwrap_or_default(),
            secure_boot_sign_tool: text(f, "SecureBootSignTool")
                .and_then(|tool| SecureBootSignTool::from_mkosi(&tool))
                .unwrap_or_default(),
        },
        scripts: Scripts {
            prepare: paths(shared, f, "PrepareScripts"),
            postinst: paths(shared, f, "PostInstallationScripts"),
            finalize: paths(shared, f, "FinalizeScripts"),
            make_executable: flag(f, "MakeScriptsExecutable"),
        },
        subimages: Vec::new(),
    }
}
