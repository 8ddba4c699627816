//! The kernel module and firmware pruning stage, with mkosi's semantics (its `kmod.py`, run
//! from `run_depmod` after the presets and before RemovePackages, RemoveFiles and finalize).
//!
//! For each kernel directory `usr/lib/modules/<kver>` (one that holds more than `updates/`),
//! in version order, the stage:
//!
//! 1. selects modules by the rules ([`rules`]) and follows their dependencies, reading each
//!    module's `.modinfo` itself, in parallel ([`select`], [`modinfo`]);
//! 2. keeps the firmware the kept modules name, plus what the firmware rules add, plus
//!    microcode ([`firmware`]);
//! 3. removes every other module file and firmware entry from the manifest (directories of
//!    removed modules stay, as mkosi leaves them);
//! 4. runs `depmod` on a checkout of just that kernel's modules and puts the indexes it writes
//!    back ([`depmod`]).
//!
//! Kernels are handled one after the other on the same tree, as mkosi does, so with two
//! kernels the firmware that stays is what both need.
//!
//! The host's loaded modules (`/proc/modules`) are an input of the stage's key when the rules
//! use them. A host without `/proc/modules` (a container, a kernel without modules) contributes
//! none, and the stage says so in its log.
//!
//! ```no_run
//! # use std::sync::Arc;
//! use kiln_stages::modules::{ModuleRules, ModulesStage};
//! let rules = ModuleRules {
//!     kernel_modules_exclude: vec![".*".into()],
//!     kernel_modules_include: vec!["fs/".into(), "virtio".into()],
//!     ..ModuleRules::default()
//! };
//! let host = Arc::new(kiln_stages::host::RealHost::new());
//! let stage = ModulesStage::new("presets", rules, host);
//! ```

pub mod depmod;
mod error;
mod explain;
mod firmware;
pub mod modinfo;
pub mod rules;
mod select;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::{Digest, EntryKind, Manifest, OutputKind, Store};
use kiln_engine::{Input, Resolution, ResolveContext, Stage, StageContext, StageError};

pub use error::ModulesError;
pub use explain::{
    ModulesExplainer, RuleChange, count_module_changes, explain_change, rule_changes,
};
pub use rules::{CompiledRules, ModuleRules, RuleError, Setting};
pub use select::{KernelInventory, MissingDependency, Selection};

use crate::host::Host;
use firmware::{FIRMWARE_DIR, Walker};

/// Where kernels live in the image.
pub const MODULES_DIR: &str = "usr/lib/modules";

/// The value input holding the host's loaded modules, when the rules use them.
pub const HOST_MODULES_INPUT: &str = "host-modules";

/// The value recorded for the host's modules when the host has no `/proc/modules`.
pub const NO_HOST_MODULES: &str = "(none: the host has no /proc/modules)";

/// Where the host lists its loaded modules.
pub const PROC_MODULES: &str = "/proc/modules";

/// Whether a file name is a kernel module's (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`).
pub fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.gz", ".ko.xz", ".ko.zst"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// The modules stage: see the module documentation.
pub struct ModulesStage {
    pub name: String,
    /// The stage whose tree is pruned.
    pub base: String,
    pub rules: ModuleRules,
    pub host: Arc<dyn Host>,
    /// Where the host's loaded modules are read from ([`PROC_MODULES`]).
    pub loaded_modules: PathBuf,
}

impl ModulesStage {
    pub fn new(base: impl Into<String>, rules: ModuleRules, host: Arc<dyn Host>) -> ModulesStage {
        ModulesStage {
            name: "modules".to_string(),
            base: base.into(),
            rules,
            host,
            loaded_modules: PathBuf::from(PROC_MODULES),
        }
    }
}

