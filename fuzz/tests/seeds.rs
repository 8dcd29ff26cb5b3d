//! The seed corpora in fuzz/seeds/: one valid input per record type, frame
//! type and request body, so that each campaign starts past the formats'
//! front doors. `WRITE_SEEDS=1 cargo +nightly test` (in fuzz/) rewrites
//! them; without it the test checks that the committed seeds still are what
//! they claim (a schema change shows up here).

use std::path::{Path, PathBuf};

use emosation_core::record::*;
use emosation_core::{Record, emotion::Label};
use emosation_schemas::{decode, encode};

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target)
}

/// Writes (WRITE_SEEDS=1) or compares each seed.
fn seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = dir(target);
    let write = std::env::var_os("WRITE_SEEDS").is_some();
    if write {
        std::fs::create_dir_all(&dir).unwrap();
    }
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, bytes).unwrap();
        } else {
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                &committed,
                bytes,
                "{} is stale: WRITE_SEEDS=1 cargo +nightly test",
                path.display()
            );
        }
    }
}

fn records() -> Vec<Record> {
    let (user, room, msg) = ("0001000000000000", "00000000000000a1", "0003000000000001");
    vec![
        Record::UserSignedUp(UserSignedUp {
            request_id: 1,
            at: 10,
            username: "alice".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        }),
        Record::AccountDeleted(AccountDeleted {
            request_id: 2,
            at: 11,
            user_id: user.into(),
            username: "alice".into(),
            by: None,
        }),
        Record::AccountRestored(AccountRestored {
            request_id: 3,
            at: 12,
            user_id: user.into(),
            username: "alice".into(),
            by: None,
        }),
        Record::SessionOpened(SessionOpened {
            request_id: 4,
            at: 13,
            user_id: user.into(),
            username: "alice".into(),
            session_id: "5e55105e55105e55".into(),
            expires_at: 1_000,
        }),
        Record::SessionRefreshed(SessionRefreshed {
            request_id: 5,
            at: 14,
            user_id: user.into(),
            username: "alice".into(),
            session_id: "5e55105e55105e55".into(),
            generation: 0,
        }),
        Record::SessionRevoked(SessionRevoked {
            request_id: 6,
            at: 15,
            user_id: user.into(),
            username: "alice".into(),
            session_id: "5e55105e55105e55".into(),
            expires_at: 1_000,
        }),
        Record::RoomCreated(RoomCreated {
            request_id: 7,
            at: 16,
            room_id: room.into(),
            name: "lobby".into(),
            capacity: 2,
            owner_id: user.into(),
            owner_name: "alice".into(),
        }),
        Record::MemberJoined(MemberJoined {
            request_id: 8,
            at: 17,
            room_id: room.into(),
            user_id: "0002000000000000".into(),
            username: "bob".into(),
        }),
        Record::MemberQuit(MemberQuit {
            request_id: 9,
            at: 18,
            room_id: room.into(),
            user_id: "0002000000000000".into(),
            username: "bob".into(),
        }),
        Record::MessagePosted(MessagePosted {
            request_id: 10,
            at: 19,
            room_id: room.into(),
            author_id: user.into(),
            author: "alice".into(),
            client_msg_id: "c1".into(),
            text: "hello 세계".into(),
            attachments: vec![],
        }),
        Record::ReadMarkerSet(ReadMarkerSet {
            request_id: 11,
            at: 20,
            room_id: room.into(),
            user_id: user.into(),
            message_id: msg.into(),
        }),
        Record::EmotionRecorded(EmotionRecorded {
            request_id: 12,
            at: 21,
            room_id: room.into(),
            message_id: msg.into(),
            label: Label::ALL[0].as_str().into(),
            score: 0.5,
            scores: vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
            model: "offline".into(),
            edit_id: None,
        }),
        Record::MessageEdited(MessageEdited {
            request_id: 14,
            at: 15,
            room_id: "00000000000000a1".into(),
            message_id: "0003000000000002".into(),
            user_id: "0000000000000001".into(),
            username: "alice".into(),
            text: "hello again".into(),
        }),
        Record::MessageDeleted(MessageDeleted {
            request_id: 15,
            at: 16,
            room_id: "00000000000000a1".into(),
            message_id: "0003000000000002".into(),
            user_id: "0000000000000001".into(),
            username: "alice".into(),
        }),
        Record::RelationshipChanged(RelationshipChanged {
            request_id: 16,
            at: 17,
            room_id: emosation_core::ids::pair_room_id("0000000000000001", "0000000000000002"),
            user_id: "0000000000000001".into(),
            username: "alice".into(),
            other_id: "0000000000000002".into(),
            other_name: "bob".into(),
            action: "request".into(),
        }),
        Record::AdminRoleChanged(AdminRoleChanged {
            request_id: 17,
            at: 18,
            user_id: "0000000000000001".into(),
            username: "alice".into(),
            granted: true,
            by: "cli".into(),
        }),
        Record::AttachmentUploaded(AttachmentUploaded {
            request_id: 18,
            at: 19,
            room_id: room.into(),
            uploader_id: user.into(),
            uploader: "alice".into(),
            file_name: "cat.png".into(),
            size: 1234,
            content_type: "image/png".into(),
            width: Some(640),
            height: Some(480),
            blob_key: "sha256/ab".into(),
            sha256: "ab".into(),
        }),
        Record::AttachmentExpired(AttachmentExpired {
            request_id: 19,
            at: 20,
            room_id: room.into(),
            attachment_id: format!("{room}0003000000000009"),
        }),
    ]
}

