//! The worker's side of the queue, as thin calls to the extension's
//! functions (`s2t.claim_job`, `heartbeat_job`, `complete_job`, `fail_job`,
//! `release_job`) plus fetching a recording's audio.

use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio_postgres::{Client, Error as PgError};
use uuid::Uuid;

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job_id: i64,
    pub recording_id: Uuid,
    pub attempt: i32,
    pub lease_token: Uuid,
    pub language: String,
    pub audio_uri: Option<String>,
    /// `meta.model`, when the client named one (the OpenAI-compatible
    /// endpoint does): an `.en` name asks for the English model, any other
    /// for the multilingual one.
    pub model: Option<String>,
    /// `meta.prompt`: text that conditions the first window (names, terms).
    pub prompt: Option<String>,
    /// The most audio this job may transcribe, in ms (the user's minutes
    /// left at the claim, reserved for it); `None` means no cap.
    pub max_ms: Option<i32>,
}

/// The SQLSTATE the extension raises when a lease is gone.
pub const LEASE_LOST: &str = "S2S01";

pub fn is_lease_lost(e: &PgError) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code().code() == LEASE_LOST)
}

fn interval(seconds: u64) -> String {
    format!("{seconds} seconds")
}

pub async fn claim(
    client: &Client,
    worker: &str,
    lease_secs: u64,
) -> Result<Option<Claim>, PgError> {
    let row = client
        .query_opt(
            "SELECT job_id, recording_id, attempt, lease_token, coalesce(language, 'vi'), audio_uri,
                    meta ->> 'model', meta ->> 'prompt', max_ms
               FROM s2t.claim_job($1, $2::text::interval)",
            &[&worker, &interval(lease_secs)],
        )
        .await?;
    Ok(row.map(|r| Claim {
        job_id: r.get(0),
        recording_id: r.get(1),
        attempt: r.get(2),
        lease_token: r.get(3),
        language: r.get(4),
        audio_uri: r.get(5),
        model: r.get(6),
        prompt: r.get(7),
        max_ms: r.get(8),
    }))
}

pub async fn heartbeat(
    client: &Client,
    c: &Claim,
    lease_secs: u64,
    progress: f32,
) -> Result<(), PgError> {
    client
        .query_one(
            "SELECT s2t.heartbeat_job($1, $2, $3::text::interval, $4)",
            &[
                &c.job_id,
                &c.lease_token,
                &interval(lease_secs),
                &progress.clamp(0.0, 1.0),
            ],
        )
        .await
        .map(|_| ())
}

pub async fn complete(
    client: &Client,
    c: &Claim,
    duration_ms: i32,
    segments: &serde_json::Value,
    language: Option<&str>,
    notice: Option<&str>,
) -> Result<bool, PgError> {
    client
        .query_one(
            "SELECT s2t.complete_job($1, $2, $3, $4, $5)",
            &[&c.job_id, &duration_ms, segments, &language, &notice],
        )
        .await
        .map(|r| r.get(0))
}

/// Reports the decoded length of the job's audio, so the reservation of a
/// file whose header did not say shrinks to it and the user's other jobs
/// can start; returns the new cap in milliseconds (it never grows).
pub async fn settle_length(client: &Client, c: &Claim, audio_ms: i32) -> Result<i32, PgError> {
    client
        .query_one(
            "SELECT s2t.settle_job_length($1, $2, $3)",
            &[&c.job_id, &c.lease_token, &audio_ms],
        )
        .await
        .map(|r| r.get(0))
}

/// Returns the job's new state ('queued' or 'failed').
pub async fn fail(
    client: &Client,
    c: &Claim,
    reason: &str,
    retryable: bool,
) -> Result<String, PgError> {
    client
        .query_one(
            "SELECT s2t.fail_job($1, $2, $3, $4)",
            &[&c.job_id, &c.lease_token, &reason, &retryable],
        )
        .await
        .map(|r| r.get(0))
}

pub async fn release(client: &Client, c: &Claim) -> Result<bool, PgError> {
    client
        .query_one(
            "SELECT s2t.release_job($1, $2)",
            &[&c.job_id, &c.lease_token],
        )
        .await
        .map(|r| r.get(0))
}

/// A spooled copy of a recording's audio, removed when dropped.
#[derive(Debug)]
pub struct SpoolFile(PathBuf);

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where a recording's audio is for the transcription child.
#[derive(Debug)]
pub enum AudioSource {
    /// The audio is in `path`; `spool` removes the worker's copy when the
    /// job is over (None for `file://` audio, which is read in place).
    File {
        path: PathBuf,
        extension: Option<String>,
        spool: Option<SpoolFile>,
    },
    /// The recording has no audio this worker may read: a permanent failure.
    Missing(String),
    /// The worker could not write its local copy (disk full, permissions):
    /// worth another attempt, perhaps on another worker.
    Local(String),
}

