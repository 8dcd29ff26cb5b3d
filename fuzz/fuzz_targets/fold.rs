//! The fold (`emosation_core::fold`) fed arbitrary decodable records.
//!
//! Input: up to 256 records, each either built from the input (small id
//! pools, so that names collide, rooms fill and messages get read; now and
//! then any string or number: `emosation_fuzz::records`) or decoded from
//! input bytes by the schemas' decoder; each at the position a log would
//! give it. Then a batch size for the projector's path.
//!
//! Asserts: no panic; every built record encodes and decodes back to itself
//! (the fold sees only what the log can carry); folding the same records
//! into two fresh states gives equal states and outcomes; the fold reads
//! and updates only the keys `keys_read_by` names; the projector's path
//! (prefetch into an `Overlay` per batch, fold, commit the changes) and a
//! fold of one partition after another both give the same state and
//! outcomes as the live order.

#![no_main]

use std::collections::BTreeSet;

use arbitrary::{Result, Unstructured};
use emosation_core::view::{MemState, Overlay};
use emosation_core::{FoldState, LogPosition, Outcome, Record, ViewKey, ViewValue, fold, keys_read_by};
use emosation_fuzz::records::LogBuilder;
use emosation_schemas::{decode, encode};
use libfuzzer_sys::fuzz_target;

/// A whole state whose reads must be among the keys the record declares.
struct Checked<'a> {
    state: &'a mut MemState,
    allowed: BTreeSet<ViewKey>,
}

impl Checked<'_> {
    fn check(&self, key: &ViewKey) {
        assert!(
            self.allowed.contains(key),
            "the fold read {key:?}, not among keys_read_by"
        );
    }
}

impl FoldState for Checked<'_> {
    fn get(&self, key: &ViewKey) -> Option<&ViewValue> {
        self.check(key);
        self.state.get(key)
    }
    fn put(&mut self, key: ViewKey, value: ViewValue) {
        self.state.put(key, value);
    }
    fn delete(&mut self, key: &ViewKey) {
        self.state.delete(key);
    }
    fn update(&mut self, key: &ViewKey, f: impl FnOnce(&mut ViewValue)) {
        // An update of a key the projector did not prefetch would be lost.
        self.check(key);
        self.state.update(key, f);
    }
}

fn fold_all(log: &[(LogPosition, Record)]) -> (MemState, Vec<Outcome>) {
    let mut state = MemState::default();
    let outcomes = log
        .iter()
        .map(|(pos, record)| {
            let allowed = keys_read_by(record).into_iter().collect();
            let mut checked = Checked {
                state: &mut state,
                allowed,
            };
            fold(&mut checked, *pos, record.clone())
        })
        .collect();
    (state, outcomes)
}

/// The projector's path: per batch, prefetch what each record reads from
/// the store into an overlay, fold, then apply the overlay's changes.
fn fold_batched(log: &[(LogPosition, Record)], batch: usize) -> (MemState, Vec<Outcome>) {
    let mut store = MemState::default();
    let mut outcomes = Vec::new();
    for chunk in log.chunks(batch) {
        let mut overlay = Overlay::default();
        for (pos, record) in chunk {
            for key in keys_read_by(record) {
                if !overlay.contains(&key) {
                    let value = store.get(&key).cloned();
                    overlay.preload(key, value);
                }
            }
            outcomes.push(fold(&mut overlay, *pos, record.clone()));
        }
        for (key, value) in overlay.take_changes() {
            match value {
                Some(v) => store.put(key, v),
                None => store.delete(&key),
            }
        }
    }
    (store, outcomes)
}

/// One record: built, or (now and then) decoded from input bytes.
fn step(log: &mut LogBuilder, u: &mut Unstructured<'_>) -> Result<()> {
    if u.ratio(1, 16)? {
        let len = u.arbitrary_len::<u8>()?;
        if let Ok(record) = decode(u.bytes(len)?) {
            log.push(record);
        }
        return Ok(());
    }
    let record = log.record(u)?;
    let bytes = encode(&record).expect("a built record encodes");
    let back = decode(&bytes).expect("a built record decodes");
    assert_eq!(
        encode(&back).expect("a decoded record encodes"),
        bytes,
        "{record:?} does not round-trip"
    );
    log.push(record);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut log = LogBuilder::default();
    while log.log.len() < 256 && !u.is_empty() && step(&mut log, &mut u).is_ok() {}
    let batch = u.int_in_range(1..=17).unwrap_or(1);
    let log = log.log;

    let (a, outcomes_a) = fold_all(&log);
    let (b, outcomes_b) = fold_all(&log);
    assert_eq!(a, b, "two folds of the same records differ");
    assert_eq!(outcomes_a, outcomes_b);

    let (batched, outcomes_batched) = fold_batched(&log, batch);
    assert_eq!(batched, a, "the projector's path (batches of {batch}) differs");
    assert_eq!(outcomes_batched, outcomes_a);

    let mut grouped = log.clone();
    grouped.sort_by_key(|(pos, record)| (record.topic(), pos.partition, pos.offset));
    let (replayed, _) = fold_all(&grouped);
    assert_eq!(
        replayed, a,
        "folding partition by partition differs from the live order"
    );
});
