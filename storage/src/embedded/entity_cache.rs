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
//! the cache after committing them — except idempotency keys, which only a
//! repeated send reads again: their writes remove any copy instead. A read that misses loads from fjall and
//! fills the cache only if no `apply` ran meanwhile (an epoch check under the
//! cache's lock); otherwise a value read before a commit could outlive it.
//!
//! Cost: no operation is ever proportional to the cache's size, so the
//! cache never stalls the fold that writes through it. The map is allocated
//! at its full size up front (a hash map that grows rehashes everything at
//! each doubling: at 2,000 messages/s, 20-40 ms stalls at 2, 5 and 9 s), and
//! it evicts one entity at a time, oldest first, with a second chance for
//! those read or written since the hand last passed them (CLOCK), instead of
//! sweeping the map when it is full.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex};

use emosation_core::view::{ViewKey, ViewValue};
use rustc_hash::FxHasher;

/// Entities held at most.
const CAPACITY: usize = 64 * 1024;
/// Bytes of entities (their encoded keys and values) held at most: a cache
/// of 65,536 messages of 16 KB would otherwise hold a gigabyte.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Entities the clock hand passes over (second chances) before it evicts
/// the next one regardless: bounds the work of one insert.
const MAX_SECOND_CHANCES: usize = 32;

pub(crate) struct EntityCache {
    inner: Mutex<Inner>,
}

impl Default for EntityCache {
    fn default() -> Self {
        EntityCache::with_limits(CAPACITY, MAX_BYTES)
    }
}

struct Slot {
    /// Boxed: the table is allocated whole up front, so its slots stay small.
    value: Box<ViewValue>,
    /// Read or written since the clock hand last passed.
    used: bool,
    /// What it counts against the byte bound.
    bytes: usize,
}

struct Inner {
    capacity: usize,
    max_bytes: usize,
    /// Sum of the slots' `bytes`.
    bytes: usize,
    /// Keys are shared with `order` (one allocation per entity, not a copy
    /// of its strings for each).
    map: HashMap<Arc<ViewKey>, Slot, BuildHasherDefault<FxHasher>>,
    /// Keys in the order they entered the map; the front is the clock hand.
    /// May hold keys removed since (skipped when the hand reaches them).
    order: VecDeque<Arc<ViewKey>>,
    /// Advanced by every write-through; fills from older reads are dropped.
    epoch: u64,
}

