//! The initrd stage (also `Format=cpio`): a tree as a deterministic, zstd-compressed newc cpio
//! archive, cut into segments that are cached one by one, so a one-file change recompresses one
//! segment.
//!
//! The archive is a sequence of segments ([`segments`]), each a complete newc archive ([`newc`])
//! with its own `TRAILER!!!`, compressed as exactly one zstd frame. Linux unpacks that:
//! `init/initramfs.c` decompresses one frame per compressed archive (`lib/decompress_unzstd.c`
//! decodes a single frame and reports how much it consumed), requires the archive inside to end
//! in a trailer, then goes on with the next one, skipping zero padding between them. It forgets
//! the inodes it has seen at each trailer, so a hard link group never crosses a segment.
//!
//! Segments are compressed in parallel; the initrd is their concatenation, written to the
//! stage's scratch directory and moved into the store. Each segment is then recorded in the
//! action cache under its key (the digest of everything its bytes depend on, see
//! [`Segment::key`]) as a range of that initrd, so its bytes are stored once: the next initrd
//! copies a cached segment from the initrd that holds it.
//!
//! `zstd -dc initrd | cpio -t` lists the first segment only (GNU cpio stops at the first
//! trailer); [`split_frames`] splits an initrd into its segments for tools. Extended attributes
//! are not kept: newc has no field for them.
//!
//! ```no_run
//! use kiln_stages::initrd::{InitrdOptions, write_initrd};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = kiln_cache::Store::open("/var/cache/kiln".as_ref())?;
//! let manifest = store.ingest_dir("/srv/root".as_ref(), Default::default())?;
//! let scratch = tempfile::tempdir()?;
//! let opts = InitrdOptions { mtime: 1_700_000_000, ..InitrdOptions::default() };
//! let report = write_initrd(&store, &manifest, &opts, scratch.path())?;
//! println!("{}: {}", report.blob, report.summary());
//! # Ok(())
//! # }
//! ```

mod error;
mod frames;
pub mod newc;
mod segments;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use kiln_cache::{ActionResult, BlobId, Digest, Manifest, OutputKind, PutMode, Store};
use kiln_engine::{Input, Stage, StageContext, StageError};
use rayon::prelude::*;
use zstd::zstd_safe::CParameter;

pub use error::InitrdError;
pub use frames::split_frames;
pub use segments::{Segment, plan};

/// The zstd level used unless the recipe sets one, chosen by measurement on a Debian bookworm
/// root tree (686 MB, `initrd_bench --sweep`): level 3 is the lowest whose initrd is no larger
/// than `find | sort | cpio -o -H newc | zstd -T2 -3` (212.7 MB against 213.5 MB, compression
/// 3.4 s of CPU); level 2 is 3.8 % larger for 2.7 s, level 1 8.8 % larger for 2.3 s, level 4
/// 0.4 % smaller for 3.9 s, level 6 6 % smaller for 9.1 s. It is also zstd's and mkosi's default.
pub const DEFAULT_LEVEL: i32 = 3;

/// The length segments average before compression. On the same tree, 4 MiB segments (164) make
/// the initrd 0.9 % larger than 16 MiB ones (38) and 2 % smaller than 1 MiB ones (510), while
/// a one-file change recompresses a quarter of what 16 MiB would need.
pub const DEFAULT_SEGMENT_TARGET: u64 = 4 << 20;

/// How [`write_initrd`] packs a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdOptions {
    /// zstd compression level.
    pub level: i32,
    /// The mtime of every entry: SOURCE_DATE_EPOCH.
    pub mtime: u64,
    /// The length segments average before compression (see [`segments`]).
    pub segment_target: u64,
}

impl Default for InitrdOptions {
    fn default() -> InitrdOptions {
        InitrdOptions {
            level: DEFAULT_LEVEL,
            mtime: 0,
            segment_target: DEFAULT_SEGMENT_TARGET,
        }
    }
}

/// One segment of a written initrd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The segment's key in the action cache.
    pub key: Digest,
    /// Where the compressed segment starts in the initrd.
    pub offset: u64,
    /// The first entry's name in the archive.
    pub first_path: String,
    /// Entries in the segment.
    pub entries: usize,
    /// Bytes before compression.
    pub uncompressed: u64,
    /// Bytes after compression.
    pub compressed: u64,
    /// Whether the compressed segment came from the cache.
    pub reused: bool,
}

