//! The port contracts, written once and run on every adapter.
//!
//! The embedded adapters always run; adapters for external engines add a
//! `#[tokio::test]` here that calls the same body.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use emosation_core::bulk::BulkRows;
use emosation_core::ids::{Topic, Topology, partition_for};
use emosation_core::ports::{
    CORE_VIEWS, ConnRef, KickReason, Log, LogError, Presence, RateLimiter, ViewBatch, ViewQueries, ViewStore,
};
use emosation_core::view::{
    ACTIVITY_VIEWS, ActivityView, AttachmentView, FriendStatus, FriendView, MemberView, MessageChangeView,
    MessageEditView, MessageView, RoomAttachmentsView, RoomEditsView, RoomView, UserView, ViewKey, ViewValue,
};
use emosation_storage::{EmbeddedLog, EmbeddedViewStore, LocalPresence, LocalRateLimiter};
#[cfg(feature = "redis")]
use emosation_storage::{RedisPresence, RedisRateLimiter, RedisViewStore};
#[cfg(feature = "scylla")]
use emosation_storage::{ScyllaConfig, ScyllaViewStore};

async fn log_contract(log: Arc<dyn Log>) {
    let topo = log.topology();
    assert!(topo.rooms_partitions >= 2);

    // Partitioning and dense offsets.
    let keys = ["room-a", "room-b", "room-c", "room-a", "room-a"];
    let mut expected_next = std::collections::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let pos = log
            .append(Topic::Rooms, k.as_bytes(), Bytes::from(format!("v{i}")))
            .await
            .unwrap();
        let p = partition_for(k.as_bytes(), topo.rooms_partitions);
        assert_eq!(pos.partition, p, "key {k} goes to its partition");
        let next = expected_next.entry(p).or_insert(0u64);
        assert_eq!(pos.offset, *next, "offsets are dense from 0");
        *next += 1;
    }
    let pa = partition_for(b"room-a", topo.rooms_partitions);
    let end = log.end_offset(Topic::Rooms, pa).await.unwrap();
    assert_eq!(end, expected_next[&pa]);

    // Reads in order, bounded by max.
    let all = log.fetch(Topic::Rooms, pa, 0, 100, Duration::ZERO).await.unwrap();
    assert_eq!(all.len() as u64, end);
    assert!(all.windows(2).all(|w| w[0].offset + 1 == w[1].offset));
    let a_values: Vec<_> = all
        .iter()
        .filter(|e| &e.key[..] == b"room-a")
        .map(|e| e.value.clone())
        .collect();
    assert_eq!(a_values, vec![Bytes::from("v0"), Bytes::from("v3"), Bytes::from("v4")]);
    assert!(all.iter().all(|e| e.timestamp_ms > 0));
    let one = log.fetch(Topic::Rooms, pa, 1, 1, Duration::ZERO).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].offset, 1);

    // At the end: empty after the wait; beyond it: an error.
    let t = Instant::now();
    let none = log
        .fetch(Topic::Rooms, pa, end, 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(40), "fetch waited");
    assert!(matches!(
        log.fetch(Topic::Rooms, pa, end + 5, 10, Duration::ZERO).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(matches!(
        log.fetch(Topic::Rooms, 9999, 0, 10, Duration::ZERO).await,
        Err(LogError::UnknownPartition { .. })
    ));

    // A waiting fetch wakes up for a new record.
    let l2 = Arc::clone(&log);
    let waiter = tokio::spawn(async move { l2.fetch(Topic::Rooms, pa, end, 10, Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    log.append(Topic::Rooms, b"room-a", Bytes::from_static(b"late"))
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, Bytes::from_static(b"late"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "woken by the append, not the timeout"
    );

    // Concurrent appends to one key keep a total order with no gaps.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let l = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            l.append(Topic::Accounts, b"same-key", Bytes::from(format!("{i}")))
                .await
                .unwrap()
        }));
    }
    let mut offsets: Vec<u64> = Vec::new();
    for t in tasks {
        offsets.push(t.await.unwrap().offset);
    }
    offsets.sort();
    assert!(offsets.windows(2).all(|w| w[0] + 1 == w[1]));

    // Order of appends: a record's place is taken when `append` is called,
    // so appends made one after another and awaited together are stored in
    // call order (a connection's pipelined sends).
    let tickets: Vec<_> = (0..300)
        .map(|i| log.append(Topic::Accounts, b"in-order", Bytes::from(format!("o{i}"))))
        .collect();
    let positions = futures_util::future::join_all(tickets).await;
    let offsets: Vec<u64> = positions.into_iter().map(|p| p.unwrap().offset).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] + 1 == w[1]),
        "stored in call order: {offsets:?}"
    );

    // Consumer groups.
    assert_eq!(log.committed("g1", Topic::Rooms, pa).await.unwrap(), None);
    log.commit("g1", Topic::Rooms, pa, 2).await.unwrap();
    log.commit("g1", Topic::Rooms, pa, 3).await.unwrap();
    assert_eq!(log.committed("g1", Topic::Rooms, pa).await.unwrap(), Some(3));
    assert_eq!(log.committed("g2", Topic::Rooms, pa).await.unwrap(), None);
}

fn room(id: &str, members: u32, messages: u64) -> RoomView {
    RoomView {
        room_id: id.into(),
        name: format!("room {id}"),
        capacity: 10,
        owner_id: "u1".into(),
        created_at: 1,
        member_count: members,
        message_count: messages,
        last_message_id: None,
        emotion_counts: [0; 7],
    }
}

fn member(room_id: &str, user_id: &str) -> MemberView {
    MemberView {
        room_id: room_id.into(),
        user_id: user_id.into(),
        username: format!("name-{user_id}"),
        joined_at: 1,
        read_seq: 0,
        last_read_message_id: None,
    }
}

/// Write-once entities encoded for a bulk load.
fn bulk(entities: impl IntoIterator<Item = (ViewKey, ViewValue)>) -> BulkRows {
    let mut rows = BulkRows::new();
    for (k, v) in entities {
        rows.push(&k, &v).expect("a write-once entity");
    }
    rows
}

fn message(room_id: &str, seq: u64) -> MessageView {
    MessageView {
        message_id: format!("{:016x}", seq),
        room_id: room_id.into(),
        seq,
        author_id: "u1".into(),
        author: "alice".into(),
        text: format!("text {seq}"),
        created_at: seq as i64,
        client_msg_id: format!("c{seq}"),
        attachments: vec![],
    }
}

const HOUR: i64 = 3_600_000;
/// 2026-11-22T10:00:00Z.
const H10: i64 = 1_795_341_600_000;

fn activity(room_id: &str, hour: i64, authors: &[&str]) -> (ViewKey, Option<ViewValue>) {
    let mut a = ActivityView::new(room_id, hour);
    for author in authors {
        a.count(author);
    }
    (
        ViewKey::Activity {
            room_id: room_id.into(),
            hour,
        },
        Some(ViewValue::Activity(a)),
    )
}

