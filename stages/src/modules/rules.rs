//! The rules that choose kernel modules and firmware, with mkosi's semantics (its `kmod.py`).
//!
//! mkosi keeps two lists per kind: an *include* list of regexes (`KernelModulesInclude=`, written
//! `re:` internally) and globs (`KernelModules=`), and an *exclude* list of regexes only
//! (`KernelModulesExclude=`). The same holds for firmware (`FirmwareInclude=`, `FirmwareFiles=`,
//! `FirmwareExclude=`). [`ModuleRules::compile`] turns the recipe's settings into those lists:
//!
//! - `KernelModulesIncludeHost=yes` puts the host's loaded modules (from `/proc/modules`, with
//!   `_` written `-`) first; `host` in a list puts them there once; `default` puts mkosi-initrd's
//!   own `KernelModules=` list there. Duplicates are dropped, the first place kept.
//! - The model keeps `KernelModulesInclude=` and `KernelModules=` apart while mkosi interleaves
//!   them in the order they are written: kiln takes the legacy list first. Only the place of
//!   `host` and `default` relative to a `-` glob can tell the difference.
//! - Regexes are searched unanchored (Python's `re.search`) in the module's path below its
//!   first directory (`kernel/`, `updates/`): `usb/` also matches `drivers/media/usb/`, `.*`
//!   matches every module. Globs follow mkosi's `globs_match_filename`: evaluated last to first,
//!   the first that matches decides, `-` excludes, a trailing `/` means everything below, a
//!   leading `/` is anchored at `kernel/` or at the kernel's directory, a glob with a `/` matches
//!   at a path element boundary, any other glob matches the file name. Globs match like Python's
//!   `fnmatch`, as everywhere in mkosi's configuration ([`kiln_recipe::fnmatch`]).
//!
//! Regexes are compiled by the `regex` crate. Where Python's `re` differs, a rule either fails
//! to compile here ([`RuleError::BadRegex`]: look-around `(?=` `(?!` `(?<=`, back-references
//! `\1`, `\Z`, possessive and atomic groups, a lone `{`) or means the same for module paths
//! (classes such as `\d` and `\w` are Unicode-aware in both).

use kiln_recipe::fnmatch;
use regex::{Regex, RegexSet};

/// mkosi-initrd's `KernelModules=` (mkosi's `resources/mkosi-initrd/mkosi.conf`), what `default`
/// stands for.
const DEFAULT_MODULES: &[&str] = &[
    "ahci",
    "amd_atl",
    "amd_ctl",
    "amd-pmc",
    "amd64_edac",
    "atkbd",
    "autofs4",
    "binfmt_misc",
    "btrfs",
    "cdrom",
    "cfg80211",
    "configfs",
    "crc-ccitt",
    "dm-crypt",
    "dm-integrity",
    "dm-mod",
    "dm-multipath",
    "dm-raid",
    "dm-verity",
    "dmi-sysfs",
    "edac_mce_amd",
    "efi-pstore",
    "efivarfs",
    "erofs",
    "evdev",
    "ext4",
    "firmware_attributes_class",
    "hid-generic",
    "i2c-algo-bit",
    "i2c_hid_acpi",
    "i2c-mux",
    "i2c-smbus",
    "i8042",
    "intel_pmc_ssram_telemetry",
    "intel_rapl_common",
    "intel-uncore-frequency-common",
    "intel-vsec",
    "kvm",
    "libphy",
    "loop",
    "mdio_devres",
    "mei",
    "nvme",
    "nvmet-tcp",
    "overlay",
    "parport",
    "platform_profile",
    "pmt_telemetry",
    "qemu_fw_cfg",
    "raid[0-9]*",
    "rapl",
    "scsi_mod",
    "sd_mod",
    "sr_mod",
    "serio",
    "sg",
    "skx_edac_common",
    "squashfs",
    "thunderbolt_net",
    "tpm_tis",
    "tpm_vtpm_proxy",
    "typec_ucsi",
    "ucsi_acpi",
    "usbhid",
    "usb-storage",
    "vfat",
    "video",
    "virtio_balloon",
    "virtio_blk",
    "virtio_console",
    "virtio_dma_buf",
    "virtio_mmio",
    "virtio_net",
    "virtio_pci",
    "virtio_scsi",
    "virtio-rng",
    "virtiofs",
    "vmd",
    "vmw_vsock_virtio_transport",
    "vsock",
    "watchdog",
    "wmi",
    "wmi-bmof",
    "x_tables",
    "xfs",
    "xhci-pci-renesas",
    "/fs/nls/",
    "crypto/",
    "-/drivers/crypto/",
    "ccp_crypto",
    "zram",
    "nfnetlink",
];

