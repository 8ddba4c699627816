//! What each fuzz target does with one input, shared by the cargo-fuzz targets in
//! `fuzz_targets/` and by the workspace's `tests/fuzz.rs`, which replays `fuzz/corpus/<target>/`
//! and a bounded run of mutations on stable Rust.
//!
//! Every reader is given any bytes and must answer with a value or an error, never a panic; on
//! top of that each checks what a successful read promises:
//!
//! | target | reader | also checked |
//! |---|---|---|
//! | `mkosi_conf` | `load_project` on a project holding only `mkosi.conf` | the recipe prints as RON and reads back equal; every label of an error lies inside its source |
//! | `recipe_ron` | `from_ron` (`kiln.ron`) | the recipe prints and reads back equal; error labels lie inside the text |
//! | `manifest_decode` | `Manifest::decode_canonical` (the store's tree objects) | a decoded manifest is valid and encodes to exactly the input |
//! | `tar_ingest` | `Store::ingest_tar` (package managers' base trees) | the manifest is valid: no path leaves the root, nothing lives below a symlink |
//! | `pe_inspect` | `uki::inspect` (`kiln inspect`) | the text and JSON forms render |
//! | `stub_assemble` | `uki::assemble_uki` given the bytes as its systemd-stub | a UKI it writes, `uki::inspect` reads |
//!
//! This file depends only on kiln's crates and the standard library, so that both the fuzz
//! package and the workspace's tests compile it as it is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_cache::{Manifest, Store};
use kiln_recipe::{LoadOptions, from_ron, load_project, to_ron};
use kiln_stages::host::reader::RealReaderHost;

/// The targets, by the names of their `fuzz_targets/*.rs` and `corpus/*` directories.
pub(crate) const TARGETS: [&str; 6] = [
    "mkosi_conf",
    "recipe_ron",
    "manifest_decode",
    "tar_ingest",
    "pe_inspect",
    "stub_assemble",
];

/// A private directory for the readers that read files, and a store for the tar reader.
pub(crate) struct Workdir {
    dir: PathBuf,
    store: Option<Store>,
    /// Inputs ingested into the current store; it is emptied now and then so that a long run
    /// does not fill the disk with the blobs of mutated archives.
    ingested: usize,
}

impl Workdir {
    /// Uses `dir` (created if missing; its contents are the workdir's own).
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Workdir {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("project")).expect("a private fuzzing directory");
        Workdir {
            dir,
            store: None,
            ingested: 0,
        }
    }

    /// Runs `target` on `data`; panics when a reader breaks its promise.
    pub(crate) fn run(&mut self, target: &str, data: &[u8]) {
        match target {
            "mkosi_conf" => self.mkosi_conf(data),
            "recipe_ron" => recipe_ron(data),
            "manifest_decode" => manifest_decode(data),
            "tar_ingest" => self.tar_ingest(data),
            "pe_inspect" => pe_inspect(data),
            "stub_assemble" => self.stub_assemble(data),
            other => panic!("no fuzz target `{other}`"),
        }
    }

    /// `data` as the systemd-stub of a UKI with small sections: the assembler writes a UKI or
    /// returns an error, and kiln reads back what it wrote.
    pub(crate) fn stub_assemble(&mut self, data: &[u8]) {
        use kiln_stages::uki::{UkiSection, assemble_uki};
        let stub = self.dir.join("stub");
        let out = self.dir.join("uki.efi");
        std::fs::write(&stub, data).expect("writing the stub");
        let sections = [
            UkiSection::bytes(".osrel", "ID=fuzz\n"),
            UkiSection::bytes(".uname", "6.1.0"),
            UkiSection::bytes(".linux", vec![0x90; 700]).with_virtual_size(Some(0x2000)),
            UkiSection::bytes(".sbat", vec![b's'; 300]),
        ];
        if assemble_uki(&stub, &sections, &out).is_ok() {
            let mut file = std::fs::File::open(&out).expect("the UKI just written");
            kiln_stages::uki::inspect(&mut file).expect("kiln reads the UKIs it writes");
        }
    }

    /// `mkosi.conf` with `data`, read as a project with an empty environment.
    pub(crate) fn mkosi_conf(&mut self, data: &[u8]) {
        let project = self.dir.join("project");
        std::fs::write(project.join("mkosi.conf"), data).expect("writing mkosi.conf");
        let options = LoadOptions {
            environment: Some(BTreeMap::new()),
            ..LoadOptions::default()
        };
        match load_project(&project, &options, &RealReaderHost) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    check_labels(warning);
                }
                let text = to_ron(&loaded.recipe);
                let again = from_ron(&text, "kiln.ron").unwrap_or_else(|error| {
                    panic!("the recipe printed as RON does not read back: {error}\n{text}")
                });
                assert_eq!(
                    again, loaded.recipe,
                    "the recipe read back from RON differs"
                );
            }
            Err(error) => check_labels(&error),
        }
    }

    /// `data` as a tar archive ingested into the store.
    pub(crate) fn tar_ingest(&mut self, data: &[u8]) {
        if self.store.is_none() || self.ingested >= 500 {
            self.store = None;
            let _ = std::fs::remove_dir_all(self.dir.join("store"));
            self.store = Some(Store::open(&self.dir.join("store")).expect("opening a store"));
            self.ingested = 0;
        }
        self.ingested += 1;
        let archive = self.dir.join("input.tar");
        std::fs::write(&archive, data).expect("writing the archive");
        let store = self.store.as_ref().expect("the store just opened");
        if let Ok(manifest) = store.ingest_tar(&archive) {
            manifest
                .validate()
                .expect("an ingested archive is a valid tree");
            assert!(
                manifest.root().is_some_and(|root| root.kind.is_dir()),
                "an ingested archive has a root directory"
            );
        }
    }

    /// The directory this workdir uses.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

