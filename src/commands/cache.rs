//! `kiln cache stats|gc|verify|push|pull|keygen`: looking after the local store, and moving a
//! recipe's builds to and from the shared cache.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kiln_cache::remote::{Remote, SecretKey};
use kiln_cache::{BuildId, GcPolicy, Store};
use kiln_engine::explain::ExplainError;
use kiln_engine::remote::{pull, push_build};
use kiln_engine::{PlanOptions, RemoteSession, plan_with_remote};

use crate::cli::CacheVerb;
use crate::progress::TerminalReporter;
use crate::project::{Project, store_dir};
use crate::remote::{ProcessEnvironment, RemoteSettings, config_dir};
use crate::report::{CliError, Renderer};
use crate::settings::Settings;
use crate::stdout::outln;

pub(crate) fn run(
    settings: &Settings,
    renderer: &Renderer,
    verb: CacheVerb,
) -> Result<(), CliError> {
    match verb {
        CacheVerb::Keygen { name, dir } => return keygen(settings, &name, dir.as_deref()),
        CacheVerb::Push => return push(settings, renderer),
        CacheVerb::Pull => return pull_verb(settings, renderer),
        _ => {}
    }
    let store = open_store(settings, renderer)?;
    let store_error = |source| CliError::Store {
        path: store.root().to_path_buf(),
        source,
    };
    match verb {
        CacheVerb::Stats => {
            let stats = store.stats().map_err(store_error)?;
            outln!("store       {}", store.root().display());
            outln!("{}", stats.to_string().trim_end());
            print_remote(crate::remote::resolve(settings)?.as_ref());
            Ok(())
        }
        CacheVerb::Gc {
            keep,
            max_size,
            drop_package_files,
        } => {
            let report = store
                .gc(GcPolicy {
                    keep_builds_per_recipe: keep,
                    max_bytes: max_size,
                    drop_package_files,
                    ..GcPolicy::default()
                })
                .map_err(store_error)?;
            outln!("{}", report.to_string().trim_end());
            Ok(())
        }
        CacheVerb::Verify => {
            let report = store.verify().map_err(store_error)?;
            outln!("{}", report.to_string().trim_end());
            // What opening the store found and repaired (a damaged index moved aside).
            let repairs = store.take_repairs();
            for repair in &repairs {
                eprintln!("warning: {repair}");
            }
            let corrupt = report.removed.len()
                + report.incomplete_trees.len()
                + report.actions_removed.len()
                + repairs.len();
            outln!("corrupt: {corrupt}");
            if corrupt == 0 {
                Ok(())
            } else {
                Err(CliError::StoreRepaired {
                    path: store.root().to_path_buf(),
                })
            }
        }
        CacheVerb::Push | CacheVerb::Pull | CacheVerb::Keygen { .. } => {
            unreachable!("handled above")
        }
    }
}

/// The store named by `--cache-dir`, or the project's.
fn open_store(settings: &Settings, renderer: &Renderer) -> Result<Store, CliError> {
    let dir = match &settings.cache_dir {
        Some(dir) => dir.clone(),
        None => {
            let loaded = crate::commands::load_recipe(settings, renderer)?;
            store_dir(settings, &loaded)
        }
    };
    Store::open(&dir).map_err(|source| CliError::Store { path: dir, source })
}

/// The shared cache part of `kiln cache stats`: where it is, whom it trusts, how it signs and
/// authenticates (never the credentials themselves), and where each setting came from.
fn print_remote(remote: Option<&RemoteSettings>) {
    let Some(remote) = remote else {
        outln!("remote      none");
        return;
    };
    let config = &remote.config;
    outln!(
        "remote      {} (from {})",
        config.url.as_str(),
        remote.url_from
    );
    let push = if remote.push { "yes" } else { "no" };
    match remote.push_from.as_str() {
        "default" => outln!("push        {push} (default)"),
        from => outln!("push        {push} (from {from})"),
    }
    let trusted: Vec<&str> = config.trusted_keys.iter().map(|key| key.name()).collect();
    if trusted.is_empty() {
        outln!("trusted     no key: records of the shared cache are not used");
    } else {
        outln!(
            "trusted     {} (from {})",
            trusted.join(", "),
            remote.trusted_from
        );
    }
    match (&config.signing_key, &remote.signing_key_file) {
        (Some(key), Some(file)) => {
            outln!("signing key {} ({})", key.name(), file.display())
        }
        _ => outln!("signing key none: pushing is not possible"),
    }
    match (&config.credentials, &remote.credentials_from) {
        (Some(credentials), Some(from)) => {
            outln!("credentials {} (from {from})", credentials.describe())
        }
        _ => outln!("credentials none"),
    }
    outln!(
        "transfers   {} at once, {} retries, timeouts {}s to connect and {}s of silence, \
         downloads at least {} bytes/s after {}s",
        config.transfers,
        config.retries,
        config.timeouts.connect.as_secs(),
        config.timeouts.stall.as_secs(),
        config.timeouts.min_rate,
        config.timeouts.stall.as_secs()
    );
}

fn require_remote(settings: &Settings) -> Result<(RemoteSettings, Remote), CliError> {
    let settings = crate::remote::resolve(settings)?.ok_or(CliError::NoRemote)?;
    let remote = settings.open()?;
    Ok((settings, remote))
}

