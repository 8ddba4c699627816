//! End-to-end tests of the shared cache against a real nginx with WebDAV's `dav_methods PUT`,
//! started by each test on a loopback port with a configuration of its own in a temp dir, and
//! stopped when the test ends. Team members build copies of `recipes/tiny` with stores of their
//! own and talk to the server only through `kiln`.
//!
//! These tests need root (script stages mount overlays), bubblewrap and nginx (Debian's
//! `nginx-light`); without them each test says it is skipped.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiln_test_support::{Facts, Need, tree_listing};
use serde_json::Value;

use common::{Project, outcomes, stage};

/// The password nginx accepts for user `ci`.
const RIGHT_PASSWORD: &str = "right-horse-battery-staple";

/// An nginx serving `/kiln/` with PUT, in a temp dir of its own.
struct Nginx {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx; `extra` goes into the `/kiln/` location (`{htpasswd}` names a password
    /// file holding user `ci` with [`RIGHT_PASSWORD`]).
    fn start(extra: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["www/kiln", "body", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("ci:{{PLAIN}}{RIGHT_PASSWORD}\n")).unwrap();
        let extra = extra.replace("{htpasswd}", &htpasswd.display().to_string());
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let d = dir.path().display();
            let config = format!(
                "daemon off;\nmaster_process off;\nuser root root;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 512; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n\
                 scgi_temp_path {d}/tmp;\n  server {{\n    listen 127.0.0.1:{port};\n\
                 root {d}/www;\n    client_max_body_size 0;\n    location /kiln/ {{\n\
                 dav_methods PUT;\n      create_full_put_path on;\n\
                 dav_access user:rw group:r all:r;\n      {extra}\n    }}\n  }}\n}}\n"
            );
            std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
            let mut child = Command::new("nginx")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf"))
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Wait until it listens, or has given up (the port was taken meanwhile).
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        dir,
                        port,
                        child: Some(child),
                    };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start:\n{log}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/kiln", self.port)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A file of the cache on the server (`cas/…`, `ac/…`).
    fn file(&self, path: &str) -> PathBuf {
        self.dir.path().join("www/kiln").join(path)
    }

    /// Every action record on the server, parsed.
    fn records(&self) -> Vec<(PathBuf, Value)> {
        std::fs::read_dir(self.file("ac"))
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let record = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                (path, record)
            })
            .collect()
    }

    /// The server goes away at once, connections and all.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Keys and a config directory shared by a team's members.
struct Team {
    dir: tempfile::TempDir,
    /// `ci-1`, which signs what member A pushes.
    public: String,
}

impl Team {
    fn new() -> Team {
        let dir = tempfile::tempdir().unwrap();
        let public = keygen(&dir.path().join("keys"), "ci-1");
        Team { dir, public }
    }

    fn signing_key(&self) -> PathBuf {
        self.dir.path().join("keys/ci-1.secret")
    }
}

