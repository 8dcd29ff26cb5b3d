//! The live projector and replay build the same views from the same log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use emosation_core::Record;
use emosation_core::ids::random_id;
use emosation_core::ids::{LogPosition, Topic, Topology, partition_for};
use emosation_core::ports::{CORE_VIEWS, Log, ViewStore};
use emosation_core::record::*;
use emosation_projector::{ConsumerError, Projector, ReplayOptions, replay_with};
use emosation_storage::{EmbeddedLog, EmbeddedViewStore, LocalDecisions};
use tokio_util::sync::CancellationToken;

/// A deterministic pseudo-random command stream with many collisions:
/// duplicate signups, full rooms, repeated client_msg_ids, quits, rejoins,
/// read markers (some for unknown messages), posts by non-members, edits and
/// deletes of posted messages (by their authors and by others), emotions of
/// edits that are and are not the latest.
fn commands(n: usize, topo: Topology) -> Vec<Record> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let users: Vec<String> = (0..12).map(|i| random_id(0x1000 + i)).collect();
    let rooms: Vec<String> = (0..5).map(|i| random_id(0x2000 + i)).collect();
    let mut out = Vec::new();
    // Where each record will land, as a log places it, so that edits and
    // deletes can name messages posted earlier.
    let mut offsets: std::collections::HashMap<(Topic, u32), u64> = Default::default();
    let mut posted: Vec<(usize, usize, String)> = Vec::new();
    let mut edits: Vec<(usize, String, String)> = Vec::new();
    let mut uploads: Vec<(usize, usize, String)> = Vec::new();
    for i in 0..n {
        let at = 1_000 + i as i64;
        let u = next(12) as usize;
        let r = next(5) as usize;
        let earlier = |pick: u64| (!posted.is_empty()).then(|| posted[pick as usize % posted.len()].clone());
        let rec = match next(15) {
            0 => Record::UserSignedUp(UserSignedUp {
                request_id: i as i64,
                at,
                username: format!("user{u}"),
                password_hash: "h".into(),
            }),
            1 => Record::RoomCreated(RoomCreated {
                request_id: i as i64,
                at,
                room_id: rooms[r].clone(),
                name: format!("room{r}"),
                capacity: 1 + next(6) as i32,
                owner_id: users[u].clone(),
                owner_name: format!("user{u}"),
            }),
            2 | 3 => Record::MemberJoined(MemberJoined {
                request_id: i as i64,
                at,
                room_id: rooms[r].clone(),
                user_id: users[u].clone(),
                username: format!("user{u}"),
            }),
            4 => Record::MemberQuit(MemberQuit {
                request_id: i as i64,
                at,
                room_id: rooms[r].clone(),
                user_id: users[u].clone(),
                username: format!("user{u}"),
            }),
            5 => {
                let p = partition_for(rooms[r].as_bytes(), topo.rooms_partitions);
                Record::ReadMarkerSet(ReadMarkerSet {
                    request_id: i as i64,
                    at,
                    room_id: rooms[r].clone(),
                    user_id: users[u].clone(),
                    message_id: LogPosition::new(p, next(n as u64)).to_id(),
                })
            }
            6 => Record::SessionRevoked(SessionRevoked {
                request_id: i as i64,
                at,
                user_id: users[u].clone(),
                username: format!("user{u}"),
                session_id: random_id(next(1000)),
                expires_at: 10,
            }),
            8 => {
                // Emotions for messages that may or may not exist, sometimes twice.
                let p = partition_for(rooms[r].as_bytes(), topo.rooms_partitions);
                let label = ["joy", "sadness", "anger", "neutral"][next(4) as usize];
                Record::EmotionRecorded(EmotionRecorded {
                    request_id: i as i64,
                    at,
                    room_id: rooms[r].clone(),
                    message_id: LogPosition::new(p, next(n as u64)).to_id(),
                    label: label.into(),
                    score: 0.4,
                    scores: vec![0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                    model: "test".into(),
                    edit_id: None,
                })
            }
            10 | 11 => match earlier(next(1 << 20)) {
                // Mostly by the author; sometimes by someone else.
                Some((r, author, message_id)) => {
                    let by = if next(3) == 0 { u } else { author };
                    if next(2) == 0 {
                        Record::MessageEdited(MessageEdited {
                            request_id: i as i64,
                            at,
                            room_id: rooms[r].clone(),
                            message_id,
                            user_id: users[by].clone(),
                            username: format!("user{by}"),
                            text: format!("edit {i}"),
                        })
                    } else {
                        Record::MessageDeleted(MessageDeleted {
                            request_id: i as i64,
                            at,
                            room_id: rooms[r].clone(),
                            message_id,
                            user_id: users[by].clone(),
                            username: format!("user{by}"),
                        })
                    }
                }
                None => Record::MemberJoined(MemberJoined {
                    request_id: i as i64,
                    at,
                    room_id: rooms[r].clone(),
                    user_id: users[u].clone(),
                    username: format!("user{u}"),
                }),
            },
            13 | 14 => {
                // Friend requests, answers, blocks and direct rooms between two users.
                let o = (u + 1 + next(11) as usize) % 12;
                let action = emosation_core::record::RELATIONSHIP_ACTIONS[next(8) as usize];
                Record::RelationshipChanged(RelationshipChanged {
                    request_id: i as i64,
                    at,
                    room_id: emosation_core::ids::pair_room_id(&users[u], &users[o]),
                    user_id: users[u].clone(),
                    username: format!("user{u}"),
                    other_id: users[o].clone(),
                    other_name: format!("user{o}"),
                    action: action.into(),
                })
            }
            12 => match (!edits.is_empty()).then(|| edits[next(1 << 20) as usize % edits.len()].clone()) {
                // An emotion of an edit, which may have been superseded.
                Some((r, message_id, edit_id)) => Record::EmotionRecorded(EmotionRecorded {
                    request_id: i as i64,
                    at,
                    room_id: rooms[r].clone(),
                    message_id,
                    label: ["joy", "sadness", "fear"][next(3) as usize].into(),
                    score: 0.5,
                    scores: vec![0.5, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05],
                    model: "test".into(),
                    edit_id: Some(edit_id),
                }),
                None => Record::MemberJoined(MemberJoined {
                    request_id: i as i64,
                    at,
                    room_id: rooms[r].clone(),
                    user_id: users[u].clone(),
                    username: format!("user{u}"),
                }),
            },
            7 if next(2) == 0 => Record::AttachmentUploaded(AttachmentUploaded {
                request_id: i as i64,
                at,
                room_id: rooms[r].clone(),
                uploader_id: users[u].clone(),
                uploader: format!("user{u}"),
                file_name: format!("f{i}.png"),
                size: i as i64,
                content_type: "image/png".into(),
                width: Some(1 + next(100) as i32),
                height: Some(1 + next(100) as i32),
                blob_key: format!("sha256/{i:064x}"),
                sha256: format!("{i:064x}"),
            }),
            9 if !uploads.is_empty() => {
                // Uploads sent (mostly by their uploader, to their room;
                // sometimes twice), or expired.
                let (ur, uu, id) = uploads[next(1 << 20) as usize % uploads.len()].clone();
                if next(4) == 0 {
                    Record::AttachmentExpired(AttachmentExpired {
                        request_id: i as i64,
                        at,
                        room_id: rooms[ur].clone(),
                        attachment_id: id,
                    })
                } else {
                    let by = if next(4) == 0 { u } else { uu };
                    Record::MessagePosted(MessagePosted {
                        request_id: i as i64,
                        at,
                        room_id: rooms[ur].clone(),
                        author_id: users[by].clone(),
                        author: format!("user{by}"),
                        client_msg_id: format!("c{}", next(40)),
                        text: String::new(),
                        attachments: vec![id],
                    })
                }
            }
            _ => Record::MessagePosted(MessagePosted {
                request_id: i as i64,
                at,
                room_id: rooms[r].clone(),
                author_id: users[u].clone(),
                author: format!("user{u}"),
                client_msg_id: format!("c{}", next(40)),
                text: format!("text {i}"),
                attachments: vec![],
            }),
        };
        let p = partition_for(rec.key().as_bytes(), topo.partitions(rec.topic()));
        let offset = offsets.entry((rec.topic(), p)).or_default();
        let pos = LogPosition::new(p, *offset).to_id();
        *offset += 1;
        match &rec {
            Record::AttachmentUploaded(a) => uploads.push((
                r,
                u,
                emosation_core::ids::attachment_id(&a.room_id, LogPosition::new(p, *offset - 1)),
            )),
            Record::MessagePosted(m) if !m.attachments.is_empty() => {}
            Record::MessagePosted(_) => posted.push((r, u, pos)),
            Record::MessageEdited(e) => {
                let r = rooms.iter().position(|x| *x == e.room_id).unwrap();
                edits.push((r, e.message_id.clone(), pos));
            }
            _ => {}
        }
        out.push(rec);
    }
    out
}

