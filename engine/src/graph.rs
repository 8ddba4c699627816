//! The stage DAG: stages as nodes, an edge from each stage to the stages that consume its output.
//!
//! Building a [`Graph`] checks what can be checked without running anything: names are unique,
//! every stage input names a stage of the graph, and there is no cycle.

use std::collections::HashMap;

use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::stage::{InputSource, Stage};

/// Why a set of stages is not a valid graph (a bug in whoever built it, not in the recipe).
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GraphError {
    #[error("Two stages are named `{name}`")]
    DuplicateStage { name: String },
    #[error("Stage `{stage}` reads the output of `{missing}`, which is not in the graph")]
    MissingStage { stage: String, missing: String },
    #[error("The stages form a cycle through `{stage}`")]
    Cycle { stage: String },
}

/// Stages and their dependencies, in a fixed topological order.
pub struct Graph {
    stages: Vec<Box<dyn Stage>>,
    dag: DiGraph<usize, ()>,
    order: Vec<usize>,
}

impl Graph {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Result<Graph, GraphError> {
        let mut dag = DiGraph::new();
        let mut by_name: HashMap<String, NodeIndex> = HashMap::new();
        for (index, stage) in stages.iter().enumerate() {
            let node = dag.add_node(index);
            if by_name.insert(stage.name().to_string(), node).is_some() {
                return Err(GraphError::DuplicateStage {
                    name: stage.name().to_string(),
                });
            }
        }
        for (index, stage) in stages.iter().enumerate() {
            for input in stage.inputs() {
                if let InputSource::Stage(upstream) = &input.source {
                    let Some(&from) = by_name.get(upstream) else {
                        return Err(GraphError::MissingStage {
                            stage: stage.name().to_string(),
                            missing: upstream.clone(),
                        });
                    };
                    dag.add_edge(from, NodeIndex::new(index), ());
                }
            }
        }
        let order = toposort(&dag, None)
            .map_err(|cycle| GraphError::Cycle {
                stage: stages[dag[cycle.node_id()]].name().to_string(),
            })?
            .into_iter()
            .map(|node| dag[node])
            .collect();
        Ok(Graph { stages, dag, order })
    }

    /// Stage indices in an order where every stage comes after the stages it reads.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn stage(&self, index: usize) -> &dyn Stage {
        self.stages[index].as_ref()
    }

    pub fn len(&self) -> usize {
        self.stages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|stage| stage.name() == name)
    }

    /// The stages whose output this stage reads.
    pub fn dependencies(&self, index: usize) -> Vec<usize> {
        self.dag
            .neighbors_directed(NodeIndex::new(index), petgraph::Direction::Incoming)
            .map(|node| self.dag[node])
            .collect()
    }

    /// The stages that read this stage's output.
    pub fn dependents(&self, index: usize) -> Vec<usize> {
        self.dag
            .neighbors_directed(NodeIndex::new(index), petgraph::Direction::Outgoing)
            .map(|node| self.dag[node])
            .collect()
    }
}