/// What [`write_initrd`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitrdReport {
    /// The initrd.
    pub blob: BlobId,
    /// Its length.
    pub size: u64,
    /// Every segment, in order.
    pub segments: Vec<SegmentReport>,
}

impl InitrdReport {
    /// Segments taken from the cache.
    pub fn reused(&self) -> usize {
        self.segments.iter().filter(|s| s.reused).count()
    }

    /// Segments compressed by this run.
    pub fn compressed(&self) -> usize {
        self.segments.len() - self.reused()
    }

    /// Length of the archive before compression.
    pub fn uncompressed(&self) -> u64 {
        self.segments.iter().map(|s| s.uncompressed).sum()
    }

    /// `57 segments, 56 reused, 1 compressed`.
    pub fn summary(&self) -> String {
        format!(
            "{} segments, {} reused, {} compressed",
            self.segments.len(),
            self.reused(),
            self.compressed()
        )
    }
}

/// Writes `manifest` as an initrd into the store, reusing every segment the cache holds.
/// `scratch` is an empty directory for the file being assembled.
pub fn write_initrd(
    store: &Store,
    manifest: &Manifest,
    opts: &InitrdOptions,
    scratch: &Path,
) -> Result<InitrdReport, InitrdError> {
    let levels = zstd::compression_level_range();
    if !levels.contains(&opts.level) {
        return Err(InitrdError::Level {
            level: opts.level,
            min: *levels.start(),
            max: *levels.end(),
        });
    }
    let segments = plan(manifest, opts.mtime, opts.segment_target)?;
    let keys: Vec<Digest> = segments.par_iter().map(|s| s.key(opts.level)).collect();

    let index = store.index()?;
    let mut cached = Vec::with_capacity(segments.len());
    for key in &keys {
        let found = index.lookup_action(key)?;
        cached.push(found.and_then(|found| SegmentLocation::read(store, &found.output)));
    }

    // Compress what the cache lacks, in parallel, each segment appended to a spill file as it
    // is done (in whatever order), so that memory holds one segment per worker.
    let spill = Spill::create(&scratch.join("segments.zst"))?;
    let sources: Vec<SegmentSource> = segments
        .par_iter()
        .zip(cached)
        .map_init(
            || Compressor::new(opts.level),
            |compressor, (segment, cached)| match cached {
                Some(location) => Ok(SegmentSource::Cached(location)),
                None => {
                    let bytes = compressor.compress(store, segment)?;
                    let offset = spill.append(&bytes)?;
                    let len = bytes.len() as u64;
                    Ok(SegmentSource::Spilled { offset, len })
                }
            },
        )
        .collect::<Result<_, InitrdError>>()?;

    let mut reports: Vec<SegmentReport> = segments
        .iter()
        .zip(&keys)
        .zip(&sources)
        .map(|((segment, key), source)| SegmentReport {
            key: *key,
            first_path: segment.first_path.clone(),
            entries: segment.entries,
            uncompressed: segment.len,
            compressed: source.len(),
            // Filled in by `concatenate`.
            offset: 0,
            reused: matches!(source, SegmentSource::Cached(_)),
        })
        .collect();

    let path = scratch.join("initrd.cpio.zst");
    let size = concatenate(store, &mut reports, &sources, &spill, &path)?;
    spill.remove();
    let blob = store.put_file(&path, PutMode::Move)?;
    // The initrd is stored: now the cache may name the new segments' places in it.
    for report in reports.iter().filter(|report| !report.reused) {
        let location = SegmentLocation {
            initrd: blob,
            offset: report.offset,
            len: report.compressed,
        };
        let result = ActionResult {
            output: store.put_bytes(location.encode().as_bytes())?,
            kind: OutputKind::Blob,
        };
        index.record_anchored_action(&report.key, result, &blob)?;
    }
    Ok(InitrdReport {
        blob,
        size,
        segments: reports,
    })
}

/// Where a compressed segment is kept: a range of an initrd the store holds. The segment's
/// action cache entry names a small blob holding this, so that a segment's bytes are stored
/// once, inside the initrd, and not a second time as a blob of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegmentLocation {
    initrd: BlobId,
    offset: u64,
    len: u64,
}

impl SegmentLocation {
    const MAGIC: &str = "kiln initrd segment 1";

    fn encode(&self) -> String {
        format!(
            "{}\n{} {} {}\n",
            Self::MAGIC,
            self.initrd,
            self.offset,
            self.len
        )
    }

