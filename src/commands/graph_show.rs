//! `kiln graph show`: the stage DAG with each stage's state for the current inputs, as text or
//! Graphviz DOT.

use std::fmt::Write;

use kiln_engine::{Plan, PlanOptions, PlannedState, plan};

use crate::cli::GraphFormat;
use crate::project::Project;
use crate::report::{CliError, Renderer};
use crate::settings::Settings;
use crate::stdout::out;

pub(crate) fn run(
    settings: &Settings,
    renderer: &Renderer,
    format: GraphFormat,
) -> Result<(), CliError> {
    let project = Project::load(settings, renderer)?;
    let pipeline = project.pipeline()?;
    let store = project.existing_store()?;
    let mut options = PlanOptions::read_only();
    options.force_rerun = settings.force >= 2;
    let plan = plan(
        &pipeline.graph,
        store.as_ref(),
        &project.loaded.dir,
        options,
    )?;
    let text = match format {
        GraphFormat::Text => text(&plan),
        GraphFormat::Dot => dot(&plan),
    };
    out!("{text}");
    Ok(())
}

fn text(plan: &Plan) -> String {
    let mut out = String::new();
    for stage in &plan.stages {
        let _ = write!(
            out,
            "{} [{}]: {}",
            stage.name,
            stage.kind,
            stage.state.describe()
        );
        if !stage.upstream.is_empty() {
            let _ = write!(out, " (after {})", stage.upstream.join(", "));
        }
        out.push('\n');
    }
    out
}

fn dot(plan: &Plan) -> String {
    let mut out =
        String::from("digraph kiln {\n  rankdir=LR;\n  node [shape=box, style=filled];\n");
    for stage in &plan.stages {
        let color = match stage.state {
            PlannedState::Cached { .. } => "palegreen",
            PlannedState::Remote { .. } => "lightcyan",
            PlannedState::WillRun => "lightsalmon",
            PlannedState::Pending { .. } => "lightgoldenrod",
            PlannedState::WillResolve => "lightblue",
        };
        let state = match stage.state {
            PlannedState::Cached { .. } => "cached",
            PlannedState::Remote { .. } => "remote",
            PlannedState::WillRun => "will run",
            PlannedState::Pending { .. } => "pending",
            PlannedState::WillResolve => "will resolve",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n{}\", fillcolor={color}];",
            stage.name, stage.name, state
        );
        for upstream in &stage.upstream {
            let _ = writeln!(out, "  \"{upstream}\" -> \"{}\";", stage.name);
        }
    }
    out.push_str("}\n");
    out
}