/// What mkosi-initrd adds on `Architecture=arm64` (its `mkosi.conf.d/arm.conf`).
const DEFAULT_MODULES_ARM64: &[&str] = &["/drivers/mmc/host/", "brcmutil", "udc-core"];

/// The recipe's module and firmware settings, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleRules {
    /// `KernelModulesInclude=`: regexes, or the words `host` and `default`.
    pub kernel_modules_include: Vec<String>,
    /// `KernelModulesExclude=`: regexes.
    pub kernel_modules_exclude: Vec<String>,
    /// `KernelModulesIncludeHost=`.
    pub kernel_modules_include_host: bool,
    /// `KernelModules=`: globs (`-` excludes), or the words `host` and `default`.
    pub kernel_modules: Vec<String>,
    /// `FirmwareInclude=`: regexes.
    pub firmware_include: Vec<String>,
    /// `FirmwareExclude=`: regexes.
    pub firmware_exclude: Vec<String>,
    /// `FirmwareFiles=`: globs (`-` excludes).
    pub firmware_files: Vec<String>,
    /// `Architecture=` in mkosi's spelling (`x86-64`, `arm64`): what `default` stands for.
    pub architecture: String,
}

/// One setting of [`ModuleRules`], by its mkosi name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Setting {
    KernelModulesInclude,
    KernelModulesExclude,
    KernelModulesIncludeHost,
    KernelModules,
    FirmwareInclude,
    FirmwareExclude,
    FirmwareFiles,
}

impl Setting {
    pub const ALL: [Setting; 7] = [
        Setting::KernelModulesInclude,
        Setting::KernelModulesExclude,
        Setting::KernelModulesIncludeHost,
        Setting::KernelModules,
        Setting::FirmwareInclude,
        Setting::FirmwareExclude,
        Setting::FirmwareFiles,
    ];

    /// The name mkosi reads (and the name of the stage's value input).
    pub fn name(self) -> &'static str {
        match self {
            Setting::KernelModulesInclude => "KernelModulesInclude",
            Setting::KernelModulesExclude => "KernelModulesExclude",
            Setting::KernelModulesIncludeHost => "KernelModulesIncludeHost",
            Setting::KernelModules => "KernelModules",
            Setting::FirmwareInclude => "FirmwareInclude",
            Setting::FirmwareExclude => "FirmwareExclude",
            Setting::FirmwareFiles => "FirmwareFiles",
        }
    }
}

/// A rule that cannot be used, with the setting and the rule's text so the caller can point at
/// the recipe line that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum RuleError {
    #[error("`{rule}` in {setting}= is not a regex kiln can use: {message}")]
    #[diagnostic(help(
        "kiln matches these rules with Rust's regex syntax, which has no look-around \
         (`(?=`, `(?!`), no back-references and no `\\Z`; rewrite the rule without them"
    ))]
    BadRegex {
        setting: &'static str,
        rule: String,
        message: String,
    },

    #[error("`{rule}` in {setting}= is not a glob kiln can use: {message}")]
    #[diagnostic(help("Shorten the glob or split it into several"))]
    BadGlob {
        setting: &'static str,
        rule: String,
        message: String,
    },

    #[error("`{rule}` in {setting}= is a word, not a regex")]
    #[diagnostic(help(
        "`host` and `default` belong in KernelModules= or KernelModulesInclude=; \
         mkosi itself refuses them in an exclude list"
    ))]
    WordInExclude { setting: &'static str, rule: String },
}