async fn wait_until_caught_up(log: &dyn Log, views: &dyn ViewStore) {
    emosation_testkit::eventually("the projector caught up", Duration::from_secs(10), async || {
        let mut behind = Vec::new();
        for topic in Topic::ALL {
            for p in 0..log.topology().partitions(topic) {
                let (at, end) = (
                    views.position(CORE_VIEWS, topic, p).await.unwrap(),
                    log.end_offset(topic, p).await.unwrap(),
                );
                if at < end {
                    behind.push(format!("{}/{p} at {at} of {end}", topic.name()));
                }
            }
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(behind.join(", "))
        }
    })
    .await
}

/// Appends `records` in order, each under its own key.
async fn append_all(log: &dyn Log, records: Vec<Record>) {
    for r in records {
        let key = r.key();
        log.append(
            r.topic(),
            key.as_bytes(),
            Bytes::from(emosation_schemas::encode(&r).unwrap()),
        )
        .await
        .unwrap();
    }
}

/// Runs a live projector over `log` into `views` until it has caught up,
/// stops it, and returns the views' checksum.
async fn project_live(log: &Arc<dyn Log>, views: &Arc<dyn ViewStore>) -> String {
    project_live_reporting_to(log, views, Arc::new(LocalDecisions::new())).await
}

/// [`project_live`], with the projector reporting to `decisions`.
async fn project_live_reporting_to(
    log: &Arc<dyn Log>,
    views: &Arc<dyn ViewStore>,
    decisions: Arc<LocalDecisions>,
) -> String {
    let stop = CancellationToken::new();
    let projector = Projector::new(Arc::clone(log), Arc::clone(views), decisions);
    let task = tokio::spawn(projector.run(stop.clone()));
    wait_until_caught_up(&**log, &**views).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    views.checksum().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_projection_and_replay_agree_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 3,
        rooms_partitions: 4,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), topo).unwrap());
    append_all(&*log, commands(3000, topo)).await;
    // A record no schema knows is skipped by both paths alike.
    log.append(Topic::Rooms, b"garbage", Bytes::from_static(b"not avro"))
        .await
        .unwrap();

    let live: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("live")).unwrap());
    project_live(&log, &live).await;
    // So is a record not where its topic and key route it: a message that
    // would be accepted (its author is a member of its room), appended
    // under another key, and on the other topic. Folding it would let two
    // partitions' folds share a room, and replay would then depend on how
    // they interleave.
    let mut accepted = None;
    for room in live.rooms(None, 100).await.unwrap() {
        let members = live.members(&room.room_id, None, usize::MAX).await.unwrap();
        if let Some(m) = members.first() {
            accepted = Some((room.room_id.clone(), m.user_id.clone(), m.username.clone()));
            break;
        }
    }
    let (room_id, author_id, author) = accepted.expect("a room with a member");
    let post = |client_msg_id: &str| {
        Record::MessagePosted(MessagePosted {
            request_id: 1,
            at: 1_000_000,
            room_id: room_id.clone(),
            author_id: author_id.clone(),
            author: author.clone(),
            client_msg_id: client_msg_id.into(),
            text: client_msg_id.into(),
            attachments: vec![],
        })
    };
    let encode = |r: &Record| Bytes::from(emosation_schemas::encode(r).unwrap());
    log.append(Topic::Rooms, b"another-room", encode(&post("misrouted")))
        .await
        .unwrap();
    log.append(Topic::Accounts, room_id.as_bytes(), encode(&post("misrouted")))
        .await
        .unwrap();
    // The same message, routed by its room, is accepted.
    append_all(&*log, vec![post("routed")]).await;
    let live_sum = project_live(&log, &live).await;
    let texts: Vec<String> = live
        .history(&room_id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert!(texts.contains(&"routed".to_owned()), "{texts:?}");
    assert!(
        !texts.contains(&"misrouted".to_owned()),
        "a misrouted record was folded: {texts:?}"
    );
    // A second live projection of the same log agrees.
    let live2: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("live2")).unwrap());
    assert_eq!(project_live(&log, &live2).await, live_sum);

    // Tiny bulk-load chunks exercise lookups of already-ingested idempotency keys.
    // Tiny shared buffers load finished partitions' rows in several runs.
    for (chunk, buffer, parallel) in [(1_000_000, 1 << 30, 1), (7, 1, 1), (64, 300, 3), (7, 1 << 30, 2)] {
        let rebuilt: Arc<dyn ViewStore> =
            Arc::new(EmbeddedViewStore::open(&dir.path().join(format!("replay-{chunk}"))).unwrap());
        let options = ReplayOptions {
            ingest_chunk: chunk,
            ingest_buffer: buffer,
            parallel,
        };
        let stats = replay_with(Arc::clone(&log), Arc::clone(&rebuilt), Arc::new(|_, _| {}), options)
            .await
            .unwrap();
        assert_eq!(stats.records, 3004);
        assert_eq!(rebuilt.checksum().await.unwrap(), live_sum, "chunk {chunk}");
        assert!(!rebuilt.rebuilding(CORE_VIEWS).await.unwrap());
    }

    // Replaying over live views (clearing them first) lands on the same digest.
    replay_with(
        Arc::clone(&log),
        Arc::clone(&live),
        Arc::new(|_, _| {}),
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(live.checksum().await.unwrap(), live_sum);
}

