//! [`EntityCache`]: the embedded view store's in-process cache of entities.
//!
//! Every message reads its room and its author's membership several times on
//! its way through the system (ingest's checks, the projector's prefetch, the
//! fan-out's decision), and every fold rewrites them. In fjall each point read
//! searches the memtable's skip list, whose keys pile up a version per write
//! of a busy row, then the tables; the cache answers the hot entities from a
//! hash map instead.
//!
//! Coherence: the store is written only by `apply` (and by bulk loads of
//! entities that did not exist, which the cache never claims to know:
//! it holds only entities that exist), so `apply` writes its changes through
//! the cache after committing them. A read that misses loads from fjall and
//! fills the cache only if no `apply` ran meanwhile (an epoch check under the
//! cache's lock); otherwise a value read before a commit could outlive it.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use emosation_core::view::{ViewKey, ViewValue};
use rustc_hash::FxHasher;

/// Entities held at most; past it, an eighth of them are dropped.
const CAPACITY: usize = 64 * 1024;

#[derive(Default)]
pub(crate) struct EntityCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<ViewKey, ViewValue, BuildHasherDefault<FxHasher>>,
    /// Advanced by every write-through; fills from older reads are dropped.
    epoch: u64,
}

impl EntityCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached entity, and the epoch to pass to [`EntityCache::fill`] on a miss.
    pub(crate) fn get(&self, key: &ViewKey) -> Result<ViewValue, u64> {
        let inner = self.lock();
        inner.map.get(key).cloned().ok_or(inner.epoch)
    }

    /// Caches an entity read from the store at `epoch`, unless a write came since.
    pub(crate) fn fill(&self, key: &ViewKey, value: &ViewValue, epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch == epoch {
            insert(&mut inner, key.clone(), value.clone());
        }
    }

    /// Writes committed changes through (`None`: deleted).
    pub(crate) fn write<'a>(&self, changes: impl IntoIterator<Item = (&'a ViewKey, &'a Option<ViewValue>)>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for (k, v) in changes {
            match v {
                Some(v) => insert(&mut inner, k.clone(), v.clone()),
                None => {
                    inner.map.remove(k);
                }
            }
        }
    }

    /// Forgets everything (the tables were dropped).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.map.clear();
    }
}

fn insert(inner: &mut Inner, key: ViewKey, value: ViewValue) {
    if inner.map.len() >= CAPACITY && !inner.map.contains_key(&key) {
        let mut n = 0usize;
        inner.map.retain(|_, _| {
            n += 1;
            !n.is_multiple_of(8)
        });
    }
    inner.map.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> ViewKey {
        ViewKey::Room(format!("r{n}"))
    }

    fn value(s: &str) -> ViewValue {
        ViewValue::Username(s.into())
    }

    #[test]
    fn a_fill_older_than_a_write_is_dropped() {
        let cache = EntityCache::default();
        let epoch = cache.get(&key(1)).unwrap_err();
        // A write lands between the miss's read from the store and its fill.
        cache.write([(&key(1), &Some(value("new")))]);
        cache.fill(&key(1), &value("old"), epoch);
        assert_eq!(cache.get(&key(1)).unwrap(), value("new"));
        // Deleted: no longer answered.
        cache.write([(&key(1), &None)]);
        let epoch = cache.get(&key(1)).unwrap_err();
        cache.fill(&key(2), &value("two"), epoch);
        assert_eq!(cache.get(&key(2)).unwrap(), value("two"));
        cache.clear();
        assert!(cache.get(&key(2)).is_err());
    }

    #[test]
    fn it_stays_bounded() {
        let cache = EntityCache::default();
        for n in 0..(CAPACITY as u64 * 3) {
            cache.write([(&key(n), &Some(value("v")))]);
        }
        let len = cache.lock().map.len();
        assert!(len <= CAPACITY, "{len} entities held");
        let last = key(CAPACITY as u64 * 3 - 1);
        assert!(cache.get(&last).is_ok(), "the newest write is held");
    }
}