#[test]
fn avro_decode() {
    let seeds: Vec<(String, Vec<u8>)> = records()
        .iter()
        .map(|r| {
            let bytes = encode(r).unwrap();
            assert_eq!(&decode(&bytes).unwrap(), r);
            // Mode 0: the bytes as they are.
            (r.kind().to_owned(), [&[0u8][..], &bytes].concat())
        })
        .collect();
    self::seeds("avro_decode", &seeds);
}

/// Mode 0 (the text as it is), then the frame.
#[test]
fn client_frame() {
    let frames = [
        (
            "subscribe",
            r#"{"type":"subscribe","room_id":"00000000000000a1","since":"0003000000000001","streams":["chat","emotion"]}"#,
        ),
        ("unsubscribe", r#"{"type":"unsubscribe","room_id":"00000000000000a1"}"#),
        (
            "send",
            r#"{"type":"send","room_id":"00000000000000a1","client_msg_id":"c1","text":"hello"}"#,
        ),
        (
            "send_attachments",
            r#"{"type":"send","room_id":"00000000000000a1","client_msg_id":"c2","attachments":["00000000000000a10003000000000001"]}"#,
        ),
        ("typing", r#"{"type":"typing","room_id":"00000000000000a1"}"#),
        (
            "auth",
            r#"{"type":"auth","access_token":"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}"#,
        ),
        (
            "edit",
            r#"{"type":"edit","room_id":"00000000000000a1","message_id":"0003000000000001","text":"hello again"}"#,
        ),
        (
            "delete",
            r#"{"type":"delete","room_id":"00000000000000a1","message_id":"0003000000000001"}"#,
        ),
    ];
    let seeds: Vec<(String, Vec<u8>)> = frames
        .iter()
        .map(|(name, text)| {
            emosation_ws_fanout::protocol::parse(text).unwrap();
            (name.to_string(), [b"\0", text.as_bytes()].concat())
        })
        .collect();
    self::seeds("client_frame", &seeds);
}

/// The route's index, content type 0 (`application/json`), then the body.
#[test]
fn http_bodies() {
    let bodies = [
        ("signup", 0u8, r#"{"username":"alice_01","password":"correct horse"}"#),
        ("login", 1, r#"{"username":"alice_01","password":"correct horse"}"#),
        ("refresh", 2, r#"{"refresh_token":"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}"#),
        ("create_room", 3, r#"{"name":"lobby","capacity":10}"#),
        ("post_message", 4, r#"{"client_msg_id":"c1","text":"hello"}"#),
        ("mark_read", 5, r#"{"message_id":"0003000000000001"}"#),
    ];
    let seeds: Vec<(String, Vec<u8>)> = bodies
        .iter()
        .map(|(name, route, body)| (name.to_string(), [&[*route, 0][..], body.as_bytes()].concat()))
        .collect();
    self::seeds("http_bodies", &seeds);
}
