//! `/etc/machine-id` holding `uninitialized`, as mkosi leaves it: systemd then initialises the
//! machine ID on first boot (or keeps a transient one on a read-only image), so no two machines
//! share the ID of the build. Files that would tie the image to the build machine go too, as
//! mkosi removes them: the random seed, the credential secret, `/etc/machine-info` and D-Bus's
//! copy of the machine ID.

use kiln_cache::{Digest, EntryKind, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};

pub struct MachineIdStage {
    pub base: String,
}

impl Stage for MachineIdStage {
    fn name(&self) -> &str {
        "machine-id"
    }

    fn kind(&self) -> &'static str {
        "machine-id"
    }

    fn version(&self) -> u32 {
        2
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::stage("base", &self.base)]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = ctx.store.manifest(&ctx.input("base")?)?;
        // Keep the mode packages gave the file (systemd ships it 0444).
        let mode = match super::lookup(&tree, "etc/machine-id") {
            Some(entry) if matches!(entry.kind, EntryKind::File { .. }) => entry.mode,
            _ => 0o444,
        };
        super::put_file(
            ctx.store,
            &mut tree,
            "etc/machine-id",
            b"uninitialized\n",
            mode,
        )?;
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
        Ok(ctx.store.put_manifest(&tree)?)
    }
}
