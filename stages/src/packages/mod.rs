//! The packages stage: the distribution's packages installed over the skeleton, keyed on the
//! *resolved* package set.
//!
//! Once per build, before anything runs, [`Stage::resolve`] asks the package manager which
//! packages, at which exact versions and architectures, installing `Packages=` would install
//! against the mirror's current index (apt's simulation for Debian and Ubuntu, the sync databases
//! for Arch). That listing is the stage's `packages` input: a mirror update that changes nothing
//! the image installs leaves the key as it was (the stage stays cached), one that bumps a package
//! re-runs it and `graph explain` names the package and both versions. `run` installs exactly the
//! resolved versions from exactly the index resolution read, checks the installed set against the
//! listing, and stores the tree.
//!
//! apt and pacman share one flow ([`manager`]); every tool they run goes through the [`Host`]
//! the stage is given. Each keeps a private state in the store ([`private_state`]), and
//! downloaded packages stay in the store's package cache for the next build
//! ([`package_cache`]). With `--locked`, resolution must also equal the stage's section of
//! `kiln.lock` ([`lockfile`]).
//!
//! ```no_run
//! use kiln_recipe::{load_project, LoadOptions};
//! use kiln_stages::host::RealHost;
//! use kiln_stages::packages::{Installer, PackagesStage};
//! use kiln_stages::host::reader::RealReaderHost;
//! let dir = std::path::Path::new("recipes/debian-rescue");
//! let loaded = load_project(dir, &LoadOptions::default(), &RealReaderHost)?;
//! let installer = Installer::for_recipe(&loaded.recipe)?.expect("a distribution with packages");
//! let host = std::sync::Arc::new(RealHost::new());
//! let stage = PackagesStage::new("skeleton-trees", installer, None, host);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod apt;
mod error;
mod files;
mod freshness;
pub mod gpg_home;
mod listing;
mod lockfile;
pub(crate) mod manager;
pub mod mirror;
pub mod package_cache;
mod pacman;
pub(crate) mod private_state;
mod resolution;
mod snapshot;
mod tools;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_cache::{
    CheckoutMode, CheckoutOptions, Digest, IngestOptions, Manifest, OutputKind, PutMode, Store,
};
use kiln_engine::{
    Input, Resolution, ResolveContext, ResolveMode, Stage, StageContext, StageError,
};
use kiln_recipe::{Distribution, Recipe};

pub use error::PackagesError;
pub use listing::{PackageChange, PackageSet, ResolvedPackage};
pub use lockfile::{LOCK_FILE, LockFile};

use crate::host::Host;
use apt::AptSetup;
use manager::PackageManager;
use pacman::PacmanSetup;
use snapshot::Snapshot;

/// The name of the stage in the graph.
pub const STAGE_NAME: &str = "packages";

/// The name of the resolved input: the listing of the resolved set.
pub const RESOLVED_INPUT: &str = "packages";

/// The package manager that installs a recipe's packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installer {
    /// Debian and Ubuntu: apt resolves, mmdebstrap installs.
    Apt(AptSetup),
    /// Arch Linux: pacman.
    Pacman(PacmanSetup),
}

impl Installer {
    /// The installer of `recipe`'s distribution; `None` for `Distribution=custom`. Other
    /// distributions are not supported yet.
    pub fn for_recipe(recipe: &Recipe) -> Result<Option<Installer>, PackagesError> {
        Ok(match recipe.distribution.distribution {
            Distribution::Debian | Distribution::Ubuntu => {
                Some(Installer::Apt(AptSetup::from_recipe(recipe)?))
            }
            Distribution::Arch => Some(Installer::Pacman(PacmanSetup::from_recipe(recipe)?)),
            _ => None,
        })
    }

    /// Whether kiln can install packages for `distribution`.
    pub fn supports(distribution: Distribution) -> bool {
        matches!(
            distribution,
            Distribution::Debian | Distribution::Ubuntu | Distribution::Arch | Distribution::Custom
        )
    }

    fn manager(&self) -> &dyn PackageManager {
        match self {
            Installer::Apt(setup) => setup,
            Installer::Pacman(setup) => setup,
        }
    }