impl Stage for ModulesStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "modules"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = vec![Input::stage("tree", &self.base)];
        for setting in Setting::ALL {
            inputs.push(Input::value(setting.name(), self.rules.value(setting)));
        }
        if self.rules.uses_default() {
            inputs.push(Input::value("Architecture", &self.rules.architecture));
        }
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn resolve(&self, _ctx: &ResolveContext<'_>) -> Result<Resolution, StageError> {
        if !self.rules.uses_host() {
            return Ok(Resolution::none());
        }
        Ok(match loaded_modules(&self.loaded_modules) {
            Some(names) => {
                Resolution::inputs(vec![Input::value(HOST_MODULES_INPUT, names.join(" "))])
            }
            None => Resolution::inputs(vec![Input::value(HOST_MODULES_INPUT, NO_HOST_MODULES)])
                .with_note(format!(
                    "{} does not exist on this host, so the host contributes no modules",
                    self.loaded_modules.display()
                )),
        })
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let base_id = ctx.input("tree")?;
        let host_modules = if self.rules.uses_host() {
            let value = ctx.value(HOST_MODULES_INPUT)?;
            if value == NO_HOST_MODULES {
                Vec::new()
            } else {
                value.split_whitespace().map(str::to_string).collect()
            }
        } else {
            Vec::new()
        };
        let compiled = self
            .rules
            .compile(&host_modules)
            .map_err(|err| StageError::failed(ModulesError::from(err)))?;
        let mut tree = ctx.store.manifest(&base_id)?;
        let outcome = prune_tree(ctx.store, &mut tree, &compiled, &mut |line| match line
            .strip_prefix("warning: ")
        {
            Some(warning) => ctx.log.warning(warning),
            None => ctx.log.note(line),
        })
        .map_err(StageError::failed)?;
        let Some(reports) = outcome else {
            return Ok(base_id);
        };
        if reports.is_empty() {
            return Ok(base_id);
        }
        let depmod = crate::host::find_tool("depmod")
            .ok_or_else(|| StageError::failed(ModulesError::DepmodMissing))?;
        for report in &reports {
            let scratch = ctx.scratch.join(format!("depmod-{}", report.kver));
            depmod::reindex(
                ctx.store,
                &mut tree,
                &report.kver,
                &depmod,
                self.host.as_ref(),
                &scratch,
                &mut |line| ctx.log.line(line),
            )
            .map_err(StageError::failed)?;
        }
        Ok(ctx.store.put_manifest(&tree)?)
    }
}

/// What pruning did to one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelReport {
    pub kver: String,
    /// Module files before and after.
    pub modules_before: usize,
    pub modules_kept: usize,
    /// Firmware files and symlinks left below `/usr/lib/firmware`.
    pub firmware_kept: usize,
    /// The kept module files, relative to the kernel's directory.
    pub kept: BTreeSet<String>,
    pub missing: Vec<MissingDependency>,
}

impl std::fmt::Display for KernelReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: kept {} of {} modules, {} firmware files",
            self.kver, self.modules_kept, self.modules_before, self.firmware_kept
        )
    }
}

/// Prunes every kernel of `tree` (manifest only: no depmod). Returns `None` when the rules
/// ask for nothing (mkosi leaves the tree alone), else one report per kernel. Each kernel's
/// warnings and summary go to `log`.
pub fn prune_tree(
    store: &Store,
    tree: &mut Manifest,
    rules: &CompiledRules,
    log: &mut dyn FnMut(&str),
) -> Result<Option<Vec<KernelReport>>, ModulesError> {
    if !rules.has_module_rules() && !rules.has_firmware_rules() {
        return Ok(None);
    }
    let mut reports = Vec::new();
    for kver in kernels(tree) {
        let report = prune_kernel(store, tree, &kver, rules)?;
        for missing in &report.missing {
            log(&format!("warning: {kver}: {missing}"));
        }
        log(&report.to_string());
        reports.push(report);
    }
    Ok(Some(reports))
}

/// The kernel versions of `tree`: directories below [`MODULES_DIR`] that hold something other
/// than just `updates/` (mkosi's `is_valid_kdir`), sorted.
pub fn kernels(tree: &Manifest) -> Vec<String> {
    let prefix = format!("{MODULES_DIR}/");
    let mut kernels: Vec<String> = Vec::new();
    for entry in tree.subtree(MODULES_DIR).skip(1) {
        let Some(rest) = entry.path.strip_prefix(&prefix) else {
            continue;
        };
        if rest.contains('/') || !entry.kind.is_dir() {
            continue;
        }
        let children: Vec<&str> = tree
            .subtree(&entry.path)
            .skip(1)
            .map(|child| &child.path[entry.path.len() + 1..])
            .filter(|child| !child.contains('/'))
            .collect();
        if !children.is_empty() && children != ["updates"] {
            kernels.push(rest.to_string());
        }
    }
    kernels
}

/// The module files of one kernel, relative to its directory, in path order.
pub fn module_files(tree: &Manifest, kver: &str) -> Vec<String> {
    let kdir = format!("{MODULES_DIR}/{kver}");
    tree.subtree(&kdir)
        .skip(1)
        .filter(|entry| {
            matches!(
                entry.kind,
                EntryKind::File { .. } | EntryKind::Symlink { .. }
            )
        })
        .filter(|entry| is_module_file(entry.path.rsplit('/').next().unwrap_or_default()))
        .map(|entry| entry.path[kdir.len() + 1..].to_string())
        .collect()
}

