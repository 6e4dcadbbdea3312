//! Job-queue policy exposed to SQL.

use pgrx::prelude::*;

/// Seconds to wait before retrying after the `attempt`-th failure.
#[pg_extern(immutable, parallel_safe, strict)]
fn retry_backoff_seconds(attempt: i32) -> i32 {
    let attempt = u32::try_from(attempt).unwrap_or(0);
    i32::try_from(s2t_core::queue::retry_backoff_secs(attempt)).unwrap_or(i32::MAX)
}
