//! Why an image configuration stage failed.

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum ConfigError {
    #[error("`{path}` in the image is not UTF-8 text")]
    #[diagnostic(help("kiln edits it as text; check what the packages or trees put there"))]
    NotText { path: String },

    #[error("`{tool}` is not installed on this machine; kiln needs it to {purpose}")]
    #[diagnostic(help("Install the Debian package that provides it: `apt-get install {package}`"))]
    ToolMissing {
        tool: String,
        package: String,
        purpose: String,
    },

    #[error("`{command}` failed with exit code {code}")]
    #[diagnostic(help("The last lines of its output:\n{output}"))]
    CommandFailed {
        command: String,
        code: i32,
        output: String,
    },

    #[error("Cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}
