//! Host effects of mutable stages: overlay mounts over read-only input trees, the copy fallback,
//! and running mkosi scripts on the host or inside the tree.
//!
//! Stages reach the host only through the [`Host`] trait, so the engine can be tested without
//! root: [`RealHost`] does the real thing, [`RecordingHost`] records each call as a value and
//! does only what needs no privileges. Trees are plain paths: the store's only part here is its
//! rule for extended attributes (`kiln_cache::xattr`).
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
mod watch;
mod workspace;

pub use kiln_cache::xattr;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

pub use copy::copy_tree_preserving;
pub use error::HostError;
pub use overlay::{Overlay, UpperChange, read_upper};
pub use process::TAIL_LINES;
pub use script::{ScriptError, ScriptInvocation, ScriptOutcome, Tools};
pub use tool::{ToolInvocation, ToolOutcome, find_tool};
pub use watch::{WatchEnd, Watched};
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

    /// Runs a program with kiln's environment until it prints on stdout, writes a line `fatal`
    /// accepts to stderr, exits, or `timeout` passes, then kills it (the KVM probe).
    fn watch_output(
        &self,
        invocation: &ToolInvocation,
        timeout: Duration,
        fatal: &dyn Fn(&str) -> bool,
    ) -> Result<Watched, HostError>;

    /// Where the host keeps `tool` ([`find_tool`]), or `None` when it has none.
    fn find_tool(&self, tool: &str) -> Option<PathBuf>;
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

    fn watch_output(
        &self,
        invocation: &ToolInvocation,
        timeout: Duration,
        fatal: &dyn Fn(&str) -> bool,
    ) -> Result<Watched, HostError> {
        watch::watch_output(invocation, timeout, fatal)
    }

    fn find_tool(&self, tool: &str) -> Option<PathBuf> {
        find_tool(tool)
    }
}

/// One call made to a [`RecordingHost`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCall {
    MutableTree { lower: PathBuf, scratch: PathBuf },
    RunScript(ScriptInvocation),
    RunTool(ToolInvocation),
    RunForeground(ToolInvocation),
    WatchOutput(ToolInvocation),
}

/// What a [`RecordingHost`] answers for a tool instead of running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAnswer {
    /// The exit code reported.
    pub code: i32,
    /// The lines streamed to the sink, as if the tool had printed them.
    pub output: Vec<String>,
}

impl ToolAnswer {
    /// An answer with exit code `code` and the lines of `output`.
    pub fn new(code: i32, output: &str) -> ToolAnswer {
        ToolAnswer {
            code,
            output: output.lines().map(str::to_string).collect(),
        }
    }
}

/// A host for tests without root: records every call, always copies trees (never mounts),
/// runs host scripts for real (directly, without a PID namespace), and never enters a chroot:
/// a chroot script is recorded and reported as succeeded with no output. Host tools (depmod)
/// and foreground programs need no privileges: they are recorded, then run for real.
///
/// A test can also give it the host it needs to look at: a tool may be made missing
/// ([`RecordingHost::without_tool`]), or answered instead of run
/// ([`RecordingHost::answering`]) when the real one is absent or would need root or the network;
/// an answered tool counts as present.
#[derive(Debug, Default)]
pub struct RecordingHost {
    calls: Mutex<Vec<HostCall>>,
    missing: BTreeSet<String>,
    answers: BTreeMap<String, ToolAnswer>,
}

impl RecordingHost {
    pub fn new() -> Self {
        RecordingHost::default()
    }

    /// The same host without `tool`: [`Host::find_tool`] does not find it.
    pub fn without_tool(mut self, tool: &str) -> Self {
        self.missing.insert(tool.to_string());
        self
    }

    /// The same host where running the program named `tool` (by its file name) is recorded and
    /// answered with `answer` instead of run.
    pub fn answering(mut self, tool: &str, answer: ToolAnswer) -> Self {
        self.answers.insert(tool.to_string(), answer);
        self
    }

    /// The tools run so far, in order.
    pub fn tools_run(&self) -> Vec<ToolInvocation> {
        self.lock()
            .iter()
            .filter_map(|call| match call {
                HostCall::RunTool(inv) => Some(inv.clone()),
                HostCall::MutableTree { .. }
                | HostCall::RunScript(_)
                | HostCall::RunForeground(_)
                | HostCall::WatchOutput(_) => None,
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
                | HostCall::RunForeground(_)
                | HostCall::WatchOutput(_) => None,
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
        match self.answers.get(&invocation.program_name()) {
            Some(answer) => {
                for line in &answer.output {
                    sink(line);
                }
                let start = answer.output.len().saturating_sub(TAIL_LINES);
                Ok(ToolOutcome {
                    code: answer.code,
                    output_tail: answer.output[start..].to_vec(),
                    duration: Duration::ZERO,
                })
            }
            None => tool::run_tool(invocation, sink),
        }
    }

    fn run_foreground(&self, invocation: &ToolInvocation) -> Result<i32, HostError> {
        self.lock()
            .push(HostCall::RunForeground(invocation.clone()));
        foreground::run_foreground(invocation)
    }

    fn watch_output(
        &self,
        invocation: &ToolInvocation,
        timeout: Duration,
        fatal: &dyn Fn(&str) -> bool,
    ) -> Result<Watched, HostError> {
        self.lock().push(HostCall::WatchOutput(invocation.clone()));
        watch::watch_output(invocation, timeout, fatal)
    }

    fn find_tool(&self, tool: &str) -> Option<PathBuf> {
        if self.missing.contains(tool) {
            return None;
        }
        if self.answers.contains_key(tool) {
            return Some(PathBuf::from(tool));
        }
        find_tool(tool)
    }
}
