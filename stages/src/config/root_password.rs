//! `RootPassword=` (or `mkosi.rootpw`): root's password hash in `/etc/shadow`.
//!
//! A value with mkosi's `hashed:` prefix is used as it is; plain text is hashed with SHA-512 crypt.
//! The salt is derived from the image name and the password rather than drawn at random, so a
//! rebuild yields the same image and the stage's key can record the hash (never the password):
//! two images of different names never share a hash, but rebuilding one image with an unchanged
//! password gives the same hash again. When the image has no `/etc/shadow`, one is created as
//! systemd-firstboot creates it (mode 0000), with `/etc/passwd` pointing root at it.

use kiln_cache::{Digest, Manifest, Store};
use kiln_engine::StageError;
use kiln_recipe::RootPassword;

use super::crypt::{salt_from, sha512_crypt};
use super::edit::TreeEdit;
use super::error::ConfigError;

/// Root's password hash, set in `/etc/shadow`.
pub struct RootPasswordHash {
    hash: String,
}

impl RootPasswordHash {
    /// The edit for `password` of the image named `image`.
    pub fn new(password: &RootPassword, image: &str) -> RootPasswordHash {
        let hash = if password.hashed {
            password.value.clone()
        } else {
            let seed = Digest::of_bytes(
                format!("kiln root password\0{image}\0{}", password.value).as_bytes(),
            );
            sha512_crypt(password.value.as_bytes(), &salt_from(seed.as_bytes()))
        };
        RootPasswordHash { hash }
    }

    /// What goes into the second field of root's shadow entry.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// `text` with the second field of `user`'s line set to `value`; `None` when no line is the user's.
pub(super) fn set_field(text: &str, user: &str, value: &str) -> Option<String> {
    let prefix = format!("{user}:");
    let mut found = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if !found && line.starts_with(&prefix) {
                found = true;
                let mut fields: Vec<&str> = line.split(':').collect();
                if fields.len() < 2 {
                    fields.push("");
                }
                fields[1] = value;
                fields.join(":")
            } else {
                line.to_string()
            }
        })
        .collect();
    found.then(|| lines.iter().map(|line| format!("{line}\n")).collect())
}

impl TreeEdit for RootPasswordHash {
    fn name(&self) -> &'static str {
        "root-password"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        vec![("root password hash".to_string(), self.hash.clone())]
    }

    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        match read_text(store, tree, "etc/shadow")? {
            Some((entry, content)) => {
                let edited = set_field(&content, "root", &self.hash)
                    .unwrap_or_else(|| format!("{content}root:{}::0:99999:7:::\n", self.hash));
                let blob = store.put_bytes(edited.as_bytes())?;
                let mut entry = entry;
                entry.kind = kiln_cache::EntryKind::File {
                    blob,
                    size: edited.len() as u64,
                };
                entry.hardlink = None;
                tree.insert_or_replace(entry)
                    .map_err(|error| StageError::failed(crate::error::TreeError::from(error)))?;
                tree.canonicalize_hardlinks();
            }
            None => {
                let line = format!("root:{}::0:99999:7:::\n", self.hash);
                super::put_file(store, tree, "etc/shadow", line.as_bytes(), 0)?;
                let (mode, content) = match read_text(store, tree, "etc/passwd")? {
                    Some((entry, content)) => (entry.mode, content),
                    None => (0o644, String::new()),
                };
                let edited = set_field(&content, "root", "x")
                    .unwrap_or_else(|| format!("{content}root:x:0:0:root:/root:/bin/sh\n"));
                super::put_file(store, tree, "etc/passwd", edited.as_bytes(), mode)?;
            }
        }
        Ok(())
    }
}

/// The regular file at `path` of the image as text, with its entry.
fn read_text(
    store: &Store,
    tree: &Manifest,
    path: &str,
) -> Result<Option<(kiln_cache::Entry, String)>, StageError> {
    let Some((entry, bytes)) = super::read_file(store, tree, path)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| {
        StageError::failed(ConfigError::NotText {
            path: format!("/{path}"),
        })
    })?;
    Ok(Some((entry, text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_roots_second_field_changes() {
        let shadow = "daemon:*:19000:0:99999:7:::\nroot:*:19000:0:99999:7:::\nrootless:!:1::::::\n";
        assert_eq!(
            set_field(shadow, "root", "$6$s$h").unwrap(),
            "daemon:*:19000:0:99999:7:::\nroot:$6$s$h:19000:0:99999:7:::\nrootless:!:1::::::\n"
        );
        assert_eq!(set_field("daemon:*:1::::::\n", "root", "x"), None);
    }

    #[test]
    fn plain_passwords_are_hashed_deterministically_per_image() {
        let plain = RootPassword {
            value: "rescue".to_string(),
            hashed: false,
        };
        let one = RootPasswordHash::new(&plain, "debian-rescue");
        let again = RootPasswordHash::new(&plain, "debian-rescue");
        let other = RootPasswordHash::new(&plain, "archlinux-rescue");
        assert!(one.hash().starts_with("$6$"), "{}", one.hash());
        assert_eq!(one.hash(), again.hash());
        assert_ne!(one.hash(), other.hash());
        assert!(!one.hash().contains("rescue"));
        let hashed = RootPassword {
            value: "$6$x$y".to_string(),
            hashed: true,
        };
        assert_eq!(RootPasswordHash::new(&hashed, "i").hash(), "$6$x$y");
    }
}