    fn decode(text: &str) -> Option<SegmentLocation> {
        let mut lines = text.lines();
        if lines.next()? != Self::MAGIC {
            return None;
        }
        let mut fields = lines.next()?.split(' ');
        let location = SegmentLocation {
            initrd: fields.next()?.parse().ok()?,
            offset: fields.next()?.parse().ok()?,
            len: fields.next()?.parse().ok()?,
        };
        (fields.next().is_none() && lines.next().is_none()).then_some(location)
    }

    /// The location `blob` records, if it and the initrd it names are in the store and the
    /// range lies inside that initrd; anything else is a cache miss.
    fn read(store: &Store, blob: &BlobId) -> Option<SegmentLocation> {
        let location =
            SegmentLocation::decode(&String::from_utf8(store.read_blob(blob).ok()?).ok()?)?;
        let initrd_len = std::fs::metadata(store.blob_path(&location.initrd).ok()?)
            .ok()?
            .len();
        (location.len > 0 && location.offset.checked_add(location.len)? <= initrd_len)
            .then_some(location)
    }
}

/// A segment's compressed bytes: in a stored initrd, or just compressed into the spill file.
enum SegmentSource {
    Cached(SegmentLocation),
    Spilled { offset: u64, len: u64 },
}

impl SegmentSource {
    fn len(&self) -> u64 {
        match self {
            SegmentSource::Cached(location) => location.len,
            SegmentSource::Spilled { len, .. } => *len,
        }
    }
}

/// The scratch file new segments are appended to by the compressing workers.
struct Spill {
    path: PathBuf,
    file: File,
    end: Mutex<u64>,
}

impl Spill {
    fn create(path: &Path) -> Result<Spill, InitrdError> {
        // Read back by copy_file_range, so opened for reading too.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| InitrdError::Write {
                path: path.to_owned(),
                source,
            })?;
        Ok(Spill {
            path: path.to_owned(),
            file,
            end: Mutex::new(0),
        })
    }

    /// Appends `bytes`; returns where they start.
    fn append(&self, bytes: &[u8]) -> Result<u64, InitrdError> {
        use std::os::unix::fs::FileExt;
        let offset = {
            let mut end = self.end.lock().unwrap_or_else(PoisonError::into_inner);
            let offset = *end;
            *end += bytes.len() as u64;
            offset
        };
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| InitrdError::Write {
                path: self.path.clone(),
                source,
            })?;
        Ok(offset)
    }

    fn remove(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One segment as the initrd holds it: one zstd frame with its content size and checksum.
pub fn compress_segment(
    store: &Store,
    segment: &Segment,
    level: i32,
) -> Result<Vec<u8>, InitrdError> {
    Compressor::new(level).compress(store, segment)
}

/// Segments up to this long are assembled in memory and compressed in one call, which is
/// faster than streaming (zstd then never has to treat its window as split); longer ones (a
/// segment holding a huge file) are streamed.
const IN_MEMORY_SEGMENT: u64 = 64 << 20;

/// One worker's compression state, reused from segment to segment.
struct Compressor {
    level: i32,
    context: Option<zstd::bulk::Compressor<'static>>,
    input: Vec<u8>,
}

impl Compressor {
    fn new(level: i32) -> Compressor {
        Compressor {
            level,
            context: None,
            input: Vec::new(),
        }
    }

    /// One segment as one zstd frame, with its content size and checksum.
    fn compress(&mut self, store: &Store, segment: &Segment) -> Result<Vec<u8>, InitrdError> {
        let err = |source| InitrdError::Compress { source };
        if segment.len > IN_MEMORY_SEGMENT {
            return compress_streaming(store, segment, self.level);
        }
        let context = match &mut self.context {
            Some(context) => context,
            none => {
                let mut context = zstd::bulk::Compressor::new(self.level).map_err(err)?;
                context
                    .set_parameter(CParameter::ChecksumFlag(true))
                    .map_err(err)?;
                context
                    .set_parameter(CParameter::ContentSizeFlag(true))
                    .map_err(err)?;
                none.insert(context)
            }
        };
        self.input.clear();
        segment.write_to(store, &mut self.input)?;
        context.compress(&self.input).map_err(err)
    }
}

/// [`Compressor::compress`] for a segment too long to hold in memory.
fn compress_streaming(
    store: &Store,
    segment: &Segment,
    level: i32,
) -> Result<Vec<u8>, InitrdError> {
    let err = |source| InitrdError::Compress { source };
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), level).map_err(err)?;
    encoder.include_checksum(true).map_err(err)?;
    encoder.include_contentsize(true).map_err(err)?;
    encoder
        .set_pledged_src_size(Some(segment.len))
        .map_err(err)?;
    {
        let mut buffered = BufWriter::with_capacity(1 << 20, &mut encoder);
        segment.write_to(store, &mut buffered)?;
        buffered.flush().map_err(err)?;
    }
    encoder.finish().map_err(err)
}

