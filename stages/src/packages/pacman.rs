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

use kiln_cache::{Manifest, Store};
use kiln_recipe::{Distribution, Recipe};

use super::Installation;
use super::error::PackagesError;
use super::files::{create_dir, link_files, write_file};
use super::freshness::IndexFile;
use super::gpg_home::GpgHome;
use super::listing::{PackageSet, ResolvedPackage};
use super::manager::{PackageManager, check_installed, pins};
use super::mirror;
use super::package_cache::PackageCache;
use super::private_state::state_dir;
use super::tools::{ToolOutput, is_root, require_tools, run};
use crate::host::{Host, ToolInvocation};

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

    /// `pacman --config … --gpgdir … --logfile /dev/null`.
    fn pacman(&self, config: &Path, gnupg: &Path) -> ToolInvocation {
        ToolInvocation::new("pacman")
            .arg("--config")
            .arg_path(config)
            .arg("--gpgdir")
            .arg_path(gnupg)
            .args(["--logfile", "/dev/null", "--color", "never"])
    }

    /// Create the keyring signatures are checked with, once per state.
    fn init_keyring(&self, host: &dyn Host, gnupg: &Path) -> Result<(), PackagesError> {
        let ready = gnupg.join(".kiln-populated");
        if ready.exists() {
            return Ok(());
        }
        create_dir(gnupg)?;
        for step in [vec!["--init"], vec!["--populate", "archlinux"]] {
            let invocation = ToolInvocation::new("pacman-key")
                .arg("--gpgdir")
                .arg_path(gnupg)
                .args(step.iter().copied());
            let output = run(host, &invocation, "pacman-key", &mut |_| {})?;
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

    /// `pacman -S` of the pinned set into `target`, under bubblewrap, which mounts `/dev` and
    /// `/proc` in the tree for the time of the transaction.
    fn install_invocation(
        &self,
        job: &Installation<'_>,
        config: &Path,
        gnupg: &Path,
        dbpath: &Path,
        cachedirs: [&Path; 2],
    ) -> ToolInvocation {
        let target = job.target;
        ToolInvocation::new("bwrap")
            .args(["--bind", "/", "/", "--die-with-parent"])
            .arg("--dev")
            .arg_path(&target.join("dev"))
            .arg("--proc")
            .arg_path(&target.join("proc"))
            .args(["--", "pacman", "--config"])
            .arg_path(config)
            .arg("--gpgdir")
            .arg_path(gnupg)
            .args(["--logfile", "/dev/null", "--color", "never", "--noconfirm"])
            .arg("--root")
            .arg_path(target)
            .arg("--dbpath")
            .arg_path(dbpath)
            .arg("--cachedir")
            .arg_path(cachedirs[0])
            .arg("--cachedir")
            .arg_path(cachedirs[1])
            .args(["--assume-installed", "initramfs", "-S"])
            .args(pins(&self.packages, job.set))
    }
}

impl PackageManager for PacmanSetup {
    /// The private state for this pacman.conf, which holds the config file, the sync databases
    /// and the keyring.
    fn state(&self, store: &Store) -> PathBuf {
        state_dir(store, "pacman", &self.config())
    }

    fn index_dir(&self, state: &Path) -> PathBuf {
        state.join("db/sync")
    }

    fn snapshot_label(&self) -> (&'static str, &'static [&'static str]) {
        ("pacman-sync", &[])
    }

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

    /// Check the host tools and, for signed repositories, the keyring.
    fn check_host(&self, host: &dyn Host) -> Result<(), PackagesError> {
        let mut tools = vec![
            ("pacman", "pacman-package-manager"),
            ("bwrap", "bubblewrap"),
        ];
        if self.verifies_signatures() {
            tools.push(("pacman-key", "pacman-package-manager"));
            tools.push(("gpg", "gpg"));
        }
        require_tools(host, &tools)?;
        if self.verifies_signatures() && !Path::new(ARCH_KEYRING).is_file() {
            return Err(PackagesError::KeyringMissing {
                path: PathBuf::from(ARCH_KEYRING),
                package: "archlinux-keyring".to_string(),
            });
        }
        Ok(())
    }

    /// `pacman -Sy` into the state's databases, then `pacman -Sp` into an empty root.
    fn refresh_and_resolve(
        &self,
        host: &dyn Host,
        dir: &Path,
    ) -> Result<PackageSet, PackagesError> {
        let config = dir.join("pacman.conf");
        write_file(&config, self.config().as_bytes())?;
        let db = dir.join("db");
        let empty_root = dir.join("root");
        create_dir(&db)?;
        create_dir(&empty_root)?;
        let gnupg = GpgHome::for_dir(&dir.join("gnupg"), host)?;
        let gnupg = gnupg.path();
        if self.verifies_signatures() {
            self.init_keyring(host, gnupg)?;
        }
        let sync = self
            .pacman(&config, gnupg)
            .arg("--dbpath")
            .arg_path(&db)
            .arg("--root")
            .arg_path(&empty_root)
            .args(["--noconfirm", "-Sy"]);
        let output = run(host, &sync, "pacman", &mut |_| {})?;
        check_sync(&output, &self.mirror, &self.architecture)?;

        let plan = self
            .pacman(&config, gnupg)
            .arg("--dbpath")
            .arg_path(&db)
            .arg("--root")
            .arg_path(&empty_root)
            .args([
                "--noconfirm",
                "--assume-installed",
                "initramfs",
                "-Sp",
                "--print-format",
                "%n %v %l",
            ])
            .args(self.packages.iter().cloned());
        let output = run(host, &plan, "pacman", &mut |_| {})?;
        parse_plan(&output)
    }

    /// Install the job's set with pacman, reading the sync databases in its index.
    fn install(
        &self,
        host: &dyn Host,
        job: &Installation<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Option<Manifest>, PackagesError> {
        let Installation {
            store,
            set,
            index: sync,
            target,
            scratch,
            ..
        } = *job;
        self.check_host(host)?;
        if !is_root() {
            return Err(PackagesError::NeedsRoot {
                tool: "pacman".to_string(),
            });
        }
        let gnupg = GpgHome::for_dir(&self.state(store).join("gnupg"), host)?;
        // A private copy: another build may be writing the state's own.
        let config = scratch.join("pacman.conf");
        write_file(&config, self.config().as_bytes())?;
        let dbpath = target.join("var/lib/pacman");
        link_files(sync, &dbpath.join("sync"), &[])?;
        let cache = PackageCache::open(store, "pkgs")?;
        let downloads = scratch.join("pkgs-new");
        create_dir(&downloads)?;

        // Mount points the transaction needs; removed afterwards unless a package made them.
        let mounts: Vec<(PathBuf, bool)> = ["dev", "proc"]
            .iter()
            .map(|dir| (target.join(dir), target.join(dir).exists()))
            .collect();
        let invocation = self.install_invocation(
            job,
            &config,
            gnupg.path(),
            &dbpath,
            [&downloads, cache.path()],
        );
        let output = run(host, &invocation, "pacman", log)?;
        cache.adopt_downloads(
            &downloads,
            &[".pkg.tar.zst", ".pkg.tar.xz", ".pkg.tar.gz", ".pkg.tar"],
            log,
        )?;
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
        check_installed(set, &installed)?;
        Ok(None)
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

/// The packages a pacman local database records.
pub(super) fn read_local_db(local: &Path) -> Result<PackageSet, PackagesError> {
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
    use crate::host::{RecordingHost, ToolAnswer, ToolInvocation};
    use crate::packages::manager;
    use kiln_cache::Manifest;
    use kiln_engine::ResolveMode;

    /// A host on which every tool pacman needs is answered with `answer` instead of run.
    fn answering(answer: &ToolAnswer) -> RecordingHost {
        ["pacman", "pacman-key", "bwrap", "gpg"]
            .iter()
            .fold(RecordingHost::new(), |host, tool| {
                host.answering(tool, answer.clone())
            })
    }

    /// The runs of `program` (gpgconf, run for real when the host has it, stops gpg's agent).
    fn runs_of(host: &RecordingHost, program: &str) -> Vec<ToolInvocation> {
        host.tools_run()
            .into_iter()
            .filter(|invocation| invocation.program == Path::new(program))
            .collect()
    }

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

    #[test]
    fn resolution_refreshes_the_sync_databases_then_plans_the_installation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let host = answering(&ToolAnswer::new(
            0,
            "kiln-base 1.0-1 file:///srv/repo/core/os/x86_64/kiln-base-1.0-1-any.pkg.tar.zst\n",
        ));
        let setup = setup("file:///srv/repo");
        let state = setup.state(&store);
        // What the answered `pacman -Sy` would have written.
        std::fs::create_dir_all(state.join("db/sync")).unwrap();
        std::fs::write(state.join("db/sync/core.db"), "").unwrap();
        let resolved = manager::resolve(&setup, &host, &store, ResolveMode::Online)
            .unwrap()
            .unwrap();
        assert_eq!(resolved.set.listing(), "kiln-base 1.0-1 any\n");
        let snapshot = resolved
            .snapshot
            .expect("an online resolution keeps its index");
        assert!(snapshot.path().join("core.db").is_file());
        assert!(
            runs_of(&host, "pacman-key").is_empty(),
            "a file:// mirror is not signed"
        );
        let pacman = runs_of(&host, "pacman");
        assert_eq!(pacman.len(), 2, "{pacman:?}");
        for invocation in &pacman {
            assert_eq!(
                invocation.args[..2],
                [
                    "--config".to_string(),
                    state.join("pacman.conf").display().to_string()
                ]
            );
            assert_eq!(
                invocation.args[4..8],
                ["--logfile", "/dev/null", "--color", "never"]
            );
            assert_eq!(
                invocation.args[8..12],
                [
                    "--dbpath".to_string(),
                    state.join("db").display().to_string(),
                    "--root".to_string(),
                    state.join("root").display().to_string(),
                ]
            );
        }
        assert_eq!(pacman[0].args[12..], ["--noconfirm", "-Sy"]);
        assert_eq!(
            pacman[1].args[12..],
            [
                "--noconfirm",
                "--assume-installed",
                "initramfs",
                "-Sp",
                "--print-format",
                "%n %v %l",
                "base"
            ]
        );
    }

    #[test]
    fn an_unreachable_mirror_or_a_missing_tool_stops_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let setup = setup("file:///srv/repo");
        let host = answering(&ToolAnswer::new(
            1,
            "error: failed retrieving file 'core.db' from 127.0.0.1 : Connection refused\n",
        ));
        match manager::resolve(&setup, &host, &store, ResolveMode::Online) {
            Err(PackagesError::MirrorUnreachable { url, message }) => {
                assert_eq!(url, "file:///srv/repo/core/os/x86_64/core.db");
                assert_eq!(message, "Connection refused");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(runs_of(&host, "pacman").len(), 1, "nothing is planned");

        let host = answering(&ToolAnswer::new(0, "")).without_tool("bwrap");
        match manager::resolve(&setup, &host, &store, ResolveMode::Online) {
            Err(PackagesError::ToolMissing { tool, package }) => {
                assert_eq!((tool.as_str(), package.as_str()), ("bwrap", "bubblewrap"));
            }
            other => panic!("{other:?}"),
        }
        assert!(host.calls().is_empty());
    }

    #[test]
    fn installation_runs_pacman_in_bubblewrap_and_names_a_failing_scriptlet() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let (sync, scratch) = (dir.path().join("sync"), dir.path().join("scratch"));
        let target = scratch.join("root");
        for folder in [&sync, &target] {
            std::fs::create_dir_all(folder).unwrap();
        }
        let set = PackageSet::parse("base 1.0-1 any\n").unwrap();
        let base = Manifest::new();
        let job = Installation {
            store: &store,
            set: &set,
            index: &sync,
            base: &base,
            target: &target,
            scratch: &scratch,
        };
        let host = answering(&ToolAnswer::new(
            1,
            "(1/1) installing kiln-broken\nkiln-broken: cannot configure\n\
             error: command failed to execute correctly\n",
        ));
        let setup = setup("file:///srv/repo");
        let result = setup.install(&host, &job, &mut |_| {});
        if !is_root() {
            assert!(
                matches!(result, Err(PackagesError::NeedsRoot { .. })),
                "{result:?}"
            );
            assert!(runs_of(&host, "bwrap").is_empty());
            return;
        }
        match result {
            Err(PackagesError::MaintainerScript { package, output }) => {
                assert_eq!(package, "kiln-broken");
                assert!(output.contains("cannot configure"), "{output}");
            }
            other => panic!("{other:?}"),
        }
        let bwrap = runs_of(&host, "bwrap");
        assert_eq!(bwrap.len(), 1);
        let shown = |path: PathBuf| path.display().to_string();
        assert_eq!(
            bwrap[0].args[..11],
            [
                "--bind".to_string(),
                "/".to_string(),
                "/".to_string(),
                "--die-with-parent".to_string(),
                "--dev".to_string(),
                shown(target.join("dev")),
                "--proc".to_string(),
                shown(target.join("proc")),
                "--".to_string(),
                "pacman".to_string(),
                "--config".to_string(),
            ]
        );
        assert_eq!(
            bwrap[0].args[bwrap[0].args.len() - 4..],
            ["--assume-installed", "initramfs", "-S", "base=1.0-1"]
        );
        assert!(!target.join("dev").exists(), "the mount points are removed");
    }
}
