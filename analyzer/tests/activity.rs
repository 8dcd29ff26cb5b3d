//! The activity consumer on the embedded log and views: counts what the fold
//! stored by the record's hour, resumes without counting twice, waits for the
//! core views, and rebuilds the same view from offset 0 after a clear.
//!
//! The core projector is played by the test: it writes the `Message` entity
//! of every post it "accepts" and advances the core positions, which is all
//! the activity consumer reads of the core views.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use emosation_analyzer::{ActivityConsumer, run_consumer};
use emosation_core::ids::{LogPosition, Topic, Topology, partition_for};
use emosation_core::ports::{CORE_VIEWS, Log, ViewBatch, ViewStore};
use emosation_core::record::{MessagePosted, Record, RoomCreated};
use emosation_core::view::{ACTIVITY_VIEWS, MessageView, ViewKey, ViewValue};
use emosation_storage::{EmbeddedLog, EmbeddedViewStore, LocalDecisions};
use tokio_util::sync::CancellationToken;

/// 2026-11-22T10:00:00Z.
const H10: i64 = 1_795_341_600_000;
const HOUR: i64 = 3_600_000;
const TOPOLOGY: Topology = Topology {
    accounts_partitions: 1,
    rooms_partitions: 2,
};

struct World {
    log: Arc<dyn Log>,
    views: Arc<dyn ViewStore>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        World {
            log: Arc::new(EmbeddedLog::open(&dir.path().join("log"), TOPOLOGY).unwrap()),
            views: Arc::new(EmbeddedViewStore::open(&dir.path().join("views")).unwrap()),
            _dir: dir,
        }
    }

    async fn append(&self, record: Record) -> LogPosition {
        let value = emosation_schemas::encode(&record).unwrap();
        self.log
            .append(Topic::Rooms, record.key().as_bytes(), Bytes::from(value))
            .await
            .unwrap()
    }

    /// Posts a message; the stand-in projector stores it iff `accepted`.
    async fn post(&self, room: &str, author: &str, at: i64, accepted: bool) -> LogPosition {
        let m = MessagePosted {
            request_id: at,
            at,
            room_id: room.into(),
            author_id: author.into(),
            author: format!("name-{author}"),
            client_msg_id: format!("c{at}"),
            text: "hello".into(),
            attachments: vec![],
        };
        let pos = self.append(Record::MessagePosted(m)).await;
        let changes = if accepted {
            vec![(
                ViewKey::Message {
                    room_id: room.into(),
                    message_id: pos.to_id(),
                },
                Some(ViewValue::Message(MessageView {
                    message_id: pos.to_id(),
                    room_id: room.into(),
                    seq: pos.offset,
                    author_id: author.into(),
                    author: format!("name-{author}"),
                    text: "hello".into(),
                    created_at: at,
                    client_msg_id: format!("c{at}"),
                    attachments: vec![],
                })),
            )]
        } else {
            Vec::new()
        };
        self.views
            .apply(ViewBatch {
                consumer: CORE_VIEWS.into(),
                changes,
                positions: vec![(Topic::Rooms, pos.partition, pos.offset + 1)],
            })
            .await
            .unwrap();
        pos
    }

    fn start(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        // Nothing reports watermarks here: the stand-in projector is seen
        // through the stored core position, like a projector elsewhere.
        let decisions = Arc::new(LocalDecisions::with_views(Arc::clone(&self.views)));
        let consumer = Arc::new(ActivityConsumer::new(Arc::clone(&self.views), decisions));
        let (log, s) = (Arc::clone(&self.log), stop.clone());
        let task = tokio::spawn(async move { run_consumer(consumer, log, s).await.unwrap() });
        (stop, task)
    }

    /// Waits (bounded) until the activity view covers every partition's end.
    async fn caught_up(&self) {
        let t = Instant::now();
        loop {
            let mut behind = false;
            for p in 0..TOPOLOGY.rooms_partitions {
                let end = self.log.end_offset(Topic::Rooms, p).await.unwrap();
                behind |= self.views.position(ACTIVITY_VIEWS, Topic::Rooms, p).await.unwrap() < end;
            }
            if !behind {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "activity did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn counts(&self, room: &str) -> Vec<(i64, u64, usize)> {
        self.views
            .activity(room, 0, i64::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.hour, a.messages, a.authors.len()))
            .collect()
    }
}

