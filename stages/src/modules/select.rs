//! Which modules of one kernel stay: mkosi's `filter_kernel_modules` then
//! `resolve_module_dependencies`, with the modules' `.modinfo` read here, in parallel, instead
//! of by one `modinfo` process per batch.
//!
//! Starting from every built-in module and every module the rules pass, dependencies are
//! followed level by level: `depends=` and the modules of `softdep=` (`pre:` and `post:`). A
//! dependency that names no module file and no built-in module is a [`MissingDependency`]
//! (mkosi warns and goes on; so does kiln). Built-in modules satisfy dependencies and their
//! own soft dependencies and firmware count, from `modules.builtin.modinfo`.
//!
//! One difference from mkosi is deliberate: mkosi parses `modinfo --null`'s `softdep=pre: x`
//! at its first `:`, so it never sees a soft dependency; kiln follows them, as kmod's own
//! `modprobe` does, resolving the aliases they often name (`crypto-crc32c`) through the
//! kernel's `modules.alias`. A soft dependency nothing provides is skipped silently, as modprobe
//! skips it; a missing `depends=` is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rayon::prelude::*;

use super::modinfo::{ModInfo, ModInfoError};
use super::rules::{CompiledRules, module_name_of_path, normalize_module_name};

/// What one kernel's directory holds, as the selection sees it.
#[derive(Debug, Clone, Default)]
pub struct KernelInventory {
    /// Every module file (`*.ko`, `*.ko.gz`, `*.ko.xz`, `*.ko.zst`), relative to the kernel's
    /// directory, sorted.
    pub modules: Vec<String>,
    /// The built-in modules' names (from `modules.builtin`, normalized).
    pub builtin: BTreeSet<String>,
    /// What the built-in modules declare (from `modules.builtin.modinfo`, by normalized name).
    pub builtin_info: BTreeMap<String, ModInfo>,
    /// Whether anything lies in `/usr/lib/firmware`: then mkosi resolves dependencies even
    /// without module rules, to learn which firmware the modules need.
    pub has_firmware: bool,
    /// `modules.alias` of the kernel as installed: alias -> module names (normalized). Soft
    /// dependencies often name an alias (`crypto-crc32c`).
    pub aliases: BTreeMap<String, Vec<String>>,
}

impl KernelInventory {
    /// Reads `modules.alias` (`alias NAME MODULE` lines; wildcard aliases are skipped: soft
    /// dependencies name plain aliases).
    pub fn set_aliases(&mut self, modules_alias: &str) {
        for line in modules_alias.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("alias") {
                continue;
            }
            let (Some(alias), Some(module)) = (words.next(), words.next()) else {
                continue;
            };
            if alias.contains(['*', '?', '[']) {
                continue;
            }
            self.aliases
                .entry(normalize_module_name(alias))
                .or_default()
                .push(normalize_module_name(module));
        }
    }

    /// Reads `modules.builtin` (module paths, one a line).
    pub fn set_builtin(&mut self, modules_builtin: &str) {
        self.builtin = modules_builtin
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(module_name_of_path)
            .collect();
    }

    /// Reads `modules.builtin.modinfo`.
    pub fn set_builtin_info(&mut self, bytes: &[u8]) {
        self.builtin_info = super::modinfo::parse_builtin_modinfo(bytes)
            .into_iter()
            .map(|(name, info)| (normalize_module_name(&name), info))
            .collect();
    }
}

/// A dependency no module file or built-in module provides.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingDependency {
    /// The module that needs it (normalized name).
    pub module: String,
    /// The name it asks for.
    pub dependency: String,
}

impl std::fmt::Display for MissingDependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is a dependency of {} but is not installed, ignoring",
            self.dependency, self.module
        )
    }
}

/// The modules of one kernel that stay, and the firmware they ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Module files kept, relative to the kernel's directory.
    pub modules: BTreeSet<String>,
    /// The `firmware=` entries of the kept and built-in modules, as written (paths below
    /// `/usr/lib/firmware`, maybe with wildcards). Empty on mkosi's fast path.
    pub firmware: BTreeSet<String>,
    /// Dependencies nothing provides.
    pub missing: Vec<MissingDependency>,
}

