//! `kiln build`: plan the recipe, run the stages that are not cached (locally or in the shared
//! cache), write the output, and push what was built when asked to.

use std::time::Instant;

use kiln_engine::check::{CheckError, Mismatch};
use kiln_engine::{BuildOptions, Outcome, PlanOptions, RemoteSession, plan};
use kiln_stages::build::{BuildError, BuildEvent, BuildRequest, build};

use crate::progress::{TerminalReporter, format_duration};
use crate::project::Project;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;

pub(crate) fn run(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let started = Instant::now();
    let mut timings = Timings::new(settings.verbose);
    let project = Project::load(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let store = project.open_store()?;
    // What killed builds left behind goes now, not only with `cache verify` or `gc`.
    let reclaimed = store.reclaim_scratch();
    if settings.verbose && reclaimed > 0 {
        eprintln!("reclaimed {reclaimed} scratch folders of killed builds");
    }
    // `--offline` asks nothing of the network, the shared cache included.
    let remote = match crate::remote::resolve(settings)? {
        Some(remote) if !settings.offline => Some((remote.open()?, remote.push)),
        _ => None,
    };
    if settings.remote.push && remote.is_none() {
        eprintln!("warning: --cache-push pushes nowhere: no shared cache is in use");
    }
    if let Some((remote, _)) = &remote
        && remote.trusted_keys().is_empty()
    {
        eprintln!(
            "warning: no key is trusted, so no record of the shared cache {} is used; \
             set `trusted-keys` or KILN_CACHE_TRUSTED_KEYS",
            remote.location()
        );
    }
    let reporter = TerminalReporter::new(settings.verbose);
    let session = remote
        .as_ref()
        .map(|(remote, _)| RemoteSession::new(remote, &reporter));
    timings.lap("read the recipe and open the store");
    let request = BuildRequest {
        pipeline: &pipeline,
        store: &store,
        project_dir: &project.loaded.dir,
        recipe_key: project.recipe_key.clone(),
        overwrite: settings.force >= 1,
        rerun: settings.force >= 2,
        offline: settings.offline,
        remote: session.as_ref(),
        reporter: &reporter,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let built = build(&request, &mut show_event).map_err(|error| {
        let error = match error {
            BuildError::Plan(error) => project.locate(error.into()),
            BuildError::Run(error) => CliError::Build(error),
            BuildError::Export(error) => CliError::Export(error),
            BuildError::Forget { path, source } => CliError::Store { path, source },
        };
        with_store_help(error, &store, &pipeline.export.output_dir)
    })?;
    timings.laps.extend(built.phases.iter().copied());
    let report = &built.report;
    let main = built
        .exported
        .first()
        .expect("every format has a main artifact");
    if let (Some((remote, true)), Some(session)) = (&remote, &session) {
        timings.restart();
        crate::commands::cache::push_after_build(remote, session, &store, report.build);
        timings.lap("push");
    }
    timings.print();
    if let Some((remote, _)) = &remote
        && settings.verbose
    {
        let stats = remote.stats();
        eprintln!("shared cache: fetched {}", stats.describe_fetched());
    }
    let from_remote = report
        .stages
        .iter()
        .filter(|stage| stage.outcome == Outcome::Remote)
        .count();
    let from_remote = if from_remote > 0 {
        format!(", {from_remote} from the shared cache")
    } else {
        String::new()
    };
    let verb = if built.exported.iter().any(|artifact| artifact.written) {
        "wrote"
    } else {
        "up to date:"
    };
    eprintln!(
        "{verb} {} (build {}, {} of {} stages ran{from_remote}, {})",
        main.path.display(),
        report.build,
        report.ran().len(),
        report.stages.len(),
        format_duration(started.elapsed())
    );
    Ok(())
}

/// Shows what the store repaired on its own during a build.
fn show_event(event: BuildEvent<'_>) {
    match event {
        BuildEvent::Repaired(repair) => eprintln!("warning: {repair}"),
        BuildEvent::Forgot {
            error,
            object,
            entries,
        } => eprintln!(
            "warning: {error}: object {} is damaged or missing; forgot the {entries} cache \
             entries that used it and building again",
            object.short(),
        ),
    }
}

/// A failed build's error, with a hint when a filesystem kiln writes to is full.
fn with_store_help(
    error: CliError,
    store: &kiln_cache::Store,
    output_dir: &std::path::Path,
) -> CliError {
    let mut disk_full = false;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = cause {
        disk_full |= current
            .downcast_ref::<std::io::Error>()
            .is_some_and(kiln_cache::is_disk_full)
            || current
                .downcast_ref::<kiln_cache::StoreError>()
                .is_some_and(kiln_cache::StoreError::is_disk_full);
        cause = current.source();
    }
    // A tool that ran out of room says so in its output, which the error carries.
    disk_full |= format!("{:?}", error).contains("No space left on device");
    if !disk_full {
        return error;
    }
    CliError::WithHelp(Box::new(crate::report::WithHelp {
        help: format!(
            "A filesystem kiln writes to is full: the store `{}` (with the stages' scratch \
             space) or the output folder `{}`. Free some space there (`kiln cache gc` removes \
             what recent builds did not use) or point --cache-dir at a larger filesystem, then \
             build again; nothing half-written was kept",
            store.root().display(),
            output_dir.display()
        ),
        error,
    }))
}

/// With `-v`, where a build's time went, phase by phase.
struct Timings {
    enabled: bool,
    last: Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl Timings {
    fn new(enabled: bool) -> Timings {
        Timings {
            enabled,
            last: Instant::now(),
            laps: Vec::new(),
        }
    }

    /// Time from now on: what happened since the last lap is counted elsewhere.
    fn restart(&mut self) {
        self.last = Instant::now();
    }

    fn lap(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    fn print(&self) {
        if !self.enabled {
            return;
        }
        let laps: Vec<String> = self
            .laps
            .iter()
            .map(|(what, time)| format!("{what} {}", format_duration(*time)))
            .collect();
        eprintln!("time: {}", laps.join(", "));
    }
}

/// `kiln build --check`: every stage of the last build run again from its cached inputs; the
/// first stage whose output differs is the error.
pub(crate) fn check(settings: &Settings, renderer: &Renderer) -> Result<(), CliError> {
    let started = Instant::now();
    let project = Project::load(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let store = project.open_store()?;
    let plan = plan(
        &pipeline.graph,
        Some(&store),
        &project.loaded.dir,
        PlanOptions::build(false, settings.offline),
    )
    .map_err(|error| project.locate(error.into()))?;
    let options = BuildOptions {
        started: std::time::SystemTime::now(),
        recipe: project.recipe_key.clone(),
        project_dir: project.loaded.dir.clone(),
        force_rerun: true,
        jobs: 1,
    };
    let reporter = TerminalReporter::new(settings.verbose);
    let mismatches = kiln_engine::check::check(&pipeline.graph, &plan, &store, &options, &reporter)
        .map_err(|error| match error {
            CheckError::Build(error) => CliError::Build(error),
            other => CliError::Check(other),
        })?;
    if let Some(Mismatch {
        stage,
        first_path,
        cached,
        rerun,
        ..
    }) = mismatches.into_iter().next()
    {
        return Err(CliError::NotReproducible {
            stage,
            what: match first_path {
                Some(path) => format!("first difference: {path}"),
                None => format!("its output was {cached}, now {rerun}"),
            },
        });
    }
    eprintln!(
        "reproducible: every stage gave its cached output again ({})",
        format_duration(started.elapsed())
    );
    Ok(())
}
