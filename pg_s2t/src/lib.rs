//! pg_s2t: the speech-to-text data model as a PostgreSQL extension.
//!
//! The tables, procedures, queue and security live in hand-written SQL
//! (`src/sql/*.sql`), loaded in a fixed order below. Rust is used where it is
//! the better tool: validating input and folding text. The logic itself lives
//! in the pgrx-free `s2t-core` crate; these functions are thin shells.
//!
//! Layout:
//! - [`users`]: registration checks.
//! - [`quota`]: segment validation for completion.
//! - [`queue`]: retry backoff.
//! - [`gucs`]: every setting.
//! - [`chunking`]: cutting transcripts into search chunks.
//! - [`search`]: text folding, query embedding, highlights and rank fusion.
//! - [`billing`]: signature checks for billing events.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod answer;
mod billing;
mod chunking;
mod gucs;
mod queue;
mod quota;
mod search;
mod users;

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::define();
    // The embedding model runs in the backend's own thread only.
    s2t_embed::single_threaded();
}

/// The version of the loaded library, which `/readyz`-style checks compare
/// against `pg_extension.extversion`.
#[pg_extern(immutable, parallel_safe)]
fn extension_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

extension_sql_file!(
    "sql/tables.sql",
    name = "tables",
    requires = [search::fold_text]
);
extension_sql_file!(
    "sql/quota.sql",
    name = "quota",
    requires = [
        "tables",
        users::registration_problem,
        users::normalize_email
    ]
);
extension_sql_file!(
    "sql/lifecycle.sql",
    name = "lifecycle",
    requires = ["quota", quota::segments_problem]
);
extension_sql_file!(
    "sql/queue.sql",
    name = "queue",
    requires = ["lifecycle", queue::retry_backoff_seconds]
);
extension_sql_file!(
    "sql/maintenance.sql",
    name = "maintenance",
    requires = ["queue"]
);
extension_sql_file!("sql/auth.sql", name = "auth", requires = ["maintenance"]);
extension_sql_file!("sql/audio.sql", name = "audio", requires = ["auth"]);
extension_sql_file!("sql/realtime.sql", name = "realtime", requires = ["audio"]);
extension_sql_file!(
    "sql/search.sql",
    name = "search",
    requires = [
        "realtime",
        chunking::_chunk_plan,
        search::_embed_query,
        search::_embed_or_null,
        search::embedding_model,
        search::embedding_available,
        search::_query_terms,
        search::_highlights,
        search::_rrf
    ]
);
extension_sql_file!(
    "sql/ask.sql",
    name = "ask",
    requires = ["search", answer::_extract_answer, answer::_ask_prompt]
);
extension_sql_file!(
    "sql/admin.sql",
    name = "admin",
    requires = ["ask", billing::billing_signature_problem]
);
extension_sql_file!(
    "sql/security.sql",
    name = "security",
    requires = ["admin", extension_version],
    finalize
);

/// Required by `cargo pgrx test`; our SQL tests run against a cluster the
/// test harness starts (see `tests/`), because pgrx's runner cannot run as
/// root.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
