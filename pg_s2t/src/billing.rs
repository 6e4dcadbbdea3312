//! Billing events are signed by the billing provider; the database checks
//! the signature itself, so the application role cannot forge a plan change.

use pgrx::prelude::*;

/// NULL when `signature` is a valid, fresh signature of `payload` under
/// `secret`, otherwise why not (for the error message).
#[pg_extern(immutable, parallel_safe)]
fn billing_signature_problem(
    secret: &str,
    payload: &str,
    signature: Option<&str>,
    now_unix: i64,
    tolerance_secs: i32,
) -> Option<String> {
    s2t_core::billing::verify(
        secret.as_bytes(),
        payload.as_bytes(),
        signature.unwrap_or(""),
        now_unix,
        i64::from(tolerance_secs),
    )
    .err()
    .map(|e| e.to_string())
}
