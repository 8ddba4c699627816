//! The canonical byte encoding of a manifest, whose blake3 is the tree id.
//!
//! Format version 1, all integers little-endian:
//!
//! ```text
//! "kiln-tree" u8:version u64:entry-count
//! per entry, in manifest order:
//!   u32:len path
//!   u8:type  payload
//!       0 dir        -
//!       1 file       [32]blob u64:size
//!       2 symlink    u32:len target
//!       3 char dev   u64:rdev
//!       4 block dev  u64:rdev
//!       5 fifo       -
//!       6 socket     -
//!   u32:mode u32:uid u32:gid
//!   u32:xattr-count, per xattr in name order: u32:len name u32:len value
//!   u8:0                      no hard link
//!   u8:1 u32:group            canonical hard link group
//! ```
//!
//! Decoding is strict: anything but the exact canonical encoding of a valid
//! manifest is rejected, so an id names exactly one byte string.

use std::collections::BTreeMap;

use crate::digest::{Digest, TreeId};
use crate::error::DecodeError;
use crate::manifest::{Entry, EntryKind, Manifest};

const MAGIC: &[u8] = b"kiln-tree";

/// The version byte written after the magic; bump it on any format change.
pub const FORMAT_VERSION: u8 = 1;

impl Manifest {
    /// The canonical encoding (see the module documentation of this format).
    pub fn encode_canonical(&self) -> Vec<u8> {
        let groups = self.canonical_groups();
        let mut out = Vec::with_capacity(64 + self.len() * 96);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for entry in self.entries() {
            put_bytes(&mut out, entry.path.as_bytes());
            match &entry.kind {
                EntryKind::Dir => out.push(0),
                EntryKind::File { blob, size } => {
                    out.push(1);
                    out.extend_from_slice(blob.as_bytes());
                    out.extend_from_slice(&size.to_le_bytes());
                }
                EntryKind::Symlink { target } => {
                    out.push(2);
                    put_bytes(&mut out, target.as_bytes());
                }
                EntryKind::CharDev { rdev } => {
                    out.push(3);
                    out.extend_from_slice(&rdev.to_le_bytes());
                }
                EntryKind::BlockDev { rdev } => {
                    out.push(4);
                    out.extend_from_slice(&rdev.to_le_bytes());
                }
                EntryKind::Fifo => out.push(5),
                EntryKind::Socket => out.push(6),
            }
            out.extend_from_slice(&(entry.mode & 0o7777).to_le_bytes());
            out.extend_from_slice(&entry.uid.to_le_bytes());
            out.extend_from_slice(&entry.gid.to_le_bytes());
            out.extend_from_slice(&(entry.xattrs.len() as u32).to_le_bytes());
            for (name, value) in &entry.xattrs {
                put_bytes(&mut out, name.as_bytes());
                put_bytes(&mut out, value);
            }
            match entry.hardlink.and_then(|g| groups.get(&g)) {
                None => out.push(0),
                Some(group) => {
                    out.push(1);
                    out.extend_from_slice(&group.to_le_bytes());
                }
            }
        }
        out
    }

    /// The tree id: blake3 of the canonical encoding.
    pub fn id(&self) -> TreeId {
        Digest::of_bytes(&self.encode_canonical())
    }

