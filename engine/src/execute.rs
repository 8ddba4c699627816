//! The scheduler: runs a [`Plan`], stages in parallel where the graph allows, and records every
//! stage of the build in the index.
//!
//! Workers only run stages and send back results; the scheduler thread alone touches the index
//! and decides what runs next, so a 1-worker and an N-worker build record the same thing. A stage
//! that was pending in the plan gets its key once its upstream stages are done: if they ended
//! with the outputs they had before, the key is found in the action cache and the stage is
//! cached (early cutoff). An action is recorded only after its output is in the store, so a
//! build killed at any instant leaves no action pointing at nothing.
//!
//! With a shared cache, a local miss asks it before the stage runs; a hit settles the stage as
//! `remote`, and its output is downloaded only if a stage that reads it runs, or if it is the
//! build's output (see [`crate::remote`] for why that is enough, and for what happens when the
//! remote fails: the build is scheduled again without it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_cache::{
    ActionResult, BuildId, Digest, RecordedInput, RunStatus, StageRun, Store, StoreError,
};

use crate::graph::Graph;
use crate::inputs::stage_input;
use crate::key::stage_key;
use crate::plan::{Plan, PlannedState};
use crate::remote::{RemoteHit, RemoteOnly, RemoteSession};
use crate::reporter::{Outcome, Reporter, ReporterLog};
use crate::stage::{InputSource, StageContext, StageError};

/// What a build is and how it runs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The recipe's name in the index: builds of the same name are compared by `explain`.
    pub recipe: String,
    pub project_dir: PathBuf,
    /// Run every stage, whatever the cache holds (`-ff`).
    pub force_rerun: bool,
    /// How many stages may run at once.
    pub jobs: usize,
    /// When the build began, before its plan resolved packages: what it used
    /// since is what `kiln cache gc` keeps for it.
    pub started: std::time::SystemTime,
}

/// One stage of a finished build.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub name: String,
    pub outcome: Outcome,
    pub output: Digest,
    pub duration: Duration,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub build: BuildId,
    /// In the order the stages finished.
    pub stages: Vec<StageReport>,
}

