//! The plan: for every stage, before anything runs, whether it is cached or will run.
//!
//! Planning resolves every input that does not depend on another stage, computes the key of
//! each stage whose upstream outputs are known, and looks it up in the action cache. A stage
//! below one that will run is [`PlannedState::Pending`]: it runs unless the upstream stage
//! produces the output it produced before (early cutoff). A plan made with a shared cache
//! ([`plan_with_remote`]) asks it for each key the local action cache misses: a trusted record
//! makes the stage [`PlannedState::Remote`], and its output id lets the keys below it be known
//! too. `graph show` prints this value, and the scheduler starts from it.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_cache::{Digest, Index, PutMode, RecordedInput, Store, StoreError};

use crate::graph::Graph;
use crate::inputs::{InputError, resolve_static, stage_input};
use crate::key::stage_key;
use crate::remote::{RemoteHit, RemoteSession};
use crate::stage::{InputSource, ResolveContext, ResolveMode, Stage};

/// A stage's state for the current inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedState {
    /// Its key is in the action cache.
    Cached { output: Digest },
    /// The shared cache has a trusted record of its key: it will not run, and its output is
    /// downloaded only if the build needs it locally (see [`crate::remote`]).
    Remote { output: Digest, hit: Box<RemoteHit> },
    /// Its key is known and not cached (or every stage is forced to run).
    WillRun,
    /// It reads the output of a stage that will run; its key is known only then.
    Pending { upstream: String },
    /// Its inputs are known only by asking the outside world (a mirror), which this plan may
    /// not do (`graph show` only reads), and no earlier resolution is at hand.
    WillResolve,
}

impl PlannedState {
    pub fn describe(&self) -> String {
        match self {
            PlannedState::Cached { .. } => "cached".to_string(),
            PlannedState::Remote { .. } => "from the shared cache".to_string(),
            PlannedState::WillRun => "will run".to_string(),
            PlannedState::Pending { upstream } => {
                format!("will run unless `{upstream}` ends with the same output")
            }
            PlannedState::WillResolve => "will resolve".to_string(),
        }
    }
}

/// One stage of the plan.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    pub version: u32,
    /// Known once every upstream output is known.
    pub key: Option<Digest>,
    pub state: PlannedState,
    /// Inputs resolved so far: every static input, and stage inputs whose upstream is cached.
    pub inputs: Vec<RecordedInput>,
    /// Names of the stages it reads.
    pub upstream: Vec<String>,
    /// How resolution found its inputs, recorded with the run for `graph explain`.
    pub notes: Vec<String>,
}

/// Every stage of a graph in topological order, with its state.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    pub fn stage(&self, index: usize) -> Option<&PlannedStage> {
        self.stages.iter().find(|stage| stage.index == index)
    }

    pub fn by_name(&self, name: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|stage| stage.name == name)
    }
}

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PlanError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Stage `{stage}` cannot resolve its inputs")]
    Resolve {
        stage: String,
        #[source]
        #[diagnostic_source]
        source: crate::stage::StageError,
    },
}

/// How a plan is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// No stage is taken from the cache (`-ff`).
    pub force_rerun: bool,
    /// How far stages may go to resolve their inputs; [`ResolveMode::ReadOnly`] also stores
    /// nothing: the project's files and trees are hashed, not ingested.
    pub mode: ResolveMode,
}

impl PlanOptions {
    /// The plan of a build.
    pub fn build(force_rerun: bool, offline: bool) -> PlanOptions {
        PlanOptions {
            force_rerun,
            mode: if offline {
                ResolveMode::Offline
            } else {
                ResolveMode::Online
            },
        }
    }

    /// A plan that only reads: nothing is stored, nothing is asked of the network.
    pub fn read_only() -> PlanOptions {
        PlanOptions {
            force_rerun: false,
            mode: ResolveMode::ReadOnly,
        }
    }
}

/// Plan `graph` against `store`. A read-only plan of a project without a store (`None`) has
/// every stage [`PlannedState::WillRun`].
pub fn plan(
    graph: &Graph,
    store: Option<&Store>,
    project_dir: &Path,
    options: PlanOptions,
) -> Result<Plan, PlanError> {
    plan_with_remote(graph, store, project_dir, options, None)
}

/// [`plan`], asking `remote` for every key the local action cache misses (unless every stage
/// is forced to run).
pub fn plan_with_remote(
    graph: &Graph,
    store: Option<&Store>,
    project_dir: &Path,
    options: PlanOptions,
    remote: Option<&RemoteSession<'_>>,
) -> Result<Plan, PlanError> {
    let Some(store) = store else {
        return Ok(plan_without_store(graph));
    };
    let force_rerun = options.force_rerun;
    let put = if options.mode == ResolveMode::ReadOnly {
        PutMode::HashOnly
    } else {
        PutMode::Copy
    };
    let index = store.index()?;
    let mut outputs: BTreeMap<String, Digest> = BTreeMap::new();
    let mut will_run: BTreeMap<String, ()> = BTreeMap::new();
    let mut stages = Vec::with_capacity(graph.len());
    for &position in graph.order() {
        let stage = graph.stage(position);
        let known = Known {
            outputs: &outputs,
            will_run: &will_run,
        };
        let StageInputs {
            mut inputs,
            blocked_by,
            upstream_names,
        } = gather_inputs(stage, known, project_dir, store, put)?;
        let (resolved, notes) =
            resolve_inputs(stage, store, project_dir, options.mode, put, &mut inputs)?;
        let (key, state) = match blocked_by {
            Some(upstream) => (None, PlannedState::Pending { upstream }),
            None if !resolved => (None, PlannedState::WillResolve),
            None => {
                let key = stage_key(stage.kind(), stage.version(), &inputs);
                let state = look_up(stage, &key, &index, remote, force_rerun)?;
                if let PlannedState::Cached { output } | PlannedState::Remote { output, .. } =
                    &state
                {
                    outputs.insert(stage.name().to_string(), *output);
                }
                (Some(key), state)
            }
        };
        if !matches!(
            state,
            PlannedState::Cached { .. } | PlannedState::Remote { .. }
        ) {
            will_run.insert(stage.name().to_string(), ());
        }
        stages.push(PlannedStage {
            index: position,
            name: stage.name().to_string(),
            kind: stage.kind(),
            version: stage.version(),
            key,
            state,
            inputs,
            upstream: upstream_names,
            notes,
        });
    }
    Ok(Plan { stages })
}

