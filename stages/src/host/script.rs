//! Running mkosi scripts (`mkosi.prepare`, `mkosi.postinst`, `mkosi.finalize`, with or without
//! `.chroot`) the way mkosi does.
//!
//! A host script runs on the host, with the project directory as working directory. A `.chroot`
//! script runs inside the image tree in a bubblewrap sandbox (see [`super::sandbox`]), at
//! `/work/<stage>` with the project at `/work/src` and the output directory at `/work/out`,
//! working directory `/work/src`.
//!
//! Both get a clean environment, then mkosi's variables, then the caller's (mkosi's
//! `Environment=` settings come last there too, so they may override):
//!
//! | variable | host script | `.chroot` script |
//! |---|---|---|
//! | `PATH` | the host's, after a directory holding `mkosi-chroot` | `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` |
//! | `HOME` | the host's (`/` when unset) | `/root` |
//! | `LANG` | `C.UTF-8` | `C.UTF-8` |
//! | `TERM` | the host's, when set | the host's, when set |
//! | `BUILDROOT` | the tree's path | `/` |
//! | `SRCDIR`, `OUTPUTDIR` | the host paths | `/work/src`, `/work/out` |
//! | `CHROOT_SRCDIR`, `CHROOT_OUTPUTDIR` | `/work/src`, `/work/out` | same |
//! | `SCRIPT`, `CHROOT_SCRIPT` | `/work/<stage>` | same |
//! | `MKOSI_UID`, `MKOSI_GID` | kiln's uid and gid | same |
//! | `WITH_NETWORK` | `0` or `1` | same |
//!
//! The caller adds `IMAGE_ID`, `IMAGE_VERSION`, `DISTRIBUTION`, `RELEASE`, `ARCHITECTURE`,
//! `SOURCE_DATE_EPOCH` and the recipe's `Environment=` through [`ScriptInvocation::env`].
//!
//! Host scripts see the host's filesystem, but with bubblewrap installed they see it read-only:
//! they run in a sandbox where only the tree, the project and the output directory are
//! writable and `/tmp` is private (see [`sandbox::host_script_args`]), so a write through a
//! symlink of the image that leads out of it cannot change the host. They run in their own PID
//! namespace (bubblewrap's, or util-linux `unshare`'s when kiln is root and bubblewrap is
//! missing), so nothing they start outlives them or kiln. Without bubblewrap they run on the
//! host as it is. With bubblewrap, `mkosi-chroot` is first on their `PATH`: it runs its
//! arguments inside the tree in the same sandbox as a chroot script, as mkosi's does.
//!
//! The project directory is bound read-only into a chroot script's sandbox (mkosi makes it
//! ephemeral instead: writes there are lost either way).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process;
use super::sandbox::{self, Sandbox};
use super::tool::find_tool;

/// The `PATH` inside a chroot.
const CHROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One run of one script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptInvocation {
    /// The script on the host, e.g. `<project>/mkosi.postinst.chroot`.
    pub script: PathBuf,
    /// The stage it belongs to: `prepare`, `postinst`, `finalize`. Names the script inside the
    /// sandbox (`/work/<stage>`) and errors.
    pub stage: String,
    /// Run inside the tree (a `.chroot` script) rather than on the host.
    pub chroot: bool,
    /// The image tree: the merged overlay directory (or its copy).
    pub root: PathBuf,
    /// Variables added after mkosi's own, in order of name.
    pub env: BTreeMap<String, String>,
    /// The project directory.
    pub srcdir: PathBuf,
    /// The output directory (`$OUTPUTDIR`), where scripts may leave artifacts.
    pub outputdir: PathBuf,
    /// Arguments; mkosi passes `final` to prepare and postinst scripts.
    pub args: Vec<String>,
    /// Whether a chroot script may use the network (mkosi's `WithNetwork=`, off by default);
    /// the host's `/etc/resolv.conf` is provided then. Host scripts always have the host's
    /// network.
    pub network: bool,
    /// Extra host directories bound read-only into a chroot script's sandbox, as
    /// `(host path, path inside)`.
    pub ro_binds: Vec<(PathBuf, PathBuf)>,
}