/// Views left behind the log (a server killed after appending, before
/// folding) are brought to the log's end by `catch_up`, to the digest of a
/// live projection of the whole log; `lag` counts what was missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_folds_what_the_views_missed() {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 2,
        rooms_partitions: 3,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), topo).unwrap());
    let mut cmds = commands(2000, topo);
    let rest = cmds.split_off(1200);
    append_all(&*log, cmds).await;
    let behind: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("behind")).unwrap());
    let half_sum = project_live(&log, &behind).await;
    assert_eq!(emosation_projector::lag(&*log, &*behind).await.unwrap(), 0);
    append_all(&*log, rest).await;
    assert_eq!(emosation_projector::lag(&*log, &*behind).await.unwrap(), 800);
    assert_eq!(behind.checksum().await.unwrap(), half_sum, "nothing folded yet");

    assert_eq!(emosation_projector::catch_up(&*log, &*behind).await.unwrap(), 800);
    assert_eq!(emosation_projector::lag(&*log, &*behind).await.unwrap(), 0);
    let whole: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("whole")).unwrap());
    let whole_sum = project_live(&log, &whole).await;
    assert_ne!(whole_sum, half_sum);
    assert_eq!(behind.checksum().await.unwrap(), whole_sum);
    // Caught up, there is nothing more to fold.
    assert_eq!(emosation_projector::catch_up(&*log, &*behind).await.unwrap(), 0);
}