/// Two room ids in different partitions of [`TOPOLOGY`].
fn rooms() -> (String, String) {
    let id = |n: u64| format!("{n:016x}");
    let a = id(1);
    let p = partition_for(a.as_bytes(), TOPOLOGY.rooms_partitions);
    let b = (2..100)
        .map(id)
        .find(|b| partition_for(b.as_bytes(), TOPOLOGY.rooms_partitions) != p)
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn counts_stored_messages_by_the_records_hour_and_resumes_exactly() {
    let w = World::new();
    let (a, b) = rooms();
    w.append(Record::RoomCreated(RoomCreated {
        request_id: 1,
        at: H10,
        room_id: a.clone(),
        name: "a".into(),
        capacity: 10,
        owner_id: "u1".into(),
        owner_name: "name-u1".into(),
    }))
    .await;
    w.post(&a, "u1", H10 + 5, true).await;
    w.post(&a, "u2", H10 + 10, true).await;
    w.post(&a, "u1", H10 + HOUR - 1, true).await;
    w.post(&a, "u2", H10 + 20, false).await; // refused by the fold: not counted
    w.post(&a, "u3", H10 + HOUR, true).await;
    w.post(&b, "u9", H10 + 3 * HOUR + 7, true).await;

    let (stop, task) = w.start();
    w.caught_up().await;
    assert_eq!(w.counts(&a).await, [(H10, 3, 2), (H10 + HOUR, 1, 1)]);
    assert_eq!(w.counts(&b).await, [(H10 + 3 * HOUR, 1, 1)]);
    let only_first = w.views.activity(&a, H10, H10 + HOUR).await.unwrap();
    assert_eq!(only_first[0].authors, ["u1", "u2"]);

    // Stopped and restarted: it resumes from its position, counting new
    // messages once and old ones never again.
    stop.cancel();
    task.await.unwrap();
    w.post(&a, "u4", H10 + 30, true).await;
    w.post(&b, "u9", H10 + 3 * HOUR + 8, true).await;
    let (stop, task) = w.start();
    w.caught_up().await;
    assert_eq!(w.counts(&a).await, [(H10, 4, 3), (H10 + HOUR, 1, 1)]);
    assert_eq!(w.counts(&b).await, [(H10 + 3 * HOUR, 2, 1)]);
    let live = w.views.checksum_of(ACTIVITY_VIEWS).await.unwrap();
    let core = w.views.checksum().await.unwrap();
    stop.cancel();
    task.await.unwrap();

    // Cleared, it backfills from offset 0 to the same view; the core views
    // are not touched.
    w.views.clear(ACTIVITY_VIEWS).await.unwrap();
    assert!(w.counts(&a).await.is_empty());
    let (stop, task) = w.start();
    w.caught_up().await;
    assert_eq!(w.views.checksum_of(ACTIVITY_VIEWS).await.unwrap(), live);
    assert_eq!(w.views.checksum().await.unwrap(), core);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn waits_for_the_core_views_before_counting() {
    let w = World::new();
    let (a, _) = rooms();
    w.post(&a, "u1", H10, true).await;
    // A post the stand-in projector has not folded yet.
    let m = MessagePosted {
        request_id: 2,
        at: H10 + 1,
        room_id: a.clone(),
        author_id: "u2".into(),
        author: "name-u2".into(),
        client_msg_id: "late".into(),
        text: "hi".into(),
        attachments: vec![],
    };
    let pos = w.append(Record::MessagePosted(m.clone())).await;
    let (stop, task) = w.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        w.views
            .position(ACTIVITY_VIEWS, Topic::Rooms, pos.partition)
            .await
            .unwrap(),
        0,
        "nothing of the batch is applied while the core views are behind it"
    );
    w.views
        .apply(ViewBatch {
            consumer: CORE_VIEWS.into(),
            changes: vec![(
                ViewKey::Message {
                    room_id: a.clone(),
                    message_id: pos.to_id(),
                },
                Some(ViewValue::Message(MessageView {
                    message_id: pos.to_id(),
                    room_id: a.clone(),
                    seq: 2,
                    author_id: "u2".into(),
                    author: "name-u2".into(),
                    text: "hi".into(),
                    created_at: m.at,
                    client_msg_id: "late".into(),
                    attachments: vec![],
                })),
            )],
            positions: vec![(Topic::Rooms, pos.partition, pos.offset + 1)],
        })
        .await
        .unwrap();
    w.caught_up().await;
    assert_eq!(w.counts(&a).await, [(H10, 2, 2)]);
    stop.cancel();
    task.await.unwrap();
}
