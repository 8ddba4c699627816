//! Assigning a value to a setting as mkosi's parse callbacks do: specifiers expanded, the value
//! checked and read by the setting's kind, then combined with what was set before (lists append,
//! an empty value resets, other values replace).

use std::path::PathBuf;

use miette::Severity;

use super::diagnostics::{ConfigIssue, Location, SourceText};
use super::ini::Entry;
use super::load::{Assignment, Context, Input, InputLine, Val};
use super::settings::{self, Item, Kind, Setting};
use super::specifiers::{self, Expansion, Problem};
use super::values;

impl Context<'_, '_> {
    /// The lines of an entry's value with specifiers expanded; unknown or unset specifiers are
    /// reported.
    pub(crate) fn expand_entry(&mut self, source: &SourceText, entry: &Entry) -> Input {
        let mut lines = Vec::new();
        for line in &entry.lines {
            let text = self.expand_specifiers(source, &line.text, line.span.offset);
            let exact = text == line.text;
            lines.push(InputLine {
                text,
                span: Some(line.span),
                exact,
            });
        }
        Input {
            lines,
            origin: source.name.clone(),
            source: Some(source.clone()),
        }
    }

    /// Expands the specifiers of `text`, found at `offset` in `source`.
    pub(crate) fn expand_specifiers(
        &mut self,
        source: &SourceText,
        text: &str,
        offset: usize,
    ) -> String {
        let (expanded, problems) = specifiers::expand(text, |c| self.specifier(c, source));
        for problem in problems {
            let (at, message, help) = match problem {
                Problem::Unknown { offset: at, c } => (
                    at,
                    format!("Unknown specifier `%{c}`: it expands to nothing"),
                    "Write `%%` for a literal `%`; see mkosi(1) for the specifiers".to_string(),
                ),
                Problem::Unset {
                    offset: at,
                    c,
                    setting,
                } => (
                    at,
                    format!("Specifier `%{c}` expands to nothing: `{setting}=` is not set yet"),
                    format!(
                        "Set `{setting}=` in a file read before this one, or don't use `%{c}` here"
                    ),
                ),
            };
            self.issue(
                ConfigIssue::new(Severity::Warning, "kiln::config::specifier", message)
                    .with_help(help)
                    .at(source, offset + at, 2, "expands to nothing"),
            );
        }
        expanded
    }