impl BuildReport {
    pub fn stage(&self, name: &str) -> Option<&StageReport> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// The names of the stages that ran, in graph order of completion.
    pub fn ran(&self) -> Vec<&str> {
        self.stages
            .iter()
            .filter(|stage| matches!(stage.outcome, Outcome::Ran { .. }))
            .map(|stage| stage.name.as_str())
            .collect()
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BuildError {
    #[error("Stage `{stage}` failed")]
    Stage {
        stage: String,
        #[source]
        #[diagnostic_source]
        source: StageError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Stage `{stage}` has unresolved inputs: a plan made only to read cannot be built")]
    Unresolved { stage: String },
    #[error("Cannot create a scratch directory in `{}`", path.display())]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Finished {
    index: usize,
    key: Digest,
    inputs: Vec<RecordedInput>,
    started: Instant,
    result: Result<Digest, BuildError>,
    /// What the stage noted while it ran.
    notes: Vec<String>,
}

struct Job {
    index: usize,
    key: Digest,
    inputs: Vec<RecordedInput>,
    /// Download this remote hit's output instead of running the stage.
    fetch: Option<RemoteHit>,
}

/// A remote hit's download that ended.
struct Fetched {
    index: usize,
    key: Digest,
    hit: RemoteHit,
    started: Instant,
    /// False when the shared cache failed (it warned).
    ok: bool,
}

/// What a worker sends back.
enum Done {
    Ran(Finished),
    Fetched(Fetched),
}

/// How one scheduling of the build ended.
enum Pass {
    Done(Vec<StageReport>),
    /// The shared cache failed to deliver an output the build needs: schedule again without it.
    Again(Vec<StageReport>),
}

/// Run the plan. Stages already cached are recorded as such; the others run.
pub fn execute(
    graph: &Graph,
    plan: &Plan,
    store: &Store,
    options: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<BuildReport, BuildError> {
    execute_with_remote(graph, plan, store, options, reporter, None)
}

/// [`execute`], asking the shared cache of `remote` on every local miss (`plan` should have been
/// made with the same session).
pub fn execute_with_remote(
    graph: &Graph,
    plan: &Plan,
    store: &Store,
    options: &BuildOptions,
    reporter: &dyn Reporter,
    remote: Option<&RemoteSession<'_>>,
) -> Result<BuildReport, BuildError> {
    if let Some(stage) = plan
        .stages
        .iter()
        .find(|stage| stage.state == PlannedState::WillResolve)
    {
        return Err(BuildError::Unresolved {
            stage: stage.name.clone(),
        });
    }
    let index = store.index()?;
    let build = index.begin_build(&options.recipe, &options.project_dir, options.started)?;
    let mut earlier = BTreeMap::new();
    let result = loop {
        let pass = Scheduler {
            graph,
            plan,
            options,
            reporter,
            runner: StageRunner {
                graph,
                store,
                options,
                reporter,
                remote,
            },
            index: &index,
            build,
            remote,
            earlier: &earlier,
        }
        .run();
        match pass {
            Ok(Pass::Done(stages)) => break Ok(stages),
            // The session is not usable any more: the next pass does not ask it.
            Ok(Pass::Again(stages)) => {
                earlier.extend(stages.into_iter().map(|stage| (stage.name.clone(), stage)))
            }
            Err(error) => break Err(error),
        }
    };
    index.finish_build(build, result.is_ok())?;
    result.map(|stages| BuildReport { build, stages })
}

/// The scheduler thread's state: the only place that touches the index.
struct Scheduler<'a> {
    graph: &'a Graph,
    plan: &'a Plan,
    options: &'a BuildOptions,
    reporter: &'a dyn Reporter,
    runner: StageRunner<'a>,
    index: &'a kiln_cache::Index,
    build: BuildId,
    remote: Option<&'a RemoteSession<'a>>,
    /// What an earlier pass of this build settled and recorded, by stage name.
    earlier: &'a BTreeMap<String, StageReport>,
}

/// What a worker needs to run one stage; shared by all workers, read-only.
pub(crate) struct StageRunner<'a> {
    pub(crate) graph: &'a Graph,
    pub(crate) store: &'a Store,
    pub(crate) options: &'a BuildOptions,
    pub(crate) reporter: &'a dyn Reporter,
    pub(crate) remote: Option<&'a RemoteSession<'a>>,
}

/// What one pass of the scheduler has settled so far, and what it waits for. Only the scheduler
/// thread holds it.
struct PassState {
    /// For each stage, how many of its upstream stages are not settled yet.
    remaining_deps: Vec<usize>,
    /// The output of each settled stage, by name.
    outputs: BTreeMap<String, Digest>,
    /// The stages whose upstream stages are all settled, not started yet.
    ready: Vec<usize>,
    reports: Vec<StageReport>,
    failure: Option<BuildError>,
    remote_only: RemoteOnly<Job>,
    /// A needed output could not be downloaded: start nothing more, schedule again.
    again: bool,
    /// Jobs handed to the workers and not back yet.
    running: usize,
}

impl PassState {
    fn new(graph: &Graph) -> PassState {
        let remaining_deps: Vec<usize> = (0..graph.len())
            .map(|stage| graph.dependencies(stage).len())
            .collect();
        let ready = graph
            .order()
            .iter()
            .copied()
            .filter(|&stage| remaining_deps[stage] == 0)
            .collect();
        PassState {
            remaining_deps,
            outputs: BTreeMap::new(),
            ready,
            reports: Vec::new(),
            failure: None,
            remote_only: RemoteOnly::default(),
            again: false,
            running: 0,
        }
    }

    /// Whether another stage may start: nothing failed and nothing sends the build round again.
    fn may_start(&self) -> bool {
        self.failure.is_none() && !self.again
    }

    /// A stage is settled with `report`: its output is known, and the stages that waited only
    /// for it are ready.
    fn settled(&mut self, graph: &Graph, stage: usize, report: StageReport) {
        self.outputs.insert(report.name.clone(), report.output);
        release(graph, stage, &mut self.remaining_deps, &mut self.ready);
        self.reports.push(report);
    }

    /// Hand a job to the workers.
    fn dispatch(&mut self, jobs: &mpsc::Sender<Job>, job: Job) {
        if jobs.send(job).is_ok() {
            self.running += 1;
        }
    }
}

impl Scheduler<'_> {
    /// One pass: workers run jobs while this thread settles stages, until nothing is ready and
    /// nothing runs.
    fn run(&self) -> Result<Pass, BuildError> {
        let mut state = PassState::new(self.graph);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let workers = self.options.jobs.max(1);

        std::thread::scope(|scope| {
            let runner = &self.runner;
            for _ in 0..workers {
                let job_rx = Arc::clone(&job_rx);
                let done_tx = done_tx.clone();
                scope.spawn(move || runner.work(&job_rx, &done_tx));
            }
            drop(done_tx);

            loop {
                self.start_ready(&mut state, &job_tx);
                if state.running == 0 {
                    break;
                }
                let Ok(done) = done_rx.recv() else { break };
                state.running -= 1;
                match done {
                    Done::Ran(finished) => self.ran(&mut state, finished),
                    Done::Fetched(fetched) => self.fetched(&mut state, &job_tx, fetched),
                }
            }
            drop(job_tx);
        });

        match state.failure {
            Some(error) => Err(error),
            None if state.again => Ok(Pass::Again(state.reports)),
            None => Ok(Pass::Done(state.reports)),
        }
    }

    /// Start or settle everything that is ready, in graph order, until something fails.
    fn start_ready(&self, state: &mut PassState, jobs: &mpsc::Sender<Job>) {
        let graph = self.graph;
        state
            .ready
            .sort_by_key(|stage| graph.order().iter().position(|s| s == stage));
        while state.may_start() && !state.ready.is_empty() {
            let stage_index = state.ready.remove(0);
            match self.prepare(stage_index, &state.outputs) {
                Err(error) => state.failure = Some(error),
                Ok(Prepared::Cached {
                    key,
                    inputs,
                    output,
                }) => self.settle_cached(state, stage_index, key, inputs, output),
                Ok(Prepared::Remote { key, hit }) => {
                    self.start_remote(state, jobs, stage_index, key, hit)
                }
                Ok(Prepared::Run { key, inputs }) => {
                    self.start_run(state, jobs, stage_index, key, inputs)
                }
            }
        }
    }

    /// Settle a stage the local action cache holds.
    fn settle_cached(
        &self,
        state: &mut PassState,
        stage_index: usize,
        key: Digest,
        inputs: Vec<RecordedInput>,
        output: ActionResult,
    ) {
        let stage = self.graph.stage(stage_index);
        if let Some(earlier) = self.earlier.get(stage.name()) {
            // Settled and recorded by the earlier pass already.
            state.settled(self.graph, stage_index, earlier.clone());
            return;
        }
        let report = StageReport {
            name: stage.name().to_string(),
            outcome: Outcome::Cached,
            output: output.output,
            duration: Duration::ZERO,
        };
        if let Err(error) = self.record(stage_index, key, inputs, output, &report, Vec::new()) {
            state.failure = Some(error);
            return;
        }
        self.reporter.stage_finished(
            &report.name,
            report.outcome,
            &report.output,
            report.duration,
        );
        state.settled(self.graph, stage_index, report);
    }

    /// A stage the shared cache holds: settled without its output, which is downloaded only when
    /// a stage that reads it runs; the build's output is downloaded before it settles.
    fn start_remote(
        &self,
        state: &mut PassState,
        jobs: &mpsc::Sender<Job>,
        stage_index: usize,
        key: Digest,
        hit: RemoteHit,
    ) {
        let graph = self.graph;
        let is_output = graph.dependents(stage_index).is_empty();
        if let Some(earlier) = self.earlier.get(graph.stage(stage_index).name())
            && earlier.outcome == Outcome::Remote
            && earlier.output == hit.output().output
            && !is_output
        {
            // Settled and recorded by the earlier pass already.
            state.remote_only.insert(stage_index, hit);
            state.settled(graph, stage_index, earlier.clone());
            return;
        }
        if is_output {
            // The build's output: download it before it settles.
            self.reporter.stage_started(graph.stage(stage_index).name());
            let job = Job {
                index: stage_index,
                key,
                inputs: Vec::new(),
                fetch: Some(hit),
            };
            state.dispatch(jobs, job);
            return;
        }
        match self.settle_remote(stage_index, key, &hit, Duration::ZERO) {
            Err(error) => state.failure = Some(error),
            Ok(report) => {
                state.remote_only.insert(stage_index, hit);
                state.settled(graph, stage_index, report);
            }
        }
    }

    /// Hand a stage that must run to the workers, once the outputs it reads are in the local
    /// store: those only on the shared cache are downloaded first.
    fn start_run(
        &self,
        state: &mut PassState,
        jobs: &mpsc::Sender<Job>,
        stage_index: usize,
        key: Digest,
        inputs: Vec<RecordedInput>,
    ) {
        let job = Job {
            index: stage_index,
            key,
            inputs,
            fetch: None,
        };
        // A running stage reads its inputs from the local store.
        let needs = state
            .remote_only
            .missing(&self.graph.dependencies(stage_index));
        if needs.is_empty() {
            self.reporter
                .stage_started(self.graph.stage(stage_index).name());
            state.dispatch(jobs, job);
        } else if self.remote.is_some_and(RemoteSession::usable) {
            for (upstream, hit) in state.remote_only.wait(needs, job) {
                let fetch = Job {
                    index: upstream,
                    key: hit.record.key,
                    inputs: Vec::new(),
                    fetch: Some(hit),
                };
                state.dispatch(jobs, fetch);
            }
        } else {
            state.again = true;
        }
    }

    /// A download ended: start the stages that waited for it, or settle the build's output.
    fn fetched(&self, state: &mut PassState, jobs: &mpsc::Sender<Job>, fetched: Fetched) {
        let Fetched {
            index: stage_index,
            key,
            hit,
            started,
            ok,
        } = fetched;
        if !ok {
            state.again = true;
            return;
        }
        // Its objects are stored: the action may be recorded.
        if let Err(error) = self.index.record_action(&key, hit.output()) {
            state.failure.get_or_insert(error.into());
            return;
        }
        if state.remote_only.contains(stage_index) {
            // Downloaded for stages about to run.
            for job in state.remote_only.fetched(stage_index) {
                if state.may_start() {
                    self.reporter
                        .stage_started(self.graph.stage(job.index).name());
                    state.dispatch(jobs, job);
                }
            }
            return;
        }
        // The build's output, settled now that it is here.
        match self.settle_remote(stage_index, key, &hit, started.elapsed()) {
            Err(error) => {
                state.failure.get_or_insert(error);
            }
            Ok(report) => {
                state.outputs.insert(report.name.clone(), report.output);
                state.reports.push(report);
            }
        }
    }

    /// A stage ran: record its action and run, and settle it.
    fn ran(&self, state: &mut PassState, finished: Finished) {
        let stage = self.graph.stage(finished.index);
        let output = match finished.result {
            Ok(output) => output,
            Err(error) => {
                if state.failure.is_none() {
                    state.failure = Some(error);
                }
                return;
            }
        };
        let output_changed = match self.previous_output(stage.name()) {
            Ok(previous) => previous != Some(output),
            Err(error) => {
                state.failure.get_or_insert(error);
                true
            }
        };
        let report = StageReport {
            name: stage.name().to_string(),
            outcome: Outcome::Ran { output_changed },
            output,
            duration: finished.started.elapsed(),
        };
        let result = ActionResult {
            output,
            kind: stage.output_kind(),
        };
        let recorded = self
            .index
            .record_action(&finished.key, result)
            .map_err(BuildError::from)
            .and_then(|()| {
                self.record(
                    finished.index,
                    finished.key,
                    finished.inputs,
                    result,
                    &report,
                    finished.notes,
                )
            });
        if let Err(error) = recorded {
            state.failure.get_or_insert(error);
        }
        self.reporter.stage_finished(
            &report.name,
            report.outcome,
            &report.output,
            report.duration,
        );
        state.settled(self.graph, finished.index, report);
    }

    /// Record and report a stage taken from the shared cache: its run carries the record's
    /// inputs and notes, so `explain` shows what the build that made it recorded.
    fn settle_remote(
        &self,
        stage_index: usize,
        key: Digest,
        hit: &RemoteHit,
        duration: Duration,
    ) -> Result<StageReport, BuildError> {
        let report = StageReport {
            name: self.graph.stage(stage_index).name().to_string(),
            outcome: Outcome::Remote,
            output: hit.output().output,
            duration,
        };
        self.record(
            stage_index,
            key,
            hit.record.inputs.clone(),
            hit.output(),
            &report,
            hit.notes(),
        )?;
        self.reporter
            .stage_finished(&report.name, report.outcome, &report.output, duration);
        Ok(report)
    }

    /// Resolve a ready stage's inputs, compute its key and decide: cached or run.
    fn prepare(
        &self,
        stage_index: usize,
        outputs: &BTreeMap<String, Digest>,
    ) -> Result<Prepared, BuildError> {
        let stage = self.graph.stage(stage_index);
        let planned = self
            .plan
            .stage(stage_index)
            .expect("the plan covers every stage of its graph");
        let mut inputs: Vec<RecordedInput> = planned
            .inputs
            .iter()
            .filter(|input| input.kind != crate::inputs::kind::STAGE)
            .cloned()
            .collect();
        for input in stage.inputs() {
            if let InputSource::Stage(upstream) = &input.source {
                let output = outputs
                    .get(upstream)
                    .copied()
                    .expect("a stage is ready only when its upstream stages are done");
                inputs.push(stage_input(&input, upstream, output));
            }
        }
        let key = stage_key(stage.kind(), stage.version(), &inputs);
        let cached = match (&planned.state, self.options.force_rerun) {
            (_, true) => None,
            (PlannedState::Cached { output }, false) if planned.key == Some(key) => {
                Some(ActionResult {
                    output: *output,
                    kind: stage.output_kind(),
                })
            }
            _ => self.index.lookup_action(&key)?,
        };
        if let Some(output) = cached {
            return Ok(Prepared::Cached {
                key,
                inputs,
                output,
            });
        }
        // Not in the local store: the shared cache may have it.
        let remote = self
            .remote
            .filter(|remote| remote.usable() && !self.options.force_rerun);
        let hit = match (&planned.state, remote) {
            (_, None) => None,
            (PlannedState::Remote { hit, .. }, Some(remote))
                if planned.key == Some(key) && !remote.rejected(&key) =>
            {
                Some((**hit).clone())
            }
            (_, Some(remote)) => remote.lookup(self.index, stage, &key),
        };
        Ok(match hit {
            Some(hit) => Prepared::Remote { key, hit },
            None => Prepared::Run { key, inputs },
        })
    }

    fn previous_output(&self, stage: &str) -> Result<Option<Digest>, BuildError> {
        Ok(self
            .index
            .last_run_of_stage(&self.options.recipe, stage, self.build)?
            .map(|run| run.output.output))
    }

    /// Record a stage's part in the build, with the notes of its resolution and of its run.
    fn record(
        &self,
        stage_index: usize,
        key: Digest,
        inputs: Vec<RecordedInput>,
        output: ActionResult,
        report: &StageReport,
        run_notes: Vec<String>,
    ) -> Result<(), BuildError> {
        let stage = self.graph.stage(stage_index);
        let mut notes = self
            .plan
            .stage(stage_index)
            .map(|planned| planned.notes.clone())
            .unwrap_or_default();
        notes.extend(run_notes);
        let (status, output_changed) = match report.outcome {
            Outcome::Cached => (RunStatus::Cached, false),
            Outcome::Remote => (RunStatus::Remote, false),
            Outcome::Ran { output_changed } => (RunStatus::Ran, output_changed),
        };
        self.index.record_run(
            self.build,
            &StageRun {
                stage: stage.name().to_string(),
                kind: stage.kind().to_string(),
                key,
                status,
                output_changed,
                duration: report.duration,
                output,
                inputs,
                notes,
            },
        )?;
        Ok(())
    }
}

impl StageRunner<'_> {
    /// A worker: runs the jobs it is handed, one at a time, until the scheduler stops sending.
    fn work(&self, jobs: &Mutex<mpsc::Receiver<Job>>, done: &mpsc::Sender<Done>) {
        loop {
            let job = match jobs.lock() {
                Ok(receiver) => receiver.recv(),
                Err(_) => return,
            };
            let Ok(job) = job else { return };
            if done.send(self.perform(job)).is_err() {
                return;
            }
        }
    }

