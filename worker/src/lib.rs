//! The pg_s2t worker: claims queued recordings from PostgreSQL and
//! transcribes them. Only the skeleton exists so far; the job loop, audio
//! decoding and Whisper arrive with the batch-transcription issue.

/// The queue channel the extension NOTIFYs when a job becomes claimable.
pub const JOBS_CHANNEL: &str = "s2t_jobs";

/// The version of this worker, compared against the extension's.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
