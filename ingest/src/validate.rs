//! The contract's input rules. Each failure is a [`CommandError::Invalid`]
//! (`invalid_request`) that names the field.
//!
//! Text people read (messages, room names) is stored NFC-normalised, so one
//! word is one sequence of code points whoever typed it; it may not carry
//! bidirectional embedding, override or isolate controls (U+202A–U+202E,
//! U+2066–U+2069), which make a message display as something else than it
//! is, and may not consist only of invisible characters.

pub use emosation_core::limits::{MAX_CLIENT_MSG_ID_CHARS, MAX_ROOM_NAME_CHARS, MAX_TEXT_CHARS};
use unicode_normalization::UnicodeNormalization;

use crate::CommandError;

pub const DEFAULT_CAPACITY: i32 = 100;
pub const MAX_CAPACITY: i32 = 100_000;

/// 3–32 of `[a-z0-9_]`.
pub fn username(u: &str) -> Result<(), CommandError> {
    let ok = (3..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CommandError::Invalid(
            "username must be 3-32 characters of a-z, 0-9 and _".into(),
        ))
    }
}

/// 8–128 characters.
pub fn password(p: &str) -> Result<(), CommandError> {
    if (8..=128).contains(&p.chars().count()) {
        Ok(())
    } else {
        Err(CommandError::Invalid("password must be 8-128 characters".into()))
    }
}

/// 1–100 characters after trimming, printable, no bidi controls, not only
/// invisible characters; returns the trimmed name, NFC-normalised.
pub fn room_name(n: &str) -> Result<String, CommandError> {
    let t: String = n.trim().nfc().collect();
    let len = t.chars().count();
    if len == 0 || len > MAX_ROOM_NAME_CHARS || t.chars().any(char::is_control) || invisible(&t) {
        return Err(CommandError::Invalid("name must be 1-100 printable characters".into()));
    }
    if t.chars().any(is_bidi_control) {
        return Err(CommandError::Invalid(
            "name must not contain bidirectional control characters".into(),
        ));
    }
    Ok(t)
}

/// U+202A–U+202E (embeddings, overrides) and U+2066–U+2069 (isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `t` shows nothing: only whitespace, zero-width and other
/// default-ignorable characters.
fn invisible(t: &str) -> bool {
    t.chars().all(|c| {
        c.is_whitespace()
            || matches!(
                c,
                '\u{00AD}'
                    | '\u{034F}'
                    | '\u{061C}'
                    | '\u{115F}'
                    | '\u{1160}'
                    | '\u{17B4}'
                    | '\u{17B5}'
                    | '\u{180B}'..='\u{180F}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2060}'..='\u{206F}'
                    | '\u{3164}'
                    | '\u{FE00}'..='\u{FE0F}'
                    | '\u{FEFF}'
                    | '\u{FFA0}'
                    | '\u{1BCA0}'..='\u{1BCA3}'
                    | '\u{E0000}'..='\u{E0FFF}'
            )
    })
}

/// `None` → the default; otherwise 1..=100,000.
pub fn capacity(c: Option<i64>) -> Result<i32, CommandError> {
    match c {
        None => Ok(DEFAULT_CAPACITY),
        Some(c) if (1..=MAX_CAPACITY as i64).contains(&c) => Ok(c as i32),
        Some(_) => Err(CommandError::Invalid("capacity must be between 1 and 100000".into())),
    }
}

/// 1–4000 characters, not only invisible ones, no bidi controls; returns
/// the text NFC-normalised (the length is counted after normalising).
pub fn text(t: &str) -> Result<String, CommandError> {
    let t = nfc(t);
    if invisible(&t) {
        return Err(CommandError::Invalid(
            "text must not be empty or only invisible characters".into(),
        ));
    }
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(CommandError::Invalid("text must be at most 4000 characters".into()));
    }
    if t.chars().any(is_bidi_control) {
        return Err(CommandError::Invalid(
            "text must not contain bidirectional control characters".into(),
        ));
    }
    Ok(t)
}

/// `t` NFC-normalised; text that is so already (nearly all of it: any
/// ASCII) is copied as it is, after a quick check, instead of being taken
/// apart and composed again character by character.
fn nfc(t: &str) -> String {
    match unicode_normalization::is_nfc_quick(t.chars()) {
        unicode_normalization::IsNormalized::Yes => t.to_owned(),
        _ => t.nfc().collect(),
    }
}

/// 1–128 printable characters.
pub fn client_msg_id(c: &str) -> Result<(), CommandError> {
    let len = c.chars().count();
    if len == 0 || len > MAX_CLIENT_MSG_ID_CHARS || c.chars().any(char::is_control) {
        return Err(CommandError::Invalid(
            "client_msg_id must be 1-128 printable characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(username("al").is_err());
        assert!(username("alice_01").is_ok());
        assert!(username("Alice").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(password("short").is_err());
        assert!(password("long enough").is_ok());
        assert!(text("").is_err());
        assert!(text("   ").is_err());
        assert!(text("\u{200B}\u{200D}\u{FEFF} \u{2060}").is_err(), "zero-width only");
        assert!(text("a\u{202E}gnp.exe").is_err(), "right-to-left override");
        assert!(text("a\u{2067}b").is_err(), "isolate");
        assert!(text("e\u{0301}").unwrap() == "\u{00E9}", "NFC");
        assert!(text("👍\u{200D}").is_ok(), "visible with a joiner");
        assert!(text(&"가".repeat(4000)).is_ok(), "characters, not bytes");
        assert!(text(&"a".repeat(4001)).is_err());
        assert!(room_name("\u{200B}").is_err());
        assert!(room_name("x\u{202D}").is_err());
        assert_eq!(room_name(" Cafe\u{0301} ").unwrap(), "Caf\u{00E9}");
        assert_eq!(capacity(None).unwrap(), DEFAULT_CAPACITY);
        assert!(capacity(Some(0)).is_err());
        assert!(capacity(Some(-3)).is_err());
        assert_eq!(room_name("  lobby ").unwrap(), "lobby");
        assert!(room_name("a\u{0}b").is_err());
        assert!(client_msg_id("").is_err());
    }
}
