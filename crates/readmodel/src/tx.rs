//! Pending changes over a readable store, and an in-memory store.
//!
//! The fold reads through a [`Tx`], which answers from the changes it already holds (earlier
//! events of the same batch) before asking the store underneath. The service commits a
//! transaction's changes in one `WriteBatch`; tests apply them to a [`MemStore`].

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::keys::Cf;
use crate::{Corrupt, records};

/// Point reads of a read-model store.
pub trait Read {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Corrupt>;
}

/// A fast hash for the pending changes' keys (which are ours, not an attacker's): eight bytes
/// at a time, each mixed in with a folded 64×64→128-bit multiply (as wyhash and foldhash do),
/// which spreads a change in any bit both up and down the word. (FxHash's multiply-and-rotate
/// only carries changes upwards, and collided on keys differing in one byte.)
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        Self(0x243f_6a88_85a3_08d3)
    }
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl KeyHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word) * u128::from(K);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl std::hash::Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type Pending = HashMap<Vec<u8>, Option<Vec<u8>>, std::hash::BuildHasherDefault<KeyHasher>>;

/// Changes not yet committed, over a store.
#[derive(Debug)]
pub struct Tx<'a, R: Read + ?Sized> {
    base: &'a R,
    /// Per column family (indexed by [`Cf`]'s discriminant).
    pending: Vec<Pending>,
}

impl<'a, R: Read + ?Sized> Tx<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Self::sized(base, &[])
    }

    /// A transaction expecting about `capacities[cf]` changes in each column family (indexed
    /// like [`Cf::ALL`]; missing ones expect none), so that a large batch does not rehash its
    /// tables as they grow.
    pub fn sized(base: &'a R, capacities: &[usize]) -> Self {
        Self {
            base,
            pending: (0..Cf::ALL.len())
                .map(|i| {
                    Pending::with_capacity_and_hasher(
                        capacities.get(i).copied().unwrap_or(0),
                        Default::default(),
                    )
                })
                .collect(),
        }
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Corrupt> {
        match self.pending[cf as usize].get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(cf, key),
        }
    }

    pub fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.pending[cf as usize].insert(key, Some(value));
    }

    pub fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.pending[cf as usize].insert(key, None);
    }

    /// Reads a value without copying it when this transaction holds it.
    fn with<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Result<T, Corrupt>,
    ) -> Result<T, Corrupt> {
        match self.pending[cf as usize].get(key) {
            Some(v) => f(v.as_deref()),
            None => f(self.base.get(cf, key)?.as_deref()),
        }
    }

    /// Whether `key` has a value.
    pub fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool, Corrupt> {
        self.with(cf, key, |v| Ok(v.is_some()))
    }

    pub fn get_rec<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, Corrupt> {
        self.with(cf, key, |v| match v {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(bytes).map(Some).map_err(|e| Corrupt {
                cf: cf.name(),
                key: key.iter().map(|b| format!("{b:02x}")).collect(),
                reason: e.to_string(),
            }),
        })
    }

    pub fn put_rec<T: Serialize>(&mut self, cf: Cf, key: Vec<u8>, value: &T) {
        self.put(cf, key, records::encode(value));
    }

    pub fn get_u64(&self, cf: Cf, key: &[u8]) -> Result<u64, Corrupt> {
        Ok(self.get_i64(cf, key)?.max(0) as u64)
    }

    pub fn get_i64(&self, cf: Cf, key: &[u8]) -> Result<i64, Corrupt> {
        self.with(cf, key, |v| match v {
            None => Ok(0),
            Some(b) => decode_i64(b).ok_or_else(|| Corrupt {
                cf: cf.name(),
                key: String::from_utf8_lossy(key).into_owned(),
                reason: format!("a counter of {} bytes", b.len()),
            }),
        })
    }

    pub fn put_i64(&mut self, cf: Cf, key: Vec<u8>, v: i64) {
        self.put(cf, key, v.to_be_bytes().to_vec());
    }

    /// Adds `delta` to a counter; a counter that reaches zero is removed.
    pub fn add(&mut self, cf: Cf, key: Vec<u8>, delta: i64) -> Result<(), Corrupt> {
        if delta == 0 {
            return Ok(());
        }
        let v = self.get_i64(cf, &key)? + delta;
        if v == 0 {
            self.delete(cf, key);
        } else {
            self.put_i64(cf, key, v);
        }
        Ok(())
    }

    /// How many keys this transaction changes.
    pub fn len(&self) -> usize {
        self.pending.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(HashMap::is_empty)
    }

    /// The changes, held for committing (and for reading while they are committed).
    pub fn finish(self) -> Changes {
        Changes {
            pending: self.pending,
        }
    }

    /// The changes, owned, in [`Changes::sorted`]'s order.
    pub fn into_changes(self) -> impl Iterator<Item = (Cf, Vec<u8>, Option<Vec<u8>>)> {
        let changes = self.finish();
        let owned: Vec<_> = changes
            .sorted()
            .into_iter()
            .map(|(cf, k, v)| (cf, k.to_vec(), v.map(<[u8]>::to_vec)))
            .collect();
        owned.into_iter()
    }
}

