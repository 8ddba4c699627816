//! The initrd stage checked with the real tools: GNU cpio lists and unpacks every segment,
//! `zstd` decodes the frames, and the frames are parsed here independently of the zstd library.
//!
//! Needs `cpio` and `zstd` on PATH; device nodes and owners need root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_cache::{Digest, Entry, EntryKind, IngestOptions, Manifest, Store};
use kiln_stages::initrd::{InitrdOptions, InitrdReport, split_frames, write_initrd};
use kiln_test_support::is_root;

mod support;

const EPOCH: u64 = 1_700_000_000;

/// Whether the test can go on (see [`kiln_test_support::skip_unless`]).
fn require(reason_if_missing: Option<String>) -> bool {
    kiln_test_support::skip_unless(reason_if_missing)
}

fn missing_tools() -> Option<String> {
    for tool in ["cpio", "zstd"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/host-deps installs it)"
            ));
        }
    }
    None
}

/// Runs `program` with `input` on stdin; returns stdout, panicking with stderr on failure.
fn pipe(program: &str, args: &[&str], input: &[u8], dir: Option<&Path>) -> Vec<u8> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Deterministic bytes that compress a little, like real files.
fn content(seed: usize, len: usize) -> Vec<u8> {
    let mut state = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if i % 3 == 0 {
                b'a' + (state % 8) as u8
            } else {
                state as u8
            }
        })
        .collect()
}

/// A tree with directories, many files, symlinks, hard links (one group far apart), a fifo, a
/// setuid file, an empty file and, as root, device nodes and another owner.
fn build_tree(root: &Path) {
    for dir in ["etc", "usr/bin", "usr/lib/data", "var/lib", "dev"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("etc/hostname"), "rescue\n").unwrap();
    fs::write(root.join("etc/empty"), "").unwrap();
    fs::write(root.join("usr/bin/tool"), content(1, 9000)).unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("usr/bin/su"), content(2, 3000)).unwrap();
    fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-again")).unwrap();
    for i in 0..240 {
        fs::write(
            root.join(format!("usr/lib/data/f{i:04}")),
            content(100 + i, 1500 + (i * 37) % 4000),
        )
        .unwrap();
    }
    // A group whose members lie far apart in path order, many boundaries between them.
    fs::hard_link(root.join("usr/lib/data/f0003"), root.join("var/lib/linked")).unwrap();
    fs::hard_link(root.join("usr/lib/data/f0003"), root.join("etc/linked")).unwrap();
    symlink("tool", root.join("usr/bin/link")).unwrap();
    symlink("/usr/bin/tool", root.join("etc/absolute")).unwrap();
    symlink("nowhere", root.join("etc/dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("var/lib/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    std::os::unix::net::UnixListener::bind(root.join("var/lib/socket")).unwrap();
    if is_root() {
        let node = |path: &str, kind, mode, dev| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(path),
                kind,
                rustix::fs::Mode::from_raw_mode(mode),
                dev,
            )
            .unwrap();
            // mknod applies the umask.
            fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).unwrap();
        };
        node(
            "dev/null",
            rustix::fs::FileType::CharacterDevice,
            0o666,
            rustix::fs::makedev(1, 3),
        );
        node(
            "dev/loop0",
            rustix::fs::FileType::BlockDevice,
            0o660,
            rustix::fs::makedev(7, 0),
        );
        std::os::unix::fs::chown(root.join("etc/hostname"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::lchown(root.join("usr/bin/link"), Some(5), Some(6)).unwrap();
    }
}

fn opts() -> InitrdOptions {
    InitrdOptions {
        level: 3,
        mtime: EPOCH,
        segment_target: 16 << 10,
    }
}

fn ingest(store: &Store, dir: &Path) -> Manifest {
    store.ingest_dir(dir, IngestOptions::default()).unwrap()
}

fn write(store: &Store, manifest: &Manifest) -> (InitrdReport, Vec<u8>) {
    let scratch = tempfile::tempdir().unwrap();
    let report = write_initrd(store, manifest, &opts(), scratch.path()).unwrap();
    let bytes = store.read_blob(&report.blob).unwrap();
    (report, bytes)
}

