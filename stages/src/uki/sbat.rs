//! The `.sbat` section of a UKI: Secure Boot Advanced Targeting metadata, merged as ukify
//! merges it.
//!
//! Each input (the stub's `.sbat`, the kernel's when it has one, kiln's own line) is a CSV text
//! whose first line is the `sbat,1,...` format line. The merge keeps every input's other lines,
//! in order, after one format line, and ends with a newline and a NUL byte, so that shim can
//! revoke the stub, the kernel or the UKI by its component's generation.

/// The SBAT format line every `.sbat` starts with.
pub const SBAT_FORMAT_LINE: &str =
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md";

/// kiln's component line, modelled on the `uki` line ukify adds: a UKI assembled by kiln can be
/// revoked by raising this generation.
pub const KILN_SBAT_LINE: &str =
    "kiln,1,kiln,kiln,1,https://uapi-group.org/specifications/specs/unified_kernel_image/";

/// The component lines of one `.sbat` text (everything after the format line), or `None` when
/// the text is not SBAT (not UTF-8, or not starting with `sbat,`); ukify skips such inputs too.
pub fn component_lines(sbat: &[u8]) -> Option<Vec<String>> {
    let end = sbat.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&sbat[..end]).ok()?;
    let mut lines = text.lines();
    if !lines.next()?.starts_with("sbat,") {
        return None;
    }
    Some(lines.map(str::to_string).collect())
}

/// Merges `.sbat` texts: one format line, then each input's component lines in order, then
/// `extra_lines`; the result ends with `\n\0`.
pub fn merge_sbat<'a>(inputs: impl IntoIterator<Item = &'a [u8]>, extra_lines: &[&str]) -> Vec<u8> {
    let mut lines: Vec<String> = inputs
        .into_iter()
        .filter_map(component_lines)
        .flatten()
        .collect();
    lines.extend(extra_lines.iter().map(|line| line.to_string()));
    let mut text = format!("{SBAT_FORMAT_LINE}\n{}\n", lines.join("\n"));
    text.push('\0');
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_stub_lines_and_kiln_line_after_one_format_line() {
        let stub = format!(
            "{SBAT_FORMAT_LINE}\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\n\0\0\0"
        );
        let merged = merge_sbat(
            [stub.as_bytes(), b"garbage\n".as_slice()],
            &[KILN_SBAT_LINE],
        );
        let expected = format!(
            "{SBAT_FORMAT_LINE}\nsystemd,1,The systemd Developers,systemd,252,https://systemd.io/\n{KILN_SBAT_LINE}\n\0"
        );
        assert_eq!(String::from_utf8(merged).unwrap(), expected);
    }

    #[test]
    fn text_that_is_not_sbat_is_skipped() {
        assert_eq!(component_lines(b"hello\nworld\n"), None);
        assert_eq!(component_lines(&[0xff, 0xfe]), None);
        assert_eq!(component_lines(b""), None);
        assert_eq!(component_lines(b"\0\0"), None);
    }
}