/// One change, borrowed: `(cf, key, Some(value))` a put, `None` a delete.
pub type ChangeRef<'a> = (Cf, &'a [u8], Option<&'a [u8]>);

/// A finished transaction's changes: what a commit writes, and what the next transaction reads
/// through (with [`Layered`]) while that commit is still running.
#[derive(Debug, Default)]
pub struct Changes {
    /// Per column family (indexed by [`Cf`]'s discriminant); empty when nothing changed.
    pending: Vec<Pending>,
}

impl Changes {
    /// `Some(Some(value))` put, `Some(None)` deleted, `None` untouched.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Option<Option<&[u8]>> {
        self.pending
            .get(cf as usize)?
            .get(key)
            .map(Option::as_deref)
    }

    pub fn len(&self) -> usize {
        self.pending.iter().map(HashMap::len).sum()
    }

    /// How many changes each column family holds (indexed like [`Cf::ALL`]).
    pub fn lens(&self) -> Vec<usize> {
        self.pending.iter().map(HashMap::len).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.iter().all(HashMap::is_empty)
    }

    /// `(cf, key, Some(value))` puts and `None` deletes, column family by column family, each's
    /// in key order. RocksDB's memtable inserts a sorted run much faster than scattered keys:
    /// each insert starts its search from where the previous one landed.
    pub fn sorted(&self) -> Vec<ChangeRef<'_>> {
        let mut out = Vec::with_capacity(self.len());
        for (cf, p) in Cf::ALL.into_iter().zip(&self.pending) {
            let start = out.len();
            out.extend(p.iter().map(|(k, v)| (cf, k.as_slice(), v.as_deref())));
            out[start..].sort_unstable_by(|a, b| a.1.cmp(b.1));
        }
        out
    }
}

/// Reads `top` first and `base` for what `top` does not touch: a store as it will be once
/// `top` is committed.
#[derive(Debug)]
pub struct Layered<'a, R: ?Sized> {
    pub top: &'a Changes,
    pub base: &'a R,
}

impl<R: Read + ?Sized> Read for Layered<'_, R> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Corrupt> {
        match self.top.get(cf, key) {
            Some(v) => Ok(v.map(<[u8]>::to_vec)),
            None => self.base.get(cf, key),
        }
    }
}

pub fn decode_i64(b: &[u8]) -> Option<i64> {
    let arr: [u8; 8] = b.try_into().ok()?;
    Some(i64::from_be_bytes(arr))
}

/// A read model in memory: what tests fold the log into to compare with RocksDB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStore {
    pub data: BTreeMap<(Cf, Vec<u8>), Vec<u8>>,
}

impl Read for MemStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Corrupt> {
        Ok(self.data.get(&(cf, key.to_vec())).cloned())
    }
}

impl MemStore {
    pub fn commit(&mut self, changes: impl Iterator<Item = (Cf, Vec<u8>, Option<Vec<u8>>)>) {
        for (cf, k, v) in changes {
            match v {
                Some(v) => {
                    self.data.insert((cf, k), v);
                }
                None => {
                    self.data.remove(&(cf, k));
                }
            }
        }
    }