/// A consumer with a view of its own (the activity consumer): its batches
/// carry its own positions, its queries range over hours, and its checksum
/// and `clear` leave the core views alone (and the other way round).
async fn activity_contract(store: &dyn ViewStore, other: &dyn ViewStore) {
    let core_sum = store.checksum().await.unwrap();
    let empty_activity = store.checksum_of(ACTIVITY_VIEWS).await.unwrap();
    assert_eq!(store.position(ACTIVITY_VIEWS, Topic::Rooms, 3).await.unwrap(), 0);
    assert!(store.activity("r1", 0, i64::MAX).await.unwrap().is_empty());
    let batch = || ViewBatch {
        consumer: ACTIVITY_VIEWS.into(),
        changes: vec![
            activity("r1", H10 + 2 * HOUR, &["u1"]),
            activity("r1", H10, &["u2", "u1", "u2"]),
            activity("r1", H10 + HOUR, &["u1"]),
            activity("r2", H10, &["u1"]),
        ],
        positions: vec![(Topic::Rooms, 3, 9)],
    };
    store.apply(batch()).await.unwrap();
    assert_eq!(store.position(ACTIVITY_VIEWS, Topic::Rooms, 3).await.unwrap(), 9);
    assert_eq!(
        store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(),
        62,
        "positions are per consumer"
    );
    assert_eq!(
        store.checksum().await.unwrap(),
        core_sum,
        "the core digest covers core views only"
    );
    assert_ne!(store.checksum_of(ACTIVITY_VIEWS).await.unwrap(), empty_activity);

    // Hours in [from, to), oldest first; other rooms apart.
    let hours = |v: Vec<ActivityView>| v.iter().map(|a| (a.hour, a.messages)).collect::<Vec<_>>();
    assert_eq!(
        hours(store.activity("r1", H10, H10 + 3 * HOUR).await.unwrap()),
        [(H10, 3), (H10 + HOUR, 1), (H10 + 2 * HOUR, 1)]
    );
    assert_eq!(
        hours(store.activity("r1", H10 + HOUR, H10 + 2 * HOUR).await.unwrap()),
        [(H10 + HOUR, 1)]
    );
    assert!(
        store
            .activity("r1", H10 + 3 * HOUR, H10 + 9 * HOUR)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.activity("r1", H10 + HOUR, H10 + HOUR).await.unwrap().is_empty());
    assert!(store.activity("r1", H10 + HOUR, H10).await.unwrap().is_empty());
    let first = store.activity("r1", 0, H10 + HOUR).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].authors, ["u1", "u2"], "distinct authors, sorted");
    assert_eq!(first[0].room_id, "r1");
    assert_eq!(hours(store.activity("r2", 0, i64::MAX).await.unwrap()), [(H10, 1)]);
    assert!(store.activity("nope", 0, i64::MAX).await.unwrap().is_empty());

    // Counters change in place; is_write_once stays false for them.
    let (key, _) = activity("r1", H10, &[]);
    assert!(!key.is_write_once());
    store
        .apply(ViewBatch {
            consumer: ACTIVITY_VIEWS.into(),
            changes: vec![activity("r1", H10, &["u2", "u1", "u2", "u3"])],
            positions: vec![(Topic::Rooms, 3, 11)],
        })
        .await
        .unwrap();
    let now = store.activity("r1", H10, H10 + HOUR).await.unwrap();
    assert_eq!((now[0].messages, now[0].authors.len()), (4, 3));
    assert_eq!(
        store.load(&[key]).await.unwrap()[0],
        activity("r1", H10, &["u2", "u1", "u2", "u3"]).1
    );

    // Equal content, equal digest, on another store.
    other.apply(batch()).await.unwrap();
    assert_ne!(
        other.checksum_of(ACTIVITY_VIEWS).await.unwrap(),
        store.checksum_of(ACTIVITY_VIEWS).await.unwrap()
    );
    other
        .apply(ViewBatch {
            consumer: ACTIVITY_VIEWS.into(),
            changes: vec![activity("r1", H10, &["u2", "u1", "u2", "u3"])],
            positions: vec![(Topic::Rooms, 3, 11)],
        })
        .await
        .unwrap();
    assert_eq!(
        other.checksum_of(ACTIVITY_VIEWS).await.unwrap(),
        store.checksum_of(ACTIVITY_VIEWS).await.unwrap()
    );

    // Clearing the consumer drops its view and positions only.
    other.clear(ACTIVITY_VIEWS).await.unwrap();
    assert!(other.activity("r1", 0, i64::MAX).await.unwrap().is_empty());
    assert_eq!(other.position(ACTIVITY_VIEWS, Topic::Rooms, 3).await.unwrap(), 0);
    assert_eq!(other.checksum_of(ACTIVITY_VIEWS).await.unwrap(), empty_activity);
    assert_eq!(other.checksum().await.unwrap(), core_sum, "core views untouched");
    assert_eq!(other.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 62);
    assert_eq!(other.room("r1").await.unwrap().unwrap().member_count, 2);
    // It rebuilds from 0 and resumes exactly.
    other.apply(batch()).await.unwrap();
    assert_eq!(other.position(ACTIVITY_VIEWS, Topic::Rooms, 3).await.unwrap(), 9);
    store
        .apply(ViewBatch {
            consumer: ACTIVITY_VIEWS.into(),
            changes: vec![(
                ViewKey::Activity {
                    room_id: "r1".into(),
                    hour: H10 + 2 * HOUR,
                },
                None,
            )],
            positions: vec![(Topic::Rooms, 3, 12)],
        })
        .await
        .unwrap();
    assert_eq!(store.activity("r1", 0, i64::MAX).await.unwrap().len(), 2, "deletions");
}

fn sample_batch() -> ViewBatch {
    let mut changes = vec![
        (
            ViewKey::User("u1".into()),
            Some(ViewValue::User(UserView {
                user_id: "u1".into(),
                username: "alice".into(),
                password_hash: "h".into(),
                created_at: 1,
                deleted_at: None,
            })),
        ),
        (
            ViewKey::Username("alice".into()),
            Some(ViewValue::Username("u1".into())),
        ),
        (ViewKey::Room("r1".into()), Some(ViewValue::Room(room("r1", 2, 60)))),
        (ViewKey::Room("r2".into()), Some(ViewValue::Room(room("r2", 1, 0)))),
        (
            ViewKey::Member {
                room_id: "r1".into(),
                user_id: "u1".into(),
            },
            Some(ViewValue::Member(member("r1", "u1"))),
        ),
        (
            ViewKey::Member {
                room_id: "r1".into(),
                user_id: "u2".into(),
            },
            Some(ViewValue::Member(member("r1", "u2"))),
        ),
        (
            ViewKey::Member {
                room_id: "r2".into(),
                user_id: "u1".into(),
            },
            Some(ViewValue::Member(member("r2", "u1"))),
        ),
    ];
    for seq in 1..=60 {
        changes.push((
            ViewKey::Message {
                room_id: "r1".into(),
                message_id: format!("{:016x}", seq),
            },
            Some(ViewValue::Message(message("r1", seq))),
        ));
    }
    ViewBatch {
        consumer: CORE_VIEWS.into(),
        changes,
        positions: vec![(Topic::Rooms, 3, 61), (Topic::Accounts, 0, 1)],
    }
}

