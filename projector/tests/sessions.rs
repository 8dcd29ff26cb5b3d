//! Sessions are records: the live projector and replay rebuild the same
//! sessions — opened, rotated, reused, logged out, ended by a deletion —
//! from the same log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic, Topology, partition_for};
use emosation_core::ports::{CORE_VIEWS, Log, ViewStore};
use emosation_core::record::*;
use emosation_core::view::{SessionEndReason, ViewKey, ViewValue};
use emosation_projector::{Projector, ReplayOptions, replay_with};
use emosation_storage::{EmbeddedLog, EmbeddedViewStore, LocalDecisions};
use tokio_util::sync::CancellationToken;

const USERS: usize = 6;
/// Session ids per user: each opens once, so enough stay open to be rotated
/// and then ended by a deletion.
const SESSIONS: u64 = 32;

/// A deterministic stream of account records for a few usernames, with many
/// collisions: refreshes of current and of used generations, of unknown and
/// ended sessions, logins while deleted, repeated deletions and restores,
/// logouts of sessions no record opened. Each user's id is the position its
/// signup will take, which the generator tracks as the log will assign it.
fn commands(n: usize, topo: Topology) -> Vec<Record> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    let name = |u: usize| format!("user{u}");
    let mut offsets = vec![0u64; topo.accounts_partitions as usize];
    let mut ids: Vec<Option<String>> = vec![None; USERS];
    let mut out = Vec::new();
    for i in 0..n {
        let at = 1_000 + i as i64;
        let u = next(USERS as u64) as usize;
        let user_id = ids[u].clone().unwrap_or_else(|| "0000000000000000".into());
        let session_id = format!("{:016x}", next(SESSIONS));
        let rec = match (ids[u].is_some(), next(10)) {
            (false, _) => Record::UserSignedUp(UserSignedUp {
                request_id: i as i64,
                at,
                username: name(u),
                password_hash: "h".into(),
            }),
            (true, 0..=2) => Record::SessionOpened(SessionOpened {
                request_id: i as i64,
                at,
                user_id,
                username: name(u),
                session_id,
                expires_at: at + 200 + next(400) as i64,
            }),
            (true, 3..=5) => Record::SessionRefreshed(SessionRefreshed {
                request_id: i as i64,
                at,
                user_id,
                username: name(u),
                session_id,
                generation: next(3) as i64,
            }),
            (true, 6) => Record::SessionRevoked(SessionRevoked {
                request_id: i as i64,
                at,
                user_id,
                username: name(u),
                session_id,
                expires_at: at + 100,
            }),
            (true, 7) => Record::AccountDeleted(AccountDeleted {
                request_id: i as i64,
                at,
                user_id,
                username: name(u),
                by: None,
            }),
            (true, _) => Record::AccountRestored(AccountRestored {
                request_id: i as i64,
                at,
                user_id,
                username: name(u),
                by: None,
            }),
        };
        let p = partition_for(rec.key().as_bytes(), topo.accounts_partitions);
        if matches!(rec, Record::UserSignedUp(_)) {
            ids[u] = Some(LogPosition::new(p, offsets[p as usize]).to_id());
        }
        offsets[p as usize] += 1;
        out.push(rec);
    }
    out
}

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

async fn project_live(log: &Arc<dyn Log>, views: &Arc<dyn ViewStore>) -> String {
    let stop = CancellationToken::new();
    let projector = Projector::new(Arc::clone(log), Arc::clone(views), Arc::new(LocalDecisions::new()));
    let task = tokio::spawn(projector.run(stop.clone()));
    emosation_testkit::eventually("the projector caught up", Duration::from_secs(10), async || {
        for topic in Topic::ALL {
            for p in 0..log.topology().partitions(topic) {
                let at = views.position(CORE_VIEWS, topic, p).await.unwrap();
                let end = log.end_offset(topic, p).await.unwrap();
                if at < end {
                    return Err(format!("{}/{p} at {at} of {end}", topic.name()));
                }
            }
        }
        Ok(())
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    views.checksum().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_replay_to_the_views_the_live_projector_built() {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 3,
        rooms_partitions: 2,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(&dir.path().join("log"), topo).unwrap());
    append_all(&*log, commands(2000, topo)).await;

    let live: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("live")).unwrap());
    let live_sum = project_live(&log, &live).await;

    // The stream exercised every kind of session the views can hold.
    let (mut rotated, mut reused, mut logged_out, mut before_deletion, mut legacy, mut epochs) = (0, 0, 0, 0, 0, 0);
    for u in 0..USERS {
        let username = format!("user{u}");
        let epoch = match live
            .load(&[ViewKey::session_epoch(&username)])
            .await
            .unwrap()
            .pop()
            .flatten()
        {
            Some(ViewValue::SessionEpoch(e)) => {
                epochs += 1;
                e.epoch
            }
            _ => 0,
        };
        let keys: Vec<ViewKey> = (0..SESSIONS)
            .map(|s| ViewKey::session(&username, &format!("{s:016x}")))
            .collect();
        for v in live.load(&keys).await.unwrap().into_iter().flatten() {
            match v {
                ViewValue::OpenedSession(s) => {
                    rotated += usize::from(s.generation > 0);
                    match s.ended.map(|e| e.reason) {
                        Some(SessionEndReason::RefreshReuse) => reused += 1,
                        Some(SessionEndReason::Logout) => logged_out += 1,
                        None => before_deletion += usize::from(s.account_epoch < epoch),
                    }
                }
                ViewValue::Session(_) => legacy += 1,
                other => panic!("not a session: {other:?}"),
            }
        }
    }
    assert!(
        rotated > 0 && reused > 0 && logged_out > 0 && before_deletion > 0 && legacy > 0 && epochs > 0,
        "rotated {rotated}, reused {reused}, logged out {logged_out}, before a deletion {before_deletion}, \
         legacy {legacy}, epochs {epochs}"
    );

    let live2: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("live2")).unwrap());
    assert_eq!(project_live(&log, &live2).await, live_sum);
    for (chunk, parallel) in [(1_000_000, 1), (7, 3)] {
        let rebuilt: Arc<dyn ViewStore> =
            Arc::new(EmbeddedViewStore::open(&dir.path().join(format!("replay-{chunk}"))).unwrap());
        let options = ReplayOptions {
            ingest_chunk: chunk,
            parallel,
            ..ReplayOptions::default()
        };
        let stats = replay_with(Arc::clone(&log), Arc::clone(&rebuilt), Arc::new(|_, _| {}), options)
            .await
            .unwrap();
        assert_eq!(stats.records, 2000);
        assert_eq!(rebuilt.checksum().await.unwrap(), live_sum, "chunk {chunk}");
    }
}