/// A log written before the fingerprints were spec-exact (every header
/// carries apache-avro 0.21's fingerprint), then upgraded mid-stream, replays
/// to the checksum of the same records written today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_the_legacy_fingerprints_replays_to_the_same_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 2,
        rooms_partitions: 3,
    };
    let cmds = commands(1500, topo);
    let new_log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("new"), topo).unwrap());
    append_all(&*new_log, cmds.clone()).await;
    let old_log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("old"), topo).unwrap());
    let mut legacy_headers = 0;
    for (i, r) in cmds.into_iter().enumerate() {
        let mut bytes = emosation_schemas::encode(&r).unwrap();
        // The first 1,000 as an old build wrote them (schema v1, with the
        // old fingerprint), the rest after the upgrade. Edits and their
        // emotions, and attachments, did not exist then.
        let kind = emosation_schemas::record_type(&r);
        let legacy = emosation_schemas::LEGACY.iter().find(|(k, _, _)| *k == kind);
        let new_kind = matches!(&r, Record::EmotionRecorded(e) if e.edit_id.is_some())
            || matches!(&r, Record::MessagePosted(m) if !m.attachments.is_empty());
        if i < 1000
            && let Some((_, version, legacy)) = legacy
            && !new_kind
        {
            bytes = emosation_schemas::encode_released(&r, *version).unwrap().unwrap();
            bytes[2..10].copy_from_slice(legacy);
            legacy_headers += 1;
        }
        old_log
            .append(r.topic(), r.key().as_bytes(), Bytes::from(bytes))
            .await
            .unwrap();
    }
    assert!(legacy_headers > 550, "{legacy_headers} written as an old build would");
    let mut sums = Vec::new();
    for (name, log) in [("new", &new_log), ("old", &old_log)] {
        let views: Arc<dyn ViewStore> =
            Arc::new(EmbeddedViewStore::open(&dir.path().join(format!("views-{name}"))).unwrap());
        let stats = replay_with(
            Arc::clone(log),
            Arc::clone(&views),
            Arc::new(|_, _| {}),
            ReplayOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(stats.records, 1500, "{name}");
        sums.push(views.checksum().await.unwrap());
    }
    assert_eq!(sums[0], sums[1]);
    // And the live projector reads the old log the same way.
    let live: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("live-old")).unwrap());
    assert_eq!(project_live(&old_log, &live).await, sums[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_refuses_views_left_mid_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), Topology::default()).unwrap());
    let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views")).unwrap());
    views.set_rebuilding(CORE_VIEWS, true).await.unwrap();
    let projector = Projector::new(log, views, Arc::new(LocalDecisions::new()));
    let res = projector.run(CancellationToken::new()).await;
    assert!(matches!(res, Err(ConsumerError::Rebuilding)), "{res:?}");
}

