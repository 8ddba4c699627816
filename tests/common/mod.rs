//! What the end-to-end tests share: the `kiln` binary, a copy of a recipe with a store of its
//! own to run it on, and reading what a build printed and what `graph explain` says.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_test_support::SharedFixture;
use serde_json::Value;

/// The binary under test.
pub(crate) const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// `kiln` (see [`kiln_test_support::kiln`]), not started.
pub(crate) fn kiln() -> Command {
    kiln_test_support::kiln(KILN)
}

/// A project directory and a store of its own.
pub(crate) struct Project {
    /// Removed with the project, unless it lives in a folder of its own that outlives it.
    _dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub store: PathBuf,
    /// The image's output name under `mkosi.output/`.
    pub image: String,
}

impl Project {
    /// A copy of `recipes/<name>` without its outputs, caches or lock file.
    pub(crate) fn copy_of(name: &str, image: &str) -> Project {
        Project::copy_into(Project::empty(name, image), name)
    }

    /// [`Project::copy_of`] in `dir`, emptied first and left in place afterwards: for a
    /// project a whole test binary shares from a static, which is never dropped.
    pub(crate) fn copy_of_in(dir: &Path, name: &str, image: &str) -> Project {
        let _ = std::fs::remove_dir_all(dir);
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        let project = Project {
            _dir: None,
            root,
            store: dir.join("store"),
            image: image.to_string(),
        };
        Project::copy_into(project, name)
    }

    fn copy_into(project: Project, name: &str) -> Project {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("recipes")
            .join(name);
        std::fs::remove_dir(&project.root).unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(&source)
            .arg(&project.root)
            .status()
            .unwrap();
        assert!(status.success());
        let _ = std::fs::remove_dir_all(project.root.join("mkosi.output"));
        let _ = std::fs::remove_dir_all(project.root.join("mkosi.cache"));
        let _ = std::fs::remove_file(project.root.join("kiln.lock"));
        project
    }

    /// An empty project directory named `name`.
    pub(crate) fn empty(name: &str, image: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let store = dir.path().join("store");
        Project {
            _dir: Some(dir),
            root,
            store,
            image: image.to_string(),
        }
    }

    /// `kiln -C <project> --cache-dir <store> ARGS`, not started yet.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = kiln();
        command
            .arg("-C")
            .arg(&self.root)
            .arg("--cache-dir")
            .arg(&self.store)
            .args(args);
        command
    }

    pub(crate) fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Build and return each stage's outcome.
    pub(crate) fn build(&self, args: &[&str]) -> BTreeMap<String, String> {
        let mut all = args.to_vec();
        all.push("build");
        let output = self.kiln(&all);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "build failed:\n{stderr}");
        outcomes(&stderr)
    }

    /// Build, which must fail; returns its stderr.
    pub(crate) fn build_fails(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.push("build");
        let output = self.kiln(&all);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(
            output.status.code(),
            Some(1),
            "build did not fail as expected:\n{stderr}"
        );
        stderr
    }

    /// `graph explain --json` of the last build.
    pub(crate) fn explain(&self) -> Value {
        let output = self.kiln(&["graph", "explain", "--json"]);
        assert!(
            output.status.success(),
            "explain failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    pub(crate) fn graph_show(&self) -> String {
        let output = self.kiln(&["graph", "show"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Write a file of the project, creating its directories.
    pub(crate) fn write(&self, path: &str, content: &str) {
        let full = self.root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }

    pub(crate) fn remove(&self, path: &str) {
        let full = self.root.join(path);
        if full.is_dir() {
            std::fs::remove_dir_all(full).unwrap();
        } else {
            let _ = std::fs::remove_file(full);
        }
    }

    pub(crate) fn output_dir(&self) -> PathBuf {
        self.root.join("mkosi.output").join(&self.image)
    }

    /// A file of the built image.
    pub(crate) fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.output_dir().join(path)).unwrap()
    }
}

/// `recipes/debian-rescue` as it is written (a UKI), built from the Debian mirror once per run
/// and shared by every test that builds it (see [`SharedFixture`]): `store/` holds what the
/// build stored, `build.stderr` what `kiln -v build` printed, `explain.json` its `graph explain
/// --json` and `seconds` how long it took. A test builds on a copy of the store
/// ([`copy_store`]), never in it. Needs root, the mirror and mmdebstrap.
pub(crate) fn debian_rescue() -> SharedFixture {
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/debian-rescue");
    SharedFixture::get("debian-rescue", &[&recipe, Path::new(KILN)], |dir| {
        let project = Project::copy_of_in(dir, "debian-rescue", "debian-rescue");
        let started = std::time::Instant::now();
        let output = project.kiln(&["-v", "build"]);
        let seconds = started.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "build failed:\n{stderr}");
        std::fs::write(dir.join("build.stderr"), stderr.as_bytes()).unwrap();
        let explain = project.kiln(&["graph", "explain", "--json"]);
        assert!(explain.status.success(), "{explain:?}");
        std::fs::write(dir.join("explain.json"), &explain.stdout).unwrap();
        std::fs::write(dir.join("seconds"), seconds.to_string()).unwrap();
    })
}