    /// Decodes a canonical encoding, rejecting anything that is not exactly
    /// the encoding of a valid manifest.
    pub fn decode_canonical(bytes: &[u8]) -> Result<Manifest, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(r.error(0, "not a kiln tree manifest"));
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(r.error(
                MAGIC.len(),
                format!("format version {version}, this kiln reads {FORMAT_VERSION}"),
            ));
        }
        let count = r.u64()?;
        // Each entry takes at least 22 bytes: a sanity bound before allocating.
        if count > (bytes.len() as u64) / 22 {
            return Err(r.error(r.pos, format!("entry count {count} exceeds the data")));
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            entries.push(r.entry()?);
        }
        if r.pos != bytes.len() {
            return Err(r.error(r.pos, "trailing bytes after the last entry"));
        }
        let manifest = Manifest::from_sorted(entries).map_err(|e| DecodeError {
            offset: 0,
            reason: e.to_string(),
        })?;
        if manifest.encode_canonical() != bytes {
            return Err(DecodeError {
                offset: 0,
                reason: "hard link groups are not numbered canonically".to_owned(),
            });
        }
        Ok(manifest)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.error(self.pos, "unexpected end of data"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.error(at, "string is not UTF-8"))
    }

    fn entry(&mut self) -> Result<Entry, DecodeError> {
        let path = self.string()?;
        let at = self.pos;
        let kind = match self.u8()? {
            0 => EntryKind::Dir,
            1 => EntryKind::File {
                blob: Digest::from_bytes(self.array()?),
                size: self.u64()?,
            },
            2 => EntryKind::Symlink {
                target: self.string()?,
            },
            3 => EntryKind::CharDev { rdev: self.u64()? },
            4 => EntryKind::BlockDev { rdev: self.u64()? },
            5 => EntryKind::Fifo,
            6 => EntryKind::Socket,
            tag => return Err(self.error(at, format!("unknown entry type {tag}"))),
        };
        let at = self.pos;
        let mode = self.u32()?;
        if mode & !0o7777 != 0 {
            return Err(self.error(at, format!("mode {mode:o} has more than permission bits")));
        }
        let uid = self.u32()?;
        let gid = self.u32()?;
        let count = self.u32()?;
        let mut xattrs = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let at = self.pos;
            let name = self.string()?;
            if last.as_ref().is_some_and(|last| *last >= name) {
                return Err(self.error(at, "extended attributes are not sorted"));
            }
            let value = self.bytes()?.to_vec();
            last = Some(name.clone());
            xattrs.insert(name, value);
        }
        let at = self.pos;
        let hardlink = match self.u8()? {
            0 => None,
            1 => Some(self.u32()?),
            tag => return Err(self.error(at, format!("bad hard link flag {tag}"))),
        };
        Ok(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            xattrs,
            hardlink,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small tree with one entry of each interesting kind.
    fn sample() -> Manifest {
        let blob = Digest::of_bytes(b"rescue\n");
        let mut hostname = Entry::new("etc/hostname", EntryKind::File { blob, size: 7 }, 0o644);
        hostname.hardlink = Some(0);
        let mut copy = Entry::new("etc/hostname.bak", EntryKind::File { blob, size: 7 }, 0o644);
        copy.hardlink = Some(0);
        let mut sudo = Entry::new(
            "usr/bin/sudo",
            EntryKind::File {
                blob: Digest::of_bytes(b"sudo"),
                size: 4,
            },
            0o4755,
        );
        sudo.xattrs
            .insert("security.capability".to_owned(), vec![1, 0, 0, 2]);
        let mut home = Entry::new("home/user", EntryKind::Dir, 0o700);
        home.uid = 1000;
        home.gid = 1000;
        Manifest::from_entries(vec![
            Entry::new("", EntryKind::Dir, 0o755),
            Entry::new(
                "bin",
                EntryKind::Symlink {
                    target: "usr/bin".to_owned(),
                },
                0o777,
            ),
            Entry::new("dev", EntryKind::Dir, 0o755),
            Entry::new("dev/null", EntryKind::CharDev { rdev: 0x103 }, 0o666),
            Entry::new("dev/loop0", EntryKind::BlockDev { rdev: 0x700 }, 0o660),
            Entry::new("run", EntryKind::Dir, 0o755),
            Entry::new("run/initctl", EntryKind::Fifo, 0o600),
            Entry::new("run/socket", EntryKind::Socket, 0o755),
            Entry::new("etc", EntryKind::Dir, 0o755),
            hostname,
            copy,
            Entry::new("home", EntryKind::Dir, 0o755),
            home,
            Entry::new("tmp", EntryKind::Dir, 0o1777),
            Entry::new("usr", EntryKind::Dir, 0o755),
            Entry::new("usr/bin", EntryKind::Dir, 0o755),
            sudo,
        ])
        .unwrap()
    }

    #[test]
    fn pinned_tree_id() {
        // If this changes, the canonical encoding changed: every stored tree
        // id and stage key changes with it. Bump FORMAT_VERSION and the store
        // layout, then update the digest.
        assert_eq!(
            sample().id().to_string(),
            "4f2b5dcfd6af6bf1179d45ff0945fc58f782c50ee1839998e0177e0bd6ebe0c6"
        );
        // The bytes of the smallest tree, spelled out.
        let root = Manifest::from_entries(vec![Entry::new("", EntryKind::Dir, 0o755)]).unwrap();
        let mut want = b"kiln-tree".to_vec();
        want.push(1); // format version
        want.extend_from_slice(&1u64.to_le_bytes()); // one entry
        want.extend_from_slice(&0u32.to_le_bytes()); // path "" (length 0)
        want.push(0); // directory
        want.extend_from_slice(&0o755u32.to_le_bytes());
        want.extend_from_slice(&0u32.to_le_bytes()); // uid
        want.extend_from_slice(&0u32.to_le_bytes()); // gid
        want.extend_from_slice(&0u32.to_le_bytes()); // no xattrs
        want.push(0); // no hard link
        assert_eq!(root.encode_canonical(), want);
    }

    #[test]
    fn roundtrip() {
        let m = sample();
        let bytes = m.encode_canonical();
        assert_eq!(&bytes[..9], b"kiln-tree");
        assert_eq!(bytes[9], FORMAT_VERSION);
        let back = Manifest::decode_canonical(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.encode_canonical(), bytes);
        assert_eq!(Manifest::new().encode_canonical().len(), 18);
    }

    #[test]
    fn decoding_is_strict() {
        let bytes = sample().encode_canonical();
        for len in [0, 5, 10, 18, bytes.len() - 1] {
            assert!(
                Manifest::decode_canonical(&bytes[..len]).is_err(),
                "truncated at {len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Manifest::decode_canonical(&trailing).is_err());
        let mut version = bytes.clone();
        version[9] = 2;
        let err = Manifest::decode_canonical(&version).unwrap_err();
        assert!(err.reason.contains("format version 2"), "{err}");
        // A forged entry escaping the tree is refused.
        let evil = Manifest::from_entries(vec![
            Entry::new("", EntryKind::Dir, 0o755),
            Entry::new("x", EntryKind::Fifo, 0o644),
        ])
        .unwrap()
        .encode_canonical();
        let forged: Vec<u8> = evil
            .windows(5)
            .position(|w| w == [1, 0, 0, 0, b'x'])
            .map(|at| {
                let mut out = evil[..at].to_vec();
                out.extend_from_slice(&[2, 0, 0, 0, b'.', b'.']);
                out.extend_from_slice(&evil[at + 5..]);
                out
            })
            .unwrap();
        let err = Manifest::decode_canonical(&forged).unwrap_err();
        assert!(err.reason.contains("Invalid path `..`"), "{err}");
    }

    #[test]
    fn every_field_changes_the_id() {
        let base = sample();
        let id = base.id();
        let edits: [fn(&mut Entry); 5] = [
            |e| e.mode = 0o4750,
            |e| e.uid = 1,
            |e| e.gid = 1,
            |e| {
                e.xattrs.insert("user.x".to_owned(), Vec::new());
            },
            |e| {
                e.kind = EntryKind::File {
                    blob: Digest::of_bytes(b"sudo"),
                    size: 5,
                }
            },
        ];
        for edit in edits {
            let mut m = base.clone();
            let mut entry = m.get("usr/bin/sudo").unwrap().clone();
            edit(&mut entry);
            m.insert_or_replace(entry).unwrap();
            assert_ne!(m.id(), id);
        }
        // Breaking the hard link changes the id too.
        let mut m = base.clone();
        let mut entry = m.get("etc/hostname.bak").unwrap().clone();
        entry.hardlink = None;
        m.insert_or_replace(entry).unwrap();
        assert_ne!(m.id(), id);
    }
}
