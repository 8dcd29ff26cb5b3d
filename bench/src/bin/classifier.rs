//! The offline emotion classifier: accuracy and macro-F1 on the evaluation
//! set (which the lexicon was tuned on) and on the held-out set (which it was
//! not), and messages classified per second on one core.

use std::time::Instant;

use emosation_analyzer::eval::{eval_set, evaluate_offline, holdout_set};
use emosation_analyzer::offline::LexiconClassifier;
use serde_json::json;

fn main() {
    let (all, en, ko) = evaluate_offline(eval_set());
    let (held, held_en, held_ko) = evaluate_offline(holdout_set());
    let texts: Vec<&str> = eval_set().into_iter().chain(holdout_set()).map(|(_, _, t)| t).collect();
    let c = LexiconClassifier::new();
    let n: usize = emosation_bench::env("N", 1_000_000);
    let t = Instant::now();
    let mut joy = 0usize;
    for i in 0..n {
        if c.classify_one(texts[i % texts.len()]).label == emosation_core::emotion::Label::Joy {
            joy += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"bench": "offline_classifier", "messages": n, "messages_per_sec": (n as f64 / secs).round(),
               "target_per_sec": 100_000, "joy_share": joy as f64 / n as f64,
               "tuning_set": {"n": all.n, "accuracy": all.accuracy, "macro_f1": all.macro_f1,
                              "en_accuracy": en.accuracy, "ko_accuracy": ko.accuracy},
               "holdout_set": {"n": held.n, "accuracy": held.accuracy, "macro_f1": held.macro_f1,
                               "en_accuracy": held_en.accuracy, "ko_accuracy": held_ko.accuracy}})
    );
}
