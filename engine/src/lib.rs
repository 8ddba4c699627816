//! The engine of kiln: how a recipe's stages become a build.
//!
//! It owns the [`Stage`] trait every stage kind implements, the stage [`Graph`], stage keys
//! ([`key`]), the [`plan`] (cached, from the shared cache, or will run, before anything runs),
//! the scheduler ([`execute`]), the use of a shared cache ([`remote`]) and [`explain`]. It knows
//! nothing of recipes (the `kiln-recipe` crate reads them) nor of Linux, package managers or PE
//! files: those are stage kinds in the `kiln-stages` crate.
//!
//! ```no_run
//! use kiln_cache::Store;
//! let store = Store::open(std::path::Path::new("/var/cache/kiln"))?;
//! let explanation = kiln_engine::explain(&store, "rescue@/home/me/project", None)?;
//! print!("{}", kiln_engine::explain::render_text(&explanation));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod check;
pub mod execute;
pub mod explain;
pub mod graph;
pub mod inputs;
pub mod key;
pub mod plan;
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