    fn resolve(
        &self,
        host: &dyn Host,
        store: &Store,
        mode: ResolveMode,
    ) -> Result<Option<Resolved>, PackagesError> {
        manager::resolve(self.manager(), host, store, mode)
    }

    /// The values the output depends on besides the resolved set and the base tree.
    fn inputs(&self) -> Vec<Input> {
        let requested = |packages: &[String]| {
            packages
                .iter()
                .map(|name| format!("{name}\n"))
                .collect::<String>()
        };
        match self {
            Installer::Apt(setup) => {
                let mut inputs = vec![
                    Input::value("Distribution", setup.distribution.as_str()),
                    Input::value("Release", &setup.release),
                    Input::value("Architecture", &setup.architecture),
                    Input::value("requested", requested(&setup.packages)),
                    Input::value("WithDocs", if setup.with_docs { "yes" } else { "no" }),
                ];
                // The sources end up in the image's /etc/apt/sources.list.
                for (position, source) in setup.sources().into_iter().enumerate() {
                    inputs.push(Input::value(format!("source {position}"), source));
                }
                inputs
            }
            Installer::Pacman(setup) => vec![
                Input::value("Distribution", "arch"),
                Input::value("Architecture", &setup.architecture),
                Input::value("Repositories", setup.repositories.join(" ")),
                Input::value("requested", requested(&setup.packages)),
                Input::value("WithDocs", if setup.with_docs { "yes" } else { "no" }),
            ],
        }
    }
}

/// A package list resolved against a mirror's index.
#[derive(Debug)]
pub struct Resolved {
    pub set: PackageSet,
    /// The index resolution read, for installation (none when only reading).
    pub snapshot: Option<Snapshot>,
    /// How it was resolved, when that is worth saying (offline, from an earlier resolution).
    pub note: Option<String>,
}

/// One installation: what to install, from which index, into which tree.
#[derive(Clone, Copy)]
pub struct Installation<'a> {
    pub store: &'a Store,
    pub set: &'a PackageSet,
    /// The index resolution read: apt's lists, pacman's sync databases.
    pub index: &'a Path,
    /// The tree the packages go over, checked out at `target`.
    pub base: &'a Manifest,
    pub target: &'a Path,
    /// A private folder for hooks and downloads.
    pub scratch: &'a Path,
}

/// What `--locked` expects of a packages stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locked {
    /// The stage's section of `kiln.lock`.
    Set(PackageSet),
    /// `kiln.lock` has no section for the stage.
    Missing,
}

/// Installs the distribution's packages over the tree of `base`.
pub struct PackagesStage {
    pub base: String,
    pub installer: Installer,
    /// With `--locked`: what resolution must yield.
    pub locked: Option<Locked>,
    /// The host the package managers run on.
    pub host: Arc<dyn Host>,
    /// The index the last resolution read, for `run`.
    snapshot: Mutex<Option<Snapshot>>,
}

impl PackagesStage {
    pub fn new(
        base: impl Into<String>,
        installer: Installer,
        locked: Option<Locked>,
        host: Arc<dyn Host>,
    ) -> PackagesStage {
        PackagesStage {
            base: base.into(),
            installer,
            locked,
            host,
            snapshot: Mutex::new(None),
        }
    }

    fn snapshot(&self) -> MutexGuard<'_, Option<Snapshot>> {
        self.snapshot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolve the package set against the mirror, keeping the index for a later `run`.
    pub fn resolve_set(&self, store: &Store) -> Result<PackageSet, PackagesError> {
        let resolved = self
            .installer
            .resolve(self.host.as_ref(), store, ResolveMode::Online)?
            .ok_or(PackagesError::NoResolution)?;
        *self.snapshot() = resolved.snapshot;
        Ok(resolved.set)
    }

    fn check_lock(&self, set: &PackageSet) -> Result<(), PackagesError> {
        match &self.locked {
            None => Ok(()),
            Some(Locked::Missing) => Err(PackagesError::NotLocked {
                stage: STAGE_NAME.to_string(),
            }),
            Some(Locked::Set(locked)) => {
                let changes = locked.changes(set);
                if changes.is_empty() {
                    Ok(())
                } else {
                    Err(PackagesError::LockMismatch {
                        stage: STAGE_NAME.to_string(),
                        changes: listing::describe_changes(&changes),
                    })
                }
            }
        }
    }

