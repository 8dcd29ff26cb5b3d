//! [`LexiconClassifier`]: the offline classifier — lexicon and rules for
//! English and Korean, no network, no downloaded weights.
//!
//! A text is split into tokens (words, Hangul words, emoji, emoticons). Each
//! token that matches the lexicon adds evidence for a label, scaled by the
//! rules:
//! - **intensifiers** before it (`very`, `so`, `너무`, `진짜`…) multiply it;
//! - **negation** (`not`, `never`, `n't`, `안`, `못`, and `않`/`없` after a
//!   Korean stem) turns joy into sadness and weakens the negative labels
//!   (`not bad` is mildly positive, not angry);
//! - **emphasis**: `!`, `!!!` and ALL-CAPS words strengthen the message;
//! - **emoji and emoticons** count like strong words (`ㅋㅋ`, `ㅠㅠ` included).
//!
//! Scores are the evidence normalised with a neutral prior, so a text with no
//! evidence is `neutral`. Deterministic: the same text always gets the same
//! classification.

use std::collections::HashMap;

use async_trait::async_trait;
use emosation_core::emotion::{Classification, Label};
use emosation_core::ports::{Classifier, ClassifyError};

pub const MODEL: &str = "offline-lexicon-v1";

/// Evidence a text with no cue at all keeps for `neutral`.
const NEUTRAL_PRIOR: f32 = 0.5;

use Label::*;

