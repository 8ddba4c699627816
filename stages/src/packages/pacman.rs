//! Arch Linux: the package set resolved by pacman against the sync databases, installed by
//! pacman with `--root`.
//!
//! kiln writes a pacman.conf (the `Mirror=` as each repository's `Server`, `NoExtract` for
//! `WithDocs=no`), refreshes the sync databases of a private state in the store (`-Sy`), and asks
//! pacman which packages `-S` would install into an empty root (`-Sp`). Installation copies
//! exactly those sync databases into the new root, pins each package of `Packages=` to its
//! resolved version and runs `pacman -S --noconfirm` with `--cachedir` in the store. Scriptlets
//! and hooks run chrooted into the tree, with `/dev` and `/proc` mounted by bubblewrap for the
//! time of the transaction. As mkosi does, `--assume-installed initramfs` keeps pacman from
//! pulling an initramfs generator in (kiln builds its own initrd). The sync databases are removed
//! from the finished tree: the tree depends on the resolved set only.
//!
//! Signatures: a `file://` mirror (a local repository) is read with `SigLevel = Optional
//! TrustAll`; any other needs the Arch Linux keyring (`archlinux-keyring` on Debian) and is
//! checked with `SigLevel = Required DatabaseOptional`.

use std::path::{Path, PathBuf};

use kiln_cache::Store;
use kiln_engine::ResolveMode;
use kiln_recipe::{Distribution, Recipe};

use super::error::PackagesError;
use super::freshness::{self, IndexFile};
use super::listing::{PackageSet, ResolvedPackage, describe_changes};
use super::mirror;
use super::resolution::SavedResolution;
use crate::host::clean_command;

use super::state::{
    self, GpgHome, PackageCache, Snapshot, StateLock, ToolOutput, create_dir, run_tool, write_file,
};
use super::{Installation, Resolved};

/// The Arch Linux keyring as Debian's `archlinux-keyring` installs it.
const ARCH_KEYRING: &str = "/usr/share/keyrings/archlinux.gpg";

