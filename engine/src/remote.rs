//! The shared cache in a build: asking it before running a stage, fetching only what the
//! build needs, and pushing what the build made.
//!
//! # When it is asked
//!
//! On a local miss, the plan (for the stages whose key is known before anything runs) and the
//! scheduler (for those whose key is known only once an upstream stage has run) ask the
//! [`RemoteSession`]: first the signed records kept from earlier builds, then the remote. A
//! record is used only when a trusted key signed it, it is about this stage kind and output
//! kind, and its recorded inputs make this very key; the stage is then settled as `remote` and
//! does not run. Its run is recorded with the record's inputs and notes, so `graph explain`
//! shows what the producing build recorded, and who signed it.
//!
//! # What is fetched: only what the final output needs
//!
//! A stage's output must be in the local store when, and only when,
//!
//! 1. the stage is a sink of the graph: its output is the build's output, which is exported;
//! 2. a stage that reads it runs: a running stage checks its inputs out of the store.
//!
//! A stage that is cached, or itself taken from the remote, reads nothing. So a remote hit is
//! not downloaded when it settles: its output id is all its dependents need to compute their
//! keys. The scheduler keeps it as *remote-only* ([`RemoteOnly`]) and downloads it when a
//! dependent is about to run (the dependent waits for its inputs), or at once when it is a
//! sink. A hit on the UKI downloads the UKI; the trees under it stay on the server, known by
//! their records, which are kept in the index so that a later build knows them without asking.
//! An action enters the local action cache only once its objects are stored.
//!
//! # When the remote fails
//!
//! A remote that is down, slow, answers errors or serves garbage never fails a build. When one
//! entry is bad (an object that is corrupt, missing or too long, a malformed record: anyone who
//! can write to the server can plant one), the session warns once per object and does without
//! that stage's record for the rest of the build; the other stages still come from the remote.
//! When the remote itself fails (unreachable, timed out, too slow), the session warns once and
//! is not asked again in this build. Either way, if the build still needs an output it could
//! not download, the scheduler lets what runs finish and schedules the build again without
//! that record: what ran or was downloaded is now cached, the rest runs. Scheduling again,
//! rather than running the missing stage in place, keeps every key computed from outputs that
//! exist, even if a rebuilt stage does not reproduce the remote's output bit for bit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

use kiln_cache::remote::{ActionRecord, Lookup, Pushed, Remote, RemoteError};
use kiln_cache::{ActionResult, BuildId, Digest, Index, RunStatus, Store, StoreError};

use crate::key::stage_key;
use crate::reporter::Reporter;
use crate::stage::Stage;

/// A shared cache as the engine uses it. [`Remote`] is the real one (HTTP, or a directory
/// through `file://`, which tests use).
pub trait RemoteCache: Send + Sync {
    /// Where it is, for messages; never holds credentials.
    fn location(&self) -> &str;
    /// The trusted record of a stage key, if the remote has one.
    fn lookup(&self, key: &Digest) -> Result<Lookup, RemoteError>;
    /// Checks the signed text of a record kept from an earlier lookup, with today's trust.
    fn accept(&self, key: &Digest, signed: &str) -> Result<Lookup, RemoteError>;
    /// Downloads an output and everything it refers to into `store`, no more than `size`
    /// bytes of it (as its signed record says).
    fn fetch(
        &self,
        store: &Store,
        output: ActionResult,
        size: Option<u64>,
    ) -> Result<(), RemoteError>;
    /// Uploads an output and its signed record.
    fn push(&self, store: &Store, record: &ActionRecord) -> Result<Pushed, RemoteError>;
}

impl RemoteCache for Remote {
    fn location(&self) -> &str {
        Remote::location(self)
    }
    fn lookup(&self, key: &Digest) -> Result<Lookup, RemoteError> {
        Remote::lookup(self, key)
    }
    fn accept(&self, key: &Digest, signed: &str) -> Result<Lookup, RemoteError> {
        Remote::accept(self, key, signed)
    }
    fn fetch(
        &self,
        store: &Store,
        output: ActionResult,
        size: Option<u64>,
    ) -> Result<(), RemoteError> {
        Remote::fetch(self, store, output, size)
    }
    fn push(&self, store: &Store, record: &ActionRecord) -> Result<Pushed, RemoteError> {
        Remote::push(self, store, record)
    }
}

