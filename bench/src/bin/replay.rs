//! Replay of a synthetic log (2,000 signups, 1,000 rooms × 10 joins, then
//! messages) into empty embedded views. One JSON line per log engine:
//! - `embedded`: a 1,000,000-record embedded log (`N`), replayed twice (the
//!   second run over the built views); both digests must agree;
//! - `kafka`: `KAFKA_N` (200,000) records written into a tansu broker (its
//!   sqlite engine, started here) through `KafkaLog`, then replayed from it
//!   into empty embedded views; the digest must equal an embedded replay of
//!   the same records. Also reports how fast tansu took the records.
//!
//! Env: `ENGINES` (`embedded,kafka`), `N`, `KAFKA_N`, `KAFKA_WRITE_SECS` (600, a bound on
//! the write), `KAFKA_IN_FLIGHT`
//! (4,096 appends in flight while writing), `KAFKA_OPTIONS` (librdkafka
//! properties added to the URL, `k=v&…`), `PARALLEL`, `INGEST_CHUNK` (rows a
//! partition holds before loading them itself), `INGEST_BUFFER` (bytes of
//! finished partitions' rows loaded together), `SETTLE_SECS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use emosation_bench::{cpu_us, env, synthetic_log};
use emosation_core::ids::Topology;
use emosation_core::ports::{Log, ViewStore};
use emosation_storage::{EmbeddedLog, EmbeddedViewStore, KafkaLog};
use futures_util::StreamExt;
use serde_json::json;

fn options() -> emosation_projector::ReplayOptions {
    let mut options = emosation_projector::ReplayOptions::default();
    options.parallel = env("PARALLEL", options.parallel);
    options.ingest_chunk = env("INGEST_CHUNK", options.ingest_chunk);
    options.ingest_buffer = env("INGEST_BUFFER", options.ingest_buffer);
    options
}

/// Builds an embedded log of the synthetic records, closed and settled.
async fn embedded_log(dir: &std::path::Path, total: u64) -> anyhow::Result<Arc<dyn Log>> {
    let log = Arc::new(EmbeddedLog::open(&dir.join("log"), Topology::default())?);
    let t = Instant::now();
    let mut pending = Vec::new();
    for r in synthetic_log(total, 2_000, 1_000) {
        let value = Bytes::from(emosation_schemas::encode(&r)?);
        pending.push((r.topic(), Bytes::from(r.key()), value));
        if pending.len() == 50_000 {
            for rx in log.append_many(pending.drain(..)) {
                rx.await??;
            }
        }
    }
    for rx in log.append_many(pending.drain(..)) {
        rx.await??;
    }
    eprintln!("built a {total}-record log in {:.1}s", t.elapsed().as_secs_f64());
    // Replay runs on a stopped deployment: close the log, let its background
    // flushes and compactions finish, and reopen it, so they do not run
    // during the measurement.
    drop(log);
    tokio::time::sleep(Duration::from_secs(env("SETTLE_SECS", 3))).await;
    Ok(Arc::new(EmbeddedLog::open(&dir.join("log"), Topology::default())?))
}

async fn embedded(total: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = embedded_log(dir.path(), total).await?;
    let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views"))?);
    let cpu_before = cpu_us(std::process::id());
    let stats =
        emosation_projector::replay_with(Arc::clone(&log), Arc::clone(&views), Arc::new(|_, _| {}), options()).await?;
    let cpu_ms = cpu_us(std::process::id()).saturating_sub(cpu_before) / 1000;
    let checksum = views.checksum().await?;
    // A second replay must land on the same digest.
    let again = emosation_projector::replay_with(log, Arc::clone(&views), Arc::new(|_, _| {}), options()).await?;
    assert_eq!(views.checksum().await?, checksum, "replay is deterministic");
    println!(
        "{}",
        json!({"bench": "replay", "log": "embedded", "records": stats.records, "seconds": stats.elapsed.as_secs_f64(),
               "records_per_sec": stats.per_second().round(), "cpu_ms": cpu_ms, "second_run_records_per_sec": again.per_second().round(),
               "target_per_sec": 500_000, "checksum": checksum})
    );
    eprintln!(
        "replay: {} records in {:.2}s = {:.0} records/s (second run {:.0}/s; target >= 500,000)",
        stats.records,
        stats.elapsed.as_secs_f64(),
        stats.per_second(),
        again.per_second()
    );
    Ok(())
}

