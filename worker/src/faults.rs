//! Which failures are worth another attempt, and the timing of leases.
//!
//! Pure rules, so `cargo test` covers them; the runner and the lease keeper
//! apply them to real errors.

use std::time::Duration;

/// What a failed database call means for the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection or the server had trouble that may pass: try again.
    Transient,
    /// The extension says the lease is gone (`S2S01`): stop, do not report.
    LeaseLost,
    /// The call can never succeed as made (invalid input `S2V01`, a missing
    /// row, a permission): fail the job now, without retries.
    Permanent,
}

/// Classify by SQLSTATE; `None` is an error without one (the socket closed,
/// a timeout, TLS), which is transient.
pub fn classify_sqlstate(code: Option<&str>) -> ErrorClass {
    let Some(code) = code else {
        return ErrorClass::Transient;
    };
    if code == crate::jobs::LEASE_LOST {
        return ErrorClass::LeaseLost;
    }
    match &code[..code.len().min(2)] {
        // 08 connection exception, 40 serialization failure / deadlock,
        // 53 insufficient resources, 57 operator intervention (admin
        // shutdown, statement timeout, server starting), 58 system error.
        "08" | "40" | "53" | "57" | "58" => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

pub fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    classify_sqlstate(e.code().map(|c| c.code()))
}

/// When to renew a lease of `lease`, and how long before its end to give
/// up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// Renew this often (a third of the lease: two renewals may fail
    /// before the lease is in danger).
    pub every: Duration,
    /// Cancel locally when the lease has less than this left and could
    /// not be renewed, so the job stops before another worker may claim it.
    pub margin: Duration,
}

pub fn lease_timing(lease: Duration) -> LeaseTiming {
    LeaseTiming {
        every: (lease / 3).max(Duration::from_millis(200)),
        // A sixth of the lease, at least 250 ms: enough for the cancel to
        // reach whisper.cpp's abort check between two graph computations.
        margin: (lease / 6).max(Duration::from_millis(250)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_trouble_is_retried() {
        assert_eq!(classify_sqlstate(None), ErrorClass::Transient);
        for code in [
            "08006", "08001", "40001", "40P01", "53200", "57P01", "57014", "58030",
        ] {
            assert_eq!(
                classify_sqlstate(Some(code)),
                ErrorClass::Transient,
                "{code}"
            );
        }
        assert_eq!(classify_sqlstate(Some("S2S01")), ErrorClass::LeaseLost);
        for code in [
            "S2V01", "S2N01", "22P02", "42501", "23505", "XX000", "P0001",
        ] {
            assert_eq!(
                classify_sqlstate(Some(code)),
                ErrorClass::Permanent,
                "{code}"
            );
        }
    }

    #[test]
    fn leases_renew_three_times_and_give_up_a_sixth_before_the_end() {
        let t = lease_timing(Duration::from_secs(60));
        assert_eq!(t.every, Duration::from_secs(20));
        assert_eq!(t.margin, Duration::from_secs(10));
        let t = lease_timing(Duration::from_secs(3));
        assert_eq!(t.every, Duration::from_secs(1));
        assert_eq!(t.margin, Duration::from_millis(500));
        // The give-up point always comes after at least two renewals.
        for secs in [1, 2, 3, 5, 30, 600] {
            let t = lease_timing(Duration::from_secs(secs));
            assert!(
                t.every * 2 < Duration::from_secs(secs) - t.margin + Duration::from_millis(1),
                "{secs}"
            );
        }
    }
}