impl RuleError {
    /// The setting that holds the rule.
    pub fn setting(&self) -> &'static str {
        match self {
            RuleError::BadRegex { setting, .. }
            | RuleError::BadGlob { setting, .. }
            | RuleError::WordInExclude { setting, .. } => setting,
        }
    }

    /// The rule's text as written.
    pub fn rule(&self) -> &str {
        match self {
            RuleError::BadRegex { rule, .. }
            | RuleError::BadGlob { rule, .. }
            | RuleError::WordInExclude { rule, .. } => rule,
        }
    }
}

impl ModuleRules {
    /// Whether any rule is set: without one, mkosi leaves modules and firmware alone.
    pub fn is_empty(&self) -> bool {
        self.kernel_modules_include.is_empty()
            && self.kernel_modules_exclude.is_empty()
            && !self.kernel_modules_include_host
            && self.kernel_modules.is_empty()
            && self.firmware_include.is_empty()
            && self.firmware_exclude.is_empty()
            && self.firmware_files.is_empty()
    }

    /// Whether the host's loaded modules are part of the selection.
    pub fn uses_host(&self) -> bool {
        self.kernel_modules_include_host || self.module_includes().any(|rule| rule == "host")
    }

    /// Whether mkosi-initrd's default list is part of the selection.
    pub fn uses_default(&self) -> bool {
        self.module_includes().any(|rule| rule == "default")
    }

    fn module_includes(&self) -> impl Iterator<Item = &str> {
        self.kernel_modules_include
            .iter()
            .chain(&self.kernel_modules)
            .map(String::as_str)
    }

    /// A setting's value as the stage records it (entries separated by spaces: mkosi splits
    /// list settings on whitespace, so no entry holds one).
    pub fn value(&self, setting: Setting) -> String {
        match setting {
            Setting::KernelModulesInclude => self.kernel_modules_include.join(" "),
            Setting::KernelModulesExclude => self.kernel_modules_exclude.join(" "),
            Setting::KernelModulesIncludeHost => if self.kernel_modules_include_host {
                "yes"
            } else {
                "no"
            }
            .to_string(),
            Setting::KernelModules => self.kernel_modules.join(" "),
            Setting::FirmwareInclude => self.firmware_include.join(" "),
            Setting::FirmwareExclude => self.firmware_exclude.join(" "),
            Setting::FirmwareFiles => self.firmware_files.join(" "),
        }
    }

    /// The inverse of [`ModuleRules::value`]: sets `setting` from its recorded value.
    pub fn set_value(&mut self, setting: Setting, value: &str) {
        let list = || value.split_whitespace().map(str::to_string).collect();
        match setting {
            Setting::KernelModulesInclude => self.kernel_modules_include = list(),
            Setting::KernelModulesExclude => self.kernel_modules_exclude = list(),
            Setting::KernelModulesIncludeHost => self.kernel_modules_include_host = value == "yes",
            Setting::KernelModules => self.kernel_modules = list(),
            Setting::FirmwareInclude => self.firmware_include = list(),
            Setting::FirmwareExclude => self.firmware_exclude = list(),
            Setting::FirmwareFiles => self.firmware_files = list(),
        }
    }