async fn kafka(total: u64) -> anyhow::Result<()> {
    let in_flight: usize = env("KAFKA_IN_FLIGHT", 4096);
    let cpu = std::env::var("BENCH_KAFKA_CPU").ok();
    let (_broker, url) = emosation_bench::tansu(cpu.as_deref(), &env("KAFKA_OPTIONS", String::new()))?;
    let log: Arc<dyn Log> = Arc::new(KafkaLog::connect(&url, Topology::default()).await?);

    // Write: the setup records first (a message's author must have joined
    // its room before it, in its partition), then the messages, each phase
    // with `in_flight` appends outstanding. `buffered` starts appends in
    // order and the producer is idempotent, so every partition holds its
    // records in the order the embedded log does.
    let setup = 2_000 + 1_000 + 1_000 * 10;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(env("KAFKA_WRITE_SECS", 600));
    for (skip, take) in [(0, setup.min(total)), (setup.min(total), total.saturating_sub(setup))] {
        let records: Vec<_> = synthetic_log(total, 2_000, 1_000)
            .skip(skip as usize)
            .take(take as usize)
            .collect();
        let mut acks = futures_util::stream::iter(records)
            .map(|r| {
                let log = Arc::clone(&log);
                async move {
                    let value = Bytes::from(emosation_schemas::encode(&r)?);
                    log.append(r.topic(), r.key().as_bytes(), value).await?;
                    anyhow::Ok(())
                }
            })
            .buffered(in_flight);
        while let Some(r) = acks.next().await {
            r?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "writing {total} records into tansu took longer than KAFKA_WRITE_SECS: lower KAFKA_N"
            );
        }
    }
    let write_secs = t.elapsed().as_secs_f64();
    eprintln!("wrote {total} records into tansu in {write_secs:.1}s");

    // Replay from the broker into empty views.
    let mut in_log = 0;
    for topic in emosation_core::ids::Topic::ALL {
        for partition in 0..log.topology().partitions(topic) {
            in_log += log.end_offset(topic, partition).await?;
        }
    }
    let dir = tempfile::tempdir()?;
    let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("kafka-views"))?);
    let stats =
        emosation_projector::replay_with(Arc::clone(&log), Arc::clone(&views), Arc::new(|_, _| {}), options()).await?;
    let checksum = views.checksum().await?;
    drop(log);

    // The same records replayed from an embedded log must fold to the same views.
    let reference = embedded_log(dir.path(), total).await?;
    let ref_views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views"))?);
    emosation_projector::replay_with(reference, Arc::clone(&ref_views), Arc::new(|_, _| {}), options()).await?;
    let same = ref_views.checksum().await? == checksum;
    println!(
        "{}",
        json!({"bench": "replay", "log": "kafka", "broker": "tansu (sqlite)", "records": stats.records, "records_in_log": in_log,
               "seconds": stats.elapsed.as_secs_f64(), "records_per_sec": stats.per_second().round(),
               "write_seconds": write_secs, "write_records_per_sec": (total as f64 / write_secs).round(),
               "write_in_flight": in_flight, "checksum": checksum, "checksum_equals_embedded_replay": same})
    );
    eprintln!(
        "replay from tansu: {} records in {:.2}s = {:.0} records/s (writing them took {write_secs:.1}s)",
        stats.records,
        stats.elapsed.as_secs_f64(),
        stats.per_second()
    );
    anyhow::ensure!(
        stats.records == in_log,
        "the replay from Kafka stopped early: {} of {in_log} records",
        stats.records
    );
    anyhow::ensure!(
        same,
        "the replay from Kafka folded other views than the embedded replay"
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    emosation_bench::like_the_server();
    let engines: String = env("ENGINES", "embedded,kafka".to_owned());
    for engine in engines.split(',').filter(|e| !e.is_empty()) {
        match engine {
            "embedded" => embedded(env("N", 1_000_000)).await?,
            "kafka" => kafka(env("KAFKA_N", 200_000)).await?,
            other => anyhow::bail!("unknown engine {other} (embedded, kafka)"),
        }
    }
    Ok(())
}
