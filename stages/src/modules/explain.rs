//! What `graph explain` says when the modules stage re-ran: which rule changed, and how many
//! modules that added or removed (`KernelModulesInclude= +nvme: +14 modules, -0`).
//!
//! Everything here reads what a build recorded: the stage's value inputs (one per setting,
//! see [`super::rules::ModuleRules::value`], and [`super::HOST_MODULES_INPUT`]) and its output
//! trees. Nothing is re-derived from the rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kiln_cache::Manifest;

use super::rules::Setting;
use super::{HOST_MODULES_INPUT, MODULES_DIR, is_module_file};

/// One recorded setting whose value changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChange {
    /// The setting's name (`KernelModulesInclude`), or `host modules`.
    pub setting: String,
    /// Entries now present that were not.
    pub added: Vec<String>,
    /// Entries gone.
    pub removed: Vec<String>,
    /// The same entries in another order (which matters to `-` globs): `added` then holds
    /// the whole new list and `removed` the whole old one.
    pub reordered: bool,
}

impl fmt::Display for RuleChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.setting == HOST_MODULES_INPUT {
            write!(f, "host modules")?;
        } else {
            write!(f, "{}=", self.setting)?;
        }
        if self.reordered {
            let (old, new) = (self.removed.join(" "), self.added.join(" "));
            return write!(f, " reordered `{old}` -> `{new}`");
        }
        for added in &self.added {
            write!(f, " +{added}")?;
        }
        for removed in &self.removed {
            write!(f, " -{removed}")?;
        }
        Ok(())
    }
}

/// The settings that differ between two runs' recorded value inputs (by input name), entry by
/// entry. A change of order only is shown as the whole old and new lists.
pub fn rule_changes(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<RuleChange> {
    let names = Setting::ALL
        .iter()
        .map(|setting| setting.name())
        .chain([HOST_MODULES_INPUT, "Architecture"]);
    let mut changes = Vec::new();
    for name in names {
        let before = old.get(name).map(String::as_str).unwrap_or_default();
        let after = new.get(name).map(String::as_str).unwrap_or_default();
        if before == after {
            continue;
        }
        let before_items: Vec<&str> = before.split_whitespace().collect();
        let after_items: Vec<&str> = after.split_whitespace().collect();
        let before_set: BTreeSet<&str> = before_items.iter().copied().collect();
        let after_set: BTreeSet<&str> = after_items.iter().copied().collect();
        let mut added: Vec<String> = after_items
            .iter()
            .filter(|item| !before_set.contains(*item))
            .map(|item| item.to_string())
            .collect();
        let mut removed: Vec<String> = before_items
            .iter()
            .filter(|item| !after_set.contains(*item))
            .map(|item| item.to_string())
            .collect();
        let reordered = added.is_empty() && removed.is_empty();
        if reordered {
            added = after_items.iter().map(|item| item.to_string()).collect();
            removed = before_items.iter().map(|item| item.to_string()).collect();
        }
        changes.push(RuleChange {
            setting: name.to_string(),
            added,
            removed,
            reordered,
        });
    }
    changes
}

/// How many module files (every kernel) `new` has that `old` lacks, and the reverse.
pub fn count_module_changes(old: &Manifest, new: &Manifest) -> (usize, usize) {
    let modules = |tree: &Manifest| -> BTreeSet<String> {
        tree.subtree(MODULES_DIR)
            .filter(|entry| !entry.kind.is_dir())
            .filter(|entry| is_module_file(entry.path.rsplit('/').next().unwrap_or_default()))
            .map(|entry| entry.path.clone())
            .collect()
    };
    let (old, new) = (modules(old), modules(new));
    (new.difference(&old).count(), old.difference(&new).count())
}

/// The explain line for a re-run of the modules stage: the changed rules and the module counts
/// between the two output trees; `None` when no rule changed (the input tree did).
pub fn explain_change(
    old_values: &BTreeMap<String, String>,
    new_values: &BTreeMap<String, String>,
    old_output: &Manifest,
    new_output: &Manifest,
) -> Option<String> {
    let changes = rule_changes(old_values, new_values);
    if changes.is_empty() {
        return None;
    }
    let (added, removed) = count_module_changes(old_output, new_output);
    let rules: Vec<String> = changes.iter().map(ToString::to_string).collect();
    Some(format!(
        "{}: +{added} modules, -{removed}",
        rules.join(", ")
    ))
}

/// The modules stage's part of `graph explain`: the changed rule and the module counts.
pub struct ModulesExplainer;

impl kiln_engine::explain::KindExplainer for ModulesExplainer {
    fn explain(
        &self,
        store: &kiln_cache::Store,
        kind: &str,
        previous: &kiln_cache::StageRun,
        current: &kiln_cache::StageRun,
    ) -> Vec<String> {
        if kind != "modules" {
            return Vec::new();
        }
        let values = |run: &kiln_cache::StageRun| -> BTreeMap<String, String> {
            run.inputs
                .iter()
                .filter_map(|input| Some((input.name.clone(), input.value.clone()?)))
                .collect()
        };
        let (Ok(old), Ok(new)) = (
            store.manifest(&previous.output.output),
            store.manifest(&current.output.output),
        ) else {
            return Vec::new();
        };
        explain_change(&values(previous), &values(current), &old, &new)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_changed_include_rule_is_named_entry_by_entry() {
        let old = values(&[
            ("KernelModulesInclude", "fs/ usb/"),
            ("KernelModulesExclude", ".*"),
        ]);
        let new = values(&[
            ("KernelModulesInclude", "fs/ nvme"),
            ("KernelModulesExclude", ".*"),
        ]);
        let changes = rule_changes(&old, &new);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_string(), "KernelModulesInclude= +nvme -usb/");
        let empty = Manifest::new();
        assert_eq!(
            explain_change(&old, &new, &empty, &empty).as_deref(),
            Some("KernelModulesInclude= +nvme -usb/: +0 modules, -0")
        );
        assert_eq!(explain_change(&old, &old, &empty, &empty), None);
    }

    #[test]
    fn a_reordered_list_shows_both_orders() {
        let old = values(&[("KernelModules", "-foo foo")]);
        let new = values(&[("KernelModules", "foo -foo")]);
        assert_eq!(
            rule_changes(&old, &new)[0].to_string(),
            "KernelModules= reordered `-foo foo` -> `foo -foo`"
        );
    }
}