/// The frames of a zstd stream, found by reading the frame and block headers of RFC 8878
/// (independently of the zstd library kiln compresses with).
fn parse_frames(data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let start = pos;
        assert_eq!(
            data[pos..pos + 4],
            [0x28, 0xB5, 0x2F, 0xFD],
            "frame magic at {pos}"
        );
        let descriptor = data[pos + 4];
        pos += 5;
        let content_size_flag = descriptor >> 6;
        let single_segment = (descriptor >> 5) & 1 == 1;
        let has_checksum = (descriptor >> 2) & 1 == 1;
        if !single_segment {
            pos += 1; // window descriptor
        }
        pos += [0, 1, 2, 4][usize::from(descriptor & 3)]; // dictionary id
        pos += match content_size_flag {
            0 => usize::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        loop {
            let header = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], 0]);
            pos += 3;
            let last = header & 1 == 1;
            let block_type = (header >> 1) & 3;
            assert_ne!(block_type, 3, "reserved block type");
            pos += if block_type == 1 {
                1
            } else {
                (header >> 3) as usize
            };
            if last {
                break;
            }
        }
        if has_checksum {
            pos += 4;
        }
        assert!(pos <= data.len(), "frame at {start} runs past the end");
        frames.push(&data[start..pos]);
    }
    frames
}

/// What each segment holds: its frame decoded by `zstd -dc`, checked to end in a trailer.
fn archives(initrd: &[u8]) -> Vec<Vec<u8>> {
    parse_frames(initrd)
        .into_iter()
        .map(|frame| {
            let archive = pipe("zstd", &["-dc"], frame, None);
            assert_eq!(archive.len() % 512, 0, "archives are padded to 512 bytes");
            let end = archive.iter().rposition(|&b| b != 0).unwrap() + 1;
            // The trailer's name, its NUL and the padding to 4 bytes.
            let tail = &archive[..end];
            assert!(
                tail.ends_with(b"TRAILER!!!"),
                "a segment ends in its trailer"
            );
            assert_eq!(&tail[tail.len() - 120..tail.len() - 114], b"070701");
            archive
        })
        .collect()
}