/// Writes the segments one after the other to `path`, in parallel at their offsets: cached
/// ones copied from the initrds that hold them, new ones from the spill file. Fills in each
/// segment's offset and returns the total length.
fn concatenate(
    store: &Store,
    reports: &mut [SegmentReport],
    sources: &[SegmentSource],
    spill: &Spill,
    path: &Path,
) -> Result<u64, InitrdError> {
    let write_err = |source| InitrdError::Write {
        path: path.to_owned(),
        source,
    };
    // Cached segments were compressed by an earlier build: hash the initrds they come from
    // before their bytes go into the image (a damaged one fails the stage and is removed, and
    // the next build compresses its segments again).
    let initrds: std::collections::BTreeSet<BlobId> = sources
        .iter()
        .filter_map(|source| match source {
            SegmentSource::Cached(location) => Some(location.initrd),
            SegmentSource::Spilled { .. } => None,
        })
        .collect();
    store.verify_blobs(&initrds)?;
    let mut open = std::collections::BTreeMap::new();
    for initrd in initrds {
        open.insert(initrd, store.open_blob(&initrd)?);
    }
    let mut offset = 0;
    for report in reports.iter_mut() {
        report.offset = offset;
        offset += report.compressed;
    }
    let out = File::create(path).map_err(write_err)?;
    out.set_len(offset).map_err(write_err)?;
    reports
        .par_iter()
        .zip(sources)
        .try_for_each(|(report, source)| match source {
            SegmentSource::Cached(location) => copy_range(
                &open[&location.initrd],
                location.offset,
                &out,
                report.offset,
                location.len,
            ),
            SegmentSource::Spilled { offset, len } => {
                copy_range(&spill.file, *offset, &out, report.offset, *len)
            }
        })
        .map_err(write_err)?;
    Ok(offset)
}

