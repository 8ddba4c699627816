//! The recipe model: what an image is made of, as mkosi's settings describe it.
//!
//! One [`Recipe`] holds the resolved settings of one image (a project's main image; subimages from
//! `mkosi.images/` are recipes of their own inside it). Every field carries mkosi's name in its doc
//! and mkosi's default in [`Default`], except where mkosi's default depends on the host
//! (`Distribution=`, `Release=`, `Architecture=`): the mkosi loader resolves those from the host,
//! [`Default`] holds fixed values. The same types are read from `mkosi.conf` and from `kiln.ron`,
//! and `kiln recipe show` prints them as RON. Paths inside the project directory are relative to
//! it, others absolute.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The resolved settings of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// `[Config]`: profiles, dependencies between images, environment.
    pub config: ConfigSettings,
    /// `[Distribution]`.
    pub distribution: DistributionSettings,
    /// `[Output]`.
    pub output: OutputSettings,
    /// `[Content]`.
    pub content: ContentSettings,
    /// `[Validation]`.
    pub validation: ValidationSettings,
    /// Scripts found by mkosi's file names or named by settings.
    pub scripts: Scripts,
    /// Subimages from `mkosi.images/` that this image depends on, in the order mkosi builds them
    /// (dependencies first).
    pub subimages: Vec<Subimage>,
}

/// One image of `mkosi.images/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subimage {
    /// The file or directory name without `.conf`.
    pub name: String,
    pub recipe: Recipe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigSettings {
    /// `Profiles=`: the profiles selected for this build.
    pub profiles: Vec<String>,
    /// `Dependencies=`: subimages that must be built before this one.
    pub dependencies: Vec<String>,
    /// `Environment=`: variables passed to scripts (`KEY=VALUE`).
    pub environment: BTreeMap<String, String>,
    /// `PassEnvironment=`: variables of `Environment=` passed down to subimages.
    pub pass_environment: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributionSettings {
    /// `Distribution=`.
    pub distribution: Distribution,
    /// `Release=`: resolved as mkosi does when unset (the host's release when the host runs the
    /// same distribution, else the distribution's default; `None` for `custom`).
    pub release: Option<String>,
    /// `Mirror=`.
    pub mirror: Option<String>,
    /// `Repositories=`: extra repositories or components.
    pub repositories: Vec<String>,
    /// `Architecture=`, in mkosi's spelling (`x86-64`, `arm64`, ...); the host's when unset.
    pub architecture: String,
}

impl Default for DistributionSettings {
    fn default() -> Self {
        DistributionSettings {
            distribution: Distribution::default(),
            release: None,
            mirror: None,
            repositories: Vec::new(),
            architecture: "x86-64".to_string(),
        }
    }
}

/// `Distribution=`: every value mkosi accepts; kiln builds packages for some of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    Fedora,
    #[default]
    Debian,
    Kali,
    Ubuntu,
    Arch,
    Opensuse,
    Mageia,
    Centos,
    Rhel,
    RhelUbi,
    Openmandriva,
    Rocky,
    Alma,
    Alinux,
    Azure,
    Postmarketos,
    Custom,
}

impl Distribution {
    /// Every distribution in mkosi's spelling, in mkosi's order.
    pub const ALL: [Distribution; 17] = [
        Distribution::Fedora,
        Distribution::Debian,
        Distribution::Kali,
        Distribution::Ubuntu,
        Distribution::Postmarketos,
        Distribution::Arch,
        Distribution::Opensuse,
        Distribution::Mageia,
        Distribution::Centos,
        Distribution::Rhel,
        Distribution::RhelUbi,
        Distribution::Openmandriva,
        Distribution::Rocky,
        Distribution::Alma,
        Distribution::Alinux,
        Distribution::Azure,
        Distribution::Custom,
    ];

