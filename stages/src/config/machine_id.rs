//! `/etc/machine-id` holding `uninitialized`, as mkosi leaves it: systemd then initialises the
//! machine ID on first boot (or keeps a transient one on a read-only image), so no two machines
//! share the ID of the build. Files that would tie the image to the build machine go too, as
//! mkosi removes them: the random seed, the credential secret, `/etc/machine-info` and D-Bus's
//! copy of the machine ID.

use kiln_cache::{EntryKind, Manifest, Store};
use kiln_engine::StageError;

use super::edit::TreeEdit;

/// `/etc/machine-id` reset, and the files that tie the image to the build machine removed.
pub struct MachineId;

impl TreeEdit for MachineId {
    fn name(&self) -> &'static str {
        "machine-id"
    }

    fn version(&self) -> u32 {
        2
    }

    fn values(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        // Keep the mode packages gave the file (systemd ships it 0444).
        let mode = match super::lookup(tree, "etc/machine-id") {
            Some(entry) if matches!(entry.kind, EntryKind::File { .. }) => entry.mode,
            _ => 0o444,
        };
        super::put_file(store, tree, "etc/machine-id", b"uninitialized\n", mode)?;
        for path in [
            "var/lib/systemd/random-seed",
            "var/lib/systemd/credential.secret",
            "etc/machine-info",
            "var/lib/dbus/machine-id",
        ] {
            if tree
                .get(path)
                .is_some_and(|entry| !matches!(entry.kind, EntryKind::Dir))
            {
                tree.remove_path_recursive(path);
            }
        }
        Ok(())
    }
}
