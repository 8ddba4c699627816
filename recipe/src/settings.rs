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
    pub(crate) fn main_only(self) -> bool {
        matches!(
            self,
            Scope::Universal | Scope::Multiversal | Scope::Main | Scope::Tools | Scope::Initrd
        )
    }

    /// Whether the main image's final value overrides what a subimage configures.
    pub(crate) fn passed_down_fixed(self) -> bool {
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
    /// A part of the output's default file name (`ImageId=`, `ImageVersion=`): text that is
    /// itself a file name, so `<ImageId>_<ImageVersion>` stays inside `OutputDirectory=`.
    NamePart,
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
    pub(crate) fn empty_when_reset(self) -> bool {
        matches!(
            self,
            Kind::Text
                | Kind::Filename
                | Kind::NamePart
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

/// What builds a setting kiln reads: the stages whose keys hold it, or why none needs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Built {
    /// Not read: a mkosi setting kiln does not implement (it warns where it is set).
    Unread,
    /// Read by the configuration reader itself (`Include=`, `Profiles=`).
    Reader,
    /// Shapes the plan rather than a stage's work: which stages exist, and where the outputs
    /// and the store go.
    Plan,
    /// A value input of these stages' keys (script stages: when the script names it).
    Stages(&'static [&'static str]),
    /// Read, but no stage builds it yet: a recipe setting it gets an image unlike mkosi's, and a
    /// warning at its line saying how, unless the value is one of `same` (which changes
    /// nothing).
    Not {
        differs: &'static str,
        same: &'static [&'static str],
    },
    /// Read, and without effect on any format kiln builds (the reason says why).
    NoEffect(&'static str),
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
    /// What builds it.
    pub built: Built,
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
        built: Built::Unread,
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
    const fn built(mut self, built: Built) -> Setting {
        self.built = built;
        self
    }
    const fn by(self, stages: &'static [&'static str]) -> Setting {
        self.built(Built::Stages(stages))
    }

    pub(crate) fn implemented(&self) -> bool {
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
    s("Include", "Include").kind(Kind::Include)
        .built(Built::Reader),
    // [Config]
    s("Profiles", "Config")
        .scope(Inherit)
        .compat(&["Profile"])
        .kind(Kind::List {
            delimiter: ',',
            item: Item::Profile,
            sort: false,
        })
        .matcher(Matcher::List)
        .built(Built::Reader),
    s("Dependencies", "Config").kind(list(','))
        .built(Built::Not { differs: "kiln builds only the main image: the subimages of mkosi.images/ are not built", same: &[] }),
    s("MinimumVersion", "Config").scope(Main),
    s("ConfigureScripts", "Config").suffixes(&["configure"]),
    s("PassEnvironment", "Config").scope(Main).kind(list(' '))
        .built(Built::Reader),
    // [Distribution]
    s("Distribution", "Distribution")
        .scope(Universal)
        .specifier('d')
        .kind(Kind::Enum(DISTRIBUTIONS))
        .matcher(Matcher::Enum)
        .by(&["packages"]),
    s("Release", "Distribution")
        .scope(Universal)
        .specifier('r')
        .kind(Kind::Text)
        .matcher(Matcher::Text)
        .by(&["packages"]),
    s("Architecture", "Distribution")
        .scope(Universal)
        .specifier('a')
        .kind(Kind::Enum(ARCHITECTURES))
        .matcher(Matcher::Architecture)
        .by(&["packages", "uki"]),
    s("Mirror", "Distribution")
        .scope(Universal)
        .kind(Kind::Text)
        .by(&["packages"]),
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
        .matcher(Matcher::List)
        .by(&["packages"]),
    // [Output]
    s("Format", "Output")
        .specifier('t')
        .kind(Kind::Enum(FORMATS))
        .matcher(Matcher::Enum)
        .built(Built::Plan),
    s("ManifestFormat", "Output"),
    s("Output", "Output").specifier('o').kind(Kind::Filename)
        .built(Built::Plan),
    s("OutputExtension", "Output"),
    s("CompressOutput", "Output"),
    s("CompressLevel", "Output").scope(Inherit),
    s("OutputDirectory", "Output")
        .scope(Universal)
        .specifier('O')
        .kind(Kind::Path)
        .suffixes(&["output"])
        .built(Built::Plan),
    s("OutputMode", "Output").scope(Universal),
    s("ImageVersion", "Output")
        .scope(Inherit)
        .specifier('v')
        .kind(Kind::NamePart)
        .matcher(Matcher::Version)
        .suffixes(&["version"])
        .read_text()
        .by(&["os-release"]),
    s("ImageId", "Output")
        .scope(Inherit)
        .specifier('i')
        .kind(Kind::NamePart)
        .matcher(Matcher::Glob)
        .by(&["os-release"]),
    s("OutputSize", "Output"),
    s("OciLabels", "Output"),
    s("OciAnnotations", "Output"),
    s("SplitArtifacts", "Output"),
    s("RepartDirectories", "Output").suffixes(&["repart"]),
    s("SectorSize", "Output").scope(Inherit),
    s("Overlay", "Output"),
    s("Seed", "Output").suffixes(&["seed"]).read_text(),
    s("ElTorito", "Output"),
    s("ElToritoSystem", "Output"),
    s("ElToritoVolume", "Output"),
    s("ElToritoPublisher", "Output"),
    s("CleanScripts", "Output")
        .suffixes(&["clean"])
        .recursive(&["clean.d/*"]),
    // [Content]
    s("Packages", "Content").kind(Kind::List {
        delimiter: ',',
        item: Item::Text,
        sort: true,
    })
        .by(&["packages"]),
    s("BuildPackages", "Content"),
    s("VolatilePackages", "Content"),
    s("PackageDirectories", "Content")
        .scope(Universal)
        .suffixes(&["packages"]),
    s("VolatilePackageDirectories", "Content").scope(Universal),
    s("WithRecommends", "Content"),
    s("WithDocs", "Content").kind(Kind::Bool)
        .by(&["packages"]),
    s("BaseTrees", "Content").kind(paths(false))
        .by(&["base-trees"]),
    s("SkeletonTrees", "Content")
        .kind(trees(true))
        .suffixes(&["skeleton", "skeleton.tar"])
        .by(&["skeleton-trees"]),
    s("ExtraTrees", "Content")
        .kind(trees(false))
        .suffixes(&["extra", "extra.tar"])
        .by(&["extra-trees"]),
    s("RemovePackages", "Content").kind(list(','))
        .built(Built::Not { differs: "the packages stay installed in the image", same: &[] }),
    s("RemoveFiles", "Content").kind(list(','))
        .by(&["remove-files"]),
    s("CleanPackageMetadata", "Content").kind(Kind::Feature)
        .by(&["clean-metadata"]),
    s("SourceDateEpoch", "Content")
        .scope(Multiversal)
        .kind(Kind::Epoch)
        .by(&["initrd"]),
    s("SyncScripts", "Content")
        .suffixes(&["sync"])
        .recursive(&["sync.d/*"]),
    s("PrepareScripts", "Content")
        .compat(&["PrepareScript"])
        .kind(paths(true))
        .suffixes(&["prepare", "prepare.chroot"])
        .recursive(&["prepare.d/*"])
        .by(&["prepare"]),
    s("BuildScripts", "Content")
        .compat(&["BuildScript"])
        .suffixes(&["build", "build.chroot"])
        .recursive(&["build.d/*"]),
    s("PostInstallationScripts", "Content")
        .compat(&["PostInstallationScript"])
        .kind(paths(true))
        .suffixes(&["postinst", "postinst.chroot"])
        .recursive(&["postinst.d/*"])
        .by(&["postinst"]),
    s("FinalizeScripts", "Content")
        .compat(&["FinalizeScript"])
        .kind(paths(true))
        .suffixes(&["finalize", "finalize.chroot"])
        .recursive(&["finalize.d/*"])
        .by(&["finalize"]),
    s("PostOutputScripts", "Content")
        .suffixes(&["postoutput"])
        .recursive(&["postoutput.d/*"]),
    s("Bootable", "Content")
        .kind(Kind::Feature)
        .matcher(Matcher::Feature)
        .built(Built::NoEffect("only disk and esp images get a boot loader, and kiln builds neither")),
    s("Bootloader", "Content").kind(Kind::Enum(BOOTLOADERS))
        .built(Built::NoEffect("only disk and esp images get a boot loader, and kiln builds neither")),
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
    s("KernelCommandLine", "Content").kind(list(' '))
        .by(&["uki"]),
    s("KernelModulesInclude", "Content").kind(list(','))
        .by(&["modules"]),
    s("KernelModulesExclude", "Content").kind(list(','))
        .by(&["modules"]),
    s("KernelModules", "Content").kind(list(','))
        .by(&["modules"]),
    s("KernelModulesIncludeHost", "Content").kind(Kind::Bool)
        .by(&["modules"]),
    s("KernelModulesInitrd", "Content")
        .kind(Kind::Bool)
        .built(Built::Not {
            differs: "kiln builds no separate initrd, so the modules of mkosi's default initrd are not chosen",
            same: &[],
        }),
    s("KernelModulesInitrdInclude", "Content")
        .kind(list(','))
        .built(Built::Not {
            differs: "kiln builds no separate initrd, so the modules of mkosi's default initrd are not chosen",
            same: &[],
        }),
    s("KernelModulesInitrdExclude", "Content")
        .kind(list(','))
        .built(Built::Not {
            differs: "kiln builds no separate initrd, so the modules of mkosi's default initrd are not chosen",
            same: &[],
        }),
    s("KernelInitrdModules", "Content")
        .kind(list(','))
        .built(Built::Not {
            differs: "kiln builds no separate initrd, so the modules of mkosi's default initrd are not chosen",
            same: &[],
        }),
    s("KernelModulesInitrdIncludeHost", "Content")
        .kind(Kind::Bool)
        .built(Built::Not {
            differs: "kiln builds no separate initrd, so the modules of mkosi's default initrd are not chosen",
            same: &[],
        }),
    s("FirmwareInclude", "Content").kind(list(','))
        .by(&["modules"]),
    s("FirmwareExclude", "Content").kind(list(','))
        .by(&["modules"]),
    s("FirmwareFiles", "Content").kind(list(','))
        .by(&["modules"]),
    s("Locale", "Content").kind(Kind::Text)
        .by(&["firstboot"]),
    s("LocaleMessages", "Content").kind(Kind::Text)
        .by(&["firstboot"]),
    s("Keymap", "Content").kind(Kind::Text)
        .by(&["firstboot"]),
    s("Timezone", "Content").kind(Kind::Text)
        .by(&["firstboot"]),
    s("Hostname", "Content").kind(Kind::Text)
        .by(&["hostname", "os-release"]),
    s("RootPassword", "Content")
        .kind(Kind::Password)
        .suffixes(&["rootpw"])
        .read_text()
        .by(&["root-password"]),
    s("RootShell", "Content").kind(Kind::Text)
        .by(&["firstboot"]),
    s("MachineId", "Content")
        .suffixes(&["machine-id"])
        .read_text(),
    s("Autologin", "Content").kind(Kind::Bool)
        .by(&["autologin"]),
    s("MakeInitrd", "Content"),
    s("Ssh", "Content"),
    s("SELinuxRelabel", "Content"),
    // [Validation]
    s("SecureBoot", "Validation").kind(Kind::Bool)
        .by(&["sign"]),
    s("SecureBootAutoEnroll", "Validation"),
    s("SecureBootKey", "Validation")
        .scope(Universal)
        .kind(Kind::Key { secret: true })
        .suffixes(&["key"])
        .by(&["sign"]),
    s("SecureBootKeySource", "Validation")
        .scope(Universal)
        .kind(Kind::Source(KEY_SOURCES))
        .by(&["sign"]),
    s("SecureBootCertificate", "Validation")
        .scope(Universal)
        .kind(Kind::Key { secret: false })
        .suffixes(&["crt"])
        .by(&["sign"]),
    s("SecureBootCertificateSource", "Validation")
        .scope(Universal)
        .kind(Kind::Source(CERTIFICATE_SOURCES))
        .by(&["sign"]),
    s("SecureBootSignTool", "Validation")
        .kind(Kind::Enum(SIGN_TOOLS))
        .by(&["sign"]),
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
    s("CacheOnly", "Build").scope(Inherit),
    s("SandboxTrees", "Build")
        .scope(Universal)
        .compat(&["PackageManagerTrees"])
        .suffixes(&["sandbox", "sandbox.tar", "pkgmngr", "pkgmngr.tar"]),
    s("WorkspaceDirectory", "Build").scope(Multiversal),
    s("CacheDirectory", "Build")
        .scope(Universal)
        .kind(Kind::Path)
        .suffixes(&["cache"])
        .built(Built::Plan),
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
        .matcher(Matcher::KeyValue)
        .by(&["prepare", "postinst", "finalize"]),
    s("EnvironmentFiles", "Build").suffixes(&["env"]),
    s("WithTests", "Build").scope(Universal),
    s("WithNetwork", "Build").scope(Universal),
    s("ProxyUrl", "Build").scope(Multiversal),
    s("ProxyExclude", "Build").scope(Multiversal),
    s("ProxyPeerCertificate", "Build").scope(Multiversal),
    s("ProxyClientCertificate", "Build").scope(Multiversal),
    s("ProxyClientKey", "Build").scope(Multiversal),
    s("MakeScriptsExecutable", "Build")
        .scope(Multiversal)
        .kind(Kind::Bool)
        .built(Built::Plan),
    s("ForeignUIDRange", "Build").scope(Main),
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
    s("DiskType", "Runtime").scope(Main),
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

/// One row of the settings table, as the README and the tests read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingInfo {
    pub name: &'static str,
    pub section: &'static str,
    /// Whether kiln reads it.
    pub read: bool,
    pub built: Built,
}

/// Every mkosi setting kiln knows, in mkosi's order, with what builds it.
pub fn settings_table() -> Vec<SettingInfo> {
    SETTINGS
        .iter()
        .map(|setting| SettingInfo {
            name: setting.name,
            section: setting.section,
            read: setting.implemented(),
            built: if setting.implemented() {
                setting.built
            } else {
                Built::Unread
            },
        })
        .collect()
}

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

    /// mkosi's scope names, as kiln models them.
    fn mkosi_scope(name: &str) -> Scope {
        match name {
            "local" => Scope::Local,
            "universal" => Scope::Universal,
            "multiversal" => Scope::Multiversal,
            // Inherited by subimages (and the default initrd), configurable everywhere.
            "inherit" | "initrd_inherit" => Scope::Inherit,
            "main" => Scope::Main,
            "tools" => Scope::Tools,
            "initrd" => Scope::Initrd,
            other => panic!("unknown mkosi scope `{other}`"),
        }
    }

    #[test]
    fn every_setting_has_mkosis_name_section_and_scope() {
        let fixture = include_str!("../tests/fixtures/mkosi-settings.txt");
        let mut differences = Vec::new();
        let mut seen = 0;
        for line in fixture.lines().filter(|line| !line.starts_with('#')) {
            let [name, section, scope] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                panic!("bad fixture line `{line}`");
            };
            seen += 1;
            let Some(setting) = SETTINGS.iter().find(|setting| setting.name == name) else {
                differences.push(format!("{name}: missing from kiln's table"));
                continue;
            };
            if setting.section != section {
                differences.push(format!(
                    "{name}: section {} (mkosi: {section})",
                    setting.section
                ));
            }
            let expected = mkosi_scope(scope);
            // Subimages may set what they inherit; what kiln cannot tell apart (the tools and
            // initrd images it does not build) must agree on those two questions.
            if setting.scope.main_only() != expected.main_only()
                || setting.scope.passed_down_fixed() != expected.passed_down_fixed()
            {
                differences.push(format!(
                    "{name}: scope {:?} (mkosi: {scope})",
                    setting.scope
                ));
            }
        }
        assert!(differences.is_empty(), "{differences:#?}");
        assert_eq!(seen, SETTINGS.len(), "kiln knows settings mkosi does not");
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
