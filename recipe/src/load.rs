//! Reading a mkosi project directory the way mkosi's `ParseContext` does: which files are read,
//! in which order, and where relative paths point.
//!
//! For a configuration directory (the project, a directory in `mkosi.conf.d/`, an included
//! directory, a subimage in `mkosi.images/`, a profile in `mkosi.profiles/`):
//!
//! 1. the `[Match]` sections of its `mkosi.conf` decide whether the directory applies at all;
//! 2. for the project and subimages, `mkosi.local/` and `mkosi.local.conf` are read first; what
//!    they set overrides the other files (but not the command line), as if given on it;
//! 3. default files (`mkosi.extra/`, `mkosi.postinst.chroot`, `mkosi.rootpw`, `mkosi.version`,
//!    ...) set their settings;
//! 4. `mkosi.conf` is read, `Include=` files and directories in place, where they are named;
//! 5. `mkosi.conf.d/*.conf` and directories in it follow, sorted by name;
//! 6. then `mkosi.profiles/<profile>[.conf]` for each selected profile.
//!
//! Relative paths are relative to the configuration directory being read; a file in
//! `mkosi.conf.d/` (and an included file) reads them relative to the directory that holds
//! `mkosi.conf.d/` (the includer's directory), as in mkosi.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use miette::Severity;

use super::diagnostics::{ConfigIssue, Location, SourceText};
use super::host::{Env, absolutize, resolve};
use super::ini::{self, IniFile, Span, SyntaxError};
use super::model::{Feature, RootPassword};
use super::reader_host::ReaderHost;
use super::settings::{self, Kind, Setting};

/// A setting's value while the configuration is read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Text(String),
    Bool(bool),
    Feature(Feature),
    Int(u64),
    List(Vec<String>),
    Paths(Vec<PathBuf>),
    Trees(Vec<(PathBuf, Option<PathBuf>)>),
    Map(BTreeMap<String, String>),
    Password(RootPassword),
    Path(PathBuf),
}

impl Val {
    /// `earlier` followed by `later`, for collections given both in files and on the command
    /// line (`later` wins otherwise).
    pub(crate) fn merged(earlier: &Val, later: &Val) -> Val {
        match (earlier, later) {
            (Val::List(a), Val::List(b)) => Val::List(a.iter().chain(b).cloned().collect()),
            (Val::Paths(a), Val::Paths(b)) => Val::Paths(a.iter().chain(b).cloned().collect()),
            (Val::Trees(a), Val::Trees(b)) => Val::Trees(a.iter().chain(b).cloned().collect()),
            (Val::Map(a), Val::Map(b)) => {
                let mut map = a.clone();
                map.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
                Val::Map(map)
            }
            (_, later) => later.clone(),
        }
    }
}

/// Settings set in one place: a name maps to its value, `None` when explicitly emptied.
pub(crate) type Layer = BTreeMap<&'static str, Option<Val>>;

/// One setting assignment, kept with where it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// `main` or the subimage's name.
    pub image: String,
    /// The setting's canonical name.
    pub setting: &'static str,
    /// The value as written, specifiers expanded.
    pub value: String,
    /// Where: a line of a configuration file, or a default file (line 0) such as `mkosi.extra`.
    pub location: Location,
}

/// A configuration file read and parsed once.
pub(crate) struct Parsed {
    pub path: PathBuf,
    pub source: SourceText,
    pub ini: IniFile,
}

/// An inode, to recognise a file however it is named.
pub(crate) type FileId = (u64, u64);

pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What every image's reading shares: the project, the environment, the machine's programs,
/// and what was found.
pub(crate) struct Shared<'e> {
    pub env: &'e Env,
    pub host: &'e dyn ReaderHost,
    /// The project directory, canonical.
    pub project: PathBuf,
    pub issues: Vec<ConfigIssue>,
    pub files: Vec<String>,
    pub assignments: Vec<Assignment>,
    parsed: BTreeMap<PathBuf, Rc<Parsed>>,
    pub(crate) warned_files: BTreeSet<PathBuf>,
}