impl ScriptInvocation {
    /// An invocation of `script` for `stage` with mkosi's defaults: a chroot script when the
    /// name ends in `.chroot`, no extra variables or arguments, no network.
    pub fn new(
        script: impl Into<PathBuf>,
        stage: impl Into<String>,
        root: impl Into<PathBuf>,
        srcdir: impl Into<PathBuf>,
        outputdir: impl Into<PathBuf>,
    ) -> Self {
        let script = script.into();
        let chroot = script.extension().is_some_and(|ext| ext == "chroot");
        ScriptInvocation {
            script,
            stage: stage.into(),
            chroot,
            root: root.into(),
            env: BTreeMap::new(),
            srcdir: srcdir.into(),
            outputdir: outputdir.into(),
            args: Vec::new(),
            network: false,
            ro_binds: Vec::new(),
        }
    }

    /// The script's file name, as errors show it.
    pub fn name(&self) -> String {
        script_name(&self.script)
    }

    /// The environment the script gets, in order of name.
    pub fn environment(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        let chroot_script = sandbox::chroot_script_path(&self.stage);
        set("LANG", "C.UTF-8".into());
        if let Ok(term) = std::env::var("TERM") {
            set("TERM", term);
        }
        if self.chroot {
            set("PATH", CHROOT_PATH.into());
            set("HOME", "/root".into());
            set("BUILDROOT", "/".into());
            set("SRCDIR", sandbox::WORK_SRC.into());
            set("OUTPUTDIR", sandbox::WORK_OUT.into());
        } else {
            set(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| CHROOT_PATH.into()),
            );
            set("HOME", std::env::var("HOME").unwrap_or_else(|_| "/".into()));
            set("BUILDROOT", path_string(&self.root));
            set("SRCDIR", path_string(&self.srcdir));
            set("OUTPUTDIR", path_string(&self.outputdir));
        }
        set("CHROOT_SRCDIR", sandbox::WORK_SRC.into());
        set("CHROOT_OUTPUTDIR", sandbox::WORK_OUT.into());
        set("SCRIPT", chroot_script.clone());
        set("CHROOT_SCRIPT", chroot_script);
        set("MKOSI_UID", rustix::process::getuid().as_raw().to_string());
        set("MKOSI_GID", rustix::process::getgid().as_raw().to_string());
        set("WITH_NETWORK", if self.network { "1" } else { "0" }.into());
        for (k, v) in &self.env {
            env.insert(k.clone(), v.clone());
        }
        env
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn script_name(script: &Path) -> String {
    script
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| script.display().to_string())
}

/// A script that exited with status 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// Its last lines of output (stdout and stderr merged), oldest first.
    pub output_tail: Vec<String>,
    /// How long it ran.
    pub duration: Duration,
}

/// Why a script could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The script ran and exited with a non-zero status (`128 + n` for signal `n`).
    #[error("`{name}` failed with exit code {exit_code}")]
    Failed {
        script: PathBuf,
        name: String,
        stage: String,
        exit_code: i32,
        /// The last lines of its output, oldest first.
        output_tail: Vec<String>,
    },
    #[error("Script `{}` does not exist", .script.display())]
    NotFound { script: PathBuf },
    #[error("Script `{}` is not executable", .script.display())]
    NotExecutable { script: PathBuf },
    #[error("Cannot run `{name}` inside the image: bubblewrap (`bwrap`) is not installed")]
    BubblewrapMissing { name: String },
    #[error("Cannot set up a sandbox in the image at `{}`: {reason}", .root.display())]
    Sandbox { root: PathBuf, reason: String },
    #[error("Failed to start `{}`", .program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to {action} `{}`", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ScriptError {
    /// The exit code of a script that ran and failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ScriptError::Failed { exit_code, .. } => Some(*exit_code),
            _ => None,
        }
    }
}

/// Help text that does not borrow from the error.
struct Help(String);