/// English words (whole tokens) and their label and weight.
const EN: &[(&str, Label, f32)] = &[
    // joy
    ("happy", Joy, 1.0),
    ("happiness", Joy, 1.0),
    ("glad", Joy, 1.0),
    ("joy", Joy, 1.0),
    ("joyful", Joy, 1.0),
    ("love", Joy, 0.9),
    ("loved", Joy, 0.9),
    ("loving", Joy, 0.9),
    ("lovely", Joy, 0.9),
    ("great", Joy, 0.8),
    ("awesome", Joy, 1.0),
    ("amazing", Joy, 0.9),
    ("wonderful", Joy, 1.0),
    ("fantastic", Joy, 1.0),
    ("excited", Joy, 0.9),
    ("exciting", Joy, 0.8),
    ("yay", Joy, 1.0),
    ("fun", Joy, 0.8),
    ("enjoy", Joy, 0.8),
    ("enjoyed", Joy, 0.8),
    ("delighted", Joy, 1.0),
    ("thrilled", Joy, 1.0),
    ("cheerful", Joy, 1.0),
    ("smile", Joy, 0.7),
    ("smiling", Joy, 0.7),
    ("laugh", Joy, 0.7),
    ("laughing", Joy, 0.7),
    ("lol", Joy, 0.7),
    ("haha", Joy, 0.8),
    ("hahaha", Joy, 0.9),
    ("good", Joy, 0.6),
    ("nice", Joy, 0.6),
    ("best", Joy, 0.7),
    ("thanks", Joy, 0.5),
    ("thank", Joy, 0.5),
    ("grateful", Joy, 0.9),
    ("proud", Joy, 0.8),
    ("celebrate", Joy, 0.9),
    ("perfect", Joy, 0.8),
    ("beautiful", Joy, 0.7),
    ("win", Joy, 0.6),
    ("won", Joy, 0.7),
    ("pleased", Joy, 0.9),
    ("blessed", Joy, 0.9),
    ("ecstatic", Joy, 1.0),
    ("hooray", Joy, 1.0),
    ("congrats", Joy, 0.9),
    ("congratulations", Joy, 0.9),
    ("relieved", Joy, 0.6),
    ("yes", Joy, 0.3),
    ("like", Joy, 0.3),
    // sadness
    ("sad", Sadness, 1.0),
    ("sadly", Sadness, 0.8),
    ("sadness", Sadness, 1.0),
    ("unhappy", Sadness, 1.0),
    ("depressed", Sadness, 1.0),
    ("depressing", Sadness, 0.9),
    ("cry", Sadness, 0.9),
    ("crying", Sadness, 1.0),
    ("cried", Sadness, 0.9),
    ("tears", Sadness, 0.9),
    ("lonely", Sadness, 1.0),
    ("alone", Sadness, 0.6),
    ("miss", Sadness, 0.6),
    ("missing", Sadness, 0.5),
    ("heartbroken", Sadness, 1.0),
    ("grief", Sadness, 1.0),
    ("sorrow", Sadness, 1.0),
    ("miserable", Sadness, 1.0),
    ("down", Sadness, 0.4),
    ("upset", Sadness, 0.6),
    ("disappointed", Sadness, 0.8),
    ("disappointing", Sadness, 0.7),
    ("lost", Sadness, 0.5),
    ("loss", Sadness, 0.7),
    ("sorry", Sadness, 0.5),
    ("hurt", Sadness, 0.7),
    ("hopeless", Sadness, 1.0),
    ("gloomy", Sadness, 0.9),
    ("blue", Sadness, 0.4),
    ("died", Sadness, 0.8),
    ("funeral", Sadness, 0.9),
    ("regret", Sadness, 0.7),
    ("tired", Sadness, 0.4),
    ("exhausted", Sadness, 0.5),
    ("broke", Sadness, 0.3),
    ("bad", Sadness, 0.4),
    ("unfortunately", Sadness, 0.6),
    ("fail", Sadness, 0.6),
    ("hurts", Sadness, 0.7),
    ("heartbreaking", Sadness, 1.0),
    ("pain", Sadness, 0.6),
    ("sigh", Sadness, 0.6),
    // anger
    ("angry", Anger, 1.0),
    ("anger", Anger, 1.0),
    ("mad", Anger, 0.9),
    ("furious", Anger, 1.0),
    ("rage", Anger, 1.0),
    ("hate", Anger, 0.9),
    ("hated", Anger, 0.9),
    ("annoyed", Anger, 0.8),
    ("annoying", Anger, 0.8),
    ("irritated", Anger, 0.8),
    ("irritating", Anger, 0.8),
    ("pissed", Anger, 1.0),
    ("outraged", Anger, 1.0),
    ("unfair", Anger, 0.7),
    ("ridiculous", Anger, 0.7),
    ("stupid", Anger, 0.7),
    ("idiot", Anger, 0.8),
    ("damn", Anger, 0.6),
    ("dammit", Anger, 0.8),
    ("wtf", Anger, 0.7),
    ("fed", Anger, 0.3),
    ("sick", Anger, 0.2),
    ("yell", Anger, 0.7),
    ("yelling", Anger, 0.7),
    ("shut", Anger, 0.5),
    ("frustrated", Anger, 0.8),
    ("frustrating", Anger, 0.8),
    ("unacceptable", Anger, 0.8),
    ("livid", Anger, 1.0),
    ("hostile", Anger, 0.8),
    ("worst", Anger, 0.5),
    ("terrible", Anger, 0.4),
    ("awful", Anger, 0.3),
    ("blame", Anger, 0.5),
    ("outrageous", Anger, 1.0),
    ("hell", Anger, 0.5),
    ("disgrace", Anger, 0.7),
    ("arrogance", Anger, 0.5),
    // fear
    ("afraid", Fear, 1.0),
    ("scared", Fear, 1.0),
    ("scary", Fear, 0.9),
    ("fear", Fear, 1.0),
    ("frightened", Fear, 1.0),
    ("terrified", Fear, 1.0),
    ("terrifying", Fear, 1.0),
    ("nervous", Fear, 0.8),
    ("anxious", Fear, 0.9),
    ("anxiety", Fear, 0.9),
    ("worried", Fear, 0.8),
    ("worry", Fear, 0.7),
    ("panic", Fear, 0.9),
    ("panicking", Fear, 0.9),
    ("horror", Fear, 0.8),
    ("creepy", Fear, 0.7),
    ("dread", Fear, 0.9),
    ("danger", Fear, 0.7),
    ("dangerous", Fear, 0.7),
    ("threat", Fear, 0.6),
    ("unsafe", Fear, 0.8),
    ("shaking", Fear, 0.6),
    ("trembling", Fear, 0.7),
    ("nightmare", Fear, 0.7),
    ("tense", Fear, 0.5),
    ("uneasy", Fear, 0.7),
    ("spooked", Fear, 0.8),
    ("help", Fear, 0.3),
    ("alarm", Fear, 0.4),
    ("dreading", Fear, 1.0),
    ("strange", Fear, 0.4),
    // surprise
    ("wow", Surprise, 1.0),
    ("whoa", Surprise, 1.0),
    ("surprised", Surprise, 1.0),
    ("surprise", Surprise, 0.9),
    ("surprising", Surprise, 0.9),
    ("shocked", Surprise, 1.0),
    ("shocking", Surprise, 0.9),
    ("omg", Surprise, 0.9),
    ("unexpected", Surprise, 0.9),
    ("unbelievable", Surprise, 0.8),
    ("incredible", Surprise, 0.6),
    ("astonished", Surprise, 1.0),
    ("amazed", Surprise, 0.8),
    ("stunned", Surprise, 1.0),
    ("suddenly", Surprise, 0.6),
    ("really?", Surprise, 0.7),
    ("seriously", Surprise, 0.4),
    ("what?", Surprise, 0.6),
    ("no way", Surprise, 0.8),
    ("speechless", Surprise, 0.8),
    ("didnt", Surprise, 0.1),
    ("believe", Surprise, 0.3),
    ("startled", Surprise, 1.0),
    ("jaw", Surprise, 0.6),
    ("expect", Surprise, 0.4),
    ("expected", Surprise, 0.3),
    // disgust
    ("disgusting", Disgust, 1.0),
    ("disgusted", Disgust, 1.0),
    ("gross", Disgust, 1.0),
    ("yuck", Disgust, 1.0),
    ("eww", Disgust, 1.0),
    ("ew", Disgust, 1.0),
    ("nasty", Disgust, 0.9),
    ("revolting", Disgust, 1.0),
    ("repulsive", Disgust, 1.0),
    ("vile", Disgust, 0.9),
    ("sickening", Disgust, 0.9),
    ("nauseous", Disgust, 0.8),
    ("rotten", Disgust, 0.8),
    ("smells", Disgust, 0.5),
    ("stinks", Disgust, 0.8),
    ("stink", Disgust, 0.8),
    ("filthy", Disgust, 0.9),
    ("dirty", Disgust, 0.6),
    ("creep", Disgust, 0.5),
    ("slimy", Disgust, 0.8),
    ("vomit", Disgust, 0.9),
    ("puke", Disgust, 0.9),
    ("appalling", Disgust, 0.7),
    ("moldy", Disgust, 0.8),
    ("greasy", Disgust, 0.5),
    ("smell", Disgust, 0.3),
    ("cringe", Disgust, 0.7),
    ("ugh", Disgust, 0.5),
];

