//! A configuration step that edits the tree's manifest, as one stage: the stage's name, the
//! values its key holds, and the edit. Every step that only writes or removes a few files
//! (autologin drop-ins, os-release lines, `/init`, first-boot settings, the hostname, the root
//! password, the machine ID, package metadata) is a [`TreeEdit`], made a stage by [`EditStage`].

use kiln_cache::{Digest, Manifest, OutputKind, Store};
use kiln_engine::{Input, Stage, StageContext, StageError};

/// One edit of the image tree.
pub trait TreeEdit: Send + Sync {
    /// The stage's name and kind.
    fn name(&self) -> &'static str;
    /// Bumped when the edit's behaviour changes.
    fn version(&self) -> u32;
    /// The settings the edit depends on, by name, as text.
    fn values(&self) -> Vec<(String, String)>;
    /// Change `tree`; what it writes goes into `store`.
    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError>;
}

/// The stage of a [`TreeEdit`] over the tree of `base`.
pub struct EditStage<E> {
    pub base: String,
    pub edit: E,
}

impl<E: TreeEdit> Stage for EditStage<E> {
    fn name(&self) -> &str {
        self.edit.name()
    }

    fn kind(&self) -> &'static str {
        self.edit.name()
    }

    fn version(&self) -> u32 {
        self.edit.version()
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = vec![Input::stage("base", &self.base)];
        for (name, value) in self.edit.values() {
            inputs.push(Input::value(name, value));
        }
        inputs
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = ctx.store.manifest(&ctx.input("base")?)?;
        self.edit.edit(ctx.store, &mut tree)?;
        Ok(ctx.store.put_manifest(&tree)?)
    }
}
