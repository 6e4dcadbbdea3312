//! SQLSTATE codes raised by the pg_s2t extension.
//!
//! Class `S2` is ours: PostgreSQL reserves no class starting with `S`, so
//! these never collide with the server's own codes. Clients (the gateway,
//! psql scripts, other languages) branch on these five characters, never on
//! message text.

/// The monthly number of transcriptions is used up.
pub const QUOTA_USAGE_EXCEEDED: &str = "S2Q01";
/// The monthly minutes are used up.
pub const QUOTA_MINUTES_EXCEEDED: &str = "S2Q02";
/// The monthly number of questions (answers from recordings) is used up.
pub const QUOTA_QUESTIONS_EXCEEDED: &str = "S2Q03";
/// A user, recording, plan or job does not exist (or is not yours).
pub const NOT_FOUND: &str = "S2N01";
/// The object exists but is not in a state that allows the change.
pub const INVALID_STATE: &str = "S2S01";
/// An argument is malformed or out of range.
pub const INVALID_INPUT: &str = "S2V01";
/// A unique value (email, user name) is already taken.
pub const CONFLICT: &str = "S2C01";

/// No worker has room for a realtime session; retry later (the detail
/// says `retry_after: <seconds>`).
pub const BUSY: &str = "S2B01";

/// A per-user limit on things outstanding at once (unused WebSocket
/// tickets) is reached; retry later (the detail says `retry_after:
/// <seconds>`).
pub const LIMIT_REACHED: &str = "S2L01";

/// Every code with its name and the HTTP status a gateway should answer.
pub const ALL: &[(&str, &str, u16)] = &[
    (QUOTA_USAGE_EXCEEDED, "quota_usage_exceeded", 429),
    (QUOTA_MINUTES_EXCEEDED, "quota_minutes_exceeded", 429),
    (QUOTA_QUESTIONS_EXCEEDED, "quota_questions_exceeded", 429),
    (NOT_FOUND, "not_found", 404),
    (INVALID_STATE, "invalid_state", 409),
    (INVALID_INPUT, "invalid_input", 422),
    (CONFLICT, "conflict", 409),
    (BUSY, "busy", 503),
    (LIMIT_REACHED, "limit_reached", 429),
];

/// The HTTP status for one of our SQLSTATEs, if it is one.
pub fn http_status(sqlstate: &str) -> Option<u16> {
    ALL.iter()
        .find(|(code, _, _)| *code == sqlstate)
        .map(|(_, _, status)| *status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_valid_sqlstates_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for (code, name, _) in ALL {
            assert_eq!(code.len(), 5, "{name}");
            assert!(
                code.chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()),
                "{code} must be [0-9A-Z]"
            );
            assert!(seen.insert(*code), "duplicate code {code}");
        }
    }

    #[test]
    fn maps_to_http() {
        assert_eq!(http_status(QUOTA_USAGE_EXCEEDED), Some(429));
        assert_eq!(http_status(NOT_FOUND), Some(404));
        assert_eq!(http_status("23505"), None);
    }
}