    /// Compiles the rules. `host_modules` is the host's loaded modules (dashes for
    /// underscores), used where the rules ask for them.
    pub fn compile(&self, host_modules: &[String]) -> Result<CompiledRules, RuleError> {
        // mkosi's `finalize_kernel_modules_include`.
        let mut include: Vec<Rule> = Vec::new();
        let mut host_included = false;
        if self.kernel_modules_include_host {
            include.extend(host_modules.iter().cloned().map(Rule::Glob));
            host_included = true;
        }
        let legacy = self
            .kernel_modules_include
            .iter()
            .map(|rule| (Setting::KernelModulesInclude, rule, true));
        let globs = self
            .kernel_modules
            .iter()
            .map(|rule| (Setting::KernelModules, rule, false));
        for (setting, rule, is_regex) in legacy.chain(globs) {
            match rule.as_str() {
                "default" => include.extend(self.default_modules().map(Rule::Glob)),
                // A second `host` stays in the list as the glob `host`, as in mkosi.
                "host" if !host_included => {
                    include.extend(host_modules.iter().cloned().map(Rule::Glob));
                    host_included = true;
                }
                "host" => include.push(Rule::Glob(rule.clone())),
                _ if is_regex => include.push(Rule::Regex(setting, rule.clone())),
                // mkosi keeps both settings in one list, where `re:` marks a regex.
                _ => match rule.strip_prefix("re:") {
                    Some(regex) => include.push(Rule::Regex(setting, regex.to_string())),
                    None => include.push(Rule::Glob(rule.clone())),
                },
            }
        }
        let mut seen = std::collections::HashSet::new();
        include.retain(|rule| seen.insert(rule.clone()));

        let module_regexes: Vec<(&'static str, String)> = include
            .iter()
            .filter_map(|rule| match rule {
                Rule::Regex(setting, text) => Some((setting.name(), text.clone())),
                Rule::Glob(_) => None,
            })
            .collect();
        let module_globs: Vec<String> = include
            .iter()
            .filter_map(|rule| match rule {
                Rule::Glob(glob) => Some(normalize_module_glob(glob)),
                Rule::Regex(..) => None,
            })
            .collect();
        let module_excludes =
            exclude_regexes(Setting::KernelModulesExclude, &self.kernel_modules_exclude)?;

        // Firmware: `FirmwareInclude=` words stay globs, as mkosi's parser leaves them.
        // mkosi keeps both settings in one list, where `re:` marks a regex.
        let mut firmware_regexes: Vec<(&'static str, String)> = Vec::new();
        let mut firmware_globs: Vec<String> = Vec::new();
        for rule in &self.firmware_include {
            match rule.as_str() {
                "host" | "default" => firmware_globs.push(rule.clone()),
                _ => firmware_regexes.push((Setting::FirmwareInclude.name(), rule.clone())),
            }
        }
        for rule in &self.firmware_files {
            match rule.strip_prefix("re:") {
                Some(regex) => {
                    firmware_regexes.push((Setting::FirmwareFiles.name(), regex.to_string()))
                }
                None => firmware_globs.push(rule.clone()),
            }
        }
        let firmware_excludes = exclude_regexes(Setting::FirmwareExclude, &self.firmware_exclude)?;

        Ok(CompiledRules {
            module_include_regex: RegexRules::new(&module_regexes)?,
            module_include_globs: GlobRules::new(Setting::KernelModules.name(), &module_globs)?,
            module_exclude_regex: RegexRules::new(&module_excludes)?,
            has_module_include: !include.is_empty(),
            has_module_exclude: !self.kernel_modules_exclude.is_empty(),
            firmware_include_regex: RegexRules::new(&firmware_regexes)?,
            firmware_globs: GlobRules::new(Setting::FirmwareFiles.name(), &firmware_globs)?,
            firmware_exclude_regex: RegexRules::new(&firmware_excludes)?,
            has_firmware_include: !self.firmware_include.is_empty()
                || !self.firmware_files.is_empty(),
            has_firmware_exclude: !self.firmware_exclude.is_empty(),
        })
    }

    fn default_modules(&self) -> impl Iterator<Item = String> + '_ {
        let arm = if self.architecture == "arm64" {
            DEFAULT_MODULES_ARM64
        } else {
            &[]
        };
        DEFAULT_MODULES
            .iter()
            .chain(arm)
            .map(|rule| rule.to_string())
    }
}

/// An entry of mkosi's include list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Rule {
    Regex(Setting, String),
    Glob(String),
}

fn exclude_regexes(
    setting: Setting,
    rules: &[String],
) -> Result<Vec<(&'static str, String)>, RuleError> {
    rules
        .iter()
        .map(|rule| {
            if matches!(rule.as_str(), "host" | "default") {
                Err(RuleError::WordInExclude {
                    setting: setting.name(),
                    rule: rule.clone(),
                })
            } else {
                Ok((setting.name(), rule.clone()))
            }
        })
        .collect()
}

