//! The `mkosi.conf` line parser: sections, `Key=Value` entries and continuation lines, each with
//! its byte span in the file.
//!
//! This parser is hand-written on purpose. mkosi's files look like INI files but are not read with
//! INI rules (mkosi itself does not use Python's `configparser`): sections may repeat, a key may be
//! given many times (each time appends or resets), keys are case-sensitive, the whole file is
//! first dedented (Python's `textwrap.dedent`), a `#` starts a comment anywhere on a line (even
//! inside a value), an indented line continues the previous value, and lines that are blank
//! once comments are removed are skipped, also between the lines of a value. No INI crate does
//! all of that, and none keeps a span for every value, which kiln needs to point at mistakes.
//!
//! The parser reports every syntax error it finds instead of stopping at the first one: after a
//! bad line, the indented lines that follow it are skipped with it.

/// A byte range in the original (not dedented) file text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub offset: usize,
    pub len: usize,
}

impl Span {
    pub(crate) fn new(offset: usize, len: usize) -> Span {
        Span { offset, len }
    }
}

/// One line of a value: its text without surrounding whitespace and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueLine {
    pub text: String,
    pub span: Span,
}

/// `Key=Value`, with the value's continuation lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_span: Span,
    /// The first line is what follows `=` (possibly empty); continuation lines follow.
    pub lines: Vec<ValueLine>,
}

impl Entry {
    /// The value as mkosi sees it: the lines joined with newlines.
    pub(crate) fn value(&self) -> String {
        let texts: Vec<&str> = self.lines.iter().map(|l| l.text.as_str()).collect();
        texts.join("\n")
    }

    /// The span from the start of the value to the end of its last line.
    pub(crate) fn value_span(&self) -> Span {
        let first = self.lines.first().map_or(self.key_span, |l| l.span);
        let last = self.lines.last().map_or(self.key_span, |l| l.span);
        Span::new(
            first.offset,
            (last.offset + last.len).saturating_sub(first.offset),
        )
    }
}

/// A `[Section]` block; a section name given twice makes two blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub name: String,
    pub header: Span,
    pub entries: Vec<Entry>,
}

/// A syntax error: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyntaxError {
    /// `Key=Value` before any `[Section]`.
    OutsideSection { line: String, span: Span },
    /// A line that is neither a section header nor `Key=Value`.
    MissingEquals { key: String, span: Span },
    /// `=Value` with nothing before the `=`.
    MissingName { span: Span },
    /// `[Section` without the closing bracket.
    UnterminatedSection { line: String, span: Span },
    /// `[]` or `[   ]`.
    EmptySection { span: Span },
}

/// A parsed file: its sections in order and its syntax errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IniFile {
    pub sections: Vec<Section>,
    pub errors: Vec<SyntaxError>,
}

/// One physical line of the file: where it starts and its text without the line break.
struct RawLine<'a> {
    offset: usize,
    text: &'a str,
}

fn raw_lines(text: &str) -> Vec<RawLine<'_>> {
    let mut lines = Vec::new();
    let mut offset = 0;
    for piece in text.split_inclusive('\n') {
        let without_newline = piece.strip_suffix('\n').unwrap_or(piece);
        let line = without_newline
            .strip_suffix('\r')
            .unwrap_or(without_newline);
        lines.push(RawLine { offset, text: line });
        offset += piece.len();
    }
    lines
}

/// The indentation `textwrap.dedent` removes: the longest run of spaces and tabs that starts every
/// line holding something other than spaces and tabs.
fn common_margin<'a>(lines: &[RawLine<'a>]) -> &'a str {
    let mut margin: Option<&str> = None;
    for line in lines {
        let indent_len = line.text.len() - line.text.trim_start_matches([' ', '\t']).len();
        if indent_len == line.text.len() {
            continue;
        }
        let indent = &line.text[..indent_len];
        margin = Some(match margin {
            None => indent,
            Some(m) if indent.starts_with(m) => m,
            Some(m) if m.starts_with(indent) => indent,
            Some(m) => {
                let common = m
                    .bytes()
                    .zip(indent.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                &m[..common]
            }
        });
    }
    margin.unwrap_or("")
}

/// Parses a configuration file the way mkosi's `parse_ini()` does.
pub(crate) fn parse(text: &str) -> IniFile {
    let lines = raw_lines(text);
    let margin = common_margin(&lines).len();
    let mut parser = Parser::default();
    for raw in &lines {
        if let Some(line) = content_line(raw, margin) {
            parser.line(&line);
        }
    }
    parser.finish()
}