    fn install(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let set = PackageSet::parse(ctx.value(RESOLVED_INPUT)?)
            .map_err(|error| StageError::failed(PackagesError::from(error)))?;
        let snapshot = match self.snapshot().take() {
            Some(snapshot) => snapshot,
            None => {
                // Run without a resolution in this process: resolve again, and the index must
                // still yield what the key was computed from.
                let resolved = self
                    .installer
                    .resolve(self.host.as_ref(), ctx.store, ResolveMode::Online)
                    .map_err(StageError::failed)?
                    .ok_or_else(|| StageError::failed(PackagesError::NoResolution))?;
                let (again, snapshot) = match resolved.snapshot {
                    Some(snapshot) => (resolved.set, snapshot),
                    None => return Err(StageError::failed(PackagesError::NoResolution)),
                };
                let changes = set.changes(&again);
                if !changes.is_empty() {
                    return Err(StageError::failed(PackagesError::InstalledDiffers {
                        changes: listing::describe_changes(&changes),
                    }));
                }
                snapshot
            }
        };
        let base = ctx.store.manifest(&ctx.input("base")?)?;
        let target = ctx.scratch.join("root");
        // Without root, mmdebstrap builds an archive from the base tree itself.
        let rootless = matches!(self.installer, Installer::Apt(_)) && !tools::is_root();
        if !rootless {
            ctx.store.checkout(
                &base,
                &target,
                CheckoutOptions {
                    mode: CheckoutMode::Copy,
                    ..CheckoutOptions::default()
                },
            )?;
        }
        let mut log = |line: &str| ctx.log.line(line);
        let job = Installation {
            store: ctx.store,
            set: &set,
            index: snapshot.path(),
            base: &base,
            target: &target,
            scratch: ctx.scratch,
        };
        let stored = self
            .installer
            .manager()
            .install(self.host.as_ref(), &job, &mut log)
            .map_err(StageError::failed)?;
        drop(snapshot);
        let mut tree = match stored {
            Some(tree) => tree,
            None => ctx.store.ingest_dir(
                &target,
                IngestOptions {
                    mode: PutMode::Move,
                    owner: None,
                },
            )?,
        };
        remove_device_nodes(&mut tree);
        Ok(ctx.store.put_manifest(&tree)?)
    }
}

/// What the package manager left in `/dev` (mmdebstrap makes the nodes its chroot needs):
/// mkosi's images have an empty `/dev`, which the booted system mounts over.
fn remove_device_nodes(tree: &mut Manifest) {
    let nodes: Vec<String> = tree
        .entries()
        .filter(|entry| entry.path.starts_with("dev/"))
        .map(|entry| entry.path.clone())
        .collect();
    for path in nodes.iter().rev() {
        tree.remove_path_recursive(path);
    }
}

impl Stage for PackagesStage {
    fn name(&self) -> &str {
        STAGE_NAME
    }

    fn kind(&self) -> &'static str {
        match self.installer {
            Installer::Apt(_) => "packages-apt",
            Installer::Pacman(_) => "packages-pacman",
        }
    }

    fn version(&self) -> u32 {
        2
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = vec![Input::stage("base", &self.base)];
        inputs.extend(self.installer.inputs());
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn resolve(&self, ctx: &ResolveContext<'_>) -> Result<Resolution, StageError> {
        let Some(store) = ctx.store else {
            return Ok(Resolution::unknown());
        };
        let Some(resolved) = self
            .installer
            .resolve(self.host.as_ref(), store, ctx.mode)
            .map_err(StageError::failed)?
        else {
            return Ok(Resolution::unknown());
        };
        self.check_lock(&resolved.set).map_err(StageError::failed)?;
        let mut resolution =
            Resolution::inputs(vec![Input::value(RESOLVED_INPUT, resolved.set.listing())]);
        if let Some(note) = resolved.note {
            resolution = resolution.with_note(note);
        }
        *self.snapshot() = resolved.snapshot;
        Ok(resolution)
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        self.install(ctx)
    }
}
