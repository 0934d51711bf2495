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
    read_only: bool,
    /// The column families opened besides the default one.
    cfs: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Rocks {
        path: String,
        source: rocksdb::Error,
    },
    #[error("rocksdb at {path} has no column family {name}")]
    NoColumnFamily { path: String, name: String },
    #[error("rocksdb at {path} is open read-only")]
    ReadOnly { path: String },
}

/// How durable a write is once it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (the write-ahead log is fsynced).
    Synced,
    /// In the write-ahead log, not yet fsynced: survives the process dying, not the machine.
    Buffered,
    /// In memory only until [`Store::flush`]: for building a database that is thrown away if
    /// the build does not finish.
    Unlogged,
}

/// Keys and their values, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// One change to a named column family: `(cf, key, Some(value))` a put, `None` a delete.
pub type CfChange<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// One change in an atomic write.
#[derive(Debug, Clone)]
pub enum Change {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// How a column family is read, which decides whether it keeps bloom filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Point lookups, many of keys that do not exist (yet): bloom filters in the memtable and
    /// in every table answer those without searching.
    Point,
    /// Prefix scans only: whole-key bloom filters would never be consulted, only built (and a
    /// memtable's costs every insert a few cache misses).
    Scan,
}

fn options(access: Access) -> rocksdb::Options {
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    options.set_max_background_jobs(2);
    if access == Access::Point {
        // Folds look up many keys that do not exist yet (a new need, a first counter): bloom
        // filters answer those without searching the memtable or reading table blocks.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        options.set_block_based_table_factory(&table);
        options.set_memtable_prefix_bloom_ratio(0.1);
        options.set_memtable_whole_key_filtering(true);
    }
    // Small memtables (RocksDB's default is 64 MiB per column family): a fold inserts keys
    // scattered over the whole key space, and each insert walks the memtable's skiplist; at
    // 8 MiB the walk and the memtable's bloom filter stay in cache. Measured on the
    // projections' fold: 122k events/s at 64 MiB, 143k at 8 MiB (BENCHMARKS.md).
    options.set_write_buffer_size(8 << 20);
    options
}

/// Each column family, the default one included (for point reads), with its [`options`]:
/// opened by name alone, RocksDB gives them its defaults (no bloom filters, no compression),
/// whatever the database's own options say.
fn with_options<'a>(
    cfs: &'a [(&'a str, Access)],
) -> impl Iterator<Item = (&'a str, rocksdb::Options)> {
    let default = (!cfs
        .iter()
        .any(|(name, _)| *name == rocksdb::DEFAULT_COLUMN_FAMILY_NAME))
    .then_some((rocksdb::DEFAULT_COLUMN_FAMILY_NAME, Access::Point));
    default
        .into_iter()
        .chain(cfs.iter().copied())
        .map(|(cf, access)| (cf, options(access)))
}