    /// The value as mkosi spells it in `Distribution=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::Fedora => "fedora",
            Distribution::Debian => "debian",
            Distribution::Kali => "kali",
            Distribution::Ubuntu => "ubuntu",
            Distribution::Arch => "arch",
            Distribution::Opensuse => "opensuse",
            Distribution::Mageia => "mageia",
            Distribution::Centos => "centos",
            Distribution::Rhel => "rhel",
            Distribution::RhelUbi => "rhel-ubi",
            Distribution::Openmandriva => "openmandriva",
            Distribution::Rocky => "rocky",
            Distribution::Alma => "alma",
            Distribution::Alinux => "alinux",
            Distribution::Azure => "azure",
            Distribution::Postmarketos => "postmarketos",
            Distribution::Custom => "custom",
        }
    }

    /// Parses mkosi's spelling.
    pub fn from_mkosi(value: &str) -> Option<Distribution> {
        Distribution::ALL.into_iter().find(|d| d.as_str() == value)
    }

    /// mkosi's default `Release=` for this distribution (`None` for `custom`, whose default is
    /// empty).
    pub fn default_release(self) -> Option<&'static str> {
        Some(match self {
            Distribution::Fedora => "rawhide",
            Distribution::Debian => "testing",
            Distribution::Kali => "kali-rolling",
            Distribution::Ubuntu => "devel",
            Distribution::Postmarketos => "edge",
            Distribution::Arch => "rolling",
            Distribution::Opensuse => "tumbleweed",
            Distribution::Mageia => "cauldron",
            Distribution::Centos
            | Distribution::Rhel
            | Distribution::RhelUbi
            | Distribution::Rocky
            | Distribution::Alma => "10",
            Distribution::Openmandriva => "cooker",
            Distribution::Alinux => "3",
            Distribution::Azure => "3.0",
            Distribution::Custom => return None,
        })
    }

    /// The distribution's default file system, mkosi's `%F` specifier.
    pub fn filesystem(self) -> &'static str {
        match self {
            Distribution::Fedora | Distribution::Opensuse => "btrfs",
            Distribution::Centos
            | Distribution::Rhel
            | Distribution::RhelUbi
            | Distribution::Rocky
            | Distribution::Alma
            | Distribution::Alinux => "xfs",
            _ => "ext4",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSettings {
    /// `ImageId=`.
    pub image_id: Option<String>,
    /// `ImageVersion=` (or `mkosi.version`, or `--image-version`).
    pub image_version: Option<String>,
    /// `Format=`.
    pub format: OutputFormat,
    /// `Output=`: the output's base name; mkosi derives it from ImageId and ImageVersion.
    pub output: Option<String>,
    /// `OutputDirectory=` (or `mkosi.output/`).
    pub output_directory: Option<PathBuf>,
    /// `CacheDirectory=` (or `mkosi.cache/`).
    pub cache_directory: Option<PathBuf>,
}

/// `Format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Confext,
    Cpio,
    Directory,
    #[default]
    Disk,
    Esp,
    None,
    Portable,
    Sysext,
    Tar,
    Uki,
    Oci,
    Addon,
}

impl OutputFormat {
    /// Every format in mkosi's spelling, in mkosi's order.
    pub const ALL: [OutputFormat; 12] = [
        OutputFormat::Confext,
        OutputFormat::Cpio,
        OutputFormat::Directory,
        OutputFormat::Disk,
        OutputFormat::Esp,
        OutputFormat::None,
        OutputFormat::Portable,
        OutputFormat::Sysext,
        OutputFormat::Tar,
        OutputFormat::Uki,
        OutputFormat::Oci,
        OutputFormat::Addon,
    ];

