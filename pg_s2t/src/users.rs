//! Registration input checks.

use pgrx::prelude::*;

/// `NULL` when the registration input is acceptable, otherwise
/// `[sqlstate, message, detail, hint]` for `s2t.raise_problem`.
#[pg_extern(immutable, parallel_safe)]
fn registration_problem(
    email: Option<&str>,
    user_name: Option<&str>,
    password_hash: Option<&str>,
    name: Option<&str>,
) -> Option<Vec<Option<String>>> {
    s2t_core::validate::validate_registration(
        email.unwrap_or(""),
        user_name.unwrap_or(""),
        password_hash.unwrap_or(""),
        name,
    )
    .err()
    .map(s2t_core::Problem::into_parts)
}

/// The canonical (trimmed, lower-case) form of an e-mail address, or NULL if
/// it is not one.
#[pg_extern(immutable, parallel_safe, strict)]
fn normalize_email(email: &str) -> Option<String> {
    s2t_core::validate::normalize_email(email).ok()
}
