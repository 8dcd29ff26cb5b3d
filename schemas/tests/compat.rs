//! Schema evolution and codec robustness.

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use emosation_core::Record;
use emosation_core::record::*;
use emosation_schemas::{CURRENT, HISTORY, SchemaError, current_fingerprint, decode, encode, record_type};
use proptest::prelude::*;

fn samples() -> Vec<Record> {
    vec![
        Record::UserSignedUp(UserSignedUp {
            request_id: -7,
            at: 1_795_306_692_345,
            username: "alice".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        }),
        Record::AccountDeleted(AccountDeleted {
            request_id: 1,
            at: 2,
            user_id: "u".into(),
            username: "alice".into(),
            by: Some("0000000000000003".into()),
        }),
        Record::AccountRestored(AccountRestored {
            request_id: 1,
            at: 2,
            user_id: "u".into(),
            username: "alice".into(),
            by: None,
        }),
        Record::SessionRevoked(SessionRevoked {
            request_id: 1,
            at: 2,
            user_id: "u".into(),
            username: "alice".into(),
            session_id: "s".into(),
            expires_at: 3,
        }),
        Record::RoomCreated(RoomCreated {
            request_id: 1,
            at: 2,
            room_id: "r".into(),
            name: "général 💬".into(),
            capacity: 5,
            owner_id: "u".into(),
            owner_name: "alice".into(),
        }),
        Record::MemberJoined(MemberJoined {
            request_id: 1,
            at: 2,
            room_id: "r".into(),
            user_id: "u".into(),
            username: "a".into(),
        }),
        Record::MemberQuit(MemberQuit {
            request_id: 1,
            at: 2,
            room_id: "r".into(),
            user_id: "u".into(),
            username: "a".into(),
        }),
        Record::MessagePosted(MessagePosted {
            request_id: i64::MAX,
            at: 2,
            room_id: "r".into(),
            author_id: "u".into(),
            author: "a".into(),
            client_msg_id: "c-1".into(),
            text: "안녕하세요 :)".into(),
            attachments: vec!["r0001000000000001".into(), "r0001000000000002".into()],
        }),
        Record::ReadMarkerSet(ReadMarkerSet {
            request_id: 1,
            at: 2,
            room_id: "r".into(),
            user_id: "u".into(),
            message_id: "m".into(),
        }),
        Record::EmotionRecorded(EmotionRecorded {
            request_id: 3,
            at: 4,
            room_id: "r".into(),
            message_id: "m".into(),
            label: "joy".into(),
            score: 0.7,
            scores: vec![0.7, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025],
            model: "offline-lexicon-v1".into(),
            edit_id: Some("0003000000000009".into()),
        }),
        Record::SessionOpened(SessionOpened {
            request_id: 1,
            at: 2,
            user_id: "u".into(),
            username: "alice".into(),
            session_id: "s".into(),
            expires_at: 2 + 30 * 86_400_000,
        }),
        Record::SessionRefreshed(SessionRefreshed {
            request_id: 1,
            at: 3,
            user_id: "u".into(),
            username: "alice".into(),
            session_id: "s".into(),
            generation: 7,
        }),
        Record::MessageEdited(MessageEdited {
            request_id: 4,
            at: 5,
            room_id: "r".into(),
            message_id: "m".into(),
            user_id: "u".into(),
            username: "alice".into(),
            text: "고쳤어요 ✏️".into(),
        }),
        Record::MessageDeleted(MessageDeleted {
            request_id: 4,
            at: 6,
            room_id: "r".into(),
            message_id: "m".into(),
            user_id: "u".into(),
            username: "alice".into(),
        }),
        Record::RelationshipChanged(RelationshipChanged {
            request_id: 5,
            at: 7,
            room_id: "p".into(),
            user_id: "u".into(),
            username: "alice".into(),
            other_id: "v".into(),
            other_name: "bob".into(),
            action: "request".into(),
        }),
        Record::AdminRoleChanged(AdminRoleChanged {
            request_id: 6,
            at: 8,
            user_id: "u".into(),
            username: "alice".into(),
            granted: true,
            by: "cli".into(),
        }),
        Record::AttachmentUploaded(AttachmentUploaded {
            request_id: 7,
            at: 9,
            room_id: "r".into(),
            uploader_id: "u".into(),
            uploader: "alice".into(),
            file_name: "고양이.png".into(),
            size: 1234,
            content_type: "image/png".into(),
            width: Some(640),
            height: Some(480),
            blob_key: "sha256/ab.cd".into(),
            sha256: "ab".into(),
        }),
        Record::AttachmentExpired(AttachmentExpired {
            request_id: 8,
            at: 10,
            room_id: "r".into(),
            attachment_id: "r0001000000000003".into(),
        }),
    ]
}