    /// The value as mkosi spells it in `Format=`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Confext => "confext",
            OutputFormat::Cpio => "cpio",
            OutputFormat::Directory => "directory",
            OutputFormat::Disk => "disk",
            OutputFormat::Esp => "esp",
            OutputFormat::None => "none",
            OutputFormat::Portable => "portable",
            OutputFormat::Sysext => "sysext",
            OutputFormat::Tar => "tar",
            OutputFormat::Uki => "uki",
            OutputFormat::Oci => "oci",
            OutputFormat::Addon => "addon",
        }
    }

    /// Parses mkosi's spelling.
    pub fn from_mkosi(value: &str) -> Option<OutputFormat> {
        OutputFormat::ALL.into_iter().find(|f| f.as_str() == value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentSettings {
    /// `Packages=`.
    pub packages: Vec<String>,
    /// `RemovePackages=`.
    pub remove_packages: Vec<String>,
    /// `RemoveFiles=`: globs, anchored at the image's root.
    pub remove_files: Vec<String>,
    /// `Hostname=`.
    pub hostname: Option<String>,
    /// `Bootable=`.
    pub bootable: Feature,
    /// `Bootloader=`.
    pub bootloader: Bootloader,
    /// `KernelCommandLine=`.
    pub kernel_command_line: Vec<String>,
    /// `KernelModulesInclude=` (legacy regexes, matched against the module path below
    /// `/usr/lib/modules/KVER/<subdir>/`; `host` and `default` are kept as the special words they are).
    pub kernel_modules_include: Vec<String>,
    /// `KernelModulesExclude=` (legacy regexes).
    pub kernel_modules_exclude: Vec<String>,
    /// `KernelModulesIncludeHost=`.
    pub kernel_modules_include_host: bool,
    /// `KernelModules=` (globs, `-` excludes, `host`, `default`; the last matching one wins).
    pub kernel_modules: Vec<String>,
    /// `FirmwareFiles=` (globs, `-` excludes).
    pub firmware_files: Vec<String>,
    /// `FirmwareInclude=` (legacy regexes).
    pub firmware_include: Vec<String>,
    /// `FirmwareExclude=` (legacy regexes).
    pub firmware_exclude: Vec<String>,
    /// `RootPassword=` or `mkosi.rootpw`.
    pub root_password: Option<RootPassword>,
    /// `Autologin=`.
    pub autologin: bool,
    /// `SkeletonTrees=` and `mkosi.skeleton/`.
    pub skeleton_trees: Vec<TreeSource>,
    /// `ExtraTrees=` and `mkosi.extra/`.
    pub extra_trees: Vec<TreeSource>,
    /// `BaseTrees=`.
    pub base_trees: Vec<PathBuf>,
    /// `SourceDateEpoch=` (or `$SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<u64>,
    /// `WithDocs=` (mkosi's default: yes).
    pub with_docs: bool,
    /// `CleanPackageMetadata=`.
    pub clean_package_metadata: Feature,
    /// `Locale=`.
    pub locale: Option<String>,
    /// `LocaleMessages=`.
    pub locale_messages: Option<String>,
    /// `Keymap=`.
    pub keymap: Option<String>,
    /// `Timezone=`.
    pub timezone: Option<String>,
    /// `RootShell=`.
    pub root_shell: Option<String>,
}

impl Default for ContentSettings {
    fn default() -> Self {
        ContentSettings {
            packages: Vec::new(),
            remove_packages: Vec::new(),
            remove_files: Vec::new(),
            hostname: None,
            bootable: Feature::Auto,
            bootloader: Bootloader::SystemdBoot,
            kernel_command_line: Vec::new(),
            kernel_modules_include: Vec::new(),
            kernel_modules_exclude: Vec::new(),
            kernel_modules_include_host: false,
            kernel_modules: Vec::new(),
            firmware_files: Vec::new(),
            firmware_include: Vec::new(),
            firmware_exclude: Vec::new(),
            root_password: None,
            autologin: false,
            skeleton_trees: Vec::new(),
            extra_trees: Vec::new(),
            base_trees: Vec::new(),
            source_date_epoch: None,
            with_docs: true,
            clean_package_metadata: Feature::Auto,
            locale: None,
            locale_messages: None,
            keymap: None,
            timezone: None,
            root_shell: None,
        }
    }
}

/// A `yes`/`no`/`auto` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Feature {
    #[default]
    Auto,
    Enabled,
    Disabled,
}

impl Feature {
    /// The value as mkosi spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Auto => "auto",
            Feature::Enabled => "enabled",
            Feature::Disabled => "disabled",
        }
    }
}

