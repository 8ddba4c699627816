//! `RootPassword=` (or `mkosi.rootpw`): root's password hash in `/etc/shadow`.
//!
//! A value with mkosi's `hashed:` prefix is used as it is; plain text is hashed with SHA-512 crypt.
//! The salt is derived from the image name and the password rather than drawn at random, so a
//! rebuild yields the same image and the stage's key can record the hash (never the password):
//! two images of different names never share a hash, but rebuilding one image with an unchanged
//! password gives the same hash again. When the image has no `/etc/shadow`, one is created as
//! systemd-firstboot creates it (mode 0000), with `/etc/passwd` pointing root at it.

use kiln_cache::{Digest, OutputKind};
use kiln_engine::{Input, Stage, StageContext, StageError};
use kiln_recipe::RootPassword;

use super::crypt::{salt_from, sha512_crypt};
use super::error::ConfigError;

pub struct RootPasswordStage {
    pub base: String,
    hash: String,
}

impl RootPasswordStage {
    /// The stage for `password` of the image named `image`.
    pub fn new(base: impl Into<String>, password: &RootPassword, image: &str) -> RootPasswordStage {
        let hash = if password.hashed {
            password.value.clone()
        } else {
            let seed = Digest::of_bytes(
                format!("kiln root password\0{image}\0{}", password.value).as_bytes(),
            );
            sha512_crypt(password.value.as_bytes(), &salt_from(seed.as_bytes()))
        };
        RootPasswordStage {
            base: base.into(),
            hash,
        }
    }

    /// What goes into the second field of root's shadow entry.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// `text` with the second field of `user`'s line set to `value`; `None` when no line is the user's.
pub fn set_field(text: &str, user: &str, value: &str) -> Option<String> {
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

impl Stage for RootPasswordStage {
    fn name(&self) -> &str {
        "root-password"
    }

    fn kind(&self) -> &'static str {
        "root-password"
    }

    fn version(&self) -> u32 {
        1
    }

    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("base", &self.base),
            Input::value("root password hash", &self.hash),
        ]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Tree
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let mut tree = ctx.store.manifest(&ctx.input("base")?)?;
        let text = |path: &str, bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|_| {
                StageError::failed(ConfigError::NotText {
                    path: path.to_string(),
                })
            })
        };
        let shadow = match super::read_file(ctx.store, &tree, "etc/shadow")? {
            Some((entry, bytes)) => Some((entry, text("/etc/shadow", bytes)?)),
            None => None,
        };
        match shadow {
            Some((entry, content)) => {
                let edited = set_field(&content, "root", &self.hash)
                    .unwrap_or_else(|| format!("{content}root:{}::0:99999:7:::\n", self.hash));
                let blob = ctx.store.put_bytes(edited.as_bytes())?;
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
                super::put_file(ctx.store, &mut tree, "etc/shadow", line.as_bytes(), 0)?;
                let passwd = match super::read_file(ctx.store, &tree, "etc/passwd")? {
                    Some((entry, bytes)) => Some((entry, text("/etc/passwd", bytes)?)),
                    None => None,
                };
                let (mode, content) = match passwd {
                    Some((entry, content)) => (entry.mode, content),
                    None => (0o644, String::new()),
                };
                let edited = set_field(&content, "root", "x")
                    .unwrap_or_else(|| format!("{content}root:x:0:0:root:/root:/bin/sh\n"));
                super::put_file(ctx.store, &mut tree, "etc/passwd", edited.as_bytes(), mode)?;
            }
        }
        Ok(ctx.store.put_manifest(&tree)?)
    }
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
        let one = RootPasswordStage::new("b", &plain, "debian-rescue");
        let again = RootPasswordStage::new("b", &plain, "debian-rescue");
        let other = RootPasswordStage::new("b", &plain, "archlinux-rescue");
        assert!(one.hash().starts_with("$6$"), "{}", one.hash());
        assert_eq!(one.hash(), again.hash());
        assert_ne!(one.hash(), other.hash());
        assert!(!one.hash().contains("rescue"));
        let hashed = RootPassword {
            value: "$6$x$y".to_string(),
            hashed: true,
        };
        assert_eq!(RootPasswordStage::new("b", &hashed, "i").hash(), "$6$x$y");
    }
}