/// Messages written before attachments existed (v1) decode as messages
/// without attachments, through both decoders; v2 only appends the empty
/// array's zero count.
#[test]
fn messages_of_v1_decode_as_messages_without_attachments() {
    let mut message = samples()
        .into_iter()
        .find(|r| matches!(r, Record::MessagePosted(_)))
        .unwrap();
    if let Record::MessagePosted(m) = &mut message {
        m.attachments.clear();
    }
    let v1 = emosation_schemas::encode_released(&message, 1).unwrap().unwrap();
    let today = encode(&message).unwrap();
    assert_ne!(v1[2..10], today[2..10], "v1 names its own schema");
    assert_eq!(&v1[10..], &today[10..today.len() - 1]);
    assert_eq!(decode(&v1).unwrap(), message);
    assert_eq!(emosation_schemas::decode_with_apache_avro(&v1).unwrap(), message);
}

/// Emotions written before edits existed (v1, no `edit_id`) decode as
/// emotions of the message as posted, through both decoders; a v1 writer
/// and today's produce the same record from the same fields.
#[test]
fn emotions_of_v1_decode_as_emotions_of_the_message_as_posted() {
    let mut emotion = samples()
        .into_iter()
        .find(|r| matches!(r, Record::EmotionRecorded(_)))
        .unwrap();
    if let Record::EmotionRecorded(e) = &mut emotion {
        e.edit_id = None;
    }
    let v1 = emosation_schemas::encode_released(&emotion, 1).unwrap().unwrap();
    let today = encode(&emotion).unwrap();
    assert_ne!(v1[2..10], today[2..10], "v1 names its own schema");
    assert_eq!(
        &v1[10..],
        &today[10..today.len() - 1],
        "v2 only appends the null branch"
    );
    assert_eq!(decode(&v1).unwrap(), emotion);
    assert_eq!(emosation_schemas::decode_with_apache_avro(&v1).unwrap(), emotion);
    // Every type still at v1 is encoded alike by its v1 and today's writer.
    for rec in samples() {
        if !matches!(
            rec,
            Record::EmotionRecorded(_)
                | Record::AccountDeleted(_)
                | Record::AccountRestored(_)
                | Record::MessagePosted(_)
        ) {
            assert_eq!(
                emosation_schemas::encode_released(&rec, 1).unwrap().unwrap(),
                encode(&rec).unwrap()
            );
        }
    }
}

/// Deletions and restores written before the audit (v1, no `by`) decode
/// with `by: None` through both decoders (an account deleted by its owner,
/// a restore by an unknown admin); v2 only appends the union's branch.
#[test]
fn account_records_of_v1_decode_without_who_did_it() {
    for mut rec in samples()
        .into_iter()
        .filter(|r| matches!(r, Record::AccountDeleted(_) | Record::AccountRestored(_)))
    {
        match &mut rec {
            Record::AccountDeleted(r) => r.by = None,
            Record::AccountRestored(r) => r.by = None,
            _ => unreachable!(),
        }
        let v1 = emosation_schemas::encode_released(&rec, 1).unwrap().unwrap();
        let today = encode(&rec).unwrap();
        assert_ne!(v1[2..10], today[2..10], "v1 names its own schema");
        assert_eq!(
            &v1[10..],
            &today[10..today.len() - 1],
            "v2 only appends the null branch"
        );
        assert_eq!(decode(&v1).unwrap(), rec);
        assert_eq!(emosation_schemas::decode_with_apache_avro(&v1).unwrap(), rec);
    }
}

#[test]
fn every_record_type_round_trips() {
    let samples = samples();
    assert_eq!(samples.len(), CURRENT.len(), "a sample per record type");
    for rec in samples {
        let bytes = encode(&rec).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &current_fingerprint(record_type(&rec)));
        assert_eq!(decode(&bytes).unwrap(), rec);
    }
}

#[test]
fn current_schemas_read_every_released_version() {
    for (kind, stem, text) in CURRENT {
        let current = Schema::parse_str(text).unwrap();
        let versions: Vec<_> = HISTORY.iter().filter(|(k, _, _)| *k == kind).collect();
        assert!(!versions.is_empty(), "{stem} has no released version in avro/history/");
        for (_, version, old) in &versions {
            let old = Schema::parse_str(old).unwrap();
            SchemaCompatibility::can_read(&old, &current)
                .unwrap_or_else(|e| panic!("{stem}: current schema cannot read v{version}: {e}"));
        }
        // The newest released version is the current schema: changing a schema
        // means releasing a new version file, which this test then checks.
        let newest = versions.iter().max_by_key(|(_, v, _)| *v).unwrap();
        assert_eq!(
            Schema::parse_str(newest.2).unwrap().canonical_form(),
            current.canonical_form(),
            "{stem}: the current schema differs from its newest file in avro/history/; add a new version"
        );
    }
}

