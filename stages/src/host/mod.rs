//! Host effects of mutable stages: overlay mounts over read-only input trees, the copy fallback,
//! and running mkosi scripts on the host or inside the tree.
//!
//! Stages reach the host only through the [`Host`] trait, so the engine can be tested without
//! root: [`RealHost`] does the real thing, [`RecordingHost`] records each call as a value and
//! does only what needs no privileges. Nothing here knows the cache: trees are plain paths.
//!
//! ```no_run
//! use kiln_stages::host::{Host, RealHost, ScriptInvocation, TreeChanges};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = RealHost::new();
//! let tree = host.mutable_tree("/store/checkout/abc".as_ref(), "/tmp/kiln-scratch-1".as_ref())?;
//! let mut inv = ScriptInvocation::new(
//!     "/project/mkosi.postinst.chroot", "postinst", tree.root(), "/project", "/project/mkosi.output",
//! );
//! inv.args.push("final".into());
//! host.run_script(&inv, &mut |line| println!("{line}"))?;
//! match tree.finish()? {
//!     TreeChanges::Upper { upper, changes } => println!("{} changes in {}", changes.len(), upper.display()),
//!     TreeChanges::Whole { root } => println!("re-ingest all of {}", root.display()),
//! }
//! # Ok(()) }
//! ```

mod copy;
mod error;
mod foreground;
mod overlay;
pub(crate) mod process;
pub mod reader;
mod sandbox;
mod script;
mod tool;
mod workspace;
pub mod xattr;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use copy::copy_tree_preserving;
pub use error::HostError;
pub use overlay::{Overlay, UpperChange, is_overlay_xattr, read_upper};
pub use process::TAIL_LINES;
pub use script::{ScriptError, ScriptInvocation, ScriptOutcome, Tools};
pub(crate) use tool::clean_command;
pub use tool::{ToolInvocation, ToolOutcome, find_tool};
pub use workspace::{MutableTree, TreeChanges};

/// The host effects a mutable stage needs.
pub trait Host: Send + Sync {
    /// A writable view of the read-only tree `lower`, kept in `scratch` (a directory unique to
    /// this stage run).
    fn mutable_tree(&self, lower: &Path, scratch: &Path) -> Result<MutableTree, HostError>;

    /// Runs a script to completion, streaming each line of its output to `sink`. A non-zero exit
    /// is [`ScriptError::Failed`].
    fn run_script(
        &self,
        invocation: &ScriptInvocation,
        sink: &mut dyn FnMut(&str),
    ) -> Result<ScriptOutcome, ScriptError>;

    /// Runs a host tool (such as depmod) to completion, streaming each line of its output to
    /// `sink`. A non-zero exit is an outcome, not an error: the caller judges it.
    fn run_tool(
        &self,
        invocation: &ToolInvocation,
        sink: &mut dyn FnMut(&str),
    ) -> Result<ToolOutcome, HostError>;

    /// Runs a program in the foreground on kiln's terminal (a virtual machine the user talks
    /// to) and waits for it: it inherits kiln's stdin, stdout, stderr and environment, dies with
    /// kiln, and receives the termination signals kiln receives meanwhile. Returns its exit code
    /// (`128 + n` for signal `n`).
    fn run_foreground(&self, invocation: &ToolInvocation) -> Result<i32, HostError>;
}

/// The host as it is: overlayfs (a copy when unavailable), host scripts in their own PID
/// namespace, chroot scripts in bubblewrap.
#[derive(Debug, Clone)]
pub struct RealHost {
    tools: Tools,
}

impl RealHost {
    /// Uses the helper programs found on this machine ([`Tools::detect`]).
    pub fn new() -> Self {
        RealHost {
            tools: Tools::detect(),
        }
    }

    /// Uses the given helper programs; without `bwrap`, chroot scripts fail with
    /// [`ScriptError::BubblewrapMissing`].
    pub fn with_tools(tools: Tools) -> Self {
        RealHost { tools }
    }

    /// The helper programs in use.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }
}