/// Korean stems, matched anywhere in a Hangul word (Korean attaches endings).
const KO: &[(&str, Label, f32)] = &[
    // joy
    ("행복", Joy, 1.0),
    ("기쁘", Joy, 1.0),
    ("기뻐", Joy, 1.0),
    ("기쁨", Joy, 1.0),
    ("좋아", Joy, 0.8),
    ("좋다", Joy, 0.8),
    ("좋은", Joy, 0.6),
    ("좋네", Joy, 0.7),
    ("신나", Joy, 1.0),
    ("신난", Joy, 1.0),
    ("즐거", Joy, 1.0),
    ("즐겁", Joy, 1.0),
    ("재밌", Joy, 0.8),
    ("재미있", Joy, 0.8),
    ("최고", Joy, 0.9),
    ("감사", Joy, 0.6),
    ("고마", Joy, 0.6),
    ("사랑", Joy, 0.9),
    ("설레", Joy, 0.9),
    ("축하", Joy, 0.9),
    ("웃", Joy, 0.5),
    ("만족", Joy, 0.8),
    ("뿌듯", Joy, 0.9),
    ("다행", Joy, 0.6),
    ("짱", Joy, 0.8),
    ("반가", Joy, 0.8),
    ("예쁘", Joy, 0.6),
    ("멋지", Joy, 0.7),
    ("합격", Joy, 0.8),
    // sadness
    ("슬프", Sadness, 1.0),
    ("슬퍼", Sadness, 1.0),
    ("슬픔", Sadness, 1.0),
    ("슬픈", Sadness, 1.0),
    ("우울", Sadness, 1.0),
    ("눈물", Sadness, 0.9),
    ("울었", Sadness, 0.9),
    ("울고", Sadness, 0.9),
    ("울어", Sadness, 0.8),
    ("외로", Sadness, 1.0),
    ("외롭", Sadness, 1.0),
    ("그립", Sadness, 0.8),
    ("그리워", Sadness, 0.8),
    ("보고싶", Sadness, 0.7),
    ("속상", Sadness, 0.9),
    ("서운", Sadness, 0.8),
    ("허전", Sadness, 0.8),
    ("실망", Sadness, 0.8),
    ("아쉽", Sadness, 0.6),
    ("아쉬", Sadness, 0.6),
    ("힘들", Sadness, 0.7),
    ("지쳤", Sadness, 0.6),
    ("지쳐", Sadness, 0.6),
    ("괴로", Sadness, 0.8),
    ("마음이 아", Sadness, 0.9),
    ("아파", Sadness, 0.4),
    ("떨어졌", Sadness, 0.5),
    ("잃", Sadness, 0.6),
    ("헤어", Sadness, 0.7),
    ("돌아가셨", Sadness, 1.0),
    ("안타깝", Sadness, 0.8),
    ("재미없", Sadness, 0.7),
    ("지루", Sadness, 0.5),
    ("비참", Sadness, 1.0),
    ("절망", Sadness, 1.0),
    // anger
    ("화나", Anger, 1.0),
    ("화가", Anger, 1.0),
    ("화난", Anger, 1.0),
    ("열받", Anger, 1.0),
    ("짜증", Anger, 0.9),
    ("빡치", Anger, 1.0),
    ("빡쳐", Anger, 1.0),
    ("분노", Anger, 1.0),
    ("어이없", Anger, 0.8),
    ("억울", Anger, 0.8),
    ("싫어", Anger, 0.6),
    ("싫다", Anger, 0.6),
    ("미워", Anger, 0.8),
    ("밉", Anger, 0.7),
    ("짜증나", Anger, 1.0),
    ("최악", Anger, 0.6),
    ("답답", Anger, 0.6),
    ("괘씸", Anger, 1.0),
    ("용서", Anger, 0.5),
    ("때리", Anger, 0.6),
    ("닥쳐", Anger, 1.0),
    ("개같", Anger, 0.9),
    ("젠장", Anger, 0.8),
    ("뭐하는", Anger, 0.5),
    ("성질", Anger, 0.8),
    ("불공평", Anger, 0.8),
    // fear
    ("무서", Fear, 1.0),
    ("무섭", Fear, 1.0),
    ("두려", Fear, 1.0),
    ("두렵", Fear, 1.0),
    ("겁나", Fear, 1.0),
    ("겁이", Fear, 1.0),
    ("불안", Fear, 0.9),
    ("걱정", Fear, 0.8),
    ("긴장", Fear, 0.7),
    ("떨려", Fear, 0.7),
    ("떨리", Fear, 0.7),
    ("공포", Fear, 1.0),
    ("소름", Fear, 0.6),
    ("위험", Fear, 0.7),
    ("섬뜩", Fear, 0.9),
    ("조마조마", Fear, 0.9),
    ("초조", Fear, 0.8),
    ("악몽", Fear, 0.7),
    ("이상한", Fear, 0.4),
    ("살려", Fear, 0.8),
    ("도망", Fear, 0.5),
    ("식은땀", Fear, 0.8),
    ("오싹", Fear, 0.8),
    // surprise
    ("놀라", Surprise, 1.0),
    ("놀랐", Surprise, 1.0),
    ("놀랍", Surprise, 1.0),
    ("깜짝", Surprise, 1.0),
    ("헐", Surprise, 0.9),
    ("대박", Surprise, 0.6),
    ("세상에", Surprise, 0.9),
    ("설마", Surprise, 0.8),
    ("믿기지", Surprise, 0.9),
    ("예상", Surprise, 0.5),
    ("갑자기", Surprise, 0.6),
    ("와", Surprise, 0.5),
    ("어머", Surprise, 0.9),
    ("헉", Surprise, 1.0),
    ("뜻밖", Surprise, 0.9),
    // disgust
    ("역겨", Disgust, 1.0),
    ("역겹", Disgust, 1.0),
    ("징그러", Disgust, 1.0),
    ("징그럽", Disgust, 1.0),
    ("더러", Disgust, 0.9),
    ("더럽", Disgust, 0.9),
    ("토나", Disgust, 1.0),
    ("토할", Disgust, 1.0),
    ("구역질", Disgust, 1.0),
    ("혐오", Disgust, 1.0),
    ("끔찍", Disgust, 0.6),
    ("냄새", Disgust, 0.5),
    ("비위", Disgust, 0.8),
    ("썩", Disgust, 0.8),
    ("불결", Disgust, 0.9),
    ("으웩", Disgust, 1.0),
    ("우웩", Disgust, 1.0),
    ("웩", Disgust, 0.9),
    ("느끼", Disgust, 0.5),
    ("꼴불견", Disgust, 0.9),
    ("벌레", Disgust, 0.6),
];

