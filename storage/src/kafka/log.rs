//! [`KafkaLog`]: the log port on Kafka (or any Kafka-protocol broker), through
//! `rdkafka` (librdkafka, vendored build).
//!
//! - **Appends** go through one idempotent producer (`acks=all`,
//!   `enable.idempotence`, lz4, a short linger so concurrent appends share
//!   produce requests). The partition is chosen here with the backbone's
//!   murmur2 partitioner ([`partition_for`]) and set explicitly on the record,
//!   so every client agrees on it. `append` resolves with the broker's
//!   acknowledgement: the record is on all in-sync replicas.
//! - **Reads** are random access (`fetch(topic, partition, from, …)`), which
//!   Kafka consumers are not: a pool of single-partition readers, each a
//!   `StreamConsumer` assigned to one partition at one offset, serves them.
//!   A call takes the idle reader already positioned at `from` (the common
//!   case: a projector or consumer reading on), else re-assigns one; readers
//!   prefetch, so a sequential reader is served from memory.
//! - **A shared tail per partition.** The consumers of one process read the
//!   same partitions close behind each other (the projector, the fan-out,
//!   the analyzer and the dashboards' consumers). Each partition keeps the
//!   records last read at its head ([`Tail`], up to [`TAIL_RECORDS`] /
//!   [`TAIL_BYTES`]): one caller at a time reads on from the broker (the
//!   leader) and appends what it read; a fetch inside the tail is answered
//!   from memory, and one at its end waits for the leader instead of
//!   polling the broker with a reader of its own. So a process holds about
//!   one reader per partition, not one per consumer and partition; a fetch
//!   outside the tail (a backfill, a catch-up from far back) reads with a
//!   reader of its own as before.
//! - **Consumer groups** commit explicit offsets with no group membership
//!   (Kafka's "simple consumer" commits): one client per group name stores
//!   and fetches them. Each commit exports the group's lag.
//! - **Topics** are created at start-up through the admin API, idempotently;
//!   an existing topic keeps its partition count, which becomes the topology.
//!
//! URL: `kafka://HOST:PORT[,HOST:PORT…][?option=value&…]`. Options:
//! `prefix` (prepended to topic names, for isolating test runs or tenants),
//! `replication` (replication factor of created topics, default 1), and any
//! librdkafka property (e.g. `compression.type=gzip`, `linger.ms=5`), which
//! overrides the defaults below for producer and consumers alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use emosation_core::ids::{LogPosition, Topic, Topology, partition_for};
use emosation_core::ports::{AppendTicket, Log, LogEntry, LogError};
use futures_util::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::OpenError;

/// How long admin and metadata calls may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long group offset calls may take.
const GROUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle readers kept per partition (a projector, an analytics consumer and a
/// fan-out catch-up reading one partition at once each keep their own).
const IDLE_READERS_PER_PARTITION: usize = 4;
/// How long a fetch waits for records it knows the broker holds.
const EXISTING_RECORD_WAIT: Duration = Duration::from_secs(5);
/// Records a partition's shared tail keeps at most, and their bytes.
const TAIL_RECORDS: usize = 4096;
const TAIL_BYTES: usize = 8 * 1024 * 1024;

/// The records last read at a partition's head, in offset order, shared by
/// the process's readers of the partition (see the module's notes).
#[derive(Default)]
struct Tail {
    entries: std::collections::VecDeque<LogEntry>,
    /// The offset after the last record appended: where the leader reads
    /// on. `None` until a first leader reads.
    end: Option<u64>,
    /// Bytes of `entries` (keys and values).
    bytes: usize,
    /// A caller is reading at `end` from the broker.
    leading: bool,
}

impl Tail {
    /// Up to `max` records from `from` on, if the tail holds `from`.
    fn serve(&self, from: u64, max: usize) -> Option<Vec<LogEntry>> {
        let first = self.entries.front()?.offset;
        if from < first || self.end.is_none_or(|end| from >= end) {
            return None;
        }
        let i = self.entries.partition_point(|e| e.offset < from);
        Some(self.entries.range(i..).take(max.max(1)).cloned().collect())
    }

    /// Appends what a leader read from `from`, if the tail still ends there.
    fn append(&mut self, from: u64, read: &[LogEntry]) {
        if self.end != Some(from) {
            return;
        }
        for e in read {
            self.bytes += e.key.len() + e.value.len();
            self.entries.push_back(e.clone());
        }
        if let Some(last) = read.last() {
            self.end = Some(last.offset + 1);
        }
        while self.entries.len() > TAIL_RECORDS || (self.bytes > TAIL_BYTES && self.entries.len() > 1) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= e.key.len() + e.value.len();
            }
        }
    }

    /// Starts the tail over at `from` (nothing kept).
    fn restart(&mut self, from: u64) {
        self.entries.clear();
        self.bytes = 0;
        self.end = Some(from);
    }
}

