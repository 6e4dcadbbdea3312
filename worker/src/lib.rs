//! The pg_s2t worker: claims queued recordings from PostgreSQL and
//! transcribes them with Whisper.
//!
//! Layout:
//! - [`audio`]: decoding any common format to 16 kHz mono.
//! - [`asr`]: VAD, Whisper and the hallucination guards.
//! - [`jobs`]: the queue calls into the extension.
//! - [`runner`]: the job loop (LISTEN, leases, heartbeats, shutdown).
//! - [`model`]: converting the packaged CTranslate2 Whisper models to
//!   whisper.cpp's ggml format (`s2t-worker convert-model`).

pub mod asr;
pub mod audio;
pub mod jobs;
pub mod model;
pub mod runner;

/// The queue channel the extension NOTIFYs when a job becomes claimable.
pub const JOBS_CHANNEL: &str = "s2t_jobs";

/// The version of this worker, compared against the extension's.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