/// Emoji and emoticons, matched anywhere in the text.
const SIGNS: &[(&str, Label, f32)] = &[
    ("😀", Joy, 1.2),
    ("😃", Joy, 1.2),
    ("😄", Joy, 1.2),
    ("😁", Joy, 1.2),
    ("😆", Joy, 1.2),
    ("😊", Joy, 1.2),
    ("🙂", Joy, 0.8),
    ("😍", Joy, 1.2),
    ("🥰", Joy, 1.2),
    ("😂", Joy, 1.0),
    ("🤣", Joy, 1.0),
    ("❤", Joy, 1.0),
    ("💕", Joy, 1.0),
    ("🎉", Joy, 1.2),
    ("🥳", Joy, 1.2),
    ("👍", Joy, 0.6),
    (":)", Joy, 1.0),
    (":-)", Joy, 1.0),
    (":D", Joy, 1.2),
    ("^^", Joy, 1.0),
    ("^_^", Joy, 1.0),
    ("<3", Joy, 1.0),
    ("ㅋㅋ", Joy, 0.8),
    ("ㅎㅎ", Joy, 0.8),
    ("😢", Sadness, 1.2),
    ("😭", Sadness, 1.3),
    ("😞", Sadness, 1.1),
    ("😔", Sadness, 1.1),
    ("☹", Sadness, 1.1),
    ("🙁", Sadness, 1.0),
    ("💔", Sadness, 1.2),
    ("😿", Sadness, 1.1),
    (":(", Sadness, 1.0),
    (":-(", Sadness, 1.0),
    (":'(", Sadness, 1.2),
    ("ㅠㅠ", Sadness, 1.0),
    ("ㅜㅜ", Sadness, 1.0),
    ("ㅠ", Sadness, 0.5),
    ("ㅜ", Sadness, 0.5),
    ("😠", Anger, 1.2),
    ("😡", Anger, 1.3),
    ("🤬", Anger, 1.4),
    ("👿", Anger, 1.1),
    ("💢", Anger, 1.1),
    (">:(", Anger, 1.2),
    ("😨", Fear, 1.2),
    ("😰", Fear, 1.2),
    ("😱", Fear, 1.0),
    ("😧", Fear, 1.0),
    ("😟", Fear, 0.9),
    ("😬", Fear, 0.6),
    ("😮", Surprise, 1.1),
    ("😯", Surprise, 1.1),
    ("😲", Surprise, 1.2),
    ("🤯", Surprise, 1.2),
    ("😳", Surprise, 0.9),
    ("!?", Surprise, 0.7),
    ("?!", Surprise, 0.7),
    (":o", Surprise, 1.0),
    (":O", Surprise, 1.0),
    ("🤢", Disgust, 1.3),
    ("🤮", Disgust, 1.4),
    ("😖", Disgust, 0.7),
    ("😒", Disgust, 0.6),
    ("🙄", Disgust, 0.6),
];