/// `Bootloader=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Bootloader {
    None,
    Uki,
    #[default]
    SystemdBoot,
    Grub,
    UkiSigned,
    SystemdBootSigned,
    GrubSigned,
}

impl Bootloader {
    /// Every bootloader in mkosi's spelling, in mkosi's order.
    pub const ALL: [Bootloader; 7] = [
        Bootloader::None,
        Bootloader::Uki,
        Bootloader::SystemdBoot,
        Bootloader::Grub,
        Bootloader::UkiSigned,
        Bootloader::SystemdBootSigned,
        Bootloader::GrubSigned,
    ];

    /// The value as mkosi spells it in `Bootloader=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bootloader::None => "none",
            Bootloader::Uki => "uki",
            Bootloader::SystemdBoot => "systemd-boot",
            Bootloader::Grub => "grub",
            Bootloader::UkiSigned => "uki-signed",
            Bootloader::SystemdBootSigned => "systemd-boot-signed",
            Bootloader::GrubSigned => "grub-signed",
        }
    }

    /// Parses mkosi's spelling.
    pub fn from_mkosi(value: &str) -> Option<Bootloader> {
        Bootloader::ALL.into_iter().find(|b| b.as_str() == value)
    }
}

/// The root password: as given, without the `hashed:` prefix, which sets `hashed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootPassword {
    pub value: String,
    pub hashed: bool,
}

/// A tree copied into the image: `SOURCE[:TARGET]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeSource {
    /// Directory or archive: relative to the project directory when inside it, else absolute.
    pub source: PathBuf,
    /// Where in the image it goes (absolute; `/` when unset).
    pub target: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationSettings {
    /// `SecureBoot=`.
    pub secure_boot: bool,
    /// `SecureBootKey=` (or `mkosi.key`): a path, or a key reference such as a PKCS#11 URI.
    pub secure_boot_key: Option<PathBuf>,
    /// `SecureBootKeySource=`: where the key is read from (`file` unless an OpenSSL engine or
    /// provider holds it).
    pub secure_boot_key_source: KeySource,
    /// `SecureBootCertificate=` (or `mkosi.crt`).
    pub secure_boot_certificate: Option<PathBuf>,
    /// `SecureBootCertificateSource=`.
    pub secure_boot_certificate_source: CertificateSource,
    /// `SecureBootSignTool=`: the program that signs PE binaries.
    pub secure_boot_sign_tool: SecureBootSignTool,
}

/// `SecureBootKeySource=`: `file`, `engine:ENGINE` or `provider:PROVIDER`, as mkosi spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeySource {
    /// The key is a file (a path, or a name the signing tool resolves).
    #[default]
    File,
    /// An OpenSSL engine loads the key (`engine:pkcs11`).
    Engine(String),
    /// An OpenSSL provider loads the key (`provider:tpm2`).
    Provider(String),
}

impl KeySource {
    /// Parses mkosi's spelling (`TYPE[:SOURCE]`); `None` for an unknown type.
    pub fn from_mkosi(value: &str) -> Option<KeySource> {
        let (kind, source) = value.split_once(':').unwrap_or((value, ""));
        match kind {
            "" | "file" => Some(KeySource::File),
            "engine" => Some(KeySource::Engine(source.to_string())),
            "provider" => Some(KeySource::Provider(source.to_string())),
            _ => None,
        }
    }

    /// The value as mkosi prints it (`file`, `engine:pkcs11`).
    pub fn to_mkosi(&self) -> String {
        match self {
            KeySource::File => "file".to_string(),
            KeySource::Engine(source) => mkosi_source("engine", source),
            KeySource::Provider(source) => mkosi_source("provider", source),
        }
    }
}

