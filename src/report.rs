//! How kiln talks back: the binary's error type, exit codes and miette rendering.
//!
//! Libraries return typed errors; only this module chooses exit codes (0 ok, 1 build or
//! configuration error, 2 usage) and how a report looks.

use std::io::IsTerminal;
use std::path::PathBuf;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource, SourceSpan};
use thiserror::Error;

/// Everything a verb can fail with.
#[derive(Debug, Error, Diagnostic)]
pub(crate) enum CliError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] kiln_recipe::LoadError),

    #[error("The project directory `{}` does not exist", path.display())]
    #[diagnostic(help("Pass an existing directory with -C DIR"))]
    NoProjectDir { path: PathBuf },

    #[error("Cannot open the store at `{}`", path.display())]
    #[diagnostic(help("Check that the directory is writable, or choose another with --cache-dir"))]
    Store {
        path: PathBuf,
        #[source]
        source: kiln_cache::StoreError,
    },

    #[error("The store at `{}` was damaged; what was broken has been removed", path.display())]
    #[diagnostic(help("The next build recomputes what was removed"))]
    StoreRepaired { path: PathBuf },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Setting(Box<SettingReport>),

    /// An error, with a hint of the binary's own (a full filesystem).
    #[error(transparent)]
    #[diagnostic(transparent)]
    WithHelp(Box<WithHelp>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Pipeline(#[from] kiln_stages::pipeline::PipelineError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] kiln_engine::plan::PlanError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Build(#[from] kiln_engine::BuildError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Export(#[from] kiln_stages::error::OutputError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Explain(#[from] kiln_engine::explain::ExplainError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Inspect(#[from] kiln_stages::uki::InspectError),

    #[error("kiln qemu boots UKIs, and this recipe builds Format={format}")]
    #[diagnostic(help("Set Format=uki in the recipe's [Output] section, then run `kiln build`"))]
    NotUki { format: &'static str },

    #[error("The image has not been built yet: there is no `{}`", path.display())]
    #[diagnostic(help("Run `kiln build` first, or `kiln qemu -f` to build and boot"))]
    NotBuilt { path: PathBuf },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Vm(#[from] kiln_stages::vm::VmError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Genkey(#[from] kiln_stages::sign::genkey::GenkeyError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Check(kiln_engine::check::CheckError),

    #[error(
        "Stage `{stage}` is not reproducible: run again on the same inputs, it gave another output ({what})"
    )]
    #[diagnostic(help(
        "Something the stage does depends on more than its inputs (the time, randomness, the \
         host); `kiln graph explain {stage}` shows its inputs"
    ))]
    NotReproducible { stage: String, what: String },

    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{error}")]
    Remote {
        error: kiln_cache::remote::RemoteError,
        #[help]
        help: Option<String>,
    },

    #[error("No shared cache is configured")]
    #[diagnostic(help(
        "Pass --cache-remote URL, set KILN_CACHE_REMOTE, or set `remote` in the [cache] section \
         of ~/.config/kiln/config.toml"
    ))]
    NoRemote,

    #[error("The kiln config file `{}` is invalid at {position}: {message}", path.display())]
    #[diagnostic(help("See the README for the keys of the [cache] section"))]
    ConfigFile {
        path: PathBuf,
        position: String,
        message: String,
    },

    #[error("The credentials file `{}` cannot be read at {position}", path.display())]
    #[diagnostic(help(
        "Each host is a table, `[\"host:port\"]`, holding `token = \"...\"`, or `user = \"...\"` \
         and `password = \"...\"`"
    ))]
    CredentialsFile { path: PathBuf, position: String },

    #[error("The entry for `{host}` in the credentials file `{}` is incomplete", path.display())]
    #[diagnostic(help("Give it either `token`, or both `user` and `password`"))]
    CredentialsEntry { path: PathBuf, host: String },

    #[error("The {what} `{}` is readable by other users", path.display())]
    #[diagnostic(help("Make it private: chmod 600 {}", path.display()))]
    SecretReadable { what: &'static str, path: PathBuf },

    #[error("A key from {from} is invalid")]
    #[diagnostic(help(
        "A public key looks like `ci-1:BASE64`, as `kiln cache keygen` prints it; a secret key \
         file is the one `kiln cache keygen` wrote"
    ))]
    RemoteKey {
        from: String,
        #[source]
        source: kiln_cache::remote::KeyError,
    },

    #[error("`{name}` must be yes or no, not `{value}`")]
    #[diagnostic(help("Use 1, yes, true or on; 0, no, false or off"))]
    RemoteSetting { name: &'static str, value: String },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Push(#[from] kiln_engine::remote::PushError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Pull(#[from] kiln_engine::remote::PullError),
}