/// `kiln cache push`: the recipe's last successful build, with every stage it made.
fn push(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let project = Project::load(settings, renderer)?;
    let (_, remote) = require_remote(settings)?;
    let no_build = || {
        CliError::Explain(ExplainError::NoBuild {
            recipe: project.recipe_key.clone(),
        })
    };
    let store = project.existing_store()?.ok_or_else(no_build)?;
    let store_error = |source| CliError::Store {
        path: store.root().to_path_buf(),
        source,
    };
    let index = store.index().map_err(store_error)?;
    let build = index
        .previous_build(&project.recipe_key, BuildId(i64::MAX))
        .map_err(store_error)?
        .ok_or_else(no_build)?;
    let report = push_build(&remote, &store, build)?;
    for (stage, theirs) in &report.conflicts {
        eprintln!(
            "warning: {stage}: the shared cache holds another output ({}) for the same inputs; \
             kept it (is the stage reproducible?)",
            theirs.short()
        );
    }
    outln!(
        "pushed build {build} to {}: {} stages uploaded, {} there already ({})",
        remote.location(),
        report.pushed.len(),
        report.already_there.len(),
        remote.stats().describe_pushed()
    );
    Ok(())
}

/// Pushes what a build made, for `kiln build --cache-push`: a failure is a warning, never a
/// failed build.
pub(crate) fn push_after_build(
    remote: &Remote,
    session: &RemoteSession<'_>,
    store: &Store,
    build: BuildId,
) {
    if !session.usable() {
        eprintln!("not pushed: the shared cache failed during the build");
        return;
    }
    match push_build(remote, store, build) {
        Ok(report) => {
            for (stage, theirs) in &report.conflicts {
                eprintln!(
                    "warning: {stage}: the shared cache holds another output ({}) for the same \
                     inputs; kept it",
                    theirs.short()
                );
            }
            eprintln!(
                "pushed {} stages to {} ({})",
                report.pushed.len(),
                remote.location(),
                remote.stats().describe_pushed()
            );
        }
        Err(error) => eprintln!("warning: not pushed: {}", one_line(&error)),
    }
}

/// An error and its causes on one line.
fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// `kiln cache pull`: every stage of the recipe the shared cache has, for building offline.
fn pull_verb(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let project = Project::load(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let (_, remote) = require_remote(settings)?;
    let store = project.open_store()?;
    let reporter = TerminalReporter::new(settings.verbose);
    let session = RemoteSession::new(&remote, &reporter);
    let plan = plan_with_remote(
        &pipeline.graph,
        Some(&store),
        &project.loaded.dir,
        PlanOptions::build(false, settings.offline),
        Some(&session),
    )?;
    let started = std::time::Instant::now();
    let report = pull(&plan, &store, &session)?;
    outln!(
        "pulled {} stages from {} ({}) in {}, {} cached already",
        report.pulled.len(),
        remote.location(),
        remote.stats().describe_fetched(),
        crate::progress::format_duration(started.elapsed()),
        report.local.len()
    );
    if !report.missing.is_empty() {
        outln!(
            "not on the shared cache (a build runs them): {}",
            report.missing.join(", ")
        );
    }
    Ok(())
}

/// `kiln cache keygen NAME`: a key pair in `~/.config/kiln/keys/` (or `--dir`).
fn keygen(settings: &Settings, name: &str, dir: Option<&Path>) -> Result<(), CliError> {
    let dir = match dir {
        Some(dir) => kiln_recipe::paths::absolute(&settings.cwd, dir),
        None => config_dir(&ProcessEnvironment).join("keys"),
    };
    let key = SecretKey::generate(name).map_err(|source| CliError::RemoteKey {
        from: "the command line".to_string(),
        source,
    })?;
    std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
        what: format!("Cannot create `{}`", dir.display()),
        source,
    })?;
    let secret = dir.join(format!("{name}.secret"));
    let public = dir.join(format!("{name}.public"));
    write_new(&secret, &key.to_file_text(), 0o600)?;
    write_new(&public, &format!("{}\n", key.public()), 0o644)?;
    let config = config_dir(&ProcessEnvironment).join("config.toml");
    outln!("wrote {} (keep it private)", secret.display());
    outln!("wrote {}", public.display());
    outln!("public key: {}", key.public());
    outln!(
        "sign what this machine pushes: `signing-key = \"{}\"` in the [cache] section of {}",
        secret.display(),
        config.display()
    );
    outln!(
        "trust what it pushes elsewhere: add \"{}\" to `trusted-keys` there",
        key.public()
    );
    Ok(())
}

/// Writes a file that must not exist yet, with `mode`.
fn write_new(path: &PathBuf, text: &str, mode: u32) -> Result<(), CliError> {
    let io_error = |source| CliError::Io {
        what: format!("Cannot write `{}`", path.display()),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::Io {
                    what: format!(
                        "`{}` exists already: choose another name, or remove it first",
                        path.display()
                    ),
                    source,
                }
            } else {
                io_error(source)
            }
        })?;
    file.write_all(text.as_bytes()).map_err(io_error)
}
