//! The engine of kiln: what a recipe is and how it becomes a build.
//!
//! It owns the recipe model and its readers ([`recipe`]: mkosi projects and `kiln.ron`), the
//! [`Stage`] trait every stage kind implements, the stage [`Graph`], stage keys ([`key`]), the
//! [`plan`] (cached, from the shared cache, or will run, before anything runs), the scheduler
//! ([`execute`]), the use of a shared cache ([`remote`]) and [`explain`]. It knows nothing of
//! Linux, package managers or PE files: those are stage kinds in the `kiln-stages` crate.
//!
//! ```no_run
//! use kiln_engine::recipe::{load_project, LoadOptions};
//! let loaded = load_project(std::path::Path::new("recipes/arch-rescue"), &LoadOptions::default())?;
//! println!("{}", loaded.recipe.image_name());
//! # Ok::<(), kiln_engine::recipe::LoadError>(())
//! ```

pub mod check;
pub mod execute;
pub mod explain;
pub mod graph;
pub mod inputs;
pub mod key;
pub mod paths;
pub mod plan;
pub mod recipe;
pub mod remote;
pub mod reporter;
pub mod stage;

pub use execute::{
    BuildError, BuildOptions, BuildReport, StageReport, execute, execute_with_remote,
};
pub use explain::{Explanation, explain};
pub use graph::{Graph, GraphError};
pub use plan::{Plan, PlanOptions, PlannedState, plan, plan_with_remote};
pub use remote::{RemoteCache, RemoteHit, RemoteSession};
pub use reporter::{Outcome, Reporter, SilentReporter, StageLog};
pub use stage::{
    Input, InputSource, Resolution, ResolveContext, ResolveMode, Stage, StageContext, StageError,
};