    /// Download a remote hit's output, or run the stage.
    fn perform(&self, job: Job) -> Done {
        let started = Instant::now();
        match job.fetch {
            Some(hit) => Done::Fetched(Fetched {
                ok: self.fetch(job.index, &hit),
                index: job.index,
                key: job.key,
                hit,
                started,
            }),
            None => {
                let (result, notes) = self.run_stage(job.index, &job.inputs);
                Done::Ran(Finished {
                    index: job.index,
                    key: job.key,
                    inputs: job.inputs,
                    started,
                    result,
                    notes,
                })
            }
        }
    }

    /// Download a remote hit's output into the store; `false` when the shared cache failed.
    fn fetch(&self, stage_index: usize, hit: &RemoteHit) -> bool {
        let name = self.graph.stage(stage_index).name();
        self.remote
            .is_some_and(|remote| remote.fetch(self.store, name, hit))
    }

    /// Run one stage; returns its output and what it noted.
    pub(crate) fn run_stage(
        &self,
        stage_index: usize,
        inputs: &[RecordedInput],
    ) -> (Result<Digest, BuildError>, Vec<String>) {
        let stage = self.graph.stage(stage_index);
        let scratch = match self.store.scratch_dir("stage") {
            Ok(scratch) => scratch,
            Err(source) => {
                let error = BuildError::Scratch {
                    path: self.store.tmp_dir(),
                    source,
                };
                return (Err(error), Vec::new());
            }
        };
        let digests: BTreeMap<String, Digest> = inputs
            .iter()
            .map(|input| (input.name.clone(), input.digest))
            .collect();
        let values: BTreeMap<String, String> = inputs
            .iter()
            .filter(|input| input.kind == crate::inputs::kind::VALUE)
            .filter_map(|input| Some((input.name.clone(), input.value.clone()?)))
            .collect();
        let log = NotingLog {
            log: ReporterLog {
                reporter: self.reporter,
                stage: stage.name(),
            },
            notes: Mutex::new(Vec::new()),
        };
        let ctx = StageContext {
            store: self.store,
            project_dir: &self.options.project_dir,
            scratch: scratch.path(),
            inputs: &digests,
            values: &values,
            log: &log,
        };
        let result = stage.run(&ctx).map_err(|source| BuildError::Stage {
            stage: stage.name().to_string(),
            source,
        });
        remove_scratch(scratch.path());
        let notes = log
            .notes
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (result, notes)
    }
}