impl Default for RealHost {
    fn default() -> Self {
        RealHost::new()
    }
}

impl Host for RealHost {
    fn mutable_tree(&self, lower: &Path, scratch: &Path) -> Result<MutableTree, HostError> {
        MutableTree::overlay_or_copy(lower, scratch)
    }

    fn run_script(
        &self,
        invocation: &ScriptInvocation,
        sink: &mut dyn FnMut(&str),
    ) -> Result<ScriptOutcome, ScriptError> {
        script::run_script(invocation, &self.tools, sink)
    }

    fn run_tool(
        &self,
        invocation: &ToolInvocation,
        sink: &mut dyn FnMut(&str),
    ) -> Result<ToolOutcome, HostError> {
        tool::run_tool(invocation, sink)
    }

    fn run_foreground(&self, invocation: &ToolInvocation) -> Result<i32, HostError> {
        foreground::run_foreground(invocation)
    }
}

/// One call made to a [`RecordingHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCall {
    MutableTree { lower: PathBuf, scratch: PathBuf },
    RunScript(ScriptInvocation),
    RunTool(ToolInvocation),
    RunForeground(ToolInvocation),
}

/// A host for tests without root: records every call, always copies trees (never mounts),
/// runs host scripts for real (directly, without a PID namespace), and never enters a chroot:
/// a chroot script is recorded and reported as succeeded with no output. Host tools (depmod)
/// and foreground programs need no privileges: they are recorded, then run for real.
#[derive(Debug, Default)]
pub struct RecordingHost {
    calls: Mutex<Vec<HostCall>>,
}

impl RecordingHost {
    pub fn new() -> Self {
        RecordingHost::default()
    }

    /// The tools run so far, in order.
    pub fn tools_run(&self) -> Vec<ToolInvocation> {
        self.lock()
            .iter()
            .filter_map(|call| match call {
                HostCall::RunTool(inv) => Some(inv.clone()),
                HostCall::MutableTree { .. }
                | HostCall::RunScript(_)
                | HostCall::RunForeground(_) => None,
            })
            .collect()
    }

    /// The calls made so far, in order.
    pub fn calls(&self) -> Vec<HostCall> {
        self.lock().clone()
    }

    /// The scripts run (or, for chroot scripts, recorded) so far, in order.
    pub fn scripts(&self) -> Vec<ScriptInvocation> {
        self.lock()
            .iter()
            .filter_map(|call| match call {
                HostCall::RunScript(inv) => Some(inv.clone()),
                HostCall::MutableTree { .. }
                | HostCall::RunTool(_)
                | HostCall::RunForeground(_) => None,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<HostCall>> {
        self.calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Host for RecordingHost {
    fn mutable_tree(&self, lower: &Path, scratch: &Path) -> Result<MutableTree, HostError> {
        self.lock().push(HostCall::MutableTree {
            lower: lower.to_owned(),
            scratch: scratch.to_owned(),
        });
        MutableTree::copy(lower, scratch)
    }

    fn run_script(
        &self,
        invocation: &ScriptInvocation,
        sink: &mut dyn FnMut(&str),
    ) -> Result<ScriptOutcome, ScriptError> {
        self.lock().push(HostCall::RunScript(invocation.clone()));
        if invocation.chroot {
            return Ok(ScriptOutcome {
                output_tail: Vec::new(),
                duration: std::time::Duration::ZERO,
            });
        }
        script::run_script(invocation, &Tools::default(), sink)
    }

    fn run_tool(
        &self,
        invocation: &ToolInvocation,
        sink: &mut dyn FnMut(&str),
    ) -> Result<ToolOutcome, HostError> {
        self.lock().push(HostCall::RunTool(invocation.clone()));
        tool::run_tool(invocation, sink)
    }

    fn run_foreground(&self, invocation: &ToolInvocation) -> Result<i32, HostError> {
        self.lock()
            .push(HostCall::RunForeground(invocation.clone()));
        foreground::run_foreground(invocation)
    }
}