/// The same commands on the embedded log and on Kafka (a real tansu broker)
/// fold into the same views, live or replayed, on the embedded store and on
/// Redis: the checksum depends on the log's content only, never on the engines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_replay_agree_across_engines() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = emosation_testkit::Tansu::start();
    let redis = emosation_testkit::RedisServer::start();
    let topo = Topology {
        accounts_partitions: 2,
        rooms_partitions: 3,
    };
    let embedded: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), topo).unwrap());
    let kafka: Arc<dyn Log> = Arc::new(
        emosation_storage::KafkaLog::connect(&tansu.isolated_url(), topo)
            .await
            .unwrap(),
    );
    for r in commands(800, topo) {
        let key = r.key();
        let value = Bytes::from(emosation_schemas::encode(&r).unwrap());
        let a = embedded.append(r.topic(), key.as_bytes(), value.clone()).await.unwrap();
        let b = kafka.append(r.topic(), key.as_bytes(), value).await.unwrap();
        assert_eq!(a, b, "both logs place every record at the same position");
    }

    let reference: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views")).unwrap());
    let expected = project_live(&embedded, &reference).await;
    let on_redis: Arc<dyn ViewStore> = Arc::new(
        emosation_storage::RedisViewStore::connect(&format!("{}?ns=live", redis.url()))
            .await
            .unwrap(),
    );
    assert_eq!(project_live(&kafka, &on_redis).await, expected, "Kafka → Redis, live");
    let replayed: Arc<dyn ViewStore> = Arc::new(
        emosation_storage::RedisViewStore::connect(&format!("{}?ns=replay", redis.url()))
            .await
            .unwrap(),
    );
    replay_with(
        Arc::clone(&kafka),
        Arc::clone(&replayed),
        Arc::new(|_, _| {}),
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(replayed.checksum().await.unwrap(), expected, "Kafka → Redis, replayed");
}

/// A log whose first reads of each partition come back empty, as a remote
/// broker's do while it warms up a large partition (tansu takes seconds).
struct SlowStartLog {
    inner: Arc<dyn Log>,
    empty_reads_left: std::sync::Mutex<std::collections::HashMap<(Topic, u32), u32>>,
}

#[async_trait::async_trait]
impl Log for SlowStartLog {
    fn topology(&self) -> Topology {
        self.inner.topology()
    }
    fn append(&self, topic: Topic, key: &[u8], value: Bytes) -> emosation_core::ports::AppendTicket {
        self.inner.append(topic, key, value)
    }
    async fn fetch(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<emosation_core::ports::LogEntry>, emosation_core::ports::LogError> {
        {
            let mut left = self.empty_reads_left.lock().unwrap();
            let n = left.entry((topic, partition)).or_insert(2);
            if *n > 0 {
                *n -= 1;
                return Ok(Vec::new());
            }
        }
        self.inner.fetch(topic, partition, from, max, wait).await
    }
    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, emosation_core::ports::LogError> {
        self.inner.end_offset(topic, partition).await
    }
    async fn commit(
        &self,
        group: &str,
        topic: Topic,
        partition: u32,
        next: u64,
    ) -> Result<(), emosation_core::ports::LogError> {
        self.inner.commit(group, topic, partition, next).await
    }
    async fn committed(
        &self,
        group: &str,
        topic: Topic,
        partition: u32,
    ) -> Result<Option<u64>, emosation_core::ports::LogError> {
        self.inner.committed(group, topic, partition).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_never_stops_short_when_the_log_is_slow_to_answer() {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 2,
        rooms_partitions: 2,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), topo).unwrap());
    append_all(&*log, commands(500, topo)).await;
    let direct: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("a")).unwrap());
    replay_with(
        Arc::clone(&log),
        Arc::clone(&direct),
        Arc::new(|_, _| {}),
        ReplayOptions::default(),
    )
    .await
    .unwrap();
    let slow: Arc<dyn Log> = Arc::new(SlowStartLog {
        inner: Arc::clone(&log),
        empty_reads_left: Default::default(),
    });
    let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("b")).unwrap());
    let stats = replay_with(slow, Arc::clone(&views), Arc::new(|_, _| {}), ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!(stats.records, 500, "every record was read despite the empty answers");
    assert_eq!(views.checksum().await.unwrap(), direct.checksum().await.unwrap());
}

