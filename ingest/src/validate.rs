//! The contract's input rules. Each failure is a [`CommandError::Invalid`]
//! (`invalid_request`) that names the field.

use crate::CommandError;

pub const MAX_TEXT_CHARS: usize = 4000;
pub const MAX_ROOM_NAME_CHARS: usize = 100;
pub const MAX_CLIENT_MSG_ID_CHARS: usize = 128;
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

/// 1–100 characters after trimming; returns the trimmed name.
pub fn room_name(n: &str) -> Result<String, CommandError> {
    let t = n.trim();
    let len = t.chars().count();
    if len == 0 || len > MAX_ROOM_NAME_CHARS || t.chars().any(char::is_control) {
        return Err(CommandError::Invalid("name must be 1-100 printable characters".into()));
    }
    Ok(t.to_owned())
}

/// `None` → the default; otherwise 1..=100,000.
pub fn capacity(c: Option<i64>) -> Result<i32, CommandError> {
    match c {
        None => Ok(DEFAULT_CAPACITY),
        Some(c) if (1..=MAX_CAPACITY as i64).contains(&c) => Ok(c as i32),
        Some(_) => Err(CommandError::Invalid("capacity must be between 1 and 100000".into())),
    }
}

/// 1–4000 characters, not only whitespace.
pub fn text(t: &str) -> Result<(), CommandError> {
    if t.trim().is_empty() {
        return Err(CommandError::Invalid("text must not be empty".into()));
    }
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(CommandError::Invalid("text must be at most 4000 characters".into()));
    }
    Ok(())
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
        assert!(text(&"가".repeat(4000)).is_ok(), "characters, not bytes");
        assert!(text(&"a".repeat(4001)).is_err());
        assert_eq!(capacity(None).unwrap(), DEFAULT_CAPACITY);
        assert!(capacity(Some(0)).is_err());
        assert!(capacity(Some(-3)).is_err());
        assert_eq!(room_name("  lobby ").unwrap(), "lobby");
        assert!(room_name("a\u{0}b").is_err());
        assert!(client_msg_id("").is_err());
    }
}
