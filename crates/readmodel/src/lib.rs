//! The projections' pure fold: every event of the log becomes changes to read-model records and
//! their indexes. No I/O: the fold reads through [`Read`] and writes into a [`Tx`], whose
//! changes the service commits to RocksDB in one `WriteBatch` together with the position.
//!
//! # Layout
//! - [`keys`]: the column families and how keys are laid out in them (orderings that make
//!   paging, prefix scans and resumable watches work).
//! - [`records`]: the values stored (needs, offers, assignments, verifications, history,
//!   changes, set-aside events), postcard-encoded. They are not the log: a new format means a
//!   rebuild, signalled by [`FORMAT`].
//! - [`fold`]: the fold itself, one event at a time; a malformed or inconsistent event is set
//!   aside with its reason and the position still moves on.
//! - [`counters`]: dashboard counters and the time-to-match histogram.
//! - [`tx`]: an overlay of pending changes over a [`Read`], and [`MemStore`], an in-memory
//!   store used by tests as the independent fold the RocksDB model is compared with.

pub mod counters;
pub mod fold;
pub mod keys;
pub mod records;
pub mod tx;

pub use fold::{Outcome, apply};
pub use keys::Cf;
pub use tx::{Changes, Layered, MemStore, Read, Tx};

/// The layout of the read models; a database written with another needs a rebuild.
pub const FORMAT: u32 = 1;

/// A stored record did not decode: the read model is damaged and must be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read model damaged: {cf} key {key}: {reason} (rebuild it with `muster replay rebuild`)")]
pub struct Corrupt {
    pub cf: &'static str,
    pub key: String,
    pub reason: String,
}

/// A SHA-256 over every (column family, key, value), fed in column-family then key order: two
/// read models with the same checksum hold the same data.
#[derive(Debug, Default)]
pub struct Checksum(sha2::Sha256);

impl Checksum {
    pub fn add(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        use sha2::Digest;
        self.0.update([cf as u8]);
        self.0.update((key.len() as u64).to_le_bytes());
        self.0.update(key);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
    }

    pub fn finish(self) -> String {
        use sha2::Digest;
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The [`Checksum`] of `items`.
pub fn checksum<'a>(items: impl IntoIterator<Item = (Cf, &'a [u8], &'a [u8])>) -> String {
    let mut c = Checksum::default();
    for (cf, k, v) in items {
        c.add(cf, k, v);
    }
    c.finish()
}
