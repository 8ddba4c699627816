//! mkosi's `run_firstboot`: the first-boot settings (`Locale=`, `LocaleMessages=`, `Keymap=`,
//! `Timezone=`, `RootShell=`) written into the image, so that `systemd-firstboot` has nothing to
//! ask on the console at the first boot, and the same values as credentials in
//! `/usr/lib/credstore/` for a later `systemd-firstboot`.
//!
//! mkosi runs `systemd-firstboot --root=… --force`; kiln writes the files that writes, as edits
//! of the manifest: `/etc/locale.conf` (`LANG=`, `LC_MESSAGES=`), `/etc/vconsole.conf`
//! (`KEYMAP=`), `/etc/localtime` (a link into `/usr/share/zoneinfo`) and root's shell in
//! `/etc/passwd`. A setting left unset is not written (the hostname and the root password are
//! stages of their own). An image whose first boot would otherwise stop for input (a UKI booted
//! on a console nobody types into) sets them in its recipe.

use kiln_cache::{Manifest, Store};
use kiln_engine::StageError;

use super::edit::TreeEdit;

pub struct Firstboot {
    pub locale: Option<String>,
    pub locale_messages: Option<String>,
    pub keymap: Option<String>,
    pub timezone: Option<String>,
    pub root_shell: Option<String>,
}

impl Firstboot {
    pub fn is_empty(&self) -> bool {
        self.locale.is_none()
            && self.locale_messages.is_none()
            && self.keymap.is_none()
            && self.timezone.is_none()
            && self.root_shell.is_none()
    }
}

impl TreeEdit for Firstboot {
    fn name(&self) -> &'static str {
        "firstboot"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        [
            ("Locale", &self.locale),
            ("LocaleMessages", &self.locale_messages),
            ("Keymap", &self.keymap),
            ("Timezone", &self.timezone),
            ("RootShell", &self.root_shell),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.clone()?)))
        .collect()
    }

    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        let mut credentials: Vec<(&str, &str)> = Vec::new();
        if self.locale.is_some() || self.locale_messages.is_some() {
            let mut text = String::new();
            if let Some(locale) = &self.locale {
                text.push_str(&format!("LANG={locale}\n"));
                credentials.push(("firstboot.locale", locale));
            }
            if let Some(messages) = &self.locale_messages {
                text.push_str(&format!("LC_MESSAGES={messages}\n"));
                credentials.push(("firstboot.locale-messages", messages));
            }
            super::put_file(store, tree, "etc/locale.conf", text.as_bytes(), 0o644)?;
        }
        if let Some(keymap) = &self.keymap {
            let text = format!("KEYMAP={keymap}\n");
            super::put_file(store, tree, "etc/vconsole.conf", text.as_bytes(), 0o644)?;
            credentials.push(("firstboot.keymap", keymap));
        }
        if let Some(timezone) = &self.timezone {
            super::put_symlink(
                tree,
                "etc/localtime",
                &format!("../usr/share/zoneinfo/{timezone}"),
            )?;
            credentials.push(("firstboot.timezone", timezone));
        }
        if let Some(shell) = &self.root_shell {
            if let Some((entry, content)) = super::read_file(store, tree, "etc/passwd")? {
                let text = String::from_utf8_lossy(&content);
                let mut out = String::with_capacity(text.len());
                for line in text.split_inclusive('\n') {
                    let mut fields: Vec<&str> = line.trim_end_matches('\n').split(':').collect();
                    if fields.first() == Some(&"root") && fields.len() == 7 {
                        fields[6] = shell;
                        out.push_str(&fields.join(":"));
                        out.push('\n');
                    } else {
                        out.push_str(line);
                    }
                }
                super::put_file(store, tree, "etc/passwd", out.as_bytes(), entry.mode)?;
            }
            credentials.push(("passwd.shell.root", shell));
        }
        for (name, value) in credentials {
            super::put_file(
                store,
                tree,
                &format!("usr/lib/credstore/{name}"),
                value.as_bytes(),
                0o644,
            )?;
        }
        Ok(())
    }
}