    fn specifier(&mut self, c: char, source: &SourceText) -> Expansion {
        if let Some(setting) = settings::by_specifier(c) {
            return match self.finalize_value(setting) {
                Some(value) => Expansion::Value(self.specifier_text(&value)),
                None => Expansion::Unset(setting.name),
            };
        }
        match c {
            'C' => {
                let file = self.shared.project.join(&source.name);
                let dir = file
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| self.shared.project.clone());
                Expansion::Value(dir.to_string_lossy().into_owned())
            }
            'P' => Expansion::Value(self.cwd.to_string_lossy().into_owned()),
            'D' => Expansion::Value(self.shared.project.to_string_lossy().into_owned()),
            'I' => Expansion::Value(self.image.clone()),
            'F' => Expansion::Value(self.distribution().filesystem().to_string()),
            _ => Expansion::Unknown,
        }
    }

    fn specifier_text(&self, value: &Val) -> String {
        match value {
            Val::Text(text) => text.clone(),
            Val::Path(path) => path.to_string_lossy().into_owned(),
            Val::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
            Val::Feature(f) => f.as_str().to_string(),
            Val::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        }
    }

    /// Assigns `input` to `setting` in the configuration layer.
    pub(crate) fn assign(
        &mut self,
        setting: &'static Setting,
        input: Input,
        location: Option<Location>,
    ) {
        let old = self.config.get(setting.name).cloned().flatten();
        let Some(new) = self.parse_value(setting, &input, old) else {
            return;
        };
        if let Some(location) = location {
            self.shared.assignments.push(Assignment {
                image: self.image.clone(),
                setting: setting.name,
                value: input.joined(),
                location,
            });
        }
        self.config.insert(setting.name, new);
    }

    /// The new value of `setting` (`Some(None)` empties it), or `None` when the value is invalid
    /// (and reported) so the setting keeps its old value.
    pub(crate) fn parse_value(
        &mut self,
        setting: &'static Setting,
        input: &Input,
        old: Option<Val>,
    ) -> Option<Option<Val>> {
        let joined = input.joined();
        let name = setting.name;
        match setting.kind {
            Kind::Unsupported => None,
            Kind::Text => Some((!joined.is_empty()).then_some(Val::Text(joined))),
            Kind::Filename => unless_empty(joined, |j| self.parse_filename(name, input, j)),
            Kind::NamePart => unless_empty(joined, |j| self.parse_name_part(name, input, j)),
            Kind::Bool => unless_empty(joined, |j| self.parse_bool(name, input, j)),
            Kind::Feature => unless_empty(joined, |j| self.parse_feature(name, input, j)),
            Kind::Enum(choices) => {
                unless_empty(joined, |j| self.parse_enum(name, input, j, choices))
            }
            Kind::Source(types) => {
                unless_empty(joined, |j| self.parse_source(name, input, j, types))
            }
            Kind::Epoch => unless_empty(joined, |j| self.parse_epoch_value(name, input, j)),
            Kind::Password => unless_empty(joined, |j| {
                Some(Val::Password(values::parse_root_password(&j)))
            }),
            Kind::Path => unless_empty(joined, |j| {
                let (_, resolved) = self.resolve_path(&j, true);
                Some(Val::Path(resolved))
            }),
            Kind::Key { secret } => unless_empty(joined, |j| self.parse_key(j, secret)),
            Kind::Environment => self.parse_environment(setting, input, old),
            Kind::Include => self.parse_includes(input, old),
            Kind::List {
                delimiter,
                item,
                sort,
            } => self.parse_list(setting, input, old, delimiter, item, sort),
        }
    }

    /// A `Kind::Filename` value: a file name without `/`.
    fn parse_filename(&mut self, name: &str, input: &Input, joined: String) -> Option<Val> {
        if !values::is_valid_filename(&joined) {
            let issue = invalid(
                format!("`{joined}` is not a valid file name for `{name}=`"),
                format!(
                    "`{name}=` takes a file name without `/`; set the directory with `OutputDirectory=`"
                ),
            );
            self.issue(input.locate(issue, "not a file name"));
            return None;
        }
        Some(Val::Text(joined))
    }

    /// A `Kind::NamePart` value: a part of the output's default file name.
    fn parse_name_part(&mut self, name: &str, input: &Input, joined: String) -> Option<Val> {
        if !values::is_valid_filename(&joined) {
            // A value from the command line or a default file has no line to point at:
            // the message names where it came from.
            let setting = match &input.source {
                Some(_) => format!("`{name}=`"),
                None => format!("`{name}=` from {}", input.origin),
            };
            let issue = invalid(
                format!("`{joined}` cannot be part of the output's file name ({setting})"),
                format!(
                    "The output is named `<ImageId>_<ImageVersion>` inside `OutputDirectory=`: `{name}=` takes a name without `/` that is not `.` or `..`"
                ),
            );
            self.issue(input.locate(issue, "not a file name"));
            return None;
        }
        Some(Val::Text(joined))
    }

    /// A `Kind::Bool` value.
    fn parse_bool(&mut self, name: &str, input: &Input, joined: String) -> Option<Val> {
        match values::parse_boolean(&joined) {
            Some(b) => Some(Val::Bool(b)),
            None => {
                let issue = invalid(
                    format!("Invalid boolean `{joined}` for `{name}=`"),
                    "Use yes or no (also accepted: true/false, 1/0, on/off, y/n, t/f, always/never)".to_string(),
                );
                self.issue(input.locate(issue, "not a boolean"));
                None
            }
        }
    }

    /// A `Kind::Feature` value: yes, no or auto.
    fn parse_feature(&mut self, name: &str, input: &Input, joined: String) -> Option<Val> {
        match values::parse_feature(&joined) {
            Some(f) => Some(Val::Feature(f)),
            None => {
                let issue = invalid(
                    format!("Invalid value `{joined}` for `{name}=`"),
                    "Use yes, no or auto (also accepted: enabled/disabled and mkosi's other booleans)".to_string(),
                );
                self.issue(input.locate(issue, "not yes, no or auto"));
                None
            }
        }
    }

    /// A `Kind::Enum` value: one of `choices`.
    fn parse_enum(
        &mut self,
        name: &str,
        input: &Input,
        joined: String,
        choices: &[&str],
    ) -> Option<Val> {
        if choices.contains(&joined.as_str()) {
            return Some(Val::Text(joined));
        }
        let listed = choices
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let help = match settings::closest(&joined, choices.iter().copied()) {
            Some(near) => format!("Did you mean `{near}`? Valid values are {listed}"),
            None => format!("Valid values are {listed}"),
        };
        let issue = invalid(
            format!("`{joined}` is not a valid value for `{name}=`"),
            help,
        );
        self.issue(input.locate(issue, "invalid value"));
        None
    }

    /// A `Kind::Source` value: `TYPE[:SOURCE]` with `TYPE` one of `types`.
    fn parse_source(
        &mut self,
        name: &str,
        input: &Input,
        joined: String,
        types: &[&str],
    ) -> Option<Val> {
        let kind = joined
            .split_once(':')
            .map_or(joined.as_str(), |(kind, _)| kind);
        if types.contains(&kind) {
            return Some(Val::Text(joined));
        }
        let listed = types
            .iter()
            .map(|t| match *t {
                "file" => "`file`".to_string(),
                other => format!("`{other}:NAME`"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let issue = invalid(
            format!("`{joined}` is not a valid source for `{name}=`"),
            format!("Valid sources are {listed}"),
        );
        self.issue(input.locate(issue, "invalid source"));
        None
    }

    /// A `Kind::Epoch` value: seconds since 1970.
    fn parse_epoch_value(&mut self, name: &str, input: &Input, joined: String) -> Option<Val> {
        match parse_epoch(&joined) {
            Ok(epoch) => Some(Val::Int(epoch)),
            Err(message) => {
                let issue = invalid(
                    format!("{message} for `{name}=`"),
                    "Give seconds since 1970-01-01 UTC, such as the output of `date +%s`"
                        .to_string(),
                );
                self.issue(input.locate(issue, "not a timestamp"));
                None
            }
        }
    }

    /// A `Kind::Key` value: a path when it exists (checked for others' access when `secret`),
    /// else kept as written.
    fn parse_key(&mut self, joined: String, secret: bool) -> Option<Val> {
        let candidate = self.cwd.join(&joined);
        if candidate.exists() {
            let (_, resolved) = self.resolve_path(&joined, true);
            if secret && !self.secret_ok(&resolved, 0o007) {
                return None;
            }
            return Some(Val::Path(resolved));
        }
        Some(Val::Path(PathBuf::from(joined)))
    }

    fn parse_list(
        &mut self,
        setting: &'static Setting,
        input: &Input,
        old: Option<Val>,
        delimiter: char,
        item: Item,
        sort: bool,
    ) -> Option<Option<Val>> {
        if input.joined().is_empty() {
            return Some(None);
        }
        let mut items = ListItems::default();
        for (index, line) in input.lines.iter().enumerate() {
            let mut offset = 0;
            for piece in line.text.split(delimiter) {
                let at = ItemAt {
                    input,
                    line: index,
                    start: offset,
                    name: setting.name,
                };
                offset += piece.len() + delimiter.len_utf8();
                if piece.is_empty() {
                    continue;
                }
                self.list_item(&at, piece, delimiter, item, &mut items);
            }
        }
        Some(Some(items.combine(old, item, sort)))
    }

    /// Reads one non-empty `piece` of a list into `items`, or reports why it is left out.
    fn list_item(
        &mut self,
        at: &ItemAt<'_>,
        piece: &str,
        delimiter: char,
        item: Item,
        items: &mut ListItems,
    ) {
        let name = at.name;
        match item {
            Item::Text => {
                if piece.trim() != piece && delimiter != ' ' {
                    let issue = ConfigIssue::new(
                        Severity::Warning,
                        "kiln::config::list_whitespace",
                        format!("`{name}=` item `{piece}` has spaces around it, which mkosi keeps"),
                    )
                    .with_help(format!("mkosi splits `{name}=` at `{delimiter}` and newlines only: remove the spaces, or put one item per line"));
                    self.issue(at.locate(issue, piece, "spaces kept"));
                }
                items.texts.push(piece.to_string());
            }
            Item::Profile => {
                if values::is_valid_filename(piece) {
                    items.texts.push(piece.to_string());
                } else {
                    let issue = ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::invalid_value",
                        format!("`{piece}` is not a valid profile"),
                    )
                    .with_help("`Profiles=` takes names with no path components");
                    self.issue(at.locate(issue, piece, "not a profile name"));
                }
            }
            Item::Path { required } => {
                let (lexical, resolved) = self.resolve_path(piece, true);
                if required && !lexical.exists() {
                    self.missing_path(at.input, at.line, at.start, piece, name);
                    return;
                }
                items.paths.push(resolved);
            }
            Item::Tree { required } => {
                if let Some(tree) = self.tree_item(at, piece, required) {
                    items.trees.push(tree);
                }
            }
        }
    }

    /// One `SOURCE[:TARGET]` item of a list of trees, or `None` when it is reported as invalid.
    fn tree_item(
        &mut self,
        at: &ItemAt<'_>,
        piece: &str,
        required: bool,
    ) -> Option<(PathBuf, Option<PathBuf>)> {
        let name = at.name;
        let (source, target) = match piece.split_once(':') {
            Some((s, t)) => (s, Some(t)),
            None => (piece, None),
        };
        let (lexical, resolved) = self.resolve_path(source, true);
        if required && !lexical.exists() {
            self.missing_path(at.input, at.line, at.start, source, name);
            return None;
        }
        let target = match target {
            Some(t) => {
                let t = self.env().expand_vars(t);
                if !t.starts_with('/') {
                    let issue = ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::invalid_value",
                        format!("Target `{t}` of `{name}=` must be an absolute path"),
                    )
                    .with_help("Write trees as `SOURCE[:TARGET]` with TARGET starting with `/`, e.g. `mkosi.extra:/opt`");
                    self.issue(at.locate(issue, piece, "relative target"));
                    return None;
                }
                Some(PathBuf::from(t))
            }
            None => None,
        };
        Some((resolved, target))
    }

    fn missing_path(&mut self, input: &Input, line: usize, offset: usize, piece: &str, name: &str) {
        let issue = ConfigIssue::new(
            Severity::Error,
            "kiln::config::missing_path",
            format!("`{piece}` of `{name}=` does not exist"),
        )
        .with_help(format!(
            "Relative paths are relative to {}; create it or fix the path",
            self.cwd_phrase()
        ));
        let issue = input.locate_item(
            issue,
            line,
            offset,
            piece.len(),
            "no such file or directory",
        );
        self.issue(issue);
    }

    fn parse_environment(
        &mut self,
        setting: &'static Setting,
        input: &Input,
        old: Option<Val>,
    ) -> Option<Option<Val>> {
        let words = match values::shell_split(&input.joined()) {
            Ok(words) => words,
            Err(error) => {
                let what = match error {
                    values::SplitError::UnterminatedQuote(q) => {
                        format!("an unterminated `{q}` quote")
                    }
                    values::SplitError::TrailingBackslash => "a `\\` at its end".to_string(),
                };
                let issue = ConfigIssue::new(
                    Severity::Error,
                    "kiln::config::invalid_value",
                    format!("`{}=` has {what}", setting.name),
                )
                .with_help(
                    "Values are split like shell words: close every quote, escape a trailing `\\`",
                );
                self.issue(input.locate(issue, "cannot be split"));
                return None;
            }
        };
        if words.is_empty() {
            return Some(None);
        }
        let mut map = match old {
            Some(Val::Map(map)) => map,
            _ => Default::default(),
        };
        for word in words {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                None => {
                    let key = word.trim().to_string();
                    let value = self.env().get(&key).unwrap_or_default().to_string();
                    (key, value)
                }
            };
            map.insert(key, value);
        }
        Some(Some(Val::Map(map)))
    }

    fn parse_includes(&mut self, input: &Input, old: Option<Val>) -> Option<Option<Val>> {
        let mut list = match old {
            Some(Val::Paths(list)) => list,
            _ => Vec::new(),
        };
        for (index, line) in input.lines.iter().enumerate() {
            let mut offset = 0;
            for piece in line.text.split(',') {
                let start = offset;
                offset += piece.len() + 1;
                if piece.is_empty() {
                    continue;
                }
                if let Some(resolved) = self.include_item(input, index, start, piece) {
                    list.push(resolved);
                }
            }
        }
        Some(Some(Val::Paths(list)))
    }

    /// The file one non-empty item of `Include=` names, or `None` when it cannot be included
    /// (reported).
    fn include_item(
        &mut self,
        input: &Input,
        index: usize,
        start: usize,
        piece: &str,
    ) -> Option<PathBuf> {
        if settings::BUILTIN_CONFIGS.contains(&piece) {
            let issue = ConfigIssue::new(
                        Severity::Warning,
                        "kiln::config::not_implemented",
                        format!("`Include={piece}` names a configuration shipped with mkosi, which kiln does not have; it is ignored"),
                    )
                    .with_help("Copy the settings you need from mkosi's resources into the project");
            self.issue(input.locate_item(issue, index, start, piece.len(), "built into mkosi"));
            return None;
        }
        let (lexical, resolved) = self.resolve_path(piece, true);
        if !lexical.exists() {
            let issue = ConfigIssue::new(
                Severity::Error,
                "kiln::config::missing_include",
                format!("Included `{piece}` does not exist"),
            )
            .with_help(format!(
                "Relative includes are relative to {}; create the file or fix the path",
                self.cwd_phrase()
            ));
            self.issue(input.locate_item(
                issue,
                index,
                start,
                piece.len(),
                "no such file or directory",
            ));
            return None;
        }
        if let Some(id) = super::load::file_id(&resolved)
            && let Some(mut chain) = self.include_cycle(id)
        {
            chain.push(self.shared.display(&resolved));
            let issue = ConfigIssue::new(
                Severity::Error,
                "kiln::config::include_cycle",
                format!("Including `{piece}` makes a cycle"),
            )
            .with_help(format!(
                "The includes go round: {}; remove one of them",
                chain.join(" -> ")
            ));
            self.issue(input.locate_item(
                issue,
                index,
                start,
                piece.len(),
                "included again while being read",
            ));
            return None;
        }
        if self.include_depth() >= super::load::MAX_INCLUDE_DEPTH {
            let issue = ConfigIssue::new(
                Severity::Error,
                "kiln::config::include_depth",
                format!(
                    "Including `{piece}` nests configuration more than {} levels deep",
                    super::load::MAX_INCLUDE_DEPTH
                ),
            )
            .with_help(
                "Include the files side by side from one place instead of each from the one before",
            );
            self.issue(input.locate_item(issue, index, start, piece.len(), "included too deep"));
            return None;
        }
        Some(resolved)
    }
}

