//! How the package managers run their host tools (apt-get, mmdebstrap, unshare, pacman,
//! pacman-key, bwrap): each through the [`Host`] the stage is given, checked for first
//! ([`require_tools`], naming the Debian package that provides a missing one), with every line
//! of its output kept for the parsers ([`ToolOutput`]).

use crate::host::{Host, HostError, ToolInvocation};

use super::error::PackagesError;

/// Check that `host` has each of `tools`, given with the Debian package that provides it.
pub(crate) fn require_tools(host: &dyn Host, tools: &[(&str, &str)]) -> Result<(), PackagesError> {
    for (tool, package) in tools {
        if host.find_tool(tool).is_none() {
            return Err(PackagesError::ToolMissing {
                tool: tool.to_string(),
                package: package.to_string(),
            });
        }
    }
    Ok(())
}

/// What a finished tool printed.
#[derive(Debug)]
pub(crate) struct ToolOutput {
    pub(crate) code: i32,
    pub(crate) lines: Vec<String>,
}

impl ToolOutput {
    pub(crate) fn success(&self) -> bool {
        self.code == 0
    }

    /// The last `count` lines, one string.
    pub(crate) fn tail(&self, count: usize) -> String {
        let start = self.lines.len().saturating_sub(count);
        self.lines[start..].join("\n")
    }
}

/// Run `invocation` through `host` to completion; every line of its merged output goes to
/// `sink` and is kept. `tool` names it in an error (`mmdebstrap` for the `unshare` that starts
/// it).
pub(crate) fn run(
    host: &dyn Host,
    invocation: &ToolInvocation,
    tool: &str,
    sink: &mut dyn FnMut(&str),
) -> Result<ToolOutput, PackagesError> {
    let mut lines = Vec::new();
    let outcome = host
        .run_tool(invocation, &mut |line| {
            sink(line);
            lines.push(line.to_string());
        })
        .map_err(|error| PackagesError::Spawn {
            tool: tool.to_string(),
            source: match error {
                HostError::Spawn { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            },
        })?;
    Ok(ToolOutput {
        code: outcome.code,
        lines,
    })
}

/// Whether kiln runs as root.
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{RealHost, RecordingHost};

    #[test]
    fn a_missing_tool_names_the_debian_package_that_provides_it() {
        let host = RealHost::new();
        assert!(require_tools(&host, &[("sh", "dash")]).is_ok());
        let host = RecordingHost::new().without_tool("mmdebstrap");
        match require_tools(&host, &[("sh", "dash"), ("mmdebstrap", "mmdebstrap")]) {
            Err(PackagesError::ToolMissing { tool, package }) => {
                assert_eq!(
                    (tool.as_str(), package.as_str()),
                    ("mmdebstrap", "mmdebstrap")
                );
            }
            other => panic!("{other:?}"),
        }
        let message = PackagesError::ToolMissing {
            tool: "mmdebstrap".to_string(),
            package: "mmdebstrap".to_string(),
        };
        let help = miette::Diagnostic::help(&message).map(|help| help.to_string());
        assert_eq!(
            help.as_deref(),
            Some("Install the Debian package that provides it: `apt-get install mmdebstrap`")
        );
    }

    #[test]
    fn a_program_that_cannot_start_is_a_spawn_error_naming_it() {
        let host = RecordingHost::new();
        let invocation = ToolInvocation::new("/nonexistent/mmdebstrap").arg("--version");
        match run(&host, &invocation, "mmdebstrap", &mut |_| {}) {
            Err(PackagesError::Spawn { tool, .. }) => assert_eq!(tool, "mmdebstrap"),
            other => panic!("{other:?}"),
        }
        assert_eq!(host.tools_run(), vec![invocation]);
    }
}