/// A stage's log that keeps its notes for the index.
struct NotingLog<'a> {
    log: ReporterLog<'a>,
    notes: Mutex<Vec<String>>,
}

impl crate::reporter::StageLog for NotingLog<'_> {
    fn line(&self, line: &str) {
        self.log.line(line);
    }

    fn note(&self, note: &str) {
        self.log.line(note);
        self.keep(note.to_string());
    }

    fn warning(&self, warning: &str) {
        let line = format!("warning: {warning}");
        self.log.reporter.stage_warning(self.log.stage, &line);
        self.keep(line);
    }
}

impl NotingLog<'_> {
    fn keep(&self, note: String) {
        self.notes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(note);
    }
}

enum Prepared {
    Cached {
        key: Digest,
        inputs: Vec<RecordedInput>,
        output: ActionResult,
    },
    Run {
        key: Digest,
        inputs: Vec<RecordedInput>,
    },
    /// On the shared cache only.
    Remote { key: Digest, hit: RemoteHit },
}

/// A stage is settled: the stages that waited only for it are ready.
fn release(graph: &Graph, stage: usize, remaining_deps: &mut [usize], ready: &mut Vec<usize>) {
    for dependent in graph.dependents(stage) {
        remaining_deps[dependent] -= 1;
        if remaining_deps[dependent] == 0 {
            ready.push(dependent);
        }
    }
}

