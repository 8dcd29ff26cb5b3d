//! The analyzer: an analytics consumer of the log that classifies the emotion
//! of every posted message and appends one emotion event per message, which
//! fan-out nodes deliver on the `emotion` stream and the query API serves.
//!
//! Its port is [`emosation_core::ports::Classifier`] (vocabulary in
//! [`emosation_core::emotion`]); the offline lexicon classifier and the
//! OpenAI-compatible adapter, the consumer group and the emotion view arrive
//! with the analyzer issue. It is also the model for every later analytics
//! consumer: its own consumer group, backfill from offset 0, progress and lag.
