//! mkosi's `configure_os_release`: `IMAGE_ID=`, `IMAGE_VERSION=` and `DEFAULT_HOSTNAME=` in each
//! os-release file of the image that is a regular file (`usr/lib/os-release`,
//! `usr/lib/initrd-release`, `etc/os-release`): an existing line is replaced, a missing one
//! appended, the rest of the file kept as it is.

use kiln_cache::{EntryKind, Manifest, Store};
use kiln_engine::StageError;

use super::edit::TreeEdit;

const CANDIDATES: &[&str] = &[
    "usr/lib/os-release",
    "usr/lib/initrd-release",
    "etc/os-release",
];

pub struct OsRelease {
    pub image_id: Option<String>,
    pub image_version: Option<String>,
    pub hostname: Option<String>,
}

impl OsRelease {
    /// Whether the edit changes anything (mkosi leaves the files alone otherwise).
    pub fn is_empty(&self) -> bool {
        self.image_id.is_none() && self.image_version.is_none() && self.hostname.is_none()
    }

    /// `text` with the lines set.
    pub fn apply(&self, text: &str) -> String {
        let fields = [
            ("IMAGE_ID", &self.image_id),
            ("IMAGE_VERSION", &self.image_version),
            ("DEFAULT_HOSTNAME", &self.hostname),
        ];
        let mut written = [false; 3];
        let mut out = String::with_capacity(text.len() + 64);
        for line in text.split_inclusive('\n') {
            let replaced = fields.iter().enumerate().find_map(|(index, (key, value))| {
                let value = value.as_ref()?;
                line.starts_with(&format!("{key}="))
                    .then(|| (index, format!("{key}=\"{value}\"\n")))
            });
            match replaced {
                Some((index, new)) => {
                    written[index] = true;
                    out.push_str(&new);
                }
                None => out.push_str(line),
            }
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for (index, (key, value)) in fields.iter().enumerate() {
            if let Some(value) = value
                && !written[index]
            {
                out.push_str(&format!("{key}=\"{value}\"\n"));
            }
        }
        out
    }
}

impl TreeEdit for OsRelease {
    fn name(&self) -> &'static str {
        "os-release"
    }

    fn version(&self) -> u32 {
        1
    }

    fn values(&self) -> Vec<(String, String)> {
        let unset = || "(unset)".to_string();
        vec![
            (
                "ImageId".into(),
                self.image_id.clone().unwrap_or_else(unset),
            ),
            (
                "ImageVersion".into(),
                self.image_version.clone().unwrap_or_else(unset),
            ),
            (
                "Hostname".into(),
                self.hostname.clone().unwrap_or_else(unset),
            ),
        ]
    }

    fn edit(&self, store: &Store, tree: &mut Manifest) -> Result<(), StageError> {
        if self.is_empty() {
            return Ok(());
        }
        for path in CANDIDATES {
            let Some(entry) = tree.get(path) else {
                continue;
            };
            let EntryKind::File { blob, .. } = &entry.kind else {
                continue;
            };
            let mode = entry.mode;
            let text = store.read_blob(blob)?;
            let new = self.apply(&String::from_utf8_lossy(&text));
            super::put_file(store, tree, path, new.as_bytes(), mode)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_replaced_in_place_or_appended_as_mkosi_writes_them() {
        let edit = OsRelease {
            image_id: Some("rescue".into()),
            image_version: Some("7".into()),
            hostname: None,
        };
        assert_eq!(
            edit.apply("NAME=\"Debian\"\nIMAGE_ID=old\nID=debian\n"),
            "NAME=\"Debian\"\nIMAGE_ID=\"rescue\"\nID=debian\nIMAGE_VERSION=\"7\"\n"
        );
        assert_eq!(
            edit.apply("ID=x"),
            "ID=x\nIMAGE_ID=\"rescue\"\nIMAGE_VERSION=\"7\"\n"
        );
    }
}