/// A partition's [`Tail`] and the callers waiting at its end.
#[derive(Default)]
struct SharedTail {
    tail: Mutex<Tail>,
    grown: tokio::sync::Notify,
}

/// The lead of a [`SharedTail`]: given up, and the waiters woken, however
/// the leader's fetch ends (a caller may drop its fetch midway).
struct Lead<'a>(&'a SharedTail);

impl Lead<'_> {
    /// Appends what the leader read from `from`.
    fn read(self, from: u64, read: &[LogEntry]) {
        self.0.tail.lock().unwrap_or_else(|e| e.into_inner()).append(from, read);
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.tail.lock().unwrap_or_else(|e| e.into_inner()).leading = false;
        self.0.grown.notify_waiters();
    }
}

/// Parsed `kafka://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    pub brokers: String,
    pub prefix: String,
    pub replication: i32,
    /// librdkafka properties given in the URL.
    pub properties: Vec<(String, String)>,
}

impl KafkaUrl {
    pub fn parse(url: &str) -> Result<Self, OpenError> {
        let bad = |reason: &'static str| OpenError::Unsupported {
            what: "log",
            url: url.to_owned(),
            reason,
        };
        let rest = url.strip_prefix("kafka://").ok_or(bad("expected kafka://HOST:PORT"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() || hosts.split(',').any(|h| h.is_empty() || !h.contains(':')) {
            return Err(bad("expected a comma-separated list of HOST:PORT"));
        }
        let mut parsed = KafkaUrl {
            brokers: hosts.to_owned(),
            prefix: String::new(),
            replication: 1,
            properties: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or(bad("options must be key=value"))?;
            match k {
                "prefix" => parsed.prefix = v.to_owned(),
                "replication" => {
                    parsed.replication = v
                        .parse()
                        .ok()
                        .filter(|r| *r >= 1)
                        .ok_or(bad("replication must be a positive integer"))?
                }
                _ => parsed.properties.push((k.to_owned(), v.to_owned())),
            }
        }
        Ok(parsed)
    }
}

fn kafka_err(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(format!("kafka: {e}"))
}

struct Reader {
    consumer: StreamConsumer,
    /// The offset the next message of its partition will have.
    next: u64,
}

/// The Kafka log. Cheap to share behind an `Arc`.
pub struct KafkaLog {
    url: KafkaUrl,
    topology: Topology,
    producer: FutureProducer,
    /// Idle readers by (topic, partition).
    readers: Mutex<HashMap<(Topic, u32), Vec<Reader>>>,
    /// Offset-commit clients by group name.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Last known high watermark of each partition (for lag).
    high: HashMap<(Topic, u32), AtomicI64>,
    /// Each partition's shared tail.
    tails: HashMap<(Topic, u32), SharedTail>,
    /// Topic names with the URL's prefix, by `Topic` (built once: every
    /// append and fetch names its topic).
    names: HashMap<Topic, String>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.url.brokers)
            .field("prefix", &self.url.prefix)
            .field("topology", &self.topology)
            .finish()
    }
}

