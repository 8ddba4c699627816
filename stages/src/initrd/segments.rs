//! Cutting a tree into segments: each one a complete newc archive of consecutive entries, cut at
//! boundaries that only the entries themselves decide.
//!
//! # Order
//!
//! Entries go in manifest order (a directory before its contents), except that the members of a
//! hard link group are written together at the position of the group's last member, the data on
//! that last member and size 0 on the others, as GNU cpio writes newc. Every earlier member's
//! directory is already written by then, so the order stays valid, and a group is one unit that
//! no boundary can split: the kernel forgets the inodes it has seen at each `TRAILER!!!`, so a
//! group cut in two would unpack as two files. The kernel links a member to the first one of its
//! inode and writes the data when it comes; GNU cpio defers the empty members until the data
//! arrives.
//!
//! # Boundaries
//!
//! A unit (an entry, or a whole hard link group) starts a new segment when the blake3 of its path
//! (the path it is written at), read as a number below 1, is below `unit length / target` (a unit
//! as long as the target always starts one). Segments thus average about the target length, and
//! whether a unit starts a segment depends on nothing but that unit: a file inserted, removed or
//! changed elsewhere never moves a boundary, and a changed file moves at most its own, rarely
//! (when its length crosses its threshold). The only other cut is a safety bound: a segment that
//! would grow past [`MAX_SEGMENT_FACTOR`] times the target is closed before the next unit.
//!
//! # Fields
//!
//! mtime is SOURCE_DATE_EPOCH for every entry; mode, uid and gid are the manifest's; device
//! numbers 0; directories have nlink 2, other entries 1 or the size of their hard link group.
//! Inode numbers are taken from the same blake3 of the entry's path (a group: of its last
//! member's path), moved to the next free number on a collision within the segment: they are
//! stable, unique within a segment as the kernel needs, and seldom equal across segments. The
//! root directory is written as `.`, so the kernel and GNU cpio apply its mode and owner to the
//! directory they unpack into; other names have no leading `/` or `./` (as GNU cpio stores the
//! output of `find .`). Sockets are left out (the kernel would create dead ones), symlinks in a
//! hard link group are written as separate symlinks, and extended attributes are dropped: newc
//! has no place for them.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};

use kiln_cache::{BlobId, Digest, Entry, EntryKind, Manifest, Store};

use super::error::InitrdError;
use super::newc::{self, Header, file_type};

/// Bumped whenever the bytes written for the same entries change; part of every segment key.
pub(super) const SEGMENT_FORMAT_VERSION: u32 = 1;

/// A segment is closed before it grows past this many times the target length.
pub(super) const MAX_SEGMENT_FACTOR: u64 = 8;

/// Length of the trailer entry (header and padded name).
const TRAILER_LEN: u64 = 124;

/// What follows an entry's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Data {
    None,
    /// A symlink's target.
    Inline(Vec<u8>),
    /// A regular file's content.
    Blob {
        id: BlobId,
        size: u64,
    },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::None => 0,
            Data::Inline(bytes) => bytes.len() as u64,
            Data::Blob { size, .. } => *size,
        }
    }
}

/// One entry as written: its encoded header (name and padding included) and its data.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    header: Vec<u8>,
    data: Data,
}

impl Record {
    fn len(&self) -> u64 {
        let data = self.data.len();
        self.header.len() as u64 + data + newc::padding(data as usize) as u64
    }
}

/// One segment: the entries of a complete archive, ready to be keyed and written.
#[derive(Debug, Clone)]
pub struct Segment {
    records: Vec<Record>,
    /// The path of the first entry written (`.` for the root).
    pub first_path: String,
    /// Entries written.
    pub entries: usize,
    /// Length of the uncompressed archive, trailer and padding included.
    pub len: u64,
}

