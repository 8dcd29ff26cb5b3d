//! Durable appends: many concurrent appenders, each acknowledged only when
//! its record is durable. One JSON line per run:
//! - `embedded` at `APPENDERS` (4,096) in flight: the headline figure (each
//!   ack after its group commit is fsynced);
//! - side by side at `SIDE_APPENDERS` (256) in flight, the same records:
//!   `embedded` again, then `kafka` (`KafkaLog` against a tansu broker on its
//!   sqlite engine, started here; each ack is the broker's `acks=all`).
//!
//! Env: `N` (1,000,000; the headline run), `APPENDERS` (4096), `SIDE_N`
//! (200,000), `SIDE_SECS` (20; the side-by-side runs stop at whichever bound
//! comes first), `SIDE_APPENDERS` (256), `ENGINES` (`embedded,kafka`: which
//! side-by-side runs), `KAFKA_OPTIONS` (librdkafka properties added to the
//! URL, `k=v&…`), `BENCH_KAFKA_CPU` (pin the broker with taskset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use emosation_bench::{env, percentiles, synthetic_log};
use emosation_core::ids::{Topic, Topology};
use emosation_core::ports::Log;
use emosation_storage::{EmbeddedLog, KafkaLog};
use serde_json::json;

/// `appenders` tasks append `records` round robin until `total` appends or
/// `secs` have passed; returns (appends, seconds, ack latencies in µs).
async fn run(
    log: Arc<dyn Log>,
    records: &Arc<Vec<(Bytes, Bytes)>>,
    total: u64,
    appenders: u64,
    secs: u64,
) -> anyhow::Result<(u64, f64, Vec<u64>)> {
    let per = total / appenders;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let (log, records) = (Arc::clone(&log), Arc::clone(records));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for i in 0..per {
                if i % 16 == 0 && Instant::now() >= deadline {
                    break;
                }
                let (k, v) = &records[((a * per + i) as usize) % records.len()];
                let t = Instant::now();
                log.append(Topic::Rooms, k, v.clone()).await?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((lat.len() as u64, started.elapsed().as_secs_f64(), lat))
}

fn report(engine: &str, appenders: u64, (n, secs, lat): (u64, f64, Vec<u64>)) -> f64 {
    let rate = n as f64 / secs;
    println!(
        "{}",
        json!({"bench": "log_append", "engine": engine, "records": n, "appenders": appenders, "seconds": secs,
               "commands_per_sec": rate.round(), "ack_latency": percentiles(lat), "target_per_sec": 200_000})
    );
    rate
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    emosation_bench::like_the_server();
    let total: u64 = env("N", 1_000_000);
    let appenders: u64 = env("APPENDERS", 4096);
    let side_n: u64 = env("SIDE_N", 200_000);
    let side_secs: u64 = env("SIDE_SECS", 20);
    let side_appenders: u64 = env("SIDE_APPENDERS", 256);
    let engines: String = env("ENGINES", "embedded,kafka".to_owned());
    // Realistic values: encoded MessagePosted records keyed by room.
    let records: Vec<(Bytes, Bytes)> = synthetic_log(10_000 + 4096, 100, 1000)
        .skip(10_000)
        .map(|r| {
            (
                Bytes::from(r.key()),
                Bytes::from(emosation_schemas::encode(&r).expect("encode")),
            )
        })
        .collect();
    let records = Arc::new(records);

    if total > 0 {
        let dir = tempfile::tempdir()?;
        let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), Topology::default())?);
        let rate = report("embedded", appenders, run(log, &records, total, appenders, 600).await?);
        eprintln!("durable appends, embedded, {appenders} in flight: {rate:.0} commands/s (target >= 200,000)");
    }

    for engine in engines.split(',').filter(|e| !e.is_empty()) {
        let result = match engine {
            "embedded" => {
                let dir = tempfile::tempdir()?;
                let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), Topology::default())?);
                run(log, &records, side_n, side_appenders, side_secs).await?
            }
            "kafka" => {
                let cpu = std::env::var("BENCH_KAFKA_CPU").ok();
                let (_broker, url) = emosation_bench::tansu(cpu.as_deref(), &env("KAFKA_OPTIONS", String::new()))?;
                let log: Arc<dyn Log> = Arc::new(KafkaLog::connect(&url, Topology::default()).await?);
                // One warm-up append per partition: connections, producer id, leaders.
                for (k, v) in records.iter().take(64) {
                    log.append(Topic::Rooms, k, v.clone()).await?;
                }
                run(log, &records, side_n, side_appenders, side_secs).await?
            }
            other => anyhow::bail!("unknown engine {other} (embedded, kafka)"),
        };
        let rate = report(engine, side_appenders, result);
        eprintln!("durable appends, {engine}, {side_appenders} in flight: {rate:.0} commands/s");
    }
    Ok(())
}
