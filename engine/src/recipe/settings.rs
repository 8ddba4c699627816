//! The table of every mkosi setting: its name, section, the old names mkosi still accepts, how
//! it is passed to subimages, the default files that set it and how kiln reads it (or that kiln
//! does not implement it yet).
//!
//! The table follows the `SETTINGS` list of mkosi's `mkosi/config.py` (mkosi 26): a setting kiln
//! does not implement is still known, so that using it gets a warning naming it instead of an
//! "unknown setting" guess, and so that it can be matched on or pointed at.

/// The `[Section]` mkosi expects a setting in.
pub(crate) type SectionName = &'static str;

/// Sections that hold settings. `Host` is the old name of `Runtime`: mkosi still reads settings
/// from it (and says they belong in `[Runtime]`).
pub(crate) const SETTING_SECTIONS: &[&str] = &[
    "Include",
    "Config",
    "Distribution",
    "Output",
    "Content",
    "Validation",
    "Build",
    "Runtime",
    "Host",
];

/// Sections of conditions: `[Match]` and `[TriggerMatch]` decide whether a file applies,
/// `[Assert]` and `[TriggerAssert]` fail the build when they do not hold.
pub(crate) const CONDITION_SECTIONS: &[&str] =
    &["Match", "TriggerMatch", "Assert", "TriggerAssert"];

/// Names mkosi's `Include=` resolves to configurations shipped with mkosi.
pub(crate) const BUILTIN_CONFIGS: &[&str] = &[
    "mkosi-tools",
    "mkosi-initrd",
    "mkosi-vm",
    "mkosi-addon",
    "mkosi-obs",
];

/// How a setting travels between the main image and its subimages (mkosi's `SettingScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Not passed down; can be configured everywhere.
    Local,
    /// Passed down from the main image and fixed there; only the main image may set it.
    Universal,
    /// Like `Universal`, and also passed to the tools tree.
    Multiversal,
    /// Passed down from the main image; subimages may override it.
    Inherit,
    /// Main image only, not passed down.
    Main,
    /// Only for the default tools tree (main image only).
    Tools,
    /// Only for the default initrd (main image only).
    Initrd,
}

impl Scope {
    /// Whether a subimage may not set it.
    pub fn main_only(self) -> bool {
        matches!(
            self,
            Scope::Universal | Scope::Multiversal | Scope::Main | Scope::Tools | Scope::Initrd
        )
    }

    /// Whether the main image's final value overrides what a subimage configures.
    pub fn passed_down_fixed(self) -> bool {
        matches!(self, Scope::Universal | Scope::Multiversal)
    }
}

/// What a list item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    Text,
    /// A profile name: no path components.
    Profile,
    /// A path; `required` ones must exist.
    Path {
        required: bool,
    },
    /// `SOURCE[:TARGET]`; `required` sources must exist.
    Tree {
        required: bool,
    },
}

/// How kiln reads a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// mkosi has it; kiln does not implement it yet and ignores it with a warning.
    Unsupported,
    /// A string; empty unsets it.
    Text,
    /// A file name without `/` (`Output=`).
    Filename,
    Bool,
    /// `yes`/`no`/`auto` (or `enabled`/`disabled`).
    Feature,
    /// One of the listed values.
    Enum(&'static [&'static str]),
    /// A Unix timestamp.
    Epoch,
    /// `[hashed:]PASSWORD`.
    Password,
    /// A path that need not exist.
    Path,
    /// A key or certificate: a path when it exists (`secret` ones must not be readable by others),
    /// else kept as written (a PKCS#11 URI, an engine's key name).
    Key {
        secret: bool,
    },
    /// Where a key or certificate comes from: `TYPE[:SOURCE]`, `TYPE` one of the listed values
    /// (`SecureBootKeySource=engine:pkcs11`).
    Source(&'static [&'static str]),
    /// A list split at newlines and `delimiter`; empty resets it. `sort` sorts like mkosi sorts
    /// packages.
    List {
        delimiter: char,
        item: Item,
        sort: bool,
    },
    /// `KEY=VALUE` pairs, split like a shell splits words.
    Environment,
    /// `Include=`: files and directories read in place.
    Include,
}

impl Kind {
    /// Whether an explicit empty assignment leaves it empty (lists, maps and optional values)
    /// rather than back at its default.
    pub fn empty_when_reset(self) -> bool {
        matches!(
            self,
            Kind::Text
                | Kind::Filename
                | Kind::Epoch
                | Kind::Password
                | Kind::Path
                | Kind::Key { .. }
                | Kind::List { .. }
                | Kind::Environment
                | Kind::Include
        )
    }
}