/// A module that could not be read.
#[derive(Debug)]
pub(super) struct UnreadableModule {
    /// Relative to the kernel's directory.
    pub module: String,
    pub error: ModInfoError,
}

/// Selects the modules of `inventory` that `rules` keep, reading modules through `read` (given
/// a path relative to the kernel's directory; called in parallel, only for modules reached).
pub(super) fn select<F>(
    inventory: &KernelInventory,
    rules: &CompiledRules,
    read: F,
) -> Result<Selection, UnreadableModule>
where
    F: Fn(&str) -> Result<ModInfo, ModInfoError> + Sync,
{
    if !rules.has_module_rules() && !inventory.has_firmware {
        // mkosi's fast path: every module stays, no firmware is looked at.
        return Ok(Selection {
            modules: inventory.modules.iter().cloned().collect(),
            ..Selection::default()
        });
    }
    let files = name_to_file(&inventory.modules);
    let passed = rules.filter_modules(&inventory.modules);

    let mut visited: BTreeSet<String> = BTreeSet::new();
    let mut firmware = BTreeSet::new();
    let mut missing = BTreeSet::new();
    let mut frontier: Vec<String> = inventory
        .builtin
        .iter()
        .cloned()
        .chain(
            passed
                .iter()
                .map(|&i| module_name_of_path(&inventory.modules[i])),
        )
        .collect();
    frontier.sort();
    frontier.dedup();
    while !frontier.is_empty() {
        visited.extend(frontier.iter().cloned());
        let infos = read_infos(&frontier, inventory, &files, &read)?;
        let mut next = BTreeSet::new();
        for (name, info) in infos {
            firmware.extend(info.firmware.iter().cloned());
            for dependency in info.depends.iter().map(|name| normalize_module_name(name)) {
                if files.contains_key(dependency.as_str()) {
                    if !visited.contains(&dependency) {
                        next.insert(dependency);
                    }
                } else if !inventory.builtin.contains(&dependency) {
                    missing.insert(MissingDependency {
                        module: name.clone(),
                        dependency,
                    });
                }
            }
            // Soft dependencies are optional (modprobe goes on without them): followed when a
            // module or an alias provides them, never reported missing.
            for dependency in info.softdeps.iter().map(|name| normalize_module_name(name)) {
                let provided = providers(dependency, inventory, &files);
                for module in provided {
                    if !visited.contains(&module) {
                        next.insert(module);
                    }
                }
            }
        }
        frontier = next.into_iter().collect();
    }
    let modules = visited
        .iter()
        .filter_map(|name| files.get(name.as_str()))
        .map(|&index| inventory.modules[index].clone())
        .collect();
    Ok(Selection {
        modules,
        firmware,
        missing: missing.into_iter().collect(),
    })
}

/// The module information of each module in `frontier`: read from its file, taken from the
/// built-in modules' information, or empty for a module that is neither.
fn read_infos<F>(
    frontier: &[String],
    inventory: &KernelInventory,
    files: &HashMap<String, usize>,
    read: &F,
) -> Result<Vec<(String, ModInfo)>, UnreadableModule>
where
    F: Fn(&str) -> Result<ModInfo, ModInfoError> + Sync,
{
    frontier
        .par_iter()
        .map(|name| {
            let info = match (files.get(name.as_str()), inventory.builtin_info.get(name)) {
                (Some(&index), _) => {
                    let module = &inventory.modules[index];
                    read(module).map_err(|error| UnreadableModule {
                        module: module.clone(),
                        error,
                    })?
                }
                (None, Some(info)) => info.clone(),
                (None, None) => ModInfo::default(),
            };
            Ok((name.clone(), info))
        })
        .collect()
}

/// The modules that provide the soft dependency `dependency`: the module of that name, else the
/// modules its alias names.
fn providers(
    dependency: String,
    inventory: &KernelInventory,
    files: &HashMap<String, usize>,
) -> Vec<String> {
    if files.contains_key(dependency.as_str()) {
        vec![dependency]
    } else {
        inventory
            .aliases
            .get(&dependency)
            .into_iter()
            .flatten()
            .filter(|module| files.contains_key(module.as_str()))
            .cloned()
            .collect()
    }
}

