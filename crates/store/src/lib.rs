//! RocksDB for Muster's services: state kept next to the log position it reflects.
//!
//! A service that folds the log writes what it derived *and* the sequence it derived it from in
//! one `WriteBatch`, synced, so after a crash the two always agree: nothing is lost and nothing is
//! applied twice. This crate is that small, blocking API; async callers run it on
//! `spawn_blocking`.

use std::path::Path;

/// A RocksDB database of one service.
#[derive(Debug)]
pub struct Store {
    db: rocksdb::DB,
}

#[derive(Debug, thiserror::Error)]
#[error("rocksdb at {path}: {source}")]
pub struct StoreError {
    path: String,
    source: rocksdb::Error,
}

/// One change in an atomic write.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let db = rocksdb::DB::open(&options, path).map_err(|source| StoreError {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { db })
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError {
            path: self.db.path().display().to_string(),
            source,
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    /// Applies `changes` atomically and durably (one synced `WriteBatch`).
    pub fn write(&self, changes: impl IntoIterator<Item = Change>) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        for c in changes {
            match c {
                Change::Put(k, v) => batch.put(k, v),
                Change::Delete(k) => batch.delete(k),
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options).map_err(|e| self.err(e))
    }

    /// Every key and value whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator(rocksdb::IteratorMode::From(
            prefix,
            rocksdb::Direction::Forward,
        )) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .write([
                    Change::Put(b"snap/a".to_vec(), b"1".to_vec()),
                    Change::Put(b"snap/b".to_vec(), b"2".to_vec()),
                    Change::Put(b"meta".to_vec(), b"7".to_vec()),
                ])
                .expect("write");
            store
                .write([Change::Delete(b"snap/a".to_vec())])
                .expect("delete");
        }
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.get(b"meta").expect("get"), Some(b"7".to_vec()));
        assert_eq!(
            store.scan_prefix(b"snap/").expect("scan"),
            vec![(b"snap/b".to_vec(), b"2".to_vec())]
        );
    }
}
