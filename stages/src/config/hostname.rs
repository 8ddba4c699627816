//! `Hostname=`: `/etc/hostname` holding the name and a newline, as mkosi writes it.

use kiln_cache::{Manifest, Store};
use kiln_engine::StageError;

use super::edit::TreeEdit;

pub struct Hostname {
    pub hostname: String,
}

impl TreeEdit for Hostname {
    fn name(&self) -> &'static str {
        "hostname"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        vec![("Hostname".to_string(), self.hostname.clone())]
    }

    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        let content = format!("{}\n", self.hostname);
        super::put_file(store, tree, "etc/hostname", content.as_bytes(), 0o644)
    }
}