/// How `[Match]` compares a condition with a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matcher {
    /// The setting cannot be matched on.
    None,
    /// Equal to one of the enum's values.
    Enum,
    /// Equal strings.
    Text,
    /// A shell glob (`ImageId=`).
    Glob,
    /// A version comparison (`ImageVersion=>=2`).
    Version,
    Feature,
    /// The list holds the value (an empty condition: the list is empty).
    List,
    /// `KEY` is set, or `KEY=VALUE`.
    KeyValue,
    /// An architecture, or `uefi` for any architecture UEFI runs on.
    Architecture,
    /// mkosi can match on it but kiln cannot evaluate it.
    Unsupported,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub name: &'static str,
    pub section: SectionName,
    pub compat: &'static [&'static str],
    pub scope: Scope,
    pub kind: Kind,
    pub matcher: Matcher,
    /// The specifier character that expands to its value (`%d` for `Distribution=`).
    pub specifier: Option<char>,
    /// `mkosi.<suffix>` files in a configuration directory that set it.
    pub suffixes: &'static [&'static str],
    /// `mkosi.<dir>/<glob>` files that add to it, in sorted order.
    pub recursive: &'static [&'static str],
    /// Whether a default file's content (or, when executable, its output) is the value.
    pub read_text: bool,
}

const fn s(name: &'static str, section: SectionName) -> Setting {
    Setting {
        name,
        section,
        compat: &[],
        scope: Scope::Local,
        kind: Kind::Unsupported,
        matcher: Matcher::None,
        specifier: None,
        suffixes: &[],
        recursive: &[],
        read_text: false,
    }
}

impl Setting {
    const fn scope(mut self, scope: Scope) -> Setting {
        self.scope = scope;
        self
    }
    const fn kind(mut self, kind: Kind) -> Setting {
        self.kind = kind;
        self
    }
    const fn matcher(mut self, matcher: Matcher) -> Setting {
        self.matcher = matcher;
        self
    }
    const fn compat(mut self, compat: &'static [&'static str]) -> Setting {
        self.compat = compat;
        self
    }
    const fn specifier(mut self, c: char) -> Setting {
        self.specifier = Some(c);
        self
    }
    const fn suffixes(mut self, suffixes: &'static [&'static str]) -> Setting {
        self.suffixes = suffixes;
        self
    }
    const fn recursive(mut self, recursive: &'static [&'static str]) -> Setting {
        self.recursive = recursive;
        self
    }
    const fn read_text(mut self) -> Setting {
        self.read_text = true;
        self
    }

    pub fn implemented(&self) -> bool {
        !matches!(self.kind, Kind::Unsupported)
    }
}

/// `SecureBootSignTool=`'s values.
pub(crate) const SIGN_TOOLS: &[&str] = &["auto", "sbsign", "systemd-sbsign"];

/// The types of `SecureBootKeySource=` (mkosi's `KeySourceType`).
pub(crate) const KEY_SOURCES: &[&str] = &["file", "engine", "provider"];

/// The types of `SecureBootCertificateSource=` (mkosi's `CertificateSourceType`).
pub(crate) const CERTIFICATE_SOURCES: &[&str] = &["file", "provider"];

pub(crate) const DISTRIBUTIONS: &[&str] = &[
    "fedora",
    "debian",
    "kali",
    "ubuntu",
    "postmarketos",
    "arch",
    "opensuse",
    "mageia",
    "centos",
    "rhel",
    "rhel-ubi",
    "openmandriva",
    "rocky",
    "alma",
    "alinux",
    "azure",
    "custom",
];

pub(crate) const ARCHITECTURES: &[&str] = &[
    "alpha",
    "arc",
    "arm",
    "arm64",
    "ia64",
    "loongarch64",
    "mips-le",
    "mips64-le",
    "parisc",
    "ppc",
    "ppc64",
    "ppc64-le",
    "riscv32",
    "riscv64",
    "s390",
    "s390x",
    "tilegx",
    "x86",
    "x86-64",
];

/// Architectures UEFI firmware exists for (`[Match] Architecture=uefi`).
pub(crate) const UEFI_ARCHITECTURES: &[&str] = &[
    "x86",
    "x86-64",
    "arm",
    "arm64",
    "riscv32",
    "riscv64",
    "loongarch64",
];