/// Phrases matched on the whole lowercased text: multi-word cues, cues that
/// carry punctuation, and Korean expressions spanning words.
const PHRASES: &[(&str, Label, f32)] = &[
    ("no way", Surprise, 0.9),
    ("what?", Surprise, 0.8),
    ("really?", Surprise, 0.8),
    ("seriously?", Surprise, 0.8),
    ("out of nowhere", Surprise, 0.9),
    ("never saw", Surprise, 0.7),
    ("didn't know", Surprise, 0.6),
    ("did not know", Surprise, 0.6),
    ("can't believe", Surprise, 0.9),
    ("cannot believe", Surprise, 0.9),
    ("just found", Surprise, 0.5),
    ("is that really", Surprise, 0.7),
    ("coming", Surprise, 0.1),
    ("can't stand", Anger, 1.0),
    ("what the hell", Anger, 0.9),
    ("sick and tired", Anger, 1.0),
    ("fed up", Anger, 0.9),
    ("had enough", Anger, 0.8),
    ("how dare", Anger, 1.0),
    ("something bad", Fear, 0.8),
    ("what if", Fear, 0.5),
    ("strange noise", Fear, 0.8),
    ("heart is pounding", Fear, 0.8),
    ("smell awful", Disgust, 0.8),
    ("smells awful", Disgust, 0.8),
    ("makes me sick", Disgust, 0.8),
    ("failed", Sadness, 0.7),
    ("nobody came", Sadness, 0.8),
    ("let down", Sadness, 0.7),
    ("마음이 아", Sadness, 0.9),
    ("기억 못", Sadness, 0.6),
    ("정말?", Surprise, 0.8),
    ("진짜?", Surprise, 0.8),
    ("말도 안", Surprise, 0.9),
    ("믿을 수", Surprise, 0.9),
    ("어떻게 이런", Surprise, 0.8),
    ("무슨 일", Surprise, 0.6),
    ("참을 수", Anger, 0.8),
    ("치가 떨", Disgust, 0.8),
    ("이상한 소리", Fear, 0.9),
];

