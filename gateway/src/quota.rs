//! The cheap quota check before an upload's body is read.
//!
//! Admission in the database is the rule (it locks the subscription and
//! reserves the recording's length); this pre-check only spares the gateway
//! spooling a 200 MiB body that admission will refuse anyway. It reads
//! without a lock, so it can only be too lenient, never too strict: a
//! concurrent completion can only use more. Its refusals have the
//! database's shape (SQLSTATE, message, detail fields), so clients see one
//! kind of 429.

use crate::error::ApiError;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use s2t_core::sqlstate;

/// A subscription as the pre-check reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub usage_count: i32,
    pub usage_limit: i32,
    pub used_seconds: i32,
    pub reserved_seconds: i32,
    pub monthly_minutes: i32,
    pub plan_code: String,
    pub cycle_end: DateTime<Utc>,
}

/// The extension's `_utc()`: ISO 8601 in UTC, whole seconds.
fn utc(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The first instant of the month after `now`'s, in UTC (cycles are
/// calendar months).
fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .expect("the first of a month at midnight UTC exists")
}

/// The refusal admission would give right now, if it would surely refuse.
pub fn precheck(u: &Usage, now: DateTime<Utc>) -> Option<ApiError> {
    // An ended cycle rolls forward at admission: its usage no longer counts.
    let (count, seconds, cycle_end) = if u.cycle_end <= now {
        (0, 0, next_month(now))
    } else {
        (u.usage_count, u.used_seconds, u.cycle_end)
    };
    let resets = utc(cycle_end);
    let hint = "Wait for the reset or move to a larger plan.";
    if count >= u.usage_limit {
        return Some(ApiError::from_sqlstate(
            sqlstate::QUOTA_USAGE_EXCEEDED,
            &format!(
                "monthly transcription limit reached: {count} of {} used on plan {}; resets at {resets}",
                u.usage_limit, u.plan_code
            ),
            &format!(
                "limit: monthly_usage_limit; used: {count}; limit_value: {}; resets_at: {resets}",
                u.usage_limit
            ),
            hint,
        ));
    }
    let allowance = i64::from(u.monthly_minutes) * 60;
    let reserved = u.reserved_seconds;
    if i64::from(seconds) + i64::from(reserved) >= allowance {
        let in_progress = if reserved > 0 {
            format!(" and {reserved} reserved by recordings in progress")
        } else {
            String::new()
        };
        return Some(ApiError::from_sqlstate(
            sqlstate::QUOTA_MINUTES_EXCEEDED,
            &format!(
                "monthly minutes used up: {seconds} of {allowance} seconds used{in_progress} on plan {}; resets at {resets}",
                u.plan_code
            ),
            &format!(
                "limit: monthly_minutes; used: {seconds}; reserved: {reserved}; limit_value: {allowance}; resets_at: {resets}"
            ),
            hint,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> Usage {
        Usage {
            usage_count: 3,
            usage_limit: 10,
            used_seconds: 600,
            reserved_seconds: 0,
            monthly_minutes: 60,
            plan_code: "FREE".into(),
            cycle_end: Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 3, 4, 5).unwrap()
    }

    #[test]
    fn room_left_passes() {
        assert!(precheck(&usage(), now()).is_none());
    }

    #[test]
    fn a_used_up_count_is_s2q01_with_the_databases_fields() {
        let u = Usage {
            usage_count: 10,
            ..usage()
        };
        let e = precheck(&u, now()).expect("refused");
        assert_eq!(e.problem.status, 429);
        assert_eq!(e.problem.code.as_deref(), Some("S2Q01"));
        assert_eq!(e.problem.extra["limit"], "monthly_usage_limit");
        assert_eq!(e.problem.extra["used"], 10);
        assert_eq!(e.problem.extra["limit_value"], 10);
        assert_eq!(e.problem.extra["resets_at"], "2027-01-01T00:00:00Z");
        assert!(e.retry_after.is_some());
    }

    #[test]
    fn used_and_reserved_minutes_are_s2q02() {
        let u = Usage {
            used_seconds: 3000,
            reserved_seconds: 600,
            ..usage()
        };
        let e = precheck(&u, now()).expect("refused");
        assert_eq!(e.problem.code.as_deref(), Some("S2Q02"));
        assert_eq!(e.problem.extra["used"], 3000);
        assert_eq!(e.problem.extra["reserved"], 600);
        assert_eq!(e.problem.extra["limit_value"], 3600);
        assert!(
            e.problem.detail.contains("600 reserved"),
            "{}",
            e.problem.detail
        );
        let almost = Usage {
            used_seconds: 3599,
            ..usage()
        };
        assert!(
            precheck(&almost, now()).is_none(),
            "one second left is room"
        );
    }

    #[test]
    fn an_ended_cycle_does_not_count() {
        let u = Usage {
            usage_count: 10,
            used_seconds: 3600,
            cycle_end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
            ..usage()
        };
        assert!(precheck(&u, now()).is_none());
        let reserved = Usage {
            reserved_seconds: 3600,
            ..u
        };
        let e = precheck(&reserved, now()).expect("reservations carry over");
        assert_eq!(e.problem.extra["resets_at"], "2027-01-01T00:00:00Z");
        assert_eq!(
            next_month(Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap()),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
    }
}