/// The names GNU cpio lists, every segment after the other.
fn list(initrd: &[u8]) -> Vec<Vec<String>> {
    archives(initrd)
        .iter()
        .map(|archive| {
            String::from_utf8(pipe("cpio", &["-t", "--quiet"], archive, None))
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Unpacks every segment with GNU cpio into `dest`.
fn unpack(initrd: &[u8], dest: &Path) {
    for archive in archives(initrd) {
        pipe("cpio", &["-idm", "--quiet"], &archive, Some(dest));
    }
}

/// A manifest's entries without what an initrd cannot hold (sockets, xattrs) and without the
/// root, whose mode is the unpacking directory's business.
fn comparable(manifest: &Manifest) -> Manifest {
    Manifest::from_entries(manifest.entries().filter_map(|e| {
        let mut e = e.clone();
        e.xattrs.clear();
        if e.path.is_empty() {
            e = Entry::new("", EntryKind::Dir, 0o755);
        }
        (!matches!(e.kind, EntryKind::Socket)).then_some(e)
    }))
    .unwrap()
}

fn archive_names(manifest: &Manifest) -> BTreeSet<String> {
    manifest
        .entries()
        .filter(|e| !matches!(e.kind, EntryKind::Socket))
        .map(|e| {
            if e.path.is_empty() {
                ".".to_owned()
            } else {
                e.path.clone()
            }
        })
        .collect()
}

fn keys(report: &InitrdReport) -> Vec<Digest> {
    report.segments.iter().map(|s| s.key).collect()
}

#[test]
fn gnu_cpio_lists_and_unpacks_exactly_the_tree() {
    if !require(missing_tools()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (src, dest) = (work.path().join("src"), work.path().join("dest"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dest).unwrap();
    build_tree(&src);
    let store = Store::open(&work.path().join("store")).unwrap();
    let manifest = ingest(&store, &src);
    let (report, initrd) = write(&store, &manifest);
    assert!(report.segments.len() > 10, "{}", report.summary());

    // One frame per segment, each where the report says.
    let frames = parse_frames(&initrd);
    assert_eq!(frames.len(), report.segments.len());
    assert_eq!(split_frames(&initrd).unwrap(), frames);
    for (frame, segment) in frames.iter().zip(&report.segments) {
        let start = segment.offset as usize;
        assert_eq!(
            *frame,
            &initrd[start..start + segment.compressed as usize],
            "{}",
            segment.first_path
        );
    }
    // `zstd -dc` decodes the concatenated frames in turn.
    let whole = pipe("zstd", &["-dc"], &initrd, None);
    assert_eq!(whole, archives(&initrd).concat());
    assert_eq!(whole.len() as u64, report.uncompressed());

    let listed: Vec<String> = list(&initrd).concat();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "no name twice");
    assert_eq!(unique, archive_names(&manifest));
    assert_eq!(listed[0], ".");

    unpack(&initrd, &dest);
    let unpacked = ingest(&store, &dest);
    // Without root, cpio cannot give files away or make device nodes: owners are not compared.
    if require((!is_root()).then(|| "owners and device nodes need root".to_owned())) {
        assert_eq!(comparable(&unpacked), comparable(&manifest));
    } else {
        let owner_free = |m: &Manifest| {
            Manifest::from_entries(comparable(m).entries().map(|e| {
                let mut e = e.clone();
                (e.uid, e.gid) = (0, 0);
                e
            }))
            .unwrap()
        };
        assert_eq!(owner_free(&unpacked), owner_free(&manifest));
    }
    let ino = |path: &str| fs::symlink_metadata(dest.join(path)).unwrap().ino();
    assert_eq!(ino("usr/bin/tool"), ino("usr/bin/tool-again"));
    assert_eq!(ino("usr/lib/data/f0003"), ino("var/lib/linked"));
    assert_eq!(ino("usr/lib/data/f0003"), ino("etc/linked"));
    assert_eq!(fs::metadata(dest.join("etc/linked")).unwrap().nlink(), 3);
    let mtime = fs::metadata(dest.join("usr/lib/data/f0100"))
        .unwrap()
        .mtime();
    assert_eq!(mtime as u64, EPOCH);
    assert_eq!(
        fs::read_link(dest.join("etc/absolute")).unwrap(),
        Path::new("/usr/bin/tool")
    );
    if require((!is_root()).then(|| "device nodes and owners need root".to_owned())) {
        let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        let hostname = fs::metadata(dest.join("etc/hostname")).unwrap();
        assert_eq!((hostname.uid(), hostname.gid()), (1000, 1001));
    }
}

#[test]
fn two_writes_in_two_stores_give_identical_bytes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let first = Store::open(&work.path().join("one")).unwrap();
    let second = Store::open(&work.path().join("two")).unwrap();
    let (report_one, one) = write(&first, &ingest(&first, &src));
    let (report_two, two) = write(&second, &ingest(&second, &src));
    assert_eq!(report_two.reused(), 0);
    assert_eq!(one, two);
    assert_eq!(report_one.blob, report_two.blob);
    assert_eq!(keys(&report_one), keys(&report_two));
}

#[test]
fn a_changed_file_recompresses_exactly_one_segment() {
    if !require(missing_tools()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let store = Store::open(&work.path().join("store")).unwrap();
    let (before, _) = write(&store, &ingest(&store, &src));

    let changed = src.join("usr/lib/data/f0120");
    let mut bytes = fs::read(&changed).unwrap();
    bytes[10] ^= 0xFF;
    fs::write(&changed, &bytes).unwrap();
    let manifest = ingest(&store, &src);
    let (after, initrd) = write(&store, &manifest);
    assert_eq!(after.segments.len(), before.segments.len());
    assert_eq!(after.compressed(), 1, "{}", after.summary());
    assert_eq!(after.reused(), before.segments.len() - 1);
    assert_eq!(
        after.summary(),
        format!(
            "{} segments, {} reused, 1 compressed",
            after.segments.len(),
            after.segments.len() - 1
        )
    );

    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    unpack(&initrd, &dest);
    assert_eq!(fs::read(dest.join("usr/lib/data/f0120")).unwrap(), bytes);
    let unpacked = ingest(&store, &dest);
    if require((!is_root()).then(|| "owners need root".to_owned())) {
        assert_eq!(comparable(&unpacked), comparable(&manifest));
    }
}

#[test]
fn a_file_inserted_at_the_start_leaves_the_later_segments_unchanged() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let store = Store::open(&work.path().join("store")).unwrap();
    let (before, _) = write(&store, &ingest(&store, &src));

    // Right after `.` in path order.
    fs::write(src.join("0-first"), content(7, 5000)).unwrap();
    let (after, _) = write(&store, &ingest(&store, &src));
    let old = keys(&before);
    let new = keys(&after);
    let new_set: BTreeSet<Digest> = new.iter().copied().collect();
    assert!(
        old[1..].iter().all(|k| new_set.contains(k)),
        "later segments kept"
    );
    assert_eq!(&new[new.len() - (old.len() - 1)..], &old[1..]);
    assert!(after.compressed() <= 2, "{}", after.summary());
    assert!(after.segments[0].first_path == ".");
}

#[test]
fn a_hardlink_group_spanning_a_boundary_stays_in_one_segment() {
    if !require(missing_tools()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for dir in ["a", "m", "z"] {
        fs::create_dir_all(src.join(dir)).unwrap();
    }
    fs::write(src.join("a/first"), content(1, 100)).unwrap();
    // Files at least as long as the target: each one starts a segment.
    for i in 0..6 {
        fs::write(src.join(format!("m/big{i}")), content(10 + i, 20_000)).unwrap();
    }
    fs::hard_link(src.join("a/first"), src.join("z/last")).unwrap();
    let store = Store::open(&work.path().join("store")).unwrap();
    let manifest = ingest(&store, &src);
    let (report, initrd) = write(&store, &manifest);
    assert!(report.segments.len() >= 6, "{}", report.summary());

    let segments = list(&initrd);
    let holding = |name: &str| {
        segments
            .iter()
            .position(|names| names.iter().any(|n| n == name))
            .unwrap()
    };
    assert_eq!(holding("a/first"), holding("z/last"));
    // Written together where the last member is, after the big files.
    assert!(holding("a/first") > holding("m/big0"));

    let dest = work.path().join("dest");
    fs::create_dir(&dest).unwrap();
    unpack(&initrd, &dest);
    let first = fs::metadata(dest.join("a/first")).unwrap();
    let last = fs::metadata(dest.join("z/last")).unwrap();
    assert_eq!(first.ino(), last.ino());
    assert_eq!(first.nlink(), 2);
    assert_eq!(fs::read(dest.join("z/last")).unwrap(), content(1, 100));
}

#[test]
fn every_entry_kind_has_the_header_the_kernel_reads() {
    if !require(missing_tools()) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let store = Store::open(&work.path().join("store")).unwrap();
    let (_, initrd) = write(&store, &ingest(&store, &src));
    // `cpio -tv` shows what each header says.
    let mut modes: BTreeMap<String, String> = BTreeMap::new();
    for archive in archives(&initrd) {
        let text = String::from_utf8(pipe("cpio", &["-tv", "--quiet"], &archive, None)).unwrap();
        for line in text.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = if fields[0].starts_with('l') {
                fields[fields.len() - 3]
            } else {
                fields[fields.len() - 1]
            };
            modes.insert(name.to_owned(), fields[0].to_owned());
        }
    }
    assert_eq!(modes["usr/bin/su"], "-rwsr-xr-x");
    assert_eq!(modes["usr/bin/link"], "lrwxrwxrwx");
    assert_eq!(modes["var/lib/fifo"], "prw-r--r--");
    assert_eq!(modes["etc/empty"], "-rw-r--r--");
    assert!(
        !modes.contains_key("var/lib/socket"),
        "sockets are left out"
    );
    if require((!is_root()).then(|| "device nodes need root".to_owned())) {
        assert_eq!(modes["dev/null"], "crw-rw-rw-");
        assert_eq!(modes["dev/loop0"], "brw-rw----");
    }
}

/// A kernel to boot: `KILN_TEST_KERNEL`, else the newest `/boot/vmlinuz-*`, else Debian's from
/// the mirror (see `support::debian`).
fn test_kernel() -> Result<std::path::PathBuf, String> {
    if let Some(path) = std::env::var_os("KILN_TEST_KERNEL") {
        return Ok(path.into());
    }
    let mut kernels: Vec<_> = fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    match kernels.pop() {
        Some(kernel) => Ok(kernel),
        None => support::debian::boot_files()
            .map(|files| files.kernel)
            .map_err(|why| {
                format!("no kernel in /boot and none from the mirror ({why}): set KILN_TEST_KERNEL")
            }),
    }
}

fn missing_for_boot() -> Option<String> {
    if let Some(missing) = missing_tools() {
        return Some(missing);
    }
    if !is_root() {
        return Some("the initrd needs /dev/console, a device node: root only".to_owned());
    }
    if let Err(reason) = test_kernel() {
        return Some(reason);
    }
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed (package {package})"));
        }
    }
    None
}

#[test]
fn the_kernel_unpacks_every_segment() {
    if !require(missing_for_boot()) {
        return;
    }
    let kernel = test_kernel().unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    for dir in ["bin", "dev", "a", "data", "z"] {
        fs::create_dir_all(src.join(dir)).unwrap();
    }
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    fs::copy(busybox.trim(), src.join("bin/busybox")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("dev/console"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(5, 1),
    )
    .unwrap();
    fs::write(src.join("a/first"), "linked\n").unwrap();
    for i in 0..120 {
        fs::write(src.join(format!("data/f{i:04}")), content(i, 3000)).unwrap();
    }
    fs::hard_link(src.join("a/first"), src.join("z/last")).unwrap();
    symlink("a/first", src.join("l")).unwrap();
    let init = "#!/bin/busybox sh\n\
        B=/bin/busybox\n\
        echo KILN-COUNT $($B find / -xdev ! -path '/proc*' ! -path '/root*' | $B wc -l)\n\
        echo KILN-LINK $($B stat -c '%i %h' /a/first) $($B stat -c '%i %h' /z/last) $($B cat /z/last)\n\
        echo KILN-DATA $($B md5sum /data/f0099)\n\
        echo KILN-SYMLINK $($B readlink /l)\n\
        $B poweroff -f\n";
    fs::write(src.join("init"), init).unwrap();
    fs::set_permissions(src.join("init"), fs::Permissions::from_mode(0o755)).unwrap();

    let store = Store::open(&work.path().join("store")).unwrap();
    let manifest = ingest(&store, &src);
    let (report, initrd) = write(&store, &manifest);
    assert!(report.segments.len() > 5, "{}", report.summary());
    let initrd_path = work.path().join("initrd");
    fs::write(&initrd_path, &initrd).unwrap();

    let mut qemu = Command::new("timeout");
    qemu.args([
        "120",
        "qemu-system-x86_64",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd_path)
    .args(["-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=3"]);
    // Emulated, not KVM: a few seconds to boot, and it works inside VMs where nested KVM hangs.
    qemu.args(["-cpu", "max"]);
    let output = qemu.stdin(Stdio::null()).output().unwrap();
    let console = String::from_utf8_lossy(&output.stdout).replace('\r', "");
    let line = |tag: &str| {
        console
            .lines()
            .find_map(|l| l.find(tag).map(|at| &l[at + tag.len()..]))
            .unwrap_or_else(|| panic!("no `{tag}` line; console:\n{console}"))
            .trim()
            .to_owned()
    };
    // Every entry of the tree, the root included (`find` lists `/`), is there.
    let entries = manifest.len();
    let count: usize = line("KILN-COUNT").parse().unwrap();
    assert_eq!(count, entries, "console:\n{console}");
    let link: Vec<&str> = line("KILN-LINK").leak().split(' ').collect();
    assert_eq!(link[0], link[2], "one inode");
    assert_eq!((link[1], link[3], link[4]), ("2", "2", "linked"));
    let md5 = String::from_utf8(pipe("md5sum", &[], &content(99, 3000), None)).unwrap();
    let expected = md5.split_whitespace().next().unwrap().to_owned();
    assert!(
        line("KILN-DATA").starts_with(&expected),
        "console:\n{console}"
    );
    assert_eq!(line("KILN-SYMLINK"), "a/first");
}