const EN_NEGATIONS: &[&str] = &[
    "not", "no", "never", "nothing", "nobody", "neither", "nor", "hardly", "barely", "cannot", "without",
];
const EN_INTENSIFIERS: &[(&str, f32)] = &[
    ("very", 1.6),
    ("so", 1.5),
    ("really", 1.5),
    ("extremely", 1.9),
    ("totally", 1.5),
    ("super", 1.6),
    ("incredibly", 1.8),
    ("too", 1.3),
    ("absolutely", 1.7),
    ("completely", 1.5),
    ("truly", 1.4),
    ("deeply", 1.6),
    ("pretty", 1.2),
    ("quite", 1.2),
    ("such", 1.4),
    ("most", 1.3),
];
const EN_DIMINISHERS: &[(&str, f32)] = &[
    ("slightly", 0.5),
    ("somewhat", 0.6),
    ("kinda", 0.6),
    ("little", 0.6),
    ("bit", 0.6),
];
const KO_INTENSIFIERS: &[(&str, f32)] = &[
    ("너무", 1.6),
    ("진짜", 1.5),
    ("정말", 1.5),
    ("완전", 1.6),
    ("엄청", 1.7),
    ("매우", 1.6),
    ("되게", 1.4),
    ("아주", 1.4),
    ("몹시", 1.7),
    ("넘", 1.4),
    ("존나", 1.8),
    ("개", 1.3),
    ("무척", 1.6),
    ("참", 1.3),
];
/// Korean negation before the predicate (`안 좋아`, `못 참겠어`).
const KO_PRE_NEGATIONS: &[&str] = &["안", "못"];
/// Korean negation after the stem (`좋지 않아`, `재미없어`).
const KO_POST_NEGATIONS: &[&str] = &["않", "없", "아니", "말고"];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    /// A whole word in capital letters (emphasis), lowercased.
    Shout(String),
    Hangul(String),
}