async fn view_store_contract(store: Arc<dyn ViewStore>, other: Arc<dyn ViewStore>) {
    let empty = store.checksum().await.unwrap();
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 0);
    store.apply(sample_batch()).await.unwrap();
    assert_ne!(store.checksum().await.unwrap(), empty);
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 61);
    assert_eq!(store.position("other", Topic::Rooms, 3).await.unwrap(), 0);

    assert_eq!(store.user("u1").await.unwrap().unwrap().username, "alice");
    assert_eq!(store.user_by_name("alice").await.unwrap().unwrap().user_id, "u1");
    assert!(store.user_by_name("bob").await.unwrap().is_none());
    // An admin's search by username prefix.
    let alice = vec![("alice".to_owned(), "u1".to_owned())];
    assert_eq!(store.usernames("al", None, 10).await.unwrap(), alice);
    assert_eq!(store.usernames("", None, 10).await.unwrap(), alice);
    assert!(store.usernames("alicex", None, 10).await.unwrap().is_empty());
    assert!(store.usernames("b", None, 10).await.unwrap().is_empty());
    assert!(store.usernames("", Some("alice"), 10).await.unwrap().is_empty());
    assert_eq!(store.room("r1").await.unwrap().unwrap().member_count, 2);
    assert!(store.room("nope").await.unwrap().is_none());
    let rooms = store.rooms(None, 10).await.unwrap();
    assert_eq!(
        rooms.iter().map(|r| r.room_id.as_str()).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    let after = store.rooms(Some("r1"), 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].room_id, "r2");

    let members = store.members("r1", None, usize::MAX).await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(),
        ["u1", "u2"]
    );
    let mine = store.user_rooms("u1", None, usize::MAX).await.unwrap();
    assert_eq!(
        mine.iter().map(|m| m.room_id.as_str()).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    // Pages: at most `limit`, after an id.
    let ids = |ms: Vec<MemberView>, room: bool| {
        ms.into_iter()
            .map(|m| if room { m.room_id } else { m.user_id })
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(store.members("r1", None, 1).await.unwrap(), false), ["u1"]);
    assert_eq!(ids(store.members("r1", Some("u1"), 10).await.unwrap(), false), ["u2"]);
    assert!(store.members("r1", Some("u2"), 10).await.unwrap().is_empty());
    assert!(store.members("r1", None, 0).await.unwrap().is_empty());
    assert_eq!(ids(store.user_rooms("u1", None, 1).await.unwrap(), true), ["r1"]);
    assert_eq!(ids(store.user_rooms("u1", Some("r1"), 1).await.unwrap(), true), ["r2"]);
    assert!(store.user_rooms("u1", Some("r2"), 5).await.unwrap().is_empty());

    // History: newest `limit` before the cursor, oldest first.
    let page = store.history("r1", None, 50).await.unwrap();
    assert_eq!(page.len(), 50);
    assert_eq!(page.first().unwrap().seq, 11);
    assert_eq!(page.last().unwrap().seq, 60);
    let older = store.history("r1", Some(&page[0].message_id), 50).await.unwrap();
    assert_eq!(
        older.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(store.history("r2", None, 50).await.unwrap().is_empty());

    // Edits and deletes: a message's edits are rewritten in place, beside
    // the room's count of changes, and each change is a room event.
    let edit_key = ViewKey::message_edit("r1", &page[0].message_id);
    let mut edit = MessageEditView {
        room_id: "r1".into(),
        message_id: page[0].message_id.clone(),
        text: "edited".into(),
        edited_at: Some(5),
        edit_id: Some("0003000000000070".into()),
        edits: 1,
        deleted_at: None,
        deleted_by: None,
        emotion: None,
        emotion_edit_id: None,
    };
    let change_key = ViewKey::RoomEvent {
        room_id: "r1".into(),
        position: "0003000000000070".into(),
    };
    let change = ViewValue::MessageChange(MessageChangeView {
        room_id: "r1".into(),
        message_id: page[0].message_id.clone(),
        text: Some("edited".into()),
        user_id: "u1".into(),
        username: "alice".into(),
        at: 5,
    });
    for (i, deleted) in [false, true].into_iter().enumerate() {
        if deleted {
            edit.text.clear();
            edit.deleted_at = Some(6);
        }
        let rooms_edits = ViewValue::RoomEdits(RoomEditsView {
            room_id: "r1".into(),
            changes: i as u64 + 1,
        });
        store
            .apply(ViewBatch {
                consumer: CORE_VIEWS.into(),
                changes: vec![
                    (edit_key.clone(), Some(ViewValue::MessageEdit(edit.clone()))),
                    (ViewKey::room_edits("r1"), Some(rooms_edits.clone())),
                    (change_key.clone(), Some(change.clone())),
                ],
                positions: vec![],
            })
            .await
            .unwrap();
        let got = store
            .load(&[
                edit_key.clone(),
                ViewKey::room_edits("r1"),
                change_key.clone(),
                ViewKey::room_edits("r2"),
            ])
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                Some(ViewValue::MessageEdit(edit.clone())),
                Some(rooms_edits),
                Some(change.clone()),
                None
            ]
        );
    }
    // The history itself is the messages as posted.
    assert_eq!(store.history("r1", None, 50).await.unwrap(), page);
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: vec![
                (edit_key.clone(), None),
                (ViewKey::room_edits("r1"), None),
                (change_key.clone(), None),
            ],
            positions: vec![],
        })
        .await
        .unwrap();
    assert_eq!(store.load(&[edit_key, change_key]).await.unwrap(), vec![None, None]);

    // Attachments: each written beside the room's unsent uploads, rewritten
    // when a message carries it, deleted when it expires.
    let attachment_id = "r1".to_owned() + "0003000000000080";
    let mut attachment = AttachmentView {
        attachment_id: attachment_id.clone(),
        room_id: "r1".into(),
        uploader_id: "u1".into(),
        file_name: "고양이.png".into(),
        size: 1234,
        content_type: "image/png".into(),
        width: Some(640),
        height: Some(480),
        blob_key: "sha256/ab.cd".into(),
        sha256: "ab".into(),
        uploaded_at: 7,
        message_id: None,
    };
    let pending = |ids: Vec<(String, i64)>| {
        ViewValue::RoomAttachments(RoomAttachmentsView {
            room_id: "r1".into(),
            pending: ids,
        })
    };
    let attachment_key = ViewKey::attachment("r1", &attachment_id);
    for (sent, list) in [(false, vec![(attachment_id.clone(), 7)]), (true, vec![])] {
        if sent {
            attachment.message_id = Some("0003000000000081".into());
        }
        store
            .apply(ViewBatch {
                consumer: CORE_VIEWS.into(),
                changes: vec![
                    (attachment_key.clone(), Some(ViewValue::Attachment(attachment.clone()))),
                    (ViewKey::room_attachments("r1"), Some(pending(list.clone()))),
                ],
                positions: vec![],
            })
            .await
            .unwrap();
        assert_eq!(
            store
                .load(&[attachment_key.clone(), ViewKey::room_attachments("r1")])
                .await
                .unwrap(),
            vec![Some(ViewValue::Attachment(attachment.clone())), Some(pending(list))]
        );
    }
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: vec![(attachment_key.clone(), None), (ViewKey::room_attachments("r1"), None)],
            positions: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        other
            .load(&[attachment_key, ViewKey::room_attachments("r1")])
            .await
            .unwrap(),
        vec![None, None]
    );

    // A user's relationships, listed in the other user's id order, paged.
    let friend = |user: &str, other: &str| FriendView {
        user_id: user.into(),
        other_id: other.into(),
        other_name: format!("name of {other}"),
        status: FriendStatus::Friends,
        blocking: false,
        blocked_by: false,
        since: 1,
        room_id: "p1".into(),
    };
    let rows = [friend("u1", "u3"), friend("u1", "u2"), friend("u2", "u1")];
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: rows
                .iter()
                .map(|f| {
                    (
                        ViewKey::friend(&f.user_id, &f.other_id),
                        Some(ViewValue::Friend(f.clone())),
                    )
                })
                .collect(),
            positions: vec![],
        })
        .await
        .unwrap();
    let others = |v: Vec<FriendView>| v.into_iter().map(|f| f.other_id).collect::<Vec<_>>();
    assert_eq!(others(store.friends("u1", None, 10).await.unwrap()), ["u2", "u3"]);
    assert_eq!(others(store.friends("u1", None, 1).await.unwrap()), ["u2"]);
    assert_eq!(others(store.friends("u1", Some("u2"), 10).await.unwrap()), ["u3"]);
    assert_eq!(others(store.friends("u2", None, 10).await.unwrap()), ["u1"]);
    assert!(store.friends("u9", None, 10).await.unwrap().is_empty());
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: rows
                .iter()
                .map(|f| (ViewKey::friend(&f.user_id, &f.other_id), None))
                .collect(),
            positions: vec![],
        })
        .await
        .unwrap();
    assert!(
        store.friends("u1", None, 10).await.unwrap().is_empty(),
        "deletions leave the index"
    );

    // Loads see exactly what was written; deletions remove both directions.
    let k = ViewKey::Member {
        room_id: "r1".into(),
        user_id: "u2".into(),
    };
    assert!(store.load(std::slice::from_ref(&k)).await.unwrap()[0].is_some());
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: vec![(k.clone(), None)],
            positions: vec![(Topic::Rooms, 3, 62)],
        })
        .await
        .unwrap();
    assert!(store.load(std::slice::from_ref(&k)).await.unwrap()[0].is_none());
    assert!(store.user_rooms("u2", None, usize::MAX).await.unwrap().is_empty());
    // A member joining again is listed again, and stays listed while its
    // row is rewritten (every post rewrites its author's read position),
    // read or not in between.
    let mut again = member("r1", "u2");
    for (i, read_first) in [false, true, true, false].into_iter().enumerate() {
        if read_first {
            assert!(store.load(std::slice::from_ref(&k)).await.unwrap()[0].is_some());
        }
        again.read_seq = i as u64;
        store
            .apply(ViewBatch {
                consumer: CORE_VIEWS.into(),
                changes: vec![(k.clone(), Some(ViewValue::Member(again.clone())))],
                positions: vec![],
            })
            .await
            .unwrap();
        assert_eq!(
            ids(store.user_rooms("u2", None, usize::MAX).await.unwrap(), true),
            ["r1"]
        );
    }
    store
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: vec![(k.clone(), None)],
            positions: vec![],
        })
        .await
        .unwrap();
    assert!(store.user_rooms("u2", None, usize::MAX).await.unwrap().is_empty());

    // Equal content, equal digest, on another store.
    other.apply(sample_batch()).await.unwrap();
    assert_ne!(other.checksum().await.unwrap(), store.checksum().await.unwrap());
    other
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: vec![(
                ViewKey::Member {
                    room_id: "r1".into(),
                    user_id: "u2".into(),
                },
                None,
            )],
            positions: vec![(Topic::Rooms, 3, 62)],
        })
        .await
        .unwrap();
    assert_eq!(other.checksum().await.unwrap(), store.checksum().await.unwrap());

    activity_contract(&*store, &*other).await;

    store.clear(CORE_VIEWS).await.unwrap();
    assert_eq!(store.checksum().await.unwrap(), empty);
    assert_eq!(
        store.activity("r1", 0, i64::MAX).await.unwrap().len(),
        2,
        "clearing the core views keeps the activity consumer's"
    );
    store.clear(ACTIVITY_VIEWS).await.unwrap();
    assert!(store.user("u1").await.unwrap().is_none());
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 0);

    // Bulk loads of write-once entities read back like applied ones, in any order.
    let mut once: Vec<_> = (1..=60)
        .rev()
        .map(|seq| {
            (
                ViewKey::Message {
                    room_id: "r1".into(),
                    message_id: format!("{:016x}", seq),
                },
                ViewValue::Message(message("r1", seq)),
            )
        })
        .collect();
    once.push((
        ViewKey::ClientMsg {
            room_id: "r1".into(),
            user_id: "u1".into(),
            client_msg_id: "c1".into(),
        },
        ViewValue::ClientMsg(format!("{:016x}", 1)),
    ));
    store.bulk_load(bulk(once)).await.unwrap();
    let page = store.history("r1", None, 50).await.unwrap();
    assert_eq!(page.len(), 50);
    assert_eq!(page.last().unwrap().seq, 60);
    assert!(
        BulkRows::new()
            .push(&ViewKey::Room("r9".into()), &ViewValue::Room(room("r9", 1, 0)))
            .is_err(),
        "mutable entities are never bulk-loaded"
    );

    // The rebuilding mark.
    assert!(!store.rebuilding(CORE_VIEWS).await.unwrap());
    store.set_rebuilding(CORE_VIEWS, true).await.unwrap();
    assert!(store.rebuilding(CORE_VIEWS).await.unwrap());
    assert!(!store.rebuilding("other").await.unwrap());
    store.set_rebuilding(CORE_VIEWS, false).await.unwrap();
    assert!(!store.rebuilding(CORE_VIEWS).await.unwrap());
}

