//! The Kafka engine: the log on any Kafka-protocol broker, through rdkafka.

pub mod log;

pub use log::KafkaLog;