impl EntityCache {
    /// A cache of at most `capacity` entities and `max_bytes` bytes of them.
    pub(crate) fn with_limits(capacity: usize, max_bytes: usize) -> Self {
        let mut map = HashMap::with_capacity_and_hasher(capacity, Default::default());
        touch_every_page(&mut map);
        EntityCache {
            inner: Mutex::new(Inner {
                capacity,
                max_bytes,
                bytes: 0,
                map,
                order: VecDeque::with_capacity(capacity),
                epoch: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached entity, and the epoch to pass to [`EntityCache::fill`] on a miss.
    pub(crate) fn get(&self, key: &ViewKey) -> Result<ViewValue, u64> {
        let mut inner = self.lock();
        let epoch = inner.epoch;
        match inner.map.get_mut(key) {
            Some(slot) => {
                slot.used = true;
                Ok((*slot.value).clone())
            }
            None => Err(epoch),
        }
    }

    /// Whether the entity is cached (so stored), without taking it.
    pub(crate) fn contains(&self, key: &ViewKey) -> bool {
        self.lock().map.contains_key(key)
    }

    /// Caches an entity read from the store at `epoch`, unless a write came
    /// since; `bytes` is its size as stored (key and value).
    pub(crate) fn fill(&self, key: &ViewKey, value: &ViewValue, bytes: usize, epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch == epoch {
            inner.insert(Cow::Borrowed(key), Cow::Borrowed(value), bytes);
        }
    }

    /// Writes committed changes through (`None`: deleted), each with its
    /// size as stored; the changes move in (the batch is spent).
    pub(crate) fn write(&self, changes: impl IntoIterator<Item = (ViewKey, Option<ViewValue>, usize)>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        for (k, v, bytes) in changes {
            match v {
                // An idempotency key is read again only by a repeat of its
                // send (the fold's duplicate check; a fresh key is never
                // cached, it does not exist yet): one entity per message
                // that would push a useful one out. Not kept, and no older
                // copy may outlive the write.
                Some(_) if matches!(k, ViewKey::ClientMsg { .. }) => inner.remove(&k),
                Some(v) => inner.insert(Cow::Owned(k), Cow::Owned(v), bytes),
                None => inner.remove(&k),
            }
        }
    }

    /// Forgets everything (the tables were dropped).
    /// The bytes held and the most that will be.
    pub(crate) fn bytes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.bytes, inner.max_bytes)
    }

    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.map.clear();
        inner.order.clear();
        inner.bytes = 0;
    }
}

/// Writes to every page of the map's table now, so that inserts do not fault
/// them in one at a time later. A hash table's inserts land anywhere in it:
/// until every page of an untouched table has been written once, nearly
/// every insert of a new entity is a page fault, on the fold's path (seen:
/// a quarter of the projector's time per message at 25 messages/s, where the
/// table of 131,072 slots takes minutes to fill). Filling it with as many
/// entries as it holds writes every page (each holds dozens of slots); a
/// clear keeps the allocation.
fn touch_every_page(map: &mut HashMap<Arc<ViewKey>, Slot, BuildHasherDefault<FxHasher>>) {
    let value = Box::new(ViewValue::Username(String::new()));
    for i in 0..map.capacity() {
        map.insert(
            Arc::new(ViewKey::Room(i.to_string())),
            Slot {
                value: value.clone(),
                used: false,
                bytes: 0,
            },
        );
    }
    map.clear();
}

impl Inner {
    fn insert(&mut self, key: Cow<'_, ViewKey>, value: Cow<'_, ViewValue>, bytes: usize) {
        if bytes > self.max_bytes {
            // Never cached: it would evict everything else.
            self.remove(&key);
            return;
        }
        if let Some(slot) = self.map.get_mut(key.as_ref()) {
            *slot.value = value.into_owned();
            slot.used = true;
            self.bytes = self.bytes - slot.bytes + bytes;
            slot.bytes = bytes;
            while self.bytes > self.max_bytes && self.evict_one() {}
            return;
        }
        while (self.map.len() >= self.capacity || self.bytes + bytes > self.max_bytes) && self.evict_one() {}
        self.bytes += bytes;
        let key = Arc::new(key.into_owned());
        self.map.insert(
            Arc::clone(&key),
            Slot {
                value: Box::new(value.into_owned()),
                used: false,
                bytes,
            },
        );
        self.order.push_back(key);
        if self.order.len() > 2 * self.capacity {
            // Only deletes leave keys behind in `order` (rare: a quit, a
            // deleted account); drop them all at once, as seldom as that.
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k.as_ref()));
        }
    }

    fn remove(&mut self, key: &ViewKey) {
        if let Some(slot) = self.map.remove(key) {
            self.bytes -= slot.bytes;
        }
    }

    /// Evicts the oldest entity not used since the hand last passed it (or,
    /// after [`MAX_SECOND_CHANCES`], the next one); false if none is left.
    fn evict_one(&mut self) -> bool {
        let mut chances = 0;
        while let Some(key) = self.order.pop_front() {
            let Some(slot) = self.map.get_mut(key.as_ref()) else {
                continue; // removed since it entered
            };
            if slot.used && chances < MAX_SECOND_CHANCES {
                chances += 1;
                slot.used = false;
                self.order.push_back(key);
                continue;
            }
            self.remove(key.as_ref());
            return true;
        }
        false
    }
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
    fn touching_the_table_leaves_it_empty_and_at_full_size() {
        let cache = EntityCache::with_limits(1000, MAX_BYTES);
        let inner = cache.lock();
        assert!(inner.map.is_empty());
        assert!(inner.map.capacity() >= 1000);
        drop(inner);
        assert!(cache.get(&key(0)).is_err());
        assert!(cache.get(&ViewKey::Room("0".into())).is_err());
    }

    #[test]
    fn a_fill_older_than_a_write_is_dropped() {
        let cache = EntityCache::default();
        let epoch = cache.get(&key(1)).unwrap_err();
        // A write lands between the miss's read from the store and its fill.
        cache.write([(key(1), Some(value("new")), 10)]);
        cache.fill(&key(1), &value("old"), 10, epoch);
        assert_eq!(cache.get(&key(1)).unwrap(), value("new"));
        // Deleted: no longer answered.
        cache.write([(key(1), None, 10)]);
        let epoch = cache.get(&key(1)).unwrap_err();
        cache.fill(&key(2), &value("two"), 10, epoch);
        assert_eq!(cache.get(&key(2)).unwrap(), value("two"));
        cache.clear();
        assert!(cache.get(&key(2)).is_err());
    }

    /// An idempotency key's write is not kept (it is read again only by a
    /// repeat of its send), and leaves no older copy answering.
    #[test]
    fn idempotency_keys_are_not_kept_on_write() {
        let cache = EntityCache::default();
        let cm = ViewKey::ClientMsg {
            room_id: "r".into(),
            user_id: "u".into(),
            client_msg_id: "c".into(),
        };
        let id = |s: &str| ViewValue::ClientMsg(s.into());
        cache.write([
            (cm.clone(), Some(id("0000000000000001")), 40),
            (key(1), Some(value("m")), 10),
        ]);
        assert!(cache.get(&cm).is_err(), "not kept");
        assert_eq!(
            cache.get(&key(1)).unwrap(),
            value("m"),
            "the batch's other entities are"
        );
        // Read from the store and kept; a later write must not leave it.
        let epoch = cache.get(&cm).unwrap_err();
        cache.fill(&cm, &id("0000000000000001"), 40, epoch);
        assert!(cache.get(&cm).is_ok());
        cache.write([(cm.clone(), Some(id("0000000000000002")), 40)]);
        assert!(cache.get(&cm).is_err(), "the older copy is gone");
    }

    #[test]
    fn it_stays_bounded() {
        let cache = EntityCache::default();
        for n in 0..(CAPACITY as u64 * 3) {
            cache.write([(key(n), Some(value("v")), 10)]);
        }
        let len = cache.lock().map.len();
        assert!(len <= CAPACITY, "{len} entities held");
        let last = key(CAPACITY as u64 * 3 - 1);
        assert!(cache.get(&last).is_ok(), "the newest write is held");
    }

    #[test]
    fn eviction_keeps_what_is_used_and_drops_the_oldest_of_the_rest() {
        let cache = EntityCache::with_limits(4, MAX_BYTES);
        for n in 0..4 {
            cache.write([(key(n), Some(value("v")), 10)]);
        }
        // r0 is read (a hot room); r1..r3 are not.
        assert!(cache.get(&key(0)).is_ok());
        cache.write([(key(4), Some(value("v")), 10)]);
        assert!(cache.get(&key(0)).is_ok(), "a used entity gets a second chance");
        assert!(cache.get(&key(1)).is_err(), "the oldest unused one goes");
        for n in 2..=4 {
            assert!(cache.get(&key(n)).is_ok(), "r{n} is held");
        }
        assert_eq!(cache.lock().map.len(), 4);
    }

    #[test]
    fn deleted_keys_do_not_pile_up_in_the_clock() {
        let cache = EntityCache::with_limits(8, MAX_BYTES);
        for n in 0..1000 {
            cache.write([(key(n), Some(value("v")), 10)]);
            cache.write([(key(n), None, 10)]);
        }
        let inner = cache.lock();
        assert!(inner.map.is_empty());
        assert!(inner.order.len() <= 16, "{} keys in the clock", inner.order.len());
    }

    #[test]
    fn it_stays_within_its_bytes() {
        let cache = EntityCache::with_limits(1000, 10_000);
        for n in 0..500 {
            cache.write([(key(n), Some(value("big")), 1_000)]);
            cache.fill(
                &key(10_000 + n),
                &value("small"),
                10,
                cache.get(&key(10_000 + n)).unwrap_err(),
            );
        }
        let inner = cache.lock();
        assert!(inner.bytes <= 10_000, "{} bytes held", inner.bytes);
        assert_eq!(inner.bytes, inner.map.values().map(|s| s.bytes).sum::<usize>());
        drop(inner);
        assert!(cache.get(&key(499)).is_ok(), "the newest write is held");
        // An entity bigger than the whole cache is never held (and evicts nothing).
        cache.write([(key(7_000), Some(value("huge")), 20_000)]);
        assert!(cache.get(&key(7_000)).is_err());
        assert!(cache.get(&key(499)).is_ok());
    }

    #[test]
    fn an_entity_written_again_is_updated_in_place() {
        let cache = EntityCache::with_limits(2, MAX_BYTES);
        cache.write([(key(1), Some(value("a")), 10)]);
        cache.write([(key(1), Some(value("b")), 10)]);
        assert_eq!(cache.get(&key(1)).unwrap(), value("b"));
        let inner = cache.lock();
        assert_eq!((inner.map.len(), inner.order.len()), (1, 1));
    }
}