/// Copies `len` bytes of `from` at `from_offset` to `to` at `to_offset`: in the kernel
/// (copy_file_range), else through a buffer.
fn copy_range(
    from: &File,
    from_offset: u64,
    to: &File,
    to_offset: u64,
    len: u64,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let end = from_offset + len;
    let (mut read, mut write) = (from_offset, to_offset);
    while read < end {
        let want = usize::try_from(end - read)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut read), to, Some(&mut write), want) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::XDEV | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL)
                if read == from_offset =>
            {
                let mut buf = vec![0; 1 << 20];
                while read < end {
                    let want = usize::try_from(end - read)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let n = from.read_at(&mut buf[..want], read)?;
                    if n == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    to.write_all_at(&buf[..n], write)?;
                    read += n as u64;
                    write += n as u64;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Bumped whenever the same inputs give other bytes (the segment format, the default segment
/// length); part of the stage key.
const STAGE_VERSION: u32 = 1;

/// The initrd stage: the tree of `base` as an initrd blob, for a UKI's `.initrd` or as the
/// image of `Format=cpio`.
///
/// Inputs: `tree` (the stage `base`), `SOURCE_DATE_EPOCH`, `CompressLevel` and `zstd` (the
/// zstd library's version: another version may compress differently). The stage logs how many
/// segments it reused, e.g. `57 segments, 56 reused, 1 compressed`.
pub struct InitrdStage {
    pub name: String,
    /// The stage whose tree is packed.
    pub base: String,
    pub source_date_epoch: u64,
    /// zstd level (mkosi's `CompressLevel=`).
    pub level: i32,
}

impl Stage for InitrdStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "initrd"
    }

    fn version(&self) -> u32 {
        STAGE_VERSION * 1000 + segments::SEGMENT_FORMAT_VERSION
    }

    fn inputs(&self) -> Vec<Input> {
        vec![
            Input::stage("tree", &self.base),
            Input::value("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string()),
            Input::value("CompressLevel", self.level.to_string()),
            Input::value("zstd", zstd::zstd_safe::version_string()),
        ]
    }

    fn output_kind(&self) -> OutputKind {
        OutputKind::Blob
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Digest, StageError> {
        let manifest = ctx.store.manifest(&ctx.input("tree")?)?;
        let opts = InitrdOptions {
            level: self.level,
            mtime: self.source_date_epoch,
            ..InitrdOptions::default()
        };
        let report =
            write_initrd(ctx.store, &manifest, &opts, ctx.scratch).map_err(StageError::failed)?;
        ctx.log.note(&report.summary());
        Ok(report.blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::{Entry, EntryKind};

    fn tree(store: &Store, files: usize, seed: u8) -> Manifest {
        let mut entries = vec![
            Entry::new("", EntryKind::Dir, 0o755),
            Entry::new("usr", EntryKind::Dir, 0o755),
        ];
        for i in 0..files {
            let content: Vec<u8> = (0..3000)
                .map(|j| ((i * 7 + j) % 251) as u8 ^ seed)
                .collect();
            let blob = store.put_bytes(&content).unwrap();
            entries.push(Entry::new(
                format!("usr/f{i:04}"),
                EntryKind::File {
                    blob,
                    size: content.len() as u64,
                },
                0o644,
            ));
        }
        Manifest::from_entries(entries).unwrap()
    }

    fn opts() -> InitrdOptions {
        InitrdOptions {
            level: 3,
            mtime: 1_700_000_000,
            segment_target: 16 << 10,
        }
    }

    #[test]
    fn a_second_write_reuses_every_segment_and_gives_the_same_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let manifest = tree(&store, 200, 0);
        let first = write_initrd(&store, &manifest, &opts(), dir.path()).unwrap();
        assert!(first.segments.len() > 5, "{}", first.summary());
        assert_eq!(first.reused(), 0);
        let again = write_initrd(&store, &manifest, &opts(), dir.path()).unwrap();
        assert_eq!(again.blob, first.blob);
        assert_eq!(again.compressed(), 0);
        assert_eq!(again.segments.len(), first.segments.len());
        assert_eq!(
            again.summary(),
            format!(
                "{} segments, {} reused, 0 compressed",
                first.segments.len(),
                first.segments.len()
            )
        );
        let bytes = store.read_blob(&first.blob).unwrap();
        assert_eq!(bytes.len() as u64, first.size);
        assert_eq!(split_frames(&bytes).unwrap().len(), first.segments.len());
        let whole = zstd::decode_all(&bytes[..]).unwrap();
        assert_eq!(whole.len() as u64, first.uncompressed());
    }

    fn object_bytes(store: &Store) -> u64 {
        walkdir::WalkDir::new(store.root().join("v1/objects"))
            .into_iter()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().is_file())
            .map(|entry| entry.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn segments_are_stored_once_inside_the_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let manifest = tree(&store, 200, 3);
        let files = object_bytes(&store);
        let report = write_initrd(&store, &manifest, &opts(), dir.path()).unwrap();
        let added = object_bytes(&store) - files;
        // The initrd, and a line per segment saying where it is.
        let locations = added - report.size;
        assert!(
            locations <= 128 * report.segments.len() as u64,
            "{added} bytes added for a {}-byte initrd of {} segments",
            report.size,
            report.segments.len()
        );
    }

    #[test]
    fn segments_of_a_removed_initrd_are_compressed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let manifest = tree(&store, 200, 4);
        let first = write_initrd(&store, &manifest, &opts(), dir.path()).unwrap();
        std::fs::remove_file(store.blob_path(&first.blob).unwrap()).unwrap();
        let again = write_initrd(&store, &manifest, &opts(), dir.path()).unwrap();
        assert_eq!(again.reused(), 0, "{}", again.summary());
        assert_eq!(again.blob, first.blob);
        assert!(store.has_blob(&first.blob));
    }

    /// `manifest` with its last file's content changed.
    fn with_last_file_changed(store: &Store, manifest: &Manifest) -> Manifest {
        let mut entries: Vec<Entry> = manifest.entries().cloned().collect();
        let content = b"changed".to_vec();
        entries.last_mut().unwrap().kind = EntryKind::File {
            blob: store.put_bytes(&content).unwrap(),
            size: content.len() as u64,
        };
        Manifest::from_entries(entries).unwrap()
    }

    #[test]
    fn a_changed_file_reuses_the_other_segments_from_the_last_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let manifest = tree(&store, 200, 5);
        let first = write_initrd(&store, &manifest, &opts(), dir.path()).unwrap();
        let changed = with_last_file_changed(&store, &manifest);
        let second = write_initrd(&store, &changed, &opts(), dir.path()).unwrap();
        assert_eq!(second.compressed(), 1, "{}", second.summary());
        assert_ne!(first.blob, second.blob);
        // The same bytes a store that never saw the first initrd writes.
        let fresh = tempfile::tempdir().unwrap();
        let clean = Store::open(&fresh.path().join("store")).unwrap();
        let changed_clean = with_last_file_changed(&clean, &tree(&clean, 200, 5));
        let from_scratch = write_initrd(&clean, &changed_clean, &opts(), fresh.path()).unwrap();
        assert_eq!(from_scratch.reused(), 0);
        assert_eq!(from_scratch.blob, second.blob);
        // And a third write takes its segments from both earlier initrds.
        let third = write_initrd(&store, &changed, &opts(), dir.path()).unwrap();
        assert_eq!(third.compressed(), 0, "{}", third.summary());
        assert_eq!(third.blob, second.blob);
    }

    #[test]
    fn a_segment_location_is_read_back_only_when_whole() {
        let location = SegmentLocation {
            initrd: Digest::of_bytes(b"initrd"),
            offset: 12,
            len: 34,
        };
        assert_eq!(SegmentLocation::decode(&location.encode()), Some(location));
        for bad in [
            String::new(),
            "kiln initrd segment 1\n".to_owned(),
            location.encode().replace(" 34", " x"),
            location.encode().replace(" 34", " 34 5"),
            format!("{}extra\n", location.encode()),
            location.encode().replace("segment 1", "segment 2"),
        ] {
            assert_eq!(SegmentLocation::decode(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn streamed_and_in_memory_segments_hold_the_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let manifest = tree(&store, 20, 1);
        let segment = &plan(&manifest, 1, 1 << 20).unwrap()[0];
        let archive = segment.to_bytes(&store).unwrap();
        let in_memory = Compressor::new(3).compress(&store, segment).unwrap();
        let streamed = compress_streaming(&store, segment, 3).unwrap();
        for frame in [&in_memory, &streamed] {
            assert_eq!(split_frames(frame).unwrap().len(), 1);
            assert_eq!(zstd::decode_all(&frame[..]).unwrap(), archive);
            let size = zstd::zstd_safe::get_frame_content_size(frame).unwrap();
            assert_eq!(
                size,
                Some(archive.len() as u64),
                "content size in the header"
            );
        }
    }

    #[test]
    fn a_bad_level_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let manifest = tree(&store, 1, 0);
        let opts = InitrdOptions {
            level: 99,
            ..opts()
        };
        assert!(matches!(
            write_initrd(&store, &manifest, &opts, dir.path()),
            Err(InitrdError::Level { level: 99, .. })
        ));
    }

    #[test]
    fn the_stage_packs_its_tree_and_logs_what_it_reused() {
        struct Lines(std::sync::Mutex<Vec<String>>);
        impl kiln_engine::StageLog for Lines {
            fn line(&self, line: &str) {
                self.0.lock().unwrap().push(line.to_owned());
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let tree = store.put_manifest(&tree(&store, 50, 2)).unwrap();
        let stage = InitrdStage {
            name: "initrd".into(),
            base: "finalize".into(),
            source_date_epoch: 5,
            level: 3,
        };
        let inputs = [("tree".to_owned(), tree)].into_iter().collect();
        let values = Default::default();
        let log = Lines(Default::default());
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let ctx = StageContext {
            store: &store,
            project_dir: dir.path(),
            scratch: &scratch,
            inputs: &inputs,
            values: &values,
            log: &log,
        };
        let blob = stage.run(&ctx).unwrap();
        let again = stage.run(&ctx).unwrap();
        assert_eq!(blob, again);
        let bytes = store.read_blob(&blob).unwrap();
        assert!(!split_frames(&bytes).unwrap().is_empty());
        let lines = log.0.into_inner().unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with(" reused, 0 compressed"), "{lines:?}");
    }

    #[test]
    fn the_stage_declares_its_inputs() {
        let stage = InitrdStage {
            name: "initrd".into(),
            base: "finalize".into(),
            source_date_epoch: 5,
            level: 3,
        };
        assert_eq!(stage.kind(), "initrd");
        assert_eq!(stage.output_kind(), OutputKind::Blob);
        assert_eq!(
            stage.inputs(),
            vec![
                Input::stage("tree", "finalize"),
                Input::value("SOURCE_DATE_EPOCH", "5"),
                Input::value("CompressLevel", "3"),
                Input::value("zstd", zstd::zstd_safe::version_string()),
            ]
        );
    }
}
