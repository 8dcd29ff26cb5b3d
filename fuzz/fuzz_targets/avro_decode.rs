//! The Avro single-object decoder on arbitrary bytes: `decode` (the direct
//! decoder for current schemas, apache-avro with schema resolution for older
//! ones), `decode_with_apache_avro` (apache-avro only) and `decode_routed`.
//!
//! Input: a mode byte, then either the record bytes as they are, or a
//! fingerprint index and a datum (the header is then one the registry
//! knows, so the fuzzer spends its time in the datum decoders).
//!
//! Asserts: no panic; both decoders accept exactly the same inputs and read
//! the same record from them; a decoded record re-encodes under its current
//! schema and decodes back to itself; `decode_routed` keeps a record iff its
//! topic is the entry's and its key is the entry's key.

#![no_main]

use std::sync::LazyLock;

use emosation_core::Record;
use emosation_core::ids::Topic;
use emosation_schemas::{
    CURRENT, HISTORY, LEGACY, current_fingerprint, decode, decode_routed, decode_with_apache_avro, encode, fingerprint,
};
use libfuzzer_sys::fuzz_target;

/// Every fingerprint the registry reads: current, released, legacy.
static FINGERPRINTS: LazyLock<Vec<[u8; 8]>> = LazyLock::new(|| {
    let current = CURRENT.iter().map(|(kind, _, _)| current_fingerprint(*kind));
    let history = HISTORY
        .iter()
        .map(|(_, _, text)| fingerprint::single_object_fingerprint(text).expect("a released schema"));
    let legacy = LEGACY.iter().map(|(_, _, fp)| *fp);
    current.chain(history).chain(legacy).collect()
});

/// The same record, floats compared by their bits (NaN is a valid score on
/// the log): two records are the same iff they encode the same.
fn same(a: &Record, b: &Record) -> bool {
    encode(a).expect("a decoded record encodes") == encode(b).expect("a decoded record encodes")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes: Vec<u8> = match (mode & 1, rest.split_first()) {
        (1, Some((&which, body))) => {
            let fp = FINGERPRINTS[usize::from(which) % FINGERPRINTS.len()];
            [&[0xC3, 0x01][..], &fp, body].concat()
        }
        _ => rest.to_vec(),
    };

    let fast = decode(&bytes);
    let slow = decode_with_apache_avro(&bytes);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => assert!(same(a, b), "the decoders disagree: {a:?} vs {b:?}"),
        (Err(a), Err(b)) => {
            // Both errors render (they reach logs and metrics).
            let _ = (a.to_string(), b.to_string());
        }
        _ => panic!("one decoder accepts what the other refuses: {fast:?} vs {slow:?}"),
    }

    if let Ok(record) = &fast {
        let encoded = encode(record).expect("a decoded record encodes");
        assert_eq!(
            encoded[2..10],
            current_fingerprint(emosation_schemas::record_type(record))
        );
        let again = decode(&encoded).expect("an encoded record decodes");
        assert!(same(record, &again), "{record:?} re-encoded reads as {again:?}");
    }

    // The entry's topic and key: the record's own, or not quite.
    let topic = if mode & 2 == 0 { Topic::Accounts } else { Topic::Rooms };
    let own = fast.as_ref().map(Record::key).unwrap_or_default();
    let key: Vec<u8> = match (mode >> 2) & 3 {
        0 => own.into_bytes(),
        1 => Vec::new(),
        2 => [own.as_bytes(), b"x"].concat(),
        _ => own.to_uppercase().into_bytes(),
    };
    let routed = decode_routed(topic, &key, &bytes);
    let expected = fast
        .ok()
        .filter(|r| r.topic() == topic && r.key().as_bytes() == key.as_slice());
    match (&routed, &expected) {
        (Some(a), Some(b)) => assert!(same(a, b)),
        (None, None) => {}
        _ => panic!("decode_routed({topic:?}, {key:?}) = {routed:?}, expected {expected:?}"),
    }
});
