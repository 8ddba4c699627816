//! Settings resolved from the command line: absolute paths, the load options the engine reads a
//! recipe with, and the force level. Verbs receive these, never the raw arguments.

use std::path::PathBuf;

use kiln_recipe::LoadOptions;

use crate::cli::GlobalArgs;
use crate::report::CliError;

/// What every verb needs to know about this invocation.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The project directory, absolute.
    pub project_dir: PathBuf,
    /// How the recipe is read (overrides from the command line, strictness).
    pub load: LoadOptions,
    /// 0: reuse everything; 1: rewrite the final output; 2 or more: re-run every stage.
    pub force: u8,
    /// The local store chosen on the command line, if any.
    pub cache_dir: Option<PathBuf>,
    /// `--locked`: packages must resolve to what `kiln.lock` holds.
    pub locked: bool,
    /// The directory kiln was started in, against which relative paths of the environment
    /// resolve.
    pub cwd: PathBuf,
    /// `--offline`: build from the last package resolution, without the network.
    pub offline: bool,
    /// `-v`: show the tools' output.
    pub verbose: bool,
    /// The shared cache flags, resolved with the environment and the config file by
    /// [`crate::remote::resolve`] when a verb needs them.
    pub remote: crate::remote::RemoteArgs,
}

impl Settings {
    pub(crate) fn resolve(args: &GlobalArgs) -> Result<Settings, CliError> {
        let cwd = std::env::current_dir().map_err(|source| CliError::Io {
            what: "Cannot read the current directory".to_string(),
            source,
        })?;
        let project_dir = kiln_recipe::paths::absolute(&cwd, &args.directory);
        if !project_dir.is_dir() {
            return Err(CliError::NoProjectDir { path: project_dir });
        }
        let project_dir = project_dir.canonicalize().map_err(|source| CliError::Io {
            what: format!("Cannot resolve `{}`", project_dir.display()),
            source,
        })?;
        let load = LoadOptions {
            image_version: args.image_version.clone(),
            autologin: args.autologin.then_some(true),
            profiles: args.profiles.clone(),
            strict: args.strict,
            environment: None,
        };
        Ok(Settings {
            project_dir,
            load,
            force: args.force,
            cache_dir: args
                .cache_dir
                .as_ref()
                .map(|dir| kiln_recipe::paths::absolute(&cwd, dir)),
            locked: args.locked,
            cwd,
            offline: args.offline,
            verbose: args.verbose,
            remote: crate::remote::RemoteArgs {
                url: args.cache_remote.clone(),
                disabled: args.no_cache_remote,
                push: args.cache_push,
            },
        })
    }
}
