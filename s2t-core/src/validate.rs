//! Input checks whose failures become [`Problem`]s with SQLSTATE
//! [`INVALID_INPUT`](crate::sqlstate::INVALID_INPUT).

use crate::problem::Problem;
use crate::sqlstate::INVALID_INPUT;
use serde_json::Value;
use std::collections::HashMap;

pub const EMAIL_MAX: usize = 254;
pub const USER_NAME_MIN: usize = 3;
pub const USER_NAME_MAX: usize = 32;
pub const DISPLAY_NAME_MAX: usize = 100;
pub const PASSWORD_HASH_MAX: usize = 512;
/// One segment's text; Whisper emits a sentence or two per segment.
pub const SEGMENT_TEXT_MAX: usize = 10_000;
/// Segments per recording: a 10-hour file at one segment a second.
pub const SEGMENTS_MAX: usize = 36_000;

fn invalid(field: &str, message: impl Into<String>, hint: &str) -> Problem {
    Problem::new(INVALID_INPUT, message)
        .detail(format!("field: {field}"))
        .hint(hint.to_string())
}

/// The canonical form of an e-mail address (trimmed, lower-case), or why it
/// is not one. Deliberately loose: one `@`, a non-empty local part, and a
/// domain with a dot and no spaces; the real check is a confirmation mail.
pub fn normalize_email(raw: &str) -> Result<String, Problem> {
    let email = raw.trim().to_lowercase();
    let hint = "Give an address such as name@example.com.";
    if email.is_empty() {
        return Err(invalid("email", "email must not be empty", hint));
    }
    if email.len() > EMAIL_MAX {
        return Err(invalid(
            "email",
            format!("email is longer than {EMAIL_MAX} characters"),
            hint,
        ));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid("email", "email must contain '@'", hint));
    };
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..");
    if local.is_empty() || !domain_ok || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "email",
            format!("{raw:?} is not an e-mail address"),
            hint,
        ));
    }
    Ok(email)
}

/// User names are 3–32 characters of ASCII letters, digits, `_`, `.` and
/// `-`, starting with a letter or digit, so they are safe in URLs and logs.
pub fn validate_user_name(name: &str) -> Result<(), Problem> {
    let hint = "Use 3 to 32 letters, digits, '_', '.' or '-', starting with a letter or digit.";
    let len = name.chars().count();
    if !(USER_NAME_MIN..=USER_NAME_MAX).contains(&len) {
        return Err(invalid(
            "user_name",
            format!(
                "user_name must be {USER_NAME_MIN} to {USER_NAME_MAX} characters long, got {len}"
            ),
            hint,
        ));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(invalid(
            "user_name",
            format!("user_name {name:?} has characters that are not allowed"),
            hint,
        ));
    }
    Ok(())
}

/// A display name may be absent; when present it is 1–100 characters with
/// no control characters.
pub fn validate_display_name(name: Option<&str>) -> Result<(), Problem> {
    let Some(name) = name else { return Ok(()) };
    let hint = "Give a name of 1 to 100 printable characters, or none.";
    let len = name.trim().chars().count();
    if len == 0 || name.chars().count() > DISPLAY_NAME_MAX {
        return Err(invalid(
            "name",
            format!("name must be 1 to {DISPLAY_NAME_MAX} characters long"),
            hint,
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            "name must not contain control characters",
            hint,
        ));
    }
    Ok(())
}

/// The password hash is produced by the caller (argon2id in the gateway);
/// the database only refuses what cannot be a hash.
pub fn validate_password_hash(hash: &str) -> Result<(), Problem> {
    if hash.trim().is_empty() || hash.len() > PASSWORD_HASH_MAX {
        return Err(invalid(
            "password_hash",
            format!("password hash must be 1 to {PASSWORD_HASH_MAX} bytes"),
            "Pass the hash of the password (for example an argon2id PHC string), never the password.",
        ));
    }
    Ok(())
}

/// Everything `register_user` checks, in the order a form shows them.
pub fn validate_registration(
    email: &str,
    user_name: &str,
    password_hash: &str,
    name: Option<&str>,
) -> Result<String, Problem> {
    let email = normalize_email(email)?;
    validate_user_name(user_name)?;
    validate_password_hash(password_hash)?;
    validate_display_name(name)?;
    Ok(email)
}