/// What the projector reports as having taken effect (`Decisions::folded`,
/// asked through `took_effect` by the fan-out and the dashboards instead of
/// looking entities up) is exactly what the views say, for every post and
/// every emotion of a message as posted: over a log full of repeated
/// `client_msg_id`s, posts by non-members, emotions of unknown messages and
/// second emotions, plus a record that does not decode and one that is
/// not routed by its room (neither took effect; both are skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_effects_are_what_the_views_hold() {
    use emosation_core::ports::Decisions;
    use emosation_core::view::{ViewKey, ViewValue};
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 2,
        rooms_partitions: 3,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), topo).unwrap());
    append_all(&*log, commands(6000, topo)).await;
    log.append(Topic::Rooms, b"garbage", Bytes::from_static(b"not avro"))
        .await
        .unwrap();
    let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views")).unwrap());
    let decisions = Arc::new(LocalDecisions::new());
    // Stopped once caught up: what it reported stays with `decisions`.
    project_live_reporting_to(&log, &views, decisions.clone()).await;

    let (mut posts, mut emotions, mut stored) = (0, 0, 0);
    for p in 0..topo.rooms_partitions {
        let end = log.end_offset(Topic::Rooms, p).await.unwrap();
        let entries = log
            .fetch(Topic::Rooms, p, 0, end as usize, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(entries.len() as u64, end);
        let mut asked = Vec::new();
        for e in &entries {
            let pos = LogPosition::new(p, e.offset);
            let (record, key) = match emosation_schemas::decode(&e.value) {
                Ok(Record::MessagePosted(m)) => {
                    posts += 1;
                    let key = ViewKey::message(&m.room_id, &pos.to_id());
                    (Some(Record::MessagePosted(m)), Some(key))
                }
                Ok(Record::EmotionRecorded(r)) if r.edit_id.is_none() => {
                    emotions += 1;
                    let key = ViewKey::emotion(&r.room_id, &r.message_id);
                    (Some(Record::EmotionRecorded(r)), Some(key))
                }
                Ok(_) => continue,
                // Undecodable: the fold skips it, so it took no effect.
                Err(_) => (None, None),
            };
            let in_views = match (record, key) {
                (Some(Record::MessagePosted(_)), Some(key)) => views.load(&[key]).await.unwrap()[0].is_some(),
                (Some(Record::EmotionRecorded(_)), Some(key)) => matches!(
                    views.load(&[key]).await.unwrap().pop().flatten(),
                    Some(ViewValue::Emotion(em)) if em.position == pos.to_id()
                ),
                _ => false,
            };
            stored += usize::from(in_views);
            asked.push((e.offset, in_views));
        }
        let offsets: Vec<u64> = asked.iter().map(|(o, _)| *o).collect();
        let reported = decisions
            .took_effect(Topic::Rooms, p, &offsets)
            .expect("the projector in this process reported the whole partition");
        for ((offset, in_views), reported) in asked.iter().zip(reported) {
            assert_eq!(reported, *in_views, "partition {p} offset {offset}");
        }
    }
    assert!(posts > 300 && emotions > 100, "{posts} posts, {emotions} emotions");
    assert!(
        stored > 0 && stored < posts + emotions,
        "some stored and some not: {stored}"
    );
    // Beyond what was reported: not known here.
    assert_eq!(decisions.took_effect(Topic::Rooms, 0, &[u64::MAX - 1]), None);
}
