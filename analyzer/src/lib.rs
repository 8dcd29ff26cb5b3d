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
//! - [`consumer`]: [`Analyzer`], the consumer group that appends emotion events.
//! - [`eval`]: the labelled evaluation set and accuracy / macro-F1.

pub mod consumer;
pub mod eval;
pub mod offline;

pub use consumer::Analyzer;