#[test]
fn the_checker_rejects_an_incompatible_change() {
    // Guard against a checker that accepts everything: a new required field
    // without a default cannot read old records.
    let (_, _, text) = CURRENT[7];
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "thread_id", "type": "string"}));
    let incompatible = Schema::parse_str(&v.to_string()).unwrap();
    let old = Schema::parse_str(text).unwrap();
    assert!(SchemaCompatibility::can_read(&old, &incompatible).is_err());
}

#[test]
fn garbage_is_a_typed_error() {
    assert_eq!(decode(&[]), Err(SchemaError::TooShort(0)));
    assert_eq!(decode(&[0u8; 12]), Err(SchemaError::BadMagic));
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&42u64.to_le_bytes());
    assert_eq!(decode(&unknown), Err(SchemaError::UnknownFingerprint(42)));

    let good = encode(&samples()[7]).unwrap();
    let truncated = &good[..good.len() - 3];
    assert!(matches!(decode(truncated), Err(SchemaError::Malformed(_))));
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(SchemaError::TrailingBytes(1)));
}

proptest! {
    /// Any bytes at all decode to a value or a typed error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    /// A valid header followed by arbitrary bytes exercises the datum decoder.
    #[test]
    fn arbitrary_bodies_never_panic(which in 0usize..16, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = encode(&samples()[which]).unwrap()[..10].to_vec();
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes);
    }
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_]{0,20}", ".{0,60}", Just(String::new())]
}