/// Remove a scratch directory even where a stage left read-only directories behind.
fn remove_scratch(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() {
        return;
    }
    for entry in walkdir_dirs(path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o700));
    }
    let _ = std::fs::remove_dir_all(path);
}

fn walkdir_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![path.to_path_buf()];
    let mut index = 0;
    while index < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[index]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    dirs.push(entry.path());
                }
            }
        }
        index += 1;
    }
    dirs
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kiln_cache::OutputKind;

    use super::*;
    use crate::plan::plan;
    use crate::reporter::SilentReporter;
    use crate::stage::{Input, Stage};

    /// A stage whose output is its value followed by its upstream outputs' contents, or a
    /// constant when `constant` is set (so it can end with the same output after a re-run).
    struct TestStage {
        name: String,
        upstream: Vec<String>,
        value: String,
        constant: bool,
        fail: bool,
        runs: Arc<AtomicUsize>,
    }

    impl Stage for TestStage {
        fn name(&self) -> &str {
            &self.name
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn version(&self) -> u32 {
            1
        }
        fn inputs(&self) -> Vec<Input> {
            let mut inputs = vec![Input::value("value", &self.value)];
            for upstream in &self.upstream {
                inputs.push(Input::stage(upstream.as_str(), upstream.as_str()));
            }
            inputs
        }
        fn output_kind(&self) -> OutputKind {
            OutputKind::Blob
        }
        fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(StageError::UndeclaredInput {
                    input: "failure on purpose".to_string(),
                });
            }
            let mut content = if self.constant {
                b"constant".to_vec()
            } else {
                self.value.as_bytes().to_vec()
            };
            if !self.constant {
                for upstream in &self.upstream {
                    content.extend(ctx.store.read_blob(&ctx.input(upstream)?)?);
                }
            }
            Ok(ctx.store.put_bytes(&content)?)
        }
    }

    struct Fixture {
        store: Store,
        dir: tempfile::TempDir,
        runs: BTreeMap<String, Arc<AtomicUsize>>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("store")).unwrap();
            Fixture {
                store,
                dir,
                runs: BTreeMap::new(),
            }
        }

        /// a -> b (constant output) -> c, and a -> d.
        fn graph(&mut self, a_value: &str, fail_c: bool) -> Graph {
            let mut stage =
                |name: &str, upstream: &[&str], value: &str, constant: bool, fail: bool| {
                    let runs = Arc::clone(self.runs.entry(name.to_string()).or_default());
                    Box::new(TestStage {
                        name: name.to_string(),
                        upstream: upstream.iter().map(|s| s.to_string()).collect(),
                        value: value.to_string(),
                        constant,
                        fail,
                        runs,
                    }) as Box<dyn Stage>
                };
            Graph::new(vec![
                stage("a", &[], a_value, false, false),
                stage("b", &["a"], "b", true, false),
                stage("c", &["b"], "c", false, fail_c),
                stage("d", &["a"], "d", false, false),
            ])
            .unwrap()
        }

        fn build(&mut self, a_value: &str, jobs: usize) -> Result<BuildReport, BuildError> {
            self.build_with(a_value, jobs, false)
        }

        fn build_with(
            &mut self,
            a_value: &str,
            jobs: usize,
            fail_c: bool,
        ) -> Result<BuildReport, BuildError> {
            let graph = self.graph(a_value, fail_c);
            let plan = plan(
                &graph,
                Some(&self.store),
                self.dir.path(),
                crate::plan::PlanOptions::build(false, false),
            )
            .unwrap();
            let options = BuildOptions {
                started: std::time::SystemTime::now(),
                recipe: "test".to_string(),
                project_dir: self.dir.path().to_path_buf(),
                force_rerun: false,
                jobs,
            };
            execute(&graph, &plan, &self.store, &options, &SilentReporter)
        }

        fn run_count(&self, name: &str) -> usize {
            self.runs[name].load(Ordering::SeqCst)
        }
    }

    fn outcomes(report: &BuildReport) -> BTreeMap<String, Outcome> {
        report
            .stages
            .iter()
            .map(|stage| (stage.name.clone(), stage.outcome))
            .collect()
    }

    #[test]
    fn second_build_is_all_cached_with_the_same_outputs() {
        let mut fixture = Fixture::new();
        let first = fixture.build("1", 2).unwrap();
        assert_eq!(first.ran().len(), 4);
        let second = fixture.build("1", 2).unwrap();
        assert!(second.ran().is_empty(), "ran: {:?}", second.ran());
        for stage in &first.stages {
            assert_eq!(second.stage(&stage.name).unwrap().output, stage.output);
        }
    }

    #[test]
    fn unchanged_output_keeps_downstream_cached() {
        let mut fixture = Fixture::new();
        fixture.build("1", 2).unwrap();
        let report = fixture.build("2", 2).unwrap();
        let outcomes = outcomes(&report);
        assert_eq!(
            outcomes["a"],
            Outcome::Ran {
                output_changed: true
            }
        );
        assert_eq!(
            outcomes["b"],
            Outcome::Ran {
                output_changed: false
            }
        );
        assert_eq!(outcomes["c"], Outcome::Cached);
        assert_eq!(
            outcomes["d"],
            Outcome::Ran {
                output_changed: true
            }
        );
        assert_eq!(fixture.run_count("c"), 1);
    }

    #[test]
    fn records_name_only_objects_that_survive_a_lost_page_cache() {
        let fixture = Fixture::new();
        // Before each record, the store drops whatever it wrote and did not flush.
        fixture.store.lose_unsynced_before_records(true);
        let stage = |name: &str, upstream: &[&str]| {
            Box::new(TestStage {
                name: name.to_string(),
                upstream: upstream.iter().map(|s| s.to_string()).collect(),
                value: name.to_string(),
                constant: false,
                fail: false,
                runs: Arc::default(),
            }) as Box<dyn Stage>
        };
        // A chain, one worker: no stage writes while another is recorded.
        let graph = Graph::new(vec![
            stage("a", &[]),
            stage("b", &["a"]),
            stage("c", &["b"]),
        ])
        .unwrap();
        let options = BuildOptions {
            started: std::time::SystemTime::now(),
            recipe: "test".to_string(),
            project_dir: fixture.dir.path().to_path_buf(),
            force_rerun: false,
            jobs: 1,
        };
        for ran in [3, 0] {
            let plan = plan(
                &graph,
                Some(&fixture.store),
                fixture.dir.path(),
                crate::plan::PlanOptions::build(false, false),
            )
            .unwrap();
            let report = execute(&graph, &plan, &fixture.store, &options, &SilentReporter)
                .expect("every stage reads what the one before recorded");
            assert_eq!(report.ran().len(), ran);
            for stage in &report.stages {
                assert!(fixture.store.has_blob(&stage.output), "{}", stage.name);
            }
        }
        let verified = fixture.store.verify().unwrap();
        assert!(verified.is_clean(), "{verified}");
    }

    #[test]
    fn one_worker_and_many_agree() {
        let mut serial = Fixture::new();
        let mut parallel = Fixture::new();
        for value in ["1", "2", "1"] {
            let one = serial.build(value, 1).unwrap();
            let many = parallel.build(value, 4).unwrap();
            assert_eq!(outcomes(&one), outcomes(&many));
            for stage in &one.stages {
                assert_eq!(many.stage(&stage.name).unwrap().output, stage.output);
            }
        }
    }

    #[test]
    fn a_failing_stage_caches_nothing_of_itself() {
        let mut fixture = Fixture::new();
        let error = fixture.build_with("1", 1, true).unwrap_err();
        assert!(
            matches!(&error, BuildError::Stage { stage, .. } if stage == "c"),
            "{error:?}"
        );
        // The stages before it are cached; c runs again.
        let report = fixture.build("1", 1).unwrap();
        let outcomes = outcomes(&report);
        assert_eq!(outcomes["a"], Outcome::Cached);
        assert_eq!(outcomes["b"], Outcome::Cached);
        assert!(matches!(outcomes["c"], Outcome::Ran { .. }));
        assert_eq!(fixture.run_count("c"), 2);
    }
}