impl Segment {
    /// The segment's key in the cache: everything its compressed bytes depend on, which is the
    /// format version, the zstd library and level, and every header with the blob or bytes
    /// that follow it. The action cache records under it where the segment lies in a stored
    /// initrd (a store that recorded the segment as a blob of its own used another context).
    pub fn key(&self, level: i32) -> Digest {
        let mut hasher = blake3::Hasher::new_derive_key("kiln initrd segment location");
        hasher.update(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        hasher.update(&zstd::zstd_safe::version_number().to_le_bytes());
        hasher.update(&level.to_le_bytes());
        hasher.update(&(self.records.len() as u64).to_le_bytes());
        for record in &self.records {
            // A header says its own length (the name size is one of its fields).
            hasher.update(&record.header);
            match &record.data {
                Data::None => {
                    hasher.update(&[0]);
                }
                Data::Inline(bytes) => {
                    hasher.update(&[1]);
                    hasher.update(&(bytes.len() as u64).to_le_bytes());
                    hasher.update(bytes);
                }
                Data::Blob { id, size } => {
                    hasher.update(&[2]);
                    hasher.update(&size.to_le_bytes());
                    hasher.update(id.as_bytes());
                }
            }
        }
        Digest::from(hasher.finalize())
    }

    /// Writes the uncompressed archive: every entry, the trailer, zeros up to 512 bytes.
    pub fn write_to(&self, store: &Store, out: &mut impl Write) -> Result<(), InitrdError> {
        let write_err = |source| InitrdError::Compress { source };
        for record in &self.records {
            out.write_all(&record.header).map_err(write_err)?;
            match &record.data {
                Data::None => {}
                Data::Inline(bytes) => out.write_all(bytes).map_err(write_err)?,
                Data::Blob { id, size } => copy_blob(store, id, *size, out)?,
            }
            let padding = newc::padding(record.data.len() as usize) as u64;
            newc::write_zeros(out, padding).map_err(write_err)?;
        }
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        newc::encode_trailer(&mut trailer);
        out.write_all(&trailer).map_err(write_err)?;
        let written: u64 = self.records.iter().map(Record::len).sum::<u64>() + TRAILER_LEN;
        newc::write_zeros(out, newc::archive_padding(written)).map_err(write_err)
    }

    /// The uncompressed archive in memory.
    pub fn to_bytes(&self, store: &Store) -> Result<Vec<u8>, InitrdError> {
        let mut out = Vec::with_capacity(self.len as usize);
        self.write_to(store, &mut out)?;
        Ok(out)
    }
}

/// Copies a blob of `size` bytes, checking that the store holds exactly that and that it hashes
/// to its id: a damaged object fails the stage (and is removed) instead of entering the image.
fn copy_blob(
    store: &Store,
    id: &BlobId,
    size: u64,
    out: &mut impl Write,
) -> Result<(), InitrdError> {
    let path = store.blob_path(id)?;
    let read_err = |source| InitrdError::ReadBlob {
        blob: *id,
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(read_err)?;
    let found = file.metadata().map_err(read_err)?.len();
    if found != size {
        return Err(InitrdError::BlobSize {
            blob: *id,
            expected: size,
            found,
        });
    }
    let mut hashing = HashingWriter {
        out,
        hasher: blake3::Hasher::new(),
    };
    let copied = io::copy(&mut file.take(size), &mut hashing).map_err(read_err)?;
    if copied != size {
        return Err(InitrdError::BlobSize {
            blob: *id,
            expected: size,
            found: copied,
        });
    }
    if BlobId::from(hashing.hasher.finalize()) != *id {
        // Hash it again on its own: that removes it and names the file.
        store.verify_blob(id)?;
        return Err(InitrdError::Store(kiln_cache::StoreError::CorruptBlob {
            id: *id,
            path,
        }));
    }
    Ok(())
}

/// Passes bytes on and hashes them on the way.
struct HashingWriter<'a, W: Write> {
    out: &'a mut W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.out.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An entry, or a whole hard link group, written together.
struct Unit<'a> {
    members: Vec<&'a Entry>,
    /// blake3 of the path the unit is written at.
    path_hash: [u8; 32],
    len: u64,
}

/// Whether an entry can share an inode in the archive (sockets are not written at all and
/// symlinks are written separately).
fn linkable(entry: &Entry) -> bool {
    matches!(
        entry.kind,
        EntryKind::File { .. }
            | EntryKind::CharDev { .. }
            | EntryKind::BlockDev { .. }
            | EntryKind::Fifo
    )
}

/// The name an entry is written under.
pub(super) fn archive_name(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

/// Cuts `manifest` into segments of about `target` bytes (see the module documentation).
pub fn plan(manifest: &Manifest, mtime: u64, target: u64) -> Result<Vec<Segment>, InitrdError> {
    let mtime = u32::try_from(mtime).map_err(|_| InitrdError::MtimeOutOfRange { mtime })?;
    let target = target.max(1);
    let max = target.saturating_mul(MAX_SEGMENT_FACTOR);

    let mut group_sizes: HashMap<u32, u32> = HashMap::new();
    for entry in manifest.entries().filter(|e| linkable(e)) {
        if let Some(group) = entry.hardlink {
            *group_sizes.entry(group).or_default() += 1;
        }
    }

    let mut segments = Vec::new();
    let mut current = SegmentBuilder::new(mtime);
    let mut pending: HashMap<u32, Vec<&Entry>> = HashMap::new();
    for entry in manifest.entries() {
        if matches!(entry.kind, EntryKind::Socket) {
            continue;
        }
        let group_size = |group: &u32| group_sizes.get(group).copied().unwrap_or(1) as usize;
        let members = match entry
            .hardlink
            .filter(|group| linkable(entry) && group_size(group) > 1)
        {
            Some(group) => {
                let waiting = pending.entry(group).or_default();
                waiting.push(entry);
                if waiting.len() < group_size(&group) {
                    continue;
                }
                pending.remove(&group).unwrap_or_default()
            }
            None => vec![entry],
        };
        let unit = Unit::new(members)?;
        if !current.is_empty() && (starts_segment(&unit, target) || current.len + unit.len > max) {
            segments.push(std::mem::replace(&mut current, SegmentBuilder::new(mtime)).finish());
        }
        current.push(unit)?;
    }
    if !current.is_empty() {
        segments.push(current.finish());
    }
    Ok(segments)
}

/// Whether `unit` starts a segment: its path hash, as a fraction of 2^64, is below
/// `unit.len / target`.
fn starts_segment(unit: &Unit<'_>, target: u64) -> bool {
    if unit.len >= target {
        return true;
    }
    let hash = u64::from_le_bytes(unit.path_hash[..8].try_into().unwrap_or_default());
    let threshold = (u128::from(unit.len) << 64) / u128::from(target);
    u128::from(hash) < threshold
}

impl<'a> Unit<'a> {
    fn new(members: Vec<&'a Entry>) -> Result<Unit<'a>, InitrdError> {
        let last = members.last().map_or("", |e| e.path.as_str());
        let path_hash = *blake3::hash(archive_name(last).as_bytes()).as_bytes();
        let mut len = 0;
        for (i, entry) in members.iter().enumerate() {
            let name_size = archive_name(&entry.path).len() + 1;
            let header = newc::HEADER_LEN + name_size + newc::padding(newc::HEADER_LEN + name_size);
            let data = data_of(entry, i + 1 == members.len())?.len();
            len += header as u64 + data + newc::padding(data as usize) as u64;
        }
        Ok(Unit {
            members,
            path_hash,
            len,
        })
    }
}

/// What follows an entry's header; only the last member of a hard link group carries a file's
/// content.
fn data_of(entry: &Entry, carries_content: bool) -> Result<Data, InitrdError> {
    Ok(match &entry.kind {
        EntryKind::File { blob, size } if carries_content => {
            if *size > u64::from(u32::MAX) {
                return Err(InitrdError::FileTooLarge {
                    path: entry.display_path(),
                    size: *size,
                });
            }
            Data::Blob {
                id: *blob,
                size: *size,
            }
        }
        EntryKind::Symlink { target } => Data::Inline(target.as_bytes().to_vec()),
        _ => Data::None,
    })
}

/// A segment being filled.
struct SegmentBuilder {
    mtime: u32,
    records: Vec<Record>,
    inodes: HashSet<u32>,
    first_path: Option<String>,
    /// Bytes of the records so far.
    len: u64,
}

impl SegmentBuilder {
    fn new(mtime: u32) -> SegmentBuilder {
        SegmentBuilder {
            mtime,
            records: Vec::new(),
            inodes: HashSet::new(),
            first_path: None,
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A free inode number near the one the path hash gives (never 0, which the trailer has).
    fn inode_for(&mut self, path_hash: &[u8; 32]) -> u32 {
        let mut ino = u32::from_le_bytes(path_hash[8..12].try_into().unwrap_or_default());
        while ino == 0 || !self.inodes.insert(ino) {
            ino = ino.wrapping_add(1);
        }
        ino
    }

    fn push(&mut self, unit: Unit<'_>) -> Result<(), InitrdError> {
        let linked = unit.members.len() > 1;
        // One inode for the unit: its entry, or every member of its group.
        let ino = self.inode_for(&unit.path_hash);
        let count = unit.members.len();
        for (i, entry) in unit.members.into_iter().enumerate() {
            let name = archive_name(&entry.path);
            if self.first_path.is_none() {
                self.first_path = Some(name.to_owned());
            }
            let data = data_of(entry, i + 1 == count)?;
            let (kind_bits, nlink, rdev) = match &entry.kind {
                EntryKind::Dir => (file_type::DIR, 2, 0),
                EntryKind::File { .. } => (file_type::REGULAR, 1, 0),
                EntryKind::Symlink { .. } => (file_type::SYMLINK, 1, 0),
                EntryKind::CharDev { rdev } => (file_type::CHAR, 1, *rdev),
                EntryKind::BlockDev { rdev } => (file_type::BLOCK, 1, *rdev),
                EntryKind::Fifo => (file_type::FIFO, 1, 0),
                EntryKind::Socket => continue,
            };
            let header = Header {
                ino,
                mode: kind_bits | (entry.mode & 0o7777),
                uid: entry.uid,
                gid: entry.gid,
                nlink: if linked { count as u32 } else { nlink },
                mtime: self.mtime,
                // Checked by `data_of`.
                file_size: data.len() as u32,
                dev_major: 0,
                dev_minor: 0,
                rdev_major: libc::major(rdev),
                rdev_minor: libc::minor(rdev),
            };
            let mut bytes = Vec::new();
            header.encode(name, &mut bytes);
            let record = Record {
                header: bytes,
                data,
            };
            self.len += record.len();
            self.records.push(record);
        }
        Ok(())
    }

    fn finish(self) -> Segment {
        let written = self.len + TRAILER_LEN;
        Segment {
            entries: self.records.len(),
            records: self.records,
            first_path: self.first_path.unwrap_or_default(),
            len: written + newc::archive_padding(written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str) -> Entry {
        Entry::new(path, EntryKind::Dir, 0o755)
    }

    fn file(path: &str, content: &[u8]) -> Entry {
        Entry::new(
            path,
            EntryKind::File {
                blob: Digest::of_bytes(content),
                size: content.len() as u64,
            },
            0o644,
        )
    }

    fn linked(mut entry: Entry, group: u32) -> Entry {
        entry.hardlink = Some(group);
        entry
    }

    /// The archive names of each segment.
    fn names(segments: &[Segment]) -> Vec<Vec<String>> {
        segments
            .iter()
            .map(|s| {
                s.records
                    .iter()
                    .map(|r| {
                        let size = usize::from_str_radix(
                            std::str::from_utf8(&r.header[94..102]).unwrap(),
                            16,
                        )
                        .unwrap();
                        String::from_utf8(r.header[110..110 + size - 1].to_vec()).unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    fn field(record: &Record, index: usize) -> u32 {
        let at = 6 + index * 8;
        u32::from_str_radix(std::str::from_utf8(&record.header[at..at + 8]).unwrap(), 16).unwrap()
    }

    fn big_tree(files: usize) -> Vec<Entry> {
        let mut entries = vec![dir(""), dir("usr")];
        for i in 0..files {
            entries.push(file(&format!("usr/f{i:04}"), &[i as u8; 700]));
        }
        entries
    }

    #[test]
    fn the_root_is_dot_and_names_are_relative() {
        let manifest = Manifest::from_entries([dir(""), dir("etc"), file("etc/a", b"x")]).unwrap();
        let segments = plan(&manifest, 1, 1 << 20).unwrap();
        assert_eq!(names(&segments), [[".", "etc", "etc/a"]]);
        assert_eq!(segments[0].first_path, ".");
        assert_eq!(segments[0].len % 512, 0);
    }

    #[test]
    fn a_hardlink_group_is_written_at_its_last_member_with_the_data_there() {
        let manifest = Manifest::from_entries([
            dir(""),
            dir("a"),
            linked(file("a/one", b"shared"), 7),
            file("a/two", b"x"),
            dir("b"),
            linked(file("b/three", b"shared"), 7),
        ])
        .unwrap();
        let segments = plan(&manifest, 1, 1 << 20).unwrap();
        assert_eq!(
            names(&segments),
            [[".", "a", "a/two", "b", "a/one", "b/three"]]
        );
        let records = &segments[0].records;
        let (one, three) = (&records[4], &records[5]);
        assert_eq!(field(one, 0), field(three, 0), "same inode");
        assert_eq!((field(one, 4), field(three, 4)), (2, 2), "nlink");
        assert_eq!((field(one, 6), field(three, 6)), (0, 6), "data on the last");
        assert_eq!(one.data, Data::None);
        let inodes: HashSet<u32> = records.iter().map(|r| field(r, 0)).collect();
        assert_eq!(inodes.len(), 5, "one inode per file, the group's shared");
    }

    #[test]
    fn sockets_are_left_out_and_symlinks_carry_their_target() {
        let mut link = Entry::new(
            "l",
            EntryKind::Symlink {
                target: "etc/a".into(),
            },
            0o777,
        );
        link.uid = 5;
        let manifest =
            Manifest::from_entries([dir(""), link, Entry::new("s", EntryKind::Socket, 0o755)])
                .unwrap();
        let segments = plan(&manifest, 1, 1 << 20).unwrap();
        assert_eq!(names(&segments), [[".", "l"]]);
        let record = &segments[0].records[1];
        assert_eq!(field(record, 1), 0o120777);
        assert_eq!(field(record, 2), 5);
        assert_eq!(record.data, Data::Inline(b"etc/a".to_vec()));
    }

    #[test]
    fn boundaries_do_not_move_when_a_file_is_inserted() {
        let before = Manifest::from_entries(big_tree(400)).unwrap();
        let mut entries = big_tree(400);
        entries.push(file("usr/a-first", &[9; 5000]));
        let after = Manifest::from_entries(entries).unwrap();
        let old = plan(&before, 1, 8 << 10).unwrap();
        let new = plan(&after, 1, 8 << 10).unwrap();
        assert!(old.len() > 10, "{} segments", old.len());
        let old_keys: Vec<Digest> = old.iter().map(|s| s.key(3)).collect();
        let new_keys: Vec<Digest> = new.iter().map(|s| s.key(3)).collect();
        // Only the first segment (where the file lands) differs.
        assert_eq!(
            old_keys[1..],
            new_keys[new_keys.len() - (old_keys.len() - 1)..]
        );
        assert!(new_keys.len() - old_keys.len() <= 1);
    }

    #[test]
    fn segments_stay_under_the_safety_bound() {
        let manifest = Manifest::from_entries(big_tree(2000)).unwrap();
        let target = 4 << 10;
        for segment in plan(&manifest, 1, target).unwrap() {
            assert!(segment.len <= target * MAX_SEGMENT_FACTOR + 1024);
        }
    }

    #[test]
    fn keys_see_everything_the_bytes_depend_on() {
        let manifest = Manifest::from_entries([dir(""), file("a", b"x")]).unwrap();
        let base = plan(&manifest, 1, 1 << 20).unwrap()[0].key(3);
        assert_ne!(base, plan(&manifest, 2, 1 << 20).unwrap()[0].key(3));
        assert_ne!(base, plan(&manifest, 1, 1 << 20).unwrap()[0].key(4));
        let changed = Manifest::from_entries([dir(""), file("a", b"y")]).unwrap();
        assert_ne!(base, plan(&changed, 1, 1 << 20).unwrap()[0].key(3));
        let mut owned = file("a", b"x");
        owned.gid = 3;
        let owned = Manifest::from_entries([dir(""), owned]).unwrap();
        assert_ne!(base, plan(&owned, 1, 1 << 20).unwrap()[0].key(3));
        assert_eq!(base, plan(&manifest, 1, 1 << 20).unwrap()[0].key(3));
    }

    #[test]
    fn files_of_4_gib_are_refused_before_anything_is_read() {
        let huge = Entry::new(
            "big",
            EntryKind::File {
                blob: Digest::of_bytes(b"never read"),
                size: 1 << 32,
            },
            0o644,
        );
        let manifest = Manifest::from_entries([dir(""), huge]).unwrap();
        assert!(matches!(
            plan(&manifest, 1, 1 << 20),
            Err(InitrdError::FileTooLarge {
                size: 4294967296,
                ..
            })
        ));
    }

    #[test]
    fn mtimes_past_2106_are_refused() {
        let manifest = Manifest::from_entries([dir("")]).unwrap();
        assert!(matches!(
            plan(&manifest, 1 << 32, 1 << 20),
            Err(InitrdError::MtimeOutOfRange { .. })
        ));
    }

    #[test]
    fn the_segment_bytes_are_pinned() {
        // A change to what a segment holds must bump SEGMENT_FORMAT_VERSION.
        let dir_store = tempfile::tempdir().unwrap();
        let store = Store::open(dir_store.path()).unwrap();
        let blob = store.put_bytes(b"hello\n").unwrap();
        let mut entries = vec![dir(""), dir("etc")];
        entries.push(Entry::new(
            "etc/hostname",
            EntryKind::File { blob, size: 6 },
            0o644,
        ));
        entries.push(Entry::new(
            "etc/link",
            EntryKind::Symlink {
                target: "hostname".into(),
            },
            0o777,
        ));
        entries.push(Entry::new(
            "etc/null",
            EntryKind::CharDev {
                rdev: libc::makedev(1, 3),
            },
            0o666,
        ));
        let manifest = Manifest::from_entries(entries).unwrap();
        let segments = plan(&manifest, 1_700_000_000, 1 << 20).unwrap();
        let bytes = segments[0].to_bytes(&store).unwrap();
        assert_eq!(bytes.len() as u64, segments[0].len);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            "d75ff899e4a560e2e9364fe94e3bc5fcf8d774a7b1fcf6dfd9f1815aaddb9291"
        );
        assert_eq!(SEGMENT_FORMAT_VERSION, 1);
    }
}