fn is_hangul(c: char) -> bool {
    ('\u{AC00}'..='\u{D7A3}').contains(&c) || ('\u{3130}'..='\u{318F}').contains(&c)
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut hangul = false;
    let flush = |cur: &mut String, hangul: bool, out: &mut Vec<Token>| {
        if cur.is_empty() {
            return;
        }
        let w = std::mem::take(cur);
        if hangul {
            out.push(Token::Hangul(w));
        } else if w.len() >= 3 && w.chars().all(|c| c.is_ascii_uppercase()) {
            out.push(Token::Shout(w.to_ascii_lowercase()));
        } else {
            out.push(Token::Word(w.to_lowercase().replace('\'', "")));
        }
    };
    for c in text.chars() {
        let h = is_hangul(c);
        let word_char = c.is_alphanumeric() || c == '\'';
        if word_char && !cur.is_empty() && h != hangul {
            flush(&mut cur, hangul, &mut out);
        }
        if word_char {
            hangul = h;
            cur.push(c);
        } else {
            flush(&mut cur, hangul, &mut out);
        }
    }
    flush(&mut cur, hangul, &mut out);
    out
}

/// The offline classifier.
#[derive(Debug, Clone)]
pub struct LexiconClassifier {
    en: HashMap<&'static str, (Label, f32)>,
}

impl Default for LexiconClassifier {
    fn default() -> Self {
        LexiconClassifier {
            en: EN.iter().map(|(w, l, s)| (*w, (*l, *s))).collect(),
        }
    }
}

fn index(l: Label) -> usize {
    Label::ALL.iter().position(|x| *x == l).expect("a label")
}

impl LexiconClassifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies one text.
    pub fn classify_one(&self, text: &str) -> Classification {
        let mut ev = [0f32; 7];
        let tokens = tokenize(text);
        let mut boost = 1.0f32;
        let mut negate_window = 0usize;
        for (i, t) in tokens.iter().enumerate() {
            let (word, shout) = match t {
                Token::Word(w) => (w.as_str(), false),
                Token::Shout(w) => (w.as_str(), true),
                Token::Hangul(h) => {
                    self.hangul(h, &tokens, i, &mut ev, &mut boost);
                    continue;
                }
            };
            if EN_NEGATIONS.contains(&word) || is_contraction(word) {
                // `can't stop smiling` intensifies rather than negates.
                let next = tokens.get(i + 1);
                if matches!(next, Some(Token::Word(n)) if n == "stop" || n == "help") {
                    boost *= 1.5;
                } else {
                    negate_window = 3;
                }
                continue;
            }
            if word == "stop" && boost > 1.0 {
                continue;
            }
            if let Some((_, f)) = EN_INTENSIFIERS.iter().find(|(w, _)| *w == word) {
                boost *= f;
                continue;
            }
            if let Some((_, f)) = EN_DIMINISHERS.iter().find(|(w, _)| *w == word) {
                boost *= f;
                continue;
            }
            if let Some((label, w)) = self.en.get(word) {
                let w = w * boost * if shout { 1.5 } else { 1.0 };
                add(&mut ev, *label, w, negate_window > 0);
                boost = 1.0;
            }
            negate_window = negate_window.saturating_sub(1);
        }
        let lower = text.to_lowercase();
        for (phrase, label, w) in PHRASES {
            if lower.contains(phrase) {
                ev[index(*label)] += w;
            }
        }
        for (sign, label, w) in SIGNS {
            let n = text.matches(sign).count();
            if n > 0 {
                ev[index(*label)] += w * (1.0 + 0.3 * (n.min(4) as f32 - 1.0));
            }
        }
        // Exclamation marks strengthen whatever was said.
        let bangs = text.matches('!').count().min(5) as f32;
        if bangs > 0.0 {
            for e in ev.iter_mut().take(6) {
                *e *= 1.0 + 0.15 * bangs;
            }
            if ev.iter().take(6).all(|e| *e == 0.0) {
                ev[index(Surprise)] += 0.3 * bangs;
            }
        }
        if text.contains('?') && ev.iter().take(6).all(|e| *e == 0.0) {
            ev[index(Neutral)] += 0.3;
        }
        ev[index(Neutral)] += NEUTRAL_PRIOR;
        let total: f32 = ev.iter().sum();
        let mut scores = [0f32; 7];
        for (s, e) in scores.iter_mut().zip(ev) {
            *s = e / total;
        }
        let (best, score) = scores.iter().enumerate().fold(
            (6, f32::MIN),
            |(bi, bs), (i, s)| if *s > bs { (i, *s) } else { (bi, bs) },
        );
        Classification {
            label: Label::ALL[best],
            score,
            scores,
            model: MODEL.to_owned(),
        }
    }

    fn hangul(&self, h: &str, tokens: &[Token], i: usize, ev: &mut [f32; 7], boost: &mut f32) {
        if let Some((_, f)) = KO_INTENSIFIERS
            .iter()
            .find(|(w, _)| h == *w || (h.starts_with(w) && h.chars().count() <= 3 && *w != "개"))
        {
            *boost *= f;
            return;
        }
        if KO_PRE_NEGATIONS.contains(&h) {
            return;
        }
        let pre_negated = i > 0 && matches!(&tokens[i - 1], Token::Hangul(p) if KO_PRE_NEGATIONS.contains(&p.as_str()));
        let mut matched = false;
        for (stem, label, w) in KO {
            if h.contains(stem) {
                // `재미없어`, `좋지 않아`: negation inside the word or right after it.
                let in_word = KO_POST_NEGATIONS
                    .iter()
                    .any(|n| h[h.find(stem).unwrap_or(0) + stem.len()..].contains(n));
                let after = tokens.get(i + 1).is_some_and(
                    |t| matches!(t, Token::Hangul(n) if KO_POST_NEGATIONS.iter().any(|neg| n.starts_with(neg))),
                );
                add(ev, *label, w * *boost, pre_negated || in_word || after);
                matched = true;
                break;
            }
        }
        if matched {
            *boost = 1.0;
        }
    }
}