impl Context<'_, '_> {
    /// The directory relative paths are read against, as reports name it.
    fn cwd_phrase(&self) -> String {
        match self.shared.display(&self.cwd).as_str() {
            "." => "the project directory".to_string(),
            other => format!("`{other}`"),
        }
    }
}

/// An error about an invalid value, with `help` saying what to write instead.
fn invalid(message: String, help: String) -> ConfigIssue {
    ConfigIssue::new(Severity::Error, "kiln::config::invalid_value", message).with_help(help)
}

/// `Some(None)` (the setting emptied) for an empty value, else the value `parse` reads from it
/// (`None` when it is invalid and reported).
fn unless_empty(joined: String, parse: impl FnOnce(String) -> Option<Val>) -> Option<Option<Val>> {
    if joined.is_empty() {
        return Some(None);
    }
    parse(joined).map(Some)
}

/// Where an item of a list was written: its line of the input and its offset in that line.
struct ItemAt<'a> {
    input: &'a Input,
    line: usize,
    start: usize,
    name: &'static str,
}

impl ItemAt<'_> {
    /// `issue` pointed at `piece`, the item written here.
    fn locate(&self, issue: ConfigIssue, piece: &str, label: &str) -> ConfigIssue {
        self.input
            .locate_item(issue, self.line, self.start, piece.len(), label)
    }
}