impl KafkaLog {
    /// Connects, creates the topics if they do not exist (with `topology`'s
    /// partition counts), and adopts the partition counts the broker reports.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self, OpenError> {
        let url = KafkaUrl::parse(url)?;
        let open = |reason: String| OpenError::Open {
            what: "kafka log",
            path: url.brokers.clone(),
            reason,
        };
        let producer: FutureProducer = url
            .config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("compression.type", "lz4"),
                ("linger.ms", "1"),
                ("batch.num.messages", "10000"),
                ("message.timeout.ms", "30000"),
            ])
            .create()
            .map_err(|e| open(format!("producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> =
            url.config(&[]).create().map_err(|e| open(format!("admin: {e}")))?;
        let topics: Vec<(String, u32)> = Topic::ALL
            .iter()
            .map(|t| (url.topic_name(*t), topology.partitions(*t)))
            .collect();
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, n)| NewTopic::new(name, *n as i32, TopicReplication::Fixed(url.replication)))
            .collect();
        let results = admin
            .create_topics(&new, &AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)))
            .await
            .map_err(|e| open(format!("create topics: {e}")))?;
        for r in results {
            match r {
                Ok(name) => info!(topic = %name, "created topic"),
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => debug!(topic = %name, "topic exists"),
                Err((name, code)) => return Err(open(format!("create topic {name}: {code}"))),
            }
        }
        // The broker's partition counts are the truth (an existing topic keeps its own).
        let mut actual = topology;
        for topic in Topic::ALL {
            let name = url.topic_name(topic);
            let client = producer.clone();
            let n = tokio::task::spawn_blocking(move || -> Result<u32, String> {
                for _ in 0..50 {
                    let md = client
                        .client()
                        .fetch_metadata(Some(&name), ADMIN_TIMEOUT)
                        .map_err(|e| format!("metadata of {name}: {e}"))?;
                    if let Some(t) = md.topics().iter().find(|t| t.name() == name)
                        && t.error().is_none()
                        && !t.partitions().is_empty()
                    {
                        return Ok(t.partitions().len() as u32);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(format!("topic {name} has no partitions"))
            })
            .await
            .map_err(|e| open(e.to_string()))?
            .map_err(open)?;
            match topic {
                Topic::Accounts => actual.accounts_partitions = n,
                Topic::Rooms => actual.rooms_partitions = n,
            }
        }
        if actual != topology {
            warn!(
                ?topology,
                ?actual,
                "topics exist with other partition counts; using the broker's"
            );
        }
        let high = Topic::ALL
            .iter()
            .flat_map(|t| (0..actual.partitions(*t)).map(move |p| ((*t, p), AtomicI64::new(-1))))
            .collect();
        let tails = Topic::ALL
            .iter()
            .flat_map(|t| (0..actual.partitions(*t)).map(move |p| ((*t, p), SharedTail::default())))
            .collect();
        info!(brokers = %url.brokers, prefix = %url.prefix, topology = ?actual, "kafka log connected");
        let names = Topic::ALL.iter().map(|t| (*t, url.topic_name(*t))).collect();
        Ok(KafkaLog {
            names,
            url,
            topology: actual,
            producer,
            readers: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
            high,
            tails,
        })
    }

    fn name(&self, topic: Topic) -> &str {
        &self.names[&topic]
    }

    fn check(&self, topic: Topic, partition: u32) -> Result<(), LogError> {
        if partition < self.topology.partitions(topic) {
            Ok(())
        } else {
            Err(LogError::UnknownPartition {
                topic: topic.name().to_owned(),
                partition,
            })
        }
    }

    fn new_reader(&self, topic: Topic, partition: u32, from: u64) -> Result<Reader, LogError> {
        let consumer: StreamConsumer = self
            .url
            .config(&[
                // Never used to join or commit: readers are assigned partitions.
                ("group.id", "emosation.reader"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "error"),
                ("fetch.wait.max.ms", "50"),
                ("fetch.min.bytes", "1"),
                ("queued.min.messages", "20000"),
                ("queued.max.messages.kbytes", "16384"),
                ("enable.partition.eof", "false"),
            ])
            .create()
            .map_err(kafka_err)?;
        let mut reader = Reader { consumer, next: 0 };
        self.position(&mut reader, topic, partition, from)?;
        Ok(reader)
    }

    fn position(&self, reader: &mut Reader, topic: Topic, partition: u32, from: u64) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.name(topic), partition as i32, Offset::Offset(from as i64))
            .map_err(kafka_err)?;
        reader.consumer.assign(&tpl).map_err(kafka_err)?;
        reader.next = from;
        Ok(())
    }

    fn take_reader(&self, topic: Topic, partition: u32, from: u64) -> Result<Reader, LogError> {
        let found = {
            let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
            let idle = readers.entry((topic, partition)).or_default();
            match idle.iter().position(|r| r.next == from) {
                Some(i) => Some((idle.swap_remove(i), true)),
                None => idle.pop().map(|r| (r, false)),
            }
        };
        match found {
            Some((reader, true)) => Ok(reader),
            Some((mut reader, false)) => {
                self.position(&mut reader, topic, partition, from)?;
                Ok(reader)
            }
            None => self.new_reader(topic, partition, from),
        }
    }

    /// Reads from the broker with a reader of the partition's pool (see
    /// [`KafkaLog::take_reader`]).
    async fn read_broker(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LogEntry>, LogError> {
        let mut reader = self.take_reader(topic, partition, from)?;
        if let Err(e) = self.out_of_range_check(topic, partition, from).await {
            self.return_reader(topic, partition, reader);
            return Err(e);
        }
        // Records below the known high watermark exist on the broker: wait
        // for them even when the caller would not wait for new ones.
        let known_high = self.high[&(topic, partition)].load(Ordering::Relaxed);
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        let result = loop {
            if out.len() >= max.max(1) {
                break Ok(());
            }
            let wait_for = if (reader.next as i64) < known_high {
                EXISTING_RECORD_WAIT.max(wait)
            } else if out.is_empty() {
                wait
            } else {
                Duration::ZERO
            };
            let msg = if wait_for.is_zero() {
                match reader.consumer.recv().now_or_never() {
                    Some(m) => m,
                    None => break Ok(()),
                }
            } else {
                match tokio::time::timeout_at(started + wait_for, reader.consumer.recv()).await {
                    Ok(m) => m,
                    Err(_) => break Ok(()),
                }
            };
            match msg {
                Ok(m) => {
                    let offset = m.offset() as u64;
                    if m.partition() as u32 != partition || offset < reader.next {
                        continue; // left over from an earlier assignment
                    }
                    out.push(LogEntry {
                        offset,
                        key: Bytes::copy_from_slice(m.key().unwrap_or_default()),
                        value: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                    });
                    reader.next = offset + 1;
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))
                | Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange)) => {
                    let end = self.end_offset(topic, partition).await.unwrap_or(0);
                    reader.next = u64::MAX; // its assignment is dead; re-position on next use
                    break Err(LogError::OffsetOutOfRange {
                        topic: topic.name().to_owned(),
                        partition,
                        offset: from,
                        end,
                    });
                }
                Err(e) => {
                    reader.next = u64::MAX;
                    break Err(kafka_err(e));
                }
            }
        };
        if reader.next != u64::MAX {
            self.high[&(topic, partition)].fetch_max(reader.next as i64, Ordering::Relaxed);
        }
        if reader.next != u64::MAX {
            self.return_reader(topic, partition, reader);
        }
        match result {
            Ok(()) => Ok(out),
            Err(e) if !out.is_empty() => {
                debug!(error = %e, "returning the records read before an error");
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }

    fn return_reader(&self, topic: Topic, partition: u32, reader: Reader) {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        let idle = readers.entry((topic, partition)).or_default();
        if idle.len() < IDLE_READERS_PER_PARTITION {
            idle.push(reader);
        }
    }

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = groups.get(group) {
            return Ok(Arc::clone(c));
        }
        let client: BaseConsumer = self
            .url
            .config(&[("group.id", group), ("enable.auto.commit", "false")])
            .create()
            .map_err(kafka_err)?;
        let client = Arc::new(client);
        groups.insert(group.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    async fn out_of_range_check(&self, topic: Topic, partition: u32, from: u64) -> Result<(), LogError> {
        let known = self.high[&(topic, partition)].load(Ordering::Relaxed);
        if known >= 0 && from <= known as u64 {
            return Ok(());
        }
        let end = self.end_offset(topic, partition).await?;
        if from > end {
            return Err(LogError::OffsetOutOfRange {
                topic: topic.name().to_owned(),
                partition,
                offset: from,
                end,
            });
        }
        Ok(())
    }
}

impl KafkaUrl {
    fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    /// A client config: the brokers, `defaults`, then the URL's properties.
    fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

#[async_trait]
impl Log for KafkaLog {
    fn topology(&self) -> Topology {
        self.topology
    }

    fn append(&self, topic: Topic, key: &[u8], value: Bytes) -> AppendTicket {
        let partition = partition_for(key, self.topology.partitions(topic));
        let record = FutureRecord::to(self.name(topic))
            .key(key)
            .payload(value.as_ref())
            .partition(partition as i32);
        // Enqueued in librdkafka now: with the idempotent producer a
        // partition's records reach the broker, and are stored, in enqueue
        // order. A full queue is answered at once (`Busy`) rather than
        // retried later, which could let a later append overtake this one.
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => LogError::Busy("the Kafka producer queue is full".into()),
                _ => kafka_err(e),
            });
        Box::pin(async move {
            match delivery?.await {
                Ok(Ok(d)) => Ok(LogPosition::new(d.partition as u32, d.offset as u64)),
                Ok(Err((e, _))) => Err(kafka_err(e)),
                Err(_) => Err(LogError::Closed),
            }
        })
    }

    async fn fetch(
        &self,
        topic: Topic,
        partition: u32,
        from: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<LogEntry>, LogError> {
        self.check(topic, partition)?;
        let shared = &self.tails[&(topic, partition)];
        // Records below the known high watermark exist on the broker: wait
        // for them even when the caller would not wait for new ones.
        let known_high = self.high[&(topic, partition)].load(Ordering::Relaxed);
        let patience = if (from as i64) < known_high {
            EXISTING_RECORD_WAIT.max(wait)
        } else {
            wait
        };
        let deadline = tokio::time::Instant::now() + patience;
        /// What a fetch does, decided under the tail's lock.
        enum Step<'a> {
            Wait(tokio::sync::futures::Notified<'a>),
            Lead,
            Alone,
        }
        loop {
            let step = {
                let mut tail = shared.tail.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(out) = tail.serve(from, max) {
                    return Ok(out);
                }
                match tail.end {
                    // Another caller reads on from here: wait for it.
                    Some(end) if end == from && tail.leading => Step::Wait(shared.grown.notified()),
                    // Lead: at the tail's end, or ahead of an idle (or
                    // empty) tail, which moves up to here.
                    end if !tail.leading && end.is_none_or(|end| from >= end) => {
                        if end != Some(from) {
                            tail.restart(from);
                        }
                        tail.leading = true; // given up by `Lead`'s drop
                        Step::Lead
                    }
                    // Behind the tail, or ahead of a leader: a reader of its own.
                    _ => Step::Alone,
                }
            };
            match step {
                Step::Wait(grown) => {
                    if tokio::time::timeout_at(deadline, grown).await.is_err() {
                        return Ok(Vec::new());
                    }
                }
                Step::Alone => return self.read_broker(topic, partition, from, max, wait).await,
                Step::Lead => {
                    let lead = Lead(shared);
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let read = self.read_broker(topic, partition, from, max, left).await;
                    if let Ok(entries) = &read {
                        lead.read(from, entries);
                    }
                    return read;
                }
            }
        }
    }

    async fn end_offset(&self, topic: Topic, partition: u32) -> Result<u64, LogError> {
        self.check(topic, partition)?;
        let client = self.producer.clone();
        let name = self.name(topic).to_owned();
        let (_, high) = tokio::task::spawn_blocking(move || {
            client.client().fetch_watermarks(&name, partition as i32, ADMIN_TIMEOUT)
        })
        .await
        .map_err(kafka_err)?
        .map_err(kafka_err)?;
        self.high[&(topic, partition)].fetch_max(high, Ordering::Relaxed);
        Ok(high.max(0) as u64)
    }

    async fn commit(&self, group: &str, topic: Topic, partition: u32, next_offset: u64) -> Result<(), LogError> {
        self.check(topic, partition)?;
        let client = self.group_client(group)?;
        let name = self.name(topic);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(name, partition as i32, Offset::Offset(next_offset as i64))
            .map_err(kafka_err)?;
        tokio::task::spawn_blocking(move || client.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(kafka_err)?
            .map_err(kafka_err)?;
        let high = self.high[&(topic, partition)].load(Ordering::Relaxed);
        if high >= 0 {
            metrics::gauge!(
                "emosation_log_consumer_lag_records",
                "group" => group.to_owned(),
                "topic" => topic.name(),
                "partition" => partition.to_string()
            )
            .set((high as u64).saturating_sub(next_offset) as f64);
        }
        Ok(())
    }

    async fn committed(&self, group: &str, topic: Topic, partition: u32) -> Result<Option<u64>, LogError> {
        self.check(topic, partition)?;
        let client = self.group_client(group)?;
        let name = self.name(topic);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(name, partition as i32);
        let got = tokio::task::spawn_blocking(move || client.committed_offsets(tpl, GROUP_TIMEOUT))
            .await
            .map_err(kafka_err)?
            .map_err(kafka_err)?;
        let offset = got
            .find_partition(name, partition as i32)
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        Ok(match offset {
            Offset::Offset(o) if o >= 0 => Some(o as u64),
            _ => None,
        })
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        // Appends already acknowledged are durable; this only bounds the wait
        // for ones still in flight when the process is shutting down.
        let _ = self.producer.flush(Timeout::After(Duration::from_secs(5)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64, bytes: usize) -> LogEntry {
        LogEntry {
            offset,
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; bytes]),
            timestamp_ms: 0,
        }
    }

    /// The shared tail answers only what it holds, grows only at its end,
    /// and keeps the newest records within its bounds.
    #[test]
    fn a_tail_serves_what_it_holds_and_grows_only_at_its_end() {
        let mut t = Tail::default();
        assert_eq!(t.serve(0, 10), None, "empty");
        t.restart(100);
        t.append(100, &(100..110).map(|o| entry(o, 1)).collect::<Vec<_>>());
        assert_eq!(t.end, Some(110));
        let got: Vec<u64> = t.serve(105, 3).unwrap().iter().map(|e| e.offset).collect();
        assert_eq!(got, vec![105, 106, 107]);
        assert_eq!(t.serve(110, 3), None, "its end: the leader's to read");
        assert_eq!(t.serve(99, 3), None, "behind it: a reader of one's own");
        // A read that no longer starts at the end (the tail moved) is not kept.
        t.append(105, &[entry(105, 1)]);
        assert_eq!(t.entries.len(), 10);
        // Bounded: the oldest go first.
        let many: Vec<LogEntry> = (110..110 + TAIL_RECORDS as u64).map(|o| entry(o, 1)).collect();
        t.append(110, &many);
        assert_eq!(t.entries.len(), TAIL_RECORDS);
        assert_eq!(t.entries.front().unwrap().offset, 110);
        t.append(t.end.unwrap(), &[entry(t.end.unwrap(), TAIL_BYTES)]);
        assert_eq!(t.entries.len(), 1, "the byte bound keeps at least the newest");
        assert_eq!(t.bytes, TAIL_BYTES + 1);
    }

    #[test]
    fn parses_urls() {
        let u = KafkaUrl::parse("kafka://a:9092,b:9093?prefix=t1.&replication=3&linger.ms=5").unwrap();
        assert_eq!(u.brokers, "a:9092,b:9093");
        assert_eq!(u.prefix, "t1.");
        assert_eq!(u.replication, 3);
        assert_eq!(u.properties, vec![("linger.ms".to_owned(), "5".to_owned())]);
        assert_eq!(u.topic_name(Topic::Rooms), "t1.emosation.rooms");
        let plain = KafkaUrl::parse("kafka://localhost:9092/").unwrap();
        assert_eq!(
            (plain.brokers.as_str(), plain.prefix.as_str(), plain.replication),
            ("localhost:9092", "", 1)
        );
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://a:1,,b:2",
            "redis://a:1",
            "kafka://a:1?replication=0",
            "kafka://a:1?x",
        ] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