impl<'e> Shared<'e> {
    pub(crate) fn new(env: &'e Env, host: &'e dyn ReaderHost, project: PathBuf) -> Shared<'e> {
        Shared {
            env,
            host,
            project,
            issues: Vec::new(),
            files: Vec::new(),
            assignments: Vec::new(),
            parsed: BTreeMap::new(),
            warned_files: BTreeSet::new(),
        }
    }

    /// How reports name a file: relative to the project directory when inside it.
    pub(crate) fn display(&self, path: &Path) -> String {
        match path.strip_prefix(&self.project) {
            Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
            Ok(rel) => rel.display().to_string(),
            Err(_) => path.display().to_string(),
        }
    }

    pub(crate) fn push(&mut self, issue: ConfigIssue) {
        self.issues.push(issue);
    }

    /// Reads and parses a configuration file, once; syntax errors are reported the first time.
    fn parsed(&mut self, path: &Path) -> Option<Rc<Parsed>> {
        if let Some(parsed) = self.parsed.get(path) {
            return Some(Rc::clone(parsed));
        }
        let name = self.display(path);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.push(
                    ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::io",
                        format!("Cannot read `{name}`: {error}"),
                    )
                    .with_help("Check that the file exists and is readable")
                    .in_file(name),
                );
                return None;
            }
        };
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                let valid = error.utf8_error().valid_up_to();
                let lossy = String::from_utf8_lossy(error.as_bytes()).into_owned();
                let source = SourceText::new(name.clone(), lossy);
                self.push(
                    ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::not_utf8",
                        format!("`{name}` is not valid UTF-8"),
                    )
                    .with_help("mkosi reads configuration files as UTF-8 text; re-encode the file as UTF-8")
                    .at(&source, valid, '\u{fffd}'.len_utf8(), "this byte is not UTF-8"),
                );
                return None;
            }
        };
        let source = SourceText::new(name.clone(), text);
        let ini = ini::parse(&source.text);
        for error in &ini.errors {
            let issue = syntax_issue(&source, error);
            self.push(issue);
        }
        let parsed = Rc::new(Parsed {
            path: path.to_path_buf(),
            source,
            ini,
        });
        self.parsed.insert(path.to_path_buf(), Rc::clone(&parsed));
        Some(parsed)
    }
}

fn syntax_issue(source: &SourceText, error: &SyntaxError) -> ConfigIssue {
    let issue = |code, message: String| ConfigIssue::new(Severity::Error, code, message);
    match error {
        SyntaxError::OutsideSection { line, span } => issue(
            "kiln::config::outside_section",
            format!("`{line}` is outside of any section"),
        )
        .with_help("Put settings below a section header such as `[Content]`")
        .at(
            source,
            span.offset,
            span.len,
            "no `[Section]` above this line",
        ),
        SyntaxError::MissingEquals { key, span } => issue(
            "kiln::config::missing_equals",
            format!("Setting `{key}` must be followed by `=`"),
        )
        .with_help("Write settings as `Key=Value`; an empty value (`Key=`) resets a setting")
        .at(source, span.offset, span.len, "no `=` on this line"),
        SyntaxError::MissingName { span } => issue(
            "kiln::config::missing_name",
            "Missing setting name before `=`".to_string(),
        )
        .with_help("Write settings as `Key=Value`")
        .at(source, span.offset, span.len, "nothing before `=`"),
        SyntaxError::UnterminatedSection { line, span } => issue(
            "kiln::config::unterminated_section",
            format!("`{line}` is not a valid section header"),
        )
        .with_help("Close the section name with `]`, as in `[Content]`")
        .at(source, span.offset, span.len, "missing `]`"),
        SyntaxError::EmptySection { span } => issue(
            "kiln::config::empty_section",
            "Section name cannot be empty".to_string(),
        )
        .with_help("Name the section, as in `[Content]`")
        .at(source, span.offset, span.len, "empty section name"),
    }
}