/// A line with something other than a comment: its text without surrounding whitespace, where
/// that text is, and whether the line is indented (once dedented).
struct ContentLine<'a> {
    trimmed: &'a str,
    offset: usize,
    indented: bool,
}

impl ContentLine<'_> {
    fn span(&self) -> Span {
        Span::new(self.offset, self.trimmed.len())
    }
}

/// `raw` dedented by `margin` and with its comment removed, or `None` when nothing is left.
fn content_line<'a>(raw: &RawLine<'a>, margin: usize) -> Option<ContentLine<'a>> {
    // Dedent: lines made only of spaces and tabs become empty, others lose the margin.
    let only_blanks = raw.text.trim_start_matches([' ', '\t']).is_empty();
    if only_blanks {
        return None;
    }
    let start = raw.offset + margin;
    let mut line = &raw.text[margin..];
    if let Some(hash) = line.find('#') {
        line = &line[..hash];
    }
    if line.trim().is_empty() {
        return None;
    }
    Some(ContentLine {
        trimmed: line.trim(),
        offset: start + (line.len() - line.trim_start().len()),
        indented: line.starts_with(char::is_whitespace),
    })
}

/// The state of reading a file line by line.
#[derive(Default)]
struct Parser {
    file: IniFile,
    /// The entry being read, which indented lines continue.
    current: Option<Entry>,
    /// After a bad line, its indented continuation lines are skipped with it.
    skipping: bool,
    /// After a bad section header, the lines up to the next header belong to no section and are
    /// skipped with it.
    bad_section: bool,
}

impl Parser {
    fn line(&mut self, line: &ContentLine<'_>) {
        if line.indented {
            if let Some(entry) = self.current.as_mut() {
                entry.lines.push(ValueLine {
                    text: line.trimmed.to_string(),
                    span: line.span(),
                });
                return;
            }
            if self.skipping {
                return;
            }
        }
        self.skipping = false;
        if let Some(entry) = self.current.take() {
            push_entry(&mut self.file, entry);
        }
        if line.trimmed.starts_with('[') {
            self.section_header(line);
            return;
        }
        if self.bad_section {
            return;
        }
        if self.file.sections.is_empty() {
            self.file.errors.push(SyntaxError::OutsideSection {
                line: line.trimmed.to_string(),
                span: line.span(),
            });
            self.skipping = true;
            return;
        }
        self.entry(line);
    }

    /// A line starting with `[`.
    fn section_header(&mut self, line: &ContentLine<'_>) {
        let trimmed = line.trimmed;
        if !trimmed.ends_with(']') || trimmed.len() < 2 {
            self.file.errors.push(SyntaxError::UnterminatedSection {
                line: trimmed.to_string(),
                span: line.span(),
            });
            self.bad_section = true;
            return;
        }
        let name = trimmed[1..trimmed.len() - 1].trim();
        if name.is_empty() {
            self.file
                .errors
                .push(SyntaxError::EmptySection { span: line.span() });
            self.bad_section = true;
            return;
        }
        self.bad_section = false;
        self.file.sections.push(Section {
            name: name.to_string(),
            header: line.span(),
            entries: Vec::new(),
        });
    }

    /// A `Key=Value` line inside a section, which starts the entry indented lines continue.
    fn entry(&mut self, line: &ContentLine<'_>) {
        let trimmed = line.trimmed;
        let Some(eq) = trimmed.find('=') else {
            self.file.errors.push(SyntaxError::MissingEquals {
                key: trimmed.to_string(),
                span: line.span(),
            });
            self.skipping = true;
            return;
        };
        if eq == 0 {
            self.file
                .errors
                .push(SyntaxError::MissingName { span: line.span() });
            self.skipping = true;
            return;
        }
        let raw_key = &trimmed[..eq];
        let key = raw_key.trim_end();
        let raw_value = &trimmed[eq + 1..];
        let value = raw_value.trim();
        let value_offset = line.offset + eq + 1 + (raw_value.len() - raw_value.trim_start().len());
        self.current = Some(Entry {
            key: key.to_string(),
            key_span: Span::new(line.offset, key.len()),
            lines: vec![ValueLine {
                text: value.to_string(),
                span: Span::new(value_offset, value.len()),
            }],
        });
    }