/// A trusted record of the shared cache for a stage of this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteHit {
    /// The record.
    pub record: ActionRecord,
    /// The trusted key that signed it.
    pub signer: String,
    /// The remote it came from.
    pub location: String,
}

impl RemoteHit {
    /// The output it names.
    pub fn output(&self) -> ActionResult {
        self.record.output
    }

    /// The notes recorded with the run: where the output came from, then what the run that
    /// produced it noted.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "from the shared cache {}, signed by `{}` (built as stage `{}`)",
            self.location, self.signer, self.record.stage
        )];
        notes.extend(self.record.notes.iter().cloned());
        notes
    }
}

/// One build's use of a shared cache: it is asked until it first fails, then warns once and is
/// left alone for the rest of the build. A bad entry (see [`RemoteError::is_bad_entry`]) only
/// sets the stage key it was for aside.
pub struct RemoteSession<'a> {
    remote: &'a dyn RemoteCache,
    reporter: &'a dyn Reporter,
    failure: OnceLock<String>,
    /// Stage keys whose records led to a bad entry: not used again in this build.
    rejected: Mutex<BTreeSet<Digest>>,
    /// Objects found bad, each warned about once.
    bad_objects: Mutex<BTreeSet<Digest>>,
}

impl<'a> RemoteSession<'a> {
    pub fn new(remote: &'a dyn RemoteCache, reporter: &'a dyn Reporter) -> RemoteSession<'a> {
        RemoteSession {
            remote,
            reporter,
            failure: OnceLock::new(),
            rejected: Mutex::new(BTreeSet::new()),
            bad_objects: Mutex::new(BTreeSet::new()),
        }
    }

    /// Whether the record of `key` was set aside in this build (its output could not be used).
    pub fn rejected(&self, key: &Digest) -> bool {
        self.rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(key)
    }

    pub fn location(&self) -> &str {
        self.remote.location()
    }

    /// Whether it may still be asked: nothing failed yet.
    pub fn usable(&self) -> bool {
        self.failure.get().is_none()
    }

    /// What failed first, if anything did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// The shared cache's result for `stage` under `key`: a record kept by an earlier build,
    /// or one the remote has. `None` when there is none, it is not trusted (said with `-v`),
    /// or the remote failed (warned once).
    pub fn lookup(&self, index: &Index, stage: &dyn Stage, key: &Digest) -> Option<RemoteHit> {
        if !self.usable() || self.rejected(key) {
            return None;
        }
        if let Ok(Some((location, text))) = index.remote_action(key)
            && location == self.location()
            && let Ok(Lookup::Hit(action)) = self.remote.accept(key, &text)
            && consistent(stage, key, &action.record).is_ok()
        {
            return Some(self.hit(action.record, action.signer));
        }
        match self.remote.lookup(key) {
            Ok(Lookup::Hit(action)) => match consistent(stage, key, &action.record) {
                Ok(()) => {
                    // Kept so the next build knows this output without asking; best effort.
                    let _ = index.remember_remote_action(key, self.location(), &action.signed);
                    Some(self.hit(action.record, action.signer))
                }
                Err(why) => {
                    self.ignored(stage.name(), key, &why);
                    None
                }
            },
            Ok(Lookup::Miss) => None,
            Ok(Lookup::Rejected(why)) => {
                self.ignored(stage.name(), key, &why.to_string());
                None
            }
            Err(error) if error.is_bad_entry() => {
                self.ignored(stage.name(), key, &error.to_string());
                None
            }
            Err(error) => {
                self.fail(stage.name(), &error);
                None
            }
        }
    }

    /// Downloads a hit's output into `store`; `false` when the remote failed or served a bad
    /// object (it warned, and the hit's key is set aside).
    pub fn fetch(&self, store: &Store, stage: &str, hit: &RemoteHit) -> bool {
        if !self.usable() {
            return false;
        }
        self.reporter.stage_output(
            stage,
            &format!(
                "shared cache: downloading output {}",
                hit.output().output.short()
            ),
        );
        match self
            .remote
            .fetch(store, hit.output(), hit.record.output_size)
        {
            Ok(()) => true,
            Err(error) => {
                // Its objects may be gone for good: do not know this record any more.
                if let Ok(index) = store.index() {
                    let _ = index.forget_remote_action(&hit.record.key);
                }
                if error.is_bad_entry() {
                    self.reject(stage, &hit.record.key, &error);
                } else {
                    self.fail(stage, &error);
                }
                false
            }
        }
    }

    /// Sets the record of `key` aside for the rest of the build, after a bad entry: warns
    /// once per bad object, and says it with `-v` every other time.
    fn reject(&self, stage: &str, key: &Digest, error: &RemoteError) {
        self.rejected
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(*key);
        let object = match error {
            RemoteError::Corrupt { id, .. } | RemoteError::MissingObject { id, .. } => Some(*id),
            _ => None,
        };
        let first = object.is_none_or(|id| {
            self.bad_objects
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(id)
        });
        if first {
            self.reporter.stage_warning(
                stage,
                &format!(
                    "warning: {error}; going on without the shared cache for this stage's output"
                ),
            );
        } else {
            self.ignored(stage, key, &error.to_string());
        }
    }

    fn hit(&self, record: ActionRecord, signer: String) -> RemoteHit {
        RemoteHit {
            record,
            signer,
            location: self.location().to_string(),
        }
    }

    fn ignored(&self, stage: &str, key: &Digest, why: &str) {
        self.reporter.stage_output(
            stage,
            &format!(
                "shared cache: ignored the record of key {}: {why}",
                key.short()
            ),
        );
    }

    /// Remembers the first failure and warns about it, once.
    fn fail(&self, stage: &str, error: &RemoteError) {
        if self.failure.set(error.to_string()).is_ok() {
            self.reporter.stage_warning(
                stage,
                &format!(
                    "warning: {error}; going on without the shared cache for the rest of this build"
                ),
            );
        }
    }
}