impl fmt::Display for Help {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl miette::Diagnostic for ScriptError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let code = match self {
            ScriptError::Failed { .. } => "kiln::script::failed",
            ScriptError::NotFound { .. } => "kiln::script::not_found",
            ScriptError::NotExecutable { .. } => "kiln::script::not_executable",
            ScriptError::BubblewrapMissing { .. } => "kiln::script::bubblewrap_missing",
            ScriptError::Sandbox { .. } => "kiln::script::sandbox",
            ScriptError::Spawn { .. } => "kiln::script::spawn",
            ScriptError::Io { .. } => "kiln::script::io",
        };
        Some(Box::new(code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        let text = match self {
            ScriptError::Failed {
                stage, output_tail, ..
            } => {
                if output_tail.is_empty() {
                    format!("It ran in the `{stage}` stage and printed nothing")
                } else {
                    format!(
                        "It ran in the `{stage}` stage; the last lines of its output:\n{}",
                        output_tail.join("\n")
                    )
                }
            }
            ScriptError::NotFound { .. } => "Check the script setting of the recipe".to_owned(),
            ScriptError::NotExecutable { script } => {
                format!("Make it executable: `chmod +x {}`", script.display())
            }
            ScriptError::BubblewrapMissing { .. } => "Install the `bubblewrap` package \
                 (`apt-get install bubblewrap`, `pacman -S bubblewrap`, `dnf install bubblewrap`)"
                .to_owned(),
            ScriptError::Sandbox { .. } => {
                "Fix the image tree so its mount points (`/proc`, `/dev`, `/sys`, `/run`, `/tmp`) \
                 are directories"
                    .to_owned()
            }
            ScriptError::Spawn { .. } | ScriptError::Io { .. } => return None,
        };
        Some(Box::new(Help(text)))
    }
}

/// The helper programs scripts run under; a missing one is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tools {
    /// bubblewrap, the sandbox of chroot scripts (required for them).
    pub bwrap: Option<PathBuf>,
    /// util-linux `unshare`: host scripts run in their own PID namespace under it when kiln is
    /// root, so that everything they start dies with them and with kiln. Without it (or without
    /// root) a host script runs directly and only the script process itself is sure to die with
    /// kiln.
    pub unshare: Option<PathBuf>,
}

impl Tools {
    /// Finds `bwrap` and `unshare` on `PATH` (or in `/usr/bin`); `unshare` only when kiln runs
    /// as root, since a PID namespace needs `CAP_SYS_ADMIN`.
    pub fn detect() -> Self {
        Tools {
            bwrap: find_tool("bwrap"),
            unshare: rustix::process::geteuid()
                .is_root()
                .then(|| find_tool("unshare"))
                .flatten(),
        }
    }
}

/// Runs `inv` with `tools`, streaming each line of output to `sink`.
pub(super) fn run_script(
    inv: &ScriptInvocation,
    tools: &Tools,
    sink: &mut dyn FnMut(&str),
) -> Result<ScriptOutcome, ScriptError> {
    check_executable(&inv.script)?;
    let env = inv.environment();
    let (finished, program) = if inv.chroot {
        let Some(bwrap) = &tools.bwrap else {
            return Err(ScriptError::BubblewrapMissing { name: inv.name() });
        };
        let mut sandbox = Sandbox::plan(inv)?;
        let mut cmd = Command::new(bwrap);
        cmd.env_clear()
            .envs(&env)
            .args(&sandbox.args)
            .arg("--")
            .arg(sandbox::chroot_script_path(&inv.stage))
            .args(&inv.args);
        let finished = process::run(cmd, sink);
        sandbox.cleanup();
        (finished, bwrap.clone())
    } else {
        let helpers = HelperDir::create(inv, tools)?;
        let mut env = env;
        if let Some(helpers) = &helpers {
            let path = env.get("PATH").cloned().unwrap_or_default();
            env.insert("PATH".into(), format!("{}:{path}", helpers.dir.display()));
        }
        let mut cmd = match (&tools.bwrap, &tools.unshare) {
            // On a read-only host, in its own PID namespace: bubblewrap kills what the script
            // started when it exits, and dies with kiln.
            (Some(bwrap), _) => {
                let mut cmd = Command::new(bwrap);
                cmd.args(sandbox::host_script_args(
                    inv,
                    helpers.as_ref().map(|h| h.dir.as_path()),
                ))
                .arg("--")
                .arg(&inv.script);
                cmd
            }
            // The script is PID 1 of a new namespace: when it exits, or when `unshare` dies
            // with kiln (`--kill-child`), everything it started is killed. `--mount-proc` gives
            // it a /proc that matches.
            (None, Some(unshare)) => {
                let mut cmd = Command::new(unshare);
                cmd.args(["--fork", "--pid", "--mount-proc", "--kill-child", "--"])
                    .arg(&inv.script);
                cmd
            }
            (None, None) => Command::new(&inv.script),
        };
        cmd.env_clear()
            .envs(&env)
            .args(&inv.args)
            .current_dir(&inv.srcdir);
        let program = tools
            .bwrap
            .clone()
            .or_else(|| tools.unshare.clone())
            .unwrap_or_else(|| inv.script.clone());
        let finished = process::run(cmd, sink);
        drop(helpers);
        (finished, program)
    };
    let finished = finished.map_err(|source| ScriptError::Spawn { program, source })?;
    if finished.status.success() {
        Ok(ScriptOutcome {
            output_tail: finished.tail,
            duration: finished.duration,
        })
    } else {
        Err(ScriptError::Failed {
            script: inv.script.clone(),
            name: inv.name(),
            stage: inv.stage.clone(),
            exit_code: process::exit_code(&finished.status),
            output_tail: finished.tail,
        })
    }
}