/// Each module name's file. When two files have one name, the one below `updates/` wins (as
/// depmod's default search order has it), else the first in path order.
fn name_to_file(modules: &[String]) -> HashMap<String, usize> {
    let mut files: HashMap<String, usize> = HashMap::new();
    for (index, module) in modules.iter().enumerate() {
        let name = module_name_of_path(module);
        let better = |old: usize| {
            let rank = |path: &str| !path.starts_with("updates/");
            (rank(module), module) < (rank(&modules[old]), &modules[old])
        };
        match files.get(&name) {
            Some(&old) if !better(old) => {}
            _ => {
                files.insert(name, index);
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::rules::ModuleRules;

    fn info(depends: &[&str], softdeps: &[&str], firmware: &[&str]) -> ModInfo {
        ModInfo {
            depends: depends.iter().map(|s| s.to_string()).collect(),
            softdeps: softdeps.iter().map(|s| s.to_string()).collect(),
            firmware: firmware.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn inventory() -> (KernelInventory, HashMap<&'static str, ModInfo>) {
        let mut inv = KernelInventory {
            modules: vec![
                "kernel/a/leaf_one.ko".to_string(),
                "kernel/a/needs.ko".to_string(),
                "kernel/b/soft.ko.zst".to_string(),
                "kernel/b/unused.ko".to_string(),
                "kernel/c/from-builtin.ko".to_string(),
                "kernel/d/aliased.ko".to_string(),
            ],
            ..KernelInventory::default()
        };
        inv.set_aliases("alias crypto-alias aliased\nalias pci:v*d* unused\n");
        inv.set_builtin("kernel/core/core_thing.ko\n");
        inv.set_builtin_info(
            b"core_thing.softdep=pre: from_builtin\0core_thing.firmware=core.bin\0",
        );
        let infos = HashMap::from([
            ("kernel/a/leaf_one.ko", info(&[], &[], &["leaf.bin"])),
            (
                "kernel/a/needs.ko",
                info(
                    &["leaf_one", "core_thing", "gone"],
                    &["soft", "crypto-alias", "optional-nothing"],
                    &[],
                ),
            ),
            ("kernel/b/soft.ko.zst", info(&[], &[], &[])),
            ("kernel/b/unused.ko", info(&["needs"], &[], &[])),
            ("kernel/c/from-builtin.ko", info(&[], &[], &[])),
            ("kernel/d/aliased.ko", info(&[], &[], &[])),
        ]);
        (inv, infos)
    }

    #[test]
    fn dependencies_soft_dependencies_and_builtins_are_followed() {
        let (inv, infos) = inventory();
        let rules = ModuleRules {
            kernel_modules_exclude: vec![".*".into()],
            kernel_modules: vec!["needs".into()],
            ..ModuleRules::default()
        }
        .compile(&[])
        .unwrap();
        let selection = select(&inv, &rules, |path| Ok(infos[path].clone())).unwrap();
        assert_eq!(
            selection
                .modules
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            vec![
                "kernel/a/leaf_one.ko",
                "kernel/a/needs.ko",
                "kernel/b/soft.ko.zst",
                "kernel/c/from-builtin.ko",
                "kernel/d/aliased.ko",
            ]
        );
        assert_eq!(
            selection
                .firmware
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            vec!["core.bin", "leaf.bin"]
        );
        assert_eq!(
            selection.missing,
            vec![MissingDependency {
                module: "needs".into(),
                dependency: "gone".into()
            }]
        );
    }

    #[test]
    fn without_rules_or_firmware_every_module_stays_unread() {
        let (inv, _) = inventory();
        let rules = ModuleRules::default().compile(&[]).unwrap();
        let selection = select(&inv, &rules, |_| panic!("nothing is read")).unwrap();
        assert_eq!(selection.modules.len(), inv.modules.len());
    }

    #[test]
    fn a_module_below_updates_wins_over_its_namesake() {
        let files = name_to_file(&["kernel/x/dup.ko".to_string(), "updates/dup.ko".to_string()]);
        assert_eq!(files["dup"], 1);
    }
}