/// Whether a trusted record can stand for `stage` under `key`: same kind, same output kind, and
/// the inputs it records make that key (so `explain` shows the inputs that made it).
fn consistent(stage: &dyn Stage, key: &Digest, record: &ActionRecord) -> Result<(), String> {
    if record.kind != stage.kind() {
        return Err(format!(
            "it is the record of a `{}` stage, not of a `{}` one",
            record.kind,
            stage.kind()
        ));
    }
    if record.output.kind != stage.output_kind() {
        return Err(format!("its output is a {}", record.output.kind));
    }
    if stage_key(stage.kind(), stage.version(), &record.inputs) != *key {
        return Err("the inputs it records do not make its key".to_string());
    }
    Ok(())
}

/// The scheduler's bookkeeping of remote hits whose outputs are not in the local store yet,
/// and of the stages waiting for them to run.
#[derive(Debug)]
pub(crate) struct RemoteOnly<J> {
    /// Stage index -> its hit.
    hits: BTreeMap<usize, RemoteHit>,
    /// Downloads under way.
    fetching: BTreeSet<usize>,
    /// Jobs waiting for these stages' outputs.
    waiting: Vec<(BTreeSet<usize>, J)>,
}

impl<J> Default for RemoteOnly<J> {
    fn default() -> Self {
        RemoteOnly {
            hits: BTreeMap::new(),
            fetching: BTreeSet::new(),
            waiting: Vec::new(),
        }
    }
}

impl<J> RemoteOnly<J> {
    /// A remote hit settled without downloading its output.
    pub(crate) fn insert(&mut self, stage: usize, hit: RemoteHit) {
        self.hits.insert(stage, hit);
    }

    /// Of `inputs`, the stages whose outputs are not local.
    pub(crate) fn missing(&self, inputs: &[usize]) -> BTreeSet<usize> {
        inputs
            .iter()
            .copied()
            .filter(|stage| self.hits.contains_key(stage))
            .collect()
    }

    /// Parks `job` until every stage of `needs` is downloaded; returns the downloads to start
    /// (those not under way already), with their hits.
    pub(crate) fn wait(&mut self, needs: BTreeSet<usize>, job: J) -> Vec<(usize, RemoteHit)> {
        let start: Vec<(usize, RemoteHit)> = needs
            .iter()
            .filter(|stage| self.fetching.insert(**stage))
            .filter_map(|stage| Some((*stage, self.hits.get(stage)?.clone())))
            .collect();
        self.waiting.push((needs, job));
        start
    }