pub(crate) const FORMATS: &[&str] = &[
    "confext",
    "cpio",
    "directory",
    "disk",
    "esp",
    "none",
    "portable",
    "sysext",
    "tar",
    "uki",
    "oci",
    "addon",
];

pub(crate) const BOOTLOADERS: &[&str] = &[
    "none",
    "uki",
    "systemd-boot",
    "grub",
    "uki-signed",
    "systemd-boot-signed",
    "grub-signed",
];

const fn list(delimiter: char) -> Kind {
    Kind::List {
        delimiter,
        item: Item::Text,
        sort: false,
    }
}

const fn paths(required: bool) -> Kind {
    Kind::List {
        delimiter: ',',
        item: Item::Path { required },
        sort: false,
    }
}

const fn trees(required: bool) -> Kind {
    Kind::List {
        delimiter: ',',
        item: Item::Tree { required },
        sort: false,
    }
}

use Scope::{Inherit, Main, Multiversal, Tools, Universal};

/// Every mkosi setting, in mkosi's order.
pub(crate) static SETTINGS: &[Setting] = &[
    // [Include]
    s("Include", "Include").kind(Kind::Include),
    // [Config]
    s("Profiles", "Config")
        .scope(Inherit)
        .compat(&["Profile"])
        .kind(Kind::List {
            delimiter: ',',
            item: Item::Profile,
            sort: false,
        })
        .matcher(Matcher::List),
    s("Dependencies", "Config").kind(list(',')),
    s("MinimumVersion", "Config").scope(Main),
    s("ConfigureScripts", "Config").suffixes(&["configure"]),
    s("PassEnvironment", "Config").scope(Main).kind(list(' ')),
    // [Distribution]
    s("Distribution", "Distribution")
        .scope(Universal)
        .specifier('d')
        .kind(Kind::Enum(DISTRIBUTIONS))
        .matcher(Matcher::Enum),
    s("Release", "Distribution")
        .scope(Universal)
        .specifier('r')
        .kind(Kind::Text)
        .matcher(Matcher::Text),
    s("Architecture", "Distribution")
        .scope(Universal)
        .specifier('a')
        .kind(Kind::Enum(ARCHITECTURES))
        .matcher(Matcher::Architecture),
    s("Mirror", "Distribution")
        .scope(Universal)
        .kind(Kind::Text),
    s("Snapshot", "Distribution")
        .scope(Universal)
        .suffixes(&["snapshot"])
        .read_text(),
    s("LocalMirror", "Distribution").scope(Universal),
    s("RepositoryKeyCheck", "Distribution").scope(Multiversal),
    s("RepositoryKeyFetch", "Distribution").scope(Universal),
    s("Repositories", "Distribution")
        .scope(Universal)
        .kind(list(','))
        .matcher(Matcher::List),
    // [Output]
    s("Format", "Output")
        .specifier('t')
        .kind(Kind::Enum(FORMATS))
        .matcher(Matcher::Enum),
    s("ManifestFormat", "Output"),
    s("Output", "Output").specifier('o').kind(Kind::Filename),
    s("OutputExtension", "Output"),
    s("CompressOutput", "Output"),
    s("CompressLevel", "Output").scope(Inherit),
    s("OutputDirectory", "Output")
        .scope(Universal)
        .specifier('O')
        .kind(Kind::Path)
        .suffixes(&["output"]),
    s("OutputMode", "Output").scope(Universal),
    s("ImageVersion", "Output")
        .scope(Inherit)
        .specifier('v')
        .kind(Kind::Text)
        .matcher(Matcher::Version)
        .suffixes(&["version"])
        .read_text(),
    s("ImageId", "Output")
        .scope(Inherit)
        .specifier('i')
        .kind(Kind::Text)
        .matcher(Matcher::Glob),
    s("SplitArtifacts", "Output"),
    s("RepartDirectories", "Output").suffixes(&["repart"]),
    s("SectorSize", "Output").scope(Inherit),
    s("Overlay", "Output"),
    s("Seed", "Output").suffixes(&["seed"]).read_text(),
    s("CleanScripts", "Output")
        .suffixes(&["clean"])
        .recursive(&["clean.d/*"]),
    // [Content]
    s("Packages", "Content").kind(Kind::List {
        delimiter: ',',
        item: Item::Text,
        sort: true,
    }),
    s("BuildPackages", "Content"),
    s("VolatilePackages", "Content"),
    s("PackageDirectories", "Content")
        .scope(Universal)
        .suffixes(&["packages"]),
    s("VolatilePackageDirectories", "Content").scope(Universal),
    s("WithRecommends", "Content"),
    s("WithDocs", "Content").kind(Kind::Bool),
    s("BaseTrees", "Content").kind(paths(false)),
    s("SkeletonTrees", "Content")
        .kind(trees(true))
        .suffixes(&["skeleton", "skeleton.tar"]),
    s("ExtraTrees", "Content")
        .kind(trees(false))
        .suffixes(&["extra", "extra.tar"]),
    s("RemovePackages", "Content").kind(list(',')),
    s("RemoveFiles", "Content").kind(list(',')),
    s("CleanPackageMetadata", "Content"),
    s("SourceDateEpoch", "Content")
        .scope(Multiversal)
        .kind(Kind::Epoch),
    s("SyncScripts", "Content")
        .suffixes(&["sync"])
        .recursive(&["sync.d/*"]),
    s("PrepareScripts", "Content")
        .compat(&["PrepareScript"])
        .kind(paths(true))
        .suffixes(&["prepare", "prepare.chroot"])
        .recursive(&["prepare.d/*"]),
    s("BuildScripts", "Content")
        .compat(&["BuildScript"])
        .suffixes(&["build", "build.chroot"])
        .recursive(&["build.d/*"]),
    s("PostInstallationScripts", "Content")
        .compat(&["PostInstallationScript"])
        .kind(paths(true))
        .suffixes(&["postinst", "postinst.chroot"])
        .recursive(&["postinst.d/*"]),
    s("FinalizeScripts", "Content")
        .compat(&["FinalizeScript"])
        .kind(paths(true))
        .suffixes(&["finalize", "finalize.chroot"])
        .recursive(&["finalize.d/*"]),
    s("PostOutputScripts", "Content")
        .suffixes(&["postoutput"])
        .recursive(&["postoutput.d/*"]),
    s("Bootable", "Content")
        .kind(Kind::Feature)
        .matcher(Matcher::Feature),
    s("Bootloader", "Content").kind(Kind::Enum(BOOTLOADERS)),
    s("BiosBootloader", "Content"),
    s("ShimBootloader", "Content"),
    s("UnifiedKernelImages", "Content"),
    s("UnifiedKernelImageFormat", "Content"),
    s("UnifiedKernelImageProfiles", "Content").recursive(&["uki-profiles/*.conf"]),
    s("Initrds", "Content"),
    s("MicrocodeHost", "Content"),
    s("InitrdProfiles", "Content").scope(Scope::Initrd),
    s("InitrdPackages", "Content").scope(Scope::Initrd),
    s("InitrdVolatilePackages", "Content").scope(Scope::Initrd),
    s("Devicetrees", "Content").compat(&["Devicetree"]),
    s("Splash", "Content"),
    s("KernelCommandLine", "Content").kind(list(' ')),
    s("KernelModulesInclude", "Content").kind(list(',')),
    s("KernelModulesExclude", "Content").kind(list(',')),
    s("KernelModules", "Content").kind(list(',')),
    s("KernelModulesIncludeHost", "Content").kind(Kind::Bool),
    s("KernelModulesInitrd", "Content"),
    s("KernelModulesInitrdInclude", "Content"),
    s("KernelModulesInitrdExclude", "Content"),
    s("KernelInitrdModules", "Content"),
    s("KernelModulesInitrdIncludeHost", "Content"),
    s("FirmwareInclude", "Content").kind(list(',')),
    s("FirmwareExclude", "Content").kind(list(',')),
    s("FirmwareFiles", "Content").kind(list(',')),
    s("Locale", "Content"),
    s("LocaleMessages", "Content"),
    s("Keymap", "Content"),
    s("Timezone", "Content"),
    s("Hostname", "Content").kind(Kind::Text),
    s("RootPassword", "Content")
        .kind(Kind::Password)
        .suffixes(&["rootpw"])
        .read_text(),
    s("RootShell", "Content"),
    s("MachineId", "Content")
        .suffixes(&["machine-id"])
        .read_text(),
    s("Autologin", "Content").kind(Kind::Bool),
    s("MakeInitrd", "Content"),
    s("Ssh", "Content"),
    s("SELinuxRelabel", "Content"),
    // [Validation]
    s("SecureBoot", "Validation").kind(Kind::Bool),
    s("SecureBootAutoEnroll", "Validation"),
    s("SecureBootKey", "Validation")
        .scope(Universal)
        .kind(Kind::Key { secret: true })
        .suffixes(&["key"]),
    s("SecureBootKeySource", "Validation")
        .scope(Universal)
        .kind(Kind::Source(KEY_SOURCES)),
    s("SecureBootCertificate", "Validation")
        .scope(Universal)
        .kind(Kind::Key { secret: false })
        .suffixes(&["crt"]),
    s("SecureBootCertificateSource", "Validation")
        .scope(Universal)
        .kind(Kind::Source(CERTIFICATE_SOURCES)),
    s("SecureBootSignTool", "Validation").kind(Kind::Enum(SIGN_TOOLS)),
    s("Verity", "Validation"),
    s("VerityKey", "Validation")
        .scope(Universal)
        .suffixes(&["key"]),
    s("VerityKeySource", "Validation").scope(Universal),
    s("VerityCertificate", "Validation")
        .scope(Universal)
        .suffixes(&["crt"]),
    s("VerityCertificateSource", "Validation").scope(Universal),
    s("SignExpectedPcr", "Validation"),
    s("SignExpectedPcrKey", "Validation")
        .scope(Inherit)
        .suffixes(&["key"]),
    s("SignExpectedPcrKeySource", "Validation").scope(Inherit),
    s("SignExpectedPcrCertificate", "Validation")
        .scope(Inherit)
        .suffixes(&["crt"]),
    s("SignExpectedPcrCertificateSource", "Validation").scope(Inherit),
    s("Passphrase", "Validation").suffixes(&["passphrase"]),
    s("Checksum", "Validation"),
    s("Sign", "Validation"),
    s("Key", "Validation"),
    s("OpenPGPTool", "Validation"),
    // [Build]
    s("ToolsTree", "Build")
        .scope(Universal)
        .suffixes(&["tools"]),
    s("ToolsTreeDistribution", "Build")
        .scope(Tools)
        .matcher(Matcher::Unsupported),
    s("ToolsTreeRelease", "Build")
        .scope(Tools)
        .matcher(Matcher::Unsupported),
    s("ToolsTreeProfiles", "Build").scope(Tools),
    s("ToolsTreeMirror", "Build").scope(Tools),
    s("ToolsTreeRepositories", "Build").scope(Tools),
    s("ToolsTreeSandboxTrees", "Build")
        .scope(Tools)
        .compat(&["ToolsTreePackageManagerTrees"]),
    s("ToolsTreePackages", "Build").scope(Tools),
    s("ToolsTreePackageDirectories", "Build").scope(Tools),
    s("ToolsTreeCertificates", "Build").scope(Universal),
    s("ExtraSearchPaths", "Build").scope(Universal),
    s("Incremental", "Build").scope(Universal),
    s("CacheOnly", "Build").scope(Multiversal),
    s("SandboxTrees", "Build")
        .scope(Universal)
        .compat(&["PackageManagerTrees"])
        .suffixes(&["sandbox", "sandbox.tar", "pkgmngr", "pkgmngr.tar"]),
    s("WorkspaceDirectory", "Build").scope(Multiversal),
    s("CacheDirectory", "Build")
        .scope(Universal)
        .kind(Kind::Path)
        .suffixes(&["cache"]),
    s("CacheKey", "Build").scope(Inherit),
    s("PackageCacheDirectory", "Build")
        .scope(Multiversal)
        .suffixes(&["pkgcache"]),
    s("BuildDirectory", "Build")
        .scope(Universal)
        .suffixes(&["builddir"]),
    s("BuildKey", "Build").scope(Inherit),
    s("UseSubvolumes", "Build").scope(Universal),
    s("RepartOffline", "Build").scope(Universal),
    s("History", "Build").scope(Main),
    s("BuildSources", "Build")
        .scope(Multiversal)
        .matcher(Matcher::Unsupported),
    s("BuildSourcesEphemeral", "Build").scope(Multiversal),
    s("Environment", "Build")
        .kind(Kind::Environment)
        .matcher(Matcher::KeyValue),
    s("EnvironmentFiles", "Build").suffixes(&["env"]),
    s("WithTests", "Build").scope(Universal),
    s("WithNetwork", "Build").scope(Universal),
    s("ProxyUrl", "Build").scope(Multiversal),
    s("ProxyExclude", "Build").scope(Multiversal),
    s("ProxyPeerCertificate", "Build").scope(Multiversal),
    s("ProxyClientCertificate", "Build").scope(Multiversal),
    s("ProxyClientKey", "Build").scope(Multiversal),
    // [Runtime]
    s("NSpawnSettings", "Runtime")
        .scope(Main)
        .suffixes(&["nspawn"]),
    s("Ephemeral", "Runtime").scope(Main),
    s("Credentials", "Runtime")
        .scope(Main)
        .suffixes(&["credentials"]),
    s("KernelCommandLineExtra", "Runtime").scope(Main),
    s("RuntimeTrees", "Runtime").scope(Main),
    s("RuntimeSize", "Runtime").scope(Main),
    s("RuntimeNetwork", "Runtime").scope(Main),
    s("RuntimeBuildSources", "Runtime").scope(Main),
    s("BindUser", "Runtime").scope(Main),
    s("UnitProperties", "Runtime").scope(Main),
    s("SshKey", "Runtime").scope(Main).suffixes(&["key"]),
    s("SshCertificate", "Runtime")
        .scope(Main)
        .suffixes(&["crt"]),
    s("VirtualMachineMonitor", "Runtime").scope(Main),
    s("Machine", "Runtime").scope(Main),
    s("ForwardJournal", "Runtime").scope(Main),
    s("SysupdateDirectory", "Runtime")
        .scope(Main)
        .suffixes(&["sysupdate"]),
    s("Console", "Runtime").scope(Main),
    s("CPUs", "Runtime").scope(Main).compat(&["QemuSmp"]),
    s("RAM", "Runtime").scope(Main).compat(&["QemuMem"]),
    s("MaxMem", "Runtime").scope(Main),
    s("KVM", "Runtime").scope(Main).compat(&["QemuKvm"]),
    s("CXL", "Runtime").scope(Main),
    s("VSock", "Runtime").scope(Main).compat(&["QemuVsock"]),
    s("VSockCID", "Runtime")
        .scope(Main)
        .compat(&["QemuVsockConnectionId"]),
    s("TPM", "Runtime").scope(Main).compat(&["QemuSwtpm"]),
    s("Removable", "Runtime")
        .scope(Main)
        .compat(&["QemuRemovable"]),
    s("Firmware", "Runtime")
        .scope(Main)
        .compat(&["QemuFirmware"]),
    s("FirmwareVariables", "Runtime")
        .scope(Main)
        .compat(&["QemuFirmwareVariables"]),
    s("Linux", "Runtime").scope(Main).compat(&["QemuKernel"]),
    s("Drives", "Runtime").scope(Main).compat(&["QemuDrives"]),
    s("QemuArgs", "Runtime").scope(Main),
    s("Register", "Runtime").scope(Main),
    s("StorageTargetMode", "Runtime").scope(Main),
];

