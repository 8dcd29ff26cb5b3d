//! Replay of a 1,000,000-record log into the embedded views.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use emosation_bench::synthetic_log;
use emosation_core::ids::Topology;
use emosation_core::ports::{Log, ViewStore};
use emosation_storage::{EmbeddedLog, EmbeddedViewStore};
use serde_json::json;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let total: u64 = emosation_bench::env("N", 1_000_000);
    let dir = tempfile::tempdir()?;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log"), Topology::default())?);
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
    tokio::time::sleep(std::time::Duration::from_secs(emosation_bench::env("SETTLE_SECS", 3))).await;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log"), Topology::default())?);

    let views: Arc<dyn ViewStore> = Arc::new(EmbeddedViewStore::open(&dir.path().join("views"))?);
    let log: Arc<dyn Log> = log;
    let mut options = emosation_projector::ReplayOptions::default();
    options.parallel = emosation_bench::env("PARALLEL", options.parallel);
    let stats =
        emosation_projector::replay_with(Arc::clone(&log), Arc::clone(&views), Arc::new(|_, _| {}), options).await?;
    let checksum = views.checksum().await?;
    // A second replay must land on the same digest.
    let again = emosation_projector::replay_with(log, Arc::clone(&views), Arc::new(|_, _| {}), options).await?;
    assert_eq!(views.checksum().await?, checksum, "replay is deterministic");
    println!(
        "{}",
        json!({"bench": "replay", "records": stats.records, "seconds": stats.elapsed.as_secs_f64(),
               "records_per_sec": stats.per_second().round(), "second_run_records_per_sec": again.per_second().round(),
               "target_per_sec": 500_000, "checksum": checksum})
    );
    println!(
        "replay: {} records in {:.2}s = {:.0} records/s (second run {:.0}/s; target >= 500,000)",
        stats.records,
        stats.elapsed.as_secs_f64(),
        stats.per_second(),
        again.per_second()
    );
    Ok(())
}