    fn finish(mut self) -> IniFile {
        if let Some(entry) = self.current.take() {
            push_entry(&mut self.file, entry);
        }
        self.file
    }
}

fn push_entry(file: &mut IniFile, entry: Entry) {
    if let Some(section) = file.sections.last_mut() {
        section.entries.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(file: &IniFile) -> Vec<(String, String, String)> {
        file.sections
            .iter()
            .flat_map(|s| {
                s.entries
                    .iter()
                    .map(move |e| (s.name.clone(), e.key.clone(), e.value()))
            })
            .collect()
    }

    fn triple(section: &str, key: &str, value: &str) -> (String, String, String) {
        (section.to_string(), key.to_string(), value.to_string())
    }

    #[test]
    fn sections_repeat_and_keys_keep_their_case() {
        let file = parse("[Content]\nPackages=a\n[Output]\nFormat=uki\n[Content]\npackages=b\n");
        assert!(file.errors.is_empty());
        assert_eq!(file.sections.len(), 3);
        assert_eq!(
            entries(&file),
            vec![
                triple("Content", "Packages", "a"),
                triple("Output", "Format", "uki"),
                triple("Content", "packages", "b"),
            ]
        );
    }

    #[test]
    fn continuation_lines_comments_and_spaces_around_equals() {
        let text = "[Content]\nPackages =  base \n    linux # the kernel\n    # a comment\n\n    nano\nHostname = box#name\n";
        let file = parse(text);
        assert!(file.errors.is_empty(), "{:?}", file.errors);
        assert_eq!(
            entries(&file),
            vec![
                triple("Content", "Packages", "base\nlinux\nnano"),
                triple("Content", "Hostname", "box")
            ]
        );
        let packages = &file.sections[0].entries[0];
        let linux = &packages.lines[1];
        assert_eq!(
            &text[linux.span.offset..linux.span.offset + linux.span.len],
            "linux"
        );
        assert_eq!(
            &text[packages.key_span.offset..][..packages.key_span.len],
            "Packages"
        );
    }

    #[test]
    fn the_whole_file_is_dedented_first() {
        let text = "  [Distribution]\n  Distribution=arch\n  [Content]\n  Packages=\n      base\n  Hostname=x";
        let file = parse(text);
        assert!(file.errors.is_empty(), "{:?}", file.errors);
        assert_eq!(
            entries(&file),
            vec![
                triple("Distribution", "Distribution", "arch"),
                triple("Content", "Packages", "\nbase"),
                triple("Content", "Hostname", "x"),
            ]
        );
        let hostname = &file.sections[1].entries[1];
        assert_eq!(&text[hostname.lines[0].span.offset..][..1], "x");
    }

    #[test]
    fn margin_is_the_common_prefix_of_spaces_and_tabs() {
        let lines = raw_lines("\t  a\n\t b\n   \n");
        assert_eq!(common_margin(&lines), "\t ");
        let lines = raw_lines("  a\n\tb\n");
        assert_eq!(common_margin(&lines), "");
    }

    #[test]
    fn empty_values_and_crlf() {
        let file = parse("[Content]\r\nPackages=\r\nHostname=a\r\n");
        assert_eq!(
            entries(&file),
            vec![
                triple("Content", "Packages", ""),
                triple("Content", "Hostname", "a")
            ]
        );
    }

    #[test]
    fn every_syntax_error_is_reported() {
        // The lines below a bad header are skipped with it, up to the next header.
        let text = "Packages=a\n[Content\n[ ]\nKey=skipped\n[Content]\nPackages\n    base\n=foo\nHostname=ok\n";
        let file = parse(text);
        let kinds: Vec<&str> = file
            .errors
            .iter()
            .map(|e| match e {
                SyntaxError::OutsideSection { .. } => "outside",
                SyntaxError::MissingEquals { .. } => "equals",
                SyntaxError::MissingName { .. } => "name",
                SyntaxError::UnterminatedSection { .. } => "unterminated",
                SyntaxError::EmptySection { .. } => "empty",
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["outside", "unterminated", "empty", "equals", "name"]
        );
        assert_eq!(entries(&file), vec![triple("Content", "Hostname", "ok")]);
    }

    #[test]
    fn an_indented_line_after_a_header_is_a_setting() {
        let file = parse("[Content]\n  Hostname=a\n");
        assert!(file.errors.is_empty());
        assert_eq!(entries(&file), vec![triple("Content", "Hostname", "a")]);
    }
}
