//! Fingerprints exactly as the Avro specification defines them, checked
//! against the specification's published test vectors and against an
//! independent implementation (fastavro) for every schema we publish.

use emosation_core::Record;
use emosation_core::record as r;
use emosation_schemas::fingerprint::{crc64_avro, parsing_canonical_form, single_object_fingerprint};
use emosation_schemas::{CURRENT, HISTORY, LEGACY, current_fingerprint, decode, encode, record_type};

/// Cases from the test vectors the Avro project publishes with the
/// specification (share/test/data/schema-tests.txt in apache/avro): the
/// input, its Parsing Canonical Form, and the CRC-64-AVRO fingerprint as the
/// signed 64-bit number the file gives.
const SPEC_VECTORS: &[(&str, &str, Option<i64>)] = &[
    (r#""null""#, r#""null""#, Some(7195948357588979594)),
    (r#"{"type":"null"}"#, r#""null""#, None),
    (r#""boolean""#, r#""boolean""#, Some(-6970731678124411036)),
    (r#"{"type":"boolean"}"#, r#""boolean""#, None),
    (r#""int""#, r#""int""#, Some(8247732601305521295)),
    (r#""long""#, r#""long""#, Some(-3434872931120570953)),
    (r#"{"type":"long"}"#, r#""long""#, None),
    (r#""float""#, r#""float""#, Some(5583340709985441680)),
    (r#""double""#, r#""double""#, Some(-8181574048448539266)),
    (r#""bytes""#, r#""bytes""#, Some(5746618253357095269)),
    (r#""string""#, r#""string""#, Some(-8142146995180207161)),
    ("[  ]", "[]", Some(-1241056759729112623)),
    (r#"[ "int"  ]"#, r#"["int"]"#, Some(-5232228896498058493)),
    (
        r#"[ "int" , {"type":"boolean"} ]"#,
        r#"["int","boolean"]"#,
        Some(5392556393470105090),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo"}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}"#,
        r#"{"name":"x.y.foo","type":"record","fields":[]}"#,
        Some(5916914534497305771),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}"#,
        r#"{"name":"a.b.foo","type":"record","fields":[]}"#,
        Some(-4616218487480524110),
    ),
    (
        r#"{"fields":[], "type":"record", "name":"foo", "doc":"foo", "aliases":["foo","bar"]}"#,
        r#"{"name":"foo","type":"record","fields":[]}"#,
        Some(-4824392279771201922),
    ),
    (
        r#"{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}"#,
        r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}"#,
        Some(7843277075252814651),
    ),
    (
        r#"{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},
                      {"order":"descending","name":"f2","doc":"Hello","type":"int"}],
             "type":"record", "name":"foo" }"#,
        r#"{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}"#,
        Some(-4860222112080293046),
    ),
    (
        r#"{"type":"enum", "name":"foo", "symbols":["A1"]}"#,
        r#"{"name":"foo","type":"enum","symbols":["A1"]}"#,
        Some(-6342190197741309591),
    ),
    (
        r#"{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}"#,
        r#"{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}"#,
        Some(-4448647247586288245),
    ),
    (
        r#"{"name":"foo","type":"fixed","size":15}"#,
        r#"{"name":"foo","type":"fixed","size":15}"#,
        Some(1756455273707447556),
    ),
    (
        r#"{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}"#,
        r#"{"name":"x.y.z.foo","type":"fixed","size":32}"#,
        Some(-3064184465700546786),
    ),
    (
        r#"{ "items":{"type":"null"}, "type":"array"}"#,
        r#"{"type":"array","items":"null"}"#,
        Some(-589620603366471059),
    ),
    (
        r#"{ "values":"string", "type":"map"}"#,
        r#"{"type":"map","values":"string"}"#,
        Some(-8732877298790414990),
    ),
    (
        r#"{"name":"PigValue","type":"record",
            "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}"#,
        r#"{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}"#,
        Some(-1759257747318642341),
    ),
];

#[test]
fn canonical_form_and_crc64_match_the_specifications_test_vectors() {
    for (input, canonical, fingerprint) in SPEC_VECTORS {
        let pcf = parsing_canonical_form(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(&pcf, canonical, "canonical form of {input}");
        if let Some(fp) = fingerprint {
            assert_eq!(crc64_avro(pcf.as_bytes()) as i64, *fp, "fingerprint of {canonical}");
        }
    }
    // The specification's own example, and the header bytes it implies.
    assert_eq!(crc64_avro(br#""null""#), 0x63DD_24E7_CC25_8F8A);
    assert_eq!(
        single_object_fingerprint(r#""null""#).unwrap(),
        [0x8a, 0x8f, 0x25, 0xcc, 0xe7, 0x24, 0xdd, 0x63]
    );
}

#[test]
fn annotated_primitives_and_nested_names_reduce_as_the_spec_says() {
    // A logical type is stripped down to its primitive (apache-avro 0.21
    // left `{"type":"long"}`, which no other implementation does).
    let pcf = parsing_canonical_form(
        r#"{"type":"record","name":"R","namespace":"n","fields":[
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"d","type":{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}},
            {"name":"inner","type":{"type":"record","name":"I","fields":[{"name":"x","type":"int"}]}},
            {"name":"again","type":"I"},
            {"name":"other","type":{"type":"fixed","name":"o.F","size":"016"}}]}"#,
    )
    .unwrap();
    assert_eq!(
        pcf,
        r#"{"name":"n.R","type":"record","fields":[{"name":"at","type":"long"},{"name":"d","type":"bytes"},{"name":"inner","type":{"name":"n.I","type":"record","fields":[{"name":"x","type":"int"}]}},{"name":"again","type":"n.I"},{"name":"other","type":{"name":"o.F","type":"fixed","size":16}}]}"#
    );
    assert!(parsing_canonical_form("not json").is_err());
    assert!(parsing_canonical_form(r#"{"type":"record","name":"R"}"#).is_err());
    assert!(parsing_canonical_form("42").is_err());
}

/// `schemas/tests/data/fastavro_fingerprints.tsv`, made by the script beside it.
fn fastavro_table() -> Vec<(String, String, [u8; 8])> {
    let text = include_str!("data/fastavro_fingerprints.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let mut cols = line.split('\t');
            let path = cols.next().unwrap().to_owned();
            let pcf = cols.next().unwrap().to_owned();
            let hex = cols.next().unwrap();
            let mut fp = [0u8; 8];
            for (i, b) in fp.iter_mut().enumerate() {
                *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            (path, pcf, fp)
        })
        .collect()
}

#[test]
fn every_published_schema_has_the_fingerprint_fastavro_computes() {
    let table = fastavro_table();
    let mut schemas: Vec<(String, &str)> = CURRENT
        .iter()
        .map(|(_, stem, text)| (format!("avro/{stem}.avsc"), *text))
        .collect();
    let stems: std::collections::HashMap<_, _> = CURRENT.iter().map(|(kind, stem, _)| (*kind, *stem)).collect();
    schemas.extend(
        HISTORY
            .iter()
            .map(|(kind, v, text)| (format!("avro/history/{}.v{v}.avsc", stems[kind]), *text)),
    );
    assert_eq!(
        table.len(),
        schemas.len(),
        "the table covers every schema file; regenerate it"
    );
    for (path, text) in schemas {
        let (_, pcf, fp) = table
            .iter()
            .find(|(p, _, _)| *p == path)
            .unwrap_or_else(|| panic!("{path} is not in the fastavro table; regenerate it"));
        assert_eq!(&parsing_canonical_form(text).unwrap(), pcf, "{path}");
        assert_eq!(single_object_fingerprint(text).unwrap(), *fp, "{path}");
    }
    // And what the encoder writes is that fingerprint.
    for (kind, stem, _) in CURRENT {
        let (_, _, fp) = table
            .iter()
            .find(|(p, _, _)| *p == format!("avro/{stem}.avsc"))
            .unwrap();
        assert_eq!(current_fingerprint(kind), *fp, "{stem}");
    }
}

fn sample_message() -> Record {
    Record::MessagePosted(r::MessagePosted {
        request_id: 7,
        at: 1_700_000_000_000,
        room_id: "r1".into(),
        author_id: "u1".into(),
        author: "alice".into(),
        client_msg_id: "c1".into(),
        text: "hello".into(),
        attachments: vec![],
    })
}

#[test]
fn records_written_with_the_legacy_fingerprints_still_decode() {
    let rec = sample_message();
    let bytes = encode(&rec).unwrap();
    let (_, _, legacy) = LEGACY
        .iter()
        .find(|(kind, v, _)| *kind == record_type(&rec) && *v == 1)
        .unwrap();
    assert_ne!(&bytes[2..10], legacy, "the encoder writes the spec's fingerprint");
    // What an old build wrote: the v1 datum (no attachments) under the old header.
    let mut old = emosation_schemas::encode_released(&rec, 1).unwrap().unwrap();
    old[2..10].copy_from_slice(legacy);
    assert_eq!(decode(&old).unwrap(), rec);
    // Every legacy fingerprint is known, distinct from every spec one.
    for (kind, _, legacy) in LEGACY {
        assert!(
            CURRENT.iter().all(|(k, _, _)| current_fingerprint(*k) != legacy),
            "{kind:?}"
        );
    }
}

/// The legacy constants are what the encoder wrote before: apache-avro
/// 0.21's `Schema::fingerprint::<Rabin>()` of each released schema (the
/// values seen in real logs: `c44a6671c68fa3f8` for room_created,
/// `db6f6a9e68c06830` message_posted, `ea0977a338efac17` user_signed_up,
/// `fe278f712bb9c4b9` emotion_recorded). If an apache-avro upgrade fixes its
/// canonical form this test fails; the constants stay, the test is dropped.
#[test]
fn legacy_fingerprints_are_what_apache_avro_0_21_wrote() {
    let stems: std::collections::HashMap<_, _> = CURRENT.iter().map(|(kind, stem, _)| (*kind, *stem)).collect();
    for (kind, version, legacy) in LEGACY {
        let (_, _, text) = HISTORY.iter().find(|(k, v, _)| *k == kind && *v == version).unwrap();
        let schema = apache_avro::Schema::parse_str(text).unwrap();
        let fp = schema.fingerprint::<apache_avro::rabin::Rabin>();
        assert_eq!(fp.bytes.as_slice(), legacy.as_slice(), "{}", stems[&kind]);
    }
}
