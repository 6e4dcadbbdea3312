//! The pg_s2t worker: claims queued recordings from PostgreSQL and
//! transcribes them with Whisper.
//!
//! Layout:
//! - [`audio`]: decoding any common format to 16 kHz mono.
//! - [`asr`]: VAD, Whisper and the hallucination guards.
//! - [`blocks`]: long audio transcribed as a stream, block by block.
//! - [`jobs`]: the queue calls into the extension.
//! - [`runner`]: the job loop (LISTEN, claims, completion, shutdown).
//! - [`lease`]: the per-job heartbeat task that renews or gives up a lease.
//! - [`isolate`]: each transcription in a supervised child process.
//! - [`faults`]: which failures are retried, and lease timing.
//! - [`audio_path`]: `file://` audio confined to a root.
//! - [`embed`]: the embedding step (chunk vectors for search).
//! - [`pgtls`]: `sslmode` for every connection.
//! - [`realtime`]: the streaming policy and decode scheduling of realtime
//!   sessions.
//! - [`model`]: converting the packaged CTranslate2 Whisper models to
//!   whisper.cpp's ggml format (`s2t-worker convert-model`).

pub mod asr;
pub mod audio;
pub mod audio_path;
pub mod blocks;
pub mod embed;
pub mod faults;
pub mod isolate;
pub mod jobs;
pub mod lease;
pub mod model;
pub use s2t_pg as pgtls;
pub mod realtime;
pub mod runner;

/// The queue channel the extension NOTIFYs when a job becomes claimable.
pub const JOBS_CHANNEL: &str = "s2t_jobs";

/// The version of this worker, compared against the extension's.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