#[tokio::test]
async fn embedded_log_meets_the_log_contract() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), Topology::default()).unwrap();
    log_contract(Arc::new(log)).await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_log_meets_the_log_contract_on_tansu() {
    let broker = emosation_testkit::Tansu::start();
    let log = emosation_storage::KafkaLog::connect(&broker.isolated_url(), Topology::default())
        .await
        .unwrap();
    assert_eq!(log.topology(), Topology::default());
    log_contract(Arc::new(log)).await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_log_reconnects_to_existing_topics_and_keeps_their_records() {
    let broker = emosation_testkit::Tansu::start();
    let url = broker.isolated_url();
    let small = Topology {
        accounts_partitions: 2,
        rooms_partitions: 3,
    };
    let pos = {
        let log = emosation_storage::KafkaLog::connect(&url, small).await.unwrap();
        for i in 0..10 {
            log.append(Topic::Rooms, b"k", Bytes::from(format!("{i}")))
                .await
                .unwrap();
        }
        log.commit("g", Topic::Rooms, 0, 7).await.unwrap();
        log.append(Topic::Rooms, b"k", Bytes::from_static(b"last"))
            .await
            .unwrap()
    };
    // Asking for other counts does not change existing topics.
    let log = emosation_storage::KafkaLog::connect(&url, Topology::default())
        .await
        .unwrap();
    assert_eq!(log.topology(), small, "the broker's partition counts win");
    assert_eq!(
        log.end_offset(Topic::Rooms, pos.partition).await.unwrap(),
        pos.offset + 1
    );
    assert_eq!(log.committed("g", Topic::Rooms, 0).await.unwrap(), Some(7));
    let all = log
        .fetch(Topic::Rooms, pos.partition, 0, 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(all.len(), 11);
    assert_eq!(all[10].value, Bytes::from_static(b"last"));
    // Random access: back to the middle, then on from there.
    let mid = log
        .fetch(Topic::Rooms, pos.partition, 4, 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(mid.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![4, 5]);
    let next = log
        .fetch(Topic::Rooms, pos.partition, 6, 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(next.first().map(|e| e.offset), Some(6));
    assert_eq!(next.len(), 5);
}

#[tokio::test]
async fn embedded_log_survives_reopen_and_keeps_its_topology() {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 2,
        rooms_partitions: 3,
    };
    let pos = {
        let log = EmbeddedLog::open(dir.path(), topo).unwrap();
        for i in 0..10 {
            log.append(Topic::Rooms, b"k", Bytes::from(format!("{i}")))
                .await
                .unwrap();
        }
        log.append(Topic::Rooms, b"k", Bytes::from_static(b"last"))
            .await
            .unwrap()
    };
    let log = EmbeddedLog::open(dir.path(), Topology::default()).unwrap();
    assert_eq!(log.topology(), topo, "topology is fixed at creation");
    assert_eq!(
        log.end_offset(Topic::Rooms, pos.partition).await.unwrap(),
        pos.offset + 1
    );
    let next = log
        .append(Topic::Rooms, b"k", Bytes::from_static(b"after"))
        .await
        .unwrap();
    assert_eq!(next.offset, pos.offset + 1);
    let all = log
        .fetch(Topic::Rooms, pos.partition, 0, 100, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(all[10].value, Bytes::from_static(b"last"));
    assert_eq!(all[11].value, Bytes::from_static(b"after"));
}

#[tokio::test]
async fn embedded_log_reads_the_same_records_from_its_memory_tail_and_from_disk() {
    // More records than a partition's in-memory tail holds (4,096), so some
    // reads are served by fjall, some by the tail, some by neither alone; a
    // reopened log (empty tail) must read the same bytes from disk.
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 1,
        rooms_partitions: 1,
    };
    let value = |i: u64| Bytes::from(format!("record {i} {}", "x".repeat((i % 97) as usize)));
    let n = 6_000u64;
    let reads = [
        (0, 100),
        (1_000, 500),
        (1_900, 300),
        (1_903, 5_000),
        (5_990, 100),
        (n, 10),
    ];
    let read_all = |log: Arc<dyn Log>| async move {
        let mut out = Vec::new();
        for (from, max) in reads {
            out.push(log.fetch(Topic::Rooms, 0, from, max, Duration::ZERO).await.unwrap());
        }
        out
    };
    let live = {
        let log = Arc::new(EmbeddedLog::open(dir.path(), topo).unwrap());
        let acks = log.append_many((0..n).map(|i| (Topic::Rooms, Bytes::from_static(b"k"), value(i))));
        for a in acks {
            a.await.unwrap().unwrap();
        }
        read_all(log).await
    };
    for ((from, max), got) in reads.iter().zip(&live) {
        let want: Vec<u64> = (*from..(*from + *max as u64).min(n)).collect();
        assert_eq!(
            got.iter().map(|e| e.offset).collect::<Vec<_>>(),
            want,
            "offsets from {from}"
        );
        assert!(
            got.iter()
                .all(|e| e.value == value(e.offset) && e.key == Bytes::from_static(b"k"))
        );
    }
    let reopened = read_all(Arc::new(EmbeddedLog::open(dir.path(), topo).unwrap())).await;
    assert_eq!(live, reopened);
}

#[tokio::test]
async fn embedded_view_store_meets_the_view_store_contract() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    view_store_contract(
        Arc::new(EmbeddedViewStore::open(a.path()).unwrap()),
        Arc::new(EmbeddedViewStore::open(b.path()).unwrap()),
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_view_store_meets_the_view_store_contract() {
    let redis = emosation_testkit::RedisServer::start();
    let store = RedisViewStore::connect(&format!("{}?ns=a", redis.url())).await.unwrap();
    let other = RedisViewStore::connect(&format!("{}?ns=b", redis.url())).await.unwrap();
    view_store_contract(Arc::new(store), Arc::new(other)).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn equal_content_gives_equal_checksums_on_embedded_and_redis() {
    let redis = emosation_testkit::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn ViewStore>; 2] = [
        Arc::new(EmbeddedViewStore::open(dir.path()).unwrap()),
        Arc::new(RedisViewStore::connect(redis.url()).await.unwrap()),
    ];
    let mut sums = Vec::new();
    for s in &stores {
        s.apply(sample_batch()).await.unwrap();
        s.bulk_load(bulk([(
            ViewKey::Message {
                room_id: "r2".into(),
                message_id: "00000000000000a0".into(),
            },
            ViewValue::Message(message("r2", 160)),
        )]))
        .await
        .unwrap();
        s.apply(ViewBatch {
            consumer: ACTIVITY_VIEWS.into(),
            changes: vec![activity("r1", H10, &["u2", "u1"]), activity("r1", H10 + HOUR, &["u1"])],
            positions: vec![(Topic::Rooms, 3, 5)],
        })
        .await
        .unwrap();
        sums.push((
            s.checksum().await.unwrap(),
            s.checksum_of(ACTIVITY_VIEWS).await.unwrap(),
        ));
    }
    assert_eq!(sums[0], sums[1], "the checksum depends on content, not on the adapter");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_views_refuse_a_batch_once_redis_lost_its_data() {
    let mut redis = emosation_testkit::RedisServer::start();
    let store = RedisViewStore::connect(redis.url()).await.unwrap();
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 0);
    store.apply(sample_batch()).await.unwrap();
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 61);

    // Redis restarts with nothing: the next batch, which claims to follow
    // offset 61, is refused rather than written over missing history.
    redis.restart_empty();
    let mut next = sample_batch();
    next.positions = vec![(Topic::Rooms, 3, 70)];
    // (The first attempt may fail on the reconnect instead; either way the
    // batch is refused and the store insists on a fresh position read.)
    let first = store.apply(next.clone()).await;
    assert!(first.is_err(), "a batch was applied over lost views");
    assert!(
        store.apply(next.clone()).await.is_err(),
        "no more batches before the position is re-read"
    );
    // Re-reading the position (what the projector does, retrying while the
    // connection comes back) starts over from 0.
    let mut pos = Err(None);
    for _ in 0..50 {
        match store.position(CORE_VIEWS, Topic::Rooms, 3).await {
            Ok(p) => {
                pos = Ok(p);
                break;
            }
            Err(e) => {
                pos = Err(Some(e.to_string()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(pos, Ok(0));
    // Every position a batch advances must have been re-read.
    assert!(
        store.apply(sample_batch()).await.is_err(),
        "accounts/0 was not re-read yet"
    );
    assert_eq!(store.position(CORE_VIEWS, Topic::Accounts, 0).await.unwrap(), 0);
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 0);
    store.apply(sample_batch()).await.unwrap();
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 61);

    // A second writer of the same consumer is fenced off the same way.
    let zombie = RedisViewStore::connect(redis.url()).await.unwrap();
    assert_eq!(zombie.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 61);
    store.apply(next.clone()).await.unwrap();
    let mut late = sample_batch();
    late.positions = vec![(Topic::Rooms, 3, 65)];
    assert!(
        zombie.apply(late).await.is_err(),
        "a stale writer cannot move the position"
    );
    assert_eq!(store.position(CORE_VIEWS, Topic::Rooms, 3).await.unwrap(), 70);
}

#[tokio::test]
async fn embedded_views_keep_bulk_loads_made_after_a_clear_across_reopen() {
    // fjall replays a journaled `Keyspace::clear` on recovery, over tables
    // ingested after it; the store must not lose a replay's bulk loads.
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store = EmbeddedViewStore::open(dir.path()).unwrap();
        store.apply(sample_batch()).await.unwrap();
        store.clear(CORE_VIEWS).await.unwrap();
        let once = (1..=10)
            .map(|seq| {
                (
                    ViewKey::Message {
                        room_id: "r1".into(),
                        message_id: format!("{:016x}", seq),
                    },
                    ViewValue::Message(message("r1", seq)),
                )
            })
            .collect::<Vec<_>>();
        store.bulk_load(bulk(once)).await.unwrap();
        store.checksum().await.unwrap()
    };
    let store = EmbeddedViewStore::open(dir.path()).unwrap();
    assert_eq!(store.history("r1", None, 50).await.unwrap().len(), 10);
    assert!(store.user("u1").await.unwrap().is_none(), "the clear held too");
    assert_eq!(store.checksum().await.unwrap(), before);
}

#[tokio::test]
async fn embedded_views_keep_every_row_of_a_bulk_load_cut_into_parallel_pieces() {
    // Large enough (about 45 MB of rows) that on a machine of two or more
    // cores the message rows are loaded as key ranges on parallel threads;
    // the same rows loaded in small, uncut parts must give the same views.
    let entities = |from: u64, to: u64| {
        (from..to).flat_map(|n| {
            let (room, seq) = (format!("room-{:02}", n % 40), n / 40 + 1);
            let mut m = message(&room, seq);
            m.text = format!("{n} {}", "lorem ipsum ".repeat(12));
            m.client_msg_id = format!("c-{n}");
            [
                (
                    ViewKey::Message {
                        room_id: room.clone(),
                        message_id: m.message_id.clone(),
                    },
                    ViewValue::Message(m.clone()),
                ),
                (
                    ViewKey::ClientMsg {
                        room_id: room,
                        user_id: m.author_id.clone(),
                        client_msg_id: m.client_msg_id.clone(),
                    },
                    ViewValue::ClientMsg(m.message_id),
                ),
            ]
        })
    };
    const N: u64 = 100_000;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let whole = EmbeddedViewStore::open(a.path()).unwrap();
    let mut rows = bulk(entities(0, N));
    rows.sort_buckets();
    whole.bulk_load(rows).await.unwrap();
    let parts = EmbeddedViewStore::open(b.path()).unwrap();
    for part in 0..10 {
        parts
            .bulk_load(bulk(entities(part * N / 10, (part + 1) * N / 10)))
            .await
            .unwrap();
    }
    assert_eq!(whole.checksum().await.unwrap(), parts.checksum().await.unwrap());
    for room in ["room-00", "room-17", "room-39"] {
        let page = whole.history(room, None, 50).await.unwrap();
        assert_eq!(page.len(), 50);
        assert_eq!(page.last().unwrap().seq, N / 40, "{room} ends with its last message");
    }
}

/// The presence contract. `a` and `b` are two handles on one registry (two
/// fan-out nodes); for the in-process adapter they are the same value.
async fn presence_contract(a: Arc<dyn Presence>, b: Arc<dyn Presence>) {
    use std::sync::Mutex;
    let ttl = Duration::from_secs(30);
    let conn = |node: &str, conn: u64| ConnRef {
        node: node.to_owned(),
        conn,
        session: format!("s{conn}"),
    };
    let kicked_a = Arc::new(Mutex::new(Vec::new()));
    let kicked_b = Arc::new(Mutex::new(Vec::new()));
    let (ka, kb) = (Arc::clone(&kicked_a), Arc::clone(&kicked_b));
    a.on_kicks("node-a", Arc::new(move |c, r| ka.lock().unwrap().push((c, r))))
        .await
        .unwrap();
    b.on_kicks("node-b", Arc::new(move |c, r| kb.lock().unwrap().push((c, r))))
        .await
        .unwrap();

    // Newest connections win; older ones are evicted, on whichever node.
    assert!(a.register("u1", &conn("node-a", 1), 1, ttl).await.unwrap().is_empty());
    assert_eq!(a.online(&["u1".into(), "u2".into()]).await.unwrap(), vec![true, false]);
    let evicted = b.register("u1", &conn("node-b", 7), 1, ttl).await.unwrap();
    assert_eq!(evicted, vec![conn("node-a", 1)]);
    assert!(
        !a.refresh("u1", &conn("node-a", 1), ttl).await.unwrap(),
        "evicted: its node must close it"
    );
    assert!(b.refresh("u1", &conn("node-b", 7), ttl).await.unwrap());

    // Kicks reach the owning node's sink, with their reason.
    b.kick(&evicted[0], KickReason::DuplicateSession).await.unwrap();
    emosation_testkit::eventually("the kick reached node a", Duration::from_secs(5), async || {
        if kicked_a.lock().unwrap().is_empty() {
            Err("no kick".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(*kicked_a.lock().unwrap(), vec![(1, KickReason::DuplicateSession)]);
    assert!(kicked_b.lock().unwrap().is_empty());
    a.kick(&conn("node-b", 7), KickReason::Logout).await.unwrap();
    emosation_testkit::eventually("the kick reached node b", Duration::from_secs(5), async || {
        if kicked_b.lock().unwrap().is_empty() {
            Err("no kick".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    assert_eq!(*kicked_b.lock().unwrap(), vec![(7, KickReason::Logout)]);

    // A user's live connections, on every node, with their sessions.
    assert_eq!(a.connections("u1").await.unwrap(), vec![conn("node-b", 7)]);
    assert!(b.connections("nobody").await.unwrap().is_empty());

    // N sessions: the two newest stay.
    assert!(a.register("u1", &conn("node-a", 2), 2, ttl).await.unwrap().is_empty());
    let evicted = a.register("u1", &conn("node-a", 3), 2, ttl).await.unwrap();
    assert_eq!(evicted, vec![conn("node-b", 7)]);

    // Concurrent registrations: every connection but the newest is evicted exactly once.
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let p = if i % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
        tasks.push(tokio::spawn(async move {
            let c = ConnRef {
                node: if i % 2 == 0 { "node-a" } else { "node-b" }.to_owned(),
                conn: 100 + i,
                session: "s".to_owned(),
            };
            p.register("u9", &c, 1, Duration::from_secs(30)).await.unwrap()
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no connection evicted twice");
    assert_eq!(all.len(), 39, "all but one evicted");

    let mut listed = b.connections("u1").await.unwrap();
    listed.sort();
    assert_eq!(listed, vec![conn("node-a", 2), conn("node-a", 3)]);

    // Online now, counted on any node: u1 and u9.
    assert_eq!(a.online_count().await.unwrap(), 2);
    assert_eq!(b.online_count().await.unwrap(), 2);

    // Unregister: offline, once the user's last connection goes.
    a.unregister("u1", &conn("node-a", 2)).await.unwrap();
    assert_eq!(b.online(&["u1".into()]).await.unwrap(), vec![true]);
    assert_eq!(b.online_count().await.unwrap(), 2, "u1 still has a connection");
    a.unregister("u1", &conn("node-a", 3)).await.unwrap();
    assert_eq!(b.online(&["u1".into()]).await.unwrap(), vec![false]);
    assert!(a.connections("u1").await.unwrap().is_empty());
    assert_eq!(b.online_count().await.unwrap(), 1, "only u9 now");
}

/// The room-presence contract (who has a room open, across nodes). `a` and
/// `b` are two handles on one registry; for the in-process adapter they are
/// the same value.
async fn room_presence_contract(a: Arc<dyn Presence>, b: Arc<dyn Presence>) {
    use emosation_core::ports::{RoomSignal, SignalKind};
    use std::sync::Mutex;
    let ttl = Duration::from_secs(30);
    let conn = |node: &str, conn: u64| ConnRef {
        node: node.to_owned(),
        conn,
        session: format!("s{conn}"),
    };
    let (a1, a2, b1) = (conn("node-a", 1), conn("node-a", 2), conn("node-b", 1));

    // An arrival is announced once per user, not per tab or node.
    assert!(
        a.enter_room("r1", "ann", &a1, ttl).await.unwrap(),
        "first entry: arrived"
    );
    assert!(
        !b.enter_room("r1", "ann", &b1, ttl).await.unwrap(),
        "second tab: not an arrival"
    );
    assert!(b.enter_room("r1", "bob", &a2, ttl).await.unwrap());
    assert_eq!(a.here("r1").await.unwrap(), vec!["ann".to_owned(), "bob".to_owned()]);
    assert!(b.here("r2").await.unwrap().is_empty(), "rooms are apart");

    // Closing one of two tabs is not a departure; closing the last is pending.
    assert!(!a.exit_room("r1", "ann", &a1).await.unwrap());
    assert!(
        b.exit_room("r1", "ann", &b1).await.unwrap(),
        "last entry: departure pending"
    );
    assert!(
        !a.exit_room("r1", "ann", &b1).await.unwrap(),
        "an unknown entry changes nothing"
    );
    assert_eq!(b.here("r1").await.unwrap(), vec!["bob".to_owned()]);

    // Coming back within the grace period cancels the departure, silently.
    assert!(
        !a.enter_room("r1", "ann", &a1, ttl).await.unwrap(),
        "a reconnect is not an arrival"
    );
    assert!(!b.settle_departure("r1", "ann").await.unwrap(), "she came back");
    // A real departure is settled once, by one caller.
    assert!(a.exit_room("r1", "ann", &a1).await.unwrap());
    let settled = [
        a.settle_departure("r1", "ann").await.unwrap(),
        b.settle_departure("r1", "ann").await.unwrap(),
    ];
    assert_eq!(settled, [true, false], "announced exactly once");
    assert!(
        a.enter_room("r1", "ann", &a1, ttl).await.unwrap(),
        "after a departure: an arrival again"
    );

    // Refreshed entries stay; an entry whose node stopped refreshing expires,
    // and a sweep reports its user once.
    let short = Duration::from_millis(300);
    assert!(a.enter_room("r3", "cat", &conn("node-c", 9), short).await.unwrap());
    assert!(a.enter_room("r3", "dan", &a1, short).await.unwrap());
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.refresh_rooms(&a1, "dan", &["r3".to_owned()], short).await.unwrap();
    }
    assert_eq!(
        b.here("r3").await.unwrap(),
        vec!["dan".to_owned()],
        "cat's entry expired"
    );
    assert_eq!(b.sweep_room("r3").await.unwrap(), vec!["cat".to_owned()]);
    assert!(a.sweep_room("r3").await.unwrap().is_empty(), "swept once");

    // Concurrent enters and exits of one user over two nodes end consistent:
    // every arrival announced is matched by at most one departure.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let p = if i % 2 == 0 { Arc::clone(&a) } else { Arc::clone(&b) };
        tasks.push(tokio::spawn(async move {
            let c = ConnRef {
                node: "node-x".to_owned(),
                conn: 1000 + i,
                session: "s".to_owned(),
            };
            let arrived = p.enter_room("r4", "eve", &c, Duration::from_secs(30)).await.unwrap();
            let last = p.exit_room("r4", "eve", &c).await.unwrap();
            (arrived, last)
        }));
    }
    let mut arrivals = 0;
    for t in tasks {
        arrivals += usize::from(t.await.unwrap().0);
    }
    assert!(arrivals >= 1, "the first enter is an arrival");
    assert!(a.here("r4").await.unwrap().is_empty(), "every entry exited");
    assert!(
        a.settle_departure("r4", "eve").await.unwrap(),
        "one departure pending at the end"
    );

    // Signals reach every node's sink, in their encoding's round trip.
    let got_a = Arc::new(Mutex::new(Vec::new()));
    let got_b = Arc::new(Mutex::new(Vec::new()));
    let (ga, gb) = (Arc::clone(&got_a), Arc::clone(&got_b));
    a.on_signals("node-a", Arc::new(move |s| ga.lock().unwrap().push(s)))
        .await
        .unwrap();
    if !Arc::ptr_eq(&a, &b) {
        b.on_signals("node-b", Arc::new(move |s| gb.lock().unwrap().push(s)))
            .await
            .unwrap();
    } else {
        drop(gb);
    }
    let typing = RoomSignal {
        room_id: "r1".into(),
        user_id: "ann".into(),
        kind: SignalKind::Typing,
        origin: Some(a1.clone()),
    };
    let left = RoomSignal {
        room_id: "r1".into(),
        user_id: "bob".into(),
        kind: SignalKind::Left { online: 1 },
        origin: None,
    };
    b.signal(&typing).await.unwrap();
    b.signal(&left).await.unwrap();
    let sinks = if Arc::ptr_eq(&a, &b) {
        vec![got_a]
    } else {
        vec![got_a, got_b]
    };
    for got in sinks {
        emosation_testkit::eventually("both signals arrived", Duration::from_secs(5), async || {
            if got.lock().unwrap().len() < 2 {
                Err(format!("{:?}", got.lock().unwrap()))
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(*got.lock().unwrap(), vec![typing.clone(), left.clone()]);
    }
}

/// The rate-limiter contract. `a` and `b` are two handles on one store (two
/// ingest nodes); for the in-process adapter they are the same value.
async fn rate_limiter_contract(a: Arc<dyn RateLimiter>, b: Arc<dyn RateLimiter>) {
    // Token buckets are shared.
    let mut granted = 0;
    for i in 0..20 {
        let p = if i % 2 == 0 { &a } else { &b };
        if p.take("rate:u1", 5.0, 10).await.unwrap() {
            granted += 1;
        }
    }
    assert!(
        (10..=11).contains(&granted),
        "burst of 10 shared by both nodes, got {granted}"
    );
    assert!(a.take("rate:u2", 5.0, 10).await.unwrap(), "buckets are independent");
    assert!(a.take("rate:off", 0.0, 0).await.unwrap());

    // An emptied bucket refills at `rate`: 5 a second is one within 250 ms.
    while b.take("rate:u3", 5.0, 2).await.unwrap() {}
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(a.take("rate:u3", 5.0, 2).await.unwrap(), "refilled at the rate");

    // Fractional rates: one a minute, after a burst of 2.
    assert!(a.take("rate:slow", 1.0 / 60.0, 2).await.unwrap());
    assert!(b.take("rate:slow", 1.0 / 60.0, 2).await.unwrap());
    assert!(!a.take("rate:slow", 1.0 / 60.0, 2).await.unwrap(), "empty for a minute");
}

#[tokio::test]
async fn local_presence_meets_the_presence_contract() {
    let p: Arc<dyn Presence> = Arc::new(LocalPresence::new());
    presence_contract(Arc::clone(&p), p).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_presence_meets_the_presence_contract() {
    let redis = emosation_testkit::RedisServer::start();
    let a = RedisPresence::connect(redis.url()).await.unwrap();
    let b = RedisPresence::connect(redis.url()).await.unwrap();
    presence_contract(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn local_presence_meets_the_room_presence_contract() {
    let p: Arc<dyn Presence> = Arc::new(LocalPresence::new());
    room_presence_contract(Arc::clone(&p), p).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_presence_meets_the_room_presence_contract() {
    let redis = emosation_testkit::RedisServer::start();
    let a = RedisPresence::connect(redis.url()).await.unwrap();
    let b = RedisPresence::connect(redis.url()).await.unwrap();
    room_presence_contract(Arc::new(a), Arc::new(b)).await;
}

#[tokio::test]
async fn local_rate_limiter_meets_the_rate_limiter_contract() {
    let l: Arc<dyn RateLimiter> = Arc::new(LocalRateLimiter::new());
    rate_limiter_contract(Arc::clone(&l), l).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_rate_limiter_meets_the_rate_limiter_contract() {
    let redis = emosation_testkit::RedisServer::start();
    let a = RedisRateLimiter::connect(redis.url()).await.unwrap();
    let b = RedisRateLimiter::connect(redis.url()).await.unwrap();
    rate_limiter_contract(Arc::new(a), Arc::new(b)).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_presence_expires_connections_whose_node_died() {
    let redis = emosation_testkit::RedisServer::start();
    let p = RedisPresence::connect(redis.url()).await.unwrap();
    let dead = ConnRef {
        node: "gone".into(),
        conn: 1,
        session: "s1".into(),
    };
    p.register("u", &dead, 1, Duration::from_millis(200)).await.unwrap();
    assert_eq!(p.online(&["u".into()]).await.unwrap(), vec![true]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        p.online(&["u".into()]).await.unwrap(),
        vec![false],
        "expired without a refresh"
    );
    let live = ConnRef {
        node: "alive".into(),
        conn: 2,
        session: "s2".into(),
    };
    assert!(
        p.register("u", &live, 1, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty(),
        "an expired connection is not evicted again"
    );
}

/// A keyspace of its own for each store of each run, dropped afterwards.
#[cfg(feature = "scylla")]
async fn scylla_store(uri: &str, tag: &str) -> Arc<ScyllaViewStore> {
    let mut config = ScyllaConfig::parse(uri).expect("SCYLLA_URI is a scylla:// URL or host:port list");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    config.keyspace = format!("emosation_test_{tag}_{}_{nanos}", std::process::id());
    Arc::new(ScyllaViewStore::connect_with(config).await.unwrap())
}

#[cfg(feature = "scylla")]
#[tokio::test]
async fn scylla_view_store_meets_the_view_store_contract() {
    let Ok(uri) = std::env::var("SCYLLA_URI") else {
        println!("skipping: SCYLLA_URI is not set (ScyllaDB cannot run on this machine)");
        return;
    };
    let a = scylla_store(&uri, "a").await;
    let b = scylla_store(&uri, "b").await;
    let run = tokio::spawn(view_store_contract(a.clone(), b.clone()));
    let outcome = run.await;
    // Drop the keyspaces whether or not the contract held.
    a.drop_keyspace().await.unwrap();
    b.drop_keyspace().await.unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