/// Copies a store into `to` (without its shared checkouts, which are made again on use): real
/// copies, so the copy can be changed, damaged or collected without touching the original.
pub(crate) fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("v1")).unwrap();
    let mut sources = vec![from.join("CACHEDIR.TAG")];
    for entry in std::fs::read_dir(from.join("v1")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "checkouts" && name != "tmp" {
            sources.push(path);
        }
    }
    let status = Command::new("cp")
        .arg("-a")
        .args(&sources[..1])
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("cp")
        .arg("-a")
        .args(&sources[1..])
        .arg(to.join("v1"))
        .status()
        .unwrap();
    assert!(status.success());
}

/// `stage: outcome (time)` lines of a build's stderr (ran, cached or remote).
pub(crate) fn outcomes(stderr: &str) -> BTreeMap<String, String> {
    stderr
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(stage, _)| !stage.contains(' ') && !stage.is_empty())
        .filter(|(_, rest)| {
            rest.starts_with("ran") || rest.starts_with("cached") || rest.starts_with("remote")
        })
        .map(|(stage, rest)| {
            let outcome = rest.split(" (").next().unwrap_or(rest);
            (stage.to_string(), outcome.to_string())
        })
        .collect()
}

/// The stages that ran, by name.
pub(crate) fn ran(outcomes: &BTreeMap<String, String>) -> Vec<&str> {
    outcomes
        .iter()
        .filter(|(_, outcome)| outcome.starts_with("ran"))
        .map(|(stage, _)| stage.as_str())
        .collect()
}

/// One stage of an explanation.
pub(crate) fn stage<'a>(explanation: &'a Value, name: &str) -> &'a Value {
    explanation["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {explanation:#}"))
}

/// A `kiln` run that leads its own process group (kiln and the qemu it starts), killed whole
/// when dropped; its stdout (a guest's serial console) is read as it comes.
pub(crate) struct Console {
    child: std::process::Child,
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    deadline: std::time::Instant,
    /// Everything read so far.
    pub text: String,
}

impl Console {
    pub(crate) fn start(mut command: Command, within: std::time::Duration) -> Console {
        use std::io::Read;
        use std::os::unix::process::CommandExt;
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (send, chunks) = std::sync::mpsc::channel();
        let send_err = send.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 || send.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = err.read(&mut buffer) {
                if n == 0 || send_err.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Console {
            child,
            chunks,
            deadline: std::time::Instant::now() + within,
            text: String::new(),
        }
    }

    /// Reads until `text` appears; panics with what was read at the deadline or when the
    /// output ends first.
    pub(crate) fn wait_for(&mut self, text: &str) {
        while !self.text.contains(text) {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.text.push_str(&String::from_utf8_lossy(&chunk)),
                Err(error) => panic!(
                    "`{text}` did not appear ({error:?}); the console said:\n{}",
                    self.text
                ),
            }
        }
    }

    /// Waits for kiln to exit and returns its exit code.
    pub(crate) fn exit_code(&mut self) -> Option<i32> {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < self.deadline,
                "kiln did not exit in time; the console said:\n{}",
                self.text
            );
            while let Ok(chunk) = self.chunks.try_recv() {
                self.text.push_str(&String::from_utf8_lossy(&chunk));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // SAFETY: a plain system call on the process group this test created.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
