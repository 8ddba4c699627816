//! `/init` for images the kernel starts from an initramfs (`Format=uki`, `Format=cpio`): a link to
//! systemd, made when the image has systemd and no `/init` of its own, as mkosi does.

use kiln_cache::{Manifest, Store};
use kiln_engine::StageError;

use super::edit::TreeEdit;

/// Where the link points.
pub(super) const SYSTEMD: &str = "/usr/lib/systemd/systemd";

/// The `/init` link.
pub struct Init;

impl TreeEdit for Init {
    fn name(&self) -> &'static str {
        "init"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn edit(&self, _store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        let has_systemd = super::lookup(tree, SYSTEMD.trim_start_matches('/'))
            .is_some_and(|entry| entry.blob().is_some());
        if tree.get("init").is_some() || !has_systemd {
            return Ok(());
        }
        super::put_symlink(tree, "init", SYSTEMD)
    }
}