/// What the selection needs to know about one kernel of `tree`.
pub fn inventory(
    store: &Store,
    tree: &Manifest,
    kver: &str,
) -> Result<KernelInventory, ModulesError> {
    let kdir = format!("{MODULES_DIR}/{kver}");
    let mut inventory = KernelInventory {
        modules: module_files(tree, kver),
        has_firmware: tree.subtree(FIRMWARE_DIR).nth(1).is_some()
            && tree.get(FIRMWARE_DIR).is_some_and(|e| e.kind.is_dir()),
        ..KernelInventory::default()
    };
    let walker = Walker::new(tree);
    let read = |name: &str| -> Result<Option<Vec<u8>>, ModulesError> {
        let path = format!("{kdir}/{name}");
        let Some(target) = walker.walk(&path).target else {
            return Ok(None);
        };
        match tree.get(&target).and_then(|entry| entry.blob()) {
            Some(blob) => Ok(Some(store.read_blob(blob)?)),
            None => Ok(None),
        }
    };
    if let Some(bytes) = read("modules.builtin")? {
        inventory.set_builtin(&String::from_utf8_lossy(&bytes));
    }
    if let Some(bytes) = read("modules.builtin.modinfo")? {
        inventory.set_builtin_info(&bytes);
    }
    if let Some(bytes) = read("modules.alias")? {
        inventory.set_aliases(&String::from_utf8_lossy(&bytes));
    }
    Ok(inventory)
}

/// Prunes one kernel's modules and the firmware in `tree` (manifest only).
pub fn prune_kernel(
    store: &Store,
    tree: &mut Manifest,
    kver: &str,
    rules: &CompiledRules,
) -> Result<KernelReport, ModulesError> {
    let kdir = format!("{MODULES_DIR}/{kver}");
    let inventory = inventory(store, tree, kver)?;
    let (selection, firmware_required) = {
        let walker = Walker::new(tree);
        let blob_of = |rel: &str| {
            let path = format!("{kdir}/{rel}");
            match tree.get(&path)?.blob() {
                Some(blob) => Some(*blob),
                // A symlink: follow it inside the image.
                None => tree.get(&walker.walk(&path).target?)?.blob().copied(),
            }
        };
        let selection = select::select(&inventory, rules, |rel| match blob_of(rel) {
            Some(blob) => match store.blob_path(&blob) {
                Ok(path) => modinfo::read_module_file(&path),
                Err(e) => Err(modinfo::ModInfoError::Io(std::io::Error::other(e))),
            },
            None => Err(modinfo::ModInfoError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "it is a symlink that leads nowhere in the image",
            ))),
        })
        .map_err(|unreadable| ModulesError::Unreadable {
            kver: kver.to_string(),
            module: unreadable.module,
            source: unreadable.error,
        })?;
        let firmware_required = firmware::required_firmware(tree, &selection.firmware, rules);
        (selection, firmware_required)
    };

    // mkosi's removal: a module symlink takes its target along.
    let mut doomed: HashSet<String> = HashSet::new();
    {
        let walker = Walker::new(tree);
        for rel in inventory
            .modules
            .iter()
            .filter(|rel| !selection.modules.contains(*rel))
        {
            let path = format!("{kdir}/{rel}");
            if let Some(EntryKind::Symlink { .. }) = tree.get(&path).map(|e| &e.kind)
                && let Some(target) = walker.walk(&path).target
                && tree.get(&target).is_some_and(|e| !e.kind.is_dir())
            {
                doomed.insert(target);
            }
            doomed.insert(path);
        }
    }
    tree.retain(|entry| !doomed.contains(&entry.path));
    firmware::prune_firmware(tree, &firmware_required);
    let firmware_kept = tree
        .subtree(FIRMWARE_DIR)
        .skip(1)
        .filter(|entry| !entry.kind.is_dir())
        .count();
    Ok(KernelReport {
        kver: kver.to_string(),
        modules_before: inventory.modules.len(),
        modules_kept: selection.modules.len(),
        firmware_kept,
        kept: selection.modules,
        missing: selection.missing,
    })
}

/// The host's loaded modules from `path` (`/proc/modules`), `_` written `-`, in the order
/// listed; `None` when the file does not exist or cannot be read.
pub fn loaded_modules(path: &std::path::Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(rules::normalize_module_name)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_file_names() {
        assert!(is_module_file("ext4.ko"));
        assert!(is_module_file("ext4.ko.zst"));
        assert!(!is_module_file("ext4.ko.bz2"));
        assert!(!is_module_file("modules.order"));
    }

    #[test]
    fn loaded_modules_are_normalized_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("modules");
        std::fs::write(
            &path,
            "virtio_net 61440 0 - Live 0x0\nnf_tables 307200 1 nft_chain_nat, Live 0x0\n",
        )
        .unwrap();
        assert_eq!(
            loaded_modules(&path),
            Some(vec!["virtio-net".to_string(), "nf-tables".to_string()])
        );
        assert_eq!(loaded_modules(&dir.path().join("none")), None);
    }
}
