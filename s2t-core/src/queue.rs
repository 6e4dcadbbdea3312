//! Job-queue policy.

/// First retry delay, in seconds.
pub const BACKOFF_BASE_SECS: u64 = 10;
/// No retry waits longer than this, in seconds.
pub const BACKOFF_CAP_SECS: u64 = 900;

/// Seconds to wait before retrying a job whose `attempt`-th try failed
/// (attempt counts from 1): 10 s, 20 s, 40 s, … capped at 15 minutes.
/// Deterministic on purpose, so tests and operators can predict it; the
/// queue's SKIP LOCKED claim already spreads concurrent retries.
pub fn retry_backoff_secs(attempt: u32) -> u64 {
    let exponent = attempt.saturating_sub(1).min(32);
    BACKOFF_BASE_SECS
        .saturating_mul(1u64 << exponent)
        .min(BACKOFF_CAP_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        assert_eq!(retry_backoff_secs(0), 10);
        assert_eq!(retry_backoff_secs(1), 10);
        assert_eq!(retry_backoff_secs(2), 20);
        assert_eq!(retry_backoff_secs(3), 40);
        assert_eq!(retry_backoff_secs(7), 640);
        assert_eq!(retry_backoff_secs(8), BACKOFF_CAP_SECS);
        assert_eq!(retry_backoff_secs(u32::MAX), BACKOFF_CAP_SECS);
    }

    #[test]
    fn never_decreases() {
        let mut last = 0;
        for attempt in 0..100 {
            let wait = retry_backoff_secs(attempt);
            assert!(wait >= last);
            last = wait;
        }
    }
}
