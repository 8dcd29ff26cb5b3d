//! Emotion labels and classifications: the vocabulary of the analyzer and of
//! the `emotion` stream.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The seven labels, in the order responses list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    Joy,
    Sadness,
    Anger,
    Fear,
    Surprise,
    Disgust,
    Neutral,
}

impl Label {
    pub const ALL: [Label; 7] = [
        Label::Joy,
        Label::Sadness,
        Label::Anger,
        Label::Fear,
        Label::Surprise,
        Label::Disgust,
        Label::Neutral,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Label::Joy => "joy",
            Label::Sadness => "sadness",
            Label::Anger => "anger",
            Label::Fear => "fear",
            Label::Surprise => "surprise",
            Label::Disgust => "disgust",
            Label::Neutral => "neutral",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Label {
    type Err = UnknownLabel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownLabel(s.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown emotion label {0:?}")]
pub struct UnknownLabel(pub String);

/// What a classifier says about one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The winning label and its score.
    pub label: Label,
    pub score: f32,
    /// A score per label, in [`Label::ALL`] order, summing to 1.
    pub scores: [f32; 7],
    /// Which model decided, e.g. `offline-lexicon-v1` or an OpenAI model name.
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for l in Label::ALL {
            assert_eq!(l.as_str().parse::<Label>().unwrap(), l);
        }
        assert_eq!(" JOY ".parse::<Label>().unwrap(), Label::Joy);
        assert!("happy".parse::<Label>().is_err());
    }
}