/// How many configuration files and directories may be read inside one another (through
/// `Include=` and `mkosi.conf.d/`): enough for any project, and far from what the reader's stack
/// holds.
pub(crate) const MAX_INCLUDE_DEPTH: usize = 64;

/// Reading one image's configuration: mkosi's `ParseContext`.
pub(crate) struct Context<'s, 'e> {
    pub shared: &'s mut Shared<'e>,
    /// `main` or the subimage's name.
    pub image: String,
    /// The directory relative paths are read against.
    pub cwd: PathBuf,
    /// Settings from the command line and `mkosi.local.conf`: they override the files.
    pub cli: Layer,
    /// Settings emptied on the command line (which also drops what the files set).
    pub cli_emptied: BTreeSet<&'static str>,
    /// Settings from configuration files and default files.
    pub config: Layer,
    /// Defaults computed so far (computed once, as mkosi does).
    pub defaults: BTreeMap<&'static str, Option<Val>>,
    /// Files and directories included so far: each is read once.
    includes: HashSet<FileId>,
    /// What is being read now, for include cycles: identity and name.
    stack: Vec<(FileId, String)>,
}

impl<'s, 'e> Context<'s, 'e> {
    pub(crate) fn new(shared: &'s mut Shared<'e>, image: &str, cwd: PathBuf) -> Context<'s, 'e> {
        Context {
            shared,
            image: image.to_string(),
            cwd,
            cli: Layer::new(),
            cli_emptied: BTreeSet::new(),
            config: Layer::new(),
            defaults: BTreeMap::new(),
            includes: HashSet::new(),
            stack: Vec::new(),
        }
    }

