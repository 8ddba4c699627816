//! mkosi's `clean_package_manager_metadata` (`CleanPackageMetadata=`): the package managers'
//! state removed from an image that cannot use it. With `auto` (the default), directory and tar
//! outputs keep it (they are often base trees of other images), and other formats lose the state
//! of each package manager the image does not contain; `yes` removes all of it, `no` nothing.

use kiln_cache::{Manifest, Store};
use kiln_engine::StageError;
use kiln_recipe::Feature;

use super::edit::TreeEdit;

/// Each package manager's program and the state it keeps in the image.
const MANAGERS: &[(&str, &[&str])] = &[
    ("rpm", &["var/lib/rpm", "usr/lib/sysimage/rpm"]),
    ("dnf5", &["usr/lib/sysimage/libdnf5"]),
    ("dpkg", &["var/lib/dpkg"]),
    ("apt", &["var/lib/apt", "var/cache/apt"]),
    ("pacman", &["var/lib/pacman", "var/cache/pacman"]),
];

pub struct CleanMetadata {
    pub setting: Feature,
    /// The output keeps the state under `auto` (directory and tar).
    pub keeps_by_default: bool,
}

impl CleanMetadata {
    /// Whether the stage can change anything.
    pub fn is_noop(&self) -> bool {
        matches!(self.setting, Feature::Disabled)
            || (matches!(self.setting, Feature::Auto) && self.keeps_by_default)
    }
}

impl TreeEdit for CleanMetadata {
    fn name(&self) -> &'static str {
        "clean-metadata"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        let setting = match self.setting {
            Feature::Enabled => "yes",
            Feature::Disabled => "no",
            Feature::Auto => "auto",
        };
        vec![("CleanPackageMetadata".to_string(), setting.to_string())]
    }

    fn edit(&self, _store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        if self.is_noop() {
            return Ok(());
        }
        for (program, paths) in MANAGERS {
            let installed = ["usr/bin", "usr/sbin", "bin", "sbin"]
                .iter()
                .any(|dir| super::lookup(tree, &format!("{dir}/{program}")).is_some());
            if matches!(self.setting, Feature::Enabled) || !installed {
                for path in *paths {
                    tree.remove_path_recursive(path);
                }
            }
        }
        Ok(())
    }
}
