//! The analyzer: an analytics consumer of the log that classifies the emotion
//! of every posted message and appends one emotion event per message, which
//! fan-out nodes deliver on the `emotion` stream and the query API serves.
//!
//! Its port is [`emosation_core::ports::Classifier`] (vocabulary in
//! [`emosation_core::emotion`]). It is also the model for every later
//! analytics consumer: its own consumer group, backfill from offset 0,
//! progress and lag.
//!
//! # Layout
//! - [`offline`]: [`offline::LexiconClassifier`], the default classifier
//!   (English and Korean lexicon and rules, no network).
//! - [`openai`]: [`openai::OpenAiClassifier`], any OpenAI-compatible
//!   chat-completions server (OpenAI, Ollama, vLLM, llama.cpp) by base URL,
//!   model and key. Concurrent `classify` calls are micro-batched into one
//!   request (up to `max_batch` texts or `linger` after the first), numbered
//!   and mapped back by index; a static system prompt and a strict JSON
//!   schema, read tolerantly. Bounded in-flight requests, per-attempt
//!   timeouts, retries with exponential backoff and jitter (429 after its
//!   `Retry-After`; 5xx, timeouts and unreadable answers; not other 4xx),
//!   and a circuit breaker that, while open, either falls back to the
//!   offline classifier or makes callers wait (`Unavailable`, so the
//!   analyzer commits nothing and retries). The key is never logged.
//! - [`AnalyticsConsumer`], the trait every analytics consumer implements
//!   (group, topics, checkpoint, `handle_batch`), and [`run_consumer`],
//!   which drives one: a task per partition, backfill from offset 0, commit
//!   after durable results, lag and progress metrics. Both are the runner's
//!   ([`emosation_runner`], which drives the core projector too);
//!   `AnalyticsConsumer` is its `Consumer` trait.
//! - [`consumer`]: [`Analyzer`], the consumer group that appends emotion
//!   events (results on the log).
//! - [`activity`]: [`ActivityConsumer`], per-room activity by UTC hour
//!   (results in a view of its own).
//! - [`eval`]: the labelled evaluation set and accuracy / macro-F1.
//! - [`classifier_from_settings`]: the classifier the binary's flags chose.

use std::sync::Arc;

use emosation_core::ports::Classifier;

pub mod activity;
pub mod admin;
pub mod consumer;
pub mod eval;
pub mod offline;
pub mod openai;

pub use activity::ActivityConsumer;
pub use admin::AdminConsumer;
pub use consumer::Analyzer;
pub use emosation_runner::Consumer as AnalyticsConsumer;
pub use emosation_runner::{Checkpoint, ConsumerError, run_consumer};

/// How long records accumulate between batches of a consumer whose results
/// only dashboards read ([`AnalyticsConsumer::linger`]): a quarter of a
/// second turns a view write per message into one per entity and batch.
pub(crate) const DASHBOARD_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a batch of a consumer that reads the core views waits for the
/// core projector before the runner backs off and tries again.
const CORE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until the core views include every record of the partition up to
/// `last` (a consumer that learns the fold's decisions from them is never
/// ahead of them); `Retry` if they do not within [`CORE_WAIT`].
pub(crate) async fn core_caught_up(
    decisions: &dyn emosation_core::ports::Decisions,
    topic: emosation_core::ids::Topic,
    partition: u32,
    last: u64,
) -> Result<(), ConsumerError> {
    let core = decisions.wait_applied(topic, partition, last, CORE_WAIT).await;
    if core > last {
        return Ok(());
    }
    Err(ConsumerError::Retry(format!(
        "the core views of {}/{partition} are at {core}, not yet past {last}",
        topic.name()
    )))
}

/// Which classifier the analyzer uses.
#[derive(Debug, Clone, Default)]
pub enum ClassifierSettings {
    /// [`offline::LexiconClassifier`]: no network, deterministic.
    #[default]
    Offline,
    /// [`openai::OpenAiClassifier`] with these settings.
    OpenAi(openai::OpenAiConfig),
}

/// Builds the classifier `settings` describe.
pub fn classifier_from_settings(settings: &ClassifierSettings) -> Arc<dyn Classifier> {
    match settings {
        ClassifierSettings::Offline => Arc::new(offline::LexiconClassifier::new()),
        ClassifierSettings::OpenAi(config) => Arc::new(openai::OpenAiClassifier::new(config.clone())),
    }
}
