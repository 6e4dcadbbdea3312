//! Checks on what a worker hands to `complete_recording`.

use pgrx::prelude::*;

/// `NULL` when the segments are valid for a recording of `duration_ms`,
/// otherwise `[sqlstate, message, detail, hint]` naming the first problem:
/// a negative duration, a malformed segment, `end_ms < start_ms`, a time past
/// the end, or a duplicate `idx`.
#[pg_extern(immutable, parallel_safe)]
fn segments_problem(
    segments: Option<pgrx::JsonB>,
    duration_ms: Option<i32>,
) -> Option<Vec<Option<String>>> {
    let value = segments.map(|j| j.0).unwrap_or(serde_json::Value::Null);
    s2t_core::validate::validate_segments(&value, duration_ms.map(i64::from))
        .err()
        .map(s2t_core::Problem::into_parts)
}