/// Conditions of `[Match]` that are not settings.
pub(crate) const MATCH_ONLY: &[&str] =
    &["PathExists", "SystemdVersion", "HostArchitecture", "Image"];

/// Looks a setting up by its name or one of its old names.
pub(crate) fn lookup(name: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.name == name || s.compat.contains(&name))
}

/// Looks a setting up by its canonical name.
pub(crate) fn by_name(name: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("`{name}` is not in the settings table"))
}

pub(crate) fn by_specifier(c: char) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.specifier == Some(c))
}

/// The closest name in `candidates` to `name`: one that differs only in case, else one within a
/// small edit distance.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_lowercase();
        if candidate_lower == lower {
            return Some(candidate);
        }
        let distance = strsim::damerau_levenshtein(&lower, &candidate_lower);
        let limit = (name.chars().count() / 4).max(1);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// The names a setting can be written with, for "did you mean" hints.
pub(crate) fn all_names() -> impl Iterator<Item = &'static str> {
    SETTINGS
        .iter()
        .flat_map(|s| std::iter::once(s.name).chain(s.compat.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sections_known() {
        let mut names: Vec<&str> = all_names().collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a setting name appears twice");
        for setting in SETTINGS {
            assert!(
                SETTING_SECTIONS.contains(&setting.section),
                "{}",
                setting.name
            );
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(
            lookup("PostInstallationScript").map(|s| s.name),
            Some("PostInstallationScripts")
        );
        assert_eq!(lookup("packages").map(|s| s.name), None);
        assert_eq!(by_specifier('v').map(|s| s.name), Some("ImageVersion"));
        assert_eq!(closest("Packagse", all_names()), Some("Packages"));
        assert_eq!(closest("BootLoader", all_names()), Some("Bootloader"));
        assert_eq!(closest("Frobnicate", all_names()), None);
        assert_eq!(closest("ukii", FORMATS.iter().copied()), Some("uki"));
        assert_eq!(closest("gentoo", DISTRIBUTIONS.iter().copied()), None);
    }
}