/// `SecureBootCertificateSource=`: `file` or `provider:PROVIDER`, as mkosi spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateSource {
    #[default]
    File,
    /// An OpenSSL provider loads the certificate.
    Provider(String),
}

impl CertificateSource {
    /// Parses mkosi's spelling (`TYPE[:SOURCE]`); `None` for an unknown type.
    pub fn from_mkosi(value: &str) -> Option<CertificateSource> {
        let (kind, source) = value.split_once(':').unwrap_or((value, ""));
        match kind {
            "" | "file" => Some(CertificateSource::File),
            "provider" => Some(CertificateSource::Provider(source.to_string())),
            _ => None,
        }
    }

    /// The value as mkosi prints it (`file`, `provider:pkcs11`).
    pub fn to_mkosi(&self) -> String {
        match self {
            CertificateSource::File => "file".to_string(),
            CertificateSource::Provider(source) => mkosi_source("provider", source),
        }
    }
}

fn mkosi_source(kind: &str, source: &str) -> String {
    if source.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}:{source}")
    }
}

/// `SecureBootSignTool=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SecureBootSignTool {
    /// mkosi: systemd-sbsign when installed, else sbsign. kiln signs keys held in files
    /// itself and uses those tools only for keys an engine or provider holds.
    #[default]
    Auto,
    Sbsign,
    SystemdSbsign,
}

impl SecureBootSignTool {
    /// Every value in mkosi's spelling.
    pub const ALL: [SecureBootSignTool; 3] = [
        SecureBootSignTool::Auto,
        SecureBootSignTool::Sbsign,
        SecureBootSignTool::SystemdSbsign,
    ];

    /// The value as mkosi spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecureBootSignTool::Auto => "auto",
            SecureBootSignTool::Sbsign => "sbsign",
            SecureBootSignTool::SystemdSbsign => "systemd-sbsign",
        }
    }

    /// Parses mkosi's spelling.
    pub fn from_mkosi(value: &str) -> Option<SecureBootSignTool> {
        SecureBootSignTool::ALL
            .into_iter()
            .find(|tool| tool.as_str() == value)
    }
}

/// Scripts in mkosi's order; a `.chroot` suffix means the script runs inside the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Scripts {
    /// `mkosi.prepare[.chroot]`, `mkosi.prepare.d/*` and `PrepareScripts=`.
    pub prepare: Vec<PathBuf>,
    /// `mkosi.postinst[.chroot]`, `mkosi.postinst.d/*` and `PostInstallationScripts=`.
    pub postinst: Vec<PathBuf>,
    /// `mkosi.finalize[.chroot]`, `mkosi.finalize.d/*` and `FinalizeScripts=`.
    pub finalize: Vec<PathBuf>,
    /// `MakeScriptsExecutable=`: run scripts that are not executable (mkosi would chmod them).
    #[serde(default)]
    pub make_executable: bool,
}

impl Recipe {
    /// The image's name: `ImageId=`, or `image` when unset.
    pub fn image_name(&self) -> String {
        self.output
            .image_id
            .clone()
            .unwrap_or_else(|| "image".to_string())
    }

    /// The directory outputs are written to: `OutputDirectory=`, else `mkosi.output` of the
    /// project, made absolute against `project_dir`.
    pub fn output_dir(&self, project_dir: &std::path::Path) -> PathBuf {
        crate::paths::absolute(
            project_dir,
            self.output
                .output_directory
                .as_deref()
                .unwrap_or(std::path::Path::new("mkosi.output")),
        )
    }

    /// The output's base name: `Output=` when set (the loader always resolves it), else mkosi's
    /// default, `<ImageId>_<ImageVersion>` or `<ImageId>` (`image` standing in for an unset
    /// `ImageId=`).
    pub fn output_name(&self) -> String {
        if let Some(output) = &self.output.output {
            return output.clone();
        }
        match &self.output.image_version {
            Some(version) => format!("{}_{version}", self.image_name()),
            None => self.image_name(),
        }
    }
}
