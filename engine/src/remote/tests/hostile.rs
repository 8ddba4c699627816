//! A shared cache that anyone can write to, or that answers slowly on purpose: what a reader
//! and a pusher do about objects and records planted there, bombs under trusted names and
//! bodies that trickle.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use kiln_cache::remote::{RemoteConfig, RemoteUrl, SecretKey, SignedRecord, Timeouts};

use super::*;

/// The stage keys of a build, by stage name.
fn keys(store: &Store, build: BuildId) -> BTreeMap<String, Digest> {
    store
        .index()
        .unwrap()
        .runs(build)
        .unwrap()
        .into_iter()
        .map(|run| (run.stage, run.key))
        .collect()
}

fn object(team: &Team, id: &Digest) -> PathBuf {
    team.server.path().join("cas").join(id.to_string())
}

#[test]
fn an_output_served_longer_than_its_record_says_is_cut_off_there() {
    let team = Team::new();
    let (_a, first) = team.member_a_pushes();
    // c's output is 3 bytes; under its name, 64 MiB of zeros in a few KiB of zstd.
    let bomb = zstd::encode_all(std::io::repeat(0).take(64 << 20), 1).unwrap();
    std::fs::write(object(&team, output(&first, "c")), bomb).unwrap();
    let mut b = Member::new();
    let reporter = Recorder::default();
    let report = b.build("c", Some(&team.reader()), &reporter);
    assert_eq!(b.store.read_blob(output(&report, "c")).unwrap(), b"cba");
    let warnings = reporter.warnings.lock().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("longer than recorded"), "{warnings:?}");
    assert!(
        std::fs::read_dir(b.store.tmp_dir())
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn a_bad_object_spoils_its_own_stage_only() {
    let team = Team::new();
    let (_a, first) = team.member_a_pushes();
    std::fs::write(object(&team, output(&first, "c")), b"evil").unwrap();
    let mut b = Member::new();
    let reporter = Recorder::default();
    let report = b.build("c", Some(&team.reader()), &reporter);
    let outcomes = outcomes(&report);
    assert!(matches!(outcomes["c"], Outcome::Ran { .. }), "{outcomes:?}");
    for stage in ["a", "b", "d"] {
        assert_eq!(outcomes[stage], Outcome::Remote, "{outcomes:?}");
    }
    assert_eq!(b.runs(), 1);
    assert_eq!(report.stages.len(), 4);
    assert_eq!(b.store.read_blob(output(&report, "c")).unwrap(), b"cba");
    let warnings = reporter.warnings.lock().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("corrupt object"), "{warnings:?}");
}

#[test]
fn a_pusher_replaces_objects_planted_under_the_names_it_relies_on() {
    let team = Team::new();
    let mut a = Member::new();
    let built = a.build("c", None, &Recorder::default());
    // Planted before the push: garbage under c's name, valid zstd of other content under d's.
    std::fs::create_dir_all(team.server.path().join("cas")).unwrap();
    std::fs::write(object(&team, output(&built, "c")), b"planted").unwrap();
    std::fs::write(
        object(&team, output(&built, "d")),
        zstd::encode_all(&b"planted"[..], 3).unwrap(),
    )
    .unwrap();
    let pushed = push_build(&team.pusher(), &a.store, built.build).unwrap();
    assert_eq!(pushed.pushed.len(), 4, "{pushed:?}");
    let mut b = Member::new();
    let reporter = Recorder::default();
    let report = b.build("c", Some(&team.reader()), &reporter);
    assert_eq!(b.runs(), 0);
    assert!(
        outcomes(&report)
            .values()
            .all(|outcome| *outcome == Outcome::Remote),
        "{:?}",
        outcomes(&report)
    );
    assert!(reporter.warnings.lock().unwrap().is_empty());
}