/// Rules ready to match, see the module's documentation.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    module_include_regex: RegexRules,
    module_include_globs: GlobRules,
    module_exclude_regex: RegexRules,
    has_module_include: bool,
    has_module_exclude: bool,
    firmware_include_regex: RegexRules,
    firmware_globs: GlobRules,
    firmware_exclude_regex: RegexRules,
    has_firmware_include: bool,
    has_firmware_exclude: bool,
}

impl CompiledRules {
    /// Whether the module rules select anything at all (mkosi's `modules_include or
    /// modules_exclude`).
    pub fn has_module_rules(&self) -> bool {
        self.has_module_include || self.has_module_exclude
    }

    /// mkosi's `filter_kernel_modules`: which of `modules` (paths relative to the kernel's
    /// directory, such as `kernel/fs/ext4/ext4.ko.zst`) pass the include and exclude rules.
    /// Returns the indices into `modules` of those that pass.
    pub fn filter_modules(&self, modules: &[String]) -> Vec<usize> {
        let included: Vec<bool> = modules
            .iter()
            .map(|rel| {
                self.has_module_include
                    && (self.module_include_regex.search(legacy_path(rel))
                        || self
                            .module_include_globs
                            .matches(&strip_module_suffix(&normalize_module_name(rel)), false))
            })
            .collect();
        (0..modules.len())
            .filter(|&i| {
                if self.has_module_exclude {
                    included[i] || !self.module_exclude_regex.search(legacy_path(&modules[i]))
                } else if self.has_module_include {
                    included[i]
                } else {
                    true
                }
            })
            .collect()
    }

    /// Whether firmware rules exist (mkosi's `filter_firmware` does anything).
    pub fn has_firmware_rules(&self) -> bool {
        self.has_firmware_include || self.has_firmware_exclude
    }

    /// Whether firmware a kept module needs (`rel` below `usr/lib/firmware`) stays: not
    /// matched by `FirmwareExclude=`, and not excluded by the last matching glob.
    pub fn keeps_needed_firmware(&self, rel: &str) -> bool {
        if !self.has_firmware_exclude && self.firmware_globs.is_empty() {
            return true;
        }
        !self.firmware_exclude_regex.search(rel)
            && self
                .firmware_globs
                .matches(strip_firmware_suffix(rel), true)
    }

    /// Whether a firmware file (`rel` below `usr/lib/firmware`) is included on its own by
    /// `FirmwareInclude=` or `FirmwareFiles=`.
    pub fn includes_firmware(&self, rel: &str) -> bool {
        self.has_firmware_include
            && (self.firmware_include_regex.search(rel)
                || self
                    .firmware_globs
                    .matches(strip_firmware_suffix(rel), false))
    }
}

/// A module path relative to the kernel's first subdirectory, as mkosi's legacy regexes see it
/// (`kernel/fs/ext4/ext4.ko` -> `fs/ext4/ext4.ko`; a module directly in the kernel's directory
/// is `.`, as Python's `Path()` prints).
pub fn legacy_path(rel: &str) -> &str {
    rel.split_once('/').map_or(".", |(_, rest)| rest)
}

/// mkosi's `normalize_module_name`: `_` becomes `-`.
pub fn normalize_module_name(name: &str) -> String {
    name.replace('_', "-")
}

/// mkosi's `normalize_module_glob`: `_` becomes `-` except inside `[...]`.
pub fn normalize_module_glob(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len());
    let mut rest = glob;
    while !rest.is_empty() {
        let open = rest.find('[').unwrap_or(rest.len());
        out.push_str(&rest[..open].replace('_', "-"));
        rest = &rest[open..];
        let close = rest.find(']').map_or(rest.len(), |i| i + 1);
        out.push_str(&rest[..close]);
        rest = &rest[close..];
    }
    out
}

/// The module name of a file: its name up to the first `.`, normalized
/// (`kernel/net/nf_tables.ko.zst` -> `nf-tables`).
pub fn module_name_of_path(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize_module_name(file.split('.').next().unwrap_or(file))
}

