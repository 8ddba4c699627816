//! Debian and Ubuntu: the package set resolved by apt against a private state, installed by
//! mmdebstrap.
//!
//! Resolution reproduces what mmdebstrap's `essential` variant installs: the `Essential: yes`
//! packages of the release (mmdebstrap's own apt pattern) plus the recipe's `Packages=`, without
//! recommends, as mkosi installs a Debian image. apt simulates that installation against an empty
//! dpkg status in a fake root of the store (`apt-get install --simulate`, the apt configuration
//! mmdebstrap writes), after `apt-get update` refreshed that root's lists.
//!
//! Installation runs `mmdebstrap --mode=root` in a mount namespace of its own when kiln is root.
//! Otherwise it runs `mmdebstrap --mode=unshare`, which builds the tree in a user namespace that
//! maps the user's subordinate ids (package `uidmap`, `/etc/subuid` and `/etc/subgid`) and writes
//! it as a tar archive with the ownership root mode would have given; the store reads the archive
//! ([`Store::ingest_tar`]). The base tree goes in as an archive unpacked by a setup hook. Either
//! way it hands mmdebstrap exactly the lists resolution read (`--skip=update`, the lists
//! copied in by a setup hook) and pins every package of `Packages=` to its resolved version, so
//! apt chooses the same dependencies; the installed set is then read back from the tree's dpkg
//! status and must equal the resolved one. Downloaded `.deb` files go into the store's package
//! cache through a customize hook and back into the next build's tree before apt looks for
//! them. `INITRD=No` keeps the kernel's postinst from generating an initrd (kiln builds
//! its own); the host's `/etc/hostname` and `/etc/resolv.conf`, which mmdebstrap copies in, are
//! removed before any package is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_cache::{Manifest, Store};
use kiln_recipe::{Distribution, Recipe};

use super::Installation;
use super::error::PackagesError;
use super::files::{create_dir, remove_file_if_exists, write_file};
use super::freshness::IndexFile;
use super::listing::{PackageSet, ResolvedPackage};
use super::manager::{PackageManager, check_installed, pins};
use super::mirror;
use super::package_cache::PackageCache;
use super::private_state::state_dir;
use super::tools::{ToolOutput, is_root, require_tools, run};
use crate::host::{Host, ToolInvocation};

/// The host tools Debian installation needs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("apt-get", "apt"),
    ("dpkg", "dpkg"),
    ("unshare", "util-linux"),
];

/// What installing without root needs besides [`TOOLS`].
const ROOTLESS_TOOLS: &[(&str, &str)] = &[("newuidmap", "uidmap"), ("newgidmap", "uidmap")];

/// The subordinate ids mmdebstrap's user namespace needs: a Debian system's ids up to `nogroup`.
const SUBORDINATE_IDS: u64 = 65536;

/// Where dpkg records what is installed, in the tree.
const DPKG_STATUS: &str = "var/lib/dpkg/status";