fn arb_record() -> impl Strategy<Value = Record> {
    let t = arb_text;
    prop_oneof![
        (any::<i64>(), any::<i64>(), t(), t()).prop_map(|(request_id, at, username, password_hash)| {
            Record::UserSignedUp(UserSignedUp {
                request_id,
                at,
                username,
                password_hash,
            })
        }),
        (any::<i64>(), any::<i64>(), t(), t(), proptest::option::of(t())).prop_map(
            |(request_id, at, user_id, username, by)| {
                Record::AccountDeleted(AccountDeleted {
                    request_id,
                    at,
                    user_id,
                    username,
                    by,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), proptest::option::of(t())).prop_map(
            |(request_id, at, user_id, username, by)| {
                Record::AccountRestored(AccountRestored {
                    request_id,
                    at,
                    user_id,
                    username,
                    by,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), t(), any::<i64>()).prop_map(
            |(request_id, at, user_id, username, session_id, expires_at)| {
                Record::SessionRevoked(SessionRevoked {
                    request_id,
                    at,
                    user_id,
                    username,
                    session_id,
                    expires_at,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), any::<i32>(), t(), t()).prop_map(
            |(request_id, at, room_id, name, capacity, owner_id, owner_name)| {
                Record::RoomCreated(RoomCreated {
                    request_id,
                    at,
                    room_id,
                    name,
                    capacity,
                    owner_id,
                    owner_name,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), t()).prop_map(|(request_id, at, room_id, user_id, username)| {
            Record::MemberJoined(MemberJoined {
                request_id,
                at,
                room_id,
                user_id,
                username,
            })
        }),
        (any::<i64>(), any::<i64>(), t(), t(), t()).prop_map(|(request_id, at, room_id, user_id, username)| {
            Record::MemberQuit(MemberQuit {
                request_id,
                at,
                room_id,
                user_id,
                username,
            })
        }),
        (
            (any::<i64>(), any::<i64>(), t(), t(), t(), t(), t()),
            proptest::collection::vec(t(), 0..4)
        )
            .prop_map(
                |((request_id, at, room_id, author_id, author, client_msg_id, text), attachments)| {
                    Record::MessagePosted(MessagePosted {
                        request_id,
                        at,
                        room_id,
                        author_id,
                        author,
                        client_msg_id,
                        text,
                        attachments,
                    })
                }
            ),
        (
            (any::<i64>(), any::<i64>(), t(), t(), t(), t(), any::<i64>()),
            (
                t(),
                proptest::option::of(any::<i32>()),
                proptest::option::of(any::<i32>()),
                t(),
                t()
            )
        )
            .prop_map(
                |(
                    (request_id, at, room_id, uploader_id, uploader, file_name, size),
                    (content_type, width, height, blob_key, sha256),
                )| {
                    Record::AttachmentUploaded(AttachmentUploaded {
                        request_id,
                        at,
                        room_id,
                        uploader_id,
                        uploader,
                        file_name,
                        size,
                        content_type,
                        width,
                        height,
                        blob_key,
                        sha256,
                    })
                }
            ),
        (any::<i64>(), any::<i64>(), t(), t()).prop_map(|(request_id, at, room_id, attachment_id)| {
            Record::AttachmentExpired(AttachmentExpired {
                request_id,
                at,
                room_id,
                attachment_id,
            })
        }),
        (any::<i64>(), any::<i64>(), t(), t(), t()).prop_map(|(request_id, at, room_id, user_id, message_id)| {
            Record::ReadMarkerSet(ReadMarkerSet {
                request_id,
                at,
                room_id,
                user_id,
                message_id,
            })
        }),
        (
            any::<i64>(),
            any::<i64>(),
            t(),
            t(),
            t(),
            -1.0f32..2.0,
            proptest::collection::vec(0.0f32..1.0, 0..9),
            t(),
            proptest::option::of(t())
        )
            .prop_map(
                |(request_id, at, room_id, message_id, label, score, scores, model, edit_id)| {
                    Record::EmotionRecorded(EmotionRecorded {
                        request_id,
                        at,
                        room_id,
                        message_id,
                        label,
                        score,
                        scores,
                        model,
                        edit_id,
                    })
                }
            ),
        (any::<i64>(), any::<i64>(), t(), t(), t(), t(), t()).prop_map(
            |(request_id, at, room_id, message_id, user_id, username, text)| {
                Record::MessageEdited(MessageEdited {
                    request_id,
                    at,
                    room_id,
                    message_id,
                    user_id,
                    username,
                    text,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), any::<bool>(), t()).prop_map(
            |(request_id, at, user_id, username, granted, by)| {
                Record::AdminRoleChanged(AdminRoleChanged {
                    request_id,
                    at,
                    user_id,
                    username,
                    granted,
                    by,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), t(), t(), t(), t()).prop_map(
            |(request_id, at, room_id, user_id, username, other_id, other_name, action)| {
                Record::RelationshipChanged(RelationshipChanged {
                    request_id,
                    at,
                    room_id,
                    user_id,
                    username,
                    other_id,
                    other_name,
                    action,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), t(), t()).prop_map(
            |(request_id, at, room_id, message_id, user_id, username)| {
                Record::MessageDeleted(MessageDeleted {
                    request_id,
                    at,
                    room_id,
                    message_id,
                    user_id,
                    username,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), t(), any::<i64>()).prop_map(
            |(request_id, at, user_id, username, session_id, expires_at)| {
                Record::SessionOpened(SessionOpened {
                    request_id,
                    at,
                    user_id,
                    username,
                    session_id,
                    expires_at,
                })
            }
        ),
        (any::<i64>(), any::<i64>(), t(), t(), t(), any::<i64>()).prop_map(
            |(request_id, at, user_id, username, session_id, generation)| {
                Record::SessionRefreshed(SessionRefreshed {
                    request_id,
                    at,
                    user_id,
                    username,
                    session_id,
                    generation,
                })
            }
        ),
    ]
}

proptest! {
    /// The direct decoder and apache-avro read every record identically.
    #[test]
    fn fast_decoder_agrees_with_apache_avro(rec in arb_record()) {
        let bytes = encode(&rec).unwrap();
        prop_assert_eq!(&decode(&bytes).unwrap(), &rec);
        prop_assert_eq!(emosation_schemas::decode_with_apache_avro(&bytes).unwrap(), rec);
    }

    /// On damaged bodies both decoders fail (or succeed) together.
    #[test]
    fn fast_decoder_fails_where_apache_avro_fails(rec in arb_record(), cut in 0usize..64, flip in any::<(usize, u8)>()) {
        let mut bytes = encode(&rec).unwrap();
        let keep = bytes.len().saturating_sub(cut).max(10);
        bytes.truncate(keep);
        if bytes.len() > 10 {
            let i = 10 + flip.0 % (bytes.len() - 10);
            bytes[i] ^= flip.1;
        }
        let fast = decode(&bytes);
        let slow = emosation_schemas::decode_with_apache_avro(&bytes);
        prop_assert_eq!(fast.is_ok(), slow.is_ok(), "fast {:?} slow {:?}", fast, slow);
        if let (Ok(a), Ok(b)) = (fast, slow) {
            prop_assert_eq!(a, b);
        }
    }
}

#[test]
fn decode_routed_keeps_only_records_where_their_topic_and_key_route_them() {
    use emosation_core::ids::Topic;
    use emosation_schemas::decode_routed;
    let joined = Record::MemberJoined(MemberJoined {
        request_id: 1,
        at: 2,
        room_id: "room-a".into(),
        user_id: "u1".into(),
        username: "alice".into(),
    });
    let bytes = encode(&joined).unwrap();
    assert_eq!(decode_routed(Topic::Rooms, b"room-a", &bytes), Some(joined));
    assert_eq!(decode_routed(Topic::Rooms, b"room-b", &bytes), None);
    assert_eq!(decode_routed(Topic::Accounts, b"room-a", &bytes), None);
    assert_eq!(decode_routed(Topic::Rooms, b"room-a", b"not avro"), None);
}