impl From<kiln_cache::remote::RemoteError> for CliError {
    fn from(error: kiln_cache::remote::RemoteError) -> CliError {
        CliError::Remote {
            help: error.help(),
            error,
        }
    }
}

impl CliError {
    /// The process exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::NoProjectDir { .. } => 2,
            _ => 1,
        }
    }
}

/// An error shown as it is, with the help text replaced by one that says what to do.
#[derive(Debug)]
pub(crate) struct WithHelp {
    pub error: CliError,
    pub help: String,
}

impl std::fmt::Display for WithHelp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for WithHelp {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl Diagnostic for WithHelp {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.error.code()
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(&self.help))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.error.source_code()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.error.labels()
    }

    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.error.diagnostic_source()
    }
}

/// A recipe setting kiln reads but cannot build yet, shown at the line that set it.
#[derive(Debug, Error, Diagnostic)]
#[error("{error}")]
pub(crate) struct SettingReport {
    #[source_code]
    source_code: NamedSource<String>,
    #[label("set here")]
    span: SourceSpan,
    #[help]
    help: Option<String>,
    error: Box<dyn Diagnostic + Send + Sync>,
}

/// Where the value of a setting was written: its file and the span of its value.
pub(crate) struct SettingSource {
    name: String,
    text: String,
    span: SourceSpan,
}

impl SettingSource {
    /// The last assignment of `setting` to the main image, if it came from a file.
    pub(crate) fn find(loaded: &kiln_recipe::Loaded, setting: &str) -> Option<SettingSource> {
        let assignment = loaded
            .assignments
            .iter()
            .rev()
            .find(|assignment| assignment.setting == setting && assignment.image == "main")?;
        let location = &assignment.location;
        if location.line == 0 {
            return None;
        }
        let text = std::fs::read_to_string(loaded.dir.join(&location.file)).ok()?;
        let line_start: usize = text
            .split_inclusive('\n')
            .take(location.line - 1)
            .map(str::len)
            .sum();
        let line = text[line_start..].lines().next().unwrap_or_default();
        let column = location.column.saturating_sub(1).min(line.len());
        let length = line[column..].trim_end().len().max(1);
        Some(SettingSource {
            name: location.file.clone(),
            span: (line_start + column, length).into(),
            text,
        })
    }

    /// The line of `setting`'s value that holds `item` (a package, a path), when one does.
    pub(crate) fn find_item(
        loaded: &kiln_recipe::Loaded,
        setting: &str,
        item: &str,
    ) -> Option<SettingSource> {
        let assignment = loaded.assignments.iter().rev().find(|assignment| {
            assignment.setting == setting
                && assignment.image == "main"
                && assignment.location.line > 0
                && assignment
                    .value
                    .split(|c: char| c.is_whitespace() || c == ',')
                    .any(|word| word == item || word.split(':').next() == Some(item))
        })?;
        let location = &assignment.location;
        let text = std::fs::read_to_string(loaded.dir.join(&location.file)).ok()?;
        let line_start: usize = text
            .split_inclusive('\n')
            .take(location.line - 1)
            .map(str::len)
            .sum();
        // The item's first appearance from the assignment on.
        let offset = text[line_start..].find(item)? + line_start;
        Some(SettingSource {
            name: location.file.clone(),
            span: (offset, item.len()).into(),
            text,
        })
    }

    pub(crate) fn report(self, error: impl Diagnostic + Send + Sync + 'static) -> SettingReport {
        self.report_boxed(Box::new(error))
    }

    pub(crate) fn report_boxed(self, error: Box<dyn Diagnostic + Send + Sync>) -> SettingReport {
        SettingReport {
            help: error.help().map(|help| help.to_string()),
            source_code: NamedSource::new(self.name, self.text),
            span: self.span,
            error,
        }
    }
}

/// Renders diagnostics: colours and the terminal's width on a terminal, plain and 100 columns
/// otherwise, so logs and tests see stable text.
pub(crate) struct Renderer {
    handler: GraphicalReportHandler,
}

impl Renderer {
    pub(crate) fn for_stderr() -> Renderer {
        let handler = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
            GraphicalReportHandler::new()
        } else {
            GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100)
        };
        Renderer { handler }
    }

    pub(crate) fn render(&self, diagnostic: &dyn Diagnostic) -> String {
        let mut out = String::new();
        if self.handler.render_report(&mut out, diagnostic).is_err() {
            out = format!("{diagnostic}\n");
        }
        out
    }

    /// Print a diagnostic to stderr.
    pub(crate) fn eprint(&self, diagnostic: &dyn Diagnostic) {
        eprint!("{}", self.render(diagnostic));
    }
}
