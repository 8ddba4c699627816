//! Running one child process for a script: stdin from `/dev/null`, stdout and stderr merged and
//! streamed line by line to a sink, the last lines kept for an error report, and nothing left
//! running afterwards.
//!
//! The child gets `PR_SET_PDEATHSIG(SIGKILL)`, so a kiln that is killed takes it along, and it
//! leads its own process group: once it exits, whatever it started in the background and left in
//! that group is killed too (before the child is reaped, so the group id cannot have been
//! reused). A background process that keeps the output pipe open cannot hold the build: the
//! output is drained for at most [`DRAIN_AFTER_EXIT`] after the child exits.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How many lines of output an error report keeps.
pub const TAIL_LINES: usize = 40;

/// The longest line kept in the tail, in bytes; longer lines are cut.
const TAIL_LINE_MAX: usize = 1024;

/// How long output is still read once the child has exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How often the child is checked for exit while it prints nothing.
const POLL: Duration = Duration::from_millis(50);

/// What a finished child left behind.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub tail: Vec<String>,
    pub duration: Duration,
}

/// Arms `PR_SET_PDEATHSIG(SIGKILL)` in the child `cmd` will start, so that a kiln that is killed
/// takes the child along; a child whose parent died before that is armed exits at once.
pub(crate) fn die_with_kiln(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the death signal was armed.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` and streams its merged output to `sink` until it exits.
///
/// `cmd`'s stdin, stdout and stderr are replaced; its environment and arguments are left as set.
pub(crate) fn run(mut cmd: Command, sink: &mut dyn FnMut(&str)) -> io::Result<Finished> {
    let (reader, writer) = io::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    die_with_kiln(&mut cmd);
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    // The command holds the pipe's write ends: close them here so the reader sees end of file.
    drop(cmd);

    let (tx, rx) = mpsc::sync_channel::<String>(256);
    let reader_thread = thread::Builder::new()
        .name("kiln-script-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    let reader_thread = match reader_thread {
        Ok(handle) => handle,
        Err(err) => {
            kill_group(&child);
            let _ = child.wait();
            return Err(err);
        }
    };

    let mut tail = Tail::default();
    let mut exited = false;
    let mut drain_deadline = None;
    let mut disconnected = false;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(line) => {
                sink(&line);
                tail.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => {
                disconnected = true;
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if !exited && has_exited(&child)? {
            exited = true;
            kill_group(&child);
            drain_deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
        }
        if drain_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
    }
    if !exited {
        // Output closed while the child still runs: wait for it, then clean up its group.
        wait_exited(&child)?;
        kill_group(&child);
    }
    let status = child.wait()?;
    let duration = start.elapsed();
    if disconnected {
        let _ = reader_thread.join();
    }
    // Otherwise a process outside the group still holds the pipe: the reader thread ends when
    // it closes, and nothing waits for it.
    Ok(Finished {
        status,
        tail: tail.into_lines(),
        duration,
    })
}

/// The exit code of a status, with a signal `n` reported as `128 + n` the way shells do.
pub(crate) fn exit_code(status: &ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Whether the child has exited, without reaping it (so its process group id stays reserved).
fn has_exited(child: &Child) -> io::Result<bool> {
    waitid(child, libc::WNOHANG)
}

/// Blocks until the child has exited, without reaping it.
fn wait_exited(child: &Child) -> io::Result<()> {
    waitid(child, 0).map(|_| ())
}

fn waitid(child: &Child, extra: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: `info` is a plain C struct that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | extra,
            )
        };
        if rc == 0 {
            // With WNOHANG and no state change, si_pid stays 0.
            // SAFETY: waitid succeeded, so the union holds the child fields.
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Kills what is left of the child's process group (the child leads it).
fn kill_group(child: &Child) {
    // SAFETY: plain system call; the group id is the child's pid, which is not reaped yet.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
}

/// The last [`TAIL_LINES`] lines of output.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    fn push(&mut self, mut line: String) {
        if line.len() > TAIL_LINE_MAX {
            let mut cut = TAIL_LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn into_lines(self) -> Vec<String> {
        self.lines.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn streams_lines_and_keeps_the_tail() {
        let mut seen = Vec::new();
        let done = run(
            sh("i=1; while [ $i -le 50 ]; do echo line $i; i=$((i+1)); done; echo err >&2; exit 4"),
            &mut |l| seen.push(l.to_owned()),
        )
        .unwrap();
        assert_eq!(seen.len(), 51);
        assert_eq!(seen[0], "line 1");
        assert_eq!(exit_code(&done.status), 4);
        assert_eq!(done.tail.len(), TAIL_LINES);
        assert_eq!(done.tail.first().map(String::as_str), Some("line 12"));
        assert_eq!(done.tail.last().map(String::as_str), Some("err"));
    }

    #[test]
    fn stdin_is_empty_and_a_background_child_cannot_hold_the_run() {
        let start = Instant::now();
        let done = run(sh("cat; echo read-done; sleep 30 & exit 0"), &mut |_| {}).unwrap();
        assert!(done.status.success());
        assert_eq!(done.tail, vec!["read-done".to_owned()]);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_signal_is_reported_as_128_plus_its_number() {
        let done = run(sh("kill -9 $$"), &mut |_| {}).unwrap();
        assert_eq!(exit_code(&done.status), 137);
    }

    #[test]
    fn long_lines_are_cut_in_the_tail_only() {
        let mut seen = Vec::new();
        let done = run(sh("head -c 5000 /dev/zero | tr '\\0' x; echo"), &mut |l| {
            seen.push(l.len())
        })
        .unwrap();
        assert_eq!(seen, vec![5000]);
        assert!(done.tail[0].len() <= TAIL_LINE_MAX + '…'.len_utf8());
    }
}