/// `kiln cache keygen NAME --dir DIR`; returns the public key.
fn keygen(dir: &Path, name: &str) -> String {
    let output = common::kiln()
        .args(["cache", "keygen", name, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let public = std::fs::read_to_string(dir.join(format!("{name}.public"))).unwrap();
    let secret = dir.join(format!("{name}.secret"));
    assert_eq!(std::fs::metadata(&secret).unwrap().mode() & 0o777, 0o600);
    public.trim().to_string()
}

/// A member of the team: a copy of recipes/tiny, a store, and an environment naming the
/// shared cache (and nothing of the user running the tests).
struct Member {
    project: Project,
    config: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Member {
    fn new(nginx: &Nginx) -> Member {
        let config = tempfile::tempdir().unwrap();
        Member {
            project: Project::copy_of("tiny", "tiny"),
            env: vec![
                ("XDG_CONFIG_HOME", config.path().display().to_string()),
                ("KILN_CACHE_REMOTE", nginx.url()),
            ],
            config,
        }
    }

    /// Member A: signs with the team's key.
    fn pusher(nginx: &Nginx, team: &Team) -> Member {
        let mut member = Member::new(nginx);
        member.env.push((
            "KILN_CACHE_SIGNING_KEY",
            team.signing_key().display().to_string(),
        ));
        member
    }

    /// Member B: trusts `key`.
    fn reader(nginx: &Nginx, key: &str) -> Member {
        let mut member = Member::new(nginx);
        member
            .env
            .push(("KILN_CACHE_TRUSTED_KEYS", key.to_string()));
        member
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.project.command(args);
        for name in [
            "KILN_CONFIG",
            "KILN_CACHE_PUSH",
            "KILN_CACHE_TOKEN",
            "KILN_CACHE_USER",
            "KILN_CACHE_PASSWORD",
            "KILN_CACHE_CREDENTIALS",
            "KILN_CACHE_TRUSTED_KEYS",
            "KILN_CACHE_SIGNING_KEY",
        ] {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        command
    }

    fn kiln(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// A build that must succeed: its stderr.
    fn build(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.push("build");
        let output = self.kiln(&all);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "build failed:\n{stderr}");
        stderr
    }

    /// Writes the credentials file for `host` (mode 0600).
    fn credentials(&self, host: &str, password: &str) {
        let path = self.config.path().join("kiln/credentials.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            format!("[\"{host}\"]\nuser = \"ci\"\npassword = \"{password}\"\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn trees_in_store(&self) -> usize {
        walkdir::WalkDir::new(self.project.store.join("v1/trees"))
            .into_iter()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_file())
            .count()
    }
}

/// Explain's JSON for a member's last build.
fn explain(member: &Member) -> Value {
    let output = member.kiln(&["graph", "explain", "--json"]);
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Member A builds recipes/tiny and pushes it.
fn member_a_pushes(nginx: &Nginx, team: &Team) -> Member {
    let a = Member::pusher(nginx, team);
    let stderr = a.build(&["--cache-push"]);
    assert!(
        outcomes(&stderr).values().all(|outcome| outcome == "ran"),
        "{stderr}"
    );
    let stages = outcomes(&stderr).len();
    assert!(
        stderr.contains(&format!("pushed {stages} stages to")),
        "{stderr}"
    );
    a
}

/// `zstd -c` of `bytes`.
fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    output.stdout
}

#[test]
fn member_b_builds_everything_from_what_member_a_pushed() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::Tool("nginx"));
    let nginx = Nginx::start("");
    let team = Team::new();
    let a = member_a_pushes(&nginx, &team);

    let b = Member::reader(&nginx, &team.public);
    let stderr = b.build(&[]);
    let outcomes = outcomes(&stderr);
    assert_eq!(outcomes.len(), 7, "{stderr}");
    assert!(
        outcomes.values().all(|outcome| outcome == "remote"),
        "{stderr}"
    );
    assert!(
        stderr.contains("0 of 7 stages ran, 7 from the shared cache"),
        "{stderr}"
    );
    assert_eq!(
        tree_listing(&b.project.output_dir(), Facts::Copy),
        tree_listing(&a.project.output_dir(), Facts::Copy)
    );
    // Only the image came over: the trees under it stayed on the server.
    assert!(
        b.trees_in_store() < a.trees_in_store(),
        "B has {} trees, A {}",
        b.trees_in_store(),
        a.trees_in_store()
    );
    // B's explain shows the records A's build made, and who signed them.
    let explanation = explain(&b);
    for name in [
        "base-trees",
        "extra-trees",
        "postinst",
        "remove-files",
        "finalize",
        "output",
    ] {
        let stage = stage(&explanation, name);
        assert_eq!(stage["status"], "remote", "{stage:#}");
        let notes: Vec<&str> = stage["notes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|note| note.as_str().unwrap())
            .collect();
        assert!(
            notes[0].starts_with(&format!("from the shared cache {}", nginx.url()))
                && notes[0].contains("signed by `ci-1`"),
            "{notes:?}"
        );
        let made_by_a = "in build #1 of `tiny`".to_string();
        assert!(
            notes.iter().any(|note| note.contains(&made_by_a)),
            "{notes:?}"
        );
    }
    // Building again needs nothing from the server.
    let mut nginx = nginx;
    nginx.stop();
    let again = b.build(&[]);
    assert!(!again.contains("warning"), "{again}");
    assert_eq!(common::outcomes(&again)["output"], "cached", "{again}");
}

#[test]
fn pushed_records_hold_no_path_of_the_pushers_machine() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::Tool("nginx"));
    let nginx = Nginx::start("");
    let team = Team::new();
    let a = member_a_pushes(&nginx, &team);
    let root = a.project.root.display().to_string();
    let records = nginx.records();
    assert!(!records.is_empty());
    for (path, record) in records {
        let text = record.to_string();
        assert!(!text.contains(&root), "{}: {text}", path.display());
    }
}

#[test]
fn a_blob_corrupted_on_the_server_is_rejected_and_rebuilt() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("bwrap"),
        Need::Tool("nginx"),
        Need::Tool("zstd")
    );
    let nginx = Nginx::start("");
    let team = Team::new();
    let a = member_a_pushes(&nginx, &team);
    // A file only postinst writes: B has no copy of it in its store.
    let written = std::fs::read(a.project.output_dir().join("var/lib/tiny/postinst")).unwrap();
    let object = nginx.file(&format!("cas/{}", blake3::hash(&written).to_hex()));
    assert!(
        object.is_file(),
        "{} is not on the server",
        object.display()
    );
    // Valid zstd, other content.
    std::fs::write(&object, zstd(b"evil\n")).unwrap();

    let b = Member::reader(&nginx, &team.public);
    let stderr = b.build(&["-v"]);
    assert!(stderr.contains("served a corrupt object"), "{stderr}");
    assert!(
        stderr.contains("its content does not match its name"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("going on without the shared cache").count(),
        1,
        "{stderr}"
    );
    assert_eq!(outcomes(&stderr)["output"], "ran", "{stderr}");
    assert_eq!(
        tree_listing(&b.project.output_dir(), Facts::Copy),
        tree_listing(&a.project.output_dir(), Facts::Copy)
    );
    let verify = b.kiln(&["cache", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn records_of_an_untrusted_key_or_altered_after_signing_are_ignored_and_said_so() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::Tool("nginx"));
    let nginx = Nginx::start("");
    let team = Team::new();
    let a = member_a_pushes(&nginx, &team);

    // B trusts only a key of its own.
    let stranger = keygen(&team.dir.path().join("stranger"), "stranger-1");
    let b = Member::reader(&nginx, &stranger);
    let quiet = b.build(&[]);
    assert!(
        outcomes(&quiet).values().all(|outcome| outcome == "ran"),
        "{quiet}"
    );
    assert!(!quiet.contains("ignored"), "said without -v:\n{quiet}");
    let verbose = Member::reader(&nginx, &stranger).build(&["-v"]);
    assert!(
        verbose.contains("base-trees | shared cache: ignored the record of key")
            && verbose.contains("signed by `ci-1`, not a trusted key"),
        "{verbose}"
    );
    assert!(!verbose.contains("warning"), "{verbose}");

    // A record changed after it was signed: that stage runs, the others still come over.
    let (path, mut record) = nginx
        .records()
        .into_iter()
        .find(|(_, record)| record["stage"] == "base-trees")
        .unwrap();
    record["notes"]
        .as_array_mut()
        .unwrap()
        .push("injected".into());
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
    let c = Member::reader(&nginx, &team.public);
    let stderr = c.build(&["-v"]);
    let outcomes = outcomes(&stderr);
    assert_eq!(outcomes["base-trees"], "ran", "{stderr}");
    assert_eq!(outcomes["extra-trees"], "remote", "{stderr}");
    assert_eq!(outcomes["output"], "remote", "{stderr}");
    assert!(
        stderr
            .contains("its signature by `ci-1` does not match: it was changed after it was signed"),
        "{stderr}"
    );
    assert_eq!(
        tree_listing(&c.project.output_dir(), Facts::Copy),
        tree_listing(&a.project.output_dir(), Facts::Copy)
    );
}

#[test]
fn the_server_stopped_in_the_middle_of_a_pull_leaves_a_build_that_succeeds_locally() {
    kiln_test_support::require!(
        Need::Root,
        Need::Tool("bwrap"),
        Need::Tool("nginx"),
        Need::Tool("openssl")
    );
    // Slow downloads, so that the server stops while one is under way.
    let mut nginx = Nginx::start("limit_rate 256k;");
    let team = Team::new();
    let a = Member::pusher(&nginx, &team);
    let b = Member::reader(&nginx, &team.public);
    // finalize writes 6 MiB that do not compress (the same bytes each time): B has only the
    // script, so the image's download takes a while.
    for member in [&a, &b] {
        let finalize = member.project.root.join("mkosi.finalize");
        let mut script = std::fs::read_to_string(&finalize).unwrap();
        script.push_str(
            "openssl enc -aes-256-ctr -pass pass:kiln -nosalt -pbkdf2 -in /dev/zero 2>/dev/null \
             | head -c 6291456 > \"$BUILDROOT/usr/lib/big.bin\"\n",
        );
        std::fs::write(&finalize, script).unwrap();
    }
    a.build(&["--cache-push"]);

    let mut child = b
        .command(&["-v", "build"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("shared cache: downloading output") {
                let _ = tx.send(());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the build never started downloading");
    // Wait until a body is arriving in B's store, then stop the server.
    let tmp = b.project.store.join("v1/tmp");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_dir(&tmp).unwrap().any(|entry| {
        entry
            .ok()
            .and_then(|entry| entry.metadata().ok())
            .is_some_and(|meta| meta.is_file() && meta.len() > 0)
    }) {
        assert!(Instant::now() < deadline, "no download came in");
        std::thread::sleep(Duration::from_millis(10));
    }
    nginx.stop();
    let status = child.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("going on without the shared cache").count(),
        1,
        "{stderr}"
    );
    assert_eq!(outcomes(&stderr)["output"], "ran", "{stderr}");
    assert_eq!(
        tree_listing(&b.project.output_dir(), Facts::Copy),
        tree_listing(&a.project.output_dir(), Facts::Copy)
    );
    let verify = b.kiln(&["cache", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

#[test]
fn a_secret_in_the_credentials_file_never_appears_in_any_output_of_a_failing_run() {
    kiln_test_support::require!(Need::Root, Need::Tool("bwrap"), Need::Tool("nginx"));
    let nginx = Nginx::start("auth_basic \"kiln\";\n      auth_basic_user_file {htpasswd};");
    let team = Team::new();
    // With the right password, A pushes through the authentication.
    let a = Member::pusher(&nginx, &team);
    a.credentials(&nginx.host(), RIGHT_PASSWORD);
    let pushed = a.build(&["--cache-push"]);
    let stages = outcomes(&pushed).len();
    assert!(
        pushed.contains(&format!("pushed {stages} stages to")),
        "{pushed}"
    );

    // B's password is wrong, and its postinst fails.
    const SECRET: &str = "S3cret-that-must-never-show-7f3a";
    let b = Member::reader(&nginx, &team.public);
    b.credentials(&nginx.host(), SECRET);
    b.project.write(
        "mkosi.postinst",
        "#!/bin/sh\necho 'something went wrong' >&2\nexit 3\n",
    );
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("ci:{SECRET}"));
    let mut seen = Vec::new();
    let mut check = |what: &str, output: Output| {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains(SECRET) && !text.contains(&encoded),
            "{what} showed the secret:\n{text}"
        );
        seen.push(text.clone());
        (output.status.code(), text)
    };
    let (code, text) = check("build -v", b.kiln(&["-v", "build"]));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("answered 401"), "{text}");
    assert!(text.contains("Stage `postinst` failed"), "{text}");
    let (code, text) = check("build", b.kiln(&["build"]));
    assert_eq!(code, Some(1), "{text}");
    let (code, text) = check("cache pull", b.kiln(&["cache", "pull"]));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("answered 401"), "{text}");
    let (code, text) = check("cache stats", b.kiln(&["cache", "stats"]));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("credentials basic auth"), "{text}");
    let (code, _) = check("cache push", b.kiln(&["cache", "push"]));
    assert_eq!(code, Some(1));
    // A credentials file kiln cannot read says where, never what.
    let path = b.config.path().join("kiln/credentials.toml");
    std::fs::write(
        &path,
        format!(
            "[\"{}\"]\nuser = \"ci\"\npassword = \"{SECRET}\n",
            nginx.host()
        ),
    )
    .unwrap();
    let (code, text) = check("build with a broken file", b.kiln(&["build"]));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot be read at line"), "{text}");
    assert_eq!(seen.len(), 6);
}
