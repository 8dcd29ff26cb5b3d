//! The analyzer after its group's offsets expired (Kafka drops them after
//! `offsets.retention.minutes` without a commit): it finds its place from the
//! emotions already on the log, classifies only what is new, and appends no
//! second emotion for anything classified before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use emosation_analyzer::Analyzer;
use emosation_analyzer::consumer::{GROUP, resume_from_log};
use emosation_analyzer::offline::LexiconClassifier;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic, Topology};
use emosation_core::ports::Log;
use emosation_core::record::{EmotionRecorded, MessagePosted};
use emosation_storage::EmbeddedLog;
use emosation_testkit::eventually;
use tokio_util::sync::CancellationToken;

const ROOMS: [&str; 3] = ["00000000000000a1", "00000000000000b2", "00000000000000c3"];

fn topo() -> Topology {
    Topology {
        accounts_partitions: 1,
        rooms_partitions: 2,
    }
}

async fn post(log: &dyn Log, i: usize) {
    let room = ROOMS[i % ROOMS.len()];
    let r = Record::MessagePosted(MessagePosted {
        request_id: i as i64,
        at: 1_790_000_000_000 + i as i64,
        room_id: room.into(),
        author_id: "0000000000000001".into(),
        author: "ann".into(),
        client_msg_id: format!("m{i}"),
        text: if i.is_multiple_of(2) {
            "I love this".into()
        } else {
            "I hate this".into()
        },
        attachments: vec![],
    });
    log.append(
        Topic::Rooms,
        room.as_bytes(),
        Bytes::from(emosation_schemas::encode(&r).unwrap()),
    )
    .await
    .unwrap();
}

/// Messages and emotions per partition: (message offsets, emotions per message offset).
async fn census(log: &dyn Log) -> Vec<(Vec<u64>, HashMap<u64, usize>)> {
    let mut out = Vec::new();
    for p in 0..topo().rooms_partitions {
        let end = log.end_offset(Topic::Rooms, p).await.unwrap();
        let (mut messages, mut emotions) = (Vec::new(), HashMap::new());
        let mut next = 0;
        while next < end {
            let entries = log.fetch(Topic::Rooms, p, next, 1000, Duration::ZERO).await.unwrap();
            next = entries.last().unwrap().offset + 1;
            for e in entries {
                match emosation_schemas::decode(&e.value).unwrap() {
                    Record::MessagePosted(_) => messages.push(e.offset),
                    Record::EmotionRecorded(r) => {
                        *emotions
                            .entry(LogPosition::parse_id(&r.message_id).unwrap().offset)
                            .or_insert(0) += 1
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        out.push((messages, emotions));
    }
    out
}

/// Runs the analyzer until every message has an emotion, then a while more.
async fn analyze_until_complete(log: &Arc<dyn Log>) {
    let stop = CancellationToken::new();
    let analyzer = Analyzer::new(Arc::clone(log), Arc::new(LexiconClassifier::new()));
    let task = tokio::spawn(analyzer.run(stop.clone()));
    eventually("every message classified", Duration::from_secs(30), async || {
        let unclassified: usize = census(&**log)
            .await
            .iter()
            .map(|(msgs, emo)| msgs.iter().filter(|m| !emo.contains_key(m)).count())
            .sum();
        if unclassified == 0 {
            Ok(())
        } else {
            Err(format!("{unclassified} unclassified"))
        }
    })
    .await;
    // Long enough for any re-classification to have been appended.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A copy of `from`'s records, in order, on a fresh log: the same offsets,
/// and no committed offsets, as after Kafka expired the group's.
async fn copy_without_offsets(from: &dyn Log, dir: &std::path::Path) -> Arc<dyn Log> {
    let to: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir, topo()).unwrap());
    for p in 0..topo().rooms_partitions {
        let end = from.end_offset(Topic::Rooms, p).await.unwrap();
        let mut next = 0;
        while next < end {
            let entries = from.fetch(Topic::Rooms, p, next, 1000, Duration::ZERO).await.unwrap();
            next = entries.last().unwrap().offset + 1;
            for e in entries {
                let pos = to.append(Topic::Rooms, &e.key, e.value.clone()).await.unwrap();
                assert_eq!(pos, LogPosition::new(p, e.offset));
            }
        }
    }
    assert_eq!(to.committed(GROUP, Topic::Rooms, 0).await.unwrap(), None);
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_its_offsets_expire_the_analyzer_classifies_only_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("before"), topo()).unwrap());
    for i in 0..300 {
        post(&*log, i).await;
    }
    analyze_until_complete(&log).await;
    let before = census(&*log).await;
    for (msgs, emo) in &before {
        assert!(!msgs.is_empty());
        assert!(emo.values().all(|n| *n == 1), "one emotion each before the expiry");
    }

    // The offsets are gone; 30 messages arrive meanwhile.
    let expired = copy_without_offsets(&*log, &dir.path().join("expired")).await;
    for i in 300..330 {
        post(&*expired, i).await;
    }
    analyze_until_complete(&expired).await;
    let after = census(&*expired).await;
    let mut new_messages = 0;
    for (p, (msgs, emo)) in after.iter().enumerate() {
        new_messages += msgs.len() - before[p].0.len();
        for m in msgs {
            assert_eq!(emo.get(m), Some(&1), "partition {p}, message {m}: exactly one emotion");
        }
    }
    assert_eq!(new_messages, 30);
}

/// A crash in the middle of a batch's appends leaves some of its emotions
/// missing: resuming from the log redoes exactly those, never skips one.
#[tokio::test]
async fn resume_point_is_the_first_unclassified_message_of_the_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), topo()).unwrap());
    let room = ROOMS[0];
    let p = emosation_core::ids::partition_for(room.as_bytes(), 2);
    assert_eq!(resume_from_log(&*log, Topic::Rooms, p).await.unwrap(), 0, "empty");
    // Messages at 0..=99 of the room's partition.
    for i in 0..100 {
        post(&*log, i * ROOMS.len()).await;
    }
    assert_eq!(
        resume_from_log(&*log, Topic::Rooms, p).await.unwrap(),
        0,
        "nothing classified"
    );
    let emotion = |offset: u64| {
        let r = Record::EmotionRecorded(EmotionRecorded {
            request_id: 0,
            at: 0,
            room_id: room.into(),
            message_id: LogPosition::new(p, offset).to_id(),
            label: "joy".into(),
            score: 1.0,
            scores: vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            model: "test".into(),
            edit_id: None,
        });
        Bytes::from(emosation_schemas::encode(&r).unwrap())
    };
    // Classified: 0..=69 fully; of the batch after, 75 and 90 made it.
    for o in (0..70).chain([90, 75]) {
        log.append(Topic::Rooms, room.as_bytes(), emotion(o)).await.unwrap();
    }
    assert_eq!(resume_from_log(&*log, Topic::Rooms, p).await.unwrap(), 70);
    // Everything up to 99 classified: resume after it.
    for o in (70..100).filter(|o| *o != 75 && *o != 90) {
        log.append(Topic::Rooms, room.as_bytes(), emotion(o)).await.unwrap();
    }
    assert_eq!(resume_from_log(&*log, Topic::Rooms, p).await.unwrap(), 100);
}