    /// Whether `stage` is a remote-only output (as opposed to a sink fetched as it settles).
    pub(crate) fn contains(&self, stage: usize) -> bool {
        self.hits.contains_key(&stage)
    }

    /// `stage`'s output is local now: returns the jobs that no longer wait for anything.
    pub(crate) fn fetched(&mut self, stage: usize) -> Vec<J> {
        self.hits.remove(&stage);
        self.fetching.remove(&stage);
        let mut ready = Vec::new();
        let mut still = Vec::new();
        for (mut needs, job) in self.waiting.drain(..) {
            needs.remove(&stage);
            if needs.is_empty() {
                ready.push(job);
            } else {
                still.push((needs, job));
            }
        }
        self.waiting = still;
        ready
    }
}

/// What [`push_build`] did, stage by stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Stages whose outputs and records were uploaded (or whose records this key co-signed).
    pub pushed: Vec<String>,
    /// Stages the remote had already, signed by this key.
    pub already_there: Vec<String>,
    /// Stages taken from the remote in that build, or whose outputs are no longer local.
    pub skipped: Vec<String>,
    /// Stages for which the remote holds another output (a build that is not reproducible).
    pub conflicts: Vec<(String, Digest)>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PushError {
    #[error("Cannot push stage `{stage}` to the shared cache")]
    #[diagnostic(help("{}", help.as_deref().unwrap_or("Check the shared cache's configuration")))]
    Remote {
        stage: String,
        help: Option<String>,
        #[source]
        source: Box<RemoteError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Uploads what `build` recorded: every stage whose output is in the local store and that did
/// not come from the shared cache, outputs first, then their signed records. A stage that ran
/// in that build gets a note saying so, which `graph explain` shows where it is reused.
pub fn push_build(
    remote: &dyn RemoteCache,
    store: &Store,
    build: BuildId,
) -> Result<PushReport, PushError> {
    let index = store.index()?;
    let info = index.build(build)?;
    let recipe = info
        .as_ref()
        .map(|info| shareable_recipe(&info.recipe, &info.recipe_dir))
        .unwrap_or_default();
    let project_dir = info.map(|info| info.recipe_dir).unwrap_or_default();
    let mut report = PushReport::default();
    for run in index.runs(build)? {
        let present = match run.output.kind {
            kiln_cache::OutputKind::Tree => store.has_tree(&run.output.output),
            kiln_cache::OutputKind::Blob => store.has_blob(&run.output.output),
        };
        if run.status == RunStatus::Remote || !present {
            report.skipped.push(run.stage);
            continue;
        }
        let mut notes: Vec<String> = run
            .notes
            .iter()
            .map(|note| relative_to(note, &project_dir))
            .collect();
        if run.status == RunStatus::Ran {
            notes.push(format!(
                "ran in {:.2} s in build {build} of `{recipe}`",
                run.duration.as_secs_f64()
            ));
        }
        let record = ActionRecord {
            key: run.key,
            stage: run.stage.clone(),
            kind: run.kind,
            output: run.output,
            // Filled in from the store by the push.
            output_size: None,
            inputs: run
                .inputs
                .into_iter()
                .map(|mut input| {
                    input.value = input.value.map(|value| relative_to(&value, &project_dir));
                    input
                })
                .collect(),
            notes,
        };
        match remote.push(store, &record) {
            Ok(Pushed::Uploaded | Pushed::Cosigned) => report.pushed.push(run.stage),
            Ok(Pushed::AlreadyThere) => report.already_there.push(run.stage),
            Ok(Pushed::Conflict { theirs }) => report.conflicts.push((run.stage, theirs)),
            Err(source) => {
                return Err(PushError::Remote {
                    stage: run.stage,
                    help: source.help(),
                    source: Box::new(source),
                });
            }
        }
    }
    Ok(report)
}

/// A recipe's name in the index (`image@/home/me/project`) as a pushed record may show it to
/// everyone who reads the cache: without the project's directory, which is where the build
/// happened to run, not what it built.
fn shareable_recipe(recipe: &str, dir: &std::path::Path) -> String {
    let dir = dir.to_string_lossy();
    match recipe.strip_suffix(dir.as_ref()) {
        Some(name) if !dir.is_empty() => name.trim_end_matches('@').to_string(),
        _ => recipe.to_string(),
    }
}

/// `text` with the project's directory written relative to the project (`./`), as what is
/// pushed shows it: keys never include it, and `explain` shows paths relative to the project.
fn relative_to(text: &str, project_dir: &std::path::Path) -> String {
    let dir = project_dir.to_string_lossy();
    if dir.len() <= 1 || !text.contains(dir.as_ref()) {
        return text.to_string();
    }
    text.replace(&format!("{dir}/"), "")
        .replace(dir.as_ref(), ".")
}

/// What [`pull`] did, stage by stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Stages whose outputs were downloaded (or were local already) and are now cached.
    pub pulled: Vec<String>,
    /// Stages cached locally before.
    pub local: Vec<String>,
    /// Stages the shared cache does not have (or that follow one it does not have), or whose
    /// objects it served bad.
    pub missing: Vec<String>,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PullError {
    #[error("Cannot pull from the shared cache: {message}")]
    #[diagnostic(help("Check the URL and that the server is up, then pull again"))]
    Remote { message: String },
    #[error("Cannot pull stage `{stage}` from the shared cache")]
    #[diagnostic(help("{}", help.as_deref().unwrap_or("Pull again; a build rebuilds what is missing")))]
    Fetch {
        stage: String,
        help: Option<String>,
        #[source]
        source: Box<RemoteError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Downloads every stage of `plan` that the shared cache has, not only what a build needs
/// (`kiln cache pull`, to build offline later), and caches them locally. `plan` must have been
/// made with `session`, which asked the remote for each stage.
pub fn pull(
    plan: &crate::plan::Plan,
    store: &Store,
    session: &RemoteSession<'_>,
) -> Result<PullReport, PullError> {
    if let Some(message) = session.failure() {
        return Err(PullError::Remote {
            message: message.to_string(),
        });
    }
    let index = store.index()?;
    let mut report = PullReport::default();
    for stage in &plan.stages {
        match &stage.state {
            crate::plan::PlannedState::Cached { .. } => report.local.push(stage.name.clone()),
            crate::plan::PlannedState::Remote { hit, .. } => {
                match session
                    .remote
                    .fetch(store, hit.output(), hit.record.output_size)
                {
                    Ok(()) => {}
                    Err(error) if error.is_bad_entry() => {
                        // One bad object spoils this stage only.
                        session.reject(&stage.name, &hit.record.key, &error);
                        report.missing.push(stage.name.clone());
                        continue;
                    }
                    Err(source) => {
                        return Err(PullError::Fetch {
                            stage: stage.name.clone(),
                            help: source.help(),
                            source: Box::new(source),
                        });
                    }
                }
                index.record_action(&hit.record.key, hit.output())?;
                report.pulled.push(stage.name.clone());
            }
            _ => report.missing.push(stage.name.clone()),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    mod hostile;

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use kiln_cache::OutputKind;
    use kiln_cache::remote::{RemoteConfig, RemoteUrl, SecretKey};

    use super::*;
    use crate::execute::{BuildOptions, BuildReport, execute_with_remote};
    use crate::graph::Graph;
    use crate::plan::{PlanOptions, plan_with_remote};
    use crate::reporter::Outcome;
    use crate::stage::{Input, StageContext, StageError};

    /// A stage whose output is its value followed by its upstream outputs' contents: running
    /// it reads its inputs from the local store.
    struct Concat {
        name: &'static str,
        upstream: Vec<&'static str>,
        value: String,
        runs: Arc<AtomicUsize>,
    }

    impl Stage for Concat {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> &'static str {
            "concat"
        }
        fn version(&self) -> u32 {
            1
        }
        fn inputs(&self) -> Vec<Input> {
            let mut inputs = vec![Input::value("value", &self.value)];
            for upstream in &self.upstream {
                inputs.push(Input::stage(*upstream, *upstream));
            }
            inputs
        }
        fn output_kind(&self) -> OutputKind {
            OutputKind::Blob
        }
        fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            ctx.log.note(&format!("{} noted this", self.name));
            let mut content = self.value.as_bytes().to_vec();
            for upstream in &self.upstream {
                content.extend(ctx.store.read_blob(&ctx.input(upstream)?)?);
            }
            Ok(ctx.store.put_bytes(&content)?)
        }
    }

    /// What a build said: outcomes, lines shown with `-v`, warnings.
    #[derive(Default)]
    struct Recorder {
        outcomes: Mutex<Vec<(String, Outcome)>>,
        lines: Mutex<Vec<String>>,
        warnings: Mutex<Vec<String>>,
    }

    impl Reporter for Recorder {
        fn stage_started(&self, _stage: &str) {}
        fn stage_output(&self, stage: &str, line: &str) {
            self.lines.lock().unwrap().push(format!("{stage}: {line}"));
        }
        fn stage_warning(&self, stage: &str, line: &str) {
            self.warnings
                .lock()
                .unwrap()
                .push(format!("{stage}: {line}"));
        }
        fn stage_finished(&self, stage: &str, outcome: Outcome, _: &Digest, _: Duration) {
            self.outcomes
                .lock()
                .unwrap()
                .push((stage.to_string(), outcome));
        }
    }

    /// One team member: a store, a project directory, and run counters.
    struct Member {
        dir: tempfile::TempDir,
        store: Store,
        runs: BTreeMap<&'static str, Arc<AtomicUsize>>,
    }

    impl Member {
        fn new() -> Member {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("store")).unwrap();
            Member {
                dir,
                store,
                runs: BTreeMap::new(),
            }
        }

        /// a -> b -> c and a -> d: c and d are the build's outputs.
        fn graph(&mut self, c_value: &str) -> Graph {
            let mut stage = |name: &'static str, upstream: Vec<&'static str>, value: &str| {
                let runs = Arc::clone(self.runs.entry(name).or_default());
                Box::new(Concat {
                    name,
                    upstream,
                    value: value.to_string(),
                    runs,
                }) as Box<dyn Stage>
            };
            Graph::new(vec![
                stage("a", vec![], "a"),
                stage("b", vec!["a"], "b"),
                stage("c", vec!["b"], c_value),
                stage("d", vec!["a"], "d"),
            ])
            .unwrap()
        }

        fn build(
            &mut self,
            c_value: &str,
            remote: Option<&dyn RemoteCache>,
            reporter: &Recorder,
        ) -> BuildReport {
            let graph = self.graph(c_value);
            let session = remote.map(|remote| RemoteSession::new(remote, reporter));
            let plan = plan_with_remote(
                &graph,
                Some(&self.store),
                self.dir.path(),
                PlanOptions::build(false, false),
                session.as_ref(),
            )
            .unwrap();
            let options = BuildOptions {
                started: std::time::SystemTime::now(),
                recipe: "test".to_string(),
                project_dir: self.dir.path().to_path_buf(),
                force_rerun: false,
                jobs: 2,
            };
            execute_with_remote(
                &graph,
                &plan,
                &self.store,
                &options,
                reporter,
                session.as_ref(),
            )
            .unwrap()
        }

        fn runs(&self) -> usize {
            self.runs.values().map(|n| n.load(Ordering::SeqCst)).sum()
        }
    }

    struct Team {
        server: tempfile::TempDir,
        key: SecretKey,
    }

    impl Team {
        fn new() -> Team {
            Team {
                server: tempfile::tempdir().unwrap(),
                key: SecretKey::generate("ci-1").unwrap(),
            }
        }

        fn config(&self) -> RemoteConfig {
            let url = RemoteUrl::parse(&format!("file://{}", self.server.path().display()));
            let mut config = RemoteConfig::new(url.unwrap());
            config.retries = 0;
            config
        }

        fn pusher(&self) -> Remote {
            let mut config = self.config();
            config.signing_key = Some(self.key.clone());
            Remote::open(config).unwrap()
        }

        fn reader(&self) -> Remote {
            let mut config = self.config();
            config.trusted_keys = vec![self.key.public()];
            Remote::open(config).unwrap()
        }

        /// Member A builds and pushes.
        fn member_a_pushes(&self) -> (Member, BuildReport) {
            let mut a = Member::new();
            let report = a.build("c", None, &Recorder::default());
            let pushed = push_build(&self.pusher(), &a.store, report.build).unwrap();
            assert_eq!(pushed.pushed.len(), 4, "{pushed:?}");
            (a, report)
        }
    }

    fn outcomes(report: &BuildReport) -> BTreeMap<String, Outcome> {
        report
            .stages
            .iter()
            .map(|stage| (stage.name.clone(), stage.outcome))
            .collect()
    }

    fn output<'r>(report: &'r BuildReport, stage: &str) -> &'r Digest {
        &report.stage(stage).unwrap().output
    }

    #[test]
    fn a_build_from_the_shared_cache_runs_nothing_and_downloads_only_its_outputs() {
        let team = Team::new();
        let (_a, first) = team.member_a_pushes();
        let mut b = Member::new();
        let reporter = Recorder::default();
        let report = b.build("c", Some(&team.reader()), &reporter);
        assert_eq!(b.runs(), 0);
        assert!(
            outcomes(&report)
                .values()
                .all(|outcome| *outcome == Outcome::Remote),
            "{:?}",
            outcomes(&report)
        );
        for stage in ["a", "b", "c", "d"] {
            assert_eq!(output(&report, stage), output(&first, stage));
        }
        // The outputs are here; what only led to them is not.
        assert!(b.store.has_blob(output(&report, "c")));
        assert!(b.store.has_blob(output(&report, "d")));
        assert!(!b.store.has_blob(output(&report, "a")));
        assert!(!b.store.has_blob(output(&report, "b")));
        assert!(reporter.warnings.lock().unwrap().is_empty());
        // Explain shows the records of the build that made them.
        let explanation = crate::explain::explain(&b.store, "test", None).unwrap();
        for stage in &explanation.stages {
            assert_eq!(stage.status, "remote");
            assert!(
                stage.notes[0].starts_with("from the shared cache file://")
                    && stage.notes[0].contains("signed by `ci-1`"),
                "{:?}",
                stage.notes
            );
            assert!(
                stage.notes.contains(&format!("{} noted this", stage.name)),
                "{:?}",
                stage.notes
            );
        }
        // The next build knows the records without the server, and has the outputs.
        let gone = team.server.path().with_extension("gone");
        std::fs::rename(team.server.path(), &gone).unwrap();
        let reporter = Recorder::default();
        let again = b.build("c", Some(&team.reader()), &reporter);
        std::fs::rename(&gone, team.server.path()).unwrap();
        let outcomes = outcomes(&again);
        assert_eq!(outcomes["a"], Outcome::Remote);
        assert_eq!(outcomes["c"], Outcome::Cached);
        assert_eq!(b.runs(), 0);
        assert!(reporter.warnings.lock().unwrap().is_empty());
    }

    #[test]
    fn a_stage_that_runs_downloads_its_inputs_and_nothing_more() {
        let team = Team::new();
        team.member_a_pushes();
        let mut b = Member::new();
        let report = b.build("c changed", Some(&team.reader()), &Recorder::default());
        let outcomes = outcomes(&report);
        assert!(matches!(outcomes["c"], Outcome::Ran { .. }), "{outcomes:?}");
        assert_eq!(outcomes["b"], Outcome::Remote);
        assert_eq!(outcomes["a"], Outcome::Remote);
        assert_eq!(outcomes["d"], Outcome::Remote);
        assert_eq!(b.runs(), 1);
        assert!(b.store.has_blob(output(&report, "b")));
        assert!(!b.store.has_blob(output(&report, "a")));
        assert_eq!(
            b.store.read_blob(output(&report, "c")).unwrap(),
            b"c changedba"
        );
    }

    #[test]
    fn a_corrupt_object_is_rejected_and_the_build_goes_on_locally() {
        let team = Team::new();
        let (_a, first) = team.member_a_pushes();
        let object = team
            .server
            .path()
            .join("cas")
            .join(output(&first, "c").to_string());
        std::fs::write(&object, b"evil").unwrap();
        let mut b = Member::new();
        let reporter = Recorder::default();
        let report = b.build("c", Some(&team.reader()), &reporter);
        for stage in ["a", "b", "c", "d"] {
            assert_eq!(output(&report, stage), output(&first, stage));
        }
        // c ran, so b's output came over to be its input, and d is an output of the build; a
        // still comes from the remote, and nothing needs its output here.
        for stage in ["b", "c", "d"] {
            assert!(b.store.has_blob(output(&report, stage)));
        }
        assert_eq!(outcomes(&report)["a"], Outcome::Remote);
        let warnings = reporter.warnings.lock().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("corrupt object"), "{warnings:?}");
        assert!(matches!(outcomes(&report)["c"], Outcome::Ran { .. }));
        let explanation = crate::explain::explain(&b.store, "test", Some("c")).unwrap();
        assert_eq!(explanation.stages[0].status, "ran");
    }

    #[test]
    fn an_input_that_cannot_be_downloaded_is_rebuilt_before_its_reader_runs() {
        let team = Team::new();
        let (_a, first) = team.member_a_pushes();
        let object = team
            .server
            .path()
            .join("cas")
            .join(output(&first, "b").to_string());
        std::fs::remove_file(object).unwrap();
        let mut b = Member::new();
        let reporter = Recorder::default();
        let report = b.build("c changed", Some(&team.reader()), &reporter);
        let outcomes = outcomes(&report);
        assert!(matches!(outcomes["b"], Outcome::Ran { .. }), "{outcomes:?}");
        assert!(matches!(outcomes["c"], Outcome::Ran { .. }), "{outcomes:?}");
        assert_eq!(output(&report, "b"), output(&first, "b"));
        assert_eq!(
            b.store.read_blob(output(&report, "c")).unwrap(),
            b"c changedba"
        );
        let warnings = reporter.warnings.lock().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("lacks object"), "{warnings:?}");
        // Every stage is in the report once.
        assert_eq!(report.stages.len(), 4);
    }

    #[test]
    fn records_signed_by_an_untrusted_key_are_ignored_and_said_so() {
        let team = Team::new();
        team.member_a_pushes();
        let mut config = team.config();
        config.trusted_keys = vec![SecretKey::generate("ci-1").unwrap().public()];
        let stranger = Remote::open(config).unwrap();
        let mut b = Member::new();
        let reporter = Recorder::default();
        b.build("c", Some(&stranger), &reporter);
        assert_eq!(b.runs(), 4);
        let lines = reporter.lines.lock().unwrap();
        assert!(
            lines
                .iter()
                .any(|line| line.starts_with("a: shared cache: ignored")
                    && line.contains("does not match")),
            "{lines:?}"
        );
        assert!(reporter.warnings.lock().unwrap().is_empty());
    }

    #[test]
    fn pull_downloads_every_stage_the_remote_has() {
        let team = Team::new();
        let (_a, first) = team.member_a_pushes();
        let mut b = Member::new();
        let graph = b.graph("c");
        let reader = team.reader();
        let reporter = Recorder::default();
        let session = RemoteSession::new(&reader, &reporter);
        let plan = plan_with_remote(
            &graph,
            Some(&b.store),
            Path::new("/"),
            PlanOptions::build(false, false),
            Some(&session),
        )
        .unwrap();
        let mut report = pull(&plan, &b.store, &session).unwrap();
        report.pulled.sort();
        assert_eq!(report.pulled, ["a", "b", "c", "d"]);
        for stage in ["a", "b", "c", "d"] {
            assert!(b.store.has_blob(output(&first, stage)));
        }
        let built = b.build("c", None, &Recorder::default());
        assert!(
            outcomes(&built)
                .values()
                .all(|outcome| *outcome == Outcome::Cached)
        );
    }

    #[test]
    fn what_is_pushed_names_the_project_relative_to_itself() {
        let dir = Path::new("/home/me/work/rescue");
        assert_eq!(
            shareable_recipe("rescue@/home/me/work/rescue", dir),
            "rescue"
        );
        assert_eq!(shareable_recipe("test", dir), "test");
        assert_eq!(
            relative_to("cannot read /home/me/work/rescue/mkosi.extra/etc", dir),
            "cannot read mkosi.extra/etc"
        );
        assert_eq!(relative_to("ran in /home/me/work/rescue", dir), "ran in .");
        assert_eq!(relative_to("mkosi.postinst", dir), "mkosi.postinst");
        assert_eq!(relative_to("/", Path::new("/")), "/");
    }
}