/// What mkosi leaves out of the image with `WithDocs=no`.
const DOCUMENTATION: &[&str] = &[
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/groff/*",
    "usr/share/gtk-doc/*",
    "usr/share/info/*",
];

/// The settings of an Arch Linux package installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacmanSetup {
    /// The mirror, to which `/$repo/os/$arch` is appended.
    pub mirror: String,
    /// The repositories, in the order pacman searches them.
    pub repositories: Vec<String>,
    /// pacman's architecture (`x86_64`).
    pub architecture: String,
    /// `Packages=`, as written.
    pub packages: Vec<String>,
    pub with_docs: bool,
}

impl PacmanSetup {
    /// The setup for `recipe` (Distribution=arch).
    pub fn from_recipe(recipe: &Recipe) -> Result<PacmanSetup, PackagesError> {
        let architecture = &recipe.distribution.architecture;
        let pacman = mirror::pacman_architecture(architecture).ok_or_else(|| {
            PackagesError::UnsupportedArchitecture {
                distribution: "arch".to_string(),
                architecture: architecture.clone(),
            }
        })?;
        // mkosi's order: testing repositories before the ones they feed, the rest after.
        let extra = &recipe.distribution.repositories;
        let mut repositories: Vec<String> = Vec::new();
        for base in ["core", "extra"] {
            let testing = format!("{base}-testing");
            if extra.contains(&testing) {
                repositories.push(testing);
            }
            repositories.push(base.to_string());
        }
        for repository in extra {
            if !repositories.contains(repository) {
                repositories.push(repository.clone());
            }
        }
        Ok(PacmanSetup {
            mirror: mirror::mirror(
                recipe.distribution.mirror.as_deref(),
                Distribution::Arch,
                architecture,
            ),
            repositories,
            architecture: pacman.to_string(),
            packages: recipe.content.packages.clone(),
            with_docs: recipe.content.with_docs,
        })
    }

    /// Whether signatures are checked (any mirror but a local `file://` one).
    fn verifies_signatures(&self) -> bool {
        !self.mirror.starts_with("file://")
    }

    /// The generated pacman.conf.
    pub fn config(&self) -> String {
        let mut text = format!("[options]\nArchitecture = {}\n", self.architecture);
        if self.verifies_signatures() {
            text.push_str("SigLevel = Required DatabaseOptional\n");
        } else {
            text.push_str("SigLevel = Optional TrustAll\n");
        }
        text.push_str("LocalFileSigLevel = Optional\nParallelDownloads = 5\n");
        if !self.with_docs {
            text.push_str(&format!("NoExtract = {}\n", DOCUMENTATION.join(" ")));
        }
        for repository in &self.repositories {
            text.push_str(&format!(
                "\n[{repository}]\nServer = {}/$repo/os/$arch\n",
                self.mirror
            ));
        }
        text
    }

    /// Check the host tools and, for signed repositories, the keyring.
    pub fn check_host(&self) -> Result<(), PackagesError> {
        let mut tools = vec![
            ("pacman", "pacman-package-manager"),
            ("bwrap", "bubblewrap"),
        ];
        if self.verifies_signatures() {
            tools.push(("pacman-key", "pacman-package-manager"));
            tools.push(("gpg", "gpg"));
        }
        state::require_tools(&tools)?;
        if self.verifies_signatures() && !Path::new(ARCH_KEYRING).is_file() {
            return Err(PackagesError::KeyringMissing {
                path: PathBuf::from(ARCH_KEYRING),
                package: "archlinux-keyring".to_string(),
            });
        }
        Ok(())
    }

    /// The private state for this pacman.conf: its folder, config file and keyring folder.
    fn state(&self, store: &Store) -> (PathBuf, PathBuf, PathBuf) {
        let dir = state::state_dir(store, "pacman", &self.config());
        (dir.clone(), dir.join("pacman.conf"), dir.join("gnupg"))
    }

    /// What resolution depends on besides the mirror's databases: the request's digest.
    fn request(&self) -> String {
        let text = format!(
            "pacman 1\n{}\n{}\n",
            self.config(),
            self.packages.join("\n")
        );
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }

    /// The sync database of each repository, on the mirror and in `sync`.
    fn index_files(&self, sync: &Path) -> Vec<IndexFile> {
        self.repositories
            .iter()
            .map(|repository| IndexFile {
                url: format!(
                    "{}/{repository}/os/{}/{repository}.db",
                    self.mirror, self.architecture
                ),
                local: sync.join(format!("{repository}.db")),
            })
            .collect()
    }

    /// Resolve the package set against the mirror's sync databases, as `mode` allows (see
    /// [`super::apt::AptSetup::resolve`]); the snapshot holds the databases resolution read,
    /// for [`PacmanSetup::install`].
    pub fn resolve(
        &self,
        store: &Store,
        mode: ResolveMode,
    ) -> Result<Option<Resolved>, PackagesError> {
        let (dir, config, gnupg) = self.state(store);
        let request = self.request();
        let sync_dir = dir.join("db/sync");
        match mode {
            ResolveMode::ReadOnly => {
                return SavedResolution::load(&dir, &request)
                    .map(|saved| {
                        Ok(Resolved {
                            set: saved.set()?,
                            snapshot: None,
                            note: None,
                        })
                    })
                    .transpose();
            }
            ResolveMode::Offline => {
                let saved =
                    SavedResolution::load(&dir, &request).ok_or(PackagesError::NoResolution)?;
                let _lock = StateLock::acquire(&dir)?;
                return Ok(Some(Resolved {
                    set: saved.set()?,
                    snapshot: Some(snapshot_of(store, &sync_dir)?),
                    note: Some(saved.offline_note()),
                }));
            }
            ResolveMode::Online => {}
        }
        self.check_host()?;
        let _lock = StateLock::acquire(&dir)?;
        let index = self.index_files(&sync_dir);
        if let Some(saved) = SavedResolution::load(&dir, &request)
            && saved.read_index_in(&sync_dir)
            && freshness::unchanged(&index)?
        {
            return Ok(Some(Resolved {
                set: saved.set()?,
                snapshot: Some(snapshot_of(store, &sync_dir)?),
                note: None,
            }));
        }
        write_file(&config, self.config().as_bytes())?;
        let db = dir.join("db");
        let empty_root = dir.join("root");
        create_dir(&db)?;
        create_dir(&empty_root)?;
        let gnupg = GpgHome::for_dir(&gnupg)?;
        let gnupg = gnupg.path();
        if self.verifies_signatures() {
            self.init_keyring(gnupg)?;
        }
        let mut sync = self.pacman(&config, gnupg);
        sync.arg("--dbpath")
            .arg(&db)
            .arg("--root")
            .arg(&empty_root)
            .args(["--noconfirm", "-Sy"]);
        let output = run_tool(sync, "pacman", &mut |_| {})?;
        check_sync(&output, &self.mirror, &self.architecture)?;

        let mut plan = self.pacman(&config, gnupg);
        plan.arg("--dbpath")
            .arg(&db)
            .arg("--root")
            .arg(&empty_root)
            .args([
                "--noconfirm",
                "--assume-installed",
                "initramfs",
                "-Sp",
                "--print-format",
                "%n %v %l",
            ])
            .args(&self.packages);
        let output = run_tool(plan, "pacman", &mut |_| {})?;
        let set = parse_plan(&output)?;
        let names: Vec<String> = index
            .iter()
            .filter_map(|file| Some(file.local.file_name()?.to_str()?.to_string()))
            .collect();
        SavedResolution::new(&request, &set, &sync_dir, &names).save(&dir)?;
        Ok(Some(Resolved {
            set,
            snapshot: Some(snapshot_of(store, &sync_dir)?),
            note: None,
        }))
    }

    /// `pacman --config … --gpgdir … --logfile /dev/null`.
    fn pacman(&self, config: &Path, gnupg: &Path) -> std::process::Command {
        let mut command = clean_command("pacman");
        command
            .arg("--config")
            .arg(config)
            .arg("--gpgdir")
            .arg(gnupg)
            .args(["--logfile", "/dev/null", "--color", "never"]);
        command
    }

    /// Create the keyring signatures are checked with, once per state.
    fn init_keyring(&self, gnupg: &Path) -> Result<(), PackagesError> {
        let ready = gnupg.join(".kiln-populated");
        if ready.exists() {
            return Ok(());
        }
        create_dir(gnupg)?;
        for step in [vec!["--init"], vec!["--populate", "archlinux"]] {
            let mut command = clean_command("pacman-key");
            command.arg("--gpgdir").arg(gnupg).args(&step);
            let output = run_tool(command, "pacman-key", &mut |_| {})?;
            if !output.success() {
                return Err(PackagesError::InstallFailed {
                    tool: format!("pacman-key {}", step.join(" ")),
                    code: output.code,
                    output: output.tail(20),
                });
            }
        }
        write_file(&ready, b"")
    }

    /// Install the job's set with pacman, reading the sync databases in its index.
    pub fn install(
        &self,
        job: &Installation<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), PackagesError> {
        let Installation {
            store,
            set,
            index: sync,
            target,
            scratch,
            ..
        } = *job;
        self.check_host()?;
        if !state::is_root() {
            return Err(PackagesError::NeedsRoot {
                tool: "pacman".to_string(),
            });
        }
        let (_, _, gnupg) = self.state(store);
        let gnupg = GpgHome::for_dir(&gnupg)?;
        // A private copy: another build may be writing the state's own.
        let config = scratch.join("pacman.conf");
        write_file(&config, self.config().as_bytes())?;
        let dbpath = target.join("var/lib/pacman");
        state::link_files(sync, &dbpath.join("sync"), &[])?;
        let cache = PackageCache::open(store, "pkgs")?;
        let downloads = scratch.join("pkgs-new");
        create_dir(&downloads)?;

        // Mount points the transaction needs; removed afterwards unless a package made them.
        let mounts: Vec<(PathBuf, bool)> = ["dev", "proc"]
            .iter()
            .map(|dir| (target.join(dir), target.join(dir).exists()))
            .collect();
        let mut command = clean_command("bwrap");
        command.args(["--bind", "/", "/", "--die-with-parent"]);
        command.arg("--dev").arg(target.join("dev"));
        command.arg("--proc").arg(target.join("proc"));
        command.args(["--", "pacman", "--config"]).arg(&config);
        command
            .arg("--gpgdir")
            .arg(gnupg.path())
            .args(["--logfile", "/dev/null", "--color", "never", "--noconfirm"])
            .arg("--root")
            .arg(target)
            .arg("--dbpath")
            .arg(&dbpath)
            .arg("--cachedir")
            .arg(&downloads)
            .arg("--cachedir")
            .arg(cache.path())
            .args(["--assume-installed", "initramfs", "-S"])
            .args(self.pins(set));
        let output = run_tool(command, "pacman", log)?;
        let adopted = cache.adopt(
            &downloads,
            &[".pkg.tar.zst", ".pkg.tar.xz", ".pkg.tar.gz", ".pkg.tar"],
        )?;
        if adopted > 0 {
            log(&format!(
                "{adopted} downloaded packages added to the package cache"
            ));
        }
        for (dir, existed) in mounts {
            if !existed {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        if let Some(error) = install_error(&output) {
            return Err(error);
        }
        let _ = std::fs::remove_dir_all(dbpath.join("sync"));
        let installed = read_local_db(&dbpath.join("local"))?;
        let changes = set.changes(&installed);
        if !changes.is_empty() {
            return Err(PackagesError::InstalledDiffers {
                changes: describe_changes(&changes),
            });
        }
        Ok(())
    }

    /// `Packages=` with each package the set holds pinned to its resolved version.
    fn pins(&self, set: &PackageSet) -> Vec<String> {
        self.packages
            .iter()
            .map(|name| match set.get(name) {
                Some(package) => format!("{}={}", package.name, package.version),
                None => name.clone(),
            })
            .collect()
    }
}

/// A failed `pacman -Sy` as the error the user can act on.
fn check_sync(output: &ToolOutput, mirror: &str, architecture: &str) -> Result<(), PackagesError> {
    for line in &output.lines {
        // error: failed retrieving file 'core.db' from mirror.example : Could not resolve host
        if let Some(rest) = line.strip_prefix("error: failed retrieving file ") {
            let (file, rest) = rest.split_once(" from ").unwrap_or((rest, ""));
            let file = file.trim_matches('\'');
            let repository = file.strip_suffix(".db").unwrap_or(file);
            let message = rest.split_once(" : ").map_or(rest, |(_, message)| message);
            return Err(PackagesError::MirrorUnreachable {
                url: format!("{mirror}/{repository}/os/{architecture}/{file}"),
                message: message.trim().to_string(),
            });
        }
    }
    if !output.success() {
        let message = output
            .lines
            .iter()
            .find_map(|line| line.strip_prefix("error: "))
            .unwrap_or("pacman failed")
            .to_string();
        return Err(PackagesError::MirrorUnreachable {
            url: "the repositories of the generated pacman.conf".to_string(),
            message,
        });
    }
    Ok(())
}

/// The set `pacman -Sp --print-format '%n %v %l'` prints, or why it cannot install.
fn parse_plan(output: &ToolOutput) -> Result<PackageSet, PackagesError> {
    let unknown: Vec<String> = output
        .lines
        .iter()
        .filter_map(|line| line.strip_prefix("error: target not found: "))
        .map(|name| name.trim().to_string())
        .collect();
    if !unknown.is_empty() {
        return Err(PackagesError::UnknownPackage {
            names: unknown,
            answer: output.tail(20),
        });
    }
    if !output.success() {
        return Err(PackagesError::Unresolvable {
            tool: "pacman".to_string(),
            output: output.tail(30),
        });
    }
    Ok(PackageSet::new(
        output.lines.iter().filter_map(|line| parse_target(line)),
    ))
}

/// `kiln-base 1.0-1 file:///m/core/os/x86_64/kiln-base-1.0-1-any.pkg.tar.zst` -> `kiln-base 1.0-1 any`.
fn parse_target(line: &str) -> Option<ResolvedPackage> {
    let mut words = line.split_whitespace();
    let (name, version, location) = (words.next()?, words.next()?, words.next()?);
    let file = location.rsplit('/').next()?;
    let stem = &file[..file.find(".pkg.tar")?];
    let arch = stem.rsplit('-').next()?;
    Some(ResolvedPackage {
        name: name.to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
    })
}

/// The error of a pacman transaction: a failing scriptlet (which pacman itself only reports)
/// is named with the package whose scriptlet it was.
fn install_error(output: &ToolOutput) -> Option<PackagesError> {
    let mut package = None;
    for (at, line) in output.lines.iter().enumerate() {
        let trimmed = line.trim();
        for verb in ["installing ", "upgrading ", "reinstalling "] {
            if let Some(rest) = trimmed
                .split_once(") ")
                .map_or(Some(trimmed), |(_, rest)| Some(rest))
                && let Some(name) = rest.strip_prefix(verb)
            {
                package = Some(name.trim_end_matches("...").trim().to_string());
            }
        }
        if trimmed == "error: command failed to execute correctly" {
            let start = at.saturating_sub(15);
            return Some(PackagesError::MaintainerScript {
                package: package.unwrap_or_else(|| "a package".to_string()),
                output: output.lines[start..=at].join("\n"),
            });
        }
    }
    (!output.success()).then(|| PackagesError::InstallFailed {
        tool: "pacman".to_string(),
        code: output.code,
        output: output.tail(30),
    })
}

/// The sync databases resolution read, hard-linked into a folder of their own for installation.
fn snapshot_of(store: &Store, sync: &Path) -> Result<Snapshot, PackagesError> {
    let snapshot = Snapshot::create(store, "pacman-sync")?;
    state::link_files(sync, snapshot.path(), &[])?;
    Ok(snapshot)
}

/// The packages a pacman local database records.
pub fn read_local_db(local: &Path) -> Result<PackageSet, PackagesError> {
    let entries =
        std::fs::read_dir(local).map_err(|source| PackagesError::io("read", local, source))?;
    let mut packages = Vec::new();
    for entry in entries.flatten() {
        let desc = entry.path().join("desc");
        let Ok(text) = std::fs::read_to_string(&desc) else {
            continue;
        };
        let field = |name: &str| -> Option<String> {
            let mut lines = text.lines();
            lines.find(|line| *line == name)?;
            lines.next().map(str::to_string)
        };
        if let (Some(name), Some(version), Some(arch)) =
            (field("%NAME%"), field("%VERSION%"), field("%ARCH%"))
        {
            packages.push(ResolvedPackage {
                name,
                version,
                arch,
            });
        }
    }
    Ok(PackageSet::new(packages))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(code: i32, text: &str) -> ToolOutput {
        ToolOutput {
            code,
            lines: text.lines().map(str::to_string).collect(),
        }
    }

    fn setup(mirror: &str) -> PacmanSetup {
        PacmanSetup {
            mirror: mirror.to_string(),
            repositories: vec!["core".to_string(), "extra".to_string()],
            architecture: "x86_64".to_string(),
            packages: vec!["base".to_string()],
            with_docs: false,
        }
    }

    #[test]
    fn the_config_names_the_mirror_for_each_repository() {
        let config = setup("file:///srv/repo").config();
        assert!(
            config.contains("SigLevel = Optional TrustAll\n"),
            "{config}"
        );
        assert!(
            config.contains("\n[core]\nServer = file:///srv/repo/$repo/os/$arch\n"),
            "{config}"
        );
        assert!(config.contains("NoExtract = usr/share/doc/* "), "{config}");
        let remote = setup("https://fastly.mirror.pkgbuild.com").config();
        assert!(
            remote.contains("SigLevel = Required DatabaseOptional\n"),
            "{remote}"
        );
    }

    #[test]
    fn planned_targets_become_the_set() {
        let planned = output(
            0,
            "kiln-base 1.0-1 file:///m/core/os/x86_64/kiln-base-1.0-1-any.pkg.tar.gz\n\
             linux 6.7.2.arch1-1 https://m/core/os/x86_64/linux-6.7.2.arch1-1-x86_64.pkg.tar.zst\n",
        );
        assert_eq!(
            parse_plan(&planned).unwrap().listing(),
            "kiln-base 1.0-1 any\nlinux 6.7.2.arch1-1 x86_64\n"
        );
    }

    #[test]
    fn unknown_targets_and_unreachable_mirrors_are_named() {
        match parse_plan(&output(1, "error: target not found: nosuch\n")).unwrap_err() {
            PackagesError::UnknownPackage { names, .. } => assert_eq!(names, vec!["nosuch"]),
            other => panic!("{other:?}"),
        }
        let synced = output(
            1,
            ":: Synchronizing package databases...\n\
             error: failed retrieving file 'core.db' from 127.0.0.1:9 : Failed to connect to 127.0.0.1 port 9: Connection refused\n\
             error: failed to synchronize all databases (failed to retrieve some files)\n",
        );
        match check_sync(&synced, "http://127.0.0.1:9", "x86_64").unwrap_err() {
            PackagesError::MirrorUnreachable { url, message } => {
                assert_eq!(url, "http://127.0.0.1:9/core/os/x86_64/core.db");
                assert!(message.contains("Connection refused"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_scriptlet_names_its_package() {
        let installed = output(
            0,
            "(1/2) installing kiln-base\n(2/2) installing kiln-broken\nkiln-broken: cannot configure\n\
             error: command failed to execute correctly\n",
        );
        match install_error(&installed) {
            Some(PackagesError::MaintainerScript { package, output }) => {
                assert_eq!(package, "kiln-broken");
                assert!(output.contains("cannot configure"));
            }
            other => panic!("{other:?}"),
        }
        assert!(install_error(&output(0, "(1/1) installing kiln-base\n")).is_none());
    }
}