/// The plan of a project without a store: every stage will run.
fn plan_without_store(graph: &Graph) -> Plan {
    let stages = graph
        .order()
        .iter()
        .map(|&position| {
            let stage = graph.stage(position);
            PlannedStage {
                index: position,
                name: stage.name().to_string(),
                kind: stage.kind(),
                version: stage.version(),
                key: None,
                state: PlannedState::WillRun,
                inputs: Vec::new(),
                upstream: stage_upstreams(stage),
                notes: Vec::new(),
            }
        })
        .collect();
    Plan { stages }
}

/// What planning knows of the stages planned so far.
#[derive(Clone, Copy)]
struct Known<'a> {
    /// The output of every stage cached or taken from the remote.
    outputs: &'a BTreeMap<String, Digest>,
    /// The stages that will (or may) run.
    will_run: &'a BTreeMap<String, ()>,
}

/// What [`gather_inputs`] finds.
struct StageInputs {
    inputs: Vec<RecordedInput>,
    /// The first upstream stage that will run.
    blocked_by: Option<String>,
    /// Every upstream stage, in the order of the inputs.
    upstream_names: Vec<String>,
}

/// The inputs of `stage` known before it resolves: its static inputs and the outputs of
/// upstream stages already known. Also returns the first upstream stage that will run, which
/// blocks it, and the names of all its upstream stages.
fn gather_inputs(
    stage: &dyn Stage,
    known: Known<'_>,
    project_dir: &Path,
    store: &Store,
    put: PutMode,
) -> Result<StageInputs, PlanError> {
    let mut inputs = Vec::new();
    let mut blocked_by = None;
    let mut upstream_names = Vec::new();
    for input in stage.inputs() {
        if let InputSource::Stage(upstream) = &input.source {
            upstream_names.push(upstream.clone());
            match known.outputs.get(upstream) {
                Some(output) => inputs.push(stage_input(&input, upstream, *output)),
                None => {
                    if blocked_by.is_none() && known.will_run.contains_key(upstream) {
                        blocked_by = Some(upstream.clone());
                    }
                }
            }
        } else if let Some(recorded) =
            resolve_static(stage.name(), &input, project_dir, store, put)?
        {
            inputs.push(recorded);
        }
    }
    Ok(StageInputs {
        inputs,
        blocked_by,
        upstream_names,
    })
}

/// Lets `stage` resolve the inputs only it can find and adds them to `inputs`. Returns whether
/// it could, and its notes on how.
fn resolve_inputs(
    stage: &dyn Stage,
    store: &Store,
    project_dir: &Path,
    mode: ResolveMode,
    put: PutMode,
    inputs: &mut Vec<RecordedInput>,
) -> Result<(bool, Vec<String>), PlanError> {
    let resolve_context = ResolveContext {
        store: Some(store),
        project_dir,
        mode,
    };
    let resolution = stage
        .resolve(&resolve_context)
        .map_err(|source| PlanError::Resolve {
            stage: stage.name().to_string(),
            source,
        })?;
    let resolved = resolution.inputs.is_some();
    for input in resolution.inputs.unwrap_or_default() {
        if let Some(recorded) = resolve_static(stage.name(), &input, project_dir, store, put)? {
            inputs.push(recorded);
        }
    }
    Ok((resolved, resolution.notes))
}

/// The state of `stage` whose key is `key`: cached when the action cache knows it, else from
/// `remote` when it holds a trusted record, else it will run.
fn look_up(
    stage: &dyn Stage,
    key: &Digest,
    index: &Index,
    remote: Option<&RemoteSession<'_>>,
    force_rerun: bool,
) -> Result<PlannedState, PlanError> {
    let cached = if force_rerun {
        None
    } else {
        index.lookup_action(key)?
    };
    let remote_hit = match (cached, remote) {
        (None, Some(remote)) if !force_rerun => remote.lookup(index, stage, key),
        _ => None,
    };
    Ok(match (cached, remote_hit) {
        (Some(result), _) => PlannedState::Cached {
            output: result.output,
        },
        (None, Some(hit)) => PlannedState::Remote {
            output: hit.output().output,
            hit: Box::new(hit),
        },
        (None, None) => PlannedState::WillRun,
    })
}

fn stage_upstreams(stage: &dyn crate::stage::Stage) -> Vec<String> {
    stage
        .inputs()
        .into_iter()
        .filter_map(|input| match input.source {
            InputSource::Stage(upstream) => Some(upstream),
            _ => None,
        })
        .collect()
}
