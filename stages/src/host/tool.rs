//! Running a host tool (depmod, the package managers, systemctl) to completion: a program, its
//! arguments, a clean environment with the variables the caller adds, output streamed line by
//! line; and finding a tool on the host ([`find_tool`]) and the clean environment every tool
//! starts from ([`clean_command`]).
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
    /// Variables set on top of the clean environment, in order (a later one wins).
    pub env: Vec<(String, String)>,
}

impl ToolInvocation {
    pub fn new(program: impl Into<PathBuf>) -> ToolInvocation {
        ToolInvocation {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> ToolInvocation {
        self.args.push(arg.into());
        self
    }

    /// Appends a path as an argument.
    pub fn arg_path(self, path: &std::path::Path) -> ToolInvocation {
        self.arg(path.to_string_lossy())
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> ToolInvocation
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets a variable on top of the clean environment.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> ToolInvocation {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The program's file name (`apt-get` for `/usr/bin/apt-get`).
    pub fn program_name(&self) -> String {
        self.program
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.program.display().to_string())
    }

    /// The command line as a user would type it, for messages.
    pub fn shown(&self) -> String {
        std::iter::once(self.program_name())
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

/// Runs `invocation` with a clean environment (`PATH`, `LC_ALL=C.UTF-8`) and its own variables,
/// stdin from `/dev/null`, streaming its merged output to `sink`.
pub(crate) fn run_tool(
    invocation: &ToolInvocation,
    sink: &mut dyn FnMut(&str),
) -> Result<ToolOutcome, HostError> {
    let mut command = clean_command(&invocation.program);
    command.args(&invocation.args);
    command.envs(invocation.env.iter().map(|(name, value)| (name, value)));
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
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
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
    fn added_variables_override_the_clean_environment() {
        let mut lines = Vec::new();
        run_tool(
            &ToolInvocation::new("/bin/sh")
                .args(["-c", "echo \"$HOME $KILN_X\""])
                .env("HOME", "/scratch")
                .env("KILN_X", "y"),
            &mut |line| lines.push(line.to_string()),
        )
        .unwrap();
        assert_eq!(lines, vec!["/scratch y"]);
    }

    #[test]
    fn the_shown_command_uses_the_programs_name() {
        let inv = ToolInvocation::new("/usr/sbin/depmod").arg("-b").arg("/x");
        assert_eq!(inv.shown(), "depmod -b /x");
    }
}