/// Make a recording's audio readable as a file for the child: stored
/// (`db:`) audio is streamed to `spool_dir` chunk by chunk, so the worker's
/// memory does not grow with the file; `file://` audio (a deployment with
/// shared storage) must resolve under `audio_root` (see
/// [`crate::audio_path`]) and is read in place.
pub async fn load_audio(
    client: &Client,
    c: &Claim,
    audio_root: Option<&Path>,
    spool_dir: &Path,
) -> Result<AudioSource, PgError> {
    match c.audio_uri.as_deref() {
        Some("db:") | None => spool_stored_audio(client, c, spool_dir).await,
        Some(uri) if uri.starts_with("file://") => {
            let path = match crate::audio_path::resolve_file_uri(uri, audio_root) {
                Ok(path) => path,
                Err(e) => return Ok(AudioSource::Missing(e.to_string())),
            };
            if let Err(e) = tokio::fs::metadata(&path).await {
                return Ok(AudioSource::Missing(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
            let extension = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_string);
            Ok(AudioSource::File {
                path,
                extension,
                spool: None,
            })
        }
        Some(other) => Ok(AudioSource::Missing(format!(
            "unsupported audio location {other:?} (expected db: or file://)"
        ))),
    }
}

async fn spool_stored_audio(
    client: &Client,
    c: &Claim,
    spool_dir: &Path,
) -> Result<AudioSource, PgError> {
    let Some(row) = client
        .query_opt(
            "SELECT content_type, audio_id, size_bytes FROM s2t.recording_audio WHERE recording_id = $1",
            &[&c.recording_id],
        )
        .await?
    else {
        return Ok(AudioSource::Missing(
            "no audio was uploaded for this recording".into(),
        ));
    };
    let content_type: String = row.get(0);
    let audio_id: Uuid = row.get(1);
    let size: i64 = row.get(2);
    let extension = extension_for(&content_type).map(str::to_string);
    let path = spool_dir.join(format!("job-{}-{}", c.job_id, Uuid::new_v4()));
    let local = |e: std::io::Error| {
        AudioSource::Local(format!(
            "cannot write the audio to {}: {e}",
            spool_dir.display()
        ))
    };
    if let Err(e) = tokio::fs::create_dir_all(spool_dir).await {
        return Ok(local(e));
    }
    let mut file = match tokio::fs::File::create(&path).await {
        Ok(f) => f,
        Err(e) => return Ok(local(e)),
    };
    let spool = SpoolFile(path.clone());
    // Rows arrive as the stream is polled, so at most a chunk or two (and
    // the socket's buffers) are in memory at once.
    let rows = client
        .query_raw(
            "SELECT data FROM s2t.recording_audio_chunks WHERE audio_id = $1 ORDER BY byte_offset",
            [&audio_id],
        )
        .await?;
    futures_util::pin_mut!(rows);
    let mut written: i64 = 0;
    while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows).await? {
        let piece: &[u8] = row.get(0);
        written += piece.len() as i64;
        if let Err(e) = file.write_all(piece).await {
            return Ok(local(e));
        }
    }
    if written != size {
        // Open audio (a realtime session still appending) or a torn read:
        // transcribe what is there only if it is what the row promised.
        return Ok(AudioSource::Missing(format!(
            "the stored audio is {written} bytes but its recording says {size}"
        )));
    }
    if let Err(e) = file.flush().await {
        return Ok(local(e));
    }
    Ok(AudioSource::File {
        path,
        extension,
        spool: Some(spool),
    })
}

/// A file-extension hint for the decoder from a MIME type.
pub fn extension_for(content_type: &str) -> Option<&'static str> {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    Some(match base.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => "wav",
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/ogg" | "application/ogg" => "ogg",
        "audio/opus" => "opus",
        "audio/webm" | "video/webm" => "webm",
        "audio/mp4" | "audio/x-m4a" | "audio/aac" | "video/mp4" => "m4a",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::extension_for;

    #[test]
    fn mime_hints() {
        assert_eq!(extension_for("audio/webm;codecs=opus"), Some("webm"));
        assert_eq!(extension_for("Audio/MPEG"), Some("mp3"));
        assert_eq!(extension_for("application/octet-stream"), None);
    }
}