/// A private directory put first on a host script's `PATH`, holding `mkosi-chroot`. Removed on
/// drop, after the sandbox's mount points.
struct HelperDir {
    dir: PathBuf,
    sandbox: Option<Sandbox>,
}

impl HelperDir {
    /// `None` without bubblewrap: `mkosi-chroot` is then not offered.
    fn create(inv: &ScriptInvocation, tools: &Tools) -> Result<Option<HelperDir>, ScriptError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);

        let Some(bwrap) = &tools.bwrap else {
            return Ok(None);
        };
        let base = std::env::temp_dir();
        let dir = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("kiln-script-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(ScriptError::Io {
                        action: "create",
                        path: dir,
                        source,
                    });
                }
            }
        };
        let mut helpers = HelperDir { dir, sandbox: None };
        let chroot_inv = ScriptInvocation {
            chroot: true,
            ..inv.clone()
        };
        let helper = match Sandbox::plan(&chroot_inv) {
            Ok(sandbox) => {
                let setenv = chroot_inv.environment();
                let setenv: Vec<(&str, &str)> =
                    ["BUILDROOT", "SRCDIR", "OUTPUTDIR", "PATH", "HOME"]
                        .iter()
                        .filter_map(|k| setenv.get(*k).map(|v| (*k, v.as_str())))
                        .collect();
                let helper = sandbox.chroot_helper(bwrap, &setenv, &helpers.dir.join("created"));
                helpers.sandbox = Some(sandbox);
                helper
            }
            Err(err) => format!(
                "#!/bin/sh\necho 'mkosi-chroot: {}' >&2\nexit 1\n",
                err.to_string().replace('\'', "")
            )
            .into_bytes(),
        };
        let path = helpers.dir.join("mkosi-chroot");
        std::fs::write(&path, helper)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|source| ScriptError::Io {
                action: "write",
                path,
                source,
            })?;
        Ok(Some(helpers))
    }
}

impl Drop for HelperDir {
    fn drop(&mut self) {
        if let Some(sandbox) = &mut self.sandbox {
            sandbox.keep_logged(&self.dir.join("created"));
            sandbox.cleanup();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check_executable(script: &Path) -> Result<(), ScriptError> {
    match std::fs::metadata(script) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(ScriptError::NotExecutable {
            script: script.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ScriptError::NotFound {
            script: script.to_owned(),
        }),
        Err(source) => Err(ScriptError::Io {
            action: "inspect",
            path: script.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_is_taken_from_the_extension() {
        let inv = ScriptInvocation::new("/p/mkosi.postinst.chroot", "postinst", "/t", "/p", "/o");
        assert!(inv.chroot);
        let inv = ScriptInvocation::new("/p/mkosi.finalize", "finalize", "/t", "/p", "/o");
        assert!(!inv.chroot);
    }

    #[test]
    fn chroot_environment_points_inside_the_sandbox_and_caller_wins() {
        let mut inv =
            ScriptInvocation::new("/p/mkosi.postinst.chroot", "postinst", "/t", "/p", "/o");
        inv.env.insert("IMAGE_VERSION".into(), "7".into());
        inv.env.insert("LANG".into(), "de_DE.UTF-8".into());
        let env = inv.environment();
        assert_eq!(env["BUILDROOT"], "/");
        assert_eq!(env["SRCDIR"], "/work/src");
        assert_eq!(env["OUTPUTDIR"], "/work/out");
        assert_eq!(env["CHROOT_SCRIPT"], "/work/postinst");
        assert_eq!(env["IMAGE_VERSION"], "7");
        assert_eq!(env["LANG"], "de_DE.UTF-8");
        assert_eq!(env["WITH_NETWORK"], "0");
    }

    #[test]
    fn failed_message_names_the_script_and_code() {
        let err = ScriptError::Failed {
            script: "/p/mkosi.finalize".into(),
            name: "mkosi.finalize".into(),
            stage: "finalize".into(),
            exit_code: 3,
            output_tail: vec!["a".into(), "b".into()],
        };
        assert_eq!(err.to_string(), "`mkosi.finalize` failed with exit code 3");
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.ends_with("a\nb"), "{help}");
    }
}