/// The workdir of a fuzzing process: a private directory in `/dev/shm` (memory, so that the
/// readers' writes cost little). libFuzzer never drops it: remove `/dev/shm/kiln-fuzz-*` after
/// a run.
pub(crate) fn shared_workdir() -> &'static std::sync::Mutex<Workdir> {
    static WORKDIR: std::sync::OnceLock<std::sync::Mutex<Workdir>> = std::sync::OnceLock::new();
    WORKDIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/kiln-fuzz-{}", std::process::id()));
        std::sync::Mutex::new(Workdir::new(dir))
    })
}

/// `data` as `kiln.ron`.
pub(crate) fn recipe_ron(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match from_ron(text, "kiln.ron") {
        Ok(recipe) => {
            let printed = to_ron(&recipe);
            let again = from_ron(&printed, "kiln.ron").unwrap_or_else(|error| {
                panic!("the recipe printed as RON does not read back: {error}\n{printed}")
            });
            assert_eq!(again, recipe, "the recipe read back from RON differs");
        }
        Err(error) => check_labels(&error),
    }
}

/// `data` as a stored tree manifest.
pub(crate) fn manifest_decode(data: &[u8]) {
    if let Ok(manifest) = Manifest::decode_canonical(data) {
        manifest.validate().expect("a decoded manifest is valid");
        assert_eq!(
            manifest.encode_canonical(),
            data,
            "a decoded manifest encodes to its input"
        );
    }
}

/// `data` as a PE file given to `kiln inspect`.
pub(crate) fn pe_inspect(data: &[u8]) {
    let mut file = std::io::Cursor::new(data);
    if let Ok(inspection) = kiln_stages::uki::inspect(&mut file) {
        let _ = inspection.to_text();
        let _ = inspection.to_json();
    }
}

/// Every label of a report (and of the reports it relates) lies inside its source text, so
/// that rendering it shows the right line.
fn check_labels(diagnostic: &dyn miette::Diagnostic) {
    if let (Some(source), Some(labels)) = (diagnostic.source_code(), diagnostic.labels()) {
        for label in labels {
            source.read_span(label.inner(), 0, 0).unwrap_or_else(|_| {
                panic!(
                    "the label at {}+{} of `{diagnostic}` lies outside its source",
                    label.offset(),
                    label.len()
                )
            });
        }
    }
    if let Some(related) = diagnostic.related() {
        for inner in related {
            check_labels(inner);
        }
    }
}
