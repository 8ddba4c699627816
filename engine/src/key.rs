//! Stage keys: a stable hash over a stage's kind, version and named inputs.
//!
//! Keys never come from `derive(Hash)`, whose output may change between compiler versions.
//! [`StableHash`] feeds a [`KeyHasher`] (blake3) with tagged, length-prefixed fields, and the
//! schema version [`KEY_SCHEMA`] is hashed first, so a change to how keys are built changes every
//! key instead of silently colliding with old ones. A test pins known digests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_cache::Digest;

/// Bump when the way keys are computed changes.
pub const KEY_SCHEMA: u32 = 1;

/// A blake3 hasher that only accepts unambiguous, length-prefixed input.
pub struct KeyHasher {
    inner: blake3::Hasher,
}

impl KeyHasher {
    /// A hasher for `domain` ("stage-key", "value", ...), seeded with the key schema.
    pub fn new(domain: &str) -> KeyHasher {
        let mut hasher = KeyHasher {
            inner: blake3::Hasher::new(),
        };
        KEY_SCHEMA.stable_hash(&mut hasher);
        domain.stable_hash(&mut hasher);
        hasher
    }

    fn write_tag(&mut self, tag: u8) {
        self.inner.update(&[tag]);
    }

    fn write_len(&mut self, len: usize) {
        self.inner.update(&(len as u64).to_le_bytes());
    }

    /// Raw bytes, length-prefixed.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        self.write_tag(b'b');
        self.write_len(bytes.len());
        self.inner.update(bytes);
    }

    pub fn finish(&self) -> Digest {
        Digest::from_bytes(*self.inner.finalize().as_bytes())
    }
}

/// Feeding a value into a [`KeyHasher`] in a way that never changes between releases.
pub trait StableHash {
    fn stable_hash(&self, hasher: &mut KeyHasher);
}

impl StableHash for str {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b's');
        hasher.write_len(self.len());
        hasher.inner.update(self.as_bytes());
    }
}

impl StableHash for String {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        self.as_str().stable_hash(hasher);
    }
}

impl StableHash for u32 {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b'u');
        hasher.inner.update(&u64::from(*self).to_le_bytes());
    }
}

impl StableHash for u64 {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b'u');
        hasher.inner.update(&self.to_le_bytes());
    }
}

impl StableHash for bool {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(if *self { b'T' } else { b'F' });
    }
}

impl StableHash for Path {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b'p');
        hasher.write_bytes(self.as_os_str().as_encoded_bytes());
    }
}

impl StableHash for PathBuf {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        self.as_path().stable_hash(hasher);
    }
}

impl StableHash for Digest {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b'd');
        hasher.inner.update(self.as_bytes());
    }
}

impl<T: StableHash> StableHash for Option<T> {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        match self {
            None => hasher.write_tag(b'N'),
            Some(value) => {
                hasher.write_tag(b'S');
                value.stable_hash(hasher);
            }
        }
    }
}

impl<T: StableHash> StableHash for [T] {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b'l');
        hasher.write_len(self.len());
        for item in self {
            item.stable_hash(hasher);
        }
    }
}

impl<T: StableHash> StableHash for Vec<T> {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        self.as_slice().stable_hash(hasher);
    }
}

impl<K: StableHash, V: StableHash> StableHash for BTreeMap<K, V> {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        hasher.write_tag(b'm');
        hasher.write_len(self.len());
        for (key, value) in self {
            key.stable_hash(hasher);
            value.stable_hash(hasher);
        }
    }
}

impl<A: StableHash, B: StableHash> StableHash for (A, B) {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        self.0.stable_hash(hasher);
        self.1.stable_hash(hasher);
    }
}

impl<T: StableHash + ?Sized> StableHash for &T {
    fn stable_hash(&self, hasher: &mut KeyHasher) {
        (**self).stable_hash(hasher);
    }
}

/// The key of a stage: its kind, its version and every named input's kind and digest.
/// Input order does not matter; names are unique per stage.
pub fn stage_key(kind: &str, version: u32, inputs: &[kiln_cache::RecordedInput]) -> Digest {
    let mut hasher = KeyHasher::new("stage-key");
    kind.stable_hash(&mut hasher);
    version.stable_hash(&mut hasher);
    let named: BTreeMap<&str, (&str, Digest)> = inputs
        .iter()
        .map(|input| (input.name.as_str(), (input.kind.as_str(), input.digest)))
        .collect();
    named.stable_hash(&mut hasher);
    hasher.finish()
}

/// The digest of a value input: what its text is, not where it came from.
pub fn value_digest(value: &str) -> Digest {
    let mut hasher = KeyHasher::new("value");
    value.stable_hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_digests() {
        // These digests are part of the cache format: if this test fails, every key changed.
        // Bump KEY_SCHEMA and update the pins deliberately.
        assert_eq!(
            value_digest("archlinux-rescue").to_string(),
            PINNED_VALUE_DIGEST,
            "value digest changed"
        );
        let mut hasher = KeyHasher::new("stage-key");
        "extra-trees".stable_hash(&mut hasher);
        1u32.stable_hash(&mut hasher);
        let mut inputs = BTreeMap::new();
        inputs.insert("hostname".to_string(), value_digest("a"));
        inputs.stable_hash(&mut hasher);
        assert_eq!(
            hasher.finish().to_string(),
            PINNED_KEY_DIGEST,
            "key digest changed"
        );
    }

    const PINNED_VALUE_DIGEST: &str =
        "3945719bf4eef4def42b50909cea790b1cbe2b108ae179fdf9435bdc05aff55f";
    const PINNED_KEY_DIGEST: &str =
        "2e18b04b9cb3f6b6d509aa92f4205e7c9c5e86fb9090280c5e2118a15b24bc3c";

    #[test]
    fn fields_are_unambiguous() {
        let digest = |parts: &[&str]| {
            let mut hasher = KeyHasher::new("test");
            for part in parts {
                part.stable_hash(&mut hasher);
            }
            hasher.finish()
        };
        assert_ne!(digest(&["ab", "c"]), digest(&["a", "bc"]));
        assert_ne!(digest(&["abc"]), digest(&["ab", "c"]));
        let mut none = KeyHasher::new("test");
        None::<String>.stable_hash(&mut none);
        let mut empty = KeyHasher::new("test");
        Some(String::new()).stable_hash(&mut empty);
        assert_ne!(none.finish(), empty.finish());
    }
}