/// The items a list setting reads from one assignment, by the kind of item.
#[derive(Default)]
struct ListItems {
    texts: Vec<String>,
    paths: Vec<PathBuf>,
    trees: Vec<(PathBuf, Option<PathBuf>)>,
}

impl ListItems {
    /// The list's new value: `old` with these items appended (texts sorted when `sort`).
    fn combine(self, old: Option<Val>, item: Item, sort: bool) -> Val {
        match item {
            Item::Text | Item::Profile => {
                let mut list = match old {
                    Some(Val::List(list)) => list,
                    _ => Vec::new(),
                };
                list.extend(self.texts);
                if sort {
                    list.sort_by(|a, b| {
                        values::package_sort_key(a).cmp(&values::package_sort_key(b))
                    });
                }
                Val::List(list)
            }
            Item::Path { .. } => {
                let mut list = match old {
                    Some(Val::Paths(list)) => list,
                    _ => Vec::new(),
                };
                list.extend(self.paths);
                Val::Paths(list)
            }
            Item::Tree { .. } => {
                let mut list = match old {
                    Some(Val::Trees(list)) => list,
                    _ => Vec::new(),
                };
                list.extend(self.trees);
                Val::Trees(list)
            }
        }
    }
}

fn parse_epoch(text: &str) -> Result<u64, String> {
    match text.parse::<i128>() {
        Ok(value) if value < 0 => Err(format!("Timestamp `{text}` cannot be negative")),
        Ok(value) => u64::try_from(value).map_err(|_| format!("Timestamp `{text}` is too large")),
        Err(_) => Err(format!("Timestamp `{text}` is not a valid integer")),
    }
}
