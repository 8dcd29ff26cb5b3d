//! Durable appends to the embedded log: many concurrent appenders, each
//! acknowledged only after its group commit is fsynced.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use emosation_bench::{percentiles, synthetic_log};
use emosation_core::ids::{Topic, Topology};
use emosation_core::ports::Log;
use emosation_storage::EmbeddedLog;
use serde_json::json;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let total: u64 = emosation_bench::env("N", 1_000_000);
    let appenders: u64 = emosation_bench::env("APPENDERS", 4096);
    let dir = tempfile::tempdir()?;
    let log = Arc::new(EmbeddedLog::open(dir.path(), Topology::default())?);
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
    let per = total / appenders;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let (log, records) = (Arc::clone(&log), Arc::clone(&records));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for i in 0..per {
                let (k, v) = &records[((a * per + i) as usize) % records.len()];
                let t = Instant::now();
                log.append(Topic::Rooms, k, v.clone()).await.expect("append");
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let elapsed = started.elapsed();
    let n = per * appenders;
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "{}",
        json!({"bench": "log_append", "records": n, "appenders": appenders, "seconds": elapsed.as_secs_f64(),
               "commands_per_sec": rate.round(), "ack_latency": percentiles(lat), "target_per_sec": 200_000})
    );
    println!(
        "durable appends: {n} in {:.2}s = {:.0} commands/s (target >= 200,000)",
        elapsed.as_secs_f64(),
        rate
    );
    Ok(())
}
