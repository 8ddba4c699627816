//! What the reader asks of the machine that only running a program there can answer: the
//! host's systemd version (`[Match] SystemdVersion=`) and the output of an executable default
//! file such as `mkosi.version`. The reader runs no program itself; the caller hands it a
//! [`ReaderHost`] (the real one lives in kiln-stages' host layer, beside every other program
//! kiln runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

/// The programs the recipe reader needs run on the machine it reads the recipe on.
pub trait ReaderHost {
    /// The host's systemd version: the second word `systemctl --version` prints, run with `env`
    /// as its whole environment (its `PATH` finds `systemctl`). `None` when it cannot be run,
    /// fails or prints no version.
    fn systemd_version(&self, env: &BTreeMap<String, String>) -> Option<String>;

    /// Runs the executable `script` to completion in `cwd`, with `env` as its whole environment
    /// and stdin from `/dev/null`: its exit status, standard output and standard error. An error
    /// means it could not be started.
    fn run_script(
        &self,
        script: &Path,
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> std::io::Result<Output>;
}
