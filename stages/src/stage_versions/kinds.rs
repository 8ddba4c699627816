//! Every stage kind of this crate, with the version its code reports and the source files that
//! implement it: the list the stage-version table is checked against.
//!
//! A new stage kind is one more line in [`stage_kinds`]. The versions are read by building a
//! stage of each kind and asking it, so this list cannot disagree with `Stage::version`.

use std::any::type_name;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_engine::Stage;
use kiln_recipe::{CertificateSource, Distribution, Feature, KeySource, Recipe, RootPassword};

use crate::config::{
    Autologin, CleanMetadata, EditStage, Firstboot, Hostname, Init, MachineId, OsRelease,
    PresetsStage, RootPasswordHash, TreeEdit,
};
use crate::formats::directory::DirectoryStage;
use crate::formats::tar::TarStage;
use crate::host::{Host, RealHost};
use crate::initrd::InitrdStage;
use crate::modules::{ModuleRules, ModulesStage};
use crate::packages::{Installer, PackagesStage};
use crate::remove_files::RemoveFilesStage;
use crate::scripts::{ScriptPhase, ScriptsStage};
use crate::sign::{SignStage, SigningMethod, SigningPlan};
use crate::trees::TreesStage;
use crate::uki::{KernelStage, UkiStage};

/// One stage kind as its code declares it.
#[derive(Debug, Clone)]
pub(crate) struct StageKind {
    /// `Stage::kind`.
    pub(crate) kind: &'static str,
    /// `Stage::version` (for an edit stage, `TreeEdit::version`).
    pub(crate) version: u32,
    /// The type whose `version()` to bump: the `Stage`, or for an edit stage the `TreeEdit`.
    pub(crate) type_name: &'static str,
    /// Its sources, relative to `stages/src`: a file, or a directory (ending in `/`) standing
    /// for every `.rs` file below it; `../../` reaches another crate's file its output depends
    /// on.
    pub(crate) sources: &'static [&'static str],
}

impl StageKind {
    fn of<S: Stage>(stage: S, sources: &'static [&'static str]) -> StageKind {
        StageKind {
            kind: stage.kind(),
            version: stage.version(),
            type_name: short_name(type_name::<S>()),
            sources,
        }
    }

    fn edit<E: TreeEdit>(edit: E, sources: &'static [&'static str]) -> StageKind {
        let stage = EditStage {
            base: String::new(),
            edit,
        };
        StageKind {
            kind: stage.kind(),
            version: stage.version(),
            type_name: short_name(type_name::<E>()),
            sources,
        }
    }
}

/// `UkiStage` of `kiln_stages::uki::stage::UkiStage`.
fn short_name(path: &'static str) -> &'static str {
    path.rsplit("::").next().unwrap_or(path)
}

/// Every stage kind, one entry each.
pub(crate) fn stage_kinds() -> Vec<StageKind> {
    let host: Arc<dyn Host> = Arc::new(RealHost::default());
    let base = || String::new();
    vec![
        StageKind::of(
            TreesStage {
                name: String::new(),
                base: None,
                layers: Vec::new(),
            },
            &["trees.rs"],
        ),
        StageKind::of(packages(Distribution::Debian), &["packages/", "tarball.rs"]),
        StageKind::of(packages(Distribution::Arch), &["packages/", "tarball.rs"]),
        StageKind::of(
            ScriptsStage {
                phase: ScriptPhase::Postinst,
                base: base(),
                scripts: Vec::new(),
                variables: Default::default(),
                project_dir: PathBuf::new(),
                host: Arc::clone(&host),
            },
            &["scripts.rs"],
        ),
        StageKind::edit(Autologin, &["config/autologin.rs", "config/edit.rs"]),
        StageKind::edit(
            OsRelease {
                image_id: None,
                image_version: None,
                hostname: None,
            },
            &["config/os_release.rs", "config/edit.rs"],
        ),
        StageKind::edit(Init, &["config/init.rs", "config/edit.rs"]),
        StageKind::of(
            PresetsStage {
                base: base(),
                host: Arc::clone(&host),
            },
            &["config/presets.rs"],
        ),
        StageKind::edit(
            Firstboot {
                locale: None,
                locale_messages: None,
                keymap: None,
                timezone: None,
                root_shell: None,
            },
            &["config/firstboot.rs", "config/edit.rs"],
        ),
        StageKind::edit(
            Hostname {
                hostname: String::new(),
            },
            &["config/hostname.rs", "config/edit.rs"],
        ),
        StageKind::edit(
            RootPasswordHash::new(
                &RootPassword {
                    value: String::new(),
                    hashed: true,
                },
                "",
            ),
            &[
                "config/root_password.rs",
                "config/crypt.rs",
                "config/edit.rs",
            ],
        ),
        StageKind::edit(MachineId, &["config/machine_id.rs", "config/edit.rs"]),
        StageKind::edit(
            CleanMetadata {
                setting: Feature::Auto,
                keeps_by_default: false,
            },
            &["config/clean_metadata.rs", "config/edit.rs"],
        ),
        StageKind::of(
            ModulesStage::new(base(), ModuleRules::default(), Arc::clone(&host)),
            &["modules/", "../../recipe/src/fnmatch.rs"],
        ),
        StageKind::of(
            RemoveFilesStage {
                name: String::new(),
                base: base(),
                globs: Vec::new(),
            },
            &["remove_files.rs"],
        ),
        StageKind::of(
            InitrdStage {
                name: String::new(),
                base: base(),
                source_date_epoch: 0,
                level: 0,
            },
            &["initrd/"],
        ),
        StageKind::of(
            KernelStage {
                name: String::new(),
                tree: String::new(),
                architecture: String::new(),
            },
            &["uki/stage.rs", "uki/lookup.rs", "pe.rs"],
        ),
        StageKind::of(
            UkiStage {
                name: String::new(),
                tree: String::new(),
                esp: None,
                initrd: String::new(),
                architecture: String::new(),
                kernel_command_line: Vec::new(),
            },
            &["uki/", "pe.rs"],
        ),
        StageKind::of(
            SignStage {
                name: String::new(),
                uki: String::new(),
                plan: SigningPlan {
                    key: PathBuf::new(),
                    key_source: KeySource::File,
                    certificate: PathBuf::new(),
                    certificate_source: CertificateSource::File,
                    method: SigningMethod::Kiln,
                    key_identity: String::new(),
                    subject: None,
                },
                signing_time: None,
                host: Arc::clone(&host),
            },
            &["sign/", "pe.rs"],
        ),
        StageKind::of(
            DirectoryStage {
                name: String::new(),
                base: base(),
            },
            &["formats/directory.rs"],
        ),
        StageKind::of(
            TarStage {
                name: String::new(),
                base: base(),
                source_date_epoch: 0,
            },
            &["formats/tar.rs", "tarball.rs"],
        ),
    ]
}

/// A packages stage installing with `distribution`'s package manager.
fn packages(distribution: Distribution) -> PackagesStage {
    let mut recipe = Recipe::default();
    recipe.distribution.distribution = distribution;
    recipe.distribution.architecture = "x86-64".to_string();
    let installer = Installer::for_recipe(&recipe)
        .expect("x86-64 is an architecture of every distribution kiln installs")
        .expect("the distribution has a package manager");
    PackagesStage::new(
        String::new(),
        installer,
        None,
        Arc::new(RealHost::default()),
    )
}