    pub(crate) fn env(&self) -> &'e Env {
        self.shared.env
    }

    pub(crate) fn is_main(&self) -> bool {
        self.image == "main"
    }

    /// Whether this image may not set `setting` (mkosi's `setting_prohibited`).
    pub(crate) fn prohibited(&self, setting: &Setting) -> bool {
        !self.is_main() && setting.scope.main_only()
    }

    pub(crate) fn issue(&mut self, issue: ConfigIssue) {
        self.shared.push(issue);
    }

    /// Reads `path`, a configuration directory or file, with `self.cwd` already set for it.
    /// Returns whether its `[Match]` sections let it apply.
    pub(crate) fn parse_config_one(
        &mut self,
        path: &Path,
        parse_profiles: bool,
        parse_local: bool,
    ) -> bool {
        if self.include_depth() >= MAX_INCLUDE_DEPTH {
            let name = self.shared.display(path);
            self.issue(
                ConfigIssue::new(
                    Severity::Error,
                    "kiln::config::include_depth",
                    format!(
                        "`{name}` lies more than {MAX_INCLUDE_DEPTH} levels of configuration deep"
                    ),
                )
                .with_help("Flatten the nested `mkosi.conf.d/` directories, and check that no symlink leads back up")
                .in_file(name),
            );
            return false;
        }
        let is_dir = path.is_dir();
        let conf = if is_dir {
            path.join("mkosi.conf")
        } else {
            path.to_path_buf()
        };
        let parsed = if conf.exists() {
            self.shared.parsed(&conf)
        } else {
            None
        };

        if let Some(parsed) = &parsed {
            if !self.match_file(parsed, false) {
                return false;
            }
            self.match_file(parsed, true);
        }

        let mut pushed = 0;
        for identity in [Some(path), parsed.as_ref().map(|p| p.path.as_path())]
            .into_iter()
            .flatten()
        {
            if let Some(id) = file_id(identity) {
                let name = self.shared.display(identity);
                self.stack.push((id, name));
                pushed += 1;
            }
        }

        if is_dir {
            if parse_local {
                self.parse_local(path);
            }
            self.apply_default_files(path);
        }

        if let Some(parsed) = &parsed {
            let name = self.shared.display(&parsed.path);
            self.shared.files.push(name);
            self.apply_file(parsed);
        }

        if is_dir {
            self.parse_dropins(path);
        }

        if parse_profiles {
            self.parse_profiles();
        }

        for _ in 0..pushed {
            self.stack.pop();
        }
        true
    }

    /// `mkosi.local/` and `mkosi.local.conf`: read first, then moved to the command-line layer.
    fn parse_local(&mut self, dir: &Path) {
        let local_dir = dir.join("mkosi.local");
        let local_conf = dir.join("mkosi.local.conf");
        let mut candidates = Vec::new();
        if local_dir.is_dir() {
            candidates.push(local_dir);
        }
        if local_conf.is_file() {
            candidates.push(local_conf);
        }
        for local in candidates {
            if local.is_dir() {
                let saved = std::mem::replace(&mut self.cwd, local.clone());
                self.parse_config_one(&local, false, false);
                self.cwd = saved;
            } else {
                self.parse_config_one(&local, false, false);
            }
            let names: Vec<&'static str> = self.config.keys().copied().collect();
            for name in names {
                let value = self.finalize_value(settings::by_name(name));
                self.cli.insert(name, value);
                self.config.remove(name);
            }
        }
    }

    /// `mkosi.conf.d/`: `*.conf` files and directories, sorted by name.
    fn parse_dropins(&mut self, dir: &Path) {
        let dropins = dir.join("mkosi.conf.d");
        if !dropins.exists() {
            return;
        }
        for entry in self.sorted_entries(&dropins) {
            if entry.is_dir() {
                let saved = std::mem::replace(&mut self.cwd, entry.clone());
                self.parse_config_one(&entry, false, false);
                self.cwd = saved;
            } else if entry.extension().is_some_and(|e| e == "conf") {
                self.parse_config_one(&entry, false, false);
            } else {
                self.ignored_entry(&entry, "mkosi.conf.d/");
            }
        }
    }

    /// `mkosi.profiles/<profile>` and `mkosi.profiles/<profile>.conf` for each selected profile.
    fn parse_profiles(&mut self) {
        let profiles = match self.finalize_value(settings::by_name("Profiles")) {
            Some(Val::List(profiles)) => profiles,
            _ => Vec::new(),
        };
        for profile in profiles {
            for candidate in [
                PathBuf::from(&profile),
                PathBuf::from(format!("{profile}.conf")),
            ] {
                let path = self.cwd.join("mkosi.profiles").join(candidate);
                if !path.exists() {
                    continue;
                }
                if path.is_dir() {
                    let saved = std::mem::replace(&mut self.cwd, path.clone());
                    self.parse_config_one(&path, false, false);
                    self.cwd = saved;
                } else {
                    self.parse_config_one(&path, false, false);
                }
            }
        }
    }

    /// The entries of a directory, sorted by name; an unreadable directory is reported.
    pub(crate) fn sorted_entries(&mut self, dir: &Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> =
                    entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                paths.sort();
                paths
            }
            Err(error) => {
                let name = self.shared.display(dir);
                self.issue(
                    ConfigIssue::new(
                        Severity::Error,
                        "kiln::config::io",
                        format!("Cannot read the directory `{name}`: {error}"),
                    )
                    .in_file(name),
                );
                Vec::new()
            }
        }
    }

    pub(crate) fn ignored_entry(&mut self, path: &Path, dir: &str) {
        let name = self.shared.display(path);
        self.issue(
            ConfigIssue::new(
                Severity::Warning,
                "kiln::config::ignored_file",
                format!("`{name}` is ignored: mkosi reads only `*.conf` files and directories in `{dir}`"),
            )
            .with_help("Rename it to end in `.conf`, or move it out of the directory")
            .in_file(name),
        );
    }

    /// The settings of a file that applies, section by section.
    fn apply_file(&mut self, parsed: &Rc<Parsed>) {
        for section in &parsed.ini.sections {
            let name = section.name.as_str();
            if settings::CONDITION_SECTIONS.contains(&name) {
                continue;
            }
            if !settings::SETTING_SECTIONS.contains(&name) {
                let known = settings::SETTING_SECTIONS
                    .iter()
                    .chain(settings::CONDITION_SECTIONS)
                    .copied();
                let mut issue = ConfigIssue::new(
                    Severity::Warning,
                    "kiln::config::unknown_section",
                    format!("Unknown section `[{name}]`: its settings are ignored"),
                );
                issue = match settings::closest(name, known) {
                    Some(near) => issue.with_help(format!("Did you mean `[{near}]`?")),
                    None => issue.with_help(format!(
                        "mkosi's sections are {}",
                        settings::SETTING_SECTIONS
                            .iter()
                            .filter(|s| **s != "Host")
                            .map(|s| format!("`[{s}]`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                let span = section.header;
                self.issue(issue.at(&parsed.source, span.offset, span.len, "unknown section"));
                continue;
            }
            for entry in &section.entries {
                self.apply_entry(parsed, name, entry);
            }
        }
    }

    fn apply_entry(&mut self, parsed: &Rc<Parsed>, section: &str, entry: &ini::Entry) {
        let source = &parsed.source;
        let span = entry.key_span;
        let key = self.strip_at_prefix(source, entry);
        let Some(setting) = settings::lookup(key) else {
            self.unknown_setting(source, key, span);
            return;
        };
        if self.prohibited(setting) {
            self.issue(
                ConfigIssue::new(
                    Severity::Error,
                    "kiln::config::main_image_only",
                    format!("Setting `{key}=` cannot be configured in the `{}` image", self.image),
                )
                .with_help(format!(
                    "`{}=` is set by the main image for all its subimages: move it to the project's `mkosi.conf`",
                    setting.name
                ))
                .at(source, span.offset, span.len, "only the main image may set this"),
            );
            return;
        }
        if section != setting.section {
            self.warn_wrong_section(source, key, section, setting, span);
        }
        self.warn_if_old_name(key, setting, source, span);
        if !setting.implemented() {
            self.issue(
                ConfigIssue::new(
                    Severity::Warning,
                    "kiln::config::not_implemented",
                    format!(
                        "`{}=` is a mkosi setting that kiln does not implement yet; it is ignored",
                        setting.name
                    ),
                )
                .with_help("The image kiln builds may differ from mkosi's; remove the setting to silence this")
                .at(source, span.offset, span.len, "ignored by kiln"),
            );
            return;
        }
        if let settings::Built::Not { differs, same } = setting.built {
            self.warn_not_built(source, entry, setting, differs, same);
        }
        let input = self.expand_entry(source, entry);
        let location = source.location(entry.value_span().offset);
        self.assign(setting, input, Some(location));
        if matches!(setting.kind, Kind::Include) {
            self.parse_new_includes();
        }
    }

    /// The entry's key without mkosi's deprecated `@` prefix, which is warned about.
    fn strip_at_prefix<'k>(&mut self, source: &SourceText, entry: &'k ini::Entry) -> &'k str {
        let span = entry.key_span;
        let key = entry.key.as_str();
        let Some(stripped) = key.strip_prefix('@') else {
            return key;
        };
        self.issue(
            ConfigIssue::new(
                Severity::Warning,
                "kiln::config::deprecated",
                format!("The `@` prefix is deprecated: write `{stripped}=` instead of `{key}=`"),
            )
            .with_help("mkosi no longer needs `@`; remove it")
            .at(source, span.offset, span.len, "deprecated `@`"),
        );
        stripped
    }

    /// The warning for a setting written in another section than its own (it still applies).
    fn warn_wrong_section(
        &mut self,
        source: &SourceText,
        key: &str,
        section: &str,
        setting: &Setting,
        span: Span,
    ) {
        self.issue(
            ConfigIssue::new(
                Severity::Warning,
                "kiln::config::wrong_section",
                format!(
                    "Setting `{key}=` should be configured in `[{}]`, not `[{section}]`",
                    setting.section
                ),
            )
            .with_help(format!(
                "It is applied anyway; move it below `[{}]`",
                setting.section
            ))
            .at(
                source,
                span.offset,
                span.len,
                format!("belongs in [{}]", setting.section),
            ),
        );
    }

    /// The warning for a setting kiln reads but no stage builds, unless its value is one of
    /// `same` (which builds what mkosi builds).
    fn warn_not_built(
        &mut self,
        source: &SourceText,
        entry: &ini::Entry,
        setting: &Setting,
        differs: &str,
        same: &[&str],
    ) {
        let span = entry.key_span;
        let value = entry.value();
        let value = value.trim();
        if !value.is_empty() && !same.contains(&value.to_ascii_lowercase().as_str()) {
            self.issue(
                ConfigIssue::new(
                    Severity::Warning,
                    "kiln::config::not_built",
                    format!(
                        "`{}=` is read, but no stage of kiln builds it yet: {differs}",
                        setting.name
                    ),
                )
                .with_help(
                    "The image kiln builds differs from mkosi's here; remove the setting to \
                         silence this, or build with mkosi",
                )
                .at(source, span.offset, span.len, "not built by kiln"),
            );
        }
    }

    fn unknown_setting(&mut self, source: &SourceText, key: &str, span: Span) {
        let mut issue = ConfigIssue::new(
            Severity::Warning,
            "kiln::config::unknown_setting",
            format!("Unknown setting `{key}=`: it is ignored"),
        );
        issue = if settings::MATCH_ONLY.contains(&key) {
            issue.with_help(format!(
                "`{key}=` is a condition: put it in a `[Match]` section"
            ))
        } else {
            match settings::closest(key, settings::all_names()) {
                Some(near) => issue.with_help(format!(
                    "Did you mean `{near}=`? Setting names are case-sensitive"
                )),
                None => issue.with_help(
                    "See mkosi(1) for the settings mkosi knows; kiln reads the same ones",
                ),
            }
        };
        self.issue(issue.at(source, span.offset, span.len, "unknown setting"));
    }

    /// Reads every include named so far that was not read yet (mkosi's `parse_new_includes`).
    fn parse_new_includes(&mut self) {
        let mut paths = Vec::new();
        for layer in [&self.cli, &self.config] {
            if let Some(Some(Val::Paths(includes))) = layer.get("Include") {
                paths.extend(includes.iter().cloned());
            }
        }
        for path in paths {
            let Some(id) = file_id(&path) else { continue };
            if !self.includes.insert(id) {
                continue;
            }
            if path.is_dir() {
                let saved = std::mem::replace(&mut self.cwd, path.clone());
                self.parse_config_one(&path, true, false);
                self.cwd = saved;
            } else {
                self.parse_config_one(&path, false, false);
            }
        }
    }

    /// The warning for a setting written under an old name (`key`), in a file or a `[Match]`.
    pub(crate) fn warn_if_old_name(
        &mut self,
        key: &str,
        setting: &Setting,
        source: &SourceText,
        span: Span,
    ) {
        if key == setting.name {
            return;
        }
        self.issue(
            ConfigIssue::new(
                Severity::Warning,
                "kiln::config::deprecated",
                format!(
                    "Setting `{key}=` is deprecated, please use `{}=` instead",
                    setting.name
                ),
            )
            .with_help(format!(
                "Rename it to `{}=`; the old name still works",
                setting.name
            ))
            .at(source, span.offset, span.len, "old name"),
        );
    }

    /// How many files and directories are being read inside one another now.
    pub(crate) fn include_depth(&self) -> usize {
        let mut names: Vec<&str> = self.stack.iter().map(|(_, name)| name.as_str()).collect();
        names.dedup();
        names.len()
    }

    /// The chain of includes that leads back to `id`, when `id` is being read now.
    pub(crate) fn include_cycle(&self, id: FileId) -> Option<Vec<String>> {
        let start = self.stack.iter().position(|(i, _)| *i == id)?;
        let mut chain: Vec<String> = Vec::new();
        for (_, name) in &self.stack[start..] {
            if chain.last() != Some(name) {
                chain.push(name.clone());
            }
        }
        Some(chain)
    }

    /// Turns a relative path into an absolute one as mkosi's `parse_path` does: `$VAR` and `~`
    /// expanded, relative to the current directory, symlinks resolved when it exists.
    pub(crate) fn resolve_path(&self, text: &str, expand_user: bool) -> (PathBuf, PathBuf) {
        let expanded = self.env().expand_vars(text);
        let expanded = if expand_user {
            self.env().expand_user(&expanded)
        } else {
            expanded
        };
        let lexical = absolutize(&self.cwd, Path::new(&expanded));
        let resolved = resolve(&self.cwd, Path::new(&expanded));
        (lexical, resolved)
    }
}

/// A value about to be assigned: its lines, specifiers expanded, and where they are.
pub(crate) struct Input {
    pub lines: Vec<InputLine>,
    /// The file the value comes from, for reports without a line.
    pub origin: String,
    pub source: Option<SourceText>,
}

pub(crate) struct InputLine {
    pub text: String,
    pub span: Option<Span>,
    /// Whether `text` is exactly what the file holds at `span` (no specifier changed it), so
    /// items can be pointed at precisely.
    pub exact: bool,
}

impl Input {
    pub(crate) fn default_file(text: &str, origin: String) -> Input {
        Input {
            lines: vec![InputLine {
                text: text.to_string(),
                span: None,
                exact: false,
            }],
            origin,
            source: None,
        }
    }

    pub(crate) fn command_line(text: &str) -> Input {
        Input {
            lines: vec![InputLine {
                text: text.to_string(),
                span: None,
                exact: false,
            }],
            origin: "the command line".to_string(),
            source: None,
        }
    }

    pub(crate) fn joined(&self) -> String {
        let texts: Vec<&str> = self.lines.iter().map(|l| l.text.as_str()).collect();
        texts.join("\n")
    }

    /// The span of the whole value.
    pub(crate) fn span(&self) -> Option<Span> {
        let first = self.lines.first()?.span?;
        let last = self.lines.last()?.span?;
        Some(Span::new(
            first.offset,
            (last.offset + last.len).saturating_sub(first.offset),
        ))
    }

    /// Points `issue` at the whole value (or names its file).
    pub(crate) fn locate(&self, issue: ConfigIssue, label: &str) -> ConfigIssue {
        match (&self.source, self.span()) {
            (Some(source), Some(span)) => issue.at(source, span.offset, span.len.max(1), label),
            _ => issue.in_file(self.origin.clone()),
        }
    }

    /// Points `issue` at `len` bytes from `offset` of line `line` (the whole line when it is not
    /// exact).
    pub(crate) fn locate_item(
        &self,
        issue: ConfigIssue,
        line: usize,
        offset: usize,
        len: usize,
        label: &str,
    ) -> ConfigIssue {
        let Some(source) = &self.source else {
            return issue.in_file(self.origin.clone());
        };
        let Some(l) = self.lines.get(line) else {
            return issue.in_file(self.origin.clone());
        };
        let Some(span) = l.span else {
            return issue.in_file(self.origin.clone());
        };
        if l.exact {
            issue.at(source, span.offset + offset, len.max(1), label)
        } else {
            issue.at(source, span.offset, span.len.max(1), label)
        }
    }
}
