//! Running a host tool (depmod, and later others) to completion: a program, its arguments, a
//! clean environment, output streamed line by line; and finding a tool on the host
//! ([`find_tool`]) and the clean environment every tool starts from ([`clean_command`]).
//!
//! Unlike a script, a tool runs directly (no sandbox, no PID namespace): it is a program of the
//! host that kiln points at a scratch directory, such as `depmod -b <scratch> <kver>`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::error::HostError;
use super::process;

/// One run of a host tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInvocation {
    /// The program, as found on the host (an absolute path, or a name looked up on `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl ToolInvocation {
    pub fn new(program: impl Into<PathBuf>) -> ToolInvocation {
        ToolInvocation {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> ToolInvocation {
        self.args.push(arg.into());
        self
    }

    /// The command line as a user would type it, for messages.
    pub fn shown(&self) -> String {
        let program = self
            .program
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string());
        std::iter::once(program)
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a tool ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    /// The exit code (`128 + n` for signal `n`).
    pub code: i32,
    /// The last lines of its merged output.
    pub output_tail: Vec<String>,
    pub duration: Duration,
}

impl ToolOutcome {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Runs `invocation` with a clean environment (`PATH`, `LC_ALL=C.UTF-8`), stdin from
/// `/dev/null`, streaming its merged output to `sink`.
pub(crate) fn run_tool(
    invocation: &ToolInvocation,
    sink: &mut dyn FnMut(&str),
) -> Result<ToolOutcome, HostError> {
    let mut command = clean_command(&invocation.program);
    command.args(&invocation.args);
    let finished = process::run(command, sink).map_err(|source| HostError::Spawn {
        program: invocation.program.clone(),
        source,
    })?;
    Ok(ToolOutcome {
        code: process::exit_code(&finished.status),
        output_tail: finished.tail,
        duration: finished.duration,
    })
}

/// `tool` on the `PATH` (or the usual system directories).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// A command with a clean environment: `PATH`, `LC_ALL=C.UTF-8` (so messages can be read), and
/// the proxy variables of the host.
pub(crate) fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    command.env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    command.env("LC_ALL", "C.UTF-8");
    command.env("HOME", "/root");
    for name in [
        "http_proxy",
        "https_proxy",
        "ftp_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_runs_with_its_arguments_and_reports_its_exit_code() {
        let mut lines = Vec::new();
        let outcome = run_tool(
            &ToolInvocation::new("/bin/sh")
                .arg("-c")
                .arg("echo \"$LC_ALL\"; exit 3"),
            &mut |line| lines.push(line.to_string()),
        )
        .unwrap();
        assert_eq!(lines, vec!["C.UTF-8"]);
        assert_eq!(outcome.code, 3);
        assert!(!outcome.success());
    }

    #[test]
    fn a_missing_program_is_a_spawn_error_naming_it() {
        let err = run_tool(&ToolInvocation::new("/nonexistent/depmod"), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/depmod"), "{err}");
    }

    #[test]
    fn the_shown_command_uses_the_programs_name() {
        let inv = ToolInvocation::new("/usr/sbin/depmod").arg("-b").arg("/x");
        assert_eq!(inv.shown(), "depmod -b /x");
    }
}
