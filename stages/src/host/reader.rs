//! The recipe reader's programs on the real machine ([`RealReaderHost`], kiln-recipe's
//! [`ReaderHost`]): `systemctl --version` for `[Match] SystemdVersion=`, and executable default
//! files such as `mkosi.version`, whose output is a setting's value.
//!
//! Both run with the environment the recipe is read in (not [`clean_command`]'s), as mkosi runs
//! them: a `mkosi.version` script sees the variables of the shell kiln was started from, and
//! `PATH` from that environment finds `systemctl`. Each dies with kiln.
//!
//! [`clean_command`]: super::clean_command

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use kiln_recipe::ReaderHost;

use super::process;

/// The machine kiln runs on, as the recipe reader sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealReaderHost;

impl ReaderHost for RealReaderHost {
    fn systemd_version(&self, env: &BTreeMap<String, String>) -> Option<String> {
        let mut command = Command::new("systemctl");
        command.arg("--version").env_clear().envs(env);
        let output = output(command).ok().filter(|o| o.status.success())?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace().nth(1).map(str::to_string)
    }

    fn run_script(
        &self,
        script: &Path,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> io::Result<Output> {
        let mut command = Command::new(script);
        command.current_dir(cwd).env_clear().envs(env);
        output(command)
    }
}

/// Runs `command` to completion with stdin from `/dev/null`, its stdout and stderr captured.
fn output(mut command: Command) -> io::Result<Output> {
    command.stdin(Stdio::null());
    process::die_with_kiln(&mut command);
    command.output()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn executable(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_systemd_version_is_the_second_word_systemctl_prints_found_on_the_given_path() {
        let dir = tempfile::tempdir().unwrap();
        executable(
            &dir.path().join("systemctl"),
            "#!/bin/sh\n[ \"$1\" = --version ] || exit 2\necho \"systemd 257 (257.4-1)\"\necho +PAM\n",
        );
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        assert_eq!(
            RealReaderHost.systemd_version(&env(&[("PATH", &path)])),
            Some("257".to_string())
        );

        executable(&dir.path().join("systemctl"), "#!/bin/sh\nexit 1\n");
        assert_eq!(
            RealReaderHost.systemd_version(&env(&[("PATH", &path)])),
            None
        );

        let empty = tempfile::tempdir().unwrap();
        let nowhere = empty.path().display().to_string();
        assert_eq!(
            RealReaderHost.systemd_version(&env(&[("PATH", &nowhere)])),
            None
        );
    }

    #[test]
    fn a_script_runs_in_its_directory_with_only_the_given_environment() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("mkosi.version");
        executable(
            &script,
            "#!/bin/sh\npwd\necho \"$FROM_HOST${HOME:-no-home}\"\ncat\necho oops >&2\nexit 3\n",
        );
        let cwd = dir.path().canonicalize().unwrap();
        let output = RealReaderHost
            .run_script(
                &script,
                &cwd,
                &env(&[("FROM_HOST", "v-"), ("PATH", "/usr/bin:/bin")]),
            )
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{}\nv-no-home\n", cwd.display())
        );
        assert_eq!(String::from_utf8_lossy(&output.stderr), "oops\n");
        assert_eq!(output.status.code(), Some(3));

        let missing = RealReaderHost.run_script(&dir.path().join("absent"), &cwd, &env(&[]));
        assert!(missing.is_err());
    }
}
