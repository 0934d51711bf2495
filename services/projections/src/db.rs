//! The read models' RocksDB: one column family per [`Cf`], the position in `meta`.

use std::path::Path;

use muster_readmodel::{Cf, Changes, Corrupt, Read, keys};
use muster_store::{Access, Durability, Store, StoreError};
use serde::de::DeserializeOwned;

/// Every column family, with how it is read.
fn families() -> Vec<(&'static str, Access)> {
    Cf::ALL
        .iter()
        .map(|cf| {
            let access = if cf.point_reads() {
                Access::Point
            } else {
                Access::Scan
            };
            (cf.name(), access)
        })
        .collect()
}

/// The projections' database.
#[derive(Debug)]
pub struct Db {
    store: Store,
}

impl Db {
    /// Opens (creating if needed) the read models at `dir` for folding.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Store::open_cfs(dir, &families())?,
        })
    }

    /// Opens existing read models for queries only.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Store::open_read_only(dir, &families())?,
        })
    }

    pub fn path(&self) -> &Path {
        self.store.path()
    }

    pub fn is_read_only(&self) -> bool {
        self.store.is_read_only()
    }

    fn counter(&self, key: &[u8]) -> Result<Option<i64>, Corrupt> {
        match self.get(Cf::Meta, key)? {
            None => Ok(None),
            Some(b) => muster_readmodel::tx::decode_i64(&b)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::Meta, key, "not a number")),
        }
    }

    /// The last sequence folded in (0: none).
    pub fn position(&self) -> Result<u64, Corrupt> {
        Ok(self.counter(keys::POSITION)?.unwrap_or(0).max(0) as u64)
    }

    /// The read-model format written, if anything was.
    pub fn format(&self) -> Result<Option<u32>, Corrupt> {
        Ok(self.counter(keys::FORMAT)?.map(|v| v as u32))
    }

    pub fn set_aside_count(&self) -> Result<u64, Corrupt> {
        Ok(self.counter(keys::SET_ASIDE_COUNT)?.unwrap_or(0).max(0) as u64)
    }

    /// Commits a transaction's changes in one `WriteBatch`.
    pub fn commit(&self, changes: &Changes, durability: Durability) -> Result<(), StoreError> {
        let named: Vec<_> = changes
            .sorted()
            .into_iter()
            .map(|(cf, k, v)| (cf.name(), k, v))
            .collect();
        self.store.write_cf(&named, durability)
    }

    /// Puts everything written so far on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.store.flush()
    }

    pub fn record<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, Corrupt> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(b) => postcard::from_bytes(&b)
                .map(Some)
                .map_err(|e| corrupt(cf, key, &e.to_string())),
        }
    }

    /// The records at `keys` in `cf`, in their order (one batched lookup).
    pub fn records<T: DeserializeOwned>(
        &self,
        cf: Cf,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<T>>, Corrupt> {
        let values = self
            .store
            .multi_get_cf(cf.name(), keys)
            .map_err(|e| corrupt(cf, &[], &e.to_string()))?;
        keys.iter()
            .zip(values)
            .map(|(key, v)| match v {
                None => Ok(None),
                Some(b) => postcard::from_bytes(&b)
                    .map(Some)
                    .map_err(|e| corrupt(cf, key, &e.to_string())),
            })
            .collect()
    }

    /// Visits keys of `cf` under `prefix` from `from` on, until `visit` returns false.
    pub fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), Corrupt> {
        self.store
            .scan_cf(cf.name(), prefix, from, visit)
            .map_err(|e| corrupt(cf, prefix, &e.to_string()))
    }

    /// A checksum over every column family: equal read models have equal checksums.
    pub fn checksum(&self) -> Result<String, Corrupt> {
        let mut sum = muster_readmodel::Checksum::default();
        for cf in Cf::ALL {
            self.scan(cf, &[], &[], |k, v| {
                sum.add(cf, k, v);
                true
            })?;
        }
        Ok(sum.finish())
    }
}

fn corrupt(cf: Cf, key: &[u8], reason: &str) -> Corrupt {
    Corrupt {
        cf: cf.name(),
        key: hex::encode(key),
        reason: reason.to_string(),
    }
}

impl Read for Db {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Corrupt> {
        self.store
            .get_cf(cf.name(), key)
            .map_err(|e| corrupt(cf, key, &e.to_string()))
    }
}
