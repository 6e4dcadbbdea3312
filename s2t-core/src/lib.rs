//! Logic that the extension, the worker and the gateway share, kept free of
//! pgrx so that plain `cargo test` covers it.
//!
//! Layout:
//! - [`sqlstate`]: the extension's own SQLSTATE codes, the one list every
//!   client maps from.
//! - [`problem`]: a user-facing error (SQLSTATE, message, detail, hint).
//! - [`validate`]: input checks for users and transcript segments.
//! - [`queue`]: job-queue policy (retry backoff).
//! - [`text`]: text folding for accent-insensitive lexical search.
//! - [`chunk`]: cutting transcripts into search chunks.
//! - [`search`]: query terms, highlights and rank fusion for hybrid search.
//! - [`realtime`]: the realtime WebSocket protocol: messages, frame
//!   decoding, pacing and close codes.
//! - [`billing`]: signatures of billing events (HMAC-SHA256 with a time).

pub mod answer;
pub mod billing;
pub mod chunk;
pub mod problem;
pub mod queue;
pub mod realtime;
pub mod search;
pub mod sqlstate;
pub mod text;
pub mod validate;

pub use problem::Problem;