impl Store {
    /// Opens (creating if needed) the database at `path` with only the default column family.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_cfs(path, &[])
    }

    /// Opens (creating if needed) the database at `path` with these column families besides
    /// the default one.
    pub fn open_cfs(path: &Path, cfs: &[(&str, Access)]) -> Result<Self, StoreError> {
        let db = rocksdb::DB::open_cf_with_opts(&options(Access::Point), path, with_options(cfs))
            .map_err(|source| StoreError::Rocks {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            read_only: false,
            cfs: cfs.iter().map(|(name, _)| name.to_string()).collect(),
        })
    }

    /// Opens an existing database for reading only (several readers may share it; a writer
    /// may not be running on it).
    pub fn open_read_only(path: &Path, cfs: &[(&str, Access)]) -> Result<Self, StoreError> {
        let mut options = options(Access::Point);
        options.create_if_missing(false);
        let db =
            rocksdb::DB::open_cf_with_opts_for_read_only(&options, path, with_options(cfs), false)
                .map_err(|source| StoreError::Rocks {
                    path: path.display().to_string(),
                    source,
                })?;
        Ok(Self {
            db,
            read_only: true,
            cfs: cfs.iter().map(|(name, _)| name.to_string()).collect(),
        })
    }

    /// Deletes the database at `path` and everything in it.
    pub fn destroy(path: &Path) -> Result<(), StoreError> {
        rocksdb::DB::destroy(&options(Access::Point), path).map_err(|source| StoreError::Rocks {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn err(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.db.path().display().to_string(),
            source,
        }
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::NoColumnFamily {
                path: self.db.path().display().to_string(),
                name: name.to_string(),
            })
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|e| self.err(e))
    }

    pub fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = self.cf(cf)?;
        self.db.get_cf(handle, key).map_err(|e| self.err(e))
    }

    /// The values of `keys` in `cf`, in their order: one batched lookup (RocksDB sorts the keys
    /// and walks each memtable and table once), cheaper than a get per key.
    pub fn multi_get_cf(
        &self,
        cf: &str,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let handle = self.cf(cf)?;
        self.db
            .batched_multi_get_cf(handle, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(|e| self.err(e)))
            .collect()
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
        self.commit(batch, Durability::Synced)
    }

    /// Applies changes to named column families atomically (one `WriteBatch`): `(cf, key,
    /// Some(value))` puts, `None` deletes.
    pub fn write_cf(
        &self,
        changes: &[CfChange<'_>],
        durability: Durability,
    ) -> Result<(), StoreError> {
        // Sized up front: a batch of a few thousand changes would otherwise be copied each time
        // it doubles. Each record also holds a tag, a column family id and two lengths.
        let bytes = changes
            .iter()
            .map(|(_, k, v)| k.len() + v.map_or(0, <[u8]>::len) + 12)
            .sum::<usize>();
        let mut batch = rocksdb::WriteBatch::with_capacity_bytes(bytes + 12);
        let mut last: Option<(&str, &rocksdb::ColumnFamily)> = None;
        for &(cf, k, v) in changes {
            // Changes usually come column family by column family: look each one up once.
            let handle = match last {
                Some((name, handle)) if name == cf => handle,
                _ => self.cf(cf)?,
            };
            last = Some((cf, handle));
            match v {
                Some(v) => batch.put_cf(handle, k, v),
                None => batch.delete_cf(handle, k),
            }
        }
        self.commit(batch, durability)
    }

    fn commit(&self, batch: rocksdb::WriteBatch, durability: Durability) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                path: self.db.path().display().to_string(),
            });
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(durability == Durability::Synced);
        options.disable_wal(durability == Durability::Unlogged);
        self.db.write_opt(batch, &options).map_err(|e| self.err(e))
    }

    /// Writes everything to disk: the write-ahead log and every column family's memtable
    /// (which holds what was written [`Durability::Unlogged`]).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|e| self.err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        for name in &self.cfs {
            let handle = self.cf(name)?;
            self.db.flush_cf(handle).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Every key and value whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<KeyValues, StoreError> {
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

    /// Visits the keys of `cf` that start with `prefix`, in key order, from the first key at or
    /// after `from` (which should itself start with `prefix`), until `visit` returns false.
    pub fn scan_cf(
        &self,
        cf: &str,
        prefix: &[u8],
        from: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let handle = self.cf(cf)?;
        let start = if from < prefix { prefix } else { from };
        for item in self.db.iterator_cf(
            handle,
            rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
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

#[cfg(test)]
mod cf_tests {
    use super::*;

    #[test]
    fn column_families_are_written_together_and_scanned_by_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open_cfs(dir.path(), &[("a", Access::Point), ("b", Access::Scan)])
                .expect("open");
            store
                .write_cf(
                    &[
                        ("a", &b"x/1"[..], Some(&b"1"[..])),
                        ("a", b"x/2", Some(b"2")),
                        ("a", b"y/1", Some(b"3")),
                        ("b", b"x/1", Some(b"4")),
                    ],
                    Durability::Synced,
                )
                .expect("write");
            assert!(matches!(
                store.write_cf(&[("nope", &b"k"[..], None)], Durability::Buffered),
                Err(StoreError::NoColumnFamily { .. })
            ));
        }
        let store = Store::open_read_only(dir.path(), &[("a", Access::Point), ("b", Access::Scan)])
            .expect("read-only");
        let mut seen = Vec::new();
        store
            .scan_cf("a", b"x/", b"x/2", |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                true
            })
            .expect("scan");
        assert_eq!(seen, vec![(b"x/2".to_vec(), b"2".to_vec())]);
        assert_eq!(store.get_cf("b", b"x/1").expect("get"), Some(b"4".to_vec()));
        assert!(matches!(
            store.write_cf(&[("a", &b"x/1"[..], None)], Durability::Buffered),
            Err(StoreError::ReadOnly { .. })
        ));
    }
}

#[cfg(test)]
mod options_tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The sections of the newest OPTIONS file RocksDB wrote in `dir`, by header.
    fn written_options(dir: &Path) -> BTreeMap<String, String> {
        let newest = std::fs::read_dir(dir)
            .expect("list the database")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| name.starts_with("OPTIONS-"))
            .max_by_key(|name| name["OPTIONS-".len()..].parse::<u64>().unwrap_or(0))
            .expect("RocksDB writes an OPTIONS file");
        let text = std::fs::read_to_string(dir.join(newest)).expect("read OPTIONS");
        let mut sections = BTreeMap::new();
        let mut header = String::new();
        for line in text.lines() {
            if line.starts_with('[') {
                header = line.to_string();
            }
            sections
                .entry(header.clone())
                .or_insert_with(String::new)
                .push_str(line.trim());
        }
        sections
    }

    #[test]
    fn a_multi_get_answers_each_key_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_cfs(dir.path(), &[("a", Access::Point)]).expect("open");
        store
            .write_cf(
                &[
                    ("a", &b"k2"[..], Some(&b"two"[..])),
                    ("a", b"k1", Some(b"one")),
                ],
                Durability::Buffered,
            )
            .expect("write");
        let got = store
            .multi_get_cf("a", &[b"k2", b"absent", b"k1", b"k2"])
            .expect("multi-get");
        assert_eq!(
            got,
            [
                Some(b"two".to_vec()),
                None,
                Some(b"one".to_vec()),
                Some(b"two".to_vec())
            ]
        );
    }

    #[test]
    fn every_column_family_gets_the_stores_options() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(
            Store::open_cfs(
                dir.path(),
                &[("needs", Access::Point), ("history", Access::Scan)],
            )
            .expect("open"),
        );
        let sections = written_options(dir.path());
        for (cf, access) in [
            ("default", Access::Point),
            ("needs", Access::Point),
            ("history", Access::Scan),
        ] {
            let cf_options = &sections[&format!("[CFOptions \"{cf}\"]")];
            assert!(
                cf_options.contains("compression=kLZ4Compression"),
                "{cf}: not LZ4-compressed"
            );
            assert!(
                cf_options.contains("write_buffer_size=8388608"),
                "{cf}: not the store's 8 MiB memtables"
            );
            let table = &sections[&format!("[TableOptions/BlockBasedTable \"{cf}\"]")];
            let point = access == Access::Point;
            assert_eq!(
                cf_options.contains("memtable_whole_key_filtering=true"),
                point,
                "{cf}: memtable bloom filter for {access:?}"
            );
            assert_eq!(
                table.contains("filter_policy=bloomfilter"),
                point,
                "{cf}: tables' bloom filter for {access:?}: {table}"
            );
        }
    }
}