fn is_contraction(w: &str) -> bool {
    matches!(
        w,
        "dont"
            | "doesnt"
            | "didnt"
            | "isnt"
            | "wasnt"
            | "arent"
            | "werent"
            | "cant"
            | "couldnt"
            | "wont"
            | "wouldnt"
            | "shouldnt"
            | "havent"
            | "hasnt"
            | "hadnt"
            | "aint"
    )
}

/// Adds evidence; negation turns joy into sadness and weakens the rest.
fn add(ev: &mut [f32; 7], label: Label, w: f32, negated: bool) {
    if !negated {
        ev[index(label)] += w;
        return;
    }
    match label {
        Joy => ev[index(Sadness)] += 0.8 * w,
        // `can't believe it`, `믿기지 않아`: negated surprise is surprise.
        Surprise => ev[index(Surprise)] += w,
        Neutral => {}
        _ => ev[index(Neutral)] += 0.5 * w,
    }
}

#[async_trait]
impl Classifier for LexiconClassifier {
    fn model(&self) -> &str {
        MODEL
    }

    async fn classify(&self, texts: &[&str]) -> Result<Vec<Classification>, ClassifyError> {
        Ok(texts.iter().map(|t| self.classify_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(t: &str) -> Label {
        LexiconClassifier::new().classify_one(t).label
    }

    #[test]
    fn rules() {
        assert_eq!(label("I am so happy today"), Joy);
        assert_eq!(label("I am not happy"), Sadness, "negated joy");
        assert_eq!(label("this is not scary at all"), Neutral, "negated fear weakens");
        assert_eq!(label("the meeting is at 3pm"), Neutral);
        assert_eq!(label("너무 행복해요"), Joy);
        assert_eq!(label("하나도 안 좋아"), Sadness);
        assert_eq!(label("재미없어"), Sadness, "negation inside a Korean word");
        assert_eq!(label("오늘 회의는 3시입니다"), Neutral);
        assert_eq!(label("😭😭"), Sadness);
        assert_eq!(label("ㅋㅋㅋㅋ"), Joy);
        assert_eq!(label("I HATE this"), Anger);
        let c = LexiconClassifier::new().classify_one("wow!!!");
        assert_eq!(c.label, Surprise);
        assert!((c.scores.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(
            LexiconClassifier::new().classify_one("wow"),
            LexiconClassifier::new().classify_one("wow")
        );
    }
}
