//! The runner hands a lingering consumer fewer, larger batches: records
//! appended while it lingers after a small batch arrive together.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use emosation_core::ids::{Topic, Topology};
use emosation_core::ports::{Log, LogEntry};
use emosation_runner::{Checkpoint, Consumer, ConsumerError, run_consumer};
use emosation_storage::EmbeddedLog;
use emosation_testkit::eventually;
use tokio_util::sync::CancellationToken;

/// Records the offsets of every batch it is handed.
struct Recorder {
    linger: Duration,
    batches: Mutex<Vec<Vec<u64>>>,
}

#[async_trait]
impl Consumer for Recorder {
    fn group(&self) -> &'static str {
        "recorder"
    }
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint::Log
    }
    fn linger(&self) -> Duration {
        self.linger
    }
    async fn handle_batch(&self, _: Topic, _: u32, entries: &[LogEntry]) -> Result<(), ConsumerError> {
        self.batches
            .lock()
            .unwrap()
            .push(entries.iter().map(|e| e.offset).collect());
        Ok(())
    }
}

/// Appends one record, waits until it was handled, then appends `burst`
/// records one after another; returns the batches the consumer was handed.
async fn batches_of(linger: Duration, burst: u64) -> Vec<Vec<u64>> {
    let dir = tempfile::tempdir().unwrap();
    let topo = Topology {
        accounts_partitions: 1,
        rooms_partitions: 1,
    };
    let log: Arc<dyn Log> = Arc::new(EmbeddedLog::open(dir.path(), topo).unwrap());
    let consumer = Arc::new(Recorder {
        linger,
        batches: Mutex::new(Vec::new()),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_consumer(Arc::clone(&consumer), Arc::clone(&log), stop.clone()));
    let append = |i: u64| {
        let log = Arc::clone(&log);
        async move {
            log.append(Topic::Rooms, b"room", Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap()
        }
    };
    let handled = |n: usize| {
        let consumer = Arc::clone(&consumer);
        async move {
            eventually(
                &format!("{n} records handled"),
                Duration::from_secs(20),
                async || match consumer.batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() {
                    handled if handled >= n => Ok(()),
                    handled => Err(format!("{handled} handled")),
                },
            )
            .await
        }
    };
    append(0).await;
    handled(1).await;
    for i in 1..=burst {
        append(i).await;
        // Spread over a few milliseconds, as live traffic is.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handled(burst as usize + 1).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let batches = consumer.batches.lock().unwrap().clone();
    // Whatever the batching, every record once, in order.
    assert_eq!(batches.concat(), (0..=burst).collect::<Vec<_>>());
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_consumer_gets_records_appended_meanwhile_in_one_batch() {
    // The burst takes well under the 3 s linger, even on a slow machine.
    let batches = batches_of(Duration::from_secs(3), 20).await;
    assert_eq!(batches, vec![vec![0], (1..=20).collect::<Vec<_>>()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_linger_records_are_handled_as_they_come() {
    let batches = batches_of(Duration::ZERO, 20).await;
    assert!(batches.len() > 2, "small batches as records arrive: {batches:?}");
}