/// `…/ext4.ko.zst` -> `…/ext4` (mkosi strips `\.ko(\.(gz|xz|zst))?$`).
fn strip_module_suffix(name: &str) -> String {
    for suffix in [".ko.gz", ".ko.xz", ".ko.zst", ".ko"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    name.to_string()
}

/// `foo.bin.xz` -> `foo.bin` (mkosi strips `\.(gz|xz|zst)$`).
fn strip_firmware_suffix(name: &str) -> &str {
    [".gz", ".xz", ".zst"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Regexes searched unanchored, any one matching.
#[derive(Debug, Clone)]
struct RegexRules {
    set: Option<RegexSet>,
}

impl RegexRules {
    fn new(rules: &[(&'static str, String)]) -> Result<RegexRules, RuleError> {
        if rules.is_empty() {
            return Ok(RegexRules { set: None });
        }
        // Each rule alone first, so an error names the rule at fault.
        for (setting, rule) in rules {
            Regex::new(rule).map_err(|err| RuleError::BadRegex {
                setting,
                rule: rule.clone(),
                message: regex_message(&err),
            })?;
        }
        let set = RegexSet::new(rules.iter().map(|(_, rule)| rule)).map_err(|err| {
            RuleError::BadRegex {
                setting: rules[0].0,
                rule: rules
                    .iter()
                    .map(|(_, r)| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                message: regex_message(&err),
            }
        })?;
        Ok(RegexRules { set: Some(set) })
    }

    fn search(&self, text: &str) -> bool {
        self.set.as_ref().is_some_and(|set| set.is_match(text))
    }
}

/// The last line of a regex error (the others repeat the pattern with a caret).
fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find(|line| line.trim_start().starts_with("error:"))
        .map(|line| {
            line.trim_start()
                .trim_start_matches("error:")
                .trim()
                .to_string()
        })
        .unwrap_or(text)
}

/// mkosi's `globs_match_filename` over a list of globs.
#[derive(Debug, Clone)]
struct GlobRules {
    negative: Vec<bool>,
    /// Patterns matched against `/` + the whole name, with the glob each comes from.
    whole: RegexSet,
    whole_owner: Vec<usize>,
    /// Patterns matched against the last path element.
    base: RegexSet,
    base_owner: Vec<usize>,
}

impl GlobRules {
    fn new(setting: &'static str, globs: &[String]) -> Result<GlobRules, RuleError> {
        let mut negative = Vec::new();
        let (mut whole, mut whole_owner) = (Vec::new(), Vec::new());
        let (mut base, mut base_owner) = (Vec::new(), Vec::new());
        for (index, glob) in globs.iter().enumerate() {
            let (is_negative, mut glob) = match glob.strip_prefix('-') {
                Some(rest) => (true, rest.to_string()),
                None => (false, glob.clone()),
            };
            negative.push(is_negative);
            if glob.ends_with('/') {
                glob.push('*');
            }
            let mut add_whole = |pattern: String| {
                if let Some(regex) = fnmatch::translate(&pattern) {
                    whole.push(regex);
                    whole_owner.push(index);
                }
            };
            if glob.starts_with('/') {
                add_whole(format!("/kernel{glob}"));
                add_whole(glob.clone());
            }
            if glob.contains('/') {
                add_whole(format!("*/{glob}"));
            }
            if let Some(regex) = fnmatch::translate(&glob) {
                base.push(regex);
                base_owner.push(index);
            }
        }
        // `fnmatch::translate` only emits valid syntax; a failure here is a glob too large.
        let build = |patterns: Vec<String>, owners: &[usize]| {
            RegexSet::new(&patterns).map_err(|err| {
                let culprit = patterns
                    .iter()
                    .position(|pattern| Regex::new(pattern).is_err())
                    .map_or(0, |index| owners[index]);
                RuleError::BadGlob {
                    setting,
                    rule: globs.get(culprit).cloned().unwrap_or_default(),
                    message: regex_message(&err),
                }
            })
        };
        Ok(GlobRules {
            negative,
            whole: build(whole, &whole_owner)?,
            whole_owner,
            base: build(base, &base_owner)?,
            base_owner,
        })
    }

    fn is_empty(&self) -> bool {
        self.negative.is_empty()
    }

    /// The verdict of the last glob that matches `name`, or `default` when none does.
    fn matches(&self, name: &str, default: bool) -> bool {
        if self.negative.is_empty() {
            return default;
        }
        let rooted = format!("/{name}");
        let basename = name.rsplit('/').next().unwrap_or(name);
        let last_whole = self
            .whole
            .matches(&rooted)
            .iter()
            .map(|i| self.whole_owner[i])
            .max();
        let last_base = self
            .base
            .matches(basename)
            .iter()
            .map(|i| self.base_owner[i])
            .max();
        match last_whole.max(last_base) {
            Some(index) => !self.negative[index],
            None => default,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(rules: &ModuleRules, host: &[&str], modules: &[&str]) -> Vec<String> {
        let host: Vec<String> = host.iter().map(|s| s.to_string()).collect();
        let modules: Vec<String> = modules.iter().map(|s| s.to_string()).collect();
        let compiled = rules.compile(&host).unwrap();
        compiled
            .filter_modules(&modules)
            .into_iter()
            .map(|i| modules[i].clone())
            .collect()
    }

    const TREE: &[&str] = &[
        "kernel/drivers/media/usb/uvc/uvcvideo.ko",
        "kernel/drivers/usb/storage/usb-storage.ko",
        "kernel/drivers/block/virtio_blk.ko.zst",
        "kernel/drivers/md/dm-crypt.ko",
        "kernel/drivers/crypto/ccp/ccp-crypto.ko",
        "kernel/crypto/xts.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/net/wireless/cfg80211.ko",
        "updates/extra/nvidia.ko.xz",
    ];

    #[test]
    fn legacy_regexes_search_below_the_first_directory() {
        let rules = ModuleRules {
            kernel_modules_exclude: vec![".*".into()],
            kernel_modules_include: vec!["usb/".into(), "dm-.*".into(), "^fs/".into()],
            ..ModuleRules::default()
        };
        assert_eq!(
            names(&rules, &[], TREE),
            vec![
                "kernel/drivers/media/usb/uvc/uvcvideo.ko",
                "kernel/drivers/usb/storage/usb-storage.ko",
                "kernel/drivers/md/dm-crypt.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        // Without an exclude list, only the included modules stay.
        let rules = ModuleRules {
            kernel_modules_include: vec!["^extra/".into()],
            ..ModuleRules::default()
        };
        assert_eq!(names(&rules, &[], TREE), vec!["updates/extra/nvidia.ko.xz"]);
        // An exclude alone drops what it matches.
        let rules = ModuleRules {
            kernel_modules_exclude: vec!["wireless".into()],
            ..ModuleRules::default()
        };
        assert_eq!(names(&rules, &[], TREE).len(), TREE.len() - 1);
    }

    #[test]
    fn globs_last_match_wins_and_follow_mkosis_anchors() {
        let rules = ModuleRules {
            kernel_modules: vec![
                "crypto/".into(),
                "-/drivers/crypto/".into(),
                "virtio_blk".into(),
                "/fs/".into(),
                "usb/storage/*".into(),
            ],
            ..ModuleRules::default()
        };
        assert_eq!(
            names(&rules, &[], TREE),
            vec![
                "kernel/drivers/usb/storage/usb-storage.ko",
                "kernel/drivers/block/virtio_blk.ko.zst",
                "kernel/crypto/xts.ko",
                "kernel/fs/ext4/ext4.ko",
            ]
        );
        // A later positive glob overrides an earlier exclusion.
        let rules = ModuleRules {
            kernel_modules: vec!["-ccp_crypto".into(), "ccp-*".into()],
            ..ModuleRules::default()
        };
        assert_eq!(
            names(&rules, &[], TREE),
            vec!["kernel/drivers/crypto/ccp/ccp-crypto.ko"]
        );
    }

    #[test]
    fn host_modules_come_first_and_once() {
        let rules = ModuleRules {
            kernel_modules_exclude: vec![".*".into()],
            kernel_modules_include_host: true,
            kernel_modules: vec!["host".into(), "-ext4".into()],
            ..ModuleRules::default()
        };
        assert_eq!(
            names(&rules, &["ext4", "dm-crypt"], TREE),
            vec!["kernel/drivers/md/dm-crypt.ko"]
        );
        assert!(rules.uses_host());
        // `default` brings mkosi-initrd's list: `-/drivers/crypto/` drops what `crypto/` took
        // from below drivers/, and the later `ccp_crypto` takes that one back.
        let rules = ModuleRules {
            kernel_modules: vec!["default".into()],
            ..ModuleRules::default()
        };
        assert_eq!(
            names(&rules, &[], TREE),
            vec![
                "kernel/drivers/usb/storage/usb-storage.ko",
                "kernel/drivers/block/virtio_blk.ko.zst",
                "kernel/drivers/md/dm-crypt.ko",
                "kernel/drivers/crypto/ccp/ccp-crypto.ko",
                "kernel/crypto/xts.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/net/wireless/cfg80211.ko",
            ]
        );
    }

    #[test]
    fn a_re_prefix_in_kernel_modules_is_a_regex() {
        let rules = ModuleRules {
            kernel_modules: vec!["re:^net/wire".into()],
            ..ModuleRules::default()
        };
        assert_eq!(
            names(&rules, &[], TREE),
            vec!["kernel/net/wireless/cfg80211.ko"]
        );
    }

    #[test]
    fn a_bad_rule_names_its_setting_and_text() {
        let rules = ModuleRules {
            kernel_modules_include: vec!["fs/".into(), "(?!usb)".into()],
            ..ModuleRules::default()
        };
        let err = rules.compile(&[]).unwrap_err();
        assert_eq!(err.setting(), "KernelModulesInclude");
        assert_eq!(err.rule(), "(?!usb)");
        let rules = ModuleRules {
            kernel_modules_exclude: vec!["host".into()],
            ..ModuleRules::default()
        };
        assert!(matches!(
            rules.compile(&[]),
            Err(RuleError::WordInExclude { .. })
        ));
    }

    #[test]
    fn firmware_globs_exclude_needed_firmware_and_include_more() {
        let rules = ModuleRules {
            firmware_files: vec!["-iwlwifi-*".into(), "rtl_nic/".into()],
            firmware_exclude: vec!["^amdgpu/".into()],
            ..ModuleRules::default()
        };
        let compiled = rules.compile(&[]).unwrap();
        assert!(!compiled.keeps_needed_firmware("iwlwifi-9000-pu-b0-jf-b0-46.ucode.xz"));
        assert!(!compiled.keeps_needed_firmware("amdgpu/navi10_sos.bin"));
        assert!(compiled.keeps_needed_firmware("i915/kbl_dmc_ver1_04.bin"));
        assert!(compiled.includes_firmware("rtl_nic/rtl8168h-2.fw"));
        assert!(!compiled.includes_firmware("i915/kbl_dmc_ver1_04.bin"));
    }

    #[test]
    fn values_round_trip() {
        let rules = ModuleRules {
            kernel_modules_include: vec!["fs/".into(), "dm-.*".into()],
            kernel_modules_include_host: true,
            ..ModuleRules::default()
        };
        let mut back = ModuleRules::default();
        for setting in Setting::ALL {
            back.set_value(setting, &rules.value(setting));
        }
        assert_eq!(back, rules);
    }

    #[test]
    fn module_names_and_globs_normalize_underscores() {
        assert_eq!(
            module_name_of_path("kernel/net/nf_tables.ko.zst"),
            "nf-tables"
        );
        assert_eq!(normalize_module_glob("a_b[_]c_"), "a-b[_]c-");
        assert_eq!(legacy_path("kernel/fs/ext4/ext4.ko"), "fs/ext4/ext4.ko");
        assert_eq!(legacy_path("top.ko"), ".");
    }
}