#[test]
fn a_pusher_replaces_records_no_trusted_key_signed() {
    let team = Team::new();
    let mut a = Member::new();
    let built = a.build("c", None, &Recorder::default());
    let keys = keys(&a.store, built.build);
    let ac = team.server.path().join("ac");
    std::fs::create_dir_all(&ac).unwrap();
    // Unsigned, with another output, under a's key.
    let unsigned = format!(
        r#"{{"format": "kiln-action/1", "key": "{}", "stage": "a", "kind": "concat",
            "output": "{}", "output_kind": "blob", "inputs": [], "notes": ["planted"]}}"#,
        keys["a"],
        Digest::of_bytes(b"planted"),
    );
    std::fs::write(ac.join(keys["a"].to_string()), &unsigned).unwrap();
    // Signed by a stranger, with b's very output but lying notes, under b's key.
    let lying = unsigned
        .replace(&keys["a"].to_string(), &keys["b"].to_string())
        .replace(
            &Digest::of_bytes(b"planted").to_string(),
            &output(&built, "b").to_string(),
        );
    let mut lying = SignedRecord::parse(&lying).unwrap();
    lying.sign(&SecretKey::generate("stranger").unwrap());
    std::fs::write(ac.join(keys["b"].to_string()), lying.to_json()).unwrap();

    let pushed = push_build(&team.pusher(), &a.store, built.build).unwrap();
    assert_eq!(pushed.pushed.len(), 4, "{pushed:?}");
    assert!(pushed.conflicts.is_empty(), "{pushed:?}");
    for stage in ["a", "b"] {
        let text = std::fs::read_to_string(ac.join(keys[stage].to_string())).unwrap();
        assert!(!text.contains("planted"), "{text}");
        assert!(!text.contains("stranger"), "{text}");
    }
    let mut b = Member::new();
    let reporter = Recorder::default();
    let report = b.build("c", Some(&team.reader()), &reporter);
    assert_eq!(b.runs(), 0, "{:?}", outcomes(&report));
}

/// A server on 127.0.0.1 that serves `ac/` from `dir` at once and every `cas/` object as a
/// byte of a zstd body every 100 ms under a 100 MB length, for 15 s at most (then it hangs up).
fn trickling_server(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let dir = dir.clone();
            std::thread::spawn(move || serve(stream, &dir));
        }
    });
    format!("http://{address}")
}

fn serve(mut stream: TcpStream, dir: &std::path::Path) {
    let mut request = String::new();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    if reader.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let path = request
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    if path.starts_with("cas/") {
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        // The start of a valid zstd body, so that the decoder waits for more.
        let mut noise = 0x2545_f491_4f6c_dd1d_u64;
        let content: Vec<u8> = (0..1 << 16)
            .map(|_| {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                noise as u8
            })
            .collect();
        let body = zstd::encode_all(&content[..], 1).unwrap();
        for byte in &body[..150] {
            std::thread::sleep(Duration::from_millis(100));
            if stream
                .write_all(&[*byte])
                .and_then(|()| stream.flush())
                .is_err()
            {
                return;
            }
        }
        return;
    }
    let answer = match std::fs::read(dir.join(path)) {
        Ok(body) => {
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            answer.extend(body);
            answer
        }
        Err(_) => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
    };
    let _ = stream.write_all(&answer);
}

#[test]
fn a_server_that_trickles_is_left_and_the_build_goes_on_locally() {
    let team = Team::new();
    let (_a, first) = team.member_a_pushes();
    let url = trickling_server(team.server.path().to_path_buf());
    let mut config = RemoteConfig::new(RemoteUrl::parse(&url).unwrap());
    config.trusted_keys = vec![team.key.public()];
    config.retries = 0;
    config.timeouts = Timeouts {
        connect: Duration::from_secs(2),
        stall: Duration::from_millis(500),
        ..Timeouts::default()
    };
    let reader = Remote::open(config).unwrap();
    let mut b = Member::new();
    let reporter = Recorder::default();
    let report = b.build("c", Some(&reader), &reporter);
    for stage in ["a", "b", "c", "d"] {
        assert_eq!(output(&report, stage), output(&first, stage));
    }
    let warnings = reporter.warnings.lock().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("too slow"), "{warnings:?}");
    assert!(
        warnings[0].contains("going on without the shared cache"),
        "{warnings:?}"
    );
}