/// One transcript segment as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInput {
    pub idx: i32,
    pub start_ms: i32,
    pub end_ms: i32,
    pub text: String,
    pub words: Option<Value>,
}

fn segment_problem(position: usize, message: String) -> Problem {
    Problem::new(INVALID_INPUT, message)
        .detail(format!("segment at array position {position}"))
        .hint(
            "Each segment is {\"idx\": int >= 0, \"start_ms\": int >= 0, \"end_ms\": int >= start_ms, \
             \"text\": string, \"words\": optional array}, with idx unique and end_ms within the duration.",
        )
}

fn int_field(
    seg: &serde_json::Map<String, Value>,
    key: &str,
    position: usize,
) -> Result<i32, Problem> {
    match seg.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| {
                segment_problem(position, format!("{key} must be a 32-bit integer, got {n}"))
            }),
        Some(other) => Err(segment_problem(
            position,
            format!("{key} must be an integer, got {other}"),
        )),
        None => Err(segment_problem(position, format!("{key} is missing"))),
    }
}

/// Parse and check the segments of a recording. `duration_ms`, when given,
/// bounds every `end_ms`.
pub fn validate_segments(
    value: &Value,
    duration_ms: Option<i64>,
) -> Result<Vec<SegmentInput>, Problem> {
    if let Some(d) = duration_ms {
        if d < 0 {
            return Err(Problem::new(
                INVALID_INPUT,
                format!("duration_ms must not be negative, got {d}"),
            )
            .detail("field: duration_ms")
            .hint("Pass the decoded length of the audio in milliseconds."));
        }
    }
    let Value::Array(items) = value else {
        return Err(Problem::new(INVALID_INPUT, "segments must be a JSON array")
            .detail(format!("got {}", json_kind(value)))
            .hint("Pass '[]' for a recording with no speech."));
    };
    if items.len() > SEGMENTS_MAX {
        return Err(Problem::new(
            INVALID_INPUT,
            format!(
                "too many segments: {} (at most {SEGMENTS_MAX})",
                items.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut positions_by_idx: HashMap<i32, usize> = HashMap::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let Value::Object(seg) = item else {
            return Err(segment_problem(
                position,
                format!("segment must be an object, got {}", json_kind(item)),
            ));
        };
        let idx = int_field(seg, "idx", position)?;
        let start_ms = int_field(seg, "start_ms", position)?;
        let end_ms = int_field(seg, "end_ms", position)?;
        if idx < 0 {
            return Err(segment_problem(
                position,
                format!("idx must not be negative, got {idx}"),
            ));
        }
        if start_ms < 0 {
            return Err(segment_problem(
                position,
                format!("start_ms must not be negative, got {start_ms}"),
            ));
        }
        if end_ms < start_ms {
            return Err(segment_problem(
                position,
                format!("end_ms ({end_ms}) is before start_ms ({start_ms})"),
            ));
        }
        if let Some(d) = duration_ms {
            if i64::from(end_ms) > d {
                return Err(segment_problem(
                    position,
                    format!("end_ms ({end_ms}) is past the end of the recording ({d} ms)"),
                ));
            }
        }
        let text = match seg.get("text") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(segment_problem(
                    position,
                    format!("text must be a string, got {}", json_kind(other)),
                ))
            }
            None => return Err(segment_problem(position, "text is missing".to_string())),
        };
        if text.len() > SEGMENT_TEXT_MAX {
            return Err(segment_problem(
                position,
                format!("text is {} bytes, more than {SEGMENT_TEXT_MAX}", text.len()),
            ));
        }
        let words = match seg.get("words") {
            None | Some(Value::Null) => None,
            Some(w @ Value::Array(_)) => Some(w.clone()),
            Some(other) => {
                return Err(segment_problem(
                    position,
                    format!("words must be an array, got {}", json_kind(other)),
                ))
            }
        };
        if let Some(first) = positions_by_idx.insert(idx, position) {
            return Err(segment_problem(
                position,
                format!("duplicate idx {idx} (also at array position {first})"),
            ));
        }
        out.push(SegmentInput {
            idx,
            start_ms,
            end_ms,
            text,
            words,
        });
    }
    Ok(out)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "a@b",
            "a@@b.com",
            "a b@c.com",
            "a@.com",
            "a@b..com",
        ] {
            let err = normalize_email(bad).unwrap_err();
            assert_eq!(err.sqlstate, INVALID_INPUT, "{bad}");
            assert_eq!(err.detail.as_deref(), Some("field: email"));
        }
        assert!(normalize_email(&format!("{}@x.io", "a".repeat(260))).is_err());
    }

    #[test]
    fn user_names() {
        assert!(validate_user_name("alice_01").is_ok());
        assert!(validate_user_name("a.b-c").is_ok());
        for bad in ["ab", "_alice", "alice!", "tên", &"a".repeat(33)] {
            assert!(validate_user_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_names() {
        assert!(validate_display_name(None).is_ok());
        assert!(validate_display_name(Some("Nguyễn Văn A")).is_ok());
        assert!(validate_display_name(Some("   ")).is_err());
        assert!(validate_display_name(Some("a\u{7}b")).is_err());
        assert!(validate_display_name(Some(&"x".repeat(101))).is_err());
    }

    #[test]
    fn registration_returns_normalized_email() {
        let email =
            validate_registration("Bob@Example.org", "bob", "$argon2id$v=19$...", Some("Bob"))
                .unwrap();
        assert_eq!(email, "bob@example.org");
        assert!(validate_registration("bob@example.org", "bob", "  ", None).is_err());
    }

    #[test]
    fn good_segments_parse() {
        let segs = validate_segments(
            &json!([
                {"idx": 0, "start_ms": 0, "end_ms": 1200, "text": "hello"},
                {"idx": 1, "start_ms": 1200, "end_ms": 1200, "text": "", "words": [{"w": "x"}]}
            ]),
            Some(1200),
        )
        .unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].words, Some(json!([{"w": "x"}])));
        assert!(validate_segments(&json!([]), Some(0)).unwrap().is_empty());
    }

    fn message_of(v: Value, duration: Option<i64>) -> String {
        let p = validate_segments(&v, duration).unwrap_err();
        assert_eq!(p.sqlstate, INVALID_INPUT);
        p.message
    }

    #[test]
    fn bad_segments_are_named() {
        assert!(message_of(json!({}), None).contains("JSON array"));
        assert!(message_of(json!([1]), None).contains("object"));
        assert!(
            message_of(json!([{"start_ms": 0, "end_ms": 1, "text": ""}]), None)
                .contains("idx is missing")
        );
        assert!(message_of(
            json!([{"idx": -1, "start_ms": 0, "end_ms": 1, "text": ""}]),
            None
        )
        .contains("idx must not be negative"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": -5, "end_ms": 1, "text": ""}]),
            None
        )
        .contains("start_ms"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": 10, "end_ms": 5, "text": ""}]),
            None
        )
        .contains("before start_ms"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": 0, "end_ms": 5000, "text": ""}]),
            Some(4000)
        )
        .contains("past the end"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": 0, "end_ms": 1.5, "text": ""}]),
            None
        )
        .contains("32-bit integer"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": 0, "end_ms": 3000000000u64, "text": ""}]),
            None
        )
        .contains("32-bit"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": 0, "end_ms": 1, "text": 7}]),
            None
        )
        .contains("text must be a string"));
        assert!(message_of(
            json!([{"idx": 0, "start_ms": 0, "end_ms": 1, "text": "", "words": "x"}]),
            None
        )
        .contains("words"));
        let dup = message_of(
            json!([
                {"idx": 3, "start_ms": 0, "end_ms": 1, "text": "a"},
                {"idx": 3, "start_ms": 1, "end_ms": 2, "text": "b"}
            ]),
            None,
        );
        assert!(dup.contains("duplicate idx 3"), "{dup}");
        assert!(message_of(json!([]), Some(-1)).contains("duration_ms must not be negative"));
    }
}
