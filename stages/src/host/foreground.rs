//! Running one program in the foreground, as if the user had started it: it shares kiln's
//! terminal (stdin, stdout, stderr), environment and process group, and kiln waits for it. Used
//! for programs the user talks to, such as the virtual machine of `kiln qemu`.
//!
//! Nothing outlives kiln: the child gets `PR_SET_PDEATHSIG(SIGKILL)`, so a kiln that is killed
//! takes it along. The child stays in kiln's process group (a program in another group could not
//! read the terminal), so a Ctrl-C typed at a terminal in cooked mode reaches both; and the
//! termination signals kiln itself receives while the child runs (SIGINT, SIGTERM, SIGHUP,
//! SIGQUIT) are forwarded to it, kiln then waiting for it to exit rather than dying first. The
//! handlers are plain `sigaction`s whose only work is one `kill`: a crate for signal handling
//! would bring a thread or a self-pipe that this does not need. When the child leaves the
//! terminal in raw mode (it was killed before restoring it), kiln restores the settings the
//! terminal had before.

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use super::error::HostError;
use super::process;
use super::tool::ToolInvocation;

/// The signals forwarded to the child while it runs.
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The running child's pid, or 0 while none runs.
static CHILD: AtomicI32 = AtomicI32::new(0);

/// A signal that arrived before the child's pid was known, or 0.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// One foreground child at a time: the handlers and [`CHILD`] are process-wide.
static FOREGROUND: Mutex<()> = Mutex::new(());

extern "C" fn forward(signal: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, signal);
        }
    } else {
        PENDING.store(signal, Ordering::SeqCst);
    }
}

/// Runs `invocation` in the foreground with kiln's environment and terminal; returns its exit
/// code (`128 + n` when signal `n` ended it).
pub(crate) fn run_foreground(invocation: &ToolInvocation) -> Result<i32, HostError> {
    let _one_at_a_time = FOREGROUND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut command = Command::new(&invocation.program);
    command.args(&invocation.args);
    command.envs(invocation.env.iter().map(|(name, value)| (name, value)));
    process::die_with_kiln(&mut command);
    let terminal = TerminalState::save();
    let handlers = Handlers::install();
    PENDING.store(0, Ordering::SeqCst);
    let mut child = command.spawn().map_err(|source| HostError::Spawn {
        program: invocation.program.clone(),
        source,
    })?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let early = PENDING.swap(0, Ordering::SeqCst);
    if early != 0 {
        // SAFETY: plain system call on the child we just started (not reaped yet).
        unsafe {
            libc::kill(child.id() as libc::pid_t, early);
        }
    }
    let status = child.wait();
    CHILD.store(0, Ordering::SeqCst);
    drop(handlers);
    if let Some(terminal) = terminal {
        terminal.restore();
    }
    let status = status.map_err(|source| HostError::Spawn {
        program: invocation.program.clone(),
        source,
    })?;
    Ok(process::exit_code(&status))
}

/// The forwarding handlers, installed for as long as this lives; the previous ones come back
/// when it is dropped.
struct Handlers {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Handlers {
    fn install() -> Handlers {
        let mut previous = Vec::new();
        for signal in FORWARDED {
            // SAFETY: `action` is fully initialised before use; `old` is filled by sigaction.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = forward as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Handlers { previous }
    }
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for (signal, old) in &self.previous {
            // SAFETY: restores an action sigaction returned.
            unsafe {
                libc::sigaction(*signal, old, std::ptr::null_mut());
            }
        }
    }
}

/// The settings of the terminal on stdin, when stdin is one.
struct TerminalState {
    termios: libc::termios,
}

impl TerminalState {
    fn save() -> Option<TerminalState> {
        // SAFETY: isatty and tcgetattr only read; `termios` is filled on success.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) != 1 {
                return None;
            }
            let mut termios: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut termios) == 0)
                .then_some(TerminalState { termios })
        }
    }

    fn restore(&self) {
        // SAFETY: sets settings tcgetattr returned; failure leaves the terminal as it is.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.termios);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> ToolInvocation {
        ToolInvocation::new("/bin/sh").arg("-c").arg(script)
    }

    #[test]
    fn the_exit_code_is_the_childs() {
        assert_eq!(run_foreground(&sh("exit 0")).unwrap(), 0);
        assert_eq!(run_foreground(&sh("exit 85")).unwrap(), 85);
        assert_eq!(run_foreground(&sh("kill -9 $$")).unwrap(), 137);
    }

    #[test]
    fn a_signal_to_kiln_goes_to_the_child() {
        // The child asks for SIGTERM to be sent to its parent (this process) and waits; the
        // forwarded SIGTERM ends it, and this process lives on.
        let code = run_foreground(&sh("kill -TERM $PPID; exec sleep 30")).unwrap();
        assert_eq!(code, 128 + libc::SIGTERM);
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let error = run_foreground(&ToolInvocation::new("/nonexistent/kiln-no-such-program"));
        assert!(matches!(error, Err(HostError::Spawn { .. })));
    }
}