/// What mkosi leaves out of the image with `WithDocs=no`.
const DOCUMENTATION: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/groff/*",
    "/usr/share/gtk-doc/*",
    "/usr/share/info/*",
];

/// How the resolution state stays small: apt keeps the package lists compressed (lz4, which
/// every apt reads back, mmdebstrap's included) and no binary caches of them (the rare
/// resolution that reads them builds them in memory). A Debian release's lists take 53 MB
/// uncompressed and their two caches 74 MB more; compressed, 20 MB.
const LEAN_STATE: &str =
    "Acquire::GzipIndexes \"true\";\nDir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n";

/// The settings of a Debian or Ubuntu package installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSetup {
    pub distribution: Distribution,
    pub release: String,
    /// The archive's host (`http://deb.debian.org`); `/debian` or `/ubuntu` is appended.
    pub mirror: String,
    /// `main` and the recipe's `Repositories=`.
    pub components: Vec<String>,
    /// The dpkg architecture (`amd64`).
    pub architecture: String,
    /// `Packages=`, as written.
    pub packages: Vec<String>,
    pub with_docs: bool,
}

impl AptSetup {
    /// The setup for `recipe` (Distribution=debian or ubuntu).
    pub fn from_recipe(recipe: &Recipe) -> Result<AptSetup, PackagesError> {
        let distribution = recipe.distribution.distribution;
        let architecture = &recipe.distribution.architecture;
        let dpkg = mirror::dpkg_architecture(architecture).ok_or_else(|| {
            PackagesError::UnsupportedArchitecture {
                distribution: distribution.as_str().to_string(),
                architecture: architecture.clone(),
            }
        })?;
        let release = recipe
            .distribution
            .release
            .clone()
            .or_else(|| distribution.default_release().map(str::to_string))
            .unwrap_or_default();
        let mut components = vec!["main".to_string()];
        for component in &recipe.distribution.repositories {
            if !components.contains(component) {
                components.push(component.clone());
            }
        }
        Ok(AptSetup {
            distribution,
            release,
            mirror: mirror::mirror(
                recipe.distribution.mirror.as_deref(),
                distribution,
                architecture,
            ),
            components,
            architecture: dpkg.to_string(),
            packages: recipe.content.packages.clone(),
            with_docs: recipe.content.with_docs,
        })
    }

    /// The keyring the archive is signed with, and the Debian package that provides it.
    pub fn keyring(&self) -> (PathBuf, &'static str) {
        match self.distribution {
            Distribution::Ubuntu => (
                PathBuf::from("/usr/share/keyrings/ubuntu-archive-keyring.gpg"),
                "ubuntu-keyring",
            ),
            _ => (
                PathBuf::from("/usr/share/keyrings/debian-archive-keyring.gpg"),
                "debian-archive-keyring",
            ),
        }
    }

    /// The archives as `(URI, suite)`, as mkosi lists them: the release, its updates, and its
    /// security updates (from the distribution's security archive, which mkosi never mirrors).
    pub fn archives(&self) -> Vec<(String, String)> {
        let release = &self.release;
        match self.distribution {
            Distribution::Ubuntu => {
                let x86 = matches!(self.architecture.as_str(), "amd64" | "i386");
                let archive = if x86 {
                    format!("{}/ubuntu", self.mirror)
                } else {
                    format!("{}/ubuntu-ports", self.mirror)
                };
                let security = if x86 {
                    "http://security.ubuntu.com/ubuntu".to_string()
                } else {
                    archive.clone()
                };
                vec![
                    (archive.clone(), release.clone()),
                    (archive, format!("{release}-updates")),
                    (security, format!("{release}-security")),
                ]
            }
            _ => {
                let archive = format!("{}/debian", self.mirror);
                let mut archives = vec![(archive.clone(), release.clone())];
                if !matches!(release.as_str(), "unstable" | "sid") {
                    archives.push((archive, format!("{release}-updates")));
                    archives.push((
                        "http://security.debian.org/debian-security".to_string(),
                        format!("{release}-security"),
                    ));
                }
                archives
            }
        }
    }

    /// The sources in apt's one-line format: the image's `/etc/apt/sources.list`.
    pub fn sources(&self) -> Vec<String> {
        let (keyring, _) = self.keyring();
        let components = self.components.join(" ");
        self.archives()
            .into_iter()
            .map(|(uri, suite)| {
                format!(
                    "deb [signed-by={}] {uri} {suite} {components}",
                    keyring.display()
                )
            })
            .collect()
    }

    /// mmdebstrap's selection of the essential packages (its `essential` variant).
    fn essential_pattern(&self) -> String {
        format!(
            "?narrow(?or(?archive(^{release}$),?codename(^{release}$)),?architecture({arch}),?essential)",
            release = self.release,
            arch = self.architecture
        )
    }

    /// The fake root apt resolves in, refreshed for this resolution; returns its `APT_CONFIG`.
    fn prepare_state(&self, state: &Path) -> Result<PathBuf, PackagesError> {
        let root = state.join("root");
        for dir in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            create_dir(&root.join(dir))?;
        }
        write_file(
            &root.join("etc/apt/sources.list"),
            format!("{}\n", self.sources().join("\n")).as_bytes(),
        )?;
        // What mmdebstrap writes for apt inside and outside the chroot.
        write_file(
            &root.join("etc/apt/apt.conf.d/00mmdebstrap"),
            b"Apt::Install-Recommends false;\nAcquire::Languages \"none\";\n",
        )?;
        let status = root.join("var/lib/dpkg/status");
        write_file(&status, b"")?;
        // States written before the lists were kept compressed hold apt's binary caches.
        for cache in [
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
        ] {
            remove_file_if_exists(&root.join(cache))?;
        }
        let config = state.join("apt.conf");
        write_file(
            &config,
            format!(
                "Apt::Architecture \"{arch}\";\nApt::Architectures \"{arch}\";\nDir \"{root}\";\n\
                 Dir::State::Status \"{status}\";\npkgCacheGen::ForceEssential \",\";\n\
                 APT::Sandbox::User \"root\";\n{LEAN_STATE}",
                arch = self.architecture,
                root = root.display(),
                status = status.display(),
            )
            .as_bytes(),
        )?;
        Ok(config)
    }

    /// `mmdebstrap --mode=unshare`, writing a tar archive: hooks run inside the namespace, as a
    /// user that cannot read the store, so the base tree, the lists and the packages go in, and
    /// the downloads come out, through mmdebstrap's special hooks, which its process outside the
    /// namespace serves.
    fn rootless_mmdebstrap(
        &self,
        job: &Installation<'_>,
        debs: &Debs,
    ) -> Result<ToolInvocation, PackagesError> {
        let base_tar = job.scratch.join("base.tar");
        crate::tarball::write_tar(job.store, job.base, 0, &base_tar)
            .map_err(|source| PackagesError::io("write", &base_tar, source))?;
        let removals = removals(job.base);
        // sync-in also gives its target folder the owner outside: the lists and packages go
        // through folders of their own, and only the files move on.
        let staged = ["kiln-lists", "kiln-debs"].map(|name| format!("\"$1/tmp/{name}\""));
        // Not root's home: dpkg would warn that it cannot read its configuration there.
        Ok(ToolInvocation::new("mmdebstrap")
            .env("HOME", job.scratch.to_string_lossy())
            .args(["--mode=unshare", "--format=tar"])
            .arg(format!("--setup-hook=tar-in {} /", quoted(&base_tar)))
            .arg(format!(
                "--setup-hook=mkdir {} {} && {}",
                staged[0],
                staged[1],
                if removals.is_empty() {
                    "true"
                } else {
                    &removals
                }
            ))
            .arg(format!(
                "--setup-hook=sync-in {} /tmp/kiln-lists",
                quoted(job.index)
            ))
            .arg(format!(
                "--setup-hook=sync-in {} /tmp/kiln-debs",
                quoted(&debs.cached)
            ))
            .arg(format!(
                "--setup-hook=mkdir -p \"$1/var/cache/apt/archives/partial\" && \
                 find {} -mindepth 1 -maxdepth 1 -exec mv -t \"$1/var/lib/apt/lists/\" {{}} + && \
                 find {} -mindepth 1 -maxdepth 1 -exec mv -t \"$1/var/cache/apt/archives/\" {{}} + && \
                 rm -r {} {}",
                staged[0], staged[1], staged[0], staged[1]
            ))
            .arg(format!(
                "--customize-hook=sync-out /var/cache/apt/archives {}",
                quoted(&debs.downloaded)
            )))
    }

    /// `mmdebstrap --mode=root` into the job's target, under `unshare`: mmdebstrap mounts
    /// /proc, /sys and /dev in the tree, and in a mount namespace of its own they vanish with
    /// it, whatever happens. It is PID 1 of a PID namespace of its own too, killed with
    /// `unshare` (`--kill-child`), which dies with kiln: when kiln is killed, the apt and dpkg
    /// it started die with it instead of writing on into a tree the next build reclaims.
    fn root_mmdebstrap(
        &self,
        job: &Installation<'_>,
        debs: &Debs,
    ) -> Result<ToolInvocation, PackagesError> {
        let hooks = job.scratch.join("hooks");
        create_dir(&hooks)?;
        let setup = format!(
            "#!/bin/sh\nset -eu\n{}\ncp -al {}/. \"$1/var/lib/apt/lists/\"\n\
             cp -al {}/. \"$1/var/cache/apt/archives/\"\n",
            removals(job.base),
            quoted(job.index),
            quoted(&debs.cached),
        );
        let customize = format!(
            "#!/bin/sh\nset -eu\nfind \"$1/var/cache/apt/archives\" -maxdepth 1 -type f -name '*.deb' -exec cp -al {{}} {}/ \\;\n",
            quoted(&debs.downloaded),
        );
        let setup_hook = write_hook(&hooks, "setup", &setup)?;
        let customize_hook = write_hook(&hooks, "customize", &customize)?;
        Ok(ToolInvocation::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
                "mmdebstrap",
                "--mode=root",
                "--format=directory",
                "--skip=check/empty",
            ])
            .arg(format!("--setup-hook={}", setup_hook.display()))
            .arg(format!("--customize-hook={}", customize_hook.display())))
    }

    /// What both modes of mmdebstrap are told: the environment of a package installation, the
    /// resolved set, the documentation left out, the release, where the tree goes and the
    /// sources.
    fn installation_args(
        &self,
        invocation: ToolInvocation,
        set: &PackageSet,
        into: &Path,
    ) -> ToolInvocation {
        let mut invocation = invocation
            .env("INITRD", "No")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
            .args([
                "--variant=essential",
                "--verbose",
                "--skip=update",
                "--skip=essential/unlink",
            ])
            .arg(format!("--architectures={}", self.architecture));
        let pins = pins(&self.packages, set);
        if !pins.is_empty() {
            invocation = invocation.arg(format!("--include={}", pins.join(",")));
        }
        if !self.with_docs {
            for glob in DOCUMENTATION {
                invocation = invocation.arg(format!("--dpkgopt=path-exclude={glob}"));
            }
        }
        invocation
            .arg(&self.release)
            .arg_path(into)
            .args(self.sources())
    }

    /// The installed set and, without root, the tree mmdebstrap wrote as an archive, stored.
    fn installed(
        &self,
        job: &Installation<'_>,
        archive: Option<&Path>,
    ) -> Result<(PackageSet, Option<Manifest>), PackagesError> {
        let Some(archive) = archive else {
            return Ok((read_dpkg_status(&job.target.join(DPKG_STATUS))?, None));
        };
        let tree = job.store.ingest_tar(archive)?;
        let _ = std::fs::remove_file(archive);
        let text = match tree.get(DPKG_STATUS).and_then(|entry| entry.blob()) {
            Some(blob) => job.store.read_blob(blob)?,
            None => Vec::new(),
        };
        let text = String::from_utf8_lossy(&text);
        Ok((parse_dpkg_status(&text), Some(tree)))
    }
}

/// The folders the `.deb` files go through during an installation.
struct Debs {
    /// What the package cache held of the set, for apt to find.
    cached: PathBuf,
    /// What apt downloaded, for the package cache.
    downloaded: PathBuf,
}

impl PackageManager for AptSetup {
    /// The private state of this sources list and architecture.
    fn state(&self, store: &Store) -> PathBuf {
        let identity = format!("{}\n{}\n", self.architecture, self.sources().join("\n"));
        state_dir(store, "apt", &identity)
    }

    fn index_dir(&self, state: &Path) -> PathBuf {
        state.join("root/var/lib/apt/lists")
    }

    fn snapshot_label(&self) -> (&'static str, &'static [&'static str]) {
        ("apt-lists", &["lock"])
    }

    fn request(&self) -> String {
        let text = format!(
            "apt 1\n{}\n{}\n{}\n{}\n",
            self.architecture,
            self.sources().join("\n"),
            self.essential_pattern(),
            self.packages.join("\n"),
        );
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }

    /// The signed index files (`InRelease`) of each archive, on the mirror and in `lists`.
    fn index_files(&self, lists: &Path) -> Vec<IndexFile> {
        self.archives()
            .into_iter()
            .map(|(uri, suite)| {
                let url = format!("{uri}/dists/{suite}/InRelease");
                IndexFile {
                    local: lists.join(uri_to_file_name(&url)),
                    url,
                }
            })
            .collect()
    }

    fn check_host(&self, host: &dyn Host) -> Result<(), PackagesError> {
        require_tools(host, TOOLS)?;
        let (keyring, package) = self.keyring();
        if !keyring.is_file() {
            return Err(PackagesError::KeyringMissing {
                path: keyring,
                package: package.to_string(),
            });
        }
        Ok(())
    }

    /// `apt-get update` in the state's fake root, then `apt-get install --simulate`.
    fn refresh_and_resolve(
        &self,
        host: &dyn Host,
        dir: &Path,
    ) -> Result<PackageSet, PackagesError> {
        let config = self.prepare_state(dir)?;
        let config = config.to_string_lossy();
        let update = ToolInvocation::new("apt-get")
            .env("APT_CONFIG", config.clone())
            .args(["-q", "update"]);
        let output = run(host, &update, "apt-get", &mut |_| {})?;
        check_update(&output)?;

        let simulate = ToolInvocation::new("apt-get")
            .env("APT_CONFIG", config)
            .args([
                "-q",
                "--simulate",
                "--yes",
                "-o",
                "Debug::NoLocking=1",
                "install",
            ])
            .arg(self.essential_pattern())
            .args(self.packages.iter().cloned());
        let output = run(host, &simulate, "apt-get", &mut |_| {})?;
        parse_simulation(&output)
    }

    /// Install the job's set with mmdebstrap, reading the apt lists in its index. As root,
    /// mmdebstrap installs into the job's target, over the base tree checked out there, and the
    /// caller ingests it (`None`); otherwise it builds the tree in a user namespace as a tar
    /// archive, over the base tree unpacked into it, and the stored tree is returned.
    fn install(
        &self,
        host: &dyn Host,
        job: &Installation<'_>,
        log: &mut dyn FnMut(&str),
    ) -> Result<Option<Manifest>, PackagesError> {
        self.check_host(host)?;
        let rootless = !is_root();
        if rootless {
            check_rootless(host)?;
        }
        let cache = PackageCache::open(job.store, "debs")?;
        let debs = Debs {
            cached: job.scratch.join("debs-in"),
            downloaded: job.scratch.join("debs-out"),
        };
        create_dir(&debs.downloaded)?;
        let files: Vec<String> = job.set.iter().map(deb_file_name).collect();
        let cached = cache.provide(files.iter().map(String::as_str), &debs.cached)?;
        log(&format!(
            "{cached} of {} packages found in the package cache",
            job.set.len()
        ));
        let archive = job.scratch.join("root.tar");
        let (invocation, into) = if rootless {
            (self.rootless_mmdebstrap(job, &debs)?, archive.as_path())
        } else {
            (self.root_mmdebstrap(job, &debs)?, job.target)
        };
        let invocation = self.installation_args(invocation, job.set, into);
        let output = run(host, &invocation, "mmdebstrap", log)?;
        cache.adopt_downloads(&debs.downloaded, &[".deb"], log)?;
        if !output.success() {
            return Err(install_error(&output));
        }
        let (installed, tree) = self.installed(job, rootless.then_some(archive.as_path()))?;
        check_installed(job.set, &installed)?;
        Ok(tree)
    }
}

/// The shell command that removes what mmdebstrap copies in from the host (`/etc/hostname`,
/// `/etc/resolv.conf`) unless the base tree has it, or nothing.
fn removals(base: &Manifest) -> String {
    let mut removals = String::new();
    for copied in ["etc/hostname", "etc/resolv.conf"] {
        if base.get(copied).is_none() {
            removals.push_str(&format!(" \"$1/{copied}\""));
        }
    }
    if removals.is_empty() {
        String::new()
    } else {
        format!("rm -f{removals}")
    }
}

/// A path quoted for a POSIX shell.
fn quoted(path: &Path) -> String {
    shell_quote(&path.display().to_string())
}

/// Quote `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The name of the file apt keeps a downloaded index file under in its lists folder (apt's
/// `URItoFileName`): the URI without its scheme and credentials, special characters
/// %-escaped, `/` turned into `_`.
pub fn uri_to_file_name(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let rest = match rest.split_once('/') {
        Some((host, path)) => {
            let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
            format!("{host}/{path}")
        }
        None => rest.to_string(),
    };
    let mut name = String::with_capacity(rest.len());
    for c in rest.chars() {
        if "\\|{}[]<>\"^~_=!@#$%^&*".contains(c) || !c.is_ascii_graphic() {
            let mut buffer = [0; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                name.push_str(&format!("%{byte:02x}"));
            }
        } else if c == '/' {
            name.push('_');
        } else {
            name.push(c);
        }
    }
    name
}

/// The name apt gives a downloaded package: `name_version_arch.deb`, `:` escaped as `%3a`.
pub fn deb_file_name(package: &ResolvedPackage) -> String {
    format!(
        "{}_{}_{}.deb",
        package.name,
        package.version.replace(':', "%3a"),
        package.arch
    )
}

/// Installing without root needs `newuidmap` and `newgidmap` and, for the user, a range of
/// subordinate user and group ids, where mmdebstrap looks for it: the user's name in
/// `/etc/subuid` and `/etc/subgid`.
fn check_rootless(host: &dyn Host) -> Result<(), PackagesError> {
    require_tools(host, ROOTLESS_TOOLS)?;
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = user_name(&passwd, uid).unwrap_or_else(|| uid.to_string());
    for file in ["/etc/subuid", "/etc/subgid"] {
        let ranges = std::fs::read_to_string(file).unwrap_or_default();
        if subordinate_ids(&ranges, &user) < SUBORDINATE_IDS {
            return Err(PackagesError::NoSubordinateIds {
                user,
                path: PathBuf::from(file),
                count: SUBORDINATE_IDS,
            });
        }
    }
    Ok(())
}

/// The name `/etc/passwd` gives `uid`.
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// How many subordinate ids the first range of `user` in a `/etc/subuid` or `/etc/subgid`
/// holds (mmdebstrap maps that one).
fn subordinate_ids(ranges: &str, user: &str) -> u64 {
    ranges
        .lines()
        .find_map(|line| {
            let mut fields = line.trim().split(':');
            (fields.next()? == user).then_some(())?;
            fields.next()?.parse::<u64>().ok()?;
            fields.next()?.parse::<u64>().ok()
        })
        .unwrap_or(0)
}

fn write_hook(dir: &Path, name: &str, text: &str) -> Result<PathBuf, PackagesError> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{name}.sh"));
    write_file(&path, text.as_bytes())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|source| PackagesError::io("make executable", &path, source))?;
    Ok(path)
}

/// A failed `apt-get update` as the error the user can act on.
fn check_update(output: &ToolOutput) -> Result<(), PackagesError> {
    for line in &output.lines {
        let Some(rest) = line
            .strip_prefix("W: ")
            .or_else(|| line.strip_prefix("E: "))
        else {
            continue;
        };
        if let Some(fetch) = rest.strip_prefix("Failed to fetch ") {
            let (url, message) = fetch.split_once(char::is_whitespace).unwrap_or((fetch, ""));
            return Err(PackagesError::MirrorUnreachable {
                url: url.to_string(),
                message: message.trim().to_string(),
            });
        }
        if let Some(repository) = rest.strip_prefix("The repository '")
            && let Some((repository, why)) = repository.split_once('\'')
        {
            return Err(PackagesError::MirrorUnreachable {
                url: repository.to_string(),
                message: why.trim().trim_end_matches('.').to_string(),
            });
        }
    }
    let mut lines = output.lines.iter();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Err:") {
            let url = rest
                .split_once(' ')
                .map_or(rest, |(_, url)| url)
                .trim()
                .to_string();
            let message = lines
                .next()
                .map(|next| next.trim().to_string())
                .unwrap_or_default();
            return Err(PackagesError::MirrorUnreachable { url, message });
        }
    }
    if !output.success() {
        return Err(PackagesError::InstallFailed {
            tool: "apt-get update".to_string(),
            code: output.code,
            output: output.tail(20),
        });
    }
    Ok(())
}

/// The set an `apt-get install --simulate` prints as `Inst` lines, or why it cannot install.
fn parse_simulation(output: &ToolOutput) -> Result<PackageSet, PackagesError> {
    let mut unknown = Vec::new();
    for line in &output.lines {
        let Some(error) = line.strip_prefix("E: ") else {
            continue;
        };
        let name = error
            .strip_prefix("Unable to locate package ")
            .map(str::to_string)
            .or_else(|| quoted_after(error, "Package '"))
            .or_else(|| quoted_after(error, "Couldn't find any package by glob '"))
            .or_else(|| quoted_after(error, "Couldn't find any package by regex '"))
            .or_else(|| {
                error
                    .strip_prefix("Version '")
                    .and_then(|rest| rest.split_once("' for '"))
                    .and_then(|(_, rest)| rest.split_once('\''))
                    .map(|(name, _)| name.to_string())
            });
        if let Some(name) = name {
            unknown.push(name.trim().to_string());
        }
    }
    if !unknown.is_empty() {
        let answer: Vec<&str> = output
            .lines
            .iter()
            .filter(|line| {
                !line.starts_with("Reading ")
                    && !line.starts_with("Building ")
                    && !line.starts_with("NOTE:")
            })
            .map(String::as_str)
            .collect();
        return Err(PackagesError::UnknownPackage {
            names: unknown,
            answer: answer.join("\n"),
        });
    }
    if !output.success() {
        return Err(PackagesError::Unresolvable {
            tool: "apt".to_string(),
            output: output.tail(30),
        });
    }
    Ok(PackageSet::new(
        output.lines.iter().filter_map(|line| parse_inst(line)),
    ))
}

fn quoted_after(text: &str, prefix: &str) -> Option<String> {
    let rest = text.strip_prefix(prefix)?;
    Some(rest.split_once('\'')?.0.to_string())
}

/// `Inst libc6 (2.36-9+deb12u10 Debian:12.11/stable [amd64])` -> `libc6 2.36-9+deb12u10 amd64`.
fn parse_inst(line: &str) -> Option<ResolvedPackage> {
    let rest = line.strip_prefix("Inst ")?;
    let (name, rest) = rest.split_once(' ')?;
    let open = rest.find('(')?;
    let close = open + rest[open..].find(')')?;
    let inside = &rest[open + 1..close];
    let version = inside.split_whitespace().next()?;
    let arch_start = inside.rfind('[')?;
    let arch = inside[arch_start + 1..].strip_suffix(']')?;
    Some(ResolvedPackage {
        name: name.split(':').next().unwrap_or(name).to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
    })
}

/// The packages a dpkg status file records as installed.
pub fn read_dpkg_status(path: &Path) -> Result<PackageSet, PackagesError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| PackagesError::io("read", path, source))?;
    Ok(parse_dpkg_status(&text))
}

fn parse_dpkg_status(text: &str) -> PackageSet {
    let mut packages = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in stanza.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.insert(key, value.trim());
            }
        }
        let (Some(name), Some(version), Some(arch), Some(status)) = (
            fields.get("Package"),
            fields.get("Version"),
            fields.get("Architecture"),
            fields.get("Status"),
        ) else {
            continue;
        };
        if *status == "install ok installed" {
            packages.push(ResolvedPackage {
                name: name.to_string(),
                version: version.to_string(),
                arch: arch.to_string(),
            });
        }
    }
    PackageSet::new(packages)
}

/// The error of a failed mmdebstrap run: a maintainer script when dpkg says so.
fn install_error(output: &ToolOutput) -> PackagesError {
    let failed_at = output
        .lines
        .iter()
        .position(|line| line.contains("script subprocess returned error exit status"));
    if let Some(at) = failed_at {
        let package = output.lines[..=at]
            .iter()
            .rev()
            .find_map(|line| {
                let rest = line.split("error processing package ").nth(1)?;
                Some(rest.split_whitespace().next()?.to_string())
            })
            .unwrap_or_else(|| "a package".to_string());
        let start = at.saturating_sub(15);
        return PackagesError::MaintainerScript {
            package,
            output: output.lines[start..=at].join("\n"),
        };
    }
    PackagesError::InstallFailed {
        tool: "mmdebstrap".to_string(),
        code: output.code,
        output: output.tail(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{RecordingHost, ToolAnswer};
    use crate::packages::manager;
    use kiln_cache::{Entry, EntryKind};
    use kiln_engine::ResolveMode;
    use kiln_test_support::Need;

    const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

    /// A host on which every tool apt needs is answered with `answer` instead of run.
    fn answering(answer: &ToolAnswer) -> RecordingHost {
        TOOLS
            .iter()
            .chain(ROOTLESS_TOOLS)
            .fold(RecordingHost::new(), |host, (tool, _)| {
                host.answering(tool, answer.clone())
            })
    }

    /// A store, a scratch folder, a lists folder and a base tree of the root folder alone.
    struct Fixture {
        dir: tempfile::TempDir,
        store: Store,
        base: Manifest,
        set: PackageSet,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("store")).unwrap();
            for folder in ["scratch", "lists"] {
                std::fs::create_dir(dir.path().join(folder)).unwrap();
            }
            let base = Manifest::from_entries(vec![Entry::new("", EntryKind::Dir, 0o755)]).unwrap();
            let set = PackageSet::parse("systemd 252.39 amd64\n").unwrap();
            Fixture {
                dir,
                store,
                base,
                set,
            }
        }

        fn job<'a>(&'a self, target: &'a Path, lists: &'a Path) -> Installation<'a> {
            Installation {
                store: &self.store,
                set: &self.set,
                index: lists,
                base: &self.base,
                target,
                scratch: target.parent().unwrap(),
            }
        }
    }

    fn output(code: i32, text: &str) -> ToolOutput {
        ToolOutput {
            code,
            lines: text.lines().map(str::to_string).collect(),
        }
    }

    fn setup() -> AptSetup {
        AptSetup {
            distribution: Distribution::Debian,
            release: "bookworm".to_string(),
            mirror: "http://deb.debian.org".to_string(),
            components: vec!["main".to_string(), "non-free-firmware".to_string()],
            architecture: "amd64".to_string(),
            packages: vec!["systemd".to_string(), "awk".to_string()],
            with_docs: true,
        }
    }

    #[test]
    fn index_files_are_named_as_apt_names_them() {
        assert_eq!(
            uri_to_file_name("http://deb.debian.org/debian/dists/bookworm-updates/InRelease"),
            "deb.debian.org_debian_dists_bookworm-updates_InRelease"
        );
        assert_eq!(
            uri_to_file_name("https://user:pw@mirror:8080/deb_ian/dists/x~1/InRelease"),
            "mirror:8080_deb%5fian_dists_x%7e1_InRelease"
        );
    }

    #[test]
    fn sources_are_mkosis_release_updates_and_security() {
        assert_eq!(
            setup().sources(),
            vec![
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main non-free-firmware",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main non-free-firmware",
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://security.debian.org/debian-security bookworm-security main non-free-firmware",
            ]
        );
        let sid = AptSetup {
            release: "sid".to_string(),
            ..setup()
        };
        assert_eq!(sid.sources().len(), 1);
    }

    #[test]
    fn inst_lines_become_the_set() {
        let simulated = output(
            0,
            "Reading package lists...\n\
             Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])\n\
             Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable, Debian-Security:12/oldstable-security [amd64]) []\n\
             Inst adduser [3.133] (3.134 Debian:12.15/oldstable [all])\n\
             Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])\n",
        );
        let set = parse_simulation(&simulated).unwrap();
        assert_eq!(
            set.listing(),
            "adduser 3.134 all\ngcc-12-base 12.2.0-14+deb12u1 amd64\nlibc6 2.36-9+deb12u14 amd64\n"
        );
    }

    #[test]
    fn unknown_packages_are_named_with_apts_answer() {
        let simulated = output(
            100,
            "Reading package lists...\nBuilding dependency tree...\nE: Unable to locate package nosuch\n\
             E: Package 'gone' has no installation candidate\n",
        );
        match parse_simulation(&simulated).unwrap_err() {
            PackagesError::UnknownPackage { names, answer } => {
                assert_eq!(names, vec!["nosuch", "gone"]);
                assert!(
                    answer.contains("Unable to locate package nosuch"),
                    "{answer}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_fetch_names_the_url_and_the_network_error() {
        let updated = output(
            100,
            "Err:1 http://127.0.0.1:9/debian bookworm InRelease\n  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n\
             W: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\n",
        );
        match check_update(&updated).unwrap_err() {
            PackagesError::MirrorUnreachable { url, message } => {
                assert_eq!(url, "http://127.0.0.1:9/debian/dists/bookworm/InRelease");
                assert!(message.contains("Connection refused"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(check_update(&output(0, "Hit:1 http://x bookworm InRelease\n")).is_ok());
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/c"), "'/a b/c'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn pins_keep_names_the_set_does_not_hold() {
        let set = PackageSet::parse("systemd 252.39 amd64\nmawk 1.3 amd64\n").unwrap();
        assert_eq!(pins(&setup().packages, &set), vec!["systemd=252.39", "awk"]);
        assert_eq!(
            deb_file_name(&ResolvedPackage {
                name: "python3".to_string(),
                version: "1:3.11".to_string(),
                arch: "amd64".to_string()
            }),
            "python3_1%3a3.11_amd64.deb"
        );
    }

    #[test]
    fn the_dpkg_status_keeps_installed_packages_only() {
        let status = "Package: a\nStatus: install ok installed\nVersion: 1\nArchitecture: all\nDescription: x\n continued\n\n\
                      Package: b\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: amd64\n";
        assert_eq!(parse_dpkg_status(status).listing(), "a 1 all\n");
    }

    #[test]
    fn a_failing_maintainer_script_is_named_with_its_output() {
        let failed = output(
            1,
            "Setting up linux-image-6.1.0-50-amd64 (6.1.1) ...\nrefusing the kernel\n\
             run-parts: /etc/kernel/postinst.d/zz-fail exited with return code 1\n\
             dpkg: error processing package linux-image-6.1.0-50-amd64 (--configure):\n \
             installed linux-image-6.1.0-50-amd64 package post-installation script subprocess returned error exit status 1\n\
             E: mmdebstrap failed\n",
        );
        match install_error(&failed) {
            PackagesError::MaintainerScript { package, output } => {
                assert_eq!(package, "linux-image-6.1.0-50-amd64");
                assert!(output.contains("refusing the kernel"), "{output}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subordinate_ids_are_read_for_the_users_name() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\nbuilder:x:1001:1001::/home/builder:/bin/sh\n";
        assert_eq!(user_name(passwd, 1001).as_deref(), Some("builder"));
        assert_eq!(user_name(passwd, 7), None);
        let ranges = "other:100000:65536\nbuilder:165536:65536\nbuilder:300000:10\n";
        assert_eq!(subordinate_ids(ranges, "builder"), 65536);
        assert_eq!(subordinate_ids(ranges, "nobody"), 0);
        assert_eq!(subordinate_ids("builder:x:y\n", "builder"), 0);
    }

    #[test]
    fn resolution_updates_the_private_state_then_simulates_the_installation() {
        kiln_test_support::require!(Need::File(KEYRING));
        let fixture = Fixture::new();
        let host = answering(&ToolAnswer::new(
            0,
            "Inst libc6 (2.36-9 Debian:12.11/stable [amd64])\n",
        ));
        let resolved = manager::resolve(&setup(), &host, &fixture.store, ResolveMode::Online)
            .unwrap()
            .unwrap();
        assert_eq!(resolved.set.listing(), "libc6 2.36-9 amd64\n");
        let config = setup().state(&fixture.store).join("apt.conf");
        let run = host.tools_run();
        assert_eq!(run.len(), 2, "{run:?}");
        for invocation in &run {
            assert_eq!(
                invocation.env,
                [("APT_CONFIG".to_string(), config.display().to_string())]
            );
        }
        assert_eq!(run[0].shown(), "apt-get -q update");
        assert_eq!(
            run[1].shown(),
            format!(
                "apt-get -q --simulate --yes -o Debug::NoLocking=1 install {} systemd awk",
                setup().essential_pattern()
            )
        );
        // The saved resolution answers a read-only resolution, which runs nothing.
        let again = manager::resolve(&setup(), &host, &fixture.store, ResolveMode::ReadOnly)
            .unwrap()
            .unwrap();
        assert_eq!(again.set.listing(), resolved.set.listing());
        assert_eq!(host.tools_run().len(), 2);
    }

    #[test]
    fn a_failed_update_stops_resolution_with_the_mirrors_error() {
        kiln_test_support::require!(Need::File(KEYRING));
        let fixture = Fixture::new();
        let host = answering(&ToolAnswer::new(
            100,
            "Err:1 http://127.0.0.1:9/debian bookworm InRelease\n  Could not connect to 127.0.0.1:9\n",
        ));
        match manager::resolve(&setup(), &host, &fixture.store, ResolveMode::Online) {
            Err(PackagesError::MirrorUnreachable { url, message }) => {
                assert!(url.contains("127.0.0.1:9"), "{url}");
                assert_eq!(message, "Could not connect to 127.0.0.1:9");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(host.tools_run().len(), 1, "the simulation does not run");
    }

    #[test]
    fn a_missing_tool_stops_resolution_before_anything_runs() {
        let fixture = Fixture::new();
        let host = answering(&ToolAnswer::new(0, "")).without_tool("mmdebstrap");
        match manager::resolve(&setup(), &host, &fixture.store, ResolveMode::Online) {
            Err(PackagesError::ToolMissing { tool, package }) => {
                assert_eq!(
                    (tool.as_str(), package.as_str()),
                    ("mmdebstrap", "mmdebstrap")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(host.calls().is_empty());
    }

    #[test]
    fn without_root_mmdebstrap_gets_its_inputs_through_its_hooks() {
        let fixture = Fixture::new();
        let scratch = fixture.dir.path().join("scratch");
        let target = scratch.join("root");
        let lists = fixture.dir.path().join("lists");
        let job = fixture.job(&target, &lists);
        let debs = Debs {
            cached: scratch.join("debs-in"),
            downloaded: scratch.join("debs-out"),
        };
        let archive = scratch.join("root.tar");
        let setup = setup();
        let invocation = setup.installation_args(
            setup.rootless_mmdebstrap(&job, &debs).unwrap(),
            &fixture.set,
            &archive,
        );
        assert!(scratch.join("base.tar").is_file());
        assert_eq!(invocation.program, PathBuf::from("mmdebstrap"));
        assert_eq!(
            invocation.env[..2],
            [
                ("HOME".to_string(), scratch.display().to_string()),
                ("INITRD".to_string(), "No".to_string()),
            ]
        );
        let quoted = |path: &Path| shell_quote(&path.display().to_string());
        assert_eq!(
            invocation.args[..4],
            [
                "--mode=unshare".to_string(),
                "--format=tar".to_string(),
                format!(
                    "--setup-hook=tar-in {} /",
                    quoted(&scratch.join("base.tar"))
                ),
                "--setup-hook=mkdir \"$1/tmp/kiln-lists\" \"$1/tmp/kiln-debs\" && \
                 rm -f \"$1/etc/hostname\" \"$1/etc/resolv.conf\""
                    .to_string(),
            ]
        );
        assert!(
            invocation
                .args
                .contains(&"--include=systemd=252.39,awk".to_string()),
            "{invocation:?}"
        );
        let tail: Vec<String> = std::iter::once("bookworm".to_string())
            .chain([archive.display().to_string()])
            .chain(setup.sources())
            .collect();
        assert_eq!(invocation.args[invocation.args.len() - 5..], tail[..]);
    }

    #[test]
    fn as_root_a_failing_mmdebstrap_is_named_and_its_command_line_recorded() {
        if !kiln_test_support::skip_unless(
            (!is_root()).then(|| "mmdebstrap runs in root mode as root only".to_string()),
        ) {
            return;
        }
        kiln_test_support::require!(Need::File(KEYRING));
        let fixture = Fixture::new();
        let host = answering(&ToolAnswer::new(
            1,
            "dpkg: error processing package kiln-x (--configure):\n \
             installed kiln-x package post-installation script subprocess returned error exit status 1\n",
        ));
        let target = fixture.dir.path().join("scratch/root");
        let lists = fixture.dir.path().join("lists");
        let error = setup()
            .install(&host, &fixture.job(&target, &lists), &mut |_| {})
            .unwrap_err();
        match error {
            PackagesError::MaintainerScript { package, .. } => assert_eq!(package, "kiln-x"),
            other => panic!("{other:?}"),
        }
        let run = host.tools_run();
        assert_eq!(run.len(), 1);
        assert_eq!(run[0].program, PathBuf::from("unshare"));
        assert_eq!(
            run[0].args[..10],
            [
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
                "mmdebstrap",
                "--mode=root",
                "--format=directory",
                "--skip=check/empty",
            ]
        );
        assert!(run[0].args.contains(&target.display().to_string()));
        assert!(
            run[0]
                .env
                .contains(&("DEBIAN_FRONTEND".to_string(), "noninteractive".to_string()))
        );
    }
}
