//! Analyzer end-to-end lag: `MessagePosted` records appended to the embedded
//! log at a steady rate (default 1,000/s for 10 s, across 64 rooms), the real
//! [`Analyzer`] with the offline classifier following the log, and per message
//! the time from its append returning (durable) to its `EmotionRecorded`
//! being readable on the log, seen by a tailer of every rooms partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use emosation_analyzer::Analyzer;
use emosation_analyzer::offline::LexiconClassifier;
use emosation_core::Record;
use emosation_core::ids::{LogPosition, Topic, Topology};
use emosation_core::ports::Log;
use emosation_core::record::MessagePosted;
use emosation_storage::EmbeddedLog;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TEXTS: [&str; 6] = [
    "so happy to see you all today!",
    "this is terrible news, I am so sad",
    "why would anyone do that, I'm furious",
    "I'm scared about tomorrow's exam",
    "wow, I did not expect that at all",
    "ok, see you at 5",
];

/// When each message's append returned, and when its emotion was seen.
#[derive(Default)]
struct Times {
    appended: HashMap<LogPosition, Instant>,
    emotion: HashMap<LogPosition, Instant>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    emosation_bench::like_the_server();
    let rate: u64 = emosation_bench::env("RATE", 1_000);
    let secs: u64 = emosation_bench::env("SECS", 10);
    let rooms: u64 = emosation_bench::env("ROOMS", 64);
    let total = rate * secs;
    let dir = tempfile::tempdir()?;
    let topology = Topology::default();
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), topology)?);
    let stop = CancellationToken::new();
    let analyzer = Analyzer::new(Arc::clone(&log), Arc::new(LexiconClassifier::new()));
    let analyzer = tokio::spawn(analyzer.run(stop.clone()));
    let times = Arc::new(Mutex::new(Times::default()));

    // Tail every rooms partition for emotions.
    let mut tailers = Vec::new();
    for p in 0..topology.rooms_partitions {
        let (log, times, stop) = (Arc::clone(&log), Arc::clone(&times), stop.clone());
        tailers.push(tokio::spawn(async move {
            let mut next = 0;
            while !stop.is_cancelled() {
                let entries = log
                    .fetch(Topic::Rooms, p, next, 1024, Duration::from_millis(100))
                    .await
                    .expect("fetch");
                let seen = Instant::now();
                let mut t = times.lock().expect("times");
                for e in &entries {
                    if let Ok(Record::EmotionRecorded(em)) = emosation_schemas::decode(&e.value)
                        && let Some(pos) = LogPosition::parse_id(&em.message_id)
                    {
                        t.emotion.entry(pos).or_insert(seen);
                    }
                    next = e.offset + 1;
                }
            }
        }));
    }

    // Appends at `rate`, in ticks of 10 ms, each append its own task so a
    // slow group commit does not hold back the schedule.
    let started = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appends = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while sent < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let room = format!("{:016x}", 0x2000_0000 + sent % rooms);
            let record = Record::MessagePosted(MessagePosted {
                request_id: sent as i64,
                at: 1_795_000_000_000 + sent as i64,
                room_id: room.clone(),
                author_id: format!("{:016x}", 0x1000_0000 + sent % 97),
                author: format!("user_{}", sent % 97),
                client_msg_id: format!("c{sent}"),
                text: TEXTS[(sent % TEXTS.len() as u64) as usize].to_owned(),
                attachments: vec![],
            });
            let value = Bytes::from(emosation_schemas::encode(&record)?);
            let (log, times) = (Arc::clone(&log), Arc::clone(&times));
            appends.spawn(async move {
                let pos = log.append(Topic::Rooms, room.as_bytes(), value).await.expect("append");
                times.lock().expect("times").appended.insert(pos, Instant::now());
            });
            sent += 1;
        }
    }
    while appends.join_next().await.is_some() {}
    let send_secs = started.elapsed().as_secs_f64();

    // Every message's emotion, within a bound.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = times.lock().expect("times").emotion.len() as u64;
        if done >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for t in tailers {
        t.await?;
    }
    analyzer.await??;

    let t = times.lock().expect("times");
    let mut lag_us: Vec<u64> = t
        .appended
        .iter()
        .filter_map(|(pos, at)| {
            t.emotion
                .get(pos)
                .map(|seen| seen.saturating_duration_since(*at).as_micros() as u64)
        })
        .collect();
    lag_us.sort_unstable();
    let missing = total - lag_us.len() as u64;
    let pick = |q: f64| {
        lag_us
            .get(((lag_us.len() as f64 * q) as usize).min(lag_us.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    let ms = |v: f64| (v * 100.0).round() / 100.0;
    println!(
        "{}",
        json!({"bench": "analyzer_lag", "rate": rate, "messages": lag_us.len(), "missing": missing,
               "rooms": rooms, "partitions": topology.rooms_partitions,
               "achieved_rate": (total as f64 / send_secs).round(),
               "p50_ms": ms(pick(0.50)), "p90_ms": ms(pick(0.90)), "p99_ms": ms(pick(0.99)),
               "max_ms": ms(lag_us.last().map_or(f64::NAN, |us| *us as f64 / 1000.0)),
               "classifier": "offline-lexicon-v1"})
    );
    println!(
        "analyzer lag at {rate} msg/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} messages ({missing} without an emotion)",
        pick(0.50),
        pick(0.99),
        lag_us.last().map_or(f64::NAN, |us| *us as f64 / 1000.0),
        lag_us.len()
    );
    anyhow::ensure!(missing == 0, "{missing} messages got no emotion within the bound");
    Ok(())
}
