//! Inputs the fuzz targets (fuzz/) found, kept as tests of the normal suite.

use emosation_schemas::{RecordType, SchemaError, current_fingerprint, decode, decode_with_apache_avro};

/// An `EmotionRecorded` single object whose datum is `body`.
fn emotion_recorded(body: &[u8]) -> Vec<u8> {
    let fp = current_fingerprint(RecordType::EmotionRecorded);
    [&[0xC3, 0x01][..], &fp, body].concat()
}

/// A zig-zag varint.
fn long(v: i64) -> Vec<u8> {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// `avro_decode` found a 31-byte record whose float array claimed a block
/// of 100 million items: apache-avro reserved room for them all (5.8 GB)
/// before reading one. The claim is now refused before apache-avro reads
/// the datum, by both decoders.
#[test]
fn an_array_count_beyond_the_record_is_malformed_before_any_allocation() {
    // request_id, at, room_id "", message_id "", label "", score 0.0, then
    // a block count of 100 million floats and 4 bytes.
    let body = [&[0, 0, 0, 0, 0, 0, 0, 0, 0][..], &long(100_000_000), &[0; 4]].concat();
    let bytes = emotion_recorded(&body);
    assert_eq!(
        decode_with_apache_avro(&bytes),
        Err(SchemaError::Malformed("array longer than the record".into()))
    );
    assert!(matches!(decode(&bytes), Err(SchemaError::Malformed(_))));
    // A negative count (followed by the block's size) is bounded the same way.
    let body = [&[0, 0, 0, 0, 0, 0, 0, 0, 0][..], &long(-100_000_000), &long(4), &[0; 4]].concat();
    assert_eq!(
        decode_with_apache_avro(&emotion_recorded(&body)),
        Err(SchemaError::Malformed("array longer than the record".into()))
    );
}

/// The same for a string: a length claim of 500 MB in a record of a few
/// bytes is refused before apache-avro allocates it.
#[test]
fn a_string_length_beyond_the_record_is_malformed_before_any_allocation() {
    let body = [&[0, 0][..], &long(500_000_000), b"room"].concat();
    let bytes = emotion_recorded(&body);
    assert_eq!(
        decode_with_apache_avro(&bytes),
        Err(SchemaError::Malformed("string longer than the record".into()))
    );
    assert!(matches!(decode(&bytes), Err(SchemaError::Malformed(_))));
}
