//! What the loaders report: warnings and errors that point into a configuration file, and the
//! error type of [`load_project`](super::load_project) and [`from_ron`](super::from_ron).
//!
//! Every problem found while reading a project is a [`ConfigIssue`] with a severity, a message,
//! help text and, when it has one, the file, line and column it is about (rendered by miette with
//! the source snippet). Sources are named by their path relative to the project directory, so a
//! report reads the same on every machine.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, Severity, SourceCode, SourceSpan};
use thiserror::Error;

/// Where a value or a problem is: a file named relative to the project directory (absolute when
/// outside it), a 1-based line and a 1-based column (counted in characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A file's text as shown in reports, shared by every issue that points into it.
#[derive(Debug, Clone)]
pub(crate) struct SourceText {
    pub name: String,
    pub text: Arc<String>,
}

impl SourceText {
    pub(crate) fn new(name: impl Into<String>, text: impl Into<String>) -> SourceText {
        SourceText {
            name: name.into(),
            text: Arc::new(text.into()),
        }
    }

    /// The 1-based line and column of a byte offset.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        line_column(&self.text, offset)
    }

    pub(crate) fn location(&self, offset: usize) -> Location {
        let (line, column) = self.line_column(offset);
        Location {
            file: self.name.clone(),
            line,
            column,
        }
    }
}

/// The 1-based line and column of a byte offset in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut offset: usize) -> usize {
    while offset > 0 && !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// A warning or an error about a project's configuration.
///
/// It renders as a miette diagnostic: the message, a label under the offending text of the file
/// (when there is one) and help saying what to do next.
#[derive(Debug, Clone)]
pub struct ConfigIssue {
    severity: Severity,
    code: &'static str,
    message: String,
    help: Option<String>,
    label: Option<String>,
    source: Option<NamedSource<Arc<String>>>,
    span: Option<SourceSpan>,
    location: Option<Location>,
}

/// A problem kiln can work around (it says how); `--strict` makes it an error.
pub type ConfigWarning = ConfigIssue;

/// A problem that stops the project from loading.
pub type ConfigError = ConfigIssue;

impl ConfigIssue {
    pub(crate) fn new(severity: Severity, code: &'static str, message: String) -> ConfigIssue {
        ConfigIssue {
            severity,
            code,
            message,
            help: None,
            label: None,
            source: None,
            span: None,
            location: None,
        }
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> ConfigIssue {
        self.help = Some(help.into());
        self
    }

    /// Points the issue at `len` bytes from `offset` in `source`, labelled `label`.
    pub(crate) fn at(
        mut self,
        source: &SourceText,
        offset: usize,
        len: usize,
        label: impl Into<String>,
    ) -> ConfigIssue {
        self.location = Some(source.location(offset));
        self.source = Some(NamedSource::new(
            source.name.clone(),
            Arc::clone(&source.text),
        ));
        self.span = Some(SourceSpan::new(offset.into(), len));
        self.label = Some(label.into());
        self
    }

    /// Names the file the issue is about when no line of it is to blame.
    pub(crate) fn in_file(mut self, file: impl Into<String>) -> ConfigIssue {
        self.location = Some(Location {
            file: file.into(),
            line: 0,
            column: 0,
        });
        self
    }

    /// The same issue as an error (what `--strict` does to warnings).
    pub fn into_error(mut self) -> ConfigIssue {
        self.severity = Severity::Error;
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// A stable identifier of the kind of problem, such as `kiln::config::unknown-setting`.
    pub fn code_str(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// The file, line and column the issue is about; line and column are 0 for a whole file.
    pub fn location(&self) -> Option<&Location> {
        self.location.as_ref()
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigIssue {}

impl Diagnostic for ConfigIssue {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source.as_ref().map(|s| s as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            self.label.clone(),
            span,
        ))))
    }
}

/// Every problem found while loading a project that has at least one error: the errors and the
/// warnings, in the order they were found.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    issues: Vec<ConfigIssue>,
}

impl ConfigErrors {
    pub(crate) fn new(issues: Vec<ConfigIssue>) -> ConfigErrors {
        ConfigErrors { issues }
    }

    /// Errors and warnings in the order they were found.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }

    pub fn errors(&self) -> impl Iterator<Item = &ConfigIssue> {
        self.issues.iter().filter(|i| i.is_error())
    }

    /// The one issue to show on its own: set when there is one error and nothing else.
    fn single(&self) -> Option<&ConfigIssue> {
        match self.issues.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    fn counts(&self) -> (usize, usize) {
        let errors = self.issues.iter().filter(|i| i.is_error()).count();
        (errors, self.issues.len() - errors)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(only) = self.single() {
            return only.fmt(f);
        }
        let (errors, warnings) = self.counts();
        let plural = |n: usize, word: &str| {
            if n == 1 {
                format!("1 {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        write!(f, "The configuration has {}", plural(errors, "error"))?;
        if warnings > 0 {
            write!(f, " and {}", plural(warnings, "warning"))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Diagnostic for ConfigErrors {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.single() {
            Some(only) => only.code(),
            None => Some(Box::new("kiln::config::invalid")),
        }
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self.single() {
            Some(only) => only.help(),
            None => Some(Box::new(
                "Fix the errors below; each one points at its file and line",
            )),
        }
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.single().and_then(|only| only.source_code())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.single().and_then(|only| only.labels())
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.single().is_some() {
            return None;
        }
        Some(Box::new(self.issues.iter().map(|i| i as &dyn Diagnostic)))
    }
}

/// Why a project or a RON recipe could not be loaded.
#[derive(Debug, Error, Diagnostic)]
pub enum LoadError {
    /// The configuration has errors; every error and warning found is inside.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] ConfigErrors),

    #[error("The project directory `{}` does not exist", path.display())]
    #[diagnostic(
        code(kiln::config::no_project_dir),
        help("Pass the directory that holds `mkosi.conf` or `kiln.ron` with -C DIR")
    )]
    NoProjectDir { path: PathBuf },

    #[error("`{}` holds no recipe", dir.display())]
    #[diagnostic(
        code(kiln::config::no_recipe),
        help(
            "Create `mkosi.conf` (mkosi's format) or `kiln.ron` (kiln's) in the directory, or pass the right one with -C DIR"
        )
    )]
    NoRecipe { dir: PathBuf },

    #[error("The project holds both `mkosi.conf` and `kiln.ron`")]
    #[diagnostic(
        code(kiln::config::two_recipes),
        help(
            "Keep one of them: remove or rename `kiln.ron` to use the mkosi configuration, or `mkosi.conf` to use the RON recipe"
        )
    )]
    TwoRecipes { dir: PathBuf },

    #[error("Cannot read `{}`", path.display())]
    #[diagnostic(code(kiln::config::io))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`{name}` is not a valid recipe: {message}")]
    #[diagnostic(
        code(kiln::config::ron),
        help(
            "A RON recipe holds one `Recipe`; print a valid one with `kiln recipe show` on a mkosi project"
        )
    )]
    Ron {
        name: String,
        message: String,
        #[source_code]
        src: NamedSource<Arc<String>>,
        #[label("here")]
        span: SourceSpan,
    },
}
