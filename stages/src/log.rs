//! What a stage's tool output says, in the image's terms.
//!
//! Tools run on a checkout or overlay of the image somewhere in the store's scratch space and
//! name files by their full path there (`…/v1/tmp/123-stage-x.tmp/work/merged/etc/os-release`).
//! A user knows that file as `/etc/os-release`: lines are rewritten before anyone sees them.

use std::borrow::Cow;
use std::path::Path;

/// `line` with every mention of the image root `root` replaced by the image's own paths.
pub(crate) fn in_image_terms<'a>(line: &'a str, root: &Path) -> Cow<'a, str> {
    let Some(root) = root.to_str() else {
        return Cow::Borrowed(line);
    };
    let root = root.trim_end_matches('/');
    if root.is_empty() || !line.contains(root) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(root) {
        out.push_str(&rest[..at]);
        let after = &rest[at + root.len()..];
        // The root itself is `/`; a path below it keeps its own leading slash.
        if !after.starts_with('/') {
            out.push('/');
        }
        rest = after;
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_roots_become_image_paths() {
        let root = Path::new("/store/v1/tmp/1-stage.tmp/work/merged");
        assert_eq!(
            in_image_terms(
                "Created symlink /store/v1/tmp/1-stage.tmp/work/merged/etc/a → /lib/a.",
                root
            ),
            "Created symlink /etc/a → /lib/a."
        );
        assert_eq!(
            in_image_terms("root is /store/v1/tmp/1-stage.tmp/work/merged", root),
            "root is /"
        );
        assert_eq!(in_image_terms("nothing here", root), "nothing here");
    }
}