    /// Folds `events` one transaction each and commits them.
    pub fn fold_all<'e>(
        &mut self,
        events: impl IntoIterator<
            Item = (
                u64,
                &'e str,
                &'e Result<muster_schema::Envelope, muster_schema::DecodeError>,
            ),
        >,
    ) -> Result<(), Corrupt> {
        for (seq, subject, env) in events {
            let mut tx = Tx::new(&*self);
            crate::fold::apply(&mut tx, seq, subject, env)?;
            let changes: Vec<_> = tx.into_changes().collect();
            self.commit(changes.into_iter());
        }
        Ok(())
    }

    pub fn checksum(&self) -> String {
        crate::checksum(
            self.data
                .iter()
                .map(|((cf, k), v)| (*cf, k.as_slice(), v.as_slice())),
        )
    }

    /// Keys and values of one column family, in key order.
    pub fn cf(&self, cf: Cf) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.data
            .range((cf, Vec::new())..)
            .take_while(move |((c, _), _)| *c == cf)
            .map(|((_, k), v)| (k.as_slice(), v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hasher_tells_apart_keys_that_differ_in_one_byte_or_in_length() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = |k: &[u8]| BuildHasherDefault::<KeyHasher>::default().hash_one(k);
        let base = b"incident\0need.open.category.food-0123".to_vec();
        let mut keys = std::collections::HashSet::new();
        for i in 0..base.len() {
            for mask in [1u8, 2, 0x80, 0xff] {
                let mut k = base.clone();
                k[i] ^= mask;
                keys.insert(k);
            }
            keys.insert(base[..i].to_vec());
        }
        let hashes: std::collections::HashSet<u64> = keys.iter().map(|k| h(k)).collect();
        assert_eq!(hashes.len(), keys.len(), "keys that collide");
        // hashbrown tags slots with the top 7 bits: ~190 keys should spread over most of 128.
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 80, "only {} of 128 tags used", tags.len());
    }

    #[test]
    fn a_layered_read_sees_the_changes_on_top_then_the_store() {
        let mut store = MemStore::default();
        store.commit(
            [
                (Cf::Needs, b"kept".to_vec(), Some(b"old".to_vec())),
                (Cf::Needs, b"changed".to_vec(), Some(b"old".to_vec())),
                (Cf::Needs, b"deleted".to_vec(), Some(b"old".to_vec())),
            ]
            .into_iter(),
        );
        let mut tx = Tx::new(&store);
        tx.put(Cf::Needs, b"changed".to_vec(), b"new".to_vec());
        tx.delete(Cf::Needs, b"deleted".to_vec());
        tx.put(Cf::Needs, b"added".to_vec(), b"new".to_vec());
        let top = tx.finish();
        let layered = Layered {
            top: &top,
            base: &store,
        };
        let read = |k: &[u8]| layered.get(Cf::Needs, k).expect("readable");
        assert_eq!(read(b"kept"), Some(b"old".to_vec()));
        assert_eq!(read(b"changed"), Some(b"new".to_vec()));
        assert_eq!(read(b"deleted"), None);
        assert_eq!(read(b"added"), Some(b"new".to_vec()));
        assert_eq!(read(b"absent"), None);
        // The same key in another column family is not shadowed.
        assert_eq!(layered.get(Cf::Offers, b"changed").expect("readable"), None);
        let sorted: Vec<&[u8]> = top.sorted().into_iter().map(|(_, k, _)| k).collect();
        assert_eq!(sorted, [&b"added"[..], b"changed", b"deleted"]);
    }

    #[test]
    fn changes_come_in_key_order_within_each_column_family() {
        let store = MemStore::default();
        let mut tx = Tx::new(&store);
        for k in [7u8, 3, 200, 1, 42, 9, 128, 0] {
            tx.put(Cf::Needs, vec![k, 1], vec![k]);
            tx.delete(Cf::History, vec![k]);
        }
        let changes: Vec<(Cf, Vec<u8>)> = tx.into_changes().map(|(cf, k, _)| (cf, k)).collect();
        assert_eq!(changes.len(), 16);
        for cf in [Cf::Needs, Cf::History] {
            let keys: Vec<&Vec<u8>> = changes
                .iter()
                .filter(|(c, _)| *c == cf)
                .map(|(_, k)| k)
                .collect();
            assert!(keys.is_sorted(), "{cf:?} out of order: {keys:?}");
            assert_eq!(keys.len(), 8);
        }
    }
}
