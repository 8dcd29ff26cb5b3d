//! The labelled evaluation set (`eval/emotions.tsv`, English and Korean, all
//! seven labels) and the figures computed on it.
//!
//! The set was written by the same people as the lexicon: it is a regression
//! floor and a yardstick between versions, not an independent benchmark.

use emosation_core::emotion::Label;

use crate::offline::LexiconClassifier;

/// `(language, gold label, text)` of the evaluation set the lexicon was tuned on.
pub fn eval_set() -> Vec<(&'static str, Label, &'static str)> {
    parse(include_str!("../eval/emotions.tsv"))
}

/// A held-out set written after the lexicon and never used to tune it: the
/// honest estimate of accuracy on text the rules were not fitted to.
pub fn holdout_set() -> Vec<(&'static str, Label, &'static str)> {
    parse(include_str!("../eval/holdout.tsv"))
}

fn parse(tsv: &'static str) -> Vec<(&'static str, Label, &'static str)> {
    tsv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let lang = f.next().expect("language");
            let label = f.next().expect("label").parse().expect("a known label");
            (lang, label, f.next().expect("text"))
        })
        .collect()
}

/// Accuracy and macro-F1 over a set of `(gold, predicted)` pairs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
}

pub fn figures(pairs: &[(Label, Label)]) -> Figures {
    let n = pairs.len();
    let correct = pairs.iter().filter(|(g, p)| g == p).count();
    let mut f1_sum = 0.0;
    for l in Label::ALL {
        let tp = pairs.iter().filter(|(g, p)| *g == l && *p == l).count() as f64;
        let fp = pairs.iter().filter(|(g, p)| *g != l && *p == l).count() as f64;
        let fn_ = pairs.iter().filter(|(g, p)| *g == l && *p != l).count() as f64;
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let recall = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
        f1_sum += if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
    }
    Figures {
        n,
        accuracy: correct as f64 / n.max(1) as f64,
        macro_f1: f1_sum / Label::ALL.len() as f64,
    }
}

/// The offline classifier's figures on a set: all, English, Korean.
pub fn evaluate_offline(set: Vec<(&'static str, Label, &'static str)>) -> (Figures, Figures, Figures) {
    let c = LexiconClassifier::new();
    let rows: Vec<(&str, Label, Label)> = set
        .into_iter()
        .map(|(lang, gold, text)| (lang, gold, c.classify_one(text).label))
        .collect();
    let pick = |lang: Option<&str>| -> Vec<(Label, Label)> {
        rows.iter()
            .filter(|(l, _, _)| lang.is_none_or(|x| x == *l))
            .map(|(_, g, p)| (*g, *p))
            .collect()
    };
    (
        figures(&pick(None)),
        figures(&pick(Some("en"))),
        figures(&pick(Some("ko"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_covers_both_languages_and_every_label() {
        let set = eval_set();
        assert!(set.len() >= 300);
        for lang in ["en", "ko"] {
            for l in Label::ALL {
                assert!(
                    set.iter().filter(|(x, g, _)| *x == lang && *g == l).count() >= 20,
                    "{lang} {l}"
                );
            }
        }
    }

    #[test]
    fn figures_are_computed_correctly() {
        use Label::*;
        let f = figures(&[(Joy, Joy), (Joy, Sadness), (Sadness, Sadness), (Anger, Anger)]);
        assert_eq!(f.accuracy, 0.75);
        // joy: p=1 r=.5 f=.667; sadness: p=.5 r=1 f=.667; anger: 1; others 0 → 2.333/7
        assert!((f.macro_f1 - 2.333_333 / 7.0).abs() < 1e-4);
    }

    /// The floor the offline classifier must keep on its evaluation set.
    #[test]
    fn offline_classifier_keeps_its_floor() {
        let (all, en, ko) = evaluate_offline(eval_set());
        eprintln!("offline eval: all {all:?} en {en:?} ko {ko:?}");
        assert!(all.accuracy >= 0.95, "accuracy {all:?}");
        assert!(all.macro_f1 >= 0.95, "macro-F1 {all:?}");
        assert!(en.accuracy >= 0.9 && ko.accuracy >= 0.9, "en {en:?} ko {ko:?}");
        let (held, _, _) = evaluate_offline(holdout_set());
        eprintln!("offline holdout: {held:?}");
        assert!(held.n >= 70);
        assert!(held.accuracy >= 0.6, "held-out accuracy {held:?}");
    }
}
